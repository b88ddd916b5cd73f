"""The HTTP side port (CONTRACT §8.2): ``server.http_address``, ``/metrics``, ``/healthz``,
``/readyz``, plugins' routes (``sg_http_routes``), TLS with the gRPC API's files.

Real gateways on 127.0.0.1, real HTTP requests with aiohttp's client.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from sessiongate.core import hookimpl
from sessiongate.core.gateway import Gateway
from sessiongate.core.pluginhost.host import load
from sessiongate.core.rpc.server import GrpcServer
from sessiongate.testing import http_get, write_config

from . import test_tls
from .test_tls import _cli, _problems

pytestmark = pytest.mark.once  # core: the plugin set changes nothing here
#: the TLS tests' fixtures: their certificates (a CA, the server's, a client's) and an
#: environment without the caller's settings
pki, clean_env = test_tls.pki, test_tls.clean_env

TIMEOUT = 30.0


async def wait(event: asyncio.Event) -> None:
    await asyncio.wait_for(event.wait(), TIMEOUT)


# -- the routes core serves --------------------------------------------------------------------


@pytest.mark.asyncio
async def test_metrics_health_and_readiness_on_a_free_port(make_gateway, caplog):
    caplog.set_level(logging.INFO, logger="sessiongate.http")
    gw = await make_gateway()
    host, port = gw.http_address.rsplit(":", 1)
    assert host == "127.0.0.1" and int(port) > 0
    assert f"http listening on {gw.http_address}" in caplog.messages
    assert await http_get(gw.http_address, "/healthz") == (200, "ok\n")
    assert await http_get(gw.http_address, "/readyz") == (200, "ready\n")
    status, text = await http_get(gw.http_address, "/metrics")
    assert status == 200
    assert 'sessiongate_sessions{state="READY"} 0.0' in text.splitlines()
    assert all(line.startswith(("# HELP sessiongate_", "# TYPE sessiongate_", "sessiongate_"))
               for line in text.splitlines() if line)
    async with aiohttp.ClientSession() as client, \
            client.get(f"http://{gw.http_address}/metrics") as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert (await http_get(gw.http_address, "/nothing-here"))[0] == 404


@pytest.mark.asyncio
async def test_an_empty_address_turns_the_side_port_off(make_gateway, caplog, tmp_path):
    caplog.set_level(logging.INFO, logger="sessiongate.http")
    gw = await make_gateway(**{"server.http_address": ""})
    assert gw.http_address == ""
    assert not [m for m in caplog.messages if "http listening" in m]


class Gate:
    """A plugin whose startup and shutdown wait until the test lets them go on."""

    __name__ = "gate"

    def __init__(self) -> None:
        self.starting, self.start = asyncio.Event(), asyncio.Event()
        self.stopping, self.stop = asyncio.Event(), asyncio.Event()

    @hookimpl
    async def sg_startup(self) -> None:
        self.starting.set()
        await self.start.wait()

    @hookimpl
    async def sg_shutdown(self) -> None:
        self.stopping.set()
        await self.stop.wait()


@pytest.mark.asyncio
async def test_readyz_flips_at_start_and_at_shutdown(tmp_path, short_tmp):
    """As ``serve()`` runs them: the side port first (503 while the gateway loads its
    state), then the gateway, then gRPC (200); at shutdown 503 until the end."""
    config = write_config(tmp_path / "s.toml", {
        "state_dir": str(tmp_path / "state"), "runtime_dir": str(short_tmp / "run"),
        "server.grpc_address": "127.0.0.1:0", "server.http_address": "127.0.0.1:0",
        "server.shutdown_grace_seconds": 2, "workers.spare_workers": 0})
    gate = Gate()
    settings, pm = load(str(config), extra_plugins=(gate,))
    gateway = Gateway(settings, pm)
    server = GrpcServer(gateway)
    starting: asyncio.Task[None] | None = None
    stopping: asyncio.Task[None] | None = None
    try:
        server.bind()
        await server.http.start()
        address = server.http.address
        starting = asyncio.create_task(gateway.start())
        await wait(gate.starting)
        assert await http_get(address, "/readyz") == (
            503, "starting: the gateway is loading its state\n")
        assert await http_get(address, "/healthz") == (200, "ok\n")
        gate.start.set()
        await starting
        assert await http_get(address, "/readyz") == (
            503, "starting: the gRPC server does not accept calls yet\n")
        await server.start()
        assert await http_get(address, "/readyz") == (200, "ready\n")

        stopping = asyncio.create_task(server.stop())
        await wait(gate.stopping)
        assert await http_get(address, "/readyz") == (
            503, "stopping: the gateway is shutting down\n")
        assert (await http_get(address, "/metrics"))[0] == 200  # to the end
        gate.stop.set()
        await stopping
        with pytest.raises(aiohttp.ClientConnectionError):
            await http_get(address, "/healthz")
    finally:
        gate.start.set()
        gate.stop.set()
        for task in (starting, stopping):
            if task is not None:
                await asyncio.gather(task, return_exceptions=True)
        if stopping is None:
            await server.stop()


def test_a_busy_port_exits_2_in_one_line(tmp_path, short_tmp):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        config = write_config(tmp_path / "s.toml", {
            "state_dir": str(tmp_path / "state"), "runtime_dir": str(short_tmp / "run"),
            "server.grpc_address": "127.0.0.1:0", "server.http_address": address})
        result = _cli("serve", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        f"sessiongate: address {address} is already in use; stop what listens there or set "
        'server.http_address to another address ("" turns the HTTP side port off)']
    assert result.stdout == ""  # nothing started: no bootstrap key
    assert not (tmp_path / "state" / "keys.sqlite3").exists()


# -- settings ------------------------------------------------------------------------------------


def test_plaintext_http_only_on_loopback_unless_allowed(clean_env, tmp_path, pki):
    address = "0.0.0.0:50552"
    assert _problems(tmp_path, {"server.http_address": address}) == [
        f"server.http_address = {address!r}: must be empty or a loopback address (localhost, "
        "127.0.0.0/8 or [::1]) while server.tls.cert_file is empty: set "
        "server.tls.cert_file and server.tls.key_file to serve TLS, or "
        "server.allow_insecure = true to serve plaintext HTTP on it"]
    assert _problems(tmp_path, {"server.http_address": address,
                                "server.allow_insecure": True}) == []
    assert _problems(tmp_path, {"server.http_address": address, **pki.tls()}) == []
    for fine in ("", "127.0.0.1:0", "localhost:50552", "[::1]:1"):
        assert _problems(tmp_path, {"server.http_address": fine}) == [], fine
    assert _problems(tmp_path, {"server.http_address": "no-port"}) == [
        "server.http_address = 'no-port': must be host:port (port 0 picks a free port and "
        'logs it) or "" (off)']


# -- TLS -------------------------------------------------------------------------------------------


def _client_context(files: Any, *, certificate: bool = False,
                    ca: Any = None) -> ssl.SSLContext:
    """A client's TLS: trusting ``ca`` (default: the test CA), with the client
    certificate when asked."""
    context = ssl.create_default_context(cafile=str(ca or files.ca))
    if certificate:
        context.load_cert_chain(str(files.client_cert), str(files.client_key))
    return context


@pytest.mark.asyncio
async def test_tls_and_mutual_tls_with_the_gateway_s_files(make_gateway, pki, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="sessiongate.http")
    tls = await make_gateway(**pki.tls())
    assert f"http listening on {tls.http_address} (TLS)" in caplog.messages
    assert await http_get(tls.http_address, "/healthz", ssl=_client_context(pki)) == \
        (200, "ok\n")
    with pytest.raises(aiohttp.ClientConnectorCertificateError):
        await http_get(tls.http_address, "/healthz", ssl=_client_context(pki, ca=pki.other_ca))
    with pytest.raises(aiohttp.ClientError):  # plaintext to a TLS port
        await http_get(tls.http_address, "/healthz")

    mutual = await make_gateway(**pki.tls(mutual=True), state_dir=str(tmp_path / "mutual"))
    assert f"http listening on {mutual.http_address} (mTLS)" in caplog.messages
    with pytest.raises(aiohttp.ClientError):  # no client certificate
        await http_get(mutual.http_address, "/healthz", ssl=_client_context(pki))
    assert await http_get(mutual.http_address, "/readyz",
                          ssl=_client_context(pki, certificate=True)) == (200, "ready\n")


# -- plugins' routes -------------------------------------------------------------------------------


class Routes:
    """A plugin named ``name`` serving ``routes`` (``sg_http_routes``)."""

    def __init__(self, name: str, routes: Any) -> None:
        self.__name__ = name
        self.routes = routes

    @hookimpl
    def sg_http_routes(self) -> Any:
        return self.routes


#: a test plugin allowed at the root, as the dashboard is (the real dashboard's name is
#: taken: installed and off, it is blocked)
ROOT_PLUGIN = "frontpage"


def _root_plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    from sessiongate.core.http import server

    monkeypatch.setattr(server, "ROOT_PLUGINS", frozenset({ROOT_PLUGIN}))


async def _hello(request: web.Request) -> web.Response:
    return web.Response(text="hello\n")


async def _boom(request: web.Request) -> web.Response:
    raise RuntimeError("a bug with a secret in its message: sg_secret")


async def _forbidden(request: web.Request) -> web.Response:
    raise web.HTTPForbidden(text="no\n")


@pytest.mark.asyncio
async def test_plugin_routes_live_under_their_prefix_and_fail_alone(make_gateway, caplog,
                                                                   monkeypatch):
    caplog.set_level(logging.INFO, logger="sessiongate.http")
    _root_plugin(monkeypatch)
    reports = Routes("reports", [web.get("/status", _hello), web.get("/boom", _boom),
                                 web.get("/forbidden", _forbidden)])
    front = Routes(ROOT_PLUGIN, [web.get("/", _hello), web.get("/crash", _boom)])
    broken = Routes("broken", [42])
    gw = await make_gateway(extra_plugins=(reports, front, broken))
    address = gw.http_address
    assert await http_get(address, "/plugins/reports/status") == (200, "hello\n")
    assert (await http_get(address, "/status"))[0] == 404  # never at the root
    assert await http_get(address, "/plugins/reports/forbidden") == (403, "no\n")
    status, body = await http_get(address, "/plugins/reports/boom")
    assert (status, body) == (500, "internal error in plugin reports (see the gateway log)\n")
    [failed] = [r for r in caplog.records if r.getMessage().startswith("plugin reports failed")]
    assert failed.getMessage() == "plugin reports failed on GET /plugins/reports/boom"
    assert failed.exc_info is not None  # the traceback is in the log, not the answer

    # a built-in plugin allowed at the root (as the dashboard is)
    assert await http_get(address, "/") == (200, "hello\n")
    assert await http_get(address, "/crash") == (
        500, f"internal error in plugin {ROOT_PLUGIN} (see the gateway log)\n")
    # routes that cannot be added are left out, named in the log; the rest is served
    assert any(m.startswith("plugin broken: its HTTP routes could not be added")
               for m in caplog.messages)
    assert await http_get(address, "/readyz") == (200, "ready\n")


@pytest.mark.asyncio
async def test_a_plugin_cannot_take_core_s_paths(make_gateway, caplog, monkeypatch):
    _root_plugin(monkeypatch)
    greedy = Routes(ROOT_PLUGIN, [web.get("/", _hello), web.get("/metrics", _hello)])
    gw = await make_gateway(extra_plugins=(greedy,))
    assert any(m == f"plugin {ROOT_PLUGIN}: its HTTP routes could not be added; the side "
               "port serves without them" for m in caplog.messages)
    status, text = await http_get(gw.http_address, "/metrics")
    assert status == 200 and text.startswith("# HELP sessiongate_")
    assert (await http_get(gw.http_address, "/"))[0] == 404  # all of its routes, or none
