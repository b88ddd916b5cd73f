"""Every documented event type is emitted (S2.PIT.1: one test per type), with a
secret-free body, through a real gateway to a real receiver."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys

import grpc
import pytest

from sessiongate.plugins.webhooks.events import EVENT_TYPES
from sessiongate.testing import open_streaming, rpc_error, stream_end
from sessiongate.v1 import gateway_pb2, webhooks_pb2

from .helpers import ON, ROOT, admin_of, subscribe

pytestmark = [pytest.mark.asyncio, pytest.mark.once]

SESSION_FIELDS = {"session_id", "state", "owner_key_id", "client_name", "backend", "tag",
                  "reason", "opened_at"}


async def test_each_event_type_has_its_test_and_its_line_in_the_docs():
    tests = {name for name in globals() if name.startswith("test_")}
    docs = (ROOT / "docs" / "plugins" / "webhooks.md").read_text()
    for kind in (*EVENT_TYPES, "activity.*"):
        words = kind.replace(".", "_").replace("*", "any")
        assert any(re.search(rf"(^test_|_and_){words}(_|$)", t) for t in tests), kind
        assert f"`{kind}`" in docs, kind


async def test_session_opened_and_session_ready(make_gateway, receiver):
    gw = await make_gateway(**ON)
    await subscribe(gw, receiver, "session.opened", "session.ready")
    info = await gw.client().open(client_name="app", tag="blue")
    ready, = await receiver.events_of("session.ready")
    opened, = await receiver.events_of("session.opened")
    for event in (ready, opened):
        assert SESSION_FIELDS <= set(event["data"])
        assert event["data"]["session_id"] == info.session_id
        assert event["data"]["tag"] == "blue" and event["data"]["state"] == "READY"
    assert ready["data"]["previous_state"] == "OPENING"


async def test_session_closed(make_gateway, receiver):
    gw = await make_gateway(**ON)
    await subscribe(gw, receiver, "session.closed")
    client = gw.client()
    sid = (await client.open()).session_id
    await client.close(sid)
    closed, = await receiver.events_of("session.closed")
    assert closed["data"]["session_id"] == sid and closed["data"]["state"] == "CLOSED"
    assert closed["data"]["reason"].startswith("closed by")


async def test_session_faulted_with_its_reason(make_gateway, receiver):
    gw = await make_gateway(**ON)
    await subscribe(gw, receiver, "session.faulted", "session.closed")
    client = gw.client()
    sid = (await client.open()).session_id
    await rpc_error(client.invoke_json(sid, "fail", {"exit_code": 3}))
    faulted, = await receiver.events_of("session.faulted")
    assert faulted["data"]["session_id"] == sid and faulted["data"]["state"] == "FAULTED"
    assert faulted["data"]["reason"] and faulted["data"]["previous_state"] == "READY"
    closed, = await receiver.events_of("session.closed")  # the session ended, faulted
    assert closed["data"]["state"] == "FAULTED"


@pytest.mark.requires_plugin("reconnect")
async def test_session_detached_and_session_resumed(make_gateway, receiver):
    gw = await make_gateway(**ON)
    await subscribe(gw, receiver, "session.detached", "session.resumed")
    client = gw.client()
    sid, call = await open_streaming(client)
    call.cancel()  # the only subscriber drops: DETACHED
    detached, = await receiver.events_of("session.detached")
    assert detached["data"]["session_id"] == sid and detached["data"]["state"] == "DETACHED"
    again = client.stream(sid, after_sequence=0)
    assert (await again.read()).caught_up
    resumed, = await receiver.events_of("session.resumed")
    assert resumed["data"]["previous_state"] == "DETACHED"
    assert resumed["data"]["state"] == "READY"
    again.cancel()


async def test_session_readopted(make_gateway, receiver):
    """A gateway restarted with reattach adopts the session; the endpoint (in the same
    state dir) hears of it."""
    reattach = {**ON, "plugins.reattach.enabled": True, "plugins.fanout.enabled": True}
    first = await make_gateway(**reattach)
    await subscribe(first, receiver, "session.readopted")
    sid = (await first.client().open(client_name="kept")).session_id
    await first.stop()  # the worker is released for the next gateway
    second = await make_gateway(**reattach)
    readopted, = await receiver.events_of("session.readopted")
    assert readopted["data"]["session_id"] == sid
    assert readopted["data"]["client_name"] == "kept" and readopted["data"]["state"] == "READY"
    await second.client().close(sid)


async def test_subscriber_overflowed(make_gateway, receiver):
    gw = await make_gateway(**{**ON, "events.stall_timeout_seconds": 2,
                               "events.backpressure_policy": "disconnect_subscriber"})
    await subscribe(gw, receiver, "subscriber.overflowed")
    client = gw.client()
    sid, call = await open_streaming(client, subscriber_id="slow")  # and never reads
    burst = asyncio.ensure_future(client.invoke_json(sid, "burst", {"count": 300_000, "size": 100}))
    # the burst ends once the stalled subscriber is let go (read nothing until then)
    assert await burst == {"emitted": 300_000}
    code, _details = await stream_end(call)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    overflowed, = await receiver.events_of("subscriber.overflowed")
    assert overflowed["data"]["session_id"] == sid
    assert overflowed["data"]["subscriber_id"] == "slow"


async def test_key_revoked(make_gateway, receiver):
    gw = await make_gateway(**ON)
    await subscribe(gw, receiver, "key.revoked")
    key_id, key = await gw.create_key("ci")
    # revoked as an operator does: another process, the shared key store
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sessiongate", "keys", "revoke", key_id, "--config",
        str(gw.config), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _out, err = await proc.communicate()
    assert proc.returncode == 0, err
    revoked, = await receiver.events_of("key.revoked")
    assert revoked["data"] == {"key_id": key_id}
    assert key.split("_", 2)[2] not in json.dumps(revoked)  # the secret (may hold "_")


async def test_activity_any(make_gateway, receiver):
    gw = await make_gateway(**{**ON, "plugins.activity.enabled": True})
    await subscribe(gw, receiver, "activity.*")
    client = gw.client()
    await client.stub.ListSessions(gateway_pb2.ListSessionsRequest(), metadata=(
        *client.metadata, ("x-session-track", "true"), ("x-session-context", "ctx-7"),
        ("x-session-operation", "inventory")))
    event, = await receiver.events_of("activity.inventory")
    assert event["data"]["context"] == "ctx-7" and event["data"]["status"] == "OK"
    assert event["data"]["action"] == "inventory"


async def test_webhook_endpoint_disabled(make_gateway, receiver, make_receiver):
    watcher = await make_receiver()
    gw = await make_gateway(**ON)
    gone = await subscribe(gw, receiver, "session.opened", "webhook.endpoint_disabled")
    await subscribe(gw, watcher, "webhook.endpoint_disabled")
    receiver.always = ("gone",)
    await gw.client().open()
    event, = await watcher.events_of("webhook.endpoint_disabled")
    assert event["data"]["endpoint_id"] == gone
    assert len(receiver.requests) == 1  # the disabled endpoint is not told


async def test_webhook_test_goes_to_the_endpoint_whatever_its_types(make_gateway, receiver):
    gw = await make_gateway(**ON)
    admin = admin_of(gw)
    endpoint_id = await subscribe(gw, receiver, "key.revoked")
    delivery = await admin.stub.SendTest(webhooks_pb2.EndpointRequest(endpoint_id=endpoint_id),
                                         metadata=admin.metadata)
    assert delivery.delivery_id.startswith("dlv_") and delivery.event_type == "webhook.test"
    event, = await receiver.events_of("webhook.test")
    assert event["id"] == delivery.event_id and event["data"] == {"endpoint_id": endpoint_id}


async def test_an_endpoint_receives_only_the_types_it_asked_for(make_gateway, receiver):
    gw = await make_gateway(**ON)
    await subscribe(gw, receiver, "session.closed")
    client = gw.client()
    sid = (await client.open()).session_id
    await client.close(sid)
    await receiver.events_of("session.closed")
    assert [e["type"] for e in receiver.events] == ["session.closed"]
    assert all(re.fullmatch(r"evt_[0-9a-f]{32}", e["id"]) for e in receiver.events)
