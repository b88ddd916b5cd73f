"""Fan-out benchmark (issue 3): one session, a burst, K concurrent subscribers.

For K in (1, 8, 64) it measures, in the same run:

* sessiongate: a real gateway process, a ``sim`` worker bursting N events of
  100 bytes, K ``StreamEvents`` subscribers spread over client processes;
* Redis Streams (the peer): a real ``redis-server`` on loopback, one XADD per event
  (pipelined in chunks, the producer's fastest honest form), each subscriber
  reading with XREAD from its last id, spread over client processes the same way;
* NATS core pub/sub (the second peer): a real ``nats-server`` on loopback, plain
  subjects, no JetStream; one publisher connection publishing N messages of 100 bytes
  as fast as it can (nats-py's 2 MiB write buffer, then a PING/PONG flush), one
  connection per subscriber, spread over client processes the same way. NATS core
  drops what a slow consumer cannot take, so every subscriber counts what it
  received: loss, the server's slow-consumer count and the client's slow-consumer
  drops are reported per run, never hidden;
* an in-process micro-benchmark: the fanout distributor delivering N events to K
  subscriptions (publish and drain) against a bare Python loop appending the same
  objects to K lists - the per-delivery floor.

Reported: aggregate deliveries/s (K*N / time until every subscriber has all N; for
NATS, events actually delivered / time until the last one arrived), the slowest
subscriber's events/s, medians over --runs, and same-run ratios.

    python bench/fanout.py [--quick] [--runs N] [--events N] [--ks 1,8,64]
                           [--peers sessiongate,redis,nats,micro]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import pathlib
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.request
from dataclasses import dataclass
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAYLOAD = 100
CLIENT_PROCS = 2

def _shipped_capacity() -> int:
    """events.queue_capacity as shipped with the sessiongate this interpreter imports."""
    import importlib.resources

    text = importlib.resources.files("sessiongate.settings").joinpath("settings.toml")
    return int(tomllib.loads(text.read_text())["events"]["queue_capacity"])


SHIPPED_CAPACITY = _shipped_capacity()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- sessiongate ---------------------------------------------------------------------------


class Gateway:
    """A ``sessiongate serve`` with the shipped ``events.*`` settings (queue capacity,
    stall timeout), ``disconnect_subscriber`` so that a subscriber that falls behind is
    cut alone (and counted as loss) instead of faulting the session, and room for 128
    subscribers. ``capacity`` overrides the queue capacity: only the pre-change
    baseline gets that (it disconnects a subscriber that falls that far behind).
    ``python``: the interpreter whose ``sessiongate`` is the code measured.
    """

    def __init__(self, workdir: pathlib.Path, capacity: int | None = None, extra: str = "",
                 python: str = sys.executable) -> None:
        self.workdir = workdir
        self.port = free_port()
        cfg = workdir / "bench.toml"
        cfg.write_text(
            f'state_dir = "{workdir / "state"}"\n'
            f'runtime_dir = "{workdir / "run"}"\n'
            f'server.grpc_address = "127.0.0.1:{self.port}"\n'
            'server.http_address = "127.0.0.1:0"\n'
            'log.level = "WARNING"\n'
            + (f"events.queue_capacity = {capacity}\n" if capacity is not None else "") +
            'events.backpressure_policy = "disconnect_subscriber"\n'
            "plugins.fanout.max_subscribers_per_session = 128\n"
            "plugins.reattach.enabled = false\n" + extra)
        self.log = open(workdir / "gateway.log", "wb")
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("SESSIONGATE_") and k != "PYTHONPATH"}
        self.proc = subprocess.Popen(
            [python, "-m", "sessiongate", "serve", "--config", str(cfg)],
            cwd=workdir, stdout=subprocess.DEVNULL, stderr=self.log, env=env)
        self.key = ""
        keyfile = workdir / "state" / "bootstrap-admin.key"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if keyfile.exists() and keyfile.read_text().strip():
                try:
                    with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                        self.key = keyfile.read_text().strip()
                        return
                except OSError:
                    pass
            time.sleep(0.05)
        raise RuntimeError("gateway did not start: " + (workdir / "gateway.log").read_text())

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def _sg_subscribers(address: str, key: str, sid: str, count: int, n: int,
                    ready: Any, results: Any) -> None:
    import grpc

    from sessiongate.client import GatewayClient

    async def main() -> None:
        async with grpc.aio.insecure_channel(address) as channel:
            client = GatewayClient(channel, key)
            calls = [client.stream(sid) for _ in range(count)]
            for call in calls:
                await call.read()  # attached
            ready.put(count)

            async def consume(call: Any) -> tuple[float, float, int, str]:
                got, first, last, why = 0, 0.0, 0.0, ""
                try:
                    while got < n:
                        response = await call.read()
                        if response is grpc.aio.EOF:
                            why = "stream ended"
                            break
                        if response.HasField("gap"):
                            why = "gap"
                        if not first:
                            first = time.monotonic()
                        got += len(response.events)
                        last = time.monotonic()
                except grpc.aio.AioRpcError as exc:
                    why = f"{exc.code().name}: {exc.details()}"
                return first, last, got, why

            for res in await asyncio.gather(*(consume(c) for c in calls)):
                results.put(res)
            for call in calls:
                call.cancel()

    asyncio.run(main())


async def _open_session(address: str, key: str) -> str:
    import grpc

    from sessiongate.client import GatewayClient

    async with grpc.aio.insecure_channel(address) as channel:
        return (await GatewayClient(channel, key).open(client_name="bench")).session_id


async def _burst(address: str, key: str, sid: str, n: int) -> float:
    import grpc

    from sessiongate.client import GatewayClient

    async with grpc.aio.insecure_channel(address) as channel:
        client = GatewayClient(channel, key)
        t0 = time.monotonic()
        await client.invoke_json(sid, "burst", {"count": n, "size": PAYLOAD})
        return t0


def spawn_clients(target: Any, k: int, args: tuple[Any, ...], n: int,
                  start: Any) -> tuple[Any, list[Any]]:
    """Start K subscribers over CLIENT_PROCS processes, run ``start``.

    Returns what ``start`` returned and the K results the subscribers reported.
    """
    ctx = mp.get_context("spawn")
    ready, results = ctx.Queue(), ctx.Queue()
    per_proc = [k // CLIENT_PROCS + (1 if i < k % CLIENT_PROCS else 0)
                for i in range(min(k, CLIENT_PROCS))]
    procs = [ctx.Process(target=target, args=(*args, c, n, ready, results)) for c in per_proc]
    for p in procs:
        p.start()
    attached = sum(ready.get(timeout=120) for _ in procs)
    assert attached == k
    started = start()
    reported = [results.get(timeout=600) for _ in range(k)]
    for p in procs:
        p.join(60)
    return started, reported


LOSS: list[str] = []  # what sessiongate or Redis subscribers missed, run by run


def run_clients(target: Any, k: int, args: tuple[Any, ...], n: int,
                start: Any, peer: str) -> tuple[float, float, int]:
    """Subscribers that should each receive all N events: (aggregate, slowest, lost).

    Rates count what was delivered: aggregate = events delivered to all subscribers /
    time from the start until the last one arrived; slowest = the lowest per-subscriber
    received / time until its last. That is K*N / time when nothing is lost.
    """
    t0, spans = spawn_clients(target, k, args, n, start)
    t_end = max([last for _first, last, got, _why in spans if got], default=t0 + 1e-9)
    delivered = sum(got for _first, _last, got, _why in spans)
    aggregate = delivered / (t_end - t0)
    slowest = min((got / (last - t0) if got else 0.0) for _first, last, got, _why in spans)
    lost = k * n - delivered
    if lost:
        whys: dict[str, int] = {}
        for _first, _last, got, why in spans:
            if got < n:
                whys[why or "?"] = whys.get(why or "?", 0) + 1
        LOSS.append(f"{peer} K={k}: LOST {lost:,} of {k * n:,} deliveries "
                    f"({sum(whys.values())} of {k} subscribers short: "
                    f"{', '.join(f'{v} {w}' for w, v in whys.items())})")
    return aggregate, slowest, lost


def bench_sessiongate(k: int, n: int, python: str = sys.executable,
                      capacity: int | None = None,
                      peer: str = "sessiongate") -> tuple[float, float, int]:
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="sgb-"))
    gw = Gateway(workdir, capacity=capacity, python=python)
    try:
        sid = asyncio.run(_open_session(gw.address, gw.key))
        return run_clients(_sg_subscribers, k, (gw.address, gw.key, sid), n,
                           lambda: asyncio.run(_burst(gw.address, gw.key, sid, n)), peer)
    finally:
        gw.stop()
        shutil.rmtree(workdir, ignore_errors=True)


# -- Redis Streams peer ----------------------------------------------------------------------


class Redis:
    def __init__(self, workdir: pathlib.Path) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(20)


def _redis_subscribers(port: int, count: int, n: int, ready: Any, results: Any) -> None:
    import redis.asyncio as aioredis

    async def main() -> None:
        async def consume(conn: Any) -> tuple[float, float, int, str]:
            last, got, first = "0-0", 0, 0.0
            while got < n:
                reply = await conn.xread({"s": last}, count=1000, block=0)
                for _stream, entries in reply:
                    if not first:
                        first = time.monotonic()
                    got += len(entries)
                    last = entries[-1][0]
            return first, time.monotonic(), got, ""

        conns = [aioredis.Redis(port=port) for _ in range(count)]
        for conn in conns:
            await conn.ping()
        ready.put(count)
        for res in await asyncio.gather(*(consume(c) for c in conns)):
            results.put(res)
        for conn in conns:
            await conn.aclose()

    asyncio.run(main())


def _redis_produce(port: int, n: int) -> float:
    import redis

    conn = redis.Redis(port=port)
    body = b"x" * PAYLOAD
    t0 = time.monotonic()
    for start in range(0, n, 512):
        pipe = conn.pipeline(transaction=False)
        for _ in range(min(512, n - start)):
            pipe.xadd("s", {"p": body})
        pipe.execute()
    conn.close()
    return t0


def bench_redis(k: int, n: int) -> tuple[float, float, int]:
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="sgr-"))
    server = Redis(workdir)
    try:
        return run_clients(_redis_subscribers, k, (server.port,), n,
                           lambda: _redis_produce(server.port, n), "redis")
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


# -- NATS core peer --------------------------------------------------------------------------

NATS_SUBJECT = "fanout"
NATS_IDLE_S = 10.0  # once all is published, a subscriber idle this long stops (marker lost)


class Nats:
    """A ``nats-server`` on loopback (client port and monitoring port), its own temp dir."""

    def __init__(self, workdir: pathlib.Path, extra: str = "") -> None:
        self.port, self.http_port = free_port(), free_port()
        cfg = workdir / "nats.conf"
        cfg.write_text(f'listen: "127.0.0.1:{self.port}"\n'
                       f'http: "127.0.0.1:{self.http_port}"\n'
                       f'pid_file: "{workdir / "nats.pid"}"\n' + extra)
        log, err = workdir / "nats.log", workdir / "nats.stderr"
        with open(err, "wb") as stderr:
            self.proc = subprocess.Popen(
                ["nats-server", "-c", str(cfg), "-l", str(log)], cwd=workdir,
                stdout=subprocess.DEVNULL, stderr=stderr)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        said = "".join(f.read_text(errors="replace") for f in (err, log) if f.exists())
        raise RuntimeError(f"nats-server did not start: {said.strip()}")

    def monitor(self, path: str) -> Any:
        # loopback only: ignore any http_proxy in the environment
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"http://127.0.0.1:{self.http_port}/{path}", timeout=10) as reply:
            return json.load(reply)

    def cut_reasons(self) -> dict[str, int]:
        """Why the server closed subscriber connections (e.g. a slow-consumer reason)."""
        reasons: dict[str, int] = {}
        for conn in self.monitor("connz?state=closed&limit=10000")["connections"] or []:
            if conn.get("name") == "fanout-sub":
                reason = conn.get("reason") or "?"
                reasons[reason] = reasons.get(reason, 0) + 1
        return reasons

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _nats_subscribers(port: int, published: Any, count: int, n: int, ready: Any,
                      results: Any) -> None:
    """``count`` subscribers, one connection each; each reports what it received.

    A subscriber stops at the publisher's end marker (an empty message after the N
    data messages, same subject, so it arrives after every data message that was
    delivered), when its connection is closed (NATS cuts slow consumers), or, once
    ``published`` is set (the publisher is done), after NATS_IDLE_S without a message
    (the marker itself was dropped).
    """
    import nats
    from nats.errors import SlowConsumerError

    class Sub:
        def __init__(self) -> None:
            self.got, self.first, self.last = 0, 0.0, 0.0
            self.drops = 0  # client-side slow-consumer drops (nats-py's pending limits)
            self.errors: list[str] = []
            self.ended = ""  # "end" marker seen, "cut" (closed), "idle"
            self.done = asyncio.Event()
            self.nc: Any = None

        async def on_msg(self, msg: Any) -> None:
            if msg.data:
                now = time.monotonic()
                if not self.first:
                    self.first = now
                self.last = now
                self.got += 1
            elif not self.ended:
                self.ended = "end"
                self.done.set()

        async def on_error(self, err: Exception) -> None:
            if isinstance(err, SlowConsumerError):
                self.drops += 1
            elif len(self.errors) < 3:
                self.errors.append(repr(err))

        async def on_closed(self) -> None:
            if not self.ended:
                self.ended = "cut"
                self.done.set()

        async def wait(self) -> None:
            since = 0.0  # when this subscriber first saw that the publisher was done
            while not self.done.is_set():
                try:
                    await asyncio.wait_for(self.done.wait(), 1.0)
                except TimeoutError:
                    if not since and published.is_set():
                        since = time.monotonic()
                    if since and time.monotonic() - max(since, self.last) > NATS_IDLE_S:
                        self.ended = "idle"
                        break
            if not self.nc.is_closed:
                await self.nc.close()

    async def main() -> None:
        subs = [Sub() for _ in range(count)]
        for sub in subs:
            sub.nc = await nats.connect(
                f"nats://127.0.0.1:{port}", allow_reconnect=False, name="fanout-sub",
                error_cb=sub.on_error, closed_cb=sub.on_closed)
            await sub.nc.subscribe(NATS_SUBJECT, cb=sub.on_msg)
            await sub.nc.flush()  # the server has the subscription before we say ready
        ready.put(count)
        await asyncio.gather(*(sub.wait() for sub in subs))
        for sub in subs:
            results.put((sub.first, sub.last, sub.got, sub.drops, sub.ended, sub.errors))

    asyncio.run(main())


async def _nats_produce(port: int, n: int) -> tuple[float, float]:
    """Publish N messages as fast as nats-py goes; (start, all published and flushed)."""
    import nats

    nc = await nats.connect(f"nats://127.0.0.1:{port}", allow_reconnect=False,
                            name="fanout-pub")
    body = b"x" * PAYLOAD
    publish = nc.publish
    t0 = time.monotonic()
    for _ in range(n):
        # buffered: nats-py writes when its 2 MiB pending buffer fills
        await publish(NATS_SUBJECT, body)
    await nc.flush(timeout=120)  # PING/PONG: the server has routed every message
    t_published = time.monotonic()
    await publish(NATS_SUBJECT, b"")  # end marker
    await nc.flush(timeout=120)
    await nc.close()
    return t0, t_published


@dataclass
class NatsRun:
    """One NATS run at one K: rates of what was delivered, and what was not."""

    aggregate: float  # events delivered to all subscribers / time until the last one
    rates: list[float]  # per subscriber: received / (its last event - start)
    publish_rate: float  # N / time until every message was published and flushed
    k: int
    sent: int
    received: list[int]
    client_drops: int  # nats-py SlowConsumerError drops, summed over subscribers
    server_slow: int  # the server's slow_consumers counter (/varz) for this run
    ended: dict[str, int]  # how subscribers stopped: end marker, cut, idle
    closed: dict[str, int]  # the server's reasons for the closed subscriber connections
    errors: list[str]

    @property
    def slowest(self) -> float:
        return min(self.rates)

    @property
    def lost(self) -> int:
        return self.k * self.sent - sum(self.received)

    @property
    def lossy(self) -> int:
        return sum(1 for got in self.received if got < self.sent)


NATS_INFO: dict[str, Any] = {}


def bench_nats(k: int, n: int) -> NatsRun:
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="sgn-"))
    try:
        server = Nats(workdir)
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    try:
        times: list[tuple[float, float]] = []
        published = mp.get_context("spawn").Event()

        def start() -> float:
            times.append(asyncio.run(_nats_produce(server.port, n)))
            published.set()
            return times[0][0]

        t0, reports = spawn_clients(_nats_subscribers, k, (server.port, published), n, start)
        varz = server.monitor("varz")
        reasons = server.cut_reasons()
        NATS_INFO.update(version=varz.get("version"), max_pending=varz.get("max_pending"),
                         write_deadline=varz.get("write_deadline"))
        received = [got for _f, _l, got, _d, _e, _x in reports]
        lasts = [last for _f, last, got, _d, _e, _x in reports if got]
        ended: dict[str, int] = {}
        for *_, how, _x in reports:
            ended[how] = ended.get(how, 0) + 1
        rates = [got / (last - t0) if got else 0.0 for _f, last, got, _d, _e, _x in reports]
        return NatsRun(
            aggregate=sum(received) / (max(lasts) - t0) if lasts else 0.0,
            rates=rates, publish_rate=n / (times[0][1] - t0), k=k, sent=n,
            received=received, client_drops=sum(r[3] for r in reports),
            server_slow=int(varz.get("slow_consumers", 0)), ended=ended, closed=reasons,
            errors=sorted({e for r in reports for e in r[5]}))
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def nats_detail(k: int, i: int, run: NatsRun) -> str:
    got = sorted(run.received)
    line = (f"nats K={k} run {i}: sent {run.sent:,} to each of {k}; received per subscriber "
            f"min {got[0]:,} median {int(statistics.median(got)):,} max {got[-1]:,}; "
            f"LOST {run.lost:,} ({run.lossy} of {k} subscribers short); "
            f"server slow consumers {run.server_slow}; client slow-consumer drops "
            f"{run.client_drops:,}; ended {', '.join(f'{v} {h}' for h, v in run.ended.items())}"
            f" (server's close reasons: "
            f"{', '.join(f'{v} {r}' for r, v in run.closed.items()) or 'none'}); "
            f"delivered/s aggregate {run.aggregate:,.0f}, per subscriber min "
            f"{run.slowest:,.0f} median {statistics.median(run.rates):,.0f} max "
            f"{max(run.rates):,.0f}; "
            f"publish {run.publish_rate:,.0f} msg/s")
    if run.errors:
        line += "; client errors: " + "; ".join(run.errors)
    return line


# -- in-process micro-benchmark ------------------------------------------------------------


def micro(k: int, n: int) -> tuple[float, float]:
    """(distributor deliveries/s, bare list-append deliveries/s) for K subscribers.

    Both deliver the same N event objects to K readers. The distributor: the fanout
    plugin's, as the gateway builds it (a 1024-event replay retention), K external
    subscriptions; a batch of 512 is published, then every subscription takes what
    arrived, 256 at a time, as its stream would. Runs on either API: the current one
    (subscriptions are cursors into the distributor's ``EventLog``; the shipped
    ``events.queue_capacity``) or the pre-change one (``ReplayRing``, a buffer per
    subscription, capacity N as before), so that ``--baseline`` runs this very
    function on the pre-change checkout.
    """
    from sessiongate.core.streaming import events as core_events
    from sessiongate.plugins import fanout
    from sessiongate.v1.gateway_pb2 import Event

    events = [Event(sequence=i + 1, kind="burst", payload=b"x" * PAYLOAD) for i in range(n)]
    batches = [events[i:i + 512] for i in range(0, n, 512)]

    lists: list[list[Any]] = [[] for _ in range(k)]
    t0 = time.perf_counter()
    for event in events:
        for target in lists:
            target.append(event)
    bare = k * n / (time.perf_counter() - t0)

    common: dict[str, Any] = {
        "session_id": "bench", "policy": "disconnect_subscriber",
        "fault_session": lambda r: None, "on_release": lambda s, r: None}
    ring = getattr(fanout, "ReplayRing", None)
    subscription = core_events.Subscription

    async def distribute() -> float:
        if ring is not None:  # the pre-change API, measured as it was
            dist = fanout.FanoutDistributor(max_external=k, ring=ring(1024, 0), capacity=n,
                                            **common)
            subs = [dist.subscribe(subscription(capacity=n)) for _ in range(k)]
            t0 = time.perf_counter()
            for batch in batches:
                dist.publish(batch)
                for sub in subs:
                    await sub.next(256)
                    while sub.buffer:
                        await sub.next(256)
            return k * n / (time.perf_counter() - t0)
        dist = fanout.FanoutDistributor(
            max_external=k, log=core_events.EventLog(1024, 0), capacity=SHIPPED_CAPACITY,
            **common)
        subs = [dist.subscribe(subscription()) for _ in range(k)]
        t0 = time.perf_counter()
        for batch in batches:
            dist.publish(batch)
            for sub in subs:  # the readers' side: take what arrived, as a stream would
                await sub.next(256)
                while sub.backlog:
                    await sub.next(256)
        return k * n / (time.perf_counter() - t0)

    return asyncio.run(distribute()), bare


def micro_baseline(python: str, k: int, n: int) -> tuple[float, float]:
    """:func:`micro` run by ``python`` (the pre-change checkout's interpreter)."""
    env = {key: v for key, v in os.environ.items() if key != "PYTHONPATH"}
    out = subprocess.run([python, str(pathlib.Path(__file__).resolve()), "--micro-json",
                          str(k), str(n)], capture_output=True, text=True, env=env,
                         check=False)
    if out.returncode:
        raise RuntimeError(f"baseline micro failed: {out.stderr.strip()}")
    dist, bare = json.loads(out.stdout)
    return dist, bare


# -- report ----------------------------------------------------------------------------------


PEERS = ("sessiongate", "redis", "nats", "micro")


def cell(value: float | None, width: int, spec: str = ",.0f", missing: str = "-") -> str:
    return f"{missing:>{width}}" if value is None else f"{value:>{width}{spec}}"


def lost_cell(lost: list[int]) -> str:
    total = sum(lost)
    return f"{total:,}" if not total else f"{total:,} ({sum(1 for x in lost if x)}/{len(lost)})"


def baseline_python(checkout: str, python: str | None) -> str:
    """The interpreter whose ``sessiongate`` is the checkout at ``checkout``; checked."""
    root = pathlib.Path(checkout).resolve()
    python = python or str(root / ".venv" / "bin" / "python")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = subprocess.run(
        [python, "-c", "import sessiongate.core.streaming.events as m; print(m.__file__)"],
        capture_output=True, text=True, check=False, env=env) if os.path.exists(python) else None
    found = pathlib.Path(where.stdout.strip() or "?").resolve() if where else None
    if where is None or where.returncode or found is None or root not in found.parents:
        raise SystemExit(f"--baseline {checkout}: {python} does not import sessiongate from "
                         f"there (see bench/README.md: a worktree and its own venv)")
    return python


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20k events, 1 run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--ks", default="1,8,64")
    parser.add_argument("--peers", default=",".join(PEERS),
                        help="comma list of what to measure: sessiongate, redis, nats, micro "
                             "(the in-process distributor micro-benchmark); default all")
    parser.add_argument("--baseline", metavar="PATH",
                        help="a checkout of the pre-change code: its gateway (sessiongate "
                             "peer) and distributor (micro) are measured beside the current "
                             "ones, run by run")
    parser.add_argument("--baseline-python", metavar="PY",
                        help="interpreter with PATH's sessiongate installed "
                             "(default: PATH/.venv/bin/python)")
    parser.add_argument("--micro-json", nargs=2, type=int, metavar=("K", "N"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.micro_json:  # run by micro_baseline() under the baseline's interpreter
        print(json.dumps(micro(*args.micro_json)))
        return 0
    n = 20_000 if args.quick else args.events
    runs = 1 if args.quick else args.runs
    ks = [int(k) for k in args.ks.split(",")]
    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    if not peers or set(peers) - set(PEERS):
        parser.error(f"--peers: choose from {', '.join(PEERS)}")
    before = baseline_python(args.baseline, args.baseline_python) if args.baseline else None
    if "redis" in peers and shutil.which("redis-server") is None:
        print("redis-server is not installed (apt-get install redis-server)", file=sys.stderr)
        return 2
    nats_skip = ""
    if "nats" in peers:
        import importlib.util

        if shutil.which("nats-server") is None:
            nats_skip = "nats-server is not installed (apt-get install nats-server)"
        elif importlib.util.find_spec("nats") is None:
            nats_skip = "nats-py is not installed (pip install nats-py)"
        if nats_skip:
            print(f"NATS peer skipped: {nats_skip}", file=sys.stderr)
    print(f"fan-out: {n} events of {PAYLOAD} B, medians over {runs} run(s), "
          f"{os.cpu_count()} cores, {CLIENT_PROCS} client processes, "
          f"peers: {', '.join(peers)}; sessiongate on its shipped events.queue_capacity "
          f"({SHIPPED_CAPACITY}) and stall timeout, backpressure_policy "
          "disconnect_subscriber")
    import sessiongate.core

    here = pathlib.Path(sessiongate.core.__file__).resolve().parents[1]
    head = subprocess.run(["git", "-C", str(here), "log", "-1", "--format=%h"],
                          capture_output=True, text=True, check=False).stdout.strip()
    print(f"now: the sessiongate of {sys.executable}: {here} at {head or '?'}")
    if before:
        print(f"baseline: {args.baseline} run by {before}: its gateway with "
              f"events.queue_capacity = {n + 1000} (the pre-change code disconnects a "
              "subscriber that falls that far behind: raised to the burst, as it was "
              "measured before)")
    header = (f"{'K':>3} | {'sessiongate agg/s':>17} | {'slowest/s':>10} | "
              f"{'sg lost (runs)':>14} | {'redis agg/s':>12} | "
              f"{'slowest/s':>10} | {'sg/redis':>8} | {'nats agg/s':>12} | {'slowest/s':>10} | "
              f"{'nats lost (runs)':>16} | {'sg/nats':>8} | {'micro dist/s':>12} | "
              f"{'bare/s':>12} | {'dist/bare':>9}")
    print(header)
    print("-" * len(header))
    details: list[str] = []
    nats_lossy = False
    before_rows: list[str] = []
    for k in ks:
        sg_agg = sg_slow = rd_agg = rd_slow = dist = bare = None
        nats_agg = nats_slow = None
        nats_lost, lost = ("skipped" if nats_skip else "-"), 0
        sg_lost = "-"
        sg_before: list[tuple[float, float, int]] = []
        sg_now: list[tuple[float, float, int]] = []
        rd_runs: list[tuple[float, float, int]] = []
        nats_runs: list[NatsRun] = []
        # run by run, every peer in turn, so that machine noise hits them alike; with a
        # baseline, its gateway beside the current one, the order alternating
        for run in range(runs):
            if "sessiongate" in peers:
                if before and run % 2:
                    sg_before.append(bench_sessiongate(k, n, before, n + 1000, "before"))
                sg_now.append(bench_sessiongate(k, n))
                if before and not run % 2:
                    sg_before.append(bench_sessiongate(k, n, before, n + 1000, "before"))
            if "redis" in peers:
                rd_runs.append(bench_redis(k, n))
            if "nats" in peers and not nats_skip:
                nats_runs.append(bench_nats(k, n))
        if sg_now:
            sg_agg = statistics.median(r[0] for r in sg_now)
            sg_slow = statistics.median(r[1] for r in sg_now)
            sg_lost = lost_cell([r[2] for r in sg_now])
        if rd_runs:
            rd_agg = statistics.median(r[0] for r in rd_runs)
            rd_slow = statistics.median(r[1] for r in rd_runs)
        if nats_runs:
            nats_agg = statistics.median(r.aggregate for r in nats_runs)
            nats_slow = statistics.median(r.slowest for r in nats_runs)
            lost = sum(r.lost for r in nats_runs)
            nats_lost = lost_cell([r.lost for r in nats_runs])
            nats_lossy = nats_lossy or bool(lost)
            details += [nats_detail(k, i + 1, r) for i, r in enumerate(nats_runs)]
        micro_now: list[tuple[float, float]] = []
        micro_before: list[tuple[float, float]] = []
        if "micro" in peers:
            mn = min(n, 200_000)
            for _ in range(max(runs, 3)):
                micro_now.append(micro(k, mn))
                if before:
                    micro_before.append(micro_baseline(before, k, mn))
            dist = statistics.median(m[0] for m in micro_now)
            bare = statistics.median(m[1] for m in micro_now)
        sg_rd = sg_agg / rd_agg if sg_agg and rd_agg else None
        sg_nats = sg_agg / nats_agg if sg_agg and nats_agg else None
        nats_missing = "skipped" if nats_skip else "-"
        sg_nats_cell = cell(sg_nats, 8, ".2f", nats_missing)
        if sg_nats is not None and lost:  # NATS lost events at this K
            sg_nats_cell = f"{sg_nats:>7.2f}*"
        print(f"{k:>3} | {cell(sg_agg, 17)} | {cell(sg_slow, 10)} | {sg_lost:>14} | "
              f"{cell(rd_agg, 12)} | "
              f"{cell(rd_slow, 10)} | {cell(sg_rd, 8, '.2f')} | "
              f"{cell(nats_agg, 12, missing=nats_missing)} | "
              f"{cell(nats_slow, 10, missing=nats_missing)} | {nats_lost:>16} | "
              f"{sg_nats_cell} | {cell(dist, 12)} | {cell(bare, 12)} | "
              f"{cell(dist / bare if dist and bare else None, 9, '.2f')}", flush=True)
        if before:
            sg_b = statistics.median(r[0] for r in sg_before) if sg_before else None
            sg_ratio = (statistics.median(a[0] / b[0] for a, b in zip(sg_now, sg_before,
                                                                      strict=True))
                        if sg_before else None)
            mb = statistics.median(m[0] for m in micro_before) if micro_before else None
            mb_ratio = (statistics.median(a[0] / b[0] for a, b in zip(
                micro_now, micro_before, strict=True)) if micro_before else None)
            mb_bare = (statistics.median(m[0] / m[1] for m in micro_before)
                       if micro_before else None)
            before_rows.append(
                f"{k:>3} | {cell(sg_agg, 15)} | {cell(sg_b, 15)} | "
                f"{cell(sg_ratio, 10, '.2f')} | "
                f"{lost_cell([r[2] for r in sg_before]) if sg_before else '-':>16} | "
                f"{cell(dist, 14)} | {cell(mb, 14)} | {cell(mb_ratio, 10, '.2f')} | "
                f"{cell(mb_bare, 16, '.2f')}")
    print("targets: sg/redis >= 2.5 at K=8; dist/bare >= 0.25 (sg/nats: information, no target)")
    for line in LOSS:
        if not line.startswith("before"):
            print(line)
    if before:
        head = (f"{'K':>3} | {'sg now agg/s':>15} | {'sg before agg/s':>15} | "
                f"{'now/before':>10} | {'before lost':>16} | {'micro dist now':>14} | "
                f"{'micro before':>14} | {'now/before':>10} | {'before dist/bare':>16}")
        print("\npre-change code, same run (now/before: median of same-run ratios)")
        print(head)
        print("-" * len(head))
        for row in before_rows:
            print(row)
        for line in LOSS:
            if line.startswith("before"):
                print(line)
    if nats_skip:
        print(f"NATS peer skipped: {nats_skip}")
    elif "nats" in peers:
        print(f"NATS: nats-server {NATS_INFO.get('version')} as shipped (max_pending "
              f"{NATS_INFO.get('max_pending', 0) / 2**20:.0f} MiB, write_deadline "
              f"{NATS_INFO.get('write_deadline', 0) / 1e9:.0f} s), no JetStream; nats-py "
              f"{_nats_version()}, default subscription pending limits; NATS rates count "
              f"delivered events only; 'nats lost' = events not delivered, summed over runs "
              f"(runs with loss / runs)")
        if nats_lossy:
            print("NATS LOST EVENTS (* above): its rates and sg/nats count only what was "
                  "delivered; per-run loss below")
        for line in details:
            print(line)
    return 0


def _nats_version() -> str:
    from importlib.metadata import version

    return version("nats-py")


if __name__ == "__main__":
    raise SystemExit(main())
