"""sessiongate core: sessions, workers, gRPC API, settings and the plugin host.

This package is also **the public API for plugins**: everything a plugin needs is
importable from here (plus :mod:`sessiongate.core.errors` and the generated
``sessiongate.v1`` messages); the subsystem packages are internal::

    from sessiongate.core import GatewayAPI, Session, StashKey, hookimpl

Names are loaded on first use: worker processes import this package too and must
not pay for pluggy or the gateway (session open latency, see bench/).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

PROJECT = "sessiongate"
#: the entry-point group every plugin, built-in or third-party, registers in
ENTRY_POINT_GROUP = "sessiongate.plugins"

#: public name → the module that defines it
_PUBLIC: dict[str, str] = {
    "GatewayAPI": "sessiongate.core.plugin_api",
    "InternalConsumer": "sessiongate.core.plugin_api",
    "Session": "sessiongate.core.sessions.session",
    "EndedSession": "sessiongate.core.sessions.session",
    "RemoteSession": "sessiongate.core.sessions.remote",
    "KeyRecord": "sessiongate.core.identity",
    "CredentialRecord": "sessiongate.core.plugin_api",
    "SessionState": "sessiongate.core.sessions.session",
    "AdoptionRecord": "sessiongate.core.sessions.manager",
    "Distributor": "sessiongate.core.streaming.events",
    "EventLog": "sessiongate.core.streaming.events",
    "Subscription": "sessiongate.core.streaming.events",
    "ADMIN_SCOPE": "sessiongate.core.identity",
    "TAG_PATTERN": "sessiongate.core.identity",
    "Identity": "sessiongate.core.identity",
    "LoginGrant": "sessiongate.core.identity",
    "PluginCommand": "sessiongate.core.plugin_cli",
    # for a plugin's command that calls the gateway (its own gRPC service)
    "add_client_options": "sessiongate.core.cli.commands",
    "call_gateway": "sessiongate.core.cli.commands",
    "Setting": "sessiongate.core.config.settings",
    "Settings": "sessiongate.core.config.settings",
    "boolean": "sessiongate.core.config.settings",
    "non_negative_int": "sessiongate.core.config.settings",
    "non_negative_number": "sessiongate.core.config.settings",
    "one_of": "sessiongate.core.config.settings",
    "positive_int": "sessiongate.core.config.settings",
    "positive_number": "sessiongate.core.config.settings",
    "string": "sessiongate.core.config.settings",
    "Stash": "sessiongate.core.stash",
    "StashKey": "sessiongate.core.stash",
    "SqliteStore": "sessiongate.core.storage",
    # a plugin's metrics (sg_metrics)
    "Metric": "sessiongate.core.metrics",
    "counter": "sessiongate.core.metrics",
    "gauge": "sessiongate.core.metrics",
    "histogram": "sessiongate.core.metrics",
    "worker_socket_path": "sessiongate.core.pluginhost.defaults",
}

__all__ = [
    "ADMIN_SCOPE",
    "ENTRY_POINT_GROUP",
    "PROJECT",
    "TAG_PATTERN",
    "AdoptionRecord",
    "CredentialRecord",
    "Distributor",
    "EndedSession",
    "EventLog",
    "GatewayAPI",
    "Identity",
    "InternalConsumer",
    "KeyRecord",
    "LoginGrant",
    "Metric",
    "PluginCommand",
    "RemoteSession",
    "Session",
    "SessionState",
    "Setting",
    "Settings",
    "SqliteStore",
    "Stash",
    "StashKey",
    "Subscription",
    "add_client_options",
    "boolean",
    "call_gateway",
    "counter",
    "gauge",
    "histogram",
    "hookimpl",
    "hookspec",
    "non_negative_int",
    "non_negative_number",
    "one_of",
    "positive_int",
    "positive_number",
    "string",
    "worker_socket_path",
]

_markers: dict[str, Any] = {}

if TYPE_CHECKING:
    from pluggy import HookimplMarker, HookspecMarker

    from sessiongate.core.cli.commands import add_client_options, call_gateway
    from sessiongate.core.config.settings import (
        Setting,
        Settings,
        boolean,
        non_negative_int,
        non_negative_number,
        one_of,
        positive_int,
        positive_number,
        string,
    )
    from sessiongate.core.identity import ADMIN_SCOPE, TAG_PATTERN, Identity, KeyRecord, LoginGrant
    from sessiongate.core.metrics import Metric, counter, gauge, histogram
    from sessiongate.core.plugin_api import CredentialRecord, GatewayAPI, InternalConsumer
    from sessiongate.core.pluginhost.defaults import worker_socket_path
    from sessiongate.core.sessions.manager import AdoptionRecord
    from sessiongate.core.sessions.remote import RemoteSession
    from sessiongate.core.sessions.session import EndedSession, Session, SessionState
    from sessiongate.core.stash import Stash, StashKey
    from sessiongate.core.storage import SqliteStore
    from sessiongate.core.streaming.events import Distributor, EventLog, Subscription

    hookimpl: HookimplMarker
    hookspec: HookspecMarker


def __getattr__(name: str) -> Any:
    if name in ("hookimpl", "hookspec"):
        if not _markers:
            import pluggy

            #: Marker for hook implementations, used by plugins.
            _markers["hookimpl"] = pluggy.HookimplMarker(PROJECT)
            #: Marker for specifications; only sessiongate.core.hookspecs uses it.
            _markers["hookspec"] = pluggy.HookspecMarker(PROJECT)
        return _markers[name]
    module = _PUBLIC.get(name)
    if module is not None:
        return getattr(importlib.import_module(module), name)
    raise AttributeError(f"module 'sessiongate.core' has no attribute {name!r}")
