"""Serving an ONNX MLP over HTTP: aiserve's prediction route against peer serving stacks, in one run.

The peers come from the shared peer kit (``--peers-kit``, its README lists the install recipe): ``raw``
(a bare ASGI app with orjson around onnxruntime, the floor), ``raw_batch`` (the same with a greedy
micro-batcher), ``fastapi``, ``triton`` / ``triton_batch`` (PyTriton, dynamic batcher 1 ms) and
``mlserver`` / ``mlserver_batch`` (max batch 64, 2 ms). aiserve runs as ``aiserve serve`` with
authentication on (a user signs up, creates an API key and uploads the model over REST; every prediction
carries ``X-API-Key``), the rate limiter on but never refusing, SQLite in a fresh data directory and
``AISERVE_MODEL_THREADS=1``; ``aiserve`` has ``AISERVE_MODEL_MAX_BATCH=1`` (no coalescing) and
``aiserve_batch`` 64. Both models are the kit's MLPs built with ``ort_floor.make_mlp``: small 4-64-2 and
big 256-1024-1024-10, one row of features per request.

Every server is pinned to CPU 0 (``taskset -c 0``: one core for HTTP and inference, onnxruntime with one
intra-op thread) and the load generator ``hey`` to CPU 1: 3 s warm-up at c=8, then ``--duration`` seconds
at each concurrency of ``--conc``. Per stack x model x concurrency:

- req/s: HTTP 200 answers per second of the run; p50 / p99 latency from hey; non-200 answers;
- CPU µs/req: utime + stime of the server's whole process tree (``/proc/<pid>/stat``) over the run,
  divided by the 200 answers;
- tax at c=1: p50 latency minus the bare ``session.run`` time (measured in the same run, pinned to CPU 0,
  batch 1, median of ``--floor-iters`` calls), i.e. what the HTTP stack adds around the model;
- ratio to floor: req/s divided by ``raw``'s at the same concurrency.

Then the project's targets are checked (pass / fail) and everything is written to ``--out`` (JSON).
A stack that does not start is a row with its error (its log is in the run directory).

Run: ``.venv/bin/python -m bench.serving --venvs /path/to/venvs`` (from the repository root; the venvs
``base``, ``mlserver`` and ``pytriton`` as the kit's README makes them, ``hey`` on the PATH), e.g.
``--duration 5 --only raw,raw_batch,aiserve,aiserve_batch --model-set small`` for a quick look.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import re
import shutil
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

REPO = Path(__file__).resolve().parent.parent
SIZES = {"small": [4, 64, 2], "big": [256, 1024, 1024, 10]}
PEER_STACKS = ["raw", "raw_batch", "fastapi", "triton", "triton_batch", "mlserver", "mlserver_batch"]
AISERVE_STACKS = {"aiserve": 1, "aiserve_batch": 64}  # stack -> AISERVE_MODEL_MAX_BATCH
ALL_STACKS = PEER_STACKS + list(AISERVE_STACKS)
PASSWORD = "bench-serving-password"  # noqa: S105 (a throwaway account)
KIT_FILES = ("raw_asgi.py", "fastapi_app.py", "pytriton_app.py")

FLOOR_SCRIPT = """
import json, os, statistics, sys, time
import numpy as np
import onnxruntime as ort
os.sched_setaffinity(0, {0})
path, nfeat, iters = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
so = ort.SessionOptions()
so.intra_op_num_threads = 1
so.inter_op_num_threads = 1
sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
feed = {sess.get_inputs()[0].name: np.asarray([[round(0.01 * i, 3) for i in range(nfeat)]], dtype=np.float32)}
for _ in range(max(200, iters // 10)):
    sess.run(None, feed)
ts = []
for _ in range(iters):
    t0 = time.perf_counter_ns()
    sess.run(None, feed)
    ts.append((time.perf_counter_ns() - t0) / 1000)
ts.sort()
print(json.dumps({
    "run_p50_us": round(statistics.median(ts), 1), "run_p99_us": round(ts[int(0.99 * len(ts))], 1),
    "run_min_us": round(ts[0], 1), "iters": iters, "onnxruntime": ort.__version__,
}))
"""


def load_kit(kit: Path) -> tuple[Any, Any]:
    """The kit's ``bench_peers`` and ``ort_floor`` modules (untyped, hence ``Any``)."""
    sys.path.insert(0, str(kit))
    return importlib.import_module("bench_peers"), importlib.import_module("ort_floor")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def cpu_ticks(pids: list[int]) -> dict[int, int]:
    """utime + stime (clock ticks) of each pid still alive."""
    out: dict[int, int] = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()  # fields from 3 (state) on
        out[pid] = int(fields[11]) + int(fields[12])
    return out


def hey(
    url: str, body_file: str, conc: int, duration: int, headers: dict[str, str], bp: Any
) -> dict[str, Any]:
    """hey pinned to CPU 1 as the kit runs it, plus extra headers; the kit's parse and the run's length."""
    cmd = ["taskset", "-c", "1", "hey", "-z", f"{duration}s", "-c", str(conc), "-m", "POST"]
    cmd += ["-T", "application/json", "-D", body_file]
    for name, value in headers.items():
        cmd += ["-H", f"{name}: {value}"]
    done = subprocess.run([*cmd, url], capture_output=True, text=True, check=False)  # noqa: S603
    result: dict[str, Any] = bp.parse_hey(done.stdout)
    total = re.search(r"Total:\s+([\d.]+) secs", done.stdout)
    result["total_s"] = float(total.group(1)) if total else float(duration)
    result["hey_cmd"] = " ".join([*cmd, url]).replace(headers.get("X-API-Key") or "\0", "<key>")
    if not done.stdout.strip():
        result["errors"] = (done.stderr or "hey printed nothing")[:200]
    return result


def floor_us(model_path: str, nfeat: int, iters: int) -> dict[str, Any]:
    """Bare ``session.run`` for one row, in a subprocess pinned to CPU 0 (one intra-op thread)."""
    done = subprocess.run(  # noqa: S603 (this interpreter, a fixed script)
        [sys.executable, "-c", FLOOR_SCRIPT, model_path, str(nfeat), str(iters)],
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


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


def measure(
    launched: Launched, name: str, model: str, concs: list[int], duration: int, bp: Any
) -> list[dict[str, Any]]:
    row: dict[str, Any] = {"stack": name, "model": model, "startup_s": launched.startup_s}
    row["sample_response"] = launched.sample
    if launched.error:
        return [dict(row, error=launched.error)]
    hey(launched.url, launched.body, 8, 3, launched.headers, bp)  # warm-up
    tick = os.sysconf("SC_CLK_TCK")
    rows = []
    for conc in concs:
        before = cpu_ticks(bp.tree_pids(launched.proc.pid))
        result = hey(launched.url, launched.body, conc, duration, launched.headers, bp)
        pids = bp.tree_pids(launched.proc.pid)
        after = cpu_ticks(pids)
        cpu_s = sum(t - before.get(p, 0) for p, t in after.items()) / tick
        ok = result["ok"]
        out = dict(row, conc=conc, **result)
        out.update(
            ok_rps=round(ok / result["total_s"], 1),
            cpu_s=round(cpu_s, 2),
            cpu_us_per_req=round(cpu_s * 1e6 / ok, 1) if ok else None,
            # closed loop: each of `conc` connections has one request in flight, so the mean round trip is
            # conc * time / answers, exact where hey's percentiles are rounded to 0.1 ms
            mean_rt_us=round(conc * result["total_s"] * 1e6 / max(1, ok + result["non200"]), 1),
            rss_mb=bp.rss_mb(pids),
            nprocs=len(pids),
        )
        if launched.metrics_url:
            try:
                with urllib.request.urlopen(launched.metrics_url, timeout=3) as answer:  # noqa: S310
                    text = answer.read().decode()
                out["server_metrics"] = [
                    line
                    for line in text.splitlines()
                    if line.startswith(("nv_inference_count", "nv_inference_exec"))
                ]
            except Exception as exc:
                out["server_metrics"] = str(exc)
        print(json.dumps({k: v for k, v in out.items() if k != "sample_response"}), flush=True)
        rows.append(out)
    return rows


def find(rows: list[dict[str, Any]], stack: str, model: str, conc: int) -> dict[str, Any] | None:
    for row in rows:
        if (
            row["stack"] == stack
            and row["model"] == model
            and row.get("conc") == conc
            and not row.get("error")
        ):
            return row
    return None


def add_tax(rows: list[dict[str, Any]], floors: dict[str, dict[str, Any]]) -> None:
    for row in rows:
        if row.get("conc") == 1 and row.get("p50_ms") is not None and row["model"] in floors:
            run_us = floors[row["model"]]["run_p50_us"]
            row["tax_us"] = round(row["p50_ms"] * 1000 - run_us, 1)
            row["tax_mean_us"] = round(row["mean_rt_us"] - run_us, 1)


def fmt(value: Any, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}" if isinstance(value, float) else str(value)


def print_table(rows: list[dict[str, Any]], model: str, floor: dict[str, Any] | None) -> None:
    run = f"{floor['run_p50_us']} µs" if floor else "not measured"
    print(f"\n### {model} model: bare session.run (batch 1, 1 thread, CPU 0) p50 {run}\n")
    print(
        "| stack | c | req/s | p50 ms | p99 ms | CPU µs/req | tax at c=1 (µs): p50 (mean) "
        "| ratio to floor (req/s ÷ raw) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    notes = []
    for row in rows:
        if row["model"] != model:
            continue
        if row.get("error"):
            print(f"| {row['stack']} | - | error: {row['error'][:150]} | | | | | |")
            continue
        raw = find(rows, "raw", model, row["conc"])
        tax = f"{row['tax_us']:.0f} ({row['tax_mean_us']:.0f})" if "tax_us" in row else "-"
        ratio = f"{row['ok_rps'] / raw['ok_rps']:.2f}x" if raw and raw["ok_rps"] else "-"
        print(
            f"| {row['stack']} | {row['conc']} | {fmt(row['ok_rps'])} | {fmt(row['p50_ms'], 2)} | "
            f"{fmt(row['p99_ms'], 2)} | {fmt(row['cpu_us_per_req'])} | {tax} | {ratio} |"
        )
        if row["non200"] or row["errors"]:
            notes.append(f"{row['stack']} c={row['conc']}: {row['non200']} non-200; {row['errors'][:120]}")
    print(
        "\ntax = latency at c=1 minus the bare session.run; hey rounds percentiles to 0.1 ms, so the mean"
        " round trip (1 / req/s at c=1, hey's own client time included) is given in brackets."
    )
    for note in notes:
        print(f"- {note}")


def targets(rows: list[dict[str, Any]], models: list[str]) -> list[dict[str, Any]]:
    """The project's serving targets, each pass / fail, or n/a when a number is missing."""
    out: list[dict[str, Any]] = []

    def check(label: str, ok: bool | None, detail: str) -> None:
        out.append(
            {"target": label, "result": "n/a" if ok is None else "PASS" if ok else "FAIL", "detail": detail}
        )

    def get(stack: str, model: str, conc: int, key: str) -> float | None:
        row = find(rows, stack, model, conc)
        value = row.get(key) if row else None
        return float(value) if value is not None else None

    for model in models:
        raw_tax = get("raw", model, 1, "tax_us")
        taxes = {s: get(s, model, 1, "tax_us") for s in AISERVE_STACKS}
        known = {s: t for s, t in taxes.items() if t is not None}
        if raw_tax is None or not known:
            check(f"1. {model}: aiserve tax at c=1 <= 2x raw tax", None, f"raw {raw_tax}, aiserve {taxes}")
        else:
            best = min(known, key=lambda s: known[s])
            means = {s: get(s, model, 1, "tax_mean_us") for s in known}
            detail = ", ".join(f"{s} {t:.0f} µs" for s, t in known.items())
            raw_mean = get("raw", model, 1, "tax_mean_us")
            detail += "; mean-based: " + ", ".join(f"{s} {fmt(t, 0)} µs" for s, t in means.items())
            detail += f", raw {fmt(raw_mean, 0)} µs"
            check(
                f"1. {model}: aiserve tax at c=1 <= 2x raw tax",
                known[best] <= 2 * raw_tax,
                f"best {best} {known[best]:.0f} µs = {known[best] / raw_tax:.2f}x raw {raw_tax:.0f} µs "
                f"({detail})",
            )
    for model in models:
        batch = get("aiserve_batch", model, 32, "ok_rps")
        raw_batch = get("raw_batch", model, 32, "ok_rps")
        label = f"2. {model}: aiserve_batch req/s at c=32 >= 0.5x raw_batch"
        if batch is None or not raw_batch:
            check(label, None, f"aiserve_batch {batch}, raw_batch {raw_batch}")
        else:
            check(
                label, batch >= 0.5 * raw_batch, f"{batch:.0f} vs {raw_batch:.0f} = {batch / raw_batch:.2f}x"
            )
    for model in models:
        batch = get("aiserve_batch", model, 32, "ok_rps")
        mls = {s: get(s, model, 32, "ok_rps") for s in ("mlserver", "mlserver_batch")}
        known_ml = {s: v for s, v in mls.items() if v}
        label = f"3a. {model}: aiserve_batch req/s at c=32 >= 3x best mlserver"
        if batch is None or not known_ml:
            check(label, None, f"aiserve_batch {batch}, mlserver {mls}")
        else:
            best = max(known_ml, key=lambda s: known_ml[s])
            check(
                label,
                batch >= 3 * known_ml[best],
                f"{batch:.0f} vs {best} {known_ml[best]:.0f} = {batch / known_ml[best]:.2f}x",
            )
        triton = get("triton_batch", model, 32, "ok_rps")
        label = f"3b. {model}: aiserve_batch req/s at c=32 >= 2x triton_batch"
        if batch is None or not triton:
            check(label, None, f"aiserve_batch {batch}, triton_batch {triton}")
        else:
            check(label, batch >= 2 * triton, f"{batch:.0f} vs {triton:.0f} = {batch / triton:.2f}x")
    if "big" in models:
        batch, single = get("aiserve_batch", "big", 32, "ok_rps"), get("aiserve", "big", 32, "ok_rps")
        label = "4a. big: aiserve_batch req/s at c=32 >= 2x aiserve (unbatched)"
        if batch is None or not single:
            check(label, None, f"aiserve_batch {batch}, aiserve {single}")
        else:
            check(label, batch >= 2 * single, f"{batch:.0f} vs {single:.0f} = {batch / single:.2f}x")
        batch, single = get("aiserve_batch", "big", 1, "p50_ms"), get("aiserve", "big", 1, "p50_ms")
        label = "4b. big: aiserve_batch p50 at c=1 - aiserve p50 at c=1 <= 0.1 ms"
        if batch is None or single is None:
            check(label, None, f"aiserve_batch {batch}, aiserve {single}")
        else:
            mean_b, mean_s = (
                get("aiserve_batch", "big", 1, "mean_rt_us"),
                get("aiserve", "big", 1, "mean_rt_us"),
            )
            mean = f"{(mean_b - mean_s) / 1000:+.3f} ms" if mean_b is not None and mean_s is not None else "-"
            check(
                label,
                batch - single <= 0.1,
                f"p50 {batch:.2f} - {single:.2f} = {batch - single:+.2f} ms; mean round trip {mean}",
            )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--peers-kit", type=Path, default=REPO.parent / "shared" / "bench-peers")
    parser.add_argument("--venvs", type=Path, required=True, help="the kit's venvs: base, mlserver, pytriton")
    parser.add_argument("--only", default=",".join(ALL_STACKS), help=f"stacks, from {','.join(ALL_STACKS)}")
    parser.add_argument("--model-set", default="small,big")
    parser.add_argument("--duration", type=int, default=10, help="seconds of load per concurrency")
    parser.add_argument("--conc", default="1,32")
    parser.add_argument("--startup-timeout", type=int, default=180)
    parser.add_argument("--floor-iters", type=int, default=3000)
    parser.add_argument("--out", type=Path, default=None, help="results JSON (default: a temporary file)")
    args = parser.parse_args()
    only = [s for s in args.only.split(",") if s]
    unknown = sorted(set(only) - set(ALL_STACKS))
    if unknown:
        parser.error(f"unknown stacks {unknown}; choose from {ALL_STACKS}")
    models = [m for m in args.model_set.split(",") if m]
    concs = [int(c) for c in args.conc.split(",")]
    out_path: Path = args.out or Path(tempfile.mkstemp(prefix="aiserve_serving_", suffix=".json")[1])
    bp, ort_floor = load_kit(args.peers_kit.resolve())
    import onnx

    work = Path(tempfile.mkdtemp(prefix="aiserve_serving_"))
    models_dir = work / "models"
    models_dir.mkdir()
    rows: list[dict[str, Any]] = []
    floors: dict[str, dict[str, Any]] = {}
    report: dict[str, Any] = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "floor": floors,
        "rows": rows,
    }

    def save() -> None:
        out_path.write_text(json.dumps(report, indent=1))

    print(f"# work dir {work} (server logs), results {out_path}", flush=True)
    for model in models:
        fname, nfeat = bp.MODELS[model]
        model_path = models_dir / fname
        onnx.save(ort_floor.make_mlp(SIZES[model], Path(fname).stem), str(model_path))
        floors[model] = floor_us(str(model_path), nfeat, args.floor_iters)
        print(f"# floor {model}: {json.dumps(floors[model])}", flush=True)
        run_dir = work / model
        run_dir.mkdir()
        for name in KIT_FILES:
            shutil.copy(args.peers_kit / name, run_dir)
        shutil.copytree(args.peers_kit / "mlserver_repo", run_dir / "mlserver_repo")
        settings_file = run_dir / "mlserver_repo" / "mlp" / "model-settings.json"
        model_settings = json.loads(settings_file.read_text())
        model_settings["parameters"]["uri"] = str(model_path)
        settings_file.write_text(json.dumps(model_settings))
        body_files = {}
        for kind, body in bp.bodies(nfeat).items():
            body_files[kind] = str(run_dir / f"body_{kind}.json")
            Path(body_files[kind]).write_text(json.dumps(body))
        peers: dict[str, Any] = bp.stacks(str(args.venvs), str(run_dir), str(model_path))
        for name in only:
            if name in AISERVE_STACKS:
                launched = start_aiserve(
                    name, run_dir, str(model_path), body_files["platform"], args.startup_timeout
                )
            else:
                launched = start_peer(name, peers[name], run_dir, body_files, args.startup_timeout)
            try:
                rows.extend(measure(launched, name, model, concs, args.duration, bp))
            except Exception as exc:  # a row with the error, not a crash
                rows.append({"stack": name, "model": model, "error": f"{type(exc).__name__}: {exc}"})
            finally:
                stop(launched.proc, bp)
            if rows[-1].get("error"):
                print(json.dumps(rows[-1]), flush=True)
            time.sleep(2)
            save()
    add_tax(rows, floors)
    for model in models:
        print_table(rows, model, floors.get(model))
    report["targets"] = targets(rows, models)
    print("\n### targets\n")
    for target in report["targets"]:
        print(f"- {target['result']}: {target['target']} ({target['detail']})")
    save()
    print(f"\nresults: {out_path}")


if __name__ == "__main__":
    main()
