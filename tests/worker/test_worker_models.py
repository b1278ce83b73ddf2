"""Models in a worker process: TorchScript and ONNX loaded and run over real HTTP by the server's client,
unsafe or broken files refused without running them, and a worker that sees none of the server's secrets."""

from __future__ import annotations

import os
import pickle
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort  # type: ignore[import-untyped]
import pytest
import pytest_asyncio
import torch
from onnx import helper

from aiserve_mcp.core.errors import NotFound, PayloadTooLarge, ServiceUnavailable, ValidationFailed
from aiserve_mcp.runtime.tensors import TensorSpec
from aiserve_mcp.runtime.torchscript_model import TorchScriptModel
from aiserve_mcp.serving.worker_client import WorkerClient
from aiserve_mcp.worker.app import MAX_MODEL_BYTES_ENV
from aiserve_mcp.worker.launch import WorkerProcess, start_worker, stop_worker
from tests.runtime.test_runtime import mlp_file

in_module_loop = pytest.mark.asyncio(loop_scope="module")  # the loop the module's worker was started in

IR_VERSION = 10
OPSET = [helper.make_opsetid("", 17)]


class Pair(torch.nn.Module):
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return x * 2.5 + y, (x - y).sum(dim=-1), (x > y).to(torch.int64)


class Named(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"doubled": x * 2, "total": x.sum()}


class TakesInt(torch.nn.Module):
    def forward(self, x: torch.Tensor, times: int) -> torch.Tensor:
        return x * times


class ReturnsInt(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int]:
        return x, 3


class RunsCode:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


def _script(module: torch.nn.Module, path: Path) -> Path:
    torch.jit.save(torch.jit.script(module), str(path))
    return path


def _model_files(tmpdir: Path) -> list[Path]:
    """The files in the worker's private model directories under its TMPDIR."""
    return [f for d in tmpdir.glob("aiserve-models-*") for f in d.iterdir()]


def _environ(pid: int) -> dict[str, str]:
    entries = Path(f"/proc/{pid}/environ").read_text().split("\0")
    return dict(entry.split("=", 1) for entry in entries if entry)


def _cwd(pid: int) -> Path:
    return Path(f"/proc/{pid}/cwd").resolve()


@pytest.fixture(scope="module")
def worker_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("worker-tmp")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def worker(worker_tmp: Path) -> AsyncIterator[WorkerProcess]:
    started = await start_worker(visible_devices="", extra_env={"TMPDIR": str(worker_tmp)})
    yield started
    await stop_worker(started.process)


@pytest_asyncio.fixture(loop_scope="module")
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


@pytest.fixture
def models(worker: WorkerProcess, http: httpx.AsyncClient) -> WorkerClient:
    return WorkerClient(http, worker.endpoint, worker.token, timeout_s=30)


@in_module_loop
async def test_torchscript_runs_in_the_worker_exactly_as_in_process(
    models: WorkerClient, tmp_path: Path
) -> None:
    path = _script(Pair(), tmp_path / "pair.pt")
    info = await models.load("pair", path, "torchscript", require_gpu=False)
    assert (info.key, info.format, info.runtime, info.used_gpu, info.batchable) == (
        "pair",
        "torchscript",
        "torch",
        False,
        False,
    )
    assert info.inputs == (TensorSpec("x", "any", None), TensorSpec("y", "any", None))
    assert info.outputs == ()
    assert await models.describe("pair") == info

    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((3, 5)).astype(np.float32), rng.standard_normal((3, 5)).astype(np.float32)
    outputs, used_gpu = await models.infer("pair", {"x": x, "y": y})
    expected = torch.jit.load(str(path))(torch.from_numpy(x), torch.from_numpy(y))  # type: ignore[no-untyped-call]
    assert not used_gpu
    assert sorted(outputs) == ["output_0", "output_1", "output_2"]
    for i, tensor in enumerate(expected):
        assert outputs[f"output_{i}"].dtype == tensor.numpy().dtype
        assert np.array_equal(outputs[f"output_{i}"], tensor.numpy())

    await models.unload("pair")
    assert await models.describe("pair") is None
    with pytest.raises(NotFound):
        await models.infer("pair", {"x": x, "y": y})
    await models.unload("pair")  # unloading twice is fine


@in_module_loop
async def test_dict_outputs_are_named_by_their_keys(models: WorkerClient, tmp_path: Path) -> None:
    await models.load("named", _script(Named(), tmp_path / "named.pt"), "torchscript", require_gpu=False)
    x = np.arange(6, dtype=np.int64).reshape(2, 3)
    outputs, _ = await models.infer("named", {"x": x})
    assert outputs.keys() == {"doubled", "total"}
    assert np.array_equal(outputs["doubled"], x * 2) and outputs["doubled"].dtype == np.int64
    assert outputs["total"].shape == () and outputs["total"] == 15


