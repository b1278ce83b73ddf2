"""Greedy dynamic batching: a run starts at once when the model is idle; requests that arrive while it
is busy wait and go together in the next run (up to ``max_batch`` rows). No timer, so a lone request
pays nothing for batching, and under load each run carries everything that queued.

Requests are coalesced along the first (batch) axis only when their other dimensions agree; each answer
is cut back out of the batched outputs by its row range, so it equals what a single run would return.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio
import numpy as np

Arrays = dict[str, np.ndarray]
Runner = Callable[[Mapping[str, np.ndarray]], dict[str, Any]]


@dataclass
class _Pending:
    arrays: Arrays
    rows: int
    key: tuple[Any, ...]
    done: asyncio.Future[dict[str, Any]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


def _key(arrays: Arrays) -> tuple[Any, ...]:
    return tuple(sorted((name, a.dtype.str, a.shape[1:]) for name, a in arrays.items()))


class GreedyBatcher:
    def __init__(self, run: Runner, max_batch: int, on_run: Callable[[int], None] = lambda _: None) -> None:
        self._run = run
        self._max_batch = max_batch
        self._on_run = on_run  # told how many requests each run carries
        self._queue: list[_Pending] = []
        self._worker: asyncio.Task[None] | None = None

    async def submit(self, arrays: Arrays) -> dict[str, Any]:
        """Run ``arrays`` (every input with the same first dimension) alone or with others that queued."""
        rows = {a.shape[0] for a in arrays.values() if a.ndim > 0}
        if len(rows) != 1:
            return await anyio.to_thread.run_sync(self._run, arrays)
        pending = _Pending(arrays, rows.pop(), _key(arrays))
        self._queue.append(pending)
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._drain())
        return await asyncio.shield(pending.done)

    def _take(self) -> list[_Pending]:
        first = self._queue[0]
        batch: list[_Pending] = []
        rest: list[_Pending] = []
        rows = 0
        for item in self._queue:
            if item.key == first.key and (not batch or rows + item.rows <= self._max_batch):
                batch.append(item)
                rows += item.rows
            else:
                rest.append(item)
        self._queue = rest
        return batch

    async def _drain(self) -> None:
        while self._queue:
            batch = self._take()
            self._on_run(len(batch))
            try:
                results = await anyio.to_thread.run_sync(self._run_batch, batch)
            except Exception as exc:
                for item in batch:
                    if not item.done.done():
                        item.done.set_exception(exc)
                continue
            for item, result in zip(batch, results, strict=True):
                if not item.done.done():
                    item.done.set_result(result)

    def _run_batch(self, batch: list[_Pending]) -> list[dict[str, Any]]:
        if len(batch) == 1:
            return [self._run(batch[0].arrays)]
        joined = {name: np.concatenate([p.arrays[name] for p in batch]) for name in batch[0].arrays}
        total = sum(p.rows for p in batch)
        outputs = self._run(joined)
        if not all(
            isinstance(v, np.ndarray) and v.ndim > 0 and v.shape[0] == total for v in outputs.values()
        ):
            return [self._run(p.arrays) for p in batch]  # outputs not per row: answer each alone
        results, start = [], 0
        for p in batch:
            results.append({name: value[start : start + p.rows] for name, value in outputs.items()})
            start += p.rows
        return results
