"""The dashboard over real HTTP (no browser): the ACL matrix, CSRF, the sign-in limit,
sign-out revocation, access lost mid-feed, alarms, and many pages on one mirror.

A real gateway (real workers), the real slapd of the acl tests, real aiohttp on both
sides. Users (tests/plugins/acl/conftest.py): alice is an admin, victor views tag
``line-1``, nora is in no mapped group.
"""

from __future__ import annotations

import asyncio
import logging

import grpc
import pytest

from sessiongate.core import AdoptionRecord, hookimpl
from sessiongate.core.errors import Unauthenticated
from sessiongate.core.sessions.session import SessionState
from sessiongate.testing import open_streaming, wait_for

from ..acl.conftest import VIEWERS_DN
from ..acl.helpers import attached, leave, person, stream_end
from .helpers import TIMEOUT, SlowReader, read_sequences

pytestmark = [pytest.mark.asyncio, pytest.mark.once]

GENERIC = "Sign-in failed: the name and password, or the key, were not accepted."


async def open_three(gw):
    """Sessions tagged line-1 and line-2 and one untagged, opened by the admin key."""
    client = gw.client()
    return {name: (await client.open(client_name=name, tag=tag)).session_id
            for name, tag in (("one", "line-1"), ("two", "line-2"), ("bare", ""))}


async def first_snapshot(w):
    async with w.stream("/events") as stream:
        assert stream.status == 200
        frame = await stream.until("snapshot")
    return {row["id"] for row in frame.data["sessions"]}


async def test_acl_matrix_pages_streams_and_close(dashboard, web):
    gw = await dashboard()
    ids = await open_three(gw)
    alice = await web(gw).signed_in("alice", "alice-pw")
    victor = await web(gw).signed_in("victor", "victor-pw")
    nora = await web(gw).signed_in("nora", "nora-pw")
    nobody = web(gw)

    assert await first_snapshot(alice) == set(ids.values())
    assert await first_snapshot(victor) == {ids["one"]}  # strict: tag-mapped only
    assert await first_snapshot(nora) == set()  # in no mapped group: sees nothing

    expected_page = {  # who → session → status of its page and of its live feed
        alice: {"one": 200, "two": 200, "bare": 200},
        victor: {"one": 200, "two": 403, "bare": 403},
        nora: {"one": 403, "two": 403, "bare": 403},
    }
    for who, row in expected_page.items():
        for name, status in row.items():
            assert (await who.get(f"/sessions/{ids[name]}"))[0] == status, (name, status)
            async with who.stream(f"/sessions/{ids[name]}/events") as stream:
                assert stream.status == status, (name, status)
    assert (await alice.get("/sessions/" + "0" * 32))[0] == 404  # unknown: not found
    # not signed in: pages go to the sign-in page, streams are refused
    assert (await nobody.get("/"))[0] == 303
    assert (await nobody.get(f"/sessions/{ids['one']}"))[0] == 303
    async with nobody.stream("/events") as stream:
        assert stream.status == 401
    async with nobody.stream(f"/sessions/{ids['one']}/events") as stream:
        assert stream.status == 401

    # the viewer's page has no close button, and the server refuses it anyway
    status, page = await victor.get(f"/sessions/{ids['one']}")
    assert status == 200 and "Close session" not in page
    token = await victor.csrf(f"/sessions/{ids['one']}")
    status, page, _ = await victor.post(f"/sessions/{ids['one']}/close", {"csrf_token": token})
    assert status == 403 and "Not allowed" in page
    assert gw.gateway.api.session(ids["one"]).state == SessionState.READY
    assert gw.gateway.metrics.get("dashboard_requests_refused", reason="permission") >= 1
    # the admin closes it
    status, page = await alice.get(f"/sessions/{ids['one']}")
    assert "Close session" in page
    token = await alice.csrf(f"/sessions/{ids['one']}")
    status, _, headers = await alice.post(f"/sessions/{ids['one']}/close", {"csrf_token": token})
    assert status == 303 and headers["Location"] == "/"
    assert gw.gateway.api.session(ids["one"]) is None


