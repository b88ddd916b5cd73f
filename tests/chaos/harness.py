"""The chaos harness: sessions and subscribers on real gateway processes, faults from a seed.

Each round opens ``sessions`` sessions on a real ``sessiongate serve`` (real worker
processes, the ``sim`` backend, gRPC on 127.0.0.1) and attaches ``subscribers`` to
each: plain live streams, SKIP streams, raw resumers (``after_sequence`` = the last
event they got, after a cut, an overflow or an outage) and ``GatewayClient.follow``
followers. Every session then plays a plan drawn from the seed: periodic ``sim``
events, bursts (and one that overruns the worker's buffer), stalls (a subscriber stops
reading), cuts (a stream cancelled mid-read), and at most one end: its worker killed
with SIGKILL, a ``fail`` command, or a close. Meanwhile the gateway itself may be
killed with SIGKILL and restarted on the same address and state dir, with reattach on
(its sessions live on) or off (they are lost). Every response is checked as it is
read (:mod:`.checker`), every command's status too; once a gateway stops, none of its
worker processes may be left and its log may hold no traceback.

The timing of every fault comes from the seed, counted in events a subscriber has seen
or in steps played, never in seconds; the interleaving of processes is the machine's,
so a seed replays the same plan, not the same schedule. See docs/proof.md.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import json
import os
import pathlib
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import psutil

from sessiongate.client import GapNotice, GatewayClient, Reconnecting
from sessiongate.core import protocol
from sessiongate.core.workers.terminator import home_marker, leftover_workers
from sessiongate.testing import GatewayProcess, write_config
from sessiongate.v1 import gateway_pb2

from .checker import (
    CLOSE,
    FAIL,
    GATEWAY_BACK,
    GATEWAY_KILL,
    GATEWAY_RESTART,
    WORKER_KILL,
    EventLedger,
    Incidents,
    SubscriberCheck,
    invoke_allowed,
)

__all__ = ["LONG", "SHORT", "Profile", "Report", "run"]

#: streams one subscriber may open in a round (a resume loop is a finding too)
MAX_STREAMS = 200
ROLES = ("follower", "resumer", "skip", "live")
RESUMING = ("follower", "resumer")
#: step kinds of a session's plan, and their weights
STEPS = {"burst": 30, "write": 10, "cut": 15, "stall": 10, "unstall": 10, "progress": 20,
         "join": 10}
#: a burst that overruns the worker's unsent buffer (8192 events) when the gateway holds
#: it back: its oldest events are dropped (a WORKER_OVERRUN gap)
OVERRUN_EVENTS = 9000

#: settings every scenario shares: small bounds, so overflows, skips, evictions and
#: stalls happen within seconds (each is a documented setting, see docs/settings.md)
COMMON: dict[str, Any] = {
    "workers.heartbeat_interval_seconds": 1,
    "events.queue_capacity": 256,
    "events.stall_timeout_seconds": 1,
    "events.backpressure_policy": "disconnect_subscriber",
    "plugins.fanout.replay_buffer_capacity": 512,
    "server.shutdown_grace_seconds": 2,
}
SCENARIOS: dict[str, dict[str, Any]] = {
    # the gateway's death is an outage its sessions live through
    "reattach": {"plugins.reattach.adoption_window_seconds": 10,
                 "plugins.reattach.worker_history_events": 256},
    # the shipped plugin set: a gateway's death ends its sessions
    "plain": {},
}
#: what a gateway's log never holds: a traceback, a task nobody awaited
LOG_PROBLEMS = ("Traceback (most recent call last)", "exception was never retrieved",
                "Task was destroyed but it is pending")
CHANNEL_OPTIONS = [("grpc.initial_reconnect_backoff_ms", 100),
                   ("grpc.min_reconnect_backoff_ms", 100),
                   ("grpc.max_reconnect_backoff_ms", 1000)]


@dataclasses.dataclass(frozen=True)
class Profile:
    """How much chaos: per round ``sessions`` x ``subscribers`` and ``steps`` per session;
    ``minutes`` > 0 repeats rounds (cycling ``scenarios``) until that much time passed."""

    name: str
    sessions: int
    subscribers: int
    steps: int
    minutes: float
    scenarios: tuple[str, ...]
    #: the most any one wait of the harness may take, in seconds: a step, a restart, the
    #: end of every stream once its session ended (one that never comes is a finding)
    liveness: float = 60.0
    #: chance that a round kills the gateway (the first round of each scenario always does)
    gateway_kills: float = 0.6


SHORT = Profile("short", sessions=4, subscribers=5, steps=16, minutes=0,
                scenarios=("reattach", "plain"), liveness=20.0)
LONG = Profile("long", sessions=6, subscribers=5, steps=24, minutes=5,
               scenarios=("reattach", "plain"))


@dataclasses.dataclass
class Report:
    seed: int
    profile: str
    violations: list[str] = dataclasses.field(default_factory=list)
    rounds: int = 0
    sessions: int = 0
    subscribers: int = 0
    streams: int = 0
    events_checked: int = 0
    gaps: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    stream_ends: collections.Counter[str] = dataclasses.field(
        default_factory=collections.Counter)
    faults: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    seconds: float = 0.0
    workdir: str = ""

    def summary(self) -> dict[str, Any]:
        return {"seed": self.seed, "profile": self.profile, "rounds": self.rounds,
                "sessions": self.sessions, "subscribers": self.subscribers,
                "streams": self.streams, "events_checked": self.events_checked,
                "gaps": dict(self.gaps), "stream_ends": dict(self.stream_ends),
                "faults": dict(self.faults), "violations": len(self.violations),
                "seconds": round(self.seconds, 1)}

    def text(self) -> str:
        lines = [json.dumps(self.summary())]
        if self.violations:
            lines.append(f"{len(self.violations)} violation(s), seed {self.seed} "
                         f"(gateway logs in {self.workdir}):")
            lines += self.violations
        return "\n".join(lines)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Changes:
    """A counter that wakes whoever waits for it to reach a value."""

    def __init__(self) -> None:
        self.value = 0
        self._changed = asyncio.Event()

    def bump(self, amount: int = 1) -> None:
        self.value += amount
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_until(self, done: Callable[[], bool]) -> None:
        while not done():
            await self._changed.wait()


class Gateway:
    """One scenario's ``sessiongate serve``: started, killed with SIGKILL and started
    again on the same address and state dir, stopped with SIGTERM."""

    def __init__(self, workdir: pathlib.Path, runtime_dir: pathlib.Path, scenario: str,
                 liveness: float) -> None:
        self.workdir = workdir
        self.liveness = liveness
        self.scenario = scenario
        self.state_dir = workdir / f"state-{scenario}"
        self.address = f"127.0.0.1:{free_port()}"
        values = {**COMMON, **SCENARIOS[scenario], "state_dir": str(self.state_dir),
                  "runtime_dir": str(runtime_dir / scenario),
                  "server.grpc_address": self.address,
                  "server.http_address": "127.0.0.1:0",  # the side port, on a free port
                  "plugins.reattach.enabled": scenario == "reattach"}
        self.config = write_config(workdir / f"chaos-{scenario}.toml", values)
        # the scenario's settings only: no SESSIONGATE_* of this shell (or of a tox env,
        # such as plugin switches) reaches the gateway
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("SESSIONGATE_")}
        self.survives_restart = scenario == "reattach"
        self.proc: GatewayProcess | None = None
        self.logs: list[pathlib.Path] = []
        self.up = asyncio.Event()
        self.key = ""

    async def start(self) -> None:
        proc = GatewayProcess(self.config, self.workdir)
        proc.env = self.env
        self.proc = await asyncio.to_thread(proc.start)
        self.logs.append(self.proc.log_path)
        self.key = (self.state_dir / "bootstrap-admin.key").read_text().strip()

    async def kill_and_restart(self, incidents: Incidents,
                               channels: list[grpc.aio.Channel]) -> None:
        """SIGKILL, start again; the outage ends once every client channel is back."""
        assert self.proc is not None
        self.up.clear()
        incidents.record(GATEWAY_KILL)
        await asyncio.to_thread(self.proc.kill)
        await self.start()
        incidents.record(GATEWAY_RESTART)
        async with asyncio.timeout(self.liveness):
            await asyncio.gather(*(channel.channel_ready() for channel in channels))
        incidents.record(GATEWAY_BACK)
        self.up.set()

    async def stop(self) -> list[str]:
        """SIGTERM; then what is wrong: its exit status, worker processes left behind,
        tracebacks in its logs (its workers' included: they share its stderr)."""
        problems = []
        if self.proc is not None and self.proc.proc is not None:
            self.proc.signal(signal.SIGTERM)
            try:
                status = await asyncio.to_thread(self.proc.wait, self.liveness)
            except subprocess.TimeoutExpired:
                await asyncio.to_thread(self.proc.kill)
                status = f"nothing within {self.liveness:g} s"
            if status != 0:
                problems.append(f"gateway ({self.scenario}) exited {status} on SIGTERM")
        left = leftover_workers(home_marker(self.state_dir))
        _gone, alive = await asyncio.to_thread(psutil.wait_procs, left, 15)
        if alive:
            problems.append(f"worker processes left behind ({self.scenario}): "
                            f"{sorted(p.pid for p in alive)}")
            for proc in alive:
                with contextlib.suppress(psutil.Error):
                    proc.kill()
        for path in self.logs:
            lines = path.read_text(errors="replace").splitlines()
            for i, line in enumerate(lines):
                if any(marker in line for marker in LOG_PROBLEMS):
                    problems.append(f"{path.name}: " + "\n    ".join(lines[max(0, i - 1):i + 6]))
                    break
        return problems

    def worker_of(self, session_id: str) -> psutil.Process | None:
        """The session's worker process (found by the state dir and session it serves)."""
        for proc in leftover_workers(home_marker(self.state_dir)):
            with contextlib.suppress(psutil.Error):
                if proc.environ().get(protocol.SESSION_ENV) == session_id:
                    return proc
        return None


class Subscriber:
    """One subscriber: streams in its own task, one stream after another, each response
    checked. ``role``: ``live`` and ``skip`` stop at their stream's end; a ``resumer``
    resumes after a cut, an overflow or an outage; a ``follower`` is
    ``GatewayClient.follow_batches``, which resumes by itself (a cut restarts it from
    the last event it yielded, as an application that crashed would)."""

    def __init__(self, actor: SessionActor, index: int, role: str, rng: random.Random) -> None:
        self.actor = actor
        self.role = role
        self.label = f"{index}:{role}"
        self.skip = role == "skip" or (role == "resumer" and rng.random() < 0.5)
        self.on_overflow = gateway_pb2.SKIP if self.skip else rng.choice(
            [gateway_pb2.OVERFLOW_POLICY_UNSET, gateway_pb2.DISCONNECT])
        self.max_batch = rng.choice([0, 1, 16, 256])
        self.subscriber_id = f"sub-{index}" if role in RESUMING else ""
        self.after: int | None = rng.choice([None, 0]) if role in RESUMING else None
        self.check: SubscriberCheck | None = None
        self.seen = Changes()
        self.reading = asyncio.Event()
        self.reading.set()
        #: its first stream is attached (a follower's attach is not visible: at once)
        self.attached = asyncio.Event()
        if role == "follower":
            self.attached.set()
        self.finished = False
        self.hung = False
        self._stream: asyncio.Task[tuple[str, str]] | None = None
        self.task: asyncio.Task[None] | None = None

    # -- what the session's plan does to it --------------------------------------------

    def stall(self) -> None:
        self.reading.clear()
        self.seen.bump(0)

    def release(self) -> None:
        self.reading.set()

    def cut(self) -> None:
        """Cancel the stream being read (its call is cancelled)."""
        if self._stream is not None:
            self._stream.cancel()

    async def seen_more(self, count: int) -> None:
        """Until it has seen ``count`` more events, or stalls, or is done."""
        target = self.seen.value + count
        await self.seen.wait_until(
            lambda: self.seen.value >= target or self.finished or not self.reading.is_set())

    # -- reading ------------------------------------------------------------------------

    async def run(self) -> None:
        assert self.check is not None
        try:
            for _ in range(MAX_STREAMS):
                reader = self._follow if self.role == "follower" else self._read
                self.check.attach(self.after)
                self._stream = asyncio.create_task(reader(self.after))
                await asyncio.wait([self._stream])
                if self._stream.cancelled():
                    code = "CUT"
                    self.check.end("CANCELLED", cut=True)
                else:
                    code, details = self._stream.result()
                    self.check.end(code, details)
                if not await self._again(code):
                    return
                self.after = self.check.last
            self.actor.run.violation(f"{self.actor.name}/{self.label}: more than "
                                     f"{MAX_STREAMS} streams in one round")
        finally:
            if self._stream is not None and not self._stream.done():
                self._stream.cancel()
                await asyncio.wait([self._stream])
            self.finished = True
            self.attached.set()
            self.seen.bump(0)

    async def _again(self, code: str) -> bool:
        """Stream again? A follower after a cut; a resumer unless its session ended."""
        if self.role == "follower":
            return code == "CUT"
        if self.role != "resumer":
            return False
        if code in ("CUT", "RESOURCE_EXHAUSTED"):
            return True
        return code == "UNAVAILABLE" and not await self.actor.has_ended()

    async def _read(self, after: int | None) -> tuple[str, str]:
        assert self.check is not None
        call = self.actor.client.stream(
            self.actor.session_id, after_sequence=after, subscriber_id=self.subscriber_id,
            max_batch=self.max_batch, on_overflow=self.on_overflow)
        try:
            while True:
                await self.reading.wait()
                response = await call.read()
                if response is grpc.aio.EOF:
                    return (await call.code()).name, await call.details() or ""
                self.check.response(response.events,
                                    response.gap if response.HasField("gap") else None,
                                    response.caught_up)
                self.attached.set()
                self.seen.bump(len(response.events))
        except grpc.aio.AioRpcError as exc:
            return exc.code().name, exc.details() or ""
        finally:
            call.cancel()

    async def _follow(self, after: int | None) -> tuple[str, str]:
        assert self.check is not None
        batches = self.actor.client.follow_batches(
            self.actor.session_id, after_sequence=after, subscriber_id=self.subscriber_id,
            initial_delay=0.05, max_delay=0.5, give_up_after=self.actor.run.profile.liveness)
        try:
            async for batch in batches:
                await self.reading.wait()
                gap, events = None, []
                for item in batch:
                    if isinstance(item, Reconnecting):
                        code, _, details = item.error.partition(": ")
                        self.check.end(code, details)
                        self.check.attach(item.after_sequence)
                    elif isinstance(item, GapNotice):
                        gap = gateway_pb2.ReplayGap(
                            requested_after=item.requested_after,
                            oldest_available=item.oldest_available,
                            reason=gateway_pb2.GapReason.Value(item.reason))
                    else:
                        events.append(item)
                if gap is not None or events:
                    self.check.response(events, gap)
                self.seen.bump(len(events))
            return "OK", ""
        except grpc.aio.AioRpcError as exc:
            return exc.code().name, exc.details() or ""
        finally:
            await batches.aclose()


class SessionActor:
    """One session and its subscribers, playing the plan its seed gives."""

    def __init__(self, run: Run, round_no: int, index: int, terminal: str | None) -> None:
        self.run = run
        self.name = f"r{round_no}s{index}"
        self.rng = random.Random(f"{run.seed}:{round_no}:{index}")
        self.terminal = terminal
        profile = run.profile
        roles = list(ROLES) + [self.rng.choice(ROLES)
                               for _ in range(profile.subscribers - len(ROLES))]
        self.rng.shuffle(roles)
        self.roles = roles[:profile.subscribers]
        self.subscribers: list[Subscriber] = []
        self.plan = self._plan(profile.steps, overrun=index == round_no % profile.sessions)
        self.session_id = ""
        self.ended = False
        self.client: GatewayClient

    def _plan(self, steps: int, *, overrun: bool) -> list[tuple[str, int]]:
        """``(kind, argument)`` steps: one cut, one stall, a join and a burst at least, the
        rest drawn by weight; its end (if any) in the second half; one overrun per round."""
        kinds = ["cut", "stall", "join", "burst"]
        kinds += self.rng.choices(list(STEPS), weights=list(STEPS.values()),
                                  k=max(0, steps - len(kinds)))
        self.rng.shuffle(kinds)
        if overrun:
            kinds.insert(self.rng.randrange(len(kinds) + 1), "overrun")
        if self.terminal is not None:
            kinds.insert(self.rng.randint(len(kinds) // 2, len(kinds)), self.terminal)
        return [(kind, self.rng.randrange(1 << 30)) for kind in kinds]

    async def open(self, channel: grpc.aio.Channel) -> None:
        self.client = GatewayClient(channel, self.run.gateway.key)
        self.session_id = (await self.client.open(client_name=self.name)).session_id

    def join(self, role: str) -> Subscriber:
        """A new subscriber starts streaming."""
        sub = Subscriber(self, len(self.subscribers), role, self.rng)
        sub.check = SubscriberCheck(
            f"{self.name}/{sub.label}{'/skip' if sub.skip else ''} "
            f"(session {self.session_id[:8]})", self.session_id, skip=sub.skip,
            incidents=self.run.incidents, ledger=self.run.ledger)
        sub.task = asyncio.create_task(sub.run())
        self.subscribers.append(sub)
        return sub

    def active(self) -> list[Subscriber]:
        """The subscribers still streaming (or stalled)."""
        return [sub for sub in self.subscribers if not sub.finished]

    async def play(self) -> None:
        step = "attaching"
        liveness = self.run.profile.liveness
        try:
            async with asyncio.timeout(liveness):
                for role in self.roles:
                    await self.join(role).attached.wait()
            await self._start_timer(self.rng.choice([5, 10, 20]))
            for number, (kind, argument) in enumerate(self.plan):
                if self.ended:
                    break
                step = f"step {number} ({kind})"
                async with asyncio.timeout(liveness):
                    await self.step(kind, random.Random(argument))
                self.run.steps.bump()
        except TimeoutError:
            self.run.violation(f"{self.name}: no progress for {liveness:g} s at {step}: "
                               f"{await self._diagnosis()}")
        finally:
            for sub in self.subscribers:
                sub.release()
            if not self.ended:
                await self.close()
            await self._subscribers_end()
            self.run.actors_done += 1
            self.run.steps.bump(0)

    async def step(self, kind: str, rng: random.Random) -> None:
        # a subscriber still streaming, for the steps that act on one
        subs = self.active() or self.subscribers
        if kind == "burst":
            await self.invoke("burst", {"count": rng.randint(20, 400),
                                        "size": rng.choice([0, 8, 100, 1000])})
        elif kind == "overrun":
            await self.invoke("burst", {"count": OVERRUN_EVENTS, "drain": False})
        elif kind == "write":
            await self.invoke("write", {"tag": "w", "value": rng.randrange(1000)})
        elif kind == "cut":
            sub = rng.choice(subs)
            await sub.seen_more(rng.randint(1, 40))
            sub.cut()
        elif kind == "stall":
            rng.choice(subs).stall()
        elif kind == "unstall":
            for sub in subs:
                sub.release()
        elif kind == "progress":
            await rng.choice(subs).seen_more(rng.randint(20, 150))
        elif kind == "join":
            # replaces one that ended (the fanout cap is 8: never reached with ghosts)
            if len(self.active()) < len(self.roles):
                await self.join(rng.choice(ROLES)).attached.wait()
        elif kind == WORKER_KILL:
            proc = self.run.gateway.worker_of(self.session_id)
            if proc is not None:
                self.ended = True
                self.run.incidents.record(WORKER_KILL, self.session_id)
                with contextlib.suppress(psutil.Error):
                    proc.send_signal(signal.SIGKILL)
        elif kind == FAIL:
            self.ended = True
            self.run.incidents.record(FAIL, self.session_id)
            code, done = await self.invoke("fail", {"exit_code": 3})
            if code == "UNAVAILABLE" and GATEWAY_KILL in done:
                self.ended = await self.has_ended()  # the gateway died first, maybe
        else:
            raise ValueError(f"unknown step {kind!r}")

    async def invoke(self, command: str, payload: Any) -> tuple[str, set[str]]:
        """A command: its status, and what had happened by then (see :meth:`_checked`)."""
        return await self._checked(command, lambda: self.client.invoke_json(
            self.session_id, command, payload))

    async def _start_timer(self, interval_ms: int) -> None:
        """The session's periodic events (again, if a gateway outage lost the command:
        the steps count on events flowing)."""
        for _ in range(3):
            code, done = await self.invoke("subscribe", {"tag": "tick",
                                                         "interval_ms": interval_ms})
            if code != "UNAVAILABLE" or GATEWAY_KILL not in done:
                return

    async def close(self) -> None:
        """Close the session (again, if a gateway outage got in the way)."""
        self.ended = True
        self.run.incidents.record(CLOSE, self.session_id)
        for _ in range(3):
            code, done = await self._checked("close", lambda: self.client.close(self.session_id))
            if code != "UNAVAILABLE" or GATEWAY_KILL not in done:
                return

    async def _checked(self, what: str,
                       call: Callable[[], Awaitable[Any]]) -> tuple[str, set[str]]:
        """Make a call once the gateway is up; a status the contract does not give for
        what had happened by its end is a violation."""
        incidents = self.run.incidents
        await self.run.gateway.up.wait()
        started = incidents.now()
        try:
            await call()
            return "OK", set()
        except grpc.aio.AioRpcError as exc:
            code = exc.code().name
            done = incidents.done(self.session_id, since=started, before=incidents.now())
            if not invoke_allowed(code, done):
                self.run.violation(f"{self.name}: {what} ended {code} ({exc.details()!r}) "
                                   f"after {sorted(done) or 'nothing'} "
                                   f"(session {self.session_id})")
            return code, done

    async def _diagnosis(self) -> str:
        """What a stuck session looks like: its state and position, its subscribers'."""
        try:
            async with asyncio.timeout(5):
                info = await self.client.get(self.session_id)
            where = (f"{gateway_pb2.SessionState.Name(info.state)}, last sequence "
                     f"{info.last_sequence}, {info.subscriber_count} subscriber(s)")
        except (grpc.aio.AioRpcError, TimeoutError) as exc:
            where = f"GetSession failed: {exc!r}"
        subs = "; ".join(
            f"{sub.label} seen {sub.seen.value} last {sub.check.last if sub.check else None}"
            f"{' stalled' if not sub.reading.is_set() else ''}"
            f"{' finished' if sub.finished else ''}" for sub in self.subscribers)
        return f"session {self.session_id} {where}; subscribers: {subs}"

    async def has_ended(self) -> bool:
        """Has the session ended (closed, faulted, unknown)? Asked once the gateway is up."""
        for _ in range(3):
            await self.run.gateway.up.wait()
            try:
                info = await self.client.get(self.session_id)
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND:
                    return True
                continue  # the gateway went away meanwhile
            return info.state in (gateway_pb2.CLOSED, gateway_pb2.FAULTED)
        return True

    async def _subscribers_end(self) -> None:
        """Every stream must end once the session has; one that does not is abandoned."""
        tasks = [sub.task for sub in self.subscribers if sub.task is not None]
        _done, pending = await asyncio.wait(tasks, timeout=self.run.profile.liveness)
        for sub in self.subscribers:
            if sub.task in pending:
                sub.hung = True
                sub.task.cancel()
        if pending:
            await asyncio.wait(pending)
        for sub in self.subscribers:
            assert sub.check is not None and sub.task is not None
            sub.check.finish(hung=sub.hung)
            if not sub.task.cancelled() and sub.task.exception() is not None:
                raise sub.task.exception()  # a harness error, not a finding: loudly


class Run:
    """The rounds of one seed."""

    def __init__(self, profile: Profile, seed: int, workdir: pathlib.Path) -> None:
        self.profile = profile
        self.seed = seed
        self.workdir = workdir
        self.report = Report(seed=seed, profile=profile.name, workdir=str(workdir))
        self.ledger = EventLedger()
        self.incidents = Incidents(sessions_survive_restart=True)
        self.steps = Changes()  # steps played; bumped also when a session is done
        self.actors_done = 0
        self.gateway: Gateway
        self.runtime_dir = pathlib.Path(tempfile.mkdtemp(prefix="sgc-"))  # short: sockets

    def violation(self, what: str) -> None:
        self.report.violations.append(what)

    async def play(self) -> None:
        started = time.monotonic()
        deadline = started + self.profile.minutes * 60
        gateways: dict[str, Gateway] = {}
        try:
            round_no = 0
            while True:
                scenario = self.profile.scenarios[round_no % len(self.profile.scenarios)]
                if scenario not in gateways:
                    gateways[scenario] = Gateway(self.workdir, self.runtime_dir, scenario,
                                                 self.profile.liveness)
                    await gateways[scenario].start()
                    gateways[scenario].up.set()
                self.gateway = gateways[scenario]
                await self.round(round_no, first=round_no < len(self.profile.scenarios))
                round_no += 1
                if time.monotonic() >= deadline and round_no >= len(self.profile.scenarios):
                    break
        finally:
            for gateway in gateways.values():
                for problem in await gateway.stop():
                    self.violation(problem)
            shutil.rmtree(self.runtime_dir, ignore_errors=True)
            self.report.seconds = time.monotonic() - started

    async def round(self, round_no: int, *, first: bool) -> None:
        profile = self.profile
        rng = random.Random(f"{self.seed}:{round_no}")
        self.incidents = Incidents(sessions_survive_restart=self.gateway.survives_restart)
        self.ledger.clear()
        # each end at least once per round, when there are sessions enough
        terminals: list[str | None] = [WORKER_KILL, FAIL, None]
        terminals += rng.choices([WORKER_KILL, FAIL, None, None],
                                 k=max(0, profile.sessions - len(terminals)))
        rng.shuffle(terminals)
        actors = [SessionActor(self, round_no, i, terminals[i]) for i in range(profile.sessions)]
        channels = [grpc.aio.insecure_channel(self.gateway.address, options=CHANNEL_OPTIONS)
                    for _ in actors]
        kill_at = (rng.randint(1, max(1, profile.sessions * profile.steps // 2))
                   if first or rng.random() < profile.gateway_kills else None)
        try:
            for actor, channel in zip(actors, channels, strict=True):
                await actor.open(channel)
            async with asyncio.TaskGroup() as group:  # a harness error stops them all
                group.create_task(
                    self._kill_gateway(kill_at, channels, self.actors_done + len(actors)))
                for actor in actors:
                    group.create_task(actor.play())
        finally:
            for channel in channels:
                await channel.close()
        self._tally(actors)

    async def _kill_gateway(self, kill_at: int | None, channels: list[grpc.aio.Channel],
                            all_done: int) -> None:
        """Kill the gateway once the round's sessions have played ``kill_at`` steps
        (unless they are all done before)."""
        if kill_at is None:
            return
        target = self.steps.value + kill_at
        await self.steps.wait_until(
            lambda: self.steps.value >= target or self.actors_done >= all_done)
        if self.actors_done < all_done:
            await self.gateway.kill_and_restart(self.incidents, channels)

    def _tally(self, actors: list[SessionActor]) -> None:
        report = self.report
        report.rounds += 1
        report.sessions += len(actors)
        report.faults.update(self.incidents.counts())
        for actor in actors:
            for sub in actor.subscribers:
                check = sub.check
                assert check is not None
                report.subscribers += 1
                report.streams += check.streams
                report.events_checked += check.events
                report.gaps.update(check.gaps)
                report.stream_ends.update(check.ends)
                report.violations += check.report()


async def run(profile: Profile, seed: int, workdir: pathlib.Path) -> Report:
    """Play ``profile`` with ``seed``; gateway logs and state stay in ``workdir``."""
    chaos = Run(profile, seed, workdir)
    await chaos.play()
    return chaos.report


def new_seed() -> int:
    """``SG_CHAOS_SEED`` when set (to replay a run), else a fresh one."""
    return int(os.environ.get("SG_CHAOS_SEED") or random.SystemRandom().randrange(1 << 32))
