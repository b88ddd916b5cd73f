"""Graceful shutdown of ``sessiongate serve`` (a real child process), health, reflection, logs."""

from __future__ import annotations

import asyncio
import re
import signal

import grpc
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from sessiongate.client import GatewayClient
from sessiongate.testing import enabled_plugins, open_streaming, stream_end
from sessiongate.v1 import gateway_pb2

pytestmark = pytest.mark.matrix  # shutdown releases workers instead under reattach


async def _stream_end(call) -> grpc.StatusCode:
    return (await stream_end(call))[0]


def _workers(pid: int) -> list[psutil.Process]:
    return [p for p in psutil.Process(pid).children(recursive=True)
            if "sessiongate.core.sdk" in p.cmdline()]


@pytest.mark.asyncio
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_signal_with_an_active_stream(gateway_process, sig):
    gateway = gateway_process(**{"server.shutdown_grace_seconds": 5})
    key = gateway.stdout.strip()
    async with grpc.aio.insecure_channel(gateway.address) as channel:
        client = GatewayClient(channel, key)
        sids = [(await client.open(client_name=f"s{i}")).session_id for i in range(2)]
        call = client.stream(sids[0])
        assert (await call.read()).caught_up
        await client.invoke_json(sids[0], "write", {"tag": "t", "value": 1})
        assert [e.sequence for e in (await call.read()).events] == [1]
        workers = _workers(gateway.proc.pid)
        assert len(workers) >= 2  # the sessions' (and maybe a spare)

        gateway.signal(sig)
        code = await _stream_end(call)
        assert code == grpc.StatusCode.UNAVAILABLE, code
        assert await asyncio.to_thread(gateway.wait, 60) == 0
    if "reattach" not in enabled_plugins():  # reattach leaves them for the next gateway
        # every worker was stopped and reaped before the gateway exited
        left = [w for w in workers if w.is_running()]
        assert left == [], left
    assert "shutting down" in gateway.log
    assert "stopped" in gateway.log
    for sid in sids:
        assert re.search(rf"session {sid}: \w+ -> CLOSED", gateway.log), gateway.log


@pytest.mark.asyncio
async def test_in_process_stop_ends_streams_unavailable(make_gateway):
    gw = await make_gateway()
    client = gw.client()
    sid, call = await open_streaming(client)
    worker = psutil.Process(gw.gateway.sessions.live[sid].worker.pid)
    stopping = asyncio.ensure_future(gw.server.stop())
    assert await _stream_end(call) == grpc.StatusCode.UNAVAILABLE
    await stopping
    if "reattach" not in enabled_plugins():
        assert not worker.is_running()


@pytest.mark.asyncio
async def test_health_and_reflection(make_gateway):
    gw = await make_gateway()
    channel = gw.client().channel
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "sessiongate.v1.Gateway"):
        response = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert response.status == health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    call = reflection.ServerReflectionInfo()
    await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
    response = await call.read()
    await call.done_writing()
    names = {s.name for s in response.list_services_response.service}
    assert {"sessiongate.v1.Gateway", "grpc.health.v1.Health"} <= names


@pytest.mark.asyncio
async def test_open_refused_after_shutdown_began(make_gateway):
    gw = await make_gateway()
    client = gw.client()
    sid = (await client.open(client_name="x")).session_id
    await gw.gateway.sessions.shutdown()
    assert gw.gateway.sessions.live == {}
    info = await client.get(sid)
    assert info.state == gateway_pb2.CLOSED
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await client.open(client_name="late")
    assert exc.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.asyncio
async def test_a_call_taken_in_during_the_stop_is_refused_unavailable(make_gateway):
    """Under load the gRPC server still hands calls it took in to their handlers while
    the gateway stops; once its key store is closed they must get UNAVAILABLE, not an
    internal error with a traceback."""
    gw = await make_gateway()
    metadata = (("authorization", f"Bearer {gw.admin_key}"),)
    await gw.gateway.authenticate(metadata)
    await gw.gateway.stop()
    with pytest.raises(Exception) as exc:
        await gw.gateway.authenticate(metadata)
    assert type(exc.value).__name__ == "Unavailable"
    assert "shutting down" in str(exc.value)
