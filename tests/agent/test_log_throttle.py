"""The throttle on log lines that strangers can trigger."""

from __future__ import annotations

import logging

import pytest

from raftfleet_agent.log_throttle import Throttle


def test_one_line_per_interval_then_the_count_of_the_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [100.0]
    throttle = Throttle(logging.getLogger("t"), every_s=10.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="t"):
        assert throttle.warning("refusing %s", "a") is True
        for i in range(5):
            now[0] += 1.0
            assert throttle.warning("refusing %s", f"b{i}") is False
        now[0] = 110.0
        assert throttle.warning("refusing %s", "c") is True
        now[0] = 125.0
        assert throttle.warning("refusing %s", "d") is True  # nothing held back since
    assert [r.getMessage() for r in caplog.records] == [
        "refusing a",
        "refusing c (and 5 more like it in the last 10 s)",
        "refusing d",
    ]


def test_info_lines_are_throttled_the_same_way(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    throttle = Throttle(logging.getLogger("t"), every_s=30.0, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="t"):
        assert throttle.info("drained") is True
        now[0] = 0.2
        assert throttle.info("drained") is False
        now[0] = 31.0
        assert throttle.info("drained") is True
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.INFO, "drained"),
        (logging.INFO, "drained (and 1 more like it in the last 31 s)"),
    ]
