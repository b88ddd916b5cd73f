"""pytest plugin with fixtures for sessiongate and its plugins' tests.

``tests/conftest.py`` loads it with ``pytest_plugins = ["sessiongate.core.testing"]``;
third-party plugin authors can do the same.

* ``make_gateway(**overrides)`` starts a real gateway (real worker processes, a real
  grpc.aio server on 127.0.0.1, a real SQLite file) with settings overrides given as
  dotted keys: ``await make_gateway(**{"sessions.max_sessions": 1})``. Plugin
  switches come from the environment (the tox matrix) unless a test overrides them.
* ``gateway_process(...)`` runs ``sessiongate serve`` as a real child process.
* ``@pytest.mark.requires_plugin("fanout")`` skips a test unless the plugin is on in
  the effective settings; ``requires_no_plugin`` the opposite.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_asyncio

__all__ = ["GatewayHandle", "GatewayProcess", "enabled_plugins", "rpc_error", "stream_end",
           "wait_for", "write_config"]

PLUGINS = ("fanout", "reconnect", "acl", "reattach")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}"
                               for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {value!r} as TOML")


def write_config(path: pathlib.Path, overrides: dict[str, Any]) -> pathlib.Path:
    """A user settings file with dotted keys (``a.b = 1`` is valid TOML)."""
    lines = []
    for key, value in overrides.items():
        dotted = ".".join(json.dumps(p) if not re.fullmatch(r"[A-Za-z0-9_-]+", p) else p
                          for p in key.split("."))
        lines.append(f"{dotted} = {_toml_value(value)}")
    path.write_text("\n".join(lines) + "\n")
    return path


def enabled_plugins() -> set[str]:
    """Built-in plugins switched on by the shipped defaults plus the environment."""
    from sessiongate.core.settings import load_settings

    settings = load_settings()
    return {name for name in PLUGINS if settings.get(f"plugins.{name}.enabled") is True}


def pytest_report_header(config: pytest.Config) -> str:
    try:
        return f"sessiongate plugins enabled: {sorted(enabled_plugins())}"
    except Exception as exc:  # invalid env settings: the tests will say more
        return f"sessiongate plugins: settings invalid ({exc})"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    try:
        enabled = enabled_plugins()
    except Exception:
        return
    for item in items:
        for marker in item.iter_markers("requires_plugin"):
            missing = [n for n in marker.args if n not in enabled]
            if missing:
                item.add_marker(pytest.mark.skip(
                    reason=f"needs plugin(s) {', '.join(missing)} (off in this environment)"))
        for marker in item.iter_markers("requires_no_plugin"):
            present = [n for n in marker.args if n in enabled]
            if present:
                item.add_marker(pytest.mark.skip(
                    reason=f"needs plugin(s) {', '.join(present)} off (on in this environment)"))


@pytest.fixture
def short_tmp() -> Iterator[pathlib.Path]:
    """A short temp dir (Unix socket paths are limited to 107 bytes)."""
    path = pathlib.Path(tempfile.mkdtemp(prefix="sg-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


class GatewayHandle:
    """A started in-process gateway and its gRPC server."""

    def __init__(self, gateway: Any, server: Any, admin_key: str, config: pathlib.Path) -> None:
        self.gateway = gateway
        self.server = server
        self.admin_key = admin_key
        self.config = config
        self._channels: list[Any] = []

    @property
    def address(self) -> str:
        return str(self.server.address)

    @property
    def settings(self) -> Any:
        return self.gateway.settings

    def client(self, key: str | None = None) -> Any:
        """A :class:`sessiongate.core.client.GatewayClient` (channel closed at teardown)."""
        import grpc

        from sessiongate.core.client import GatewayClient

        channel = grpc.aio.insecure_channel(self.address)
        self._channels.append(channel)
        return GatewayClient(channel, self.admin_key if key is None else key)

    async def create_key(self, name: str = "user", *, scopes: tuple[str, ...] = (),
                         tags: tuple[str, ...] = ()) -> tuple[str, str]:
        return await self.gateway.keys.create(name, scopes=list(scopes), tags=list(tags))

    async def stop(self) -> None:
        for channel in self._channels:
            await channel.close()
        self._channels.clear()
        await self.server.stop()


@pytest_asyncio.fixture
async def make_gateway(tmp_path: pathlib.Path, short_tmp: pathlib.Path) -> AsyncIterator[Any]:
    """Factory: ``gw = await make_gateway(**{"dotted.key": value})``; stopped at teardown."""
    from sessiongate.core.gateway import Gateway
    from sessiongate.core.plugins import load
    from sessiongate.core.server import GrpcServer

    handles: list[GatewayHandle] = []
    counter = 0

    async def factory(extra_plugins: tuple[Any, ...] = (), **overrides: Any) -> GatewayHandle:
        nonlocal counter
        counter += 1
        values: dict[str, Any] = {
            "state_dir": str(tmp_path / "state"),
            "runtime_dir": str(short_tmp / f"r{counter}"),
            "server.grpc_address": "127.0.0.1:0",
            "server.shutdown_grace_seconds": 2,
            "workers.heartbeat_interval_seconds": 1,
            "workers.stop_timeout_seconds": 3,
        }
        values.update(overrides)
        config = write_config(tmp_path / f"settings-{counter}.toml", values)
        settings, pm = load(str(config), extra_plugins=extra_plugins)
        gateway = Gateway(settings, pm)
        await gateway.start()
        server = GrpcServer(gateway)
        try:
            await server.start()
        except BaseException:
            await gateway.stop()
            raise
        key = gateway.bootstrap_key
        if key is None:
            _key_id, key = await gateway.keys.create("test-admin", scopes=["sessions:admin"])
        handle = GatewayHandle(gateway, server, key, config)
        handles.append(handle)
        return handle

    try:
        yield factory
    finally:
        for handle in reversed(handles):
            await handle.stop()
            # Released workers (reattach) are still our children: end and reap them through
            # asyncio, so their transports close before the loop does.
            for worker in list(handle.gateway.sessions.released):
                proc = worker.process
                if proc is not None and proc.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    await proc.wait()
        # With reattach on, a graceful stop leaves workers running for the next gateway
        # on this state dir; no test wants them to outlive it.
        from sessiongate.core.terminator import home_marker, terminate_leftovers

        await terminate_leftovers(home_marker(tmp_path / "state"))


class GatewayProcess:
    """``sessiongate serve`` as a child process; ``address`` parsed from its log.

    Output goes to files, not pipes: workers inherit the gateway's stderr, so a pipe
    would stay open after the gateway itself is killed.
    """

    _count = 0

    def __init__(self, config: pathlib.Path, cwd: pathlib.Path,
                 env: dict[str, str] | None = None) -> None:
        GatewayProcess._count += 1
        self.config = config
        self.cwd = cwd
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.address = ""
        self.log_path = cwd / f"gateway-{GatewayProcess._count}.log"
        self.out_path = cwd / f"gateway-{GatewayProcess._count}.out"

    def start(self, timeout: float = 30.0) -> GatewayProcess:
        import time

        with open(self.log_path, "wb") as err, open(self.out_path, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "sessiongate", "serve", "--config", str(self.config)],
                cwd=self.cwd, env=self.env, stdout=out, stderr=err,
                stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = re.search(r"listening on (\S+)", self.log)
            if match:
                self.address = match.group(1)
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)  # a log file has no readiness event to wait on
        self.kill()
        raise RuntimeError("gateway did not start:\n" + self.log)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @property
    def stdout(self) -> str:
        return self.out_path.read_text(errors="replace") if self.out_path.exists() else ""


@pytest.fixture
def gateway_process(tmp_path: pathlib.Path, short_tmp: pathlib.Path) -> Iterator[Any]:
    """Factory: ``gateway_process(**overrides)`` → started :class:`GatewayProcess`."""
    procs: list[GatewayProcess] = []

    def factory(env: dict[str, str] | None = None, **overrides: Any) -> GatewayProcess:
        values: dict[str, Any] = {
            "state_dir": str(tmp_path / "state"),
            "runtime_dir": str(short_tmp / "run"),
            "server.grpc_address": "127.0.0.1:0",
            "workers.heartbeat_interval_seconds": 1,
        }
        values.update(overrides)
        config = write_config(tmp_path / f"proc-{len(procs)}.toml", values)
        proc = GatewayProcess(config, tmp_path, env).start()
        procs.append(proc)
        return proc

    try:
        yield factory
    finally:
        for proc in procs:
            if proc.proc is not None and proc.proc.poll() is None:
                proc.signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
        from sessiongate.core.terminator import home_marker, leftover_workers

        for worker in leftover_workers(home_marker(tmp_path / "state")):
            with contextlib.suppress(Exception):
                worker.kill()
                worker.wait(10)


async def stream_end(call: Any) -> tuple[Any, str]:
    """Read a ``StreamEvents`` call to its end: ``(status code, details)``."""
    import grpc

    try:
        while await call.read() is not grpc.aio.EOF:
            pass
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or ""
    return await call.code(), await call.details() or ""


async def rpc_error(awaitable: Any) -> Any:
    """The ``grpc.aio.AioRpcError`` a call ends with; fails the test if it succeeds."""
    import grpc

    with pytest.raises(grpc.aio.AioRpcError) as info:
        await awaitable
    return info.value


async def wait_for(predicate: Any, timeout: float = 10.0, interval: float = 0.01) -> None:
    """Poll a cheap condition until true (for state with no event to wait on)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise TimeoutError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)
