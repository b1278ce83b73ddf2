"""The worker bundle and how rented machines start the worker from it.

The last test runs the exact start-up command a vast.ai rent sent, in a fresh directory with a fresh
Python environment that cannot see this checkout, then serves a prediction through the platform from the
worker it started. It installs the bundle's dependencies with pip (from the machine's cache and the
package index), so it takes a minute or two.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import os
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Mapping
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort  # type: ignore[import-untyped]
import pytest
from pydantic import SecretStr

from aiserve_mcp.app import create_app
from aiserve_mcp.core.settings import Settings
from aiserve_mcp.runtime.wire import decode_arrays, encode_arrays
from aiserve_mcp.worker.bundle import (
    BUNDLE_PATH,
    BundleInfo,
    BundleUnavailable,
    WorkerLaunch,
    startup_script,
    worker_bundle,
)
from tests.conftest import Account, app_client, free_port, funded, serve
from tests.fakes.vastai_server import API_KEY, VastAiState, vastai_app
from tests.gpu.test_market import VAST_OFFERS, vast_offer
from tests.serving.test_models import mlp_bytes, upload

REAL_MARKET = "https://console.vast.ai"
LOCAL_MARKET = "http://127.0.0.1:5000"


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module")
def bundle(bundle_dir: Path) -> BundleInfo:
    return worker_bundle(bundle_dir).build()


def test_the_bundle_is_a_wheel_of_this_installation_with_the_same_bytes_every_time(
    bundle: BundleInfo, tmp_path: Path
) -> None:
    assert (bundle.name, bundle.filename) == ("aiserve", f"aiserve-{bundle.version}-py3-none-any.whl")
    data = bundle.path.read_bytes()
    assert hashlib.sha256(data).hexdigest() == bundle.sha256 and len(data) == bundle.size
    assert worker_bundle(tmp_path).build().sha256 == bundle.sha256  # another process, another data dir

    with zipfile.ZipFile(io.BytesIO(data)) as wheel:
        names = wheel.namelist()
        info = f"aiserve-{bundle.version}.dist-info"
        assert names[-1] == f"{info}/RECORD"
        assert {"aiserve_mcp/worker/app.py", "aiserve_mcp/data/gpu_catalog.json", f"{info}/WHEEL"} <= set(
            names
        )
        assert "aiserve_mcp/storage/migrations/versions/0001_accounts.py" in names
        assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
        metadata = wheel.read(f"{info}/METADATA").decode()
        assert "Name: aiserve\n" in metadata and "Requires-Dist: onnxruntime" in metadata
        torch = [line for line in metadata.splitlines() if line.startswith("Requires-Dist: torch")]
        assert torch and all("extra ==" in line for line in torch)  # torch stays optional
        assert "aiserve = aiserve_mcp.cli:main" in wheel.read(f"{info}/entry_points.txt").decode()
        record = list(csv.reader(io.StringIO(wheel.read(f"{info}/RECORD").decode())))
        assert len(record) == len(names)
        for name, digest, size in record[:-1]:
            content = wheel.read(name)
            assert int(size) == len(content)
            assert digest.startswith("sha256=")
        assert {entry.date_time for entry in wheel.infolist()} == {(1980, 1, 1, 0, 0, 0)}


@pytest.mark.parametrize(
    ("public_url", "market", "expected"),
    [
        ("https://aiserve.example.com/", REAL_MARKET, "https://aiserve.example.com"),
        ("http://93.184.216.34:8080", REAL_MARKET, "http://93.184.216.34:8080"),
        ("https://example.com/platform", REAL_MARKET, "https://example.com/platform"),
        (None, REAL_MARKET, "is not set"),
        ("http://127.0.0.1:8080", REAL_MARKET, "cannot reach"),
        ("http://localhost:8080", REAL_MARKET, "cannot reach"),
        ("http://10.1.2.3:8080", REAL_MARKET, "cannot reach"),
        ("http://192.168.1.5", REAL_MARKET, "cannot reach"),
        ("http://169.254.169.254", REAL_MARKET, "cannot reach"),
        ("http://[::1]:8080", REAL_MARKET, "cannot reach"),
        ("http://aiserve:8080", REAL_MARKET, "cannot reach"),
        ("https://aiserve.internal", REAL_MARKET, "cannot reach"),
        ("https://user:secret@example.com", REAL_MARKET, "credentials"),
        ("ftp://example.com", REAL_MARKET, "absolute http(s) URL"),
        (None, LOCAL_MARKET, "http://127.0.0.1:8080"),  # a marketplace on this host: its machines are here
        ("http://127.0.0.1:9000", LOCAL_MARKET, "http://127.0.0.1:9000"),
    ],
)
def test_which_public_urls_a_rented_machine_can_use(
    bundle_dir: Path, public_url: str | None, market: str, expected: str
) -> None:
    launch = WorkerLaunch(public_url, worker_bundle(bundle_dir), "http://127.0.0.1:8080")
    if expected.startswith("http"):
        assert launch.base_url(market) == expected
        return
    with pytest.raises(BundleUnavailable) as refused:
        launch.base_url(market)
    assert expected in refused.value.message and "AISERVE_PUBLIC_URL" in refused.value.message
    assert refused.value.details == {"setting": "AISERVE_PUBLIC_URL"}


def test_the_local_address_is_where_this_server_listens(tmp_path: Path) -> None:
    everywhere = Settings(data_dir=tmp_path, host="0.0.0.0", port=9123)
    assert WorkerLaunch.from_settings(everywhere).local_url == "http://127.0.0.1:9123"
    assert (
        WorkerLaunch.from_settings(Settings(data_dir=tmp_path, host="::1")).local_url == "http://[::1]:8080"
    )


def test_the_start_up_script_is_posix_sh_within_vast_ai_s_limit(bundle: BundleInfo) -> None:
    url = "https://a-rather-long-host-name.platform.example.com/some/prefix" + BUNDLE_PATH
    script = startup_script(url, bundle)
    assert len(script) < 2000  # vast.ai: args, args_str and onstart together at most 4096 characters
    assert f"H={bundle.sha256}\n" in script and f"U={url}\n" in script
    checked = subprocess.run(["sh", "-n", "-c", script], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    quoted = startup_script("https://example.com/it's $(here)" + BUNDLE_PATH, bundle)
    assert "U='https://example.com/it'\"'\"'s $(here)/api/v1/worker/bundle'" in quoted


async def test_the_bundle_is_served_to_anyone_with_its_hash(settings: Settings) -> None:
    async with app_client(settings) as (_, client):
        wheel = await client.get(BUNDLE_PATH)
        assert wheel.status_code == 200, wheel.text
        digest = hashlib.sha256(wheel.content).hexdigest()
        assert wheel.headers["content-type"] == "application/octet-stream"
        assert wheel.headers["etag"] == f'"{digest}"'
        assert 'filename="aiserve-' in wheel.headers["content-disposition"]
        assert "x-ratelimit-remaining" in wheel.headers  # rate limited like every /api/v1 route
        line = await client.get(BUNDLE_PATH + ".sha256")
        assert (
            line.text
            == f"{digest}  {wheel.headers['content-disposition'].split('filename=')[1].strip(chr(34))}\n"
        )
        assert digest == (await worker_bundle(settings.data_dir).info()).sha256
        document = (await client.get("/openapi.json")).json()
        assert "get" in document["paths"][BUNDLE_PATH] and "get" in document["paths"][BUNDLE_PATH + ".sha256"]


def machine_env(home: Path, **extra: str) -> dict[str, str]:
    """A rented machine's environment: its own home, a python3 that is not this checkout's virtual
    environment, no PYTHONPATH; pip keeps the machine's index settings and its download cache."""
    bin_dir = home / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    python = bin_dir / "python3"
    if not python.exists():
        python.symlink_to(getattr(sys, "_base_executable", sys.executable))
    env = {k: v for k, v in os.environ.items() if k.startswith("PIP_") and k != "PIP_CACHE_DIR"}
    env.update(
        HOME=str(home),
        PATH=f"{bin_dir}:/usr/local/bin:/usr/bin:/bin",
        PIP_CACHE_DIR=os.environ.get("PIP_CACHE_DIR") or str(Path.home() / ".cache" / "pip"),
        LANG="C.UTF-8",
        CUDA_VISIBLE_DEVICES="",
        **extra,
    )
    return env


