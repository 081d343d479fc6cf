"""User-facing errors. CLIs print these as one line; anything else is a bug and shows a traceback."""


class ERPRMError(Exception):
    """Base class of errors caused by input, config or run state, not by a bug."""


class ConfigError(ERPRMError, ValueError):
    """A config value is invalid; the message names the key."""


class RunStateError(ERPRMError, RuntimeError):
    """The output folder or a checkpoint is in a state this command cannot continue from."""
