"""The stacks compared, the models served, and the peer kit that provides the peers."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent.parent
SIZES = {"small": [4, 64, 2], "big": [256, 1024, 1024, 10]}
PEER_STACKS = ["raw", "raw_batch", "fastapi", "triton", "triton_batch", "mlserver", "mlserver_batch"]
AISERVE_STACKS = {"aiserve": 1, "aiserve_batch": 64}  # stack -> AISERVE_MODEL_MAX_BATCH
ALL_STACKS = PEER_STACKS + list(AISERVE_STACKS)
KIT_FILES = ("raw_asgi.py", "fastapi_app.py", "pytriton_app.py")


def load_kit(kit: Path) -> tuple[Any, Any]:
    """The kit's ``bench_peers`` and ``ort_floor`` modules (untyped, hence ``Any``)."""
    sys.path.insert(0, str(kit))
    return importlib.import_module("bench_peers"), importlib.import_module("ort_floor")
