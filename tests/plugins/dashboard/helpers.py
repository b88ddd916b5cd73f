"""Helpers of the dashboard's tests: settings, a cookie-keeping HTTP client, an SSE reader.

Imported relatively (no conftest magic). Every wait has a generous bound that only
turns a hang into a failure; tests wait on what arrives, never on time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

TIMEOUT = 20.0
#: the plugin on, with what it needs (acl and fanout are on by default)
ON: dict[str, Any] = {
    "plugins.dashboard.enabled": True,
    "plugins.fanout.enabled": True,
    "plugins.acl.enabled": True,
    "plugins.acl.revocation_check_interval_seconds": 0.2,
    "plugins.dashboard.snapshot_interval_seconds": 0.2,
}
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


@dataclasses.dataclass
class Frame:
    event: str
    data: Any
    id: str | None


class Web:
    """One browser's worth of HTTP: its own cookies, the side port as base URL."""

    def __init__(self, address: str) -> None:
        self.base = f"http://{address}"
        self.http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True),
                                          timeout=aiohttp.ClientTimeout(total=TIMEOUT))

    async def close(self) -> None:
        await self.http.close()

    async def get(self, path: str, **kw: Any) -> tuple[int, str]:
        async with self.http.get(self.base + path, allow_redirects=False, **kw) as r:
            return r.status, await r.text()

    async def post(self, path: str, data: dict[str, str], **kw: Any) -> tuple[int, str, Any]:
        async with self.http.post(self.base + path, data=data, allow_redirects=False,
                                  **kw) as r:
            return r.status, await r.text(), r.headers

    async def csrf(self, path: str) -> str:
        status, text = await self.get(path)
        assert status == 200, (status, text)
        found = CSRF.search(text)
        assert found, text
        return found.group(1)

    async def sign_in(self, username: str = "", password: str = "", *,
                      api_key: str = "") -> tuple[int, str, Any]:
        token = await self.csrf("/login")
        form = ({"method": "api_key", "api_key": api_key} if api_key
                else {"method": "ldap", "username": username, "password": password})
        return await self.post("/login", {"csrf_token": token, **form})

    async def signed_in(self, username: str = "", password: str = "", *,
                        api_key: str = "") -> Web:
        status, text, headers = await self.sign_in(username, password, api_key=api_key)
        assert status == 303 and headers["Location"] == "/", (status, text)
        return self

    def cookie(self, name: str = "sg_dashboard") -> Any:
        for morsel in self.http.cookie_jar:
            if morsel.key == name:
                return morsel
        return None

    async def sign_out(self) -> tuple[int, str, Any]:
        return await self.post("/logout", {"csrf_token": await self.csrf("/")})

    def stream(self, path: str, last_event_id: str | None = None) -> Stream:
        headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
        return Stream(self, path, headers)


class Stream:
    """An open Server-Sent Events response: ``async with web.stream(path) as s``."""

    def __init__(self, web: Web, path: str, headers: dict[str, str]) -> None:
        self.web, self.path, self.headers = web, path, headers
        self.response: aiohttp.ClientResponse | None = None
        self._frames: AsyncIterator[Frame] | None = None

    async def __aenter__(self) -> Stream:
        self.response = await self.web.http.get(
            self.web.base + self.path, headers=self.headers,
            timeout=aiohttp.ClientTimeout(total=None, sock_read=None))
        self._frames = self._read()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        assert self.response is not None
        self.response.close()

    @property
    def status(self) -> int:
        assert self.response is not None
        return self.response.status

    async def _read(self) -> AsyncIterator[Frame]:
        assert self.response is not None
        fields: dict[str, str] = {}
        async for raw in self.response.content:
            line = raw.decode().rstrip("\n")
            if not line:
                if "data" in fields:
                    yield Frame(fields.get("event", "message"), json.loads(fields["data"]),
                                fields.get("id"))
                fields = {}
            elif not line.startswith(":"):
                name, _, value = line.partition(": ")
                fields[name] = value

    async def next(self, timeout: float = TIMEOUT) -> Frame | None:
        """The next frame; None when the server ended the stream."""
        assert self._frames is not None
        try:
            return await asyncio.wait_for(anext(self._frames), timeout)
        except StopAsyncIteration:
            return None
        except TimeoutError:
            raise AssertionError(f"no frame on {self.path} within {timeout:.1f} s") from None

    async def until(self, event: str, predicate: Any = None) -> Frame:
        """Read until a frame of ``event`` (matching ``predicate``) arrives (within
        TIMEOUT in all, however many other frames come meanwhile)."""
        deadline = asyncio.get_running_loop().time() + TIMEOUT
        while True:
            frame = await self.next(max(0.0, deadline - asyncio.get_running_loop().time()))
            assert frame is not None, f"the stream ended before a {event!r} frame"
            if frame.event == event and (predicate is None or predicate(frame.data)):
                return frame

    async def end(self) -> list[Frame]:
        """Read to the end of the stream: the frames read on the way."""
        seen = []
        while (frame := await self.next()) is not None:
            seen.append(frame)
        return seen


async def read_sequences(stream: Stream, count: int) -> list[int]:
    """The sequences of the next ``count`` events a session page is sent."""
    seen: list[int] = []
    while len(seen) < count:
        seen.append((await stream.until("event")).data["seq"])
    return seen


class SlowReader:
    """A browser that stops reading: a raw socket with a tiny receive buffer."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer

    @classmethod
    async def open(cls, address: str, cookie: str, path: str) -> SlowReader:
        host, _, port = address.rpartition(":")
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
        reader, writer = await asyncio.open_connection(sock=sock)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {address}\r\nAccept: text/event-stream\r\n"
                     f"Cookie: sg_dashboard={cookie}\r\n\r\n".encode())
        await writer.drain()
        assert (await asyncio.wait_for(reader.readline(), TIMEOUT)).startswith(b"HTTP/1.1 200")
        return cls(writer)

    def close(self) -> None:
        self.writer.close()
