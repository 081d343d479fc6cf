"""Watch how many samples get the fallback reward instead of a PRM score.

A misconfigured server (a response marker the actor never sends, a prompt regex that matches
nothing) answers every sample with the same fallback reward: RL then trains on a constant,
and nothing fails. :class:`FallbackMonitor` keeps the outcome of the last ``window`` samples;
when the fallback rate over them exceeds ``threshold`` it logs one loud WARNING (again every
``window`` samples while it stays above, and one line when it recovers), and its
:meth:`~FallbackMonitor.snapshot` is part of ``/metrics``.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter, deque
from typing import Any, Optional, Sequence

MIN_SAMPLES = 32  # no alarm before this many samples (or the whole window, if smaller)


class FallbackMonitor:
    def __init__(self, window: int = 256, threshold: float = 0.5, fallback: float = 0.0,
                 log: Optional[logging.Logger] = None):
        if window < 1 or not 0.0 <= threshold <= 1.0:
            raise ValueError(f"fallback window must be >= 1 and the alarm rate in [0, 1], got {window}, {threshold}")
        self.window, self.threshold, self.fallback = window, threshold, fallback
        self.log = log or logging.getLogger("nemo_erprm.serving.unscorable")
        self._recent: deque[Optional[str]] = deque(maxlen=window)  # None: scored, else the reason
        self._lock = threading.Lock()
        self._alarm = False
        self._alarms = 0
        self._since_warning = 0

    def record(self, outcomes: Sequence[Optional[str]]) -> None:
        """One entry per sample, in order: ``None`` (scored) or the unscorable reason."""
        with self._lock:
            self._recent.extend(outcomes)
            self._since_warning += len(outcomes)
            n = len(self._recent)
            if n < min(MIN_SAMPLES, self.window):
                return
            reasons = Counter(r for r in self._recent if r is not None)
            rate = sum(reasons.values()) / n
            if rate > self.threshold and (not self._alarm or self._since_warning >= self.window):
                self._alarm, self._since_warning = True, 0
                self._alarms += 1
                by_reason = ", ".join(f"{k} {v}" for k, v in reasons.most_common())
                self.log.warning(
                    "fallback alarm: %.0f%% of the last %d samples got the fallback reward %s instead of a PRM score "
                    "(%s), above the alarm rate %.0f%%: RL would train on a constant. Check --response-marker / "
                    "--prompt-regex / --actor-tokenizer against what the actor sends (the per-sample lines above "
                    "name each reason).", 100 * rate, n, self.fallback, by_reason, 100 * self.threshold)
            elif rate <= self.threshold and self._alarm:
                self._alarm = False
                self.log.warning("fallback alarm over: %.0f%% of the last %d samples got the fallback "
                                 "(alarm rate %.0f%%)", 100 * rate, n, 100 * self.threshold)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            n = len(self._recent)
            reasons = Counter(r for r in self._recent if r is not None)
            return {"samples": n, "window": self.window,
                    "fallback_rate": round(sum(reasons.values()) / n, 4) if n else None,
                    "alarm_rate": self.threshold, "alarm": self._alarm, "alarms": self._alarms,
                    "by_reason": dict(sorted(reasons.items()))}
