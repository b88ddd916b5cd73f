"""Runtime robustness (issue 13, points 1, 2 and 6).

* One gateway per ``state_dir`` and per address: a second ``sessiongate serve`` exits 2
  naming the cause, and leaves the first gateway, its workers and its port alone.
* A command, reply or event too large for a worker frame fails alone
  (``RESOURCE_EXHAUSTED`` naming the size and ``workers.max_frame_bytes``); the
  session lives on. Both sides check a frame's size before sending it.
* Commands in flight when a session faults or the gateway shuts down name that first
  cause, not the worker's exit that follows it.

Real gateways, real worker processes, real gRPC on loopback.
"""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
from collections.abc import Awaitable
from typing import Any

import grpc
import psutil
import pytest

from sessiongate.client import GatewayClient
from sessiongate.core import hookimpl
from sessiongate.testing import open_streaming, rpc_error, stream_end, write_config
from sessiongate.v1 import gateway_pb2

from .helpers import FakeWorkers, command_in_flight, stall_settings

EXIT = 60  # seconds a failing `serve` may take to exit before the test fails (never reached)
ENDED = 30  # seconds a test waits for a session to end before failing (never reached)
SETTING = "workers.max_frame_bytes"


def _workers(pid: int) -> list[psutil.Process]:
    return [p for p in psutil.Process(pid).children(recursive=True)
            if "sessiongate.core.sdk" in p.cmdline()]


def _serve_until_it_exits(config: pathlib.Path, cwd: pathlib.Path) -> tuple[int, str, str]:
    """``sessiongate serve`` that is expected to refuse to start: (exit code, stdout,
    stderr). One that keeps running is stopped (the test then fails)."""
    out, err = cwd / "refused.out", cwd / "refused.err"
    with open(out, "wb") as out_file, open(err, "wb") as err_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sessiongate", "serve", "--config", str(config)],
            cwd=cwd, stdout=out_file, stderr=err_file, stdin=subprocess.DEVNULL)
    try:
        code = proc.wait(timeout=EXIT)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=EXIT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return code, out.read_text(), err.read_text()


# -- 1. one gateway per state_dir and per address ---------------------------------------------


@pytest.mark.asyncio
async def test_a_second_gateway_on_the_same_state_dir_exits_2_and_leaves_the_first_alone(
        gateway_process, tmp_path):
    first = gateway_process()
    key = first.stdout.strip()
    async with grpc.aio.insecure_channel(first.address) as channel:
        client = GatewayClient(channel, key)
        sid = (await client.open(client_name="first")).session_id
        workers = _workers(first.proc.pid)
        assert workers

        code, out, err = await asyncio.to_thread(_serve_until_it_exits, first.config, tmp_path)

        state = (tmp_path / "state").resolve()
        assert code == 2, err
        assert err.splitlines() == [
            f"sessiongate: state_dir {state} is in use by another gateway "
            f"(pid {first.proc.pid}); stop it or use another state_dir"]
        assert out == ""
        # the first gateway's workers, sessions and port are untouched
        assert all(w.is_running() for w in workers)
        assert (await client.get(sid)).state == gateway_pb2.READY
        assert await client.invoke_json(sid, "echo", {"n": 1}) == {"n": 1}
    assert first.proc.poll() is None


@pytest.mark.asyncio
async def test_a_busy_address_exits_2_naming_it_and_every_call_reaches_the_first(
        gateway_process, tmp_path, short_tmp):
    first = gateway_process()
    key = first.stdout.strip()
    config = write_config(tmp_path / "second.toml", {
        "state_dir": str(tmp_path / "other-state"),
        "runtime_dir": str(short_tmp / "other-run"),
        "server.grpc_address": first.address,
    })
    async with grpc.aio.insecure_channel(first.address) as channel:
        client = GatewayClient(channel, key)
        sid = (await client.open(client_name="first")).session_id

        code, out, err = await asyncio.to_thread(_serve_until_it_exits, config, tmp_path)

        assert code == 2, err
        assert err.splitlines() == [
            f"sessiongate: address {first.address} is already in use; stop what listens "
            "there or set server.grpc_address to another address"]
        assert out == ""
        # nothing was started or created for the refused gateway
        assert not (tmp_path / "other-state" / "keys.sqlite3").exists()
        for _ in range(20):
            assert (await client.get(sid)).state == gateway_pb2.READY


