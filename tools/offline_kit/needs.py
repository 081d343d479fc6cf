#!/usr/bin/env python
"""What the training path needs, as a list: regenerate ``requirements/offline-kit.txt``.

    .venv/bin/python tools/offline_kit/needs.py > requirements/offline-kit.txt

Run it in the training environment (``make venv``). It imports the training path
(:data:`TRAINING_PATH_MODULES`: the modules ``python -m nemo_erprm.train``, the η-sweep's
stages and ``benchmarks/gpu_run.py`` load) in a fresh process and maps every loaded module to
its distribution. For each it writes the version this environment has (the one the kit
carries when the target lacks it) and the specifier the training path accepts: the
intersection of every requirement on it from the loaded set (markers evaluated for the
target, Python 3.12 on Linux x86-64; nemo-toolkit's extras included).

``build_kit.py`` subtracts the target image's distributions (``requirements/offline-kit-image.txt``)
from this list. Kept deliberately out: torch and the CUDA libraries (``kit_format.NEVER_CARRIED``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kit_format import CARRY_ALWAYS, KEEP_IMAGE, Need, canonical, format_needs, never_carried, target_environment  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
TRAINING_PATH_MODULES = [
    # nemo.collections.llm.api on its own: llm/__init__ swallows its ImportError (and llm.train with it)
    "nemo.collections.llm", "nemo.collections.llm.api", "megatron.core", "nemo_erprm", "nemo_erprm.train",
    "nemo_erprm.nemo.model",
    "nemo_erprm.training.trainer_setup", "nemo_erprm.training.model_setup", "nemo_erprm.training.data_setup",
    "nemo_erprm.training.callbacks", "nemo_erprm.convert.cli", "nemo_erprm.convert.load", "nemo_erprm.eval.cli",
    "nemo_erprm.eval.scorers", "nemo_erprm.labeling.cli", "nemo_erprm.labeling.backends.hf",
    "nemo_erprm.experiments.eta_sweep", "nemo_erprm.experiments.arith_policy", "nemo_erprm.experiments.arith_task",
    "nemo_erprm.experiments.sweep_report", "nemo_erprm.experiments.probes", "transformers.trainer",
    # imported inside functions of the path (grading, reports, data): named so the trace sees them
    "matplotlib.pyplot", "math_verify", "datasets", "safetensors", "tokenizers", "tqdm", "yaml",
]
# extras of a distribution the training path really uses (the rest of its extras are not followed)
EXTRAS = {"nemo-toolkit": ("llm", "run", "lightning", "common")}
# Imported only when present (each checked by the trace, which runs with them absent): carrying
# them would cost ~70 MiB, more than the kit may weigh.
OPTIONAL = {
    "wandb": "lightning's and NeMo's W&B logger (logging.wandb_project unset)",
    "boto3": "accelerate's and NeMo's S3 support", "botocore": "boto3", "s3transfer": "boto3",
    "multistorageclient": "megatron's object-store checkpoints (checkpoints are local files)",
    "hydra_plugins.hydra_msc_plugin": "multi-storage-client's Hydra plugin",
    "zarr": "megatron's zarr checkpoint format (torch_dist is used)", "numcodecs": "zarr",
"nvtx": "megatron's NVTX ranges (profiling off)",
}
_TRACE = r"""
import importlib, importlib.metadata as md, json, os, sys
absent, modules = sys.argv[1].split(','), sys.argv[2:]
for name in filter(None, absent):
    sys.modules[name] = None  # absent: import raises, importlib.util.find_spec returns None
for m in modules:
    importlib.import_module(m)
# each loaded module's file -> the distribution whose RECORD lists it (exact, namespace packages too)
owner = {}
for dist in md.distributions():
    where = str(dist.locate_file(''))
    if '_vendor' in where:  # setuptools' and pip's vendored copies are not installed distributions
        continue
    for f in dist.files or []:
        owner[os.path.realpath(dist.locate_file(f))] = dist
out = {}
for mod in list(sys.modules.values()):
    path = getattr(mod, '__file__', None)
    dist = owner.get(os.path.realpath(path)) if path else None
    if dist is not None:
        out[dist.metadata['Name']] = {'version': dist.version, 'requires': dist.requires or []}
print(json.dumps(out))
"""


def traced_distributions(python: str, modules: list[str], absent: list[str]) -> dict[str, dict[str, Any]]:
    """Distribution -> {version, requires} of every module loaded by importing ``modules`` in
    ``python`` with the top-level modules ``absent`` made unimportable."""
    out = subprocess.run([python, "-c", _TRACE, ",".join(absent), *modules], cwd=REPO, capture_output=True,
                         text=True)
    if out.returncode != 0:
        raise SystemExit(f"needs: the training path does not import with {absent} absent:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def needs_of(traced: dict[str, dict[str, Any]]) -> dict[str, Need]:
    """The traced distributions, each with the specifier the traced set accepts for it (every
    requirement on it from the set: base requirements, and nemo-toolkit's extras in
    :data:`EXTRAS`, which pin transformers, lightning and numpy) and who asks for it.

    Not closed over requirements: a declared requirement the training path never loads stays
    out (leptonai's ray alone is larger than the whole kit may be); ``install_kit.py`` lists
    them as declared but not installed, and its import check proves they are not loaded."""
    from packaging.requirements import Requirement

    env = target_environment()
    present: dict[str, dict[str, Any]] = {}
    for original, dist in traced.items():
        name = canonical(original)
        if name == "nemo-erprm" or (never_carried(name) and name != "torch"):
            continue  # the checkout travels itself; torch stays for its specifier, never carried
        present[name] = dist
    needs = {n: Need(n, d["version"]) for n, d in present.items()}
    for name, dist in present.items():
        for line in dist["requires"]:
            req = Requirement(line)
            dep = canonical(req.name)
            extras = EXTRAS.get(name, ())
            if dep not in needs or (req.marker is not None and
                                    not any(req.marker.evaluate({**env, "extra": e}) for e in ("", *extras))):
                continue
            needs[dep].specifier &= req.specifier
            needs[dep].required_by.append(name)
    return needs


def main() -> int:
    traced = traced_distributions(sys.executable, TRAINING_PATH_MODULES, sorted(OPTIONAL))
    needs = needs_of(traced)
    header = [
        "# What the training path needs (nemo_erprm.train, the η-sweep's stages, benchmarks/gpu_run.py),",
        "# generated by `.venv/bin/python tools/offline_kit/needs.py > requirements/offline-kit.txt` from the",
        "# training environment: every distribution those imports load (declared requirements they never",
        "# load stay out; install_kit.py lists them).",
        "# Columns: name, the version this environment has (carried when the target lacks an accepted one),",
        "# the specifier the training path accepts (all requirements on it; '*' any), who requires it.",
        "# torch is listed for its specifier only: it, triton and the CUDA libraries are never carried (the",
        "# target's own build is used; build_kit.py checks that the target's torch meets the specifier).",
        *(f"# keep-image {n}: {why}" for n, why in KEEP_IMAGE.items()),
        *(f"# carry-always {n}: {why}" for n, why in CARRY_ALWAYS.items()),
        *(f"# optional, left out: {m} ({why})" for m, why in OPTIONAL.items()),
    ]
    print(format_needs(header, needs.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
