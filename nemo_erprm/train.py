"""Train an ER-PRM: ``python -m nemo_erprm.train --config conf/<recipe>.yaml [key=value ...]``.

The whole run, in order (NeMo 2 does the heavy lifting; each step's parts are in
:mod:`nemo_erprm.training`):
1. config (:class:`nemo_erprm.training.config.TrainConfig`) and the run folder
   (:mod:`~nemo_erprm.training.run_folder`);
2. tokenizer and PRM config (:mod:`~nemo_erprm.training.model_setup`): from the initial
   checkpoint (``model.init_from``, written by ``tools/convert_hf_checkpoint.py`` or by an
   earlier run) with this run's layout and precision, or random weights of the configured
   shape (``model.tokenizer``);
3. ``ERPRMDataModule`` (:mod:`~nemo_erprm.training.data_setup`): labeled records, held-out
   split, packing, megatron sampling; one epoch's length sets the schedule;
4. ``ERPRMModel`` with Adam, linear warmup then cosine decay (NeMo's scheduler);
5. NeMo's ``Trainer`` with ``MegatronStrategy`` (TP/PP/VPP/DP, distributed optimizer on
   GPUs), ``MegatronMixedPrecision`` (bf16; FP8 with the TE spec), checkpoints, preemption
   (:mod:`~nemo_erprm.training.trainer_setup`); what the run really uses, next to what was
   asked, in ``effective_settings.json`` (:mod:`~nemo_erprm.training.effective`);
6. ``NeMoLogger`` (TensorBoard, optional W&B) and ``AutoResume``, then ``llm.train``;
7. optionally the final checkpoint exported to HF.

Run folder (``run.output_dir/run.name``): ``config.yaml`` (the resolved config),
``metrics.jsonl`` (see :mod:`nemo_erprm.training.callbacks`), ``checkpoints/`` (NeMo
checkpoints: ``weights/`` + ``context/``; ``*-last`` is the newest), ``tb/`` (TensorBoard),
``data_summary.json`` (samples, steps, rows per split; steps per epoch), ``logs/`` (NeMo's
logs), ``tokenizer/`` (random init), ``hf/`` (``export.hf``), ``run.lock`` (while a launch runs:
a second launch on the folder is refused, :func:`~nemo_erprm.training.run_folder.hold_run_folder`).

Resume and preemption: rerunning the same command continues from the newest checkpoint of
the run folder (model, optimizer, LR schedule, consumed samples), so the loss trajectory is
the one of an uninterrupted run. SIGUSR1 or SIGTERM (Slurm's warning before the time limit,
pre-emption) ends the current step, writes a checkpoint and exits with status 0; requeueing
is the launcher's job (``slurm/train_erprm.sh``). The initial checkpoint is read only when
the run folder has no checkpoint yet.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

from nemo_erprm.errors import ConfigError
from nemo_erprm.training.checkpoints import last_checkpoint
from nemo_erprm.training.launch import global_rank, single_process_env

if TYPE_CHECKING:  # the config module imports torch and megatron: not needed for --help
    from nemo_erprm.training.config import TrainConfig

REPO = Path(__file__).resolve().parents[1]


def run(cfg: TrainConfig) -> Path:
    import torch

    on_gpu = torch.cuda.is_available()
    if not on_gpu:
        from nemo_erprm.runtime.cpu_backend import enable_cpu_backend

        enable_cpu_backend()
    from nemo.collections import llm

    from nemo_erprm.nemo.model import ERPRMModel
    from nemo_erprm.training.callbacks import TrainingMetrics
    from nemo_erprm.training.data_setup import build_data_module, plan_steps, report_data
    from nemo_erprm.training.effective import effective_settings, write_effective_settings
    from nemo_erprm.training.launch import devices_per_node, num_nodes
    from nemo_erprm.training.model_setup import build_ddp_config, build_optimizer, load_tokenizer_and_prm_config
    from nemo_erprm.training.run_folder import prepare_run_dir
    from nemo_erprm.training.trainer_setup import build_logger, build_resume, build_strategy, build_trainer

    # 1. run folder
    prepare_run_dir(cfg)
    run_dir = cfg.run_dir

    # 2. tokenizer + PRM config
    tokenizer, prm_config = load_tokenizer_and_prm_config(cfg)

    # 3. data
    data = build_data_module(cfg, tokenizer, prm_config)
    schedule = plan_steps(cfg, data)
    report_data(cfg, data, schedule)

    # 4. model + optimizer
    optim = build_optimizer(cfg, schedule.max_steps, on_gpu)
    model = ERPRMModel(prm_config, optim=optim, tokenizer=tokenizer)
    ddp = build_ddp_config(cfg, on_gpu)

    # 5. trainer
    strategy = build_strategy(cfg, ddp)
    nodes, devices = num_nodes(cfg), devices_per_node(cfg, on_gpu)
    if global_rank() == 0:
        write_effective_settings(cfg, effective_settings(cfg, prm_config, ddp, on_gpu, nodes, devices))
    trainer = build_trainer(cfg, strategy, schedule, data.has_validation, on_gpu, nodes, devices)

    # 6. logging, checkpoints, resume
    log, resume = build_logger(cfg), build_resume(cfg)
    if cfg.trainer.validate_only:
        log.setup(trainer, resume_if_exists=False)
        resume.setup(trainer, model)
        trainer.validate(model, datamodule=data)
        return run_dir
    if global_rank() == 0:
        print(f"training {schedule.max_steps} steps ({schedule.steps_per_epoch} per epoch, {data.num_train_rows} "
              f"rows, global batch {cfg.data.global_batch_size}) -> {run_dir}", flush=True)
    llm.train(model, data, trainer, log=log, resume=resume)
    progress = next(cb for cb in trainer.callbacks if isinstance(cb, TrainingMetrics))
    if global_rank() == 0 and not progress.started:
        final = last_checkpoint(run_dir)
        print(f"nothing to train: {run_dir} already finished its {schedule.max_steps} steps"
              f"{f' ({final.name})' if final else ''}; set run.name to train a new run", flush=True)

    # 7. export
    if cfg.export.hf and global_rank() == 0:
        export_hf(run_dir)
    return run_dir


def export_hf(run_dir: Path) -> None:
    """The run's final checkpoint as an HF model in ``hf/`` (a process of its own: the export
    loads the checkpoint on one rank, outside this job's process group)."""
    final = last_checkpoint(run_dir)
    if final is None:
        raise ConfigError(f"{run_dir}/checkpoints: no final checkpoint to export")
    subprocess.run([sys.executable, str(REPO / "tools" / "export_hf_checkpoint.py"), "--ckpt", str(final),
                    "--out", str(run_dir / "hf"), "--overwrite"], check=True, env=single_process_env(os.environ))