@pytest.mark.asyncio
async def test_in_one_process_a_state_dir_is_locked_until_its_gateway_stops(make_gateway):
    from sessiongate.core.errors import StartupError

    first = await make_gateway()
    client = first.client()
    sid = (await client.open(client_name="first")).session_id
    worker = psutil.Process(first.gateway.sessions.live[sid].worker.pid)
    with pytest.raises(StartupError) as exc:
        await make_gateway()
    assert f"is in use by another gateway (pid {os.getpid()})" in str(exc.value)
    assert worker.is_running()
    assert await client.invoke_json(sid, "echo", "still here") == "still here"
    # stopping releases the lock: the next gateway on the state dir starts
    await first.stop()
    second = await make_gateway()
    info = await second.client().open(client_name="second")
    assert info.state == gateway_pb2.READY


# -- 2. frames too large fail alone ------------------------------------------------------------


def _names_the_limit(details: str, limit: int) -> bool:
    return f"{SETTING} = {limit}" in details and re.search(r"\d+ bytes", details) is not None


async def _refused_as_too_large(call: Awaitable[Any], limit: int) -> str:
    """``call`` fails RESOURCE_EXHAUSTED, naming the frame limit and a size; its details."""
    error = await rpc_error(call)
    details = error.details()
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, details
    assert _names_the_limit(details, limit), details
    return details


@pytest.mark.asyncio
async def test_a_write_whose_event_is_too_large_fails_alone(make_gateway):
    gw = await make_gateway()
    client = gw.client()
    sid, call = await open_streaming(client)
    session = gw.gateway.sessions.live[sid]
    # 2 MB of non-ASCII text: 6 MB once the event's payload is JSON
    payload = json.dumps({"tag": "t", "value": "é" * 1_000_000}, ensure_ascii=False).encode()
    details = await _refused_as_too_large(client.invoke(sid, "write", payload),
                                          int(gw.settings.workers.max_frame_bytes))
    assert "data_change" in details
    # the session lives on; the refused write stored nothing and took no sequence
    assert session.state == "READY"
    assert await client.invoke_json(sid, "read", {"tag": "t"}) == {"tag": "t", "value": None}
    await client.invoke_json(sid, "write", {"tag": "t", "value": 1})
    assert [e.sequence for e in (await call.read()).events] == [1]
    call.cancel()


@pytest.mark.asyncio
async def test_a_burst_event_too_large_fails_alone(make_gateway):
    gw = await make_gateway()
    client = gw.client()
    sid, call = await open_streaming(client)
    details = await _refused_as_too_large(
        client.invoke(sid, "burst", b'{"count": 1, "size": 5000000}'),
        int(gw.settings.workers.max_frame_bytes))
    assert "5000000" in details
    assert gw.gateway.sessions.live[sid].state == "READY"
    assert await client.invoke_json(sid, "burst", {"count": 3, "size": 10}) == {"emitted": 3}
    seqs: list[int] = []
    while len(seqs) < 3:
        seqs += [e.sequence for e in (await call.read()).events]
    assert seqs == [1, 2, 3]
    call.cancel()


@pytest.mark.asyncio
async def test_a_command_too_large_for_a_frame_is_refused_before_it_is_sent(make_gateway):
    limit = 1 << 20
    gw = await make_gateway(**{SETTING: limit})
    client = gw.client()
    sid = (await client.open(client_name="x")).session_id
    worker = psutil.Process(gw.gateway.sessions.live[sid].worker.pid)
    details = await _refused_as_too_large(client.invoke(sid, "echo", b"x" * 2_000_000), limit)
    assert "2000000" in details and "'echo'" in details
    # the worker never saw it: same process, same session, still serving
    assert worker.is_running()
    assert gw.gateway.sessions.live[sid].state == "READY"
    assert await client.invoke(sid, "echo", b"x" * 1000) == b"x" * 1000


@pytest.mark.asyncio
@pytest.mark.parametrize("size", [100, 4])  # 4: frames cut by their protobuf overhead
async def test_events_in_a_batch_respect_a_small_frame_limit(make_gateway, size):
    gw = await make_gateway(**{SETTING: 1024})
    client = gw.client()
    sid, call = await open_streaming(client)
    assert await client.invoke_json(sid, "burst", {"count": 200, "size": size}) == \
        {"emitted": 200}
    seqs: list[int] = []
    while len(seqs) < 200:
        seqs += [e.sequence for e in (await call.read()).events]
    assert seqs == list(range(1, 201))
    assert gw.gateway.sessions.live[sid].state == "READY"
    call.cancel()


