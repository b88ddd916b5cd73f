"""Fixtures of the webhooks plugin's tests (helpers.py has the receiver and the API)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest_asyncio

from .helpers import Receiver


@pytest_asyncio.fixture
async def receiver() -> AsyncIterator[Receiver]:
    found = Receiver()
    await found.start()
    try:
        yield found
    finally:
        await found.stop()


@pytest_asyncio.fixture
async def make_receiver() -> AsyncIterator[Any]:
    """Factory of more receivers (each stopped at teardown)."""
    made: list[Receiver] = []

    async def factory() -> Receiver:
        found = Receiver()
        await found.start()
        made.append(found)
        return found

    try:
        yield factory
    finally:
        for found in made:
            await found.stop()
