"""Fixtures of the dashboard's tests: the acl tests' real slapd, gateways with the
dashboard on, cookie-keeping HTTP clients and (test_browser) headless Chromium."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from ..acl import conftest as acl_tests
from .helpers import ON, Web

slapd = acl_tests.slapd  # the test directory server (a session fixture)


@pytest_asyncio.fixture
async def dashboard(make_gateway: Any, slapd: Any) -> AsyncIterator[Any]:
    """Factory: a gateway with the dashboard on and LDAP login against the test slapd."""

    async def factory(**overrides: Any) -> Any:
        return await make_gateway(**{**slapd.settings(), **ON, **overrides})

    yield factory


@pytest_asyncio.fixture
async def web() -> AsyncIterator[Any]:
    """Factory: ``web(gw)`` → a :class:`Web` client of its side port (closed at teardown)."""
    made: list[Web] = []

    def factory(gw: Any) -> Web:
        client = Web(gw.http_address)
        made.append(client)
        return client

    try:
        yield factory
    finally:
        for client in made:
            await client.close()


#: Debian's chromium (.ci/run installs it); Playwright never downloads a browser here
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-quic"]


def _missing(message: str) -> None:
    """Skip locally; fail under CI, so a CI without the browser cannot look green."""
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest_asyncio.fixture
async def chromium() -> AsyncIterator[Any]:
    """A headless Chromium driven by Playwright (closed at teardown)."""
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        _missing("playwright is not installed: pip install 'sessiongate[browser]'")
    if not os.access(CHROMIUM, os.X_OK):
        _missing(f"{CHROMIUM} is missing: apt-get install -y --no-install-recommends chromium")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM,
                                                   args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()
