"""pytest plugin with fixtures for sessiongate and its plugins' tests.

``tests/conftest.py`` loads it with ``pytest_plugins = ["sessiongate.testing"]``;
third-party plugin authors can do the same.

* ``make_gateway(**overrides)`` starts a real gateway (real worker processes, a real
  grpc.aio server and its HTTP side port on free ports of 127.0.0.1, a real SQLite
  file) with settings overrides given as dotted keys:
  ``await make_gateway(**{"sessions.max_sessions": 1})``. Plugin switches come from
  the environment (the tox matrix) unless a test overrides them.
* ``gateway_process(...)`` runs ``sessiongate serve`` as a real child process.
* ``@pytest.mark.requires_plugin("fanout")`` skips a test unless the plugin is on in
  the effective settings; ``requires_no_plugin`` the opposite.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest
import pytest_asyncio

if TYPE_CHECKING:
    from sessiongate.client import GatewayClient
    from sessiongate.core.streaming.events import Distributor, Subscription

__all__ = ["DistributorHarness", "GatewayHandle", "GatewayProcess", "enabled_plugins",
           "http_get", "open_streaming", "rpc_error", "stream_end", "toml_key", "toml_value",
           "wait_for", "write_config"]

PLUGINS = ("fanout", "reconnect", "acl", "reattach")


def toml_value(value: Any) -> str:
    """``value`` as a TOML literal: booleans, numbers (``nan``/``inf`` too), strings, lists,
    tuples, inline tables and dates/times.

    Strings are written as UTF-8, not ``\\u`` escapes: JSON escapes a character beyond
    the BMP as a surrogate pair, which TOML refuses; DEL is the one character JSON leaves
    raw that TOML does not accept.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{toml_value(k)} = {toml_value(v)}"
                               for k, v in value.items()) + "}"
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    raise TypeError(f"cannot write {value!r} as TOML")


def toml_key(key: str) -> str:
    """A dotted key (``a.b``: table ``a``, key ``b``), each part bare or quoted as TOML needs."""
    return ".".join(part if re.fullmatch(r"[A-Za-z0-9_-]+", part) else toml_value(part)
                    for part in key.split("."))


