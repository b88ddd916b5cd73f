"""The Python client's ``follow()``: "from now on" skips nothing, with or without replay."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from sessiongate.client import GatewayClient

pytestmark = pytest.mark.asyncio


class WritesAfterGet(GatewayClient):
    """A client whose ``GetSession`` is followed at once by another writer's event: the
    window between ``follow()``'s position and its first attach."""

    def __init__(self, channel: Any, key: str, writer: GatewayClient) -> None:
        super().__init__(channel, "")
        self.metadata = writer.metadata
        self.writer = writer

    async def get(self, session_id: str) -> Any:
        info = await super().get(session_id)
        await self.writer.invoke_json(session_id, "write", {"tag": "t", "value": 1})
        return info


async def _first_events(client: GatewayClient, session_id: str, count: int) -> list[int]:
    sequences: list[int] = []
    async for item in client.follow(session_id):
        sequence = getattr(item, "sequence", None)
        if sequence is not None:
            sequences.append(sequence)
        if len(sequences) == count:
            return sequences
    return sequences


@pytest.mark.requires_plugin("reconnect")
async def test_follow_gets_an_event_emitted_between_its_get_and_its_attach(make_gateway):
    gw = await make_gateway()
    writer = gw.client()
    sid = (await writer.open()).session_id
    await writer.invoke_json(sid, "write", {"tag": "t", "value": 0})  # before: not wanted
    client = WritesAfterGet(writer.channel, "", writer)
    reading = asyncio.ensure_future(_first_events(client, sid, 2))
    await _until_attached(gw, sid)
    await writer.invoke_json(sid, "write", {"tag": "t", "value": 2})
    assert await asyncio.wait_for(reading, 10) == [2, 3]


@pytest.mark.requires_no_plugin("reconnect")
async def test_without_replay_follow_attaches_live(make_gateway):
    """The gateway refuses the resume (no replay plugin): ``follow()`` attaches live."""
    gw = await make_gateway()
    client = gw.client()
    sid = (await client.open()).session_id
    reading = asyncio.ensure_future(_first_events(client, sid, 1))
    await _until_attached(gw, sid)
    await client.invoke_json(sid, "write", {"tag": "t", "value": 1})
    assert await asyncio.wait_for(reading, 10) == [1]


async def _until_attached(gw: Any, session_id: str) -> None:
    from sessiongate.testing import wait_for

    session = gw.gateway.sessions.get(session_id)
    await wait_for(lambda: session.info().subscriber_count == 1)
