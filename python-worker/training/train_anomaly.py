"""Trains the `anomaly` model and writes models/anomaly/<version>/{model.onnx, manifest.json}.

    python training/train_anomaly.py --version 2 --out models/

The data is synthetic device readings this script generates from a fixed seed: a plausible normal
operating range for [temperature_c, humidity_pct, vibration_g, current_a] plus a few faults (one
channel anywhere in its sensor's range outside the normal band). A scikit-learn IsolationForest
learns it and skl2onnx exports it with the converter below (all trees in one TreeEnsembleRegressor)
into what a device wants per row: `score` (higher is more anomalous, above 0 is an anomaly) and
`anomaly` (a boolean). The export is checked against sklearn's own scores on every run.

The output is byte for byte reproducible with the pinned versions (pyproject.toml's train extra):
fixed seeds, single-threaded training, opsets in a fixed order, and no timestamps or converter
versions in model.onnx. tests/test_training.py retrains and compares with the shipped files.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import skl2onnx
import sklearn
from onnx import TensorProto, helper
from skl2onnx import to_onnx, update_registered_converter
from skl2onnx.common.data_types import BooleanTensorType, FloatTensorType
from sklearn.ensemble import IsolationForest
from sklearn.ensemble._iforest import _average_path_length

COLUMNS = ["temperature_c", "humidity_pct", "vibration_g", "current_a"]
# Opsets onnxruntime has long supported; pinned so that a newer onnx does not change the file.
TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}

# What differs between versions: version 2 sees four times the data, uses twice the trees on smaller
# subsamples (a smoother score) and expects a higher fault rate, so it flags borderline readings sooner.
VERSIONS = {
    1: {
        "seed": 1201,
        "samples": 5000,
        "fault_rate": 0.03,
        "n_estimators": 50,
        "max_samples": 256,
        "contamination": 0.03,
        "description": "Anomaly score for device readings: IsolationForest, 50 trees of 256 samples, trained on 5,000 synthetic readings "
        "with 3% faults.",
    },
    2: {
        "seed": 1202,
        "samples": 20000,
        "fault_rate": 0.05,
        "n_estimators": 100,
        "max_samples": 128,
        "contamination": 0.05,
        "description": "Anomaly score for device readings: IsolationForest, 100 trees of 128 samples, trained on 20,000 synthetic "
        "readings with 5% faults. Differs from version 1: 4x the data, 2x the trees on smaller subsamples, contamination 0.05 "
        "instead of 0.03 (flags borderline readings sooner).",
    },
}


def normal_readings(rng: np.random.Generator, count: int) -> np.ndarray:
    """A device in normal operation: room-ish temperature, moderate humidity, a motor's light vibration and current."""
    temperature = rng.normal(24.0, 3.0, count)
    humidity = np.clip(rng.normal(45.0, 8.0, count), 5.0, 95.0)
    vibration = np.abs(rng.normal(0.05, 0.015, count))
    # A warmer motor draws a little more current.
    current = 1.2 + 0.02 * (temperature - 24.0) + rng.normal(0.0, 0.1, count)
    return np.column_stack([temperature, humidity, vibration, current])


def faulty_readings(rng: np.random.Generator, count: int) -> np.ndarray:
    """Faults: a normal reading with one channel anywhere in its sensor's range but outside the normal
    band. Spreading them over the whole range is what lets the forest isolate any out-of-band reading
    quickly, including values it never saw (an IsolationForest trained on the normal band alone
    scores a reading far beyond that band barely worse than the band's edge)."""
    rows = normal_readings(rng, count)
    channel = rng.integers(0, 4, count)
    high = rng.random(count) < 0.5

    def pick(low_range: tuple[float, float], high_range: tuple[float, float], mask: np.ndarray) -> np.ndarray:
        return np.where(high[mask], rng.uniform(*high_range, int(mask.sum())), rng.uniform(*low_range, int(mask.sum())))

    rows[channel == 0, 0] = pick((-40.0, 10.0), (38.0, 125.0), channel == 0)  # freezing or overheating
    rows[channel == 1, 1] = pick((0.0, 15.0), (80.0, 100.0), channel == 1)  # humidity sensor stuck or soaked
    rows[channel == 2, 2] = pick((0.2, 0.5), (0.5, 16.0), channel == 2)  # vibration: loose mount to failing bearing
    rows[channel == 3, 3] = pick((0.0, 0.6), (2.0, 20.0), channel == 3)  # stalled motor or current surge
    return rows


