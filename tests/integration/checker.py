"""Checks the history of a queue workload, in the spirit of Jepsen's Kafka workload.

Pure: no sockets, no asyncio. The workload records three things:

* every send: producer, value, partition, and the outcome — ``ok`` with the
  offset the broker acknowledged, ``fail`` (definitely not written) or ``info``
  (indeterminate: the answer never came);
* every poll, per consumer: the ``(offset, value)`` pairs of one partition in
  the order the consumer received them, across reconnects and leader changes;
* a final read of each partition from its log start to its end.

Values are unique per send (``"<producer>:<sequence>"``), which is what lets a
history be judged. The anomalies (names after Jepsen's where one exists):

``lost``            an acknowledged value is missing from the final read
``vanished``        a value a consumer received is missing from the final read
``duplicate``       a value sits at two or more offsets (over all reads)
``inconsistent``    an offset holds two different values (over all reads)
``wrong-offset``    a value was acknowledged at one offset but read at another
``gap``             a consumer (or the final read) skipped offsets
``backwards``       a consumer received an offset at or below one it already had
``unexpected``      a read returned a value nobody sent, or one whose send failed
``reorder``         one producer's values appear in a partition out of send order
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

Outcome = Literal["ok", "fail", "info"]
KINDS = ("lost", "vanished", "duplicate", "inconsistent", "wrong-offset", "gap", "backwards",
         "unexpected", "reorder")
FINAL = "final-read"


class Send(NamedTuple):
    producer: str
    sequence: int
    value: str
    partition: int
    outcome: Outcome
    offset: int | None


class Poll(NamedTuple):
    consumer: str
    partition: int
    records: tuple[tuple[int, str], ...]


class Anomaly(NamedTuple):
    kind: str
    partition: int
    detail: dict[str, Any]


@dataclass
class History:
    """What a workload did and saw; filled in as it runs."""

    sends: list[Send] = field(default_factory=list)
    polls: list[Poll] = field(default_factory=list)
    final: dict[int, list[tuple[int, str]]] = field(default_factory=dict)

    def send(self, producer: str, sequence: int, partition: int, outcome: Outcome,
             offset: int | None = None) -> None:
        self.sends.append(Send(producer, sequence, value_of(producer, sequence), partition,
                               outcome, offset))

    def poll(self, consumer: str, partition: int, records: list[tuple[int, str]]) -> None:
        if records:
            self.polls.append(Poll(consumer, partition, tuple(records)))

    def acked(self) -> int:
        return sum(1 for s in self.sends if s.outcome == "ok")


def value_of(producer: str, sequence: int) -> str:
    return f"{producer}:{sequence}"


def parse_value(value: str) -> tuple[str, int] | None:
    producer, sep, seq = value.rpartition(":")
    if not sep or not seq.isdigit():
        return None
    return producer, int(seq)


@dataclass
class Report:
    """Every anomaly found, plus counts that show how much was checked."""

    anomalies: list[Anomaly]
    stats: dict[str, int]

    @property
    def valid(self) -> bool:
        return not self.anomalies

    def kinds(self) -> set[str]:
        return {a.kind for a in self.anomalies}

    def summary(self, limit: int = 5) -> str:
        lines = [", ".join(f"{k}={v}" for k, v in self.stats.items())]
        by_kind: dict[str, list[Anomaly]] = defaultdict(list)
        for a in self.anomalies:
            by_kind[a.kind].append(a)
        for kind, found in by_kind.items():
            lines.append(f"{kind}: {len(found)}")
            lines.extend(f"  p{a.partition} {a.detail}" for a in found[:limit])
        return "\n".join(lines)


def check(history: History) -> Report:
    """Judge a finished history."""
    anomalies: list[Anomaly] = []
    partitions = sorted({s.partition for s in history.sends} | set(history.final)
                        | {p.partition for p in history.polls})
    for part in partitions:
        anomalies.extend(_check_partition(history, part))
    stats = {"sends": len(history.sends), "acked": history.acked(),
             "polls": len(history.polls),
             "polled_records": sum(len(p.records) for p in history.polls),
             "final_records": sum(len(r) for r in history.final.values())}
    return Report(anomalies, stats)


def _check_partition(history: History, part: int) -> list[Anomaly]:
    sends = [s for s in history.sends if s.partition == part]
    polls = [p for p in history.polls if p.partition == part]
    final = history.final.get(part, [])
    out: list[Anomaly] = []
    out += _reads_agree(part, polls, final)
    out += _sequences(part, polls, final)
    out += _survivors(part, sends, polls, final)
    out += _order(part, final)
    return out


def _reads_agree(part: int, polls: list[Poll], final: list[tuple[int, str]]) -> list[Anomaly]:
    """Across every read ever made, one value per offset and one offset per value."""
    by_offset: dict[int, set[str]] = defaultdict(set)
    by_value: dict[str, set[int]] = defaultdict(set)
    for records in [p.records for p in polls] + [tuple(final)]:
        for offset, value in records:
            by_offset[offset].add(value)
            by_value[value].add(offset)
    out = [Anomaly("inconsistent", part, {"offset": o, "values": sorted(v)})
           for o, v in sorted(by_offset.items()) if len(v) > 1]
    out += [Anomaly("duplicate", part, {"value": v, "offsets": sorted(o)})
            for v, o in sorted(by_value.items()) if len(o) > 1]
    return out


def _sequences(part: int, polls: list[Poll], final: list[tuple[int, str]]) -> list[Anomaly]:
    """Each consumer's offsets go up by exactly one, across all of its polls."""
    streams: dict[str, list[int]] = defaultdict(list)
    for p in polls:
        streams[p.consumer].extend(o for o, _ in p.records)
    streams[FINAL] = [o for o, _ in final]
    out = []
    for consumer, offsets in streams.items():
        for prev, cur in itertools.pairwise(offsets):
            if cur <= prev:
                out.append(Anomaly("backwards", part, {"consumer": consumer, "from": prev,
                                                       "to": cur}))
            elif cur != prev + 1:
                out.append(Anomaly("gap", part, {"consumer": consumer, "from": prev,
                                                 "to": cur}))
    return out


