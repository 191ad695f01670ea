"""StateLog: one line when a condition begins, one when it ends, counted between,
and at most two lines per quiet period when it flaps."""

from __future__ import annotations

import logging
import time

import pytest

from edge.logstate import StateLog

LOG = logging.getLogger("test.logstate")


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOG.name]


def test_a_condition_logs_when_it_begins_and_ends(caplog: pytest.LogCaptureFixture) -> None:
    state = StateLog(LOG)
    with caplog.at_level(logging.WARNING):
        for _ in range(1000):
            state.begin("disk full on %s", "t/0")
        state.end("space again on %s", "t/0")
        state.end("space again on %s", "t/0")  # not active: nothing
    lines = _lines(caplog)
    assert lines[0] == "disk full on t/0"
    assert lines[1].startswith("space again on t/0 (1000 time(s) in ")
    assert len(lines) == 2
    assert state.total == 1000
    assert not state.active


def test_a_flapping_condition_is_counted_without_new_lines(
        caplog: pytest.LogCaptureFixture) -> None:
    state = StateLog(LOG, quiet_s=3600)
    with caplog.at_level(logging.WARNING):
        for _ in range(50):
            state.begin("refusing")
            state.end("accepting")
    assert _lines(caplog)[0] == "refusing"
    assert len(_lines(caplog)) == 2
    assert state.total == 50


def test_a_held_back_begin_is_logged_once_it_lasts(caplog: pytest.LogCaptureFixture) -> None:
    state = StateLog(LOG, quiet_s=0.05)
    with caplog.at_level(logging.WARNING):
        state.begin("refusing")
        state.end("accepting")
        state.begin("refusing")  # flapped: held back
        assert _lines(caplog).count("refusing") == 1
        time.sleep(0.06)
        state.begin("refusing")  # still on after the quiet period: said once more
        state.begin("refusing")
    assert _lines(caplog).count("refusing") == 2
