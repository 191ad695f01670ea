"""The history checker: a clean history passes, and each anomaly is caught."""

from __future__ import annotations

import pytest
from checker import History, check, value_of


def clean() -> History:
    """Two producers, three acknowledged sends each, one consumer, one final read."""
    h = History()
    log = []
    for seq in range(3):
        for producer in ("a", "b"):
            offset = len(log)
            h.send(producer, seq, 0, "ok", offset)
            log.append((offset, value_of(producer, seq)))
    h.send("a", 3, 0, "info")  # never answered, never written: allowed
    h.poll("c1", 0, log[:2])
    h.poll("c1", 0, log[2:])
    h.final[0] = list(log)
    return h


def test_clean_history_is_valid() -> None:
    report = check(clean())
    assert report.valid, report.summary()
    assert report.stats["acked"] == 6
    assert report.stats["polled_records"] == 6


def test_indeterminate_send_may_appear() -> None:
    h = clean()
    h.final[0].append((6, value_of("a", 3)))
    assert check(h).valid


def test_lost_acknowledged_write() -> None:
    h = clean()
    del h.final[0][-1]
    assert "lost" in check(h).kinds()


def test_lost_write_in_the_middle_also_shows_as_a_gap() -> None:
    h = clean()
    del h.final[0][2]
    assert {"lost", "gap", "vanished"} <= check(h).kinds()


def test_consumed_record_vanishes() -> None:
    h = clean()
    h.send("a", 3, 0, "info")
    h.poll("c2", 0, [(6, value_of("a", 3))])
    assert check(h).kinds() == {"vanished"}


def test_duplicate() -> None:
    h = clean()
    h.final[0].append((6, value_of("b", 2)))
    assert "duplicate" in check(h).kinds()


def test_offset_holding_two_values_over_time() -> None:
    h = clean()
    # A consumer saw an uncommitted value at offset 5 that the final log replaced.
    h.send("z", 0, 0, "info")
    h.poll("c2", 0, [(5, value_of("z", 0))])
    kinds = check(h).kinds()
    assert "inconsistent" in kinds
    assert "vanished" in kinds


def test_acknowledged_at_another_offset() -> None:
    h = clean()
    h.sends[0] = h.sends[0]._replace(offset=4)
    assert check(h).kinds() == {"wrong-offset"}


def test_consumer_gap() -> None:
    h = clean()
    h.polls[1] = h.polls[1]._replace(records=h.polls[1].records[1:])
    assert check(h).kinds() == {"gap"}


def test_consumer_backwards_step() -> None:
    h = clean()
    h.poll("c1", 0, [h.final[0][3]])  # a re-delivery after a reconnect
    assert check(h).kinds() == {"backwards"}


def test_unexpected_value() -> None:
    h = clean()
    h.final[0].append((6, "nobody:1"))
    assert check(h).kinds() == {"unexpected"}


def test_failed_send_that_was_written() -> None:
    h = clean()
    h.send("a", 4, 0, "fail")
    h.final[0].append((6, value_of("a", 4)))
    assert check(h).kinds() == {"unexpected"}


def test_reorder_within_a_producer() -> None:
    h = clean()
    log = h.final[0]
    log[0], log[2] = (0, log[2][1]), (2, log[0][1])
    h.sends = [s._replace(offset={0: 2, 2: 0}.get(s.offset, s.offset))  # type: ignore[arg-type]
               for s in h.sends]
    h.polls.clear()
    assert check(h).kinds() == {"reorder"}


@pytest.mark.parametrize("partition", [0, 1])
def test_partitions_are_judged_separately(partition: int) -> None:
    h = History()
    h.send("a", 0, 0, "ok", 0)
    h.send("a", 1, 1, "ok", 0)
    h.final = {0: [(0, value_of("a", 0))], 1: [(0, value_of("a", 1))]}
    assert check(h).valid
    h.final[partition] = []
    report = check(h)
    assert [a.partition for a in report.anomalies] == [partition]