async def test_a_tampered_download_is_refused_before_anything_is_installed(
    settings: Settings, bundle: BundleInfo, tmp_path: Path
) -> None:
    port = free_port()
    async with serve(create_app(settings), port) as url:
        wrong = BundleInfo(bundle.name, bundle.version, bundle.filename, "0" * 64, bundle.size, bundle.path)
        script = startup_script(url + BUNDLE_PATH, wrong)
        home = tmp_path / "machine"
        process = await asyncio.create_subprocess_exec(
            "sh",
            "-c",
            script,
            cwd=tmp_path,
            env=machine_env(home, AISERVE_WORKER_TOKEN="t0k"),
            stderr=asyncio.subprocess.PIPE,
        )
        _, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode != 0
    assert "refusing the worker bundle" in stderr.decode() and "worker start-up failed" in stderr.decode()
    assert not (home / ".aiserve-worker" / "venv").exists()
    assert not (home / ".aiserve-worker" / bundle.filename).exists()

    unset = await asyncio.create_subprocess_exec(
        "sh", "-c", script, cwd=tmp_path, env=machine_env(home), stderr=asyncio.subprocess.PIPE
    )
    _, stderr = await asyncio.wait_for(unset.communicate(), 30)
    assert unset.returncode == 1 and "AISERVE_WORKER_TOKEN is not set" in stderr.decode()


