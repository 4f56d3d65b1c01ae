"""Sign-in with an operator or tenant API key, and logout.

The key travels once, in the body of the sign-in POST, and is checked by the admin API's own look-up
(`Admin.authenticate`); the browser then holds only a session cookie. The sign-in form is protected against
cross-site posts too, by a token in a short-lived cookie that the form must repeat (a session does not exist
yet to hold one).
"""

from __future__ import annotations

import hmac
import secrets

from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from pipelines.errors import BodyTooLarge
from workers.admin.console.sessions import COOKIE, IDLE_SECONDS, LOGIN_COOKIE, MAX_SECONDS
from workers.admin.console.web import CSRF_FIELD, BadForm, Console, read_form, redirect, secured

MAX_KEY_CHARS = 200
LOGIN_SECONDS = 3600


def over_https(request: Request) -> bool:
    """Served over HTTPS, directly or by a TLS proxy that says so in X-Forwarded-Proto (its entry is the
    last). `intake admin` does not let uvicorn rewrite the scheme from that header, and need not trust it
    here: a client that claims HTTPS only makes its own cookies Secure."""
    forwarded = request.headers.get("x-forwarded-proto", "").rpartition(",")[2].strip().lower()
    return request.url.scheme == "https" or forwarded == "https"


def _cookie(response: Response, request: Request, name: str, value: str, max_age: int) -> None:
    response.set_cookie(name, value, max_age=max_age, path="/", httponly=True, samesite="strict",
                        secure=over_https(request))


def sign_in_page(console: Console, request: Request, status: int = 200, message: str = "") -> Response:
    token = secrets.token_urlsafe(32)
    response = console.render("login.html", status, principal=None, csrf=token, message=message, path="/login",
                              query={})
    _cookie(response, request, LOGIN_COOKIE, token, LOGIN_SECONDS)
    return response


def routes(console: Console) -> list[Route]:
    async def login_form(request: Request) -> Response:
        if console.sessions.get(request.cookies.get(COOKIE)) is not None:
            return redirect("/")
        return sign_in_page(console, request)

    async def login(request: Request) -> Response:
        try:
            form = await read_form(request)
        except (BodyTooLarge, BadForm, ClientDisconnect):
            return sign_in_page(console, request, 400, "The form could not be read; try again.")
        expected = request.cookies.get(LOGIN_COOKIE, "")
        presented = (form.get(CSRF_FIELD) or [""])[0]
        if not expected or not hmac.compare_digest(expected.encode(), presented.encode()):
            return sign_in_page(console, request, 403, "The sign-in form had expired; try again.")
        key = (form.get("key") or [""])[0].strip()
        principal = None
        if 0 < len(key) <= MAX_KEY_CHARS:
            principal = await run_in_threadpool(console.admin.authenticate, key)
        if principal is None:
            return sign_in_page(console, request, 401, "That key is not valid (or has been revoked).")
        if principal.tenant_disabled:
            return sign_in_page(console, request, 403, "This key's tenant is disabled; an operator can enable it.")
        token, _ = console.sessions.start(principal)
        response = redirect("/")
        _cookie(response, request, COOKIE, token, min(MAX_SECONDS, IDLE_SECONDS * 6))
        response.delete_cookie(LOGIN_COOKIE, path="/")
        return response

    async def logout(request: Request) -> Response:
        token = request.cookies.get(COOKIE)
        session = console.sessions.get(token)
        try:
            form = await read_form(request)
        except (BodyTooLarge, BadForm, ClientDisconnect):
            form = {}
        if session is not None:
            if not session.csrf_matches((form.get(CSRF_FIELD) or [""])[0]):
                return secured(console.render("error.html", 403, status=403, title="Refused",
                                              detail="The logout form's CSRF token is missing or out of date.",
                                              principal=session.principal, csrf=session.csrf, path="", query={}))
            console.sessions.end(token)
        response = redirect("/login")
        response.delete_cookie(COOKIE, path="/")
        return response

    return [Route("/login", login_form, methods=["GET"]), Route("/login", login, methods=["POST"]),
            Route("/logout", logout, methods=["POST"])]
