"""The cluster plugin in-process: two real gateways (real workers, real gRPC servers) on
one real redis-server: the directory, redirects, key replication, strict decoding with
fail-closed deletion, resync after Redis lost everything, Redis down at start."""

from __future__ import annotations

import asyncio
import logging
import secrets
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis

from sessiongate.client import connect, redirect_target
from sessiongate.core.errors import Unauthenticated
from sessiongate.plugins.acl import runtime_of as acl_runtime_of
from sessiongate.testing import http_get, rpc_error, stream_end, wait_for
from sessiongate.v1 import gateway_pb2

pytestmark = pytest.mark.once

TIMEOUT = 10.0


def cluster(tmp_path: Any, name: str, redis_url: str, stream: str, port: int,
            **more: Any) -> dict[str, Any]:
    """Settings of one node: its own state dir and port, the cluster on."""
    address = f"127.0.0.1:{port}"
    return {"state_dir": str(tmp_path / f"state-{name}"), "server.grpc_address": address,
            "plugins.cluster.enabled": True, "plugins.cluster.redis_url": redis_url,
            "plugins.cluster.stream": stream, "plugins.cluster.node_id": name,
            "plugins.cluster.advertise_address": address, **more}


@pytest.fixture
def start_node(make_gateway: Any, tmp_path: Any, node_port: Any, stream: str) -> Any:
    async def start(name: str, redis_url: str, **more: Any) -> Any:
        return await make_gateway(**cluster(tmp_path, name, redis_url, stream, node_port(),
                                            **more))

    return start


def runtime(gw: Any) -> Any:
    from sessiongate.plugins.cluster import runtime_of

    return runtime_of(gw.gateway.api)


@pytest.fixture
def stream() -> str:
    return f"t{secrets.token_hex(4)}:sessions"


@pytest.mark.asyncio
async def test_a_session_on_one_node_is_found_through_another(
        start_node, redis_server, stream):
    a = await start_node("a", redis_server.url)
    b = await start_node("b", redis_server.url)
    sid = (await a.client().open(client_name="x")).session_id
    await wait_for(lambda: runtime(b).locate(sid) == a.address, TIMEOUT)

    # the raw call is refused with the node's address...
    raw = b.client(a.admin_key)
    error = await rpc_error(raw.stub.GetSession(
        gateway_pb2.GetSessionRequest(session_id=sid), metadata=raw.metadata))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert redirect_target(error) == a.address and a.address in error.details()
    # ...and the client follows it once, for get, invoke and follow
    async with connect(b.address, a.admin_key) as client:
        assert (await client.get(sid)).session_id == sid
        assert await client.invoke_json(sid, "echo", {"hi": 1}) == {"hi": 1}
        listed = {info.session_id: info.node for info in await client.list()}
        assert listed[sid] == a.address
        events = client.follow(sid)
        reading = asyncio.ensure_future(anext(events))
        await wait_for(lambda: a.gateway.sessions.get(sid).info().subscriber_count == 1,
                       TIMEOUT)
        await client.invoke_json(sid, "write", {"tag": "t", "value": 1})
        event = await asyncio.wait_for(reading, TIMEOUT)
        assert event.kind == "data_change"
        await events.aclose()
        await client.close(sid)
    await wait_for(lambda: runtime(b).locate(sid) is None, TIMEOUT)
    assert b.gateway.metrics.get("cluster_redirects") >= 4
    assert b.gateway.metrics.get("cluster_entries_applied", stream="sessions") >= 2
    assert a.gateway.metrics.get("cluster_published", kind="session") >= 2
    assert b.gateway.metrics.get("cluster_directory_sessions") == 0


@pytest.mark.asyncio
async def test_keys_are_replicated_and_revocations_end_streams_elsewhere(
        start_node, redis_server, stream):
    a = await start_node("a", redis_server.url)
    b = await start_node("b", redis_server.url)
    key_id, key = await b.create_key("replicated")
    await wait_for(lambda: _has_key(a, key_id), TIMEOUT)
    user = a.client(key)
    sid = (await user.open()).session_id  # the key made on b works on a
    call = user.stream(sid)
    assert (await call.read()).caught_up
    await b.gateway.keys.revoke(key_id)
    loop = asyncio.get_running_loop()
    revoked_at = loop.time()
    code, details = await stream_end(call)
    assert code == grpc.StatusCode.UNAUTHENTICATED and "revoked" in details
    assert loop.time() - revoked_at < 1.0  # b sees it (0.25 s), a applies it, the stream ends
    assert a.gateway.metrics.get("cluster_revocations_applied", kind="key") == 1
    assert a.gateway.metrics.get("cluster_streams_ended") == 1


