"""Core's own hook implementations: the defaults plugins can override.

Registered as the plugin ``core`` before everything else, with ``trylast`` on the
decisions, so any plugin's answer comes first.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

from sessiongate.core import hookimpl
from sessiongate.core.streaming.events import Distributor

if TYPE_CHECKING:
    from sessiongate.core.plugin_api import GatewayAPI
    from sessiongate.core.sessions.session import Session


@hookimpl(trylast=True)
def sg_make_distributor(gateway: GatewayAPI, session: Session) -> Distributor:
    """One external subscriber per session (a second gets ALREADY_EXISTS)."""
    return Distributor(**gateway.distributor_options(session))


@hookimpl(trylast=True)
def sg_worker_endpoint(gateway: GatewayAPI, session: Session, runtime_dir: str) -> str:
    """``<runtime_dir>/<instance>-<session>.sock``: unique per gateway process."""
    return worker_socket_path(runtime_dir, gateway.instance_id, session.session_id)


def worker_socket_path(runtime_dir: str, instance_id: str, session_id: str) -> str:
    """The socket of a session's worker: short enough for any Unix socket path limit."""
    return os.path.join(runtime_dir, f"{instance_id[:8]}-{session_id[:16]}.sock")


@hookimpl
def sg_worker_backends() -> Mapping[str, str]:
    return {"sim": "sessiongate.core.sdk.sim:Sim"}
