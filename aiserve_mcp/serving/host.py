"""Deploying models and answering predictions, with measured latencies.

Where a model runs:

- ONNX runs in this process (its graph is data interpreted by onnxruntime; files with external data are
  refused at upload), in ``replicas`` sessions.
- TorchScript is a program, so it never runs here: each replica is a separate ``aiserve worker`` process
  (``worker/launch.py``) started with a scrubbed environment, which receives the file over loopback HTTP.
- A ``gpu_required`` model that this host cannot put on a GPU runs on the owner's running GPU instances
  (aiserve workers they rented), one chosen per request by the load balancer; with none, predictions
  answer 503 saying so.

Requests to local replicas go through a :class:`Dispatcher`, which coalesces concurrent requests into
batches when the model's batch dimension is free. A model is deployed in the background after its upload,
and lazily by any other server process that receives a prediction for it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx

from aiserve_mcp.core.errors import Conflict, NotFound, ServiceUnavailable
from aiserve_mcp.core.events import Event, EventBus
from aiserve_mcp.core.telemetry import Telemetry
from aiserve_mcp.runtime.formats import servability
from aiserve_mcp.runtime.onnx_model import OnnxModel
from aiserve_mcp.runtime.tensors import TensorSpec, prepare
from aiserve_mcp.serving.batching import Arrays, Dispatcher, Replica
from aiserve_mcp.serving.store import ModelStore
from aiserve_mcp.serving.tables import ServedModel
from aiserve_mcp.serving.worker_client import WorkerClient
from aiserve_mcp.traffic.service import Traffic
from aiserve_mcp.worker.launch import WorkerProcess, start_worker, stop_worker

log = logging.getLogger(__name__)
LATENCY_WINDOW = 10_000
ANNOUNCE_EVERY_S = 1.0
INLINE_BELOW_S = 0.0002  # runs this short go inline on the event loop: a thread hop would cost more
WORKER_RUNTIMES = frozenset({"torch"})  # runtimes that execute code from the file: isolated workers only


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
    outputs: dict[str, Any]  # numpy arrays, or the runtime's own values for non-tensor outputs
    latency_ms: float
    used_gpu: bool
    runtime: str


class OnnxReplica:
    """An onnxruntime session in this process. Runs shorter than ``INLINE_BELOW_S`` (typical, measured)
    execute on the event loop; longer ones in a thread so the loop keeps serving."""

    def __init__(self, model: OnnxModel) -> None:
        self.model = model
        self._typical_s = math.inf

    def _timed(self, arrays: Arrays) -> tuple[dict[str, Any], float]:
        started = time.perf_counter()
        return self.model.run(arrays), time.perf_counter() - started

    async def run(self, arrays: Arrays) -> tuple[dict[str, Any], bool]:
        if self._typical_s < INLINE_BELOW_S:
            outputs, elapsed = self._timed(arrays)
        else:
            outputs, elapsed = await anyio.to_thread.run_sync(self._timed, arrays)
        self._typical_s = elapsed if math.isinf(self._typical_s) else 0.9 * self._typical_s + 0.1 * elapsed
        return outputs, self.model.used_gpu

    async def aclose(self) -> None:
        return None


class WorkerReplica:
    """A model loaded in an isolated worker process that this server started and owns."""

    def __init__(self, client: WorkerClient, key: str, worker: WorkerProcess) -> None:
        self._client = client
        self._key = key
        self._worker = worker

    async def run(self, arrays: Arrays) -> tuple[dict[str, Any], bool]:
        return await self._client.infer(self._key, arrays)

    async def aclose(self) -> None:
        await stop_worker(self._worker.process)


@dataclass
class Deployment:
    """A model ready to answer: its signature, its runtime and how a prepared request is run."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    runtime: str
    run: Callable[[Arrays], Awaitable[tuple[dict[str, Any], bool]]]
    aclose: Callable[[], Awaitable[None]]
    on_rented_gpus: bool = False
    settings: tuple[object, ...] = ()  # the model's serving settings it was deployed with


def _settings_of(model: ServedModel) -> tuple[object, ...]:
    return (model.sha256, model.replicas, model.max_batch_size, model.max_queue_delay_ms, model.gpu_required)


def _model_key(model: ServedModel) -> str:
    """The name a worker knows the model by: its id and content hash, so a changed file is a new key."""
    return f"{model.id}-{model.sha256[:16]}"


def _worker_format(model: ServedModel) -> str:
    return "torchscript" if model.format == "pytorch" else model.format


