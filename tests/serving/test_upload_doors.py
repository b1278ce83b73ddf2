"""An agent puts a model on the platform through its own connection: ``upload_model`` from a URL, from
inline base64 or (stdio only) from a local path, over MCP, A2A and the agent door, with the same quota,
limits and pickle rules as the REST multipart upload."""

from __future__ import annotations

import asyncio
import base64
import json
import pickle
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from a2a.helpers import get_data_parts, new_data_part
from a2a.types import Part
from mcp import Client, StdioServerParameters
from mcp.types import CallToolResult
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from aiserve_mcp.app import create_app
from aiserve_mcp.core.settings import Settings
from aiserve_mcp.protocols.agent_door.door import AGENT_PATH
from aiserve_mcp.tools.uploads import INLINE_MAX_BYTES
from tests.conftest import api_key, serve, sign_up
from tests.mcp_clients import mcp_client
from tests.protocols.test_a2a import COMPLETED, a2a, events, request, run
from tests.serving.test_models import Pwned, mlp_bytes

MODEL = mlp_bytes(7)


@dataclass
class FileServer:
    """A loopback file server: the model, a pickle, and a redirect to the cloud metadata address."""

    pickle_bytes: bytes
    requests: list[str] = field(default_factory=list)

    def app(self) -> Starlette:
        async def model(request: Request) -> Response:
            self.requests.append(request.url.path)
            return Response(MODEL, media_type="application/octet-stream")

        async def pickled(request: Request) -> Response:
            self.requests.append(request.url.path)
            return Response(self.pickle_bytes, media_type="application/octet-stream")

        async def to_metadata(request: Request) -> Response:
            self.requests.append(request.url.path)
            return RedirectResponse("http://169.254.169.254/latest/meta-data/iam/mlp.onnx", status_code=302)

        return Starlette(
            routes=[
                Route("/models/mlp.onnx", model),
                Route("/models/model.pkl", pickled),
                Route("/models/moved.onnx", to_metadata),
            ]
        )


@dataclass
class Platform:
    url: str
    files: str
    file_server: FileServer
    marker: Path


@asynccontextmanager
async def platform(
    settings: Settings, tmp_path: Path, *, allow_files: bool = True
) -> AsyncIterator[Platform]:
    marker = tmp_path / "pwned"
    file_server = FileServer(pickle.dumps(Pwned(marker)))
    async with serve(file_server.app()) as files:
        allowed = [files.removeprefix("http://")] if allow_files else []
        app = create_app(settings.model_copy(update={"model_fetch_allowed_hosts": allowed}))
        async with serve(app) as url:
            yield Platform(url, files, file_server, marker)


def structured(result: CallToolResult) -> dict[str, Any]:
    assert result.is_error is not True, result.content
    assert result.structured_content is not None
    return dict(result.structured_content)


def refusal(result: CallToolResult) -> dict[str, Any]:
    assert result.is_error is True, result.structured_content
    body = json.loads(result.content[0].text)  # type: ignore[union-attr]
    assert isinstance(body, dict)
    return body


