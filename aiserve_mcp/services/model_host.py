"""Loading models and answering predictions, with measured latencies.

Models whose inputs all have a free first dimension are served through a greedy batcher
(``services/batching.py``): concurrent predictions are coalesced into one run and split back exactly.

Only formats that are data, not programs, run in this process: ONNX today (its graph is interpreted by
onnxruntime; files with external data are refused at upload). A model is loaded in the background after
its upload, and lazily by any other server process that receives a prediction for it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from aiserve_mcp.errors import Conflict, ServiceUnavailable
from aiserve_mcp.runtime.formats import Servability, servability
from aiserve_mcp.runtime.onnx_model import OnnxModel, to_python
from aiserve_mcp.services.batching import GreedyBatcher
from aiserve_mcp.services.model_store import ModelStore
from aiserve_mcp.services.telemetry import Telemetry
from aiserve_mcp.storage.model_tables import ServedModel

log = logging.getLogger(__name__)
LATENCY_WINDOW = 10_000


IN_PROCESS_RUNTIMES = frozenset({"onnxruntime"})


def servable_here(format_id: str, variant: str | None) -> Servability:
    """Whether this server can answer predictions for the format: its runtime is installed and it runs
    in this process (programs such as TorchScript need an isolated worker, not started here yet)."""
    found = servability(format_id, variant)
    if found.servable and found.runtime not in IN_PROCESS_RUNTIMES:
        return Servability(
            False,
            None,
            f"{found.runtime} models run only in an isolated worker process, which this server does not "
            "start yet; export the model to ONNX to serve it here",
        )
    return found


@dataclass(frozen=True)
class LatencySummary:
    total_requests: int
    error_rate: float
    average_ms: float | None
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None


class ModelMetrics:
    """Counts and the latest ``LATENCY_WINDOW`` latencies of one model in this process."""

    def __init__(self) -> None:
        self.requests = 0
        self.errors = 0
        self._latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)

    def record(self, latency_ms: float, ok: bool) -> None:
        self.requests += 1
        if ok:
            self._latencies.append(latency_ms)
        else:
            self.errors += 1

    def summary(self) -> LatencySummary:
        ordered = sorted(self._latencies)

        def pick(q: float) -> float | None:
            return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3) if ordered else None

        average = round(sum(ordered) / len(ordered), 3) if ordered else None
        error_rate = round(self.errors / self.requests, 4) if self.requests else 0.0
        return LatencySummary(self.requests, error_rate, average, pick(0.5), pick(0.95), pick(0.99))


@dataclass(frozen=True)
class Prediction:
    outputs: dict[str, list[Any]]
    latency_ms: float
    used_gpu: bool
    runtime: str


class ModelHost:
    def __init__(self, store: ModelStore, telemetry: Telemetry, threads: int | None, max_batch: int) -> None:
        self._store = store
        self._max_batch = max_batch
        self._batchers: dict[str, GreedyBatcher] = {}
        self._telemetry = telemetry
        self._threads = threads
        self._loaded: dict[str, OnnxModel] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._metrics: dict[str, ModelMetrics] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def loaded(self) -> int:
        return len(self._loaded)

    def start_loading(self, model: ServedModel) -> None:
        task = asyncio.get_running_loop().create_task(self._load_in_background(model))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _load_in_background(self, model: ServedModel) -> None:
        try:
            runner = await self._load(model)
        except Exception as exc:
            reason = str(exc)[:480] or type(exc).__name__
            log.info("model %s failed to load: %s", model.id, reason)
            await self._store.update(model.id, status="failed", status_reason=f"cannot be loaded: {reason}")
            return
        signature = {
            "inputs": [t.to_json() for t in runner.inputs],
            "outputs": [t.to_json() for t in runner.outputs],
        }
        await self._store.update(model.id, status="ready", status_reason=None, signature=signature)

    async def _load(self, model: ServedModel) -> OnnxModel:
        lock = self._locks.setdefault(model.id, asyncio.Lock())
        async with lock:
            runner = self._loaded.get(model.id)
            if runner is None:
                path: Path = self._store.path_of(model)
                runner = await anyio.to_thread.run_sync(
                    lambda: OnnxModel.load(path, prefer_gpu=True, threads=self._threads)
                )
                self._loaded[model.id] = runner
            return runner

    async def predict(self, model: ServedModel, inputs: dict[str, Any]) -> Prediction:
        """Run ``model`` on ``inputs`` (validated against its signature); 409 when it cannot serve."""
        if model.status == "loading":
            raise ServiceUnavailable("the model is still loading; try again in a moment")
        if model.status != "ready":
            raise Conflict(f"the model is {model.status}: {model.status_reason or 'it cannot serve'}")
        serving = servable_here(model.format, model.variant)
        if not serving.servable:
            raise Conflict(serving.reason)
        runner = await self._load(model)
        if model.gpu_required and not runner.used_gpu:
            raise ServiceUnavailable("this model requires a GPU and this server has none it can use")
        metrics = self._metrics.setdefault(model.id, ModelMetrics())
        started = time.perf_counter()
        try:
            arrays = runner.prepare(inputs)
            if runner.batchable:
                batcher = self._batchers.get(model.id)
                if batcher is None:
                    sizes = self._telemetry.model_batch_size.labels(model.id)
                    batcher = GreedyBatcher(runner.run, self._max_batch, sizes.observe)
                    self._batchers[model.id] = batcher
                raw = await batcher.submit(arrays)
            else:
                raw = await anyio.to_thread.run_sync(runner.run, arrays)
            outputs = {name: to_python(value) for name, value in raw.items()}
        except Exception:
            metrics.record((time.perf_counter() - started) * 1000, ok=False)
            raise
        latency_ms = (time.perf_counter() - started) * 1000
        metrics.record(latency_ms, ok=True)
        self._telemetry.model_latency.labels(model.id).observe(latency_ms / 1000)
        return Prediction(outputs, round(latency_ms, 3), runner.used_gpu, runner.runtime)

    def metrics(self, model_id: str) -> LatencySummary:
        return self._metrics.get(model_id, ModelMetrics()).summary()

    def forget(self, model_id: str) -> None:
        self._loaded.pop(model_id, None)
        self._batchers.pop(model_id, None)
        self._metrics.pop(model_id, None)
        self._locks.pop(model_id, None)

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with anyio.CancelScope(shield=True):
                await asyncio.gather(task, return_exceptions=True)
