"""Issue 22 at the library level: every number of every stage's config is checked once, when
the config loads (nan everywhere, ±inf outside the η keys, each key's declared range), and
every input line that is not UTF-8 is named by file, line and byte offset. The command-line
cases (exit 2, one line, nothing written) are in tests/test_bad_input_matrix.py."""

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Optional

import pytest

from nemo_erprm.errors import ConfigError
from nemo_erprm.jsonl import RecordError, iter_jsonl
from nemo_erprm.yaml_config import load_structured

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "conf" / "tiny_cpu.yaml")


def schema() -> type:
    """A config with η keys, a plain float and a list of sections with declared ranges."""
    from nemo_erprm.yaml_config import Range

    @dataclass
    class Inner:
        NUMBER_RANGES: ClassVar[dict[str, Range]] = {"p": Range(0, 1, low_open=True), "k": Range(1, note="null: all")}
        p: float = 0.5
        k: Optional[int] = None

    @dataclass
    class Outer:
        eta: float = 2.0
        etas: list[float] = field(default_factory=lambda: [0.0, math.inf])
        scale: float = 1.0
        inner: list[Inner] = field(default_factory=lambda: [Inner()])

    return Outer


@pytest.mark.parametrize("overrides,message", [
    (["eta=-inf", "etas=[.inf,-.inf,0]", "inner=[{p: 1, k: 3}]"], None),  # the η keys keep ±inf; closed high end
    (["eta=nan"], "eta=nan: must be a number (.inf / -.inf allowed)"),
    (["etas=[1,.nan]"], "etas[1]=nan: must be a number (.inf / -.inf allowed)"),
    (["scale=inf"], "scale=inf: must be a finite number"),
    (["scale=-.inf"], "scale=-inf: must be a finite number"),
    (["inner=[{p: 0.5}, {p: 0}]"], "inner[1].p=0.0: must be in (0, 1]"),
    (["inner=[{p: .nan}]"], "inner[0].p=nan: must be a finite number in (0, 1]"),
    (["inner=[{k: 0}]"], "inner[0].k=0: must be >= 1 (null: all)"),
])
def test_numbers_are_checked_by_key_and_range(overrides, message):
    if message is None:
        cfg = load_structured(schema(), None, overrides)
        assert cfg.eta == -math.inf and cfg.etas == [math.inf, -math.inf, 0.0] and cfg.inner[0].p == 1.0
        return
    with pytest.raises(ConfigError) as e:
        load_structured(schema(), None, overrides)
    assert str(e.value) == message


def test_stage_configs_keep_meaningful_infinities_and_refuse_others():
    from nemo_erprm.labeling.config import load_label_config
    from nemo_erprm.training.config import TrainConfig

    cfg = load_label_config(None, ["etas=[0,.inf,-.inf]"])
    assert cfg.etas == [0.0, math.inf, -math.inf]
    train = load_structured(TrainConfig, TINY, ["data.eta=.inf", "trainer.keep_checkpoints=-1", "trainer.max_steps=null"])
    assert (train.data.eta, train.trainer.keep_checkpoints, train.trainer.max_steps) == (math.inf, -1, None)
    with pytest.raises(ConfigError, match=r"^backend\.gpu_memory_utilization=inf: must be a finite number$"):
        load_label_config(None, ["backend.gpu_memory_utilization=inf"])
    with pytest.raises(ConfigError, match=r"^input\.limit=0: must be >= 1 \(null: all\)$"):
        load_label_config(None, ["input.limit=0"])


@pytest.mark.parametrize("override,message", [
    ("optim.adam_beta1=1", "optim.adam_beta1=1.0: must be in [0, 1)"),
    ("optim.weight_decay=-0.1", "optim.weight_decay=-0.1: must be >= 0"),
    ("optim.warmup_ratio=nan", "optim.warmup_ratio=nan: must be a finite number in [0, 1)"),
    ("optim.clip_grad=-1", "optim.clip_grad=-1.0: must be >= 0 (0: no clipping)"),
    ("data.val_fraction=1", "data.val_fraction=1.0: must be in [0, 1)"),
    ("data.num_proc=0", "data.num_proc=0: must be >= 1 (null: one process)"),
    ("trainer.max_epochs=0", "trainer.max_epochs=0.0: must be > 0"),
    ("trainer.keep_checkpoints=-2", "trainer.keep_checkpoints=-2: must be >= -1 (-1: all)"),
    ("model.hidden_dropout=1", "model.hidden_dropout=1.0: must be in [0, 1)"),
    ("model.tensor_model_parallel_size=0", "model.tensor_model_parallel_size=0: must be >= 1"),
])
def test_training_numbers(override, message):
    from nemo_erprm.training.config import TrainConfig

    with pytest.raises(ConfigError) as e:
        load_structured(TrainConfig, TINY, [override])
    assert str(e.value) == message


def test_min_lr_above_lr_is_refused(monkeypatch):
    from nemo_erprm.training.config import load_train_config

    monkeypatch.chdir(REPO)
    with pytest.raises(ConfigError, match=r"^optim\.min_lr=0\.01: must be <= optim\.lr=0\.003"):
        load_train_config(TINY, ["optim.min_lr=0.01"])  # refused before model.validate imports NeMo


def test_jsonl_not_utf8_names_line_and_byte_offset(tmp_path):
    path = tmp_path / "mixed.jsonl"
    first = '{"q": "Ёжик ки"}\r\n'.encode()  # multi-byte characters and CRLF: the offset counts bytes
    path.write_bytes(first + b"\n" + b'{"q": "ok"}\n' + b'{"q": "\xc3("}\n')
    seen = []
    with pytest.raises(RecordError) as e:
        for line, obj in iter_jsonl(path):
            seen.append((line, obj["q"]))
    assert seen == [(1, "Ёжик ки"), (3, "ok")]  # the lines before the bad one still read
    offset = len(first) + 1 + len(b'{"q": "ok"}\n') + len(b'{"q": "')
    assert str(e.value) == f"{path}:4: not UTF-8 (byte offset {offset}: 0xc3); save the file as UTF-8"


def test_export_threshold_is_checked_by_the_library_too():
    from nemo_erprm.labeling.formats import export_records

    record = {"question": "q", "steps": ["a\n", "b"], "labels": {"2": [0.2, 0.9]}, "step_tag": "ки"}
    assert [r["labels"] for r in export_records([record], "trl", 2.0, 0.0)] == [[True, True]]
    for bad in (math.nan, 1.0, -0.5):
        with pytest.raises(ConfigError, match=r"^threshold must be in \[0, 1\)"):
            list(export_records([record], "trl", 2.0, bad))