async def test_a_rent_without_a_usable_public_url_is_refused_before_anything_is_held(
    settings: Settings,
) -> None:
    for public_url in (None, "http://10.0.0.5:8080"):
        configured = settings.model_copy(
            update={
                "vastai_url": REAL_MARKET,  # never reached: the rent is refused first
                "vastai_api_key": SecretStr(API_KEY),
                "billing_sandbox": True,
                "public_url": public_url,
            }
        )
        async with app_client(configured) as (_, client):
            owner = await funded(client, 100)
            refused = await client.post("/api/v1/gpu/instances/vastai/101", json={}, headers=owner.headers)
            assert refused.status_code == 503, refused.text
            body = refused.json()
            assert body["code"] == "SERVICE_UNAVAILABLE" and "AISERVE_PUBLIC_URL" in body["error"]
            assert body["details"]["setting"] == "AISERVE_PUBLIC_URL"
            contracts = await client.get("/api/v1/gpu/contracts", headers=owner.headers)
            assert contracts.json()["count"] == 0, contracts.text


def tail(log: Path) -> str:
    return log.read_text()[-3000:]


async def until_answers(url: str, token: str, process: asyncio.subprocess.Process, log: Path) -> float:
    """Seconds until the worker at ``url`` answers its health check with ``token``."""
    started = time.perf_counter()
    async with httpx.AsyncClient(timeout=2) as http:
        while time.perf_counter() - started < 540:
            if process.returncode is not None:
                raise AssertionError(f"the start-up command ended ({process.returncode}):\n{tail(log)}")
            try:
                answer = await http.get(f"{url}/health", headers={"Authorization": f"Bearer {token}"})
                if answer.status_code == 200:
                    return time.perf_counter() - started
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.5)
    raise AssertionError(f"the worker never answered:\n{tail(log)}")


