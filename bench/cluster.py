"""Cluster benchmark (issue 18): directory propagation between two nodes, revocation to
stream end, against a same-run baseline of bare redis-py XADD → XREADGROUP.

Everything runs in this process, on one event loop (the two nodes and the baseline
share it alike), against a real ``redis-server`` on a free loopback port:

* propagate: two real gateways (plugins as shipped, cluster on), node A publishing
  session changes at --rate per second (default 1000) for --seconds (the plugin's own
  path: its bounded queue, a transaction of XADD + HSET per batch; node B reading its
  consumer group, decoding strictly, applying to its directory). Latency = the change
  queued on A → applied on B. p50 and p99 in ms.
* bare: the baseline, the same run, the same rate: one task XADDs a timestamp, another
  reads with XREADGROUP (BLOCK) and acknowledges; latency per entry. p50 and p99 in ms.
* revoke: a real gRPC stream on A with a key made on B; the key is revoked on B (its
  key store, as ``sessiongate keys revoke`` does); time until the stream ends
  UNAUTHENTICATED on A (B's key watcher looks every 0.25 s). --revocations per run.

Each row is the median over --runs; the ratio line is propagate p99 / bare p99 and the
target check ``propagate p99 <= 2 x bare p99 + 5 ms``.

    python bench/cluster.py [--quick] [--runs N] [--rate R] [--seconds S] [--revocations N]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import pathlib
import secrets
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from typing import Any


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def redis_server(folder: pathlib.Path) -> Any:
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(folder)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import redis

        client = redis.Redis(port=port)
        for _ in range(500):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.01)
        client.close()
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def paced(rate: int, seconds: float) -> AsyncIterator[int]:
    """Yield 0, 1, 2 … at ``rate`` per second (in 10 ms slots)."""
    per_slot = max(1, rate // 100)
    start = time.perf_counter()
    n = 0
    total = int(rate * seconds)
    while n < total:
        for _ in range(min(per_slot, total - n)):
            yield n
            n += 1
        slot = start + n / rate
        await asyncio.sleep(max(0.0, slot - time.perf_counter()))


# -- the gateways ------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def node(folder: pathlib.Path, name: str, redis_url: str, stream: str,
               grpc: bool = False) -> AsyncIterator[Any]:
    from sessiongate.core.gateway import Gateway
    from sessiongate.core.pluginhost.host import load
    from sessiongate.core.rpc.server import GrpcServer
    from sessiongate.testing import write_config

    port = free_port()
    config = write_config(folder / f"{name}.toml", {
        "state_dir": str(folder / f"state-{name}"), "runtime_dir": str(folder / f"r-{name}"),
        "server.grpc_address": f"127.0.0.1:{port}", "server.http_address": "",
        "plugins.cluster.enabled": True, "plugins.cluster.redis_url": redis_url,
        "plugins.cluster.stream": stream, "plugins.cluster.node_id": name,
        "plugins.cluster.advertise_address": f"127.0.0.1:{port}",
        "plugins.acl.revocation_check_interval_seconds": 60})
    settings, pm = load(str(config))
    gateway = Gateway(settings, pm)
    server = GrpcServer(gateway) if grpc else None
    await gateway.start()
    if server is not None:
        await server.start()
    try:
        yield gateway, server
    finally:
        if server is not None:
            await server.stop()
        else:
            await gateway.stop()


def runtime(gateway: Any) -> Any:
    from sessiongate.plugins.cluster import runtime_of

    return runtime_of(gateway.api)


async def until(check: Any, timeout: float = 30.0) -> None:
    deadline = time.perf_counter() + timeout
    while not check():
        if time.perf_counter() > deadline:
            raise TimeoutError("condition not met")
        await asyncio.sleep(0.005)


async def propagate(a: Any, b: Any, rate: int, seconds: float) -> list[float]:
    from sessiongate.plugins.cluster.records import Snapshot

    sent: dict[str, float] = {}
    latencies: list[float] = []
    directory = runtime(b).directory
    apply = directory.apply

    def timed(snapshot: Any) -> bool:
        taken = apply(snapshot)
        started = sent.pop(snapshot.session_id, None)
        if started is not None:
            latencies.append(time.perf_counter() - started)
        return taken

    directory.apply = timed
    node_a = runtime(a)
    ids = [secrets.token_hex(16) for _ in range(64)]  # 64 sessions changing in turn
    stamp = time.time_ns() // 1_000_000
    async for n in paced(rate, seconds):
        sid = ids[n % len(ids)]
        stamp += 1
        sent[sid] = time.perf_counter()
        node_a.publish_session(None, snapshot=Snapshot(
            session_id=sid, node_id="a", node=node_a.address, state="READY",
            owner_key_id="k", tag="", last_sequence=n, updated_at_ms=stamp))
    await until(lambda: not sent)
    directory.apply = apply
    return latencies


async def bare(redis_url: str, rate: int, seconds: float) -> list[float]:
    import redis.asyncio as aioredis

    stream, group = f"bare:{secrets.token_hex(4)}", "g"
    latencies: list[float] = []
    total = int(rate * seconds)
    async with aioredis.Redis.from_url(redis_url) as producer, \
            aioredis.Redis.from_url(redis_url) as consumer:
        await producer.xgroup_create(stream, group, id="$", mkstream=True)

        async def consume() -> None:
            while len(latencies) < total:
                reply = await consumer.xreadgroup(group, "c", {stream: ">"}, count=128,
                                                  block=1000)
                for _name, entries in reply or ():
                    now = time.perf_counter()
                    latencies.extend(now - float(fields[b"t"]) for _id, fields in entries)
                    await consumer.xack(stream, group, *(i for i, _f in entries))

        reader = asyncio.ensure_future(consume())
        async for _n in paced(rate, seconds):
            await producer.xadd(stream, {"t": repr(time.perf_counter())}, maxlen=100_000)
        await asyncio.wait_for(reader, 30)
    return latencies


async def revoke(a: Any, b: Any, server_a: Any, count: int) -> list[float]:
    import grpc

    from sessiongate.client import connect
    from sessiongate.testing import stream_end

    results = []
    for _ in range(count):
        key_id, key = await b.keys.create("bench")
        await until(lambda k=key_id: k in runtime(a).keyring)
        await until(lambda k=key_id: k in runtime(b).keyring)
        async with connect(server_a.address, key) as client:
            sid = (await client.open()).session_id
            call = client.stream(sid)
            await call.read()
            started = time.perf_counter()
            await b.keys.revoke(key_id)
            code, _details = await stream_end(call)
            results.append(time.perf_counter() - started)
            assert code == grpc.StatusCode.UNAUTHENTICATED, code
    return results


async def one_run(folder: pathlib.Path, redis_url: str, args: argparse.Namespace
                  ) -> dict[str, float]:
    stream = f"bench{secrets.token_hex(3)}:sessions"
    async with node(folder, "a", redis_url, stream, grpc=True) as (a, server_a), \
            node(folder, "b", redis_url, stream) as (b, _server):
        await until(lambda: runtime(a).connected.is_set() and runtime(b).connected.is_set())
        base = await bare(redis_url, args.rate, args.seconds)
        prop = await propagate(a, b, args.rate, args.seconds)
        rev = await revoke(a, b, server_a, args.revocations)
    ms = 1000.0
    return {"propagate p50": percentile(prop, 0.5) * ms,
            "propagate p99": percentile(prop, 0.99) * ms,
            "bare p50": percentile(base, 0.5) * ms, "bare p99": percentile(base, 0.99) * ms,
            "revoke p50": percentile(rev, 0.5) * ms, "revoke max": max(rev) * ms}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--revocations", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="1 run, 1 s, 2 revocations")
    args = parser.parse_args()
    if args.quick:
        args.runs, args.seconds, args.revocations = 1, 1.0, 2
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server is not installed (apt-get install redis-server)")
    folder = pathlib.Path(tempfile.mkdtemp(prefix="sg-bench-cluster-"))
    rows: dict[str, list[float]] = {}
    try:
        with redis_server(folder) as redis_url:
            for run in range(args.runs):
                run_folder = folder / f"run{run}"
                run_folder.mkdir()
                for name, value in asyncio.run(one_run(run_folder, redis_url, args)).items():
                    rows.setdefault(name, []).append(value)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(f"{args.runs} run(s), {args.rate} changes/s for {args.seconds:g} s, "
          f"{args.revocations} revocation(s) per run; medians over runs (ms):")
    for name, values in rows.items():
        print(f"  {name:<14} {statistics.median(values):8.2f}   "
              f"(runs: {', '.join(f'{v:.2f}' for v in values)})")
    prop, base = statistics.median(rows["propagate p99"]), statistics.median(rows["bare p99"])
    target = 2 * base + 5
    print(f"  ratio propagate p99 / bare p99: {prop / base:.2f}; target p99 <= 2 x bare p99 "
          f"+ 5 ms = {target:.2f} ms: {'met' if prop <= target else 'NOT met'}")


if __name__ == "__main__":
    main()
