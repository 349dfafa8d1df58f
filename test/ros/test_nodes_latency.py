"""`dysta-ros latency` runs end to end (tiny frames, one second) and writes its report."""

import json
import subprocess
import sys


def test_latency_command_writes_json_and_png(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "dysta_ros.cli", "latency", "--cameras", "2", "--width", "64",
         "--height", "48", "--seconds", "2", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    document = json.loads((tmp_path / "latency.json").read_text())
    assert document["meta"]["width"] == 64
    (report,) = document["runs"]
    assert report["chunks"] >= 2
    assert report["node_arrival_to_step_ms"]["p50"] >= 0
    for key in ("total", "model", "overhead", "ros", "model_busy_wait", "publish", "transport"):
        assert report["ms"][key]["p50"] <= report["ms"][key]["p99"]
    # `ros` ends where policy_node wrote the chunk (DDS's source timestamp), before its transport
    # and this probe's callback: never more than the whole stamp -> callback overhead
    samples = report["samples_ms"]
    assert min(samples["publish"]) >= 0 and min(samples["transport"]) >= 0
    assert all(r <= o + 1e-6 for r, o in zip(samples["ros"], samples["overhead"]))
    assert (tmp_path / "latency.png").stat().st_size > 1000