async def test_the_start_up_command_a_rent_sent_installs_the_bundle_and_serves_predictions(
    settings: Settings, tmp_path: Path
) -> None:
    started = time.perf_counter()
    vast = VastAiState(offers=[vast_offer(s) for s in VAST_OFFERS], shows_until_running=0)
    worker_port, port = free_port(), free_port()
    vast.host_port = worker_port  # where the "rented machine" publishes its worker port
    async with serve(vastai_app(vast)) as vast_url:
        configured = settings.model_copy(
            update={
                "vastai_url": vast_url,
                "vastai_api_key": SecretStr(API_KEY),
                "billing_sandbox": True,
                "proxy_allow_private": True,  # the "rented" worker listens on this machine's loopback
                "public_url": f"http://127.0.0.1:{port}",
                "port": port,
            }
        )
        async with (
            serve(create_app(configured), port) as url,
            httpx.AsyncClient(base_url=url, timeout=60) as client,
        ):
            owner = await funded(client)
            rented = await client.post(
                "/api/v1/gpu/instances/vastai/vastai:104", json={"duration_hours": 1}, headers=owner.headers
            )
            assert rented.status_code == 201, rented.text
            contract_id = rented.json()["contract_id"]
            sent = vast.create_payloads["104"]
            command, token = sent["onstart"], sent["env"]["AISERVE_WORKER_TOKEN"]
            assert f"U={url}{BUNDLE_PATH}\n" in command

            machine = tmp_path / "machine"
            machine.mkdir()
            log = tmp_path / "onstart.log"
            env = machine_env(
                machine,
                AISERVE_WORKER_TOKEN=token,
                AISERVE_WORKER_HOST="127.0.0.1",
                AISERVE_WORKER_PORT=str(worker_port),
            )
            with log.open("wb") as out:
                process = await asyncio.create_subprocess_exec(
                    "sh", "-c", command, cwd=machine, env=env, stdout=out, stderr=out, start_new_session=True
                )
            try:
                install_s = await until_answers(f"http://127.0.0.1:{worker_port}", token, process, log)
                venv = machine / ".aiserve-worker" / "venv"
                where = await asyncio.create_subprocess_exec(
                    str(venv / "bin" / "python"),
                    "-c",
                    "import aiserve_mcp; print(aiserve_mcp.__file__)",
                    cwd=machine,
                    env=env,
                    stdout=asyncio.subprocess.PIPE,
                )
                imported = (await where.communicate())[0].decode().strip()
                assert imported.startswith(str(venv)), imported  # the bundle, not this checkout
                assert not list(venv.glob("lib/python*/site-packages/torch"))  # torch stays optional

                model = mlp_bytes(2)
                model_id = (await upload(client, owner, model, gpu_required="true")).json()["model_id"]
                request = {"inputs": {"input": [[1.0, 2.0, 3.0, 4.0]]}}
                routed = await until_routed(client, owner, f"/api/v1/models/{model_id}/predict", request)
                # It reached the rented worker, which refuses a GPU-only model on a machine without a GPU.
                assert "no GPU it can use" in routed.json()["error"], routed.text

                async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{worker_port}") as worker:
                    placed = await worker.put(
                        "/models/e2e",
                        params={"format": "onnx"},
                        content=model,
                        headers={"Authorization": f"Bearer {token}"},
                    )
                    assert placed.status_code == 200, placed.text
                x = np.array([[1.0, 2.0, 3.0, 4.0], [0.5, -1.0, 2.0, 0.0]], dtype=np.float32)
                answer = await client.post(
                    "/api/v1/gpu/proxy",
                    json={
                        "method": "POST",
                        "path": "/models/e2e/infer",
                        "payload": {"inputs": encode_arrays({"input": x})},
                        "target": contract_id,
                    },
                    headers=owner.headers,
                )
                assert answer.status_code == 200, answer.text
                expected = ort.InferenceSession(model).run(None, {"input": x})[0]
                np.testing.assert_allclose(
                    decode_arrays(answer.json()["outputs"])["output"], expected, rtol=1e-5
                )
                print(
                    f"\nworker bundle end to end: install and start {install_s:.1f} s, "
                    f"whole test {time.perf_counter() - started:.1f} s",
                    file=sys.stderr,
                )
            finally:
                if process.returncode is None:
                    os.killpg(process.pid, 15)
                    await asyncio.wait_for(process.wait(), 30)
                shutil.rmtree(machine, ignore_errors=True)
            gone = await client.delete(f"/api/v1/gpu/instances/vastai/{contract_id}", headers=owner.headers)
            assert gone.status_code == 200, gone.text


async def until_routed(
    client: httpx.AsyncClient, owner: Account, path: str, request: Mapping[str, object]
) -> httpx.Response:
    """The platform's answer once it routes to the worker (it probes a worker that never answered at
    most every few seconds, answering 503 "still starting" meanwhile)."""
    for _ in range(40):
        answer = await client.post(path, json=request, headers=owner.headers)
        if answer.status_code != 503 or "no GPU it can use" in answer.text:
            return answer
        await asyncio.sleep(0.5)
    return answer
