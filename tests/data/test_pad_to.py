"""Micro-batch width: padded to the longest row (rounded up to what the layout needs) by
default, to seq_length with data.pad_to=max_length or pipeline parallelism; same loss."""

import math
from pathlib import Path

import pytest
import torch

from nemo_erprm.data.collate import collate_rows, pad_multiple, pad_width
from nemo_erprm.errors import ConfigError

SEQ, VOCAB = 64, 256
REPO = Path(__file__).resolve().parents[2]


def samples(lengths):
    g = torch.Generator().manual_seed(5)
    out = []
    for i, n in enumerate(lengths):
        ids = torch.randint(5, VOCAB, (n,), generator=g).tolist()
        tags = sorted(torch.randperm(n, generator=g)[:2].tolist())
        out.append({"input_ids": ids, "tag_positions": tags, "targets": torch.rand(2, generator=g).tolist(),
                    "sample_index": i})
    return out


def test_pad_multiple_covers_fp8_sequence_and_context_parallel():
    assert pad_multiple() == 16
    assert pad_multiple(2, sequence_parallel=False) == 16  # TP without SP does not split the sequence
    assert pad_multiple(3, sequence_parallel=True) == 48
    assert pad_multiple(8, sequence_parallel=True) == 16
    assert pad_multiple(1, context_parallel=16) == 32


def test_width_is_the_longest_row_rounded_up_never_past_seq_length():
    assert pad_width([20, 13], SEQ, 16) == 32
    assert pad_width([32, 1], SEQ, 16) == 32
    assert pad_width([60], SEQ, 48) == SEQ  # rounded up past seq_length: seq_length
    assert pad_width([20, 13], SEQ, None) == SEQ  # max_length
    data = samples([20, 13])
    longest = collate_rows([[s] for s in data], SEQ, 0, pad_multiple=16)
    assert longest["tokens"].shape == (2, 32) and longest["attention_mask"].shape == (2, 1, 32, 32)
    sp3 = collate_rows([[s] for s in data], SEQ, 0, pad_multiple=pad_multiple(3, True))
    assert sp3["tokens"].shape == (2, 48)
    packed = collate_rows([[data[0], data[1]]], SEQ, 0, pad_multiple=16)  # a packed row: 33 tokens
    assert packed["tokens"].shape == (1, 48) and packed["cu_seqlens"][0, :4].tolist() == [0, 20, 33, 48]


def test_longest_is_the_full_width_batch_cut_at_the_width():
    data = samples([20, 13, 7])
    rows = [[data[0]], [data[1], data[2]]]
    full = collate_rows(rows, SEQ, 0)
    cut = collate_rows(rows, SEQ, 0, pad_multiple=16)
    w = cut["tokens"].shape[1]
    assert full["tokens"].shape[1] == SEQ and w == 32
    for key in ("tokens", "position_ids", "step_mask", "step_targets", "step_sample"):
        assert torch.equal(cut[key], full[key][:, :w]), key
    assert torch.equal(cut["attention_mask"], full["attention_mask"][:, :, :w, :w])
    assert torch.equal(cut["num_tokens"], full["num_tokens"])
    assert not full["step_mask"][:, w:].any()  # nothing but padding was cut


@pytest.mark.parametrize("head", ["lm_tokens", "scalar"])
def test_longest_and_max_length_give_the_same_step_losses(megatron_cpu, head):
    from nemo_erprm.model.build import build_prm_model
    from nemo_erprm.model.loss import step_losses
    from tests.conftest import tiny_transformer_config

    model = build_prm_model(tiny_transformer_config(), VOCAB, SEQ, head=head, plus_token_id=3, minus_token_id=4)
    data = samples([20, 13, 30])
    rows = [[data[0], data[1]], [data[2]]]
    losses = []
    for multiple in (None, 16):
        batch = collate_rows(rows, SEQ, 0, pad_multiple=multiple)
        out = model(batch["tokens"], batch["position_ids"], batch["attention_mask"], step_mask=batch["step_mask"])
        loss = step_losses(out, batch["step_targets"][batch["step_mask"]], head).sum()
        model.zero_grad()
        loss.backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        losses.append((loss.item(), grads))
    (full_loss, full_grad), (cut_loss, cut_grad) = losses
    assert abs(full_loss - cut_loss) < 1e-5
    assert torch.allclose(full_grad, cut_grad, atol=1e-6, rtol=1e-5)


