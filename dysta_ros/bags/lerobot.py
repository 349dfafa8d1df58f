"""LeRobot datasets on disk, read and written without LeRobot: parquet tables and mp4 videos.

The layout follows LeRobot's own code (lerobot/datasets/utils.py, dataset_metadata.py,
dataset_writer.py, video_utils.py and scripts/convert_dataset_v21_to_v30.py):

- v3.0: `meta/info.json`, `meta/tasks.parquet`, `meta/episodes/chunk-XXX/file-XXX.parquet`
  (one row per episode: where its rows and videos are), `data/chunk-XXX/file-XXX.parquet`
  (several episodes per file), `videos/<key>/chunk-XXX/file-XXX.mp4` (several episodes per
  file, each from `videos/<key>/from_timestamp` to `to_timestamp`).
- v2.x: `meta/episodes.jsonl`, `meta/tasks.jsonl`, one parquet and one mp4 per episode at the
  paths `data_path` / `video_path` of info.json name.

pyarrow and PyAV are an optional extra (`pip install 'dysta_ros[lerobot]'`), imported here
only when a dataset is touched.
"""

from __future__ import annotations

import functools
import importlib
import json
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dysta_ros.errors import ConfigError, DatasetError

log = logging.getLogger(__name__)

STATE = "observation.state"
ACTION = "action"
IMAGE_PREFIX = "observation.images."
V30 = "v3.0"
CHUNKS_SIZE = 1000  # LeRobot's DEFAULT_CHUNK_SIZE: files per chunk directory
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)  # LeRobot's DEFAULT_QUANTILES, as q01 ... q99
IMAGE_STAT_SAMPLES = 100  # frames per episode that image statistics are computed from
DEAD_CAMERA_LEVEL = 8  # an episode whose every pixel stays at or below this is a dead camera


def require(module: str):
    """Import pyarrow / PyAV, or say how to install them."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(f"LeRobot datasets need pyarrow and PyAV ({exc}); install them with "
                          f"pip install 'dysta_ros[lerobot]'") from exc


def flat_names(names, key: str, size: int) -> list[str]:
    """Return one name per dimension from `names` as LeRobot writes it.

    LeRobot datasets carry a list, a mapping such as {"motors": [...]} (one entry per group,
    in order), or lists nested in either; None or a count that does not match the shape
    falls back to `<key>_<i>`.
    """
    def flatten(value) -> list[str]:
        if value is None:
            return []
        if isinstance(value, str):
            return [value]
        if isinstance(value, dict):
            return [n for item in value.values() for n in flatten(item)]
        return [n for item in value for n in flatten(item)]

    flat = flatten(names)
    if len(flat) != size:
        if flat:
            log.warning("%s: %d names for %d dimensions; naming them %s_0 ...", key, len(flat),
                        size, key)
        return [f"{key}_{i}" for i in range(size)]
    return flat


@dataclass
class DatasetEpisode:
    """One episode of a LeRobot dataset: vectors decoded, video frames on demand."""

    index: int  # episode_index
    task: str
    timestamps: np.ndarray  # (N,) seconds since the episode's start
    state: np.ndarray  # (N, S) float32
    action: np.ndarray | None  # (N, A) float32; None where the dataset has no actions
    videos: dict[str, tuple[Path, float]] = field(default_factory=dict)  # camera -> (mp4, start s)
    fps: float = 30.0
    encoded: dict[str, np.ndarray] = field(default_factory=dict)  # image features: (N,) bytes
    source: str = ""  # the data file, for errors about encoded images

    @property
    def cameras(self) -> list[str]:
        """Return the cameras this episode has frames of."""
        return [*self.videos, *self.encoded]

    def frames(self, camera: str) -> Iterator[np.ndarray]:
        """Yield the camera's (H, W, 3) uint8 frame at each timestamp, decoding as it goes.

        An episode that stays black throughout is warned about (dead camera?) once decoded.
        """
        if camera in self.encoded:
            path, decoded = self.source, (_decode_image(data, self.source, camera, i)
                                          for i, data in enumerate(self.encoded[camera]))
        else:
            path, start = self.videos[camera]
            decoded = iter_frames(path, start + self.timestamps, self.fps)
        brightest = 0
        for frame in decoded:
            brightest = max(brightest, int(frame.max()))
            yield frame
        if brightest <= DEAD_CAMERA_LEVEL:
            log.warning("%s: camera %s is black in every frame of episode %d (dead camera?); "
                        "converted as it is", path, camera, self.index)

    @functools.cached_property
    def images(self) -> dict[str, np.ndarray]:
        """Return every camera's frames, (N, H, W, 3) uint8 (all in memory: small episodes)."""
        return {camera: np.stack(list(self.frames(camera))) for camera in self.cameras}


