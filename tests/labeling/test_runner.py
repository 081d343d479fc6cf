"""The labeling job with the offline backend: records, resume, bad input, relabel and export."""

import json
import math

import pytest

from nemo_erprm.jsonl import RecordError, read_jsonl
from nemo_erprm.labeling.cli import main as cli
from nemo_erprm.labeling.config import load_label_config
from nemo_erprm.labeling.er_label import er_label
from nemo_erprm.labeling.records import validate_record
from nemo_erprm.labeling.runner import merge_shards, run_labeling, shard_path


def offline_rows():
    return [
        {
            "id": "p1",
            "question": "Tom has 3 apples and buys 4 more. How many?",
            "gold": "7",
            "steps": ["Tom starts with 3 apples.\n", "He buys 4 more: 3 + 4 = 7.\n", "#### 7"],
            "completions": [
                ["3+4 = 7\n#### 7", "#### 8", "The answer is: 7", "no answer"],
                ["#### 7", "#### 7", "#### 7", "#### 12"],
                ["", "", "", ""],
            ],
        },
        {
            "id": "p2",
            "question": "What is 0 times 5?",
            "gold": "0",
            "steps": ["0 times anything is 0.\n", "The answer is: 0"],
            "step_rewards": [[1, 1, 0, 1], [1]],
        },
    ]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def offline_cfg(tmp_path, **over):
    src = write_jsonl(tmp_path / "offline.jsonl", offline_rows())
    overrides = [
        f"input.path={src}",
        "input.format=offline",
        "input.id_field=id",
        "backend.name=offline",
        f"output.dir={tmp_path / 'out'}",
        "etas=[0,2,10,.inf]",
    ] + [f"{k}={v}" for k, v in over.items()]
    return load_label_config(None, overrides)


def test_offline_run_grades_completions_and_labels(tmp_path):
    cfg = offline_cfg(tmp_path)
    result = run_labeling(cfg, progress=False)
    records = read_jsonl(result.records_path)
    assert [r["id"] for r in records] == ["p1/0", "p2/0"]
    for i, r in enumerate(records, 1):
        validate_record(r, "records", i)
    p1, p2 = records
    # completions are graded as prefix + completion: the last prefix already holds "#### 7"
    assert p1["step_rewards"] == [[1.0, 0.0, 1.0, 0.0], [1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0]]
    assert p1["n_correct"] == [2, 3, 4] and p1["n_total"] == [4, 4, 4]
    assert p1["labels"]["2"] == pytest.approx([er_label([1, 0, 1, 0], 2), er_label([1, 1, 1, 0], 2), 1.0])
    assert p1["labels"]["inf"] == [1.0, 1.0, 1.0] and p1["labels"]["0"] == [0.5, 0.75, 1.0]
    assert p1["outcome"] is True
    # answer 0 is a real answer (the reference implementation's bug)
    assert p2["outcome"] is True and p2["labels"]["0"] == [0.75, 1.0]
    assert result.summary["records"] == 2 and result.summary["steps"] == 5