_BIG_BACKEND = '''
from sessiongate.core.sdk.worker import Backend, command


class Big(Backend):
    @command()
    def crash(self, payload):
        raise RuntimeError("connect failed: postgres://app:hunter2@db.internal/app")

    @command()
    def reply(self, payload):
        return "x" * payload["size"]

    @command()
    def try_emit(self, payload):
        try:
            self.emit("big", b"x" * payload["size"])
        except ValueError as exc:  # EventTooLarge is a ValueError
            return {"refused": type(exc).__name__, "message": str(exc)}
        return {"refused": None}
'''


class BigBackend:
    """Registers the ``big`` backend, written to a folder put on the workers' path."""

    __name__ = "big-backend"

    def __init__(self, folder: pathlib.Path) -> None:
        self.folder = folder
        (folder / "sg_test_big_backend.py").write_text(_BIG_BACKEND)

    @hookimpl
    def sg_worker_backends(self):
        return {"big": "sg_test_big_backend:Big"}

    @hookimpl
    def sg_worker_launch(self, session, argv, env):
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(self.folder), env.get("PYTHONPATH", "")) if p)


async def _open_on_big_backend(make_gateway: Any, folder: pathlib.Path,
                               limit: int) -> tuple[Any, Any, str]:
    """A gateway with the ``big`` backend and a frame limit of ``limit``, a client, and a
    session on that backend: ``(gateway, client, session id)``."""
    gw = await make_gateway(extra_plugins=(BigBackend(folder),), **{SETTING: limit})
    client = gw.client()
    sid = (await client.open(client_name="x", backend="big")).session_id
    return gw, client, sid


@pytest.mark.asyncio
async def test_a_backend_exception_reaches_the_client_as_an_incident_id_only(
        make_gateway, tmp_path, capfd):
    gw, client, sid = await _open_on_big_backend(make_gateway, tmp_path, 65536)
    error = await rpc_error(client.invoke_json(sid, "crash", {}))
    assert error.code() == grpc.StatusCode.INTERNAL
    assert "hunter2" not in error.details() and "RuntimeError" not in error.details()
    incident = re.search(r"incident ([0-9a-f]{12})", error.details())
    assert incident, error.details()
    # the operator finds the whole story under that id in the log (the worker's stderr)
    log = capfd.readouterr().err
    assert f"incident {incident.group(1)}" in log and "hunter2" in log
    assert gw.gateway.sessions.live[sid].state == "READY"


@pytest.mark.asyncio
async def test_a_reply_too_large_fails_alone(make_gateway, tmp_path):
    limit = 65536
    gw, client, sid = await _open_on_big_backend(make_gateway, tmp_path, limit)
    worker = psutil.Process(gw.gateway.sessions.live[sid].worker.pid)
    details = await _refused_as_too_large(client.invoke_json(sid, "reply", {"size": 100_000}),
                                          limit)
    assert "reply" in details and "100002" in details
    assert worker.is_running()
    assert gw.gateway.sessions.live[sid].state == "READY"
    assert await client.invoke_json(sid, "reply", {"size": 10}) == "x" * 10


@pytest.mark.asyncio
async def test_emit_refuses_an_event_too_large_and_the_backend_sees_it(make_gateway, tmp_path):
    limit = 65536
    gw, client, sid = await _open_on_big_backend(make_gateway, tmp_path, limit)
    call = client.stream(sid)
    assert (await call.read()).caught_up
    refused = await client.invoke_json(sid, "try_emit", {"size": limit})
    assert refused["refused"] == "EventTooLarge", refused
    assert _names_the_limit(refused["message"], limit), refused
    # the largest event that fits goes through, and gets the first sequence
    fits = limit - 100
    assert await client.invoke_json(sid, "try_emit", {"size": fits}) == {"refused": None}
    response = await call.read()
    assert [(e.sequence, len(e.payload)) for e in response.events] == [(1, fits)]
    assert gw.gateway.sessions.live[sid].state == "READY"
    call.cancel()


@pytest.mark.asyncio
async def test_a_frame_over_the_limit_from_a_worker_still_faults_only_its_session(
        make_gateway, caplog):
    """The gateway still refuses a frame over the limit from a worker that does not use
    the SDK (which would not send one)."""
    gw = await make_gateway(extra_plugins=(FakeWorkers("oversized"),),
                            **{SETTING: 1024, "workers.spare_workers": 0})
    client = gw.client()
    sid = (await client.open(client_name="x")).session_id
    session = gw.gateway.sessions.live[sid]
    error = await rpc_error(client.invoke(sid, "anything", b""))
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert "exceeds the limit of 1024 bytes" in error.details()
    await asyncio.wait_for(session.ended.wait(), ENDED)
    assert session.state == "FAULTED"
    assert "exceeds the limit of 1024 bytes" in session.reason


