"""Serving an ONNX MLP over HTTP: aiserve's prediction route against peer serving stacks, in one run.

The peers come from the shared peer kit (``--peers-kit``, its README lists the install recipe): ``raw``
(a bare ASGI app with orjson around onnxruntime, the floor), ``raw_batch`` (the same with a greedy
micro-batcher), ``fastapi``, ``triton`` / ``triton_batch`` (PyTriton, dynamic batcher 1 ms) and
``mlserver`` / ``mlserver_batch`` (max batch 64, 2 ms). aiserve runs as ``python -m aiserve_mcp serve`` of
this checkout with authentication on (a user signs up, creates an API key and uploads the model over REST;
every prediction carries ``X-API-Key``), metrics on, the rate limiter on but never refusing, SQLite in a
fresh data directory and ``AISERVE_MODEL_THREADS=1``; ``aiserve`` has ``AISERVE_MODEL_MAX_BATCH=1`` (no
coalescing) and ``aiserve_batch`` 64 (the default). Both models are the kit's MLPs built with
``ort_floor.make_mlp``: small 4-64-2 and big 256-1024-1024-10, one row of features per request.

Every server is pinned to CPU 0 (``taskset -c 0``: one core for HTTP and inference, onnxruntime with one
intra-op thread) and the load generator ``hey`` to CPU 1: 3 s warm-up at c=8, then ``--repeats`` runs of
``--duration`` seconds at each concurrency of ``--conc``; each row is the median of the runs. Per stack x
model x concurrency:

- req/s: HTTP 200 answers per second of the run; p50 / p99 latency from hey; non-200 answers;
- CPU µs/req: utime + stime of the server's whole process tree (``/proc/<pid>/stat``) over the run,
  divided by the 200 answers;
- tax at c=1: round trip minus the bare ``session.run`` time (measured in the same run, pinned to CPU 0,
  batch 1, median of ``--floor-iters`` calls), i.e. what the HTTP stack adds around the model;
- ratio to floor: req/s divided by ``raw``'s at the same concurrency.

Two stacks compare 1 and 2 server processes, unpinned on both cores (server and hey each ``taskset -c
0,1``), state in PostgreSQL (a fresh database, ``createdb -h 127.0.0.1 -U postgres``) and Redis
(127.0.0.1:6379, a prefix of its own): ``aiserve_pg`` (one process) and ``aiserve_w2`` (``--workers
2``, which needs a checkout with that flag, see ``--aiserve-src``; without it the row says so).
Extras (``--extras``), each on a fresh ``aiserve`` server: ``mcp_rest`` (``mcp_rest.py``: one read
tool over MCP and REST) and ``big_input`` (``big_input.py``: a 1 MiB tensor as JSON and as
binary tensor data at ``--big-conc``).

Then issue 16's targets are checked (pass / fail) and everything is written to ``--out`` (JSON).
A stack that does not start is a row with its error (its log is in the run directory).
``python -m bench.serving.profile`` profiles aiserve's prediction route under load (see there).

Run: ``.venv/bin/python -m bench.serving --venvs /path/to/venvs`` (from the repository root; the venvs
``base``, ``mlserver`` and ``pytriton`` as the kit's README makes them, ``hey`` on the PATH), e.g.
``--duration 5 --repeats 1 --only raw,raw_batch,aiserve,aiserve_batch --model-set small --extras ""``
for a quick look.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.serving.big_input import measure_big_input, print_big_input
from bench.serving.launch import start_aiserve, start_peer, stop
from bench.serving.load import floor_us, measure
from bench.serving.mcp_rest import measure_mcp_rest, print_mcp_rest
from bench.serving.report import add_tax, print_table, targets
from bench.serving.stacks import AISERVE_STACKS, ALL_STACKS, KIT_FILES, PINNED_STACKS, REPO, SIZES, load_kit


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.serving",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--peers-kit", type=Path, default=REPO.parent / "shared" / "bench-peers")
    parser.add_argument("--venvs", type=Path, required=True, help="the kit's venvs: base, mlserver, pytriton")
    parser.add_argument("--only", default=",".join(ALL_STACKS), help=f"stacks, from {','.join(ALL_STACKS)}")
    parser.add_argument("--model-set", default="small,big")
    parser.add_argument("--duration", type=int, default=10, help="seconds of load per run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per row (the row is their median)")
    parser.add_argument("--conc", default="1,32")
    parser.add_argument("--extras", default="mcp_rest,big_input", help="from mcp_rest,big_input")
    parser.add_argument("--big-conc", default="1,4", help="concurrencies of the 1 MiB input row")
    parser.add_argument(
        "--aiserve-src",
        type=Path,
        default=REPO,
        help="the checkout whose aiserve_mcp the aiserve stacks run (default: this one)",
    )
    parser.add_argument("--startup-timeout", type=int, default=180)
    parser.add_argument("--floor-iters", type=int, default=3000)
    parser.add_argument("--out", type=Path, default=None, help="results JSON (default: a temporary file)")
    args = parser.parse_args()
    unknown = sorted(set(args.only.split(",")) - set(ALL_STACKS) - {""})
    if unknown:
        parser.error(f"unknown stacks {unknown}; choose from {ALL_STACKS}")
    return args


def model_dir(
    work: Path, model: str, args: argparse.Namespace, bp: Any, ort_floor: Any
) -> tuple[Path, str, int]:
    """The model's run directory with the kit's files and its MLServer repository, and the model file."""
    import onnx

    fname, nfeat = bp.MODELS[model]
    model_path = work / "models" / fname
    model_path.parent.mkdir(exist_ok=True)
    onnx.save(ort_floor.make_mlp(SIZES[model], Path(fname).stem), str(model_path))
    run_dir = work / model
    run_dir.mkdir()
    for name in KIT_FILES:
        shutil.copy(args.peers_kit / name, run_dir)
    shutil.copytree(args.peers_kit / "mlserver_repo", run_dir / "mlserver_repo")
    settings_file = run_dir / "mlserver_repo" / "mlp" / "model-settings.json"
    model_settings = json.loads(settings_file.read_text())
    model_settings["parameters"]["uri"] = str(model_path)
    settings_file.write_text(json.dumps(model_settings))
    return run_dir, str(model_path), nfeat


def main() -> None:
    args = parse()
    only = [s for s in args.only.split(",") if s]
    extras = {e for e in args.extras.split(",") if e}
    models = [m for m in args.model_set.split(",") if m]
    concs = [int(c) for c in args.conc.split(",")]
    out_path: Path = args.out or Path(tempfile.mkstemp(prefix="aiserve_serving_", suffix=".json")[1])
    bp, ort_floor = load_kit(args.peers_kit.resolve())
    work = Path(tempfile.mkdtemp(prefix="aiserve_serving_"))
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
        run_dir, model_path, nfeat = model_dir(work, model, args, bp, ort_floor)
        floors[model] = floor_us(model_path, nfeat, args.floor_iters)
        print(f"# floor {model}: {json.dumps(floors[model])}", flush=True)
        body_files = {}
        for kind, body in bp.bodies(nfeat).items():
            body_files[kind] = str(run_dir / f"body_{kind}.json")
            Path(body_files[kind]).write_text(json.dumps(body))
        peers: dict[str, Any] = bp.stacks(str(args.venvs), str(run_dir), model_path)
        for name in only:
            if name in AISERVE_STACKS:
                launched = start_aiserve(
                    name,
                    run_dir,
                    model_path,
                    body_files["platform"],
                    args.startup_timeout,
                    src=args.aiserve_src.resolve(),
                )
            else:
                launched = start_peer(name, peers[name], run_dir, body_files, args.startup_timeout)
            try:
                rows.extend(measure(launched, name, model, concs, args.duration, args.repeats, bp))
            except Exception as exc:  # a row with the error, not a crash
                rows.append({"stack": name, "model": model, "error": f"{type(exc).__name__}: {exc}"})
            finally:
                stop(launched, bp)
            if rows[-1].get("error"):
                print(json.dumps(rows[-1]), flush=True)
            time.sleep(2)
            save()
    if "mcp_rest" in extras:
        report["mcp_rest"] = measure_mcp_rest(work / "mcp_rest", args.startup_timeout, bp, ort_floor)
    if "big_input" in extras:
        big_concs = [int(c) for c in args.big_conc.split(",")]
        report["big_input"] = measure_big_input(
            work / "big_input", big_concs, args.duration, args.repeats, args.startup_timeout, bp
        )
    add_tax(rows, floors)
    for model in models:
        print_table(
            rows, model, floors.get(model), PINNED_STACKS, "each server pinned to CPU 0, hey to CPU 1"
        )
        if any(r["stack"] in ("aiserve_pg", "aiserve_w2") and r["model"] == model for r in rows):
            print_table(
                rows,
                model,
                floors.get(model),
                ["aiserve_pg", "aiserve_w2"],
                "1 vs 2 processes, unpinned on 2 cores (PostgreSQL and Redis)",
            )
    if report.get("mcp_rest"):
        print_mcp_rest(report["mcp_rest"])
    if report.get("big_input"):
        print_big_input(report["big_input"])
    report["targets"] = targets(rows, report.get("mcp_rest"))
    print("\n### targets\n")
    for target in report["targets"]:
        print(f"- {target['result']}: {target['target']} ({target['detail']})")
    save()
    print(f"\nresults: {out_path}")


if __name__ == "__main__":
    main()
