"""The explicit CPU backend: run megatron-core and NeMo 2 on CPU over gloo.

megatron-core and NeMo call CUDA directly in a handful of places (device placement, the
tensor-parallel RNG tracker, streams for gradient sync, type-name asserts in grad clipping,
a CUDA check on resume). :func:`enable_cpu_backend` patches exactly those, process-wide, so
tests and the CPU demo can train the real model code with TP/PP/DP over gloo. It is opt-in,
idempotent, and refuses to run where CUDA is available: GPU jobs never see these patches.

Patched (see ../shared/docs/ENVIRONMENT.md for the measurements behind each):
 1. ``torch.cuda.current_device()`` -> ``"cpu"``.
 2. The tensor-parallel RNG tracker runs on the CPU generator (seed, get/set state, fork).
 3. ``device="cuda"`` in tensor factories and ``.to()``, ``.cuda()``, ``pin_memory`` -> CPU;
    ``Tensor.type()`` reports ``torch.cuda.*`` names (megatron asserts on them).
 4. ``torch.cuda.synchronize`` / ``empty_cache`` -> no-ops.
 5. ``torch.cuda.current_stream/Stream/Event/stream`` -> inert stand-ins.
 6. NeMo: megatron's RNG tracker is seeded on CPU too; the resume-time CUDA check is a no-op.
 7. Configs: TE-only fusions off for every megatron config built (NeMo's family configs
    default them on; they are kernels, not settings a user requests), and
    :func:`adapt_config_for_cpu` also unbatches pipeline p2p.
 8. Norms: megatron's fallback norm (``WrappedTorchNorm``, used by the local spec without
    apex) refuses sequence parallelism; under SP the backend builds the same torch norm and
    marks its weights ``sequence_parallel`` so megatron all-reduces their gradients over TP,
    as TE's and apex's norms do. Sequence parallelism is never turned off.

A requested setting is never changed silently: the training entry prints and records (in
``effective_settings.json``) every setting that differs from the request or the family default.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any

import torch

_ENABLED = False

_FACTORIES = (
    "empty", "zeros", "ones", "full", "tensor", "arange", "rand", "randn", "randint", "randperm",
    "empty_like", "zeros_like", "ones_like", "full_like", "rand_like", "randn_like", "as_tensor",
    "linspace", "eye", "empty_strided",
)


def _cpu_device(device: Any) -> Any:
    if device is None:
        return None
    if isinstance(device, int):
        return torch.device("cpu")
    if isinstance(device, str) and device.startswith("cuda"):
        return torch.device("cpu")
    if isinstance(device, torch.device) and device.type == "cuda":
        return torch.device("cpu")
    return device


def _wrap_factory(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if "device" in kwargs:
            kwargs["device"] = _cpu_device(kwargs["device"])
        kwargs.pop("pin_memory", None)
        return fn(*args, **kwargs)

    return wrapper


class _InertStream:
    def __init__(self, *args, **kwargs):
        pass

    def wait_stream(self, *args, **kwargs):
        pass

    def wait_event(self, *args, **kwargs):
        pass

    def record_event(self, *args, **kwargs):
        return _InertEvent()

    def synchronize(self):
        pass

    def query(self):
        return True


class _InertEvent:
    def __init__(self, *args, **kwargs):
        pass

    def record(self, *args, **kwargs):
        pass

    def wait(self, *args, **kwargs):
        pass

    def synchronize(self):
        pass

    def query(self):
        return True

    def elapsed_time(self, other):
        return 0.0


@contextlib.contextmanager
def _inert_stream_ctx(*args, **kwargs):
    yield


def _patch_torch() -> None:
    cuda = torch.cuda
    cuda.current_device = lambda: "cpu"
    cuda.synchronize = lambda *a, **k: None
    cuda.empty_cache = lambda *a, **k: None
    cuda.current_stream = lambda *a, **k: _InertStream()
    cuda.default_stream = lambda *a, **k: _InertStream()
    cuda.Stream = _InertStream
    cuda.Event = _InertEvent
    cuda.stream = _inert_stream_ctx
    cuda.set_device = lambda *a, **k: None
    cuda.device_count = lambda: 0
    cuda.memory_allocated = lambda *a, **k: 0
    cuda.max_memory_allocated = lambda *a, **k: 0
    cuda.reset_peak_memory_stats = lambda *a, **k: None
    # The "CUDA" generator is the CPU generator.
    cuda.manual_seed = lambda seed: torch.default_generator.manual_seed(int(seed))
    cuda.manual_seed_all = lambda seed: None  # torch.manual_seed calls it: the CPU seed is already set
    cuda.get_rng_state = lambda *a, **k: torch.get_rng_state()
    cuda.set_rng_state = lambda state, *a, **k: torch.set_rng_state(state)

    for name in _FACTORIES:
        if hasattr(torch, name):
            setattr(torch, name, _wrap_factory(getattr(torch, name)))

    tensor_to = torch.Tensor.to

    def to(self, *args, **kwargs):
        if args and isinstance(args[0], (str, torch.device, int)) and not isinstance(args[0], bool):
            args = (_cpu_device(args[0]),) + args[1:]
        if "device" in kwargs:
            kwargs["device"] = _cpu_device(kwargs["device"])
        return tensor_to(self, *args, **kwargs)

    torch.Tensor.to = to
    torch.Tensor.cuda = lambda self, *a, **k: self
    torch.Tensor.pin_memory = lambda self, *a, **k: self
    torch.nn.Module.cuda = lambda self, *a, **k: self

    tensor_type = torch.Tensor.type

    def type_(self, *args, **kwargs):
        if args or kwargs:
            return tensor_type(self, *args, **kwargs)
        name = tensor_type(self)
        return name.replace("torch.", "torch.cuda.", 1) if not name.startswith("torch.cuda.") else name

    torch.Tensor.type = type_


def _patch_megatron_rng() -> None:
    from megatron.core.tensor_parallel import random as mrandom

    mrandom._get_cuda_rng_state = lambda *a, **k: torch.get_rng_state()
    mrandom._set_cuda_rng_state = lambda state, *a, **k: torch.set_rng_state(state)

    @contextlib.contextmanager
    def fork(self, name=mrandom._MODEL_PARALLEL_RNG_TRACKER_NAME):
        if name not in self.states_:
            raise Exception(f"rng state {name} is not added")
        outer = torch.get_rng_state()
        torch.set_rng_state(self.states_[name])
        try:
            yield
        finally:
            self.states_[name] = torch.get_rng_state()
            torch.set_rng_state(outer)

    mrandom.CudaRNGStatesTracker.fork = fork


TE_ONLY_FUSIONS = (
    "apply_rope_fusion",
    "persist_layer_norm",
    "gradient_accumulation_fusion",
    "bias_activation_fusion",
    "bias_dropout_fusion",
    "masked_softmax_fusion",
    "cross_entropy_loss_fusion",
)


def _patch_transformer_config() -> None:
    """(c) NeMo's family configs (LlamaConfig & co.) default TE-only fusions to True and megatron
    refuses them without TE: every config built under the CPU backend gets them off first."""
    from megatron.core.transformer.transformer_config import TransformerConfig

    original = TransformerConfig.__post_init__
    if getattr(original, "_erprm_cpu", False):
        return

    def __post_init__(self):
        for name in TE_ONLY_FUSIONS:
            if hasattr(self, name):
                setattr(self, name, False)
        original(self)

    __post_init__._erprm_cpu = True
    TransformerConfig.__post_init__ = __post_init__


def sequence_parallel_norm(config: Any, hidden_size: int, eps: float = 1e-5) -> torch.nn.Module:
    """torch's LayerNorm/RMSNorm for sequence-parallel activations: each TP rank normalises its
    slice of the sequence, so the weight gradients are partial sums that megatron's
    ``finalize_model_grads`` all-reduces over TP for parameters marked ``sequence_parallel``."""
    norms = {"LayerNorm": torch.nn.LayerNorm, "RMSNorm": torch.nn.RMSNorm}
    if config.normalization not in norms:
        raise ValueError(f"sequence parallelism on the CPU backend supports {sorted(norms)}, "
                         f"not normalization={config.normalization!r}")
    norm = norms[config.normalization](hidden_size, eps=eps, dtype=config.params_dtype)
    for param in norm.parameters():
        setattr(param, "sequence_parallel", True)
    return norm


def _patch_torch_norm() -> None:
    """(8) Let megatron's torch-norm fallback build sequence-parallel norms."""
    from megatron.core.transformer import torch_norm

    wrapped = torch_norm.WrappedTorchNorm
    original = wrapped.__new__
    if getattr(original, "_erprm_cpu", False):
        return

    def __new__(cls, config, hidden_size, eps=1e-5, *args, **kwargs):
        if getattr(config, "sequence_parallel", False):
            return sequence_parallel_norm(config, hidden_size, eps)
        return original(cls, config, hidden_size, eps, *args, **kwargs)

    __new__._erprm_cpu = True
    wrapped.__new__ = __new__


