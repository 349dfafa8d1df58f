"""`dysta-ros convert`: LeRobot datasets (v3.0, v2.1) -> rosbag2 MCAP -> LeRobot v3.0, both ways.

Datasets are written in the test in LeRobot's layout (test/lerobot_layout.py), converted to a
real MCAP bag and back; states and actions must come back exactly, frames within codec
tolerance, and `dysta-ros eval` must run on a converted bag.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

pytest.importorskip("pyarrow")
pytest.importorskip("av")

from lerobot_layout import SIM_ARM_NAMES, SO101_NAMES, Spec, write_dataset  # noqa: E402

from dysta_ros.bags import BagReader, TopicMap, load_episodes  # noqa: E402
from dysta_ros.bags.convert import bag_to_dataset, dataset_to_bag  # noqa: E402
from dysta_ros.bags.lerobot import LeRobotDatasetReader  # noqa: E402
from dysta_ros.cli import main  # noqa: E402

CODEC_MEAN_ERROR = 4.0  # mean |pixel difference| of smooth frames through AV1/h264 (0..255)


def _frame_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def _round_trip(tmp_path, spec: Spec):
    truths = write_dataset(tmp_path / "dataset", spec)
    result = dataset_to_bag(tmp_path / "dataset", tmp_path / "bag", progress=False)
    back = bag_to_dataset(tmp_path / "bag", tmp_path / "back", fps=spec.fps,
                          topic_map=result["topic_map"], progress=False)
    return truths, result, back


@pytest.mark.parametrize("spec", [
    # SO-101: front + wrist, AV1, two episodes per parquet and per mp4, float64 columns
    Spec(version="v3.0", names_form="motors", float64=True),
    # bimanual humanoid-sized: 26 dims, nested names, two wrist cameras, h264, one per file
    Spec(version="v2.1", names=[f"{side}_{j}" for side in ("left", "right") for j in range(13)],
         names_form="nested", cameras=("cam_high", "cam_left_wrist", "cam_right_wrist"),
         codec="libx264", episodes=2, frames=6, fps=15, drop_columns=("timestamp", "index")),
], ids=["v30-so101", "v21-bimanual-26"])
def test_round_trip_gives_the_same_frames_states_and_actions(tmp_path, spec):
    truths, result, back = _round_trip(tmp_path, spec)
    assert result["episodes"] == spec.episodes and result["frames"] == spec.episodes * spec.frames
    with BagReader(tmp_path / "bag") as bag:
        counts = bag.message_counts
        events = [json.loads(bag.decode(m).data) for m in bag.messages(["/dysta/episode"])]
        first_state = bag.decode(next(bag.messages(["/joint_states"])))
    for camera in spec.cameras:
        assert counts[f"/camera/{camera}/image_raw"] == spec.episodes * spec.frames
    assert counts["/dysta/action_chunk"] == spec.episodes * spec.frames
    assert [e["event"] for e in events] == ["start", "end"] * spec.episodes
    assert list(first_state.name) == spec.names  # names flattened from list / mapping / nesting
    # the bag as the evaluator reads it: every frame, at the dataset's stamps
    episodes = load_episodes(tmp_path / "bag", TopicMap.load(result["topic_map"]), spec.fps)
    assert [len(e) for e in episodes] == [spec.frames] * spec.episodes
    assert [e.instruction for e in episodes] == [t.task for t in truths]
    np.testing.assert_array_equal(episodes[0].states, truths[0].state)
    np.testing.assert_array_equal(episodes[-1].recorded_actions(episodes[-1].times), truths[-1].action)

    assert back["episodes"] == spec.episodes and back["frames"] == spec.episodes * spec.frames
    dataset = LeRobotDatasetReader(tmp_path / "back")
    assert dataset.version == "v3.0" and dataset.state_names == spec.names
    assert dataset.cameras == list(spec.cameras)
    for truth, episode in zip(truths, dataset.episodes(), strict=True):
        assert episode.task == truth.task
        np.testing.assert_array_equal(episode.state, truth.state)
        np.testing.assert_array_equal(episode.action, truth.action)
        np.testing.assert_allclose(episode.timestamps, np.arange(spec.frames) / spec.fps, atol=1e-6)
        for camera in spec.cameras:
            assert episode.images[camera].shape == truth.images[camera].shape
            assert _frame_error(episode.images[camera], truth.images[camera]) < CODEC_MEAN_ERROR
    # frames are not interchangeable: each decoded frame is nearest its own original
    episode = next(dataset.episodes())
    camera = spec.cameras[0]
    errors = [[_frame_error(episode.images[camera][i], truths[0].images[camera][j])
               for j in range(spec.frames)] for i in range(spec.frames)]
    assert list(np.argmin(errors, axis=1)) == list(range(spec.frames))


def test_written_dataset_has_lerobots_v30_metadata(tmp_path):
    spec = Spec(episodes=2, frames=5)
    _round_trip(tmp_path, spec)
    root = tmp_path / "back"
    info = json.loads((root / "meta" / "info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["fps"] == spec.fps
    assert info["total_episodes"] == 2 and info["total_frames"] == 10 and info["total_tasks"] == 2
    assert info["features"]["observation.state"]["names"] == SO101_NAMES
    video = info["features"]["observation.images.front"]
    assert video["dtype"] == "video" and video["shape"] == [spec.size, spec.size, 3]
    assert video["info"]["video.codec"] == "av1" and video["info"]["video.pix_fmt"] == "yuv420p"
    for episode in range(2):
        assert (root / info["video_path"].format(video_key="observation.images.wrist",
                                                 chunk_index=0, file_index=episode)).is_file()
    stats = json.loads((root / "meta" / "stats.json").read_text())
    truths = write_dataset(tmp_path / "again", spec)
    states = np.concatenate([t.state for t in truths])
    np.testing.assert_allclose(stats["observation.state"]["mean"], states.mean(axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats["observation.state"]["std"], states.std(axis=0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(stats["action"]["max"], np.concatenate([t.action for t in truths]).max(axis=0))
    assert stats["observation.state"]["count"] == [10]
    assert np.asarray(stats["observation.images.front"]["mean"]).shape == (3, 1, 1)
    import pyarrow.parquet as pq

    tasks = pq.read_table(root / "meta" / "tasks.parquet")
    assert json.loads(tasks.schema.metadata[b"pandas"])["index_columns"] == ["task"]
    rows = pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert [r["dataset_from_index"] for r in rows] == [0, 5]
    assert rows[1]["videos/observation.images.front/to_timestamp"] == pytest.approx(0.5)


def test_eval_runs_on_a_converted_dataset(tmp_path, capsys):
    """A dataset with the sim arm's joints and cameras goes onto sim_arm's topics and evaluates."""
    write_dataset(tmp_path / "dataset", Spec(names=list(SIM_ARM_NAMES), cameras=("main", "wrist"),
                                             episodes=2, frames=6, codec="libx264"))
    assert main(["convert", str(tmp_path / "dataset"), str(tmp_path / "bag"),
                 "--topic-map", "sim_arm", "--json", str(tmp_path / "convert.json")]) == 0
    assert "dysta-ros eval" in capsys.readouterr().out  # a FILE: the summary still on stdout
    document = json.loads((tmp_path / "convert.json").read_text())
    (written,) = document["runs"]
    assert written["bag"] == str(tmp_path / "bag") and written["episodes"] == 2
    assert document["meta"]["direction"] == "dataset->bag"
    status = main(["eval", str(tmp_path / "bag"), "--model", "checkpoints/reference",
                   "--strategies", "full", "--max-steps", "3", "--report", str(tmp_path / "report"),
                   "--json"])
    out = capsys.readouterr().out
    assert status == 0, out
    (summary,) = json.loads((tmp_path / "report" / "results.json").read_text())["runs"]  # full
    assert summary["steps"] == 6 and summary["failed_steps"] == 0
    assert summary["action_error"]["mse"] is not None and np.isfinite(summary["action_error"]["mse"])


def _convert_error(capsys, *args) -> tuple[int, str]:
    """Return the exit status and what was printed to stderr, progress bars left out."""
    status = main(["convert", *map(str, args)])
    err = capsys.readouterr().err
    return status, "\n".join(line for line in err.splitlines() if line.startswith("dysta-ros"))


def test_corrupt_parquet_is_one_line_naming_the_file(tmp_path, capsys):
    write_dataset(tmp_path / "dataset", Spec(episodes=2, frames=4))
    broken = tmp_path / "dataset/data/chunk-000/file-000.parquet"
    broken.write_bytes(b"PAR1 this is not parquet" + bytes(100))
    before = broken.read_bytes()
    status, err = _convert_error(capsys, tmp_path / "dataset", tmp_path / "bag")
    assert status == 1 and len(err.splitlines()) == 1
    assert str(broken) in err and "parquet" in err
    assert not (tmp_path / "bag").exists() and broken.read_bytes() == before


def test_missing_video_is_an_error_or_skipped_on_request(tmp_path, capsys, caplog):
    write_dataset(tmp_path / "dataset", Spec(episodes=2, frames=4, episodes_per_file=1))
    missing = tmp_path / "dataset/videos/observation.images.wrist/chunk-000/file-001.mp4"
    missing.unlink()
    status, err = _convert_error(capsys, tmp_path / "dataset", tmp_path / "bag")
    assert status == 1 and len(err.splitlines()) == 1
    assert str(missing) in err and "--skip-missing-video" in err
    assert not (tmp_path / "bag").exists()
    with caplog.at_level(logging.WARNING):
        status, _ = _convert_error(capsys, tmp_path / "dataset", tmp_path / "bag",
                                   "--skip-missing-video")
    assert status == 0
    assert any(str(missing) in r.getMessage() for r in caplog.records)
    with BagReader(tmp_path / "bag") as bag:  # episode 1 lost the wrist camera only
        assert bag.message_counts["/camera/wrist/image_raw"] == 4
        assert bag.message_counts["/camera/front/image_raw"] == 8


def test_feature_names_that_do_not_match_the_robot_are_one_line_naming_info(tmp_path, capsys):
    write_dataset(tmp_path / "dataset", Spec(names=list(SIM_ARM_NAMES), episodes=1, frames=3))
    info = tmp_path / "dataset/meta/info.json"
    status, err = _convert_error(capsys, tmp_path / "dataset", tmp_path / "bag", "--robot", "so101")
    assert status == 1 and len(err.splitlines()) == 1
    assert str(info) in err and "shoulder_pan.pos" in err and "joint1" in err
    status, err = _convert_error(capsys, tmp_path / "dataset", tmp_path / "bag2",
                                 "--topic-map", "sim_arm")  # sim_arm wants main + wrist cameras
    assert status == 1 and str(info) in err and "main" in err
    assert not (tmp_path / "bag").exists() and not (tmp_path / "bag2").exists()
    # the robot it does match converts
    write_dataset(tmp_path / "so101", Spec(episodes=1, frames=3))
    assert _convert_error(capsys, tmp_path / "so101", tmp_path / "bag3", "--robot", "so101")[0] == 0


def test_a_dead_camera_converts_with_a_warning(tmp_path, caplog):
    write_dataset(tmp_path / "dataset", Spec(episodes=1, frames=4, dead_camera="wrist"))
    with caplog.at_level(logging.WARNING):
        dataset_to_bag(tmp_path / "dataset", tmp_path / "bag", progress=False)
    warnings = [r.getMessage() for r in caplog.records if "dead camera" in r.getMessage()]
    assert len(warnings) == 1 and "wrist" in warnings[0]
    with BagReader(tmp_path / "bag") as bag:
        assert bag.message_counts["/camera/wrist/image_raw"] == 4


def test_convert_json_on_stdout_is_the_document_alone(tmp_path, capsys):
    write_dataset(tmp_path / "dataset", Spec(episodes=1, frames=3))
    assert main(["convert", str(tmp_path / "dataset"), str(tmp_path / "bag"), "--json"]) == 0
    document = json.loads(capsys.readouterr().out)  # no summary line, no progress bar mixed in
    assert set(document) == {"runs", "meta"} and document["runs"][0]["episodes"] == 1
    assert document["meta"]["source"] == str(tmp_path / "dataset")


def test_bag_to_dataset_needs_a_whole_fps(tmp_path, capsys):
    write_dataset(tmp_path / "dataset", Spec(episodes=1, frames=3))
    dataset_to_bag(tmp_path / "dataset", tmp_path / "bag", progress=False)
    status, err = _convert_error(capsys, tmp_path / "bag", tmp_path / "out")
    assert status == 2 and "--fps" in err
    status, err = _convert_error(capsys, tmp_path / "bag", tmp_path / "out", "--fps", "7.5",
                                 "--topic-map", tmp_path / "bag/topic_map.yaml")
    assert status == 2 and "whole number" in err and not (tmp_path / "out").exists()


def test_a_dataset_lerobot_itself_wrote_reads_and_converts(tmp_path):
    """test/data/lerobot_v30_so101: written by LeRobot 0.4.4 (generate.py says what it holds)."""
    from pathlib import Path

    source = Path(__file__).resolve().parents[1] / "data" / "lerobot_v30_so101" / "dataset"
    dataset = LeRobotDatasetReader(source)
    assert dataset.version == "v3.0" and dataset.state_names == SO101_NAMES
    assert dataset.cameras == ["front", "wrist"] and len(dataset) == 3
    for e, episode in enumerate(dataset.episodes()):  # three episodes share one mp4 per camera
        expected = np.repeat((e * 10 + np.arange(5, dtype=np.float32))[:, None], 6, axis=1)
        np.testing.assert_array_equal(episode.state, expected)
        np.testing.assert_array_equal(episode.action, expected + 0.5)
        assert episode.task == f"task {e % 2}"
        front, wrist = episode.images["front"].astype(int), episode.images["wrist"].astype(int)
        assert np.abs(front[..., 0].mean(axis=(1, 2)) - (40 + 30 * np.arange(5))).max() < 4
        assert np.abs(front[..., 1].mean() - (50 + 40 * e)) < 4
        assert np.abs(wrist[..., 2].mean(axis=(1, 2)) - (60 + 25 * np.arange(5))).max() < 4
        assert np.abs(wrist[..., 0].mean() - (200 - 50 * e)) < 4
    result = dataset_to_bag(source, tmp_path / "bag", robot="so101", progress=False)
    back = bag_to_dataset(tmp_path / "bag", tmp_path / "back", fps=10,
                          topic_map=result["topic_map"], progress=False)
    assert back["frames"] == 15
    for original, converted in zip(dataset.episodes(), LeRobotDatasetReader(tmp_path / "back").episodes(),
                                   strict=True):
        np.testing.assert_array_equal(converted.state, original.state)
        np.testing.assert_array_equal(converted.action, original.action)
        assert _frame_error(converted.images["front"], original.images["front"]) < CODEC_MEAN_ERROR


def _edit_info(root, change):
    path = root / "meta/info.json"
    info = json.loads(path.read_text())
    change(info)
    path.write_text(json.dumps(info))


def _edit_table(relative, change):
    def edit(root):
        import pyarrow.parquet as pq

        pq.write_table(change(pq.read_table(root / relative)), root / relative)
    return edit


def _null_column(name):
    """Return a change that makes the first row of column `name` null."""
    import pyarrow as pa

    def change(table):
        column = table.column(name)
        values = [None, *column.to_pylist()[1:]]
        return table.set_column(table.column_names.index(name), name, pa.array(values, column.type))
    return change


EPISODES = "meta/episodes/chunk-000/file-000.parquet"
DATA = "data/chunk-000/file-000.parquet"


@pytest.mark.parametrize("change, names", [
    (lambda root: _edit_info(root, lambda i: i.update(fps=0)), "info.json: fps must be a number > 0"),
    (lambda root: _edit_info(root, lambda i: i["features"].update({"observation.images.front": "video"})),
     "info.json: not LeRobot dataset info"),
    (lambda root: _edit_info(root, lambda i: i["features"]["observation.state"].update(shape="6")),
     "info.json: observation.state shape must be a list"),
    (lambda root: _edit_info(root, lambda i: i.update(data_path="data/{nope}.parquet")),
     "meta: episode 0: malformed"),
    (_edit_table(EPISODES, lambda t: t.drop(["episode_index"])),
     "meta: an episode without a valid episode_index"),
    (_edit_table(EPISODES, _null_column("data/file_index")), "meta: episode 0: malformed"),
    (_edit_table(DATA, _null_column("observation.state")), "meta: episode 0: malformed"),
    (_edit_table(DATA, _null_column("task_index")), "meta: episode 0: malformed"),
], ids=["fps-0", "feature-not-object", "shape-text", "path-template-key", "no-episode-index",
        "null-file-index", "null-state", "null-task-index"])
def test_malformed_metadata_or_data_is_one_line_naming_the_dataset(tmp_path, capsys, change, names):
    import shutil
    from pathlib import Path

    source = Path(__file__).resolve().parents[1] / "data" / "lerobot_v30_so101" / "dataset"
    shutil.copytree(source, tmp_path / "dataset")
    change(tmp_path / "dataset")
    status, err = _convert_error(capsys, tmp_path / "dataset", tmp_path / "bag")
    assert status == 1 and len(err.splitlines()) == 1, err
    assert f"{tmp_path / 'dataset'}/" in err and names in err
    assert not (tmp_path / "bag").exists()


def test_a_topic_map_chooses_compressed_images_and_joint_state_actions(tmp_path):
    """Topics ending /compressed carry lossless PNG; actions go out as the map's JointState."""
    spec = Spec(episodes=2, frames=4)
    truths = write_dataset(tmp_path / "dataset", spec)
    topic_map = tmp_path / "so101_topics.yaml"
    topic_map.write_text("cameras: {front: /front/image_raw/compressed, wrist: /wrist/image_raw}\n"
                         "joints: [wrist_roll.pos, gripper.pos]\n"
                         "action_topic: /joint_commands\naction_type: sensor_msgs/msg/JointState\n")
    dataset_to_bag(tmp_path / "dataset", tmp_path / "bag", topic_map=str(topic_map), progress=False)
    with BagReader(tmp_path / "bag") as bag:
        assert bag.topics["/front/image_raw/compressed"] == "sensor_msgs/msg/CompressedImage"
        assert bag.topics["/joint_commands"] == "sensor_msgs/msg/JointState"
    decoded = LeRobotDatasetReader(tmp_path / "dataset")
    first = next(decoded.episodes())
    episodes = load_episodes(tmp_path / "bag", TopicMap.load(tmp_path / "bag/topic_map.yaml"), spec.fps)
    # PNG is lossless: the bag holds exactly the frames decoded from the dataset's video
    np.testing.assert_array_equal(episodes[0].observation(2).images["front"], first.images["front"][2])
    # the map's two joints, picked by name from the JointState's six
    np.testing.assert_array_equal(episodes[1].states, truths[1].state[:, 4:])
    np.testing.assert_array_equal(episodes[1].recorded_actions(episodes[1].times), truths[1].action[:, 4:])


