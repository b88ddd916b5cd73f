"""The activity plugin through a real gateway, real gRPC calls and real workers.

Ports of the seed's test plan (SEED-BEHAVIOURS.md S0.TEST.1-11). Every gateway here
switches the plugin on itself (``plugins.activity.enabled``), so these tests do not
depend on the tox env's plugin set and run once (``once``), with the shipped defaults.
A sink is a plugin implementing ``sg_activity``; events reach the sinks in the order
the calls ended, one at a time, so "the first event a sink gets is the marker call's"
proves no earlier call published one.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import os
import re
import stat
from typing import Any

import grpc
import pytest

from sessiongate.core import hookimpl
from sessiongate.testing import rpc_error, stream_end, wait_for
from sessiongate.v1 import gateway_pb2

pytestmark = [pytest.mark.asyncio, pytest.mark.once]

ON = {"plugins.activity.enabled": True}
GATEWAY = "/sessiongate.v1.Gateway/"
TIMEOUT = 30.0
FIELDS = ["id", "time", "service", "action", "status", "duration_ms", "session_id", "key_id",
          "peer", "context"]


def tracked(context: str = "ctx-1", operation: str | None = None,
            *extra: tuple[str, str]) -> tuple[tuple[str, str], ...]:
    headers = [("x-session-track", "true"), ("x-session-context", context)]
    if operation is not None:
        headers.append(("x-session-operation", operation))
    return (*headers, *extra)


class Recorder:
    """A sink: every event it gets, in order."""

    __name__ = "recorder"

    def __init__(self) -> None:
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    @hookimpl
    def sg_activity(self, event):
        self.events.put_nowait(dict(event))

    async def next(self) -> dict[str, Any]:
        return await asyncio.wait_for(self.events.get(), TIMEOUT)


class BlockedSink:
    """A sink that never returns from its first event (until released)."""

    __name__ = "blocked-sink"

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.release = asyncio.Event()
        self.calls = 0

    @hookimpl
    async def sg_activity(self, event):
        self.calls += 1
        self.entered.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise


async def admin(gw) -> tuple[Any, str]:
    """A client with an admin key of its own: (client, its key id)."""
    key_id, key = await gw.create_key("tracked", scopes=("sessions:admin",))
    return gw.client(key), key_id


async def marker(client: Any, recorder: Recorder) -> None:
    """A tracked call whose event must be the next one the recorder gets."""
    await client.stub.ListSessions(gateway_pb2.ListSessionsRequest(),
                                   metadata=(*client.metadata, *tracked("marker")))
    event = await recorder.next()
    assert event["context"] == "marker", event


# -- S0.TEST.1, 3: who is tracked ------------------------------------------------------------


async def test_calls_without_both_headers_are_not_tracked_and_pass_unchanged(make_gateway):
    recorder = Recorder()
    gw = await make_gateway(extra_plugins=(recorder,), **ON)
    client, _key_id = await admin(gw)
    sid = (await client.open(client_name="untracked")).session_id
    untracked = [
        (),
        (("x-session-context", "ctx"),),
        (("x-session-track", "true"),),
        (("x-session-track", "true"), ("x-session-context", "")),
        (("x-session-track", "TRUE"), ("x-session-context", "ctx")),
        (("x-session-track", "1"), ("x-session-context", "ctx")),
        (("x-session-track", "false"), ("x-session-context", "ctx")),
    ]
    for headers in untracked:
        seen = await client.invoke_json(
            sid, "echo_metadata", metadata=(*headers, ("x-session-operation", "op")))
        # nothing consumed: the worker gets every x-session-* header the caller set
        assert seen == {"x-session-operation": "op", **dict(headers)}, headers
    await marker(client, recorder)


# -- S0.TEST.2, 6: the event --------------------------------------------------------------------


async def test_a_tracked_call_publishes_one_event_with_the_documented_fields(make_gateway):
    recorder = Recorder()
    gw = await make_gateway(extra_plugins=(recorder,), **ON)
    client, key_id = await admin(gw)
    opened = await client.stub.OpenSession(gateway_pb2.OpenSessionRequest(client_name="t"),
                                           metadata=(*client.metadata, *tracked("c-open")))
    sid = opened.session_id
    event = await recorder.next()
    assert list(event) == FIELDS
    assert event["action"] == GATEWAY + "OpenSession"  # no label: the full method name
    assert event["session_id"] == sid  # named by the response
    assert event["status"] == "OK"
    assert event["key_id"] == key_id
    assert event["service"] == "sessiongate"
    assert event["context"] == "c-open"
    assert re.fullmatch(r"ipv[46]:.+:\d+", event["peer"]), event["peer"]
    assert re.fullmatch(r"act_[0-9a-f]{32}", event["id"])
    when = datetime.datetime.fromisoformat(event["time"].replace("Z", "+00:00"))
    assert when.tzinfo is not None and event["time"].endswith("Z")
    assert isinstance(event["duration_ms"], float) and event["duration_ms"] >= 0

    secret = "payload-not-for-events"
    reply = await client.invoke_json(sid, "echo", {"secret": secret},
                                     metadata=tracked("c-2", "change_password"))
    assert reply == {"secret": secret}
    event = await recorder.next()
    assert event["action"] == "change_password"  # the label wins
    assert event["session_id"] == sid and event["key_id"] == key_id
    text = json.dumps(event)
    assert secret not in text
    assert client.metadata[0][1].removeprefix("Bearer ") not in text  # never the key


# -- S0.TEST.4, 5: strip-on-consume ------------------------------------------------------------


class MetadataSpy:
    """An interceptor after the activity plugin's (``trylast``): records what the call
    details and the handler's context hold, per method."""

    __name__ = "metadata-spy"

    def __init__(self) -> None:
        self.seen: list[tuple[dict[str, str], dict[str, str]]] = []

    @hookimpl(trylast=True)
    def sg_grpc_interceptors(self):
        spy = self

        class Spy(grpc.aio.ServerInterceptor):
            async def intercept_service(self, continuation, details):
                handler = await continuation(details)
                if handler is None or handler.unary_unary is None:
                    return handler
                inner = handler.unary_unary

                async def recording(request, context):
                    spy.seen.append((dict(details.invocation_metadata),
                                     dict(context.invocation_metadata())))
                    return await inner(request, context)

                return handler._replace(unary_unary=recording)

        return [Spy()]


