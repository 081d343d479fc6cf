"""``python tools/serve_prm.py``: serve a PRM as the reward model of RLHF.

    # HTTP (our /score, OpenRLHF's /get_reward), loopback only by default
    python tools/serve_prm.py --scorer outputs/train/RUN/hf --protocol http --port 8000 --token-file secret.txt
    # NeMo-Aligner's PyTriton `reward_model` contract (PPO actor: remote_critic_rm.reward_model)
    python tools/serve_prm.py --scorer outputs/train/RUN/hf --protocol aligner --port 5555 \\
        --actor-tokenizer /models/actor --response-marker "<extra_id_1>Assistant\\n"
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from nemo_erprm.errors import ConfigError, run_reporting_errors


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="serve_prm.py", description="Serve an ER-PRM as a reward model.")
    p.add_argument("--scorer", required=True, help="HF export (prm_config.json) or PRM checkpoint (weights/ + context/)")
    p.add_argument("--protocol", choices=["http", "aligner"], default="http")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default loopback; 0.0.0.0 to expose)")
    p.add_argument("--port", type=int, help="default 8000 (http) or 5555 (aligner)")
    p.add_argument("--token-file", help="file holding a bearer token required on every scoring request (http)")
    p.add_argument("--aggregation", default="min", help="min (paper), last, mean, product, geomean")
    p.add_argument("--transform", default="none", choices=["none", "minus_half", "logit"])
    p.add_argument("--response-marker", help="split combined texts at the last occurrence of this string")
    p.add_argument("--segmentation-rule", default="newline", choices=["newline", "blank_line", "sentence"])
    p.add_argument("--actor-tokenizer", help="aligner token input: the actor's tokenizer (HF dir or smollm2)")
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=16384, help="tokens per model batch")
    p.add_argument("--max-wait-ms", type=float, default=5.0)
    p.add_argument("--queue-size", type=int, default=1024)
    p.add_argument("--timeout-s", type=float, default=60.0, help="per-request deadline")
    p.add_argument("--max-length", type=int, default=4096, help="tokens per scored solution")
    p.add_argument("--max-body-bytes", type=int, default=4 << 20)
    p.add_argument("--max-items", type=int, default=256, help="items per request")
    p.add_argument("--dtype", choices=["float32", "bfloat16"])
    return p


def serve(args: argparse.Namespace) -> int:
    from nemo_erprm.eval.scorers import load_scorer
    from nemo_erprm.serving.service import RewardConfig, RewardService

    if args.scorer == "none":
        raise ConfigError("--scorer must be a PRM (an HF export or a checkpoint)")
    if args.max_batch < 1:
        raise ConfigError(f"--max-batch must be at least 1, got {args.max_batch}")
    try:
        config = RewardConfig(aggregation=args.aggregation, transform=args.transform,
                              segmentation_rule=args.segmentation_rule, response_marker=args.response_marker).validate()
    except ValueError as e:
        raise ConfigError(str(e)) from None
    service = RewardService(load_scorer(args.scorer, args.max_length, args.dtype, args.max_batch), config)
    if args.protocol == "aligner":
        from nemo_erprm.serving.aligner import DEFAULT_PORT, AlignerRewardModel, serve_pytriton

        from nemo_erprm.embedded import load_tokenizer

        actor = load_tokenizer(args.actor_tokenizer) if args.actor_tokenizer else None
        serve_pytriton(AlignerRewardModel(service, actor), args.host, args.port or DEFAULT_PORT,
                       max_batch=args.max_batch)
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
    print(f"serving {args.scorer} on http://{args.host}:{port} (POST /score, POST /get_reward, GET /health, "
          f"GET /metrics)", flush=True)
    uvicorn.run(app, host=args.host, port=port, log_level="warning", timeout_graceful_shutdown=30)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_reporting_errors(serve, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
