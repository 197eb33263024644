"""The fleet map's sign-in and session cookie: sessions alone, then through a real API."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from backend.operator import web as web_module
from backend.operator.errors import SessionExpired
from backend.operator.web import SESSION_COOKIE, Sessions
from tests.operator.support import OPERATOR_TOKEN, ApiFactory, base, signed_in


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_session_names_its_operator_until_it_expires() -> None:
    clock = Clock()
    sessions = Sessions(ttl=60.0, clock=clock)
    session_id = sessions.open("op-alice")
    assert sessions.operator(session_id) == "op-alice"
    clock.now += 61
    with pytest.raises(SessionExpired, match="sign in again"):
        sessions.operator(session_id)
    assert len(sessions) == 0


def test_unknown_and_closed_sessions_are_refused_and_expired_ones_pruned() -> None:
    clock = Clock()
    sessions = Sessions(ttl=60.0, clock=clock)
    with pytest.raises(SessionExpired):
        sessions.operator("made-up")
    first = sessions.open("op-alice")
    sessions.close(first)
    with pytest.raises(SessionExpired):
        sessions.operator(first)
    sessions.open("op-bob")
    clock.now += 61
    sessions.open("op-carol")  # opening prunes what has expired
    assert len(sessions) == 1


def test_public_paths_are_the_pages_and_static_files() -> None:
    assert all(web_module.is_public(p) for p in ("/", "/signin", "/static/js/main.js"))
    assert not any(web_module.is_public(p) for p in ("/devices", "/fleet/live", "/staticx"))


# --- through the API ---------------------------------------------------------------------------


async def test_signing_in_sets_a_strict_httponly_cookie_that_the_json_api_takes(
    start_api: ApiFactory,
) -> None:
    async with start_api() as api, signed_in(api) as (http, answer):
        assert (answer.status, answer.headers["Location"]) == (303, "/")
        cookie = answer.cookies[SESSION_COOKIE]
        assert (cookie["httponly"], cookie["samesite"], cookie["path"]) == (True, "Strict", "/")
        assert OPERATOR_TOKEN not in cookie.value
        async with http.get(f"{base(api)}/devices") as resp:
            assert resp.status == 200, await resp.text()
        async with http.get(f"{base(api)}/") as resp:
            assert resp.status == 200
            assert "Content-Security-Policy" in resp.headers
            assert '<div id="map"' in await resp.text()


async def test_a_wrong_token_is_refused_with_the_form_and_a_line_saying_so(
    start_api: ApiFactory, http: aiohttp.ClientSession
) -> None:
    async with start_api() as api:
        form = {"token": "not-a-token"}
        async with http.post(f"{base(api)}/signin", data=form, allow_redirects=False) as resp:
            assert resp.status == 401
            page = await resp.text()
        assert "That is not an operator token of this API" in page
        assert "<form method=post action=/signin>" in page
        assert SESSION_COOKIE not in resp.cookies
        labels = {"reason": "unauthorized", "field": "token"}
        assert api.metrics.registry.get_sample_value("fleet_api_rejected_total", labels) == 1


async def test_without_a_session_the_page_sends_to_sign_in_and_json_says_how(
    start_api: ApiFactory, http: aiohttp.ClientSession
) -> None:
    async with start_api() as api:
        async with http.get(f"{base(api)}/", allow_redirects=False) as resp:
            assert (resp.status, resp.headers["Location"]) == (303, "/signin")
        async with http.get(f"{base(api)}/devices") as resp:
            assert resp.status == 401
            assert "sign in at /signin" in (await resp.json())["message"]


async def test_an_ended_session_is_session_expired_and_the_page_says_so(
    start_api: ApiFactory,
) -> None:
    async with start_api() as api, signed_in(api) as (http, answer):
        async with http.post(f"{base(api)}/signout", allow_redirects=False) as resp:
            assert resp.status == 303
        stale = {SESSION_COOKIE: answer.cookies[SESSION_COOKIE].value}
        async with http.get(f"{base(api)}/devices", cookies=stale) as resp:
            assert resp.status == 401
            assert (await resp.json())["error"] == "session_expired"
        async with http.get(f"{base(api)}/", cookies=stale, allow_redirects=False) as resp:
            assert resp.headers["Location"] == "/signin?expired=1"
        async with http.get(f"{base(api)}/signin?expired=1") as resp:
            assert "Your session has expired" in await resp.text()


async def test_a_cookie_websocket_must_come_from_the_page_s_own_origin(
    start_api: ApiFactory,
) -> None:
    async with start_api() as api, signed_in(api) as (http, _answer):
        url = f"{base(api)}/fleet/live"
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(url, origin="http://evil.example")
        assert refused.value.status == 401
        async with http.ws_connect(url, origin=base(api)) as ws:
            message = await ws.receive_json(timeout=10)
        assert message["type"] == "fleet"


async def test_without_the_libraries_the_page_says_how_to_install_them(
    start_api: ApiFactory, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(web_module, "VENDOR_DIR", tmp_path / "vendor")
    async with start_api() as api, signed_in(api) as (http, _signed):
        resp = await http.get(f"{base(api)}/")
        assert resp.status == 503
        assert "run scripts/vendor.sh" in await resp.text()
