"""Helpers of the webhooks plugin's tests: a real receiver, the admin API, settings.

The receiver is examples/webhook-receiver (signature check, dedupe by ``webhook-id``)
served by aiohttp on 127.0.0.1, behind a front that can be told to fail, hang, redirect
or answer 410 for the next requests. Tests wait on what it receives, never on time.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import importlib.util
import pathlib
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from sessiongate.v1 import webhooks_pb2, webhooks_pb2_grpc

ROOT = pathlib.Path(__file__).resolve().parents[3]
TIMEOUT = 30.0
#: the plugin on, 127.0.0.1 allowed over http, quick retries
ON: dict[str, Any] = {
    "plugins.webhooks.enabled": True,
    "plugins.webhooks.allow_http_hosts": ["127.0.0.1"],
    "plugins.webhooks.allow_networks": ["127.0.0.1/32"],
    "plugins.webhooks.retry_schedule_seconds": [0, 0.05, 0.05, 0.05],
    "plugins.webhooks.timeout_seconds": 5,
}


def example_receiver() -> Any:
    """examples/webhook-receiver/receiver.py as a module."""
    path = ROOT / "examples" / "webhook-receiver" / "receiver.py"
    spec = importlib.util.spec_from_file_location("webhook_receiver_example", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextlib.asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[int]:
    """``app`` on 127.0.0.1, a free port (yielded), until the block ends."""
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


@dataclasses.dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    answer: int


class Receiver:
    """The example receiver behind a front with a plan: each request takes the plan's
    next step, if any (``("fail", status)``, ``("hang",)``, ``("wait", event, status)``,
    ``("redirect", url)``,
    ``("gone",)``), else goes to the example (verified, handled once per id)."""

    def __init__(self) -> None:
        self.requests: list[Received] = []  # answered (or cut off by the client)
        self.arrivals: list[bytes] = []  # bodies, as they arrive (before any answer)
        self.events: list[dict[str, Any]] = []
        self.plan: collections.deque[tuple[Any, ...]] = collections.deque()
        self.always: tuple[Any, ...] | None = None  # a step for every request
        self.changed = asyncio.Condition()
        self.release = asyncio.Event()  # ends every hanging request
        self._example: Any = None
        self._runner: web.AppRunner | None = None
        self.url = ""

    def verify_with(self, secret: str) -> None:
        """Hand requests to a fresh example receiver with this secret."""
        app = example_receiver().make_app(secret, self._handled)
        self._example = next(iter(app.router.routes())).handler

    async def _handled(self, event: dict[str, Any]) -> None:
        self.events.append(event)

    async def _front(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        step = self.plan.popleft() if self.plan else self.always
        async with self.changed:
            self.arrivals.append(body)
            self.changed.notify_all()
        response: web.StreamResponse | None = None
        try:
            response = await self._answer(step, request)
            return response
        finally:  # a hanging request cut off by the client is recorded too (answer 0)
            async with self.changed:
                self.requests.append(Received(dict(request.headers), body,
                                              response.status if response else 0))
                self.changed.notify_all()

    async def _answer(self, step: tuple[Any, ...] | None,
                      request: web.Request) -> web.StreamResponse:
        if step is None:
            assert self._example is not None, "verify_with(secret) first"
            return await self._example(request)
        if step[0] == "fail":
            return web.Response(status=step[1])
        if step[0] == "hang":
            await self.release.wait()
            return web.Response(status=503)
        if step[0] == "wait":  # ("wait", event, status): answer status once event is set
            await step[1].wait()
            return web.Response(status=step[2])
        if step[0] == "redirect":
            return web.Response(status=302, headers={"location": step[1]})
        assert step[0] == "gone", step
        return web.Response(status=410)

    async def wait(self, predicate: Any, timeout: float = TIMEOUT) -> None:
        async with asyncio.timeout(timeout), self.changed:
            await self.changed.wait_for(predicate)

    async def events_of(self, kind: str, count: int = 1) -> list[dict[str, Any]]:
        """Wait until ``count`` events of type ``kind`` were handled and every request
        that arrived is answered; those events."""
        def enough() -> bool:
            return (len([e for e in self.events if e["type"] == kind]) >= count
                    and len(self.requests) == len(self.arrivals))
        await self.wait(enough)
        return [e for e in self.events if e["type"] == kind]

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._front)
        self._runner = web.AppRunner(app, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}/hook"
        return self.url

    async def stop(self) -> None:
        self.release.set()
        if self._runner is not None:
            await self._runner.cleanup()


class Admin:
    """The plugin's admin API (sessiongate.v1.Webhooks) with a key."""

    def __init__(self, channel: Any, metadata: Any) -> None:
        self.channel = channel
        self.stub = webhooks_pb2_grpc.WebhooksStub(channel)
        self.metadata = metadata

    async def add(self, url: str, *types: str) -> tuple[str, str]:
        added = await self.stub.AddEndpoint(webhooks_pb2.AddEndpointRequest(
            url=url, event_types=list(types)), metadata=self.metadata)
        return added.endpoint.endpoint_id, added.secret

    async def deliveries(self, status: str = "", endpoint_id: str = "") -> list[Any]:
        found = await self.stub.ListDeliveries(webhooks_pb2.ListDeliveriesRequest(
            status=status, endpoint_id=endpoint_id), metadata=self.metadata)
        return list(found.deliveries)

    async def endpoints(self) -> list[Any]:
        found = await self.stub.ListEndpoints(webhooks_pb2.ListEndpointsRequest(),
                                              metadata=self.metadata)
        return list(found.endpoints)


def admin_of(gw: Any, key: str | None = None) -> Admin:
    client = gw.client(key)
    return Admin(client.channel, client.metadata)


async def subscribe(gw: Any, receiver: Receiver, *types: str) -> str:
    """An endpoint of ``receiver`` for ``types`` on ``gw``; its id."""
    endpoint_id, secret = await admin_of(gw).add(receiver.url, *types)
    receiver.verify_with(secret)
    return endpoint_id


async def recorded(gw: Any, metric: str, count: int = 1, **labels: Any) -> None:
    """Wait until the gateway has counted ``count`` of ``metric`` (an attempt's outcome
    is recorded after the receiver answered: there is no event to wait on)."""
    from sessiongate.testing import wait_for

    metrics = gw.gateway.metrics
    await wait_for(lambda: metrics.get(metric, **labels) >= count, timeout=TIMEOUT)
