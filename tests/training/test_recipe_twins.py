"""The shipped 7B recipes on CPU: each `conf/erprm_*.yaml` becomes a tiny-model twin that keeps
every setting of the recipe except the CUDA kernels, run through `python -m nemo_erprm.train`
itself at the recipe's own layout (TP=2 with sequence parallelism, 2 processes) and at DP=2 with
the distributed optimizer and both overlaps (2 processes), against a TP=1 run from the same
checkpoint; and a distributed-optimizer checkpoint written at TP=1/DP=2 resumed at TP=2.

The twin is derived from the recipe file here, so a recipe change cannot escape these runs:
what the twin may change is the closed list `TWIN_CHANGES` (checked), everything else is read
from the file. Recipes whose twins coincide (they differ only in `PER_RECIPE` keys: which
checkpoint, which records, which label column) run once.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from nemo_erprm.training.config import TrainConfig
from tests.training.conftest import REPO, run, train_cmd

pytestmark = pytest.mark.slow

RECIPES = sorted((REPO / "conf").glob("erprm_*.yaml"))
STEPS = 5
TOL = 1e-5
# What a CPU twin changes, and why. Anything else comes from the recipe file.
TWIN_CHANGES = {
    "model.transformer_impl": "local",  # TE kernels -> megatron's local spec (SP-capable norms on CPU)
    "model.precision": "fp32",  # bf16 numerics need a GPU; fp32 makes parity exact to 1e-5
    "model.init_from": None,  # a tiny converted checkpoint (set per head)
    "data.train": None,  # tiny labeled records
    "data.global_batch_size": 4,  # the tiny data set has a few dozen packed rows
    "data.num_proc": 1,  # 2 cores here
    # A 7B model has hundreds of DDP buckets, the tiny one fits in one: small buckets make the
    # overlapped all-gathers interleave with the forward pass as they do at scale.
    "optim.ddp_bucket_size": 20000,
    "optim.lr": 5e-3,  # at the paper's 1e-6 a wrong gradient would not show in the loss of a tiny model
    "trainer.max_steps": STEPS,
    "trainer.val_check_interval": STEPS,
    "run.output_dir": None,
    "logging.tensorboard": False,
    "logging.sample_ids": True,
    "export.hf": False,  # exports are tested elsewhere
}
PER_RECIPE = ("run.name", "model.init_from", "data.train", "data.eta")  # data identity, not layout/numerics


def recipe_settings(recipe: Path) -> dict:
    return OmegaConf.to_container(OmegaConf.load(recipe), resolve=True)


def flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def twin_key(recipe: Path) -> tuple:
    """What the twin of this recipe runs with, apart from data identity and the twin changes."""
    flat = flatten(recipe_settings(recipe))
    return tuple(sorted((k, repr(v)) for k, v in flat.items() if k not in PER_RECIPE and k not in TWIN_CHANGES))


def test_recipes_keep_the_gpu_path_settings_the_twins_exercise():
    """Each recipe's GPU-path settings are there to be exercised: TP=2 with sequence parallelism,
    the distributed optimizer with both overlaps, packing; FP8 stays one toggle away."""
    assert len(RECIPES) == 4, RECIPES
    for recipe in RECIPES:
        flat = flatten(recipe_settings(recipe))
        assert flat["model.tensor_model_parallel_size"] == 2 and flat["model.sequence_parallel"] is True, recipe
        assert flat["optim.distributed_optimizer"] is True, recipe
        assert flat["optim.overlap_grad_reduce"] is True and flat["optim.overlap_param_gather"] is True, recipe
        assert flat["model.transformer_impl"] == "transformer_engine" and flat["model.fp8"] is None, recipe
        assert not set(flat) - set(flatten(OmegaConf.to_container(OmegaConf.structured(TrainConfig)))), recipe


def test_twin_changes_only_the_listed_keys():
    """The twin's config equals the recipe's except for TWIN_CHANGES (and nothing slips in)."""
    for recipe in RECIPES:
        flat = flatten(recipe_settings(recipe))
        twin = dict(flat)
        twin.update({k: v for k, v in TWIN_CHANGES.items() if v is not None})
        differing = {k for k in twin if twin[k] != flat.get(k)}
        assert differing <= set(TWIN_CHANGES), differing - set(TWIN_CHANGES)


@pytest.fixture(scope="module")
def scalar_ckpt(setup):
    ckpt = setup["work"] / "init_ckpt_scalar"
    if not ckpt.exists():
        hf = setup["work"] / "tiny_llama"
        subprocess.run([sys.executable, "tools/convert_hf_checkpoint.py", "--hf-dir", str(hf), "--out", str(ckpt),
                        "--head", "scalar"], cwd=REPO, check=True, capture_output=True)
    return ckpt


def twin_overrides(recipe: Path, ckpt: Path, records: Path, out: Path, **layout) -> list[str]:
    values = dict(TWIN_CHANGES)
    values.update({"model.init_from": ckpt, "data.train": records, "run.output_dir": out})
    values.update(layout)
    return [f"{k}={'null' if v is None else v}" for k, v in values.items()]


def twin_cmd(recipe: Path, nproc: int) -> list[str]:
    cmd = train_cmd(nproc)
    cmd[cmd.index("conf/tiny_cpu.yaml")] = str(recipe.relative_to(REPO))
    return cmd


def read_run(out: Path, recipe: Path) -> dict:
    name = recipe_settings(recipe)["run"]["name"]
    rows = [json.loads(x) for x in (out / name / "metrics.jsonl").read_text().splitlines()]
    settings = json.loads((out / name / "effective_settings.json").read_text())
    return {"train": {r["step"]: r for r in rows if "split" not in r}, "settings": settings["effective"],
            "dir": out / name}


TWINS: list[Path] = []  # one recipe per distinct twin (the first of each)
for _recipe in RECIPES:
    if twin_key(_recipe) not in map(twin_key, TWINS):
        TWINS.append(_recipe)
LAYOUTS = {
    "tp1": (1, {"model.tensor_model_parallel_size": 1, "model.sequence_parallel": False}),
    "tp2_sp": (2, {}),  # the recipe's own layout: TP=2 with sequence parallelism
    "dp2_distopt": (2, {"model.tensor_model_parallel_size": 1, "model.sequence_parallel": False}),
}


@pytest.fixture(scope="module", params=["lm_tokens", "scalar"])
def twin_runs(request, setup, scalar_ckpt):
    head = request.param
    ckpt = setup["ckpt"] if head == "lm_tokens" else scalar_ckpt
    runs = {}
    for recipe in TWINS:
        for name, (nproc, layout) in LAYOUTS.items():
            out = setup["work"] / f"twin_{head}_{recipe.stem}_{name}"
            extra = {**layout, "model.head": head} if head != "lm_tokens" else layout
            run(twin_cmd(recipe, nproc) + twin_overrides(recipe, ckpt, setup["records"], out, **extra))
            runs[(recipe, name)] = read_run(out, recipe)
    return head, runs


@pytest.mark.parametrize("layout", ["tp2_sp", "dp2_distopt"])
def test_twin_matches_tp1_losses_and_grad_norms(twin_runs, layout):
    head, runs = twin_runs
    for recipe in TWINS:
        ref, other = runs[(recipe, "tp1")], runs[(recipe, layout)]
        eff = other["settings"]
        if layout == "tp2_sp":
            assert eff["tensor_model_parallel_size"] == 2 and eff["sequence_parallel"] is True
        else:
            assert eff["distributed_optimizer"] and eff["overlap_grad_reduce"] and eff["overlap_param_gather"]
            assert eff["devices_per_node"] == 2 and eff["tensor_model_parallel_size"] == 1
        assert sorted(other["train"]) == sorted(ref["train"]) == list(range(1, STEPS + 1))
        for step, r in ref["train"].items():
            o = other["train"][step]
            assert abs(o["loss"] - r["loss"]) < TOL, (head, layout, step, o["loss"], r["loss"])
            assert r["grad_norm"] is not None and r["grad_norm"] > 0
            assert abs(o["grad_norm"] - r["grad_norm"]) < TOL * max(1.0, r["grad_norm"]), (
                head, layout, step, o["grad_norm"], r["grad_norm"])
        assert any(ref["train"][s]["loss"] != ref["train"][1]["loss"] for s in ref["train"])  # it trains


def test_dist_optimizer_checkpoint_from_dp2_resumes_at_tp2(setup, twin_runs):
    """Written at TP=1/DP=2 (distributed optimizer, fully reshardable format), resumed at TP=2 with
    sequence parallelism: the resumed steps equal the uninterrupted TP=1 run."""
    head, runs = twin_runs
    if head != "lm_tokens":
        pytest.skip("one head is enough for the checkpoint format")
    recipe = TWINS[0]
    out = setup["work"] / "twin_reshard"
    nproc, dp2 = LAYOUTS["dp2_distopt"]
    run(twin_cmd(recipe, nproc) + twin_overrides(recipe, setup["ckpt"], setup["records"], out,
                                                 **dp2, **{"trainer.stop_after_steps": 3}))
    assert sorted(read_run(out, recipe)["train"]) == [1, 2, 3]
    proc = run(twin_cmd(recipe, 2) + twin_overrides(recipe, setup["ckpt"], setup["records"], out))
    assert "resumed at step 3" in proc.stdout
    resumed, ref = read_run(out, recipe), runs[(recipe, "tp1")]
    assert resumed["settings"]["tensor_model_parallel_size"] == 2 and resumed["settings"]["sequence_parallel"]
    for step in (4, 5):
        assert abs(resumed["train"][step]["loss"] - ref["train"][step]["loss"]) < TOL, step
        assert abs(resumed["train"][step]["grad_norm"] - ref["train"][step]["grad_norm"]) < TOL * max(
            1.0, ref["train"][step]["grad_norm"]), step
