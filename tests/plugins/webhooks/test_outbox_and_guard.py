"""The outbox store (real SQLite), the SSRF guard (real aiohttp, real sockets), secrets
at rest and settings, without a gateway."""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
import stat
import time

import pytest
import pytest_asyncio
from aiohttp.abc import AbstractResolver
from standardwebhooks.webhooks import Webhook

from sessiongate.core.config.settings import SettingsError
from sessiongate.core.pluginhost import host as plugin_host
from sessiongate.plugins.webhooks.dispatch import Sender
from sessiongate.plugins.webhooks.events import Event, check_event_types, new_id, subscribed
from sessiongate.plugins.webhooks.guard import Policy, check_url
from sessiongate.plugins.webhooks.signing import (
    KEY_FILE,
    SecretBox,
    Signer,
    new_secret,
    signature_header,
)
from sessiongate.plugins.webhooks.store import Finish, Outbox
from sessiongate.testing import write_config

from .helpers import serving

pytestmark = pytest.mark.once

LOOPBACK = Policy(["127.0.0.1", "hooks.test"], [ipaddress.ip_network("127.0.0.1/32")])
NOTHING_ALLOWED = Policy(["127.0.0.1", "hooks.test"], [])


# -- the store --------------------------------------------------------------------------------


@pytest_asyncio.fixture
async def outbox(tmp_path):
    async with Outbox(tmp_path / "webhooks.sqlite3") as store:
        yield store


def event(kind: str = "session.opened", age: float = 0.0) -> Event:
    return Event.make(kind, {"session_id": "s1"}, time.time() - age)


@pytest.mark.asyncio
async def test_an_event_is_stored_once_per_endpoint_however_often_it_is_enqueued(outbox):
    first = event()
    await outbox.enqueue([(first, ["ep_a", "ep_b"])], time.time())
    await outbox.enqueue([(first, ["ep_a", "ep_b"]), (event(), ["ep_a"])], time.time())
    rows = await outbox.deliveries()
    assert sorted((r["endpoint_id"], r["event_id"] == first.event_id) for r in rows) == \
        [("ep_a", False), ("ep_a", True), ("ep_b", True)]
    assert len({r["delivery_id"] for r in rows}) == 3
    assert all(r["delivery_id"].startswith("dlv_") for r in rows)


@pytest.mark.asyncio
async def test_a_claim_is_exclusive_and_its_lease_expires(outbox):
    """A claimed head is not claimed again while its lease runs; once the lease has
    ended (its gateway died mid-attempt) it is, with the attempt counted."""
    now = time.time()
    first = event()
    await outbox.enqueue([(first, ["ep_a"]), (event(), ["ep_a"])], now)
    [claim] = await outbox.claim(["ep_a"], now, lease_until=now + 30)
    assert claim.attempts == 1 and claim.event_id == first.event_id
    assert claim.body == first.body and claim.event_type == "session.opened"
    assert await outbox.claim(["ep_a"], now + 29, lease_until=now + 60) == []  # leased
    assert await outbox.next_due(["ep_a", "ep_b"]) == {"ep_a": now + 30}  # the lease's end
    # the lease ends (its gateway died mid-attempt): claimable again, the second attempt
    [reclaimed] = await outbox.claim(["ep_a", "ep_b"], now + 31, lease_until=now + 60)
    assert reclaimed.seq == claim.seq and reclaimed.attempts == 2


@pytest.mark.asyncio
async def test_the_queue_head_is_the_oldest_delivery_not_ended(outbox):
    now = time.time()
    events = [event() for _ in range(3)]
    await outbox.enqueue([(e, ["ep_a"]) for e in events], now)
    for expected in events:
        [claim] = await outbox.claim(["ep_a"], now, now + 30)
        assert claim.event_id == expected.event_id
        await outbox.finish_many([Finish(claim.seq, "delivered", 204, "", now)], now)
    assert await outbox.next_due(["ep_a"]) == {}


