"""One loader for every stage's YAML config: schema defaults <- YAML file <- ``key=value``
overrides (OmegaConf dotlist), type-checked against the stage's dataclass. Each source is
merged on its own, so an error names the file or the command line it came from."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, TypeVar

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from nemo_erprm.errors import ConfigError

T = TypeVar("T")


def load_structured(schema: type[T], path: Optional[str] = None, overrides: Sequence[str] = ()) -> T:
    """An instance of the dataclass ``schema`` from a YAML file and overrides (not validated)."""
    merged = OmegaConf.structured(schema)
    where = "schema"
    try:
        if path:
            if not Path(path).is_file():
                raise ConfigError(f"--config {path}: no such file")
            where = path
            merged = OmegaConf.merge(merged, OmegaConf.load(path))
        if overrides:
            where = "command line"
            merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(list(overrides)))
        where = "config"
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        raise ConfigError(f"{where}: {str(e).splitlines()[0]} (key: {getattr(e, 'full_key', '?')})") from None
    assert isinstance(cfg, schema)
    return cfg