def _patch_nemo() -> None:
    """NeMo-specific patches; skipped silently when NeMo is not installed."""
    try:
        import nemo.lightning.io.pl as nemo_io_pl
    except ImportError:
        return
    # (b) resume asserts CUDA is initialised while moving tensors: nothing to move on CPU.
    if hasattr(nemo_io_pl, "_fix_tensors_device"):
        nemo_io_pl._fix_tensors_device = lambda ten, *a, **k: ten
    # (a) NeMo seeds megatron's RNG tracker only when CUDA is available.
    try:
        from megatron.core import tensor_parallel
        from nemo.lightning import _strategy_lib

        original = _strategy_lib.init_model_parallel

        def init_model_parallel(*args, **kwargs):
            out = original(*args, **kwargs)
            seed_cpu_rng_tracker()
            return out

        _strategy_lib.init_model_parallel = init_model_parallel
        del tensor_parallel
    except (ImportError, AttributeError):
        pass


def seed_cpu_rng_tracker(seed: int = 1234) -> None:
    """Seed megatron's tensor-parallel RNG tracker (what NeMo does only on GPUs)."""
    from megatron.core import tensor_parallel

    tensor_parallel.model_parallel_cuda_manual_seed(seed)


def cpu_backend_enabled() -> bool:
    return _ENABLED


