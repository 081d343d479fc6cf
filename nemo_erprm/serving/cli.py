"""``python tools/serve_prm.py``: serve a PRM as the reward model of RLHF.

    # HTTP (our /score, OpenRLHF's /get_reward), loopback only by default
    python tools/serve_prm.py --scorer outputs/train/RUN/hf --protocol http --port 8000 --token-file secret.txt
    # NeMo-Aligner's PyTriton `reward_model` contract (PPO actor: remote_critic_rm.reward_model)
    python tools/serve_prm.py --scorer outputs/train/RUN/hf --protocol aligner --port 5555 \\
        --actor-tokenizer /models/actor --response-marker "<extra_id_1>Assistant\\n"

``--response-marker`` and ``--end-strings`` understand the backslash escapes ``\\n``, ``\\t``,
``\\r`` and ``\\\\``: bash passes ``"...\\n"`` (double quotes) as a backslash and an ``n``, and
a marker that never occurs gives every sample the fallback reward.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Optional, Sequence

from nemo_erprm.errors import ArgumentParser, ConfigError, run_reporting_errors

LOOPBACK = ("127.0.0.1", "localhost", "::1")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}


def unescape(text: str) -> str:
    """``text`` with ``\\n``, ``\\t``, ``\\r`` and ``\\\\`` turned into a newline, tab, carriage
    return and backslash; any other backslash escape is an error (argparse: exit 2)."""
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\":
            nxt = text[i + 1: i + 2]
            if nxt not in _ESCAPES:
                raise argparse.ArgumentTypeError(
                    f"unknown escape {text[i:i + 2]!r} in {text!r}: understood are \\n \\t \\r and \\\\ (a backslash)")
            out.append(_ESCAPES[nxt])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="serve_prm.py", description="Serve an ER-PRM as a reward model.")
    p.add_argument("--scorer", required=True, help="HF export (prm_config.json) or PRM checkpoint (weights/ + context/)")
    p.add_argument("--protocol", choices=["http", "aligner"], default="http")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default loopback; 0.0.0.0 to expose)")
    p.add_argument("--port", type=int, help="default 8000 (http) or 5555 (aligner)")
    p.add_argument("--token-file", help="file holding a bearer token required on every scoring and /metrics request "
                   "(http; /health stays open for probes)")
    p.add_argument("--aggregation", default="min", help="min (paper), last, mean, product, geomean")
    p.add_argument("--transform", default="none", choices=["none", "minus_half", "logit"])
    p.add_argument("--response-marker", type=unescape,
                   help="split combined texts at the last occurrence of this string (the chat template's assistant "
                        "header); backslash escapes \\n \\t \\r \\\\ are understood, so \"<|im_start|>assistant\\n\" "
                        "ends with a newline. Until it occurs in one sample, a batch in which it occurs in none is "
                        "refused with an error")
    p.add_argument("--segmentation-rule", default="newline", choices=["newline", "blank_line", "sentence"])
    p.add_argument("--actor-tokenizer", help="the actor's tokenizer (HF dir or smollm2): decodes aligner token input; "
                   "its chat template locates the question in a templated prompt, its eos is an end string")
    p.add_argument("--prompt-regex", help="regex whose group 'question' (or group 1) is the raw question inside "
                   "the actor's prompt (overrides the chat template)")
    p.add_argument("--end-strings", nargs="*", type=unescape, help="strings stripped from the end of responses "
                   "(default: common chat end strings + the actor tokenizer's eos; escapes as --response-marker)")
    p.add_argument("--fallback-reward", type=float, help="reward of an unscorable sample (default: the floor, "
                   "the reward of an empty response; never above it)")
    p.add_argument("--fallback-window", type=int, default=256,
                   help="samples over which the fallback rate is watched (in /metrics: unscorable.recent)")
    p.add_argument("--fallback-alarm", type=float, default=0.5,
                   help="a fallback rate above this over the window logs a loud warning line (1 turns it off)")
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=16384, help="tokens per model batch")
    p.add_argument("--max-wait-ms", type=float, default=5.0)
    p.add_argument("--queue-size", type=int, default=1024)
    p.add_argument("--timeout-s", type=float, default=60.0, help="per-request deadline")
    p.add_argument("--max-length", type=int, default=4096, help="tokens per scored solution")
    p.add_argument("--max-body-bytes", type=int, default=4 << 20)
    p.add_argument("--max-items", type=int, default=256, help="items per request")
    p.add_argument("--dtype", choices=["float32", "bfloat16"])
    p.add_argument("--log-file", help="where other libraries' warnings go (default: not kept); with --protocol "
                   "aligner, Triton's own log goes to LOG_FILE.triton (default: a file in the temp folder)")
    p.add_argument("--verbose", action="store_true", help="show other libraries' warnings and logs on the console")
    return p


def check_args(args: argparse.Namespace) -> None:
    """Argument and path checks before the model loads."""
    from pathlib import Path

    for flag, value, least in (("--max-batch", args.max_batch, 1), ("--max-tokens", args.max_tokens, 1),
                               ("--queue-size", args.queue_size, 1), ("--max-length", args.max_length, 2),
                               ("--max-body-bytes", args.max_body_bytes, 1), ("--max-items", args.max_items, 1)):
        if value < least:
            raise ConfigError(f"{flag} must be at least {least}, got {value}")
    if not args.timeout_s > 0 or not args.max_wait_ms >= 0:
        raise ConfigError(f"--timeout-s must be > 0 and --max-wait-ms >= 0, got {args.timeout_s}, {args.max_wait_ms}")
    if args.port is not None and not 0 < args.port < 65536:
        raise ConfigError(f"--port must be in 1..65535, got {args.port}")
    if args.scorer != "none" and not Path(args.scorer).is_dir():
        raise ConfigError(f"--scorer {args.scorer}: no such folder")
    if args.token_file and not Path(args.token_file).is_file():
        raise ConfigError(f"--token-file {args.token_file}: no such file")


def build_service(args: argparse.Namespace) -> tuple[Any, Any]:
    """(RewardService, actor tokenizer or None) from the parsed arguments, as ``serve`` runs
    them (the tests build the service through this too)."""
    from nemo_erprm.eval.scorers import load_scorer
    from nemo_erprm.serving.service import RewardConfig, RewardService

    from nemo_erprm.embedded import load_tokenizer
    from nemo_erprm.serving.rollout_text import DEFAULT_END_STRINGS, QuestionExtractor, end_strings_with

    actor = load_tokenizer(args.actor_tokenizer) if args.actor_tokenizer else None
    ends = tuple(args.end_strings) if args.end_strings is not None else end_strings_with(actor, DEFAULT_END_STRINGS)
    import re

    try:
        QuestionExtractor(args.prompt_regex)  # a bad regex is an error before the model loads
    except (ValueError, re.error) as e:
        raise ConfigError(f"--prompt-regex {args.prompt_regex!r}: {e}") from None
    try:
        config = RewardConfig(aggregation=args.aggregation, transform=args.transform,
                              segmentation_rule=args.segmentation_rule, response_marker=args.response_marker,
                              fallback_reward=args.fallback_reward, end_strings=ends,
                              prompt_regex=args.prompt_regex, fallback_window=args.fallback_window,
                              fallback_alarm=args.fallback_alarm).validate()
    except ValueError as e:
        raise ConfigError(str(e)) from None
    warn_marker_not_in_template(args.response_marker, actor)
    return RewardService(load_scorer(args.scorer, args.max_length, args.dtype, args.max_batch), config, actor), actor


def warn_marker_not_in_template(marker: Optional[str], actor: Any) -> None:
    """A loud start-up warning when the actor's chat template does not produce ``marker``."""
    if not marker or actor is None or not getattr(actor, "chat_template", None):
        return
    try:
        rendered = actor.apply_chat_template([{"role": "user", "content": "Q"}], tokenize=False,
                                             add_generation_prompt=True)
    except Exception:  # a template that needs other roles: nothing to compare with
        return
    if marker not in rendered:
        print(f"WARNING: the response marker {marker!r} does not occur in the actor tokenizer's chat template "
              f"(a prompt ends {rendered[-60:]!r}): every sample may get the fallback reward", file=sys.stderr,
              flush=True)


