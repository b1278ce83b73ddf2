"""Upload links end to end: a link made over MCP (the official SDK), the file PUT to it without a login,
and the model served as if it had been uploaded through REST; every link is spent once, expires, and
takes exactly its size."""

from __future__ import annotations

import asyncio
import json
import pickle
import shlex
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort  # type: ignore[import-untyped]
import pytest
from mcp import Client
from sqlalchemy import update

from aiserve_mcp.accounts.tables import User
from aiserve_mcp.app import create_app
from aiserve_mcp.bootstrap import Services
from aiserve_mcp.core.settings import Settings
from aiserve_mcp.tools.upload_links import FILE_PLACEHOLDER
from tests.conftest import Account, LiveServer, free_port, serve, sign_up, until_healthy
from tests.mcp_clients import mcp_client
from tests.serving.test_models import Pwned, mlp_bytes, upload

MAX_FILE_BYTES = QUOTA_BYTES = 2_000_000
UPLOADS_PER_HOUR = 2
LINKS_PATH = "/api/v1/models/uploads/"


@pytest.fixture
async def live(settings: Settings) -> AsyncIterator[LiveServer]:
    """The app served on a port its settings know, so that the links it makes point at it (no
    AISERVE_PUBLIC_URL: the listening address is used)."""
    port = free_port()
    limits = {
        "port": port,
        "model_max_file_bytes": MAX_FILE_BYTES,
        "model_quota_bytes": QUOTA_BYTES,
        "model_uploads_per_hour": UPLOADS_PER_HOUR,
    }
    app = create_app(settings.model_copy(update=limits))
    async with serve(app, port) as url:
        yield LiveServer(url, app)


@pytest.fixture
async def http(live: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=live.url, timeout=30) as client:
        yield client


@pytest.fixture
async def owner(http: httpx.AsyncClient) -> Account:
    return await sign_up(http)


