"""No secret in plain text anywhere a full run leaves a trace.

One run of real gateway processes (``sessiongate serve``, debug log) with acl, LDAP
login against the test slapd, and reattach on: API keys created and one revoked with
the CLI, sessions opened with a key and with a sign-in token, commands, streams, logins
right and wrong, a token revoked, then a restart that re-adopts the workers (their
nonces rotate). Then every log line (the gateways' stderr, which their workers share,
and the CLI's), every file under ``state_dir`` (SQLite files and their journals read as
bytes) and every worker's ``/proc/PID/environ`` and ``cmdline`` is searched for every
secret of the run: the bootstrap key, the API keys (whole and their secret part), the
LDAP bind password, the login passwords, the issued tokens, and the worker nonces.

How the nonces are known: the gateway hands each worker its nonce on the worker's
stdin, and each rotation inside the Welcome frame; nothing else holds them. The run
sets ``workers.python`` to a small launcher that is the worker itself (same process,
same pid, same argv after the launcher's path, same environment) with its two reading
points wrapped to note what it received in a file outside ``state_dir``. The gateway
is not touched: what it writes anywhere is what it writes in production.
"""

from __future__ import annotations

import base64
import json
import os
import pathlib
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from sessiongate.core.workers.terminator import home_marker, leftover_workers
from sessiongate.v1 import gateway_pb2, gateway_pb2_grpc

from ..plugins.acl import conftest as acl_tests

slapd = acl_tests.slapd  # the test directory server (a session fixture)

TIMEOUT = 60  # seconds a call may take before the test fails (never reached)
#: the plugins this run needs, whatever the environment's plugin set
PLUGINS_ON = {f"SESSIONGATE_PLUGINS__{name.upper()}__ENABLED": "true"
              for name in ("fanout", "reconnect", "acl", "reattach")}

LAUNCHER = '''#!{python}
"""The worker, noting each nonce it receives (the test's eyes; see test_secrets.py)."""
from sessiongate.core import protocol

NOTES = {notes!r}
read_nonce, read_frame = protocol.read_nonce, protocol.read_frame


def note(nonce):
    with open(NOTES, "a") as fh:
        fh.write(nonce.hex() + "\\n")


def noting_read_nonce(fd=0):
    nonce = read_nonce(fd)
    if nonce:
        note(nonce)
    return nonce


async def noting_read_frame(reader, max_bytes):
    frame = await read_frame(reader, max_bytes)
    if frame.WhichOneof("body") == "welcome" and frame.welcome.next_nonce:
        note(frame.welcome.next_nonce)
    return frame


protocol.read_nonce, protocol.read_frame = noting_read_nonce, noting_read_frame

from sessiongate.core.sdk.worker import main  # noqa: E402

raise SystemExit(main())
'''


def _launcher(folder: pathlib.Path, notes: pathlib.Path) -> pathlib.Path:
    path = folder / "worker-python"
    path.write_text(LAUNCHER.format(python=sys.executable, notes=str(notes)))
    path.chmod(0o700)
    return path


class Cli:
    """``sessiongate ARGS --config FILE`` in a child process; its stderr kept as a log."""

    def __init__(self, cwd: pathlib.Path) -> None:
        self.cwd = cwd
        self.config: pathlib.Path | None = None
        self.stderr: list[str] = []

    def __call__(self, *args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "sessiongate", *args, "--config",
                               str(self.config)], cwd=self.cwd, capture_output=True,
                              text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL,
                              env={**os.environ, **PLUGINS_ON})
        self.stderr.append(done.stderr)
        assert done.returncode == 0, done.stderr
        return done.stdout


@pytest.fixture
def channels() -> Iterator[list[grpc.Channel]]:
    """Channels a test opens, closed at its end."""
    opened: list[grpc.Channel] = []
    yield opened
    for channel in opened:
        channel.close()


