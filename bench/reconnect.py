"""Reconnect benchmark (issue 4): resuming with a backlog vs a fresh live subscription.

In the same run, against a real gateway process and ``sim`` worker:

* resume: ``StreamEvents(after_sequence=S)`` with a 10k-event backlog in the replay
  ring - time from the call to the first replayed event, and replay throughput
  until the client has the whole backlog;
* live (the comparison): a fresh ``StreamEvents`` - time to its first (attached)
  response, and live throughput for a 10k-event burst.

Medians over --runs; ratios are same-run.

    python bench/reconnect.py [--quick] [--runs N] [--backlog N]
"""

from __future__ import annotations

import argparse
import asyncio
import pathlib
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from fanout import PAYLOAD, Gateway


async def measure(address: str, key: str, backlog: int, runs: int) -> dict[str, list[float]]:
    import grpc

    from sessiongate.client import GatewayClient

    out: dict[str, list[float]] = {k: [] for k in ("resume_first", "resume_rate",
                                                     "live_first", "live_rate")}
    async with grpc.aio.insecure_channel(address) as channel:
        client = GatewayClient(channel, key)
        sid = (await client.open(client_name="bench")).session_id
        for _ in range(runs):
            # live: attach, then a burst, read it all
            t0 = time.monotonic()
            call = client.stream(sid)
            await call.read()
            out["live_first"].append(time.monotonic() - t0)
            start = (await client.get(sid)).last_sequence
            t1 = time.monotonic()
            burst = asyncio.create_task(
                client.invoke_json(sid, "burst", {"count": backlog, "size": PAYLOAD}))
            got = 0
            while got < backlog:
                got += len((await call.read()).events)
            out["live_rate"].append(backlog / (time.monotonic() - t1))
            await burst
            call.cancel()
            # resume: the same events are now the backlog in the ring
            t2 = time.monotonic()
            call = client.stream(sid, after_sequence=start)
            got, first = 0, 0.0
            while got < backlog:
                response = await call.read()
                if response.events and not first:
                    first = time.monotonic() - t2
                got += len(response.events)
            out["resume_rate"].append(backlog / (time.monotonic() - t2))
            out["resume_first"].append(first)
            call.cancel()
        await client.close(sid)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--backlog", type=int, default=10_000)
    args = parser.parse_args()
    runs = 3 if args.quick else args.runs
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="sgrc-"))
    config_extra = (f"plugins.fanout.replay_buffer_capacity = {args.backlog}\n"
                    "plugins.reconnect.detach_grace_seconds = 600\n")
    gw = Gateway(workdir, extra=config_extra)  # the shipped events.queue_capacity
    try:
        res = asyncio.run(measure(gw.address, gw.key, args.backlog, runs))
    finally:
        gw.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in res.items()}
    print(f"reconnect: backlog {args.backlog} events of {PAYLOAD} B, medians over {runs} runs")
    print(f"{'':<28} | {'first event/response':>20} | {'events/s':>12}")
    print(f"{'resume with backlog':<28} | {med['resume_first'] * 1000:>17.2f} ms | "
          f"{med['resume_rate']:>12,.0f}")
    print(f"{'fresh live subscription':<28} | {med['live_first'] * 1000:>17.2f} ms | "
          f"{med['live_rate']:>12,.0f}")
    print(f"{'ratio resume / live':<28} | {med['resume_first'] / med['live_first']:>20.2f} | "
          f"{med['resume_rate'] / med['live_rate']:>12.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
