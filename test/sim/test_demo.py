"""`dysta-ros demo`: the report from episode records, and one short closed loop over real ROS."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dysta_ros.cli import main
from dysta_ros.evaluation.demo import (
    EpisodeRecord, StepRecord, format_table, summary_rows, write_report,
)


def episode(policy, strategy, success, step_ms, tokens, recache_every=0):
    steps = [StepRecord(0.1 * i, ms, tokens, tokens // 2, recache_every > 0 and i % recache_every == 0, False)
             for i, ms in enumerate(step_ms)]
    frames = [np.full((16, 16, 3), 20 * i, np.uint8) for i in range(10)]
    return EpisodeRecord(policy, strategy, "reach", 100, success, "touched_target" if success else "timeout",
                         1.5, len(steps), steps, frames)


def test_summary_rows_compare_strategies_with_full_of_the_same_policy():
    episodes = [episode("expert", "expert", True, [], 0),
                episode("tiny", "full", False, [40.0, 42.0, 38.0], 120),
                episode("tiny", "dysta", True, [10.0, 10.0, 30.0], 40, recache_every=2),
                episode("tiny", "dysta", False, [10.0], 40)]
    rows = {r["policy"]: r for r in summary_rows(episodes)}
    assert set(rows) == {"expert", "tiny/full", "tiny/dysta"}
    assert rows["expert"]["success"] == 1.0 and rows["expert"]["step_ms_p50"] is None
    assert rows["tiny/dysta"]["episodes"] == 2 and rows["tiny/dysta"]["success"] == 0.5
    assert rows["tiny/dysta"]["step_ms_p50"] == 10.0
    assert rows["tiny/dysta"]["speedup"] == pytest.approx(4.0)
    assert rows["tiny/full"]["speedup"] == pytest.approx(1.0)
    assert rows["tiny/dysta"]["recaches"] == 2
    assert rows["tiny/dysta"]["recache_rate"] == pytest.approx(1 / 2)  # steps after each episode's first
    table = format_table(list(rows.values()))
    assert "4.00x" in table and "50 %" in table


def test_report_folder_holds_summary_plot_and_camera_strip(tmp_path):
    episodes = [episode("expert", "expert", True, [], 0), episode("tiny", "dysta", False, [12.0, 9.0], 40, 1)]
    paths = write_report(episodes, tmp_path / "report")
    summary = json.loads(paths["summary"].read_text())
    assert [e["policy_steps"] for e in summary["meta"]["episodes"]] == [0, 2]
    for name in ("steps", "camera"):
        assert paths[name].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_rejects_an_unknown_policy_before_starting_anything(capsys):
    assert main(["demo", "--model", "nonsense"]) == 2
    assert "--model 'nonsense'" in capsys.readouterr().err
    assert main(["demo", "--policy", "nonsense"]) == 2  # the old spelling, one more release
    err = capsys.readouterr().err
    assert "--policy is deprecated" in err and "--model 'nonsense'" in err
    for seconds in ("inf", "nan"):  # an episode that never times out, or sim_node refusing the reset
        assert main(["demo", "--model", "expert", "--episode-seconds", seconds]) == 2
        assert "--episode-seconds must be >= 0 and finite" in capsys.readouterr().err


def test_demo_runs_expert_and_tiny_policy_episodes_over_ros(tmp_path):
    report = tmp_path / "report"
    command = [sys.executable, "-m", "dysta_ros.cli", "demo", "--model", "expert,tiny", "--episodes", "1",
               "--episode-seconds", "3", "--image-size", "64", "--report", str(report)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=dict(os.environ))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "expert" in result.stdout and "tiny/dysta" in result.stdout
    summary = json.loads((report / "summary.json").read_text())
    expert, learned = summary["meta"]["episodes"]
    assert expert["policy"] == "expert" and expert["success"] and expert["chunks"] > 0
    assert learned["policy"] == "tiny" and learned["strategy"] == "dysta"
    assert learned["policy_steps"] > 0 and learned["reason"]  # the random policy ran until the end
    assert (report / "steps.png").stat().st_size > 0 and (report / "camera.png").stat().st_size > 0


@pytest.mark.parametrize("name", ["SIGINT", "SIGTERM"])
def test_demo_signalled_mid_episode_holds_the_arm_and_ends_in_one_line(tmp_path, name):
    # rclpy's handler used to shut the context down under the demo: it waited 30 s for an outcome
    # that could not come, then failed to latch the e-stop, three tracebacks deep.
    command = [sys.executable, "-m", "dysta_ros.cli", "demo", "--model", "tiny", "--episodes", "1",
               "--episode-seconds", "60", "--image-size", "32", "--report", str(tmp_path / "report")]
    demo = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    started = []
    for line in demo.stdout:  # text mode: tqdm's carriage returns end lines too
        started.append(line)
        if "| chunks 1" in line:  # the policy is driving the arm
            break
    demo.send_signal(getattr(signal, name))
    rest = demo.communicate(timeout=120)[0]
    assert "| chunks 1" in started[-1], "".join(started)
    assert demo.returncode == 128 + getattr(signal, name), rest
    assert "Traceback" not in rest and "[ERROR]" not in rest, rest
    assert "e-stop latched" in rest  # the arm was held before the nodes went
    assert rest.strip().splitlines()[-1] == "dysta-ros demo: interrupted; no report written"
    assert not (tmp_path / "report").exists()


def test_demo_drives_the_sim_arm_with_a_lerobot_checkpoint(tmp_path):
    # test/data/smolvla_sim: a LeRobot-saved SmolVLA whose features are the sim arm's (camera
    # "main", six joints); --model and --vlm as run and bench take them
    report, sim = tmp_path / "report", Path(__file__).parents[1] / "data" / "smolvla_sim"
    command = [sys.executable, "-m", "dysta_ros.cli", "demo", "--model", f"expert,{sim}/checkpoint",
               "--vlm", f"{sim}/vlm", "--strategies", "full", "--episodes", "1", "--episode-seconds", "2",
               "--image-size", "64", "--report", str(report)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=dict(os.environ))
    assert result.returncode == 0, result.stderr[-3000:]
    learned = json.loads((report / "summary.json").read_text())["meta"]["episodes"][1]
    assert learned["policy"] == f"{sim}/checkpoint" and learned["strategy"] == "full"
    assert learned["policy_steps"] > 0 and learned["chunks"] > 0


def test_speedup_compares_strategies_of_the_same_checkpoint_path():
    rows = summary_rows([episode("checkpoints/reference", "full", True, [40.0, 40.0], 53),
                         episode("checkpoints/reference", "dysta", True, [20.0, 20.0], 38),
                         episode("runs/other", "dysta", True, [10.0, 10.0], 38)])
    speedups = {r["policy"]: r["speedup"] for r in rows}
    assert speedups["checkpoints/reference/full"] == pytest.approx(1.0)
    assert speedups["checkpoints/reference/dysta"] == pytest.approx(2.0)
    assert speedups["runs/other/dysta"] is None  # no `full` of that policy in the run
