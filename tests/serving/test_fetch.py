"""Downloading model files from URLs: the egress rules, redirects, timeouts and streaming, against loopback
file servers (allowed by name, as an operator allows a model store on their network)."""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from aiserve_mcp.core.errors import Forbidden, UpstreamFailed, UpstreamTimeout, ValidationFailed
from aiserve_mcp.serving.fetch import Download, ModelFetcher, fetch_client
from aiserve_mcp.traffic.egress import AllowedHosts
from tests.conftest import serve

BODY = bytes(range(256)) * 1024 + b"tail"
SETTING = "AISERVE_MODEL_FETCH_ALLOWED_HOSTS"


@dataclass
class Hit:
    path: str
    host: str
    cookie: str | None


@dataclass
class FileServer:
    url: str = ""
    hits: list[Hit] = field(default_factory=list)
    gate: anyio.Event = field(default_factory=anyio.Event)

    @property
    def port(self) -> int:
        return httpx.URL(self.url).port or 80


class Recorder:
    """Records every request's path, Host and Cookie headers before the app sees it."""

    def __init__(self, app: ASGIApp, server: FileServer) -> None:
        self.app, self.server = app, server

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = {k.decode(): v.decode() for k, v in scope["headers"]}
            self.server.hits.append(Hit(scope["path"], headers["host"], headers.get("cookie")))
        await self.app(scope, receive, send)


def file_app(server: FileServer) -> Starlette:
    async def files(request: Request) -> Response:
        return Response(BODY, headers={"Set-Cookie": "session=secret; Path=/"})

    async def gated(request: Request) -> Response:
        async def body() -> AsyncIterator[bytes]:
            yield BODY[:1000]
            await server.gate.wait()  # the rest only once the client has the first part
            yield BODY[1000:]

        return StreamingResponse(body(), headers={"Content-Length": str(len(BODY))})

    async def named(request: Request) -> Response:
        disposition = "attachment; filename*=UTF-8''tiny%20model.onnx"
        return Response(BODY[:10], headers={"Content-Disposition": disposition})

    async def redirect(request: Request) -> Response:
        return RedirectResponse(request.query_params["to"], status_code=302)

    async def hops(request: Request) -> Response:
        left = int(request.path_params["left"])
        await anyio.sleep(float(request.query_params.get("wait", 0)))
        if left == 0:
            return Response(BODY)
        return RedirectResponse(f"/hops/{left - 1}?{request.url.query}", status_code=307)

    async def trickle(request: Request) -> Response:
        async def body() -> AsyncIterator[bytes]:
            for _ in range(100):  # a byte every 50 ms, never a stall long enough for a read timeout
                yield b"x"
                await anyio.sleep(0.05)

        return StreamingResponse(body())

    routes = [
        Route("/files/{name}", files),
        Route("/gated/{name}", gated),
        Route("/named", named),
        Route("/redirect", redirect),
        Route("/hops/{left}", hops),
        Route("/trickle", trickle),
    ]
    return Starlette(routes=routes, middleware=[Middleware(Recorder, server=server)])


@asynccontextmanager
async def file_server() -> AsyncIterator[FileServer]:
    server = FileServer()
    async with serve(file_app(server)) as url:
        server.url = url
        yield server


@pytest.fixture
async def server() -> AsyncIterator[FileServer]:
    async with file_server() as running:
        yield running


@pytest.fixture
async def other() -> AsyncIterator[FileServer]:
    async with file_server() as running:
        yield running


@asynccontextmanager
async def fetcher(allowed: list[str], timeout_s: float = 10.0) -> AsyncIterator[ModelFetcher]:
    fetching = ModelFetcher(fetch_client(), allowed, timeout_s)
    try:
        yield fetching
    finally:
        await fetching.aclose()


async def fetch(allowed: list[str], url: str, timeout_s: float = 10.0) -> tuple[Download, bytes]:
    async with fetcher(allowed, timeout_s) as fetching, fetching.download(url) as download:
        return download, b"".join([chunk async for chunk in download.chunks()])


async def test_an_allowed_host_streams_exactly_the_file(server: FileServer) -> None:
    url = f"{server.url}/gated/model.onnx"
    with anyio.fail_after(10):  # a fetcher that waited for the whole body would wait for ever here
        async with fetcher([f"127.0.0.1:{server.port}"]) as fetching, fetching.download(url) as download:
            assert (download.url, download.filename, download.total_bytes) == (url, "model.onnx", len(BODY))
            chunks = download.chunks()
            first = await anext(chunks)
            assert not server.gate.is_set() and BODY.startswith(first) and len(first) < len(BODY)
            server.gate.set()
            assert first + b"".join([chunk async for chunk in chunks]) == BODY
    assert [(h.path, h.host) for h in server.hits] == [("/gated/model.onnx", f"127.0.0.1:{server.port}")]


async def test_content_disposition_names_the_file(server: FileServer) -> None:
    download, body = await fetch(["127.0.0.1"], f"{server.url}/named")
    assert (download.filename, download.total_bytes, body) == ("tiny model.onnx", 10, BODY[:10])


async def test_a_loopback_host_is_forbidden_without_the_setting(server: FileServer) -> None:
    with pytest.raises(Forbidden, match=f"loopback, private, link-local.*{SETTING}"):
        await fetch([], f"{server.url}/files/model.onnx")
    assert server.hits == []


async def test_a_redirect_to_the_metadata_address_is_forbidden(server: FileServer) -> None:
    metadata = "http://169.254.169.254/latest/meta-data/"
    with pytest.raises(Forbidden, match=SETTING):
        await fetch(["127.0.0.1"], f"{server.url}/redirect?to={metadata}", timeout_s=3)
    assert [h.path for h in server.hits] == ["/redirect"]


