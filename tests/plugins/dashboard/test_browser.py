"""The dashboard in a real headless Chromium (Playwright), against a real gateway and
the real slapd: an admin and a viewer sign in, see what they may, watch events arrive,
pause, expand, close; a revoked token loses its feed. Screenshots for the docs are
written to docs/images/ (dashboard-overview.png, dashboard-session.png).
"""

from __future__ import annotations

import pathlib
import re

import pytest

from sessiongate.core.sessions.session import SessionState

pytestmark = [pytest.mark.asyncio, pytest.mark.once]

ROOT = pathlib.Path(__file__).resolve().parents[3]
IMAGES = ROOT / "docs" / "images"
#: failure bounds only (ms): every wait ends as soon as its condition holds
BOUND = 15_000
#: "a write appears within a second": the bound of that wait (generous on a busy host)
WITHIN_A_SECOND = 5_000
SCRIPT = "<script>window.__pwned = true</script>"


async def sign_in(browser, base, username, password):
    context = await browser.new_context(viewport={"width": 1280, "height": 760})
    page = await context.new_page()
    page.set_default_timeout(BOUND)
    await page.goto(base + "/login")
    await page.get_by_label("Username").fill(username)
    await page.get_by_label("Password").fill(password)
    await page.get_by_role("button", name="Sign in", exact=True).click()
    await page.wait_for_url(base + "/")
    return context, page


async def test_admin_and_viewer_in_a_real_browser(dashboard, chromium):
    from playwright.async_api import expect

    gw = await dashboard(**{"plugins.dashboard.snapshot_interval_seconds": 0.5})
    client = gw.client()
    line1 = (await client.open(client_name="press-line-1", tag="line-1")).session_id
    line2 = (await client.open(client_name="press-line-2", tag="line-2")).session_id
    for value in range(5):
        await client.invoke_json(line1, "write", {"tag": "speed", "value": value})
    await client.invoke_json(line2, "burst", {"count": 40, "size": 16})
    base = f"http://{gw.http_address}"
    IMAGES.mkdir(parents=True, exist_ok=True)

    # -- the admin: every session, live; the overview for the docs
    admin_context, admin = await sign_in(chromium, base, "alice", "alice-pw")
    rows = admin.locator("#sessions tbody tr[data-id]")
    await expect(admin.locator(f'tr[data-id="{line1}"] svg')).to_have_count(1)
    await expect(rows).to_have_count(2)
    await expect(admin.locator("#feed-status")).to_have_text("Live.")
    await admin.screenshot(path=str(IMAGES / "dashboard-overview.png"), full_page=True)

    # -- a session page: a write appears at once; a payload's <script> is only text
    await admin.get_by_role("link", name=line1).click()
    await expect(admin.locator("#feed-status")).to_have_text("Live.")
    await expect(admin.locator("#feed tbody tr.event")).to_have_count(5)
    await client.invoke_json(line1, "write", {"tag": "note", "value": SCRIPT})
    cell = admin.locator("#feed tbody tr.event").last.locator("pre")
    await expect(cell).to_contain_text(SCRIPT, timeout=WITHIN_A_SECOND)
    assert await admin.evaluate("window.__pwned") is None
    assert await admin.locator("#feed script").count() == 0
    # a long payload is cut short, "show more" shows it whole
    await client.invoke_json(line1, "write", {"tag": "blob", "value": "y" * 3000})
    more = admin.get_by_role("button", name=re.compile(r"^Show more \(30\d\d characters\)$"))
    await more.click()
    await expect(admin.locator("#feed tbody tr.event").last.locator("pre")).to_contain_text(
        "y" * 3000)
    # pause holds new rows back; resume shows them
    await admin.get_by_role("button", name="Pause").click()
    await client.invoke_json(line1, "write", {"tag": "speed", "value": 99})
    await expect(admin.locator("#feed-status")).to_have_text("Paused: 1 new rows waiting.")
    await expect(admin.locator("#feed tbody tr.event")).to_have_count(7)
    await admin.get_by_role("button", name="Resume").click()
    await expect(admin.locator("#feed tbody tr.event")).to_have_count(8)
    await admin.get_by_role("button", name="Show less").click()
    await expect(admin.locator("#feed tbody tr.event").nth(6).locator("pre")).to_contain_text(
        "y…")
    await admin.screenshot(path=str(IMAGES / "dashboard-session.png"), full_page=True)

    # -- the viewer: only line-1, read-only, refused by the server too
    viewer_context, viewer = await sign_in(chromium, base, "victor", "victor-pw")
    await expect(viewer.locator(f'tr[data-id="{line1}"]')).to_have_count(1)
    await expect(viewer.locator(f'tr[data-id="{line2}"]')).to_have_count(0)
    response = await viewer.goto(f"{base}/sessions/{line2}")
    assert response.status == 403
    await expect(viewer.get_by_role("heading", name="Not allowed")).to_be_visible()
    await viewer.goto(f"{base}/sessions/{line1}")
    await expect(viewer.locator("#feed-status")).to_have_text("Live.")
    assert await viewer.get_by_role("button", name="Close session").count() == 0
    token = await viewer.locator('input[name="csrf_token"]').first.input_value()
    refused = await viewer.request.post(f"{base}/sessions/{line1}/close",
                                        form={"csrf_token": token}, max_redirects=0)
    assert refused.status == 403
    assert gw.gateway.api.session(line1).state == SessionState.READY

    # -- the viewer's token is revoked: the page loses its feed within the check interval
    cookie = next(c for c in await viewer_context.cookies() if c["name"] == "sg_dashboard")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert await gw.gateway.api.revoke_credential(cookie["value"])
    await expect(viewer.locator("#feed-status")).to_contain_text("Sign in again")
    await client.invoke_json(line1, "write", {"tag": "after", "value": 1})
    await expect(admin.locator("#feed tbody tr.event")).to_have_count(9)
    assert await viewer.locator("#feed tbody tr.event", has_text="after").count() == 0

    # -- the admin closes the session from its page
    await admin.get_by_role("button", name="Close session").click()
    await admin.wait_for_url(base + "/")
    await expect(admin.locator(f'tr[data-id="{line1}"]')).to_have_count(0)
    assert gw.gateway.api.session(line1) is None
    await admin_context.close()
    await viewer_context.close()