def test_an_existing_destination_is_refused_and_left_alone(tmp_path, capsys):
    write_dataset(tmp_path / "dataset", Spec(episodes=1, frames=3))
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    status, err = _convert_error(capsys, tmp_path / "dataset", tmp_path / "taken")
    assert status == 1 and "exists already" in err
    dataset_to_bag(tmp_path / "dataset", tmp_path / "bag", progress=False)
    status, err = _convert_error(capsys, tmp_path / "bag", tmp_path / "taken", "--fps", "10",
                                 "--topic-map", tmp_path / "bag/topic_map.yaml")
    assert status == 1 and "exists already" in err
    assert (tmp_path / "taken" / "keep.txt").read_text() == "mine"


def test_image_features_in_the_parquet_convert_exactly(tmp_path):
    """Cameras stored as PNG bytes in the parquet (dtype image, no mp4) reach the bag unchanged."""
    spec = Spec(episodes=3, frames=4, image_features=True)
    truths = write_dataset(tmp_path / "dataset", spec)
    assert not (tmp_path / "dataset" / "videos").exists()
    result = dataset_to_bag(tmp_path / "dataset", tmp_path / "bag", progress=False)
    episodes = load_episodes(tmp_path / "bag", TopicMap.load(result["topic_map"]), spec.fps)
    for truth, episode in zip(truths, episodes, strict=True):
        for step in range(spec.frames):
            images = episode.observation(step).images
            for camera in spec.cameras:
                np.testing.assert_array_equal(images[camera], truth.images[camera][step])


