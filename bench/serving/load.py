"""Load and cost: ``hey`` pinned to CPU 1 against a started server, the CPU its process tree used, and the
bare ``session.run`` floor."""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import urllib.request
from typing import Any

from bench.serving.launch import Launched

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
    url: str,
    body_file: str,
    conc: int,
    duration: int,
    headers: dict[str, str],
    bp: Any,
    cpus: str = "1",
    content_type: str = "application/json",
) -> dict[str, Any]:
    """hey pinned to ``cpus`` as the kit runs it, plus extra headers; the kit's parse and the run's length."""
    cmd = ["taskset", "-c", cpus, "hey", "-z", f"{duration}s", "-c", str(conc), "-m", "POST"]
    cmd += ["-T", content_type, "-D", body_file]
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


def one_run(
    launched: Launched, conc: int, duration: int, bp: Any, content_type: str = "application/json"
) -> dict[str, Any]:
    """One hey run at ``conc`` and what the server's process tree spent on it."""
    assert launched.proc is not None
    tick = os.sysconf("SC_CLK_TCK")
    before = cpu_ticks(bp.tree_pids(launched.proc.pid))
    result = hey(
        launched.url, launched.body, conc, duration, launched.headers, bp, launched.load_cpus, content_type
    )
    pids = bp.tree_pids(launched.proc.pid)
    after = cpu_ticks(pids)
    cpu_s = sum(t - before.get(p, 0) for p, t in after.items()) / tick
    ok = result["ok"]
    result.update(
        ok_rps=round(ok / result["total_s"], 1),
        cpu_s=round(cpu_s, 2),
        cpu_us_per_req=round(cpu_s * 1e6 / ok, 1) if ok else None,
        # closed loop: each of `conc` connections has one request in flight, so the mean round trip is
        # conc * time / answers, exact where hey's percentiles are rounded to 0.1 ms
        mean_rt_us=round(conc * result["total_s"] * 1e6 / max(1, ok + result["non200"]), 1),
        rss_mb=bp.rss_mb(pids),
        nprocs=len(pids),
    )
    return result


MEDIAN_KEYS = ("ok_rps", "rps", "p50_ms", "p90_ms", "p99_ms", "cpu_us_per_req", "mean_rt_us", "rss_mb")


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each number of ``MEDIAN_KEYS`` as its median over the runs; counts summed; the runs kept."""
    out: dict[str, Any] = {}
    for key in MEDIAN_KEYS:
        values = [r[key] for r in runs if r.get(key) is not None]
        out[key] = round(statistics.median(values), 2) if values else None
    out.update(
        ok=sum(r["ok"] for r in runs),
        non200=sum(r["non200"] for r in runs),
        errors="; ".join(sorted({r["errors"] for r in runs if r["errors"]})),
        nprocs=max(r["nprocs"] for r in runs),
        hey_cmd=runs[0]["hey_cmd"],
        runs=runs,
    )
    return out


def repeated(
    launched: Launched,
    conc: int,
    duration: int,
    repeats: int,
    bp: Any,
    content_type: str = "application/json",
) -> dict[str, Any]:
    """The median of ``repeats`` runs of ``duration`` seconds at ``conc``."""
    return median_of([one_run(launched, conc, duration, bp, content_type) for _ in range(repeats)])


def measure(
    launched: Launched, name: str, model: str, concs: list[int], duration: int, repeats: int, bp: Any
) -> list[dict[str, Any]]:
    """A row per concurrency (the median of ``repeats`` runs) after a 3 s warm-up at c=8."""
    row: dict[str, Any] = {"stack": name, "model": model, "startup_s": launched.startup_s}
    row["sample_response"] = launched.sample
    if launched.error:
        return [dict(row, error=launched.error)]
    hey(launched.url, launched.body, 8, 3, launched.headers, bp, launched.load_cpus)  # warm-up
    rows = []
    for conc in concs:
        out = dict(row, conc=conc, **repeated(launched, conc, duration, repeats, bp))
        if launched.metrics_url:
            out["server_metrics"] = server_metrics(launched.metrics_url)
        print(json.dumps({k: v for k, v in out.items() if k not in ("sample_response", "runs")}), flush=True)
        rows.append(out)
    return rows


def server_metrics(url: str) -> list[str] | str:
    """Triton's inference and execution counts (how well its dynamic batcher coalesced)."""
    try:
        with urllib.request.urlopen(url, timeout=3) as answer:  # noqa: S310 (loopback)
            text = answer.read().decode()
    except Exception as exc:
        return str(exc)
    return [
        line for line in text.splitlines() if line.startswith(("nv_inference_count", "nv_inference_exec"))
    ]
