"""Model runtime: format detection from content, refusal of unsafe files, and checked ONNX inference."""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort  # type: ignore[import-untyped]
import pytest
from onnx import TensorProto, helper, numpy_helper

from aiserve_mcp.core.errors import ValidationFailed
from aiserve_mcp.runtime.formats import FORMATS, Detection, detect, servability
from aiserve_mcp.runtime.onnx_model import OnnxModel
from aiserve_mcp.runtime.pickle_scan import is_plain_weights, scan_pickle
from aiserve_mcp.runtime.tensors import TensorSpec

IR_VERSION = 10
OPSET = [helper.make_opsetid("", 17)]


def _save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def mlp_file(path: Path) -> Path:
    rng = np.random.default_rng(7)
    inits = [
        numpy_helper.from_array(rng.standard_normal((4, 64)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.standard_normal(64).astype(np.float32), "b1"),
        numpy_helper.from_array(rng.standard_normal((64, 2)).astype(np.float32), "w2"),
        numpy_helper.from_array(rng.standard_normal(2).astype(np.float32), "b2"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h0"]),
        helper.make_node("Add", ["h0", "b1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["h2"]),
        helper.make_node("MatMul", ["h2", "w2"], ["h3"]),
        helper.make_node("Add", ["h3", "b2"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])],
        inits,
    )
    return _save(helper.make_model(graph, opset_imports=OPSET, ir_version=IR_VERSION), path)


def _two_inputs(path: Path) -> Path:
    nodes = [
        helper.make_node("Cast", ["k"], ["kf"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["x", "kf"], ["prod"]),
        helper.make_node("Add", ["k", "k"], ["twice"]),
    ]
    graph = helper.make_graph(
        nodes,
        "two",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3]),
            helper.make_tensor_value_info("k", TensorProto.INT64, [None, 3]),
        ],
        [
            helper.make_tensor_value_info("prod", TensorProto.FLOAT, [None, 3]),
            helper.make_tensor_value_info("twice", TensorProto.INT64, [None, 3]),
        ],
    )
    return _save(helper.make_model(graph, opset_imports=OPSET, ir_version=IR_VERSION), path)


def _fixed(path: Path) -> Path:
    two = numpy_helper.from_array(np.array(2.0, dtype=np.float32), "two")
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["y"])],
        "fixed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
        [two],
    )
    return _save(helper.make_model(graph, opset_imports=OPSET, ir_version=IR_VERSION), path)


def _bool(path: Path) -> Path:
    graph = helper.make_graph(
        [helper.make_node("Not", ["b"], ["nb"])],
        "not",
        [helper.make_tensor_value_info("b", TensorProto.BOOL, ["n"])],
        [helper.make_tensor_value_info("nb", TensorProto.BOOL, ["n"])],
    )
    return _save(helper.make_model(graph, opset_imports=OPSET, ir_version=IR_VERSION), path)


def _reference(path: Path, feeds: dict[str, np.ndarray]) -> list[Any]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return list(session.run(None, feeds))


def test_mlp_predictions_match_onnxruntime(tmp_path: Path) -> None:
    path = mlp_file(tmp_path / "mlp.onnx")
    model = OnnxModel.load(path, prefer_gpu=False, threads=1)
    assert model.inputs == (TensorSpec("x", "float32", (None, 4)),)
    assert model.outputs[0].to_json() == {"name": "y", "dtype": "float32", "shape": [None, 2]}
    assert model.batchable and not model.used_gpu
    rows = np.random.default_rng(1).standard_normal((5, 4)).astype(np.float32)
    out = model.predict({"x": rows.tolist()})
    (expected,) = _reference(path, {"x": rows})
    assert np.array_equal(np.asarray(out["y"], dtype=np.float32), expected)
    single = model.predict({"features": rows[0].tolist()})
    assert np.array_equal(np.asarray(single["y"], dtype=np.float32), expected[:1])


