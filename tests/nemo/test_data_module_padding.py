"""The data module pads every micro-batch for the model's layout (sequence parallelism, FP8
recipe, micro-batch size: :func:`nemo_erprm.data.collate.pad_multiple`) and refuses a
seq_length the layout cannot run, when it is built, before any data is read."""

import pytest

from nemo_erprm.errors import ConfigError

FP8_TP4 = dict(tensor_parallel=4, sequence_parallel=True, fp8="hybrid", fp8_recipe="delayed")


def data_module(**over):
    from nemo_erprm.nemo.data_module import ERPRMDataModule

    kw = dict(seq_length=512, micro_batch_size=1, global_batch_size=8, **FP8_TP4)
    kw.update(over)
    return ERPRMDataModule("never_read.jsonl", None, **kw)


def test_the_layout_sets_the_width_multiple():
    assert data_module().pad_multiple == 32  # 8 tokens per rank for TE's FP8 GEMMs, TP=4
    assert data_module(micro_batch_size=2).pad_multiple == 16
    assert data_module(fp8_recipe="mxfp8", fp8="e4m3").pad_multiple == 128
    assert data_module(fp8=None, sequence_parallel=False).pad_multiple == 16
    assert data_module(pad_multiple=64).pad_multiple == 64  # a coarser rounding that still fits


def test_a_layout_the_run_cannot_take_is_refused_up_front():
    with pytest.raises(ConfigError, match=r"model.seq_length=520 must be a multiple of 32: sequence parallelism "
                                          r"splits it over tensor_model_parallel_size=4; Transformer Engine's FP8"):
        data_module(seq_length=520)
    with pytest.raises(ConfigError, match="pad_multiple=16 must be a multiple of 32 for this layout"):
        data_module(pad_multiple=16)
