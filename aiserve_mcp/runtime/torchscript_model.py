"""TorchScript models served with torch.

Loading a TorchScript archive does not unpickle arbitrary Python globals the way ``torch.load`` does, but it
does compile and run the code stored in the archive: a model is a program. So this module is only ever
used inside a worker process (``aiserve worker``), never in the API server, and torch is imported only when
a model is loaded.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import numpy as np

from aiserve_mcp.core.errors import ServiceUnavailable, ValidationFailed
from aiserve_mcp.runtime.tensors import ANY_DTYPE, TensorSpec, prepare

SINGLE_OUTPUT: Final = "output"


def _input_specs(schema: Any) -> tuple[TensorSpec, ...]:
    """One spec per parameter of ``forward`` after ``self``; every parameter must be a plain Tensor."""
    specs = []
    for argument in list(schema.arguments)[1:]:
        if str(argument.type) != "Tensor":
            raise ValidationFailed(
                f"the model's forward() parameter {argument.name!r} has type {argument.type}; "
                "only Tensor parameters are supported",
                {"parameter": argument.name, "type": str(argument.type)},
            )
        specs.append(TensorSpec(argument.name, ANY_DTYPE, None))
    return tuple(specs)


def _to_numpy(name: str, value: Any) -> np.ndarray:
    import torch

    if not isinstance(value, torch.Tensor):
        raise ValidationFailed(
            f"the model returned {type(value).__name__} for {name!r}; outputs must be tensors, "
            "a tuple or list of tensors, or a dict of tensors"
        )
    try:
        return value.detach().cpu().numpy()
    except TypeError as exc:
        raise ValidationFailed(f"the model's output {name!r} has type {value.dtype}: {exc}") from exc


def _name_outputs(result: Any) -> dict[str, np.ndarray]:
    """A single tensor as ``output``, a tuple or list as ``output_0``, ``output_1``..., a dict by its keys."""
    if isinstance(result, tuple | list):
        return {f"{SINGLE_OUTPUT}_{i}": _to_numpy(f"{SINGLE_OUTPUT}_{i}", v) for i, v in enumerate(result)}
    if isinstance(result, dict):
        if not all(isinstance(key, str) for key in result):
            raise ValidationFailed("the model returned a dict whose keys are not all strings")
        return {key: _to_numpy(key, value) for key, value in result.items()}
    return {SINGLE_OUTPUT: _to_numpy(SINGLE_OUTPUT, result)}


class TorchScriptModel:
    """A loaded TorchScript module: its inputs (the parameters of ``forward``) and checked inference.

    TorchScript declares neither dtypes nor shapes, so every input is ``any`` of unknown rank and the
    outputs are only named when the model runs."""

    runtime: Final = "torch"

    def __init__(self, module: Any, device: Any) -> None:
        self._module = module
        self._device = device
        self.inputs: tuple[TensorSpec, ...] = _input_specs(module.forward.schema)
        self.outputs: tuple[TensorSpec, ...] = ()
        self.used_gpu: bool = device.type == "cuda"

    @classmethod
    def load(cls, path: Path, *, prefer_gpu: bool, threads: int | None = None) -> TorchScriptModel:
        """Load ``path`` onto ``cuda:0`` when ``prefer_gpu`` and CUDA is available, otherwise the CPU, in
        eval mode; ``threads`` sets torch's intra-op threads. :class:`ValidationFailed` when the file is
        not a TorchScript archive or its ``forward`` takes anything but tensors."""
        try:
            import torch
        except ImportError:
            raise ServiceUnavailable("PyTorch is not installed on this worker: install torch") from None

        if threads is not None:
            torch.set_num_threads(threads)
        device = torch.device("cuda:0" if prefer_gpu and torch.cuda.is_available() else "cpu")
        try:
            module = torch.jit.load(str(path), map_location=device)  # type: ignore[no-untyped-call]
        except Exception as exc:
            raise ValidationFailed(f"torch could not load the TorchScript archive: {exc}") from exc
        return cls(module.eval(), device)

    @property
    def batchable(self) -> bool:
        """Always False: TorchScript does not declare a batch dimension."""
        return False

    def prepare(self, raw: Mapping[str, Any], *, allow_nonfinite: bool = False) -> dict[str, np.ndarray]:
        """Check and convert request values for this model's inputs (see :func:`tensors.prepare`)."""
        return prepare(self.inputs, raw, allow_nonfinite=allow_nonfinite)

    def _tensor(self, array: np.ndarray) -> Any:
        import torch

        return torch.from_numpy(array if array.flags.writeable else array.copy()).to(self._device)

    def run(self, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Call ``forward`` with prepared arrays in declared order; outputs named as :func:`_name_outputs`
        says. :class:`ValidationFailed` when torch fails on the inputs or the outputs are not tensors."""
        import torch

        with torch.inference_mode():
            try:
                args = [self._tensor(arrays[spec.name]) for spec in self.inputs]
            except TypeError as exc:
                raise ValidationFailed(f"torch cannot take these inputs: {exc}") from exc
            try:
                result = self._module(*args)
            except RuntimeError as exc:
                raise ValidationFailed(f"the model could not run on these inputs: {exc}") from exc
            return _name_outputs(result)
