"""Labeled records -> examples -> tokens with validated single-token step tags."""

import json

import pytest

from nemo_erprm.data.examples import load_examples
from nemo_erprm.data.tokenize import StepTagTokenError, StepTokenizer, add_step_tag_token, suggest_step_tags, tokenize_dataset
from nemo_erprm.jsonl import RecordError
from nemo_erprm.labeling.er_label import er_label
from tests.tiny_models import build_tokenizer


@pytest.fixture(scope="module")
def tok(shared_data):
    return build_tokenizer()  # byte-level BPE with "ки" as a special token


def canonical(steps, rewards, question="What is 2+3?"):
    return {
        "version": 1, "id": "p/0", "problem_id": "p", "question": question, "gold": "5", "steps": steps,
        "step_rewards": rewards, "n_correct": [sum(r) for r in rewards], "n_total": [len(r) for r in rewards],
        "outcome": True, "labels": {"2": [er_label(r, 2) for r in rewards]}, "step_tag": "ки", "meta": {},
    }


def write(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


def test_three_formats_render_the_same_text(tmp_path):
    rec = canonical(["2 plus 3 is 5.\n", "#### 5"], [[1, 0, 1, 1], [1]])
    a = load_examples(write(tmp_path / "c.jsonl", [rec]), "auto", eta=2)
    b = load_examples(write(tmp_path / "tv.jsonl", [{"text": a[0]["text"], "value": a[0]["values"]}]), "auto")
    c = load_examples(write(tmp_path / "trl.jsonl", [{"prompt": "What is 2+3?", "completions": ["2 plus 3 is 5.", "#### 5"],
                                                       "labels": [True, True], "soft_labels": a[0]["values"]}]), "auto")
    assert a[0]["text"] == b[0]["text"] == c[0]["text"] == "What is 2+3? 2 plus 3 is 5. ки\n#### 5 ки"
    assert a[0]["values"] == b[0]["values"] == c[0]["values"] == [er_label([1, 0, 1, 1], 2), 1.0]
    # an eta not stored is derived from the outcomes
    assert load_examples(tmp_path / "c.jsonl", "canonical", eta=0)[0]["values"] == [0.75, 1.0]


def test_bad_records_name_file_and_line(tmp_path):
    p = write(tmp_path / "bad.jsonl", [{"text": "a ки b ки", "value": [1.0, 0.0]}, {"text": "a ки", "value": [1.0, 0.0]}])
    with pytest.raises(RecordError, match=r"bad\.jsonl:2: 'text' has 1 step tags 'ки' but 'value' has 2 labels"):
        load_examples(p)
    p = write(tmp_path / "bad2.jsonl", [{"foo": 1}])
    with pytest.raises(RecordError, match=r"bad2\.jsonl:1: bad auto record: unknown record layout"):
        load_examples(p)
    p = write(tmp_path / "bad3.jsonl", [{"text": "a ки", "value": [1.5]}])
    with pytest.raises(RecordError, match=r"bad3\.jsonl:1: labels must lie in \[0, 1\]"):
        load_examples(p)


def test_tag_positions_and_targets(tok):
    st = StepTokenizer(tok, "ки", seq_length=64)
    text = "What is 2+3? 2 plus 3 is 5. ки\n#### 5 ки"
    out = st(text, [0.25, 1.0])
    tag_id = tok.convert_tokens_to_ids("ки")
    assert [out.input_ids[p] for p in out.tag_positions] == [tag_id, tag_id]
    assert out.targets == [0.25, 1.0] and not out.truncated
    assert out.input_ids.count(tag_id) == 2


def test_split_tag_is_refused_with_candidates_and_fix(tok):
    st = StepTokenizer(tok, "<step>", seq_length=64)
    with pytest.raises(StepTagTokenError, match=r"'<step>' is not a single token.*candidates: \['ки'.*add_step_tag_token=true"):
        st("question one <step>\nstep two <step>", [1.0, 0.0])
    assert "ки" in suggest_step_tags(tok)


@pytest.mark.parametrize("tag", ["", " ", "\n"])
def test_blank_tag_is_refused_at_once(tok, tag):
    """An empty tag occurs at every offset of every text: the tag scan never ended (24 GB, then
    killed). Refused when the tokenizer is built, and as a special token."""
    with pytest.raises(StepTagTokenError, match="blank"):
        StepTokenizer(tok, tag, seq_length=64)
    with pytest.raises(StepTagTokenError, match="blank"):
        add_step_tag_token(build_tokenizer(), tag)


def test_tag_merging_with_neighbour_is_refused(tok):
    # a word that is one token: its tail used as a tag is swallowed by the word's token
    word = next(w for w in ("total", "money", "each", "there", "would")
                if len(tok(" " + w, add_special_tokens=False)["input_ids"]) == 1)
    st = StepTokenizer(tok, word[1:], seq_length=64)
    with pytest.raises(StepTagTokenError, match="merges with its neighbours"):
        st(f"the {word}", [1.0])


def test_add_as_special_token_fixes_a_split_tag(shared_data):
    tok = build_tokenizer()
    before = len(tok)
    tag_id = add_step_tag_token(tok, "<step>")
    assert len(tok) == before + 1 and tag_id == before
    out = StepTokenizer(tok, "<step>", 64)("q? one <step>\ntwo <step>", [1.0, 0.0])
    assert [out.input_ids[p] for p in out.tag_positions] == [tag_id, tag_id]


def test_truncation_never_leaves_a_label_without_its_tag(tok):
    st = StepTokenizer(tok, "ки", seq_length=20)
    steps = ["alpha beta gamma delta ки"] * 6
    text = "Q? " + "\n".join(steps)
    full = StepTokenizer(tok, "ки", 10_000)(text, [0.1 * i for i in range(6)])
    out = st(text, [0.1 * i for i in range(6)])
    assert out.truncated and len(out.input_ids) <= 20
    assert out.input_ids[-1] == tok.convert_tokens_to_ids("ки")  # cut right after a tag
    assert out.tag_positions == full.tag_positions[: len(out.tag_positions)]
    assert out.targets == full.targets[: len(out.targets)]
    assert StepTokenizer(tok, "ки", 3)(text, [0.0] * 6) is None  # no tag fits: dropped


def test_tokenize_dataset_counts_and_cache(tok, tmp_path):
    examples = [{"text": "Q? " + " ".join(["word"] * n) + " ки", "values": [1.0]} for n in (2, 4, 200)]
    ds, counts = tokenize_dataset(examples, tok, "ки", 32, cache_dir=str(tmp_path), cache_key="k1")
    assert counts == {"examples": 3, "dropped": 1, "truncated": 0, "kept": 2}
    cached = list(tmp_path.glob("tokenized-*.arrow"))
    assert len(cached) == 1
    mtime = cached[0].stat().st_mtime_ns
    ds2, counts2 = tokenize_dataset(examples, tok, "ки", 32, cache_dir=str(tmp_path), cache_key="k1")
    assert counts2 == counts and ds2["input_ids"] == ds["input_ids"]
    assert cached[0].stat().st_mtime_ns == mtime  # reused, not rewritten
    tokenize_dataset(examples, tok, "ки", 64, cache_dir=str(tmp_path), cache_key="k1")
    assert len(list(tmp_path.glob("tokenized-*.arrow"))) == 2  # another seq_length, another entry


def test_length_sorted_batches_cover_every_index_once_and_cut_padding():
    import random

    from nemo_erprm.data.collate import length_sorted_batches

    rng = random.Random(0)
    lengths = [rng.randint(20, 400) for _ in range(45)]
    batches = length_sorted_batches(lengths, 8)
    assert sorted(i for b in batches for i in b) == list(range(45))
    assert [len(b) for b in batches] == [8] * 5 + [5]
    flat = [lengths[i] for b in batches for i in b]
    assert flat == sorted(lengths, reverse=True)  # longest first, each batch a run of similar lengths

    def padded(groups):
        return sum(max(lengths[i] for i in g) * len(g) for g in groups)

    in_file_order = [list(range(b, min(b + 8, 45))) for b in range(0, 45, 8)]
    assert padded(batches) < padded(in_file_order)
    with pytest.raises(ValueError, match="micro_batch_size"):
        length_sorted_batches(lengths, 0)