class RentedGpus:
    """Runs a model on the owner's running GPU instances: one is picked per request by the load balancer,
    the model file is sent to it on first use, and a worker that forgot the model gets it again."""

    def __init__(
        self, model: ServedModel, path: Path, traffic: Traffic, http: httpx.AsyncClient, timeout_s: float
    ):
        self._user_id = model.user_id
        self._key = _model_key(model)
        self._format = _worker_format(model)
        self._path = path
        self._traffic = traffic
        self._http = http
        self._timeout_s = timeout_s
        self._loaded: set[str] = set()  # contract ids whose worker holds the model

    async def run(self, arrays: Arrays) -> tuple[dict[str, Any], bool]:
        async with self._traffic.instance(
            self._user_id,
            lambda contract: contract.num_gpus > 0,
            "this model requires a GPU: this server has none it can use, and you have no running GPU "
            "instance to run it on; rent one (rent_gpu) and predict again",
        ) as (contract, endpoint, outcome):
            client = WorkerClient(self._http, endpoint, contract.access_token, self._timeout_s)
            try:
                if contract.id not in self._loaded:
                    await self._ensure_loaded(client)
                    self._loaded.add(contract.id)
                try:
                    return await client.infer(self._key, arrays)
                except NotFound:  # the worker restarted and lost the model
                    self._loaded.discard(contract.id)
                    await self._ensure_loaded(client)
                    self._loaded.add(contract.id)
                    return await client.infer(self._key, arrays)
            except ServiceUnavailable:
                outcome.fail()
                raise

    async def _ensure_loaded(self, client: WorkerClient) -> None:
        info = await client.describe(self._key)
        if info is None or not info.used_gpu:
            info = await client.load(self._key, self._path, self._format, require_gpu=True)

    async def aclose(self) -> None:
        return None


