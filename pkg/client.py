"""Client helper for applications: ``from sessiongate.client import connect``.

See :mod:`sessiongate.core.client`; ``follow()`` resumes broken streams by itself.
"""

from sessiongate.core.client import (
    GapNotice,
    GatewayClient,
    GatewayShutdown,
    Reconnecting,
    connect,
    info_dict,
    info_json,
    is_gateway_shutdown,
)

__all__ = ["GapNotice", "GatewayClient", "GatewayShutdown", "Reconnecting", "connect",
           "info_dict", "info_json", "is_gateway_shutdown"]
