"""Revoking a key ends its live streams; watchers keep nothing alive."""

from __future__ import annotations

import asyncio
import sys

import grpc
import pytest

from sessiongate.core.sessions.session import SessionState
from sessiongate.testing import wait_for

from .helpers import TIMEOUT, attached, rpc_error, stream_end

pytestmark = [pytest.mark.asyncio, pytest.mark.requires_plugin("acl")]

UNAUTH = grpc.StatusCode.UNAUTHENTICATED
FAST = {"plugins.acl.revocation_check_interval_seconds": 0.1}


async def test_revoking_a_key_ends_its_stream_and_refuses_its_next_call(make_gateway):
    gw = await make_gateway(**FAST)
    key_id, key = await gw.create_key("doomed")
    client = gw.client(key)
    sid = (await client.open()).session_id
    call = client.stream(sid)
    await attached(call)
    await gw.gateway.keys.revoke(key_id)
    assert await stream_end(call) == UNAUTH
    assert "revoked" in (await call.details())
    error = await rpc_error(client.get(sid))
    assert error.code() == UNAUTH
    assert (await gw.client().get(sid)).session_id == sid  # the session itself lives on
    assert gw.gateway.metrics.get("acl_streams_ended", reason="key revoked") == 1


async def test_revoking_from_another_process_ends_the_stream(make_gateway):
    gw = await make_gateway(**FAST)
    key_id, key = await gw.create_key("doomed")
    _id, bystander_key = await gw.create_key("bystander")
    client = gw.client(key)
    sid = (await client.open()).session_id
    call = client.stream(sid)
    await attached(call)
    other_sid = (await gw.client(bystander_key).open()).session_id
    other_call = gw.client(bystander_key).stream(other_sid)
    await attached(other_call)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sessiongate", "keys", "revoke", key_id, "--config",
        str(gw.config), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert await stream_end(call) == UNAUTH
    # the other key's stream is untouched
    await gw.client(bystander_key).invoke_json(other_sid, "write", {"tag": "a", "value": 1})
    response = await asyncio.wait_for(other_call.read(), TIMEOUT)
    assert len(response.events) == 1
    other_call.cancel()


async def test_a_viewer_stream_does_not_keep_the_lease_alive(make_gateway):
    gw = await make_gateway(**{"sessions.lease_sweep_interval_seconds": 0.1})
    _id, owner_key = await gw.create_key("owner")
    _id, viewer_key = await gw.create_key("viewer", tags=("line-1",))
    sid = (await gw.client(owner_key).open(tag="line-1", lease_seconds=1)).session_id
    session = gw.gateway.sessions.live[sid]
    call = gw.client(viewer_key).stream(sid)
    await attached(call)
    assert [s.keeps_alive for s in session.distributor.subscriptions if s.external] == [False]
    await asyncio.wait_for(session.ended.wait(), TIMEOUT)
    assert session.reason == "lease expired"
    assert await stream_end(call) == grpc.StatusCode.OK


async def test_owner_and_admin_streams_keep_the_lease_alive(make_gateway):
    gw = await make_gateway()
    _id, owner_key = await gw.create_key("owner")
    sid = (await gw.client(owner_key).open()).session_id
    session = gw.gateway.sessions.live[sid]
    for key in (owner_key, gw.admin_key):
        call = gw.client(key).stream(sid)
        await attached(call)
        assert [s.keeps_alive for s in session.distributor.subscriptions if s.external] \
            == [True]
        call.cancel()
        await wait_for(lambda: session.distributor.external_count == 0)


@pytest.mark.requires_plugin("fanout", "reconnect")
async def test_a_viewer_does_not_count_as_attached_for_detach_grace(make_gateway):
    gw = await make_gateway(**{"plugins.reconnect.detach_grace_seconds": 30})
    _id, owner_key = await gw.create_key("owner")
    _id, viewer_key = await gw.create_key("viewer", tags=("line-1",))
    sid = (await gw.client(owner_key).open(tag="line-1")).session_id
    session = gw.gateway.sessions.live[sid]
    viewer_call = gw.client(viewer_key).stream(sid)
    await attached(viewer_call)
    owner_call = gw.client(owner_key).stream(sid)
    await attached(owner_call)
    owner_call.cancel()  # the owner drops; only the watcher is left
    await wait_for(lambda: session.state == SessionState.DETACHED)
    # the owner comes back: READY again, the viewer was never disturbed
    back = gw.client(owner_key).stream(sid, after_sequence=0)
    await asyncio.wait_for(back.read(), TIMEOUT)
    await wait_for(lambda: session.state == SessionState.READY)
    await gw.client(owner_key).invoke_json(sid, "write", {"tag": "a", "value": 1})
    response = await asyncio.wait_for(viewer_call.read(), TIMEOUT)
    assert len(response.events) == 1
    back.cancel()
    viewer_call.cancel()