def training_data(seed: int, samples: int, fault_rate: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    faults = round(samples * fault_rate)
    data = np.vstack([normal_readings(rng, samples - faults), faulty_readings(rng, faults)])
    return rng.permutation(data).astype(np.float32)


def _leaf_weights(forest: IsolationForest) -> dict[str, list]:
    """Every tree of the forest as one TreeEnsembleRegressor's attributes. A leaf's weight is its
    share of the forest's exponent: sklearn scores a row 2 ** -(sum of path lengths / denominator),
    so each leaf holds -ln(2) * path_length / denominator and Exp of the sum is that score."""
    n_features = forest.n_features_in_
    subsample_features = forest._max_features != n_features
    denominator = len(forest.estimators_) * float(_average_path_length([forest._max_samples])[0])
    attrs: dict[str, list] = {key: [] for key in NODE_ATTRIBUTES + TARGET_ATTRIBUTES}
    for tree_id, (estimator, features) in enumerate(zip(forest.estimators_, forest.estimators_features_, strict=True)):
        tree = estimator.tree_
        # What sklearn adds per leaf (IsolationForest._compute_score_samples): the leaf's depth plus
        # the average path length of the samples left in it, minus one.
        path_lengths = forest._decision_path_lengths[tree_id] + forest._average_path_length_per_tree[tree_id] - 1.0
        for node in range(tree.node_count):
            leaf = tree.children_left[node] == -1
            feature = int(tree.feature[node]) if not leaf else 0
            attrs["nodes_treeids"].append(tree_id)
            attrs["nodes_nodeids"].append(node)
            attrs["nodes_featureids"].append(int(features[feature]) if subsample_features else feature)
            attrs["nodes_values"].append(_float32_at_or_below(tree.threshold[node]) if not leaf else 0.0)
            attrs["nodes_modes"].append("LEAF" if leaf else "BRANCH_LEQ")
            attrs["nodes_truenodeids"].append(int(tree.children_left[node]) if not leaf else 0)
            attrs["nodes_falsenodeids"].append(int(tree.children_right[node]) if not leaf else 0)
            if leaf:
                attrs["target_treeids"].append(tree_id)
                attrs["target_nodeids"].append(node)
                attrs["target_ids"].append(0)
                attrs["target_weights"].append(-math.log(2.0) * float(path_lengths[node]) / denominator)
    return attrs


def _float32_at_or_below(threshold: float) -> float:
    """sklearn compares a float32 reading with a float64 threshold; ONNX thresholds are float32. The
    largest float32 not above the threshold splits every float32 reading the same way (rounding to
    nearest could land on a reading's value and send it the other way)."""
    value = np.float32(threshold)
    if float(value) > threshold:
        value = np.nextafter(value, np.float32(-np.inf))
    return float(value)


NODE_ATTRIBUTES = [
    "nodes_treeids",
    "nodes_nodeids",
    "nodes_featureids",
    "nodes_values",
    "nodes_modes",
    "nodes_truenodeids",
    "nodes_falsenodeids",
]
TARGET_ATTRIBUTES = ["target_treeids", "target_nodeids", "target_ids", "target_weights"]


def _parse_forest(scope, model, inputs, custom_parsers=None):
    """The device-facing outputs, one value per row: score (float) and anomaly (bool)."""
    operator = scope.declare_local_operator(CONVERTER_ALIAS, model)
    operator.inputs = inputs
    operator.outputs.append(scope.declare_local_variable("score", FloatTensorType()))
    operator.outputs.append(scope.declare_local_variable("anomaly", BooleanTensorType()))
    return operator.outputs


def _forest_shapes(operator) -> None:
    rows = operator.inputs[0].get_first_dimension()
    operator.outputs[0].type = FloatTensorType([rows])
    operator.outputs[1].type = BooleanTensorType([rows])


def _convert_forest(scope, operator, container) -> None:
    """score = 2 ** -(mean path length / c(max_samples)) + offset_ = -decision_function; anomaly = score > 0.

    skl2onnx's own IsolationForest converter emits a few dozen nodes per tree (about 2,700 for 100
    trees, ~6-9 ms for one row); this one is a single TreeEnsembleRegressor over all trees plus four
    element-wise nodes, well under a millisecond for one row."""
    forest = operator.raw_operator
    exponent = scope.get_unique_variable_name("exponent")
    container.add_node(
        "TreeEnsembleRegressor",
        [operator.inputs[0].full_name],
        [exponent],
        op_domain="ai.onnx.ml",
        op_version=3,
        name=scope.get_unique_operator_name("PathLengths"),
        n_targets=1,
        aggregate_function="SUM",
        post_transform="NONE",
        **_leaf_weights(forest),
    )
    anomaly_score = scope.get_unique_variable_name("anomaly_score")
    container.add_node("Exp", [exponent], [anomaly_score], name=scope.get_unique_operator_name("Exp"))
    offset = scope.get_unique_variable_name("offset")
    container.add_initializer(offset, TensorProto.FLOAT, [1], [float(forest.offset_)])
    column = scope.get_unique_variable_name("score_column")
    container.add_node("Add", [anomaly_score, offset], [column], name=scope.get_unique_operator_name("Offset"))
    flat = scope.get_unique_variable_name("flat_shape")
    container.add_initializer(flat, TensorProto.INT64, [1], [-1])
    container.add_node("Reshape", [column, flat], [operator.outputs[0].full_name], name=scope.get_unique_operator_name("Flat"))
    zero = scope.get_unique_variable_name("zero")
    container.add_initializer(zero, TensorProto.FLOAT, [], [0.0])
    container.add_node(
        "Greater", [operator.outputs[0].full_name, zero], [operator.outputs[1].full_name], name=scope.get_unique_operator_name("IsAnomaly")
    )


CONVERTER_ALIAS = "FleetwireIsolationForest"
update_registered_converter(IsolationForest, CONVERTER_ALIAS, _forest_shapes, _convert_forest, parser=_parse_forest, overwrite=True)


def check_against_sklearn(forest: IsolationForest, model_bytes: bytes, rows: np.ndarray) -> None:
    """The exported graph scores like sklearn: same anomaly decisions, scores within float32 rounding."""
    session = onnxruntime.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    score, anomaly = session.run(["score", "anomaly"], {"X": rows})
    expected = -forest.decision_function(rows)
    worst = float(np.max(np.abs(score - expected)))
    if worst > 1e-5:
        raise SystemExit(f"ONNX scores differ from sklearn's by up to {worst}")
    # Rows within rounding of the threshold may fall either side; every other row must agree.
    clear = np.abs(expected) > 1e-5
    if not np.array_equal(anomaly[clear], forest.predict(rows)[clear] == -1):
        raise SystemExit("ONNX anomaly flags differ from sklearn's predict")


def train(version: int) -> tuple[bytes, dict]:
    spec = VERSIONS[version]
    data = training_data(spec["seed"], spec["samples"], spec["fault_rate"])
    forest = IsolationForest(
        n_estimators=spec["n_estimators"],
        max_samples=spec["max_samples"],
        contamination=spec["contamination"],
        random_state=spec["seed"],
        n_jobs=1,
    ).fit(data)
    model = to_onnx(forest, data[:1], target_opset=TARGET_OPSET)
    onnx.checker.check_model(model, full_check=True)
    # Nothing of the moment in the file: these fields would otherwise carry the converter's version.
    model.producer_name = "fleetwire training/train_anomaly.py"
    model.producer_version = f"anomaly-{version}"
    model.doc_string = ""
    model.graph.name = f"anomaly_v{version}"
    model.model_version = version
    # skl2onnx lists the opsets in set order, which varies with PYTHONHASHSEED.
    opsets = sorted((o.domain, o.version) for o in model.opset_import)
    del model.opset_import[:]
    model.opset_import.extend(helper.make_opsetid(domain, opset) for domain, opset in opsets)
    model_bytes = model.SerializeToString(deterministic=True)
    check_against_sklearn(forest, model_bytes, np.vstack([data, training_data(spec["seed"] + 1000, 2000, 0.05)]))
    flagged = float(np.mean(forest.predict(data) == -1))
    manifest = {
        "name": "anomaly",
        "version": str(version),
        "description": spec["description"],
        "inputs": [{"name": "X", "dtype": "float32", "shape": [None, 4], "columns": COLUMNS}],
        "outputs": [
            {
                "name": "score",
                "dtype": "float32",
                "shape": [None],
                "meaning": "anomaly score per row: the negated IsolationForest decision_function; above 0 is an anomaly, "
                "higher is more anomalous (typically -0.2 to 0.3)",
            },
            {"name": "anomaly", "dtype": "bool", "shape": [None], "meaning": "true when the row is an anomaly (score > 0)"},
        ],
        "sha256": hashlib.sha256(model_bytes).hexdigest(),
        "training": {
            "script": "training/train_anomaly.py",
            "command": f"python training/train_anomaly.py --version {version} --out models/",
            "seed": spec["seed"],
            "samples": spec["samples"],
            "fault_rate": spec["fault_rate"],
            "algorithm": "sklearn.ensemble.IsolationForest",
            "export": "skl2onnx with training/train_anomaly.py's converter: one TreeEnsembleRegressor over all trees",
            "n_estimators": spec["n_estimators"],
            "max_samples": spec["max_samples"],
            "contamination": spec["contamination"],
            "flagged_in_training_data": round(flagged, 4),
            "target_opset": TARGET_OPSET,
            "numpy": np.__version__,
            "sklearn": sklearn.__version__,
            "skl2onnx": skl2onnx.__version__,
            "onnx": onnx.__version__,
        },
    }
    return model_bytes, manifest


def write(out_dir: Path, version: int) -> Path:
    model_bytes, manifest = train(version)
    directory = out_dir / "anomaly" / str(version)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "model.onnx").write_bytes(model_bytes)
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return directory


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", type=int, required=True, choices=sorted(VERSIONS))
    parser.add_argument("--out", type=Path, required=True, help="the models directory (models/)")
    args = parser.parse_args(argv)
    directory = write(args.out, args.version)
    print(f"wrote {directory}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
