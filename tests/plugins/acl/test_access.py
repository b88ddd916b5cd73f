"""Owner, other key, admin and tag viewers on every RPC, through real gRPC calls."""

from __future__ import annotations

import json

import grpc
import pytest

from .helpers import attached, rpc_error, stream_end

DENIED = grpc.StatusCode.PERMISSION_DENIED


async def _can_stream(client, sid) -> bool:
    call = client.stream(sid)
    try:
        await attached(call)
        return True
    except grpc.aio.AioRpcError as exc:
        assert exc.code() == DENIED
        return False
    finally:
        call.cancel()


@pytest.mark.requires_plugin("acl")
@pytest.mark.asyncio
@pytest.mark.parametrize("role", ["owner", "other", "admin"])
async def test_every_rpc_for_owner_other_key_and_admin(make_gateway, role):
    gw = await make_gateway()
    _owner_id, owner_key = await gw.create_key("owner")
    _other_id, other_key = await gw.create_key("other")
    owner = gw.client(owner_key)
    sid = (await owner.open(client_name="acl-test")).session_id
    client = {"owner": owner, "other": gw.client(other_key), "admin": gw.client()}[role]
    allowed = role != "other"

    if allowed:
        assert (await client.get(sid)).session_id == sid
        assert await client.invoke_json(sid, "echo", {"x": 1}) == {"x": 1}
    else:
        assert (await rpc_error(client.get(sid))).code() == DENIED
        error = await rpc_error(client.invoke_json(sid, "echo", {"x": 1}))
        assert error.code() == DENIED and sid in error.details()
    assert (sid in [s.session_id for s in await client.list()]) is allowed
    assert await _can_stream(client, sid) is allowed
    if not allowed:
        assert (await rpc_error(client.close(sid))).code() == DENIED
        assert (await owner.get(sid)).state == 2  # READY: the refusal changed nothing
    else:
        assert (await client.close(sid)).session_id == sid
    decisions = gw.gateway.metrics
    assert decisions.get("acl_decisions", outcome="deny") == (0 if allowed else 5)


@pytest.mark.requires_plugin("acl")
@pytest.mark.asyncio
async def test_resume_is_for_the_owner_and_admins_only(make_gateway):
    """Resuming (after_sequence) is authorised every time, before anything is replayed."""
    gw = await make_gateway()
    _id, owner_key = await gw.create_key("owner")
    _id, viewer_key = await gw.create_key("viewer", tags=("line-1",))
    _id, other_key = await gw.create_key("other")
    sid = (await gw.client(owner_key).open(tag="line-1")).session_id
    for key in (viewer_key, other_key):
        call = gw.client(key).stream(sid, after_sequence=0)
        assert await stream_end(call) == DENIED
    assert gw.gateway.metrics.get("acl_decisions", action="resume", outcome="deny") == 2


@pytest.mark.requires_plugin("acl")
@pytest.mark.asyncio
async def test_tag_viewer_reads_but_never_writes(make_gateway):
    gw = await make_gateway()
    _id, owner_key = await gw.create_key("owner")
    _id, viewer_key = await gw.create_key("viewer", tags=("line-1", "line-9"))
    _id, stranger_key = await gw.create_key("stranger", tags=("line-2",))
    owner = gw.client(owner_key)
    tagged = (await owner.open(tag="line-1")).session_id
    untagged = (await owner.open()).session_id
    other_tag = (await owner.open(tag="line-2")).session_id
    viewer, stranger = gw.client(viewer_key), gw.client(stranger_key)

    assert {s.session_id for s in await viewer.list()} == {tagged}
    assert {s.session_id for s in await stranger.list()} == {other_tag}
    assert (await viewer.get(tagged)).tag == "line-1"
    for sid in (untagged, other_tag):
        assert (await rpc_error(viewer.get(sid))).code() == DENIED

    # the viewer streams the tagged session's raw events ...
    call = viewer.stream(tagged)
    await attached(call)
    await owner.invoke_json(tagged, "write", {"tag": "t1", "value": 42})
    response = await call.read()
    assert [json.loads(e.payload) for e in response.events] == [{"tag": "t1", "value": 42}]
    # ... but may not invoke, close, or resume it
    assert (await rpc_error(viewer.invoke_json(tagged, "echo", {}))).code() == DENIED
    assert (await rpc_error(viewer.close(tagged))).code() == DENIED
    assert not await _can_stream(viewer, untagged)
    # the owner's close ends the viewer's stream cleanly
    await owner.close(tagged)
    assert await stream_end(call) == grpc.StatusCode.OK


@pytest.mark.requires_plugin("acl")
@pytest.mark.asyncio
async def test_a_session_without_owner_is_for_admins_only(make_gateway):
    gw = await make_gateway()
    _id, key = await gw.create_key("opener", tags=("line-1",))
    sid = (await gw.client(key).open(tag="line-1")).session_id
    gw.gateway.sessions.live[sid].owner_key_id = ""  # as an internal opener would leave it
    opener = gw.client(key)
    assert (await rpc_error(opener.get(sid))).code() == DENIED
    assert sid not in [s.session_id for s in await opener.list()]
    admin = gw.client()
    assert sid in [s.session_id for s in await admin.list()]
    assert await admin.invoke_json(sid, "echo", [1]) == [1]
    await admin.close(sid)


@pytest.mark.requires_plugin("acl")
@pytest.mark.asyncio
async def test_bad_tag_is_invalid_argument(make_gateway):
    gw = await make_gateway()
    for tag in ("Line-1", "-x", "a b", "x" * 65):
        error = await rpc_error(gw.client().open(tag=tag))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.requires_no_plugin("acl")
@pytest.mark.asyncio
async def test_without_the_plugin_any_key_may_use_any_session(make_gateway):
    gw = await make_gateway()
    _id, owner_key = await gw.create_key("owner")
    _id, other_key = await gw.create_key("other")
    sid = (await gw.client(owner_key).open()).session_id
    other = gw.client(other_key)
    assert (await other.get(sid)).owner_key_id == _owner_of(gw, sid)
    assert sid in [s.session_id for s in await other.list()]
    assert await other.invoke_json(sid, "echo", {"y": 2}) == {"y": 2}
    assert await _can_stream(other, sid)
    await other.close(sid)
    error = await rpc_error(other.login("alice", "alice-pw"))
    assert error.code() == grpc.StatusCode.UNIMPLEMENTED


def _owner_of(gw, sid: str) -> str:
    session = gw.gateway.sessions.live.get(sid) or gw.gateway.sessions.ended[sid]
    return session.owner_key_id
