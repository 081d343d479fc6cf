from __future__ import annotations

from pathlib import Path

import pytest

from tests.tiny_models import SHARED, build_tiny_llama

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    data = SHARED / "data"
    if not data.is_dir():
        pytest.skip(f"shared data not found at {data} (CI lays ../shared beside the checkout)")
    return data


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory, shared_data) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny_llama"))
