"""`dysta-ros eval`: strategies side by side on a recorded bag; tables, plots and results.json."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
from bag_helpers import BagSpec, write_episode_bag

from dysta_ros.errors import ConfigError
from dysta_ros.evaluation.open_loop import EvalConfig, StepRecord, evaluate, summarize
from dysta_ros.types import StepStats


@pytest.fixture(scope="module")
def bag(tmp_path_factory):
    return write_episode_bag(tmp_path_factory.mktemp("eval") / "bag", BagSpec(episodes=2, seconds=0.8))


@pytest.fixture(scope="module")
def results(bag, tmp_path_factory):
    report = tmp_path_factory.mktemp("report")
    config = EvalConfig(bags=[str(bag)], strategies=["dysta", "vla_cache"], max_steps=5,
                        report=str(report))
    return evaluate(config, progress=False), report


def test_eval_runs_a_lerobot_checkpoint_with_its_approximations_beside_full(bag, tmp_path):
    # test/data/smolvla_sim has the bag's features (camera "main", six joints)
    sim = Path(__file__).parents[1] / "data" / "smolvla_sim"
    config = EvalConfig(bags=[str(bag)], strategies=["full", "vla_cache", "dysta"], max_steps=3,
                        model=str(sim / "checkpoint"), vlm=str(sim / "vlm"), report=str(tmp_path))
    summary = evaluate(config, progress=False)["summary"]
    assert all(summary[name]["steps"] > 0 and summary[name]["failed_steps"] == 0 for name in summary)


def test_eval_writes_the_report_files(results):
    _, report = results
    text = (report / "report.md").read_text()
    for name in ("full", "dysta", "vla_cache"):
        assert f"| {name} |" in text
    assert "joint1" in text  # per-dimension tables are labelled by joint
    for png in ("latency.png", "error_over_time.png", "recache_events.png"):
        image = matplotlib.image.imread(report / png)
        assert image.shape[0] > 100 and image.shape[1] > 100
        assert image[..., :3].std() > 0  # something is drawn
    # results.json in the one shape: a run per strategy (the summary's fields and per-step series)
    saved = json.loads((report / "results.json").read_text())
    assert set(saved) == {"runs", "meta"}
    assert [r["strategy"] for r in saved["runs"]] == ["full", "dysta", "vla_cache"]
    full = saved["runs"][0]
    assert full["speedup"] == 1.0 and full["step_ms_p50"] > 0
    assert len(full["series"]["step_ms"]) == full["steps"]
    assert saved["meta"]["model"] == "tiny" and saved["meta"]["episodes"] and saved["meta"]["joints"]


def test_eval_values_are_sane(results):
    values, _ = results
    summary = values["summary"]
    assert values["config"]["strategies"][0] == "full"  # always measured, as the yardstick
    for s in summary.values():
        assert s["steps"] == 10 and s["failed_steps"] == 0  # 2 episodes x 5 steps
        assert 0 < s["action_error"]["mse"] < 1e3
        assert s["action_error"]["mae"] <= np.sqrt(s["action_error"]["mse"]) + 1e-9
        assert len(s["action_error"]["mse_per_dim"]) == 6
        assert s["step_ms"]["p50"] > 0 and s["speedup"] > 0
    assert summary["full"]["deviation_from_full"]["mse"] == 0.0
    assert summary["full"]["speedup"] == 1.0
    assert summary["dysta"]["deviation_from_full"]["mse"] > 0.0  # pruning changes the actions
    assert summary["dysta"]["context_tokens"] < summary["full"]["context_tokens"]
    assert summary["dysta"]["static_cache"] and not summary["full"]["static_cache"]
    assert 0.0 <= summary["dysta"]["recache_rate"] <= 1.0
    assert summary["vla_cache"]["recomputed_tokens"] < summary["full"]["recomputed_tokens"]
    series = values["series"]["dysta"]
    assert series["step"] == [0, 1, 2, 3, 4] * 2 and series["recached_l1"][0]  # first step builds


def _record(step, actions, targets, ms=1.0, recached=False):
    stats = StepStats(context_tokens=10, recomputed_tokens=5, recached_l1=recached,
                      static_l1_tokens=4)
    return StepRecord(bag="b", episode=0, step=step, time_s=0.1 * step,
                      actions=np.asarray(actions, np.float32), targets=np.asarray(targets, np.float32),
                      step_ms=ms, stats=stats)


def test_errors_compare_the_first_k_actions_with_what_was_recorded():
    nan = np.nan
    full = [_record(0, [[1, 1], [1, 1], [9, 9]], [[0, 0], [0, 2]], ms=4.0),
            _record(1, [[2, 0], [0, 0], [9, 9]], [[0, 0], [nan, nan]], ms=4.0, recached=True)]
    fast = [_record(0, [[1, 1], [1, 1], [0, 0]], [[0, 0], [0, 2]], ms=2.0),
            _record(1, [[2, 2], [0, 0], [0, 0]], [[0, 0], [nan, nan]], ms=2.0)]
    summary = summarize({"full": full, "fast": fast}, first_k=2)
    # full's residuals: (1,1), (1,-1), (2,0); the recording ended before step 1's second action
    assert summary["full"]["action_error"]["mse_per_dim"] == pytest.approx([2.0, 2 / 3])
    assert summary["full"]["action_error"]["mae"] == pytest.approx(1.0)
    # fast differs from full only in step 1's first action, second dimension: 2 vs 0
    assert summary["fast"]["deviation_from_full"]["mse_per_dim"] == pytest.approx([0.0, 1.0])
    assert summary["fast"]["speedup"] == pytest.approx(2.0)
    assert summary["full"]["recache_rate"] == 1.0 and summary["fast"]["recache_rate"] == 0.0


def test_config_errors_name_the_field_and_the_choices(bag):
    with pytest.raises(ConfigError, match="strategies: unknown \\['fastest'\\]; choose from full"):
        EvalConfig(bags=[str(bag)], strategies=["fastest"])
    with pytest.raises(ConfigError, match="first_k"):
        EvalConfig(bags=[str(bag)], first_k=0)


def test_cli_json_and_a_damaged_bag(bag, tmp_path):
    command = [sys.executable, "-m", "dysta_ros.cli", "eval", str(bag), "--strategies", "gotohunt",
               "--max-steps", "2", "--report", str(tmp_path / "r"), "--json"]
    result = subprocess.run(command + ["--threads", "1", "--param", "gotohunt.num_anchors=1"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert set(document) == {"runs", "meta"} and document["meta"]["max_steps"] == 2
    summary = {run["strategy"]: run for run in document["runs"]}
    assert set(summary) == {"full", "gotohunt"}
    assert summary["gotohunt"]["context_tokens"] < summary["full"]["context_tokens"]  # 1 anchor
    refused = subprocess.run(command + ["--param", "gotohunt.sigma=0"], capture_output=True, text=True,
                             timeout=300)
    assert refused.returncode == 2 and "sigma" in refused.stderr and "Traceback" not in refused.stderr

    damaged = tmp_path / "damaged"
    write_episode_bag(damaged, BagSpec(episodes=1, seconds=0.3))
    (mcap,) = damaged.glob("*.mcap")
    mcap.write_bytes(mcap.read_bytes()[:300])
    result = subprocess.run(command[:4] + [str(damaged)] + command[5:], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 1
    assert str(damaged) in result.stderr and "Traceback" not in result.stderr


def test_eval_reports_critical_windows_chunk_boundaries_and_per_joint_plots(results):
    values, report = results
    for name in ("full", "dysta", "vla_cache"):
        summary = values["summary"][name]
        windows, boundary = summary["critical_windows"], summary["chunk_boundary"]
        assert windows["steps"]["critical"] + windows["steps"]["elsewhere"] == 10
        # the expert's actions accelerate: steps near it lie in windows (5 steps: most of them)
        assert windows["steps"]["critical"] > 0 and windows["mse"]["critical"] is not None
        assert boundary["boundaries"] == 8  # 5 steps in each of 2 episodes, chunks overlapping
        assert boundary["jump_mean"] >= 0 and len(boundary["jump_per_dim"]) == 6
    assert {e["kind"] for e in values["critical_events"]} <= {"gripper", "acceleration"}
    assert values["critical_events"]
    plot = values["joint_plot"]
    assert len(plot["time_s"]) == 5 and len(plot["strategies"]["full"]["actions"]) == 5
    text = (report / "report.md").read_text()
    assert "## Task-critical windows" in text and "## Chunk boundaries" in text
    image = matplotlib.image.imread(report / "joint_actions.png")
    assert image.shape[0] > 400  # one row per joint


def _without_topic(bag, topic: str, out: Path) -> Path:
    """A copy of `bag` lacking `topic` (a robot with one camera recorded)."""
    from dysta_ros.bags.rosbag import BagReader, BagWriter

    with BagReader(bag) as reader, BagWriter(out) as writer:
        for name, msgtype in reader.topics.items():
            if name != topic:
                writer.add_topic(name, msgtype, reader.qos(name))
        for message in reader.messages([t for t in reader.topics if t != topic]):
            writer.write(message.topic, message.stamp_ns, message.data)
    return out


def test_a_topic_map_camera_the_model_does_not_read_is_not_required(bag, tmp_path):
    main_only = _without_topic(bag, "/wrist_camera/image_raw", tmp_path / "main_only")
    # the tiny preset reads "main" only: sim_arm's map also names "wrist", which this bag lacks
    summary = evaluate(EvalConfig(bags=[str(main_only)], strategies=["full"], max_steps=2,
                                  report=str(tmp_path / "tiny")), progress=False)["summary"]
    assert summary["full"]["steps"] == 4 and summary["full"]["failed_steps"] == 0
    # a checkpoint that reads the wrist camera still needs it: refused before any step, naming it
    reach = Path(__file__).parents[2] / "checkpoints" / "smolvla_reach"
    result = subprocess.run([sys.executable, "-m", "dysta_ros.cli", "eval", str(main_only), "--model",
                             str(reach), "--vlm", str(reach / "vlm"), "--report", str(tmp_path / "reach")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr
    assert "camera 'wrist' topic /wrist_camera/image_raw (missing" in result.stderr


def test_recache_rates_per_level_skip_the_step_that_built_the_cache_as_the_total_does():
    # step 0 failed: step 1 is the episode's first that ran, and builds the cache (not a rebuild)
    failed = StepRecord(bag="b", episode=0, step=0, time_s=0.0, actions=None, targets=np.zeros((0, 0)),
                        error="a broken frame")
    steps = [failed, _record(1, [[0, 0]], [[0, 0]], recached=True),
             *[_record(i, [[0, 0]], [[0, 0]], recached=i == 4) for i in (2, 3, 4)]]
    summary = summarize({"full": steps}, first_k=1)["full"]
    assert summary["recache_rate"] == pytest.approx(1 / 3)  # step 4 of steps 2, 3, 4
    assert summary["recache_rate_l1"] == pytest.approx(1 / 3)  # not 2 / 4: the build is no rebuild
    assert summary["recache_rate_l2"] == 0.0
