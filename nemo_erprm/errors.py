"""User-facing errors. CLIs print these as one line; anything else is a bug and shows a traceback."""

import argparse


class ERPRMError(Exception):
    """Base class of errors caused by input, config or run state, not by a bug."""


class ConfigError(ERPRMError, ValueError):
    """A config value is invalid; the message names the key."""


class RunStateError(ERPRMError, RuntimeError):
    """The output folder or a checkpoint is in a state this command cannot continue from."""


def run_reporting_errors(fn, *args, **kwargs) -> int:
    """Run a CLI body: user errors become one ``error: ...`` line and exit code 2 (a traceback
    with ERPRM_DEBUG=1); Ctrl-C exits 130. Anything else is a bug and raises."""
    import os
    import sys

    from omegaconf.errors import OmegaConfBaseException

    try:
        result = fn(*args, **kwargs)
        return result if isinstance(result, int) else 0  # library functions return their outputs
    except (ERPRMError, FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError,
            PermissionError, OmegaConfBaseException) as e:  # input and paths: the message names them
        if os.environ.get("ERPRM_DEBUG"):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        _close_progress_bars()  # the message starts on a line of its own, not after a bar
        print("interrupted: finished work is saved; rerun the same command to continue", file=sys.stderr)
        return 130


def _close_progress_bars() -> None:
    import sys

    tqdm = getattr(sys.modules.get("tqdm.std"), "tqdm", None)
    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


class ArgumentParser(argparse.ArgumentParser):
    """argparse with the tools' error format: one ``error: ...`` line and exit code 2 (argparse
    prints the whole usage first, which buries the line that matters)."""

    def error(self, message: str):  # type: ignore[override]
        import sys

        print(f"error: {self.prog}: {message} (see --help)", file=sys.stderr)
        raise SystemExit(2)
