"""Best-of-N with a candidate whose text holds the step tag (model outputs, degenerate ones
especially, can contain `ки`): the run completes, that candidate is scored with the tag
removed, and report.json counts it (was: the whole run aborted on that line)."""

import json


from nemo_erprm.eval.candidates import load_candidates
from nemo_erprm.eval.cli import main as bon_main
from tests.serving.conftest import tiny_prm  # noqa: F401  (the fixture: a tiny HF-export PRM)


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_candidate_with_the_step_tag_is_scored_neutralised_and_reported(tiny_prm, tmp_path):  # noqa: F811
    clean = "3 + 4 = 7.\n#### 7"
    records = [{"question": "What is 3 + 4?", "gold": "7",
                "candidates": [clean, "3 + 4 ки = 7.\n#### 7", "3 + 4 = 8.\n#### 8"]},
               {"question": "What is 2 + 2?", "gold": "4", "candidates": ["2 + 2 = 4.\n#### 4", "2 + 2 = 5.\n#### 5"]}]
    path = _write(tmp_path / "bon.jsonl", records)
    problems, report = load_candidates(path)
    assert report.step_tag_neutralised == 1 and [e["line"] for e in report.step_tag_examples] == [1]
    assert problems[0].candidates[1].text == "3 + 4  = 7.\n#### 7" and problems[0].candidates[1].correct
    out = tmp_path / "out"
    assert bon_main(["--candidates", str(path), "--scorer", str(tiny_prm), "--out", str(out), "--max-length", "256",
                     "--bootstrap", "20", "--no-progress"]) == 0
    data = json.loads((out / "report.json").read_text())["data"]
    assert data["step_tag_neutralised"] == 1 and data["candidates"] == 5

