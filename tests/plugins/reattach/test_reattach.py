"""Workers survive a gateway restart and are re-adopted (real processes, kill -9)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pathlib
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator

import grpc
import psutil
import pytest

from sessiongate.client import GatewayClient
from sessiongate.core import protocol
from sessiongate.testing import GatewayProcess
from sessiongate.v1 import gateway_pb2, worker_pb2

pytestmark = pytest.mark.asyncio


@contextlib.asynccontextmanager
async def as_admin(proc: GatewayProcess, tmp_path: pathlib.Path) -> AsyncIterator[GatewayClient]:
    """A client of ``proc`` with the bootstrap admin key: the first gateway on the state
    dir writes it, and every later one (no longer without keys) keeps it."""
    key = (tmp_path / "state" / "bootstrap-admin.key").read_text().strip()
    async with grpc.aio.insecure_channel(proc.address) as channel:
        yield GatewayClient(channel, key)


def manifest_rows(tmp_path) -> list[tuple]:
    with contextlib.closing(sqlite3.connect(tmp_path / "state" / "reattach.sqlite3")) as db:
        return db.execute("SELECT session_id, pid, nonce_digest FROM workers").fetchall()


async def read_until(call, last: int) -> tuple[list[int], list]:
    seqs, gaps = [], []
    while not seqs or seqs[-1] < last:
        response = await call.read()
        assert response is not grpc.aio.EOF, f"ended after {seqs[-3:]}"
        if response.HasField("gap"):
            gaps.append(response.gap)
        seqs += [e.sequence for e in response.events]
    return seqs, gaps


def worker_pid(tmp_path, session_id: str) -> int:
    return next(pid for sid, pid, _ in manifest_rows(tmp_path) if sid == session_id)


async def open_one_session(proc: GatewayProcess, tmp_path: pathlib.Path) -> tuple[str, int]:
    """Open a session on ``proc`` and disconnect: (its id, its worker's pid, from the
    reattach manifest)."""
    async with as_admin(proc, tmp_path) as gw:
        sid = (await gw.open()).session_id
    return sid, worker_pid(tmp_path, sid)


def wait_gone(pid: int, timeout: float) -> bool:
    try:
        psutil.Process(pid).wait(timeout)
    except psutil.NoSuchProcess:
        return True
    except psutil.TimeoutExpired:
        return False
    return True


REATTACH = {"plugins.reattach.adoption_window_seconds": 20,
            "plugins.fanout.replay_buffer_capacity": 1000}


@pytest.mark.requires_plugin("reattach", "fanout", "reconnect")
async def test_kill_9_restart_readopts_sessions_without_losing_events(tmp_path,
                                                                       gateway_process):
    first = gateway_process(**REATTACH)
    async with as_admin(first, tmp_path) as gw:
        a = (await gw.open(client_name="a")).session_id
        b = (await gw.open(client_name="b")).session_id
        await gw.invoke_json(a, "burst", {"count": 1500, "size": 8})  # 1..1500
        await gw.invoke_json(b, "write", {"tag": "x", "value": 1})
        info_a = await gw.get(a)
    assert info_a.last_sequence == 1500
    rows = manifest_rows(tmp_path)
    assert {r[0] for r in rows} == {a, b}
    assert all(len(r[2]) == 32 for r in rows)  # a digest, never the nonce
    digests_before = {r[0]: r[2] for r in rows}
    pid_a = worker_pid(tmp_path, a)
    first.proc.kill()  # kill -9: no goodbye to anyone
    first.wait()
    assert psutil.pid_exists(pid_a)  # the worker lives on, phoning home

    second = gateway_process(**REATTACH)
    async with as_admin(second, tmp_path) as gw:
        again = await gw.get(a)
        assert again.state == gateway_pb2.READY and again.owner_key_id == info_a.owner_key_id
        assert again.client_name == "a" and again.last_sequence == 1500
        assert (await gw.get(b)).state == gateway_pb2.READY
        # each adoption spent its nonce: the manifest holds the next one's digest
        digests_after = {r[0]: r[2] for r in manifest_rows(tmp_path)}
        assert all(digests_after[sid] != digests_before[sid] for sid in (a, b))
        assert await gw.invoke_json(b, "read", {"tag": "x"}) == {"tag": "x", "value": 1}
        # a resume inside the worker's buffer: every event, no gap, then live
        call = gw.stream(a, after_sequence=1200)
        await gw.invoke_json(a, "burst", {"count": 5, "size": 8})  # 1501..1505
        seqs, gaps = await read_until(call, 1505)
        assert gaps == [] and seqs == list(range(1201, 1506))
        call.cancel()
        # a resume from before the buffer: the right gap, then what the worker kept
        call = gw.stream(a, after_sequence=10)
        seqs, gaps = await read_until(call, 1505)
        assert [(g.requested_after, g.reason) for g in gaps] == [(10, gateway_pb2.EVICTED)]
        assert gaps[0].oldest_available == seqs[0] and seqs[-1] == 1505
        assert seqs == list(range(seqs[0], 1506))
        call.cancel()
        await gw.close(a)
    assert wait_gone(pid_a, 15)
    assert a not in {r[0] for r in manifest_rows(tmp_path)}


@pytest.mark.requires_plugin("reattach", "fanout", "reconnect")
async def test_events_produced_while_orphaned_reach_resuming_subscribers(tmp_path,
                                                                          gateway_process):
    first = gateway_process(**REATTACH)
    async with as_admin(first, tmp_path) as gw:
        sid = (await gw.open()).session_id
        await gw.invoke_json(sid, "write", {"tag": "t", "value": 0})  # 1
        await gw.invoke_json(sid, "subscribe", {"tag": "s", "interval_ms": 20})
    first.proc.kill()
    first.wait()
    second = gateway_process(**REATTACH)
    async with as_admin(second, tmp_path) as gw:
        info = await gw.get(sid)
        assert info.last_sequence > 1  # produced while no gateway was there
        call = gw.stream(sid, after_sequence=1)
        seqs, gaps = await read_until(call, info.last_sequence + 3)
        assert gaps == [] and seqs == list(range(2, info.last_sequence + 4))
        call.cancel()
        await gw.close(sid)


@pytest.mark.requires_plugin("reattach")
async def test_graceful_restart_leaves_workers_for_the_next_instance(tmp_path, gateway_process):
    first = gateway_process(**REATTACH)
    sid, pid = await open_one_session(first, tmp_path)
    first.signal(signal.SIGTERM)
    assert first.wait() == 0
    assert psutil.pid_exists(pid)
    second = gateway_process(**REATTACH)
    async with as_admin(second, tmp_path) as gw:
        assert (await gw.get(sid)).state == gateway_pb2.READY
        await gw.close(sid)
    assert wait_gone(pid, 15)


@pytest.mark.requires_plugin("reattach")
async def test_impostor_with_a_wrong_nonce_is_rejected(tmp_path, gateway_process):
    first = gateway_process(**REATTACH)
    sid, pid = await open_one_session(first, tmp_path)
    socket_path = next(iter(psutil.Process(pid).environ()[protocol.SOCKET_ENV] for _ in [0]))
    os.kill(pid, signal.SIGSTOP)  # the real worker cannot phone home yet
    first.proc.kill()
    first.wait()
    starting = asyncio.create_task(asyncio.to_thread(gateway_process, **REATTACH))
    # the impostor: knows the session id and the socket, not the nonce
    deadline = time.monotonic() + 20
    refused = False
    while time.monotonic() < deadline and not refused:
        try:
            reader, writer = await asyncio.open_unix_connection(socket_path)
        except OSError:
            await asyncio.sleep(0.05)  # polling for the new gateway's socket to appear
            continue
        writer.write(protocol.encode(worker_pb2.WorkerFrame(adopt=worker_pb2.Adopt(
            protocol_version=protocol.PROTOCOL_VERSION, session_id=sid, nonce=b"x" * 32,
            pid=os.getpid(), last_sequence=99))))
        await writer.drain()
        refused = await reader.read() == b""  # closed without a Welcome
        writer.close()
    assert refused
    os.kill(pid, signal.SIGCONT)
    second = await starting
    assert "wrong nonce" in second.log
    async with as_admin(second, tmp_path) as gw:
        info = await gw.get(sid)
        assert info.state == gateway_pb2.READY and info.last_sequence == 0
        await gw.close(sid)


@pytest.mark.requires_plugin("reattach")
async def test_orphan_exits_after_its_lifetime(tmp_path, gateway_process):
    first = gateway_process(**REATTACH, **{"plugins.reattach.max_orphan_lifetime_seconds": 1})
    _sid, pid = await open_one_session(first, tmp_path)
    first.proc.kill()
    first.wait()
    assert wait_gone(pid, 30)


@pytest.mark.requires_plugin("reattach")
async def test_unrelated_process_with_a_manifest_pid_is_left_alone(tmp_path, gateway_process):
    first = gateway_process(**REATTACH)
    sid, pid = await open_one_session(first, tmp_path)
    first.proc.kill()
    first.wait()
    os.kill(pid, signal.SIGKILL)
    wait_gone(pid, 10)
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        with contextlib.closing(sqlite3.connect(tmp_path / "state" / "reattach.sqlite3")) as db:
            db.execute("UPDATE workers SET pid = ? WHERE session_id = ?", (bystander.pid, sid))
            db.commit()
        second = gateway_process(**REATTACH)
        assert bystander.poll() is None  # still running
        assert manifest_rows(tmp_path) == []
        async with as_admin(second, tmp_path) as gw:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await gw.get(sid)
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        bystander.kill()
        bystander.wait()


@pytest.mark.requires_no_plugin("reattach")
async def test_without_reattach_a_restart_terminates_leftover_workers(tmp_path,
                                                                       gateway_process):
    first = gateway_process()
    async with as_admin(first, tmp_path) as gw:
        sid = (await gw.open()).session_id
        pid = (await gw.get(sid)).session_id and next(
            p.pid for p in psutil.process_iter(["cmdline", "environ"])
            if "sessiongate.core.sdk" in (p.info["cmdline"] or [])
            and (p.info["environ"] or {}).get(protocol.SESSION_ENV) == sid)
    os.kill(pid, signal.SIGSTOP)  # it cannot notice the gateway is gone and exit itself
    first.proc.kill()
    first.wait()
    second = gateway_process()
    assert "terminating leftover worker" in second.log
    assert wait_gone(pid, 15)