@pytest.mark.asyncio
async def test_a_batch_claim_takes_the_due_front_of_each_queue_in_order(outbox):
    """Up to ``per_endpoint`` deliveries a queue, oldest first, never past one that is
    not due (a retry's wait holds everything behind it); what was not sent is given
    back uncounted."""
    now = time.time()
    a_events, b_events = [event() for _ in range(5)], [event() for _ in range(2)]
    await outbox.enqueue([(e, ["ep_a"]) for e in a_events] +
                         [(e, ["ep_b"]) for e in b_events], now)
    claims = await outbox.claim(["ep_a", "ep_b"], now, now + 30, per_endpoint=3)
    assert [(c.endpoint_id, c.event_id) for c in claims] == \
        [("ep_a", e.event_id) for e in a_events[:3]] + \
        [("ep_b", e.event_id) for e in b_events]
    first, second, third = claims[:3]
    # the first fails and waits 60 s; the two behind it go back, uncounted
    await outbox.finish_many([Finish(first.seq, "pending", 500, "HTTP 500", now + 60)], now)
    await outbox.release([second, third], now)
    assert await outbox.claim(["ep_a"], now + 1, now + 30, per_endpoint=3) == []
    retried = await outbox.claim(["ep_a"], now + 61, now + 90, per_endpoint=3)
    assert [c.event_id for c in retried] == [e.event_id for e in a_events[:3]]
    assert [c.attempts for c in retried] == [2, 1, 1]


@pytest.mark.asyncio
async def test_pruning_deletes_ended_deliveries_and_their_events_only(outbox):
    now = time.time()
    old, fresh, waiting = event(age=200), event(), event(age=200)
    await outbox.enqueue([(old, ["ep_a"]), (fresh, ["ep_b"]), (waiting, ["ep_c"])], now)
    for endpoint, ended in (("ep_a", now - 100), ("ep_b", now)):
        [claim] = await outbox.claim([endpoint], now, now + 30)
        await outbox.finish_many([Finish(claim.seq, "delivered", 200, "", ended)], ended)
    assert await outbox.prune(cutoff=now - 50) == 1
    assert {r["event_id"] for r in await outbox.deliveries()} == \
        {fresh.event_id, waiting.event_id}
    rows = await outbox.db.execute_fetchall("SELECT event_id FROM events")
    assert {r[0] for r in rows} == {fresh.event_id, waiting.event_id}
    assert await outbox.depth() == {"pending": 1, "delivering": 0, "delivered": 1, "failed": 0}


@pytest.mark.asyncio
async def test_the_claim_uses_the_queue_index_and_pruning_the_status_index(outbox):
    plans = {}
    for name, sql, params in (
            ("head", "SELECT seq FROM deliveries WHERE endpoint_id = ? "
             "AND status IN ('pending', 'delivering') ORDER BY seq LIMIT 1", ("ep_a",)),
            ("prune", "SELECT seq FROM deliveries WHERE status = ? AND next_attempt_at < ?",
             ("delivered", 1.0))):
        rows = await outbox.db.execute_fetchall(f"EXPLAIN QUERY PLAN {sql}", params)
        plans[name] = " ".join(str(r[3]) for r in rows)
    assert "deliveries_queue" in plans["head"]
    assert "deliveries_by_status" in plans["prune"]


def test_the_retry_schedule_is_standard_webhooks_unless_one_is_given(tmp_path):
    from sessiongate.plugins.webhooks.rules import STANDARD_SCHEDULE, WebhookSettings

    config = write_config(tmp_path / "s.toml", {"plugins.webhooks.enabled": True})
    assert WebhookSettings.from_settings(plugin_host.load(str(config))[0]).schedule == \
        STANDARD_SCHEDULE == (0, 5, 300, 1800, 7200, 18000, 36000, 36000)
    config = write_config(tmp_path / "s.toml", {"plugins.webhooks.enabled": True,
                                                "plugins.webhooks.retry_schedule_seconds": [0, 1]})
    assert WebhookSettings.from_settings(plugin_host.load(str(config))[0]).schedule == (0, 1)


def test_event_ids_and_types():
    assert new_id("evt") != new_id("evt") and new_id("dlv").startswith("dlv_")
    assert check_event_types(["session.opened", "activity.*", "session.opened"]) == \
        ["session.opened", "activity.*"]
    for bad in (["session.open"], [], ["activity."]):
        with pytest.raises(ValueError):
            check_event_types(bad)
    assert subscribed("activity.Invoke", ("activity.*",))
    assert subscribed("activity.deploy", ("activity.deploy",))
    assert not subscribed("session.opened", ("activity.*", "session.closed"))


# -- secrets ----------------------------------------------------------------------------------


def test_secrets_are_sealed_with_a_private_key_bound_to_their_endpoint(tmp_path):
    box = SecretBox.open(tmp_path)
    assert stat.S_IMODE(os.stat(tmp_path / KEY_FILE).st_mode) == 0o600
    secret = new_secret()
    assert secret.startswith("whsec_") and len(secret) == 6 + 44
    sealed = box.seal(secret, "ep_a")
    assert secret.encode() not in sealed and secret[6:].encode() not in sealed
    assert SecretBox.open(tmp_path).unseal(sealed, "ep_a") == secret  # the same key again
    with pytest.raises(Exception):  # noqa: B017 - cryptography's InvalidTag
        box.unseal(sealed, "ep_b")


