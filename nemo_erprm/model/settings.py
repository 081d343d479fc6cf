"""The model's named settings (layer spec switch, recompute presets, FP8 formats, head types):
plain values, no torch or megatron import, so configs validate and print in a second."""

from __future__ import annotations

TRANSFORMER_IMPLS = ("local", "transformer_engine")
# megatron activation-recompute settings by name (full: every layer, one layer per checkpoint)
RECOMPUTE = {
    "none": {},
    "selective": {"recompute_granularity": "selective"},
    "full": {"recompute_granularity": "full", "recompute_method": "uniform", "recompute_num_layers": 1},
}
FP8_FORMATS = (None, "hybrid", "e4m3")
HEAD_TYPES = ("lm_tokens", "scalar")
