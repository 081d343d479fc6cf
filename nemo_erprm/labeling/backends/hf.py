"""`hf` backend: transformers `generate` on the request plan's token ids, batched with left padding.

The completions of a window (all requests of several problems) are sorted by prompt length
and cut into ``backend.batch_size`` rows. Each row samples with its own generator seeded with
its completion's seed, so a completion does not depend on the rows it shares a batch with
(up to float rounding of the batched forward): windows, shards and resumes give the same
records.
"""

from __future__ import annotations

from typing import Any

from nemo_erprm.errors import ConfigError
from nemo_erprm.embedded import resolve_model_path
from nemo_erprm.labeling.backends.base import (
    BackendConfig,
    GenerationBackend,
    PromptConfig,
    SamplingConfig,
    end_token_ids,
    truncate_at_stop,
)
from nemo_erprm.labeling.backends.plan import Completion, Request



def _pick_device_dtype(cfg: BackendConfig) -> tuple[Any, Any]:
    import torch

    device = cfg.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if cfg.dtype == "auto":
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    elif cfg.dtype in dtypes:
        dtype = dtypes[cfg.dtype]
    else:
        raise ConfigError(f"backend.dtype must be auto, float32, bfloat16 or float16, got {cfg.dtype!r}")
    return torch.device(device), dtype


class HFBackend(GenerationBackend):
    name = "hf"

    def __init__(
        self,
        cfg: BackendConfig,
        sampling: SamplingConfig,
        prompt: PromptConfig,
        model: Any = None,
        tokenizer: Any = None,
    ):
        """Load ``cfg.model`` (or use an already built ``model``/``tokenizer``, e.g. in tests)."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.cfg, self.sampling, self.prompt_cfg = cfg, sampling, prompt
        self.device, self.dtype = _pick_device_dtype(cfg)
        if model is None or tokenizer is None:
            where, gguf = resolve_model_path(cfg.model)
            kwargs = {"gguf_file": gguf} if gguf else {}
            tokenizer = AutoTokenizer.from_pretrained(where, **kwargs)
            model = AutoModelForCausalLM.from_pretrained(where, dtype=self.dtype, **kwargs)
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        # the model's generation_config.json EOS ids too: vLLM stops at them as well
        self.eos_ids = end_token_ids(self.tokenizer, getattr(getattr(model, "generation_config", None),
                                                             "eos_token_id", None))
        self._torch = torch

    def run(self, requests: list[Request]) -> list[list[Completion]]:
        rows = [(r, j, seed) for r, req in enumerate(requests) for j, seed in enumerate(req.completion_seeds())]
        rows.sort(key=lambda row: -len(requests[row[0]].prompt_ids))  # less padding per batch
        out: list[list[Completion | None]] = [[None] * req.n for req in requests]
        size = self.cfg.batch_size
        for start in range(0, len(rows), size):
            batch = rows[start : start + size]
            done = self._generate_batch([requests[r].prompt_ids for r, _, _ in batch], [s for _, _, s in batch])
            for (r, j, _), completion in zip(batch, done):
                out[r][j] = completion
            if self.on_completions is not None:
                self.on_completions(len(batch))
        return out  # type: ignore[return-value]

    def _generate_batch(self, prompts: list[tuple[int, ...]], seeds: list[int]) -> list[Completion]:
        from transformers import GenerationConfig, LogitsProcessorList

        torch = self._torch
        width = max(len(p) for p in prompts)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(p)) + list(p) for p in prompts], device=self.device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=self.device)
        s = self.sampling
        # greedy decoding over scores our sampler has already reduced to the sampled token
        config = GenerationConfig(max_new_tokens=s.max_new_tokens, do_sample=False, pad_token_id=pad,
                                  eos_token_id=self.eos_ids)
        processors = LogitsProcessorList([SeededSampler(seeds, s.temperature, s.top_p)] if s.temperature > 0 else [])
        with torch.inference_mode():
            # use_model_defaults=False: without it, for a model whose generation_config.json was
            # written by transformers >= 4.50 (any re-saved policy), `generate` replaces every field
            # of `config` left at its default with the model's own (do_sample, repetition_penalty,
            # no_repeat_ngram_size, min_new_tokens, suppress_tokens...; transformers 4.57
            # `GenerationMixin._prepare_generation_config`), and those processors run before ours.
            # With it, `config`'s defaults stay neutral: SeededSampler is the only logits processor.
            generated = self.model.generate(input_ids=input_ids, attention_mask=mask, generation_config=config,
                                            logits_processor=processors, use_model_defaults=False)
        new_tokens = generated[:, width:].tolist()
        eos = set(self.eos_ids)
        completions = []
        for tokens in new_tokens:
            text = self.tokenizer.decode(tokens, skip_special_tokens=True)
            cut = truncate_at_stop(text, s.stop)
            ended = any(t in eos for t in tokens) or len(cut) < len(text)
            completions.append(Completion(cut, truncated=not ended and len(tokens) >= s.max_new_tokens))
        return completions

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "model": self.cfg.model,
            "dtype": str(self.dtype).replace("torch.", ""),
            "device": str(self.device),
        }


class SeededSampler:
    """A logits processor that samples every row with its own ``torch.Generator`` (seeded with
    that completion's seed) and leaves only the sampled token: greedy decoding then emits it.

    transformers' sampling draws all rows from the global generator, so a row's tokens would
    depend on its batch neighbours and on the batch order; here they depend on its seed only.
    """

    def __init__(self, seeds: list[int], temperature: float, top_p: float):
        import torch

        self.seeds = list(seeds)  # row i's seed
        self.generators = [torch.Generator().manual_seed(seed) for seed in seeds]
        self.temperature, self.top_p = temperature, top_p

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        probs = torch.softmax(scores.float() / self.temperature, dim=-1)
        if self.top_p < 1.0:
            sorted_probs, order = probs.sort(dim=-1, descending=True)
            # keep the smallest set whose mass reaches top_p (the most likely token always)
            drop = sorted_probs.cumsum(-1) - sorted_probs >= self.top_p
            sorted_probs = sorted_probs.masked_fill(drop, 0.0)
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
        probs = probs.cpu()
        chosen = torch.stack([torch.multinomial(probs[i], 1, generator=g) for i, g in enumerate(self.generators)])
        out = torch.full_like(scores, float("-inf"))
        return out.scatter(-1, chosen.to(scores.device), 0.0)
