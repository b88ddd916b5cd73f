"""Client helper for applications: ``from sessiongate.client import connect``.

See :mod:`sessiongate.core.client`; ``follow()`` resumes broken streams by itself.
"""

from sessiongate.core.client import GapNotice, GatewayClient, Reconnecting, connect, info_json

__all__ = ["GapNotice", "GatewayClient", "Reconnecting", "connect", "info_json"]