async def call(client: Client, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    result = await client.call_tool(tool, arguments)
    assert result.is_error is not True, result.content
    structured = result.structured_content
    assert isinstance(structured, dict)
    return structured


async def refusal(client: Client, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    result = await client.call_tool(tool, arguments)
    assert result.is_error is True, result.structured_content
    text = result.content[0]
    assert text.type == "text"
    body = json.loads(text.text)
    assert isinstance(body, dict)
    return body


async def link_for(client: Client, content: bytes, **fields: Any) -> dict[str, Any]:
    return await call(client, "create_model_upload", {"size_bytes": len(content), **fields})


async def until_settled(client: Client, model_id: str) -> dict[str, Any]:
    for _ in range(400):
        details = await call(client, "get_model", {"model_id": model_id})
        if details["status"] != "loading":
            return details
        await asyncio.sleep(0.05)
    raise AssertionError("the model never finished loading")


async def model_ids(client: Client) -> set[str]:
    return {m["id"] for m in (await call(client, "list_models", {}))["models"]}


def leftovers(live: LiveServer) -> list[Path]:
    """Temporary upload files left in the model directory (a refused upload leaves none)."""
    services: Services = live.app.state.services
    return list(services.model_store.root.rglob("*.upload"))


async def test_a_link_takes_one_file_that_serves_like_a_rest_upload(
    live: LiveServer, http: httpx.AsyncClient, owner: Account, tmp_path: Path
) -> None:
    async with mcp_client(live.url, owner.access_token) as mcp:
        content = mlp_bytes()
        link = await link_for(mcp, content, name="mlp", version="2.0.0", expires_in_s=60)
        assert link["method"] == "PUT" and link["size_bytes"] == len(content)
        assert link["upload_url"].startswith(live.url + LINKS_PATH)
        assert link["curl"] == (
            f"curl -X PUT --data-binary @{FILE_PLACEHOLDER} -H 'Content-Type: application/octet-stream' "
            f"'{link['upload_url']}'"
        )
        before = await call(mcp, "get_quota", {})

        # The command the tool gave, run as given (the file's path put in for the placeholder).
        (tmp_path / "mlp.onnx").write_bytes(content)
        command = link["curl"].replace(FILE_PLACEHOLDER, shlex.quote(str(tmp_path / "mlp.onnx")))
        curl = await asyncio.create_subprocess_shell(
            command + " --silent --write-out '\\n%{http_code}'", stdout=asyncio.subprocess.PIPE
        )
        output, _ = await curl.communicate()
        answer, status = output.decode().rsplit("\n", 1)
        assert status == "201", output
        stored = json.loads(answer)
        assert stored["format"] == "onnx" and stored["name"] == "mlp" and stored["status"] == "loading"
        model_id = stored["model_id"]

        assert model_id in await model_ids(mcp)
        details = await until_settled(mcp, model_id)
        assert details["status"] == "ready" and details["version"] == "2.0.0"
        rows = [[0.1, 0.2, 0.3, 0.4], [1.0, -2.0, 3.5, 0.0]]
        expected = ort.InferenceSession(content).run(None, {"input": np.asarray(rows, dtype=np.float32)})[0]
        predicted = await call(mcp, "predict", {"model_id": model_id, "inputs": {"input": rows}})
        assert np.array_equal(np.asarray(predicted["outputs"]["output"], dtype=np.float32), expected)

        reused = await http.put(link["upload_url"], content=content)
        assert reused.status_code == 409 and reused.json()["code"] == "CONFLICT", reused.text
        assert "used already" in reused.json()["error"]
        assert await model_ids(mcp) == {model_id}

        # The link's upload counted exactly as much as the same file uploaded through REST.
        after_link = await call(mcp, "get_quota", {})
        assert (await upload(http, owner, content)).status_code == 201
        after_rest = await call(mcp, "get_quota", {})
        for quota in (before, after_link):
            assert quota["user_id"] == owner.user_id
        link_delta = (
            after_link["storage"]["used_bytes"] - before["storage"]["used_bytes"],
            after_link["rate_limits"]["uploads_last_hour"] - before["rate_limits"]["uploads_last_hour"],
        )
        rest_delta = (
            after_rest["storage"]["used_bytes"] - after_link["storage"]["used_bytes"],
            after_rest["rate_limits"]["uploads_last_hour"] - after_link["rate_limits"]["uploads_last_hour"],
        )
        assert link_delta == rest_delta == (len(content), 1)
        assert after_rest["rate_limits"]["uploads_last_hour"] == UPLOADS_PER_HOUR
        rate = await refusal(mcp, "create_model_upload", {"size_bytes": len(content)})
        assert rate["code"] == "QUOTA_EXCEEDED" and "upload rate reached" in rate["error"]

        # The model is the link maker's, not anyone else's.
        stranger = await sign_up(http)
        mine = await http.get(f"/api/v1/models/{model_id}", headers=stranger.headers)
        assert mine.status_code == 404


async def test_a_link_that_expired_is_refused(live: LiveServer, owner: Account) -> None:
    async with mcp_client(live.url, owner.access_token) as mcp:
        content = mlp_bytes()
        services: Services = live.app.state.services
        _, secret = await services.upload_links.create(owner.user_id, {}, len(content), timedelta(seconds=-1))
        async with httpx.AsyncClient(base_url=live.url) as http:
            expired = await http.put(LINKS_PATH + secret, content=content)
        assert expired.status_code == 409 and expired.json()["code"] == "CONFLICT", expired.text
        assert "expired at" in expired.json()["error"]
        assert await model_ids(mcp) == set()
        too_short = await refusal(mcp, "create_model_upload", {"size_bytes": 10, "expires_in_s": 59})
        assert too_short["code"] == "VALIDATION_ERROR"


async def test_a_link_of_a_disabled_account_is_refused(live: LiveServer, owner: Account) -> None:
    content = mlp_bytes()
    services: Services = live.app.state.services
    _, secret = await services.upload_links.create(owner.user_id, {}, len(content), timedelta(minutes=1))
    async with services.db.session() as session:
        await session.execute(update(User).where(User.id == owner.user_id).values(is_active=False))
    async with httpx.AsyncClient(base_url=live.url) as http:
        refused = await http.put(LINKS_PATH + secret, content=content)
    assert refused.status_code == 401 and refused.json()["code"] == "AUTH_INVALID", refused.text
    assert await services.model_store.list_for(owner.user_id) == []


async def declared_only(url: str, length: int) -> bytes:
    """The status of a PUT that declares ``Content-Length: length`` and sends no body at all: a server
    that waited for the body would never answer."""
    target = httpx.URL(url)
    reader, writer = await asyncio.open_connection(target.host, target.port)
    head = [f"PUT {target.raw_path.decode()} HTTP/1.1", f"Host: {target.host}", f"Content-Length: {length}"]
    writer.write("\r\n".join([*head, "", ""]).encode())
    await writer.drain()
    status_line = await asyncio.wait_for(reader.readline(), 10)
    writer.close()
    return status_line.split()[1]


def refused_for_size(response: httpx.Response, status: int) -> None:
    code = {400: "VALIDATION_ERROR", 413: "PAYLOAD_TOO_LARGE"}[status]
    assert response.status_code == status and response.json()["code"] == code, response.text
    assert "this upload link takes exactly" in response.json()["error"]


async def test_a_body_of_another_size_is_refused_and_nothing_is_stored(
    owner: Account, live: LiveServer, http: httpx.AsyncClient
) -> None:
    content = mlp_bytes()

    async def chunked(data: bytes) -> AsyncIterator[bytes]:  # no Content-Length: the stream is counted
        for start in range(0, len(data), 1000):
            yield data[start : start + 1000]

    async with mcp_client(live.url, owner.access_token) as mcp:
        bodies: list[tuple[bytes | AsyncIterator[bytes], int]] = [
            (content + b"\0" * 10, 413),
            (content[:-1], 400),
            (chunked(content + b"\0"), 413),
            (chunked(content[:-1]), 400),
            (b"", 400),
        ]
        for body, status in bodies:
            refused_for_size(
                await http.put((await link_for(mcp, content))["upload_url"], content=body), status
            )
        # A declared Content-Length other than the link's size is refused before the body is read.
        assert await declared_only((await link_for(mcp, content))["upload_url"], len(content) + 1) == b"413"
        link = await link_for(mcp, content)
        assert await declared_only(link["upload_url"], len(content) - 1) == b"400"

        assert await model_ids(mcp) == set()
        assert (await call(mcp, "get_quota", {}))["rate_limits"]["uploads_last_hour"] == 0
        assert not leftovers(live)
        spent = await http.put(link["upload_url"], content=content)  # a failed PUT spent its link too
        assert spent.status_code == 409 and "used already" in spent.json()["error"], spent.text


async def test_an_unknown_link_is_not_found(http: httpx.AsyncClient) -> None:
    unknown = await http.put(LINKS_PATH + "ul_nosuchlink", content=b"model")
    assert unknown.status_code == 404 and unknown.json()["code"] == "NOT_FOUND", unknown.text
    assert (await http.get(LINKS_PATH + "ul_nosuchlink")).status_code == 405


async def test_of_two_concurrent_puts_exactly_one_is_stored(
    live: LiveServer, owner: Account, http: httpx.AsyncClient
) -> None:
    async with mcp_client(live.url, owner.access_token) as mcp:
        content = mlp_bytes()
        url = (await link_for(mcp, content))["upload_url"]
        answers = await asyncio.gather(*(http.put(url, content=content) for _ in range(2)))
        assert sorted(a.status_code for a in answers) == [201, 409], [a.text for a in answers]
        assert len(await model_ids(mcp)) == 1


async def test_a_pickle_sent_through_a_link_is_stored_and_never_loaded(
    live: LiveServer, owner: Account, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    async with mcp_client(live.url, owner.access_token) as mcp:
        marker = tmp_path / "pwned"
        content = pickle.dumps(Pwned(marker))
        stored = await http.put((await link_for(mcp, content))["upload_url"], content=content)
        assert stored.status_code == 201, stored.text
        model_id = stored.json()["model_id"]
        details = await until_settled(mcp, model_id)
        assert details["status"] == "stored" and "pickle" in str(details["status_reason"]).lower()
        refused = await refusal(mcp, "predict", {"model_id": model_id, "inputs": {"x": [1]}})
        assert refused["code"] == "CONFLICT"
        assert not marker.exists()


async def test_a_link_is_refused_for_a_file_that_cannot_fit(live: LiveServer, owner: Account) -> None:
    async with mcp_client(live.url, owner.access_token) as mcp:
        over_file_limit = await refusal(mcp, "create_model_upload", {"size_bytes": MAX_FILE_BYTES + 1})
        assert (
            over_file_limit["code"] == "VALIDATION_ERROR"
            and "AISERVE_MODEL_MAX_FILE_BYTES" in over_file_limit["error"]
        )
        assert (await call(mcp, "create_model_upload", {"size_bytes": MAX_FILE_BYTES}))[
            "size_bytes"
        ] == MAX_FILE_BYTES

        first = mlp_bytes()
        fits = await call(mcp, "create_model_upload", {"size_bytes": QUOTA_BYTES - len(first)})
        assert fits["size_bytes"] == QUOTA_BYTES - len(first)
        async with httpx.AsyncClient() as http:
            link = await link_for(mcp, first)
            assert (await http.put(link["upload_url"], content=first)).status_code == 201
        no_room = await refusal(mcp, "create_model_upload", {"size_bytes": QUOTA_BYTES - len(first) + 1})
        assert no_room["code"] == "QUOTA_EXCEEDED" and "remaining storage quota" in no_room["error"]


async def test_the_access_log_never_shows_a_link_token(server_env: dict[str, str], tmp_path: Path) -> None:
    """A link's token is a credential: ``aiserve serve`` logs the request with ``<token>`` in its place."""
    port, log = free_port(), tmp_path / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "aiserve_mcp", "serve", "--port", str(port)],
            env={**server_env, "AISERVE_LOG_LEVEL": "INFO"},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            await until_healthy(url, process, log)
            async with httpx.AsyncClient(base_url=url) as http:
                answer = await http.put("/api/v1/models/uploads/ul_secret_token_value", content=b"x")
            assert answer.status_code == 404
        finally:
            process.terminate()
            process.wait(15)
    logged = log.read_text()
    assert '"PUT /api/v1/models/uploads/<token> HTTP/1.1" 404' in logged
    assert "ul_secret_token_value" not in logged
