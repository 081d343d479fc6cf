"""The run folder (``run.output_dir/run.name``): its resolved ``config.yaml``, the check that a
rerun continues the same run, and the tokenizer of a randomly initialised model."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from nemo_erprm.errors import ConfigError
from nemo_erprm.training.launch import global_rank

if TYPE_CHECKING:
    from nemo_erprm.training.config import TrainConfig

# Settings a resumed run must share with the run it resumes (layout, precision, optimizer
# and trainer settings may change between restarts).
RESUME_IDENTITY = ("data", "model.init_from", "model.head", "model.step_tag", "model.tokenizer", "run.seed")
# ... except these data keys, which change the speed, not what is trained (nor its order)
RESUME_FREE_DATA_KEYS = ("pad_to",)


def prepare_run_dir(cfg: TrainConfig) -> None:
    """Write config.yaml; refuse to continue a run folder written with other data or weights."""
    from omegaconf import OmegaConf

    from nemo_erprm.training.config import dump_train_config

    run_dir = cfg.run_dir
    saved = run_dir / "config.yaml"
    if saved.exists() and any((run_dir / "checkpoints").glob("*")):
        old, new = OmegaConf.load(saved), OmegaConf.create(dump_train_config(cfg))
        for key in RESUME_IDENTITY:
            a, b = OmegaConf.select(old, key), OmegaConf.select(new, key)
            if key == "data":  # a run folder written before a free key existed still resumes
                a, b = ({k: v for k, v in OmegaConf.to_container(x).items() if k not in RESUME_FREE_DATA_KEYS}
                        for x in (a, b))
            if a != b:
                raise ConfigError(f"{run_dir} holds a run with {key}={a!r}, this config has {b!r}: "
                                  f"set run.name to start a new run")
    if global_rank() == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        tmp = saved.with_suffix(".tmp")
        tmp.write_text(dump_train_config(cfg))
        os.replace(tmp, saved)


def tokenizer_for_random_init(cfg: TrainConfig) -> Any:
    """NeMo tokenizer from ``model.tokenizer`` (with the step tag added when asked), saved in
    the run folder so the checkpoints' context carries exactly this tokenizer."""
    from nemo.collections.common.tokenizers.huggingface.auto_tokenizer import AutoTokenizer as NeMoTokenizer

    target = cfg.run_dir / "tokenizer"
    if not (target / "tokenizer_config.json").exists():
        from nemo_erprm.data.tokenize import add_step_tag_token
        from nemo_erprm.embedded import load_tokenizer

        hf = load_tokenizer(cfg.model.tokenizer)
        if cfg.model.add_step_tag_token:
            add_step_tag_token(hf, cfg.model.step_tag)
        tmp = cfg.run_dir / f"tokenizer.tmp{global_rank()}"
        hf.save_pretrained(tmp)
        try:
            os.rename(tmp, target)  # atomic; another rank may have won the race
        except OSError:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    return NeMoTokenizer(str(target))

