"""Static inspection of pickle streams: which globals a pickle would import, found without unpickling it.

``scan_pickle`` walks the opcodes with :func:`pickletools.genops` and simulates the stack and the memo so
that ``STACK_GLOBAL`` (protocol 4+) resolves to the two strings it really consumes. A reference that cannot
be resolved statically is reported as ``"<unresolved>"``, and copyreg extension codes as
``"<extension N>"``; neither is ever in the allow-list, so such pickles are never taken for plain weights.
"""

from __future__ import annotations

import pickletools
from typing import Final

from aiserve_mcp.core.errors import ValidationFailed

_MARK: Final = object()

_STRING_OPS: Final = frozenset(
    {"STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8"}
)
_PUT_OPS: Final = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})
_GET_OPS: Final = frozenset({"GET", "BINGET", "LONG_BINGET"})
_EXT_OPS: Final = frozenset({"EXT1", "EXT2", "EXT4"})

_STORAGES: Final = (
    "Float",
    "Double",
    "Half",
    "BFloat16",
    "Long",
    "Int",
    "Short",
    "Char",
    "Byte",
    "Bool",
    "ComplexFloat",
    "ComplexDouble",
    "Untyped",
)
_DTYPES: Final = (
    "float16",
    "float32",
    "float64",
    "bfloat16",
    "complex64",
    "complex128",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "bool",
)

PLAIN_WEIGHT_GLOBALS: Final[frozenset[str]] = frozenset(
    {
        "collections.OrderedDict",
        "torch._utils._rebuild_tensor",
        "torch._utils._rebuild_tensor_v2",
        "torch._utils._rebuild_parameter",
        "torch._utils._rebuild_parameter_with_state",
        "torch.Size",
        "torch.device",
        "torch.storage.UntypedStorage",
        *(f"torch.{kind}Storage" for kind in _STORAGES),
        *(f"torch.{dtype}" for dtype in _DTYPES),
    }
)
"""Globals a plain PyTorch state dict references: tensor and parameter rebuilders, storages, dtypes, sizes
and ``OrderedDict`` — the common core of what ``torch.load(weights_only=True)`` accepts."""


def scan_pickle(data: bytes) -> set[str]:
    """The ``module.name`` globals the pickle in ``data`` references (``GLOBAL``, ``INST``, ``STACK_GLOBAL``).

    Nothing is unpickled or imported. Raises :class:`ValidationFailed` when ``data`` is not a well-formed
    pickle stream."""
    found: set[str] = set()
    stack: list[object] = []
    memo: dict[int, object] = {}
    try:
        for op, arg, _pos in pickletools.genops(data):
            name = op.name
            if name in ("GLOBAL", "INST"):
                module, _, attr = str(arg).partition(" ")
                found.add(f"{module}.{attr}")
            elif name == "STACK_GLOBAL":
                module_name = stack[-2:] if len(stack) >= 2 else []
                if len(module_name) == 2 and all(isinstance(part, str) for part in module_name):
                    found.add(f"{module_name[0]}.{module_name[1]}")
                else:
                    found.add("<unresolved>")
            elif name in _EXT_OPS:
                found.add(f"<extension {arg}>")
            if name in _PUT_OPS:
                memo[int(arg)] = stack[-1] if stack else None  # type: ignore[arg-type]
                continue
            if name == "MEMOIZE":
                memo[len(memo)] = stack[-1] if stack else None
                continue
            if name in _GET_OPS:
                stack.append(memo.get(int(arg)))  # type: ignore[arg-type]
                continue
            _apply_stack_effect(op, arg, stack)
    except (ValueError, IndexError, KeyError) as exc:
        raise ValidationFailed(f"not a valid pickle stream: {exc}") from exc
    return found


def _apply_stack_effect(op: pickletools.OpcodeInfo, arg: object, stack: list[object]) -> None:
    before = op.stack_before
    if pickletools.markobject in before:
        mark_at = max((i for i, item in enumerate(stack) if item is _MARK), default=None)
        if mark_at is None:
            raise ValueError(f"{op.name} without a MARK")
        del stack[mark_at:]
        below = before.index(pickletools.markobject)
    else:
        below = len(before)
    if below > len(stack):
        raise ValueError(f"{op.name} pops more than the stack holds")
    if below:
        del stack[-below:]
    for item in op.stack_after:
        if item is pickletools.markobject:
            stack.append(_MARK)
        elif op.name in _STRING_OPS and isinstance(arg, str):
            stack.append(arg)
        else:
            stack.append(None)


def is_plain_weights(globals_: set[str]) -> bool:
    """True when every referenced global is a tensor-rebuild helper, storage, dtype, ``torch.Size`` or
    ``collections.OrderedDict`` (see :data:`PLAIN_WEIGHT_GLOBALS`); an empty set is plain data."""
    return globals_ <= PLAIN_WEIGHT_GLOBALS


def disallowed_globals(globals_: set[str]) -> list[str]:
    """The referenced globals outside :data:`PLAIN_WEIGHT_GLOBALS`, sorted."""
    return sorted(globals_ - PLAIN_WEIGHT_GLOBALS)
