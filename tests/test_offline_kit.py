"""The offline install kit (`make offline-kit`, tools/offline_kit/): what it carries for a
target, the installer's checks, and — where a kit was built and a stand-in for the lent GPU's
Python exists — that it installs, imports and trains there.

The stand-in (tools/offline_kit/standin_env.py, named by ERPRM_KIT_STANDIN): a fresh Python 3.12
virtualenv with PyPI's torch 2.11.0 (the CUDA 13.0 build the image has, its CUDA libraries
from the local wheel mirror; it runs on the CPU here) and the image's versions of what the
training path loads (transformers 5.17, huggingface-hub 1.33, numpy 2.5.2, ...). It stands in
for the lent H200's python3, which cannot be reached from CI."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
KIT_TOOLS = REPO / "tools" / "offline_kit"
sys.path.insert(0, str(KIT_TOOLS))

import build_kit  # noqa: E402
import install_kit  # noqa: E402
from kit_format import (KEEP_IMAGE, Need, SpecifierSet, image_decision, never_carried, parse_image,  # noqa: E402
                        parse_needs)

KIT = Path(os.environ.get("ERPRM_KIT_DIR", REPO / "build" / "offline-kit"))
STANDIN = os.environ.get("ERPRM_KIT_STANDIN")  # a stand-in virtualenv folder (standin_env.py --out)


def need(name: str, version: str, spec: str = "") -> Need:
    return Need(name, version, SpecifierSet(spec), [])


# ---------------------------------------------------------------------------------------------
# what is carried


def test_image_decision_carries_what_the_image_lacks_or_has_at_a_refused_version():
    image = parse_image("transformers==5.17.0\ntokenizers==0.23.2\nrequests\nfsspec\nnumpy==2.5.2\nsafetensors==0.8.0\n")
    assert image_decision(need("nemo-toolkit", "2.7.3"), image)[0] is True  # not in the image
    carried, why = image_decision(need("transformers", "4.57.6", "~=4.57.0"), image)
    assert carried and "5.17.0 does not meet ~=4.57.0" in why
    assert image_decision(need("safetensors", "0.7.0", ">=0.4.3"), image) == (False, "the image's 0.8.0 meets >=0.4.3")
    # a version the list does not give: kept unless the training path holds the distribution back
    assert image_decision(need("requests", "2.34.2", "<3,>=2.26"), image)[0] is False
    carried, why = image_decision(need("fsspec", "2024.12.0", "==2024.12.0"), image)
    assert carried and "holds it back" in why
    # keep-image: declared numpy<2 is overridden on purpose (and said so)
    assert image_decision(need("numpy", "1.26.4", "<2"), image) == (False, "the image's 2.5.2 is kept (keep-image)")
    assert "numpy" in KEEP_IMAGE


def test_never_carried_are_torch_and_the_cuda_libraries_not_nvidias_python_packages():
    assert all(never_carried(n) for n in ("torch", "triton", "nvidia-cublas", "nvidia-cudnn-cu13", "nvidia-nccl-cu13",
                                          "cuda-bindings", "nvidia-nvjitlink"))
    assert not any(never_carried(n) for n in ("nvidia-modelopt", "nvidia-resiliency-ext", "nvidia-ml-py", "megatron-core"))


def test_plan_refuses_a_target_torch_the_training_path_does_not_accept():
    needs = [need("torch", "2.13.0", ">=2.6.0"), need("megatron-core", "0.15.3")]
    with pytest.raises(SystemExit, match="torch 2.5.1 does not meet"):
        build_kit.plan(needs, {}, "2.5.1")
    decided = build_kit.plan(needs, {}, "2.11.0")
    assert [e["name"] for e in decided["carried"]] == ["megatron-core"]
    assert decided["provided"][0] == {"name": "torch", "version": "2.11.0", "why": "the target's own build; meets >=2.6.0"}


def test_the_committed_lists_carry_the_training_stack_and_never_torch():
    needs = parse_needs((REPO / "requirements" / "offline-kit.txt").read_text(), "requirements/offline-kit.txt")
    image = parse_image((REPO / "requirements" / "offline-kit-image.txt").read_text())
    image["torch"] = "2.11.0"
    decided = build_kit.plan(needs, image, "2.11.0")
    carried = {e["name"]: e["version"] for e in decided["carried"]}
    assert carried["nemo-toolkit"] == "2.7.3" and carried["megatron-core"] == "0.15.3"
    assert carried["transformers"].startswith("4.57.") and carried["lightning"] == "2.4.0"
    assert "huggingface-hub" in carried and "tokenizers" in carried  # the image's 1.33 / 0.23.2 are refused
    assert not [n for n in carried if never_carried(n)] and "numpy" not in carried


def test_bad_lines_name_the_file_and_line():
    with pytest.raises(ValueError, match=r"needs.txt:2: expected 'name version specifier required-by'"):
        parse_needs("a 1.0 * -\nb 2.0\n", "needs.txt")
    with pytest.raises(ValueError, match=r"needs.txt:1: c 3.0 is outside its own specifier <2"):
        parse_needs("c 3.0 <2 -\n", "needs.txt")
    with pytest.raises(ValueError, match=r"image.txt:2: not a version"):
        parse_image("torch==2.11.0\nnumpy==two\n", "image.txt")


def test_platform_tags_cover_every_older_manylinux():
    tags = build_kit.platform_tags("manylinux_2_39_x86_64")
    assert tags[0] == "manylinux_2_39_x86_64" and "manylinux_2_17_x86_64" in tags and "manylinux2014_x86_64" in tags
    assert "manylinux_2_40_x86_64" not in tags and build_kit.platform_tags("any") == ["any"]


def test_slim_wheel_drops_the_prefix_and_its_record_lines(tmp_path):
    whl = tmp_path / "pulp-3.3.2-py3-none-any.whl"
    record = "pulp/__init__.py,sha256=x,1\npulp/solverdir/cbc/cbc,sha256=y,2\npulp-3.3.2.dist-info/RECORD,,\n"
    with zipfile.ZipFile(whl, "w") as z:
        z.writestr("pulp/__init__.py", "x")
        z.writestr("pulp/solverdir/cbc/cbc", b"\0" * 1000)
        z.writestr("pulp-3.3.2.dist-info/RECORD", record)
    assert build_kit.slim_wheel(whl, "pulp/solverdir/") == 1
    with zipfile.ZipFile(whl) as z:
        assert z.namelist() == ["pulp/__init__.py", "pulp-3.3.2.dist-info/RECORD"]
        assert z.read("pulp-3.3.2.dist-info/RECORD").decode() == "pulp/__init__.py,sha256=x,1\npulp-3.3.2.dist-info/RECORD,,\n"


# ---------------------------------------------------------------------------------------------
# the installer's checks


def fake_kit(tmp_path: Path, python: str = "3.12") -> Path:
    kit = tmp_path / "kit"
    (kit / "wheels").mkdir(parents=True)
    whl = kit / "wheels" / "demo-1.0-py3-none-any.whl"
    whl.write_bytes(b"not really a wheel")
    entry = {"name": "demo", "version": "1.0", "file": "wheels/demo-1.0-py3-none-any.whl",
             "sha256": hashlib.sha256(whl.read_bytes()).hexdigest()}
    (kit / "manifest.json").write_text(json.dumps({"python_version": python, "carried": [entry]}))
    return kit


def test_manifest_check_refuses_another_python_a_missing_or_damaged_wheel(tmp_path):
    kit = fake_kit(tmp_path)
    assert install_kit.read_manifest(kit, "3.12")["carried"][0]["name"] == "demo"
    with pytest.raises(install_kit.KitError, match=r"the kit is for Python 3.12, this is Python 3.11"):
        install_kit.read_manifest(kit, "3.11")
    (kit / "wheels" / "demo-1.0-py3-none-any.whl").write_bytes(b"changed in transfer")
    with pytest.raises(install_kit.KitError, match=r"demo-1.0-py3-none-any.whl: sha256 differs"):
        install_kit.read_manifest(kit, "3.12")
    (kit / "wheels" / "demo-1.0-py3-none-any.whl").unlink()
    with pytest.raises(install_kit.KitError, match=r"missing \(the kit lists demo 1.0\)"):
        install_kit.read_manifest(kit, "3.12")
    with pytest.raises(install_kit.KitError, match="no manifest"):
        install_kit.read_manifest(tmp_path / "nowhere", "3.12")


def fake_dist(site: Path, name: str, version: str, requires: list[str]):
    import importlib.metadata as md

    info = site / f"{name}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
                                   + "".join(f"Requires-Dist: {r}\n" for r in requires))
    return md.PathDistribution(info)


def test_consistency_fails_unmet_pins_reports_kept_ones_and_skips_torchs_own(tmp_path):
    loaded = {
        "megatron-core": fake_dist(tmp_path, "megatron-core", "0.15.3", ["numpy<2.0.0", "packaging>=24.2", "torch"]),
        "lightning": fake_dist(tmp_path, "lightning", "2.4.0", ["packaging<25.0,>=20.0", "absent-one"]),
        "torch": fake_dist(tmp_path, "torch", "2.11.0", ["nvidia-cudnn-cu13==9.19.0.56"]),
    }
    versions = {"numpy": "2.5.2", "packaging": "26.4", "torch": "2.11.0", "nvidia-cudnn-cu13": "9.28.1.4"}
    result = install_kit.consistency(loaded, versions)
    assert result["unmet"] == ["lightning requires packaging<25.0,>=20.0, installed packaging 26.4"]
    assert result["kept_from_image"] == ["megatron-core requires numpy<2.0.0, installed numpy 2.5.2"]
    assert result["declared_not_installed"] == ["lightning -> absent-one"]


# ---------------------------------------------------------------------------------------------
# a built kit (make offline-kit), and the stand-in for the lent GPU's Python


needs_kit = pytest.mark.skipif(not (KIT / "manifest.json").is_file(),
                               reason=f"no built kit at {KIT} (run `make offline-kit`; ERPRM_KIT_DIR names another)")


@needs_kit
def test_built_kit_is_complete_and_fits_one_transfer_with_the_project():
    manifest = json.loads((KIT / "manifest.json").read_text())
    install_kit.read_manifest(KIT, manifest["python_version"])  # every wheel there with its sha256
    assert manifest["kit_bytes"] + build_kit.project_bytes() <= manifest["max_bytes"] <= 60 * 2**20
    assert sum(p.stat().st_size for p in KIT.rglob("*") if p.is_file()) == manifest["kit_bytes"]
    names = {e["name"] for e in manifest["carried"]}
    assert {"nemo-toolkit", "megatron-core", "transformers"} <= names and not [n for n in names if never_carried(n)]
    assert (KIT / "tokenizer" / "smollm2" / "tokenizer.json").is_file()


@pytest.mark.slow
@needs_kit
@pytest.mark.skipif(not STANDIN, reason="no stand-in for the lent GPU's Python: build one with "
                    "`python tools/offline_kit/standin_env.py --out DIR` and set ERPRM_KIT_STANDIN=DIR")
def test_kit_installs_imports_and_trains_in_the_standin(tmp_path):
    py = Path(STANDIN) / "bin" / "python"
    # megatron-core compiles a CUDA allocator at import; with no GPU the CUDA torch needs an arch named
    env = {**os.environ, "TORCH_CUDA_ARCH_LIST": "9.0"}
    site, report = tmp_path / "site", tmp_path / "check.json"
    proc = subprocess.run([str(py), str(KIT_TOOLS / "install_kit.py"), "--kit", str(KIT), "--target", str(site),
                           "--json", str(report)], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    check = json.loads(report.read_text())
    assert check["ok"] and not check["imports_failed"] and not check["unmet"]
    assert check["torch"].startswith("2.11.0") and check["cuda_available"] is False
    assert check["loaded"]["transformers"].startswith("4.57.")  # the kit's, in front of the image's 5.17
    assert check["loaded"]["numpy"].startswith("2.")  # the image's, kept
    run = tmp_path / "train"
    env["PYTHONPATH"] = f"{site}{os.pathsep}{REPO}"
    proc = subprocess.run([str(py), "-m", "nemo_erprm.train", "--config", "conf/tiny_cpu.yaml",
                           f"model.tokenizer={KIT / 'tokenizer' / 'smollm2'}", f"run.output_dir={run}",
                           "trainer.max_steps=3", "data.val_fraction=0.0", "logging.tensorboard=false"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    metrics = [json.loads(x) for x in (run / "tiny_cpu" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3] and all(m["loss"] > 0 and m["grad_norm"] > 0 for m in metrics)
