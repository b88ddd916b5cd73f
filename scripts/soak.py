"""Soak: many sessions and subscribers on periodic ``sim`` events for minutes, on the
shipped settings; proves no event is lost and nothing leaks (docs/proof.md).

    python scripts/soak.py                    # 500 sessions x 4 subscribers, 10 minutes
    python scripts/soak.py --sessions 50 --subscribers 2 --minutes 1    # a smoke run

It starts ``sessiongate serve`` (127.0.0.1, a free port, a fresh state dir; every
other setting as shipped) and measures it before any load (after one session was
opened, streamed and closed, so what is created once exists). Client processes
(``--clients``) open the sessions, attach every subscriber, then start the session's
``sim`` ``subscribe`` (one event every ``--interval-ms``), so each subscriber must
receive every sequence from 1. After ``--warmup-minutes`` the gateway's RSS is taken
as the reference; at ``--minutes`` the load stops: each session stops its timer and
writes an end marker, every subscriber must reach it, each session is closed and
every stream must end OK. With the clients gone the gateway must be back to its
counts before the load. It prints one JSON summary and exits 1 when a bound is broken:

* events lost (a hole, announced by a gap or not, or an event never received): 0;
  duplicates and streams that did not end OK: 0;
* gateway RSS at the end no more than 5 % above the reference;
* open file descriptors, asyncio tasks and child processes no more than before.

The gateway's asyncio tasks are counted by a small plugin loaded through the
documented entry-point group (``sessiongate.plugins``): it serves
``len(asyncio.all_tasks())`` on the side port (``sg_http_routes``). The side port
listens on a free port, not the shipped 50552; nothing else about the gateway changes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.request
from typing import Any

import grpc
import psutil

from sessiongate.client import GatewayClient
from sessiongate.core import ENTRY_POINT_GROUP
from sessiongate.core.config.settings import defaults_path
from sessiongate.core.workers.terminator import home_marker, leftover_workers
from sessiongate.testing import GatewayProcess, stream_end, write_config

#: the most RSS may grow from the end of the warm-up to the end of the load
MAX_RSS_GROWTH = 0.05
#: how long the gateway may take to settle back to its counts once the load is gone
SETTLE_SECONDS = 60.0
#: how long a subscriber may take to reach its session's end marker once it is written
DRAIN_SECONDS = 120.0
SAMPLE_SECONDS = 10.0
END_TAG = "end"

PROBE = """\"\"\"sessiongate soak probe: the gateway's asyncio task and thread counts, at
GET /plugins/soak_probe/counts on its side port.\"\"\"
import asyncio, threading

from aiohttp import web

from sessiongate.core import hookimpl


async def _counts(request):
    return web.json_response({"tasks": len(asyncio.all_tasks()),
                              "threads": threading.active_count()})


@hookimpl
def sg_http_routes(gateway):
    return [web.get("/counts", _counts)]
