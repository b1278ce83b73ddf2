"""The stacks compared, the models served, and the peer kit that provides the peers."""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent.parent
SIZES = {"small": [4, 64, 2], "big": [256, 1024, 1024, 10]}
PEER_STACKS = ["raw", "raw_batch", "fastapi", "triton", "triton_batch", "mlserver", "mlserver_batch"]
KIT_FILES = ("raw_asgi.py", "fastapi_app.py", "pytriton_app.py")


@dataclass(frozen=True)
class AiserveStack:
    """How ``aiserve serve`` runs: ``AISERVE_MODEL_MAX_BATCH``, ``--workers``, state in PostgreSQL and
    Redis (else SQLite in the data directory), and the CPUs the server and ``hey`` are pinned to."""

    max_batch: int
    workers: int = 1
    shared_state: bool = False
    server_cpus: str = "0"
    load_cpus: str = "1"


AISERVE_STACKS = {
    "aiserve": AiserveStack(max_batch=1),
    "aiserve_batch": AiserveStack(max_batch=64),
    # "1 vs 2 processes, unpinned on 2 cores": server and hey share both cores, state in PostgreSQL and
    # Redis. aiserve_w2 needs `aiserve serve --workers`; where the flag is missing its row says so.
    "aiserve_pg": AiserveStack(64, shared_state=True, server_cpus="0,1", load_cpus="0,1"),
    "aiserve_w2": AiserveStack(64, workers=2, shared_state=True, server_cpus="0,1", load_cpus="0,1"),
}
PINNED_STACKS = [*PEER_STACKS, "aiserve", "aiserve_batch"]
ALL_STACKS = [*PINNED_STACKS, "aiserve_pg", "aiserve_w2"]


def load_kit(kit: Path) -> tuple[Any, Any]:
    """The kit's ``bench_peers`` and ``ort_floor`` modules (untyped, hence ``Any``)."""
    sys.path.insert(0, str(kit))
    return importlib.import_module("bench_peers"), importlib.import_module("ort_floor")
