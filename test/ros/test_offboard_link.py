"""The robot / policy-host split as two processes: over loopback, and over a real impaired network path.

The impaired variant puts each role in its own network namespace, joined by the userspace link
of evaluation/impaired_link.py (20 ms +- 5 ms, 1 % loss, 50 Mbit/s), DDS discovering across it;
it skips, saying why, where namespaces cannot be made. The loopback variant always runs.
Assertions are on what happened and in which order, never on how fast.
"""

from __future__ import annotations

import argparse
import json
import subprocess

import pytest

pytest.importorskip("rclpy")

from dysta_ros.evaluation.impaired_link import ImpairedLink, Impairment, namespaces_available  # noqa: E402
from dysta_ros.nodes import link_bench, run  # noqa: E402

NO_NAMESPACES = namespaces_available()


def bench_args(**changes) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    link_bench.add_arguments(parser)
    args = parser.parse_args(["--seconds", "3", "--cut-s", "1.5", "--width", "160", "--height", "120",
                              "--camera-rate", "10"])
    for key, value in changes.items():
        setattr(args, key, value)
    return args


def check_the_split_worked(result: dict, late_chunks_possible: bool = False) -> None:
    assert result["chunks"] > 0 and result["commands"] > 0
    # the policy host saw the cameras only as robot_link's JPEG streams, smaller than raw
    for topic, size in result["camera_frame_bytes"].items():
        assert 0 < size < result["raw_frame_bytes"], topic
    counts = result["executor_counts"]
    assert counts["accepted"] > 0
    if not late_chunks_possible:
        assert counts["rejected"] == 0
    else:  # a chunk the lossy link delivered after its last action is refused, never executed
        assert counts["rejected"] < counts["accepted"]


def test_loopback_split(tmp_path):
    result = link_bench.run_variant(bench_args(), impaired=False)
    check_the_split_worked(result)
    assert result["link"] == "loopback" and "cut" not in result
    assert result["clock"]["mode"] == "assume"
    # the report is shaped as every result is: one run per link, the settings as meta
    link_bench.write_results([result], bench_args(out=str(tmp_path)))
    document = json.loads((tmp_path / "link.json").read_text())
    assert [run["link"] for run in document["runs"]] == ["loopback"]
    assert document["meta"]["command"] == "link" and document["meta"]["seconds"] == 3
    assert (tmp_path / "link.png").stat().st_size > 0


@pytest.mark.skipif(NO_NAMESPACES is not None, reason=f"no network namespaces: {NO_NAMESPACES}")
def test_impaired_link_between_namespaces_holds_on_a_cut_and_resumes_on_a_fresh_chunk():
    result = link_bench.run_variant(bench_args(), impaired=True)
    check_the_split_worked(result, late_chunks_possible=True)
    link = result["link_counts"]
    assert link["forwarded"] > 0 and link["lost"] > 0  # the traffic really crossed the lossy link
    clock = result["clock"]  # both namespaces share this kernel's clock: the true offset is 0
    assert clock["mode"] == "estimate" and "estimated from round trips" in clock["message"]
    assert abs(float(clock["offset_s"])) <= float(clock["uncertainty_s"]) + 1e-6
    cut = result["cut"]
    # held, and said why (the plan may also run out while the deadman holds, under load)
    assert "deadman" in cut["hold_reasons"]
    assert set(cut["hold_reasons"]) <= {"deadman", "the plan has run out"}
    assert cut["commands_after_deadman_hold"] == 0  # nothing moved until the link came back
    # moved again, and only once a chunk of an observation taken after the cut had arrived
    assert cut["resumed_after_restore_s"] is not None
    assert cut["first_fresh_chunk_stamp_after_cut_s"] > 0
    assert cut["resumed_after_restore_s"] >= cut["first_fresh_chunk_after_restore_s"]


@pytest.mark.skipif(NO_NAMESPACES is not None, reason=f"no network namespaces: {NO_NAMESPACES}")
def test_namespaces_and_taps_are_removed_even_when_the_body_fails():
    with pytest.raises(RuntimeError, match="inside"):
        with ImpairedLink(Impairment.none(), prefix="dytestfail") as link:
            assert subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                                  check=True).stdout.count("dytestfail") == 2
            raise RuntimeError(f"failure inside {link.namespaces}")
    assert "dytestfail" not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                                              check=True).stdout


@pytest.mark.skipif(NO_NAMESPACES is not None, reason=f"no network namespaces: {NO_NAMESPACES}")
def test_namespaces_a_killed_run_left_are_removed_by_the_next():
    from dysta_ros.evaluation.impaired_link import remove_abandoned_namespaces

    dead = 4_194_304  # PID_MAX_LIMIT: pids stay below it, so no process has this one
    subprocess.run(["ip", "netns", "add", f"dy{dead}a"], check=True)
    assert remove_abandoned_namespaces() == [f"dy{dead}a"]
    assert f"dy{dead}a" not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                                              check=True).stdout


def test_run_roles_pick_the_nodes_and_the_policy_host_takes_the_robots_cameras_and_clock():
    parser = argparse.ArgumentParser()
    run.add_arguments(parser)
    host = run.node_values(parser.parse_args(["--role", "policy-host"]))
    assert host["policy_node"]["camera_transport"] == "compressed"
    assert host["policy_node"]["clock_sync"] == "estimate"
    pinned = run.node_values(parser.parse_args(["--role", "policy-host", "--param",
                                                "policy_node:clock_sync=assume"]))
    assert pinned["policy_node"]["clock_sync"] == "assume"  # chrony/PTP: the flag wins
    assert "camera_transport" not in run.node_values(parser.parse_args([]))["policy_node"]
    assert run.ROLES["robot"] == ("chunk_executor", "robot_link")
    assert run.ROLES["policy-host"] == ("policy_node",)


def test_robot_link_jpeg_decodes_to_the_frame_and_downscales():
    import numpy as np

    from dysta_ros.images import compressed_to_rgb
    from dysta_ros.nodes.robot_link import compressed_topic, encode_jpeg

    assert compressed_topic("/camera/image_raw") == "/camera/image_raw/compressed"
    assert compressed_topic("/camera/image_raw/compressed/") == "/camera/image_raw/compressed"
    y, x = np.mgrid[0:120, 0:160]
    frame = np.stack([x * 1.5, y * 2.0, (x + y) * 0.9], axis=-1).astype(np.uint8)  # smooth, like a scene
    full = compressed_to_rgb("jpeg", encode_jpeg(frame, quality=90))
    assert full.shape == frame.shape
    assert np.abs(full.astype(int) - frame).mean() < 3  # JPEG is lossy, but not by much at q90
    half = compressed_to_rgb("jpeg", encode_jpeg(frame, quality=90, scale=0.5))
    assert half.shape == (60, 80, 3)
    assert len(encode_jpeg(frame, quality=20)) < len(encode_jpeg(frame, quality=90))
