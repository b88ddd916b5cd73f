"""``sessiongate status``: a person's summary of a running gateway, from its /metrics."""

from __future__ import annotations

import json
import subprocess
import sys

import grpc
import pytest

from sessiongate.client import GatewayClient
from sessiongate.testing import open_streaming

pytestmark = pytest.mark.once


def _status(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sessiongate", "status", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)


@pytest.mark.asyncio
async def test_status_sums_up_sessions_subscribers_and_events(tmp_path, gateway_process):
    gateway = gateway_process()
    async with grpc.aio.insecure_channel(gateway.address) as channel:
        client = GatewayClient(channel, gateway.stdout.strip())
        sid, call = await open_streaming(client, "status")
        await client.open(client_name="idle")
        await client.invoke_json(sid, "burst", {"count": 25, "size": 10})
        seen = 0
        while seen < 25:
            seen += len((await call.read()).events)
        result = _status("--server", gateway.http_address, "--json", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        summary = json.loads(result.stdout)
        assert summary["sessions"] == {"READY": 2}
        assert summary["subscribers"] >= 1
        assert summary["events_delivered"] >= 25
        assert summary["events_per_second"] > 0
        assert summary["overflows"] == 0 and summary["faults"] == 0
        text = _status("--server", gateway.http_address, cwd=tmp_path).stdout
        assert text.splitlines()[0] == "sessions:     2 (2 ready)"
        call.cancel()


def test_status_names_a_gateway_it_cannot_reach(tmp_path):
    result = _status("--server", "127.0.0.1:1", cwd=tmp_path)
    assert result.returncode == 1
    assert "cannot read http://127.0.0.1:1/metrics" in result.stderr
    assert "Traceback" not in result.stderr
