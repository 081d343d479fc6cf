"""`hf` backend: transformers `generate`, batched across step prefixes with left padding."""

from __future__ import annotations

from typing import Any

from nemo_erprm.errors import ConfigError
from nemo_erprm.embedded import resolve_model_path
from nemo_erprm.labeling.backends.base import (
    BackendConfig,
    GenerationBackend,
    PromptConfig,
    SamplingConfig,
    format_prompt,
    truncate_at_stop,
)

# End-of-turn markers of common chat templates: generation stops at any that is a single token.
_END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "<|endoftext|>", "</s>", "<|end|>")


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
        eos = {self.tokenizer.eos_token_id} if self.tokenizer.eos_token_id is not None else set()
        vocab = self.tokenizer.get_vocab()
        eos |= {vocab[t] for t in _END_OF_TURN if t in vocab}
        self.eos_ids = sorted(eos)
        self._torch = torch

    def format_prompt(self, question: str) -> str:
        return format_prompt(self.tokenizer, question, self.prompt_cfg)

    def generate(self, prompts: list[str], n: int, seed: int) -> list[list[str]]:
        torch = self._torch
        flat = [p for p in prompts for _ in range(n)]
        outputs: list[str] = []
        # One seed per call: the call's batches depend only on its prompts, so results do not
        # depend on what ran before (resume, sharding).
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        try:
            for start in range(0, len(flat), self.cfg.batch_size):
                outputs.extend(self._generate_batch(flat[start : start + self.cfg.batch_size]))
        finally:
            torch.random.set_rng_state(generator_state)
        return [outputs[i * n : (i + 1) * n] for i in range(len(prompts))]

    def _generate_batch(self, texts: list[str]) -> list[str]:
        torch = self._torch
        # Prompts rendered by a chat template already carry their special tokens.
        add_special = getattr(self.tokenizer, "chat_template", None) is None
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=add_special)
        enc = {k: enc[k].to(self.device) for k in ("input_ids", "attention_mask")}
        s = self.sampling
        kwargs: dict[str, Any] = {"max_new_tokens": s.max_new_tokens}
        if s.temperature > 0:
            kwargs.update(do_sample=True, temperature=s.temperature, top_p=s.top_p, top_k=0)
        else:
            kwargs.update(do_sample=False)
        with torch.inference_mode():
            out = self.model.generate(
                **enc, pad_token_id=self.tokenizer.pad_token_id, eos_token_id=self.eos_ids, **kwargs
            )
        new_tokens = out[:, enc["input_ids"].shape[1] :]
        texts_out = self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        return [truncate_at_stop(t, s.stop) for t in texts_out]

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "model": self.cfg.model,
            "dtype": str(self.dtype).replace("torch.", ""),
            "device": str(self.device),
        }
