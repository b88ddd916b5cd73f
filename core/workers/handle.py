"""The gateway side of one worker: socket, process, handshake, commands, heartbeats.

Per session the gateway listens on its own Unix socket (mode 0600, in the 0700
runtime dir), starts ``python -m sessiongate.core.sdk`` with the socket path
in its environment, hands it a fresh 32-byte nonce over its stdin (never the
environment or argv, which the same user can read in /proc), and accepts the first
connection that comes from that process (the kernel's SO_PEERCRED) and presents
that nonce (checked in constant time against its SHA-256 digest; the gateway keeps
only the digest once the nonce is handed over). At each re-adoption the nonce is
rotated: the Welcome carries the next one. Anything that goes
wrong on the connection (EOF, an oversized or malformed frame, silence past the
heartbeat timeout, the process exiting) faults that session only.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import os
import secrets
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import psutil

from sessiongate.core import protocol
from sessiongate.core.errors import (
    DeadlineExceeded,
    GatewayError,
    Internal,
    InvalidArgument,
    ResourceExhausted,
    Unavailable,
)
from sessiongate.core.metrics import MAX_COMMAND_NAMES, OTHER, status_code
from sessiongate.core.tasks import OwnedTasks
from sessiongate.core.workers import terminator
from sessiongate.v1 import worker_pb2

if TYPE_CHECKING:
    from sessiongate.core.metrics import Metrics

__all__ = ["WORKER_MODULE", "CommandCounter", "StartTimeout", "WorkerConfig", "WorkerHandle",
           "nonce_digest"]

log = logging.getLogger("sessiongate.workers")

#: the prefix of every setting given in the environment; a worker inherits none
SETTINGS_ENV_PREFIX = "SESSIONGATE_"

WORKER_MODULE = terminator.WORKER_MODULE
EVENTS_FIRST_BYTE = bytes([protocol.EVENTS_TAG])
#: the pump's sink: (encoded events, frame size in bytes, events were dropped right before)
EventSink = Callable[[list[bytes], int, bool], None]
SUN_PATH_MAX = 107
#: how the SDK's reply to a command its backend does not declare starts
#: (core/sdk/worker.py, WorkerRuntime._run_command)
UNKNOWN_COMMAND = "unknown command "


class StartTimeout(Unavailable):
    """The worker did not become ready in time (no valid connection came)."""


def nonce_digest(nonce: bytes) -> bytes:
    return hashlib.sha256(nonce).digest()


def _peer_pid(writer: asyncio.StreamWriter) -> int | None:
    """The pid of the process at the other end of a Unix socket, as the kernel says."""
    sock = writer.get_extra_info("socket")
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except (AttributeError, OSError):
        return None
    return struct.unpack("3i", creds)[0]


class CommandCounter:
    """Counts Invoke commands by name and status code, with their latency. A name is a
    label value once some worker answered it as a command it knows (so one a backend
    declares), for at most ``MAX_COMMAND_NAMES`` names; the rest count as "other" (a
    client may send any name)."""

    def __init__(self, metrics: Metrics | None) -> None:
        self._metrics = metrics
        self._known: set[str] = set()

    def answered(self, command: str, reply: worker_pb2.Reply) -> None:
        """A worker replied to ``command``: learn the name unless it did not know it."""
        if command in self._known or len(self._known) >= MAX_COMMAND_NAMES:
            return
        if not (reply.status == worker_pb2.REPLY_INVALID_ARGUMENT
                and reply.error.startswith(UNKNOWN_COMMAND)):
            self._known.add(command)

    def count(self, command: str, error: BaseException | None, seconds: float) -> None:
        if self._metrics is None:
            return
        name = command if command in self._known else OTHER
        self._metrics.inc("commands", command=name, code=status_code(error))
        self._metrics.observe("command_seconds", seconds, command=name)


def _exit_class(returncode: int | None) -> str:
    if returncode is None:
        return "unknown"  # not our child (re-adopted): its status cannot be read
    return "clean" if returncode == 0 else "error" if returncode > 0 else "signal"


def lower_priority(pid: int, steps: int) -> None:
    """Run worker ``pid`` ``steps`` nice levels below the gateway (at most 19).

    CPU time is shared out per runnable process - and, where the kernel groups
    processes by session (``sched_autogroup``), per session first: every worker
    leads its own session, so without this hundreds of busy workers leave the one
    gateway process that serves them all a sliver of the CPU, and its calls wait
    until clients give up. Both the process's niceness and its session group's are
    set (raising them needs no privilege). Set from here, once the worker is Ready,
    not in the child: in effect before its first event, inherited by whatever it
    starts. A process already gone has nothing to lower.
    """
    if steps <= 0:
        return
    target = min(19, os.getpriority(os.PRIO_PROCESS, 0) + steps)
    with contextlib.suppress(ProcessLookupError):
        os.setpriority(os.PRIO_PROCESS, pid, target)
    try:  # absent without CONFIG_SCHED_AUTOGROUP; refused in some containers
        with open(f"/proc/{pid}/autogroup", "w") as group:
            group.write(str(target))
    except OSError:
        pass


class WorkerConfig:
    """The worker-related settings, read once, and where workers are counted (a gateway's
    metrics; None: not counted)."""

    def __init__(self, settings: Any, metrics: Metrics | None = None) -> None:
        w = settings.workers
        self.python = w.python or sys.executable
        self.nice = int(w.nice)
        self.start_timeout = float(w.start_timeout_seconds)
        self.stop_timeout = float(w.stop_timeout_seconds)
        self.max_frame = int(w.max_frame_bytes)
        self.heartbeat_interval = float(w.heartbeat_interval_seconds)
        self.heartbeat_timeout = float(w.heartbeat_timeout_seconds)
        self.max_pending = int(settings.sessions.max_pending_commands)
        self.command_timeout = float(settings.sessions.command_timeout_seconds)
        self.metrics = metrics
        self.commands = CommandCounter(metrics)
        #: events received from workers, counted once per frame
        self.count_received: Callable[[float], None] = (
            metrics.child("events_received") if metrics is not None else _uncounted)


def _uncounted(amount: float = 1) -> None:
    """A count nobody reads (a handle built without metrics: unit tests)."""


class WorkerHandle:
    """Owns one worker process and its connection; every task it starts, it cancels.

    :param on_events: the pump's sink: called with each batch of encoded ``Event``
        bodies, in order, with the frame's size in bytes and whether the worker dropped
        events right before it.
    :param on_fault: called once with a reason when the worker is lost unexpectedly.
    """

    def __init__(self, *, session_id: str, socket_path: str, config: WorkerConfig,
                 on_events: EventSink, on_fault: Callable[[str], None],
                 on_frame: Callable[[worker_pb2.WorkerFrame], None] | None = None,
                 on_exit: Callable[[int, int | None], None] | None = None) -> None:
        if len(os.fsencode(socket_path)) > SUN_PATH_MAX:
            raise Internal(f"worker socket path is too long for a Unix socket "
                           f"({len(socket_path)} > {SUN_PATH_MAX}): choose a shorter runtime_dir")
        self.session_id = session_id
        self.socket_path = socket_path
        self.config = config
        self._on_events = on_events
        self._on_fault = on_fault
        self._on_frame = on_frame
        self._on_exit = on_exit
        self._exit_reported = False
        self.nonce_digest = b""
        self.pid: int | None = None
        self.returncode: int | None = None
        self.process: asyncio.subprocess.Process | None = None
        #: a worker started by an earlier gateway (reattach): not our child
        self.foreign: psutil.Process | None = None
        self._server: asyncio.AbstractServer | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._ready: asyncio.Future[None] | None = None
        self._pending: dict[int, asyncio.Future[worker_pb2.Reply]] = {}
        self._next_id = 0
        self._tasks = OwnedTasks(session_id=session_id)
        self._last_seen = 0.0
        self._stopping = False
        self.lost_reason = ""
        #: why, for a metric label (session_faults' cause)
        self.lost_cause = ""
        #: why the last connection was refused (bad_nonce, pid_mismatch, failed), if one was
        self.refusal = ""
        self._starting: asyncio.Future[asyncio.subprocess.Process] | None = None
        self._nonce = b""
        #: the event credit: events the worker may send on its connection in all
        #: (None: freely), and the events received on it so far
        self._credit: int | None = None
        self._received = 0

    # -- start -------------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        """Its process runs (as far as we know) and its connection was not lost."""
        return bool(self.pid) and not self.lost_reason and self.returncode is None

    async def listen(self, nonce_digest_: bytes) -> None:
        """Open the session's socket and accept a worker presenting this nonce digest."""
        self.nonce_digest = nonce_digest_
        self._ready = asyncio.get_running_loop().create_future()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)
        self._server = await asyncio.start_unix_server(self._on_connect, path=self.socket_path)
        os.chmod(self.socket_path, 0o600)

    def bind(self, *, on_events: EventSink, on_fault: Callable[[str], None],
             on_exit: Callable[[int, int | None], None] | None = None,
             on_frame: Callable[[worker_pb2.WorkerFrame], None] | None = None) -> None:
        """Point a spare worker at the session that takes it."""
        self._on_events, self._on_fault = on_events, on_fault
        self._on_exit, self._on_frame = on_exit, on_frame

    async def spawn(self, *, backend_spec: str, backend_name: str, env_extra: dict[str, str],
                    launch_hook: Callable[[list[str], dict[str, str]], None],
                    options: dict[str, Any] | None = None) -> None:
        """Start the worker process; it imports everything, then waits for :meth:`go`.

        The nonce stays in memory until :meth:`go` writes it to the worker's stdin.
        """
        self._nonce = secrets.token_bytes(32)  # memory only, until go() hands it over
        self.nonce_digest = nonce_digest(self._nonce)
        argv = [self.config.python, "-m", WORKER_MODULE]
        # The gateway's own settings (SESSIONGATE_*: an LDAP bind password, say) are not
        # the worker's business and would be readable in /proc/PID/environ.
        env = {name: value for name, value in os.environ.items()
               if not name.startswith(SETTINGS_ENV_PREFIX)}
        env.update(env_extra)
        env.update({
            protocol.SOCKET_ENV: self.socket_path,
            protocol.SESSION_ENV: self.session_id,
            protocol.BACKEND_ENV: backend_spec,
            protocol.MAX_FRAME_ENV: str(self.config.max_frame),
            protocol.OPTIONS_ENV: json.dumps({"backend_name": backend_name, **(options or {})}),
        })
        launch_hook(argv, env)
        # A stop() during this await must find the process, or it would stop nothing and
        # the worker would live on: it awaits the same start.
        self._starting = asyncio.ensure_future(asyncio.create_subprocess_exec(
            *argv, env=env, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL, start_new_session=True))
        try:
            self.process = await asyncio.shield(self._starting)
        finally:
            env.clear()
        self.pid = self.process.pid
        log.info("session %s: worker started (pid %d, backend %s)", self.session_id, self.pid,
                 backend_name)
        self._tasks.spawn(self._reap(), "reap")

    async def go(self) -> None:
        """Open the socket, let the worker connect, wait until it is Ready."""
        assert self.process is not None and self.process.stdin is not None
        if self._stopping:
            raise Unavailable(f"session {self.session_id}: {self.lost_reason or 'stopped'} "
                              "while its worker was starting")
        await self.listen(self.nonce_digest)
        nonce, self._nonce = self._nonce, b""
        try:  # the nonce goes over the worker's stdin, a pipe only it and we hold
            self.process.stdin.write(nonce.hex().encode() + b"\n")
            await self.process.stdin.drain()
            self.process.stdin.close()
        except (ConnectionError, RuntimeError):
            pass  # it died while waiting: the reaper reports why, wait_ready raises
        await self.wait_ready(self.config.start_timeout)
        # only now: its start-up (imports, handshake) is bounded by start_timeout and
        # must not crawl behind busy workers at the lowest priority
        lower_priority(self.pid, self.config.nice)

    async def expect(self, *, nonce_digest_: bytes, pid: int, create_time: float) -> None:
        """Listen for a worker started by an earlier gateway instance (its Adopt frame)."""
        self.pid = pid
        self.foreign = terminator.our_worker(pid, create_time, self.session_id)
        if self.foreign is not None:
            self._tasks.spawn(self._watch_foreign(self.foreign), "foreign-exit")
        await self.listen(nonce_digest_)

    async def wait_ready(self, timeout: float) -> None:
        assert self._ready is not None
        try:
            await asyncio.wait_for(asyncio.shield(self._ready), timeout)
        except TimeoutError:
            raise StartTimeout(f"worker of session {self.session_id} did not become ready "
                               f"within {timeout:g} s") from None

    async def _reap(self) -> None:
        assert self.process is not None
        self.returncode = await self.process.wait()
        self._exited(f"code {self.returncode}")

    async def _watch_foreign(self, proc: psutil.Process) -> None:
        await terminator.foreign_exit(proc)
        self._exited("not this gateway's child: code unknown")

    def _exited(self, status: str) -> None:
        """The process has ended: say so once, report it (``on_exit``), fail what waits."""
        if self._exit_reported:
            return
        self._exit_reported = True
        level = logging.INFO if self._stopping else logging.WARNING
        log.log(level, "session %s: worker exited (pid %s, %s)", self.session_id, self.pid,
                status)
        if self.config.metrics is not None:
            self.config.metrics.inc("worker_exits", code_class=_exit_class(self.returncode),
                                    expected="true" if self._stopping else "false")
        if self._on_exit is not None and self.pid is not None:
            self._on_exit(self.pid, self.returncode)
        self._lost(f"worker exited with code {self.returncode}" if self.returncode is not None
                   else "worker exited", "worker_exited")

    # -- connection --------------------------------------------------------------------

    async def _on_connect(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        try:
            frame = await asyncio.wait_for(protocol.read_frame(reader, 4096),
                                           self.config.start_timeout)
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError,
                protocol.FrameError) as exc:
            log.warning("session %s: worker connection refused: no valid hello (%s)",
                        self.session_id, type(exc).__name__)
            writer.close()
            return
        if not self.accept(frame, writer):
            writer.close()
            return
        self._tasks.spawn(self._read_loop(reader), "worker-reader")
        self._tasks.spawn(self._heartbeats(), "worker-heartbeat")

    def accept(self, frame: worker_pb2.WorkerFrame, writer: asyncio.StreamWriter) -> bool:
        """Check a hello/adopt frame; on success take the connection and say Welcome."""
        kind = frame.WhichOneof("body")
        hello: Any = getattr(frame, kind) if kind in ("hello", "adopt") else None
        if hello is None:
            log.warning("session %s: worker connection refused: first frame was %s",
                        self.session_id, kind)
            self.refusal = "failed"
            return False
        good_nonce = hmac.compare_digest(nonce_digest(hello.nonce), self.nonce_digest)
        if not good_nonce or hello.session_id != self.session_id:
            log.warning("session %s: worker connection refused: wrong nonce or session "
                        "(pid %s)", self.session_id, hello.pid)
            self.refusal = "bad_nonce"
            return False
        if hello.protocol_version != protocol.PROTOCOL_VERSION:
            log.warning("session %s: worker connection refused: protocol %d, expected %d",
                        self.session_id, hello.protocol_version, protocol.PROTOCOL_VERSION)
            self.refusal = "failed"
            return False
        if self._writer is not None:
            log.warning("session %s: second worker connection refused", self.session_id)
            return False
        peer = _peer_pid(writer)
        if hello.pid != peer or (self.pid and peer != self.pid):
            log.warning("session %s: worker connection refused: it comes from pid %s, "
                        "not the session's worker (pid %s)", self.session_id, peer, self.pid)
            self.refusal = "pid_mismatch"
            return False
        self._writer = writer
        self._last_seen = asyncio.get_running_loop().time()
        self.pid = self.pid or hello.pid
        welcome = worker_pb2.Welcome(
            heartbeat_interval_ms=int(self.config.heartbeat_interval * 1000),
            max_frame_bytes=self.config.max_frame, credit=protocol.credit(self._credit))
        if kind == "adopt":  # rotate: the nonce that got it here is spent
            welcome.next_nonce = secrets.token_bytes(32)
            self.nonce_digest = nonce_digest(welcome.next_nonce)
        writer.write(protocol.encode(worker_pb2.WorkerFrame(welcome=welcome)))
        if self._server is not None:  # one worker per session: stop listening
            self._server.close()
            self._server = None
        if kind == "adopt" and self._on_frame is not None:
            self._on_frame(frame)
        return True

    async def _read_loop(self, reader: asyncio.StreamReader) -> None:
        loop = asyncio.get_running_loop()
        max_frame = self.config.max_frame
        on_events = self._on_events
        count_received = self.config.count_received
        try:
            while True:
                data = await protocol.read_frame_bytes(reader, max_frame)
                self._last_seen = loop.time()
                if data[:1] == EVENTS_FIRST_BYTE:  # the hot path: events pass through encoded
                    bodies, overrun = protocol.parse_raw_events(data)
                    if bodies:
                        self._received += len(bodies)
                        count_received(len(bodies))
                        on_events(bodies, len(data), overrun)
                    continue
                frame = protocol.parse_frame(data)
                kind = frame.WhichOneof("body")
                if kind == "reply":
                    future = self._pending.pop(frame.reply.request_id, None)
                    if future is not None and not future.done():
                        future.set_result(frame.reply)
                elif kind == "ready":
                    if self._ready is not None and not self._ready.done():
                        self._ready.set_result(None)
                elif kind == "heartbeat":
                    pass
                elif self._on_frame is not None and kind == "history":
                    self._on_frame(frame)
                else:
                    raise protocol.MalformedFrame(f"unexpected {kind} frame from the worker")
        except protocol.FrameError as exc:
            log.error("session %s: %s; the worker is stopped", self.session_id, exc)
            self._lost(str(exc), "protocol_error")
            self.kill()
        except (asyncio.IncompleteReadError, ConnectionError):
            if self.process is not None and self.returncode is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(self.process.wait()), 1.0)
            if self.returncode is not None:
                self._lost(f"worker exited with code {self.returncode}", "worker_exited")
            else:
                self._lost("worker connection closed", "worker_disconnected")
        except Exception as exc:  # a bug in a sink must still fault only this session
            log.exception("session %s: event handling failed", self.session_id)
            self._lost(f"internal error while reading the worker: {type(exc).__name__}",
                       "internal")
            self.kill()

    async def _heartbeats(self) -> None:
        loop = asyncio.get_running_loop()
        beat = protocol.encode(worker_pb2.WorkerFrame(heartbeat=worker_pb2.Heartbeat()))
        while self._writer is not None:
            await asyncio.sleep(self.config.heartbeat_interval)
            if self._writer is None or self._writer.is_closing():
                return  # the connection ended while we slept: nothing to keep alive
            if loop.time() - self._last_seen > self.config.heartbeat_timeout:
                log.error("session %s: no frame from the worker for %.0f s", self.session_id,
                          loop.time() - self._last_seen)
                if self.config.metrics is not None:
                    self.config.metrics.inc("worker_heartbeat_timeouts")
                self._lost(f"worker silent for more than {self.config.heartbeat_timeout:g} s",
                           "heartbeat_timeout")
                self.kill()
                return
            self._write(beat)

    def _write(self, data: bytes) -> None:
        writer = self._writer
        if writer is None or writer.is_closing():
            raise Unavailable(f"worker of session {self.session_id} is not connected")
        writer.write(data)

    def _lost(self, reason: str, cause: str = "other") -> None:
        """The worker is gone: fail waiters, fault the session (unless we are stopping).

        :param cause: a few words for the session_faults metric (worker_exited...).
        """
        if self.lost_reason:
            return
        self.lost_reason = reason
        self.lost_cause = cause
        self.abort_commands(Unavailable(f"session {self.session_id}: {reason}"))
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if not self._stopping:
            self._on_fault(reason)

    def abort_commands(self, error: GatewayError) -> None:
        """Fail the start-up wait and every command in flight with ``error``.

        Called with the first cause (the session's fault, the gateway's shutdown), so
        callers hear that cause rather than the worker's exit that follows from it.
        """
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(error)
            self._ready.exception()  # retrieved: the opener reads it through wait_ready
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(error)

    # -- flow control ------------------------------------------------------------------

    def grant(self, more: int | None) -> None:
        """Let the worker send ``more`` events beyond those received so far (None:
        freely). Remembered while it is not connected: the Welcome carries it.
        """
        self._credit = None if more is None else self._received + more
        writer = self._writer
        if writer is not None and not writer.is_closing():
            writer.write(protocol.encode(worker_pb2.WorkerFrame(
                credit=protocol.credit(self._credit))))

    # -- commands ----------------------------------------------------------------------

    async def invoke(self, command: str, payload: bytes, timeout: float | None,
                     metadata: Mapping[str, str] | None = None) -> bytes:
        """Run ``command`` in the worker; ``metadata`` travels with it (the call
        metadata core forwards: the backend reads it as ``Backend.metadata``). Counted
        by command and outcome, timed."""
        started = time.perf_counter()
        error: BaseException | None = None
        try:
            return await self._invoke(command, payload, timeout, metadata)
        except BaseException as exc:
            error = exc
            raise
        finally:
            self.config.commands.count(command, error, time.perf_counter() - started)

    async def _invoke(self, command: str, payload: bytes, timeout: float | None,
                      metadata: Mapping[str, str] | None) -> bytes:
        if len(self._pending) >= self.config.max_pending:
            raise ResourceExhausted(
                f"session {self.session_id} has {len(self._pending)} commands in flight "
                f"(sessions.max_pending_commands = {self.config.max_pending})")
        timeout = timeout or self.config.command_timeout
        self._next_id += 1
        request_id = self._next_id
        data = protocol.encode(worker_pb2.WorkerFrame(command=worker_pb2.Command(
            request_id=request_id, command=command, payload=payload,
            timeout_ms=int(timeout * 1000), metadata=metadata)))
        size = len(data) - protocol.HEADER.size
        if size > self.config.max_frame:  # the worker would drop the connection
            raise ResourceExhausted(
                f"command {command!r}: its payload of {len(payload)} bytes does not fit a "
                f"worker frame ({size} bytes > workers.max_frame_bytes = "
                f"{self.config.max_frame}); send less at once or raise "
                "workers.max_frame_bytes")
        future: asyncio.Future[worker_pb2.Reply] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            self._write(data)
            reply = await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise DeadlineExceeded(f"command {command!r} got no reply within {timeout:g} s") \
                from None
        finally:
            self._pending.pop(request_id, None)
        self.config.commands.answered(command, reply)
        if reply.status == worker_pb2.REPLY_INVALID_ARGUMENT:
            raise InvalidArgument(reply.error)
        if reply.status == worker_pb2.REPLY_TOO_LARGE:  # its reply or an event it emitted
            raise ResourceExhausted(f"command {command!r}: {reply.error}")
        if reply.status != worker_pb2.REPLY_OK:
            raise GatewayError(f"command {command!r} failed in the worker: {reply.error}",
                               code="INTERNAL")
        return reply.payload

    # -- stop --------------------------------------------------------------------------

    def kill(self) -> None:
        if self.process is not None and self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
        elif self.foreign is not None:
            terminator.signal_if_ours(self.foreign, signal.SIGKILL)

    def release(self) -> None:
        """Leave the worker running, unconnected (reattach: the next gateway adopts it)."""
        self._stopping = True
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._writer is not None:
            self._writer.close()  # the worker sees EOF and starts phoning home
            self._writer = None
        self.lost_reason = self.lost_reason or "released for adoption"
        self._tasks.cancel()
        if self.process is not None:
            _disown(self.process)

    async def wait_tasks(self) -> None:
        await self._tasks.wait()

    async def stop(self, reason: str = "session closed") -> None:
        """Ask the worker to exit, then terminate, then kill; reap; close everything.

        Commands in flight fail at once with ``reason``: it is the cause, the worker's
        exit only follows from it.
        """
        self._stopping = True
        if not self.lost_reason:
            self.abort_commands(Unavailable(f"session {self.session_id}: {reason}"))
        if self.process is None and self._starting is not None:
            with contextlib.suppress(Exception):  # a failed start has nothing to stop
                self.process = await asyncio.shield(self._starting)
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._writer is not None and not self._writer.is_closing():
            with contextlib.suppress(Exception):
                self._writer.write(protocol.encode(worker_pb2.WorkerFrame(
                    shutdown=worker_pb2.Shutdown(reason=reason))))
        proc = self.process
        if proc is not None and proc.stdin is not None and not proc.stdin.is_closing():
            proc.stdin.close()  # a spare still waiting for "go" exits on EOF
        if proc is not None and self.returncode is None:
            for sig, wait in ((None, self.config.stop_timeout), (signal.SIGTERM, 2.0),
                              (signal.SIGKILL, 5.0)):
                if sig is not None:
                    with contextlib.suppress(ProcessLookupError):
                        proc.send_signal(sig)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(proc.wait()), wait)
                    break
            self.returncode = proc.returncode
        elif self.foreign is not None:
            await terminator.stop_foreign(self.foreign, self.config.stop_timeout)
            if not self.foreign.is_running():
                self._exited("not this gateway's child: code unknown")
        self._lost(reason)
        await self._tasks.cancel_and_wait()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)


def _disown(process: asyncio.subprocess.Process) -> None:
    """Let a released worker outlive this gateway's event loop.

    asyncio kills a child whose subprocess transport is closed or collected while the
    child runs (``BaseSubprocessTransport.close``: ``kill()`` unless ``Popen.poll()``
    has a status). From Python 3.12 the pidfd child watcher holds the transport only
    through the loop's selector, so closing the loop at gateway exit collects it and the
    released worker is SIGKILLed (3.11's watcher thread kept it referenced). With a
    status recorded on the ``Popen`` that check passes, and the transport is closed
    here; the real exit is still reaped by the watcher while this gateway runs, and by
    the worker's new parent after.
    asyncio exposes the ``Popen`` only through the transport, which ``Process`` keeps in
    an attribute without a public accessor.
    """
    transport = getattr(process, "_transport", None)
    if transport is None:
        return
    popen = transport.get_extra_info("subprocess")
    if popen is not None and popen.returncode is None:
        popen.returncode = RELEASED_RETURNCODE
    transport.close()  # its pipes; no kill now (nor an "unclosed transport" warning)


#: what the ``Popen`` of a released worker reports as its status (never a real one:
#: real statuses are 0-255 or minus a signal number)
RELEASED_RETURNCODE = -1000
