"""Distributed-optimizer checkpoints that save and load with every optimizer megatron may pick.

Three gaps of megatron-core 0.15.3's ``DistributedOptimizer`` checkpoints, found on the CPU
backend and all independent of it:

1. **torch's AdamW** (megatron's optimizer where neither TE's nor apex's FusedAdam is
   installed: always on CPU, on a GPU image without them). FusedAdam keeps the step count in
   the param groups; torch's AdamW keeps a 0-dim ``step`` tensor per parameter. megatron
   already moves that ``step`` into the param groups in ``state_dict()`` and back in
   ``load_state_dict()``, but: its bucket-space parameter state (``dp_reshardable``, the
   default format) puts every per-parameter state into a flat bucket shard, where the 0-dim
   ``step`` fails a shape check at the first save; its inverse expects ``step`` in the shard;
   a fresh torch optimizer has no state at all, which ``state_dict()`` (called to build the
   load target) needs; and the load hands every parameter *the same* ``step`` tensor, which
   torch's AdamW then increments once per parameter (measured: 8 parameters, step 3 -> 11
   after one step, so the bias correction of every later step is wrong). Fix: ``step`` stays
   out of the bucket space (the param groups carry it), a fresh optimizer gets placeholder
   state before a load fills it in place, and each parameter gets its own ``step`` after a load.
2. **fp32 parameters**: the optimizer's main parameters are then views of the model's leaf
   parameters, and the load's in-place ``copy_`` fails autograd's leaf-view check unless it
   runs without grad (bf16/fp16 runs keep separate fp32 copies and never hit it).
3. **The fully reshardable format with several DDP buckets** (every real model: megatron's
   default bucket holds ~40M parameters). Upstream bug in
   ``megatron/core/optimizer/distrib_optimizer.py``,
   ``DistributedOptimizer.sharded_param_state_fully_reshardable``: it slices each parameter's
   state out of the world tensors of ``get_parameter_state_dp_zero``, which hold the buckets
   back to back *without* their end padding, at the parameter's ``param_index_map`` offsets,
   which *include* the end padding of every earlier bucket. So every parameter after the first
   bucket is saved from a shifted slice (partly its neighbour's values, partly zeros: the
   "param range exceeds unpadded buffer" warning), i.e. the checkpoint's main params and Adam
   moments are wrong there, although its model weights are right. The load then writes those
   values into the main params; with fp32 they are views of the model weights, on bf16 they
   are copied into the weights after the first step, so the resumed run diverges either way
   (measured on CPU: step-4 loss 0.7055 instead of 0.6692). Fixed upstream by
   NVIDIA/Megatron-LM PR #5077. Fix here: during that method the buffers' ``param_index_map``
   is rebased to the world tensors' coordinates (applied only where megatron still has the
   zero-padding fallback that PR removed, so a fixed megatron is not corrected twice).
   Checkpoints written before this fix with several buckets keep wrong optimizer state.

:func:`make_dist_optimizer_checkpointable` applies (2) and (3) always and (1) only where
megatron really uses torch's optimizer; with FusedAdam the step handling is untouched.
"""

from __future__ import annotations

from typing import Any

import torch

NOT_BUCKET_STATE = ("step",)  # per-parameter scalars that live in the param groups instead


def megatron_uses_torch_adam() -> bool:
    from megatron.core.optimizer import distrib_optimizer

    return not getattr(distrib_optimizer, "HAVE_APEX_OR_TE", True)


