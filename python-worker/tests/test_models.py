"""The model registry against the shipped model files and real onnxruntime: what loads, what is
refused, what each model answers, and how a new version takes over without breaking held models."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from fleetwire_ml.errors import MlError
from fleetwire_ml.models import LoadedModel, ModelRegistry

SHIPPED = Path(__file__).resolve().parent.parent / "models"
LOG = logging.getLogger("test_models")

NORMAL = [[24.0, 45.0, 0.05, 1.2], [22.0, 50.0, 0.06, 1.15], [26.5, 40.0, 0.04, 1.25], [21.0, 38.0, 0.045, 1.1]]
# Far outside a healthy device's band, one channel at a time: overheating, freezing, soaked humidity sensor.
FAULTS = [[85.0, 45.0, 0.05, 1.2], [-20.0, 45.0, 0.05, 1.2], [24.0, 100.0, 0.05, 1.2]]


@pytest.fixture
def shipped_copy(tmp_path: Path) -> Path:
    """The shipped models, copied so a test can tamper with them."""
    target = tmp_path / "models"
    shutil.copytree(SHIPPED, target)
    return target


def registry_for(models_dir: Path) -> ModelRegistry:
    registry = ModelRegistry(models_dir, LOG)
    registry.scan()
    return registry


def infer(model: LoadedModel, rows: list) -> dict:
    prepared = model.prepare(rows, 1024)
    return model.output_for(model.run(prepared), 0, len(prepared))


def test_shipped_versions_load_and_the_highest_is_the_default(shipped_copy: Path) -> None:
    registry = ModelRegistry(shipped_copy, LOG)
    assert sorted(registry.scan()) == ["anomaly@1 loaded", "anomaly@2 loaded"]
    assert registry.describe() == {"anomaly": {"default": "2", "versions": ["1", "2"]}}
    assert registry.resolve("anomaly", None).version == "2"
    assert registry.scan() == []  # nothing changed on disk: nothing reloaded


@pytest.mark.parametrize("version", ["1", "2"])
def test_normal_readings_are_normal_and_faults_are_anomalies(shipped_copy: Path, version: str) -> None:
    model = registry_for(shipped_copy).resolve("anomaly", version)
    normal = infer(model, NORMAL)
    assert normal["anomaly"] == [False] * len(NORMAL)
    assert all(score < 0 for score in normal["score"])
    faults = infer(model, FAULTS)
    assert faults["anomaly"] == [True] * len(FAULTS)
    assert all(score > 0 for score in faults["score"])
    # The output is plain JSON: one score and one flag per row.
    assert json.loads(json.dumps(faults)) == faults


def test_a_slice_of_a_batch_is_what_those_rows_get_alone(shipped_copy: Path) -> None:
    model = registry_for(shipped_copy).resolve("anomaly", None)
    rows = NORMAL + FAULTS
    outputs = model.run(model.prepare(rows, 1024))
    assert model.output_for(outputs, 3, 5) == infer(model, rows[3:5])


def test_a_pinned_version_answers_with_that_version(shipped_copy: Path) -> None:
    registry = registry_for(shipped_copy)
    first, second = registry.resolve("anomaly", "1"), registry.resolve("anomaly", "2")
    assert (first.version, second.version) == ("1", "2")
    # Different models: the same reading scores differently.
    assert infer(first, NORMAL[:1])["score"] != infer(second, NORMAL[:1])["score"]


def test_unknown_model_and_version_are_refused_naming_what_is_loaded(shipped_copy: Path) -> None:
    registry = registry_for(shipped_copy)
    with pytest.raises(MlError) as unknown_model:
        registry.resolve("vibration", None)
    assert unknown_model.value.code == "model_unknown"
    assert "'vibration'" in unknown_model.value.message and "anomaly" in unknown_model.value.message
    with pytest.raises(MlError) as unknown_version:
        registry.resolve("anomaly", "7")
    assert unknown_version.value.code == "version_unknown"
    assert "'7'" in unknown_version.value.message and "1, 2" in unknown_version.value.message
    assert str(unknown_version.value).startswith("version_unknown: ")


def test_a_tampered_model_is_refused_and_the_other_version_keeps_serving(shipped_copy: Path) -> None:
    model_file = shipped_copy / "anomaly" / "2" / "model.onnx"
    data = bytearray(model_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model_file.write_bytes(bytes(data))
    registry = ModelRegistry(shipped_copy, LOG)
    changes = registry.scan()
    assert "anomaly@1 loaded" in changes
    assert any(change.startswith("anomaly@2 refused") and "SHA-256" in change for change in changes)
    assert registry.describe() == {"anomaly": {"default": "1", "versions": ["1"]}}
    assert infer(registry.resolve("anomaly", None), NORMAL)["anomaly"] == [False] * len(NORMAL)
    # A refused directory is reported once, not on every scan.
    assert registry.scan() == []


def test_a_version_without_manifest_is_refused(shipped_copy: Path) -> None:
    (shipped_copy / "anomaly" / "2" / "manifest.json").unlink()
    registry = ModelRegistry(shipped_copy, LOG)
    changes = registry.scan()
    assert any(change.startswith("anomaly@2 refused") and "manifest.json is missing" in change for change in changes)
    assert registry.describe()["anomaly"]["versions"] == ["1"]


def test_a_manifest_whose_version_is_not_its_directory_is_refused(shipped_copy: Path) -> None:
    # A copy of version 2 put in directory 3 without editing its manifest.
    shutil.copytree(shipped_copy / "anomaly" / "2", shipped_copy / "anomaly" / "3")
    registry = ModelRegistry(shipped_copy, LOG)
    changes = registry.scan()
    assert any(change.startswith("anomaly@3 refused") and "manifest version '2'" in change for change in changes)
    assert registry.describe() == {"anomaly": {"default": "2", "versions": ["1", "2"]}}


def test_a_manifest_that_does_not_match_the_graph_is_refused(shipped_copy: Path) -> None:
    manifest_path = shipped_copy / "anomaly" / "2" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["inputs"][0]["shape"] = [None, 5]
    manifest_path.write_text(json.dumps(manifest))
    changes = ModelRegistry(shipped_copy, LOG).scan()
    assert any(change.startswith("anomaly@2 refused") and "input shape" in change for change in changes)


BAD_INPUTS = [
    pytest.param({"rows": [[1, 2, 3, 4]]}, "input_invalid", "an object", id="not-a-list"),
    pytest.param("24,45,0.05,1.2", "input_invalid", "a string", id="a-string"),
    pytest.param([], "input_invalid", "empty", id="empty"),
    pytest.param([24.0, 45.0, 0.05, 1.2], "input_invalid", "input[0] is a number", id="flat-row"),
    pytest.param([[24.0, 45.0, 0.05, 1.2], [24.0, 45.0, 0.05]], "input_invalid", "input[1] has 3 values", id="ragged"),
    pytest.param([[24.0, 45.0, 0.05, 1.2, 7.0]], "input_invalid", "input[0] has 5 values", id="too-wide"),
    pytest.param([[24.0, "45", 0.05, 1.2]], "input_invalid", "input[0][1] is a string", id="string-value"),
    pytest.param([[24.0, True, 0.05, 1.2]], "input_invalid", "input[0][1] is a boolean", id="bool-value"),
    pytest.param([[24.0, None, 0.05, 1.2]], "input_invalid", "input[0][1] is null", id="null-value"),
    pytest.param([[float("nan"), 45.0, 0.05, 1.2]], "input_invalid", "finite", id="nan"),
    pytest.param([[24.0, float("inf"), 0.05, 1.2]], "input_invalid", "finite", id="inf"),
    pytest.param([[24.0, 45.0, 1e39, 1.2]], "input_invalid", "float32", id="beyond-float32"),
    pytest.param([[24.0, 45.0, 0.05, 10**40]], "input_invalid", "float32", id="huge-int"),
    pytest.param([[24.0, 45.0, 0.05, 1.2]] * 11, "input_too_large", "11 rows; at most 10", id="too-many-rows"),
]


@pytest.mark.parametrize(("raw", "code", "says"), BAD_INPUTS)
def test_every_bad_input_is_refused_with_its_code(shipped_copy: Path, raw: object, code: str, says: str) -> None:
    model = registry_for(shipped_copy).resolve("anomaly", None)
    with pytest.raises(MlError) as refused:
        model.prepare(raw, 10)
    assert refused.value.code == code
    assert says in refused.value.message
    if code == "input_invalid":
        # The message also says what is expected: the row layout, or the rule the value broke.
        expected = ("expects a list of rows, each [temperature_c, humidity_pct, vibration_g, current_a]", "must be finite", "must fit")
        assert any(phrase in refused.value.message for phrase in expected)


def test_good_input_becomes_float32_rows(shipped_copy: Path) -> None:
    model = registry_for(shipped_copy).resolve("anomaly", None)
    rows = model.prepare([[24, 45, 0.05, 1.2], [-3.5, 0, 1, 2]], 10)  # ints are numbers too
    assert rows.dtype == np.float32 and rows.shape == (2, 4)
    assert model.prepare([[24.0, 45.0, 0.05, 1.2]] * 10, 10).shape == (10, 4)  # exactly the limit is fine


def test_a_new_version_directory_becomes_the_default_while_held_models_keep_running(tmp_path: Path) -> None:
    models = tmp_path / "models"
    shutil.copytree(SHIPPED / "anomaly" / "1", models / "anomaly" / "1")
    registry = registry_for(models)
    held = registry.resolve("anomaly", None)  # a job in flight holds version 1
    assert held.version == "1"

    shutil.copytree(SHIPPED / "anomaly" / "2", models / "anomaly" / "2")
    assert registry.reload("anomaly") == ["anomaly@2 loaded"]
    assert registry.resolve("anomaly", None).version == "2"
    assert registry.resolve("anomaly", "1") is held  # unchanged files: the same session
    assert infer(held, FAULTS)["anomaly"] == [True] * len(FAULTS)

    # Version 1's directory removed: no new request can pin it, the job holding it still finishes.
    shutil.rmtree(models / "anomaly" / "1")
    assert registry.reload() == ["anomaly@1 dropped (directory gone)"]
    with pytest.raises(MlError) as gone:
        registry.resolve("anomaly", "1")
    assert gone.value.code == "version_unknown"
    assert infer(held, NORMAL)["anomaly"] == [False] * len(NORMAL)


def test_the_periodic_scan_picks_up_a_version_once_it_is_completely_copied(tmp_path: Path) -> None:
    models = tmp_path / "models"
    shutil.copytree(SHIPPED / "anomaly" / "1", models / "anomaly" / "1")
    registry = registry_for(models)
    # Seen mid-copy: the manifest is there, model.onnx only half written.
    partial = models / "anomaly" / "2"
    partial.mkdir()
    shutil.copy(SHIPPED / "anomaly" / "2" / "manifest.json", partial / "manifest.json")
    whole = (SHIPPED / "anomaly" / "2" / "model.onnx").read_bytes()
    (partial / "model.onnx").write_bytes(whole[: len(whole) // 2])
    assert [change.split(":")[0] for change in registry.scan()] == ["anomaly@2 refused"]
    assert registry.resolve("anomaly", None).version == "1"
    (partial / "model.onnx").write_bytes(whole)
    assert registry.scan() == ["anomaly@2 loaded"]
    assert registry.resolve("anomaly", None).version == "2"


def test_reload_re_verifies_loaded_versions(shipped_copy: Path) -> None:
    registry = registry_for(shipped_copy)
    model_file = shipped_copy / "anomaly" / "2" / "model.onnx"
    model_file.write_bytes(model_file.read_bytes() + b"\0")
    changes = registry.reload("anomaly")
    assert [change.split(":")[0] for change in changes] == ["anomaly@2 refused"]
    assert registry.describe() == {"anomaly": {"default": "1", "versions": ["1"]}}


def test_shipped_manifests_describe_their_files(shipped_copy: Path) -> None:
    for version in ("1", "2"):
        directory = SHIPPED / "anomaly" / version
        manifest = json.loads((directory / "manifest.json").read_text())
        assert manifest["sha256"] == hashlib.sha256((directory / "model.onnx").read_bytes()).hexdigest()
        assert manifest["inputs"][0]["columns"] == ["temperature_c", "humidity_pct", "vibration_g", "current_a"]
        assert (directory / "model.onnx").stat().st_size < 1_000_000
