"""Lifecycle races: a close or shutdown at any point of an open leaves no process; an
attach racing a close ends like the session's other streams."""

from __future__ import annotations

import asyncio
import os

import grpc
import psutil
import pytest

from sessiongate.core import hookimpl
from sessiongate.testing import rpc_error, stream_end, wait_for

pytestmark = pytest.mark.asyncio


def _workers_of(session_id: str) -> list[psutil.Process]:
    """Our worker processes for that session (by the session id in their environment)."""
    found = []
    for proc in psutil.Process(os.getpid()).children(recursive=True):
        try:
            if proc.environ().get("SESSIONGATE_WORKER_SESSION") == session_id \
                    and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


class EndWhileStarting:
    """A plugin that ends the opening session while its worker process is being started
    (between the launch hook and the process existing): close, or a gateway shutdown."""

    def __init__(self, how: str) -> None:
        self.how = how
        self.gateway = None
        self.session_ids: list[str] = []
        self.tasks: list[asyncio.Task] = []

    @hookimpl
    def sg_worker_launch(self, session, argv, env):
        if session.client_name != "doomed":
            return
        self.session_ids.append(session.session_id)
        manager = self.gateway.gateway.sessions
        ending = (manager.close(session, "closed while starting") if self.how == "close"
                  else self.gateway.gateway.stop())
        self.tasks.append(asyncio.ensure_future(ending))


@pytest.mark.parametrize("how", ["close", "shutdown"])
async def test_ending_a_session_while_its_worker_starts_leaves_no_process(make_gateway, how):
    plugin = EndWhileStarting(how)
    plugin.gateway = await make_gateway(extra_plugins=(plugin,), **{"workers.spare_workers": 0})
    client = plugin.gateway.client()
    error = await rpc_error(client.open(client_name="doomed"))
    assert error.code().name in ("UNAVAILABLE", "FAILED_PRECONDITION"), error.details()
    await asyncio.gather(*plugin.tasks)
    [sid] = plugin.session_ids
    await wait_for(lambda: not _workers_of(sid), timeout=15)


async def test_an_ended_session_is_remembered_by_its_final_view_only(make_gateway):
    import gc
    import weakref

    from sessiongate.core.sessions.session import EndedSession
    from sessiongate.v1 import gateway_pb2

    gw = await make_gateway()
    client = gw.client()
    sid = (await client.open(client_name="brief")).session_id
    await client.invoke_json(sid, "burst", {"count": 500, "size": 10})
    session = weakref.ref(gw.gateway.sessions.live[sid])
    assert (await client.close(sid)).state == gateway_pb2.CLOSED
    kept = gw.gateway.sessions.ended[sid]
    assert isinstance(kept, EndedSession) and kept.distributor is None and kept.worker is None
    gc.collect()
    assert session() is None, "the ended Session (worker, log, tasks) is still referenced"
    info = await client.get(sid)
    assert (info.state, info.last_sequence, info.client_name) == (
        gateway_pb2.CLOSED, 500, "brief")
    error = await rpc_error(client.invoke(sid, "echo", b"1"))
    assert error.code().name == "FAILED_PRECONDITION" and "CLOSED" in error.details()


async def test_ended_sessions_are_forgotten_by_count_and_age(make_gateway, monkeypatch):
    from sessiongate.core.sessions import manager as manager_module

    monkeypatch.setattr(manager_module, "TOMBSTONES", 2)
    gw = await make_gateway()
    client = gw.client()
    sids = [(await client.open()).session_id for _ in range(3)]
    for sid in sids:
        await client.close(sid)
    assert list(gw.gateway.sessions.ended) == sids[1:]
    assert (await rpc_error(client.get(sids[0]))).code().name == "NOT_FOUND"
    monkeypatch.setattr(manager_module, "TOMBSTONE_SECONDS", 0.0)
    assert (await rpc_error(client.get(sids[2]))).code().name == "NOT_FOUND"
    assert not gw.gateway.sessions.ended


class HoldAttach:
    """Holds every stream's attach in ``sg_subscriber_attach`` until released."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    @hookimpl
    async def sg_subscriber_attach(self, session, identity, request):
        self.entered.set()
        await self.release.wait()


@pytest.mark.parametrize("ending", ["close", "fault"])
async def test_an_attach_racing_the_sessions_end_ends_like_its_streams(make_gateway, ending):
    """A close while an attach is being decided ends that stream OK, as it ends every
    stream of the session; a fault ends it UNAVAILABLE naming the fault."""
    hold = HoldAttach()
    gw = await make_gateway(extra_plugins=(hold,))
    client = gw.client()
    sid = (await client.open()).session_id
    call = client.stream(sid)
    await asyncio.wait_for(hold.entered.wait(), 10)
    if ending == "close":
        await client.close(sid)
    else:
        gw.gateway.sessions.get(sid).fault("injected by the test")
    hold.release.set()
    code, details = await asyncio.wait_for(stream_end(call), 10)
    if ending == "close":
        assert code == grpc.StatusCode.OK, details
    else:
        assert code == grpc.StatusCode.UNAVAILABLE, details
        assert "injected by the test" in details


class StartStop:
    """Records sg_startup and sg_shutdown."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    @hookimpl
    def sg_startup(self) -> None:
        self.calls.append("startup")

    @hookimpl
    def sg_shutdown(self) -> None:
        self.calls.append("shutdown")


async def test_a_start_failing_after_plugins_started_shuts_them_down(make_gateway,
                                                                       monkeypatch):
    from sessiongate.core import gateway as gateway_module

    async def fail(*args, **kwargs):
        raise OSError("injected: cannot list processes")

    monkeypatch.setattr(gateway_module.terminator, "terminate_leftovers", fail)
    plugin = StartStop()
    with pytest.raises(OSError, match="injected"):
        await make_gateway(extra_plugins=(plugin,))
    assert plugin.calls == ["startup", "shutdown"]


async def test_an_attach_while_the_session_is_closing_ends_ok(make_gateway):
    """A stream (live or resuming) arriving while the session closes ends OK at once,
    as the session's other streams do; not FAILED_PRECONDITION."""
    gw = await make_gateway()
    client = gw.client()
    sid = (await client.open()).session_id
    session = gw.gateway.sessions.get(sid)
    worker, release = session.worker, asyncio.Event()
    real_stop = worker.stop

    async def slow_stop(*args, **kwargs):  # a worker slow to exit holds the session CLOSING
        await release.wait()
        return await real_stop(*args, **kwargs)

    worker.stop = slow_stop
    closing = asyncio.ensure_future(client.close(sid))
    await wait_for(lambda: session.state == "CLOSING")
    try:
        for options in ({}, {"after_sequence": 0}):
            code, details = await asyncio.wait_for(stream_end(client.stream(sid, **options)),
                                                   10)
            assert code == grpc.StatusCode.OK, (options, details)
    finally:
        release.set()
        await closing