class ModelHost:
    def __init__(
        self,
        store: ModelStore,
        telemetry: Telemetry,
        events: EventBus,
        traffic: Traffic,
        http: httpx.AsyncClient,
        *,
        threads: int | None,
        max_batch: int,
        worker_timeout_s: float,
    ) -> None:
        self._store = store
        self._telemetry = telemetry
        self._events = events
        self._traffic = traffic
        self._http = http
        self._threads = threads
        self._max_batch = max_batch
        self._worker_timeout_s = worker_timeout_s
        self._deployments: dict[str, Deployment] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._metrics: dict[str, ModelMetrics] = {}
        self._announced: dict[str, float] = {}  # when each model's counts were last published
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def loaded(self) -> int:
        return len(self._deployments)

    def start_loading(self, model: ServedModel) -> None:
        self._spawn(self._load_in_background(model))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _announce(self, model: ServedModel, metrics: ModelMetrics) -> None:
        """Publish the model's prediction counts on the ``models`` stream, at most once a second."""
        now = time.monotonic()
        if now - self._announced.get(model.id, -math.inf) < ANNOUNCE_EVERY_S:
            return
        self._announced[model.id] = now
        data = {"model_id": model.id, "total": metrics.requests, "errors": metrics.errors, "pid": os.getpid()}
        self._spawn(self._events.publish(Event("models", "model.predictions", data, model.user_id)))

    async def follow_readiness(self) -> None:
        """Load every model that becomes ``ready`` (a ``model.status`` event, from any process) here too,
        so that each process of ``serve --workers`` serves it warm; runs until cancelled."""
        subscription = self._events.subscribe(None, frozenset({"models"}))
        try:
            async for event in subscription:
                if event.type == "model.status" and event.data.get("status") == "ready" and event.user_id:
                    self._spawn(self._warm(event.user_id, str(event.data["model_id"])))
        finally:
            self._events.unsubscribe(subscription)

    async def _warm(self, user_id: str, model_id: str) -> None:
        try:
            await self._deployment(await self._store.owned(user_id, model_id))
        except Exception as exc:  # its first prediction here loads it, or says why it cannot
            log.info("model %s not loaded ahead of its predictions: %s", model_id, exc)

    async def _load_in_background(self, model: ServedModel) -> None:
        try:
            deployment = await self._deployment(model)
        except Exception as exc:
            reason = str(exc)[:480] or type(exc).__name__
            log.info("model %s failed to load: %s", model.id, reason)
            await self._store.update(model.id, status="failed", status_reason=f"cannot be loaded: {reason}")
            return
        signature = {
            "inputs": [t.to_json() for t in deployment.inputs],
            "outputs": [t.to_json() for t in deployment.outputs],
        }
        note = (
            "requires a GPU and this server has none it can use: predictions run on your running GPU "
            "instances"
            if deployment.on_rented_gpus
            else None
        )
        await self._store.update(model.id, status="ready", status_reason=note, signature=signature)

    async def _deployment(self, model: ServedModel) -> Deployment:
        deployment = self._deployments.get(model.id)
        if deployment is not None and deployment.settings == _settings_of(model):
            return deployment
        lock = self._locks.setdefault(model.id, asyncio.Lock())
        async with lock:
            deployment = self._deployments.get(model.id)
            if deployment is not None and deployment.settings != _settings_of(model):
                del self._deployments[model.id]  # changed by configure_model, maybe in another process
                await deployment.aclose()
                deployment = None
            if deployment is None:
                deployment = await self._deploy(model)
                deployment.settings = _settings_of(model)
                self._deployments[model.id] = deployment
            return deployment

    async def _deploy(self, model: ServedModel) -> Deployment:
        serving = servability(model.format, model.variant)
        if not serving.servable:
            raise Conflict(serving.reason)
        path = self._store.path_of(model)
        if serving.runtime in WORKER_RUNTIMES:
            return await self._deploy_on_workers(model, path, serving.runtime)
        return await self._deploy_in_process(model, path)

    def _dispatcher(self, model: ServedModel, replicas: list[Replica], batchable: bool) -> Dispatcher:
        return Dispatcher(
            replicas,
            batchable=batchable,
            max_batch=model.max_batch_size or self._max_batch,
            max_delay_s=model.max_queue_delay_ms / 1000,
            on_run=self._telemetry.model_batch_size.labels(model.id).observe,
        )

    def _rented(
        self, model: ServedModel, path: Path, inputs: tuple[TensorSpec, ...], runtime: str
    ) -> Deployment:
        route = RentedGpus(model, path, self._traffic, self._http, self._worker_timeout_s)
        return Deployment(inputs, (), runtime, route.run, route.aclose, on_rented_gpus=True)

    async def _deploy_in_process(self, model: ServedModel, path: Path) -> Deployment:
        def load() -> OnnxModel:
            return OnnxModel.load(path, prefer_gpu=True, threads=self._threads)

        first = await anyio.to_thread.run_sync(load)
        if model.gpu_required and not first.used_gpu:
            return self._rented(model, path, first.inputs, first.runtime)
        sessions = [first] + [await anyio.to_thread.run_sync(load) for _ in range(model.replicas - 1)]
        dispatcher = self._dispatcher(model, [OnnxReplica(s) for s in sessions], first.batchable)
        return Deployment(first.inputs, first.outputs, first.runtime, dispatcher.submit, dispatcher.aclose)

    async def _deploy_on_workers(self, model: ServedModel, path: Path, runtime: str) -> Deployment:
        key, replicas = _model_key(model), list[Replica]()
        batchable = False
        try:
            for _ in range(model.replicas):
                worker = await start_worker(visible_devices=None, timeout_s=self._worker_timeout_s)
                client = WorkerClient(self._http, worker.endpoint, worker.token, self._worker_timeout_s)
                replica = WorkerReplica(client, key, worker)
                replicas.append(replica)
                info = await client.load(key, path, _worker_format(model), require_gpu=False)
                if model.gpu_required and not info.used_gpu:
                    await _close_all(replicas)
                    return self._rented(model, path, info.inputs, info.runtime)
                inputs, outputs, batchable = info.inputs, info.outputs, info.batchable
        except BaseException:
            await _close_all(replicas)
            raise
        dispatcher = self._dispatcher(model, replicas, batchable)
        return Deployment(inputs, outputs, runtime, dispatcher.submit, dispatcher.aclose)

    async def predict(self, model: ServedModel, inputs: Mapping[str, Any]) -> Prediction:
        """Run ``model`` on ``inputs`` (validated against its signature); 409 when it cannot serve, 503 while
        it loads or when it needs a GPU that neither this host nor a rented instance provides."""
        if model.status == "loading":
            raise ServiceUnavailable("the model is still loading; try again in a moment")
        if model.status != "ready":
            raise Conflict(f"the model is {model.status}: {model.status_reason or 'it cannot serve'}")
        deployment = await self._deployment(model)
        metrics = self._metrics.setdefault(model.id, ModelMetrics())
        started = time.perf_counter()
        try:
            outputs, used_gpu = await deployment.run(prepare(deployment.inputs, inputs))
        except Exception:
            metrics.record((time.perf_counter() - started) * 1000, ok=False)
            self._announce(model, metrics)
            raise
        latency_ms = (time.perf_counter() - started) * 1000
        metrics.record(latency_ms, ok=True)
        self._announce(model, metrics)
        self._telemetry.child(self._telemetry.model_latency, model.id).observe(latency_ms / 1000)
        return Prediction(outputs, round(latency_ms, 3), used_gpu, deployment.runtime)

    def metrics(self, model_id: str) -> LatencySummary:
        return self._metrics.get(model_id, ModelMetrics()).summary()

    async def forget(self, model_id: str) -> None:
        """Stop serving ``model_id`` here (its replicas and workers are closed); metrics are dropped."""
        deployment = self._deployments.pop(model_id, None)
        self._metrics.pop(model_id, None)
        self._announced.pop(model_id, None)
        self._locks.pop(model_id, None)
        if deployment is not None:
            await deployment.aclose()

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with anyio.CancelScope(shield=True):
                await asyncio.gather(task, return_exceptions=True)
        for model_id in list(self._deployments):
            with anyio.CancelScope(shield=True):
                await self.forget(model_id)


async def _close_all(replicas: list[Replica]) -> None:
    with anyio.CancelScope(shield=True):
        for replica in replicas:
            await replica.aclose()
