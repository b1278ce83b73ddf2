"""The Open Inference Protocol (KServe v2) over the caller's models, so Triton and KServe HTTP clients
work with an API key. A model is addressed by its id or its name (the newest of that name)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, Field, ValidatorFunctionWrapHandler, field_validator

from aiserve_mcp import __version__
from aiserve_mcp.core.errors import ValidationFailed
from aiserve_mcp.runtime.tensors import ANY_DTYPE, to_python
from aiserve_mcp.tools.common import Input, IntegerNumber, NoInput, Text
from aiserve_mcp.tools.ports import NoPorts, ServingPort, SystemPort
from aiserve_mcp.tools.registry import Annotations, ToolContext, tool

Datatype = Literal[
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
    "BYTES",
]
DATATYPES: dict[Datatype, str] = {
    "BOOL": "bool",
    "UINT8": "uint8",
    "UINT16": "uint16",
    "UINT32": "uint32",
    "UINT64": "uint64",
    "INT8": "int8",
    "INT16": "int16",
    "INT32": "int32",
    "INT64": "int64",
    "FP16": "float16",
    "FP32": "float32",
    "FP64": "float64",
    "BYTES": "str",
}
DTYPE_TO_V2 = {dtype: name for name, dtype in DATATYPES.items()}
PLATFORM = "onnxruntime_onnx"


class Live(BaseModel):
    live: bool


@tool(scope=None, annotations=Annotations("Server live"), agent_visible=False)
async def v2_live(ctx: ToolContext[NoPorts], args: NoInput) -> Live:
    """Open Inference Protocol liveness: the process answers."""
    return Live(live=True)


class Ready(BaseModel):
    ready: bool


@tool(scope=None, annotations=Annotations("Server ready"), agent_visible=False)
async def v2_ready(ctx: ToolContext[SystemPort], args: NoInput) -> Ready:
    """Open Inference Protocol readiness: the server can load and run models (its database answers)."""
    await ctx.services.db.ping()
    return Ready(ready=True)


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


@tool(scope=None, annotations=Annotations("Server metadata"), agent_visible=False)
async def v2_server_metadata(ctx: ToolContext[NoPorts], args: NoInput) -> ServerMetadata:
    """Open Inference Protocol server metadata: this server's name and version, and the protocol
    extensions it implements (``binary_tensor_data``: tensors as raw bytes after the JSON header)."""
    return ServerMetadata(name="aiserve", version=__version__, extensions=["binary_tensor_data"])


class ModelName(Input):
    model_name: Text = Field(min_length=1, max_length=200)


class TensorMeta(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMeta]
    outputs: list[TensorMeta]


def _tensors(specs: list[dict[str, Any]]) -> list[TensorMeta]:
    return [
        TensorMeta(
            name=s["name"],
            datatype=DTYPE_TO_V2.get(s["dtype"], s["dtype"].upper()),
            shape=[-1] if s["shape"] is None else [-1 if d is None else d for d in s["shape"]],
        )
        for s in specs
    ]


@tool(scope="models:read", annotations=Annotations("Model metadata (v2)"), agent_visible=False)
async def v2_model_metadata(ctx: ToolContext[ServingPort], args: ModelName) -> ModelMetadata:
    """Open Inference Protocol model metadata: versions, platform, input and output tensors (-1: any)."""
    row = await ctx.services.model_store.by_name(ctx.caller().user_id, args.model_name)
    signature = row.signature or {"inputs": [], "outputs": []}
    return ModelMetadata(
        name=row.name,
        versions=[row.version],
        platform=PLATFORM if row.format == "onnx" else row.format,
        inputs=_tensors(signature["inputs"]),
        outputs=_tensors(signature["outputs"]),
    )


class ModelReady(BaseModel):
    name: str
    ready: bool


@tool(scope="models:read", annotations=Annotations("Model ready (v2)"), agent_visible=False)
async def v2_model_ready(ctx: ToolContext[ServingPort], args: ModelName) -> ModelReady:
    """Open Inference Protocol model readiness (HTTP 200 when ready, 503 otherwise)."""
    row = await ctx.services.model_store.by_name(ctx.caller().user_id, args.model_name)
    return ModelReady(name=row.name, ready=row.status == "ready")


Dimension = Annotated[int, IntegerNumber(ge=0, le=2**31 - 1)]


class InferTensor(Input):
    tensor_fields = frozenset({"data"})

    name: str = Field(min_length=1, max_length=200)
    shape: list[Dimension] = Field(max_length=16)
    datatype: Datatype
    data: list[Any]
    parameters: dict[str, Any] = Field(default_factory=dict)

    @field_validator("data", mode="wrap")
    @classmethod
    def _decoded(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        """A tensor sent in binary (the binary tensor data extension) arrives as the array it decoded to."""
        return value if isinstance(value, np.ndarray) else handler(value)


class RequestedOutput(Input):
    name: str
    parameters: dict[str, Any] = Field(default_factory=dict)


class InferInput(ModelName):
    tensor_fields = frozenset({"inputs"})  # each tensor checks its own fields

    id: str | None = Field(default=None, max_length=200)
    inputs: list[InferTensor] = Field(min_length=1, max_length=64)
    outputs: list[RequestedOutput] | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)


class OutputTensor(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    data: list[Any]


class InferOutput(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[OutputTensor]


def _reshape(tensor: InferTensor) -> Any:
    if isinstance(tensor.data, np.ndarray):
        return tensor.data  # decoded from binary, shaped already
    flat = np.asarray(tensor.data, dtype=object).reshape(-1)
    if flat.size != int(np.prod(tensor.shape)):
        raise ValidationFailed(f"input '{tensor.name}': {flat.size} values do not fill shape {tensor.shape}")
    return flat.reshape(tensor.shape).tolist()


@tool(scope="models:read", annotations=Annotations("Infer (v2)", read_only=False), agent_visible=False)
async def v2_infer(ctx: ToolContext[ServingPort], args: InferInput) -> InferOutput:
    """Open Inference Protocol inference: typed tensors in (name, shape, datatype, row-major data), typed
    tensors out. Each input's datatype must be the model's."""
    row = await ctx.services.model_store.by_name(ctx.caller().user_id, args.model_name)
    expected = {s["name"]: s["dtype"] for s in (row.signature or {}).get("inputs", [])}
    for tensor in args.inputs:
        wanted = expected.get(tensor.name)
        if wanted not in (None, ANY_DTYPE) and DATATYPES.get(tensor.datatype) != wanted:
            raise ValidationFailed(
                f"input '{tensor.name}' is {DTYPE_TO_V2.get(wanted, wanted)}, not {tensor.datatype}"
            )
    result = await ctx.services.model_host.predict(row, {t.name: _reshape(t) for t in args.inputs})
    wanted_outputs = {o.name for o in args.outputs} if args.outputs else set(result.outputs)
    outputs = []
    for name, value in result.outputs.items():
        if name in wanted_outputs:
            array = np.asarray(to_python(value) if not isinstance(value, np.ndarray) else value)
            outputs.append(
                OutputTensor(
                    name=name,
                    datatype=DTYPE_TO_V2.get(array.dtype.name, "BYTES"),
                    shape=list(array.shape),
                    data=array.reshape(-1).tolist(),
                )
            )
    return InferOutput(model_name=row.name, model_version=row.version, id=args.id, outputs=outputs)