async def test_the_handler_never_sees_the_consumed_headers(make_gateway):
    spy = MetadataSpy()
    gw = await make_gateway(extra_plugins=(spy,), **ON)
    client, _key_id = await admin(gw)
    await client.stub.ListSessions(gateway_pb2.ListSessionsRequest(),
                                   metadata=(*client.metadata, *tracked("ctx", "label")))
    details, handler = spy.seen[-1]
    for seen in (details, handler):
        assert "x-session-track" not in seen and "x-session-operation" not in seen, seen
        assert seen["x-session-context"] == "ctx"
        assert seen["authorization"] == client.metadata[0][1]
    # an untracked call: the spy sees the headers as sent (nothing consumed them)
    await client.stub.ListSessions(gateway_pb2.ListSessionsRequest(), metadata=(
        *client.metadata, ("x-session-track", "true"), ("x-session-operation", "label")))
    details, handler = spy.seen[-1]
    assert handler["x-session-track"] == "true" and handler["x-session-operation"] == "label"


async def test_the_worker_gets_the_forwarded_metadata_without_the_consumed_headers(
        make_gateway):
    gw = await make_gateway(**ON)
    client, _key_id = await admin(gw)
    sid = (await client.open(client_name="strip")).session_id
    seen = await client.invoke_json(sid, "echo_metadata", metadata=tracked(
        "ctx-w", "login", ("x-request-id", "req-7"), ("x-session-tenant", "t1"),
        ("x-other", "not forwarded")))
    assert seen == {"x-session-context": "ctx-w", "x-request-id": "req-7",
                    "x-session-tenant": "t1"}


