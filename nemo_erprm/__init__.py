"""nemo-erprm: Entropy-Regularized Process Reward Models on NeMo 2 / megatron-core."""

import warnings

# torch.cuda imports pynvml, which nemo-toolkit's dependencies install; its deprecation
# notice says nothing about this project and would show on every command.
warnings.filterwarnings("ignore", message="The pynvml package is deprecated", category=FutureWarning)

__version__ = "0.1.0"

# `python -m nemo_erprm.train` etc.: library warnings go to the run's log file, not the
# console, also those printed while the tool's module imports megatron (see runtime/logs.py)
from nemo_erprm.runtime.logs import quiet_module_cli as _quiet_module_cli  # noqa: E402

_quiet_module_cli()
