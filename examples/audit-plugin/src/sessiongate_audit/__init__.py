"""sessiongate-audit: an audit line per session, and a client-name deny list.

An example third-party plugin (see docs/plugin-authors-guide.md). It is found
through the entry point ``audit = "sessiongate_audit"`` in the group
``sessiongate.plugins``; the module itself is the plugin (pluggy collects the
functions marked ``@hookimpl``).

State: none at module level. A process may run several gateways (tests do), so
everything is read from the ``gateway`` each hook is given.

Under the reattach plugin a session can outlive its gateway: at shutdown it is
*released* (its worker left running), and a later gateway *adopts* it. Those are not
closes and opens, so they get lines of their own (``released``, ``adopted``).
"""

from __future__ import annotations

import datetime
import json
import logging
import pathlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sessiongate.core import Setting, hookimpl
from sessiongate.core.errors import PermissionDenied

if TYPE_CHECKING:
    from sessiongate.core import GatewayAPI, Identity, Session, Settings

__all__ = ["AUDIT_LOGGER", "DEFAULTS"]

AUDIT_LOGGER = "sessiongate.audit"
log = logging.getLogger(AUDIT_LOGGER)

#: The plugin's settings and their defaults. The shipped settings.toml knows only the
#: built-in plugins, so a third-party plugin brings its defaults with its rules.
DEFAULTS: dict[str, Any] = {
    "plugins.audit.file": "",
    "plugins.audit.deny_client_names": [],
}


def _names(value: Any) -> bool:
    return isinstance(value, list | tuple) and all(isinstance(v, str) and v for v in value)


@hookimpl
def sg_add_validators(settings: Settings) -> Sequence[Setting]:
    """Rules for ``plugins.audit.*`` (the host reports every failure at once, exit 2)."""
    return [
        Setting(
            "plugins.audit.file", "a string (a path; empty: the log)",
            lambda v: isinstance(v, str),
            "Append the audit lines (JSON) to this file; empty: log them on the "
            f"{AUDIT_LOGGER} logger.", required=False, default=DEFAULTS["plugins.audit.file"]),
        Setting(
            "plugins.audit.deny_client_names", "a list of non-empty strings", _names,
            "OpenSession from these client names is refused with PERMISSION_DENIED.",
            required=False, default=DEFAULTS["plugins.audit.deny_client_names"]),
    ]


def _write(gateway: GatewayAPI, session: Session, event: str, **extra: Any) -> None:
    """One JSON line; an OSError propagates, and the host applies the hook's rule."""
    record = {
        "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds"),
        "event": event,
        # A refused open creates no session: its pre-allocated id (a spare worker's)
        # is never used, so a "denied" line carries none.
        "session_id": None if event == "denied" else session.session_id,
        "client_name": session.client_name,
        "owner_key_id": session.owner_key_id,
        **extra,
    }
    line = json.dumps(record, sort_keys=True)
    target = str(gateway.settings.get("plugins.audit.file") or "")
    if not target:
        log.info("audit %s", line)
        return
    with pathlib.Path(target).open("a", encoding="utf-8") as fh:
        fh.write(line + "\n")


@hookimpl
def sg_session_open(gateway: GatewayAPI, session: Session, identity: Identity) -> None:
    """Veto hook: refuse deny-listed client names (before any worker starts)."""
    denied = gateway.settings.get("plugins.audit.deny_client_names") or []
    if session.client_name in denied:
        _write(gateway, session, "denied", key_id=identity.key_id)
        raise PermissionDenied(
            f"client name {session.client_name!r} may not open sessions "
            "(plugins.audit.deny_client_names)")


@hookimpl
def sg_session_opened(gateway: GatewayAPI, session: Session) -> None:
    """Observer: the session is READY (once, in the gateway that opened it)."""
    _write(gateway, session, "opened", backend=session.backend, tag=session.tag)


@hookimpl
def sg_session_closed(gateway: GatewayAPI, session: Session, reason: str) -> None:
    """Observer: the session is CLOSED or FAULTED."""
    _write(gateway, session, "closed", reason=reason, state=str(session.state))


@hookimpl
def sg_session_released(gateway: GatewayAPI, session: Session) -> None:
    """Observer: shutdown left the session's worker running for the next gateway."""
    _write(gateway, session, "released")


@hookimpl
def sg_session_adopted(gateway: GatewayAPI, session: Session) -> None:
    """Observer: a later gateway adopted the worker; the session is READY again."""
    _write(gateway, session, "adopted", last_sequence=session.last_sequence)