async def until_accepted(gw: Any, credential: str) -> None:
    """Wait until ``gw`` accepts ``credential`` (its record replicated from elsewhere)."""
    async with asyncio.timeout(TIMEOUT):
        while True:
            try:
                await gw.gateway.api.authenticate_credential(credential)
                return
            except Unauthenticated:
                await asyncio.sleep(0.02)


@pytest.mark.asyncio
async def test_sign_in_tokens_work_everywhere_and_a_sign_out_ends_streams_elsewhere(
        start_node, redis_server, stream, slapd, token_key_file):
    ldap = {**slapd.settings(), "plugins.acl.token_key_file": token_key_file}
    a = await start_node("a", redis_server.url, **ldap)
    b = await start_node("b", redis_server.url, **ldap)
    token = (await a.client("").login("alice", "alice-pw")).token  # issued on a
    await until_accepted(b, token)
    sid = (await b.client().open()).session_id
    call = b.client(token).stream(sid)  # used on b
    assert (await call.read()).caught_up
    # a malformed record changes nothing (dropped, counted)
    async with aioredis.Redis.from_url(redis_server.url) as r:
        await r.xadd(f"{stream}:credentials", {"v": "1", "credential_id": "x", "token": "t"})
    await wait_for(lambda: b.gateway.metrics.get("cluster_entries_dropped",
                                                 source="credentials",
                                                 reason="unknown_field") == 1, TIMEOUT)
    assert await a.gateway.api.revoke_credential(token)  # signed out on a
    loop = asyncio.get_running_loop()
    revoked_at = loop.time()
    code, details = await stream_end(call)
    assert code == grpc.StatusCode.UNAUTHENTICATED and "has been revoked" in details
    assert loop.time() - revoked_at < 1.0
    assert b.gateway.metrics.get("cluster_revocations_applied", kind="credential") == 1
    assert b.gateway.metrics.get("cluster_entries_applied", stream="credentials") >= 2
    assert a.gateway.metrics.get("cluster_published", kind="credential") >= 2
    # a node that starts now learns the revoked token from the credential ring
    c = await start_node("c", redis_server.url, **ldap)
    token_id = acl_runtime_of(a.gateway.api).tokens.verify(token).token_id
    await wait_for(lambda: token_id in runtime(c).credentials, TIMEOUT)
    error = await rpc_error(c.client(token).list())
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "has been revoked" in error.details()


def _has_key(gw: Any, key_id: str) -> bool:
    return key_id in runtime(gw).keyring


MALFORMED = {
    "unknown_field": {"extra": "x"},
    "missing_field": {"tag": None},
    "blank_field": {"node": "  "},
    "bad_value": {"last_sequence": "-1"},
}


@pytest.mark.asyncio
@pytest.mark.parametrize("reason", sorted(MALFORMED))
async def test_a_malformed_entry_deletes_the_cached_session(
        start_node, redis_server, stream, reason, caplog):
    a = await start_node("a", redis_server.url)
    b = await start_node("b", redis_server.url)
    sid = (await a.client().open()).session_id
    await wait_for(lambda: runtime(b).locate(sid) == a.address, TIMEOUT)
    fields = runtime(b).directory.get(sid).fields()
    fields.update(MALFORMED[reason])
    fields = {k: v for k, v in fields.items() if v is not None}
    caplog.set_level(logging.WARNING, "sessiongate.plugins.cluster")
    async with aioredis.Redis.from_url(redis_server.url) as r:
        await r.xadd(stream, fields)
    await wait_for(lambda: runtime(b).locate(sid) is None, TIMEOUT)
    assert b.gateway.metrics.get("cluster_entries_dropped", source="sessions",
                                 reason=reason) == 1
    line = next(r.getMessage() for r in caplog.records
                if r.name == "sessiongate.plugins.cluster" and "malformed" in r.getMessage())
    assert sid in line and "owner" not in line  # ids only, never the entry's values
    error = await rpc_error(b.client().get(sid))
    assert error.code() == grpc.StatusCode.NOT_FOUND  # fail closed: no redirect