async def test_a_redirect_to_a_port_not_allowed_is_forbidden(server: FileServer, other: FileServer) -> None:
    with pytest.raises(Forbidden, match=SETTING):
        await fetch([f"127.0.0.1:{server.port}"], f"{server.url}/redirect?to={other.url}/files/m.onnx")
    assert [h.path for h in server.hits] == ["/redirect"] and other.hits == []


async def test_a_host_entry_with_a_port_allows_only_that_port(server: FileServer, other: FileServer) -> None:
    assert (await fetch([f"127.0.0.1:{server.port}"], f"{server.url}/files/m.onnx"))[1] == BODY
    with pytest.raises(Forbidden, match=SETTING):
        await fetch([f"127.0.0.1:{server.port}"], f"{other.url}/files/m.onnx")
    assert other.hits == []
    assert (await fetch(["127.0.0.1"], f"{other.url}/files/m.onnx"))[1] == BODY  # no port: any port


async def test_up_to_five_redirects_are_followed_to_the_final_url(server: FileServer) -> None:
    download, body = await fetch(["127.0.0.1"], f"{server.url}/hops/5")
    assert (download.url, download.filename, body) == (f"{server.url}/hops/0", "0", BODY)
    assert [h.path for h in server.hits] == [f"/hops/{n}" for n in range(5, -1, -1)]


async def test_too_many_redirects_are_refused(server: FileServer) -> None:
    with pytest.raises(UpstreamFailed, match="redirected more than 5 times"):
        await fetch(["127.0.0.1"], f"{server.url}/hops/6")
    assert [h.path for h in server.hits] == [f"/hops/{n}" for n in range(6, 0, -1)]


@pytest.mark.parametrize(
    ("url", "wrong"),
    [
        ("ftp://127.0.0.1:{port}/files/m.onnx", "must be an http:// or https:// URL"),
        ("file:///etc/passwd", "must be an http:// or https:// URL"),
        ("http://user:pw@127.0.0.1:{port}/files/m.onnx", "must not carry a user name or password"),
    ],
)
async def test_only_plain_http_and_https_urls(server: FileServer, url: str, wrong: str) -> None:
    with pytest.raises(ValidationFailed, match=wrong):
        await fetch(["127.0.0.1"], url.format(port=server.port))
    assert server.hits == []


async def test_a_redirect_to_another_scheme_is_refused(server: FileServer) -> None:
    with pytest.raises(UpstreamFailed, match="a redirect must be an http:// or https:// URL"):
        await fetch(["127.0.0.1"], f"{server.url}/redirect?to=ftp://127.0.0.1:{server.port}/files/m")


async def test_an_error_answer_is_upstream_failed_naming_its_status(server: FileServer) -> None:
    with pytest.raises(UpstreamFailed, match="HTTP 404"):
        await fetch(["127.0.0.1"], f"{server.url}/nothing-here")


async def test_a_server_that_trickles_is_cut_off_at_the_timeout(server: FileServer) -> None:
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout, match="within 1 s"):
        await fetch(["127.0.0.1"], f"{server.url}/trickle", timeout_s=1)
    assert 0.9 < time.monotonic() - started < 2.5


async def test_slow_answers_count_against_one_timeout_for_the_whole_download(server: FileServer) -> None:
    started = time.monotonic()  # five hops of 0.4 s each: every answer is in time, all of them are not
    with pytest.raises(UpstreamTimeout, match=r"within 0\.6 s"):
        await fetch(["127.0.0.1"], f"{server.url}/hops/5?wait=0.4", timeout_s=0.6)
    assert time.monotonic() - started < 1.5


async def test_no_cookie_is_kept_between_downloads(server: FileServer) -> None:
    async with fetcher(["127.0.0.1"]) as fetching:
        for _ in range(2):
            async with fetching.download(f"{server.url}/files/m.onnx") as download:
                assert b"".join([chunk async for chunk in download.chunks()]) == BODY
    assert [h.cookie for h in server.hits] == [None, None]


async def test_http_goes_to_the_checked_address_with_the_name_as_host(
    server: FileServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The name is resolved once, by the check; the request goes to the address checked (real DNS does
    not know this name, so a request by name would fail), and allowed names compare case-insensitively."""

    async def resolver(host: str, port: int, **kwargs: Any) -> list[Any]:
        assert host == "models.example"
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]

    monkeypatch.setattr(anyio, "getaddrinfo", resolver)  # what the egress check resolves with
    url = f"http://MODELS.example:{server.port}/files/m.onnx"
    download, body = await fetch(["Models.Example"], url)
    assert (download.url, body) == (f"http://models.example:{server.port}/files/m.onnx", BODY)
    assert [h.host for h in server.hits] == [f"models.example:{server.port}"]
    with pytest.raises(Forbidden, match=SETTING):  # the name resolves to loopback: allowed only by name
        await fetch(["other.example"], url)


def test_allowed_host_entries() -> None:
    allowed = AllowedHosts(["[::1]:8000", "10.0.0.7", "Store.Internal:9000", "0:0::2"], SETTING)
    admitted = [
        "http://[::1]:8000/m",
        "http://10.0.0.7:1234/m",
        "https://store.internal:9000/m",
        "http://[::2]/",
    ]
    refused = ["http://[::1]:8001/m", "http://10.0.0.8/m", "https://store.internal/m", "http://[::3]/"]
    assert [allowed.admit(httpx.URL(u)) for u in admitted] == [True] * 4
    assert [allowed.admit(httpx.URL(u)) for u in refused] == [False] * 4
    for wrong in ["user@host", "host/path", "host:0", "host:x", "host:70000"]:
        with pytest.raises(ValueError, match=SETTING):
            AllowedHosts([wrong], SETTING)
