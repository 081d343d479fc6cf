"""The step-checking probes: corruption pairs, the probe's arithmetic, and the policy-likelihood
step scores (causal, on the policy's token boundaries)."""

from __future__ import annotations

import json
import random
import re

import pytest

from nemo_erprm.experiments import arith_policy as ap
from nemo_erprm.experiments import arith_task as at
from nemo_erprm.experiments import probes
from nemo_erprm.labeling.backends.base import PromptConfig

QUESTION = "Tom has 23 apples. He buys 15 more. He gives away 7. How many apples does Tom have now?"
RIGHT = "23 + 15 = 38\n38 - 7 = 31\n#### 31"
WRONG = "23 + 15 = 38\n38 - 7 = 30\n#### 30"
SLIP = "23 + 15 = 48\n48 - 7 = 41\n#### 41"


def test_corrupt_result_moves_only_the_result():
    seen = set()
    for seed in range(200):
        bad = probes.corrupt_result("23 + 15 = 38", random.Random(seed))
        prefix, value = bad.rsplit("= ", 1)
        assert prefix == "23 + 15 " and int(value) != 38
        seen.add(int(value) - 38)
    assert seen == set(probes.OFFSETS)
    for seed in range(50):  # never negative: a small result flips the offset's sign
        assert int(probes.corrupt_result("9 - 8 = 1", random.Random(seed)).rsplit("= ", 1)[1]) >= 0
    assert probes.corrupt_result("#### 31", random.Random(0)) is None
    assert probes.corrupt_result("He buys 15 more", random.Random(0)) is None


def _write_candidates(path, problems):
    with open(path, "w") as f:
        for i, (question, gold, texts) in enumerate(problems):
            f.write(json.dumps({"id": f"p{i}", "question": question, "gold": gold, "candidates": texts}) + "\n")
    return path


def _checker(items):
    """A PRM that checks every equation exactly: 1 for a right step, 0 for a wrong one."""
    out = []
    for _, steps in items:
        scores = []
        for step in steps:
            m = re.match(r"(\d+) ([-+*]) (\d+) = (\d+)", step)
            ok = m is None or eval(f"{m[1]} {m[2]} {m[3]}") == int(m[4])
            scores.append(1.0 if ok else 0.0)
        out.append(scores)
    return out


def test_corruption_probe_tells_a_checker_from_a_prior(tmp_path):
    cands = _write_candidates(tmp_path / "c.jsonl", [
        (QUESTION, "31", [WRONG, RIGHT, RIGHT]),
        ("Ann has 5 pens. She buys 4 more. She doubles them. How many pens?", "18",
         ["5 + 4 = 9\n9 * 2 = 18\n#### 18"]),
        ("Bo has 3 cups. He gets 2 more. How many?", "5", ["3 + 2 = 6\n#### 6"]),  # no right candidate
    ])
    pairs = probes.corruption_pairs(cands, seed=1)
    assert len(pairs) == 2  # one per problem that has an answer-correct candidate
    for (q, right), (q2, bad) in pairs:
        assert q == q2 and len(right) == len(bad) and right[:-1] == bad[:-1] and right[-1] != bad[-1]
        assert _checker([(q, right)])[0][-1] == 1.0 and _checker([(q, bad)])[0][-1] == 0.0
    assert pairs[0][0][1][0] == "23 + 15 = 38"  # the wrong first candidate is skipped
    assert probes.corruption_probe(_checker, pairs)["p_right_above_corrupted"] == 1.0
    by_position = lambda items: [[0.9 - 0.1 * k for k in range(len(s))] for _, s in items]  # noqa: E731
    result = probes.corruption_probe(by_position, pairs)
    assert result["p_right_above_corrupted"] == 0.5 and result["pairs"] == 2
    inverted = lambda items: [[1.0 - x for x in row] for row in _checker(items)]  # noqa: E731
    assert probes.corruption_probe(inverted, pairs)["p_right_above_corrupted"] == 0.0


@pytest.fixture(scope="module")
def tiny_policy(tmp_path_factory):
    out = tmp_path_factory.mktemp("policy")
    data = tmp_path_factory.mktemp("arith")
    at.write_splits(data, seed=0, n_train=60, n_val=2, n_test=0)
    from nemo_erprm.jsonl import read_jsonl

    problems = read_jsonl(data / "train.jsonl") + [{"question": QUESTION, "answer": RIGHT}]
    tok = ap.build_tokenizer(ap.tokenizer_texts(problems, PromptConfig()), 400)
    model = ap.build_model(tok, ap.ModelShape(layers=1, hidden=32, heads=2, kv_heads=1, vocab_size=400), seed=0)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_policy_likelihood_is_causal_per_step(tiny_policy):
    lik = probes.PolicyLikelihood(tiny_policy, threads=1)
    right, wrong = ([s.strip() for s in at.segment(t)] for t in (RIGHT, WRONG))
    tokens = lik.step_tokens(QUESTION, right)
    # each step owns exactly its own tokens (and the newline that ends it)
    assert ["".join(piece for piece, _ in t) for t in tokens] == [right[0] + "\n", right[1]]
    other = lik.step_tokens(QUESTION, wrong)
    assert [lp for _, lp in tokens[0]] == pytest.approx([lp for _, lp in other[0]], abs=1e-6)  # causal
    diverged = [(a, b) for a, b in zip(tokens[1], other[1]) if a[0] != b[0]]
    assert diverged and diverged[0][0][1] != pytest.approx(diverged[0][1][1], abs=1e-6)
    assert lik.step_scores(QUESTION, right) == [min(lp for _, lp in t) for t in tokens]


def test_likelihood_probe_pairs_every_divergence(tiny_policy, tmp_path):
    cands = _write_candidates(tmp_path / "c.jsonl", [(QUESTION, "31", [RIGHT, WRONG, SLIP, RIGHT])])
    result = probes.likelihood_probe(tiny_policy, cands, threads=1)
    # 2 right x 2 wrong candidates, each pair diverging at a step both have
    assert result["divergence_auc"]["pairs"] == 4 and 0.0 <= result["divergence_auc"]["auc"] <= 1.0


def test_cli_names_a_bad_candidates_file(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "p0", "question": "q"}\n{not json\n')
    assert probes.main(["corruption", "--policy", str(tmp_path), "--candidates", str(bad)]) == 2
    assert "bad.jsonl" in capsys.readouterr().err