@pytest.mark.asyncio
async def test_redis_lost_everything_the_directory_resyncs(
        start_node, redis_server, stream):
    a = await start_node("a", redis_server.url)
    b = await start_node("b", redis_server.url)
    first = (await a.client().open()).session_id
    await wait_for(lambda: runtime(b).locate(first) == a.address, TIMEOUT)
    redis_server.restart()  # empty: no stream, no group, no hash
    second = (await a.client().open()).session_id  # published while Redis was away or after
    await wait_for(lambda: runtime(b).locate(second) == a.address
                   and runtime(b).locate(first) == a.address, 20)
    assert a.gateway.metrics.get("cluster_resyncs", cause="nogroup") + \
        a.gateway.metrics.get("cluster_resyncs", cause="reconnect") >= 1
    async with aioredis.Redis.from_url(redis_server.url) as r:
        assert await r.hexists(f"{stream}:snapshot", first)
        # the keys come back too (a node republishes what Redis no longer holds)
        key_id = a.admin_key.split("_")[1]
        await wait_for_async(lambda: r.hexists(f"{stream}:keyring", key_id))


@pytest.mark.asyncio
async def test_redis_down_at_start_serves_local_sessions_degraded(
        start_node, stopped_redis, stream):
    late = stopped_redis
    a = await start_node("a", late.url)
    await wait_for(lambda: runtime(a)._down_since is not None, TIMEOUT)
    status, body = await http_get(a.http_address, "/readyz")
    assert status == 503 and "degraded" in body and "cluster" in body
    assert a.gateway.metrics.get("cluster_redis_up") == 0
    client = a.client()
    sid = (await client.open()).session_id  # local sessions are served
    assert await client.invoke_json(sid, "echo", 1) == 1
    # bounded while Redis is away: what does not fit is dropped and counted (the
    # resync once Redis is back writes the whole state), activity too
    from sessiongate.plugins.cluster.runtime import PUBLISH_CAPACITY

    for _ in range(PUBLISH_CAPACITY + 1):
        runtime(a).publish_session(a.gateway.sessions.get(sid), snapshot=_fake_snapshot(sid))
    assert a.gateway.metrics.get("cluster_publish_dropped", reason="overflow") >= 1
    runtime(a).queue_activity({"action": "x"})
    await wait_for(lambda: a.gateway.metrics.get("cluster_activity_dropped",
                                                 reason="redis") == 1, TIMEOUT)
    late.start()
    try:
        await wait_for(lambda: runtime(a).connected.is_set(), 20)
        status, _body = await http_get(a.http_address, "/readyz")
        assert status == 200
        assert a.gateway.metrics.get("cluster_redis_up") == 1
        async with aioredis.Redis.from_url(late.url) as r:
            await wait_for_async(lambda: r.hexists(f"{stream}:snapshot", sid))
    finally:
        await a.stop()


async def wait_for_async(check: Any, timeout: float = TIMEOUT) -> None:
    async with asyncio.timeout(timeout):
        while not await check():
            await asyncio.sleep(0.02)


@pytest.mark.asyncio
async def test_activity_events_go_to_the_activity_stream(start_node, redis_server, stream):
    a = await start_node("a", redis_server.url, **{"plugins.activity.enabled": True})
    client = a.client()
    sid = (await client.open()).session_id
    await client.invoke(sid, "echo", b"1", metadata=(
        ("x-session-track", "true"), ("x-session-context", "ctx-9"),
        ("x-session-operation", "probe")))
    async with aioredis.Redis.from_url(redis_server.url, decode_responses=True) as r:
        await wait_for_async(lambda: r.xlen(f"{stream}:activity"))
        (_id, fields), = await r.xrange(f"{stream}:activity")
    assert fields["action"] == "probe" and fields["context"] == "ctx-9"
    assert fields["session_id"] == sid and fields["status"] == "OK"
    assert a.gateway.metrics.get("cluster_activity_published") == 1


def test_every_cluster_metric_is_moved_by_a_test():
    """Each metric the plugin declares is asserted on by some test of this folder."""
    import pathlib

    from sessiongate.plugins.cluster.runtime import METRICS

    here = pathlib.Path(__file__).parent
    text = "".join(p.read_text() for p in here.glob("test_*.py"))
    assert [m.name for m in METRICS if m.name not in text] == []


def _fake_snapshot(session_id: str) -> Any:
    from sessiongate.plugins.cluster.records import Snapshot

    return Snapshot(session_id=session_id, node_id="a", node="127.0.0.1:1", state="READY",
                    owner_key_id="", tag="", last_sequence=0, updated_at_ms=1)