async def settled(client: Client, model_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        details = structured(await client.call_tool("get_model", {"model_id": model_id}))
        if details["status"] != "loading":
            return details
        await asyncio.sleep(0.05)
    raise AssertionError("the model never finished loading")


async def quota(client: Client) -> tuple[int, int]:
    details = structured(await client.call_tool("get_quota", {}))
    return details["storage"]["used_bytes"], details["rate_limits"]["uploads_last_hour"]


async def test_an_agent_uploads_from_a_url_with_progress_then_predicts(
    settings: Settings, tmp_path: Path
) -> None:
    async with platform(settings, tmp_path) as p:
        async with httpx.AsyncClient(base_url=p.url) as http:
            owner = await sign_up(http)
        reported: list[tuple[float, float | None]] = []

        async def progress(progress: float, total: float | None, message: str | None) -> None:
            reported.append((progress, total))

        async with mcp_client(p.url, owner.access_token) as client:
            uploaded = structured(
                await client.call_tool(
                    "upload_model",
                    {"url": f"{p.files}/models/mlp.onnx", "name": "mlp"},
                    progress_callback=progress,
                )
            )
            assert (
                uploaded["name"] == "mlp" and uploaded["format"] == "onnx" and uploaded["status"] == "loading"
            )
            assert (await settled(client, uploaded["model_id"]))["status"] == "ready"
            answer = structured(
                await client.call_tool(
                    "predict", {"model_id": uploaded["model_id"], "inputs": {"input": [[0.1, 0.2, 0.3, 0.4]]}}
                )
            )
        assert len(answer["outputs"]["output"][0]) == 2
        assert (len(MODEL), len(MODEL)) in reported  # the whole file, out of its Content-Length
        assert p.file_server.requests == ["/models/mlp.onnx"]


async def test_a_private_address_is_refused_unless_the_operator_allows_its_host(
    settings: Settings, tmp_path: Path
) -> None:
    async with platform(settings, tmp_path, allow_files=False) as p:
        async with httpx.AsyncClient(base_url=p.url) as http:
            owner = await sign_up(http)
        async with mcp_client(p.url, owner.access_token) as client:
            body = refusal(await client.call_tool("upload_model", {"url": f"{p.files}/models/mlp.onnx"}))
            assert body["code"] == "FORBIDDEN" and "AISERVE_MODEL_FETCH_ALLOWED_HOSTS" in body["error"]
            assert await quota(client) == (0, 0)
    assert p.file_server.requests == []


async def test_a_redirect_to_the_metadata_address_is_refused(settings: Settings, tmp_path: Path) -> None:
    async with platform(settings, tmp_path) as p:
        async with httpx.AsyncClient(base_url=p.url) as http:
            owner = await sign_up(http)
        async with mcp_client(p.url, owner.access_token) as client:
            body = refusal(await client.call_tool("upload_model", {"url": f"{p.files}/models/moved.onnx"}))
            assert body["code"] == "FORBIDDEN"
            assert await quota(client) == (0, 0)
    assert p.file_server.requests == ["/models/moved.onnx"]


async def test_inline_content_below_its_limit_and_above_it(settings: Settings, tmp_path: Path) -> None:
    async with platform(settings, tmp_path) as p:
        async with httpx.AsyncClient(base_url=p.url) as http:
            owner = await sign_up(http)
        async with mcp_client(p.url, owner.access_token) as client:
            inline = base64.b64encode(MODEL).decode()
            uploaded = structured(
                await client.call_tool("upload_model", {"content_base64": inline, "filename": "m.onnx"})
            )
            assert (await settled(client, uploaded["model_id"]))["status"] == "ready"
            assert uploaded["name"] == "m.onnx"

            too_big = base64.b64encode(bytes(INLINE_MAX_BYTES + 1)).decode()
            body = refusal(await client.call_tool("upload_model", {"content_base64": too_big}))
            assert body["code"] == "VALIDATION_ERROR"
            assert "create_model_upload" in body["error"] and "url" in body["error"]
            not_base64 = refusal(await client.call_tool("upload_model", {"content_base64": "not base64!"}))
            assert not_base64["code"] == "VALIDATION_ERROR"
            both = refusal(
                await client.call_tool(
                    "upload_model", {"content_base64": inline, "url": f"{p.files}/models/mlp.onnx"}
                )
            )
            assert both["code"] == "VALIDATION_ERROR" and "exactly one" in both["error"]
            assert await quota(client) == (len(MODEL), 1)


async def test_a_local_path_works_on_stdio_only(
    settings: Settings, tmp_path: Path, server_env: dict[str, str]
) -> None:
    model_file = tmp_path / "local.onnx"
    model_file.write_bytes(MODEL)
    marker = tmp_path / "pwned"
    pickle_file = tmp_path / "model.pkl"
    pickle_file.write_bytes(pickle.dumps(Pwned(marker)))
    async with platform(settings, tmp_path) as p:
        async with httpx.AsyncClient(base_url=p.url) as http:
            owner = await sign_up(http)
            key = await api_key(http, owner)
        async with mcp_client(p.url, owner.access_token) as client:
            body = refusal(await client.call_tool("upload_model", {"path": str(model_file)}))
            assert body["code"] == "FORBIDDEN" and "aiserve mcp" in body["error"]
            assert await quota(client) == (0, 0)

        stdio = StdioServerParameters(
            command=sys.executable,
            args=["-m", "aiserve_mcp", "mcp"],
            env={**server_env, "AISERVE_API_KEY": key},
        )
        async with Client(stdio) as local:
            uploaded = structured(await local.call_tool("upload_model", {"path": str(model_file)}))
            assert uploaded["name"] == "local.onnx" and uploaded["format"] == "onnx"
            pickled = structured(await local.call_tool("upload_model", {"path": str(pickle_file)}))
            missing = refusal(await local.call_tool("upload_model", {"path": str(tmp_path / "nothing.onnx")}))
            assert missing["code"] == "VALIDATION_ERROR"
        async with mcp_client(p.url, owner.access_token) as client:
            assert (await settled(client, uploaded["model_id"]))["status"] == "ready"
            assert (await settled(client, pickled["model_id"]))["status"] == "stored"
            assert await quota(client) == (len(MODEL) + pickle_file.stat().st_size, 2)
    assert not marker.exists()


async def test_every_door_counts_the_same_and_never_runs_a_pickle(settings: Settings, tmp_path: Path) -> None:
    """REST multipart, MCP (url and inline), A2A (raw and URL file parts) and the agent door: each upload of
    the same file adds its size and one upload to the quota; a pickle through any of them is stored,
    never loaded."""
    async with platform(settings, tmp_path) as p:
        async with httpx.AsyncClient(base_url=p.url) as http:
            owner = await sign_up(http)
            key = await api_key(http, owner)
        hostile = p.file_server.pickle_bytes

        async def rest(content: bytes, filename: str) -> str:
            async with httpx.AsyncClient(base_url=p.url) as http:
                answer = await http.post(
                    "/api/v1/models/upload", files={"model": (filename, content)}, headers=owner.headers
                )
            assert answer.status_code == 201, answer.text
            return str(answer.json()["model_id"])

        async def mcp(arguments: dict[str, Any]) -> str:
            async with mcp_client(p.url, owner.access_token) as client:
                return str(structured(await client.call_tool("upload_model", arguments))["model_id"])

        async def a2a_file(part: Part) -> str:
            async with a2a(p.url, key) as client:
                task = await run(client, request(part))
            assert task.status.state == COMPLETED, task
            [artifact] = task.artifacts
            return str(get_data_parts(artifact.parts)[0]["model_id"])

        async def agent_door(arguments: dict[str, Any]) -> str:
            envelope = {"protocol": "a2a", "from_agent": "me", "action": "upload_model", "data": arguments}
            async with httpx.AsyncClient(base_url=p.url) as http:
                answer = await http.post(AGENT_PATH, json=envelope, headers=owner.headers)
            assert answer.status_code == 200, answer.text
            return str(answer.json()["result"]["model_id"])

        def inline(content: bytes, filename: str) -> dict[str, Any]:
            return {"content_base64": base64.b64encode(content).decode(), "filename": filename}

        uploads = [
            (await rest(MODEL, "mlp.onnx"), await rest(hostile, "model.pkl")),
            (
                await mcp({"url": f"{p.files}/models/mlp.onnx"}),
                await mcp({"url": f"{p.files}/models/model.pkl"}),
            ),
            (await mcp(inline(MODEL, "mlp.onnx")), await mcp(inline(hostile, "model.pkl"))),
            (
                await a2a_file(Part(raw=MODEL, filename="mlp.onnx")),
                await a2a_file(Part(raw=hostile, filename="model.pkl")),
            ),
            (
                await a2a_file(Part(url=f"{p.files}/models/mlp.onnx")),
                await a2a_file(Part(url=f"{p.files}/models/model.pkl")),
            ),
            (await agent_door(inline(MODEL, "mlp.onnx")), await agent_door(inline(hostile, "model.pkl"))),
        ]
        async with mcp_client(p.url, owner.access_token) as client:
            for served, pickled in uploads:
                assert (await settled(client, served))["status"] == "ready"
                stored = await settled(client, pickled)
                assert stored["status"] == "stored" and "pickle" in str(stored["status_reason"]).lower()
            assert await quota(client) == (len(uploads) * (len(MODEL) + len(hostile)), 2 * len(uploads))
    assert not p.marker.exists()


async def test_an_a2a_file_part_uploads_with_progress_and_ends_with_the_model(
    settings: Settings, tmp_path: Path
) -> None:
    async with platform(settings, tmp_path) as p:
        async with httpx.AsyncClient(base_url=p.url) as http:
            key = await api_key(http, await sign_up(http))
        message = request(Part(url=f"{p.files}/models/mlp.onnx"), new_data_part({"name": "from-a2a"}))
        async with a2a(p.url, key, streaming=True) as client:
            stream = await events(client, message)
    updates = [e.status_update.status for e in stream if e.HasField("status_update")]
    data = [part for s in updates for part in get_data_parts(s.message.parts)]
    progress = [part for part in data if isinstance(part, dict) and "progress" in part]
    assert {"progress": len(MODEL), "total": len(MODEL)}.items() <= progress[-1].items()
    assert updates[-1].state == COMPLETED
    [artifact] = [e.artifact_update.artifact for e in stream if e.HasField("artifact_update")]
    model = get_data_parts(artifact.parts)[0]
    assert model["name"] == "from-a2a" and model["format"] == "onnx" and model["status"] == "loading"
