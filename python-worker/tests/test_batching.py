"""Micro-batching with real onnxruntime calls: requests ready together share one call, each gets
its own rows' answer, a lone request is not held back, and a long call leaves the event loop free."""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib.util
import logging
import shutil
import statistics
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
from fleetwire_ml.batching import MicroBatcher
from fleetwire_ml.models import ModelRegistry

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
LOG = logging.getLogger("test_batching")

ROWS = [
    [[24.0, 45.0, 0.05, 1.2]],
    [[85.0, 45.0, 0.05, 1.2], [22.0, 50.0, 0.06, 1.15]],
    [[24.0, 100.0, 0.05, 1.2]],
    [[-20.0, 45.0, 0.05, 1.2], [26.5, 40.0, 0.04, 1.25], [21.0, 38.0, 0.045, 1.1]],
    [[30.0, 60.0, 0.08, 1.4]],
]


def _make_slow_model():
    spec = importlib.util.spec_from_file_location("make_slow_model", PACKAGE_ROOT / "tools" / "make_slow_model.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> ModelRegistry:
    models = tmp_path_factory.mktemp("models")
    shutil.copytree(PACKAGE_ROOT / "models" / "anomaly", models / "anomaly")
    _make_slow_model().write(models)  # calibrated on this machine
    registry = ModelRegistry(models, LOG)
    registry.scan()
    return registry


@pytest.fixture
async def batcher() -> AsyncIterator[MicroBatcher]:
    batcher = MicroBatcher()
    yield batcher
    await batcher.close()


async def test_requests_ready_in_one_turn_share_one_call_and_each_gets_its_rows(registry: ModelRegistry, batcher: MicroBatcher) -> None:
    model = registry.resolve("anomaly", None)
    prepared = [model.prepare(rows, 1024) for rows in ROWS]
    results = await asyncio.gather(*(batcher.infer(model, rows) for rows in prepared))
    assert [r.batch_size for r in results] == [len(ROWS)] * len(ROWS)
    assert len({r.compute_ms for r in results}) == 1  # the one call's time, for everyone in it
    for rows, result in zip(prepared, results, strict=True):
        alone = model.output_for(model.run(rows), 0, len(rows))
        assert result.output == alone


async def test_different_versions_never_share_a_call(registry: ModelRegistry, batcher: MicroBatcher) -> None:
    first, second = registry.resolve("anomaly", "1"), registry.resolve("anomaly", "2")
    rows = first.prepare(ROWS[0], 1024)
    results = await asyncio.gather(
        batcher.infer(first, rows), batcher.infer(second, rows), batcher.infer(second, rows), batcher.infer(first, rows)
    )
    assert [r.batch_size for r in results] == [2, 2, 2, 2]
    assert results[0].output == results[3].output != results[1].output == results[2].output


async def test_a_lone_request_is_not_held_back(registry: ModelRegistry, batcher: MicroBatcher) -> None:
    model = registry.resolve("anomaly", None)
    rows = model.prepare(ROWS[0], 1024)
    await batcher.infer(model, rows)  # warm-up
    overheads = []
    for _ in range(30):
        started = time.perf_counter()
        result = await batcher.infer(model, rows)
        overheads.append((time.perf_counter() - started) * 1000 - result.compute_ms)
        assert result.batch_size == 1
    # No batching timer: apart from the call itself, only a thread hand-off (well under a millisecond).
    assert statistics.median(overheads) < 2.0


async def test_requests_arriving_during_a_call_go_together_in_the_next(registry: ModelRegistry, batcher: MicroBatcher) -> None:
    slow = registry.resolve("slow", None)
    # 300 ms requested: even if it ran twice as fast as calibrated, the three below arrive during it.
    running = asyncio.ensure_future(batcher.infer(slow, slow.prepare([[300]], 10)))
    await asyncio.sleep(0.03)
    late = []
    for _ in range(3):
        late.append(asyncio.ensure_future(batcher.infer(slow, slow.prepare([[5]], 10))))
        await asyncio.sleep(0.01)  # each in its own event-loop turn
    assert (await running).batch_size == 1
    results = await asyncio.gather(*late)
    assert [r.batch_size for r in results] == [3, 3, 3]
    assert [r.output for r in results] == [{"requested_ms": [5.0]}] * 3


async def test_a_long_call_leaves_the_event_loop_free(registry: ModelRegistry, batcher: MicroBatcher) -> None:
    slow = registry.resolve("slow", None)
    gaps: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        # Stands in for BullMQ lock renewals and heartbeats during the call.
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(0.01)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    ticking = asyncio.ensure_future(ticker())
    result = await batcher.infer(slow, slow.prepare([[400]], 10))
    done.set()
    await ticking
    # The slow model takes about the requested time (calibrated when written; +-50%).
    assert 200 <= result.compute_ms <= 600
    assert len(gaps) >= 10
    assert max(gaps) < 0.15


async def test_a_failed_call_fails_every_request_in_it(registry: ModelRegistry, batcher: MicroBatcher) -> None:
    model = registry.resolve("anomaly", None)
    good = model.prepare(ROWS[0], 1024)
    wrong_type = np.asarray(ROWS[1], dtype=np.float64)  # onnxruntime refuses double input for this graph
    results = await asyncio.gather(batcher.infer(model, good), batcher.infer(model, wrong_type), return_exceptions=True)
    assert all(isinstance(r, Exception) for r in results)
    assert results[0] is results[1]
    # The batcher keeps serving afterwards.
    assert (await batcher.infer(model, good)).batch_size == 1


async def test_a_batch_holds_at_most_max_batch_rows(registry: ModelRegistry) -> None:
    model = registry.resolve("anomaly", None)
    batcher = MicroBatcher(max_batch_rows=4)
    try:
        two_rows = model.prepare(ROWS[1], 1024)
        results = await asyncio.gather(*(batcher.infer(model, two_rows) for _ in range(3)))
        assert [r.batch_size for r in results] == [2, 2, 1]
        assert all(r.output == results[0].output for r in results)
    finally:
        await batcher.close()


async def test_close_lets_queued_and_running_calls_finish(registry: ModelRegistry) -> None:
    slow = registry.resolve("slow", None)
    batcher = MicroBatcher()
    pending = [asyncio.ensure_future(batcher.infer(slow, slow.prepare([[50]], 10))) for _ in range(2)]
    await asyncio.sleep(0)
    await batcher.close()
    assert all(task.done() and task.result().output == {"requested_ms": [50.0]} for task in pending)
    with pytest.raises(RuntimeError):
        await batcher.infer(slow, slow.prepare([[1]], 10))


class CountingExecutor(concurrent.futures.ThreadPoolExecutor):
    """A real single-thread executor that counts the calls handed to it."""

    def __init__(self) -> None:
        super().__init__(max_workers=1)
        self.submitted = 0

    def submit(self, *args, **kwargs):  # type: ignore[override]
        self.submitted += 1
        return super().submit(*args, **kwargs)


async def test_a_call_known_to_be_short_runs_on_the_event_loop_and_a_long_one_in_the_thread(registry: ModelRegistry) -> None:
    executor = CountingExecutor()
    batcher = MicroBatcher(executor)
    anomaly = registry.resolve("anomaly", None)
    rows = anomaly.prepare([[21.5, 40.0, 0.02, 1.3]], 10)
    first = await batcher.infer(anomaly, rows)  # its cost is not known yet: the thread
    assert executor.submitted == 1
    for _ in range(20):
        assert (await batcher.infer(anomaly, rows)).output == first.output
    assert executor.submitted == 1  # a one-row call of this model takes far under INLINE_BELOW_MS
    slow = registry.resolve("slow", None)
    await batcher.infer(slow, slow.prepare([[50]], 10))
    await batcher.infer(slow, slow.prepare([[50]], 10))
    assert executor.submitted == 3  # 50 ms calls always go to the thread
    await batcher.close()
    executor.shutdown()
