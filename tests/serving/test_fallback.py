"""The fallback reward: one floor, never exceeded, and watched.

- the floor is the reward of a step score 0 under the transform (0, -0.5, logit(1e-6)); the
  default fallback is the floor and a --fallback-reward above it is refused (exit 2, before
  the model loads): an unscorable sample must never earn more than a scored one;
- FallbackMonitor: no alarm on a few stray fallbacks, one loud line when the rate over the
  window passes the threshold, a reminder each window while it stays there, one line when
  it recovers, and the counts its snapshot (/metrics) reports.
"""

import logging
import math

import pytest

from nemo_erprm.serving import cli
from nemo_erprm.serving.fallback_monitor import FallbackMonitor
from nemo_erprm.serving.service import RewardConfig, floor_reward


@pytest.mark.parametrize("transform,floor", [("none", 0.0), ("minus_half", -0.5),
                                             ("logit", math.log(1e-6 / (1 - 1e-6)))])
def test_the_floor_is_the_default_fallback_and_caps_it(transform, floor):
    assert floor_reward(transform) == pytest.approx(floor)
    RewardConfig(transform=transform, fallback_reward=floor).validate()
    RewardConfig(transform=transform, fallback_reward=floor - 1).validate()
    with pytest.raises(ValueError, match="above the floor"):
        RewardConfig(transform=transform, fallback_reward=floor + 0.25).validate()


def test_cli_refuses_a_fallback_above_the_floor(tiny_prm, capsys):
    code = cli.main(["--scorer", str(tiny_prm), "--transform", "minus_half", "--fallback-reward", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "fallback reward 0.0 is above the floor -0.5" in err[0], err


def test_monitor_alarm_reminder_recovery_and_snapshot(caplog):
    log = logging.getLogger("test.fallback_monitor")
    mon = FallbackMonitor(window=40, threshold=0.5, fallback=-0.5, log=log)
    with caplog.at_level(logging.WARNING, logger=log.name):
        mon.record([None] * 30 + ["step_tag"] * 2)  # 6%: quiet
        assert not caplog.records and not mon.snapshot()["alarm"]
        mon.record(["no_marker"] * 30)  # last 40: 8 scored, 32 fallbacks -> 80%
        assert len(caplog.records) == 1
        line = caplog.records[0].getMessage()
        assert line.startswith("fallback alarm: 80% of the last 40 samples got the fallback reward -0.5") and \
            "(no_marker 30, step_tag 2)" in line, line
        mon.record(["no_marker"] * 39)  # still above, under one window since the warning: no new line
        assert len(caplog.records) == 1
        mon.record(["no_marker"])  # a window later: reminded
        assert len(caplog.records) == 2
        snap = mon.snapshot()
        assert snap == {"samples": 40, "window": 40, "fallback_rate": 1.0, "alarm_rate": 0.5, "alarm": True,
                        "alarms": 2, "by_reason": {"no_marker": 40}}
        mon.record([None] * 30)
        assert caplog.records[-1].getMessage().startswith("fallback alarm over: 25% of the last 40 samples")
        assert not mon.snapshot()["alarm"] and len(caplog.records) == 3


def test_monitor_needs_some_samples_before_an_alarm(caplog):
    mon = FallbackMonitor(window=256, threshold=0.5)
    with caplog.at_level(logging.WARNING, logger="nemo_erprm.serving.unscorable"):
        mon.record(["no_marker"] * 31)
        assert not caplog.records and mon.snapshot()["fallback_rate"] == 1.0
        mon.record(["no_marker"])
        assert len(caplog.records) == 1
