"""Fan-out benchmark (issue 3): one session, a burst, K concurrent subscribers.

For K in (1, 8, 64) it measures, in the same run:

* sessiongate: a real gateway process, a ``sim`` worker bursting N events of
  100 bytes, K ``StreamEvents`` subscribers spread over client processes;
* Redis Streams (the peer): a real ``redis-server`` on loopback, one XADD per event
  (pipelined in chunks, the producer's fastest honest form), each subscriber
  reading with XREAD from its last id, spread over client processes the same way;
* an in-process micro-benchmark: the fanout distributor delivering N events to K
  subscriptions (publish and drain) against a bare Python loop appending the same
  objects to K lists - the per-delivery floor.

Reported: aggregate deliveries/s (K*N / time until every subscriber has all N),
the slowest subscriber's events/s, medians over --runs, and same-run ratios.

    python bench/fanout.py [--quick] [--runs N] [--events N] [--ks 1,8,64]
"""

from __future__ import annotations

import argparse
import asyncio
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
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAYLOAD = 100
CLIENT_PROCS = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- sessiongate ---------------------------------------------------------------------------


class Gateway:
    def __init__(self, workdir: pathlib.Path, capacity: int, extra: str = "") -> None:
        self.workdir = workdir
        self.port = free_port()
        cfg = workdir / "bench.toml"
        cfg.write_text(
            f'state_dir = "{workdir / "state"}"\n'
            f'runtime_dir = "{workdir / "run"}"\n'
            f'server.grpc_address = "127.0.0.1:{self.port}"\n'
            'log.level = "WARNING"\n'
            f"events.queue_capacity = {capacity}\n"
            'events.backpressure_policy = "disconnect_subscriber"\n'
            "plugins.fanout.max_subscribers_per_session = 128\n"
            "plugins.reattach.enabled = false\n" + extra)
        self.log = open(workdir / "gateway.log", "wb")
        env = {k: v for k, v in os.environ.items() if not k.startswith("SESSIONGATE_")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sessiongate", "serve", "--config", str(cfg)],
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

    from sessiongate.core.client import GatewayClient

    async def main() -> None:
        async with grpc.aio.insecure_channel(address) as channel:
            client = GatewayClient(channel, key)
            calls = [client.stream(sid) for _ in range(count)]
            for call in calls:
                await call.read()  # attached
            ready.put(count)

            async def consume(call: Any) -> tuple[float, float]:
                got, first = 0, 0.0
                while got < n:
                    response = await call.read()
                    if response is grpc.aio.EOF:
                        raise RuntimeError(f"stream ended after {got} events")
                    if not first:
                        first = time.monotonic()
                    got += len(response.events)
                return first, time.monotonic()

            for res in await asyncio.gather(*(consume(c) for c in calls)):
                results.put(res)
            for call in calls:
                call.cancel()

    asyncio.run(main())


async def _open_session(address: str, key: str) -> str:
    import grpc

    from sessiongate.core.client import GatewayClient

    async with grpc.aio.insecure_channel(address) as channel:
        return (await GatewayClient(channel, key).open(client_name="bench")).session_id


async def _burst(address: str, key: str, sid: str, n: int) -> float:
    import grpc

    from sessiongate.core.client import GatewayClient

    async with grpc.aio.insecure_channel(address) as channel:
        client = GatewayClient(channel, key)
        t0 = time.monotonic()
        await client.invoke_json(sid, "burst", {"count": n, "size": PAYLOAD})
        return t0


def run_clients(target: Any, k: int, args: tuple[Any, ...], n: int,
                start: Any) -> tuple[float, float]:
    """Start K subscribers over CLIENT_PROCS processes, run ``start``; (aggregate, slowest)."""
    ctx = mp.get_context("spawn")
    ready, results = ctx.Queue(), ctx.Queue()
    per_proc = [k // CLIENT_PROCS + (1 if i < k % CLIENT_PROCS else 0)
                for i in range(min(k, CLIENT_PROCS))]
    procs = [ctx.Process(target=target, args=(*args, c, n, ready, results)) for c in per_proc]
    for p in procs:
        p.start()
    attached = sum(ready.get(timeout=120) for _ in procs)
    assert attached == k
    t0 = start()
    spans = [results.get(timeout=600) for _ in range(k)]
    for p in procs:
        p.join(60)
    t_end = max(end for _first, end in spans)
    aggregate = k * n / (t_end - t0)
    slowest = min(n / (end - t0) for _first, end in spans)
    return aggregate, slowest


def bench_sessiongate(k: int, n: int) -> tuple[float, float]:
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="sgb-"))
    gw = Gateway(workdir, capacity=n + 1000)
    try:
        sid = asyncio.run(_open_session(gw.address, gw.key))
        return run_clients(_sg_subscribers, k, (gw.address, gw.key, sid), n,
                           lambda: asyncio.run(_burst(gw.address, gw.key, sid, n)))
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
        async def consume(conn: Any) -> tuple[float, float]:
            last, got, first = "0-0", 0, 0.0
            while got < n:
                reply = await conn.xread({"s": last}, count=1000, block=0)
                for _stream, entries in reply:
                    if not first:
                        first = time.monotonic()
                    got += len(entries)
                    last = entries[-1][0]
            return first, time.monotonic()

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


