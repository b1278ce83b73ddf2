"""Where aiserve's CPU per prediction goes: py-spy on the server under load, samples summed by area.

``python -m bench.serving.profile --py-spy /path/to/py-spy`` starts ``aiserve serve`` as the bench does
(``--stack``, default ``aiserve_batch``, pinned to CPU 0, authentication and metrics on), warms it up with
hey for 3 s, then runs hey at ``--conc`` (default 32) on CPU 1 while ``py-spy record --format raw
--nonblocking --threads --full-filenames`` samples the server for ``--seconds`` (py-spy on CPU 1 too).
Non-blocking, because pausing the server at each sample cut its req/s by a third here. Idle threads are
not sampled, so with the server's one core saturated the samples split its CPU time.

Each sample goes to the area of its innermost frame that is not generic (``GENERIC``: asyncio,
contextlib, threading, the server's start-up frames...; a sample with only generic frames, mostly time
in uvloop's C code under ``Runner.run``, is event loop time), by ``AREAS``, first match wins; a leaf on a
source line that calls ``transport.write`` is a socket write. Prints the areas as percent of samples and
as µs per request (that share of the CPU per request measured over the profile), and the top leaf frames;
writes the raw profile and a JSON summary to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import linecache
import os
import re
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.serving.launch import Launched, start_aiserve, stop
from bench.serving.load import cpu_ticks
from bench.serving.mcp_rest import MCP_PATH, surfaces
from bench.serving.stacks import AISERVE_STACKS, REPO, SIZES, load_kit

# (area, regex on one frame "function (path:line)"); the innermost non-generic frame picks the area.
AREAS: list[tuple[str, str]] = [
    ("onnxruntime run", r"onnxruntime/|OnnxModel\.run "),
    ("orjson output", r"^(_dumps|_default|to_python) "),
    ("Prometheus metrics and request telemetry", r"prometheus_client/|core/telemetry\.py|^measured "),
    ("batching dispatcher", r"serving/batching\.py|serving/host\.py"),
    ("tensor prep", r"aiserve_mcp/runtime/|numpy/"),
    ("tool runner and input model", r"aiserve_mcp/tools/|pydantic"),
    ("database (SQLAlchemy, aiosqlite, asyncpg) and Redis", r"sqlalchemy/|aiosqlite/|asyncpg/|redis/"),
    (
        "auth and admission",
        r"protocols/admission\.py|aiserve_mcp/accounts/|rate_?(limit|windows)|ttl_cache\.py",
    ),
    ("MCP SDK and aiserve's MCP adapter", r"site-packages/mcp/|aiserve_mcp/protocols/mcp/|jsonschema"),
    ("request body, middleware and route", r"aiserve_mcp/|starlette/"),
    ("uvicorn/httptools: HTTP parse and ASGI plumbing", r"uvicorn/|httptools|logging/"),
]
INCLUSIVE = {
    "the tool run (call_tool: authorization, input model, tool, metrics)": r"^call_tool .*runner\.py",
    "the MCP SDK": r"site-packages/mcp/",
    "pydantic": r"site-packages/pydantic",
}
SOCKET_WRITE = "socket writes (transport.write)"
GENERIC = re.compile(
    r"asyncio/|contextlib\.py|functools\.py|typing\.py|threading\.py|concurrent/|selectors\.py|anyio/"
    r"|_collections_abc|<string>|_weakrefset\.py|<frozen runpy>|aiserve_mcp/(__main__|cli)\.py"
    r"|uvicorn/(main|server|_compat)\.py"
)
EVENT_LOOP = "event loop: uvloop's C (epoll, socket reads, task steps) and generic frames"
WAITING = re.compile(r"^(Condition\.wait \(.*threading\.py|_connection_worker_thread \(.*aiosqlite/)")
FRAME = re.compile(r"^(?P<function>.*) \((?P<path>.*):(?P<line>\d+)\)$")


def area_of(frames: list[str]) -> str:
    """The area of a sample, by its innermost frame that is not generic; a leaf on a line that writes to
    the socket is a socket write."""
    leaf = FRAME.match(frames[-1]) if frames else None
    if leaf and "transport.write" in linecache.getline(leaf["path"], int(leaf["line"])):
        return SOCKET_WRITE
    for frame in reversed(frames):
        if GENERIC.search(frame):
            continue
        for area, pattern in AREAS:
            if re.search(pattern, frame):
                return area
        return "other"
    return EVENT_LOOP


def parse_raw(text: str) -> Counter[tuple[str, ...]]:
    """py-spy's raw format: ``thread;frame;...;frame count`` per line; samples of a thread waiting for work
    (``WAITING``, which py-spy's idle test may miss) are left out."""
    stacks: Counter[tuple[str, ...]] = Counter()
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit() and not WAITING.search(stack.rpartition(";")[2]):
            stacks[tuple(stack.split(";")[1:])] += int(count)  # [0] is the thread
    return stacks


def breakdown(stacks: Counter[tuple[str, ...]]) -> dict[str, int]:
    areas: Counter[str] = Counter()
    for frames, count in stacks.items():
        areas[area_of(list(frames))] += count
    return dict(areas.most_common())


def load_command(
    launched: Launched, route: str, body_file: Path, cpus: str, seconds: int, conc: int
) -> list[str]:
    """hey on ``cpus`` against ``route``: the prediction, or ``get_model`` over REST or MCP (JSON)."""
    cmd = ["taskset", "-c", cpus, "hey", "-z", f"{seconds}s", "-c", str(conc)]
    cmd += ["-H", f"X-API-Key: {launched.headers['X-API-Key']}"]
    if route == "rest":
        return [*cmd, f"{launched.base}/api/v1/models/{launched.model_id}"]
    cmd += ["-m", "POST", "-T", "application/json", "-D", str(body_file)]
    if route == "mcp":
        return [*cmd, "-H", "Accept: application/json", f"{launched.base}{MCP_PATH}"]
    return [*cmd, launched.url]


def record(
    launched: Launched, args: argparse.Namespace, raw: Path, body_file: Path, bp: Any
) -> tuple[float, str]:
    """py-spy over ``args.seconds`` of load: the server's CPU seconds per wall second, and hey's output."""
    assert launched.proc is not None
    cpus = AISERVE_STACKS[args.stack].load_cpus
    warm_up = load_command(launched, args.route, body_file, cpus, 3, 8)
    subprocess.run(warm_up, check=True, capture_output=True)  # noqa: S603
    load_cmd = load_command(launched, args.route, body_file, cpus, args.seconds + 4, args.conc)
    load = subprocess.Popen(load_cmd, stdout=subprocess.PIPE, text=True)  # noqa: S603
    time.sleep(2)
    spy = ["taskset", "-c", "1", args.py_spy, "record", "--pid", str(launched.proc.pid), "--format", "raw"]
    spy += ["--duration", str(args.seconds), "--rate", str(args.rate), "--nonblocking", "--threads"]
    spy += ["--full-filenames", "--output", str(raw)]
    pids = bp.tree_pids(launched.proc.pid)
    before, started = cpu_ticks(pids), time.monotonic()
    subprocess.run(spy, check=True, capture_output=True)  # noqa: S603
    cpu_s = sum(t - before.get(p, 0) for p, t in cpu_ticks(pids).items()) / os.sysconf("SC_CLK_TCK")
    wall_s = time.monotonic() - started
    stdout, _ = load.communicate()
    return cpu_s / wall_s, stdout


def report(
    stacks: Counter[tuple[str, ...]], rps: float | None, cpu_per_s: float, title: str
) -> dict[str, Any]:
    """Print the areas and the top leaf frames; the summary."""
    areas = breakdown(stacks)
    total = sum(areas.values())
    cpu_us = cpu_per_s * 1e6 / rps if rps else None
    print(f"\n### where aiserve's CPU goes: {title}, {total} samples\n")
    print(f"hey: {rps} req/s; server CPU {cpu_per_s:.2f} s per second", end="")
    print(f" = {cpu_us:.0f} µs per request\n" if cpu_us else "\n")
    print("| area | share of samples | µs per request |")
    print("|---|---:|---:|")
    for area, count in areas.items():
        per_request = f"{count / total * cpu_us:.0f}" if cpu_us else "-"
        print(f"| {area} | {100 * count / total:.1f}% | {per_request} |")
    print("\nsamples with a frame of (inclusive, so they overlap):")
    for label, pattern in INCLUSIVE.items():
        count = sum(c for frames, c in stacks.items() if any(re.search(pattern, f) for f in frames))
        per_request = f", {count / total * cpu_us:.0f} µs per request" if cpu_us else ""
        print(f"  {100 * count / total:5.1f}%{per_request}  {label}")
    leaves: Counter[str] = Counter()
    for frames, count in stacks.items():
        leaves[frames[-1] if frames else "?"] += count
    print("\ntop leaf frames:")
    for frame, count in leaves.most_common(25):
        print(f"  {100 * count / total:5.1f}%  {frame}")
    return {"rps": rps, "cpu_us_per_req": cpu_us, "areas": areas}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.serving.profile", description=__doc__)
    parser.add_argument("--py-spy", default="py-spy", help="the py-spy executable")
    parser.add_argument("--peers-kit", type=Path, default=REPO.parent / "shared" / "bench-peers")
    parser.add_argument("--stack", default="aiserve_batch", choices=list(AISERVE_STACKS))
    parser.add_argument("--model", default="small", choices=list(SIZES))
    parser.add_argument(
        "--route",
        default="predict",
        choices=["predict", "rest", "mcp"],
        help="the prediction route, or the read tool get_model over REST or over MCP (JSON)",
    )
    parser.add_argument("--conc", type=int, default=32)
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--rate", type=int, default=200, help="samples per second")
    parser.add_argument("--out", type=Path, default=None, help="a folder for the raw profile and the JSON")
    args = parser.parse_args()
    bp, ort_floor = load_kit(args.peers_kit.resolve())
    import onnx

    work = Path(tempfile.mkdtemp(prefix="aiserve_profile_"))
    out = args.out or work
    out.mkdir(parents=True, exist_ok=True)
    fname, nfeat = bp.MODELS[args.model]
    model_path = work / fname
    onnx.save(ort_floor.make_mlp(SIZES[args.model], Path(fname).stem), str(model_path))
    body = work / "body.json"
    body.write_text(json.dumps(bp.bodies(nfeat)["platform"]))
    launched = start_aiserve(args.stack, work, str(model_path), str(body), 180)
    name = f"{args.stack}_{args.model}_{args.route}_c{args.conc}"
    raw = out / f"profile_{name}.txt"
    try:
        if launched.error or launched.proc is None:
            raise SystemExit(f"aiserve did not start: {launched.error}")
        if args.route == "mcp":
            body.write_bytes(surfaces(launched)[2].body or b"")
        cpu_per_s, stdout = record(launched, args, raw, body, bp)
    finally:
        stop(launched, bp)
    title = f"{args.stack}, {args.model} model, {args.route}, c={args.conc}"
    summary = report(parse_raw(raw.read_text()), bp.parse_hey(stdout)["rps"], cpu_per_s, title)
    summary["args"] = {k: str(v) for k, v in vars(args).items()}
    (out / f"profile_{name}.json").write_text(json.dumps(summary, indent=1))
    print(f"\nraw profile: {raw}")


if __name__ == "__main__":
    main()