@in_module_loop
async def test_onnx_in_the_worker_matches_onnxruntime(models: WorkerClient, tmp_path: Path) -> None:
    path = mlp_file(tmp_path / "mlp.onnx")
    info = await models.load("mlp", path, "onnx", require_gpu=False)
    assert info.runtime == "onnxruntime" and info.batchable and not info.used_gpu
    assert info.inputs == (TensorSpec("x", "float32", (None, 4)),)
    assert info.outputs == (TensorSpec("y", "float32", (None, 2)),)
    rows = np.random.default_rng(1).standard_normal((7, 4)).astype(np.float32)
    outputs, _ = await models.infer("mlp", {"x": rows})
    (expected,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": rows})
    assert np.array_equal(outputs["y"], expected)

    with pytest.raises(ValidationFailed, match=r"takes inputs \['x'\]"):
        await models.infer("mlp", {"features": rows})
    with pytest.raises(ValidationFailed, match="could not run"):
        await models.infer("mlp", {"x": rows[:, :3]})


@in_module_loop
async def test_loading_again_under_a_key_replaces_the_model(
    models: WorkerClient, worker: WorkerProcess, http: httpx.AsyncClient, worker_tmp: Path, tmp_path: Path
) -> None:
    health = await http.get(worker.endpoint + "/health", headers={"Authorization": f"Bearer {worker.token}"})
    before, files = health.json()["models"], len(_model_files(worker_tmp))
    await models.load("swap", _script(Pair(), tmp_path / "pair.pt"), "torchscript", require_gpu=False)
    info = await models.load(
        "swap", _script(Named(), tmp_path / "named.pt"), "torchscript", require_gpu=False
    )
    assert [spec.name for spec in info.inputs] == ["x"]
    outputs, _ = await models.infer("swap", {"x": np.ones(2, dtype=np.float32)})
    assert outputs.keys() == {"doubled", "total"}
    health = await http.get(worker.endpoint + "/health", headers={"Authorization": f"Bearer {worker.token}"})
    assert health.json()["models"] == before + 1 and len(_model_files(worker_tmp)) == files + 1
    await models.unload("swap")
    assert len(_model_files(worker_tmp)) == files


@in_module_loop
async def test_pickles_are_refused_without_running_them(
    models: WorkerClient, worker_tmp: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    files = len(_model_files(worker_tmp))
    raw = tmp_path / "raw.pkl"
    raw.write_bytes(pickle.dumps(RunsCode(marker)))
    saved = tmp_path / "saved.pt"
    torch.save({"model": RunsCode(marker)}, saved)
    weights = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(3)}, weights)
    for path in (raw, saved, weights):
        with pytest.raises(ValidationFailed, match="torch could not load the TorchScript archive"):
            await models.load("evil", path, "torchscript", require_gpu=False)
    assert not marker.exists()
    assert await models.describe("evil") is None
    assert len(_model_files(worker_tmp)) == files


@in_module_loop
async def test_truncated_archive_and_wrong_format_are_refused(models: WorkerClient, tmp_path: Path) -> None:
    whole = _script(Pair(), tmp_path / "pair.pt").read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ValidationFailed, match="torch could not load"):
        await models.load("cut", truncated, "torchscript", require_gpu=False)
    with pytest.raises(ValidationFailed, match="onnxruntime could not load"):
        await models.load("cut", tmp_path / "pair.pt", "onnx", require_gpu=False)
    with pytest.raises(ValidationFailed, match="format must be one of"):
        await models.load("cut", tmp_path / "pair.pt", "pickle", require_gpu=False)


@in_module_loop
async def test_require_gpu_on_a_worker_without_one(
    models: WorkerClient, worker_tmp: Path, tmp_path: Path
) -> None:
    files = len(_model_files(worker_tmp))
    with pytest.raises(ServiceUnavailable, match=r"no GPU it can use \(device: cpu\)"):
        await models.load("gpu", _script(Pair(), tmp_path / "pair.pt"), "torchscript", require_gpu=True)
    with pytest.raises(ServiceUnavailable, match="no GPU"):
        await models.load("gpu", mlp_file(tmp_path / "mlp.onnx"), "onnx", require_gpu=True)
    assert await models.describe("gpu") is None
    assert len(_model_files(worker_tmp)) == files


@in_module_loop
async def test_every_route_wants_the_token_and_a_valid_key(
    worker: WorkerProcess, http: httpx.AsyncClient, models: WorkerClient
) -> None:
    wrong = {"Authorization": "Bearer not-the-token"}
    for method, path in [
        ("GET", "/health"),
        ("GET", "/models/m"),
        ("PUT", "/models/m?format=onnx"),
        ("DELETE", "/models/m"),
        ("POST", "/models/m/infer"),
    ]:
        for headers in (wrong, {}):
            answer = await http.request(method, worker.endpoint + path, headers=headers, content=b"{}")
            assert answer.status_code == 401, (method, path)
            assert answer.json() == {"error": "worker token required", "code": "AUTH_INVALID"}

    right = {"Authorization": f"Bearer {worker.token}"}
    for key in ("bad%20key", "a" * 101, "semi%3Bcolon"):
        answer = await http.get(f"{worker.endpoint}/models/{key}", headers=right)
        assert answer.status_code == 400 and answer.json()["code"] == "VALIDATION_ERROR", key
    with pytest.raises(ValidationFailed, match="model key"):
        await models.describe("../etc")
    assert (await http.get(f"{worker.endpoint}/models/{'a' * 100}", headers=right)).status_code == 404

    answer = await http.post(f"{worker.endpoint}/models/nothing/infer", headers=right, json={"inputs": {}})
    assert answer.status_code == 404 and answer.json()["code"] == "NOT_FOUND"