"""


def install_probe(folder: pathlib.Path) -> pathlib.Path:
    """The probe as an installed distribution in ``folder`` (put it on PYTHONPATH)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sg_soak_probe.py").write_text(PROBE)
    meta = folder / "sg_soak_probe-0.dist-info"
    meta.mkdir(exist_ok=True)
    (meta / "METADATA").write_text("Metadata-Version: 2.1\nName: sg-soak-probe\nVersion: 0\n")
    (meta / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\nsoak_probe = sg_soak_probe\n")
    return folder


# -- the gateway under test ------------------------------------------------------------


class Gateway:
    def __init__(self, workdir: pathlib.Path, sessions: int) -> None:
        self.workdir = workdir
        self.runtime_dir = pathlib.Path(tempfile.mkdtemp(prefix="sgs-"))  # short: sockets
        self.state_dir = workdir / "state"
        values: dict[str, Any] = {"state_dir": str(self.state_dir),
                                  "runtime_dir": str(self.runtime_dir),
                                  "server.grpc_address": "127.0.0.1:0",
                                  "server.http_address": "127.0.0.1:0"}
        #: settings changed from the shipped ones (only what the run needs)
        self.changed: dict[str, Any] = {}
        shipped_max = tomllib.loads(defaults_path().read_text())["sessions"]["max_sessions"]
        if sessions + 1 > shipped_max:  # the priming session and the spare need room too
            self.changed["sessions.max_sessions"] = sessions + 1
        values.update(self.changed)
        config = write_config(workdir / "soak.toml", values)
        probe = install_probe(workdir / "probe")
        self.proc = GatewayProcess(config, workdir)
        # the shipped settings: no SESSIONGATE_* from this shell reaches the gateway
        env = {k: v for k, v in os.environ.items() if not k.startswith("SESSIONGATE_")}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(probe), env.get("PYTHONPATH")]))
        self.proc.env = env
        self.key = ""

    def start(self) -> None:
        self.proc.start()
        self.key = (self.state_dir / "bootstrap-admin.key").read_text().strip()
        try:
            self.tasks()
        except OSError as exc:
            self.proc.kill()
            raise RuntimeError(f"the soak probe plugin did not answer ({exc}):\n"
                               + self.proc.log) from None

    @property
    def process(self) -> psutil.Process:
        assert self.proc.proc is not None
        return psutil.Process(self.proc.proc.pid)

    def rss(self) -> int:
        return self.process.memory_info().rss

    def tasks(self) -> int:
        """The gateway's asyncio tasks, as its probe counts them (one is the request's)."""
        url = f"http://{self.proc.http_address}/plugins/soak_probe/counts"
        with urllib.request.urlopen(url, timeout=10) as response:
            return int(json.load(response)["tasks"])

    def credit_holds(self) -> float:
        """How often the gateway held workers' credit because its event loop lagged
        (``sessiongate_credit_holds_total`` on its side port)."""
        url = f"http://{self.proc.http_address}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            for line in response.read().decode().splitlines():
                if line.startswith("sessiongate_credit_holds_total "):
                    return float(line.split()[1])
        return 0.0

    def counts(self) -> dict[str, int]:
        proc = self.process
        return {"fds": proc.num_fds(), "tasks": self.tasks(), "threads": proc.num_threads(),
                "children": len(proc.children(recursive=True)), "rss": proc.memory_info().rss}

    def stop(self) -> list[str]:
        """SIGTERM; what is wrong: its exit status, workers left behind."""
        problems = []
        self.proc.signal(signal.SIGTERM)
        try:
            status = self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            status = "nothing within 60 s"
        if status != 0:
            problems.append(f"gateway exited {status} on SIGTERM")
        _gone, alive = psutil.wait_procs(leftover_workers(home_marker(self.state_dir)), 15)
        for proc in alive:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        if alive:
            problems.append(f"worker processes left behind: {sorted(p.pid for p in alive)}")
        shutil.rmtree(self.runtime_dir, ignore_errors=True)
        return problems


# -- a client process: its share of the sessions -------------------------------------


class Subscriber:
    """One stream; every sequence from 1 must arrive once, in order, up to the marker."""

    def __init__(self) -> None:
        self.received = 0
        self.last = 0
        self.lost = 0
        self.duplicates = 0
        self.gaps = 0
        self.marker: int | None = None
        self.end = ""
        self.attached = asyncio.Event()
        self.reached_marker = asyncio.Event()

    async def read(self, call: Any) -> None:
        try:
            async for response in call:
                self.attached.set()
                if response.HasField("gap"):
                    self.gaps += 1
                for event in response.events:
                    seq = event.sequence
                    if seq <= self.last:
                        self.duplicates += 1
                        continue
                    self.lost += seq - self.last - 1
                    self.last = seq
                    self.received += 1
                    if b'"end"' in event.payload and event.kind == "data_change":
                        self.marker = seq
                        self.reached_marker.set()
            self.end = "OK"
        except grpc.aio.AioRpcError as exc:
            self.end = f"{exc.code().name}: {exc.details()}"
        finally:
            self.attached.set()
            self.reached_marker.set()


