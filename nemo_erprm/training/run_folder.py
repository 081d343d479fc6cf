"""The run folder (``run.output_dir/run.name``): its lock (one launch at a time), its resolved
``config.yaml``, the check that a rerun continues the same run, and the tokenizer of a randomly
initialised model."""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING, Any, Iterator

from nemo_erprm.errors import ConfigError
from nemo_erprm.training.launch import global_rank

if TYPE_CHECKING:
    from nemo_erprm.training.config import TrainConfig

# Settings a resumed run must share with the run it resumes (layout, precision, optimizer
# and trainer settings may change between restarts).
RESUME_IDENTITY = ("data", "model.init_from", "model.head", "model.step_tag", "model.tokenizer", "run.seed")
# ... except these data keys, which change the speed, not what is trained (nor its order)
RESUME_FREE_DATA_KEYS = ("pad_to",)


@contextlib.contextmanager
def hold_run_folder(cfg: TrainConfig) -> Iterator[None]:
    """Hold ``run.lock`` in the run folder while the body runs, so a second launch on the same
    folder is refused (exit 2, naming the holder) instead of training over this one's checkpoints.

    One launch is many processes (torchrun ranks, srun tasks on several nodes); global rank 0
    (``RANK``, else ``SLURM_PROCID``) holds the lock for all of them and the other ranks never
    touch it, so they cannot refuse their own launch. When rank 0 of a second launch is refused
    and exits, its launcher ends that launch's other ranks (torchrun's agent stops the workers
    when one fails; ``slurm/train_erprm.sh`` runs srun with ``--kill-on-bad-exit=1``) before
    they have written anything but their log lines. A lock left by a killed launch is taken over
    (:mod:`nemo_erprm.runtime.run_lock`), also by the same Slurm job once requeued on another node.
    """
    if global_rank() != 0:
        yield
        return
    from nemo_erprm.runtime.run_lock import acquire_run_lock

    with acquire_run_lock(cfg.run_dir, "run", f"run folder {cfg.run_dir}"):
        yield


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

