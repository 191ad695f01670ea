"""The leadership guard on a real event loop: the tick is shrunk, and a pause is a
deliberate ``time.sleep`` that blocks the loop, as a SIGSTOP or a stalled SD card would."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

import pytest

from edge.spu import guard as guard_module
from edge.spu.guard import LeadershipGuard

TICK_S = 0.01
PAUSE_S = 0.15  # fifteen ticks: scheduling noise on a loaded machine is not a pause

Running = Callable[[float], LeadershipGuard]


@pytest.fixture
async def running(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Running]:
    """Guards whose tick loop runs (and is cancelled at the end)."""
    monkeypatch.setattr(guard_module, "TICK_S", TICK_S)
    tasks: list[asyncio.Task[None]] = []

    def start(pause_s: float) -> LeadershipGuard:
        guard = LeadershipGuard(pause_s=pause_s)
        tasks.append(asyncio.create_task(guard.run(), name="test-guard"))
        return guard

    yield start
    for task in tasks:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def test_a_fresh_guard_waits_for_the_first_confirmation() -> None:
    guard = LeadershipGuard(pause_s=60.0)
    assert not guard.ok()
    guard.confirmed(guard.token())
    assert guard.ok()
    assert guard.pauses == 0


async def test_a_ticking_loop_keeps_acknowledging(running: Running) -> None:
    guard = running(PAUSE_S)
    guard.confirmed(guard.token())
    for _ in range(10):
        await asyncio.sleep(TICK_S)
        assert guard.ok()
    assert guard.pauses == 0


async def test_an_ack_attempted_right_after_a_stall_is_refused(running: Running) -> None:
    guard = running(PAUSE_S)
    guard.confirmed(guard.token())
    await asyncio.sleep(TICK_S)
    time.sleep(2 * PAUSE_S)  # the loop stalls; the tick is overdue when it resumes
    assert not guard.ok()
    assert guard.pauses == 1
    assert not guard.ok()  # one pause, counted once
    assert guard.pauses == 1


async def test_the_tick_loop_notices_a_stall_by_itself(running: Running) -> None:
    guard = running(PAUSE_S)
    guard.confirmed(guard.token())
    await asyncio.sleep(TICK_S)
    time.sleep(2 * PAUSE_S)
    await asyncio.sleep(3 * TICK_S)  # the loop ticks again before anyone asks
    assert guard.pauses == 1
    assert not guard.ok()


async def test_after_a_stall_only_a_confirmation_restores_acks(running: Running) -> None:
    guard = running(PAUSE_S)
    guard.confirmed(guard.token())
    await asyncio.sleep(TICK_S)
    time.sleep(2 * PAUSE_S)
    await asyncio.sleep(3 * TICK_S)
    for _ in range(5):  # ticking normally again is not enough
        await asyncio.sleep(TICK_S)
        assert not guard.ok()
    guard.confirmed(guard.token())
    assert guard.ok()
    assert guard.pauses == 1


async def test_a_stall_before_the_first_confirmation_is_not_counted(running: Running) -> None:
    guard = running(PAUSE_S)
    time.sleep(2 * PAUSE_S)
    await asyncio.sleep(3 * TICK_S)
    assert not guard.ok()
    assert guard.pauses == 0
    guard.confirmed(guard.token())
    assert guard.ok()


async def test_without_ticks_the_guard_refuses_once_pause_s_has_passed() -> None:
    # The tick task itself starved (or never started): an overdue tick is a pause.
    guard = LeadershipGuard(pause_s=0.05)
    guard.confirmed(guard.token())
    assert guard.ok()
    await asyncio.sleep(0.1)
    assert not guard.ok()
    assert guard.pauses == 1


async def test_an_answer_to_a_heartbeat_sent_before_a_stall_confirms_nothing(
        running: Running) -> None:
    # The SPU froze after the SC answered but before the answer was read: the SC may
    # have deposed it meanwhile, so that answer must not restore acknowledgements,
    # even when it is read before the tick loop has noticed the stall.
    guard = running(PAUSE_S)
    guard.confirmed(guard.token())
    await asyncio.sleep(TICK_S)
    sent_at = guard.token()
    time.sleep(2 * PAUSE_S)
    guard.confirmed(sent_at)
    assert not guard.ok()
    assert guard.pauses == 1
    await asyncio.sleep(3 * TICK_S)  # running again
    guard.confirmed(guard.token())  # a heartbeat sent after the stall
    assert guard.ok()
