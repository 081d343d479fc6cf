"""Step scorers: P(step is good) for every step of a solution, in one forward per solution.

- :class:`MegatronPRMScorer`: a PRM checkpoint (``weights/`` + ``context/``, from training or
  the converter, written at any TP/PP) loaded into megatron-core modules in this process
  (TP=PP=1; the CPU backend when there is no GPU).
- :class:`~nemo_erprm.convert.hf_scorer.HFPRMScorer`: the HF export (transformers only).
- :class:`VLLMScorer` (spec ``vllm:<export>``): the HF export on vLLM's step pooler
  (:mod:`nemo_erprm.eval.vllm_scorer`), where vLLM is installed.
- :class:`PrefixScorer`: the baseline of TRL / RLHFlow — one forward per step prefix, the
  score of its last tag — used by ``benchmarks/bon_scoring.py``.

All render the input with :func:`nemo_erprm.labeling.render_prm_input`, the function the
training data goes through, and tokenize it with the training tokenizer's tag checks.
Every scorer has a ``fingerprint`` (cache key of its weights) and ``score_batch(items)``
taking ``(question, steps)`` pairs.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Optional, Protocol, Sequence

import torch

from nemo_erprm.errors import ConfigError

Item = tuple[str, Sequence[str]]


class StepScorer(Protocol):
    fingerprint: str
    step_tag: str

    def score_batch(self, items: Sequence[Item]) -> list[list[float]]: ...


def directory_fingerprint(path: Path, kind: str) -> str:
    """Hash of a checkpoint's files (names, sizes, modification times) and its kind."""
    h = hashlib.sha256(f"{kind}:{path.resolve()}".encode())
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        st = f.stat()
        h.update(f"{f.relative_to(path)}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


class MegatronPRMScorer:
    """A PRM checkpoint on megatron-core; micro-batches of similar length, right-padded."""

    def __init__(self, ckpt: str | Path, max_length: int = 4096, dtype: Optional[torch.dtype] = None,
                 micro_batch_size: int = 8):
        from nemo_erprm.convert.load import load_prm_modules
        from nemo_erprm.data.tokenize import StepTokenizer

        if not torch.cuda.is_available():
            from nemo_erprm.runtime.cpu_backend import enable_cpu_backend

            enable_cpu_backend()
        self.path = Path(ckpt)
        modules, cfg, tokenizer = load_prm_modules(self.path, tp=1, pp=1, dtype=dtype)
        self.modules, self.config = modules, cfg
        self.head, self.step_tag = cfg.head, cfg.step_tag
        hf = getattr(tokenizer, "tokenizer", tokenizer)
        self.tokenizer, self.max_length = hf, max_length
        self.step_tokenizer = StepTokenizer(hf, self.step_tag, max_length)
        self.pad_id = hf.pad_token_id if hf.pad_token_id is not None else (hf.eos_token_id or 0)
        self.fingerprint = directory_fingerprint(self.path / "weights", "megatron")
        self.micro_batch_size = micro_batch_size

    @torch.no_grad()
    def score_batch(self, items: Sequence[Item]) -> list[list[float]]:
        """Step scores of any number of items: encoded once, forwarded in micro-batches of
        similar length (see :func:`length_sorted_batches`), returned in the input order."""
        from nemo_erprm.data.collate import length_sorted_batches
        from nemo_erprm.labeling.segmentation import render_prm_input

        samples = []
        for question, steps in items:
            ex = self.step_tokenizer(render_prm_input(question, steps, self.step_tag), [0.0] * len(steps))
            if ex is None or len(ex.tag_positions) != len(steps):
                raise ConfigError(f"a solution of {question[:40]!r}... does not fit in --max-length "
                                  f"{self.step_tokenizer.seq_length} tokens with all its {len(steps)} steps")
            samples.append({"input_ids": ex.input_ids, "tag_positions": ex.tag_positions, "targets": ex.targets})
        out: list[list[float]] = [[] for _ in samples]
        for idx in length_sorted_batches([len(s["input_ids"]) for s in samples], self.micro_batch_size):
            for i, scores in zip(idx, self._forward([samples[i] for i in idx])):
                out[i] = scores
        return out

    def _forward(self, samples: list[dict]) -> list[list[float]]:
        from nemo_erprm.data.collate import collate_rows
        from nemo_erprm.model.loss import step_scores
        from nemo_erprm.model.megatron_step import forward_outputs

        width = max(len(s["input_ids"]) for s in samples)
        batch = collate_rows([[s] for s in samples], width, self.pad_id)
        (logits,) = forward_outputs(self.modules, [batch], width, len(samples))
        scores = step_scores(logits.float(), self.head).cpu().tolist()
        out, at = [], 0
        for s in samples:  # tags come out row by row, in position order
            n = len(s["tag_positions"])
            out.append(scores[at: at + n])
            at += n
        return out


class HFScorer:
    """Adapter: the HF export behind the same interface (fingerprint included)."""

    def __init__(self, model_dir: str | Path, max_length: int = 4096, dtype: Optional[torch.dtype] = None,
                 micro_batch_size: int = 8):
        from nemo_erprm.convert.hf_scorer import HFPRMScorer

        self.path = Path(model_dir)
        self.inner = HFPRMScorer(str(self.path), dtype=dtype, max_length=max_length, micro_batch_size=micro_batch_size)
        self.step_tag, self.head = self.inner.step_tag, self.inner.head
        self.tokenizer, self.max_length = self.inner.tokenizer, max_length
        self.step_tokenizer = self.inner.step_tokenizer
        self.fingerprint = directory_fingerprint(self.path, "hf")

    def score_batch(self, items: Sequence[Item]) -> list[list[float]]:
        return self.inner.score_batch(items)


class VLLMScorer:
    """Adapter: the HF export on vLLM (``--scorer vllm:<export>``) behind the same interface."""

    def __init__(self, model_dir: str | Path, max_length: int = 4096, dtype: Optional[str] = None):
        from nemo_erprm.eval.vllm_scorer import VLLMPRMScorer

        self.path = Path(model_dir)
        self.inner = VLLMPRMScorer(self.path, max_length=max_length, dtype=dtype)
        self.step_tag, self.head = self.inner.step_tag, self.inner.head
        self.tokenizer, self.max_length = self.inner.tokenizer, max_length
        self.step_tokenizer = self.inner.step_tokenizer
        # not the HF scorer's key: vLLM's kernels agree with transformers to ~1e-6, not bitwise
        self.fingerprint = directory_fingerprint(self.path, "vllm")

    def score_batch(self, items: Sequence[Item]) -> list[list[float]]:
        return self.inner.score_batch(items)


class PrefixScorer:
    """One forward per step prefix (TRL / RLHFlow style): step k's score is the last tag's
    score of ``question + steps[:k+1]``. Same numbers as the one-forward scorer, k times the work."""

    def __init__(self, inner: StepScorer):
        self.inner, self.step_tag = inner, inner.step_tag
        self.fingerprint = inner.fingerprint + ":prefix"

    def score_batch(self, items: Sequence[Item]) -> list[list[float]]:
        return [[self.inner.score_batch([(question, list(steps[: k + 1]))])[0][-1] for k in range(len(steps))]
                for question, steps in items]


VLLM_PREFIX = "vllm:"


def scorer_path(spec: str) -> Path:
    """The folder a ``--scorer`` spec names (``vllm:<export>`` -> ``<export>``)."""
    return Path(spec[len(VLLM_PREFIX):] if spec.startswith(VLLM_PREFIX) else spec)


def load_scorer(spec: str, max_length: int = 4096, dtype: Optional[str] = None,
                micro_batch_size: int = 8) -> Optional[StepScorer]:
    """``none`` -> None; an HF export (``prm_config.json`` + ``config.json``) or a PRM
    checkpoint (``weights/`` + ``context/``) -> its scorer; ``vllm:<HF export>`` -> the export
    on vLLM's step pooler."""
    if spec == "none":
        return None
    path = scorer_path(spec)
    if spec.startswith(VLLM_PREFIX):
        from nemo_erprm.eval.vllm_scorer import read_export_meta

        try:
            read_export_meta(path)  # named before vLLM starts
        except ConfigError as e:
            raise ConfigError(f"--scorer {spec}: {e}") from None
        _check_safetensors(path)
        return VLLMScorer(path, max_length, dtype)
    torch_dtype = {"bfloat16": torch.bfloat16, "float32": torch.float32, None: None}[dtype]
    if (path / "config.json").exists() and (path / "prm_config.json").exists():
        _check_safetensors(path)
        return HFScorer(path, max_length, torch_dtype, micro_batch_size)
    if (path / "weights").is_dir() and (path / "context").is_dir():
        return MegatronPRMScorer(path, max_length, torch_dtype, micro_batch_size)
    raise ConfigError(f"--scorer {spec}: neither 'none', an HF PRM export (config.json + prm_config.json), "
                      f"'vllm:' and an HF PRM export, nor a PRM checkpoint (weights/ + context/)")


def _check_safetensors(path: Path) -> None:
    from nemo_erprm.convert.cli import check_safetensors_file

    for f in sorted(path.glob("*.safetensors")):  # an interrupted copy: named, not a loader traceback
        check_safetensors_file(f)


def describe_scorer(spec: str) -> dict:
    path = scorer_path(spec)
    meta = path / "prm_config.json"
    return {"path": str(path), "prm_config": json.loads(meta.read_text()) if meta.exists() else None}
