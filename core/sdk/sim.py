"""The reference backend ``sim`` (CONTRACT §7): simulated tags, timers and load.

It makes the product usable out of the box and gives tests and benchmarks a real
worker to drive.
"""

from __future__ import annotations

import asyncio
import math
import os
from typing import Any

from sessiongate.core.sdk.worker import BATCH_EVENTS, Backend, CommandError, command

__all__ = ["Sim"]

DRAIN_EVERY = BATCH_EVENTS  # a full frame, then wait if the gateway is behind


def _field(payload: Any, name: str, kind: type | tuple[type, ...], *, required: bool = True) -> Any:
    if not isinstance(payload, dict):
        raise CommandError(f"payload must be a JSON object with {name!r}")
    if name not in payload:
        if required:
            raise CommandError(f"payload is missing {name!r}")
        return None
    value = payload[name]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise CommandError(f"{name!r} has the wrong type")
    return value


class Sim(Backend):
    """Tags that can be written, read and subscribed to; a burst generator; failures."""

    async def start(self) -> None:
        self.values: dict[str, Any] = {}
        self.timers: dict[str, asyncio.Task[None]] = {}

    async def stop(self) -> None:
        for task in self.timers.values():
            task.cancel()
        await asyncio.gather(*self.timers.values(), return_exceptions=True)
        self.timers.clear()

    @command(raw=True)
    def echo(self, payload: bytes) -> bytes:
        return payload

    @command()
    def echo_metadata(self, payload: Any) -> dict[str, str]:
        """The call metadata the gateway forwarded with this command."""
        return dict(self.metadata)

    @command()
    def write(self, payload: Any) -> dict[str, Any]:
        tag = _field(payload, "tag", str)
        value = payload.get("value")
        # first the event: one too large for a frame fails the write, nothing is stored
        self.emit("data_change", {"tag": tag, "value": value})
        self.values[tag] = value
        return {}

    @command()
    def read(self, payload: Any) -> dict[str, Any]:
        tag = _field(payload, "tag", str)
        return {"tag": tag, "value": self.values.get(tag)}

    @command()
    def subscribe(self, payload: Any) -> dict[str, Any]:
        tag = _field(payload, "tag", str)
        interval = _field(payload, "interval_ms", int)
        if interval <= 0:
            raise CommandError("'interval_ms' must be > 0")
        old = self.timers.pop(tag, None)
        if old:
            old.cancel()
        self.timers[tag] = asyncio.create_task(self._tick(tag, interval / 1000))
        return {}

    @command()
    def unsubscribe(self, payload: Any) -> dict[str, Any]:
        tag = _field(payload, "tag", str)
        task = self.timers.pop(tag, None)
        if task:
            task.cancel()
        return {}

    async def _tick(self, tag: str, interval: float) -> None:
        step = 0
        while True:
            await asyncio.sleep(interval)
            step += 1
            value = round(math.sin(step / 10) * 100, 3)
            self.values[tag] = value
            self.emit("data_change", {"tag": tag, "value": value})
            # paced: while the gateway holds back credit the ticks wait, none is dropped
            await self.credit()

    @command()
    async def burst(self, payload: Any) -> dict[str, Any]:
        """``count`` events of ``size`` bytes, as fast as the gateway takes them.

        ``"drain": false`` plays a backend that never awaits :meth:`drain`: all events
        are emitted at once, and what does not fit the unsent buffer is lost
        (subscribers see a ``WORKER_OVERRUN`` gap).
        """
        count = _field(payload, "count", int)
        size = _field(payload, "size", int, required=False) or 0
        drain = _field(payload, "drain", bool, required=False)
        if count < 0 or size < 0:
            raise CommandError("'count' and 'size' must be >= 0")
        body = b"x" * size
        emit = self.emit
        done = 0
        step = count if drain is False else DRAIN_EVERY
        while done < count:
            n = min(step, count - done)
            for _ in range(n):
                emit("burst", body)
            done += n
            if drain is not False:
                await self.drain()
        return {"emitted": count}

    @command()
    async def sleep(self, payload: Any) -> dict[str, Any]:
        ms = _field(payload, "ms", int)
        if ms < 0:
            raise CommandError("'ms' must be >= 0")
        await asyncio.sleep(ms / 1000)
        return {}

    @command()
    def fail(self, payload: Any) -> None:
        code = _field(payload, "exit_code", int, required=False)
        os._exit(1 if code is None else code)
