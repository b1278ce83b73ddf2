"""Requests to a model's replicas, with greedy dynamic batching.

A run starts on an idle replica as soon as the event loop has handed on the requests it already received
(a task scheduled behind them, no timer), so those go together; requests that arrive while every replica
is busy wait and go together in the next free replica's run (up to ``max_batch`` rows). With
``max_delay_s`` 0 (the default) there is no timer, so a lone request pays nothing for batching and under
load each run carries everything that queued. A positive ``max_delay_s`` lets an idle replica wait up
to that long after the oldest queued request for a batch to fill, trading latency for larger batches.

Requests are coalesced along the first (batch) axis only when the model's inputs all have a free first
dimension and the requests' other dimensions agree; each answer is cut back out of the batched outputs by
its row range, so it equals what a single run would return.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

Arrays = Mapping[str, np.ndarray]


class Replica(Protocol):
    """One loaded copy of a model that runs one batch at a time."""

    async def run(self, arrays: Arrays) -> tuple[dict[str, Any], bool]:
        """Outputs by name, and whether the run really used a GPU."""
        ...

    async def aclose(self) -> None: ...


@dataclass
class _Pending:
    arrays: Arrays
    rows: int
    key: object
    arrived: float = field(default_factory=time.monotonic)
    done: asyncio.Future[tuple[dict[str, Any], bool]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


def _key(arrays: Arrays) -> tuple[Any, ...]:
    return tuple(sorted((name, a.dtype.str, a.shape[1:]) for name, a in arrays.items()))


class Dispatcher:
    def __init__(
        self,
        replicas: Sequence[Replica],
        *,
        batchable: bool,
        max_batch: int,
        max_delay_s: float = 0.0,
        on_run: Callable[[int], None] = lambda _: None,
    ) -> None:
        if not replicas:
            raise ValueError("a dispatcher needs at least one replica")
        self.replicas = tuple(replicas)
        self._idle = list(replicas)
        self._batchable = batchable and max_batch > 1
        self._max_batch = max_batch
        self._max_delay_s = max_delay_s
        self._on_run = on_run  # told how many requests each run carries
        self._queue: list[_Pending] = []
        self._queued_rows = 0
        self._filled = asyncio.Event()
        self._filling = False  # a replica is waiting for its batch to fill
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, arrays: Arrays) -> tuple[dict[str, Any], bool]:
        """Run ``arrays`` alone or batched with others that queued; outputs and whether a GPU ran them."""
        rows = {a.shape[0] for a in arrays.values() if a.ndim > 0}
        if self._batchable and len(rows) == 1:
            pending = _Pending(arrays, rows.pop(), _key(arrays))
        else:
            pending = _Pending(arrays, 0, object())  # a key of its own: it always runs alone
        self._queue.append(pending)
        self._queued_rows += pending.rows
        if self._queued_rows >= self._max_batch:
            self._filled.set()
        if self._idle and not self._filling:  # one replica per request at most; none while one fills
            self._start_serving(self._idle.pop())
        return await asyncio.shield(pending.done)

    def _start_serving(self, replica: Replica) -> None:
        task = asyncio.get_running_loop().create_task(self._serve(replica))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

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
        self._queued_rows -= rows
        if self._queued_rows < self._max_batch:
            self._filled.clear()
        return batch

    async def _fill(self) -> None:
        """Wait, at most until the oldest request is ``max_delay_s`` old, for a full batch to queue."""
        wait_s = self._queue[0].arrived + self._max_delay_s - time.monotonic()
        if wait_s > 0 and self._queued_rows < self._max_batch:
            self._filling = True
            try:
                await asyncio.wait_for(self._filled.wait(), wait_s)
            except TimeoutError:
                pass
            finally:
                self._filling = False

    async def _serve(self, replica: Replica) -> None:
        try:
            while self._queue:
                if self._batchable and self._max_delay_s > 0:
                    await self._fill()
                    if not self._queue:
                        break
                batch = self._take()
                self._on_run(len(batch))
                try:
                    results = await self._run_batch(replica, batch)
                except Exception as exc:
                    for item in batch:
                        if not item.done.done():
                            item.done.set_exception(exc)
                    continue
                for item, result in zip(batch, results, strict=True):
                    if not item.done.done():
                        item.done.set_result(result)
        finally:
            self._idle.append(replica)

    @staticmethod
    async def _run_batch(replica: Replica, batch: list[_Pending]) -> list[tuple[dict[str, Any], bool]]:
        if len(batch) == 1:
            return [await replica.run(batch[0].arrays)]
        joined = {name: np.concatenate([p.arrays[name] for p in batch]) for name in batch[0].arrays}
        total = sum(p.rows for p in batch)
        outputs, used_gpu = await replica.run(joined)
        if not all(
            isinstance(v, np.ndarray) and v.ndim > 0 and v.shape[0] == total for v in outputs.values()
        ):
            return [await replica.run(p.arrays) for p in batch]  # outputs not per row: answer each alone
        results, start = [], 0
        for p in batch:
            results.append(
                ({name: value[start : start + p.rows] for name, value in outputs.items()}, used_gpu)
            )
            start += p.rows
        return results

    async def aclose(self) -> None:
        """Stop serving and close every replica; queued requests fail."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for item in self._queue:
            if not item.done.done():
                item.done.set_exception(asyncio.CancelledError())
        self._queue = []
        for replica in self.replicas:
            await replica.aclose()
