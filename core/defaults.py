"""Core's own hook implementations: the defaults plugins can override.

Registered as the plugin ``core`` before everything else, with ``trylast`` on the
decisions, so any plugin's answer comes first.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

from sessiongate.core import hookimpl
from sessiongate.core.events import Distributor

if TYPE_CHECKING:
    from sessiongate.core.session import Session
    from sessiongate.core.settings import Settings


@hookimpl(trylast=True)
def sg_make_distributor(session: Session, settings: Settings) -> Distributor:
    """One external subscriber per session (a second gets ALREADY_EXISTS)."""
    return Distributor(**session.attributes["gateway"].sessions.distributor_options(session))


@hookimpl(trylast=True)
def sg_worker_endpoint(session: Session, runtime_dir: str) -> str:
    """``<runtime_dir>/<instance>-<session>.sock``: unique per gateway process."""
    gateway = session.attributes["gateway"]
    return os.path.join(runtime_dir, f"{gateway.instance_id[:8]}-{session.session_id[:16]}.sock")


@hookimpl
def sg_worker_backends() -> Mapping[str, str]:
    return {"sim": "sessiongate.core.backends.sim:Sim"}
