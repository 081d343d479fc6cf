"""NeMo-Aligner's `reward_model` contract at the tensor level (PyTriton does not fit the locked
CPU environment: its tritonclient needs urllib3 >= 2; so the transport is faked by calling `infer` with the
batched numpy arrays PyTriton would pass): input names, dtypes and shapes, `rewards` float32
(B, 1); token input decoded with the actor's tokenizer, the same or a different one."""

import numpy as np
import pytest

from nemo_erprm.eval.scorers import HFScorer
from nemo_erprm.serving import aligner
from nemo_erprm.serving.service import RequestError, RewardConfig, RewardService
from tests.tiny_models import build_tokenizer

MARKER = "\nASSISTANT:\n"
TEXTS = ["What is 3 + 4?" + MARKER + "3 + 4 = 7.\n#### 7", "What is 3 + 4?" + MARKER + "3 + 4 = 8 surely.\n#### 8"]


@pytest.fixture(scope="module")
def model(tiny_prm):
    service = RewardService(HFScorer(tiny_prm), RewardConfig(aggregation="min", response_marker=MARKER))
    return aligner.AlignerRewardModel(service)


def test_declared_tensors_match_nemo_aligner():
    assert aligner.MODEL_NAME == "reward_model" and aligner.DEFAULT_PORT == 5555
    assert [(n, s, d, o) for n, s, d, o in aligner.INPUTS] == [
        ("sentences", (-1,), bytes, True), ("tokens", (-1,), np.int64, True), ("sequence_lengths", (-1,), np.int64, True)]
    assert aligner.OUTPUTS == (("rewards", (1,), np.float32),)


def test_sentences_input(model):
    out = model.infer(sentences=np.array([[t.encode()] for t in TEXTS], dtype=object))
    assert set(out) == {"rewards"} and out["rewards"].dtype == np.float32 and out["rewards"].shape == (2, 1)
    direct = [model.service.score_items([model.service.to_item(*model.service.split_text(t, "t"))])[0].reward
              for t in TEXTS]
    assert out["rewards"][:, 0] == pytest.approx(direct, abs=1e-6)


@pytest.mark.parametrize("actor", ["same", "different"])
def test_token_input_with_the_actors_tokenizer(model, tiny_prm, actor):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_prm)) if actor == "same" else build_tokenizer(vocab_size=300)
    if actor == "different":
        assert tok.get_vocab() != AutoTokenizer.from_pretrained(str(tiny_prm)).get_vocab()
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in TEXTS]
    width = max(map(len, ids)) + 3
    tokens = np.full((len(ids), width), tok.pad_token_id or 0, dtype=np.int64)  # right-padded, as the actor sends
    for i, row in enumerate(ids):
        tokens[i, : len(row)] = row
    lengths = np.array([[len(r)] for r in ids], dtype=np.int64)
    model.actor_tokenizer = tok
    out = model.infer(tokens=tokens, sequence_lengths=lengths)
    want = model.infer(sentences=np.array([[t.encode()] for t in TEXTS], dtype=object))
    assert out["rewards"] == pytest.approx(want["rewards"], abs=1e-6)


def test_contract_errors_name_the_input(model):
    with pytest.raises(RequestError, match="tokens"):
        model.infer()
    model.actor_tokenizer = build_tokenizer(vocab_size=300)
    with pytest.raises(RequestError, match="sequence_lengths"):
        model.infer(tokens=np.zeros((2, 4), dtype=np.int64), sequence_lengths=np.array([[9], [1]], dtype=np.int64))
    with pytest.raises(RequestError, match="marker"):
        model.infer(sentences=np.array([[b"no marker in this text"]], dtype=object))