class Session:
    def __init__(self, client: GatewayClient, subscribers: int, interval_ms: int) -> None:
        self.client = client
        self.interval_ms = interval_ms
        self.subscribers = [Subscriber() for _ in range(subscribers)]
        self.readers: list[asyncio.Task[None]] = []
        self.session_id = ""
        self.problems: list[str] = []

    async def start(self, opening: asyncio.Semaphore) -> None:
        """Open, attach every subscriber (the caught-up marker read), then start the
        timer; a few sessions at a time (``opening``), as clients arrive, not all at once."""
        async with opening:
            self.session_id = (await self.client.open(client_name="soak")).session_id
            for sub in self.subscribers:
                self.readers.append(asyncio.create_task(sub.read(self.client.stream(
                    self.session_id, subscriber_id=f"soak-{len(self.readers)}"))))
            for sub in self.subscribers:
                await sub.attached.wait()
            await self.client.invoke_json(self.session_id, "subscribe",
                                          {"tag": "t", "interval_ms": self.interval_ms})

    async def finish(self, closing: asyncio.Semaphore) -> None:
        """Stop the timer, write the end marker, let every subscriber reach it, close."""
        async with closing:
            await self.client.invoke_json(self.session_id, "unsubscribe", {"tag": "t"})
            await self.client.invoke_json(self.session_id, "write",
                                          {"tag": END_TAG, "value": 0})
        try:
            async with asyncio.timeout(DRAIN_SECONDS):
                for sub in self.subscribers:
                    await sub.reached_marker.wait()
        except TimeoutError:
            self.problems.append(f"session {self.session_id}: a subscriber did not reach the "
                                 f"end marker within {DRAIN_SECONDS:g} s")
        await self.client.close(self.session_id)
        _done, pending = await asyncio.wait(self.readers, timeout=DRAIN_SECONDS)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
            self.problems.append(f"session {self.session_id}: {len(pending)} stream(s) did "
                                 "not end after the close")


async def client_process(config: dict[str, Any]) -> dict[str, Any]:
    """Run one client's sessions: 'ready' on stdout once loaded, stop on a stdin line."""
    channels = [grpc.aio.insecure_channel(config["address"]) for _ in range(config["channels"])]
    try:
        clients = [GatewayClient(channel, config["key"]) for channel in channels]
        opening = asyncio.Semaphore(config["open_concurrency"])
        sessions = [Session(clients[i % len(clients)], config["subscribers"],
                            config["interval_ms"]) for i in range(config["sessions"])]
        await asyncio.gather(*(session.start(opening) for session in sessions))
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        closing = asyncio.Semaphore(config["open_concurrency"])
        await asyncio.gather(*(session.finish(closing) for session in sessions))
    finally:
        for channel in channels:
            await channel.close()
    subs = [sub for session in sessions for sub in session.subscribers]
    return {
        "received": sum(sub.received for sub in subs),
        # a subscriber that never reached its marker lost what it did not get
        "lost": sum(sub.lost for sub in subs),
        "never_reached_end": sum(sub.marker is None for sub in subs),
        "duplicates": sum(sub.duplicates for sub in subs),
        "gaps": sum(sub.gaps for sub in subs),
        "abnormal_ends": [sub.end for sub in subs if sub.end != "OK"][:20],
        "abnormal_end_count": sum(sub.end != "OK" for sub in subs),
        "problems": [p for session in sessions for p in session.problems][:20],
    }


# -- the controller --------------------------------------------------------------------


async def prime(gateway: Gateway) -> None:
    """Open, stream, close one session: what the gateway creates once now exists."""
    async with grpc.aio.insecure_channel(gateway.proc.address) as channel:
        client = GatewayClient(channel, gateway.key)
        session_id = (await client.open(client_name="soak-prime")).session_id
        call = client.stream(session_id)
        await call.read()
        await client.invoke_json(session_id, "write", {"tag": "x", "value": 1})
        await call.read()
        await client.close(session_id)
        code, details = await stream_end(call)
        if code != grpc.StatusCode.OK:
            raise RuntimeError(f"the priming stream ended {code.name}: {details}")


