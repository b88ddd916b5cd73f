"""Three real gateway processes (``sessiongate serve``) on one real redis-server and the
acl tests' real slapd: calls through any node reach the session (client and CLI follow
the redirect), a key made on one node works everywhere and its revocation ends streams
on another within a second, an LDAP sign-in token issued by one node works on another
and its revocation on a third ends its stream within a second (one shared signing key),
a restarted node rebuilds its directory, and a clean stop logs no error."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from typing import Any

import grpc
import pytest

from sessiongate.client import connect
from sessiongate.testing import http_get, stream_end

pytestmark = [pytest.mark.once, pytest.mark.asyncio]

TIMEOUT = 15.0


def node(gateway_process: Any, tmp_path: Any, name: str, port: int, redis_url: str,
         stream: str, ldap: dict[str, Any]) -> Any:
    address = f"127.0.0.1:{port}"
    return gateway_process(**{
        "state_dir": str(tmp_path / f"state-{name}"), "runtime_dir": str(tmp_path / f"r-{name}"),
        "server.grpc_address": address, "plugins.cluster.enabled": True,
        "plugins.cluster.redis_url": redis_url, "plugins.cluster.stream": stream,
        "plugins.cluster.node_id": name, "plugins.cluster.advertise_address": address,
        # replication ends streams first, not the periodic check
        "plugins.acl.revocation_check_interval_seconds": 5, **ldap})


def cli(*args: str, config: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sessiongate", *args, "--config", str(config)],
                          capture_output=True, text=True, timeout=60, check=False)


async def until_accepted(address: str, key: str, *, accepted: bool = True) -> str:
    """Wait until the node at ``address`` accepts ``key`` (replicated from elsewhere), or
    with ``accepted=False`` refuses it (``UNAUTHENTICATED``: its details)."""
    async with connect(address, key) as client, asyncio.timeout(TIMEOUT):
        while True:
            try:
                await client.list()
                if accepted:
                    return ""
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.UNAUTHENTICATED:
                    raise
                if not accepted:
                    return exc.details() or ""
            await asyncio.sleep(0.05)


def no_errors(log: str) -> bool:
    levels = [json.loads(line).get("level") for line in log.splitlines()
              if line.startswith("{")]
    return "ERROR" not in levels and "CRITICAL" not in levels and "Traceback" not in log


async def test_three_nodes(gateway_process, tmp_path, redis_server, node_port, slapd,
                           token_key_file):
    stream = "three:sessions"
    ldap = {**slapd.settings(), "plugins.acl.token_key_file": token_key_file}
    ports = {name: node_port() for name in "abc"}
    nodes = {name: node(gateway_process, tmp_path, name, port, redis_server.url, stream, ldap)
             for name, port in ports.items()}
    a, b, c = nodes["a"], nodes["b"], nodes["c"]
    admin = a.stdout.strip().splitlines()[-1]  # a's bootstrap key, replicated to b and c
    await until_accepted(b.address, admin)

    # open on a; GetSession, Invoke and StreamEvents through b follow the redirect
    async with connect(a.address, admin) as on_a, connect(b.address, admin) as via_b:
        sid = (await on_a.open(client_name="three")).session_id
        async with asyncio.timeout(TIMEOUT):
            while True:
                try:
                    info = await via_b.get(sid)
                    break
                except grpc.aio.AioRpcError as exc:
                    assert exc.code() == grpc.StatusCode.NOT_FOUND  # not yet in b's directory
                    await asyncio.sleep(0.02)
        assert info.session_id == sid
        assert await via_b.invoke_json(sid, "echo", {"n": 1}) == {"n": 1}
        listed = {i.session_id: i.node for i in await via_b.list()}
        assert listed[sid] == a.address
        follow = via_b.follow(sid)
        first = asyncio.ensure_future(anext(follow))
        async with asyncio.timeout(TIMEOUT):  # attached on a, through b's redirect
            while (await on_a.get(sid)).subscriber_count != 1:
                await asyncio.sleep(0.02)
        await on_a.invoke_json(sid, "write", {"tag": "t", "value": 7})
        event = await asyncio.wait_for(first, TIMEOUT)
        assert json.loads(event.payload) == {"tag": "t", "value": 7}
        await follow.aclose()

    # the CLI follows it too
    done = cli("get", sid, "--server", c.address, "--key", admin, config=c.config)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["session_id"] == sid

    # a key made on c works on a; revoking it on c ends its stream on a within a second
    made = cli("keys", "create", "--name", "user", config=c.config)
    assert made.returncode == 0, made.stderr
    user_key = made.stdout.strip()
    key_id = user_key.split("_")[1]
    await until_accepted(a.address, user_key)
    async with connect(a.address, user_key) as user:
        own = (await user.open()).session_id
        call = user.stream(own)
        assert (await call.read()).caught_up
        revoked = cli("keys", "revoke", key_id, config=c.config)
        assert revoked.returncode == 0, revoked.stderr
        since = time.monotonic()
        code, details = await asyncio.wait_for(stream_end(call), TIMEOUT)
        took = time.monotonic() - since
        assert code == grpc.StatusCode.UNAUTHENTICATED and key_id in details
        assert took < 1.0, f"the stream ended {took:.2f} s after the revocation"

    # an LDAP sign-in on a works on b; `tokens revoke` on c ends its stream on a within a
    # second, and b refuses it
    async with connect(a.address, "") as anonymous:
        grant = await anonymous.login("alice", "alice-pw")
    await until_accepted(b.address, grant.token)
    async with connect(a.address, grant.token) as alice:
        call = alice.stream(sid)
        assert (await call.read()).caught_up
        revoked = cli("tokens", "revoke", grant.token_id, config=c.config)
        assert revoked.returncode == 0, revoked.stderr
        since = time.monotonic()
        code, details = await asyncio.wait_for(stream_end(call), TIMEOUT)
        took = time.monotonic() - since
        assert code == grpc.StatusCode.UNAUTHENTICATED and grant.token_id in details
        assert took < 1.0, f"the stream ended {took:.2f} s after the revocation"
    refused = await until_accepted(b.address, grant.token, accepted=False)
    assert "has been revoked" in refused

    # b restarts (a clean stop: no error logged) and rebuilds its directory
    b.signal(signal.SIGTERM)
    assert b.wait(30) == 0
    assert no_errors(b.log), b.log
    b2 = node(gateway_process, tmp_path, "b", ports["b"], redis_server.url, stream, ldap)
    async with connect(b2.address, admin) as via_b2:
        assert (await via_b2.get(sid)).session_id == sid  # from the snapshot hash at once
    status, _body = await http_get(b2.http_address, "/readyz")
    assert status == 200
    metrics = (await http_get(a.http_address, "/metrics"))[1]
    for kind in ("key", "credential"):
        assert f'sessiongate_cluster_revocations_applied_total{{kind="{kind}"}} 1.0' in metrics
