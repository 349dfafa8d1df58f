"""Write tiny LeRobot datasets the way LeRobot lays them out (v3.0 and v2.1), for the tests.

Written here with pyarrow and PyAV directly, not with the package's writer, so the reader is
tested against the layout of LeRobot's code (datasets/utils.py paths, dataset_writer.py
episode metadata, convert_dataset_v21_to_v30.py for the v2.1 layout), not against itself.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints a banner per encoder otherwise

SO101_NAMES = ["shoulder_pan.pos", "shoulder_lift.pos", "elbow_flex.pos", "wrist_flex.pos",
               "wrist_roll.pos", "gripper.pos"]
SIM_ARM_NAMES = [f"joint{i}" for i in range(1, 7)]


@dataclass
class Spec:
    version: str = "v3.0"
    episodes: int = 3
    frames: int = 8  # per episode
    fps: int = 10
    cameras: tuple[str, ...] = ("front", "wrist")
    names: list[str] = field(default_factory=lambda: list(SO101_NAMES))
    names_form: str = "list"  # list | motors | nested
    float64: bool = False  # columns stored as float64 although info says float32
    codec: str = "libsvtav1"
    size: int = 32
    episodes_per_file: int = 2  # v3.0: episodes sharing one parquet and one mp4
    drop_columns: tuple[str, ...] = ()
    dead_camera: str | None = None
    image_features: bool = False  # cameras as PNG bytes in the parquet (dtype image), no mp4


@dataclass
class Truth:
    state: np.ndarray
    action: np.ndarray
    images: dict[str, np.ndarray]
    task: str


def pixels(camera: int, episode: int, frame: int, size: int) -> np.ndarray:
    """Return smooth content (codecs keep it nearly exact) that differs per camera and frame."""
    y, x = np.mgrid[0:size, 0:size]
    image = np.empty((size, size, 3), dtype=np.uint8)
    image[..., 0] = (40 + 20 * frame + 2 * x).clip(0, 255)
    image[..., 1] = 60 + 50 * camera + 10 * episode
    image[..., 2] = (30 + 3 * y + 12 * frame).clip(0, 255)
    return image


def truth_of(spec: Spec) -> list[Truth]:
    rng = np.random.default_rng(0)
    dims = len(spec.names)
    out = []
    for e in range(spec.episodes):
        t = np.arange(spec.frames)[:, None] / spec.fps
        noise = 0.01 * rng.standard_normal((spec.frames, dims))
        state = (np.sin(t + np.arange(dims) * 0.3 + e) + noise).astype(np.float32)
        action = (state + 0.1).astype(np.float32)
        images = {c: np.stack([pixels(i, e, f, spec.size) for f in range(spec.frames)])
                  for i, c in enumerate(spec.cameras)}
        if spec.dead_camera:
            images[spec.dead_camera][:] = 0
        out.append(Truth(state, action, images, f"pick the cube {e % 2}"))
    return out


def _names(spec: Spec):
    if spec.names_form == "motors":
        return {"motors": spec.names}
    if spec.names_form == "nested":
        half = len(spec.names) // 2
        return [spec.names[:half], spec.names[half:]]
    return spec.names


def _encode(path: Path, frames: np.ndarray, fps: int, codec: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps, options={"g": "2", "crf": "20"})
        stream.pix_fmt = "yuv420p"
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _data_table(spec: Spec, truths: list[Truth], episodes: list[int]) -> pa.Table:
    float_type = pa.float64() if spec.float64 else pa.float32()
    dims = len(spec.names)
    columns: dict[str, list] = {k: [] for k in ("observation.state", "action", "timestamp",
                                                "frame_index", "episode_index", "index",
                                                "task_index")}
    for e in episodes:
        n = spec.frames
        columns["observation.state"].append(truths[e].state.astype(np.float64).reshape(-1))
        columns["action"].append(truths[e].action.astype(np.float64).reshape(-1))
        columns["timestamp"].append(np.arange(n, dtype=np.float32) / spec.fps)
        columns["frame_index"].append(np.arange(n))
        columns["episode_index"].append(np.full(n, e))
        columns["index"].append(np.arange(e * n, (e + 1) * n))
        columns["task_index"].append(np.full(n, e % 2))
    arrays = {
        "observation.state": pa.FixedSizeListArray.from_arrays(
            pa.array(np.concatenate(columns["observation.state"]), float_type), dims),
        "action": pa.FixedSizeListArray.from_arrays(
            pa.array(np.concatenate(columns["action"]), float_type), dims),
        "timestamp": pa.array(np.concatenate(columns["timestamp"]), pa.float32()),
    }
    for key in ("frame_index", "episode_index", "index", "task_index"):
        arrays[key] = pa.array(np.concatenate(columns[key]), pa.int64())
    if spec.image_features:  # as HF datasets stores an Image feature: {bytes, path}
        import cv2

        for camera in spec.cameras:
            cells = [{"bytes": cv2.imencode(".png", truths[e].images[camera][f][..., ::-1])[1].tobytes(),
                      "path": None} for e in episodes for f in range(spec.frames)]
            arrays[f"observation.images.{camera}"] = pa.array(
                cells, pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    return pa.table({k: v for k, v in arrays.items() if k not in spec.drop_columns})


def _info(spec: Spec) -> dict:
    vector = {"dtype": "float32", "shape": [len(spec.names)], "names": _names(spec)}
    features = {"observation.state": dict(vector), "action": dict(vector)}
    for camera in spec.cameras:
        features[f"observation.images.{camera}"] = {
            "dtype": "image" if spec.image_features else "video", "shape": [spec.size, spec.size, 3],
            "names": ["height", "width", "channels"],
            "info": {"video.fps": spec.fps, "video.codec": "av1", "video.pix_fmt": "yuv420p"}}
    for key, dtype in (("timestamp", "float32"), ("frame_index", "int64"), ("episode_index", "int64"),
                       ("index", "int64"), ("task_index", "int64")):
        features[key] = {"dtype": dtype, "shape": [1], "names": None}
    info = {"codebase_version": spec.version, "robot_type": "so101_follower", "fps": spec.fps,
            "total_episodes": spec.episodes, "total_frames": spec.episodes * spec.frames,
            "total_tasks": 2, "chunks_size": 1000, "features": features,
            "splits": {"train": f"0:{spec.episodes}"}}
    if spec.version == "v2.1":
        info.update(total_chunks=1, total_videos=spec.episodes * len(spec.cameras),
                    data_path="data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
                    video_path="videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4")
    else:
        info.update(data_files_size_in_mb=100, video_files_size_in_mb=200,
                    data_path="data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
                    video_path="videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4")
    return info


def write_dataset(root: Path, spec: Spec | None = None) -> list[Truth]:
    """Write a dataset of `spec` at `root`; return what each episode holds."""
    spec = spec or Spec()
    truths = truth_of(spec)
    (root / "meta").mkdir(parents=True)
    (root / "meta" / "info.json").write_text(json.dumps(_info(spec), indent=2))
    tasks = ["pick the cube 0", "pick the cube 1"]
    if spec.version == "v2.1":
        _write_v21(root, spec, truths, tasks)
    else:
        _write_v30(root, spec, truths, tasks)
    return truths


def _write_v21(root: Path, spec: Spec, truths: list[Truth], tasks: list[str]) -> None:
    lines = []
    for e, truth in enumerate(truths):
        path = root / f"data/chunk-000/episode_{e:06d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(_data_table(spec, truths, [e]), path)
        for camera in spec.cameras:
            _encode(root / f"videos/chunk-000/observation.images.{camera}/episode_{e:06d}.mp4",
                    truth.images[camera], spec.fps, spec.codec)
        lines.append(json.dumps({"episode_index": e, "tasks": [truth.task], "length": spec.frames}))
    (root / "meta" / "episodes.jsonl").write_text("\n".join(lines) + "\n")
    (root / "meta" / "tasks.jsonl").write_text(
        "\n".join(json.dumps({"task_index": i, "task": t}) for i, t in enumerate(tasks)) + "\n")


def _write_v30(root: Path, spec: Spec, truths: list[Truth], tasks: list[str]) -> None:
    rows = []
    for file, first in enumerate(range(0, spec.episodes, spec.episodes_per_file)):
        episodes = list(range(first, min(first + spec.episodes_per_file, spec.episodes)))
        path = root / f"data/chunk-000/file-{file:03d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(_data_table(spec, truths, episodes), path)
        for camera in () if spec.image_features else spec.cameras:  # episodes in one mp4, in turn
            _encode(root / f"videos/observation.images.{camera}/chunk-000/file-{file:03d}.mp4",
                    np.concatenate([truths[e].images[camera] for e in episodes]), spec.fps, spec.codec)
        for position, e in enumerate(episodes):
            row = {"episode_index": e, "tasks": [truths[e].task], "length": spec.frames,
                   "data/chunk_index": 0, "data/file_index": file,
                   "dataset_from_index": e * spec.frames, "dataset_to_index": (e + 1) * spec.frames}
            for camera in () if spec.image_features else spec.cameras:
                key = f"videos/observation.images.{camera}"
                start = position * spec.frames / spec.fps
                row.update({f"{key}/chunk_index": 0, f"{key}/file_index": file,
                            f"{key}/from_timestamp": start,
                            f"{key}/to_timestamp": start + spec.frames / spec.fps})
            row.update({"meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0,
                        "stats/action/mean": truths[e].action.mean(axis=0).tolist()})
            rows.append(row)
    path = root / "meta/episodes/chunk-000/file-000.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    pq.write_table(pa.table({"task_index": pa.array([0, 1], pa.int64()), "task": tasks}),
                   root / "meta" / "tasks.parquet")