@pytest.mark.requires_plugin("reattach", "fanout", "reconnect")
@pytest.mark.asyncio
async def test_a_readopted_workers_history_comes_in_frames_within_the_limit(
        gateway_process, tmp_path):
    settings = {"plugins.reattach.adoption_window_seconds": 20,
                "plugins.fanout.replay_buffer_capacity": 1000, SETTING: 1024}
    first = gateway_process(**settings)
    key = first.stdout.strip()
    async with grpc.aio.insecure_channel(first.address) as channel:
        client = GatewayClient(channel, key)
        sid = (await client.open(client_name="x")).session_id
        assert await client.invoke_json(sid, "burst", {"count": 600, "size": 100}) == \
            {"emitted": 600}
    first.proc.kill()  # kill -9: the worker keeps its history for the next gateway
    first.wait()
    second = gateway_process(**settings)
    async with grpc.aio.insecure_channel(second.address) as channel:
        client = GatewayClient(channel, key)
        info = await client.get(sid)
        assert info.state == gateway_pb2.READY, info.reason
        call = client.stream(sid, after_sequence=0)
        seqs: list[int] = []
        while not seqs or seqs[-1] < 600:
            seqs += [e.sequence for e in (await call.read()).events]
        assert seqs == list(range(seqs[0], 601)) and seqs[0] <= 400
        call.cancel()
        await client.close(sid)


@pytest.mark.requires_plugin("reattach", "fanout", "reconnect")
@pytest.mark.asyncio
async def test_a_gateway_with_a_lower_limit_readopts_without_what_no_longer_fits(
        gateway_process, tmp_path):
    settings = {"plugins.reattach.adoption_window_seconds": 20,
                "plugins.fanout.replay_buffer_capacity": 1000}
    first = gateway_process(**settings, **{SETTING: 65536})
    key = first.stdout.strip()
    async with grpc.aio.insecure_channel(first.address) as channel:
        client = GatewayClient(channel, key)
        sid = (await client.open(client_name="x")).session_id
        await client.invoke_json(sid, "burst", {"count": 3, "size": 30_000})  # 1..3
        await client.invoke_json(sid, "burst", {"count": 5, "size": 10})  # 4..8
    first.proc.kill()
    first.wait()
    second = gateway_process(**settings, **{SETTING: 16384})
    async with grpc.aio.insecure_channel(second.address) as channel:
        client = GatewayClient(channel, key)
        info = await client.get(sid)
        assert info.state == gateway_pb2.READY, info.reason
        assert info.last_sequence == 8
        call = client.stream(sid, after_sequence=0)
        seqs: list[int] = []
        gaps = []
        while not seqs or seqs[-1] < 8:
            response = await call.read()
            if response.HasField("gap"):
                gaps.append(response.gap)
            seqs += [e.sequence for e in response.events]
        assert [(g.requested_after, g.oldest_available) for g in gaps] == [(0, 4)]
        assert seqs == [4, 5, 6, 7, 8]
        call.cancel()
        await client.close(sid)


# -- 6. the first cause, not the worker's exit --------------------------------------------------


@pytest.mark.asyncio
async def test_a_command_in_flight_when_the_session_faults_names_the_fault(make_gateway):
    gw = await make_gateway(**stall_settings("fail_fast"))
    client = gw.client()
    sid, call = await open_streaming(client)
    session = gw.gateway.sessions.live[sid]
    sleeping = await command_in_flight(client, session)
    # the stream reads nothing more: the stall timeout faults the session
    burst = await rpc_error(client.invoke(sid, "burst", b'{"count": 200000, "size": 100}'))
    sleep = await rpc_error(sleeping)
    ends = [(burst.code(), burst.details()), (sleep.code(), sleep.details()),
            await stream_end(call)]
    for code, details in ends:
        assert code == grpc.StatusCode.UNAVAILABLE
        assert "event queue overflow" in details, details
        assert "worker exited" not in details
    await asyncio.wait_for(session.ended.wait(), ENDED)


@pytest.mark.asyncio
async def test_a_command_in_flight_at_shutdown_names_the_shutdown(make_gateway):
    gw = await make_gateway()
    client = gw.client()
    sid = (await client.open(client_name="x")).session_id
    session = gw.gateway.sessions.live[sid]
    sleeping = await command_in_flight(client, session)
    stopping = asyncio.ensure_future(gw.server.stop())
    error = await rpc_error(sleeping)
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert "gateway shutting down" in error.details(), error.details()
    assert "worker exited" not in error.details()
    await stopping