def test_pipeline_parallel_pads_to_max_length_and_bad_values_are_refused():
    from nemo_erprm.training.effective import effective_pad_to
    from nemo_erprm.training.config import TrainConfig, load_train_config

    cfg = TrainConfig()
    assert cfg.data.pad_to == "longest" and effective_pad_to(cfg) == "longest"
    cfg.model.pipeline_model_parallel_size = 2
    assert effective_pad_to(cfg) == "max_length"
    cfg.data.pad_to = "max_length"
    cfg.model.pipeline_model_parallel_size = 1
    assert effective_pad_to(cfg) == "max_length"
    with pytest.raises(ConfigError, match="data.pad_to='shortest'"):
        load_train_config("conf/tiny_cpu.yaml", ["data.pad_to=shortest"])


# --- Transformer Engine's FP8 rules on every recipe layout -------------------------------------
# A stand-in for Transformer Engine's own checks, which cannot run here (TE needs CUDA; it is
# never installed in the CPU environment). The first three are copied from TE 2.20.0.dev0
# (NVIDIA/TransformerEngine@d0067d0): pytorch/utils.py assert_dim_for_fp8_exec, called by Linear,
# LayerNormLinear and LayerNormMLP on their local input under every FP8 recipe; the
# is_quantizable of pytorch/tensor/mxfp8_tensor.py (block 32) and float8_blockwise_tensor.py
# (block_len 128). The last is cuBLAS's FP8 leading-dimension rule (common/gemm/cublaslt_gemm.cu)
# on the weight-gradient GEMM, whose inner dimension is the all-gathered tokens.


def te_assert_dim_for_fp8_exec(*tensors):
    for tensor in tensors:
        if math.prod(tensor.shape[:-1]) % 8 != 0 or tensor.shape[-1] % 16 != 0:
            raise ValueError("FP8 execution requires the product of all dimensions except the last to be"
                             " divisible by 8 and the last dimension to be divisible by 16")


def te_is_quantizable(inp, block):
    if inp.ndim < 2:
        return False
    if inp.shape[-1] % block != 0:
        return False
    if math.prod(inp.shape[:-1]) % block != 0:
        return False
    return True


