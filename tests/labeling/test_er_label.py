import math

import numpy as np
import pytest
import torch

from nemo_erprm.labeling import er_label, er_label_from_counts, eta_key, labels_for_etas


def rewards(n_correct, n=16):
    return [1.0] * n_correct + [0.0] * (n - n_correct)


@pytest.mark.parametrize(
    "n_correct, eta, expected",
    [(4, 1, 0.357), (4, 2, 0.477), (4, 10, 0.861), (8, 2, 0.717)],
)
def test_paper_values(n_correct, eta, expected):
    assert round(er_label(rewards(n_correct), eta), 3) == expected
    assert round(er_label_from_counts(n_correct, 16, eta), 3) == expected


@pytest.mark.parametrize("eta", [-math.inf, -50, -2, -0.5, 0, 0.5, 2, 10, 1000, math.inf])
def test_all_wrong_is_zero_for_every_eta(eta):
    assert er_label(rewards(0), eta) == 0.0
    assert er_label_from_counts(0, 16, eta) == 0.0


def test_limits():
    r = rewards(5)
    assert er_label(r, 0) == pytest.approx(5 / 16, abs=0)  # exactly the mean
    assert er_label(r, 1e-9) == pytest.approx(5 / 16, abs=1e-8)
    assert er_label(r, math.inf) == 1.0 and er_label(r, 1e6) == pytest.approx(1.0, abs=1e-5)
    assert er_label(r, -math.inf) == 0.0 and er_label(r, -1e6) == pytest.approx(0.0, abs=1e-5)
    assert er_label(rewards(16), -3) == pytest.approx(1.0)


def test_no_overflow_at_large_eta():
    value = er_label(rewards(1), 1000)
    assert math.isfinite(value) and value == pytest.approx(1 - math.log(16) / 1000)


def test_monotone_in_eta():
    r = rewards(3)
    values = [er_label(r, e) for e in (-20, -2, 0, 2, 20)]
    assert values == sorted(values)


def test_array_and_tensor_inputs_use_the_last_axis():
    batch = np.array([rewards(4), rewards(8), rewards(0)])
    out = er_label(batch, 2)
    assert out.shape == (3,)
    np.testing.assert_allclose(out, [er_label(rewards(4), 2), er_label(rewards(8), 2), 0.0])
    t = er_label(torch.tensor(batch, dtype=torch.float32), 2)
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32
    np.testing.assert_allclose(t.numpy(), out, rtol=1e-6)
    assert er_label(torch.tensor([[1, 0, 0, 0]]), math.inf).tolist() == [1.0]
    # fractional rewards are allowed
    assert er_label([0.5, 0.5], 3) == pytest.approx(0.5)


def test_bad_inputs():
    with pytest.raises(ValueError, match="at least one"):
        er_label([], 2)
    with pytest.raises(ValueError, match="nan"):
        er_label([1.0], float("nan"))
    with pytest.raises(ValueError, match="n_correct"):
        er_label_from_counts(5, 4, 2)


def test_eta_keys_and_labels_for_etas():
    assert [eta_key(e) for e in (0, 2.0, 0.5, math.inf, -math.inf, -3)] == ["0", "2", "0.5", "inf", "-inf", "-3"]
    out = labels_for_etas([[1, 0, 0, 0], [1]], [0, math.inf])
    assert out == {"0": [0.25, 1.0], "inf": [1.0, 1.0]}


@pytest.mark.parametrize("eta", [1e-9, -1e-7, 5e-4, 2e-3, -2e-3])
def test_small_eta_is_accurate(eta):
    r = np.array(rewards(5), dtype=np.float64)
    # reference in extended precision: (1/eta) * log(mean(exp(eta r)))
    import mpmath

    mpmath.mp.dps = 50
    exact = float(mpmath.log(sum(mpmath.exp(mpmath.mpf(eta) * float(x)) for x in r) / len(r)) / eta)
    assert er_label(r, eta) == pytest.approx(exact, abs=1e-12)
    assert er_label_from_counts(5, 16, eta) == pytest.approx(exact, abs=1e-12)
    assert float(er_label(torch.tensor(r), eta)) == pytest.approx(exact, abs=1e-12)


@pytest.mark.parametrize("eta", [-7.0, -2.0, 0.0005, 0.5, 1.0, 2.0, 5.0, 10.0, 15.0])
def test_label_stays_between_the_smallest_and_largest_reward(eta):
    """Rounding must not push a label outside [min r, max r]: 16 successes at η=2 gave
    1.0000000000000002, which the training data check refuses (labels must lie in [0, 1])."""
    import numpy as np
    import torch

    rng = np.random.default_rng(0)
    batches = [np.ones((3, 16)), np.zeros((2, 16)), rng.integers(0, 2, size=(200, 16)).astype(float),
               rng.random((50, 7))]
    for r in batches:
        out = er_label(r, eta)
        assert (out <= r.max(axis=-1)).all() and (out >= r.min(axis=-1)).all()
        t = er_label(torch.tensor(r), eta)
        assert bool((t <= torch.tensor(r).amax(dim=-1)).all()) and bool((t >= torch.tensor(r).amin(dim=-1)).all())
    assert er_label([1.0] * 16, eta) == 1.0 and er_label([0.0] * 16, eta) == 0.0
