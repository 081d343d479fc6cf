"""One loader for every stage's YAML config: schema defaults <- YAML file <- ``key=value``
overrides (OmegaConf dotlist), type-checked against the stage's dataclass. Each source is
merged on its own, so an error names the file or the command line it came from.

Every number is checked here, once, before any stage writes anything: nan is refused in every
float key, ±inf in every key but the η keys (``eta``, ``etas``: ±inf is the hard-label limit
of the ER label), and a dataclass may declare the range of its keys in a ``NUMBER_RANGES``
table (a ``ClassVar``, so OmegaConf does not see it as a key)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, TypeVar

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from nemo_erprm.errors import ConfigError
from nemo_erprm.jsonl import check_utf8, not_utf8

T = TypeVar("T")

# keys where ±inf means something: η, the ER label's temperature (inf: hard label, -inf: min)
INFINITY_KEYS = ("eta", "etas")


@dataclass(frozen=True)
class Range:
    """The values a numeric key may take: ``low``/``high`` (None: unbounded), each bound
    included unless ``*_open``; ``note`` says what a special value (null, 0, -1) means."""

    low: Optional[float] = None
    high: Optional[float] = None
    low_open: bool = False
    high_open: bool = False
    note: str = ""

    def __contains__(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def __str__(self) -> str:
        if self.low is not None and self.high is not None:
            text = f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
        elif self.low is not None:
            text = f"{'>' if self.low_open else '>='} {self.low:g}"
        else:
            text = f"{'<' if self.high_open else '<='} {self.high:g}"
        return f"{text} ({self.note})" if self.note else text


def check_numbers(cfg: Any, prefix: str = "") -> None:
    """Refuse nan anywhere in the dataclass tree ``cfg``, ±inf outside :data:`INFINITY_KEYS`,
    and values outside the ``NUMBER_RANGES`` of their dataclass; the error names the key."""
    ranges: dict[str, Range] = getattr(type(cfg), "NUMBER_RANGES", {})
    for f in dataclasses.fields(cfg):
        value, key = getattr(cfg, f.name), prefix + f.name
        items = list(enumerate(value)) if isinstance(value, list) else [(None, value)]
        for i, item in items:
            where = key if i is None else f"{key}[{i}]"
            if dataclasses.is_dataclass(item):
                check_numbers(item, where + ".")
            elif isinstance(item, (int, float)) and not isinstance(item, bool):
                _check_number(where, item, ranges.get(f.name), f.name in INFINITY_KEYS)


def _check_number(key: str, value: float, allowed: Optional[Range], infinity_ok: bool) -> None:
    if math.isnan(value) or (math.isinf(value) and not infinity_ok):
        kind = "a number (.inf / -.inf allowed)" if infinity_ok else "a finite number"
        raise ConfigError(f"{key}={value}: must be {kind}{f' {allowed}' if allowed else ''}")
    if allowed is not None and value not in allowed:
        raise ConfigError(f"{key}={value}: must be {allowed}")


def _check_override_bytes(overrides: Sequence[str]) -> None:
    """Bytes of a command line that are not UTF-8 arrive as lone surrogates (PEP 383); they
    would fail only when the config is written out."""
    for override in overrides:
        try:
            override.encode("utf-8")
        except UnicodeEncodeError as e:
            offset = len(override[: e.start].encode("utf-8", "surrogateescape"))
            char = ord(override[e.start])  # surrogateescape holds byte b as U+DC00 + b
            byte = char - 0xDC00 if 0xDC80 <= char <= 0xDCFF else char
            raise ConfigError(f"command line: {override.split('=', 1)[0]}: {not_utf8(byte, offset)}") from None


def load_structured(schema: type[T], path: Optional[str] = None, overrides: Sequence[str] = ()) -> T:
    """An instance of the dataclass ``schema`` from a YAML file and overrides, its numbers
    checked (:func:`check_numbers`); the schema's own ``validate`` does the rest."""
    merged = OmegaConf.structured(schema)
    where = "schema"
    try:
        if path:
            if not Path(path).is_file():
                raise ConfigError(f"--config {path}: no such file")
            check_utf8(path)
            where = path
            merged = OmegaConf.merge(merged, OmegaConf.load(path))
        if overrides:
            _check_override_bytes(overrides)
            where = "command line"
            merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(list(overrides)))
        where = "config"
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        raise ConfigError(f"{where}: {str(e).splitlines()[0]} (key: {getattr(e, 'full_key', '?')})") from None
    assert isinstance(cfg, schema)
    check_numbers(cfg)
    return cfg
