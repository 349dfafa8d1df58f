"""Load a dataset `dysta-ros convert` wrote with LeRobot 0.4.4's own LeRobotDataset; print items.

A manual check beside the tests (LeRobot is never a dependency): $V read_with_lerobot.py DIR,
with the venv of generate.py. LeRobot 0.4.4 decodes video through torchvision, which that venv
lacks, so its decode_video_frames_torchvision is replaced by PyAV decoding with the same
nearest-frame-within-tolerance rule (as LeRobot's later decode_video_frames_pyav); metadata,
parquet, episode offsets, tasks and timestamps are LeRobot's own code.
"""
import json
import sys

sys.path.insert(0, "/work/shared/lerobot_reference")
import shims  # noqa: E402

shims.install(stub_packages=("torchvision", "wandb", "cv2", "termcolor", "gymnasium", "rerun",
                             "hf_transfer"))
import av  # noqa: E402
import lerobot.datasets.video_utils as video_utils  # noqa: E402
import torch  # noqa: E402
from lerobot.datasets.lerobot_dataset import LeRobotDataset  # noqa: E402


def decode_with_pyav(video_path, timestamps, tolerance_s, backend="pyav", log_loaded_timestamps=False):
    frames, times = [], []
    with av.open(str(video_path)) as container:
        stream = container.streams.video[0]
        for frame in container.decode(stream):
            times.append(float(frame.pts * stream.time_base))
            frames.append(torch.from_numpy(frame.to_ndarray(format="rgb24")).permute(2, 0, 1))
    distance = torch.cdist(torch.tensor(timestamps)[:, None], torch.tensor(times)[:, None], p=1)
    gap, nearest = distance.min(1)
    assert (gap <= tolerance_s).all(), f"{video_path}: {gap} > {tolerance_s}"
    return torch.stack([frames[i] for i in nearest]).float() / 255


video_utils.decode_video_frames_torchvision = decode_with_pyav
dataset = LeRobotDataset("local/check", root=sys.argv[1], video_backend="pyav")
print(f"episodes {dataset.num_episodes} frames {dataset.num_frames} fps {dataset.fps} "
      f"cameras {dataset.meta.camera_keys} tasks {dataset.meta.tasks.index.tolist()}")
for index in (0, len(dataset) - 1):
    item = dataset[index]
    print(json.dumps({k: (v.tolist() if v.ndim <= 1 else list(v.shape)) if hasattr(v, "ndim") else v
                      for k, v in item.items()}))
