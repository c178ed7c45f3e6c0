"""The long poll's waiting: woken by its gateway's announcement only, a poll registered
before its own check is not missed, and no waiter is left behind. The listening
connection is pointed at nothing here: the watch is then 'not listening', and a waiter
re-checks every RECHECK_S on its own."""

from __future__ import annotations

import asyncio
import time

from indexer.services import fleet_watch

NOWHERE = "postgresql://nobody@127.0.0.1:1/none"


def test_a_waiter_is_woken_by_its_gateways_announcement_only() -> None:
    async def scenario() -> tuple[float, float, dict[str, set[asyncio.Event]]]:
        watch = fleet_watch.RulesWatch(NOWHERE)
        mine = watch.register("gateway-h0001")
        other = watch.register("gateway-h0002")
        started = time.monotonic()
        asyncio.get_running_loop().call_later(0.1, watch._wake, "gateway-h0001")
        await watch.wait(mine, 10.0)
        woken_after = time.monotonic() - started
        assert not mine.is_set()  # cleared for the next round
        started = time.monotonic()
        await watch.wait(other, 0.3)  # nobody announced gateway-h0002's
        other_after = time.monotonic() - started
        watch.unregister("gateway-h0001", mine)
        watch.unregister("gateway-h0002", other)
        assert watch._task is not None
        watch._task.cancel()
        return woken_after, other_after, watch._waiters

    woken_after, other_after, left = asyncio.run(scenario())
    assert woken_after < 1.0
    assert other_after >= 0.29
    assert left == {}


def test_an_announcement_before_the_wait_is_not_lost() -> None:
    """The route registers, checks the database, then waits: a version stored between the
    check and the wait has already set the event, so the wait returns at once."""

    async def scenario() -> float:
        watch = fleet_watch.RulesWatch(NOWHERE)
        event = watch.register("gateway-h0001")
        watch._wake("gateway-h0001")  # the NOTIFY arrives before the poll waits
        started = time.monotonic()
        await watch.wait(event, 10.0)
        assert watch._task is not None
        watch._task.cancel()
        return time.monotonic() - started

    assert asyncio.run(scenario()) < 0.1


def test_while_not_listening_a_waiter_looks_again_soon() -> None:
    async def scenario() -> tuple[bool, float]:
        watch = fleet_watch.RulesWatch(NOWHERE)
        event = watch.register("gateway-h0001")
        started = time.monotonic()
        await watch.wait(event, 60.0)
        assert watch._task is not None
        watch._task.cancel()
        return watch.listening, time.monotonic() - started

    listening, waited = asyncio.run(scenario())
    assert listening is False
    assert waited <= fleet_watch.RECHECK_S + 0.5