def init_torch_adam_state(optimizer: Any) -> None:
    """Give every parameter of a torch Adam(W) the state a checkpoint load fills in place
    (placeholders: the load overwrites the moments and sets ``step`` from the param groups)."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            state = optimizer.state[param]
            if "exp_avg" not in state:
                state["exp_avg"] = torch.zeros_like(param.data)
                state["exp_avg_sq"] = torch.zeros_like(param.data)
            if "step" not in state:
                state["step"] = torch.tensor(0.0)


def world_tensor_index_map(buffer: Any) -> dict:
    """``buffer.param_index_map`` (param -> (start, end, bucket id) in the padded buffer) in the
    coordinates of ``get_parameter_state_dp_zero``'s world tensors, which drop each bucket's
    end padding: a parameter moves down by the padding of all buckets before its own."""
    shift, unpadded_start = [], 0
    for bucket in buffer.buckets:
        shift.append(bucket.offset - unpadded_start)
        unpadded_start += bucket.numel_unpadded
    return {param: (start - shift[bucket_id], end - shift[bucket_id], bucket_id)
            for param, (start, end, bucket_id) in buffer.param_index_map.items()}


def megatron_misplaces_fully_reshardable_state() -> bool:
    """Whether megatron's ``sharded_param_state_fully_reshardable`` still slices the world
    tensors at padded offsets (the zero-padding fallback went with the fix, Megatron-LM #5077)."""
    import inspect

    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    return "missing_elems_num" in inspect.getsource(DistributedOptimizer.sharded_param_state_fully_reshardable)


def make_dist_optimizer_checkpointable() -> None:
    """Patch megatron's DistributedOptimizer in this process (idempotent)."""
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    if getattr(DistributedOptimizer, "_erprm_checkpointable", False):
        return
    torch_adam = megatron_uses_torch_adam()
    get_states = DistributedOptimizer._get_main_param_and_optimizer_states
    set_states = DistributedOptimizer._set_main_param_and_optimizer_states
    sharded_state_dict = DistributedOptimizer.sharded_state_dict

    def _get_main_param_and_optimizer_states(self: Any, model_param: Any) -> dict:
        tensors = get_states(self, model_param)
        if torch_adam:
            for key in NOT_BUCKET_STATE:
                tensors.pop(key, None)
        return tensors

    @torch.no_grad()
    def _set_main_param_and_optimizer_states(self: Any, model_param: Any, tensors: dict) -> None:
        if not torch_adam:
            return set_states(self, model_param, tensors)
        group_index, group_order = self.model_param_group_index_map[model_param]
        main_param = self.optimizer.param_groups[group_index]["params"][group_order]
        state = self.optimizer.state[main_param]
        kept = {key: state.pop(key) for key in NOT_BUCKET_STATE if key in state}
        try:
            set_states(self, model_param, tensors)
        finally:
            state.update(kept)

    def sharded_state_dict_(self: Any, model_sharded_state_dict: Any, is_loading: bool = False, **kwargs: Any):
        if is_loading and torch_adam:
            init_torch_adam_state(self.optimizer)
        return sharded_state_dict(self, model_sharded_state_dict, is_loading, **kwargs)

    fully_reshardable = DistributedOptimizer.sharded_param_state_fully_reshardable

    def sharded_param_state_fully_reshardable(self: Any, *args: Any, **kwargs: Any):
        padded = [buffer.param_index_map for buffer in self.buffers]
        try:
            for buffer in self.buffers:  # same parameters, same order: only the offsets move
                buffer.param_index_map = world_tensor_index_map(buffer)
            return fully_reshardable(self, *args, **kwargs)
        finally:
            for buffer, index_map in zip(self.buffers, padded):
                buffer.param_index_map = index_map

    load_state_dict = DistributedOptimizer.load_state_dict

    def load_state_dict_(self: Any, state_dict: Any) -> None:
        load_state_dict(self, state_dict)
        if torch_adam:
            for state in self.optimizer.state.values():
                if isinstance(state.get("step"), torch.Tensor):
                    state["step"] = state["step"].clone()  # one counter per parameter

    DistributedOptimizer.load_state_dict = load_state_dict_
    DistributedOptimizer._get_main_param_and_optimizer_states = _get_main_param_and_optimizer_states
    DistributedOptimizer._set_main_param_and_optimizer_states = _set_main_param_and_optimizer_states
    DistributedOptimizer.sharded_state_dict = sharded_state_dict_
    if megatron_misplaces_fully_reshardable_state():
        DistributedOptimizer.sharded_param_state_fully_reshardable = sharded_param_state_fully_reshardable
    DistributedOptimizer._erprm_checkpointable = True