def bench_redis(k: int, n: int) -> tuple[float, float]:
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="sgr-"))
    server = Redis(workdir)
    try:
        return run_clients(_redis_subscribers, k, (server.port,), n,
                           lambda: _redis_produce(server.port, n))
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


# -- in-process micro-benchmark ------------------------------------------------------------


def micro(k: int, n: int) -> tuple[float, float]:
    """(distributor deliveries/s, bare list-append deliveries/s) for K subscribers."""
    from sessiongate.core.events import Subscription
    from sessiongate.plugins.fanout import FanoutDistributor, ReplayRing
    from sessiongate.v1.gateway_pb2 import Event

    events = [Event(sequence=i + 1, kind="burst", payload=b"x" * PAYLOAD) for i in range(n)]
    batches = [events[i:i + 512] for i in range(0, n, 512)]

    lists: list[list[Any]] = [[] for _ in range(k)]
    t0 = time.perf_counter()
    for event in events:
        for target in lists:
            target.append(event)
    bare = k * n / (time.perf_counter() - t0)

    async def distribute() -> float:
        dist = FanoutDistributor(
            max_external=k, ring=ReplayRing(1024, 0), session_id="bench", capacity=n,
            policy="disconnect_subscriber", fault_session=lambda r: None,
            on_release=lambda s, r: None)
        subs = [dist.subscribe(Subscription(capacity=n)) for _ in range(k)]
        t0 = time.perf_counter()
        for batch in batches:
            dist.publish(batch)
            for sub in subs:  # the readers' side: take what arrived, as a stream would
                await sub.next(256)
                while sub.buffer:
                    await sub.next(256)
        return k * n / (time.perf_counter() - t0)

    return asyncio.run(distribute()), bare


# -- report ----------------------------------------------------------------------------------


def median_of(runs: int, fn: Any, *args: Any) -> tuple[float, ...]:
    samples = [fn(*args) for _ in range(runs)]
    return tuple(statistics.median(s[i] for s in samples) for i in range(len(samples[0])))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20k events, 1 run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--ks", default="1,8,64")
    args = parser.parse_args()
    n = 20_000 if args.quick else args.events
    runs = 1 if args.quick else args.runs
    ks = [int(k) for k in args.ks.split(",")]
    if shutil.which("redis-server") is None:
        print("redis-server is not installed (apt-get install redis-server)", file=sys.stderr)
        return 2
    print(f"fan-out: {n} events of {PAYLOAD} B, medians over {runs} run(s), "
          f"{os.cpu_count()} cores, {CLIENT_PROCS} client processes")
    header = (f"{'K':>3} | {'sessiongate agg/s':>17} | {'slowest/s':>10} | {'redis agg/s':>12} | "
              f"{'slowest/s':>10} | {'sg/redis':>8} | {'micro dist/s':>12} | {'bare/s':>12} | "
              f"{'dist/bare':>9}")
    print(header)
    print("-" * len(header))
    for k in ks:
        sg_agg, sg_slow = median_of(runs, bench_sessiongate, k, n)
        rd_agg, rd_slow = median_of(runs, bench_redis, k, n)
        dist, bare = median_of(max(runs, 3), micro, k, min(n, 200_000))
        print(f"{k:>3} | {sg_agg:>17,.0f} | {sg_slow:>10,.0f} | {rd_agg:>12,.0f} | "
              f"{rd_slow:>10,.0f} | {sg_agg / rd_agg:>8.2f} | {dist:>12,.0f} | {bare:>12,.0f} | "
              f"{dist / bare:>9.2f}", flush=True)
    print("targets: sg/redis >= 2.0 at K=8; dist/bare >= 0.25")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
