"""Micro-batching: the requests ready now for one model version become one onnxruntime call.

No timer: the first request of a batch schedules its flush with loop.call_soon, so a lone request runs
at once and requests that become ready in the same event-loop turn share the call. While a call
runs, new requests for that model queue up and all go in the next call (the busier the worker, the
bigger the batches). A long call runs in a single-thread executor: onnxruntime releases the GIL, so
the event loop keeps renewing BullMQ locks and writing heartbeats meanwhile. A call expected to be
short (the model version's recent calls took under INLINE_BELOW_MS) runs on the event loop itself:
handing it to a thread and back costs more than the call (measured at 500 one-row jobs/s: the
executor hop was about a fifth of the worker's CPU, and a millisecond of each job's latency).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from dataclasses import dataclass, field

import numpy as np

from .models import LoadedModel


@dataclass(frozen=True)
class Inference:
    output: object  # the request's JSON-able output
    compute_ms: float  # wall time of the onnxruntime call the request was in
    batch_size: int  # requests in that call


@dataclass
class _Request:
    rows: np.ndarray
    future: asyncio.Future


# A call expected to take less than this (ms) runs on the event loop, not in the executor.
INLINE_BELOW_MS = 1.0


@dataclass
class _Lane:
    """The requests waiting for one LoadedModel, and whether a call for it is running."""

    waiting: list[_Request] = field(default_factory=list)
    busy: bool = False
    flush_scheduled: bool = False


@dataclass
class _CallCost:
    """A model version's recent call time per row (ms, smoothed); None until its first call."""

    ms_per_row: float | None = None

    def expected_ms(self, rows: int) -> float:
        return float("inf") if self.ms_per_row is None else self.ms_per_row * rows

    def observe(self, compute_ms: float, rows: int) -> None:
        sample = compute_ms / max(rows, 1)
        self.ms_per_row = sample if self.ms_per_row is None else 0.8 * self.ms_per_row + 0.2 * sample


def _run_batch(model: LoadedModel, requests: list[_Request]) -> tuple[list[object], float]:
    """In the executor thread: one call over every request's rows, then each request's slice."""
    rows = requests[0].rows if len(requests) == 1 else np.concatenate([r.rows for r in requests])
    started = time.perf_counter()
    outputs = model.run(rows)
    compute_ms = (time.perf_counter() - started) * 1000.0
    results = []
    start = 0
    for request in requests:
        end = start + len(request.rows)
        results.append(model.output_for(outputs, start, end))
        start = end
    return results, compute_ms


class MicroBatcher:
    def __init__(self, executor: concurrent.futures.Executor | None = None, max_batch_rows: int = 4096):
        self._own_executor = executor is None
        self._executor = executor or concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="onnxruntime")
        self._max_batch_rows = max_batch_rows
        # Keyed by the LoadedModel object itself: a version reloaded from changed files is a new object
        # and never shares a call with the old one.
        self._lanes: dict[LoadedModel, _Lane] = {}
        self._costs: dict[LoadedModel, _CallCost] = {}
        self._calls: set[asyncio.Task] = set()
        self._closed = False

    async def infer(self, model: LoadedModel, rows: np.ndarray) -> Inference:
        if self._closed:
            raise RuntimeError("MicroBatcher is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()
        lane = self._lanes.setdefault(model, _Lane())
        lane.waiting.append(_Request(rows, future))
        if not lane.busy and not lane.flush_scheduled:
            lane.flush_scheduled = True
            loop.call_soon(self._flush, model)
        return await future

    def _flush(self, model: LoadedModel) -> None:
        lane = self._lanes[model]
        lane.flush_scheduled = False
        # Requests whose job was cancelled while waiting need no compute.
        lane.waiting = [r for r in lane.waiting if not r.future.done()]
        if lane.busy or not lane.waiting:
            if not lane.busy:
                del self._lanes[model]
            return
        batch = [lane.waiting.pop(0)]
        rows = len(batch[0].rows)
        while lane.waiting and rows + len(lane.waiting[0].rows) <= self._max_batch_rows:
            rows += len(lane.waiting[0].rows)
            batch.append(lane.waiting.pop(0))
        lane.busy = True
        task = asyncio.get_running_loop().create_task(self._call(model, lane, batch))
        self._calls.add(task)
        task.add_done_callback(self._calls.discard)

    async def _call(self, model: LoadedModel, lane: _Lane, batch: list[_Request]) -> None:
        loop = asyncio.get_running_loop()
        cost = self._costs.setdefault(model, _CallCost())
        rows = sum(len(r.rows) for r in batch)
        try:
            if cost.expected_ms(rows) < INLINE_BELOW_MS:
                results, compute_ms = _run_batch(model, batch)
            else:
                results, compute_ms = await loop.run_in_executor(self._executor, _run_batch, model, batch)
            cost.observe(compute_ms, rows)
        except asyncio.CancelledError:
            for request in batch:
                request.future.cancel()
            raise
        except Exception as error:
            # Every request in a failed call fails with it; the worker fails those jobs and BullMQ retries them.
            for request in batch:
                if not request.future.done():
                    request.future.set_exception(error)
        else:
            for request, output in zip(batch, results, strict=True):
                if not request.future.done():
                    request.future.set_result(Inference(output, compute_ms, len(batch)))
        finally:
            lane.busy = False
            # What queued up during the call goes next, together.
            if not lane.flush_scheduled:
                lane.flush_scheduled = True
                loop.call_soon(self._flush, model)

    async def close(self) -> None:
        """Lets every queued and running call finish, then stops the executor (if it is ours)."""
        self._closed = True
        while self._lanes or self._calls:
            if self._calls:
                await asyncio.gather(*self._calls, return_exceptions=True)
            else:
                await asyncio.sleep(0)
        if self._own_executor:
            self._executor.shutdown(wait=True)
