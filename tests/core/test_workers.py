"""Worker processes: crash isolation, frame limits, the nonce handshake, heartbeats, reaping.

Everything runs real worker processes over the per-session Unix socket. Faults are
awaited on ``session.ended`` (or a stream's end), never on sleeps.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import stat

import grpc
import psutil
import pytest

from sessiongate.core import protocol
from sessiongate.testing import open_streaming, rpc_error, stream_end, wait_for
from sessiongate.v1 import gateway_pb2, worker_pb2

from .helpers import FakeWorkers, stall_settings

ENDED = 30  # seconds a test waits for a session to end before failing (never reached)


async def _code(awaitable) -> grpc.StatusCode:
    try:
        await awaitable
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def _stream_end(call) -> grpc.StatusCode:
    return (await stream_end(call))[0]


def _gone(proc: psutil.Process) -> bool:
    """Exited and reaped: no process, no zombie (psutil counts a zombie as running)."""
    return not proc.is_running()


def _messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records]


# -- crash isolation -----------------------------------------------------------------------


@pytest.mark.asyncio
async def test_worker_crash_faults_only_its_session(make_gateway, caplog):
    gw = await make_gateway()
    client = gw.client()
    doomed = (await client.open(client_name="doomed")).session_id
    healthy = (await client.open(client_name="healthy")).session_id
    sessions = gw.gateway.sessions.live
    doomed_session, healthy_session = sessions[doomed], sessions[healthy]
    worker = psutil.Process(doomed_session.worker.pid)
    doomed_stream, healthy_stream = client.stream(doomed), client.stream(healthy)
    assert (await doomed_stream.read()).caught_up
    assert (await healthy_stream.read()).caught_up

    assert await _code(client.invoke(doomed, "fail", b'{"exit_code": 9}')) == \
        grpc.StatusCode.UNAVAILABLE
    assert await _stream_end(doomed_stream) == grpc.StatusCode.UNAVAILABLE
    await asyncio.wait_for(doomed_session.ended.wait(), ENDED)
    assert doomed_session.state == "FAULTED"
    assert (await client.get(doomed)).state == gateway_pb2.FAULTED
    await wait_for(lambda: _gone(worker))
    assert any(doomed in m and "FAULTED" in m for m in _messages(caplog))

    # the other session, its worker and its stream are untouched
    assert healthy_session.state == "READY"
    await client.invoke_json(healthy, "write", {"tag": "t", "value": 42})
    response = await healthy_stream.read()
    assert [e.sequence for e in response.events] == [1]
    assert await client.invoke_json(healthy, "read", {"tag": "t"}) == {"tag": "t", "value": 42}
    assert [s.session_id for s in await client.list()] == [healthy]
    healthy_stream.cancel()


@pytest.mark.asyncio
async def test_worker_killed_from_outside_faults_its_session(make_gateway):
    gw = await make_gateway()
    client = gw.client()
    sid = (await client.open(client_name="x")).session_id
    session = gw.gateway.sessions.live[sid]
    os.kill(session.worker.pid, signal.SIGKILL)
    await asyncio.wait_for(session.ended.wait(), ENDED)
    assert session.state == "FAULTED"
    assert "worker" in session.reason
    assert session.worker.returncode == -signal.SIGKILL


@pytest.mark.asyncio
async def test_fail_fast_stalled_sole_subscriber_faults_the_session(make_gateway, caplog):
    gw = await make_gateway(**stall_settings("fail_fast"))
    client = gw.client()
    sid, call = await open_streaming(client)
    other = (await client.open(client_name="other")).session_id
    session = gw.gateway.sessions.live[sid]
    # it reads nothing: the worker waits on it until the stall timeout faults the session
    code = await _code(client.invoke(sid, "burst", b'{"count": 200000, "size": 100}'))
    assert code == grpc.StatusCode.UNAVAILABLE
    assert await _stream_end(call) == grpc.StatusCode.UNAVAILABLE
    await asyncio.wait_for(session.ended.wait(), ENDED)
    assert session.state == "FAULTED"
    assert "event queue overflow" in session.reason
    assert any("fail_fast" in m and sid in m for m in _messages(caplog))
    assert await client.invoke_json(other, "echo", {"ok": 1}) == {"ok": 1}


# -- frames ------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_an_event_too_large_for_a_frame_fails_its_command_alone(make_gateway):
    gw = await make_gateway(**{"workers.max_frame_bytes": 1024})
    client = gw.client()
    sid = (await client.open(client_name="big")).session_id
    other = (await client.open(client_name="small")).session_id
    # small events still pass
    await client.invoke_json(sid, "write", {"tag": "t", "value": "x" * 100})
    # one event of 4 KiB cannot fit a 1 KiB frame: the SDK refuses it, the command fails
    error = await rpc_error(client.invoke(sid, "burst", b'{"count": 1, "size": 4096}'))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "workers.max_frame_bytes" in error.details()
    assert (await client.get(sid)).state == gateway_pb2.READY
    assert await client.invoke_json(sid, "echo", "still here") == "still here"
    assert await client.invoke_json(other, "echo", "fine") == "fine"


@pytest.mark.asyncio
@pytest.mark.parametrize(("mode", "reason"), [
    ("malformed", "malformed frame"),
    ("sequence", "event sequence 1 after 1"),
    ("unexpected", "unexpected command frame"),
])
async def test_protocol_violation_faults_the_session(make_gateway, caplog, mode, reason):
    gw = await make_gateway(extra_plugins=(FakeWorkers(mode),), **{"workers.spare_workers": 0})
    client = gw.client()
    sid = (await client.open(client_name=mode)).session_id
    session = gw.gateway.sessions.live[sid]
    assert await client.invoke(sid, "echo", b"hi") == b"hi"
    await _code(client.invoke(sid, "misbehave", b"", timeout_ms=30_000))
    await asyncio.wait_for(session.ended.wait(), ENDED)
    assert session.state == "FAULTED"
    assert reason in session.reason
    assert any(sid in m and reason in m for m in _messages(caplog)), _messages(caplog)
    await wait_for(lambda: session.worker.returncode is not None)


# -- the nonce handshake ---------------------------------------------------------------------


async def _knock(path: str, frame_bytes: bytes) -> bytes:
    """Connect to a worker socket, send bytes, return what comes back before EOF."""
    reader, writer = await asyncio.open_unix_connection(path)
    try:
        writer.write(frame_bytes)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), ENDED)
    finally:
        writer.close()
        await writer.wait_closed()


@pytest.mark.asyncio
async def test_a_leaked_nonce_is_useless_to_another_process(make_gateway, hold_workers,
                                                            monkeypatch, caplog):
    """The nonce is in no process's environment or command line, and even presented
    correctly it admits only the process the gateway started (SO_PEERCRED)."""
    from sessiongate.core.workers import handle as workers

    leaked = bytes(range(32))  # the nonce an attacker somehow learned
    monkeypatch.setattr(workers.secrets, "token_bytes", lambda n: leaked[:n])
    gw = await make_gateway(extra_plugins=(hold_workers,), **{
        "workers.spare_workers": 0, "workers.start_timeout_seconds": 120})
    opening = asyncio.ensure_future(gw.client().open(client_name="victim"))
    session = await asyncio.wait_for(hold_workers.launched.get(), ENDED)
    handle = session.worker
    await wait_for(lambda: handle._server is not None and handle.pid is not None)
    worker = psutil.Process(handle.pid)
    exposed = (b"\0".join(f"{k}={v}".encode() for k, v in worker.environ().items())
               + " ".join(worker.cmdline()).encode())
    assert leaked.hex().encode() not in exposed and b"NONCE" not in exposed
    hijack = protocol.encode(worker_pb2.WorkerFrame(hello=worker_pb2.Hello(
        protocol_version=protocol.PROTOCOL_VERSION, session_id=session.session_id,
        nonce=leaked, pid=os.getpid())))
    assert await _knock(handle.socket_path, hijack) == b""  # no Welcome for us
    assert any("not the session's worker" in m for m in _messages(caplog))
    await hold_workers.release(session.session_id)
    assert (await opening).state == gateway_pb2.READY
    assert await gw.client().invoke_json(session.session_id, "echo", 1) == 1


@pytest.mark.asyncio
async def test_wrong_nonce_is_refused(make_gateway, hold_workers, caplog):
    gw = await make_gateway(extra_plugins=(hold_workers,), **{
        "workers.spare_workers": 0, "workers.start_timeout_seconds": 120})
    client = gw.client()
    opening = asyncio.ensure_future(client.open(client_name="x"))
    session = await asyncio.wait_for(hold_workers.launched.get(), ENDED)
    sid = session.session_id
    handle = session.worker
    await wait_for(lambda: handle._server is not None)  # listening; the worker is held
    path = handle.socket_path
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700

    def hello(nonce: bytes, session_id: str = sid) -> bytes:
        return protocol.encode(worker_pb2.WorkerFrame(hello=worker_pb2.Hello(
            protocol_version=protocol.PROTOCOL_VERSION, session_id=session_id, nonce=nonce,
            pid=os.getpid())))

    # a wrong nonce, another session's id, a first frame that is no hello, garbage:
    # each connection is closed without a Welcome
    assert await _knock(path, hello(b"\0" * 32)) == b""
    assert await _knock(path, hello(b"", session_id="f" * 32)) == b""
    assert await _knock(path, protocol.encode(
        worker_pb2.WorkerFrame(heartbeat=worker_pb2.Heartbeat()))) == b""
    assert await _knock(path, b"\0\0\xff\xffnot a frame") == b""
    refused = [m for m in _messages(caplog) if sid in m and "refused" in m]
    assert len(refused) == 4, _messages(caplog)
    assert any("wrong nonce" in m for m in refused)
    assert session.state == "OPENING"

    # the real worker, with the right nonce, still gets in
    await hold_workers.release(sid)
    info = await opening
    assert info.state == gateway_pb2.READY
    assert await client.invoke_json(sid, "echo", {"n": 1}) == {"n": 1}
    # once the worker is in, nobody else can connect
    with pytest.raises(OSError):
        await _knock(path, hello(b"\0" * 32))
    assert (await client.get(sid)).state == gateway_pb2.READY
    assert await client.invoke_json(sid, "echo", {"n": 2}) == {"n": 2}


# -- heartbeats ------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_silent_worker_faults_its_session(make_gateway, caplog):
    gw = await make_gateway(**{"workers.heartbeat_interval_seconds": 0.2,
                               "workers.heartbeat_timeout_seconds": 2})
    client = gw.client()
    sid = (await client.open(client_name="x")).session_id
    session = gw.gateway.sessions.live[sid]
    pid = session.worker.pid
    os.kill(pid, signal.SIGSTOP)  # alive, but silent
    try:
        await asyncio.wait_for(session.ended.wait(), ENDED)
    finally:
        if session.worker.returncode is None:
            os.kill(pid, signal.SIGCONT)
    assert session.state == "FAULTED"
    assert "silent" in session.reason
    assert any(sid in m and "no frame from the worker" in m for m in _messages(caplog))


# -- reaping -------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_no_zombie_or_orphan_after_close(make_gateway):
    gw = await make_gateway()
    client = gw.client()
    infos = [await client.open(client_name=f"s{i}") for i in range(3)]
    workers = [psutil.Process(gw.gateway.sessions.live[i.session_id].worker.pid) for i in infos]
    assert all(w.is_running() for w in workers)
    for worker in workers:
        # started in its own session: a Ctrl-C at the gateway's terminal does not reach it
        assert os.getsid(worker.pid) == worker.pid
    for info in infos:
        closed = await client.close(info.session_id)
        assert closed.state == gateway_pb2.CLOSED
    # closing returns after the worker was reaped
    assert all(_gone(w) for w in workers)
    assert [w.pid for w in workers if w.pid in {c.pid for c in psutil.Process().children()}] == []
    # closing again is a no-op
    assert (await client.close(infos[0].session_id)).state == gateway_pb2.CLOSED


@pytest.mark.asyncio
@pytest.mark.parametrize("steps", [0, 3, 19])
async def test_workers_run_below_the_gateways_cpu_priority(make_gateway, steps):
    """workers.nice steps below the gateway's own niceness, capped at 19, once Ready
    (a spare starts and idles at the gateway's: it is lowered when a session takes it)."""
    gw = await make_gateway(**{"workers.nice": steps, "workers.spare_workers": 1})
    client = gw.client()
    first = (await client.open(client_name="nice")).session_id
    await wait_for(lambda: len(gw.gateway.sessions.spares.ready) == 1)
    second = (await client.open(client_name="nice")).session_id  # takes the spare
    pids = [gw.gateway.sessions.live[sid].worker.pid for sid in (first, second)]
    expected = min(19, os.getpriority(os.PRIO_PROCESS, 0) + steps)
    assert [psutil.Process(pid).nice() for pid in pids] == [expected, expected]
    # each worker leads its own session: where the kernel shares CPU by session group
    # first, the group is lowered too (else the niceness counts for nothing)
    if steps and os.path.exists(f"/proc/{pids[0]}/autogroup"):
        for pid in pids:
            with open(f"/proc/{pid}/autogroup") as group:
                assert group.read().split()[-1] == str(expected)


@pytest.mark.requires_no_plugin("reattach")  # it leaves workers for adoption
@pytest.mark.asyncio
async def test_gateway_stop_leaves_no_worker(make_gateway):
    gw = await make_gateway(**{"workers.spare_workers": 2})
    client = gw.client()
    sids = [(await client.open(client_name=f"s{i}")).session_id for i in range(2)]
    await wait_for(lambda: len(gw.gateway.sessions.spares.ready) == 2)
    pids = [gw.gateway.sessions.live[s].worker.pid for s in sids]
    pids += [h.pid for _s, h in gw.gateway.sessions.spares.ready]
    procs = [psutil.Process(p) for p in pids]
    call = client.stream(sids[0])
    assert (await call.read()).caught_up
    await gw.gateway.stop()
    assert all(_gone(p) for p in procs), [p for p in procs if p.is_running()]
    assert await _stream_end(call) == grpc.StatusCode.UNAVAILABLE


@pytest.mark.asyncio
async def test_spare_worker_is_used_and_replaced(make_gateway):
    gw = await make_gateway(**{"workers.spare_workers": 1})
    manager = gw.gateway.sessions
    await wait_for(lambda: len(manager.spares.ready) == 1)
    spare_pid = manager.spares.ready[0][1].pid
    client = gw.client()
    sid = (await client.open(client_name="x")).session_id
    assert manager.live[sid].worker.pid == spare_pid
    await wait_for(lambda: len(manager.spares.ready) == 1)
    assert manager.spares.ready[0][1].pid != spare_pid
    assert await client.invoke_json(sid, "echo", 1) == 1


def test_a_released_worker_outlives_its_gateway_process(gateway_process):
    """reattach's release, on the Python running the suite: a worker the gateway lets go
    at a graceful stop is still running after the gateway process (and its event loop)
    has ended. On 3.12+ asyncio's subprocess transport, collected at loop close, used to
    SIGKILL it (core/workers/handle.py, ``_disown``)."""
    gateway = gateway_process(**{"plugins.reattach.enabled": True})
    key = gateway.stdout.strip()
    loop = asyncio.new_event_loop()
    try:
        from sessiongate.client import GatewayClient

        async def open_one() -> str:
            async with grpc.aio.insecure_channel(gateway.address) as channel:
                return (await GatewayClient(channel, key).open(client_name="kept")).session_id

        session_id = loop.run_until_complete(open_one())
    finally:
        loop.close()
    found = re.search(rf"session {session_id}: worker started \(pid (\d+)", gateway.log)
    assert found, gateway.log
    worker = psutil.Process(int(found.group(1)))
    gateway.signal(signal.SIGTERM)
    assert gateway.wait(30) == 0, gateway.log
    try:
        assert worker.is_running() and worker.status() != psutil.STATUS_ZOMBIE, (
            "the released worker ended with its gateway")
    finally:
        worker.kill()
        worker.wait(10)
