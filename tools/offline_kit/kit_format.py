"""The offline kit's shared pieces: the needs list, the image list, the kit's layout, and the
version arithmetic. Standard library plus ``packaging`` (pip's vendored copy where the
target has no ``packaging``), because ``install_kit.py`` runs on the bare target before
anything is installed."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

try:
    from packaging.specifiers import SpecifierSet
    from packaging.version import InvalidVersion, Version
except ImportError:  # a bare interpreter: pip always carries its own copy
    from pip._vendor.packaging.specifiers import SpecifierSet  # type: ignore[no-redef]
    from pip._vendor.packaging.version import InvalidVersion, Version  # type: ignore[no-redef]

# never carried: the target's own CUDA build of torch (and what is built with it) stays
NEVER_CARRIED = frozenset({"torch", "triton", "torchvision", "torchaudio", "pip"})
# the CUDA libraries' distributions (not NVIDIA's Python packages such as nvidia-modelopt)
NEVER_CARRIED_PATTERN = re.compile(r"(nvidia-(cu|nccl|nvjitlink|nvtx|nvshmem)|cuda-)")
# pins the training path declares but the target's own version is kept (name -> why)
KEEP_IMAGE = {
    "numpy": "megatron-core 0.15.3 and nemo-toolkit[llm] declare numpy<2, but a carried numpy 1.26 would sit "
             "in front of the image's pandas, matplotlib and scipy, which are built for numpy 2; the training "
             "path runs on numpy 2 (the stand-in check of tests/test_offline_kit.py)",
    "protobuf": "nemo-toolkit pins protobuf~=5.29.5, but the image's tensorboard and onnx hold code generated "
                "for protobuf >= 6.31, which the 5.29 runtime refuses (seen in the stand-in: 'VersionError: "
                "gencode 6.31.1 runtime 5.29.6' importing megatron.core)",
    "tensorstore": "nemo-toolkit[llm] declares tensorstore<0.1.72, but only nemo.export imports it (at import "
                   "time; training never calls it) and the carried 0.1.71 would weigh 17 MiB",
}
# carried although the image has them: a pin of a carried distribution excludes the image's
# recent release (found by the stand-in check, whose neighbours are the newest releases)
CARRY_ALWAYS = {
    "packaging": "lightning 2.4.0 (carried) requires packaging<25.0; recent images have 25 or newer",
}
# carried without parts the training path never runs (wheel path prefix -> why); the rest of the
# wheel, its version and its RECORD (minus those files) stay as published
SLIM = {
    "pulp": ("pulp/solverdir/", "the bundled CBC solver binaries (35 MB of the 36): nvidia-modelopt's searcher "
                                "imports pulp, which nemo.collections.llm.api needs, but nothing here solves"),
}
WHEELS, MANIFEST, TOKENIZER = "wheels", "manifest.json", "tokenizer/smollm2"


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks (wheels of hundreds of MB)."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def canonical(name: str) -> str:
    """PEP 503 normalised distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def never_carried(name: str) -> bool:
    name = canonical(name)
    return name in NEVER_CARRIED or NEVER_CARRIED_PATTERN.match(name) is not None


@dataclass
class Need:
    """One distribution the training path loads: the version the build environment has (the
    one carried when the target lacks an accepted one) and what the training path accepts."""

    name: str
    version: str
    specifier: SpecifierSet = field(default_factory=SpecifierSet)
    required_by: list[str] = field(default_factory=list)

    def accepts(self, version: str) -> bool:
        try:
            return self.specifier.contains(Version(version), prereleases=True)
        except InvalidVersion:
            return False


def format_needs(header: Iterable[str], needs: Iterable[Need]) -> str:
    lines = list(header)
    for n in sorted(needs, key=lambda n: n.name):
        by = ",".join(sorted(set(n.required_by))) or "-"
        lines.append(f"{n.name} {n.version} {str(n.specifier) or '*'} {by}")
    return "\n".join(lines) + "\n"


def parse_needs(text: str, source: str = "needs") -> list[Need]:
    """``name version specifier required-by`` lines; ``#`` comments."""
    needs = []
    for i, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 4:
            raise ValueError(f"{source}:{i}: expected 'name version specifier required-by', got {raw!r}")
        name, version, spec, by = parts
        try:
            Version(version)
            specifier = SpecifierSet("" if spec == "*" else spec)
        except Exception as e:
            raise ValueError(f"{source}:{i}: {e}") from None
        need = Need(canonical(name), version, specifier, [] if by == "-" else by.split(","))
        if not need.accepts(version):
            raise ValueError(f"{source}:{i}: {name} {version} is outside its own specifier {spec}")
        needs.append(need)
    return needs


def parse_image(text: str, source: str = "image list") -> dict[str, Optional[str]]:
    """``name==version`` (version known) or ``name`` (installed, version not known) lines."""
    image: dict[str, Optional[str]] = {}
    for i, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, _, version = line.partition("==")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name.strip()):
            raise ValueError(f"{source}:{i}: not a distribution name: {raw!r}")
        if version:
            try:
                Version(version.strip())
            except InvalidVersion:
                raise ValueError(f"{source}:{i}: not a version: {version!r}") from None
        image[canonical(name.strip())] = version.strip() or None
    return image


def held_back(need: Need) -> bool:
    """Whether the training path holds this distribution below its next minor release (a pin,
    ``<=``, ``~=x.y.z``, ``<x.y+1``): a recent release on the target would not do."""
    v = Version(need.version)
    return not need.accepts(f"{v.major}.{v.minor + 1}")


def image_decision(need: Need, image: dict[str, Optional[str]]) -> tuple[bool, str]:
    """(carried, why) for one need against the target's installed distributions. A version the
    image list does not give is assumed as recent as the build environment's (both were
    resolved in the same months): it does unless the training path holds the distribution
    back (:func:`held_back`). ``install_kit.py`` checks the real versions on the target."""
    if need.name in KEEP_IMAGE and need.name in image:
        return False, f"the image's {image[need.name] or 'own'} is kept (keep-image)"
    if need.name in CARRY_ALWAYS:
        return True, CARRY_ALWAYS[need.name]
    if need.name not in image:
        return True, "not in the image"
    have = image[need.name]
    if have is None:
        if held_back(need):
            return True, f"the image's version is not listed and {need.specifier} holds it back"
        return False, f"in the image (version not listed; {need.specifier or 'any'} accepted)"
    if need.accepts(have):
        return False, f"the image's {have} meets {need.specifier or 'any'}"
    return True, f"the image's {have} does not meet {need.specifier}"


def target_environment(python_version: str = "3.12", full_version: Optional[str] = None) -> dict[str, str]:
    """PEP 508 marker environment of the target (CPython on Linux x86-64)."""
    return {"implementation_name": "cpython", "implementation_version": full_version or f"{python_version}.0",
            "os_name": "posix", "platform_machine": "x86_64", "platform_release": "", "platform_system": "Linux",
            "platform_version": "", "python_full_version": full_version or f"{python_version}.0",
            "platform_python_implementation": "CPython", "python_version": python_version, "sys_platform": "linux"}