def test_two_inputs_of_different_dtypes(tmp_path: Path) -> None:
    path = _two_inputs(tmp_path / "two.onnx")
    model = OnnxModel.load(path, prefer_gpu=True)
    x = np.array([[1.5, -2.0, 3.25], [0.0, 1.0, 2.0]], dtype=np.float32)
    k = np.array([[1, 2, 3], [4, 5, -6]], dtype=np.int64)
    out = model.predict({"x": x.tolist(), "k": [[1.0, 2, 3], [4, 5, -6]]})
    prod, twice = _reference(path, {"x": x, "k": k})
    assert np.array_equal(np.asarray(out["prod"], dtype=np.float32), prod)
    assert np.array_equal(np.asarray(out["twice"], dtype=np.int64), twice)
    assert all(isinstance(v, int) for v in out["twice"][0])


def test_fixed_shape_and_bool_models(tmp_path: Path) -> None:
    fixed = OnnxModel.load(_fixed(tmp_path / "fixed.onnx"), prefer_gpu=False)
    assert not fixed.batchable
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    (expected,) = _reference(tmp_path / "fixed.onnx", {"x": x})
    assert np.array_equal(np.asarray(fixed.predict({"x": x.tolist()})["y"], dtype=np.float32), expected)
    with pytest.raises(ValidationFailed, match=r"dimension 1 is 4, expected 3"):
        fixed.prepare({"x": [[1, 2, 3, 4], [5, 6, 7, 8]]})
    with pytest.raises(ValidationFailed, match="expected rank 2"):
        fixed.prepare({"x": [1, 2, 3]})
    flags = OnnxModel.load(_bool(tmp_path / "bool.onnx"), prefer_gpu=False)
    assert flags.predict({"b": [True, False, 1, 0]}) == {"nb": [False, True, False, True]}
    with pytest.raises(ValidationFailed, match="true/false or 0/1"):
        flags.prepare({"b": [2, 0]})


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"y": [[1, 2, 3]], "k": [[1, 2, 3]]}, "unknown inputs"),
        ({"x": [[1, 2, 3]]}, r"missing inputs \['k'\]"),
        ({"x": [[1, 2]], "k": [[1, 2, 3]]}, "dimension 1 is 2, expected 3"),
        ({"x": [[[1, 2, 3]]], "k": [[1, 2, 3]]}, "expected rank 2"),
        ({"x": [[1, 2, 3]], "k": [[1.5, 2, 3]]}, "fractions"),
        ({"x": [[float("nan"), 2, 3]], "k": [[1, 2, 3]]}, "NaN"),
        ({"x": [[float("inf"), 2, 3]], "k": [[1, 2, 3]]}, "NaN and infinite"),
        ({"x": [[1, 2, 3], [1, 2]], "k": [[1, 2, 3]]}, "ragged"),
        ({"x": [["a", "b", "c"]], "k": [[1, 2, 3]]}, "strings are not numbers"),
        ({"x": [[1, 2, 3]], "k": [[2**70, 2, 3]]}, "out of range for int64"),
        ({"x": [[1e39, 2, 3]], "k": [[1, 2, 3]]}, "overflow float32"),
        ({"x": [[None, 2, 3]], "k": [[1, 2, 3]]}, "non-numbers"),
    ],
)
def test_bad_inputs_are_refused(tmp_path: Path, inputs: dict[str, Any], message: str) -> None:
    model = OnnxModel.load(_two_inputs(tmp_path / "two.onnx"), prefer_gpu=False)
    with pytest.raises(ValidationFailed, match=message) as caught:
        model.prepare(inputs)
    assert caught.value.details


def test_nonfinite_allowed_on_request(tmp_path: Path) -> None:
    model = OnnxModel.load(mlp_file(tmp_path / "mlp.onnx"), prefer_gpu=False)
    arrays = model.prepare({"x": [1.0, float("nan"), 0.0, 2.0]}, allow_nonfinite=True)
    assert arrays["x"].shape == (1, 4) and arrays["x"].dtype == np.float32


