"""Small helpers shared by the acl tests (imported relatively: no conftest magic)."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from sessiongate import testing

from .conftest import ADMINS_DN, PEOPLE, UNMAPPED_DN, VIEWERS_DN

TIMEOUT = 15.0


async def rpc_error(awaitable: Awaitable[Any]) -> grpc.aio.AioRpcError:
    """The error an RPC ends with (fails the test if it succeeds), within TIMEOUT."""
    return await testing.rpc_error(asyncio.wait_for(awaitable, TIMEOUT))


async def attached(call: Any) -> Any:
    """Read a stream's first response: the subscription is registered once it arrives."""
    response = await asyncio.wait_for(call.read(), TIMEOUT)
    assert response is not grpc.aio.EOF
    assert response.caught_up
    return response


async def stream_end(call: Any) -> grpc.StatusCode:
    """Read a stream until it ends; its final status code."""
    while True:
        try:
            response = await asyncio.wait_for(call.read(), TIMEOUT)
        except grpc.aio.AioRpcError as exc:
            return exc.code()
        if response is grpc.aio.EOF:
            return await call.code()


# -- the test directory, changed while gateways run ------------------------------------------


def _as_root(slapd: Any, change: Callable[[Any], None]) -> None:
    """Run ``change(connection)`` bound as the directory's root DN (blocking)."""
    from sessiongate.plugins.acl.directory import Connection, Server

    conn = Connection(Server(slapd.uri), user=slapd.root_dn, password=slapd.root_pw,
                      auto_bind=True, raise_exceptions=True)
    try:
        change(conn)
    finally:
        conn.unbind()


def _members(dn: str, *groups: str, add: bool) -> Callable[[Any], None]:
    from ldap3 import MODIFY_ADD, MODIFY_DELETE

    def change(conn: Any) -> None:
        for group in groups:
            conn.modify(group, {"member": [(MODIFY_ADD if add else MODIFY_DELETE, [dn])]})

    return change


async def join(slapd: Any, uid: str, *groups: str) -> None:
    """Make ``uid`` a member of ``groups``."""
    await asyncio.to_thread(_as_root, slapd, _members(f"uid={uid},{PEOPLE}", *groups,
                                                      add=True))


async def leave(slapd: Any, uid: str, *groups: str) -> None:
    """Take ``uid`` out of ``groups``."""
    await asyncio.to_thread(_as_root, slapd, _members(f"uid={uid},{PEOPLE}", *groups,
                                                      add=False))


async def remove_person(slapd: Any, uid: str, *groups: str) -> None:
    """Take ``uid`` out of ``groups`` and delete its entry."""
    dn = f"uid={uid},{PEOPLE}"

    def change(conn: Any) -> None:
        _members(dn, *groups, add=False)(conn)
        conn.delete(dn)

    await asyncio.to_thread(_as_root, slapd, change)


@contextlib.asynccontextmanager
async def person(slapd: Any, *groups: str) -> AsyncIterator[tuple[str, str]]:
    """A new person of the test directory in ``groups``: ``(uid, password)``; gone
    afterwards (the directory is shared by the whole test session)."""
    uid = f"p{secrets.token_hex(4)}"
    password = f"{uid}-pw"
    dn = f"uid={uid},{PEOPLE}"

    def add(conn: Any) -> None:
        conn.add(dn, ["inetOrgPerson"], {"uid": uid, "cn": uid, "sn": "Example",
                                         "userPassword": password})
        _members(dn, *groups, add=True)(conn)

    def tidy(conn: Any) -> None:
        for group in (ADMINS_DN, VIEWERS_DN, UNMAPPED_DN):
            with contextlib.suppress(Exception):  # not a member (any more)
                _members(dn, group, add=False)(conn)
        with contextlib.suppress(Exception):  # deleted by the test
            conn.delete(dn)

    await asyncio.to_thread(_as_root, slapd, add)
    try:
        yield uid, password
    finally:
        await asyncio.to_thread(_as_root, slapd, tidy)
