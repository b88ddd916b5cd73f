"""sessiongate core: sessions, workers, gRPC API, settings and the plugin host.

Plugin authors import the marker from here::

    from sessiongate.core import hookimpl

The markers are created on first use: worker processes import this package too
and must not pay for pluggy (session open latency, see bench/).
"""

from __future__ import annotations

from typing import Any

PROJECT = "sessiongate"

__all__ = ["PROJECT", "hookimpl", "hookspec"]

_markers: dict[str, Any] = {}


def __getattr__(name: str) -> Any:
    if name in ("hookimpl", "hookspec"):
        if not _markers:
            import pluggy

            #: Marker for hook implementations, used by plugins.
            _markers["hookimpl"] = pluggy.HookimplMarker(PROJECT)
            #: Marker for specifications; only sessiongate.core.hookspecs uses it.
            _markers["hookspec"] = pluggy.HookspecMarker(PROJECT)
        return _markers[name]
    raise AttributeError(f"module 'sessiongate.core' has no attribute {name!r}")
