"""A real ``redis-server`` per test module: on a free 127.0.0.1 port, in a temp dir, no
persistence, stopped by the fixture; ``restart()`` stops and starts it on the same port
(a Redis that lost everything, as after a crash without persistence). The acl tests'
real slapd, and a token signing key file for nodes to share.

Without ``redis-server`` the cluster tests are skipped, except in CI (``CI=true``),
where a missing server is a failure (``.ci/run`` installs it).
"""

from __future__ import annotations

import os
import pathlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import pytest

from sessiongate.testing import stop_server

from ..acl import conftest as acl_tests

slapd = acl_tests.slapd  # the test directory server (a session fixture)

START_TIMEOUT = 10.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One throwaway redis-server, a child of the test process."""

    def __init__(self, binary: str, folder: pathlib.Path) -> None:
        self.binary = binary
        self.folder = folder
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        with open(self.folder / "redis.log", "ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
                 "--appendonly", "no", "--dir", str(self.folder), "--daemonize", "no",
                 "--protected-mode", "yes"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT
        while not _answers(self.port):  # no readiness event: poll the port
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start:\n"
                                   + (self.folder / "redis.log").read_text())
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            stop_server(proc)

    def restart(self) -> None:
        """Stop, then start again on the same port, empty."""
        self.stop()
        self.start()


def redis_binary() -> str | None:
    return shutil.which("redis-server") or next(
        (p for p in ("/usr/bin/redis-server", "/usr/sbin/redis-server")
         if os.access(p, os.X_OK)), None)


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    binary = redis_binary()
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("redis-server is not installed (.ci/run installs it)")
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    folder = pathlib.Path(tempfile.mkdtemp(prefix="sg-redis-"))
    server = RedisServer(binary, folder)
    try:
        yield server.start()
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def stopped_redis(redis_server: RedisServer) -> Iterator[RedisServer]:
    """Another redis-server, not started (a Redis that is down), stopped at teardown."""
    binary = redis_server.binary
    server = RedisServer(binary, redis_server.folder / f"late-{free_port()}")
    server.folder.mkdir()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def node_port() -> Any:
    """``node_port()``: a free 127.0.0.1 port for a node's gRPC address (its advertise
    address must be known before it starts)."""
    return free_port


@pytest.fixture
def token_key_file(tmp_path: pathlib.Path) -> str:
    """An Ed25519 signing key for sign-in tokens (PKCS#8 PEM, 0600), for nodes to share
    (``plugins.acl.token_key_file``)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path = tmp_path / "token-key.pem"
    path.write_bytes(Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    path.chmod(0o600)
    return str(path)
