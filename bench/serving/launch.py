"""Starting a server pinned to CPU 0 (a peer from the kit, or ``aiserve serve``), and stopping its tree."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import httpx

from bench.serving.stacks import AISERVE_STACKS, REPO

PASSWORD = "bench-serving-password"  # noqa: S105 (a throwaway account)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def stop(proc: subprocess.Popen[bytes], bp: Any) -> None:
    """SIGTERM the session we started and every process of its tree, then SIGKILL stragglers (by pid)."""
    pids: list[int] = bp.tree_pids(proc.pid)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    for _ in range(30):
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    time.sleep(1)
    for pid in [*bp.tree_pids(proc.pid), *pids]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


def post(url: str, data: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json", **headers})  # noqa: S310
    with urllib.request.urlopen(request, timeout=5) as answer:  # noqa: S310 (loopback)
        status: int = answer.status
        return status, answer.read()


class Launched:
    """A started server: process, predict URL, body file, extra headers, startup seconds and sample answer."""

    def __init__(self, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.proc = proc
        self.log = log
        self.url = ""
        self.body = ""
        self.headers: dict[str, str] = {}
        self.metrics_url: str | None = None
        self.startup_s: float | None = None
        self.sample: str | None = None
        self.error: str | None = None


def start_peer(
    name: str, spec: dict[str, Any], run_dir: Path, body_files: dict[str, str], timeout: int
) -> Launched:
    log = run_dir / f"{name}.log"
    started = time.time()
    with open(log, "w") as out:
        proc = subprocess.Popen(  # noqa: S603 (the kit's command)
            ["taskset", "-c", "0", *spec["cmd"]],  # noqa: S607
            cwd=run_dir,
            env=dict(os.environ, **spec["env"]),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    launched = Launched(proc, log)
    launched.url, launched.body = spec["url"], body_files[spec["body"]]
    launched.metrics_url = spec.get("metrics_url")
    data = Path(launched.body).read_bytes()
    while time.time() - started < timeout and proc.poll() is None:
        try:
            status, answer = post(launched.url, data, {})
            if status == 200:
                launched.startup_s = round(time.time() - started, 2)
                launched.sample = answer[:160].decode(errors="replace")
                return launched
        except Exception:  # noqa: S110 (not up yet)
            pass
        time.sleep(0.25)
    launched.error = f"did not answer 200 (exit code {proc.poll()}); see log {log}"
    return launched


def start_aiserve(name: str, run_dir: Path, model_path: str, body_file: str, timeout: int) -> Launched:
    """``aiserve serve`` on CPU 0; sign up, API key, upload, wait for ``ready``, check one prediction."""
    port = free_port()
    data_dir = Path(tempfile.mkdtemp(prefix=f"{name}_data_", dir=run_dir))
    env = {k: v for k, v in os.environ.items() if not k.startswith("AISERVE_")}
    env.update(
        AISERVE_DATA_DIR=str(data_dir),
        AISERVE_MODEL_THREADS="1",
        AISERVE_RATE_LIMIT="100000000",
        AISERVE_MODEL_MAX_BATCH=str(AISERVE_STACKS[name]),
        AISERVE_LOG_LEVEL="WARNING",
    )
    executable = REPO / ".venv" / "bin" / "aiserve"
    command = str(executable) if executable.exists() else (shutil.which("aiserve") or "aiserve")
    log = run_dir / f"{name}.log"
    started = time.time()
    with open(log, "w") as out:
        proc = subprocess.Popen(  # noqa: S603
            ["taskset", "-c", "0", command, "serve", "--host", "127.0.0.1", "--port", str(port)],  # noqa: S607
            cwd=run_dir,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    launched = Launched(proc, log)
    launched.body = body_file
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, timeout=30) as http:
            while True:
                if proc.poll() is not None or time.time() - started > timeout:
                    raise RuntimeError(f"server not up (exit code {proc.poll()}); see log {log}")
                try:
                    if http.get("/v2/health/live").status_code < 500:
                        break
                except httpx.TransportError:
                    time.sleep(0.1)
            email = f"bench-{uuid.uuid4().hex[:8]}@example.com"
            answer = http.post(
                "/api/v1/auth/register", json={"email": email, "password": PASSWORD, "name": "B"}
            )
            if answer.status_code != 201:
                raise RuntimeError(f"register: {answer.status_code} {answer.text[:200]}")
            answer = http.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
            if answer.status_code != 200:
                raise RuntimeError(f"login: {answer.status_code} {answer.text[:200]}")
            bearer = {"Authorization": f"Bearer {answer.json()['tokens']['access_token']}"}
            answer = http.post("/api/v1/auth/apikey", json={"name": "bench"}, headers=bearer)
            if answer.status_code != 201:
                raise RuntimeError(f"API key: {answer.status_code} {answer.text[:200]}")
            launched.headers = {"X-API-Key": answer.json()["api_key"]}
            with open(model_path, "rb") as model_file:
                answer = http.post(
                    "/api/v1/models/upload",
                    files={"model": ("mlp.onnx", model_file, "application/octet-stream")},
                    data={"name": "mlp"},
                    headers=bearer,
                )
            if answer.status_code != 201:
                raise RuntimeError(f"upload: {answer.status_code} {answer.text[:200]}")
            model_id = answer.json()["model_id"]
            status = "loading"
            while status == "loading" and time.time() - started < timeout:
                time.sleep(0.05)
                status = http.get(f"/api/v1/models/{model_id}", headers=launched.headers).json()["status"]
            if status != "ready":
                raise RuntimeError(f"model status {status!r}")
            launched.url = f"{base}/api/v1/models/{model_id}/predict"
            answer = http.post(
                launched.url,
                content=Path(body_file).read_bytes(),
                headers={"Content-Type": "application/json", **launched.headers},
            )
            if answer.status_code != 200 or "outputs" not in answer.json():
                raise RuntimeError(f"sample predict: {answer.status_code} {answer.text[:200]}")
            launched.startup_s = round(time.time() - started, 2)
            launched.sample = answer.text[:160]
    except Exception as exc:  # a row with the error, not a crash
        launched.error = f"{type(exc).__name__}: {exc}"
    return launched
