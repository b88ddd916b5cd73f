"""Delivery through a real gateway to a real receiver: signatures, order, retries,
failure, redelivery, disabling, rotation, dedupe.

Every gateway here switches the plugin on itself, so these run once (``once``), with
the shipped defaults of the other plugins.
"""

from __future__ import annotations

import asyncio
import datetime
import re
import sqlite3
from typing import Any

import grpc
import pytest
from standardwebhooks.webhooks import Webhook

from sessiongate.core import hookimpl
from sessiongate.testing import rpc_error
from sessiongate.v1 import webhooks_pb2

from .helpers import ON, TIMEOUT, admin_of, recorded, subscribe

pytestmark = [pytest.mark.asyncio, pytest.mark.once]

RFC3339_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


class FailureHook:
    """A plugin recording ``sg_webhook_failed``."""

    __name__ = "failure-recorder"

    def __init__(self) -> None:
        self.failed: list[dict[str, Any]] = []
        self.called = asyncio.Event()

    @hookimpl
    def sg_webhook_failed(self, delivery: Any) -> None:
        self.failed.append(dict(delivery))
        self.called.set()


async def test_an_event_arrives_signed_with_the_documented_body(make_gateway, receiver):
    gw = await make_gateway(**ON)
    endpoint_id = await subscribe(gw, receiver, "session.opened", "session.closed")
    client = gw.client()
    sid = (await client.open(client_name="app")).session_id
    await client.close(sid)
    opened, = await receiver.events_of("session.opened")
    closed, = await receiver.events_of("session.closed")
    assert set(opened) == {"type", "id", "timestamp", "data"}
    assert opened["id"].startswith("evt_") and closed["id"] != opened["id"]
    assert RFC3339_UTC.fullmatch(opened["timestamp"])
    data = opened["data"]
    assert (data["session_id"], data["client_name"], data["state"]) == (sid, "app", "READY")
    assert closed["data"]["session_id"] == sid and closed["data"]["state"] == "CLOSED"
    assert [e["type"] for e in receiver.events] == ["session.opened", "session.closed"]
    first = receiver.requests[0]
    assert first.headers["webhook-id"] == opened["id"]
    assert first.headers["Content-Type"] == "application/json"
    stamp = int(first.headers["webhook-timestamp"])
    assert abs(stamp - datetime.datetime.now(datetime.UTC).timestamp()) < 300
    assert re.fullmatch(r"v1,[A-Za-z0-9+/=]{44}", first.headers["webhook-signature"])
    await recorded(gw, "webhooks_delivered", 2)
    deliveries = await admin_of(gw).deliveries(endpoint_id=endpoint_id, status="delivered")
    ids = {d.delivery_id for d in deliveries}
    assert len(ids) == 2 and all(i.startswith("dlv_") for i in ids)


async def test_a_failing_endpoint_is_retried_until_it_takes_the_event(make_gateway, receiver):
    gw = await make_gateway(**ON)
    endpoint_id = await subscribe(gw, receiver, "session.opened")
    receiver.plan.extend([("fail", 500), ("fail", 503)])
    await gw.client().open()
    await receiver.events_of("session.opened")
    await recorded(gw, "webhooks_delivered")
    assert [r.answer for r in receiver.requests] == [500, 503, 204]
    bodies = {r.body for r in receiver.requests}
    assert len(bodies) == 1  # the same bytes on every attempt
    [delivery] = await admin_of(gw).deliveries(endpoint_id=endpoint_id)
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == \
        ("delivered", 3, 204)
    assert gw.gateway.metrics.get("webhooks_retries") == 2


async def test_events_to_one_endpoint_arrive_in_order_despite_retries(make_gateway,
                                                                     receiver):
    gw = await make_gateway(**ON)
    await subscribe(gw, receiver, "session.opened")
    receiver.plan.extend([("fail", 500), ("fail", 500)])  # the first event's first two tries
    client = gw.client()
    sids = [(await client.open(client_name=f"s{i}")).session_id for i in range(5)]
    events = await receiver.events_of("session.opened", 5)
    assert [e["data"]["session_id"] for e in events] == sids
    # the later events waited for the first: nothing was sent beside it while it failed
    assert [r.answer for r in receiver.requests[:3]] == [500, 500, 204]


