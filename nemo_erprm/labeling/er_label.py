"""The entropy-regularized step label of ER-PRM.

For the rewards ``r_1..r_N`` of N completions sampled from a step prefix,

    label(η) = (1/η) · ln( mean_i exp(η · r_i) )

which is the soft maximum of the rewards at temperature 1/η: η → 0 gives the mean (the
soft Monte-Carlo label), η → +∞ the max (the hard "any completion succeeds" label) and
η → −∞ the min. It is computed with logsumexp, so η = 1000 does not overflow.
"""

from __future__ import annotations

import math
import sys
from typing import Any, Sequence

import numpy as np


# Below this |eta| the direct formula loses digits to cancellation ((lse - ln N) / eta);
# the cumulant series mean + eta·k2/2 + eta²·k3/6 is exact to O(eta³) there.
_SMALL_ETA = 1e-3


def _cumulant_series(mean: Any, k2: Any, k3: Any, eta: float) -> Any:
    return mean + eta * k2 / 2 + eta * eta * k3 / 6


def _label_numpy(r: np.ndarray, eta: float) -> np.ndarray:
    if eta == 0:
        return r.mean(axis=-1)
    if math.isinf(eta):
        return r.max(axis=-1) if eta > 0 else r.min(axis=-1)
    if abs(eta) < _SMALL_ETA:
        mean = r.mean(axis=-1)
        d = r - mean[..., None]
        label = _cumulant_series(mean, (d**2).mean(axis=-1), (d**3).mean(axis=-1), eta)
    else:
        x = eta * r
        peak = x.max(axis=-1, keepdims=True)
        lse = np.log(np.exp(x - peak).sum(axis=-1)) + peak[..., 0]
        label = (lse - math.log(r.shape[-1])) / eta
    # a soft maximum lies between min and max; rounding can step outside (16 ones at η=2 gave
    # 1.0000000000000002, which the training data check rightly refuses as a label above 1)
    return np.clip(label, r.min(axis=-1), r.max(axis=-1))


def _label_torch(r: Any, eta: float) -> Any:
    import torch

    if eta == 0:
        return r.mean(dim=-1)
    if abs(eta) < _SMALL_ETA:
        mean = r.mean(dim=-1)
        d = r - mean.unsqueeze(-1)
        return _cumulant_series(mean, (d**2).mean(dim=-1), (d**3).mean(dim=-1), eta)
    if math.isinf(eta):
        return r.amax(dim=-1) if eta > 0 else r.amin(dim=-1)
    label = (torch.logsumexp(eta * r, dim=-1) - math.log(r.shape[-1])) / eta
    return torch.minimum(torch.maximum(label, r.amin(dim=-1)), r.amax(dim=-1))


def er_label(rewards: Any, eta: float) -> Any:
    """ER label of per-completion rewards in [0, 1]; the last axis holds the completions.

    ``rewards`` may be a list (nested for several steps), a numpy array or a torch tensor;
    a tensor gives a tensor (float64 unless it was already floating), anything else a numpy
    float64 array, or a Python float for a 1-D input. ``eta`` is any real number or ±inf.
    """
    eta = float(eta)
    if math.isnan(eta):
        raise ValueError("eta must be a real number or ±inf, got nan")
    torch = sys.modules.get("torch")  # a tensor implies torch is loaded; never import it here
    is_tensor = torch is not None and isinstance(rewards, torch.Tensor)
    if is_tensor:
        r = rewards if rewards.is_floating_point() else rewards.double()
        if r.shape[-1] == 0:
            raise ValueError("er_label needs at least one completion reward per step")
        return _label_torch(r, eta)
    r = np.asarray(rewards, dtype=np.float64)
    if r.ndim == 0 or r.shape[-1] == 0:
        raise ValueError("er_label needs at least one completion reward per step (last axis)")
    if np.isnan(r).any():
        raise ValueError("er_label rewards contain nan")
    out = _label_numpy(r, eta)
    return float(out) if r.ndim == 1 else out


def er_label_from_counts(n_correct: int, n_total: int, eta: float) -> float:
    """ER label of ``n_total`` binary outcomes of which ``n_correct`` are 1 (exact, stable)."""
    if n_total <= 0 or not 0 <= n_correct <= n_total:
        raise ValueError(f"need 0 <= n_correct <= n_total and n_total > 0, got {n_correct}/{n_total}")
    eta = float(eta)
    p = n_correct / n_total
    if eta == 0:
        return p
    if math.isinf(eta):
        return float(n_correct > 0) if eta > 0 else float(n_correct == n_total)
    if n_correct == 0:
        return 0.0
    if n_correct == n_total:
        return 1.0
    if abs(eta) < _SMALL_ETA:
        return float(_cumulant_series(p, p * (1 - p), p * (1 - p) * (1 - 2 * p), eta))
    # ln((1-p) + p·e^η) / η = ln(exp(ln(1-p)) + exp(ln p + η)) / η
    return float(np.logaddexp(math.log1p(-p), math.log(p) + eta) / eta)


def eta_key(eta: float) -> str:
    """The string under which a record stores labels for ``eta`` (``"2"``, ``"0.5"``, ``"inf"``)."""
    eta = float(eta)
    if math.isinf(eta):
        return "inf" if eta > 0 else "-inf"
    return str(int(eta)) if eta.is_integer() else repr(eta)


def labels_for_etas(step_rewards: Sequence[Sequence[float]], etas: Sequence[float]) -> dict[str, list[float]]:
    """``{eta_key: [label per step]}`` for per-step reward vectors of varying length."""
    return {
        eta_key(eta): [float(er_label(list(r), eta)) for r in step_rewards] for eta in etas
    }