def serve(args: argparse.Namespace) -> int:
    if args.scorer == "none":
        raise ConfigError("--scorer must be a PRM (an HF export or a checkpoint)")
    check_args(args)  # before torch loads
    from nemo_erprm.runtime.logs import quiet_third_party, set_log_file

    if quiet_third_party("serve_prm", args.verbose) and args.log_file:
        set_log_file(args.log_file)
    service, actor = build_service(args)
    import logging

    unscorable_log = logging.getLogger("nemo_erprm.serving.unscorable")  # each fallback reward, with its reason
    if not unscorable_log.handlers:
        unscorable_handler = logging.StreamHandler(sys.stderr)
        unscorable_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        unscorable_log.addHandler(unscorable_handler)
        unscorable_log.propagate = False
    if args.protocol == "aligner":
        import signal

        from nemo_erprm.serving.aligner import DEFAULT_PORT, AlignerRewardModel, serve_pytriton

        def interrupt(*_):
            raise KeyboardInterrupt  # PyTriton's serve() stops the server cleanly on SIGINT only

        signal.signal(signal.SIGTERM, interrupt)
        port = args.port or DEFAULT_PORT
        triton_log = None if args.verbose else triton_log_path(args.log_file, port)
        serve_pytriton(AlignerRewardModel(service, actor), args.host, port, triton_log=triton_log,
                       ready=lambda: print(f"serving {args.scorer} as PyTriton model 'reward_model' on "
                                           f"http://{args.host}:{port}" +
                                           (f" (Triton's log: {triton_log})" if triton_log else ""), flush=True))
        return 0
    import uvicorn

    from nemo_erprm.serving.batcher import BatcherConfig
    from nemo_erprm.serving.http_app import Limits, build_app

    token = None
    if args.token_file:
        token = open(args.token_file).read().strip()
        if not token:
            raise ConfigError(f"--token-file {args.token_file} is empty")
    app = build_app(service, BatcherConfig(args.max_batch, args.max_tokens, args.max_wait_ms, args.queue_size,
                                           args.timeout_s),
                    token=token, limits=Limits(args.max_body_bytes, args.max_items))
    port = args.port or 8000
    if token is None and args.host not in LOOPBACK:
        print(f"warning: --host {args.host} without --token-file: anyone who can reach this machine on port {port} "
              "can use the scorer", file=sys.stderr, flush=True)
    import logging

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    access = logging.getLogger("nemo_erprm.serving.access")
    access.addHandler(handler)
    access.setLevel(logging.INFO)
    access.propagate = False
    print(f"serving {args.scorer} on http://{args.host}:{port} (POST /score, POST /get_reward, GET /health, "
          f"GET /metrics)", flush=True)
    uvicorn.run(app, host=args.host, port=port, log_level="warning", timeout_graceful_shutdown=30)
    return 0


def triton_log_path(log_file: Optional[str], port: int) -> str:
    if log_file:
        return f"{log_file}.triton"
    import tempfile

    return os.path.join(tempfile.gettempdir(), f"serve_prm_triton_{port}.log")


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_reporting_errors(serve, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