def test_a_corrupt_video_is_one_line_naming_it(tmp_path, capsys):
    write_dataset(tmp_path / "dataset", Spec(episodes=2, frames=4, episodes_per_file=1))
    broken = tmp_path / "dataset/videos/observation.images.front/chunk-000/file-001.mp4"
    broken.write_bytes(broken.read_bytes()[:200])  # cut short, as an interrupted download
    status, err = _convert_error(capsys, tmp_path / "dataset", tmp_path / "bag")
    assert status == 1 and len(err.splitlines()) == 1 and str(broken) in err
    assert not (tmp_path / "bag").exists()


@pytest.mark.parametrize("compress, exact", [("png", True), ("jpeg", False)])
def test_compressed_camera_topics_on_request(tmp_path, compress, exact):
    spec = Spec(episodes=1, frames=3)
    write_dataset(tmp_path / "dataset", spec)
    result = dataset_to_bag(tmp_path / "dataset", tmp_path / "bag", compress=compress, progress=False)
    with BagReader(tmp_path / "bag") as bag:
        assert bag.topics["/camera/front/image_raw/compressed"] == "sensor_msgs/msg/CompressedImage"
        assert bag.decode(next(bag.messages(["/camera/wrist/image_raw/compressed"]))).format == compress
    decoded = next(LeRobotDatasetReader(tmp_path / "dataset").episodes()).images["front"][1]
    image = load_episodes(tmp_path / "bag", TopicMap.load(result["topic_map"]), spec.fps)[0] \
        .observation(1).images["front"]
    assert (np.array_equal(image, decoded) if exact else _frame_error(image, decoded) < 2.0)


def test_stamps_of_a_long_episode_stay_on_the_frame_grid(tmp_path):
    # float32 timestamps of a 540 s episode at 50 fps are up to 30 us off k / fps (1.5e-3 of a
    # frame): off the grid, a frame stamped after its step is not held there, and a round trip
    # at the same fps repeats the frame before it
    spec = Spec(episodes=1, frames=27000, fps=50, cameras=("front",), size=2, image_features=True)
    write_dataset(tmp_path / "dataset", spec)
    dataset_to_bag(tmp_path / "dataset", tmp_path / "bag", progress=False)
    with BagReader(tmp_path / "bag") as bag:
        stamps = [bag.decode(m).header.stamp for m in bag.messages(["/joint_states"])]
    ns = np.asarray([s.sec * 10**9 + s.nanosec for s in stamps]) - stamps[0].sec * 10**9 - stamps[0].nanosec
    np.testing.assert_array_equal(ns, np.round(np.arange(spec.frames) * 1e9 / spec.fps))
