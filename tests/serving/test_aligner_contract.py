"""NeMo-Aligner's `reward_model` contract at the tensor level, in the training venv (the real
PyTriton transport is tested in the serving venv: tests/serving/test_pytriton_aligner.py), by
calling `infer` with the batched numpy arrays PyTriton passes: input names, dtypes and shapes, `rewards` float32
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
    with pytest.raises(RequestError, match="sequence_lengths"):  # not one length per row: the contract is broken
        model.infer(tokens=np.zeros((2, 4), dtype=np.int64), sequence_lengths=np.array([[1]], dtype=np.int64))


def test_one_bad_row_gets_the_fallback_and_the_others_their_reward(model, tiny_prm):
    """A row without the marker, a length outside its row, the step tag in the response: each
    gets the fallback reward, counted by reason; the good rows score as alone (was: the whole
    call raised, and NeMo-Aligner's future.result() with it)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_prm))
    model.actor_tokenizer = tok
    texts = [TEXTS[0], "no marker in this text", TEXTS[1], "What?" + MARKER + "a step ки with the tag\n#### 1"]
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    width = max(map(len, ids))
    tokens = np.zeros((len(ids), width), dtype=np.int64)
    for i, row in enumerate(ids):
        tokens[i, : len(row)] = row
    lengths = np.array([[len(r)] for r in ids] + [[width + 5]], dtype=np.int64)
    tokens = np.vstack([tokens, tokens[:1]])
    before = dict(model.service.unscorable)
    out = model.infer(tokens=tokens, sequence_lengths=lengths)["rewards"][:, 0]
    want = model.infer(sentences=np.array([[t.encode()] for t in TEXTS], dtype=object))["rewards"][:, 0]
    assert out[0] == pytest.approx(want[0], abs=1e-6) and out[2] == pytest.approx(want[1], abs=1e-6)
    assert out[1] == out[3] == out[4] == model.service.fallback == 0.0
    grew = {k: v - before.get(k, 0) for k, v in model.service.unscorable.items() if v != before.get(k, 0)}
    assert grew == {"no_marker": 1, "step_tag": 1, "bad_length": 1}
