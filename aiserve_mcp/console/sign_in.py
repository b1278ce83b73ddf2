"""Signing in, registering and signing out, through the same ``auth_*`` tools as the REST API."""

from __future__ import annotations

import contextlib

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from aiserve_mcp.console.web import (
    CONSOLE,
    REFRESH_COOKIE,
    act,
    checked_form,
    form_text,
    render,
    safe_next,
    secured,
    see_other,
    set_cookie,
    signed_in,
)
from aiserve_mcp.core.errors import AiserveError
from aiserve_mcp.protocols.websocket import SESSION_COOKIE
from aiserve_mcp.tools.auth import LoginOutput


async def _signed_in_response(request: Request, email: str, password: str, target: str) -> Response:
    login = await act(request, None, "auth_login", {"email": email, "password": password})
    assert isinstance(login, LoginOutput)
    response = secured(see_other(safe_next(target)))
    set_cookie(request, response, SESSION_COOKIE, login.tokens.access_token, login.tokens.expires_in)
    set_cookie(request, response, REFRESH_COOKIE, login.tokens.refresh_token, login.tokens.expires_in)
    return response


async def sign_in(request: Request) -> Response:
    """``GET`` shows the form (fields ``email``, ``password``); ``POST`` signs in and goes to ``next``."""
    target = request.query_params.get("next", CONSOLE)
    if request.method == "GET":
        if await signed_in(request) is not None:
            return secured(see_other(safe_next(target)))
        return await render(request, "sign_in.html", {"next": safe_next(target)})
    form = await checked_form(request)
    email = form_text(form, "email")
    target = form_text(form, "next") or target
    try:
        return await _signed_in_response(request, email, form_text(form, "password", strip=False), target)
    except AiserveError as exc:
        context = {"next": safe_next(target), "email": email, "error": exc.message}
        return await render(request, "sign_in.html", context, status=401)


async def register(request: Request) -> Response:
    """``GET`` shows the form (``email``, ``password``, ``name``); ``POST`` registers and signs in."""
    if request.method == "GET":
        return await render(request, "register.html", {})
    form = await checked_form(request)
    email, name = form_text(form, "email"), form_text(form, "name")
    password = form_text(form, "password", strip=False)
    try:
        account = {"email": email, "password": password, "name": name or None}
        await act(request, None, "auth_register", account)
        return await _signed_in_response(request, email, password, CONSOLE)
    except AiserveError as exc:
        context = {"email": email, "name": name, "error": exc.message}
        return await render(request, "register.html", context, status=400)


async def sign_out(request: Request) -> Response:
    """End the login (its tokens stop working everywhere) and forget the session cookies."""
    await checked_form(request)
    refresh = request.cookies.get(REFRESH_COOKIE)
    if refresh:
        with contextlib.suppress(AiserveError):  # a login that already ended: the cookies go anyway
            await act(request, None, "auth_logout", {"refresh_token": refresh})
    response = secured(see_other(f"{CONSOLE}/sign-in"))
    for name in (SESSION_COOKIE, REFRESH_COOKIE):
        response.delete_cookie(name, path="/", httponly=True, samesite="lax")
    return response


routes = [
    Route(f"{CONSOLE}/sign-in", sign_in, methods=["GET", "POST"]),
    Route(f"{CONSOLE}/register", register, methods=["GET", "POST"]),
    Route(f"{CONSOLE}/sign-out", sign_out, methods=["POST"]),
]
