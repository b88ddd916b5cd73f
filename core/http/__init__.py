"""The HTTP side port (``server.http_address``): Prometheus metrics, health, plugins' routes.

Served by aiohttp in the gateway's own event loop, started and stopped with the gRPC
server (:class:`~sessiongate.core.rpc.server.GrpcServer`); see :mod:`.server`.
"""

from sessiongate.core.http.server import CORE_PATHS, ROOT_PLUGINS, HttpServer

__all__ = ["CORE_PATHS", "ROOT_PLUGINS", "HttpServer"]