def write_config(path: pathlib.Path, overrides: dict[str, Any]) -> pathlib.Path:
    """A user settings file with dotted keys (``a.b = 1`` is valid TOML)."""
    lines = [f"{toml_key(key)} = {toml_value(value)}" for key, value in overrides.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def enabled_plugins() -> set[str]:
    """Built-in plugins switched on by the shipped defaults plus the environment."""
    from sessiongate.core.config.settings import load_settings

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
    def http_address(self) -> str:
        """host:port of the HTTP side port ("" when ``server.http_address`` is off)."""
        return str(self.server.http.address)

    @property
    def settings(self) -> Any:
        return self.gateway.settings

    def client(self, key: str | None = None) -> Any:
        """A :class:`sessiongate.client.GatewayClient` (channel closed at teardown)."""
        import grpc

        from sessiongate.client import GatewayClient

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
    from sessiongate.core.pluginhost.host import load
    from sessiongate.core.rpc.server import GrpcServer

    handles: list[GatewayHandle] = []
    counter = 0

    async def factory(extra_plugins: tuple[Any, ...] = (), **overrides: Any) -> GatewayHandle:
        nonlocal counter
        counter += 1
        values: dict[str, Any] = {
            "state_dir": str(tmp_path / "state"),
            "runtime_dir": str(short_tmp / f"r{counter}"),
            "server.grpc_address": "127.0.0.1:0",
            "server.http_address": "127.0.0.1:0",
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
            # Released workers (reattach) are still our children: end and reap them.
            for worker in list(handle.gateway.sessions.released):
                if worker.process is not None:
                    await end_released_worker(worker.process)
        # With reattach on, a graceful stop leaves workers running for the next gateway
        # on this state dir; no test wants them to outlive it.
        from sessiongate.core.workers.terminator import home_marker, terminate_leftovers

        await terminate_leftovers(home_marker(tmp_path / "state"))


def stop_server(proc: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """Stop a server a test started (slapd, redis-server): SIGTERM, then SIGKILL."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


async def end_released_worker(process: asyncio.subprocess.Process,
                              timeout: float = 30.0) -> None:
    """Kill a worker this gateway released (reattach) and reap it through asyncio.

    A released worker's ``Popen`` is disowned (core/workers/handle.py): ``kill()`` on
    it sends nothing, so the signal goes by pid; asyncio's watcher still reaps it."""
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGKILL)
    await asyncio.wait_for(process.wait(), timeout)


#: the gateway's log lines that say where it listens: gRPC first, then the side port
GRPC_LISTENING = re.compile(r"(?<!http )listening on (\S+)")
HTTP_LISTENING = re.compile(r"http listening on (\S+)")


class GatewayProcess:
    """``sessiongate serve`` as a child process; ``address`` (gRPC) and ``http_address``
    (the side port, when ``http`` says it is on) parsed from its log.

    Output goes to files, not pipes: workers inherit the gateway's stderr, so a pipe
    would stay open after the gateway itself is killed.
    """

    _count = 0

    def __init__(self, config: pathlib.Path, cwd: pathlib.Path,
                 env: dict[str, str] | None = None, *, http: bool = True) -> None:
        GatewayProcess._count += 1
        self.config = config
        self.cwd = cwd
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.address = ""
        self.http = http
        self.http_address = ""
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
            log = self.log
            grpc_line, http_line = GRPC_LISTENING.search(log), HTTP_LISTENING.search(log)
            # a new bootstrap key is printed on stdout once both ports listen, just after
            # their log lines: wait for it too, or a test could read an empty stdout
            key_due = "created bootstrap admin key" in log and not self.stdout.strip()
            if grpc_line and (http_line or not self.http) and not key_due:
                self.address = grpc_line.group(1)
                self.http_address = http_line.group(1) if http_line else ""
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
            "server.http_address": "127.0.0.1:0",
            "workers.heartbeat_interval_seconds": 1,
        }
        values.update(overrides)
        config = write_config(tmp_path / f"proc-{len(procs)}.toml", values)
        proc = GatewayProcess(config, tmp_path, env,
                              http=values["server.http_address"] != "").start()
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
        from sessiongate.core.workers.terminator import home_marker, leftover_workers

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


async def open_streaming(client: GatewayClient, client_name: str = "test",
                         **stream_options: Any) -> tuple[str, Any]:
    """Open a session and attach a stream to it: ``(session id, call)``.

    Returns once the stream's first response, the caught-up marker, has been read: the
    subscription is then registered, so every event the session emits later reaches it.
    """
    sid = (await client.open(client_name=client_name)).session_id
    call = client.stream(sid, **stream_options)
    first = await call.read()
    assert first.caught_up, first
    return sid, call


async def http_get(address: str, path: str, *, ssl: Any = None) -> tuple[int, str]:
    """``GET http(s)://address/path`` on a gateway's side port: ``(status, body text)``.

    :param ssl: an ``ssl.SSLContext`` for a side port that serves TLS (then https).
    """
    import aiohttp

    scheme = "https" if ssl is not None else "http"
    async with aiohttp.ClientSession() as client, \
            client.get(f"{scheme}://{address}{path}", ssl=ssl if ssl is not None else False,
                       allow_redirects=False) as response:
        return response.status, await response.text()


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


class DistributorHarness:
    """A distributor on its own, its callbacks recorded, and a well-behaved worker.

    For unit tests of core's distributor or one a plugin returns from
    ``sg_make_distributor``, without a gateway: ``make`` is called with what core passes
    (``session_id``, ``capacity``, ``policy``, the callbacks, ``stall_timeout``) plus
    ``options`` (``log=``, the distributor's own arguments).

    ``grants`` are the raw values passed to ``grant`` (how many more events the worker
    may send beyond those published so far, or None); ``credits`` the same as the
    worker sees them: the number of events it may have sent in all. Every callback
    wakes :meth:`until`, so a test waits on what happens, never on time.
    """

    def __init__(self, make: Callable[..., Distributor], *, capacity: int = 100,
                 policy: str = "disconnect_subscriber", stall_timeout: float = 30.0,
                 **options: Any) -> None:
        self.faults: list[str] = []
        self.released: list[tuple[Subscription, str]] = []
        self.overflows: list[str] = []
        #: the policy applied to each overflow, in the same order
        self.overflow_policies: list[str] = []
        self.grants: list[int | None] = []
        self.credits: list[int | None] = []
        self.published = 0
        self.next_seq = 1
        self._changed = asyncio.Event()
        self.dist = make(session_id="s1", capacity=capacity, policy=policy,
                         fault_session=self._fault, on_release=self._release,
                         count_overflow=self._overflow, grant=self._grant,
                         stall_timeout=stall_timeout, **options)

    def _grant(self, more: int | None) -> None:
        self.grants.append(more)
        self.credits.append(None if more is None else self.published + more)
        self._changed.set()

    def _overflow(self, kind: str, policy: str) -> None:
        self.overflows.append(kind)
        self.overflow_policies.append(policy)

    def _fault(self, reason: str) -> None:
        self.faults.append(reason)
        self._changed.set()

    def _release(self, sub: Subscription, reason: str) -> None:
        self.released.append((sub, reason))
        self._changed.set()

    def publish(self, n: int, event_bytes: int = 0) -> None:
        """The worker sends the next ``n`` events, ``event_bytes`` each on the wire."""
        from sessiongate.v1.gateway_pb2 import Event

        batch = [Event(sequence=s) for s in range(self.next_seq, self.next_seq + n)]
        self.next_seq += n
        self.published += n
        self.dist.publish(batch, n * event_bytes)

    @property
    def credit(self) -> int | None:
        return self.credits[-1] if self.credits else None

    def publish_to_grant(self, event_bytes: int = 0) -> None:
        """What a well-behaved worker does: send everything its credit allows."""
        assert self.credit is not None
        n = self.credit - self.published
        if n > 0:
            self.publish(n, event_bytes)

    def sub(self, *, after_sequence: int | None = None, **kw: Any) -> Subscription:
        """Subscribe a new :class:`Subscription` built from ``kw``."""
        from sessiongate.core.streaming.events import Subscription

        return self.dist.subscribe(Subscription(**kw), after_sequence=after_sequence)

    async def until(self, done: Callable[[], bool], timeout: float = 10.0) -> None:
        """Wait until ``done()`` holds, checking it after each callback."""
        async with asyncio.timeout(timeout):
            while not done():
                self._changed.clear()
                await self._changed.wait()
