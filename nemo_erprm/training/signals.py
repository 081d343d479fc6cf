"""Keep the trainer's helper processes alive through the signals that ask it to stop.

Slurm delivers a step's signals (the time-limit USR1 forwarded by ``slurm/train_erprm.sh``,
the SIGTERM of a cancel or a preemption) to *every* process of the step, not only to the
ranks. The ranks handle them (NeMo's ``PreemptionCallback``: finish the step, checkpoint,
stop), but processes started with the ``spawn`` or ``forkserver`` method begin as a fresh
interpreter with the default action, which for both signals is to die. megatron's
dist-checkpoint writer starts such a process (a ``multiprocessing`` Manager holding its
results queue) at the first save: a signal landing while it starts, or at any later time,
kills it, and the checkpoint the signal asked for fails with ``EOFError``.

:func:`shield_spawned_helpers` starts every spawned process with these signals blocked (the
signal mask survives fork and exec), so they stay pending there and never act; the ranks
still receive and handle them. A cancelled job still ends: Slurm follows with SIGKILL.
"""

from __future__ import annotations

import functools
import signal
from typing import Iterable

# Slurm's time-limit warning, a cancel or preemption, and Ctrl-C (the terminal signals the
# whole foreground process group, helpers included)
STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)


def shield_spawned_helpers(signals: Iterable[signal.Signals] = STOP_SIGNALS) -> None:
    """Block ``signals`` in every process multiprocessing spawns from now on (idempotent)."""
    import multiprocessing.util as mp_util

    if getattr(mp_util.spawnv_passfds, "_erprm_shielded", False):
        return
    blocked = set(signals)
    spawn = mp_util.spawnv_passfds

    @functools.wraps(spawn)
    def spawn_with_signals_blocked(*args, **kwargs):
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)  # this thread only, restored below
        try:
            return spawn(*args, **kwargs)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)

    spawn_with_signals_blocked._erprm_shielded = True  # type: ignore[attr-defined]
    mp_util.spawnv_passfds = spawn_with_signals_blocked
