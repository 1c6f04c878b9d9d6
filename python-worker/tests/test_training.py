"""The shipped models are what the training script makes: retrained from scratch, byte for byte."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
SHIPPED = PACKAGE_ROOT / "models" / "anomaly"


@pytest.mark.parametrize("version", ["1", "2"])
def test_retraining_reproduces_the_shipped_model_byte_for_byte(tmp_path: Path, version: str) -> None:
    shipped_manifest = json.loads((SHIPPED / version / "manifest.json").read_text())
    # A hash seed other than the default run's: set iteration order must not leak into the file.
    env = {**os.environ, "PYTHONHASHSEED": str(100 + int(version))}
    done = subprocess.run(
        [sys.executable, "training/train_anomaly.py", "--version", version, "--out", str(tmp_path)],
        cwd=PACKAGE_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    retrained = tmp_path / "anomaly" / version
    assert hashlib.sha256((retrained / "model.onnx").read_bytes()).hexdigest() == shipped_manifest["sha256"]
    assert json.loads((retrained / "manifest.json").read_text()) == shipped_manifest
