"""Using the console over plain HTTP in tests: reading a page's CSRF token and signing in by the form."""

from __future__ import annotations

import re

import httpx

from tests.conftest import PASSWORD

_CSRF = re.compile(r'name="csrf_token" value="([0-9a-f]+)"')


def csrf_of(html: str) -> str:
    """The CSRF token of the first form in ``html``."""
    match = _CSRF.search(html)
    assert match is not None, "the page has no form with a csrf_token"
    return match.group(1)


async def console_sign_in(http: httpx.AsyncClient, email: str, password: str = PASSWORD) -> None:
    """Sign ``http`` (which keeps cookies) in to the console through its sign-in form."""
    page = await http.get("/console/sign-in")
    assert page.status_code == 200, page.text
    form = {"csrf_token": csrf_of(page.text), "email": email, "password": password, "next": "/console"}
    signed_in = await http.post("/console/sign-in", data=form)
    assert signed_in.status_code == 303, signed_in.text
    assert "aiserve_session" in http.cookies
