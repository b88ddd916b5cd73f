"""The CLI with bad input, closed pipes, a gateway that goes away, and no state: through
the real ``python -m sessiongate`` against real gateways. A user never sees a traceback;
bad input is one line naming the cause and the fix, exit status 2."""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import pty
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import tomllib

import grpc
import pytest

from sessiongate.testing import write_config
from sessiongate.v1 import gateway_pb2, gateway_pb2_grpc

ROOT = pathlib.Path(__file__).resolve().parents[2]
#: our own client settings must not leak into a test that checks where keys come from
CLEAN_ENV = {k: v for k, v in os.environ.items()
             if k not in ("SESSIONGATE_CLIENT_KEY", "SESSIONGATE_CLIENT_SERVER")}


def _cli(*args: str, cwd, env=None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sessiongate", *args], cwd=cwd,
                          env={**CLEAN_ENV, **(env or {})}, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def _popen(*args: str, cwd, env=None, **kwargs) -> subprocess.Popen:
    kwargs.setdefault("stdout", subprocess.PIPE)
    kwargs.setdefault("stderr", subprocess.PIPE)
    return subprocess.Popen([sys.executable, "-m", "sessiongate", *args], cwd=cwd,
                            env={**CLEAN_ENV, **(env or {})}, stdin=subprocess.DEVNULL,
                            **kwargs)


def _one_line_usage_error(result: subprocess.CompletedProcess, *words: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.endswith("\n"), result.stderr
    for word in words:
        assert word in result.stderr, (word, result.stderr)


def _stub(gateway):
    channel = grpc.insecure_channel(gateway.address)
    return channel, gateway_pb2_grpc.GatewayStub(channel)


def _wait(predicate, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what} not met within {timeout} s"
        time.sleep(0.02)


def _attached(gateway, key: str, sid: str, count: int = 1) -> None:
    channel, stub = _stub(gateway)
    with channel:
        metadata = (("authorization", f"Bearer {key}"),)
        _wait(lambda: stub.GetSession(gateway_pb2.GetSessionRequest(session_id=sid),
                                      metadata=metadata).subscriber_count == count,
              what="stream attached")


@contextlib.contextmanager
def _reaped(proc: subprocess.Popen):
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


class _PtyReader:
    """A pseudo-terminal for a child's stderr; collects what the child writes to it."""

    def __init__(self) -> None:
        self.master, self.slave = pty.openpty()
        self.data = b""
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:  # EIO: every writer has closed the terminal
                return
            if not chunk:
                return
            self.data += chunk

    @property
    def text(self) -> str:
        return self.data.decode(errors="replace")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.slave)
        self._thread.join(10)
        os.close(self.master)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def served(tmp_path, gateway_process):
    """A real gateway, its admin key, a session with two events, and client flags."""
    gateway = gateway_process()
    key = gateway.stdout.strip()
    client = ["--server", gateway.address, "--key", key]
    sid = _cli("open", *client, cwd=tmp_path).stdout.strip()
    assert len(sid) == 32
    for value in (1, 2):
        _cli("invoke", *client, sid, "write", json.dumps({"tag": "t", "value": value}),
             cwd=tmp_path)
    return gateway, key, client, sid


# -- point 4: negative numbers, closed pipes ------------------------------------------------


@pytest.mark.parametrize("argv, option", [
    (["open", "--lease-seconds", "-1"], "--lease-seconds"),
    (["invoke", "{sid}", "echo", "{{}}", "--timeout-ms", "-1"], "--timeout-ms"),
    (["stream", "{sid}", "--after", "-1"], "--after"),
    (["stream", "{sid}", "--max-events", "-5"], "--max-events"),
    (["open", "--lease-seconds", "99999999999"], "--lease-seconds"),
    (["open", "--lease-seconds", "ten"], "--lease-seconds"),
])
def test_bad_numbers_are_one_line_usage_errors(tmp_path, served, argv, option):
    _gateway, _key, client, sid = served
    result = _cli(*[a.format(sid=sid) for a in argv], *client, cwd=tmp_path)
    _one_line_usage_error(result, option, "--help")


@pytest.mark.parametrize("argv", [["get", "{sid}"], ["stream", "{sid}", "--after", "0"],
                                  ["invoke", "{sid}", "read", '{{"tag": "t"}}']])
def test_output_into_a_closed_pipe_ends_quietly(tmp_path, served, argv):
    _gateway, _key, client, sid = served
    read_end, write_end = os.pipe()
    os.close(read_end)  # like `| head` that has already exited
    try:
        proc = _popen(*[a.format(sid=sid) for a in argv], *client, cwd=tmp_path,
                      stdout=write_end)
    finally:
        os.close(write_end)
    with _reaped(proc):
        _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert err == b"", err.decode()


@pytest.mark.parametrize("more_events", [True, False])
def test_stream_into_head_ends_quietly_after_the_lines_it_wanted(tmp_path, served,
                                                                 more_events):
    _gateway, _key, client, sid = served
    head = subprocess.Popen(["head", "-n", "1"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE)
    with _reaped(head):
        proc = _popen("stream", *client, sid, "--after", "0", cwd=tmp_path, stdout=head.stdin)
        head.stdin.close()
        with _reaped(proc):
            first = head.stdout.read()
            assert head.wait(10) == 0
            if more_events:  # output after head has gone
                _cli("invoke", *client, sid, "write", '{"tag":"t","value":3}', cwd=tmp_path)
            # else the session stays quiet: the CLI must not wait for its next event
            _out, err = proc.communicate(timeout=10)
    assert json.loads(first)["sequence"] == 1
    assert proc.returncode == 0 and err == b"", err.decode()


# -- point 7: a stream whose gateway shuts down ---------------------------------------------


def test_stream_ends_at_once_when_the_gateway_shuts_down(tmp_path, served):
    gateway, key, client, sid = served
    proc = _popen("stream", *client, sid, "--after", "1", cwd=tmp_path, text=True)
    with _reaped(proc):
        _attached(gateway, key, sid)
        gateway.signal(signal.SIGTERM)
        started = time.monotonic()
        out, err = proc.communicate(timeout=20)
        took = time.monotonic() - started
    assert gateway.wait(30) == 0
    assert proc.returncode == 3, (proc.returncode, err)
    assert took < 10
    assert [json.loads(line)["sequence"] for line in out.splitlines()] == [2]
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert "gateway shut down" in err and "reconnecting" not in err
    assert "--follow-restarts" in err and "--after 2" in err  # how to go on


def _help(*args: str, cwd) -> str:
    result = _cli(*args, "--help", cwd=cwd)
    assert result.returncode == 0, result.stderr
    return " ".join(result.stdout.split())


def test_the_shutdown_exit_status_is_documented(tmp_path):
    text = _help("stream", cwd=tmp_path)
    assert "--follow-restarts" in text and re.search(r"exit status 3\b", text), text
    readme = (ROOT / "README.md").read_text()
    assert "--follow-restarts" in readme and re.search(r"status 3\b", readme)


def test_reconnecting_is_one_status_line_on_a_terminal(tmp_path, served):
    gateway, key, client, sid = served
    terminal = _PtyReader()
    try:
        proc = _popen("stream", *client, sid, "--follow-restarts", cwd=tmp_path,
                      stdout=subprocess.PIPE, stderr=terminal.slave)
        with _reaped(proc):
            _attached(gateway, key, sid)
            gateway.signal(signal.SIGTERM)
            assert gateway.wait(30) == 0
            # backoff 0.1, 0.2, 0.4, ... s: a few tries within 3 s
            _wait(lambda: terminal.text.count("\r") >= 4, timeout=15, what="four tries")
            assert proc.poll() is None  # still waiting for the gateway to come back
            proc.send_signal(signal.SIGINT)
            proc.communicate(timeout=20)
        assert proc.returncode == 130
    finally:
        terminal.close()
    text = terminal.text
    assert "Traceback" not in text, text
    # the tries rewrite one line; the line is ended once, when the CLI exits
    shown = text.rstrip("\r\n")
    assert "\n" not in shown, text
    assert "reconnecting" in shown and "gateway shut down" in shown, text


def test_reconnecting_without_a_terminal_is_one_line_per_outage(tmp_path, served):
    gateway, key, client, sid = served
    proc = _popen("stream", *client, sid, "--follow-restarts", cwd=tmp_path, text=True)
    with _reaped(proc):
        _attached(gateway, key, sid)
        gateway.signal(signal.SIGTERM)
        assert gateway.wait(30) == 0
        time.sleep(3)  # several tries
        assert proc.poll() is None
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=20)
    assert proc.returncode == 130
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and "reconnecting" in lines[0] and "\r" not in err, err


@pytest.mark.requires_plugin("reattach", "fanout", "reconnect")
def test_follow_restarts_resumes_across_a_reattach_restart(tmp_path, gateway_process):
    settings = {"server.grpc_address": f"127.0.0.1:{_free_port()}",
                "plugins.reattach.adoption_window_seconds": 20}
    first = gateway_process(**settings)
    key = first.stdout.strip()
    client = ["--server", first.address, "--key", key]
    sid = _cli("open", *client, cwd=tmp_path).stdout.strip()
    _cli("invoke", *client, sid, "write", '{"tag":"t","value":1}', cwd=tmp_path)
    proc = _popen("stream", *client, sid, "--follow-restarts", "--after", "0",
                  cwd=tmp_path, text=True)
    with _reaped(proc):
        _attached(first, key, sid)
        first.signal(signal.SIGTERM)
        assert first.wait(30) == 0
        time.sleep(1)  # a few tries against no gateway
        second = gateway_process(**settings)
        assert second.address == first.address
        _attached(second, key, sid)
        _cli("invoke", *client, sid, "write", '{"tag":"t","value":2}', cwd=tmp_path)
        _cli("close", *client, sid, cwd=tmp_path)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert [json.loads(line)["sequence"] for line in out.splitlines()] == [1, 2]
    assert "gateway shut down" in err and "reconnected" in err, err


# -- point 8: outside the start folder -------------------------------------------------------


def test_unauthenticated_says_where_the_key_was_looked_for(tmp_path, gateway_process):
    gateway = gateway_process()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = _cli("open", "--server", gateway.address, cwd=elsewhere)
    assert result.returncode == 1 and result.stdout == ""
    err = result.stderr
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert "UNAUTHENTICATED" in err
    for hint in ("--key", "SESSIONGATE_CLIENT_KEY", ".sessiongate/bootstrap-admin.key",
                 str(elsewhere / ".sessiongate" / "bootstrap-admin.key")):
        assert hint in err, (hint, err)

    refused = _cli("open", "--server", gateway.address, cwd=elsewhere,
                   env={"SESSIONGATE_CLIENT_KEY": "sg_000000000000_nope"})
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1, refused.stderr
    assert "UNAUTHENTICATED" in refused.stderr
    assert "from SESSIONGATE_CLIENT_KEY" in refused.stderr, refused.stderr


@pytest.mark.parametrize("argv", [["keys", "list"], ["keys", "create", "--name", "x"],
                                  ["keys", "revoke", "000000000000"]])
def test_keys_in_a_folder_without_state_create_nothing(tmp_path, argv):
    result = _cli(*argv, cwd=tmp_path)
    state = tmp_path / ".sessiongate"
    _one_line_usage_error(result, str(state), "state_dir", "--config")
    if argv[1] != "revoke":
        assert "--init" in result.stderr
    assert not state.exists()


def test_keys_init_creates_a_private_store(tmp_path):
    created = _cli("keys", "create", "--name", "x", "--init", cwd=tmp_path)
    assert created.returncode == 0, created.stderr
    assert created.stdout.startswith("sg_")
    state = tmp_path / ".sessiongate"
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    listed = _cli("keys", "list", cwd=tmp_path)  # now there is one: no --init needed
    assert listed.returncode == 0 and json.loads(listed.stdout)["name"] == "x"
    again = _cli("keys", "list", "--init", cwd=tmp_path)  # --init on an existing store
    assert again.returncode == 0 and again.stdout == listed.stdout


# -- point 9: scopes, file modes, get, close -------------------------------------------------


def test_keys_create_accepts_only_known_scopes(tmp_path):
    config = write_config(tmp_path / "s.toml", {"state_dir": str(tmp_path / "state")})
    ok = _cli("keys", "create", "--name", "ops", "--scope", "sessions:admin", "--init",
              "--config", str(config), cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    bad = _cli("keys", "create", "--name", "typo", "--scope", "session:admin",
               "--config", str(config), cwd=tmp_path)
    _one_line_usage_error(bad, "session:admin", "sessions:admin")
    names = [json.loads(line)["name"] for line in
             _cli("keys", "list", "--config", str(config), cwd=tmp_path).stdout.splitlines()]
    assert names == ["ops"]


def test_key_store_side_files_are_private(tmp_path, gateway_process):
    gateway_process()  # creates the store and keeps it open
    state = tmp_path / "state"
    files = sorted(state.glob("keys.sqlite3*"))
    assert {p.name for p in files} >= {"keys.sqlite3", "keys.sqlite3-wal", "keys.sqlite3-shm"}
    assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == \
        {p.name: "0o600" for p in files}


def test_get_prints_every_field_and_numbers_as_numbers(tmp_path, served):
    _gateway, _key, client, sid = served
    result = _cli("get", *client, sid, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["last_sequence"] == 2 and info["subscriber_count"] == 0
    assert info["tag"] == "" and info["reason"] == "" and info["state"] == "READY"
    assert set(info) == {f.name for f in gateway_pb2.SessionInfo.DESCRIPTOR.fields}


def test_close_prints_the_final_state_on_stdout(tmp_path, served):
    _gateway, _key, client, sid = served
    result = _cli("close", *client, sid, cwd=tmp_path)
    assert result.returncode == 0 and result.stdout == "CLOSED\n", result


# -- point 10: the README's walk-through -----------------------------------------------------


README = (ROOT / "README.md").read_text()
HEAD = README.split("\n---\n", 1)[0]


def _walkthrough() -> str:
    return README.split("## A 5-minute walk-through", 1)[1].split("\n## ", 1)[0]


def test_readme_does_not_start_the_gateway_twice():
    walk = _walkthrough()
    assert "leave it running" in walk and "second terminal" in walk
    step1 = walk.split("**2.", 1)[0]
    commands = [line for line in step1.splitlines() if line.startswith("$ ")]
    assert "$ sessiongate serve" not in commands, "step 1 starts a second gateway"


def _normalised(line: str) -> str:
    line = re.sub(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}\s+", "", line)
    line = re.sub(r"sg_\S+", "SECRET", line)
    line = re.sub(r"(written to )\S+", r"\1PATH", line)
    line = re.sub(r"\b[0-9a-f]{12,32}\b", "ID", line)
    line = re.sub(r"\d+", "N", line)
    return " ".join(line.split())


def test_readme_step_1_shows_what_a_terminal_shows(tmp_path):
    """What ``sessiongate serve`` writes to a terminal (stdout and stderr together)."""
    block = _walkthrough().split("**2.", 1)[0]
    sample = re.search(r"```console\n(.*?)```", block, re.S)
    assert sample, "step 1 shows the gateway's output"
    sample_lines = [_normalised(line) for line in sample.group(1).splitlines()
                    if line.strip() and not line.startswith("$ ")]
    # the shipped defaults, apart from the address; nothing from our environment
    config = write_config(tmp_path / "c.toml", {"server.grpc_address": "127.0.0.1:0",
                                                "server.http_address": "127.0.0.1:0"})
    env = {k: v for k, v in CLEAN_ENV.items() if not k.startswith("SESSIONGATE_")}
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "sessiongate", "serve", "--config",
                             str(config)], cwd=tmp_path, env=env, stdin=subprocess.DEVNULL,
                            stdout=slave, stderr=slave)
    os.close(slave)
    seen = b""
    try:
        deadline = time.monotonic() + 30
        while b"worker started" not in seen or b"sg_" not in seen:
            assert time.monotonic() < deadline, seen.decode(errors="replace")
            seen += os.read(master, 65536)
    finally:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(OSError):
            while os.read(master, 65536):
                pass
        proc.wait(30)
        os.close(master)
    lines = [_normalised(line) for line in seen.decode().splitlines() if line.strip()]
    # the spare worker starts beside the server: its line may come a little earlier
    assert sorted(sample_lines) == sorted(lines[:len(sample_lines)]), (sample_lines, lines)
    # the secret comes once both ports listen, right after the side port's line
    listening = next(i for i, line in enumerate(lines) if "http listening on" in line)
    assert lines[listening + 1] == "SECRET"
    sample_listening = next(i for i, line in enumerate(sample_lines)
                            if "http listening on" in line)
    assert sample_lines[sample_listening + 1] == "SECRET"


def test_readme_names_what_ci_installs_and_how_long_the_tests_take():
    ci = (ROOT / ".ci" / "run").read_text()
    packages = re.search(r"^packages=\(([^)]*)\)", ci, re.M).group(1).split()
    for package in packages:
        assert package in HEAD, package
    assert "cluster" in HEAD and "redis-server" in HEAD  # why: the cluster plugin's tests
    assert "chromium" in HEAD and "playwright install" in HEAD  # the browser, never downloaded
    assert re.search(r"took \d+ s\b", HEAD), "how long the test command takes, measured"


def test_readme_says_acl_is_on_in_the_walkthrough():
    shipped = tomllib.loads((ROOT / "settings" / "settings.toml").read_text())
    assert shipped["plugins"]["acl"]["enabled"] is True
    walk = _walkthrough()
    assert re.search(r"acl[^.]*on by default", walk), "the walk-through says acl is on"
