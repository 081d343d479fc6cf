"""The CPU backend keeps sequence parallelism: configs keep it, and megatron's torch-norm
fallback builds norms whose weights megatron all-reduces over TP (the multi-process parity
is in tests/training/test_recipe_twins.py)."""

import torch

from nemo_erprm.runtime.cpu_backend import enable_cpu_backend, sequence_parallel_norm


def sp_config(**over):
    from megatron.core.transformer.transformer_config import TransformerConfig

    kw = dict(num_layers=2, hidden_size=64, num_attention_heads=4, tensor_model_parallel_size=2,
              sequence_parallel=True, normalization="RMSNorm", use_cpu_initialization=True)
    kw.update(over)
    return TransformerConfig(**kw)


def test_configs_keep_sequence_parallel_and_fallback_norms_accept_it():
    enable_cpu_backend()
    from megatron.core.transformer.torch_norm import WrappedTorchNorm

    config = sp_config()
    assert config.sequence_parallel  # the backend used to force it off here
    norm = WrappedTorchNorm(config, 64, eps=1e-6)  # megatron's own class asserts on SP without the backend
    assert isinstance(norm, torch.nn.RMSNorm) and norm.eps == 1e-6
    assert all(getattr(p, "sequence_parallel", False) for p in norm.parameters())
    plain = WrappedTorchNorm(sp_config(sequence_parallel=False), 64)
    assert not any(getattr(p, "sequence_parallel", False) for p in plain.parameters())


def test_sequence_parallel_norm_computes_torch_norm():
    config = sp_config(normalization="LayerNorm")
    norm = sequence_parallel_norm(config, 64, eps=1e-5)
    x = torch.randn(3, 2, 64)
    assert torch.equal(norm(x), torch.nn.functional.layer_norm(x, (64,), norm.weight, norm.bias, 1e-5))
