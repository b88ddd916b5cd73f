"""webhooks: session lifecycle events, delivered at least once as Standard Webhooks.

Off by default (``plugins.webhooks.enabled``). With it on, every lifecycle change the
gateway sees becomes an event (``session.opened`` … ``key.revoked``, and
``activity.<operation>`` with the activity plugin on), written to a durable outbox in
``state_dir/webhooks.sqlite3`` for every endpoint that asked for its type, and POSTed
to each, signed (``webhook-id``, ``webhook-timestamp``, ``webhook-signature``), retried
on the schedule, in order per endpoint; see docs/plugins/webhooks.md.

Module layout: :mod:`.rules` (settings), :mod:`.events` (types, ids, bodies),
:mod:`.signing` (secrets, at rest and signing), :mod:`.guard` (SSRF guard),
:mod:`.store` (the outbox), :mod:`.dispatch` (HTTP and scheduling), :mod:`.runtime`
(one gateway's), :mod:`.service` (the admin gRPC service), :mod:`.cli`
(``sessiongate webhooks``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from sessiongate.core import hookimpl

from .cli import WEBHOOKS_COMMAND
from .events import ACTIVITY_PREFIX, session_data
from .rules import rules
from .runtime import METRICS, RUNTIME, WebhooksRuntime

if TYPE_CHECKING:
    import grpc

    from sessiongate.core import (
        GatewayAPI,
        Metric,
        PluginCommand,
        Session,
        Setting,
        Settings,
        Subscription,
    )

__all__ = ["WebhooksRuntime", "runtime_of"]

log = logging.getLogger("sessiongate.plugins.webhooks")

READY, DETACHED, FAULTED = "READY", "DETACHED", "FAULTED"


def runtime_of(gateway: GatewayAPI) -> WebhooksRuntime | None:
    """The running webhooks runtime of ``gateway`` (None before startup, or if it failed)."""
    runtime = gateway.stash.get(RUNTIME)
    return runtime if runtime is not None and runtime.started else None


def _emit(gateway: GatewayAPI, kind: str, data: Mapping[str, Any]) -> None:
    runtime = runtime_of(gateway)
    if runtime is not None:
        runtime.emit(kind, data)


@hookimpl
def sg_add_validators(settings: Settings) -> Sequence[Setting]:
    return rules(settings)


@hookimpl
def sg_metrics() -> Sequence[Metric]:
    return list(METRICS)


@hookimpl
def sg_cli_commands() -> Sequence[PluginCommand]:
    return [WEBHOOKS_COMMAND]


@hookimpl
def sg_grpc_services(gateway: GatewayAPI, server: grpc.aio.Server) -> Sequence[str]:
    from .service import add_service

    return [add_service(gateway, server)]


@hookimpl(tryfirst=True)
async def sg_startup(gateway: GatewayAPI) -> None:
    """First, so that the sessions other plugins adopt at startup are announced."""
    runtime = WebhooksRuntime(gateway)
    gateway.stash[RUNTIME] = runtime
    await runtime.start()


@hookimpl
async def sg_shutdown(gateway: GatewayAPI) -> None:
    runtime = gateway.stash.pop(RUNTIME, None)
    if runtime is not None:
        await runtime.stop()


# -- where events come from --------------------------------------------------------------


@hookimpl
def sg_session_opened(gateway: GatewayAPI, session: Session) -> None:
    _emit(gateway, "session.opened", session_data(session))


@hookimpl
def sg_session_state_changed(gateway: GatewayAPI, session: Session, old: str, new: str,
                             reason: str) -> None:
    if new == READY:
        kind = "session.resumed" if old == DETACHED else "session.ready"
    elif new == DETACHED:
        kind = "session.detached"
    elif new == FAULTED:
        kind = "session.faulted"
    else:
        return
    _emit(gateway, kind, session_data(session, previous_state=old))


@hookimpl
def sg_session_closed(gateway: GatewayAPI, session: Session, reason: str) -> None:
    _emit(gateway, "session.closed", session_data(session))


@hookimpl
def sg_session_adopted(gateway: GatewayAPI, session: Session) -> None:
    _emit(gateway, "session.readopted", session_data(session))


@hookimpl
def sg_subscriber_detached(gateway: GatewayAPI, session: Session, subscription: Subscription,
                           reason: str) -> None:
    if reason == "overflow":
        _emit(gateway, "subscriber.overflowed", session_data(
            session, subscriber_id=subscription.subscriber_id, subscriber_kind=subscription.kind,
            external=subscription.external))


@hookimpl
def sg_key_revoked(gateway: GatewayAPI, key_id: str) -> None:
    _emit(gateway, "key.revoked", {"key_id": key_id})


@hookimpl
def sg_activity(gateway: GatewayAPI, event: Mapping[str, Any]) -> None:
    _emit(gateway, f"{ACTIVITY_PREFIX}{event.get('action')}", dict(event))
