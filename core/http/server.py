"""The HTTP side port: ``GET /metrics``, ``/healthz``, ``/readyz`` and plugins' routes.

aiohttp serves it in the gateway's own event loop (an ``AppRunner`` and a ``TCPSite``:
no thread, no second loop, no signal handlers of its own), beside the gRPC server that
owns it (:class:`~sessiongate.core.rpc.server.GrpcServer`), with the same TLS files
(``server.tls.*``) and the same rule: plaintext on a loopback address only, unless
``server.allow_insecure``. ``server.http_address = ""`` switches it off.

* ``/metrics``: the gateway's metrics in Prometheus's text format (docs/metrics.md).
* ``/healthz``: 200 while the process serves at all (liveness).
* ``/readyz``: 200 once the gateway's state is loaded and gRPC accepts calls; 503,
  with one line saying why, while it starts or shuts down (readiness).
* Plugins add routes with ``sg_http_routes``, each under ``/plugins/<name>``; a
  plugin's handler that fails answers 500 with one line naming it, never a traceback.
"""

from __future__ import annotations

import errno
import logging
import ssl
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client.aiohttp import make_aiohttp_handler

from sessiongate.core.config.tls import TlsFileError, server_tls
from sessiongate.core.errors import StartupError

if TYPE_CHECKING:
    from sessiongate.core.gateway import Gateway

__all__ = ["CORE_PATHS", "ROOT_PLUGINS", "HttpServer"]

log = logging.getLogger("sessiongate.http")

#: the paths core serves; no plugin can take them
CORE_PATHS = frozenset({"/metrics", "/healthz", "/readyz"})
#: built-in plugins whose routes are served as given, at ``/``, rather than under
#: ``/plugins/<name>`` (the dashboard, CONTRACT §8.4)
ROOT_PLUGINS = frozenset({"dashboard"})
#: in a plugin's sub-application: the plugin's name
PLUGIN = web.AppKey("sessiongate_plugin", str)
#: in the application: the plugin that added each route served at ``/``
ROOT_ROUTES = web.AppKey("sessiongate_root_routes", dict)


def _owner(request: web.Request) -> str | None:
    """The plugin whose route the request matched (None: core's)."""
    info = request.match_info
    for app in reversed(info.apps):
        if PLUGIN in app:
            return app[PLUGIN]
    return info.apps[0][ROOT_ROUTES].get(info.route)


@web.middleware
async def _contained(request: web.Request,
                     handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
                     ) -> web.StreamResponse:
    """A handler that fails answers 500 with one line, never a traceback; the error is
    logged with the plugin's name (HTTP errors a handler raises on purpose pass)."""
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except Exception:
        owner = _owner(request)
        where = f"plugin {owner}" if owner else "core"
        log.exception("%s failed on %s %s", where, request.method, request.path[:256])
        return web.Response(status=500, text=f"internal error in {where} (see the gateway "
                                             "log)\n")


async def _healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


def _listen_problem(address: str, exc: OSError) -> str:
    """One line: why ``address`` (server.http_address) cannot be listened on."""
    if exc.errno == errno.EADDRINUSE:
        return (f"address {address} is already in use; stop what listens there or set "
                'server.http_address to another address ("" turns the HTTP side port off)')
    return (f"cannot listen on {address} ({exc.strerror or exc}); set server.http_address "
            'to an address of this host ("" turns the HTTP side port off)')


def _ssl_context(settings: Any) -> tuple[ssl.SSLContext | None, str]:
    """The side port's TLS from ``server.tls.*`` (files checked and read now): the
    context and its mode (``TLS``, ``mTLS``), or None and "" for plaintext.

    :raises StartupError: a TLS file cannot be used.
    """
    try:
        tls = server_tls(settings)
        if tls is None:
            return None, ""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(str(settings.server.tls.cert_file),
                                str(settings.server.tls.key_file))
        if tls.client_ca is not None:  # mutual TLS: a client without a certificate fails
            context.load_verify_locations(cadata=tls.client_ca.decode("ascii"))
            context.verify_mode = ssl.CERT_REQUIRED
    except TlsFileError as exc:
        raise StartupError(str(exc)) from None
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise StartupError(f"server.tls.cert_file / key_file cannot serve the HTTP side "
                           f"port: {exc}") from None
    return context, tls.mode


class HttpServer:
    """The side port of one gateway; :meth:`start` and :meth:`stop` are idempotent.

    :param readiness: None when ready, else one line saying why not (``/readyz``).
    """

    def __init__(self, gateway: Gateway, readiness: Callable[[], str | None]) -> None:
        self.gateway = gateway
        self.readiness = readiness
        #: host:port as configured; "" when the side port is off
        self.configured = str(gateway.settings.server.http_address)
        #: host:port once listening (port 0 configured: the one picked)
        self.address = ""
        self.tls_mode = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        """Listen (nothing when the side port is off).

        :raises StartupError: the address is in use or cannot be listened on, or a TLS
            file of ``server.tls.*`` cannot be used.
        """
        if self._runner is not None or not self.configured:
            return
        settings = self.gateway.settings
        shown_host, _, port = self.configured.rpartition(":")
        context, mode = _ssl_context(settings)
        runner = web.AppRunner(self._application(), access_log=None,
                               shutdown_timeout=float(settings.server.shutdown_grace_seconds))
        await runner.setup()
        site = web.TCPSite(runner, shown_host.strip("[]"), int(port), ssl_context=context,
                           reuse_port=False)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise StartupError(_listen_problem(self.configured, exc)) from None
        self._runner = runner
        self.tls_mode = mode
        self.address = f"{shown_host}:{runner.addresses[0][1]}"

    def announce(self) -> None:
        """Log where it listens (tests and scripts parse the first word after it)."""
        if self.address:
            log.info("http listening on %s%s", self.address,
                     f" ({self.tls_mode})" if self.tls_mode else "")

    async def stop(self) -> None:
        """Stop listening; requests under way get ``server.shutdown_grace_seconds``."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    # -- the application -----------------------------------------------------------------

    def _application(self) -> web.Application:
        app = web.Application(middlewares=[_contained])
        app[ROOT_ROUTES] = {}
        app.router.add_get("/metrics", make_aiohttp_handler(self.gateway.metrics.registry))
        app.router.add_get("/healthz", _healthz)
        app.router.add_get("/readyz", self._readyz)
        for plugin, routes in self.gateway.hooks.collect_by_plugin("sg_http_routes"):
            try:
                self._mount(app, plugin, routes)
            except Exception:
                log.exception("plugin %s: its HTTP routes could not be added; the side port "
                              "serves without them", plugin)
        return app

    @staticmethod
    def _mount(app: web.Application, plugin: str,
               routes: Iterable[web.AbstractRouteDef]) -> None:
        routes = list(routes)
        if plugin in ROOT_PLUGINS:
            taken = sorted(CORE_PATHS & {getattr(r, "path", None) for r in routes})
            if taken:
                raise ValueError(f"{', '.join(taken)} are core's")
            for route in app.router.add_routes(routes):
                app[ROOT_ROUTES][route] = plugin
            return
        sub = web.Application()
        sub[PLUGIN] = plugin
        sub.router.add_routes(routes)
        app.add_subapp(f"/plugins/{urllib.parse.quote(plugin, safe='')}", sub)

    async def _readyz(self, request: web.Request) -> web.Response:
        problem = self.readiness()
        if problem is None:
            return web.Response(text="ready\n")
        return web.Response(status=503, text=problem + "\n")
