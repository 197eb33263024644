"""The fleet map's web side: its page at ``/``, sign-in with an operator token, the session
cookie, and the static files (``static/``: our page code, and the libraries that
``scripts/vendor.sh`` copies from npm into ``static/vendor/``).

Signing in trades an operator token for a session: a random id in a cookie that is
``HttpOnly`` (page script never holds a credential) and ``SameSite=Strict`` (no other site's
page can make the browser send it: the form, the JSON calls and the WebSockets need no CSRF
token). Sessions live in this API process's memory and end after ``session_ttl``, at sign-out
or when the process restarts; the page then meets ``session_expired`` and sends the operator
back to the sign-in page. A WebSocket upgrade authenticated by the cookie must also come from
this origin (browsers send cookies on cross-site upgrades that SameSite does not cover in
every browser, and WebSockets have no CORS).
"""

from __future__ import annotations

import hashlib
import html
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import hdrs, web

from backend.operator.config import FleetConfig
from backend.operator.errors import SessionExpired, Unauthenticated

STATIC_DIR = Path(__file__).with_name("static")
VENDOR_DIR = STATIC_DIR / "vendor"
SESSION_COOKIE = "fleet_session"
PAGE_PATHS = frozenset({"/", "/signin", "/signout"})
"""Public: they look at the session themselves and answer with pages, not JSON."""
MAX_TOKEN_CHARS = 512
# The page loads nothing from elsewhere; Leaflet and the marks set inline styles.
CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
    "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
)
SETUP_HINT = (
    "The fleet map's libraries are not installed: run scripts/vendor.sh (make run and "
    "make test do) and reload."
)


def is_public(path: str) -> bool:
    return path in PAGE_PATHS or path.startswith("/static/")


@dataclass(slots=True)
class _Session:
    operator: str
    expires: float


class Sessions:
    """Session id -> operator, each until its expiry; ids are kept as digests only."""

    def __init__(self, ttl: float, clock: Callable[[], float] = time.time) -> None:
        self.ttl = ttl
        self.clock = clock
        self._sessions: dict[str, _Session] = {}

    def open(self, operator: str) -> str:
        self._prune()
        session_id = secrets.token_urlsafe(32)
        self._sessions[_digest(session_id)] = _Session(operator, self.clock() + self.ttl)
        return session_id

    def operator(self, session_id: str) -> str:
        """The session's operator; SessionExpired if it is over or unknown."""
        session = self._sessions.get(_digest(session_id))
        if session is None or session.expires <= self.clock():
            self._sessions.pop(_digest(session_id), None)
            raise SessionExpired("your session has expired: sign in again at /signin")
        return session.operator

    def close(self, session_id: str) -> None:
        self._sessions.pop(_digest(session_id), None)

    def __len__(self) -> int:
        return len(self._sessions)

    def _prune(self) -> None:
        now = self.clock()
        for key in [k for k, s in self._sessions.items() if s.expires <= now]:
            del self._sessions[key]


def _digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


class WebPages:
    """The page routes; ``operator_of`` authenticates the other routes by session cookie."""

    def __init__(self, config: FleetConfig, on_rejected: Callable[[str, str], None]) -> None:
        self.config = config
        self.sessions = Sessions(config.session_ttl)
        self.on_rejected = on_rejected  # (reason, field): the API's rejection counter

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/", self.index)
        app.router.add_get("/signin", self.signin_form)
        app.router.add_post("/signin", self.signin)
        app.router.add_post("/signout", self.signout)
        app.router.add_static("/static", STATIC_DIR)

    def operator_of(self, request: web.Request) -> str:
        """The operator whose session cookie ``request`` carries."""
        if request.headers.get(hdrs.UPGRADE, "").lower() == "websocket":
            _same_origin(request)
        return self.sessions.operator(request.cookies[SESSION_COOKIE])

    async def index(self, request: web.Request) -> web.StreamResponse:
        if SESSION_COOKIE not in request.cookies:
            return _see_other("/signin")
        try:
            self.sessions.operator(request.cookies[SESSION_COOKIE])
        except SessionExpired:
            return _see_other("/signin?expired=1")
        if not (VENDOR_DIR / "leaflet.js").exists():
            return self._page("Fleet map", f"<p class=error role=alert>{SETUP_HINT}</p>", 503)
        response = web.FileResponse(STATIC_DIR / "index.html")
        response.headers.update({"Content-Security-Policy": CSP, "Cache-Control": "no-store"})
        return response

    async def signin_form(self, request: web.Request) -> web.Response:
        expired = "Your session has expired: sign in again." if "expired" in request.query else ""
        return self._signin_page(expired, 200)

    async def signin(self, request: web.Request) -> web.Response:
        form = await request.post()
        token = form.get("token")
        token = token.strip() if isinstance(token, str) else ""
        operator = self.config.operator_of(token) if 0 < len(token) <= MAX_TOKEN_CHARS else None
        if operator is None:
            self.on_rejected("unauthorized", "token")
            message = (
                "That is not an operator token of this API. Check it (the tokens file given "
                "with --operator-tokens-file) and try again."
            )
            return self._signin_page(message, 401)
        response = _see_other("/")
        response.set_cookie(
            SESSION_COOKIE, self.sessions.open(operator), max_age=int(self.config.session_ttl),
            path="/", httponly=True, samesite="Strict", secure=request.secure,
        )  # fmt: skip
        return response

    async def signout(self, request: web.Request) -> web.Response:
        if SESSION_COOKIE in request.cookies:
            self.sessions.close(request.cookies[SESSION_COOKIE])
        response = _see_other("/signin")
        response.del_cookie(SESSION_COOKIE, path="/")
        return response

    def _signin_page(self, message: str, status: int) -> web.Response:
        error = f"<p class=error role=alert>{html.escape(message)}</p>" if message else ""
        body = (
            f"{error}<form method=post action=/signin>"
            "<label for=token>Operator token</label>"
            "<input id=token name=token type=password autocomplete=current-password "
            "required autofocus><button type=submit>Sign in</button></form>"
        )
        return self._page("Sign in: fleet map", body, status)

    def _page(self, title: str, body: str, status: int) -> web.Response:
        text = (
            "<!doctype html><html lang=en><head><meta charset=utf-8>"
            f"<title>{html.escape(title)}</title>"
            "<meta name=viewport content='width=device-width, initial-scale=1'>"
            "<link rel=icon href='data:,'>"
            "<link rel=stylesheet href=/static/signin.css></head>"
            f"<body><main class=signin><h1>Fleet map</h1>{body}</main></body></html>"
        )
        response = web.Response(text=text, status=status, content_type="text/html")
        response.headers.update({"Content-Security-Policy": CSP, "Cache-Control": "no-store"})
        return response


def _see_other(location: str) -> web.Response:
    """A 303 answer (returned, not raised: the API turns raised HTTP errors into JSON)."""
    return web.Response(status=303, headers={hdrs.LOCATION: location, "Cache-Control": "no-store"})


def _same_origin(request: web.Request) -> None:
    origin = request.headers.get(hdrs.ORIGIN, "")
    if urlsplit(origin).netloc != request.host:
        raise Unauthenticated(
            f"a WebSocket signed in by cookie must come from this site's page, not {origin!r}"
        )
