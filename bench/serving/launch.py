"""Starting a server pinned to CPU 0 (a peer from the kit, or ``aiserve serve``), and stopping its tree."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import httpx

from bench.serving.stacks import AISERVE_STACKS, REPO, AiserveStack

PASSWORD = "bench-serving-password"  # noqa: S105 (a throwaway account)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def stop(launched: Launched, bp: Any) -> None:
    """SIGTERM the session we started and every process of its tree, then SIGKILL stragglers (by pid);
    drop the server's database, if it had one."""
    if launched.proc is not None:
        kill_tree(launched.proc, bp)
    if launched.database is not None:
        drop_database(launched.database)


def kill_tree(proc: subprocess.Popen[bytes], bp: Any) -> None:
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
    """A started server (``proc`` ``None`` when it could not be started): process, predict URL, body file,
    extra headers, the CPUs for the load, startup seconds and sample answer; for aiserve its base URL, model
    id and PostgreSQL database (if any)."""

    def __init__(self, proc: subprocess.Popen[bytes] | None, log: Path) -> None:
        self.proc = proc
        self.log = log
        self.base = ""
        self.url = ""
        self.model_id = ""
        self.load_cpus = "1"
        self.database: str | None = None
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


def serve_help(src: Path) -> str:
    """``aiserve serve --help`` of the checkout ``src`` (to see which flags it has)."""
    done = subprocess.run(
        [sys.executable, "-m", "aiserve_mcp", "serve", "--help"],
        capture_output=True,
        text=True,
        check=False,
        env=dict(os.environ, PYTHONPATH=str(src)),
        cwd=src,  # `-m` puts the working directory first on the path
    )
    return done.stdout + done.stderr


def fresh_database(name: str) -> str:
    """A new PostgreSQL database on 127.0.0.1 (role ``postgres``) for one server; its name."""
    database = f"bench_{name}_{uuid.uuid4().hex[:8]}"
    subprocess.run(["createdb", "-h", "127.0.0.1", "-U", "postgres", database], check=True)  # noqa: S603,S607
    return database


def drop_database(database: str) -> None:
    subprocess.run(  # noqa: S603
        ["dropdb", "-h", "127.0.0.1", "-U", "postgres", "--if-exists", database],  # noqa: S607
        check=False,
        capture_output=True,
    )


def aiserve_env(stack: AiserveStack, data_dir: Path, database: str | None, src: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AISERVE_")}
    env.update(
        PYTHONPATH=str(src),
        AISERVE_DATA_DIR=str(data_dir),
        AISERVE_MODEL_THREADS="1",
        AISERVE_RATE_LIMIT="100000000",
        AISERVE_MODEL_MAX_BATCH=str(stack.max_batch),
        AISERVE_LOG_LEVEL="WARNING",
    )
    if database is not None:
        env.update(
            AISERVE_DATABASE_URL=f"postgresql+asyncpg://postgres@127.0.0.1:5432/{database}",
            AISERVE_REDIS_URL="redis://127.0.0.1:6379/0",
            AISERVE_REDIS_PREFIX=f"{database}:",
        )
    return env


def start_aiserve(
    name: str,
    run_dir: Path,
    model_path: str,
    body_file: str,
    timeout: int,
    model_name: str = "mlp",
    src: Path = REPO,
) -> Launched:
    """``aiserve serve`` of the checkout ``src`` (this one by default) pinned as ``AISERVE_STACKS[name]``
    says; sign up, API key, upload the model as ``model_name``, wait for ``ready``, check one prediction
    with ``body_file`` (none when empty; retried until the deadline, as with several processes another
    one may still be loading the model)."""
    stack = AISERVE_STACKS[name]
    port = free_port()
    data_dir = Path(tempfile.mkdtemp(prefix=f"{name}_data_", dir=run_dir))
    log = run_dir / f"{name}.log"
    command = ["taskset", "-c", stack.server_cpus, sys.executable, "-m", "aiserve_mcp", "serve"]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    if stack.workers > 1:
        if "--workers" not in serve_help(src):
            launched = Launched(None, log)
            launched.error = f"needs `aiserve serve --workers`, which {src} does not have"
            return launched
        command += ["--workers", str(stack.workers)]
    database = fresh_database(name) if stack.shared_state else None
    started = time.time()
    with open(log, "w") as out:
        proc = subprocess.Popen(  # noqa: S603
            command,
            cwd=run_dir,
            env=aiserve_env(stack, data_dir, database, src),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    launched = Launched(proc, log)
    launched.database, launched.load_cpus = database, stack.load_cpus
    launched.body = body_file
    launched.base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=launched.base, timeout=30) as http:
            while True:
                if proc.poll() is not None or time.time() - started > timeout:
                    raise RuntimeError(f"server not up (exit code {proc.poll()}); see log {log}")
                try:
                    if http.get("/v2/health/live").status_code < 500:
                        break
                except httpx.TransportError:
                    time.sleep(0.1)
            provision(http, launched, model_path, model_name, started + timeout)
            launched.url = f"{launched.base}/api/v1/models/{launched.model_id}/predict"
            if body_file:
                launched.sample = sample_predict(http, launched, body_file, started + timeout)
            launched.startup_s = round(time.time() - started, 2)
    except Exception as exc:  # a row with the error, not a crash
        launched.error = f"{type(exc).__name__}: {exc}"
    return launched


def sample_predict(http: httpx.Client, launched: Launched, body_file: str, deadline: float) -> str:
    """One prediction answered 200 with outputs (retried until ``deadline``); its start."""
    while True:
        answer = http.post(
            launched.url,
            content=Path(body_file).read_bytes(),
            headers={"Content-Type": "application/json", **launched.headers},
        )
        if answer.status_code == 200 and "outputs" in answer.json():
            return answer.text[:160]
        if time.time() > deadline:
            raise RuntimeError(f"sample predict: {answer.status_code} {answer.text[:200]}")
        time.sleep(0.2)


def provision(
    http: httpx.Client, launched: Launched, model_path: str, model_name: str, deadline: float
) -> None:
    """A new account with an API key (into ``launched.headers``) owning the model, ready (its id into
    ``launched.model_id``)."""
    email = f"bench-{uuid.uuid4().hex[:8]}@example.com"
    answer = http.post("/api/v1/auth/register", json={"email": email, "password": PASSWORD, "name": "B"})
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
            files={"model": (f"{model_name}.onnx", model_file, "application/octet-stream")},
            data={"name": model_name},
            headers=bearer,
        )
    if answer.status_code != 201:
        raise RuntimeError(f"upload: {answer.status_code} {answer.text[:200]}")
    launched.model_id = answer.json()["model_id"]
    status = "loading"
    while status == "loading" and time.time() < deadline:
        time.sleep(0.05)
        status = http.get(f"/api/v1/models/{launched.model_id}", headers=launched.headers).json()["status"]
    if status != "ready":
        raise RuntimeError(f"model status {status!r}")