async def steady(gateway: Gateway) -> dict[str, int]:
    """The gateway's counts once two samples half a second apart agree (at most
    SETTLE_SECONDS): what the priming session started or stopped has finished."""
    deadline = time.monotonic() + SETTLE_SECONDS
    last = await asyncio.to_thread(gateway.counts)
    while True:
        await asyncio.sleep(0.5)
        now = await asyncio.to_thread(gateway.counts)
        if all(now[k] == last[k] for k in ("fds", "tasks", "children")) or \
                time.monotonic() > deadline:
            return now
        last = now


async def settled(gateway: Gateway, before: dict[str, int]) -> dict[str, int]:
    """The gateway's counts once they are back to ``before`` (or SETTLE_SECONDS passed):
    exited workers are reaped and closed connections noticed asynchronously."""
    deadline = time.monotonic() + SETTLE_SECONDS
    while True:
        now = await asyncio.to_thread(gateway.counts)
        back = all(now[k] <= before[k] for k in ("fds", "tasks", "children"))
        if back or time.monotonic() > deadline:
            return now
        await asyncio.sleep(0.5)


async def controller(args: argparse.Namespace) -> dict[str, Any]:
    workdir = args.workdir or pathlib.Path(tempfile.mkdtemp(prefix="sg-soak-"))
    workdir.mkdir(parents=True, exist_ok=True)
    gateway = Gateway(workdir, args.sessions)
    await asyncio.to_thread(gateway.start)
    summary: dict[str, Any] = {
        "sessions": args.sessions, "subscribers": args.subscribers,
        "interval_ms": args.interval_ms, "minutes": args.minutes,
        "warmup_minutes": args.warmup_minutes, "clients": args.clients,
        "settings_changed": gateway.changed, "workdir": str(workdir),
        "gateway_log": str(gateway.proc.log_path)}
    problems: list[str] = []
    procs: list[asyncio.subprocess.Process] = []
    try:
        await prime(gateway)
        before = await steady(gateway)
        cpu_start = gateway.process.cpu_times()
        shares = [args.sessions // args.clients + (i < args.sessions % args.clients)
                  for i in range(args.clients)]
        for share in filter(None, shares):
            config = {"address": gateway.proc.address, "key": gateway.key, "sessions": share,
                      "subscribers": args.subscribers, "interval_ms": args.interval_ms,
                      "channels": max(1, math.ceil(share * args.subscribers / 100)),
                      "open_concurrency": 8}
            procs.append(await asyncio.create_subprocess_exec(
                sys.executable, __file__, "--client", json.dumps(config),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE))
        for proc in procs:
            assert proc.stdout is not None
            line = await proc.stdout.readline()
            if line.strip() != b"ready":
                raise RuntimeError(f"a client process failed to load its sessions: {line!r}")
        loaded = time.monotonic()
        print(f"soak: {args.sessions} sessions x {args.subscribers} subscribers loaded; "
              f"running {args.minutes:g} min", file=sys.stderr, flush=True)
        samples: list[float] = []
        warm: dict[str, int] | None = None
        while (elapsed := time.monotonic() - loaded) < args.minutes * 60:
            if warm is None and elapsed >= args.warmup_minutes * 60:
                warm = await asyncio.to_thread(gateway.counts)
            samples.append(round(gateway.rss() / 2**20, 1))
            await asyncio.sleep(min(SAMPLE_SECONDS, args.minutes * 60 - elapsed))
        end = await asyncio.to_thread(gateway.counts)
        if warm is None:
            warm = end
        cpu_end = gateway.process.cpu_times()
        holds = await asyncio.to_thread(gateway.credit_holds)
        load_seconds = time.monotonic() - loaded
        results = []
        for proc in procs:
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write(b"stop\n")
            await proc.stdin.drain()
        for proc in procs:
            assert proc.stdout is not None
            out = await proc.stdout.read()
            if await proc.wait() != 0:
                raise RuntimeError(f"a client process failed (exit {proc.returncode})")
            results.append(json.loads(out))
        after = await settled(gateway, before)
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        problems += await asyncio.to_thread(gateway.stop)
    received = sum(r["received"] for r in results)
    lost = sum(r["lost"] for r in results)
    growth = (end["rss"] - warm["rss"]) / warm["rss"]
    cpu = (cpu_end.user + cpu_end.system) - (cpu_start.user + cpu_start.system)
    summary.update({
        "events_received": received,
        "events_per_second": round(received / load_seconds),
        "events_lost": lost,
        "subscribers_never_reached_end": sum(r["never_reached_end"] for r in results),
        "duplicates": sum(r["duplicates"] for r in results),
        "gaps": sum(r["gaps"] for r in results),
        "abnormal_stream_ends": sum(r["abnormal_end_count"] for r in results),
        "abnormal_examples": [e for r in results for e in r["abnormal_ends"]][:10],
        "gateway": {
            "rss_warm_mb": round(warm["rss"] / 2**20, 1),
            "rss_end_mb": round(end["rss"] / 2**20, 1),
            "rss_growth_percent": round(growth * 100, 2),
            "rss_samples_mb": samples,
            "cpu_percent_during_load": round(100 * cpu / load_seconds),
            "credit_holds": int(holds),
        },
        "before": _counts(before), "warm": _counts(warm), "end": _counts(end),
        "after": _counts(after),
    })
    problems += [p for r in results for p in r["problems"]]
    bounds = {
        "events_lost == 0": lost == 0,
        "every subscriber reached the end": summary["subscribers_never_reached_end"] == 0,
        "duplicates == 0": summary["duplicates"] == 0,
        "every stream ended OK": summary["abnormal_stream_ends"] == 0,
        f"rss growth < {MAX_RSS_GROWTH:.0%}": growth < MAX_RSS_GROWTH,
        "fds after <= before": after["fds"] <= before["fds"],
        "asyncio tasks after <= before": after["tasks"] <= before["tasks"],
        "child processes after <= before": after["children"] <= before["children"],
        "gateway stopped cleanly": not problems,
    }
    summary["problems"] = problems
    summary["bounds"] = bounds
    summary["ok"] = all(bounds.values())
    if summary["ok"] and args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    return summary


