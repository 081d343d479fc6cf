import json
from pathlib import Path

import pytest

from tests.tiny_models import build_tiny_llama


@pytest.fixture(scope="session")
def tiny_prm(tmp_path_factory) -> Path:
    """A tiny lm_tokens PRM in the HF export layout: an lm_tokens PRM exports its backbone
    unchanged, so a causal LM plus prm_config.json is exactly such an export."""
    d = build_tiny_llama(tmp_path_factory.mktemp("tiny_prm"))
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(d))
    meta = {"format_version": 1, "head": "lm_tokens", "step_tag": "ки", "step_tag_id": tok.convert_tokens_to_ids("ки"),
            "plus_token": "+", "plus_token_id": tok.convert_tokens_to_ids("+"), "minus_token": "-",
            "minus_token_id": tok.convert_tokens_to_ids("-"), "recommended_aggregation": "min"}
    (d / "prm_config.json").write_text(json.dumps(meta))
    return d