@in_module_loop
async def test_malformed_infer_bodies_are_refused(
    worker: WorkerProcess, http: httpx.AsyncClient, models: WorkerClient, tmp_path: Path
) -> None:
    await models.load("wire", mlp_file(tmp_path / "mlp.onnx"), "onnx", require_gpu=False)
    right = {"Authorization": f"Bearer {worker.token}"}
    url = f"{worker.endpoint}/models/wire/infer"
    for body in (
        b"not json",
        b"[]",
        b'{"inputs": {"x": {"dtype": "object", "shape": [1], "data": ""}}}',
        b'{"inputs": {"x": {"dtype": "float32", "shape": [1, 4], "data": "AAAA"}}}',
    ):
        answer = await http.post(url, headers=right, content=body)
        assert answer.status_code == 400 and answer.json()["code"] == "VALIDATION_ERROR", body


@pytest_asyncio.fixture(loop_scope="module")
async def small_worker(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> AsyncIterator[tuple[WorkerProcess, Path]]:
    monkeypatch.setenv("AISERVE_JWT_SECRET", "server-signing-secret")
    monkeypatch.setenv("AISERVE_DATABASE_URL", "postgresql://aiserve:hunter2@db/aiserve")
    tmpdir = tmp_path / "small-tmp"
    tmpdir.mkdir()
    started = await start_worker(
        visible_devices="", extra_env={MAX_MODEL_BYTES_ENV: "1000", "TMPDIR": str(tmpdir)}
    )
    yield started, tmpdir
    await stop_worker(started.process)


@in_module_loop
async def test_a_worker_sees_no_secrets_and_refuses_oversize_files(
    small_worker: tuple[WorkerProcess, Path], http: httpx.AsyncClient, tmp_path: Path
) -> None:
    worker, tmpdir = small_worker
    environ = _environ(worker.process.pid)
    assert "AISERVE_JWT_SECRET" not in environ and "AISERVE_DATABASE_URL" not in environ
    assert not any("hunter2" in value or "server-signing" in value for value in environ.values())
    assert environ["AISERVE_WORKER_TOKEN"] == worker.token and environ["CUDA_VISIBLE_DEVICES"] == ""
    workdir = _cwd(worker.process.pid)
    assert workdir != Path.cwd().resolve() and list(workdir.iterdir()) == []

    models = WorkerClient(http, worker.endpoint, worker.token, timeout_s=30)
    big = tmp_path / "big.onnx"
    big.write_bytes(b"\x08" * 5000)
    with pytest.raises(PayloadTooLarge, match="1000 bytes"):
        await models.load("big", big, "onnx", require_gpu=False)

    async def unsized() -> AsyncIterator[bytes]:
        for _ in range(5):
            yield b"\x08" * 1000

    answer = await http.put(
        f"{worker.endpoint}/models/big?format=onnx",
        headers={"Authorization": f"Bearer {worker.token}"},
        content=unsized(),
    )
    assert answer.status_code == 413 and answer.json()["code"] == "PAYLOAD_TOO_LARGE"
    (private,) = tmpdir.glob("aiserve-models-*")
    assert list(private.iterdir()) == []  # the partial file is gone

    await stop_worker(worker.process)
    assert not private.exists() and not workdir.exists()


def test_torchscript_forward_must_take_only_tensors(tmp_path: Path) -> None:
    path = _script(TakesInt(), tmp_path / "int.pt")
    with pytest.raises(ValidationFailed, match="parameter 'times' has type int") as refused:
        TorchScriptModel.load(path, prefer_gpu=False)
    assert refused.value.details == {"parameter": "times", "type": "int"}


def test_torchscript_errors_on_inputs_and_outputs(tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    model = TorchScriptModel.load(_script(Pair(), tmp_path / "pair.pt"), prefer_gpu=False, threads=1)
    assert torch.get_num_threads() == 1
    torch.set_num_threads(threads)
    arrays = model.prepare({"x": [[1.0, 2.0]], "y": [[1.0, 2.0, 3.0]]})
    assert arrays["x"].dtype == np.float32
    with pytest.raises(ValidationFailed, match="could not run on these inputs"):
        model.run(arrays)
    odd = TorchScriptModel.load(_script(ReturnsInt(), tmp_path / "odd.pt"), prefer_gpu=False)
    with pytest.raises(ValidationFailed, match="returned int for 'output_1'"):
        odd.run({"x": np.zeros(2, dtype=np.float32)})
    with pytest.raises(ValidationFailed, match="torch could not load"):
        TorchScriptModel.load(mlp_file(tmp_path / "mlp.onnx"), prefer_gpu=False)
