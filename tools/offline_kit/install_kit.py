#!/usr/bin/env python3
"""Install the offline kit (``make offline-kit``) into a folder on a machine without network,
beside its own torch, and check that the training path imports and is version-consistent.

    python3 tools/offline_kit/install_kit.py --kit build/offline-kit --target /tmp/erprm-site
    export PYTHONPATH=/tmp/erprm-site:$PWD        # then: python3 -m nemo_erprm.train ...

Standard library only (``packaging`` from pip's vendored copy where missing): it runs on the
bare target. Steps:
1. every wheel of ``manifest.json`` is there with its sha256, and this Python is the kit's;
2. ``pip install --no-index --no-deps --no-compile --target DIR`` of all of them (nothing is
   resolved or fetched; the target's torch and site-packages are not touched); into a
   temporary folder first, so a failed install leaves no half folder; skipped when DIR already
   holds this kit;
3. the check, in a fresh process with ``PYTHONPATH=DIR:<repo>``: ``import nemo.collections.llm,
   megatron.core, nemo_erprm`` (and the training path's modules), then, pip-check style, every
   requirement of every distribution those imports loaded is met by what is installed (the
   kit's copy first, as the import system sees it). A requirement the kit's ``keep_image``
   overrides is reported, not failed; a declared requirement that is not installed is listed
   (the imports just proved that the training path does not load it).

Exit status: 0 installed and checked; 1 the check failed (what failed is printed); 2 the kit is
incomplete or not for this Python.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))
from kit_format import KEEP_IMAGE, MANIFEST, canonical, never_carried, sha256  # noqa: E402

# nemo.collections.llm.api on its own: llm/__init__ swallows its ImportError, and llm.train with it
CHECK_MODULES = ["nemo.collections.llm", "nemo.collections.llm.api", "megatron.core", "nemo_erprm", "nemo_erprm.train",
                 "nemo_erprm.training.trainer_setup", "nemo_erprm.eval.scorers", "nemo_erprm.labeling.backends.hf",
                 "nemo_erprm.experiments.eta_sweep", "nemo_erprm.experiments.arith_policy",
                 "nemo_erprm.experiments.sweep_report", "transformers.trainer"]
# requirements followed from extras (the training path uses nemo-toolkit's, see needs.py)
EXTRAS = {"nemo-toolkit": ("llm", "run", "lightning", "common")}
STAMP = ".erprm-kit.json"


class KitError(Exception):
    """The kit is incomplete, damaged or not for this interpreter (exit status 2)."""


def read_manifest(kit: Path, python: Optional[str] = None) -> dict[str, Any]:
    """The kit's manifest, after checking every wheel's sha256 and that the kit is for
    ``python`` (major.minor; default: this interpreter's)."""
    path = kit / MANIFEST
    if not path.is_file():
        raise KitError(f"{path}: no manifest (build the kit with `make offline-kit`)")
    try:
        manifest = json.loads(path.read_text())
    except ValueError as e:
        raise KitError(f"{path}: not JSON ({e})") from None
    want = manifest.get("python_version")
    have = python or f"{sys.version_info.major}.{sys.version_info.minor}"
    if want != have:
        raise KitError(f"{path}: the kit is for Python {want}, this is Python {have} ({sys.executable})")
    for entry in manifest.get("carried", []):
        whl = kit / entry["file"]
        if not whl.is_file():
            raise KitError(f"{whl}: missing (the kit lists {entry['name']} {entry['version']})")
        if sha256(whl) != entry["sha256"]:
            raise KitError(f"{whl}: sha256 differs from the manifest's (damaged in transfer?)")
    return manifest


def kit_digest(manifest: dict[str, Any]) -> str:
    return hashlib.sha256("".join(sorted(e["sha256"] for e in manifest["carried"])).encode()).hexdigest()[:16]


def install(kit: Path, target: Path, manifest: dict[str, Any]) -> bool:
    """Install the wheels into ``target`` (True) unless it already holds this kit (False)."""
    stamp = target / STAMP
    digest = kit_digest(manifest)
    if stamp.is_file() and json.loads(stamp.read_text()).get("kit") == digest:
        return False
    tmp = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    wheels = [str(kit / e["file"]) for e in manifest["carried"]]
    cmd = [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir",
           "--disable-pip-version-check", "--no-warn-script-location", "--quiet", "--target", str(tmp), *wheels]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise KitError(f"pip install --target failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    (tmp / STAMP).write_text(json.dumps({"kit": digest, "python": sys.executable}) + "\n")
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return True


def _packaging():
    try:
        from packaging.markers import default_environment
        from packaging.requirements import Requirement
    except ImportError:
        from pip._vendor.packaging.markers import default_environment  # type: ignore[no-redef]
        from pip._vendor.packaging.requirements import Requirement  # type: ignore[no-redef]
    return Requirement, default_environment


def loaded_distributions() -> dict[str, Any]:
    """canonical name -> distribution, for every loaded module whose file a distribution's
    RECORD lists (the copy the import system found, so the kit's where it shadows the image's)."""
    import importlib.metadata as md

    owner: dict[str, Any] = {}
    seen: set[str] = set()
    for path in filter(None, sys.path):  # sys.path order: the first copy of a name wins
        try:
            dists = list(md.distributions(path=[path]))
        except Exception:
            continue
        for dist in dists:
            name = canonical(dist.metadata["Name"] or "")
            if not name or name in seen:
                continue
            seen.add(name)
            for f in dist.files or []:
                owner[os.path.realpath(dist.locate_file(f))] = dist
    out = {}
    for mod in list(sys.modules.values()):
        path = getattr(mod, "__file__", None)
        dist = owner.get(os.path.realpath(path)) if path else None
        if dist is not None:
            out[canonical(dist.metadata["Name"])] = dist
    return out


def installed_versions() -> dict[str, str]:
    """canonical name -> version of the first copy on sys.path (what imports would get)."""
    import importlib.metadata as md

    versions: dict[str, str] = {}
    for path in filter(None, sys.path):
        try:
            for dist in md.distributions(path=[path]):
                versions.setdefault(canonical(dist.metadata["Name"] or ""), dist.version)
        except Exception:
            continue
    return versions


def consistency(loaded: dict[str, Any], versions: dict[str, str]) -> dict[str, Any]:
    """pip check over the loaded distributions: unmet requirements (failures), requirements the
    kit deliberately leaves to the image (``keep_image``), declared but not installed ones."""
    Requirement, default_environment = _packaging()
    env = default_environment()
    unmet, kept, not_installed = [], [], []
    for name, dist in sorted(loaded.items()):
        if never_carried(name):  # torch's own CUDA pins are the image's business, not the kit's
            continue
        for line in dist.requires or []:
            req = Requirement(line)
            extras = EXTRAS.get(name, ())
            if req.marker is not None and not any(req.marker.evaluate({**env, "extra": e}) for e in ("", *extras)):
                continue
            dep = canonical(req.name)
            have = versions.get(dep)
            if have is None:
                not_installed.append(f"{name} -> {req}")
                continue
            if not req.specifier.contains(have, prereleases=True):
                item = f"{name} requires {req}, installed {dep} {have}"
                (kept if dep in KEEP_IMAGE else unmet).append(item)
    return {"unmet": unmet, "kept_from_image": kept, "declared_not_installed": not_installed}


def check_in_this_process(modules: list[str]) -> dict[str, Any]:
    """Import ``modules``, then the consistency check; the result as a dict."""
    import importlib
    import time

    t0 = time.time()
    failed = {}
    for m in modules:
        try:
            importlib.import_module(m)
        except Exception as e:  # every failure is reported, not only the first
            failed[m] = f"{type(e).__name__}: {e}"
    result: dict[str, Any] = {"imports_failed": failed, "import_seconds": round(time.time() - t0, 1)}
    versions = installed_versions()
    loaded = loaded_distributions()
    result.update(consistency(loaded, versions))
    result["loaded"] = {n: d.version for n, d in sorted(loaded.items())}
    try:
        import torch

        result["torch"] = torch.__version__
        result["cuda_available"] = torch.cuda.is_available()
    except Exception as e:
        result["torch"] = f"import failed: {e}"
    result["ok"] = not failed and not result["unmet"]
    return result


def run_check(target: Path, modules: list[str]) -> dict[str, Any]:
    """The check in a fresh interpreter with the kit and the checkout first on the path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(target), str(REPO), env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--check-here", *modules],
                          env=env, capture_output=True, text=True, cwd=REPO)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("{")]
    if not lines:
        return {"ok": False, "imports_failed": {"(check process)": f"exit {proc.returncode}: {proc.stderr[-3000:]}"},
                "unmet": [], "kept_from_image": [], "declared_not_installed": []}
    return json.loads(lines[-1])


def report(result: dict[str, Any], target: Path) -> None:
    for m, err in result["imports_failed"].items():
        print(f"  import {m}: FAILED {err}")
    for item in result["unmet"]:
        print(f"  version: {item}")
    for item in result["kept_from_image"]:
        print(f"  kept from the image (keep_image): {item}")
    n = len(result["declared_not_installed"])
    if n:
        print(f"  {n} declared requirements are not installed and were not loaded (e.g. "
              f"{'; '.join(result['declared_not_installed'][:3])})")
    verdict = "OK" if result["ok"] else "FAILED"
    print(f"offline kit at {target}: {verdict}: {len(result.get('loaded', {}))} distributions loaded, imports "
          f"in {result.get('import_seconds', '?')} s; torch {result.get('torch')}, CUDA "
          f"{'available' if result.get('cuda_available') else 'not available'}")


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--kit", type=Path, default=REPO / "build" / "offline-kit")
    p.add_argument("--target", type=Path, help="folder to install into (put it first on PYTHONPATH)")
    p.add_argument("--no-check", action="store_true", help="install only")
    p.add_argument("--check-only", action="store_true", help="check an installed --target")
    p.add_argument("--json", type=Path, help="also write the check's result here")
    p.add_argument("--check-here", nargs="*", help=argparse.SUPPRESS)  # the check's own process
    args = p.parse_args(argv)
    if args.check_here is not None:
        print(json.dumps(check_in_this_process(args.check_here or CHECK_MODULES)))
        return 0
    if args.target is None:
        p.error("--target is required")
    target = args.target.resolve()
    try:
        manifest = read_manifest(args.kit)
        if not args.check_only:
            fresh = install(args.kit, target, manifest)
            print(f"offline kit: {len(manifest['carried'])} wheels {'installed into' if fresh else 'already in'} "
                  f"{target}")
        elif not (target / STAMP).is_file():
            raise KitError(f"{target}: no kit installed there (run without --check-only)")
    except KitError as e:
        print(f"install_kit: {e}", file=sys.stderr)
        return 2
    if args.no_check:
        return 0
    result = run_check(target, CHECK_MODULES)
    report(result, target)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