def _bearer(credential: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {credential}"),)


def _refused(call: Any, *args: Any, **kwargs: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call(*args, timeout=TIMEOUT, **kwargs)
    return info.value.code()


def _use_session(stub: Any, credential: str) -> str:
    """Open a session, stream it, write and read through it; leave it open."""
    metadata = _bearer(credential)
    sid = stub.OpenSession(gateway_pb2.OpenSessionRequest(client_name="secrets"),
                           metadata=metadata, timeout=TIMEOUT).session_id
    stream = stub.StreamEvents(gateway_pb2.StreamEventsRequest(session_id=sid,
                                                               subscriber_id="watch"),
                               metadata=metadata, timeout=TIMEOUT)
    assert next(stream).caught_up
    write = gateway_pb2.InvokeRequest(session_id=sid, command="write",
                                      payload=b'{"tag": "t", "value": 1}')
    stub.Invoke(write, metadata=metadata, timeout=TIMEOUT)
    assert [e.sequence for e in next(stream).events] == [1]
    stream.cancel()
    return sid


def _worker_traces(state: pathlib.Path) -> dict[str, bytes]:
    """The environment and command line of each live worker of ``state``, as /proc
    shows them to anyone running as the same user."""
    out = {}
    for worker in leftover_workers(home_marker(state)):
        for name in ("environ", "cmdline"):
            try:
                out[f"/proc/{worker.pid}/{name}"] = pathlib.Path(
                    f"/proc/{worker.pid}/{name}").read_bytes()
            except FileNotFoundError:
                continue  # it exited meanwhile
    return out


def _forms(value: str | bytes) -> list[bytes]:
    """The ways a secret could be written down: as text, and (nonces) raw, hex, base64."""
    if isinstance(value, str):
        return [value.encode()]
    return [value, value.hex().encode(), value.hex().upper().encode(),
            base64.b64encode(value), base64.urlsafe_b64encode(value).rstrip(b"=")]


def _stub(channels: list[grpc.Channel], address: str) -> Any:
    channels.append(grpc.insecure_channel(address))
    return gateway_pb2_grpc.GatewayStub(channels[-1])


def test_no_secret_in_logs_state_files_or_proc(gateway_process, slapd, channels, tmp_path):
    notes = tmp_path / "nonces.txt"  # outside state_dir, written only by the launcher
    state = tmp_path / "state"  # gateway_process's
    settings = {**slapd.settings(), "log.level": "DEBUG",
                "workers.python": str(_launcher(tmp_path, notes))}
    first = gateway_process(env=PLUGINS_ON, **settings)
    bootstrap = first.stdout.strip()
    stub = _stub(channels, first.address)
    cli = Cli(tmp_path)
    cli.config = first.config

    # API keys: one used, one revoked and then tried, one mangled
    user_key = cli("keys", "create", "--name", "app").strip()
    doomed_key = cli("keys", "create", "--name", "doomed").strip()
    cli("keys", "revoke", doomed_key.split("_", 2)[1])
    listing = gateway_pb2.ListSessionsRequest()
    assert _refused(stub.ListSessions, listing, metadata=_bearer(doomed_key)) == \
        grpc.StatusCode.UNAUTHENTICATED
    assert _refused(stub.ListSessions, listing, metadata=_bearer(user_key + "x")) == \
        grpc.StatusCode.UNAUTHENTICATED
    with_key = _use_session(stub, user_key)
    stub.ListSessions(listing, metadata=_bearer(bootstrap), timeout=TIMEOUT)

    # LDAP logins: two right, one wrong; one token used, the other revoked and tried
    passwords = {name: password for name, (password, _groups) in acl_tests.USERS.items()}
    login = stub.Login
    alice = login(gateway_pb2.LoginRequest(username="alice", password=passwords["alice"]),
                  timeout=TIMEOUT).token
    victor = login(gateway_pb2.LoginRequest(username="victor", password=passwords["victor"]),
                   timeout=TIMEOUT).token
    wrong_password = "not-victors-password"
    assert _refused(login, gateway_pb2.LoginRequest(username="victor",
                                                    password=wrong_password)) == \
        grpc.StatusCode.UNAUTHENTICATED
    with_token = _use_session(stub, alice)
    tokens = [json.loads(line) for line in cli("tokens", "list").splitlines()]
    cli("tokens", "revoke", next(t["token_id"] for t in tokens if t["username"] == "victor"))
    assert _refused(stub.ListSessions, listing, metadata=_bearer(victor)) == \
        grpc.StatusCode.UNAUTHENTICATED
    proc_traces = _worker_traces(state)

    # restart: the workers are re-adopted, their nonces rotated
    first.signal(signal.SIGTERM)
    assert first.wait(timeout=TIMEOUT) == 0
    second = gateway_process(env=PLUGINS_ON, **settings)
    stub = _stub(channels, second.address)
    for sid, credential in ((with_key, user_key), (with_token, alice)):
        info = stub.GetSession(gateway_pb2.GetSessionRequest(session_id=sid),
                               metadata=_bearer(credential), timeout=TIMEOUT)
        assert info.state in (gateway_pb2.READY, gateway_pb2.DETACHED), info
    echo = gateway_pb2.InvokeRequest(session_id=with_key, command="echo", payload=b"{}")
    assert stub.Invoke(echo, metadata=_bearer(user_key), timeout=TIMEOUT).payload == b"{}"
    proc_traces.update(_worker_traces(state))
    stub.CloseSession(gateway_pb2.CloseSessionRequest(session_id=with_token),
                      metadata=_bearer(alice), timeout=TIMEOUT)
    second.signal(signal.SIGTERM)
    assert second.wait(timeout=TIMEOUT) == 0

    # the secrets of the run ...
    nonces = [bytes.fromhex(line) for line in notes.read_text().split()]
    assert len(nonces) >= 4, nonces  # two sessions' first nonces, and both rotated
    secrets: dict[str, str | bytes] = {"LDAP bind password": slapd.service_pw,
                                       "wrong login password": wrong_password}
    secrets.update({f"{name}'s password": password for name, password in passwords.items()})
    for name, key in (("bootstrap key", bootstrap), ("API key", user_key),
                      ("revoked API key", doomed_key)):
        secrets[name] = key
        secrets[f"{name} (secret part)"] = key.split("_", 2)[2]
    for name, token in (("alice's token", alice), ("victor's revoked token", victor)):
        secrets[name] = token
        secrets[f"{name} (signature)"] = token.rsplit(".", 1)[1]
    secrets.update({f"nonce {i}": nonce for i, nonce in enumerate(nonces)})

    # ... and everywhere they could have been written
    traces: dict[str, bytes] = {
        f"state_dir/{path.relative_to(state)}": path.read_bytes()
        for path in sorted(state.rglob("*")) if path.is_file()}
    assert any(name.endswith(".sqlite3") for name in traces), sorted(traces)
    for proc in (first, second):
        traces[f"{proc.log_path.name} (stderr)"] = proc.log_path.read_bytes()
        traces[f"{proc.out_path.name} (stdout)"] = proc.out_path.read_bytes()
    traces["the CLI's stderr"] = "".join(cli.stderr).encode()
    traces.update(proc_traces)
    assert any(name.endswith("/environ") for name in proc_traces), proc_traces
    #: where a secret is meant to be: the bootstrap key is printed once and kept in its
    #: own 0600 file for the deployer (CONTRACT §5)
    meant = {("bootstrap key", "state_dir/bootstrap-admin.key"),
             ("bootstrap key", f"{first.out_path.name} (stdout)")}
    meant |= {(f"{name} (secret part)", where) for name, where in meant}

    leaks = [f"{name} in {where}" for name, value in secrets.items() for where, data in
             traces.items() if (name, where) not in meant
             and any(form in data for form in _forms(value))]
    assert not leaks, "secrets found:\n" + "\n".join(leaks)


@pytest.mark.asyncio
async def test_a_worker_inherits_no_secret_setting_from_the_gateway_environment(
        make_gateway, monkeypatch):
    secret = "bind-password-from-the-environment"
    # as docs/deployers-guide.md advises for the LDAP bind password
    monkeypatch.setenv("SESSIONGATE_PLUGINS__ACL__LDAP__BIND_PASSWORD", secret)
    gw = await make_gateway()
    sid = (await gw.client().open(client_name="env")).session_id
    pid = gw.gateway.sessions.live[sid].worker.pid
    leaked = secret.encode() in pathlib.Path(f"/proc/{pid}/environ").read_bytes()
    assert not leaked, "the worker's /proc/PID/environ holds the gateway's secret setting"
