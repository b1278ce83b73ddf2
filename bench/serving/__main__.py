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
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.serving.launch import start_aiserve, start_peer, stop
from bench.serving.load import floor_us, measure
from bench.serving.report import add_tax, print_table, targets
from bench.serving.stacks import AISERVE_STACKS, ALL_STACKS, KIT_FILES, REPO, SIZES, load_kit


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.serving",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
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
