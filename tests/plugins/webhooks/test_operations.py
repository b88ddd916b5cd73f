"""Operating the plugin: a crash mid-delivery, the admin API's guard, the command line,
secrets at rest and in logs, a broken store that never fails a call."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import subprocess
import sys

import grpc
import pytest

from sessiongate.client import GatewayClient
from sessiongate.plugins.webhooks.runtime import RUNTIME
from sessiongate.testing import rpc_error, wait_for
from sessiongate.v1 import webhooks_pb2

from .helpers import ON, Admin, admin_of, subscribe

pytestmark = [pytest.mark.asyncio, pytest.mark.once]


async def test_a_delivery_cut_off_by_kill_9_arrives_after_the_restart(gateway_process, receiver,
                                                                      tmp_path):
    """The claim's lease ends (timeout + 5 s) and the next gateway sends it again: it
    arrives once or twice, never zero times."""
    settings = {**ON, "plugins.webhooks.timeout_seconds": 1}
    first = gateway_process(**settings)
    key = (tmp_path / "state" / "bootstrap-admin.key").read_text().strip()
    metadata = (("authorization", f"Bearer {key}"),)
    async with grpc.aio.insecure_channel(first.address) as channel:
        endpoint_id, secret = await Admin(channel, metadata).add(receiver.url, "session.opened")
        receiver.verify_with(secret)
        receiver.plan.append(("hang",))
        await GatewayClient(channel, key).open()
        await receiver.wait(lambda: len(receiver.arrivals) == 1)
    first.kill()  # SIGKILL, mid-delivery
    hung = json.loads(receiver.arrivals[0])
    second = gateway_process(**settings)
    event, = await receiver.events_of("session.opened")
    assert event["id"] == hung["id"]
    async with grpc.aio.insecure_channel(second.address) as channel:
        admin = Admin(channel, metadata)
        for _ in range(1000):  # the outcome is recorded a dispatcher turn after the answer
            [delivery] = await admin.deliveries(endpoint_id=endpoint_id)
            if delivery.status != "delivering":
                break
            await asyncio.sleep(0.01)
    assert delivery.status == "delivered" and delivery.attempts == 2


async def test_the_admin_api_needs_the_admin_scope(make_gateway):
    gw = await make_gateway(**ON)
    _key_id, user_key = await gw.create_key("user")
    for key, code in ((user_key, grpc.StatusCode.PERMISSION_DENIED),
                      ("", grpc.StatusCode.UNAUTHENTICATED)):
        admin = admin_of(gw, key)
        error = await rpc_error(admin.endpoints())
        assert error.code() == code, error.details()
    admin = admin_of(gw)
    error = await rpc_error(admin.add("https://example.com/", "no.such.type"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "unknown event type 'no.such.type'" in error.details()
    error = await rpc_error(admin.add("http://example.com/", "session.opened"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "http://" in error.details()
    garbage = admin.channel.unary_unary(  # bytes that do not decode
        "/sessiongate.v1.Webhooks/AddEndpoint", request_serializer=None,
        response_deserializer=None)
    error = await rpc_error(garbage(b"\xff\xff\xff", metadata=admin.metadata))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "malformed" in error.details()
    error = await rpc_error(admin.stub.RemoveEndpoint(webhooks_pb2.EndpointRequest(
        endpoint_id="ep_nope"), metadata=admin.metadata))
    assert error.code() == grpc.StatusCode.NOT_FOUND


async def test_the_secret_is_never_in_a_log_or_in_clear_at_rest(make_gateway, receiver,
                                                                caplog, tmp_path):
    caplog.set_level(logging.DEBUG)
    gw = await make_gateway(**ON)
    admin = admin_of(gw)
    endpoint_id = await subscribe(gw, receiver, "session.opened", "webhook.test")
    rotated = await admin.stub.RotateSecret(webhooks_pb2.RotateSecretRequest(
        endpoint_id=endpoint_id), metadata=admin.metadata)
    receiver.verify_with(rotated.secret)
    await gw.client().open()
    await receiver.events_of("session.opened")
    secrets = [rotated.secret]
    secrets += [s.removeprefix("whsec_") for s in secrets]
    raw = [base64.b64decode(s) for s in secrets[1:]]
    assert not any(s in caplog.text for s in secrets)
    for path in (tmp_path / "state").iterdir():
        data = path.read_bytes() if path.is_file() else b""
        assert not any(s.encode() in data for s in secrets), path
        assert not any(r in data for r in raw), path


async def test_a_broken_store_never_fails_the_call_that_emits(make_gateway, receiver):
    gw = await make_gateway(**ON)
    await subscribe(gw, receiver, "session.opened")
    runtime = gw.gateway.api.stash[RUNTIME]
    await runtime.store.close()  # every write fails from now on
    info = await gw.client().open()
    assert info.state == 2  # READY
    metrics = gw.gateway.metrics
    await wait_for(lambda: metrics.get("webhooks_events_dropped", reason="store") >= 1)


async def test_the_command_line_manages_endpoints(make_gateway, receiver):
    gw = await make_gateway(**ON)
    common = ["--config", str(gw.config), "--server", gw.address, "--key", gw.admin_key]

    async def cli(*words: str) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "sessiongate", "webhooks", *words, *common,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = await proc.communicate()
        return proc.returncode, out.decode(), err.decode()

    code, out, err = await cli("add", "--url", receiver.url, "--event", "session.opened",
                               "webhook.test")
    assert code == 0, err
    endpoint_id, secret = out.splitlines()
    assert endpoint_id.startswith("ep_") and secret.startswith("whsec_")
    assert secret not in err
    receiver.verify_with(secret)
    code, out, _err = await cli("list", "--json")
    [row] = [json.loads(line) for line in out.splitlines()]
    assert row["endpoint_id"] == endpoint_id and row["event_types"] == ["session.opened",
                                                                         "webhook.test"]
    assert "secret" not in row
    code, out, _err = await cli("test", endpoint_id)
    assert code == 0 and out.strip().startswith("dlv_")
    await receiver.events_of("webhook.test")
    code, out, _err = await cli("deliveries", "--status", "delivered", "--json")
    [delivery] = [json.loads(line) for line in out.splitlines()]
    assert delivery["event_type"] == "webhook.test" and delivery["attempts"] == 1
    code, out, err = await cli("rotate-secret", endpoint_id)
    assert code == 0 and out.strip().startswith("whsec_") and out.strip() != secret
    code, out, err = await cli("redeliver", "dlv_nope")
    assert code == 1 and "NOT_FOUND" in err
    code, out, err = await cli("add", "--url", "https://10.0.0.1/", "--event", "session.opened")
    assert code == 1 and "not public" in err and "Traceback" not in err
    code, _out, err = await cli("remove", endpoint_id)
    assert code == 0 and endpoint_id in err
    code, out, _err = await cli("list")
    assert out == ""


async def test_a_removed_endpoint_gets_nothing_it_had_claimed_but_the_attempt_under_way(
        make_gateway, receiver):
    """Removed while its first delivery hangs, with the next ones claimed behind it: the
    attempt under way ends as the receiver answers; nothing more is sent to it."""
    gw = await make_gateway(**ON)
    endpoint_id = await subscribe(gw, receiver, "session.opened")
    runtime = gw.gateway.api.stash[RUNTIME]
    answer = asyncio.Event()
    receiver.plan.append(("wait", answer, 204))
    client = gw.client()
    for _ in range(3):
        await client.open()
    await receiver.wait(lambda: len(receiver.arrivals) == 1)

    async def all_claimed() -> bool:
        rows = await runtime.store.deliveries(endpoint_id=endpoint_id, limit=10)
        return [r["status"] for r in rows] == ["delivering"] * 3

    for _ in range(1000):  # the run claims the ones behind the hanging one ahead
        if await all_claimed():
            break
        await asyncio.sleep(0.01)
    assert await all_claimed()
    await runtime.remove_endpoint(endpoint_id)
    answer.set()
    await receiver.wait(lambda: len(receiver.requests) == 1)
    await wait_for(lambda: runtime.dispatcher.in_flight == 0)
    assert len(receiver.arrivals) == 1
