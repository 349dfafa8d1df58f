"""`dysta-ros convert`: LeRobot dataset -> rosbag2 (MCAP) bag, and bag -> LeRobot dataset.

Dataset to bag: each `observation.images.<cam>` becomes a sensor_msgs/Image topic,
`observation.state` a JointState carrying the feature's names, `action` the topic map's
action type (by default this package's ActionChunk with one action, meant for the frame's
stamp; JointState and Float64MultiArray maps work too), the task the instruction, and each
episode is marked on /dysta/episode with start/end events as `dysta-ros record` marks them.
Stamps are the dataset's timestamps, episodes one second apart. The topic map used is saved
as `<bag>/topic_map.yaml`, so `dysta-ros eval BAG --topic-map BAG/topic_map.yaml` reads it.

Bag to dataset: episodes are cut and resampled at `--fps` by the evaluator's own loader
(bags/episodes.py: zero-order hold on header stamps), and written in LeRobot's v3.0 layout.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path

import numpy as np
import yaml
from tqdm import tqdm

from dysta_ros.bags.episodes import CLOCKS, load_episodes
from dysta_ros.bags.lerobot import (
    EpisodeToWrite,
    LeRobotDatasetReader,
    LeRobotDatasetWriter,
)
from dysta_ros.bags.rosbag import BagWriter, TopicQos
from dysta_ros.bags.topic_map import TopicMap
from dysta_ros.cli_options import add_json_argument, json_to_stdout, write_json
from dysta_ros.errors import BagError, ConfigError, DatasetError, exit_status
from dysta_ros.results import command_line, result_document

log = logging.getLogger(__name__)

START_S = 1.0  # header stamps of zero mean "unset" to the readers: the first episode starts here
EPISODE_GAP_S = 1.0
LATCHED = TopicQos(reliable=True, transient_local=True)
SENSOR = TopicQos(reliable=False)
COMPRESSIONS = ("none", "png", "jpeg")  # png is lossless; jpeg (quality 95) is what cameras send
JPEG_QUALITY = 95


def camera_topic(camera: str, compress: str = "none") -> str:
    """Return the topic a dataset camera goes to unless a topic map names one."""
    return f"/camera/{camera}/image_raw" + ("/compressed" if compress != "none" else "")


def generated_topic_map(reader: LeRobotDatasetReader, compress: str = "none") -> TopicMap:
    """Return the topics a dataset goes to when no topic map is given."""
    return TopicMap(cameras={c: camera_topic(c, compress) for c in reader.cameras},
                    joints=tuple(reader.state_names), source=f"{reader.info_path} (generated)")


def _check_names(reader: LeRobotDatasetReader, topic_map: TopicMap, robot: str | None) -> None:
    """Raise DatasetError (naming info.json) where the dataset does not fit the map or robot."""
    where = reader.info_path
    if missing := [c for c in topic_map.cameras if c not in reader.cameras]:
        raise DatasetError(f"{where}: no camera {missing} of topic map {topic_map.source}; the "
                           f"dataset has {reader.cameras} (observation.images.<camera>)")
    if missing := [j for j in topic_map.joints if j not in reader.state_names]:
        raise DatasetError(f"{where}: observation.state names {reader.state_names} lack joints "
                           f"{missing} of topic map {topic_map.source}")
    if robot is not None:
        from dysta_ros.robot import load_robot_config

        config = load_robot_config(robot)
        expected = list(config.model_features or config.joints)
        if missing := [n for n in expected if n not in reader.state_names]:
            raise DatasetError(f"{where}: observation.state names {reader.state_names} do not "
                               f"match robot {config.name}'s {expected} (missing {missing})")


def dataset_to_bag(dataset: str | Path, bag: str | Path, topic_map: str | None = None,
                   robot: str | None = None, skip_missing_video: bool = False,
                   compress: str = "none", progress: bool = True) -> dict:
    """Convert a LeRobot dataset to a rosbag2 MCAP bag; return what was written.

    `compress` (png, jpeg) writes CompressedImage on `<topic>/compressed` for the cameras
    whose topic the converter chooses; a topic map's topics ending /compressed get PNG unless
    `compress` says jpeg, its other topics raw Image.
    """
    if compress not in COMPRESSIONS:
        raise ConfigError(f"compress {compress!r} is not one of {list(COMPRESSIONS)}")
    reader = LeRobotDatasetReader(dataset, skip_missing_video=skip_missing_video)
    chosen = TopicMap.load(topic_map) if topic_map else generated_topic_map(reader, compress)
    _check_names(reader, chosen, robot)
    # cameras the map does not name still go into the bag, on the generated topics
    cameras = {c: chosen.cameras.get(c, camera_topic(c, compress)) for c in reader.cameras}
    formats = {c: ("raw" if not topic.endswith("/compressed") else
                   "jpeg" if compress == "jpeg" else "png") for c, topic in cameras.items()}
    saved = {"cameras": cameras, "state_topic": chosen.state_topic, "joints": list(chosen.joints),
             "action_topic": chosen.action_topic, "action_type": chosen.action_type,
             "instruction_topic": chosen.instruction_topic, "episode_topic": chosen.episode_topic}
    counts = {"episodes": 0, "frames": 0}
    bag = Path(bag)
    writer = BagWriter(bag)  # refuses an existing path, so what is removed below is ours
    try:
        with writer:
            _declare_topics(writer, saved, has_action=bool(reader.action_names))
            t0 = START_S
            for episode in tqdm(reader.episodes(), total=len(reader), desc="convert",
                                unit="episode", disable=not progress):
                t0 = _write_episode(writer, saved, formats, reader, episode, counts["episodes"], t0)
                counts["episodes"] += 1
                counts["frames"] += len(episode.timestamps)
    except BaseException:
        shutil.rmtree(bag, ignore_errors=True)  # a half-written bag is worse than none
        raise
    if not reader.action_names:
        log.warning("%s: no action feature; the bag has no action topic (eval needs one)",
                    reader.info_path)
    (bag / "topic_map.yaml").write_text(
        "# Written by dysta-ros convert: where this bag keeps the dataset's features.\n"
        + yaml.safe_dump(saved, sort_keys=False))
    return {**counts, "bag": str(bag), "topic_map": str(bag / "topic_map.yaml")}


def _declare_topics(writer: BagWriter, topics: dict, has_action: bool) -> None:
    for topic in topics["cameras"].values():
        writer.add_topic(topic, _image_type(topic), SENSOR)
    writer.add_topic(topics["state_topic"], "sensor_msgs/msg/JointState", SENSOR)
    if has_action:
        writer.add_topic(topics["action_topic"], topics["action_type"])
    writer.add_topic(topics["instruction_topic"], "std_msgs/msg/String", LATCHED)
    writer.add_topic(topics["episode_topic"], "std_msgs/msg/String", LATCHED)


def _image_type(topic: str) -> str:
    """Return the image type a topic carries: CompressedImage where it ends /compressed."""
    return "sensor_msgs/msg/" + ("CompressedImage" if topic.endswith("/compressed") else "Image")


def _write_episode(writer: BagWriter, topics: dict, formats: dict[str, str],
                   reader: LeRobotDatasetReader, episode, number: int, t0: float) -> float:
    """Write one episode's messages from `t0` on; return when the next episode may start."""
    types = writer.typestore.types
    stamps = t0 + _on_frame_grid(episode.timestamps - episode.timestamps[0], reader.fps)
    period = 1.0 / reader.fps

    def header(t: float, frame_id: str = ""):
        ns = int(round(t * 1e9))
        return types["std_msgs/msg/Header"](
            stamp=types["builtin_interfaces/msg/Time"](sec=ns // 10**9, nanosec=ns % 10**9),
            frame_id=frame_id)

    def string(text: str):
        return types["std_msgs/msg/String"](data=text)

    def ns(t: float) -> int:
        return int(round(t * 1e9))

    event = {"event": "start", "index": number, "episode": episode.index,
             "instruction": episode.task, "source": str(reader.root)}
    writer.write_message(topics["instruction_topic"], ns(t0 - 0.002), string(episode.task))
    writer.write_message(topics["episode_topic"], ns(t0 - 0.001), string(json.dumps(event)))
    frames = {camera: episode.frames(camera) for camera in topics["cameras"] if camera in episode.cameras}
    for step, t in enumerate(stamps):
        for camera, frame in frames.items():
            topic = topics["cameras"][camera]
            writer.write_message(topic, ns(t), _image(types, header(t, camera), formats[camera],
                                                      next(frame)))
        writer.write_message(topics["state_topic"], ns(t), types["sensor_msgs/msg/JointState"](
            header=header(t), name=list(reader.state_names),
            position=episode.state[step].astype(np.float64), velocity=np.zeros(0),
            effort=np.zeros(0)))
        if episode.action is not None:
            writer.write_message(topics["action_topic"], ns(t), _action(
                types, topics["action_type"], header(t), reader.action_names,
                episode.action[step], period, step))
    for frame in frames.values():  # run each decoder to its end: it checks for a dead camera
        next(frame, None)
    end = stamps[-1] + period / 2
    writer.write_message(topics["episode_topic"], ns(end), string(json.dumps(
        {"event": "end", "index": number, "episode": episode.index})))
    return stamps[-1] + EPISODE_GAP_S


def _on_frame_grid(times: np.ndarray, fps: float) -> np.ndarray:
    """Return times snapped to k / fps where they are that up to float32 rounding.

    LeRobot's timestamp column is float32: 0.7 s is stored as 0.69999999, and past a few hundred
    seconds its spacing alone is over 1e-3 of a frame (61 us from 1024 s on), so either
    closeness counts.
    """
    frames = np.round(times * fps)
    grid = frames / fps
    float32_spacing = np.spacing(np.abs(grid).astype(np.float32)).astype(np.float64)
    close = np.abs(times - grid) <= np.maximum(1e-3 / fps, float32_spacing)
    return np.where(close, grid, times)


def _image(types, header, image_format: str, rgb: np.ndarray):
    """Return an Image (rgb8) or, for png / jpeg, a CompressedImage of one frame."""
    if image_format != "raw":
        import cv2

        params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY] if image_format == "jpeg" else []
        _, data = cv2.imencode(f".{image_format}", np.ascontiguousarray(rgb[..., ::-1]), params)
        return types["sensor_msgs/msg/CompressedImage"](header=header, format=image_format,
                                                         data=np.frombuffer(data, np.uint8))
    height, width = rgb.shape[:2]
    return types["sensor_msgs/msg/Image"](
        header=header, height=height, width=width, encoding="rgb8", is_bigendian=0,
        step=width * 3, data=np.ascontiguousarray(rgb).reshape(-1))