async def test_every_state_changing_request_needs_its_csrf_token(dashboard, web):
    gw = await dashboard()
    sid = (await gw.client().open(tag="line-1")).session_id
    alice = await web(gw).signed_in("alice", "alice-pw")
    good = await alice.csrf("/")
    for path in ("/logout", f"/sessions/{sid}/close"):
        for form in ({}, {"csrf_token": "forged"}):
            status, page, _ = await alice.post(path, form)
            assert status == 403 and "Page expired" in page, (path, form)
        # the right token from another origin is refused too
        status, _, _ = await alice.post(path, {"csrf_token": good},
                                        headers={"Origin": "http://evil.example"})
        assert status == 403
    assert gw.gateway.api.session(sid) is not None
    assert (await alice.get("/"))[0] == 200  # still signed in
    # another sign-in's token is not this one's
    victor = await web(gw).signed_in("victor", "victor-pw")
    status, _, _ = await alice.post("/logout", {"csrf_token": await victor.csrf("/")})
    assert status == 403
    # the sign-in form's own token: a post without the form's cookie is refused
    stranger = web(gw)
    status, page, _ = await stranger.post("/login", {"csrf_token": good, "username": "alice",
                                                     "password": "alice-pw"})
    assert status == 403 and stranger.cookie() is None
    assert gw.gateway.metrics.get("dashboard_requests_refused", reason="csrf") == 8


async def test_failed_sign_ins_are_generic_limited_per_address_and_counted(dashboard, web,
                                                                          caplog):
    caplog.set_level(logging.DEBUG)
    gw = await dashboard()
    w = web(gw)
    for username, password in (("alice", "wrong-pw"), ("nobody-here", "x"), ("alice", ""),
                               ("victor", "alice-pw"), ("nora", "nope")):
        status, page, _ = await w.sign_in(username, password)
        assert status == 401 and GENERIC in page, (username, status)
    # the sixth attempt from this address is refused before any check, right password too
    status, page, headers = await w.sign_in("alice", "alice-pw")
    assert status == 429 and int(headers["Retry-After"]) > 0
    assert "Too many failed sign-ins" in page and w.cookie() is None
    metrics = gw.gateway.metrics
    assert metrics.get("dashboard_logins", outcome="refused") == 5
    assert metrics.get("dashboard_logins", outcome="throttled") == 1
    assert "alice-pw" not in caplog.text and "wrong-pw" not in caplog.text


async def test_sign_in_cookie_and_sign_out_revokes_the_token(dashboard, web, caplog):
    caplog.set_level(logging.DEBUG)
    gw = await dashboard()
    alice = await web(gw).signed_in("alice", "alice-pw")
    cookie = alice.cookie()
    token = cookie.value
    assert cookie["httponly"] and cookie["samesite"] == "Strict" and cookie["path"] == "/"
    assert not cookie["secure"]  # plain HTTP on loopback (Secure under TLS)
    identity = await gw.gateway.api.authenticate_credential(token)
    assert identity.name == "alice" and identity.is_admin
    status, page = await alice.get("/")
    assert status == 200 and token not in page and "alice-pw" not in page
    assert gw.gateway.metrics.get("dashboard_logins", outcome="ok") == 1

    async with alice.stream("/events") as stream:
        await stream.until("snapshot")
        status, _, headers = await alice.sign_out()
        assert status == 303 and headers["Location"] == "/login"
        denied = await stream.until("denied")  # at once, not at the next check
        assert "signed out" in denied.data["text"]
        assert await stream.end() == []
    assert alice.cookie() is None or alice.cookie().value == ""
    with pytest.raises(Unauthenticated):  # revoked on the server, not just forgotten
        await gw.gateway.api.authenticate_credential(token)
    replay = web(gw)
    replay.http.cookie_jar.update_cookies({"sg_dashboard": token})
    assert (await replay.get("/"))[0] == 303
    assert token not in caplog.text and "alice-pw" not in caplog.text


