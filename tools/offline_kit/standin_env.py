#!/usr/bin/env python
"""A stand-in for the lent GPU's Python on a CPU machine, to prove the offline kit there.

    python tools/offline_kit/standin_env.py --out /tmp/erprm-standin [--kit build/offline-kit] \\
        [--python ~/.pyenv/versions/3.12.1/bin/python]

A fresh virtualenv of the target's Python (pyenv's 3.12.1 here; the image runs 3.12.3) with:
- **torch 2.11.0 as the image has it, a CUDA build**: PyPI's ``torch==2.11.0`` cp312 wheel (the
  CUDA 13.0 build, 531 MB; no CPU-only build of 2.11 is reachable from here) installed with
  ``--no-deps``, and the CUDA 13 libraries it links against from this machine's local wheel
  mirror (``nvidia-*`` cu13, ``cuda-toolkit`` and ``cuda-bindings``: some at newer minor
  versions than torch pins, which the shared-library names allow), so ``import torch`` works
  and ``torch.cuda.is_available()`` is False, as on any machine without a GPU;
- every distribution the training path loads that the image list holds (those the kit leaves
  to the image and those it carries at other versions), at the version the image list gives
  (``requirements/offline-kit-image.txt``: transformers 5.17, tokenizers 0.23.2, huggingface-hub
  1.33, numpy 2.5.2, accelerate 1.15, ...) and otherwise the newest release for cp312, so the
  kit meets newer neighbours than the ones it was built from.

Not installed: the kit. ``install_kit.py --target`` puts it beside this environment, as on the
target. ``tests/test_offline_kit.py`` uses the environment when ``ERPRM_KIT_STANDIN`` names it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from kit_format import MANIFEST, never_carried, parse_image  # noqa: E402

TORCH = "torch==2.11.0"
TORCH_PURE_DEPS = ["filelock", "typing-extensions>=4.10.0", "setuptools<82", "sympy>=1.13.3", "networkx>=2.5.1",
                   "jinja2", "fsspec>=0.8.5"]
CUDA_LIBS = ["nvidia-cublas", "nvidia-cuda-runtime", "nvidia-cuda-nvrtc", "nvidia-cuda-cupti", "nvidia-cudnn-cu13",
             "nvidia-cufft", "nvidia-cufile", "nvidia-curand", "nvidia-cusolver", "nvidia-cusparse",
             "nvidia-cusparselt-cu13", "nvidia-nccl-cu13", "nvidia-nvjitlink", "nvidia-nvshmem-cu13", "nvidia-nvtx",
             "cuda-toolkit", "cuda-bindings", "cuda-pathfinder"]


# Requirements of the installed distributions that nothing installed meets (torch's CUDA pins
# aside: those libraries came from the local mirror at their own versions).
_MISSING = r"""
import importlib.metadata as md, re, sys
from packaging.requirements import Requirement
have = {re.sub(r'[-_.]+', '-', d.metadata['Name']).lower(): d.version for d in md.distributions()}
skip = re.compile(r'(torch|triton|nvidia-.*|cuda-.*)$')
out = set()
for d in md.distributions():
    for line in d.requires or []:
        r = Requirement(line)
        if r.marker is not None and not r.marker.evaluate({'extra': ''}):
            continue
        name = re.sub(r'[-_.]+', '-', r.name).lower()
        if skip.match(name) or (name in have and r.specifier.contains(have[name], prereleases=True)):
            continue
        out.add(str(r.name) + str(r.specifier))
print('\n'.join(sorted(out)))
"""


def pip(python: Path, *args: str) -> None:
    subprocess.run([str(python), "-m", "pip", "--disable-pip-version-check", *args], check=True)


def missing_requirements(python: Path) -> list[str]:
    out = subprocess.run([str(python), "-c", _MISSING], capture_output=True, text=True, check=True,
                         cwd=tempfile.gettempdir()).stdout  # not a checkout: its egg-info is no installed distribution
    return [x for x in out.splitlines() if x.strip()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True, help="new virtualenv folder")
    p.add_argument("--kit", type=Path, default=REPO / "build" / "offline-kit")
    p.add_argument("--python", default=str(Path("~/.pyenv/versions/3.12.1/bin/python").expanduser()))
    p.add_argument("--wheels", type=Path, help="a folder already holding the torch wheel (skips the download)")
    args = p.parse_args(argv)
    manifest = json.loads((args.kit / MANIFEST).read_text())
    if args.out.exists():
        p.error(f"--out {args.out}: exists; choose a new folder")
    subprocess.run([args.python, "-m", "venv", str(args.out)], check=True)
    py = args.out / "bin" / "python"
    pip(py, "install", "-q", "--upgrade", "pip>=24,<26")
    links = ["--find-links", str(args.wheels)] if args.wheels else []
    pip(py, "install", "-q", "--no-deps", *links, TORCH, *CUDA_LIBS)
    pip(py, "install", "-q", *TORCH_PURE_DEPS)
    # what the image holds of what the training path loads: the kit's `provided`, and the carried
    # distributions the image has at other versions (transformers 5.17, huggingface-hub 1.33, ...)
    image = parse_image(Path(manifest["image"]).read_text(), manifest["image"])
    names = {e["name"] for e in manifest["provided"]} | {e["name"] for e in manifest["carried"] if e["name"] in image}
    provided = [{"name": n, "version": image.get(n)} for n in sorted(names) if not never_carried(n)]
    pins = [f"{e['name']}=={e['version']}" for e in provided if e["version"]]
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write("\n".join([TORCH, *pins]) + "\n")  # torch stays; the image's versions where known
        constraints = f.name
    # without dependencies, then what they require until nothing is missing: a resolver would
    # pull torch's own CUDA pins from PyPI (gigabytes) instead of the libraries installed above
    todo = [e["name"] for e in provided]
    for _ in range(12):
        pip(py, "install", "-q", "--no-deps", "-c", constraints, *todo)
        todo = missing_requirements(py)
        if not todo:
            break
    else:
        raise SystemExit(f"standin_env: requirements still missing after 12 rounds: {todo}")
    out = subprocess.run([str(py), "-c", "import torch, numpy, transformers; print(torch.__version__, "
                          "torch.cuda.is_available(), numpy.__version__, transformers.__version__)"],
                         capture_output=True, text=True, check=True).stdout.strip()
    print(f"stand-in environment {args.out}: torch, CUDA available, numpy, transformers = {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
