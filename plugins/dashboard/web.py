"""The dashboard's pages and live streams, served at ``/`` on the HTTP side port.

============================  ==================================================
``GET /login``                the sign-in form (LDAP, and/or an API key)
``POST /login``               sign in: sets the cookie, then back to ``/``
``POST /logout``              sign out: the token is revoked on the server
``GET /``                     the overview (sessions this person may see, alarms)
``GET /events``               its live stream (SSE: ``snapshot``, ``alarm``)
``GET /sessions/{id}``        a session page
``GET /sessions/{id}/events`` its live feed (SSE: ``event``, ``gap``, ``ended``)
``POST /sessions/{id}/close`` close the session (those allowed to: admins, owner)
``GET /static/…``             CSS and the pages' scripts (nothing from elsewhere)
============================  ==================================================

Every request is decided on its own: the sign-in cookie is checked (token or key
still valid) and the action authorised through ``sg_authorize``, and every live
stream again at each push and each access check. Every state-changing request needs
the page's CSRF token. Pages are jinja2 templates with autoescaping on; errors are
HTML pages with their status, never a traceback.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import pathlib
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import jinja2
from aiohttp import web

from sessiongate.core.errors import GatewayError, ResourceExhausted, Unauthenticated

from .auth import COOKIE, LOGIN_COOKIE, SignedIn, client_address, grpc_peer
from .feed import Ended, parse_key
from .render import PAYLOAD_LIMIT, PREVIEW, format_age, session_row, sse
from .runtime import MIRROR, RUNTIME

if TYPE_CHECKING:
    from sessiongate.core import GatewayAPI, Session

    from .feed import Listener
    from .runtime import DashboardRuntime

__all__ = ["routes"]

log = logging.getLogger("sessiongate.plugins.dashboard")

HERE = pathlib.Path(__file__).resolve().parent
#: one generic message for every failed sign-in (never which part was wrong)
SIGN_IN_FAILED = "Sign-in failed: the name and password, or the key, were not accepted."
#: a live stream writes a comment this often when idle (finds dead connections)
KEEPALIVE_SECONDS = 15.0
#: a write a browser does not take in this long ends its stream
WRITE_TIMEOUT_SECONDS = 10.0
#: items a new session page is sent from the mirror's ring
BACKLOG = 100
#: form fields' longest accepted values
MAX_FIELD = {"username": 256, "password": 1024, "api_key": 512}
SESSION_ID = re.compile(r"[0-9A-Za-z_-]{1,64}")
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                               "img-src 'self'; connect-src 'self'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    # not no-referrer: browsers then send "Origin: null" with the pages' own forms
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _templates() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined)
    env.filters["age"] = format_age
    return env


class Pages:
    """The handlers, bound to one gateway (its running dashboard is in its stash)."""

    def __init__(self, gateway: GatewayAPI) -> None:
        self.gateway = gateway
        self.templates = _templates()

    # -- plumbing ------------------------------------------------------------------------

    def render(self, request: web.Request, name: str, status: int = 200,
               **context: Any) -> web.Response:
        context.setdefault("viewer", None)
        context.setdefault("csrf_token", "")
        text = self.templates.get_template(name).render(**context)
        return web.Response(text=text, status=status, content_type="text/html",
                            charset="utf-8", headers=SECURITY_HEADERS)

    def error(self, request: web.Request, status: int, title: str, text: str,
              viewer: SignedIn | None = None) -> web.Response:
        return self.render(request, "error.html", status, title=title, text=text,
                           viewer=viewer, csrf_token=self._csrf(viewer))

    def _runtime(self) -> DashboardRuntime | None:
        runtime = self.gateway.stash.get(RUNTIME)
        return runtime if runtime is not None and runtime.started else None

    def _csrf(self, viewer: SignedIn | None) -> str:
        runtime = self._runtime()
        return runtime.csrf.token(viewer.digest) if runtime and viewer else ""

    def page(self, handler: Callable[[Pages, web.Request, DashboardRuntime],
                                     Awaitable[web.StreamResponse]]) -> Handler:
        """A handler with the running dashboard; any failure is an HTML error page."""

        @functools.wraps(handler)
        async def wrapped(request: web.Request) -> web.StreamResponse:
            runtime = self._runtime()
            if runtime is None:
                return self.error(request, 503, "Starting or stopping",
                                  "The dashboard is not running right now; try again soon.")
            try:
                return await handler(self, request, runtime)
            except web.HTTPException:
                raise
            except (ConnectionResetError, asyncio.CancelledError):
                raise
            except Exception:
                log.exception("dashboard: %s %s failed", request.method, request.path[:200])
                return self.error(request, 500, "Something went wrong",
                                  "The dashboard could not answer; the gateway's log says "
                                  "why.")
        return wrapped

    async def viewer(self, request: web.Request, runtime: DashboardRuntime) -> SignedIn | None:
        return await runtime.sign_ins.resolve(request.cookies.get(COOKIE))

    def _same_origin(self, request: web.Request) -> bool:
        origin = request.headers.get("Origin")
        return origin is None or origin == f"{request.scheme}://{request.host}"

    async def _form(self, request: web.Request) -> dict[str, str]:
        form = await request.post()
        return {k: v for k, v in form.items() if isinstance(v, str)}

    def _refuse_csrf(self, request: web.Request, viewer: SignedIn | None) -> web.Response:
        self.gateway.metrics.inc("dashboard_requests_refused", reason="csrf")
        log.info("dashboard: %s %s refused: no valid CSRF token", request.method,
                 request.path[:200])
        return self.error(request, 403, "Page expired",
                          "This form has expired or did not come from this dashboard. "
                          "Reload the page and try again.", viewer)

    async def _posted_by(self, request: web.Request,
                         runtime: DashboardRuntime) -> SignedIn | web.StreamResponse:
        """Who sent this state-changing form, its CSRF token checked; or the answer that
        refuses it (to the sign-in page, or 403)."""
        viewer = await self.viewer(request, runtime)
        if viewer is None:
            return web.HTTPSeeOther("/login")
        form = await self._form(request)
        if not self._same_origin(request) or \
                not runtime.csrf.valid(viewer.digest, form.get("csrf_token")):
            return self._refuse_csrf(request, viewer)
        return viewer

    def _set_cookie(self, response: web.StreamResponse, request: web.Request, name: str,
                    value: str, max_age: int | None) -> None:
        response.set_cookie(name, value, max_age=max_age, path="/", httponly=True,
                            secure=request.secure, samesite="Strict")

    # -- sign-in ---------------------------------------------------------------------------

    async def login_form(self, request: web.Request, runtime: DashboardRuntime,
                         status: int = 200, message: str = "",
                         headers: dict[str, str] | None = None) -> web.Response:
        nonce = request.cookies.get(LOGIN_COOKIE) or ""
        if not (16 <= len(nonce) <= 64):
            nonce = secrets.token_urlsafe(24)  # this browser's sign-in form, from now on
        response = self.render(request, "login.html", status, message=message,
                               ldap=runtime.ldap, api_key=runtime.api_key_login,
                               csrf_token=runtime.csrf.token("login|" + nonce))
        self._set_cookie(response, request, LOGIN_COOKIE, nonce, 3600)
        response.headers.update(headers or {})
        return response

    async def get_login(self, request: web.Request,
                        runtime: DashboardRuntime) -> web.StreamResponse:
        if await self.viewer(request, runtime) is not None:
            raise web.HTTPSeeOther("/")
        return await self.login_form(request, runtime)

    async def post_login(self, request: web.Request,
                         runtime: DashboardRuntime) -> web.StreamResponse:
        form = await self._form(request)
        nonce = request.cookies.get(LOGIN_COOKIE) or ""
        if not nonce or not self._same_origin(request) or \
                not runtime.csrf.valid("login|" + nonce, form.get("csrf_token")):
            self.gateway.metrics.inc("dashboard_requests_refused", reason="csrf")
            return await self.login_form(request, runtime, 403, "This form has expired. "
                                         "Please sign in again.")
        address = client_address(request)
        wait = runtime.failed_logins.retry_after(address)
        if wait > 0:
            return await self._throttled(request, runtime, address, wait)
        if any(len(form.get(field, "")) > limit for field, limit in MAX_FIELD.items()):
            return await self._refused(request, runtime, address, "oversized field")
        try:
            if form.get("method") == "api_key" and runtime.api_key_login:
                cookie, expires, who = await self._api_key_sign_in(runtime, form)
            elif form.get("method", "ldap") == "ldap" and runtime.ldap:
                cookie, expires, who = await self._ldap_sign_in(request, form)
            else:
                return await self._refused(request, runtime, address, "no such sign-in")
        except Unauthenticated:
            return await self._refused(request, runtime, address, "not accepted")
        except ResourceExhausted as exc:
            return await self._throttled(request, runtime, address,
                                         float(exc.retry_after or 1))
        except GatewayError as exc:
            self.gateway.metrics.inc("dashboard_logins", outcome="unavailable")
            log.warning("dashboard: sign-in from %s impossible now: %s", address, exc.message)
            return await self.login_form(request, runtime, 503, "Sign-in is not possible "
                                         "right now; try again in a moment.")
        self.gateway.metrics.inc("dashboard_logins", outcome="ok")
        log.info("dashboard: %s signed in from %s", who, address)
        response = web.HTTPSeeOther("/")
        self._set_cookie(response, request, COOKIE, cookie,
                         max(1, int(expires - time.time())))
        response.del_cookie(LOGIN_COOKIE, path="/")
        raise response

    async def _ldap_sign_in(self, request: web.Request,
                            form: dict[str, str]) -> tuple[str, float, str]:
        username, password = form.get("username", ""), form.get("password", "")
        if not username.strip() or not password:
            raise Unauthenticated("empty")
        grant = await self.gateway.login(username, password, grpc_peer(request))
        if grant is None:
            raise GatewayError("no plugin offers LDAP sign-in")
        return grant.token, grant.expires_at, f"{username[:64]!r} (token {grant.token_id})"

    async def _api_key_sign_in(self, runtime: DashboardRuntime,
                               form: dict[str, str]) -> tuple[str, float, str]:
        key = form.get("api_key", "").strip()
        if not key:
            raise Unauthenticated("empty")
        identity = await self.gateway.authenticate_credential(key)
        if identity.kind != "api_key":
            raise Unauthenticated("not an API key")
        handle, expires = runtime.sign_ins.api_keys.add(identity)
        return handle, expires, f"API key {identity.key_id}"

    async def _refused(self, request: web.Request, runtime: DashboardRuntime, address: str,
                       why: str) -> web.Response:
        runtime.failed_logins.failed(address)
        self.gateway.metrics.inc("dashboard_logins", outcome="refused")
        log.info("dashboard: sign-in from %s refused (%s)", address, why)
        return await self.login_form(request, runtime, 401, SIGN_IN_FAILED)

    async def _throttled(self, request: web.Request, runtime: DashboardRuntime,
                         address: str, wait: float) -> web.Response:
        seconds = max(1, math.ceil(wait))
        self.gateway.metrics.inc("dashboard_logins", outcome="throttled")
        log.info("dashboard: sign-in from %s refused for %d s more (too many failures)",
                 address, seconds)
        return await self.login_form(
            request, runtime, 429, f"Too many failed sign-ins from your address; try again "
            f"in {seconds} s.", headers={"Retry-After": str(seconds)})

    async def post_logout(self, request: web.Request,
                          runtime: DashboardRuntime) -> web.StreamResponse:
        viewer = await self._posted_by(request, runtime)
        if not isinstance(viewer, SignedIn):
            return viewer
        revoked = await runtime.sign_ins.sign_out(viewer)
        runtime.end_pages_of(viewer.digest, "signed out", "You have signed out.")
        log.info("dashboard: %s signed out (%s)", viewer.identity.key_id,
                 "credential revoked" if revoked else "nothing left to revoke")
        response = web.HTTPSeeOther("/login")
        response.del_cookie(COOKIE, path="/")
        raise response

    # -- the overview ----------------------------------------------------------------------

    async def overview(self, request: web.Request,
                       runtime: DashboardRuntime) -> web.StreamResponse:
        viewer = await self.viewer(request, runtime)
        if viewer is None:
            raise web.HTTPSeeOther("/login")
        snapshot = await runtime.snapshot(viewer)
        alarms = [a.data() for a in await runtime.visible_alarms(viewer)]
        return self.render(request, "overview.html", viewer=viewer,
                           csrf_token=runtime.csrf.token(viewer.digest),
                           sessions=snapshot["sessions"], alarms=alarms[::-1],
                           interval=runtime.interval)

    async def overview_events(self, request: web.Request,
                              runtime: DashboardRuntime) -> web.StreamResponse:
        viewer = await self.viewer(request, runtime)
        if viewer is None:
            return _plain(401, "not signed in")
        listener = runtime.listener(viewer)
        try:
            first = [sse("snapshot", await runtime.snapshot(viewer))]
            alarms = await runtime.visible_alarms(viewer)
            first += [sse("alarm", a.data()) for a in alarms]
            listener.alarms_sent = max([a.alarm_id for a in alarms], default=0)
            return await _stream(request, listener, first)
        finally:
            runtime.forget(listener)

    # -- a session -------------------------------------------------------------------------

    async def _session_for(self, request: web.Request, runtime: DashboardRuntime,
                           action: str) -> tuple[SignedIn | None, Session | None,
                                                 web.StreamResponse | None]:
        """The viewer and the session named in the path, or the refusal to answer."""
        viewer = await self.viewer(request, runtime)
        session_id = request.match_info["session_id"]
        if viewer is None:
            return None, None, None
        session = self.gateway.session(session_id) if SESSION_ID.fullmatch(session_id) \
            else None
        if session is None:
            return viewer, None, self.error(request, 404, "No such session",
                                            "There is no live session with this id "
                                            "(it may have ended).", viewer)
        if not await self.gateway.is_allowed(viewer.identity, action, session):
            self.gateway.metrics.inc("dashboard_requests_refused", reason="permission")
            return viewer, None, self.error(request, 403, "Not allowed",
                                            f"You may not {action} this session.", viewer)
        return viewer, session, None

    async def session_page(self, request: web.Request,
                           runtime: DashboardRuntime) -> web.StreamResponse:
        viewer, session, refusal = await self._session_for(request, runtime, "get")
        if refusal is not None:
            return refusal
        if viewer is None or session is None:
            raise web.HTTPSeeOther("/login")
        row = session_row(session, runtime.rate_of(session), time.time())
        may_close = await self.gateway.is_allowed(viewer.identity, "close", session)
        return self.render(request, "session.html", viewer=viewer, session=row,
                           csrf_token=runtime.csrf.token(viewer.digest),
                           may_close=may_close, preview=PREVIEW, limit=PAYLOAD_LIMIT)

    async def session_events(self, request: web.Request,
                             runtime: DashboardRuntime) -> web.StreamResponse:
        viewer, session, refusal = await self._session_for(request, runtime, "stream")
        if viewer is None:
            return _plain(401, "not signed in")
        if refusal is not None or session is None:
            return _plain(refusal.status if refusal is not None else 404, "refused")
        mirror = session.stash.get(MIRROR)
        if mirror is None:
            return _plain(503, "this session has no live feed")
        listener = runtime.listener(viewer, session.session_id)
        after = parse_key(request.headers.get("Last-Event-ID"))
        try:
            first = mirror.attach(listener, after, BACKLOG)
            return await _stream(request, listener, first)
        finally:
            mirror.detach(listener)
            runtime.forget(listener)

    async def close_session(self, request: web.Request,
                            runtime: DashboardRuntime) -> web.StreamResponse:
        sender = await self._posted_by(request, runtime)
        if not isinstance(sender, SignedIn):
            return sender
        viewer, session, refusal = await self._session_for(request, runtime, "close")
        if refusal is not None:
            return refusal
        assert viewer is not None and session is not None
        log.info("dashboard: %s closes session %s", viewer.identity.key_id,
                 session.session_id)
        await self.gateway.close_session(
            session, f"closed from the dashboard by {viewer.identity.key_id}")
        raise web.HTTPSeeOther("/")


def _plain(status: int, text: str) -> web.Response:
    return web.Response(status=status, text=text + "\n", headers=SECURITY_HEADERS)


async def _stream(request: web.Request, listener: Listener,
                  first: list[str]) -> web.StreamResponse:
    """Serve ``listener`` as Server-Sent Events until it ends or the browser goes."""
    response = web.StreamResponse(headers={**SECURITY_HEADERS,
                                           "Content-Type": "text/event-stream",
                                           "X-Accel-Buffering": "no"})
    await response.prepare(request)
    try:
        await _write(request, response, "retry: 1000\n\n" + "".join(first))
        while True:
            item = await listener.next(KEEPALIVE_SECONDS)
            if item is None:
                await _write(request, response, ": keepalive\n\n")
                continue
            frames = []
            while isinstance(item, str):  # take what else is waiting: one write
                frames.append(item)
                item = listener.next_nowait()
            if frames:
                await _write(request, response, "".join(frames))
            if isinstance(item, Ended):
                if item.frame:
                    await _write(request, response, item.frame)
                break
    except (ConnectionResetError, TimeoutError):
        pass  # the browser went away, or stopped taking: it reconnects if it can
    return response


async def _write(request: web.Request, response: web.StreamResponse, text: str) -> None:
    try:
        async with asyncio.timeout(WRITE_TIMEOUT_SECONDS):
            await response.write(text.encode())
    except TimeoutError:
        if request.transport is not None:
            request.transport.abort()  # a browser that takes nothing: cut it off
        raise


def routes(gateway: GatewayAPI) -> list[web.AbstractRouteDef]:
    """The dashboard's routes (``sg_http_routes``; served at ``/``)."""
    pages = Pages(gateway)
    p = pages.page
    return [
        web.get("/", p(Pages.overview)),
        web.get("/events", p(Pages.overview_events)),
        web.get("/login", p(Pages.get_login)),
        web.post("/login", p(Pages.post_login)),
        web.post("/logout", p(Pages.post_logout)),
        web.get("/sessions/{session_id}", p(Pages.session_page)),
        web.get("/sessions/{session_id}/events", p(Pages.session_events)),
        web.post("/sessions/{session_id}/close", p(Pages.close_session)),
        web.static("/static", HERE / "static"),
    ]
