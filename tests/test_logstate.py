"""LogOnce: each cause logged once while it lasts (counted, re-armed by clear, said
again after a repeat interval, bounded); StateLog: the same for one condition."""

from __future__ import annotations

import logging
import time

import pytest

from edge.logstate import LogOnce, StateLog

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


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_each_key_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    once = LogOnce(LOG)
    with caplog.at_level(logging.WARNING):
        for i in range(300):
            assert once.warning(("10.0.0.1", "protocol error"), "bad frame %d", i) == (i == 0)
            once.warning(("10.0.0.2", "protocol error"), "bad frame %d", i)
            once.warning(("10.0.0.1", "frame timeout"), "slow %d", i)
    assert _lines(caplog) == ["bad frame 0", "bad frame 0", "slow 0"]
    assert once.total == 900
    assert once.count(("10.0.0.1", "protocol error")) == 300
    assert once.count("never reported") == 0


def test_clear_says_how_often_and_re_arms(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    once = LogOnce(LOG, clock=clock)
    with caplog.at_level(logging.INFO):
        assert not once.clear("broker", "broker back")  # never reported: nothing
        for _ in range(5):
            once.warning("broker", "broker down")
            clock.now += 1
        assert once.active("broker")
        assert once.clear("broker", "broker back")
        assert not once.active("broker")
        assert not once.clear("broker", "broker back")
        once.warning("broker", "broker down")  # it came back: said again
        once.clear("broker")  # no message: cleared silently
    assert _lines(caplog) == ["broker down", "broker back (5 time(s) in 5.0 s)", "broker down"]
    records = [r for r in caplog.records if r.name == LOG.name]
    assert [r.levelno for r in records] == [logging.WARNING, logging.INFO, logging.WARNING]


def test_repeat_interval_says_how_many_were_counted(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    once = LogOnce(LOG, repeat_s=60, clock=clock)
    with caplog.at_level(logging.WARNING):
        once.warning("open", "cannot open %s", "/dev/ttyUSB0")
        for _ in range(9):
            clock.now += 5
            once.warning("open", "cannot open %s", "/dev/ttyUSB0")  # 45 s: counted
        clock.now += 15
        once.warning("open", "cannot open %s", "/dev/ttyUSB0")  # 60 s after the first line
        clock.now += 60
        once.warning("open", "cannot open %s", "/dev/ttyUSB0")  # nothing counted between
    assert _lines(caplog) == ["cannot open /dev/ttyUSB0",
                              "cannot open /dev/ttyUSB0 (9 more since last report)",
                              "cannot open /dev/ttyUSB0"]


def test_quiet_period_holds_back_a_flapping_key(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    once = LogOnce(LOG, quiet_s=30, clock=clock)
    with caplog.at_level(logging.WARNING):
        for _ in range(10):
            once.warning("limit", "refusing")
            once.clear("limit", "accepting", level=logging.WARNING)
            clock.now += 1
        clock.now += 30
        once.warning("limit", "refusing")
    assert _lines(caplog) == ["refusing", "accepting (1 time(s) in 0.0 s)", "refusing"]


def test_the_table_is_bounded_and_forgets_the_oldest(caplog: pytest.LogCaptureFixture) -> None:
    once = LogOnce(LOG, max_keys=3)
    with caplog.at_level(logging.WARNING):
        for host in ("a", "b", "c"):
            once.warning(host, "error from %s", host)
        once.warning("a", "error from %s", "a")  # remembered: counted
        once.warning("d", "error from %s", "d")  # full: "a", logged longest ago, goes
        once.warning("b", "error from %s", "b")  # still remembered
        once.warning("a", "error from %s", "a")  # forgotten, so logged again
    assert _lines(caplog) == [f"error from {h}" for h in "abcda"]
    assert once.total == 7


def test_error_carries_the_traceback_when_logged(caplog: pytest.LogCaptureFixture) -> None:
    once = LogOnce(LOG)
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            try:
                raise KeyError("a bug")
            except KeyError as exc:
                once.error(("KeyError", "fetch"), "unexpected %s", "KeyError", exc_info=exc)
    (record,) = [r for r in caplog.records if r.name == LOG.name]
    assert record.levelno == logging.ERROR
    assert record.exc_info is not None
    assert record.exc_info[0] is KeyError


@pytest.mark.parametrize("kwargs", [{"max_keys": 0}, {"repeat_s": -1}, {"quiet_s": -1}])
def test_bounds_are_checked(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="max_keys"):
        LogOnce(LOG, **kwargs)  # type: ignore[arg-type]


def test_lines_name_the_caller(caplog: pytest.LogCaptureFixture) -> None:
    once, state = LogOnce(LOG), StateLog(LOG)
    with caplog.at_level(logging.INFO):
        once.warning("k", "begins")
        once.clear("k", "ends")
        state.begin("begins")
        state.end("ends")
    assert {r.filename for r in caplog.records if r.name == LOG.name} == {"test_logstate.py"}