def test_rerun_skips_finished_and_repairs_partial_tail(tmp_path):
    cfg = offline_cfg(tmp_path)
    first = run_labeling(cfg, progress=False)
    path = first.records_path
    complete = path.read_text()
    # Simulate a kill in the middle of writing the second problem.
    lines = complete.splitlines(keepends=True)
    path.write_text(lines[0] + lines[1][: len(lines[1]) // 2])
    again = run_labeling(cfg, progress=False)
    assert again.problems_done_before == 1 and again.problems_labeled == 1
    assert path.read_text() == complete
    third = run_labeling(cfg, progress=False)
    assert third.problems_labeled == 0 and path.read_text() == complete


def test_resume_with_another_config_is_refused(tmp_path):
    run_labeling(offline_cfg(tmp_path), progress=False)
    with pytest.raises(RuntimeError, match="run.yaml: the output folder holds records made with another config"):
        run_labeling(offline_cfg(tmp_path, seed=7), progress=False)


def test_rerun_with_another_config_names_the_keys_that_differ(tmp_path):
    run_labeling(offline_cfg(tmp_path), progress=False)
    with pytest.raises(RuntimeError) as e:
        run_labeling(offline_cfg(tmp_path, seed=7, **{"sampling.temperature": 0.2}), progress=False)
    assert "sampling.temperature: 0.7 there, 0.2 now" in str(e.value) and "seed: 1234 there, 7 now" in str(e.value)


def test_model_typo_fails_before_the_output_folder_is_touched(tmp_path):
    """A wrong backend.model is reported before run.yaml exists, so the corrected rerun runs."""
    src = write_jsonl(tmp_path / "offline.jsonl", offline_rows())
    cfg = load_label_config(None, [f"input.path={src}", "input.format=offline", "input.id_field=id",
                                   "backend.name=offline", f"output.dir={tmp_path / 'out'}"])
    cfg.backend.name, cfg.backend.model = "hf", str(tmp_path / "no_such_model")
    with pytest.raises(ValueError, match=f"backend.model={tmp_path / 'no_such_model'}: model .* is neither"):
        run_labeling(cfg, progress=False)
    assert not (tmp_path / "out").exists()


def _start_shard_together(barrier, tmp_path, shard, num_shards, errors):
    try:
        cfg = offline_cfg(tmp_path)
        barrier.wait()
        run_labeling(cfg, shard=shard, num_shards=num_shards, progress=False)
    except BaseException as e:  # reported to the parent
        errors.put(f"shard {shard}: {type(e).__name__}: {e}")


def test_array_tasks_starting_together_all_succeed(tmp_path):
    """The tasks of a Slurm array start at the same moment and all write run.yaml first
    (a shared temporary file used to make one of them fail with FileNotFoundError)."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    for attempt in range(5):
        folder = tmp_path / f"try{attempt}"
        folder.mkdir()
        offline_cfg(folder)  # writes the input file once, before the race
        n = 6
        barrier, errors = ctx.Barrier(n), ctx.Queue()
        procs = [ctx.Process(target=_start_shard_together, args=(barrier, folder, s, n, errors)) for s in range(n)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        failures = [errors.get() for _ in range(errors.qsize())] if not errors.empty() else []
        assert not failures and all(p.exitcode == 0 for p in procs), failures
        merged, _ = merge_shards(folder / "out")
        assert [r["id"] for r in read_jsonl(merged)] == ["p1/0", "p2/0"]


def _create_together(barrier, path, text, results):
    from nemo_erprm.jsonl import create_file_once

    barrier.wait()
    results.put((text, create_file_once(path, text)))


def test_create_file_once_has_one_winner_and_no_torn_file(tmp_path):
    import multiprocessing

    from nemo_erprm.jsonl import create_file_once

    ctx = multiprocessing.get_context("fork")
    for attempt in range(5):
        path = tmp_path / f"run{attempt}.yaml"
        n = 8
        barrier, results = ctx.Barrier(n), ctx.Queue()
        texts = [f"writer {i}\n" * 2000 for i in range(n)]  # large enough to tear if not atomic
        procs = [ctx.Process(target=_create_together, args=(barrier, path, t, results)) for t in texts]
        for p in procs:
            p.start()
        got = [results.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(60)
        winner = path.read_text()
        assert winner in texts
        assert all(seen == winner for _, seen in got)  # everyone sees the one complete file
        assert sum(mine == winner for mine, _ in got) == 1
        assert sorted(f.name for f in tmp_path.iterdir() if f.name.startswith(".")) == []  # no temp left
    assert create_file_once(path, "other") == winner  # an existing file is never replaced


def test_shards_merge_in_input_order(tmp_path):
    cfg = offline_cfg(tmp_path)
    run_labeling(cfg, shard=1, num_shards=2, progress=False)
    with pytest.raises(RuntimeError, match="1 of 2 shard files"):
        merge_shards(cfg.output.dir)
    run_labeling(cfg, shard=0, num_shards=2, progress=False)
    assert len(read_jsonl(shard_path(cfg.output.dir, 0, 2))) == 1
    merged, n = merge_shards(cfg.output.dir)
    assert n == 2 and [r["id"] for r in read_jsonl(merged)] == ["p1/0", "p2/0"]


def test_malformed_input_names_file_and_line(tmp_path):
    src = tmp_path / "bad.jsonl"
    good = json.dumps({"question": "q?", "answer": "x\n#### 3"})
    src.write_text(good + "\n" + good + "\n{not json\n")
    # The model does not exist: the input error must come first, before any model loading.
    cfg = load_label_config(None, [f"input.path={src}", "backend.model=/nonexistent", f"output.dir={tmp_path}/o"])
    with pytest.raises(RecordError, match=r"bad\.jsonl:3: invalid JSON"):
        run_labeling(cfg, progress=False)
    src.write_text(good + "\n" + json.dumps({"question": "q?"}) + "\n")
    with pytest.raises(RecordError, match=r"bad\.jsonl:2: missing field 'answer'"):
        run_labeling(cfg, progress=False)
    src.write_text(json.dumps({"question": "q?", "answer": "no gold line"}) + "\n")
    with pytest.raises(RecordError, match=r"bad\.jsonl:1: .*'#### <answer>'"):
        run_labeling(cfg, progress=False)
    src.write_text(json.dumps({"question": "what is ки?", "answer": "x\n#### 3"}) + "\n")
    with pytest.raises(RecordError, match=r"bad\.jsonl:1: the step tag 'ки' occurs in the question"):
        run_labeling(cfg, progress=False)
    assert not (tmp_path / "o" / "records.shard-00000-of-00001.jsonl").exists()


def test_offline_record_errors(tmp_path):
    rows = offline_rows()
    rows[1]["step_rewards"] = [[1, 2], [1]]
    src = write_jsonl(tmp_path / "offline.jsonl", rows)
    cfg = load_label_config(None, [f"input.path={src}", "input.format=offline", "backend.name=offline",
                                   f"output.dir={tmp_path}/o"])
    with pytest.raises(RecordError, match=r"offline\.jsonl:2: step_rewards\[0\] must hold numbers in \[0, 1\]"):
        run_labeling(cfg, progress=False)


def test_config_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="input.format=offline and backend.name=offline go together"):
        load_label_config(None, ["input.format=offline"])
    with pytest.raises(ValueError, match="trajectories must be"):
        load_label_config(None, ["trajectories=sampled"])
    with pytest.raises(Exception, match="sampling.n"):
        load_label_config(None, ["sampling.n=zero"])


def test_cli_relabel_and_export(tmp_path, capsys):
    cfg = offline_cfg(tmp_path)
    result = run_labeling(cfg, progress=False)
    relabeled = tmp_path / "relabeled.jsonl"
    assert cli(["relabel", "--input", str(result.records_path), "--eta", "5", "--eta=-inf",
                "--out", str(relabeled)]) == 0
    recs = read_jsonl(relabeled)
    assert set(recs[0]["labels"]) == {"0", "2", "10", "inf", "5", "-inf"}
    assert recs[0]["labels"]["5"][0] == pytest.approx(er_label([1, 0, 1, 0], 5))
    assert recs[0]["labels"]["-inf"] == [0.0, 0.0, 1.0]

    import datasets

    tv = tmp_path / "tv.jsonl"
    assert cli(["export", "--input", str(relabeled), "--format", "text_value", "--eta", "5", "--out", str(tv)]) == 0
    ds = datasets.load_dataset("json", data_files=str(tv), split="train")
    assert ds[0]["text"].count("ки") == len(ds[0]["value"]) == 3
    assert ds[0]["text"].startswith("Tom has 3 apples and buys 4 more. How many? Tom starts with 3 apples. ки\n")
    assert ds[0]["value"][0] == pytest.approx(er_label([1, 0, 1, 0], 5))

    trl = tmp_path / "trl.jsonl"
    # eta=1 is not stored: it is re-derived from step_rewards
    assert cli(["export", "--input", str(result.records_path), "--format", "trl", "--eta", "1",
                "--out", str(trl)]) == 0
    ds = datasets.load_dataset("json", data_files=str(trl), split="train")
    assert ds[1]["prompt"] == "What is 0 times 5?"
    assert ds[1]["completions"] == ["0 times anything is 0.", "The answer is: 0"]
    assert ds[0]["labels"] == [er_label([1, 0, 1, 0], 1) > 0.5, True, True]
    assert ds[0]["soft_labels"][1] == pytest.approx(er_label([1, 1, 1, 0], 1))
    # an existing --out is replaced only when asked (as export_hf_checkpoint.py does)
    before = trl.read_text()
    args = ["export", "--input", str(result.records_path), "--format", "trl", "--eta", "2", "--out", str(trl)]
    assert cli(args) == 2 and "exists; pass --overwrite" in capsys.readouterr().err and trl.read_text() == before
    assert cli(args + ["--overwrite"]) == 0 and trl.read_text() != before
    assert cli(["relabel", "--input", str(result.records_path), "--eta", "5", "--out", str(relabeled)]) == 2

    bad = tmp_path / "bad_records.jsonl"
    rec = read_jsonl(result.records_path)[0]
    rec["n_total"] = [4, 4]
    bad.write_text(json.dumps(rec) + "\n")
    assert cli(["export", "--input", str(bad), "--format", "trl", "--out", str(tmp_path / "x.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "bad_records.jsonl:1: field 'n_total' has 2 entries for 3 steps" in err
    assert not (tmp_path / "x.jsonl").exists()
    assert math.isfinite(result.seconds)


@pytest.mark.parametrize("reports", [True, False], ids=["per_batch", "at_the_end"])
def test_progress_counts_completions_within_a_call(reports):
    """The bar counts completions: each ``run`` call adds its planned completions to the total,
    a backend that reports batch by batch moves the bar inside the call, and what a backend
    does not report is counted when the call returns (a window is one call)."""
    import io

    from tqdm import tqdm

    from nemo_erprm.labeling.backends.plan import Completion, prompt_requests
    from nemo_erprm.labeling.runner import _CountingBackend

    seen = []

    class Fake:
        on_completions = None

        def run(self, requests):
            out = []
            for req in requests:  # one "batch" per request
                out.append([Completion(f"c{j}") for j in range(req.n)])
                if reports and self.on_completions is not None:
                    self.on_completions(req.n)
                seen.append(bar.n)
            return out

        def describe(self):
            return {"name": "fake"}

    bar = tqdm(total=0, file=io.StringIO())
    backend = _CountingBackend(Fake(), bar)
    out = backend.run(prompt_requests([(1, 2), (1, 3)], 4, 0))
    assert [len(x) for x in out] == [4, 4] and bar.total == 8 and bar.n == 8
    assert seen == ([4, 8] if reports else [0, 0])
    backend.run(prompt_requests([(5,)], 3, 8))
    assert bar.total == 11 and bar.n == 11
    assert backend.describe() == {"name": "fake"}