def test_signatures_verify_with_each_secret_and_only_in_utc():
    old, new, body = new_secret(), new_secret(), b'{"type":"webhook.test"}'
    now = datetime.datetime.now(datetime.UTC)
    header = signature_header([new, old], "evt_1", body, now)
    headers = {"webhook-id": "evt_1", "webhook-timestamp": str(int(now.timestamp())),
               "webhook-signature": header}
    for secret in (old, new):
        assert Webhook(secret).verify(body, headers)["type"] == "webhook.test"
    with pytest.raises(Exception):  # noqa: B017 - tampered body
        Webhook(new).verify(b'{"type":"webhook.tesT"}', headers)
    local = now.astimezone(datetime.timezone(datetime.timedelta(hours=2)))
    with pytest.raises(ValueError, match="UTC"):
        signature_header([new], "evt_1", body, local)
    assert new not in repr(Signer([new])) and "whsec_" not in repr(Signer([new]))


# -- the SSRF guard ----------------------------------------------------------------------------


@pytest.mark.parametrize("address", [
    "10.1.2.3", "172.16.0.1", "192.168.1.1", "127.0.0.1", "127.8.8.8", "169.254.169.254",
    "100.64.0.1", "100.100.100.200", "0.0.0.0", "224.0.0.1", "255.255.255.255",
    "192.0.2.1", "::1", "::", "fe80::1", "fc00::1", "fd00:ec2::254", "ff02::1",
    "::ffff:127.0.0.1", "::ffff:10.0.0.1", "2002:7f00:1::", "64:ff9b::a00:1",
])
def test_addresses_that_are_not_public_are_refused(address):
    assert not NOTHING_ALLOWED.allows(address)


@pytest.mark.parametrize("address", ["93.184.216.34", "2606:2800:220:1::1"])
def test_public_addresses_are_allowed(address):
    assert NOTHING_ALLOWED.allows(address)


def test_allowed_networks_open_private_addresses_v4_mapped_too():
    assert LOOPBACK.allows("127.0.0.1") and LOOPBACK.allows("::ffff:127.0.0.1")
    assert not LOOPBACK.allows("127.0.0.2") and not LOOPBACK.allows("::1")


@pytest.mark.parametrize(("url", "words"), [
    ("http://example.com/hook", "plain http://"),
    ("ftp://example.com/hook", "https://"),
    ("https://user:pw@example.com/", "user or password"),
    ("https://10.0.0.1/hook", "not public"),
    ("https://[::1]/hook", "not public"),
    ("https://[::ffff:169.254.169.254]/hook", "not public"),
    ("https://169.254.169.254/latest/meta-data", "not public"),
    ("https://example.com/a b", "space"),
    ("https:///nohost", "https://"),
    ("https://" + "a" * 3000 + ".com/", "longer"),
])
def test_urls_refused_when_an_endpoint_is_added(url, words):
    with pytest.raises(ValueError, match=words):
        check_url(url, NOTHING_ALLOWED)


def test_urls_accepted():
    assert check_url("https://example.com/hook?x=1", NOTHING_ALLOWED)
    assert check_url("http://127.0.0.1:8080/hook", LOOPBACK)
    assert check_url("http://hooks.test/", NOTHING_ALLOWED)  # checked when it connects


class ToLoopback(AbstractResolver):
    """DNS as an attacker would have it: every name is 127.0.0.1."""

    async def resolve(self, host, port=0, family=socket.AF_INET):
        return [{"hostname": host, "host": "127.0.0.1", "port": port, "family": socket.AF_INET,
                 "proto": 0, "flags": socket.AI_NUMERICHOST}]

    async def close(self):
        pass


@pytest.mark.asyncio
async def test_a_name_that_resolves_to_loopback_is_refused_before_connecting(receiver):
    port = receiver.url.rsplit(":", 1)[1].split("/")[0]
    sender = Sender(NOTHING_ALLOWED, 5, resolver=ToLoopback())
    try:
        outcome = await sender.send(f"http://hooks.test:{port}/hook", "evt_1", b"{}",
                                    [new_secret()])
    finally:
        await sender.close()
    assert outcome.blocked and outcome.status == 0
    assert "127.0.0.1" in outcome.error and "SSRF" in outcome.error
    assert receiver.requests == []


@pytest.mark.asyncio
async def test_an_ip_literal_is_refused_at_connect_time_too(receiver):
    """A URL stored before the rules changed, or that check_url never saw: the socket
    factory refuses the address anyway."""
    sender = Sender(NOTHING_ALLOWED, 5)
    try:
        outcome = await sender.send(receiver.url, "evt_1", b"{}", [new_secret()])
    finally:
        await sender.close()
    assert outcome.blocked and receiver.requests == []


