"""The `hf` backend samples with SeededSampler only, whatever the policy's `generation_config.json`.

transformers 4.57 `GenerationMixin._prepare_generation_config`: when the model's generation
config was written by transformers >= 4.50 (any policy re-saved after fine-tuning), every field
of the `GenerationConfig` passed to `generate` that is still at its global default is replaced by
the model's (`do_sample`, `repetition_penalty`, `no_repeat_ngram_size`, `min_new_tokens`,
`suppress_tokens`...), and those processors run before ours: completions came from another
distribution than vLLM's (which, given explicit `SamplingParams`, applies none of them).

Two tiny Llamas with identical weights, saved to disk, one carrying such a generation config,
loaded through the backend's own loading path and run through the real `generate`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from packaging.version import Version

from nemo_erprm.labeling.backends import BackendConfig, PromptConfig, SamplingConfig, build_backend
from nemo_erprm.labeling.backends.hf import SeededSampler
from tests.tiny_models import build_tiny_llama

pytestmark = pytest.mark.slow

QUESTIONS = ["What is 2+2?", "A farmer has 17 sheep and buys 5 more; then 3 run away. How many are left?"]


@pytest.fixture(scope="module")
def twin_policies(tmp_path_factory, shared_data) -> tuple[Path, Path]:
    """(plain, with sampling defaults): the same weights and tokenizer files."""
    from transformers import GenerationConfig

    root = tmp_path_factory.mktemp("twin_policies")
    plain = build_tiny_llama(root / "plain")
    tuned = root / "with_defaults"
    shutil.copytree(plain, tuned)
    gen = GenerationConfig.from_pretrained(tuned)  # as an SFT script re-saves it
    gen.update(do_sample=True, temperature=0.6, top_k=5, top_p=0.8, min_p=0.05, typical_p=0.9,
               repetition_penalty=1.3, no_repeat_ngram_size=2, min_new_tokens=6, suppress_tokens=list(range(40, 120)),
               begin_suppress_tokens=list(range(120, 200)), bad_words_ids=[[200], [201]], renormalize_logits=True)
    gen.save_pretrained(tuned)
    written = json.loads((tuned / "generation_config.json").read_text())
    assert Version(written["transformers_version"]) >= Version("4.50") and written["repetition_penalty"] == 1.3
    return plain, tuned


def backends(twins, sampling: SamplingConfig):
    return [build_backend(BackendConfig(model=str(d), batch_size=8), sampling, PromptConfig()) for d in twins]


def record_processors(backend, monkeypatch) -> list[list[type]]:
    """The logits processors transformers assembles for each `generate` call (4.57: warpers
    included), recorded around the model's own `_get_logits_processor`."""
    seen: list[list[type]] = []
    original = backend.model._get_logits_processor

    def recording(*args, **kwargs):
        processors = original(*args, **kwargs)
        seen.append([type(p) for p in processors])
        return processors

    monkeypatch.setattr(backend.model, "_get_logits_processor", recording)
    return seen


def test_sampled_completions_ignore_the_models_generation_config(twin_policies, monkeypatch):
    plain, tuned = backends(twin_policies, SamplingConfig(n=3, temperature=1.0, max_new_tokens=16))
    processors = record_processors(tuned, monkeypatch)
    prompts = [plain.format_prompt(q) for q in QUESTIONS]
    expected = plain.generate(prompts, 3, seed=21)
    assert tuned.generate(prompts, 3, seed=21) == expected
    assert processors and all(p == [SeededSampler] for p in processors), processors
    assert len({t for texts in expected for t in texts}) == 6  # sampled: distinct seeds, distinct texts


def test_greedy_completions_ignore_the_models_generation_config(twin_policies, monkeypatch):
    plain, tuned = backends(twin_policies, SamplingConfig(n=1, temperature=0.0, max_new_tokens=16))
    processors = record_processors(tuned, monkeypatch)
    prompts = [plain.format_prompt(q) for q in QUESTIONS]
    expected = plain.generate(prompts, 1, seed=3)
    assert tuned.generate(prompts, 1, seed=3) == expected
    assert tuned.generate(prompts, 1, seed=99) == expected  # greedy: the seed plays no part
    assert processors and all(p == [] for p in processors), processors


def test_generation_stops_where_vllm_stops(twin_policies, tmp_path):
    """vLLM stops at the model's generation_config.json EOS ids as well as at the tokenizer's:
    the hf backend stops at the same set (a chat model often lists its end-of-turn id there)."""
    from transformers import GenerationConfig

    plain, _ = twin_policies
    extra = tmp_path / "two_eos"
    shutil.copytree(plain, extra)
    gen = GenerationConfig.from_pretrained(extra)
    gen.update(eos_token_id=[7, 11])
    gen.save_pretrained(extra)
    base_ids = set(backends([plain], SamplingConfig(n=1, temperature=0.0))[0].eos_ids)
    ids = set(backends([extra], SamplingConfig(n=1, temperature=0.0))[0].eos_ids)
    assert ids == base_ids | {7, 11} and not {7, 11} <= base_ids