async def test_a_revoked_token_loses_its_live_feed(dashboard, web):
    gw = await dashboard()
    sid = (await gw.client().open(tag="line-1")).session_id
    victor = await web(gw).signed_in("victor", "victor-pw")
    token = victor.cookie().value
    async with victor.stream(f"/sessions/{sid}/events") as feed, \
            victor.stream("/events") as overview:
        assert feed.status == 200
        await overview.until("snapshot")
        await gw.client().invoke_json(sid, "write", {"tag": "t", "value": 1})
        assert (await feed.until("event")).data["seq"] == 1
        # revoked elsewhere (as `sessiongate tokens revoke` does): seen by the access check
        assert await gw.gateway.api.revoke_credential(token)
        for stream in (feed, overview):
            denied = await stream.until("denied")
            assert "Sign in again" in denied.data["text"]
            assert await stream.end() == []
    assert gw.gateway.metrics.get("dashboard_pages_cut_off", reason="credential") == 2
    async with victor.stream(f"/sessions/{sid}/events") as again:
        assert again.status == 401


async def test_a_viewer_taken_out_of_the_group_loses_feed_and_stream(dashboard, web, slapd):
    """The directory changes under a signed-in viewer: acl reads their groups again (with
    the service account) and the session page's feed and the gRPC stream both end within
    the interval; the token lives on, granting nothing."""
    interval = 0.5
    gw = await dashboard(**{"plugins.acl.revocation_check_interval_seconds": interval})
    sid = (await gw.client().open(tag="line-1")).session_id
    async with person(slapd, VIEWERS_DN) as (uid, password):
        viewer = await web(gw).signed_in(uid, password)
        call = gw.client(viewer.cookie().value).stream(sid)
        await attached(call)
        async with viewer.stream(f"/sessions/{sid}/events") as feed:
            assert feed.status == 200
            await gw.client().invoke_json(sid, "write", {"tag": "t", "value": 1})
            assert (await feed.until("event")).data["seq"] == 1
            await leave(slapd, uid, VIEWERS_DN)
            # counted in acl's refresh rounds (one each interval), not seconds: the round
            # under way at the change may have read the old groups, the next one ends
            # both (a busy machine may finish one more before this reader sees it)
            rounds = gw.gateway.metrics.get("acl_group_refreshes", outcome="ok")
            denied = await feed.until("denied")
            feed_rounds = gw.gateway.metrics.get("acl_group_refreshes", outcome="ok") - rounds
            assert "no longer watch" in denied.data["text"]
            assert await feed.end() == []
            assert await stream_end(call) == grpc.StatusCode.PERMISSION_DENIED
            stream_rounds = gw.gateway.metrics.get("acl_group_refreshes", outcome="ok") - rounds
        for after in (feed_rounds, stream_rounds):
            assert after <= 3, f"ended {after:g} refresh rounds after the change"
        assert (await viewer.get(f"/sessions/{sid}"))[0] == 403
        assert await first_snapshot(viewer) == set()  # still signed in: sees nothing
    assert gw.gateway.metrics.get("dashboard_pages_cut_off", reason="permission") == 1


async def test_api_key_sign_in_and_key_revocation(dashboard, web):
    gw = await dashboard(**{"plugins.dashboard.allow_api_key_login": True})
    key_id, key = await gw.create_key("operator", tags=("line-1",))
    ids = await open_three(gw)
    w = await web(gw).signed_in(api_key=key)
    assert key not in w.cookie().value and w.cookie().value.startswith("k_")
    assert await first_snapshot(w) == {ids["one"]}
    async with w.stream(f"/sessions/{ids['one']}/events") as feed:
        assert feed.status == 200
        await gw.gateway.keys.revoke(key_id)
        assert (await feed.until("denied")).event == "denied"
    assert (await w.get("/"))[0] == 303
    status, page, _ = await web(gw).sign_in(api_key=key)
    assert status == 401 and GENERIC in page