def _survivors(part: int, sends: list[Send], polls: list[Poll],
               final: list[tuple[int, str]]) -> list[Anomaly]:
    """Acknowledged and consumed values are in the final read, where they were."""
    final_at = {v: o for o, v in final}
    by_value = {s.value: s for s in sends}
    out = []
    for s in sends:
        if s.outcome != "ok":
            continue
        if s.value not in final_at:
            out.append(Anomaly("lost", part, {"value": s.value, "acked_offset": s.offset}))
        elif s.offset is not None and final_at[s.value] != s.offset:
            out.append(Anomaly("wrong-offset", part, {"value": s.value, "acked": s.offset,
                                                      "read": final_at[s.value]}))
    seen: set[str] = set()
    for p in polls:
        for offset, value in p.records:
            if value not in final_at and value not in seen:
                seen.add(value)
                out.append(Anomaly("vanished", part, {"value": value, "offset": offset,
                                                      "consumer": p.consumer}))
    read_values = {v for _, v in final} | {v for p in polls for _, v in p.records}
    for value in sorted(read_values):
        sent = by_value.get(value)
        if sent is None or sent.outcome == "fail":
            out.append(Anomaly("unexpected", part, {"value": value,
                                                    "send": None if sent is None
                                                    else sent.outcome}))
    return out


def _order(part: int, final: list[tuple[int, str]]) -> list[Anomaly]:
    """An idempotent producer's records keep their send order within a partition."""
    last: dict[str, tuple[int, int]] = {}
    out = []
    for offset, value in final:
        parsed = parse_value(value)
        if parsed is None:
            continue
        producer, seq = parsed
        prev = last.get(producer)
        if prev is not None and seq < prev[0]:
            out.append(Anomaly("reorder", part, {"producer": producer, "earlier": prev,
                                                 "later": (seq, offset)}))
        last[producer] = (seq, offset)
    return out
