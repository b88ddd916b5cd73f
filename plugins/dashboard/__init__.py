"""dashboard: a live web view of sessions for operators, tag-gated, on the HTTP side port.

Off by default (``plugins.dashboard.enabled``). With it on, the side port
(``server.http_address``) serves at ``/``:

* a sign-in page: LDAP through the acl plugin (``plugins.acl.ldap``), and/or an API key
  (``plugins.dashboard.allow_api_key_login``); the sign-in lives in an ``HttpOnly``,
  ``SameSite=Strict`` cookie (``Secure`` under TLS) and is revoked on the server at
  sign-out; failed sign-ins are limited per client address;
* an overview of the sessions the person may see (admins: all; viewers: those whose tag
  their groups map to), pushed every ``plugins.dashboard.snapshot_interval_seconds``
  over Server-Sent Events, with each session's event rate over the last minute and an
  alarms strip (faults, subscriber overflows, failed adoptions, from hooks);
* a page per session with its live events, fed by one internal subscriber per session
  (attached when it becomes Ready; never pacing the worker, never faulting the session)
  whatever the number of open pages; admins (and the owner) may close the session.

Module layout: :mod:`.rules` (settings), :mod:`.auth` (cookies, CSRF, failed sign-ins),
:mod:`.feed` (mirrors and bounded per-page queues), :mod:`.render` (rows and SSE frames),
:mod:`.runtime` (one gateway's pages, alarms and tasks), :mod:`.web` (handlers),
``templates/`` and ``static/``. See docs/plugins/dashboard.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from sessiongate.core import EndedSession, hookimpl

from .rules import rules
from .runtime import RUNTIME, DashboardRuntime, metrics

if TYPE_CHECKING:
    from aiohttp import web

    from sessiongate.core import (
        AdoptionRecord,
        CredentialRecord,
        GatewayAPI,
        Metric,
        Session,
        Setting,
        Settings,
        Subscription,
    )

__all__ = ["DashboardRuntime", "runtime_of"]

FAULTED = "FAULTED"


def runtime_of(gateway: GatewayAPI) -> DashboardRuntime | None:
    """The running dashboard of ``gateway`` (None before startup, or if it failed)."""
    runtime = gateway.stash.get(RUNTIME)
    return runtime if runtime is not None and runtime.started else None


@hookimpl
def sg_add_validators(settings: Settings) -> Sequence[Setting]:
    return rules(settings)


@hookimpl
def sg_metrics() -> Sequence[Metric]:
    return metrics()


@hookimpl
def sg_http_routes(gateway: GatewayAPI) -> Sequence[web.AbstractRouteDef]:
    from .web import routes  # jinja2 and the templates only when the plugin is on

    return routes(gateway)


@hookimpl(tryfirst=True)
async def sg_startup(gateway: GatewayAPI) -> None:
    """First, so that the adoptions other plugins make at startup raise their alarms."""
    runtime = DashboardRuntime(gateway)
    gateway.stash[RUNTIME] = runtime
    await runtime.start()


@hookimpl
async def sg_shutdown(gateway: GatewayAPI) -> None:
    runtime = gateway.stash.pop(RUNTIME, None)
    if runtime is not None:
        await runtime.stop()


# -- the live feed: one mirror per session, from the moment it is Ready -------------------


@hookimpl
def sg_session_opened(gateway: GatewayAPI, session: Session) -> None:
    DashboardRuntime.attach_mirror(gateway, session)


@hookimpl
def sg_session_adopted(gateway: GatewayAPI, session: Session) -> None:
    DashboardRuntime.attach_mirror(gateway, session)


# -- access: a sign-in whose grants changed is checked again at once -----------------------


@hookimpl
def sg_credential_changed(gateway: GatewayAPI, record: CredentialRecord) -> None:
    runtime = runtime_of(gateway)
    if runtime is not None:
        runtime.credential_changed(record.subject)


# -- alarms ------------------------------------------------------------------------------


@hookimpl
def sg_session_state_changed(gateway: GatewayAPI, session: Session, old: str, new: str,
                             reason: str) -> None:
    runtime = gateway.stash.get(RUNTIME)
    if new == FAULTED and runtime is not None:
        runtime.raise_alarm("fault", session.session_id,
                            f"Session {session.session_id} faulted: {reason}",
                            EndedSession(session))


@hookimpl
def sg_subscriber_detached(gateway: GatewayAPI, session: Session, subscription: Subscription,
                           reason: str) -> None:
    runtime = gateway.stash.get(RUNTIME)
    if reason == "overflow" and runtime is not None:
        who = subscription.subscriber_id or subscription.kind
        runtime.raise_alarm("overflow", session.session_id,
                            f"Subscriber {who} of session {session.session_id} fell too far "
                            "behind and was disconnected", EndedSession(session))


@hookimpl
def sg_session_adoption_failed(gateway: GatewayAPI, record: AdoptionRecord,
                               outcome: str) -> None:
    runtime = gateway.stash.get(RUNTIME)
    if runtime is not None:
        runtime.raise_alarm("adoption", record.session_id,
                            f"The worker of session {record.session_id} (pid {record.pid}) "
                            f"was not adopted: {outcome}", None)
