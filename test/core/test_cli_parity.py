"""`dysta-ros parity DIR`: exit 0 on the LeRobot fixture, non-zero on a tampered copy."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

from safetensors.torch import load_file, save_file

TINY = Path(__file__).parents[1] / "data" / "smolvla_tiny"


def _parity(directory, *extra):
    return subprocess.run(
        [sys.executable, "-m", "dysta_ros.cli", "parity", str(directory), *extra],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_parity_passes_on_the_fixture():
    result = _parity(TINY, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert len(report["cases"]) == 4 and report["tolerance"] == 1e-5
    assert report["max_error_normalized"] <= 1e-5


def test_parity_fails_on_a_tampered_checkpoint(tmp_path):
    shutil.copytree(TINY, tmp_path / "fixture")
    weights_path = tmp_path / "fixture/checkpoint/model.safetensors"
    weights = load_file(str(weights_path))
    weights["model.action_out_proj.bias"][0] += 1e-3  # a tiny change, far beyond the tolerance
    save_file(weights, str(weights_path))
    result = _parity(tmp_path / "fixture")
    assert result.returncode == 1
    assert "FAIL" in result.stdout and "case 3:" in result.stdout