def main(argv: Optional[Sequence[str]] = None) -> int:
    import argparse

    from nemo_erprm.errors import run_reporting_errors

    parser = argparse.ArgumentParser(prog="python -m nemo_erprm.train", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="recipe YAML (conf/erprm_*.yaml, conf/tiny_cpu.yaml)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("overrides", nargs="*", help="key=value (OmegaConf dotlist), e.g. optim.lr=2e-6")
    parser.add_argument("--verbose", action="store_true", help="show other libraries' warnings and logs (ERPRM_VERBOSE=1)")
    args = parser.parse_args(argv)
    from nemo_erprm.runtime.logs import quiet_third_party, set_log_file

    quiet_third_party("train", args.verbose)  # library warnings to the run folder, not the console

    def go() -> int:
        # --print-config shows what a file resolves to, also where its paths do not exist yet
        from nemo_erprm.training.config import dump_train_config, load_train_config

        cfg = load_train_config(args.config, args.overrides, validate=not args.print_config)
        if args.print_config:
            print(dump_train_config(cfg), end="")
            return 0
        from nemo_erprm.training.run_folder import hold_run_folder

        with hold_run_folder(cfg):  # one launch per run folder: a second one is refused here
            set_log_file(cfg.run_dir / f"library.rank{global_rank()}.log")  # not logs/: NeMo moves its files
            run_dir = run(cfg)
        if global_rank() == 0:
            print(f"run folder: {run_dir}", flush=True)
        return 0

    return run_reporting_errors(go)


if __name__ == "__main__":
    sys.exit(main())