class LeRobotDatasetReader:
    """Read a LeRobot dataset directory (v3.0 or v2.x), episode by episode."""

    def __init__(self, root: str | Path, skip_missing_video: bool = False):
        self.root = Path(root)
        self.skip_missing_video = skip_missing_video
        self.info_path = self.root / "meta" / "info.json"
        if not self.info_path.is_file():
            raise DatasetError(f"{self.info_path}: missing; not a LeRobot dataset directory")
        try:
            self.info = json.loads(self.info_path.read_text())
            self.features: dict = self.info["features"]
            self.fps = float(self.info["fps"])
            if not all(isinstance(f, dict) for f in self.features.values()):
                raise TypeError("every feature must be an object")
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            raise DatasetError(f"{self.info_path}: not LeRobot dataset info ({type(exc).__name__}: "
                               f"{exc})") from exc
        if not 0 < self.fps < float("inf"):  # every timestamp and video lookup divides by it
            raise DatasetError(f"{self.info_path}: fps must be a number > 0, got {self.info['fps']!r}")
        self.version = str(self.info.get("codebase_version", ""))
        if not self.version.startswith(("v2.", "v3.")):
            raise DatasetError(f"{self.info_path}: codebase_version {self.version!r}; this reads "
                               f"v2.0, v2.1 and v3.0 datasets")
        if STATE not in self.features:
            raise DatasetError(f"{self.info_path}: no {STATE} feature (it has {sorted(self.features)})")
        self.cameras = [k[len(IMAGE_PREFIX):] for k, f in self.features.items()
                        if k.startswith(IMAGE_PREFIX) and f.get("dtype") in ("video", "image")]
        self.video_cameras = [c for c in self.cameras
                              if self.features[IMAGE_PREFIX + c]["dtype"] == "video"]
        self.state_names = self._names(STATE)
        self.action_names = self._names(ACTION) if ACTION in self.features else []
        self.tasks = self._tasks()
        self.episodes_meta = self._episodes_meta()
        self._table_cache: tuple[Path, object] | None = None

    def _names(self, key: str) -> list[str]:
        feature = self.features[key]
        shape = feature.get("shape") or [0]
        if not isinstance(shape, list) or not all(isinstance(n, int) and n >= 0 for n in shape):
            raise DatasetError(f"{self.info_path}: {key} shape must be a list of sizes, got {shape!r}")
        return flat_names(feature.get("names"), key, int(np.prod(shape)))

    @property
    def legacy(self) -> bool:
        """Return whether this is the v2.x layout (one file per episode, jsonl metadata)."""
        return self.version.startswith("v2.")

    def _read_table(self, path: Path, columns=None):
        pq = require("pyarrow.parquet")
        pa = require("pyarrow")
        if not path.is_file():
            raise DatasetError(f"{path}: missing (listed by {self.root}'s metadata)")
        try:
            return pq.read_table(path, columns=columns)
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise DatasetError(f"{path}: not a readable parquet file ({type(exc).__name__}: "
                               f"{str(exc).splitlines()[0] if str(exc) else ''})") from exc

    def _jsonl(self, name: str) -> list[dict]:
        path = self.root / "meta" / name
        if not path.is_file():
            raise DatasetError(f"{path}: missing (a {self.version} dataset lists it)")
        rows = []
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise DatasetError(f"{path}:{number}: not JSON: {exc}") from exc
        return rows

    def _tasks(self) -> dict[int, str]:
        if self.legacy:
            return {int(r["task_index"]): str(r["task"]) for r in self._jsonl("tasks.jsonl")}
        path = self.root / "meta" / "tasks.parquet"
        if not path.is_file():
            return {}
        table = self._read_table(path)
        # pandas writes the task strings as the index column "task" (or __index_level_0__)
        text = next((c for c in ("task", "__index_level_0__") if c in table.column_names), None)
        if text is None or "task_index" not in table.column_names:
            raise DatasetError(f"{path}: needs task and task_index columns, has {table.column_names}")
        return dict(zip(table.column("task_index").to_pylist(), table.column(text).to_pylist()))

    def _episodes_meta(self) -> list[dict]:
        if self.legacy:
            rows = self._jsonl("episodes.jsonl")
        else:
            directory = self.root / "meta" / "episodes"
            paths = sorted(directory.glob("*/*.parquet"))
            if not paths:
                raise DatasetError(f"{directory}: no episode metadata (chunk-*/file-*.parquet)")
            rows = []
            for path in paths:
                table = self._read_table(path)
                keep = [c for c in table.column_names if not c.startswith("stats/")]
                rows += table.select(keep).to_pylist()
        if not rows:
            raise DatasetError(f"{self.root / 'meta'}: the dataset lists no episodes")
        try:
            return sorted(rows, key=lambda r: int(r["episode_index"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise DatasetError(f"{self.root / 'meta'}: an episode without a valid episode_index "
                               f"({type(exc).__name__}: {exc})") from exc

    def _data_path(self, meta: dict) -> Path:
        template = self.info.get("data_path") or DATA_PATH
        return self.root / template.format(**self._path_keys(meta, "data"))

    def _video_path(self, meta: dict, camera: str) -> Path:
        key = IMAGE_PREFIX + camera
        template = self.info.get("video_path") or VIDEO_PATH
        return self.root / template.format(video_key=key, **self._path_keys(meta, f"videos/{key}"))

    def _path_keys(self, meta: dict, prefix: str) -> dict:
        index = int(meta["episode_index"])
        chunks = int(self.info.get("chunks_size") or CHUNKS_SIZE)
        return {"episode_index": index, "episode_chunk": index // chunks,
                "chunk_index": int(meta.get(f"{prefix}/chunk_index", 0)),
                "file_index": int(meta.get(f"{prefix}/file_index", 0))}

    def _episode_rows(self, meta: dict) -> dict[str, np.ndarray]:
        """Return the episode's columns as arrays, in frame order."""
        path = self._data_path(meta)
        if self._table_cache is None or self._table_cache[0] != path:
            self._table_cache = (path, self._read_table(path))
        table = self._table_cache[1]
        if "episode_index" in table.column_names:
            episode = np.asarray(table.column("episode_index").to_numpy(zero_copy_only=False))
            rows = np.flatnonzero(episode == int(meta["episode_index"]))
        else:  # one episode per file (v2.x) needs no episode column
            rows = np.arange(table.num_rows)
        if not len(rows):
            raise DatasetError(f"{path}: no rows of episode {meta['episode_index']}")
        table = table.take(rows)
        columns = {}
        for name in (STATE, ACTION, "timestamp", "frame_index", "task_index"):
            if name in table.column_names:
                columns[name] = _column_array(table.column(name), path, name)
        if STATE not in columns:
            raise DatasetError(f"{path}: no {STATE} column (it has {table.column_names})")
        for camera in self.cameras:  # image features: encoded PNG/JPEG bytes in the parquet
            key = IMAGE_PREFIX + camera
            if camera not in self.video_cameras and key in table.column_names:
                cells = table.column(key).to_pylist()
                columns[key] = np.asarray([c.get("bytes") if isinstance(c, dict) else c
                                           for c in cells], dtype=object)
        if "frame_index" in columns:
            order = np.argsort(columns["frame_index"], kind="stable")
            columns = {name: values[order] for name, values in columns.items()}
        return columns

    def __len__(self) -> int:
        return len(self.episodes_meta)

    def episodes(self) -> Iterator[DatasetEpisode]:
        """Yield the episodes in episode_index order, videos decoded."""
        for meta in self.episodes_meta:
            yield self.episode(meta)

    def episode(self, meta: dict) -> DatasetEpisode:
        """Decode one episode, given its row of the episode metadata."""
        try:
            return self._episode(meta)
        except DatasetError:
            raise
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            # a path template with unknown keys, nulls where LeRobot writes numbers, ...
            raise DatasetError(f"{self.root / 'meta'}: episode {meta.get('episode_index')}: "
                               f"malformed metadata or data ({type(exc).__name__}: {exc})") from exc

    def _episode(self, meta: dict) -> DatasetEpisode:
        columns = self._episode_rows(meta)
        path = self._data_path(meta)
        n = len(columns[STATE])
        timestamps = columns.get("timestamp")
        if timestamps is None:  # a missing optional column: frames are 1/fps apart
            frame_index = columns.get("frame_index", np.arange(n))
            timestamps = frame_index / self.fps
        timestamps = np.asarray(timestamps, dtype=np.float64).reshape(n)
        state = _vectors(columns[STATE], len(self.state_names), path, STATE)
        action = (_vectors(columns[ACTION], len(self.action_names), path, ACTION)
                  if ACTION in columns else None)
        episode = DatasetEpisode(index=int(meta["episode_index"]), task=self._task(meta, columns),
                                 timestamps=timestamps, state=state, action=action, fps=self.fps,
                                 source=str(path))
        for camera in self.cameras:
            if IMAGE_PREFIX + camera in columns:
                episode.encoded[camera] = columns[IMAGE_PREFIX + camera]
        for camera in self.video_cameras:
            video = self._video_path(meta, camera)
            if not video.is_file():
                if self.skip_missing_video:
                    log.warning("%s: missing; episode %d goes without camera %s "
                                "(--skip-missing-video)", video, episode.index, camera)
                    continue
                raise DatasetError(f"{video}: missing (camera {camera} of episode "
                                   f"{episode.index}); pass --skip-missing-video to go on without it")
            start = float(meta.get(f"videos/{IMAGE_PREFIX + camera}/from_timestamp", 0.0))
            episode.videos[camera] = (video, start)
        return episode

    def _task(self, meta: dict, columns: dict) -> str:
        if "task_index" in columns and int(columns["task_index"][0]) in self.tasks:
            return self.tasks[int(columns["task_index"][0])]
        tasks = meta.get("tasks") or []
        return str(tasks[0]) if len(tasks) else ""


def _column_array(column, path: Path, name: str) -> np.ndarray:
    """Return a parquet column as numpy: scalars (N,), lists and fixed-size lists (N, D)."""
    pa = require("pyarrow")
    column = column.combine_chunks()
    try:
        if pa.types.is_list(column.type) or pa.types.is_large_list(column.type) \
                or pa.types.is_fixed_size_list(column.type):
            lengths = set(column.value_lengths().to_pylist())
            if len(lengths) > 1:
                raise DatasetError(f"{path}: column {name} has rows of lengths {sorted(lengths)}")
            width = lengths.pop() if lengths else 0
            return np.asarray(column.flatten().to_numpy(zero_copy_only=False)).reshape(len(column), width)
        return np.asarray(column.to_numpy(zero_copy_only=False))
    except pa.ArrowException as exc:
        raise DatasetError(f"{path}: column {name} is not numeric ({exc})") from exc


def _vectors(values: np.ndarray, width: int, path: Path, name: str) -> np.ndarray:
    """Return (N, width) float32 (float64 columns where info says float32 are common)."""
    values = np.asarray(values)
    if values.ndim == 1:
        values = values.reshape(-1, 1)
    if values.shape[1] != width:
        raise DatasetError(f"{path}: {name} has {values.shape[1]} values per row; meta/info.json "
                           f"names {width}")
    if not np.issubdtype(values.dtype, np.number):
        raise DatasetError(f"{path}: {name} is {values.dtype}, not numbers")
    return values.astype(np.float32)


def _decode_image(data, source: str, camera: str, row: int) -> np.ndarray:
    """Decode one image feature's PNG/JPEG bytes to (H, W, 3) uint8 RGB."""
    import cv2

    pixels = cv2.imdecode(np.frombuffer(data or b"", np.uint8), cv2.IMREAD_COLOR) if data else None
    if pixels is None:
        raise DatasetError(f"{source}: row {row} of observation.images.{camera} is not an image")
    return cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)


def _quiet_encoders() -> None:
    """SVT-AV1 prints its banner to stderr unless told otherwise."""
    os.environ.setdefault("SVT_LOG", "1")


def iter_frames(path: Path, times: np.ndarray, fps: float) -> Iterator[np.ndarray]:
    """Yield the frame of `path` nearest to each of the increasing `times`, (H, W, 3) uint8 RGB.

    Like LeRobot's PyAV decoder: seek to the keyframe before the first time, decode forward,
    take the nearest frame; a time with no frame within half a period fails. Only the few
    frames around the current time are held.
    """
    av = require("av")
    tolerance = 0.5 / fps
    times = np.asarray(times, dtype=np.float64)
    held: list[tuple[float, np.ndarray]] = []  # decoded, not yet passed
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            container.seek(max(0, int((float(times[0]) - tolerance) / stream.time_base)),
                           backward=True, any_frame=False, stream=stream)
            decoded = (f for f in container.decode(stream) if f.pts is not None)
            exhausted = False
            for query in times:
                while not exhausted and (not held or held[-1][0] < query + tolerance):
                    frame = next(decoded, None)
                    if frame is None:
                        exhausted = True
                    elif (t := float(frame.pts * stream.time_base)) >= query - tolerance:
                        held.append((t, frame.to_ndarray(format="rgb24")))
                gaps = [abs(t - query) for t, _ in held]
                if not gaps or min(gaps) > tolerance:
                    nearest = f"nearest at {held[int(np.argmin(gaps))][0]:.4f} s" if gaps else "none near"
                    raise DatasetError(f"{path}: no frame within {tolerance:.4f} s of {query:.4f} s "
                                       f"({nearest})")
                best = int(np.argmin(gaps))
                del held[:best]  # later times never need earlier frames
                yield held[0][1]
    except av.FFmpegError as exc:
        raise DatasetError(f"{path}: cannot decode the video ({type(exc).__name__}: {exc})") from exc


def decode_frames(path: Path, times: np.ndarray, fps: float) -> np.ndarray:
    """Return the frames of `path` nearest to each time, (N, H, W, 3) uint8 RGB."""
    return np.stack(list(iter_frames(path, times, fps)))


def available_codec(preferred: str | None = None) -> str:
    """Return the video encoder to use: `preferred`, else LeRobot's default AV1, else h264."""
    av = require("av")
    if preferred:
        if preferred not in av.codecs_available:
            known = [c for c in ("libsvtav1", "libx264", "libaom-av1") if c in av.codecs_available]
            raise ConfigError(f"video codec {preferred!r} is not in this PyAV build; its "
                              f"encoders LeRobot reads: {known}")
        return preferred
    for codec in ("libsvtav1", "libx264"):
        if codec in av.codecs_available:
            return codec
    raise ConfigError("this PyAV build has neither libsvtav1 nor libx264 to write LeRobot videos")


def encode_video(path: Path, frames: Iterable[np.ndarray], count: int, fps: int, codec: str,
                 crf: int = 30) -> tuple[dict, np.ndarray]:
    """Write `count` (H, W, 3) uint8 frames as an mp4 (yuv420p, keyframe every 2 frames, as LeRobot).

    Frames stream through; returns the `video.*` info LeRobot stores in info.json, and up to
    IMAGE_STAT_SAMPLES evenly spaced frames, downsampled to about 150 pixels a side, for the
    statistics (LeRobot computes image statistics on such samples too).
    """
    av = require("av")
    _quiet_encoders()
    path.parent.mkdir(parents=True, exist_ok=True)
    sample_at = set(np.linspace(0, count - 1, min(count, IMAGE_STAT_SAMPLES)).round().astype(int))
    samples, shape, written = [], None, 0
    with av.open(str(path), "w") as container:
        stream = None
        for i, pixels in enumerate(frames):
            if stream is None:
                shape = pixels.shape
                stream = container.add_stream(codec, rate=int(fps),
                                              options={"g": "2", "crf": str(crf)})
                stream.pix_fmt = "yuv420p"
                stream.height, stream.width = shape[:2]
            elif pixels.shape != shape:
                raise DatasetError(f"{path}: frame {i} is {pixels.shape}, frame 0 {shape}")
            if i in sample_at:
                step = max(1, max(shape[:2]) // 150)
                samples.append(pixels[::step, ::step])
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(pixels), format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
            written += 1
        if stream is not None:
            for packet in stream.encode():
                container.mux(packet)
    if written != count:
        raise DatasetError(f"{path}: {written} frames for {count} rows")
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        info = {"video.height": stream.height, "video.width": stream.width,
                "video.codec": stream.codec.canonical_name, "video.pix_fmt": stream.pix_fmt,
                "video.is_depth_map": False, "video.fps": int(fps), "video.channels": 3,
                "video.g": 2, "video.crf": crf, "has_audio": False}
    return info, np.stack(samples)


def feature_stats(values: np.ndarray) -> dict:
    """Return LeRobot's per-dimension statistics of (N, D) values."""
    values = np.asarray(values, dtype=np.float64)
    stats = {"min": values.min(axis=0), "max": values.max(axis=0), "mean": values.mean(axis=0),
             "std": values.std(axis=0), "count": np.asarray([len(values)])}
    for q in QUANTILES:
        stats[f"q{int(round(q * 100)):02d}"] = np.quantile(values, q, axis=0)
    return {k: v.tolist() for k, v in stats.items()}


def image_stats(frames: np.ndarray) -> dict:
    """Return per-channel statistics of (N, H, W, 3) uint8 frames in [0, 1], shaped (3, 1, 1)."""
    pixels = frames.reshape(-1, frames.shape[-1]).astype(np.float64) / 255.0
    flat = feature_stats(pixels)
    return {k: (v if k == "count" else [[[x]] for x in v]) for k, v in flat.items()}


def merge_stats(parts: list[tuple[int, dict]]) -> dict:
    """Combine per-episode statistics (count-weighted moments; quantiles: weighted means)."""
    counts = np.asarray([n for n, _ in parts], dtype=np.float64)
    weights = counts / counts.sum()
    first = parts[0][1]
    arrays = {k: [np.asarray(s[k], dtype=np.float64) for _, s in parts] for k in first}
    mean = sum(w * m for w, m in zip(weights, arrays["mean"]))
    second = sum(w * (s ** 2 + m ** 2) for w, s, m in zip(weights, arrays["std"], arrays["mean"]))
    merged = {"min": np.min(arrays["min"], axis=0), "max": np.max(arrays["max"], axis=0),
              "mean": mean, "std": np.sqrt(np.maximum(second - mean ** 2, 0.0)),
              "count": np.asarray([int(counts.sum())])}
    for key in first:
        if key.startswith("q"):
            merged[key] = sum(w * q for w, q in zip(weights, arrays[key]))
    return {k: v.tolist() for k, v in merged.items()}


@dataclass
class EpisodeToWrite:
    """What `LeRobotDatasetWriter.add_episode` takes: one episode at the dataset's fps."""

    task: str
    state: np.ndarray  # (N, S)
    action: np.ndarray  # (N, A)
    images: dict[str, Iterable[np.ndarray]]  # camera -> N frames (H, W, 3) uint8, in order


class LeRobotDatasetWriter:
    """Write a v3.0 LeRobot dataset: one data parquet, one mp4 per episode and camera."""

    def __init__(self, root: str | Path, fps: int, state_names: list[str],
                 action_names: list[str], codec: str | None = None, crf: int = 30,
                 robot_type: str | None = None):
        self.root = Path(root)
        if self.root.exists():
            raise DatasetError(f"{self.root}: exists already; give a new dataset directory")
        if fps <= 0:
            raise ConfigError(f"fps must be positive, got {fps}")
        require("pyarrow")
        self.fps, self.crf, self.robot_type = int(fps), crf, robot_type
        self.codec = available_codec(codec)
        self.state_names, self.action_names = list(state_names), list(action_names)
        self.tasks: dict[str, int] = {}
        self.episode_rows: list[dict] = []
        self.data_tables: list = []
        self.video_info: dict[str, dict] = {}
        self.image_shapes: dict[str, tuple] = {}
        self.stats_parts: dict[str, list] = {}
        self.frames = 0

    def add_episode(self, episode: EpisodeToWrite) -> None:
        """Append one episode: its rows, its videos, its metadata and statistics."""
        pa = require("pyarrow")
        n = len(episode.state)
        number = len(self.episode_rows)
        if set(episode.images) != set(self.image_shapes) and self.image_shapes:
            raise DatasetError(f"{self.root}: episode {number} has cameras {sorted(episode.images)}, "
                               f"earlier ones {sorted(self.image_shapes)}")
        task_index = self.tasks.setdefault(episode.task, len(self.tasks))
        state = np.asarray(episode.state, dtype=np.float32)
        action = np.asarray(episode.action, dtype=np.float32)
        timestamps = (np.arange(n) / self.fps).astype(np.float32)
        columns = {
            "observation.state": _fixed_list(pa, state),
            "action": _fixed_list(pa, action),
            "timestamp": pa.array(timestamps, pa.float32()),
            "frame_index": pa.array(np.arange(n), pa.int64()),
            "episode_index": pa.array(np.full(n, number), pa.int64()),
            "index": pa.array(np.arange(self.frames, self.frames + n), pa.int64()),
            "task_index": pa.array(np.full(n, task_index), pa.int64()),
        }
        self.data_tables.append(pa.table(columns))
        chunk, file = divmod(number, CHUNKS_SIZE)
        row = {"episode_index": number, "tasks": [episode.task], "length": n,
               "data/chunk_index": 0, "data/file_index": 0,
               "dataset_from_index": self.frames, "dataset_to_index": self.frames + n}
        stats = {STATE: feature_stats(state), ACTION: feature_stats(action),
                 "timestamp": feature_stats(timestamps[:, None]),
                 "frame_index": feature_stats(np.arange(n)[:, None]),
                 "episode_index": feature_stats(np.full((n, 1), number)),
                 "index": feature_stats(np.arange(self.frames, self.frames + n)[:, None]),
                 "task_index": feature_stats(np.full((n, 1), task_index))}
        for camera, frames in episode.images.items():
            key = IMAGE_PREFIX + camera
            path = self.root / VIDEO_PATH.format(video_key=key, chunk_index=chunk, file_index=file)
            info, samples = encode_video(path, frames, n, self.fps, self.codec, self.crf)
            shape = (info["video.height"], info["video.width"], 3)
            if self.image_shapes.setdefault(camera, shape) != shape:
                raise DatasetError(f"{path}: camera {camera} is {shape} in episode {number}, "
                                   f"{self.image_shapes[camera]} before")
            self.video_info[camera] = info
            row.update({f"videos/{key}/chunk_index": chunk, f"videos/{key}/file_index": file,
                        f"videos/{key}/from_timestamp": 0.0,
                        f"videos/{key}/to_timestamp": n / self.fps})
            stats[key] = image_stats(samples)
        for key, values in stats.items():
            self.stats_parts.setdefault(key, []).append((n, values))
            for name, value in values.items():
                row[f"stats/{key}/{name}"] = value
        row["meta/episodes/chunk_index"], row["meta/episodes/file_index"] = 0, 0
        self.episode_rows.append(row)
        self.frames += n

    def close(self) -> None:
        """Write the data parquet, the episode and task tables, stats.json and info.json."""
        pa = require("pyarrow")
        pq = require("pyarrow.parquet")
        if not self.episode_rows:
            raise DatasetError(f"{self.root}: no episode to write")
        data = self.root / DATA_PATH.format(chunk_index=0, file_index=0)
        data.parent.mkdir(parents=True, exist_ok=True)
        # one row group per episode, as LeRobot writes it (random access by episode)
        with pq.ParquetWriter(data, self.data_tables[0].schema, compression="snappy") as writer:
            for table in self.data_tables:
                writer.write_table(table)
        episodes = self.root / EPISODES_PATH.format(chunk_index=0, file_index=0)
        episodes.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(self.episode_rows), episodes)
        _write_tasks(pa, pq, self.root / "meta" / "tasks.parquet", self.tasks)
        stats = {key: merge_stats(parts) for key, parts in self.stats_parts.items()}
        (self.root / "meta" / "stats.json").write_text(json.dumps(stats, indent=2))
        (self.root / "meta" / "info.json").write_text(json.dumps(self._info(), indent=2))

    def _info(self) -> dict:
        def vector(names):
            return {"dtype": "float32", "shape": [len(names)], "names": names, "fps": self.fps}

        def scalar(dtype):
            return {"dtype": dtype, "shape": [1], "names": None, "fps": self.fps}

        features = {STATE: vector(self.state_names), ACTION: vector(self.action_names)}
        for camera, shape in self.image_shapes.items():
            features[IMAGE_PREFIX + camera] = {"dtype": "video", "shape": list(shape),
                                               "names": ["height", "width", "channels"],
                                               "info": self.video_info[camera]}
        features.update({"timestamp": scalar("float32"), "frame_index": scalar("int64"),
                         "episode_index": scalar("int64"), "index": scalar("int64"),
                         "task_index": scalar("int64")})
        return {"codebase_version": V30, "robot_type": self.robot_type,
                "total_episodes": len(self.episode_rows), "total_frames": self.frames,
                "total_tasks": len(self.tasks), "chunks_size": CHUNKS_SIZE,
                "data_files_size_in_mb": 100, "video_files_size_in_mb": 200, "fps": self.fps,
                "splits": {"train": f"0:{len(self.episode_rows)}"}, "data_path": DATA_PATH,
                "video_path": VIDEO_PATH if self.image_shapes else None, "features": features}


def _fixed_list(pa, values: np.ndarray):
    """Return (N, D) float32 as the fixed-size list column HF datasets writes for a Sequence."""
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1), pa.float32()),
                                             values.shape[1])


def _write_tasks(pa, pq, path: Path, tasks: dict[str, int]) -> None:
    """Write meta/tasks.parquet as pandas does: task_index, indexed by the task string.

    LeRobot reads it with pandas and looks tasks up in the index, so the pandas metadata
    that marks "task" as the index goes into the schema.
    """
    names = sorted(tasks, key=tasks.get)
    table = pa.table({"task_index": pa.array([tasks[n] for n in names], pa.int64()),
                      "task": pa.array(names, pa.string())})
    pandas_meta = {
        "index_columns": ["task"],
        "column_indexes": [{"name": None, "field_name": None, "pandas_type": "unicode",
                            "numpy_type": "object", "metadata": {"encoding": "UTF-8"}}],
        "columns": [{"name": "task_index", "field_name": "task_index", "pandas_type": "int64",
                     "numpy_type": "int64", "metadata": None},
                    {"name": "task", "field_name": "task", "pandas_type": "unicode",
                     "numpy_type": "object", "metadata": None}],
        "creator": {"library": "pyarrow", "version": pa.__version__},
        "pandas_version": "2.2.3"}
    pq.write_table(table.replace_schema_metadata({"pandas": json.dumps(pandas_meta)}), path)
