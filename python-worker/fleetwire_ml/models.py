"""ONNX models on disk: models/<name>/<version>/{model.onnx, manifest.json}, verified and served.

A version is loaded only when its manifest is complete, its version matches its directory, model.onnx
has the manifest's SHA-256 and the onnxruntime session's inputs and outputs are the manifest's. A
broken version directory is logged and skipped; the other versions keep serving.

Hot reload without dropping in-flight jobs: a job holds the LoadedModel it resolved (its session
stays alive as long as the job needs it), and the registry swaps its whole table in one assignment,
so a reader sees either the old table or the new one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from .errors import MlError

MANIFEST = "manifest.json"
MODEL_FILE = "model.onnx"

# Manifest dtypes and the onnxruntime type names they stand for.
ORT_TYPES = {"float32": "tensor(float)", "int64": "tensor(int64)", "bool": "tensor(bool)"}
FLOAT32_MAX = float(np.finfo(np.float32).max)
# Floats in results: float32 has about 7 significant digits, more digits in JSON would be noise.
OUTPUT_DECIMALS = 6


def session_options() -> ort.SessionOptions:
    """One thread per call: several workers share two cores, and micro-batching gives the throughput."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3  # errors only: onnxruntime's warnings are not JSON log lines
    return options


def _require(condition: bool, what: str) -> None:
    if not condition:
        raise ValueError(what)


def _check_manifest(manifest: object, directory: Path) -> dict:
    """The fields the worker relies on; raises ValueError naming the first one that is wrong."""
    _require(isinstance(manifest, dict), "manifest.json is not a JSON object")
    assert isinstance(manifest, dict)
    for field, kind in (("name", str), ("version", str), ("inputs", list), ("outputs", list), ("sha256", str)):
        _require(isinstance(manifest.get(field), kind), f"manifest field {field!r} is missing or not a {kind.__name__}")
    _require(
        manifest["name"] == directory.parent.name, f"manifest name {manifest['name']!r} is not the directory's {directory.parent.name!r}"
    )
    _require(manifest["version"] == directory.name, f"manifest version {manifest['version']!r} is not the directory's {directory.name!r}")
    _require(len(manifest["inputs"]) == 1, "a model has exactly one input (a batch of rows)")
    spec = manifest["inputs"][0]
    _require(isinstance(spec, dict) and isinstance(spec.get("name"), str), "inputs[0].name is missing")
    _require(spec.get("dtype") == "float32", "inputs[0].dtype must be float32")
    shape = spec.get("shape")
    _require(
        isinstance(shape, list) and len(shape) == 2 and shape[0] is None and isinstance(shape[1], int) and shape[1] > 0,
        "inputs[0].shape must be [null, width]",
    )
    _require(len(manifest["outputs"]) > 0, "outputs is empty")
    for index, out in enumerate(manifest["outputs"]):
        _require(isinstance(out, dict) and isinstance(out.get("name"), str), f"outputs[{index}].name is missing")
        _require(out.get("dtype") in ORT_TYPES, f"outputs[{index}].dtype must be one of {sorted(ORT_TYPES)}")
        out_shape = out.get("shape")
        # Every output has one entry per input row: that is what lets a batch be sliced per request.
        _require(
            isinstance(out_shape, list) and len(out_shape) >= 1 and out_shape[0] is None, f"outputs[{index}].shape must start with null"
        )
    _require(len(manifest["sha256"]) == 64, "sha256 is not a hex SHA-256")
    return manifest


def _same_shape(manifest_shape: list, session_shape: list) -> bool:
    if len(manifest_shape) != len(session_shape):
        return False
    # null in the manifest is a dynamic dimension: onnxruntime shows it as a name or None.
    return all((m is None and not isinstance(s, int)) or m == s for m, s in zip(manifest_shape, session_shape, strict=True))


