"""The messages of one MQTT connection between arrival and PUBACK: pure bookkeeping.

Ordering of acknowledgements
----------------------------
MQTT 3.1.1 (section 4.6) and MQTT 5 (section 4.6) require a client to send PUBACKs
in the order the QoS 1 PUBLISH packets arrived. The bridge therefore keeps every
message of a connection in one FIFO, in arrival order, and acknowledges only from
its head: a message leaves once it *and every message before it* is durable in
the SPU (or in the dead-letter topic). Messages are produced in *rounds*: a round
takes the messages not yet sent, groups them per device stream, and writes all
groups at once; the next round starts when the whole round is acknowledged by the
SPU. One round at a time keeps the in-flight set the bridge could have written but
not acknowledged to one round, so a crash can duplicate at most that round, and
the idempotent producer recognises exactly that.

A multi-reading message (``decode.Readings``) is one entry with one *part* per
reading; every part is written as a record of its own (in the batches of its
device stream, like the parts of the other messages), and the entry is done, and
may be acknowledged, only when all of its parts are.

The FIFO is bounded by the client (``client.AckingClient``): at ``in_flight``
messages it stops reading from the broker, which keeps the rest queued.
"""

from __future__ import annotations

import hashlib
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.mqtt.decode import DeviceSequence, Outcome, Reading, Readings, Rejected

SEQ_MODULUS = 2**31


@dataclass(slots=True, eq=False)
class Entry:
    """One message from its arrival to its PUBACK."""

    mid: int
    qos: int
    topic: str
    payload: bytes
    outcome: Outcome
    received_ms: int
    done: bool = False
    # Parts (readings) not yet in the log.
    left: int = field(init=False)

    def __post_init__(self) -> None:
        self.left = len(self.readings())

    @property
    def size(self) -> int:
        return len(self.payload) + len(self.topic)

    def readings(self) -> tuple[Reading, ...]:
        """The records this message becomes (none when it is rejected)."""
        outcome = self.outcome
        if isinstance(outcome, Readings):
            return outcome.readings
        return () if isinstance(outcome, Rejected) else (outcome,)

    def part_done(self) -> None:
        """One of its readings is in the log; the last one makes the entry done."""
        self.left -= 1
        if self.left <= 0:
            self.done = True

    def fingerprint(self) -> tuple[int, str, bytes]:
        """What identifies a redelivery of this message on a later connection."""
        return (self.mid, self.topic, hashlib.blake2b(self.payload, digest_size=16).digest())


@dataclass(slots=True)
class InFlight:
    """The FIFO of one connection: arrival order in, PUBACK order out."""

    entries: deque[Entry] = field(default_factory=deque)
    unsent: deque[Entry] = field(default_factory=deque)
    # Set when the connection ends: no new round starts.
    closing: bool = False

    def __len__(self) -> int:
        return len(self.entries)

    def add(self, entry: Entry) -> None:
        self.entries.append(entry)
        if not entry.done:
            self.unsent.append(entry)

    def take_round(self, *, max_records: int, max_bytes: int) -> list[Entry]:
        """The oldest unsent entries, at least one, within the bounds."""
        out: list[Entry] = []
        size = 0
        while self.unsent and len(out) < max_records:
            entry = self.unsent[0]
            if out and size + entry.size > max_bytes:
                break
            out.append(self.unsent.popleft())
            size += entry.size
        return out

    def release(self, ack: Callable[[Entry], bool]) -> int:
        """Acknowledge done entries from the head, in arrival order (PUBACK order).

        Stops at the first entry that is not done, or whose ``ack`` fails (the
        connection is gone: the entry stays, to be recognised when redelivered).
        Returns how many left the FIFO.
        """
        released = 0
        while self.entries and self.entries[0].done and ack(self.entries[0]):
            self.entries.popleft()
            released += 1
        return released

    def written_unacked(self) -> list[Entry]:
        """Entries that are in the log but were never acknowledged to the broker."""
        return [entry for entry in self.entries if entry.done]


class Redeliveries:
    """Messages written to the log whose PUBACK was lost with the connection.

    After a reconnect the broker sends them again, first, with the DUP flag and
    the same packet id. Recognising them by (packet id, topic, payload digest)
    and DUP avoids a second copy even for payloads without sequence fields. The
    set is dropped at the first message without DUP: redeliveries are over.
    """

    def __init__(self) -> None:
        self._pending: Counter[tuple[int, str, bytes]] = Counter()

    def __len__(self) -> int:
        return sum(self._pending.values())

    def remember(self, entries: list[Entry]) -> None:
        self._pending.update(entry.fingerprint() for entry in entries)

    def seen_before(self, entry: Entry, *, dup: bool) -> bool:
        if not self._pending:
            return False
        if not dup:
            self._pending.clear()
            return False
        fingerprint = entry.fingerprint()
        if self._pending[fingerprint] <= 0:
            return False
        self._pending[fingerprint] -= 1
        if self._pending[fingerprint] == 0:
            del self._pending[fingerprint]
        return True


def seq_next(seq: int) -> int:
    return (seq + 1) % SEQ_MODULUS


def seq_behind(seq: int, reference: int) -> bool:
    """``seq`` lies in the half of the 31-bit space before ``reference`` (as the SPU decides)."""
    return (seq - reference) % SEQ_MODULUS >= SEQ_MODULUS // 2


@dataclass(slots=True, eq=False)
class Part:
    """One reading without sequence fields (at-least-once), on its way to the log."""

    entry: Entry
    reading: Reading
    done: bool = False

    def finish(self) -> None:
        if not self.done:
            self.done = True
            self.entry.part_done()


@dataclass(slots=True, eq=False)
class Sequenced:
    """One reading with its device sequence, ready for an idempotent batch."""

    entry: Entry
    reading: Reading
    sequence: DeviceSequence
    done: bool = False

    def finish(self) -> None:
        if not self.done:
            self.done = True
            self.entry.part_done()


@dataclass(slots=True)
class Round:
    """One round's messages, grouped by how they are written."""

    streams: dict[tuple[str, int], list[Sequenced]] = field(default_factory=dict)
    plain: list[Part] = field(default_factory=list)
    dead: list[tuple[Entry, Rejected]] = field(default_factory=list)


def plan_round(entries: list[Entry]) -> Round:
    """Group a round: readings per (topic, producer id) in arrival order, the rest per kind."""
    plan = Round()
    for entry in entries:
        outcome = entry.outcome
        if isinstance(outcome, Rejected):
            plan.dead.append((entry, outcome))
            continue
        for reading in entry.readings():
            if reading.sequence is None:
                plan.plain.append(Part(entry, reading))
            else:
                stream = (reading.topic, reading.sequence.producer_id)
                plan.streams.setdefault(stream, []).append(
                    Sequenced(entry, reading, reading.sequence)
                )
    return plan


def first_run(items: list[Sequenced], *, max_bytes: int) -> list[Sequenced]:
    """The leading items with consecutive sequences, within ``max_bytes`` (at least
    one item): the next idempotent batch of a stream."""
    size = _size(items[0])
    end = 1
    while end < len(items):
        item = items[end]
        if item.sequence.seq != seq_next(items[end - 1].sequence.seq):
            break
        size += _size(item)
        if size > max_bytes:
            break
        end += 1
    return items[:end]


def _size(item: Sequenced) -> int:
    return len(item.reading.value) + len(item.reading.key or b"")
