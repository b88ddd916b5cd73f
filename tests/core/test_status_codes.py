"""Every status code of CONTRACT §2 that core produces, against a real gateway.

Real worker processes, a real grpc.aio server on 127.0.0.1 and a real SQLite key
store (``make_gateway``). Each test asserts the code and that the message names
the cause.
"""

from __future__ import annotations

import asyncio
import json

import grpc
import pytest

from sessiongate.core import hookimpl
from sessiongate.testing import open_streaming, stream_end, wait_for
from sessiongate.v1 import gateway_pb2

from .helpers import command_in_flight, stall_settings

UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED


async def _fails(awaitable, code: grpc.StatusCode) -> str:
    """Await ``awaitable``; it must fail with ``code``. Returns the status message."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await awaitable
    assert info.value.code() == code, info.value.details()
    return info.value.details() or ""


async def _stream_fails(call, code: grpc.StatusCode) -> str:
    """Read a stream to its end; it must end with ``code``."""
    ended, details = await stream_end(call)
    assert ended == code, details
    return details


# -- UNAUTHENTICATED ---------------------------------------------------------------------


@pytest.mark.asyncio
async def test_no_key_is_unauthenticated(make_gateway):
    gw = await make_gateway()
    anonymous = gw.client(key="")
    message = await _fails(anonymous.open(client_name="x"), UNAUTHENTICATED)
    assert "API key" in message
    await _fails(anonymous.list(), UNAUTHENTICATED)


@pytest.mark.asyncio
async def test_malformed_authorization_header_is_unauthenticated(make_gateway):
    from sessiongate.v1 import gateway_pb2_grpc

    gw = await make_gateway()
    stub = gateway_pb2_grpc.GatewayStub(gw.client().channel)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.ListSessions(gateway_pb2.ListSessionsRequest(),
                                metadata=(("authorization", f"Basic {gw.admin_key}"),))
    assert info.value.code() == UNAUTHENTICATED
    assert "Bearer" in info.value.details()


@pytest.mark.asyncio
async def test_unknown_key_is_unauthenticated(make_gateway):
    gw = await make_gateway()
    _key_id, key = await gw.create_key("someone")
    # right id, wrong secret; garbage; a key id that does not exist
    for wrong in (key[:-4] + "AAAA", "not-a-key", "sg_000000000000_" + key.split("_", 2)[2]):
        message = await _fails(gw.client(key=wrong).open(client_name="x"), UNAUTHENTICATED)
        assert "unknown API key" in message
        assert wrong not in message


@pytest.mark.asyncio
async def test_revoked_key_is_unauthenticated(make_gateway):
    gw = await make_gateway()
    key_id, key = await gw.create_key("soon-revoked")
    client = gw.client(key=key)
    info = await client.open(client_name="before-revocation")
    assert info.owner_key_id == key_id
    await gw.gateway.keys.revoke(key_id)
    message = await _fails(client.open(client_name="after"), UNAUTHENTICATED)
    assert "revoked" in message
    await _fails(client.invoke(info.session_id, "echo", b"{}"), UNAUTHENTICATED)
    # the stream RPC authenticates too
    await _stream_fails(client.stream(info.session_id), UNAUTHENTICATED)


# -- NOT_FOUND / INVALID_ARGUMENT ----------------------------------------------------------


@pytest.mark.asyncio
async def test_unknown_session_is_not_found(make_gateway):
    gw = await make_gateway()
    client = gw.client()
    unknown = "0" * 32
    assert unknown in await _fails(client.get(unknown), grpc.StatusCode.NOT_FOUND)
    await _fails(client.invoke(unknown, "echo", b"{}"), grpc.StatusCode.NOT_FOUND)
    await _fails(client.close(unknown), grpc.StatusCode.NOT_FOUND)
    await _stream_fails(client.stream(unknown), grpc.StatusCode.NOT_FOUND)


@pytest.mark.asyncio
async def test_empty_session_id_is_invalid_argument(make_gateway):
    gw = await make_gateway()
    client = gw.client()
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    assert "session_id" in await _fails(client.get(""), invalid)
    await _fails(client.close(""), invalid)
    await _fails(client.invoke("", "echo", b"{}"), invalid)
    await _stream_fails(client.stream(""), invalid)


@pytest.mark.asyncio
async def test_unknown_command_and_bad_payload_are_invalid_argument(make_gateway):
    gw = await make_gateway()
    client = gw.client()
    sid = (await client.open(client_name="x")).session_id
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    assert "no_such_command" in await _fails(client.invoke(sid, "no_such_command", b"{}"),
                                             invalid)
    assert "JSON" in await _fails(client.invoke(sid, "write", b"{not json"), invalid)
    assert "tag" in await _fails(client.invoke(sid, "write", b'{"value": 1}'), invalid)
    assert "command" in await _fails(client.invoke(sid, "", b"{}"), invalid)
    # none of that hurt the session
    assert (await client.get(sid)).state == gateway_pb2.READY
    assert await client.invoke_json(sid, "echo", {"still": "fine"}) == {"still": "fine"}


@pytest.mark.asyncio
async def test_bad_open_requests_are_invalid_argument(make_gateway):
    gw = await make_gateway()
    client = gw.client()
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    assert "no-such-backend" in await _fails(client.open(backend="no-such-backend"), invalid)
    assert "tag" in await _fails(client.open(tag="Not A Tag!"), invalid)
    await _fails(client.open(client_name="x" * 1000), invalid)
    assert await client.list() == []


# -- PERMISSION_DENIED (core maps an sg_authorize refusal) -------------------------------


class DenyInvoke:
    __name__ = "deny-invoke"

    @hookimpl(tryfirst=True)
    def sg_authorize(self, identity, action, session):
        return False if action == "invoke" else None


@pytest.mark.asyncio
async def test_authorization_refusal_is_permission_denied(make_gateway):
    gw = await make_gateway(extra_plugins=(DenyInvoke(),))
    client = gw.client()
    sid = (await client.open(client_name="x")).session_id
    message = await _fails(client.invoke(sid, "echo", b"{}"), grpc.StatusCode.PERMISSION_DENIED)
    assert sid in message and "invoke" in message


# -- ALREADY_EXISTS ------------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.requires_no_plugin("fanout")
async def test_second_subscriber_without_fanout_is_already_exists(make_gateway):
    gw = await make_gateway()
    client = gw.client()
    sid, first = await open_streaming(client)
    message = await _stream_fails(client.stream(sid), grpc.StatusCode.ALREADY_EXISTS)
    assert "already has an event subscriber" in message and "fanout" not in message
    # the first subscriber is untouched
    await client.invoke_json(sid, "write", {"tag": "t", "value": 1})
    response = await first.read()
    assert [e.sequence for e in response.events] == [1]
    assert (await client.get(sid)).subscriber_count == 1
    first.cancel()


# -- RESOURCE_EXHAUSTED --------------------------------------------------------------------


@pytest.mark.asyncio
async def test_session_cap_is_resource_exhausted(make_gateway):
    gw = await make_gateway(**{"sessions.max_sessions": 2})
    client = gw.client()
    first = await client.open(client_name="a")
    await client.open(client_name="b")
    message = await _fails(client.open(client_name="c"), grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert "sessions.max_sessions" in message
    assert len(await client.list()) == 2
    # a closed session frees its slot
    await client.close(first.session_id)
    third = await client.open(client_name="c")
    assert third.state == gateway_pb2.READY


@pytest.mark.asyncio
async def test_pending_command_cap_is_resource_exhausted(make_gateway):
    gw = await make_gateway(**{"sessions.max_pending_commands": 2})
    client = gw.client()
    sid = (await client.open(client_name="x")).session_id
    session = gw.gateway.sessions.live[sid]
    long = json.dumps({"ms": 60_000}).encode()
    calls = [asyncio.ensure_future(client.invoke(sid, "sleep", long, timeout_ms=120_000))
             for _ in range(2)]
    await wait_for(lambda: len(session.worker._pending) == 2)
    message = await _fails(client.invoke(sid, "echo", b"{}"), grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert "sessions.max_pending_commands" in message
    for call in calls:
        call.cancel()
    await asyncio.gather(*calls, return_exceptions=True)
    await wait_for(lambda: not session.worker._pending)
    assert await client.invoke_json(sid, "echo", {"n": 1}) == {"n": 1}


STALLED_BURST = {"count": 200_000, "size": 100}  # far more than gRPC's windows buffer


async def _stall_until_cut(client, sid: str) -> None:
    """A subscriber that reads nothing paces the worker until the stall timeout cuts it;
    then the worker runs free and the burst's reply comes back."""
    assert await client.invoke_json(sid, "burst", STALLED_BURST) == \
        {"emitted": STALLED_BURST["count"]}


