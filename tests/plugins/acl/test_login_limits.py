"""Login limits: threads of its own (a cancelled login keeps its slot), backoff per
username and per client address, and unknown users failing exactly like wrong
passwords (same requests to the directory, same answer)."""

from __future__ import annotations

import asyncio
import logging

import grpc
import pytest

from sessiongate.plugins.acl import runtime_of
from sessiongate.testing import wait_for
from sessiongate.v1 import gateway_pb2

from .helpers import rpc_error

pytestmark = [pytest.mark.asyncio, pytest.mark.requires_plugin("acl")]

UNAUTH = grpc.StatusCode.UNAUTHENTICATED
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
#: long enough that no refusal ends while a test runs
HOUR = 3600


def _retry_after(error: grpc.aio.AioRpcError) -> str | None:
    return dict(error.trailing_metadata() or ()).get("retry-after")


class SilentDirectory:
    """A TCP server on 127.0.0.1 that accepts connections and never answers: a
    directory that hangs. :meth:`hang_up` closes every connection (the waiting
    exchanges then fail), and later connections are closed at once."""

    def __init__(self) -> None:
        self.connections: list[asyncio.StreamWriter] = []
        self.hung_up = False
        self.server: asyncio.Server | None = None

    async def _accept(self, _reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        self.connections.append(writer)
        if self.hung_up:
            writer.close()

    async def __aenter__(self) -> SilentDirectory:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"ldap://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    def hang_up(self) -> None:
        self.hung_up = True
        for writer in self.connections:
            writer.close()

    async def __aexit__(self, *exc: object) -> None:
        self.hang_up()
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


async def test_a_cancelled_login_keeps_its_thread_slot_until_the_directory_answers(
        make_gateway, slapd):
    async with SilentDirectory() as directory:
        # the timeout is long: the exchanges end when the directory hangs up, not before
        gw = await make_gateway(**slapd.settings(url=directory.url, timeout_seconds=120,
                                                 max_logins_in_flight=2))
        runtime = runtime_of(gw.gateway.api)
        anon = gw.client("")
        request = gateway_pb2.LoginRequest(username="alice", password="alice-pw")
        calls = [anon.stub.Login(request) for _ in range(2)]
        await wait_for(lambda: len(directory.connections) == 2)  # both threads wait on it
        for call in calls:
            call.cancel()
        await wait_for(lambda: gw.gateway.metrics.get("acl_logins", outcome="cancelled") == 2)
        # nobody waits for them any more, but their threads still run: no slot is free
        assert runtime.threads.busy == 2
        error = await rpc_error(anon.login("alice", "alice-pw"))
        assert error.code() == EXHAUSTED
        assert error.details() == "too many logins in progress; try again shortly"
        assert _retry_after(error) == "1"
        assert len(directory.connections) == 2  # the refused login never reached it
        assert gw.gateway.metrics.get("acl_logins", outcome="busy") == 1
        # the directory gives up on them: the threads return and give their slots back
        directory.hang_up()
        await wait_for(lambda: runtime.threads.busy == 0, timeout=30)
        error = await rpc_error(anon.login("alice", "alice-pw"))
        assert error.code() == grpc.StatusCode.UNAVAILABLE  # it was let through this time
        assert len(directory.connections) == 3


async def test_failed_logins_back_off_per_username(make_gateway, slapd, caplog):
    caplog.set_level(logging.DEBUG)
    gw = await make_gateway(**slapd.settings(user_failures_before_backoff=3,
                                             peer_failures_before_backoff=100,
                                             backoff_seconds=HOUR, backoff_max_seconds=HOUR))
    anon = gw.client("")

    async def wrong() -> grpc.StatusCode:
        return (await rpc_error(anon.login("victor", "wrong-pw"))).code()

    assert [await wrong(), await wrong()] == [UNAUTH, UNAUTH]
    await anon.login("Victor", "victor-pw")  # a success forgets the failures (any case)
    assert [await wrong(), await wrong(), await wrong()] == [UNAUTH, UNAUTH, UNAUTH]
    # three failures in a row: even the right password is refused now, with a hint
    error = await rpc_error(anon.login("victor", "victor-pw"))
    assert error.code() == EXHAUSTED
    assert error.details() == \
        f"too many failed logins for this username; try again in {HOUR} s"
    assert _retry_after(error) == str(HOUR)
    assert (await anon.login("alice", "alice-pw")).admin  # another username is not held
    metrics = gw.gateway.metrics
    assert metrics.get("acl_logins", outcome="throttled", limit="username") == 1
    assert metrics.get("acl_logins", outcome="refused") == 5
    assert "too many failed logins for 'victor'" in caplog.text
    assert "wrong-pw" not in caplog.text and "victor-pw" not in caplog.text


async def test_failed_logins_back_off_per_client_address(make_gateway, slapd):
    gw = await make_gateway(**slapd.settings(user_failures_before_backoff=100,
                                             peer_failures_before_backoff=3,
                                             backoff_seconds=HOUR, backoff_max_seconds=HOUR))
    anon = gw.client("")
    for name in ("zed", "yan", "alice"):  # guessing across names, from one address
        assert (await rpc_error(anon.login(name, "guess"))).code() == UNAUTH
    error = await rpc_error(anon.login("victor", "victor-pw"))
    assert error.code() == EXHAUSTED
    assert error.details() == f"too many failed logins from your address; try again in {HOUR} s"
    assert _retry_after(error) == str(HOUR)
    assert gw.gateway.metrics.get("acl_logins", outcome="throttled", limit="peer") == 1


async def test_an_unknown_user_fails_like_a_wrong_password(make_gateway, slapd):
    """Search-then-bind: both make the same requests (read from slapd's own cn=Monitor
    counters, not from timings) and get the same answer."""
    gw = await make_gateway(**slapd.settings())
    anon = gw.client("")

    async def attempt(username: str) -> tuple[grpc.aio.AioRpcError, dict[str, int]]:
        before = await asyncio.to_thread(slapd.requests)
        error = await rpc_error(anon.login(username, "not-the-password"))
        after = await asyncio.to_thread(slapd.requests)
        return error, {k: after[k] - before[k] for k in after}

    wrong, wrong_requests = await attempt("alice")
    unknown, unknown_requests = await attempt("nobody-by-this-name")
    assert (unknown.code(), unknown.details(), _retry_after(unknown)) == \
        (wrong.code(), wrong.details(), _retry_after(wrong)) == \
        (UNAUTH, "invalid username or password", None)
    # service account bind + user search + a user bind (the decoy DN for the unknown
    # user); each reading of the counters adds a connection, a bind and a search
    assert unknown_requests == wrong_requests == {"connections": 3, "binds": 3,
                                                  "searches": 2}
