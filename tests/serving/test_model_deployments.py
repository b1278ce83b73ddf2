"""How models are deployed: TorchScript in isolated worker processes, replicas, per-model batching settings,
and GPU-only models sent to the owner's rented GPU instances."""

from __future__ import annotations

import asyncio
import io
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort  # type: ignore[import-untyped]
import pytest
import torch
from pydantic import SecretStr

from aiserve_mcp.core.settings import Settings
from tests.conftest import Account, app_client, funded, serve, sign_up
from tests.fakes.vastai_server import API_KEY, VastAiState, vastai_app
from tests.gpu.test_market import VAST_OFFERS, vast_offer
from tests.serving.test_models import mlp_bytes, until_settled, upload


class Scaled(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.fc(x) * scale
        return y, y.argmax(dim=-1)


def torchscript() -> tuple[bytes, torch.jit.ScriptModule]:
    scripted = torch.jit.script(Scaled())
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    return buffer.getvalue(), scripted


def worker_children() -> list[int]:
    """Pids of this process's children that run ``aiserve worker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        ppid = int(stat[stat.rfind(")") + 2 :].split()[1])
        if ppid == os.getpid() and b"worker" in cmdline and b"aiserve_mcp" in cmdline:
            found.append(int(entry.name))
    return found


async def until_workers(count: int) -> list[int]:
    for _ in range(200):
        pids = worker_children()
        if len(pids) == count:
            return pids
        await asyncio.sleep(0.05)
    raise AssertionError(f"expected {count} worker processes, found {worker_children()}")


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(settings.model_copy(update={"model_max_replicas": 3})) as (_, http):
        yield http


async def settled(client: httpx.AsyncClient, owner: Account, model_id: str) -> dict[str, object]:
    details = await until_settled(client, owner, model_id)
    assert details["status"] == "ready", details["status_reason"]
    return details


async def test_torchscript_runs_only_in_isolated_workers_and_matches_torch(client: httpx.AsyncClient) -> None:
    owner = await sign_up(client)
    content, scripted = torchscript()
    answer = await upload(client, owner, content, filename="scaled.pt")
    assert answer.status_code == 201, answer.text
    model_id = answer.json()["model_id"]
    details = await settled(client, owner, model_id)
    assert details["format"] == "pytorch" and details["variant"] == "torchscript"
    assert details["signature"] == {
        "inputs": [
            {"name": "x", "dtype": "any", "shape": None},
            {"name": "scale", "dtype": "any", "shape": None},
        ],
        "outputs": [],
    }
    (worker,) = await until_workers(1)
    assert worker != os.getpid()

    x = [[0.5, -1.0, 2.0, 0.25], [1.5, 0.0, -0.5, 3.0]]
    path = f"/api/v1/models/{model_id}/predict"
    out = await client.post(path, json={"inputs": {"x": x, "scale": [2.0]}}, headers=owner.headers)
    assert out.status_code == 200, out.text
    body = out.json()
    with torch.inference_mode():
        expected, classes = scripted(torch.tensor(x, dtype=torch.float32), torch.tensor([2.0]))
    assert np.array_equal(np.asarray(body["outputs"]["output_0"], dtype=np.float32), expected.numpy())
    assert body["outputs"]["output_1"] == classes.tolist()
    assert body["metadata"] == {
        "format": "pytorch",
        "runtime": "torch",
        "version": "1.0.0",
        "used_gpu": False,
    }

    wrong = await client.post(
        path, json={"inputs": {"x": [[1.0, 2.0]], "scale": [1.0]}}, headers=owner.headers
    )
    assert wrong.status_code == 400 and wrong.json()["code"] == "VALIDATION_ERROR"
    assert "could not run" in wrong.json()["error"]
    missing = await client.post(path, json={"inputs": {"x": x}}, headers=owner.headers)
    assert missing.status_code == 400 and "missing inputs ['scale']" in missing.json()["error"]

    more = await client.patch(f"/api/v1/models/{model_id}", json={"replicas": 2}, headers=owner.headers)
    assert more.status_code == 200 and more.json()["replicas"] == 2, more.text
    await settled(client, owner, model_id)
    pids = await until_workers(2)
    assert worker not in pids  # the old replica was stopped, two new ones serve
    again = await client.post(path, json={"inputs": {"x": x, "scale": [2.0]}}, headers=owner.headers)
    assert again.json()["outputs"] == body["outputs"]

    assert (await client.delete(f"/api/v1/models/{model_id}", headers=owner.headers)).status_code == 200
    await until_workers(0)


async def test_replicas_and_batching_settings_per_model(client: httpx.AsyncClient) -> None:
    owner = await sign_up(client)
    content = mlp_bytes(11)
    fields = {"replicas": "2", "max_batch_size": "8", "max_queue_delay_ms": "1000"}
    model_id = (await upload(client, owner, content, **fields)).json()["model_id"]
    details = await settled(client, owner, model_id)
    assert (details["replicas"], details["max_batch_size"], details["max_queue_delay_ms"]) == (2, 8, 1000.0)

    rows = np.random.default_rng(1).standard_normal((8, 4)).astype(np.float32)
    session = ort.InferenceSession(content)

    async def predict_each() -> None:
        answers = await asyncio.gather(
            *(
                client.post(
                    f"/api/v1/models/{model_id}/predict",
                    json={"inputs": {"input": [row.tolist()]}},
                    headers=owner.headers,
                )
                for row in rows
            )
        )
        for answer, row in zip(answers, rows, strict=True):
            expected = session.run(None, {"input": row[np.newaxis]})[0]
            assert np.array_equal(np.asarray(answer.json()["outputs"]["output"], dtype=np.float32), expected)

    async def runs() -> float:
        exposition = (await client.get("/metrics")).text
        line = next(
            line
            for line in exposition.splitlines()
            if line.startswith(f'aiserve_model_batch_requests_count{{model="{model_id}"}}')
        )
        return float(line.split()[-1])

    await predict_each()
    assert await runs() == 1  # the replica waited for the batch to fill: one run carried all eight

    unbatched = await client.patch(
        f"/api/v1/models/{model_id}",
        json={"max_batch_size": 1, "max_queue_delay_ms": 0},
        headers=owner.headers,
    )
    assert unbatched.status_code == 200, unbatched.text
    await settled(client, owner, model_id)
    await predict_each()
    assert await runs() == 1 + 8

    too_many = await client.patch(f"/api/v1/models/{model_id}", json={"replicas": 4}, headers=owner.headers)
    assert too_many.status_code == 400 and "at most 3" in too_many.json()["error"]
    negative = await client.patch(
        f"/api/v1/models/{model_id}", json={"max_queue_delay_ms": -1}, headers=owner.headers
    )
    assert negative.status_code == 400
    intruder = await sign_up(client)
    stolen = await client.patch(f"/api/v1/models/{model_id}", json={"replicas": 1}, headers=intruder.headers)
    assert stolen.status_code == 404


async def start_worker_with_token(token: str) -> tuple[asyncio.subprocess.Process, int]:
    """What a rented vast.ai machine runs: ``aiserve worker`` with the token the rent put in its env."""
    env = {"PATH": os.environ["PATH"], "AISERVE_WORKER_TOKEN": token, "CUDA_VISIBLE_DEVICES": ""}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "aiserve_mcp", "worker", "--host", "127.0.0.1", "--port", "0"),
        env=env,
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), 60)
    return process, httpx.URL(json.loads(line)["listening"]).port or 0


async def test_gpu_only_models_go_to_rented_gpu_instances_or_answer_503(settings: Settings) -> None:
    vast = VastAiState(offers=[vast_offer(s) for s in VAST_OFFERS], shows_until_running=0)
    async with serve(vastai_app(vast)) as vast_url:
        market = settings.model_copy(
            update={
                "vastai_url": vast_url,
                "vastai_api_key": SecretStr(API_KEY),
                "billing_sandbox": True,
                "proxy_allow_private": True,  # the "rented" worker listens on this machine's loopback
            }
        )
        async with app_client(market) as (_, http):
            await gpu_routing(http, vast)


async def gpu_routing(http: httpx.AsyncClient, vast: VastAiState) -> None:
    owner = await funded(http)
    model_id = (await upload(http, owner, mlp_bytes(2), gpu_required="true")).json()["model_id"]
    details = await settled(http, owner, model_id)
    assert details["gpu_required"] is True and "requires a GPU" in str(details["status_reason"])
    path = f"/api/v1/models/{model_id}/predict"
    request = {"inputs": {"input": [[1.0, 2.0, 3.0, 4.0]]}}
    refused = await http.post(path, json=request, headers=owner.headers)
    assert refused.status_code == 503 and "no running GPU instance" in refused.json()["error"], refused.text

    rented = await http.post(
        "/api/v1/gpu/instances/vastai/vastai:104", json={"duration_hours": 1}, headers=owner.headers
    )
    assert rented.status_code == 201, rented.text
    token = vast.create_payloads["104"]["env"]["AISERVE_WORKER_TOKEN"]
    process, port = await start_worker_with_token(token)
    try:
        vast.host_port = port
        routed = await http.post(path, json=request, headers=owner.headers)
        # The request reached the rented worker, which refused to run a GPU-only model on its CPU.
        assert routed.status_code == 503 and "no GPU it can use" in routed.json()["error"], routed.text
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as worker:
            health = await worker.get("/health", headers={"Authorization": f"Bearer {token}"})
            assert health.json()["device"] == "cpu"
            assert (await worker.get("/health")).status_code == 401
    finally:
        process.terminate()
        await process.wait()