@pytest.mark.asyncio
async def test_queue_overflow_under_disconnect_subscriber(make_gateway):
    gw = await make_gateway(**stall_settings("disconnect_subscriber"))
    client = gw.client()
    sid, call = await open_streaming(client)
    await _stall_until_cut(client, sid)
    message = await _stream_fails(call, grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert "event queue overflow" in message and "stall_timeout_seconds" in message
    # only the stream ended: the session keeps working
    assert await client.invoke_json(sid, "echo", {"ok": True}) == {"ok": True}
    assert (await client.get(sid)).state in (gateway_pb2.READY, gateway_pb2.DETACHED)


@pytest.mark.asyncio
async def test_on_overflow_disconnect_overrides_fail_fast(make_gateway):
    gw = await make_gateway(**stall_settings("fail_fast"))
    client = gw.client()
    sid, call = await open_streaming(client, on_overflow=gateway_pb2.DISCONNECT)
    await _stall_until_cut(client, sid)
    assert "event queue overflow" in await _stream_fails(call, grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert (await client.get(sid)).state in (gateway_pb2.READY, gateway_pb2.DETACHED)


# -- FAILED_PRECONDITION / OUT_OF_RANGE ----------------------------------------------------


@pytest.mark.asyncio
async def test_session_not_ready_is_failed_precondition(make_gateway):
    gw = await make_gateway()
    client = gw.client()
    closed = (await client.open(client_name="closed")).session_id
    await client.close(closed)
    message = await _fails(client.invoke(closed, "echo", b"{}"),
                           grpc.StatusCode.FAILED_PRECONDITION)
    assert closed in message and "CLOSED" in message

    faulted = (await client.open(client_name="faulted")).session_id
    session = gw.gateway.sessions.live[faulted]
    await _fails(client.invoke(faulted, "fail", b'{"exit_code": 3}'),
                 grpc.StatusCode.UNAVAILABLE)
    await asyncio.wait_for(session.ended.wait(), 30)
    message = await _fails(client.invoke(faulted, "echo", b"{}"),
                           grpc.StatusCode.FAILED_PRECONDITION)
    assert "FAULTED" in message


@pytest.mark.asyncio
async def test_session_opening_is_failed_precondition(make_gateway, hold_workers):
    """A session whose worker is not Ready yet refuses commands and streams."""
    gw = await make_gateway(extra_plugins=(hold_workers,), **{
        "workers.spare_workers": 0, "workers.start_timeout_seconds": 120})
    client = gw.client()
    opening = asyncio.ensure_future(client.open(client_name="slow"))
    session = await asyncio.wait_for(hold_workers.launched.get(), 30)
    sid = session.session_id
    await wait_for(lambda: sid in gw.gateway.sessions.live)
    assert (await client.get(sid)).state == gateway_pb2.OPENING
    message = await _fails(client.invoke(sid, "echo", b"{}"), grpc.StatusCode.FAILED_PRECONDITION)
    assert "OPENING" in message
    await _stream_fails(client.stream(sid), grpc.StatusCode.FAILED_PRECONDITION)
    await hold_workers.release(sid)
    info = await opening
    assert info.state == gateway_pb2.READY
    assert await client.invoke_json(sid, "echo", {"a": 1}) == {"a": 1}


@pytest.mark.asyncio
async def test_session_closing_is_failed_precondition(make_gateway):
    gw = await make_gateway()
    client = gw.client()
    sid = (await client.open(client_name="x")).session_id
    session = gw.gateway.sessions.live[sid]
    stopped = asyncio.Event()
    worker = session.worker
    real_stop = worker.stop

    async def slow_stop(reason="session closed"):
        await stopped.wait()
        await real_stop(reason)

    worker.stop = slow_stop
    closing = asyncio.ensure_future(client.close(sid))
    await wait_for(lambda: session.state == "CLOSING")
    assert (await client.get(sid)).state == gateway_pb2.CLOSING
    message = await _fails(client.invoke(sid, "echo", b"{}"), grpc.StatusCode.FAILED_PRECONDITION)
    assert "CLOSING" in message
    stopped.set()
    assert (await closing).state == gateway_pb2.CLOSED


@pytest.mark.asyncio
@pytest.mark.requires_no_plugin("reconnect")
async def test_after_sequence_without_reconnect_is_failed_precondition(make_gateway):
    gw = await make_gateway()
    client = gw.client()
    sid = (await client.open(client_name="x")).session_id
    message = await _stream_fails(client.stream(sid, after_sequence=0),
                                  grpc.StatusCode.FAILED_PRECONDITION)
    assert "sg_replay_supported" in message and "reconnect" not in message
    # a plain stream still works
    call = client.stream(sid)
    assert (await call.read()).caught_up
    call.cancel()


@pytest.mark.asyncio
@pytest.mark.requires_plugin("fanout", "reconnect")
async def test_after_sequence_beyond_newest_is_out_of_range(make_gateway):
    gw = await make_gateway()
    client = gw.client()
    sid = (await client.open(client_name="x")).session_id
    await client.invoke_json(sid, "write", {"tag": "t", "value": 1})
    message = await _stream_fails(client.stream(sid, after_sequence=5),
                                  grpc.StatusCode.OUT_OF_RANGE)
    assert "5" in message


# -- DEADLINE_EXCEEDED / UNAVAILABLE -------------------------------------------------------


@pytest.mark.asyncio
async def test_command_timeout_is_deadline_exceeded(make_gateway):
    gw = await make_gateway()
    client = gw.client()
    sid = (await client.open(client_name="x")).session_id
    message = await _fails(client.invoke(sid, "sleep", b'{"ms": 60000}', timeout_ms=200),
                           grpc.StatusCode.DEADLINE_EXCEEDED)
    assert "sleep" in message
    # the session survives a slow command
    assert (await client.get(sid)).state == gateway_pb2.READY
    assert await client.invoke_json(sid, "echo", [1]) == [1]


@pytest.mark.asyncio
async def test_default_command_timeout_from_settings(make_gateway):
    gw = await make_gateway(**{"sessions.command_timeout_seconds": 0.3})
    client = gw.client()
    sid = (await client.open(client_name="x")).session_id
    await _fails(client.invoke(sid, "sleep", b'{"ms": 60000}'),
                 grpc.StatusCode.DEADLINE_EXCEEDED)
    assert await client.invoke(sid, "sleep", b'{"ms": 0}', timeout_ms=60_000) == b"{}"


@pytest.mark.asyncio
async def test_worker_crash_is_unavailable(make_gateway):
    gw = await make_gateway()
    client = gw.client()
    sid, call = await open_streaming(client)
    session = gw.gateway.sessions.live[sid]
    pending = await command_in_flight(client, session, timeout_ms=120_000)
    await _fails(client.invoke(sid, "fail", b'{"exit_code": 7}'), grpc.StatusCode.UNAVAILABLE)
    # the command in flight, the stream: all end UNAVAILABLE
    await _fails(pending, grpc.StatusCode.UNAVAILABLE)
    message = await _stream_fails(call, grpc.StatusCode.UNAVAILABLE)
    assert sid in message
    await asyncio.wait_for(session.ended.wait(), 30)
    info = await client.get(sid)
    assert info.state == gateway_pb2.FAULTED
    assert info.reason
    # attaching to a faulted session: UNAVAILABLE at once
    await _stream_fails(client.stream(sid), grpc.StatusCode.UNAVAILABLE)


@pytest.mark.asyncio
async def test_open_while_shutting_down_is_unavailable(make_gateway):
    gw = await make_gateway()
    client = gw.client()
    gw.gateway.sessions.accepting = False
    message = await _fails(client.open(client_name="late"), grpc.StatusCode.UNAVAILABLE)
    assert "shutting down" in message