async def test_a_graceful_stop_gives_back_a_claimed_batch_uncounted(make_gateway, tmp_path,
                                                                    receiver):
    """A retry claims the held queue as one batch (its head and the three behind it);
    the head hangs, the gateway stops: every delivery is pending again, only the head's
    one finished attempt counted."""
    gw = await make_gateway(**ON)
    await subscribe(gw, receiver, "session.opened")
    first_answer = asyncio.Event()
    receiver.plan.extend([("wait", first_answer, 503), ("hang",)])
    client = gw.client()
    await client.open(client_name="s0")
    await receiver.wait(lambda: len(receiver.arrivals) == 1)
    for i in range(1, 4):  # queued behind the first while it is in flight
        await client.open(client_name=f"s{i}")
    await recorded(gw, "webhooks_enqueued", 4)  # all four stored
    first_answer.set()  # 503: the retry claims the head with the three behind it
    await receiver.wait(lambda: len(receiver.arrivals) == 2)
    assert len(await admin_of(gw).deliveries(status="delivering")) == 4  # one batch
    await gw.stop()
    with sqlite3.connect(tmp_path / "state" / "webhooks.sqlite3") as db:
        rows = db.execute("SELECT status, attempts FROM deliveries ORDER BY seq").fetchall()
    assert rows == [("pending", 1), ("pending", 0), ("pending", 0), ("pending", 0)]


async def test_a_delivery_fails_after_its_schedule_and_can_be_sent_again(make_gateway,
                                                                        receiver):
    hook = FailureHook()
    gw = await make_gateway(extra_plugins=(hook,), **{
        **ON, "plugins.webhooks.retry_schedule_seconds": [0, 0.05, 0.05]})
    admin = admin_of(gw)
    endpoint_id = await subscribe(gw, receiver, "session.opened")
    receiver.always = ("fail", 500)
    await gw.client().open()
    await asyncio.wait_for(hook.called.wait(), TIMEOUT)
    [failed] = hook.failed
    assert failed["attempts"] == 3 and failed["last_status_code"] == 500
    assert failed["endpoint_id"] == endpoint_id and failed["event_type"] == "session.opened"
    assert set(failed) == {"delivery_id", "event_id", "event_type", "endpoint_id", "attempts",
                           "last_status_code", "last_error"}
    assert len(receiver.requests) == 3
    [row] = await admin.deliveries(status="failed")
    assert row.delivery_id == failed["delivery_id"] and row.last_error == "HTTP 500"
    assert gw.gateway.metrics.get("webhooks_failed", reason="schedule") == 1

    receiver.always = None
    again = await admin.stub.Redeliver(webhooks_pb2.RedeliverRequest(
        delivery_id=row.delivery_id), metadata=admin.metadata)
    assert again.delivery_id == row.delivery_id and again.status == "pending"
    event, = await receiver.events_of("session.opened")
    assert event["id"] == failed["event_id"]
    error = await rpc_error(admin.stub.Redeliver(webhooks_pb2.RedeliverRequest(
        delivery_id="dlv_unknown"), metadata=admin.metadata))
    assert error.code() == grpc.StatusCode.NOT_FOUND


async def test_an_endpoint_that_hangs_is_timed_out_and_retried(make_gateway, receiver):
    gw = await make_gateway(**{**ON, "plugins.webhooks.timeout_seconds": 0.5})
    endpoint_id = await subscribe(gw, receiver, "session.opened")
    receiver.plan.append(("hang",))
    await gw.client().open()
    await receiver.events_of("session.opened")
    await recorded(gw, "webhooks_delivered")
    [delivery] = await admin_of(gw).deliveries(endpoint_id=endpoint_id)
    assert delivery.attempts == 2


async def test_a_redirect_is_not_followed(make_gateway, receiver, make_receiver):
    other = await make_receiver()
    hook = FailureHook()
    gw = await make_gateway(extra_plugins=(hook,),
                            **{**ON, "plugins.webhooks.retry_schedule_seconds": [0]})
    endpoint_id = await subscribe(gw, receiver, "session.opened")
    receiver.always = ("redirect", other.url)
    await gw.client().open()
    await asyncio.wait_for(hook.called.wait(), TIMEOUT)
    [failed] = hook.failed
    assert failed["endpoint_id"] == endpoint_id and failed["last_status_code"] == 302
    assert "not followed" in failed["last_error"]
    assert len(receiver.requests) == 1 and other.requests == []