def test_a_model_onnxruntime_refuses(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x0a garbage")
    with pytest.raises(ValidationFailed, match="onnxruntime could not load"):
        OnnxModel.load(bad, prefer_gpu=False)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(zipfile.ZipInfo(name), data)
    return path


def _safetensors() -> bytes:
    header = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    return struct.pack("<Q", len(header)) + header + b"\0" * 8


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_each_format_is_detected_from_its_bytes(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    layer = torch.nn.Linear(3, 2)
    torch.save(layer.state_dict(), tmp_path / "w.pt")
    torch.jit.script(layer).save(str(tmp_path / "s.pt"))
    cases: dict[str, tuple[Path, str | None]] = {
        "onnx": (mlp_file(tmp_path / "m.onnx"), None),
        "pytorch": (tmp_path / "w.pt", "weights"),
        "tensorflow": (
            _zip(tmp_path / "sm.zip", {"m/saved_model.pb": b"\x08\x01", "m/variables/x": b""}),
            "savedmodel",
        ),
        "keras": (
            _zip(tmp_path / "k.keras", {"config.json": b"{}", "model.weights.h5": b"\x89HDF\r\n\x1a\n"}),
            "keras_v3",
        ),
        "tflite": (_write(tmp_path / "t.tflite", b"\x1c\x00\x00\x00TFL3" + b"\0" * 32), None),
        "sklearn": (_write(tmp_path / "e.pkl", pickle.dumps({"coef": [1.0, 2.0]})), "pickle"),
        "xgboost": (_write(tmp_path / "x.json", b'{"learner":{"attributes":{}},"version":[2,1,0]}'), "json"),
        "lightgbm": (_write(tmp_path / "l.txt", b"tree\nversion=v4\nnum_class=1\n"), None),
        "safetensors": (_write(tmp_path / "s.safetensors", _safetensors()), None),
        "gguf": (_write(tmp_path / "g.gguf", b"GGUF" + struct.pack("<I", 3) + b"\0" * 16), None),
        "tensorrt": (_write(tmp_path / "e.bin", b"ftrt" + b"\0" * 60), None),
        "coreml": (
            _zip(
                tmp_path / "c.zip",
                {
                    "m.mlpackage/Manifest.json": b"{}",
                    "m.mlpackage/Data/com.apple.CoreML/model.mlmodel": b"\x08\x04",
                },
            ),
            "mlpackage",
        ),
        "pmml": (
            _write(tmp_path / "p.xml", b'<?xml version="1.0"?>\n<PMML version="4.4"><Header/></PMML>'),
            None,
        ),
    }
    assert set(cases) == {fmt.id for fmt in FORMATS}
    for format_id, (path, variant) in cases.items():
        found = detect(path)
        assert (found.format, found.variant) == (format_id, variant), found
    assert detect(tmp_path / "s.pt") == Detection("pytorch", "torchscript", detect(tmp_path / "s.pt").detail)
    assert detect(mlp_file(tmp_path / "m2.onnx")).detail == "ONNX model, opset 17, IR 10"
    assert detect(_write(tmp_path / "h.h5", b"\x89HDF\r\n\x1a\n" + b"\0" * 64)).variant == "h5"
    joblib_like = _write(tmp_path / "j.joblib", zlib.compress(pickle.dumps([1, 2, 3])))
    assert detect(joblib_like) == Detection("sklearn", "joblib", "zlib-compressed pickle (joblib)")
    assert detect(_write(tmp_path / "x.engine", os.urandom(64) + b"\0")).format == "tensorrt"
    assert detect(_write(tmp_path / "x.ubj", b"{L\x00\x00\x00\x00\x00\x00\x00\x07learner{")).variant == "ubj"


def test_servability() -> None:
    assert servability("onnx").servable and servability("onnx").runtime == "onnxruntime"
    assert servability("pytorch", "torchscript").runtime == "torch"
    assert "architecture" in servability("pytorch", "weights").reason
    assert "run code" in servability("sklearn", "pickle").reason
    tf = servability("tensorflow", "savedmodel")
    assert not tf.servable and "tensorflow" in tf.reason
    with pytest.raises(ValidationFailed, match="unknown model format"):
        servability("caffe")


def test_content_wins_over_the_name_and_declared_format_must_agree(tmp_path: Path) -> None:
    renamed = mlp_file(tmp_path / "x.pt")
    assert detect(renamed, filename="x.pt").format == "onnx"
    with pytest.raises(ValidationFailed, match="declared as pytorch but its content is onnx"):
        detect(renamed, declared="pytorch")
    assert detect(renamed, declared="onnx").format == "onnx"
    with pytest.raises(ValidationFailed, match="unrecognised model format"):
        detect(_write(tmp_path / "n.bin", b"hello world, not a model"))


def test_corrupt_onnx_and_external_data_are_refused(tmp_path: Path) -> None:
    whole = mlp_file(tmp_path / "m.onnx").read_bytes()
    truncated = _write(tmp_path / "t.onnx", whole[: len(whole) // 2])
    with pytest.raises(ValidationFailed, match="not a valid ONNX model"):
        detect(truncated)
    model = onnx.load(str(tmp_path / "m.onnx"))
    onnx.save(
        model, str(tmp_path / "ext.onnx"), save_as_external_data=True, location="w.bin", size_threshold=0
    )
    with pytest.raises(ValidationFailed, match="external data files are not accepted"):
        detect(tmp_path / "ext.onnx")


class _Evil:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.target}",))


def test_malicious_torch_pickle_is_refused_without_running(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    target = tmp_path / "pwned"
    torch.save({"w": torch.zeros(2), "x": _Evil(target)}, tmp_path / "evil.pt")
    with pytest.raises(ValidationFailed, match=r"references .*system.*would run code") as caught:
        detect(tmp_path / "evil.pt")
    assert any(g.endswith(".system") for g in caught.value.details["globals"])
    assert not target.exists()


def test_pickle_scan_resolves_stack_globals() -> None:
    found = scan_pickle(pickle.dumps(_Evil(Path("/nonexistent")), protocol=5))
    assert found == {f"{os.system.__module__}.system"}
    tricky = b"\x80\x04\x8c\x02os\x8c\x06system\x8c\x0ctorch._utils\x8c\x12_rebuild_tensor_v200\x93."
    assert scan_pickle(tricky) == {"os.system"}
    assert is_plain_weights(
        {"collections.OrderedDict", "torch._utils._rebuild_tensor_v2", "torch.FloatStorage"}
    )
    assert not is_plain_weights({"collections.OrderedDict", "builtins.eval"})
    with pytest.raises(ValidationFailed, match="not a valid pickle"):
        scan_pickle(b"\x80\x04\xff")


def test_zip_bombs_and_path_traversal_are_refused(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.pt"
    with (
        zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive,
        archive.open("a/data.pkl", "w") as member,
    ):
        chunk = b"\0" * (1024 * 1024)
        for _ in range(50):
            member.write(chunk)
    assert bomb.stat().st_size < 1024 * 1024
    with pytest.raises(ValidationFailed, match="zip bomb"):
        detect(bomb)
    with pytest.raises(ValidationFailed, match="unsafe path"):
        detect(_zip(tmp_path / "evil.zip", {"../evil": b"x", "a/data.pkl": pickle.dumps({})}))
    with pytest.raises(ValidationFailed, match="unsafe path"):
        detect(_zip(tmp_path / "abs.zip", {"/etc/passwd": b"x"}))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("readme.txt", b"hi")
    with pytest.raises(ValidationFailed, match="zip archive that is not"):
        detect(_write(tmp_path / "plain.zip", buffer.getvalue()))