def _action(types, action_type: str, header, names: list[str], values: np.ndarray,
            period: float, sequence: int):
    """Return the action message of one frame in the topic map's action type."""
    if action_type == "dysta_ros/msg/ActionChunk":
        zero = types["builtin_interfaces/msg/Time"](sec=0, nanosec=0)
        return types["dysta_ros/msg/ActionChunk"](
            header=header, action_space="joint_position", names=list(names), horizon=1,
            dim=len(values), dt=period, actions=values.astype(np.float32),
            inference_start=zero, inference_end=zero, strategy="dataset", sequence=sequence)
    if action_type == "sensor_msgs/msg/JointState":
        return types["sensor_msgs/msg/JointState"](
            header=header, name=list(names), position=values.astype(np.float64),
            velocity=np.zeros(0), effort=np.zeros(0))
    if action_type == "std_msgs/msg/Float64MultiArray":
        layout = types["std_msgs/msg/MultiArrayLayout"](dim=[], data_offset=0)
        return types["std_msgs/msg/Float64MultiArray"](layout=layout,
                                                        data=values.astype(np.float64))
    raise ConfigError(f"convert writes actions as ActionChunk, JointState or Float64MultiArray, "
                      f"not {action_type}")


def bag_to_dataset(bag: str | Path, dataset: str | Path, fps: int, topic_map: str = "sim_arm",
                   codec: str | None = None, crf: int = 30, clock: str = "header",
                   robot_type: str | None = None, progress: bool = True) -> dict:
    """Convert a bag's episodes, resampled at `fps`, to a v3.0 LeRobot dataset."""
    if fps <= 0 or int(fps) != fps:
        raise ConfigError(f"--fps must be a positive whole number (LeRobot datasets have one "
                          f"integer frame rate), got {fps}")
    chosen = TopicMap.load(topic_map)
    episodes = load_episodes(bag, chosen, rate_hz=float(fps), clock=clock)
    dataset = Path(dataset)
    writer = None
    try:
        for episode in tqdm(episodes, desc="convert", unit="episode", disable=not progress):
            actions = episode.recorded_actions(episode.times)
            keep = np.flatnonzero(np.isfinite(actions).all(axis=1))
            if not len(keep):
                log.warning("%s: episode %d has no recorded action at its steps; left out",
                            bag, episode.index)
                continue
            if writer is None:
                joints = list(episode.joints) or [f"joint_{i}" for i in range(episode.states.shape[1])]
                action_names = (joints if actions.shape[1] == len(joints)
                                else [f"action_{i}" for i in range(actions.shape[1])])
                writer = LeRobotDatasetWriter(dataset, int(fps), joints, action_names,
                                              codec=codec, crf=crf, robot_type=robot_type)
            images = {camera: _held_frames(episode, camera, keep) for camera in episode.frames}
            writer.add_episode(EpisodeToWrite(task=episode.instruction or chosen.instruction,
                                              state=episode.states[keep], action=actions[keep],
                                              images=images))
        if writer is None:
            raise BagError(f"{bag}: no episode with recorded actions to convert")
        writer.close()
    except BaseException:
        if writer is not None:  # the writer made the directory; nothing of the user's is lost
            shutil.rmtree(dataset, ignore_errors=True)
        raise
    return {"dataset": str(dataset), "episodes": len(writer.episode_rows),
            "frames": writer.frames, "codec": writer.codec}