@pytest.mark.asyncio
async def test_an_allowed_network_is_reached_and_no_proxy_is_taken_from_the_environment(
        receiver, monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", "http://10.255.255.1:3128")
    monkeypatch.setenv("http_proxy", "http://10.255.255.1:3128")
    secret = new_secret()
    receiver.verify_with(secret)
    sender = Sender(LOOPBACK, 5, resolver=ToLoopback())
    try:
        body = Event.make("webhook.test", {}, time.time()).body
        outcome = await sender.send(receiver.url.replace("127.0.0.1", "hooks.test"),
                                    "evt_1", body, [secret])
    finally:
        await sender.close()
    assert outcome.ok and outcome.status == 204
    assert [e["type"] for e in receiver.events] == ["webhook.test"]


@pytest.mark.asyncio
async def test_connections_are_kept_alive_each_checked_once_and_cookies_never_kept():
    """Attempts to one receiver reuse one connection (its address checked by the guard
    when it was made); a Set-Cookie is not sent back; an answer not read to its end
    (more than 64 KiB) closes its connection, and the next is checked again."""
    from aiohttp import web

    seen: list[tuple[str, str]] = []  # (peer port, cookie header) per request

    async def handle(request):
        seen.append((str(request.transport.get_extra_info("peername")[1]),
                     request.headers.get("cookie", "")))
        if request.path == "/big":
            return web.Response(body=b"x" * (200 * 1024))
        return web.Response(status=204, headers={"set-cookie": "session=abc; Path=/"})

    class Counting(Policy):
        checked = 0

        def guarded_socket(self, addrinfo):
            Counting.checked += 1
            return super().guarded_socket(addrinfo)

    app = web.Application()
    app.router.add_post("/{tail:.*}", handle)
    sender = Sender(Counting(["hooks.test"], [ipaddress.ip_network("127.0.0.1/32")]), 5,
                    resolver=ToLoopback())  # a name: a cookie jar would keep its cookies
    async with serving(app) as port:
        try:
            for path in ("a", "b", "a", "b", "a"):
                assert (await sender.send(f"http://hooks.test:{port}/{path}", "evt_1", b"{}",
                                          [new_secret()])).ok
            assert Counting.checked == 1 and len({peer for peer, _ in seen}) == 1
            assert (await sender.send(f"http://hooks.test:{port}/big", "evt_1", b"{}",
                                      [new_secret()])).ok
            assert (await sender.send(f"http://hooks.test:{port}/a", "evt_1", b"{}",
                                      [new_secret()])).ok
            assert Counting.checked == 2 and len({peer for peer, _ in seen}) == 2
        finally:
            await sender.close()
    assert all(cookie == "" for _, cookie in seen)


@pytest.mark.asyncio
async def test_an_answer_is_read_64_kib_at_most(make_receiver):
    """A receiver that answers forever: the attempt ends with its status all the same."""
    from aiohttp import web

    async def endless(request):
        response = web.StreamResponse(status=200)
        await response.prepare(request)
        chunk = b"x" * 65536
        while True:
            await response.write(chunk)

    app = web.Application()
    app.router.add_post("/", endless)
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    sender = Sender(LOOPBACK, 5)
    try:
        outcome = await sender.send(f"http://{host}:{port}/", "evt_1", b"{}", [new_secret()])
    finally:
        await sender.close()
        await runner.cleanup()
    assert outcome.ok


# -- settings ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("key", "value", "words"), [
    ("plugins.webhooks.max_in_flight", 0, "> 0"),
    ("plugins.webhooks.timeout_seconds", 0, "> 0"),
    ("plugins.webhooks.retry_schedule_seconds", [0, -1], "a list of at most"),
    ("plugins.webhooks.retry_schedule_seconds", [1] * 51, "a list of at most"),
    ("plugins.webhooks.disable_after_hours", 0, "> 0"),
    ("plugins.webhooks.retention_hours", -1, "> 0"),
    ("plugins.webhooks.allow_http_hosts", ["Bad Host"], "host names"),
    ("plugins.webhooks.allow_networks", ["10.0.0.0/33"], "IP networks"),
])
def test_bad_settings_are_refused_naming_the_key(tmp_path, key, value, words):
    config = write_config(tmp_path / "s.toml", {"plugins.webhooks.enabled": True, key: value})
    with pytest.raises(SettingsError) as error:
        plugin_host.load(str(config))
    assert any(p.startswith(f"{key} = ") and words in p for p in error.value.problems), \
        error.value.problems
