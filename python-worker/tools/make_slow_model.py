"""Writes the test model `slow` version 1 into a models directory: its compute takes about as many
milliseconds as the request's first value.

    python tools/make_slow_model.py <models_dir> [--iterations-per-ms K]

Integration tests use it to hold a job mid-compute for a known time (a worker killed mid-job, a
deadline passing during compute, the event loop staying responsive during a long call). It is a
real ONNX model run by onnxruntime like any other: input X [rows, 1] (milliseconds), output
`requested_ms` (each row's value, echoed). Inside, an ONNX Loop runs round(X[0][0] * K) times, each
iteration a fixed 32x32 MatMul and Tanh, so the whole batch takes X[0][0] ms (the first row decides;
requests are clamped to 0..60000 ms).

K (iterations per millisecond) is measured on this machine when the model is written, with the
worker's single-threaded session options: a trial model runs 200 ms worth of iterations three times
and the median sets K. Expect the compute to be within about +-50% of the requested time when
other processes compete for the CPU, closer on an idle machine. The manifest records K.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

SIZE = 32  # the MatMul each iteration does: small enough that K is large and the time fine-grained
MAX_MS = 60000.0
CALIBRATION_MS = 200.0


def build(iterations_per_ms: float) -> bytes:
    weights = np.random.default_rng(7).normal(0.0, 1.0 / np.sqrt(SIZE), (SIZE, SIZE)).astype(np.float32)
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("MatMul", ["state_in", "weights"], ["product"]),
            # Tanh keeps the state bounded however many iterations run (no inf, no NaN).
            helper.make_node("Tanh", ["product"], ["state_out"]),
        ],
        "spin",
        [
            helper.make_tensor_value_info("iteration", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("state_in", TensorProto.FLOAT, [SIZE, SIZE]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("state_out", TensorProto.FLOAT, [SIZE, SIZE]),
        ],
    )
    initializers = [
        numpy_helper.from_array(weights, "weights"),
        numpy_helper.from_array(np.full((SIZE, SIZE), 0.5, dtype=np.float32), "state_initial"),
        numpy_helper.from_array(np.array(0, dtype=np.int64), "first"),
        numpy_helper.from_array(np.array(0.0, dtype=np.float32), "min_ms"),
        numpy_helper.from_array(np.array(MAX_MS, dtype=np.float32), "max_ms"),
        numpy_helper.from_array(np.array(iterations_per_ms, dtype=np.float32), "iterations_per_ms"),
        numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero"),
        numpy_helper.from_array(np.array([-1], dtype=np.int64), "flat_shape"),
    ]
    nodes = [
        helper.make_node("Gather", ["X", "first"], ["first_row"], axis=0),
        helper.make_node("Gather", ["first_row", "first"], ["requested"], axis=0),
        helper.make_node("Clip", ["requested", "min_ms", "max_ms"], ["clamped"]),
        helper.make_node("Mul", ["clamped", "iterations_per_ms"], ["iterations_float"]),
        helper.make_node("Round", ["iterations_float"], ["iterations_rounded"]),
        helper.make_node("Cast", ["iterations_rounded"], ["iterations"], to=TensorProto.INT64),
        helper.make_node("Loop", ["iterations", "", "state_initial"], ["state_final"], body=body),
        # The output depends on the loop's result (times zero), so no optimizer can skip the loop.
        helper.make_node("ReduceSum", ["state_final"], ["state_sum"], keepdims=0),
        helper.make_node("Mul", ["state_sum", "zero"], ["nothing"]),
        helper.make_node("Reshape", ["X", "flat_shape"], ["requested_column"]),
        helper.make_node("Add", ["requested_column", "nothing"], ["requested_ms"]),
    ]
    graph = helper.make_graph(
        nodes,
        "slow_v1",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, 1])],
        [helper.make_tensor_value_info("requested_ms", TensorProto.FLOAT, [None])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="fleetwire tools/make_slow_model.py")
    model.ir_version = 8  # what opset 17 needs; keeps older onnxruntime releases able to load it
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString(deterministic=True)


def measure_ms(model_bytes: bytes, requested_ms: float) -> float:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(model_bytes, sess_options=options, providers=["CPUExecutionProvider"])
    rows = np.array([[requested_ms]], dtype=np.float32)
    session.run(None, {"X": rows})  # warm-up
    timings = []
    for _ in range(3):
        started = time.perf_counter()
        session.run(None, {"X": rows})
        timings.append((time.perf_counter() - started) * 1000.0)
    return statistics.median(timings)


def calibrate() -> float:
    trial_k = 100.0
    elapsed = measure_ms(build(trial_k), CALIBRATION_MS)
    return round(trial_k * CALIBRATION_MS / elapsed, 2)


def write(models_dir: Path, iterations_per_ms: float | None = None) -> Path:
    k = iterations_per_ms if iterations_per_ms is not None else calibrate()
    model_bytes = build(k)
    directory = Path(models_dir) / "slow" / "1"
    directory.mkdir(parents=True, exist_ok=True)
    manifest = {
        "name": "slow",
        "version": "1",
        "description": "Test model: computes for about X[0][0] milliseconds (an ONNX Loop of 32x32 MatMuls), then echoes its input.",
        "inputs": [{"name": "X", "dtype": "float32", "shape": [None, 1], "columns": ["ms"]}],
        "outputs": [{"name": "requested_ms", "dtype": "float32", "shape": [None], "meaning": "each row's value, echoed"}],
        "sha256": hashlib.sha256(model_bytes).hexdigest(),
        "training": {
            "script": "tools/make_slow_model.py",
            "iterations_per_ms": k,
            "calibration": "measured when written: median of 3 runs of a 200 ms trial, single-threaded session",
        },
    }
    (directory / "model.onnx").write_bytes(model_bytes)
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return directory


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models_dir", type=Path)
    parser.add_argument("--iterations-per-ms", type=float, default=None, help="skip the calibration and use this K")
    args = parser.parse_args(argv)
    directory = write(args.models_dir, args.iterations_per_ms)
    print(f"wrote {directory}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