async def test_410_gone_disables_the_endpoint_and_tells_the_others(make_gateway, receiver,
                                                                   make_receiver):
    watcher = await make_receiver()
    hook = FailureHook()
    gw = await make_gateway(extra_plugins=(hook,), **ON)
    gone_id = await subscribe(gw, receiver, "session.opened")
    await subscribe(gw, watcher, "webhook.endpoint_disabled")
    receiver.always = ("gone",)
    await gw.client().open()
    event, = await watcher.events_of("webhook.endpoint_disabled")
    assert event["data"]["endpoint_id"] == gone_id and "410" in event["data"]["reason"]
    assert len(receiver.requests) == 1  # not retried
    [endpoint] = [e for e in await admin_of(gw).endpoints() if e.endpoint_id == gone_id]
    assert endpoint.status == "disabled" and "410" in endpoint.disabled_reason
    assert hook.failed[0]["last_status_code"] == 410
    assert gw.gateway.metrics.get("webhooks_endpoints_disabled", reason="gone") == 1


async def test_an_endpoint_failing_too_long_is_disabled(make_gateway, receiver, make_receiver):
    watcher = await make_receiver()
    gw = await make_gateway(**{**ON, "plugins.webhooks.disable_after_hours": 0.0001,
                               "plugins.webhooks.retry_schedule_seconds": [0] + [0.2] * 20})
    failing_id = await subscribe(gw, receiver, "session.opened")
    await subscribe(gw, watcher, "webhook.endpoint_disabled")
    receiver.always = ("fail", 500)
    await gw.client().open()
    event, = await watcher.events_of("webhook.endpoint_disabled")
    assert event["data"]["endpoint_id"] == failing_id
    assert "disable_after_hours" in event["data"]["reason"]
    assert 1 < len(receiver.requests) < 20
    [row] = await admin_of(gw).deliveries(endpoint_id=failing_id)
    assert row.status == "failed"


async def test_a_rotated_secret_and_the_previous_one_both_verify(make_gateway, receiver):
    gw = await make_gateway(**ON)
    admin = admin_of(gw)
    endpoint_id, old = await admin.add(receiver.url, "webhook.test")
    rotated = await admin.stub.RotateSecret(webhooks_pb2.RotateSecretRequest(
        endpoint_id=endpoint_id, grace_seconds=3600), metadata=admin.metadata)
    new = rotated.secret
    assert new.startswith("whsec_") and new != old
    assert rotated.endpoint.HasField("previous_secret_expires_at")
    receiver.verify_with(new)
    await admin.stub.SendTest(webhooks_pb2.EndpointRequest(endpoint_id=endpoint_id),
                              metadata=admin.metadata)
    await receiver.events_of("webhook.test")
    request = receiver.requests[0]
    assert len(request.headers["webhook-signature"].split(" ")) == 2
    for secret in (old, new):
        assert Webhook(secret).verify(request.body, request.headers)["type"] == "webhook.test"

    # without a grace period, the previous secret signs no more
    newest = (await admin.stub.RotateSecret(webhooks_pb2.RotateSecretRequest(
        endpoint_id=endpoint_id, grace_seconds=0), metadata=admin.metadata)).secret
    receiver.verify_with(newest)
    await admin.stub.SendTest(webhooks_pb2.EndpointRequest(endpoint_id=endpoint_id),
                              metadata=admin.metadata)
    await receiver.events_of("webhook.test", 2)
    assert len(receiver.requests[1].headers["webhook-signature"].split(" ")) == 1


async def test_a_receiver_handles_a_redelivered_event_once(make_gateway, receiver):
    """The example receiver dedupes by webhook-id: the event's id, the same on every
    attempt and every redelivery."""
    gw = await make_gateway(**ON)
    admin = admin_of(gw)
    await subscribe(gw, receiver, "session.opened")
    await gw.client().open()
    await receiver.events_of("session.opened")
    await recorded(gw, "webhooks_delivered")
    [delivery] = await admin.deliveries(status="delivered")
    await admin.stub.Redeliver(webhooks_pb2.RedeliverRequest(
        delivery_id=delivery.delivery_id), metadata=admin.metadata)
    await receiver.wait(lambda: len(receiver.requests) == 2)
    first, second = receiver.requests
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    assert first.body == second.body and second.answer == 204
    assert len(receiver.events) == 1