def enable_cpu_backend() -> None:
    """Install the CPU patches in this process (idempotent). Refuses when CUDA is available."""
    global _ENABLED
    if _ENABLED:
        return
    if torch.cuda.is_available():
        raise RuntimeError(
            "the CPU backend is for machines without a GPU; CUDA is available here, so run the GPU path"
        )
    _patch_torch()
    _patch_megatron_rng()
    _patch_transformer_config()
    _patch_torch_norm()
    _patch_nemo()
    _ENABLED = True


def adapt_config_for_cpu(config: Any) -> Any:
    """(c) A megatron config for the CPU backend: no fusions needing Transformer Engine / apex /
    CUDA kernels, local attention, and unbatched pipeline p2p (measured: batched isend/irecv
    over gloo mixes up activations in the interleaved virtual-pipeline schedule; unbatched p2p
    matches TP=1 exactly). Sequence parallelism is kept: it runs over gloo."""
    for name in TE_ONLY_FUSIONS:
        if hasattr(config, name):
            setattr(config, name, False)
    if hasattr(config, "batch_p2p_comm"):
        config.batch_p2p_comm = False
    if hasattr(config, "attention_backend"):
        from megatron.core.transformer.enums import AttnBackend

        config.attention_backend = AttnBackend.local
    return config
