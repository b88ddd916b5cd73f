"""API keys (real SQLite file), the bootstrap admin key, and the CLI's client commands."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import stat
import subprocess
import sys

import grpc
import pytest

from sessiongate.testing import write_config
from sessiongate.v1 import gateway_pb2, gateway_pb2_grpc


def _run(*args: str, cwd, config=None, env=None, check_code: int | None = 0):
    argv = [sys.executable, "-m", "sessiongate", *args]
    if config is not None:
        argv += ["--config", str(config)]
    result = subprocess.run(argv, cwd=cwd, env={**os.environ, **(env or {})},
                            capture_output=True, text=True, timeout=60,
                            stdin=subprocess.DEVNULL)
    if check_code is not None:
        assert result.returncode == check_code, (args, result.stdout, result.stderr)
    return result


def _db_bytes(state: pathlib.Path) -> bytes:
    """The key store and its WAL/SHM side files, as bytes."""
    return b"".join(p.read_bytes() for p in sorted(state.glob("keys.sqlite3*")))


@pytest.fixture
def config(tmp_path):
    return write_config(tmp_path / "s.toml", {"state_dir": str(tmp_path / "state"),
                                              "server.grpc_address": "127.0.0.1:0"})


def test_python_m_sessiongate_help(tmp_path):
    result = _run("--help", cwd=tmp_path)
    for command in ("serve", "check-config", "plugins", "keys", "login", "open", "invoke",
                    "stream", "close"):
        assert command in result.stdout
    script = shutil.which("sessiongate", path=os.path.dirname(sys.executable))
    if script:
        same = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=60)
        assert same.returncode == 0 and same.stdout == result.stdout
    # usage errors exit 2
    assert _run("no-such-command", cwd=tmp_path, check_code=None).returncode == 2


def test_keys_create_list_revoke(tmp_path, config):
    state = tmp_path / "state"
    created = _run("keys", "create", "--name", "ci", "--scope", "sessions:admin",
                   "--tag", "line-1", "--init", cwd=tmp_path, config=config)
    key = created.stdout.strip()
    assert created.stdout == key + "\n"  # the secret alone on stdout
    prefix, key_id, secret = key.split("_", 2)
    assert prefix == "sg" and key_id and len(secret) >= 32
    assert key_id in created.stderr and secret not in created.stderr

    # only a digest is stored: neither the secret nor the whole key is in any db file
    data = _db_bytes(state)
    assert data and secret.encode() not in data and key.encode() not in data
    assert stat.S_IMODE((state / "keys.sqlite3").stat().st_mode) == 0o600

    other = _run("keys", "create", "--name", "other", cwd=tmp_path, config=config)
    other_id = other.stdout.strip().split("_", 2)[1]
    listed = [json.loads(line) for line in
              _run("keys", "list", cwd=tmp_path, config=config).stdout.splitlines()]
    assert [(r["key_id"], r["name"], r["revoked"]) for r in listed] == \
        [(key_id, "ci", False), (other_id, "other", False)]
    assert listed[0]["scopes"] == ["sessions:admin"] and listed[0]["tags"] == ["line-1"]
    assert secret not in json.dumps(listed)

    revoked = _run("keys", "revoke", key_id, cwd=tmp_path, config=config)
    assert revoked.stdout == ""
    listed = {r["key_id"]: r for r in map(json.loads, _run(
        "keys", "list", cwd=tmp_path, config=config).stdout.splitlines())}
    assert listed[key_id]["revoked"] is True and listed[other_id]["revoked"] is False

    missing = _run("keys", "revoke", "000000000000", cwd=tmp_path, config=config, check_code=1)
    assert "000000000000" in missing.stderr
    bad = _run("keys", "create", "--name", "x", "--tag", "Bad Tag", cwd=tmp_path, config=config,
               check_code=2)  # bad input
    assert "Bad Tag" in bad.stderr and bad.stdout == ""


def test_key_created_by_the_cli_works_and_revocation_applies_at_once(
        tmp_path, config, gateway_process):
    key = _run("keys", "create", "--name", "app", "--init", cwd=tmp_path,
               config=config).stdout.strip()
    key_id = key.split("_", 2)[1]
    gateway = gateway_process()
    assert gateway.stdout == ""  # the store was not empty: no bootstrap key
    assert not (tmp_path / "state" / "bootstrap-admin.key").exists()
    with grpc.insecure_channel(gateway.address) as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)
        metadata = (("authorization", f"Bearer {key}"),)
        info = stub.OpenSession(gateway_pb2.OpenSessionRequest(client_name="cli-key"),
                                metadata=metadata)
        assert info.owner_key_id == key_id
        _run("keys", "revoke", key_id, cwd=tmp_path, config=config)
        with pytest.raises(grpc.RpcError) as exc:
            stub.GetSession(gateway_pb2.GetSessionRequest(session_id=info.session_id),
                            metadata=metadata)
        assert exc.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "revoked" in exc.value.details()


def test_bootstrap_admin_key_on_an_empty_store(tmp_path, gateway_process):
    gateway = gateway_process()
    key = gateway.stdout.strip()
    assert gateway.stdout == key + "\n" and key.startswith("sg_")
    path = tmp_path / "state" / "bootstrap-admin.key"
    assert path.read_text().strip() == key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o700
    secret = key.split("_", 2)[2]
    assert secret not in gateway.log  # the log names the key id and the file only
    assert key.split("_", 2)[1] in gateway.log
    assert secret.encode() not in _db_bytes(tmp_path / "state")
    with grpc.insecure_channel(gateway.address) as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)
        info = stub.OpenSession(gateway_pb2.OpenSessionRequest(client_name="admin"),
                                metadata=(("authorization", f"Bearer {key}"),))
        assert info.state == gateway_pb2.READY


@pytest.mark.asyncio
async def test_bootstrap_key_only_once(make_gateway, tmp_path):
    first = await make_gateway()
    assert first.gateway.bootstrap_key == first.admin_key
    path = tmp_path / "state" / "bootstrap-admin.key"
    assert path.read_text().strip() == first.admin_key
    await first.stop()
    second = await make_gateway()  # same state dir: the store is not empty
    assert second.gateway.bootstrap_key is None
    assert path.read_text().strip() == first.admin_key
    # the first key still works against the second gateway
    info = await second.client(key=first.admin_key).open(client_name="x")
    assert info.state == gateway_pb2.READY


def test_cli_client_commands(tmp_path, gateway_process):
    gateway = gateway_process()
    key = gateway.stdout.strip()
    env = {"SESSIONGATE_CLIENT_SERVER": gateway.address}
    client = ["--server", gateway.address, "--key", key]

    sid = _run("open", *client, "--client-name", "cli", "--tag", "line-2",
               cwd=tmp_path).stdout.strip()
    assert len(sid) == 32
    # without --key: the bootstrap key in the state dir of --config
    info = json.loads(_run("get", sid, cwd=tmp_path, config=gateway.config, env=env).stdout)
    assert info["session_id"] == sid and info["state"] == "READY" and info["tag"] == "line-2"

    assert json.loads(_run("invoke", *client, sid, "echo", '{"a": 1}',
                           cwd=tmp_path).stdout) == {"a": 1}

    stream = subprocess.Popen(
        [sys.executable, "-m", "sessiongate", "stream", *client, sid, "--max-events", "2"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        stdin=subprocess.DEVNULL)
    try:
        with grpc.insecure_channel(gateway.address) as channel:
            stub = gateway_pb2_grpc.GatewayStub(channel)
            metadata = (("authorization", f"Bearer {key}"),)

            def attached() -> bool:
                request = gateway_pb2.GetSessionRequest(session_id=sid)
                return stub.GetSession(request, metadata=metadata).subscriber_count == 1

            _wait_sync(attached)
        for value in (1, 2):
            assert _run("invoke", *client, sid, "write", json.dumps({"tag": "t", "value": value}),
                        cwd=tmp_path).stdout.strip() == "{}"
        out, err = stream.communicate(timeout=60)
    finally:
        if stream.poll() is None:
            stream.kill()
            stream.communicate()
    assert stream.returncode == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    assert [(e["sequence"], e["kind"], e["payload"]) for e in events] == [
        (1, "data_change", {"tag": "t", "value": 1}), (2, "data_change", {"tag": "t", "value": 2})]

    assert json.loads(_run("invoke", *client, sid, "read", '{"tag": "t"}',
                           cwd=tmp_path).stdout) == {"tag": "t", "value": 2}
    failed = _run("invoke", *client, sid, "nope", cwd=tmp_path, check_code=1)
    assert "INVALID_ARGUMENT" in failed.stderr and "nope" in failed.stderr
    closed = _run("close", *client, sid, cwd=tmp_path)
    assert closed.stdout == "CLOSED\n"
    after = _run("invoke", *client, sid, "echo", "{}", cwd=tmp_path, check_code=1)
    assert "FAILED_PRECONDITION" in after.stderr
    denied = _run("open", "--server", gateway.address, "--key", "sg_x_y", cwd=tmp_path,
                  check_code=1)
    assert "UNAUTHENTICATED" in denied.stderr and denied.stdout == ""


def _wait_sync(predicate, timeout: float = 30.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met"
        time.sleep(0.02)