def _check_session(session: ort.InferenceSession, manifest: dict) -> None:
    inputs = session.get_inputs()
    _require(len(inputs) == 1, f"model.onnx has {len(inputs)} inputs, the manifest 1")
    spec = manifest["inputs"][0]
    _require(inputs[0].name == spec["name"], f"model.onnx input is {inputs[0].name!r}, the manifest says {spec['name']!r}")
    _require(inputs[0].type == ORT_TYPES["float32"], f"model.onnx input type is {inputs[0].type}")
    _require(_same_shape(spec["shape"], inputs[0].shape), f"model.onnx input shape {inputs[0].shape} is not the manifest's {spec['shape']}")
    outputs = {o.name: o for o in session.get_outputs()}
    _require(
        sorted(outputs) == sorted(o["name"] for o in manifest["outputs"]),
        f"model.onnx outputs {sorted(outputs)} are not the manifest's {[o['name'] for o in manifest['outputs']]}",
    )
    for spec_out in manifest["outputs"]:
        actual = outputs[spec_out["name"]]
        _require(
            actual.type == ORT_TYPES[spec_out["dtype"]], f"output {actual.name!r} is {actual.type}, the manifest says {spec_out['dtype']}"
        )
        _require(
            _same_shape(spec_out["shape"], actual.shape),
            f"output {actual.name!r} shape {actual.shape} is not the manifest's {spec_out['shape']}",
        )