async def test_many_pages_read_one_mirror_and_a_slow_page_is_dropped_alone(dashboard, web):
    gw = await dashboard()
    client = gw.client()
    sid = (await client.open(tag="line-1")).session_id
    session = gw.gateway.api.session(sid)
    alice = await web(gw).signed_in("alice", "alice-pw")
    slow = await SlowReader.open(gw.http_address, alice.cookie().value,
                                 f"/sessions/{sid}/events")
    try:
        async with alice.stream(f"/sessions/{sid}/events") as fast, \
                alice.stream(f"/sessions/{sid}/events") as other:
            mirrors = [s for s in session.subscriptions() if s.kind == "dashboard-mirror"]
            assert len(mirrors) == 1 and not mirrors[0].paces
            assert session.distributor.external_count == 0
            readers = [asyncio.create_task(read_sequences(page, 3000))
                       for page in (fast, other)]
            # 3000 events of 2 kB while one page reads nothing: the worker is never held
            reply = await asyncio.wait_for(
                client.invoke_json(sid, "burst", {"count": 3000, "size": 2000}), TIMEOUT)
            assert reply == {"emitted": 3000}
            for reader in readers:  # the pages that read miss nothing
                assert await reader == list(range(1, 3001))
            await wait_for(lambda: gw.gateway.metrics.get("dashboard_pages_dropped") >= 1,
                           TIMEOUT)
            assert session.state == SessionState.READY  # never faulted, never paced
    finally:
        slow.close()
    # a page that comes back from far behind sees a gap row naming what it missed
    async with alice.stream(f"/sessions/{sid}/events", last_event_id="10") as back:
        gap = await back.next()
        assert gap.event == "gap" and gap.data["reason"] == "PAGE_BEHIND"
        assert gap.data["after"] == 10 and gap.data["oldest"] > 11
        assert (await back.next()).data["seq"] == gap.data["oldest"]
    # one that was only briefly away resumes exactly where it was
    async with alice.stream(f"/sessions/{sid}/events", last_event_id="2990") as back:
        assert [(await back.next()).data["seq"] for _ in range(10)] == list(range(2991, 3001))


async def test_alarms_strip_faults_overflows_and_failed_adoptions(dashboard, web, short_tmp):
    record = AdoptionRecord(session_id="f" * 32, owner_key_id="", client_name="", backend="sim",
                            tag="", lease_seconds=60, pid=2 ** 22 + 12345, create_time=0.0,
                            socket_path=str(short_tmp / "gone.sock"), nonce_digest=b"\0" * 32)

    class Adopter:
        @hookimpl
        async def sg_startup(self, gateway):
            assert await gateway.adopt_session(record, window=1, on_frame=print) is None

    gw = await dashboard(extra_plugins=(Adopter(),), **{
        "events.queue_capacity": 50, "events.stall_timeout_seconds": 0.3,
        "events.backpressure_policy": "disconnect_subscriber"})
    client = gw.client()
    alice = await web(gw).signed_in("alice", "alice-pw")
    victor = await web(gw).signed_in("victor", "victor-pw")
    async with alice.stream("/events") as admin, victor.stream("/events") as viewer:
        adoption = await admin.until("alarm")
        assert adoption.data["kind"] == "adoption" and "f" * 32 in adoption.data["text"]
        await viewer.until("snapshot")
        # a subscriber that reads nothing overflows and is disconnected (session line-2)
        sid, call = await open_streaming(client)
        burst = asyncio.create_task(  # past the pacing window and gRPC's buffers
            client.invoke_json(sid, "burst", {"count": 12000, "size": 1000}))
        overflow = await admin.until("alarm", lambda d: d["kind"] == "overflow")
        assert sid in overflow.data["text"]
        call.cancel()
        await asyncio.wait_for(burst, TIMEOUT)
        # a worker that dies faults its session (tag line-1: the viewer sees this one)
        faulty = (await client.open(tag="line-1")).session_id
        with pytest.raises(grpc.aio.AioRpcError):
            await client.invoke_json(faulty, "fail", {"exit_code": 3})
        fault = await admin.until("alarm", lambda d: d["kind"] == "fault")
        assert faulty in fault.data["text"]
        seen = await viewer.until("alarm")  # the first alarm the viewer may see
        assert seen.data["id"] == fault.data["id"]
    metrics = gw.gateway.metrics
    assert [metrics.get("dashboard_alarms", kind=k) for k in ("adoption", "overflow", "fault")] \
        == [1, 1, 1]