# -- S0.TEST.7: status ---------------------------------------------------------------------


async def test_a_failed_call_is_published_with_its_status_code(make_gateway):
    recorder = Recorder()
    gw = await make_gateway(extra_plugins=(recorder,), **ON)
    client, key_id = await admin(gw)
    sid = (await client.open(client_name="errors")).session_id

    error = await rpc_error(client.invoke(sid, "no-such-command", metadata=tracked("c1")))
    event = await recorder.next()
    assert (event["status"], event["session_id"]) == (error.code().name, sid)
    assert event["status"] == "INVALID_ARGUMENT"

    await rpc_error(client.stub.GetSession(gateway_pb2.GetSessionRequest(session_id="s-none"),
                                           metadata=(*client.metadata, *tracked("c2"))))
    event = await recorder.next()
    assert (event["status"], event["session_id"], event["key_id"]) == \
        ("NOT_FOUND", "s-none", key_id)

    await rpc_error(client.stub.ListSessions(gateway_pb2.ListSessionsRequest(), metadata=(
        ("authorization", "Bearer sg_wrong"), *tracked("c3"))))
    event = await recorder.next()
    assert (event["status"], event["key_id"], event["context"]) == \
        ("UNAUTHENTICATED", None, "c3")


# -- StreamEvents ----------------------------------------------------------------------------


async def test_a_tracked_stream_is_published_when_it_ends_with_its_end_status(make_gateway):
    recorder = Recorder()
    gw = await make_gateway(extra_plugins=(recorder,), **ON)
    client, key_id = await admin(gw)
    sid = (await client.open(client_name="stream")).session_id
    call = client.stream(sid, metadata=tracked("c-stream", "watch"))
    assert (await call.read()).caught_up
    await marker(client, recorder)  # the open stream has published nothing
    await client.close(sid)
    assert (await stream_end(call))[0] == grpc.StatusCode.OK
    event = await recorder.next()
    assert (event["action"], event["status"], event["session_id"], event["key_id"]) == \
        ("watch", "OK", sid, key_id)

    sid = (await client.open(client_name="stream-2")).session_id
    call = client.stream(sid, metadata=tracked("c-cancel"))
    assert (await call.read()).caught_up
    call.cancel()
    event = await recorder.next()
    assert (event["action"], event["status"], event["context"]) == \
        (GATEWAY + "StreamEvents", "CANCELLED", "c-cancel")


# -- S0.TEST.11 and S0.PIT.2: a blocked sink -----------------------------------------------------


