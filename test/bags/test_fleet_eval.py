"""`dysta-ros eval --ray`: bags x checkpoints as Ray tasks give the serial run's numbers.

A real local Ray (loopback, no dashboard, 2 CPUs) runs real worker processes; one of them is
killed mid-task (os._exit) to show that the task is retried and the retry is reported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from bag_helpers import BagSpec, write_episode_bag

from dysta_ros.bags import find_bags
from dysta_ros.errors import BagError, ConfigError
from dysta_ros.evaluation.fleet import checkpoint_labels, configs_for, evaluate_fleet
from dysta_ros.evaluation.open_loop import EvalConfig

ray = pytest.importorskip("ray", reason="the fleet extra (pip install 'dysta_ros[fleet]') is not installed")

TIMED = {"step_ms", "step_ms_p50", "speedup", "stage_ms_p50"}  # wall-clock: differs between any two runs


@pytest.fixture(scope="module")
def bags(tmp_path_factory):
    root = tmp_path_factory.mktemp("fleet") / "bags"
    for name, seconds in (("a", 0.6), ("b", 0.4)):
        write_episode_bag(root / name, BagSpec(episodes=1, seconds=seconds))
    return root


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """The tiny preset, and a second checkpoint on disk with other weights."""
    import torch

    from dysta_ros.policy.checkpoint import save_checkpoint
    from dysta_ros.policy.config import preset_config
    from dysta_ros.policy.model import VLAModel

    torch.manual_seed(7)
    directory = tmp_path_factory.mktemp("fleet") / "seed7"
    save_checkpoint(directory, VLAModel(preset_config("tiny")))
    return ["tiny", str(directory)]


@pytest.fixture(scope="module")
def local_ray():
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
             log_to_driver=False, logging_level="WARNING")
    yield
    ray.shutdown()


def _configs(bags, checkpoints, report: Path) -> list[EvalConfig]:
    config = EvalConfig(bags=find_bags([str(bags)]), strategies=["dysta", "vla_cache"], max_steps=3,
                        threads=1, report=str(report))
    return configs_for(config, checkpoints)


@pytest.fixture(scope="module")
def serial(bags, checkpoints, tmp_path_factory):
    report = tmp_path_factory.mktemp("serial")
    return evaluate_fleet(_configs(bags, checkpoints, report), progress=False), report


def _untimed(results: dict) -> dict:
    summary = {n: {k: v for k, v in s.items() if k not in TIMED} for n, s in results["summary"].items()}
    series = {n: {k: v for k, v in s.items() if k != "step_ms"} for n, s in results["series"].items()}
    return {"summary": summary, "series": series, "episodes": results["episodes"]}


def _kill_once(marker: Path):
    """A task hook that kills its worker process the first time any task starts."""
    def hook(bag: str, checkpoint: str) -> None:
        try:
            descriptor = os.open(marker, os.O_CREAT | os.O_EXCL)
        except FileExistsError:
            return
        os.close(descriptor)
        os._exit(1)  # as the OOM killer would: no exception, no cleanup
    return hook


def test_bag_arguments_expand_directories_and_globs(bags, tmp_path):
    assert find_bags([str(bags)]) == [str(bags / "a"), str(bags / "b")]
    assert find_bags([str(bags / "*")]) == [str(bags / "a"), str(bags / "b")]
    assert find_bags([str(bags / "a"), str(bags)]) == [str(bags / "a"), str(bags / "b")]  # once each
    with pytest.raises(BagError, match="no bag matches"):
        find_bags([str(bags / "z*")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(BagError, match="neither a bag nor a directory of bags"):
        find_bags([str(tmp_path / "empty")])
    assert checkpoint_labels(["tiny", "/x/ckpt", "/y/ckpt"]) == ["tiny", "ckpt", "ckpt_2"]


def test_serial_run_over_checkpoints_writes_one_report_each_and_an_index(serial, checkpoints):
    results, report = serial
    first, second = (results["checkpoints"][c] for c in checkpoints)
    assert [Path(e["bag"]).name for e in first["episodes"]] == ["a", "b"]
    assert first["summary"]["full"]["steps"] == 6  # 2 bags x 3 steps
    # other weights, other actions: the two checkpoints were really both evaluated
    assert first["series"]["full"]["action_mse"] != second["series"]["full"]["action_mse"]
    for label in ("tiny", "seed7"):
        assert (report / label / "report.md").exists()
        runs = json.loads((report / label / "results.json").read_text())["runs"]
        assert [r["strategy"] for r in runs] == ["full", "dysta", "vla_cache"]
    # the index: every checkpoint's strategies, one run each, as `eval --json` writes them
    index = json.loads((report / "results.json").read_text())
    assert {(r["model"], r["strategy"]) for r in index["runs"]} == {
        (c, s) for c in checkpoints for s in ("full", "dysta", "vla_cache")}
    assert index["meta"]["models"] == list(checkpoints) and index["meta"]["fleet"]["engine"] == "serial"
    assert "## `tiny`" in (report / "report.md").read_text()


def test_ray_fleet_gives_the_serial_numbers_and_reports_a_retried_worker(
        serial, bags, checkpoints, local_ray, tmp_path):
    serial_results, _ = serial
    results = evaluate_fleet(_configs(bags, checkpoints, tmp_path / "ray"), use_ray=True,
                             progress=False, before_task=_kill_once(tmp_path / "killed"))
    fleet = results["fleet"]
    assert fleet["engine"] == "ray" and fleet["tasks"] == 4 and fleet["failed"] == []
    assert len(fleet["retried"]) == 1 and "WorkerCrashedError" in fleet["retried"][0]["error"]
    assert os.getpid() not in fleet["workers"]  # the work ran in Ray's worker processes
    # each worker builds each checkpoint's model once, whatever number of tasks it runs
    assert fleet["model_loads"] <= len(fleet["workers"]) * len(checkpoints)
    for checkpoint in checkpoints:
        assert _untimed(results["checkpoints"][checkpoint]) == _untimed(
            serial_results["checkpoints"][checkpoint])
    report = (tmp_path / "ray" / "tiny" / "report.md").read_text()
    assert "Retried (the worker died)" in report and "attempt 1" in report


def test_a_task_that_fails_in_its_own_code_is_reported_not_retried(bags, local_ray, tmp_path):
    def refuse_bag_b(bag: str, checkpoint: str) -> None:
        if bag.endswith("b"):
            raise ValueError(f"{bag}: refused by the test")

    configs = _configs(bags, ["tiny"], tmp_path / "r")
    results = evaluate_fleet(configs, use_ray=True, progress=False, before_task=refuse_bag_b)
    (failed,) = results["fleet"]["failed"]
    assert failed["bag"].endswith("b") and "refused by the test" in failed["error"]
    assert results["fleet"]["retried"] == []
    episodes = results["checkpoints"]["tiny"]["episodes"]
    assert [Path(e["bag"]).name for e in episodes] == ["a"]  # the other bag's results are kept
    assert "**Failed: these bags have no results**" in (tmp_path / "r" / "report.md").read_text()


def test_failures_are_listed_in_bag_order_whichever_finishes_first(bags, local_ray, tmp_path):
    import time

    def refuse(bag: str, checkpoint: str) -> None:
        if bag.endswith("a"):
            time.sleep(3.0)  # a fails after b (both run at once on the 2 CPUs)
        raise ValueError(f"{Path(bag).name}: refused by the test")

    results = evaluate_fleet(_configs(bags, ["tiny"], tmp_path / "r"), use_ray=True, progress=False,
                             before_task=refuse)
    assert [Path(f["bag"]).name for f in results["fleet"]["failed"]] == ["a", "b"]
    assert results["checkpoints"]["tiny"] is None  # nothing finished: no summary for it


def test_tasks_no_ray_node_can_run_are_refused_not_queued_forever(bags, local_ray, tmp_path):
    # each task asks for --threads CPUs; the local Ray has 2, so 3 could never be scheduled
    config = EvalConfig(bags=find_bags([str(bags)]), strategies=["dysta"], max_steps=1, threads=3,
                        report=str(tmp_path / "r"))
    with pytest.raises(ConfigError, match=r"--threads 3: .* no Ray node has more than 2"):
        evaluate_fleet([config], use_ray=True, progress=False)
    assert ray.is_initialized()  # the caller's Ray is left running


def test_a_ray_that_cannot_be_started_or_reached_is_one_line(bags, tmp_path):
    # a fresh process: the module's local Ray would be reused instead of the address given
    result = subprocess.run([sys.executable, "-m", "dysta_ros.cli", "eval", str(bags / "a"),
                             "--strategies", "dysta", "--max-steps", "1", "--threads", "1",
                             "--report", str(tmp_path / "r"), "--ray", "127.0.0.1:notaport"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    assert "--ray: could not start or reach Ray at 127.0.0.1:notaport" in result.stderr
    assert "Traceback" not in result.stderr