def _counts(counts: dict[str, int]) -> dict[str, Any]:
    return {**{k: v for k, v in counts.items() if k != "rss"},
            "rss_mb": round(counts["rss"] / 2**20, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=500)
    parser.add_argument("--subscribers", type=int, default=4, help="per session")
    parser.add_argument("--minutes", type=float, default=10.0,
                        help="how long the load runs once every session is loaded")
    parser.add_argument("--warmup-minutes", type=float,
                        help="the RSS reference is taken this long into the load (default "
                        "4, or 40 %% of a shorter run: 500 replay rings take minutes to "
                        "fill at the paced rate)")
    parser.add_argument("--interval-ms", type=int, default=20,
                        help="each session's sim subscribe period")
    parser.add_argument("--clients", type=int, default=2,
                        help="client processes sharing the sessions")
    parser.add_argument("--workdir", type=pathlib.Path,
                        help="gateway state and log (default: a temporary folder, kept when "
                        "a bound is broken)")
    parser.add_argument("--client", help=argparse.SUPPRESS)  # internal: a client process
    args = parser.parse_args(argv)
    if args.client:
        print(json.dumps(asyncio.run(client_process(json.loads(args.client)))))
        return 0
    for name in ("sessions", "subscribers", "minutes", "interval_ms", "clients"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be > 0")
    if args.warmup_minutes is None:
        args.warmup_minutes = min(4.0, 0.4 * args.minutes)
    if not 0 <= args.warmup_minutes < args.minutes:
        parser.error("--warmup-minutes must be >= 0 and below --minutes")
    try:
        summary = asyncio.run(controller(args))
    except RuntimeError as exc:
        print(f"soak: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