async def test_a_blocked_sink_grows_no_tasks_and_blocks_no_call(make_gateway):
    sink = BlockedSink()
    capacity, calls = 100, 10_000
    gw = await make_gateway(extra_plugins=(sink,), **ON, **{
        "plugins.activity.queue_capacity": capacity,
        "plugins.activity.sink_timeout_seconds": 3600,
        "workers.spare_workers": 0})  # no spare starting its tasks mid-count
    client, _key_id = await admin(gw)
    sid = (await client.open(client_name="blocked")).session_id
    request = gateway_pb2.GetSessionRequest(session_id=sid)
    metadata = (*client.metadata, *tracked("c"))
    await client.stub.GetSession(request, metadata=metadata)
    await asyncio.wait_for(sink.entered.wait(), TIMEOUT)  # the sink holds the first event
    before = len(asyncio.all_tasks())

    async def caller(n: int) -> None:
        for _ in range(n):
            assert (await client.stub.GetSession(request, metadata=metadata)).session_id == sid

    await asyncio.gather(*(caller(calls // 50) for _ in range(50)))
    # The server ends a call's task just after its status went out, with no event to
    # wait on; a task per event (the seed's leak) would stay blocked for an hour.
    await wait_for(lambda: len(asyncio.all_tasks()) <= before, TIMEOUT)
    assert sink.calls == 1 and not sink.cancelled.is_set()
    assert gw.gateway.metrics.get("activity_dropped") == calls - capacity


async def test_a_full_queue_drops_and_counts_says_so_once_and_recovers(make_gateway, caplog):
    sink, recorder = BlockedSink(), Recorder()
    capacity = 5
    gw = await make_gateway(extra_plugins=(recorder, sink), **ON, **{
        "plugins.activity.queue_capacity": capacity})
    client, _key_id = await admin(gw)
    request, metadata = gateway_pb2.ListSessionsRequest(), client.metadata
    await client.stub.ListSessions(request, metadata=(*metadata, *tracked("first")))
    await asyncio.wait_for(sink.entered.wait(), TIMEOUT)
    with caplog.at_level(logging.WARNING, "sessiongate.plugins.activity"):
        for i in range(capacity + 7):
            await client.stub.ListSessions(request, metadata=(*metadata, *tracked(f"c{i}")))
    assert gw.gateway.metrics.get("activity_dropped") == 7
    full = [r for r in caplog.records if "dropping new ones" in r.getMessage()]
    assert len(full) == 1, [r.getMessage() for r in caplog.records]
    sink.release.set()  # the sink (called first: registered last) catches up
    received = [(await recorder.next())["context"] for _ in range(1 + capacity)]
    assert received == ["first", *(f"c{i}" for i in range(capacity))]
    await marker(client, recorder)


# -- S0.BEH.8: a sink never changes the call -------------------------------------------------------


class FailingSink:
    __name__ = "failing-sink"

    def __init__(self) -> None:
        self.calls = 0

    @hookimpl
    def sg_activity(self, event):
        self.calls += 1
        raise RuntimeError("sink down")


async def test_a_failing_or_hanging_sink_never_changes_the_call(make_gateway):
    recorder, failing, hanging = Recorder(), FailingSink(), BlockedSink()
    # called last registered first: hanging, then failing, then the recorder
    gw = await make_gateway(extra_plugins=(recorder, failing, hanging), **ON, **{
        "plugins.activity.sink_timeout_seconds": 0.2})
    client, _key_id = await admin(gw)
    sid = (await client.open(client_name="sinks")).session_id
    assert await client.invoke_json(sid, "echo", [1], metadata=tracked("c1")) == [1]
    await asyncio.wait_for(hanging.cancelled.wait(), TIMEOUT)  # its time ran out
    assert gw.gateway.metrics.get("activity_sink_timeouts") == 1
    assert recorder.events.empty() and failing.calls == 0  # after the hanging one: missed
    hanging.release.set()  # from now on it returns at once
    error = await rpc_error(client.invoke(sid, "nope", metadata=tracked("c2")))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT  # the handler's own outcome
    event = await recorder.next()  # the failing sink was logged and skipped
    assert (event["context"], event["status"], failing.calls) == ("c2", "INVALID_ARGUMENT", 1)


# -- the built-in sinks ------------------------------------------------------------------------


async def test_the_file_sink_appends_json_lines_to_a_private_file(make_gateway, tmp_path):
    recorder = Recorder()
    gw = await make_gateway(extra_plugins=(recorder,), **ON, **{
        "plugins.activity.sink": "file", "plugins.activity.path": "activity.jsonl"})
    await marker((await admin(gw))[0], recorder)
    await gw.stop()  # the sink writes what waits and closes the file
    created = tmp_path / "state" / "activity.jsonl"  # relative: under state_dir
    assert stat.S_IMODE(os.stat(created).st_mode) == 0o600
    assert json.loads(created.read_text())["context"] == "marker"

    recorder = Recorder()
    path = tmp_path / "elsewhere.jsonl"
    path.write_text('{"earlier": true}\n')
    gw = await make_gateway(extra_plugins=(recorder,), **ON, **{
        "state_dir": str(tmp_path / "state-2"), "plugins.activity.sink": "file",
        "plugins.activity.path": str(path)})
    client, _key_id = await admin(gw)
    await marker(client, recorder)
    await marker(client, recorder)
    await gw.stop()
    lines = path.read_text().splitlines()
    assert lines[0] == '{"earlier": true}' and len(lines) == 3
    assert [json.loads(line)["context"] for line in lines[1:]] == ["marker", "marker"]


async def test_a_stuck_file_sink_drops_and_counts_and_blocks_nothing(make_gateway, tmp_path):
    """The file is a pipe nobody reads: once its buffer is full the sink's write is
    stuck, as on a hung disk. The calls and the other sinks go on; the lines waiting
    for the file stay within the bound, the rest are counted."""
    # capacity: more than the calls of one flush interval, so only a stuck file drops
    recorder, capacity, calls = Recorder(), 50, 200
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # so the sink's open succeeds
    try:
        gw = await make_gateway(extra_plugins=(recorder,), **ON, **{
            "plugins.activity.sink": "file", "plugins.activity.path": str(fifo),
            "plugins.activity.queue_capacity": capacity,
            "plugins.activity.sink_timeout_seconds": 1})
        client, _key_id = await admin(gw)
        big = "c" * 2000  # a line of about 2.3 kB: the pipe holds about 28
        for i in range(calls):
            await client.stub.ListSessions(
                gateway_pb2.ListSessionsRequest(),
                metadata=(*client.metadata, *tracked(f"{i}-{big}")))
        for i in range(calls):  # every event reached the other sink
            assert (await recorder.next())["context"].startswith(f"{i}-")
        in_the_pipe = 65536 // 2000 + 1
        accepted = calls - gw.gateway.metrics.get("activity_sink_errors")
        assert accepted <= in_the_pipe + 2 * capacity  # written, being written, waiting
        assert gw.gateway.metrics.get("activity_dropped") == 0  # the queue kept up
    finally:
        os.close(reader)  # the stuck write ends (broken pipe): the gateway can stop


async def test_an_unusable_file_sink_degrades_tracking_once_and_the_gateway_serves(
        make_gateway, tmp_path, caplog):
    recorder = Recorder()
    (tmp_path / "a-file").write_text("")
    with caplog.at_level(logging.WARNING, "sessiongate.plugins.activity"):
        gw = await make_gateway(extra_plugins=(recorder,), **ON, **{
            "plugins.activity.sink": "file",
            "plugins.activity.path": str(tmp_path / "a-file" / "activity.jsonl")})
        client, _key_id = await admin(gw)
        await marker(client, recorder)  # other sinks still get the events
        await marker(client, recorder)
    degraded = [r.getMessage() for r in caplog.records if "degraded" in r.getMessage()]
    assert len(degraded) == 1 and "a-file" in degraded[0], degraded
    assert gw.gateway.metrics.get("activity_sink_errors") == 2


async def test_the_log_sink_logs_each_event_and_nothing_else_above_debug(make_gateway,
                                                                         caplog):
    recorder = Recorder()
    with caplog.at_level(logging.DEBUG, "sessiongate"):
        gw = await make_gateway(extra_plugins=(recorder,), **ON)
        client, _key_id = await admin(gw)
        caplog.clear()
        for _ in range(3):
            await marker(client, recorder)
    events = [json.loads(r.getMessage()) for r in caplog.records
              if r.name == "sessiongate.activity"]
    assert [e["context"] for e in events] == ["marker"] * 3
    assert all(r.levelno == logging.INFO for r in caplog.records
               if r.name == "sessiongate.activity")
    diagnostics = [r for r in caplog.records if r.name == "sessiongate.plugins.activity"]
    assert diagnostics and all(r.levelno == logging.DEBUG for r in diagnostics)


# -- off by default, settings ------------------------------------------------------------------


async def test_switched_off_nothing_is_consumed_or_published(make_gateway):
    recorder = Recorder()
    gw = await make_gateway(extra_plugins=(recorder,))
    assert gw.gateway.pm.get_plugin("activity") is None
    client, _key_id = await admin(gw)
    sid = (await client.open(client_name="off")).session_id
    seen = await client.invoke_json(sid, "echo_metadata", metadata=tracked("c", "op"))
    assert seen == {"x-session-track": "true", "x-session-context": "c",
                    "x-session-operation": "op"}
    assert recorder.events.empty()  # nothing calls sg_activity without the plugin