class LoadedModel:
    """One verified version of a model with its onnxruntime session."""

    def __init__(self, manifest: dict, session: ort.InferenceSession):
        self.name: str = manifest["name"]
        self.version: str = manifest["version"]
        self.manifest = manifest
        self._session = session
        spec = manifest["inputs"][0]
        self._input_name: str = spec["name"]
        self.width: int = spec["shape"][1]
        columns = spec.get("columns")
        self._row_hint = f"[{', '.join(columns)}]" if isinstance(columns, list) and len(columns) == self.width else f"{self.width} numbers"
        self._output_names = [o["name"] for o in manifest["outputs"]]

    @classmethod
    def load(cls, directory: Path) -> LoadedModel:
        """Verifies and loads one version directory; raises ValueError or OSError saying what is wrong."""
        manifest_path = directory / MANIFEST
        if not manifest_path.is_file():
            raise ValueError(f"{MANIFEST} is missing")
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ValueError(f"{MANIFEST} is not JSON: {error}") from error
        manifest = _check_manifest(manifest, directory)
        # The session is built from the very bytes that were hashed: no window for a swap in between.
        model_bytes = (directory / MODEL_FILE).read_bytes()
        digest = hashlib.sha256(model_bytes).hexdigest()
        if digest != manifest["sha256"].lower():
            raise ValueError(f"{MODEL_FILE} has SHA-256 {digest}, the manifest says {manifest['sha256']}")
        try:
            session = ort.InferenceSession(model_bytes, sess_options=session_options(), providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own exception types for bad graphs
            raise ValueError(f"onnxruntime refused {MODEL_FILE}: {error}") from error
        _check_session(session, manifest)
        return cls(manifest, session)

    def __repr__(self) -> str:
        return f"LoadedModel({self.name}@{self.version})"

    def prepare(self, raw_input: object, max_rows: int) -> np.ndarray:
        """The request's input as a float32 [rows, width] array; MlError for anything else."""
        label = f"{self.name}@{self.version}"
        expected = f"{label} expects a list of rows, each {self._row_hint}"
        if not isinstance(raw_input, list):
            raise MlError("input_invalid", f"input is {_kind(raw_input)}; {expected}")
        if not raw_input:
            raise MlError("input_invalid", f"input is an empty list; {expected}")
        if len(raw_input) > max_rows:
            raise MlError("input_too_large", f"input has {len(raw_input)} rows; at most {max_rows} rows are accepted")
        for index, row in enumerate(raw_input):
            if not isinstance(row, list):
                raise MlError("input_invalid", f"input[{index}] is {_kind(row)}; {expected}")
            if len(row) != self.width:
                raise MlError("input_invalid", f"input[{index}] has {len(row)} values; {expected}")
            for column, value in enumerate(row):
                # bool is an int in Python, but true/false is not a reading.
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise MlError("input_invalid", f"input[{index}][{column}] is {_kind(value)}; {expected}")
                if isinstance(value, float) and not math.isfinite(value):
                    raise MlError("input_invalid", f"input[{index}][{column}] is {value}; values must be finite numbers")
                if abs(value) > FLOAT32_MAX:
                    raise MlError(
                        "input_invalid", f"input[{index}][{column}] is {value}; values must fit in float32 (|x| <= {FLOAT32_MAX:.4g})"
                    )
        return np.asarray(raw_input, dtype=np.float32)

    def run(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """One onnxruntime call over all rows (blocking; onnxruntime releases the GIL meanwhile)."""
        results = self._session.run(self._output_names, {self._input_name: rows})
        return dict(zip(self._output_names, results, strict=True))

    def output_for(self, outputs: dict[str, np.ndarray], start: int, end: int) -> object:
        """The JSON-able output of rows[start:end]: {output name: [one value per row]}."""
        result: dict[str, object] = {}
        for name in self._output_names:
            part = outputs[name][start:end]
            if np.issubdtype(part.dtype, np.floating):
                part = np.round(part.astype(np.float64), OUTPUT_DECIMALS)
            result[name] = part.tolist()
        return result


def _kind(value: object) -> str:
    """How a JSON value looks, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, (int, float)):
        return f"a number ({value})"
    if isinstance(value, str):
        shown = value if len(value) <= 20 else value[:20] + "..."
        return f"a string ({shown!r})"
    if isinstance(value, list):
        return f"a list of {len(value)}"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


@dataclass(frozen=True)
class _Loaded:
    model: LoadedModel
    fingerprint: tuple


@dataclass(frozen=True)
class _Table:
    """Everything resolve() reads, replaced whole on every change."""

    versions: dict[str, dict[str, _Loaded]]  # name -> version -> loaded
    defaults: dict[str, str]  # name -> highest loaded version


def _version_key(version: str) -> int:
    return int(version)


def _fingerprint(directory: Path) -> tuple:
    """Sizes and modification times of the two files: a changed version directory gets re-verified."""
    parts = []
    for file_name in (MANIFEST, MODEL_FILE):
        try:
            stat = (directory / file_name).stat()
            parts.append((stat.st_size, stat.st_mtime_ns))
        except OSError:
            parts.append(None)
    return tuple(parts)


class ModelRegistry:
    """The models under models_dir, by name and version; the default version is the highest loaded."""

    def __init__(self, models_dir: Path, log: logging.Logger):
        self.models_dir = Path(models_dir)
        self._log = log
        self._table = _Table({}, {})
        # Directories that failed to load, by fingerprint: logged once, retried when their files change
        # (a version directory being copied in may be seen half-written).
        self._refused: dict[Path, tuple] = {}
        self._lock = threading.Lock()  # scans may run in a thread while the event loop resolves

    # Logging: refusals are logged here (error); loads and drops only at debug, since scan() and
    # reload() return them for the caller to log once with its context.

    def scan(self) -> list[str]:
        """Loads new or changed version directories and drops versions whose directory is gone."""
        return self._rescan(names=None, verify_all=False)

    def reload(self, name: str | None = None) -> list[str]:
        """Rescans that model's (or every) directory now and re-verifies every loaded version's files."""
        return self._rescan(names=None if name is None else {name}, verify_all=True)

    def resolve(self, name: str, version: str | None) -> LoadedModel:
        table = self._table
        versions = table.versions.get(name)
        if not versions:
            loaded = ", ".join(sorted(table.versions)) or "none"
            raise MlError("model_unknown", f"no model {name!r} is loaded (loaded: {loaded})")
        if version is None:
            return versions[table.defaults[name]].model
        entry = versions.get(str(version))
        if entry is None:
            available = ", ".join(sorted(versions, key=_version_key))
            raise MlError("version_unknown", f"model {name!r} has no version {version!r} loaded (loaded: {available})")
        return entry.model

    def describe(self) -> dict[str, dict]:
        table = self._table
        return {
            name: {"default": table.defaults[name], "versions": sorted(versions, key=_version_key)}
            for name, versions in sorted(table.versions.items())
        }

    def _version_dirs(self, name_dir: Path) -> dict[str, Path]:
        found = {}
        try:
            entries = list(name_dir.iterdir())
        except OSError:
            return found
        for entry in entries:
            # Versions are positive integers; anything else (a ".tmp" copy, a README) is not a version.
            if entry.is_dir() and entry.name.isdigit() and entry.name == str(int(entry.name)) and int(entry.name) > 0:
                found[entry.name] = entry
        return found

    def _rescan(self, names: set[str] | None, verify_all: bool) -> list[str]:
        with self._lock:
            changes: list[str] = []
            old = self._table
            on_disk: dict[str, dict[str, Path]] = {}
            if self.models_dir.is_dir():
                for name_dir in sorted(self.models_dir.iterdir()):
                    if name_dir.is_dir() and not name_dir.name.startswith("."):
                        on_disk[name_dir.name] = self._version_dirs(name_dir)
            elif not self._refused.get(self.models_dir):
                self._log.error("models directory %s does not exist", self.models_dir)
                self._refused[self.models_dir] = ("missing",)
            versions: dict[str, dict[str, _Loaded]] = {}
            for name in sorted(set(on_disk) | set(old.versions)):
                current = old.versions.get(name, {})
                if names is not None and name not in names:
                    if current:
                        versions[name] = current
                    continue
                kept: dict[str, _Loaded] = {}
                for version, directory in sorted(on_disk.get(name, {}).items(), key=lambda item: _version_key(item[0])):
                    entry = self._load_if_needed(name, version, directory, current.get(version), verify_all, changes)
                    if entry is not None:
                        kept[version] = entry
                for version in current:
                    if version not in on_disk.get(name, {}):
                        changes.append(f"{name}@{version} dropped (directory gone)")
                        self._log.debug("model %s@%s dropped: its directory is gone", name, version)
                if kept:
                    versions[name] = kept
            defaults = {name: max(found, key=_version_key) for name, found in versions.items()}
            for name, default in defaults.items():
                if old.defaults.get(name) not in (None, default):
                    self._log.debug("model %s default version is now %s (was %s)", name, default, old.defaults[name])
            self._table = _Table(versions, defaults)  # the one assignment readers see
            return changes

    def _load_if_needed(
        self, name: str, version: str, directory: Path, current: _Loaded | None, verify_all: bool, changes: list[str]
    ) -> _Loaded | None:
        fingerprint = _fingerprint(directory)
        if current is not None and current.fingerprint == fingerprint and not verify_all:
            return current
        if current is None and not verify_all and self._refused.get(directory) == fingerprint:
            return None  # already refused as it is now: logged once
        try:
            model = LoadedModel.load(directory)
        except (ValueError, OSError) as error:
            self._refused[directory] = fingerprint
            changes.append(f"{name}@{version} refused: {error}")
            self._log.error("model %s@%s refused (%s): %s", name, version, directory, error)
            return None
        self._refused.pop(directory, None)
        if current is not None and current.model.manifest["sha256"] == model.manifest["sha256"]:
            # Verified again and unchanged: keep the session jobs already hold.
            return _Loaded(current.model, fingerprint)
        changes.append(f"{name}@{version} {'reloaded' if current else 'loaded'}")
        self._log.debug("model %s@%s %s from %s", name, version, "reloaded" if current else "loaded", directory)
        return _Loaded(model, fingerprint)