def _held_frames(episode, camera: str, steps: np.ndarray):
    """Yield the camera's frame held at each of `steps`, decoded as the encoder takes them."""
    for i in episode.frame_indices[camera][steps]:
        yield episode.frames[camera][i].rgb()


def is_dataset(path: Path) -> bool:
    """Return whether `path` is a LeRobot dataset directory (it has meta/info.json)."""
    return (path / "meta" / "info.json").is_file()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add `dysta-ros convert` arguments."""
    parser.add_argument("source", help="a LeRobot dataset directory (meta/info.json) or a bag")
    parser.add_argument("destination", help="the bag or dataset directory to create")
    parser.add_argument("--topic-map", default=None,
                        help="topics to read (bag -> dataset; default sim_arm) or write (dataset "
                             "-> bag; default: /camera/<cam>/image_raw, /joint_states, "
                             "/dysta/action_chunk); a name in config/bag_topics/ or a YAML path")
    parser.add_argument("--fps", type=float, default=None,
                        help="bag -> dataset: frames per second to resample at (required)")
    parser.add_argument("--robot", default=None,
                        help="dataset -> bag: check observation.state names against this robot "
                             "config's features (config/robots/)")
    parser.add_argument("--compress", choices=COMPRESSIONS, default="none",
                        help="dataset -> bag: cameras as CompressedImage on <topic>/compressed "
                             "(png: lossless; jpeg: quality 95) instead of raw Image")
    parser.add_argument("--skip-missing-video", action="store_true",
                        help="dataset -> bag: go on without a camera whose video file is absent")
    parser.add_argument("--vcodec", default=None,
                        help="bag -> dataset: PyAV encoder (default libsvtav1 as LeRobot, else libx264)")
    parser.add_argument("--crf", type=int, default=30, help="bag -> dataset: video quality (lower: better)")
    parser.add_argument("--time", choices=CLOCKS, default="header",
                        help="bag -> dataset: clock that places bag messages")
    parser.add_argument("--robot-type", default=None, help="bag -> dataset: info.json robot_type")
    add_json_argument(parser)  # one run: what was written (counts, paths); no progress bars then


def run(args: argparse.Namespace) -> int:
    """Convert in the direction the source says; return the exit status."""
    source = Path(args.source)
    try:
        quiet = args.json is not None
        if is_dataset(source):
            direction = "dataset->bag"
            result = dataset_to_bag(source, args.destination, args.topic_map, args.robot,
                                    args.skip_missing_video, args.compress, progress=not quiet)
            hint = (f"dysta-ros eval {result['bag']} --topic-map {result['topic_map']}")
        elif source.exists():
            if args.fps is None:
                raise ConfigError("--fps is required to convert a bag to a dataset (a LeRobot "
                                  "dataset has one frame rate; `dysta-ros bag-info` shows the "
                                  "bag's rates)")
            direction = "bag->dataset"
            result = bag_to_dataset(source, args.destination, args.fps,
                                    args.topic_map or "sim_arm", args.vcodec, args.crf,
                                    args.time, args.robot_type, progress=not quiet)
            hint = ""
        else:
            raise ConfigError(f"{source}: does not exist")
    except (BagError, ConfigError, DatasetError) as exc:
        print(f"dysta-ros convert: {exc}", file=sys.stderr)
        return exit_status(exc)
    write_json(args.json, result_document([result], {
        "source": str(source), "destination": str(args.destination), "direction": direction,
        "command": command_line()}))
    if not json_to_stdout(args):
        print(", ".join(f"{k}: {v}" for k, v in result.items()))
        if hint:
            print(f"evaluate it: {hint}")
    return 0
