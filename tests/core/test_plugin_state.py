"""The typed state plugins keep (``Stash``) and the owned task set core and plugins use."""

from __future__ import annotations

import asyncio

import pytest

from sessiongate.core import Stash, StashKey
from sessiongate.core.tasks import OwnedTasks

pytestmark = pytest.mark.once

COUNT: StashKey[int] = StashKey("test.count")
OTHER: StashKey[int] = StashKey("test.count")  # same name, another key


def test_stash_keys_are_distinct_by_identity_not_name():
    stash = Stash()
    stash[COUNT] = 1
    assert COUNT in stash and OTHER not in stash
    assert stash.get(OTHER) is None and stash.get(OTHER, 5) == 5
    assert stash.setdefault(OTHER, 2) == 2 and stash[COUNT] == 1
    assert stash.pop(COUNT) == 1 and stash.pop(COUNT, None) is None
    with pytest.raises(KeyError):
        stash.pop(COUNT)
    del stash[OTHER]
    assert len(stash) == 0


@pytest.mark.asyncio
async def test_owned_tasks_are_cancelled_and_awaited_except_the_callers_own():
    tasks = OwnedTasks("s1")
    started = asyncio.Event()
    cancelled: list[str] = []

    async def forever(name: str) -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(name)
            raise

    first = tasks.spawn(forever("a"), "worker")
    tasks.spawn(forever("b"), "other")
    await started.wait()
    assert first.get_name() == "worker:s1" and tasks.named({"worker"}) == [first]

    async def teardown() -> None:  # a task that cancels its siblings, not itself
        await tasks.cancel_and_wait()

    own = tasks.spawn(teardown(), "teardown")
    await own
    assert sorted(cancelled) == ["a", "b"] and own.exception() is None
    assert len(tasks) == 0  # finished tasks leave the set by themselves