def te_runs(width, micro_batch, tp, sp, fp8, recipe, hidden=4096):
    """Whether a micro-batch [width, micro_batch, hidden] passes TE's checks on one rank."""
    if sp and width % tp:
        return False  # megatron's scatter to the sequence-parallel region splits dim 0 evenly
    local = torch.empty(width // tp if sp else width, micro_batch, hidden, device="meta")
    if not fp8:
        return True
    try:
        te_assert_dim_for_fp8_exec(local)
    except ValueError:
        return False
    block = {"mxfp8": 32, "blockwise": 128}.get(recipe)
    if block and not te_is_quantizable(local, block):
        return False
    return (width * micro_batch) % 16 == 0  # wgrad GEMM: cuBLAS FP8 lda % 16


def train_recipes():
    """Every training YAML under conf/: the files with a model section and only TrainConfig sections."""
    import yaml

    from nemo_erprm.training.config import TrainConfig

    sections = set(TrainConfig.__dataclass_fields__)
    found = []
    for path in sorted((REPO / "conf").rglob("*.yaml")):
        top = yaml.safe_load(path.read_text())
        if isinstance(top, dict) and "model" in top and set(top) <= sections:
            found.append(path)
    return found


FP8_SETTINGS = [(None, "delayed"), ("hybrid", "delayed"), ("hybrid", "tensorwise"), ("e4m3", "mxfp8"),
                ("hybrid", "blockwise")]


def test_fp8_pads_whole_te_row_blocks_per_rank():
    assert pad_multiple(4, True, fp8="hybrid") == 32  # 8 tokens per rank x TP=4
    assert pad_multiple(8, True, fp8="hybrid") == 64
    assert pad_multiple(8, True, fp8="hybrid", micro_batch_size=2) == 32  # 2 rows per position
    assert pad_multiple(4, True, fp8="e4m3", fp8_recipe="mxfp8") == 128
    assert pad_multiple(2, True, fp8="hybrid", fp8_recipe="blockwise") == 256
    assert pad_multiple(2, False, fp8="e4m3", fp8_recipe="mxfp8") == 32  # TP without SP: whole sequence
    assert pad_multiple(1, fp8="hybrid", fp8_recipe="blockwise", micro_batch_size=4) == 32
    assert pad_multiple(4, True) == 16  # no FP8: only the split over the TP ranks


def test_every_recipe_layout_pads_to_widths_transformer_engine_accepts():
    """Each training recipe at its own layout, at TP=4 and TP=8 with sequence parallelism, without
    FP8 and with every FP8 recipe: every longest-row length 1..seq_length gets a width TE's checks
    accept, or the recipe's seq_length is refused up front (one line naming the key)."""
    from nemo_erprm.data.collate import check_seq_length
    from nemo_erprm.training.config import load_train_config

    recipes = train_recipes()
    assert {p.name for p in recipes} >= {"erprm_llama3_8b.yaml", "tiny_cpu.yaml", "mistral_7b_h100_fp8.yaml",
                                         "arith_train.yaml", "train.yaml"}
    walked = refused = 0
    for path in recipes:
        cfg = load_train_config(str(path), ["data.train=unused.jsonl"], validate=False)
        m, seq, mbs = cfg.model, cfg.model.seq_length, cfg.data.micro_batch_size
        assert seq, f"{path}: model.seq_length unset"
        for tp, sp in sorted({(m.tensor_model_parallel_size, m.sequence_parallel), (4, True), (8, True)}):
            for fp8, recipe in sorted({(m.fp8, m.fp8_recipe), *FP8_SETTINGS}, key=str):
                layout = dict(fp8=fp8, fp8_recipe=recipe, micro_batch_size=mbs)
                where = f"{path.name} TP={tp} SP={sp} fp8={fp8}/{recipe} mbs={mbs}"
                if not te_runs(seq, mbs, tp, sp, fp8, recipe):  # max_length and pipeline runs use seq_length
                    with pytest.raises(ConfigError, match=rf"model.seq_length={seq} must be a multiple of"):
                        check_seq_length(seq, tp, sp, **layout)
                    refused += 1
                    continue
                check_seq_length(seq, tp, sp, **layout)
                multiple = pad_multiple(tp, sp, **layout)
                widths = {pad_width([n], seq, multiple) for n in range(1, seq + 1)}
                for n in range(1, seq + 1):
                    assert n <= pad_width([n], seq, multiple) <= seq, where
                bad = sorted(w for w in widths if not te_runs(w, mbs, tp, sp, fp8, recipe))
                assert not bad, f"{where}: widths {bad[:5]} fail TE's checks"
                walked += 1
    assert walked >= 100 and refused >= 1, (walked, refused)


def test_the_stand_in_catches_the_old_rule():
    """lcm(16, TP) (the rule before) at micro-batch 1: 256 of 512 longest-row lengths fail at TP=4,
    384 at TP=8, exactly as TE's check counts them: the walk above can fail."""
    for tp, failing in ((4, 256), (8, 384)):
        old = math.lcm(16, tp)
        widths = [pad_width([n], 512, old) for n in range(1, 513)]
        assert sum(not te_runs(w, 1, tp, True, "hybrid", "delayed") for w in widths) == failing


def test_seq_length_the_layout_cannot_split_is_refused():
    from nemo_erprm.data.collate import check_seq_length

    check_seq_length(100)  # no constraint without sequence parallelism or FP8
    with pytest.raises(ConfigError, match=r"model.seq_length=512 must be a multiple of 1024: .*blockwise recipe.*"
                                          r"data.micro_batch_size=1 \(e.g. model.seq_length=1024\)"):
        check_seq_length(512, 8, True, fp8="hybrid", fp8_recipe="blockwise")
    check_seq_length(512, 8, True, fp8="hybrid", fp8_recipe="blockwise", micro_batch_size=2)
    with pytest.raises(ConfigError, match="sequence parallelism splits it over tensor_model_parallel_size=3"):
        check_seq_length(100, 3, True)
