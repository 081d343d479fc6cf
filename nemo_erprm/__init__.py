"""nemo-erprm: Entropy-Regularized Process Reward Models on NeMo 2 / megatron-core."""

import warnings

# torch.cuda imports pynvml, which nemo-toolkit's dependencies install; its deprecation
# notice says nothing about this project and would show on every command.
warnings.filterwarnings("ignore", message="The pynvml package is deprecated", category=FutureWarning)

__version__ = "0.1.0"
