"""Webhooks benchmark (issue 16): the outbox's enqueue rate, the claim at 1M rows, and
delivery throughput against a same-run baseline of raw aiohttp POSTs.

Rows, each the median over --runs:

* enqueue: N events (default 100 000) for 3 endpoints, stored as the plugin's writer
  stores them (bodies made, batches of 1000 events in one transaction of multi-row
  inserts). Unit: events/s (deliveries/s = 3x).
* claim@1M: an outbox of --rows deliveries (default 1 000 000: ended ones, and a queue
  of pending ones), then the dispatcher's claim (head of an endpoint's queue + the
  claiming update) repeated; median microseconds. Beside it the same head query with
  the queue index dropped (on a copy), to show what the index buys; and a prune and a
  depth count of the whole table.
* deliver: the plugin's dispatcher and sender (in this process, a real aiohttp client,
  the real SQLite outbox) delivering D deliveries (default 20 000) to 16 endpoints of
  one local receiver (its own process, aiohttp) that answers 500 to 10 % of requests at
  random, 204 otherwise; retries immediate (schedule [0] * 20), max_in_flight 16.
  Unit: delivered/s.
* raw: the baseline, the same run: 16 tasks POSTing the same bodies to the same
  receiver with one aiohttp session, again after a 500 until a 2xx; D deliveries.
  The ratio deliver/raw is the figure of merit (target >= 0.5).

    python bench/webhooks.py [--quick] [--runs N] [--events N] [--rows N] [--deliveries N]
                             [--deliver-only]

--deliver-only measures the deliver and raw rows alone (the ratio's runs, quicker); the
two alternate which goes first from one run to the next.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import pathlib
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

ENDPOINTS = 3
DELIVER_ENDPOINTS = 16
FAIL_RATE = 0.10


# -- the receiver (its own process) ---------------------------------------------------------


def receiver_main(port_file: str, fail_rate: float) -> None:
    from aiohttp import web

    async def receive(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=500 if random.random() < fail_rate else 204)

    async def main() -> None:
        app = web.Application()
        app.router.add_post("/{tail:.*}", receive)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
        await site.start()
        pathlib.Path(port_file).write_text(str(runner.addresses[0][1]))
        await asyncio.Event().wait()

    asyncio.run(main())


@contextlib.contextmanager
def receiver_process(workdir: pathlib.Path) -> Any:
    port_file = workdir / "receiver.port"
    proc = subprocess.Popen([sys.executable, __file__, "--receiver", str(port_file),
                             str(FAIL_RATE)])
    try:
        while not port_file.exists() or not port_file.read_text():
            if proc.poll() is not None:
                raise RuntimeError("the receiver did not start")
            time.sleep(0.02)
        yield f"http://127.0.0.1:{port_file.read_text()}"
    finally:
        proc.terminate()
        proc.wait(10)


# -- rows ---------------------------------------------------------------------------------------


def _event(kind: str = "session.opened") -> Any:
    from sessiongate.plugins.webhooks.events import Event

    return Event.make(kind, {"session_id": os.urandom(16).hex(), "state": "READY",
                             "client_name": "bench", "backend": "sim", "tag": ""},
                      time.time())


async def measure_enqueue(workdir: pathlib.Path, count: int) -> float:
    from sessiongate.plugins.webhooks.runtime import WRITE_BATCH
    from sessiongate.plugins.webhooks.store import Outbox

    path = workdir / "enqueue.sqlite3"
    targets = [f"ep_{i}" for i in range(ENDPOINTS)]
    async with Outbox(path) as outbox:
        started = time.perf_counter()
        for start in range(0, count, WRITE_BATCH):
            batch = [(_event(), targets) for _ in range(min(WRITE_BATCH, count - start))]
            await outbox.enqueue(batch, time.time())
        elapsed = time.perf_counter() - started
    for f in workdir.glob("enqueue.sqlite3*"):
        f.unlink()
    return count / elapsed


async def fill(path: pathlib.Path, rows: int) -> None:
    """``rows`` deliveries over 3 endpoints: all ended but the last 1 % (pending)."""
    from sessiongate.plugins.webhooks.store import Outbox

    targets = [f"ep_{i}" for i in range(ENDPOINTS)]
    async with Outbox(path) as outbox:
        events = rows // ENDPOINTS
        for start in range(0, events, 2000):
            batch = [(_event(), targets) for _ in range(min(2000, events - start))]
            await outbox.enqueue(batch, time.time() - 3600)
        pending_from = int(events * ENDPOINTS * 0.99)
        await outbox.db.execute(
            "UPDATE deliveries SET status = CASE WHEN seq % 10 = 0 THEN 'failed' "
            "ELSE 'delivered' END, attempts = 1 WHERE seq <= ?", (pending_from,))


async def measure_claims(path: pathlib.Path, claims: int) -> dict[str, float]:
    from sessiongate.plugins.webhooks.store import Finish, Outbox

    out: dict[str, float] = {}
    async with Outbox(path) as outbox:
        times = []
        for i in range(claims):
            endpoint = f"ep_{i % ENDPOINTS}"
            started = time.perf_counter()
            [claim] = await outbox.claim([endpoint], time.time(), time.time() + 30)
            times.append(time.perf_counter() - started)
            await outbox.finish_many([Finish(claim.seq, "delivered", 204, "", time.time())],
                                     time.time())
        out["claim_us"] = statistics.median(times) * 1e6
        started = time.perf_counter()
        await outbox.depth()
        out["depth_ms"] = (time.perf_counter() - started) * 1e3
        started = time.perf_counter()
        await outbox.prune(time.time() + 1)  # everything ended: the worst prune
        out["prune_s"] = time.perf_counter() - started
    return out


#: the claim's head lookup (its subquery), timed with plain sqlite3 with and without index
HEAD = ("SELECT seq FROM deliveries WHERE endpoint_id = ? AND status IN ('pending', "
        "'delivering') ORDER BY seq LIMIT 1")


def measure_head_lookup(path: pathlib.Path, tries: int) -> tuple[float, float]:
    """Median microseconds of the head lookup with the queue index, and without it (on
    a copy whose queue index is dropped)."""
    copy = path.with_name("noindex.sqlite3")
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    shutil.copy(path, copy)
    medians = []
    for file, drop in ((path, False), (copy, True)):
        with contextlib.closing(sqlite3.connect(file)) as db:
            if drop:
                db.execute("DROP INDEX deliveries_queue")
            times = []
            for i in range(tries):
                started = time.perf_counter()
                db.execute(HEAD, (f"ep_{i % ENDPOINTS}",)).fetchall()
                times.append(time.perf_counter() - started)
            medians.append(statistics.median(times) * 1e6)
    copy.unlink()
    return medians[0], medians[1]


async def measure_deliver(workdir: pathlib.Path, url: str, count: int) -> float:
    """The plugin's runtime on a real (unstarted-server) gateway object: endpoints added
    through it, the outbox filled, then the dispatcher let go; delivered/s."""
    from sessiongate.core.gateway import Gateway
    from sessiongate.core.pluginhost.host import load
    from sessiongate.plugins.webhooks.runtime import WebhooksRuntime
    from sessiongate.testing import write_config

    state = workdir / "deliver-state"
    config = write_config(workdir / "deliver.toml", {
        "state_dir": str(state), "plugins.webhooks.enabled": True,
        "plugins.webhooks.allow_http_hosts": ["127.0.0.1"],
        "plugins.webhooks.allow_networks": ["127.0.0.1/32"],
        "plugins.webhooks.retry_schedule_seconds": [0] * 20,
        "plugins.webhooks.max_in_flight": DELIVER_ENDPOINTS})
    settings, pm = load(str(config))
    gateway = Gateway(settings, pm)
    gateway.lock_state_dir()
    runtime = WebhooksRuntime(gateway.api)
    await runtime.start()
    try:
        targets = [(await runtime.add_endpoint(f"{url}/{i}", ["session.opened"]))[0]
                   for i in range(DELIVER_ENDPOINTS)]
        per = count // DELIVER_ENDPOINTS
        for start in range(0, per, 1000):
            batch = [(_event(), [e.endpoint_id for e in targets])
                     for _ in range(min(1000, per - start))]
            await runtime.store.enqueue(batch, time.time())
        total = per * DELIVER_ENDPOINTS
        started = time.perf_counter()
        for endpoint in targets:  # filled first (store alone), then let go at once
            runtime.dispatcher.poke(endpoint.endpoint_id)
        while gateway.metrics.get("webhooks_delivered") < total:
            await asyncio.sleep(0.05)
        elapsed = time.perf_counter() - started
    finally:
        await gateway.tasks.cancel_and_wait()
        await runtime.stop()
        gateway._unlock_state_dir()
        shutil.rmtree(state, ignore_errors=True)
    return total / elapsed


async def measure_raw(url: str, count: int) -> float:
    import aiohttp

    body = _event().body
    per = count // DELIVER_ENDPOINTS
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=DELIVER_ENDPOINTS),
                                     trust_env=False) as session:
        async def post_all(i: int) -> None:
            for _ in range(per):
                while True:
                    async with session.post(f"{url}/{i}", data=body,
                                            headers={"content-type": "application/json"},
                                            allow_redirects=False) as answer:
                        await answer.read()
                        if 200 <= answer.status < 300:
                            break

        started = time.perf_counter()
        await asyncio.gather(*(post_all(i) for i in range(DELIVER_ENDPOINTS)))
        return per * DELIVER_ENDPOINTS / (time.perf_counter() - started)


# -- main ---------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small counts, one run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--deliveries", type=int, default=20_000)
    parser.add_argument("--deliver-only", action="store_true",
                        help="only the deliver and raw rows")
    parser.add_argument("--receiver", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.receiver:
        receiver_main(args.receiver[0], float(args.receiver[1]))
        return 0
    if args.quick:
        args.runs, args.events, args.rows, args.deliveries = 1, 5000, 30_000, 1600
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="sg-bench-webhooks-"))
    results: dict[str, list[float]] = {}

    def note(name: str, value: float) -> None:
        results.setdefault(name, []).append(value)

    try:
        with receiver_process(workdir) as url:
            for run in range(args.runs):
                if not args.deliver_only:
                    note("enqueue events/s",
                         asyncio.run(measure_enqueue(workdir, args.events)))
                pair = [("deliver delivered/s",
                         lambda: measure_deliver(workdir, url, args.deliveries)),
                        ("raw POST delivered/s", lambda: measure_raw(url, args.deliveries))]
                for name, measure in pair[::-1] if args.deliver_only and run % 2 else pair:
                    note(name, asyncio.run(measure()))
                note("ratio", results["deliver delivered/s"][-1] /
                     results["raw POST delivered/s"][-1])
                print(f"run {run + 1}: " + ", ".join(f"{k} {v[-1]:,.2f}" if k == "ratio"
                                                     else f"{k} {v[-1]:,.0f}"
                                                     for k, v in results.items()),
                      file=sys.stderr)
        if not args.deliver_only:
            path = workdir / "claims.sqlite3"
            asyncio.run(fill(path, args.rows))
            with_index, no_index = measure_head_lookup(path, 20 if not args.quick else 5)
            claims = asyncio.run(measure_claims(path, min(2000, args.rows // 200)))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    median = {k: statistics.median(v) for k, v in results.items()}
    print(f"\nwebhooks benchmark, medians of {args.runs} run(s)")
    if not args.deliver_only:
        print(f"  enqueue ({args.events:,} events x {ENDPOINTS} endpoints): "
              f"{median['enqueue events/s']:,.0f} events/s "
              f"({median['enqueue events/s'] * ENDPOINTS:,.0f} deliveries/s)")
    print(f"  deliver ({args.deliveries:,} to {DELIVER_ENDPOINTS} endpoints, "
          f"{FAIL_RATE:.0%} answered 500): {median['deliver delivered/s']:,.0f} delivered/s")
    print(f"  raw aiohttp POSTs (same receiver, {DELIVER_ENDPOINTS} tasks): "
          f"{median['raw POST delivered/s']:,.0f} delivered/s")
    print(f"  ratio deliver / raw: "
          f"{median['deliver delivered/s'] / median['raw POST delivered/s']:.2f} of the "
          f"medians; median of the runs' ratios {median['ratio']:.2f} "
          f"({', '.join(f'{r:.2f}' for r in results['ratio'])}) (target >= 0.5)")
    if args.deliver_only:
        return 0
    print(f"  claim at {args.rows:,} rows (aiosqlite, one transaction: due front read, claimed): "
          f"{claims['claim_us']:,.0f} us median; its head lookup {with_index:,.1f} us with "
          f"the queue index, {no_index:,.0f} us without; depth count "
          f"{claims['depth_ms']:,.0f} ms; prune of every ended row {claims['prune_s']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
