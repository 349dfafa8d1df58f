"""Write `dataset/` with LeRobot 0.4.4's own writer (LeRobotDataset.create/add_frame/save_episode).

Run with LeRobot's venv (see /work/shared/lerobot_reference/README.md) plus datasets, pandas,
pyarrow and av:  $V generate.py OUT_DIR.  torchvision is stubbed (LeRobot imports it at module
level; writing never calls it). What it writes, per episode e (0..2) and frame f (0..4):
observation.state = e * 10 + f in all six joints, action = state + 0.5, task "task {e % 2}",
front camera red 40 + 30 f / green 50 + 40 e, wrist camera blue 60 + 25 f / red 200 - 50 e.
"""
import sys

sys.path.insert(0, "/work/shared/lerobot_reference")
import shims  # noqa: E402

shims.install(stub_packages=("torchvision", "wandb", "cv2", "termcolor", "gymnasium", "rerun",
                             "hf_transfer"))
import numpy as np  # noqa: E402
from lerobot.datasets.lerobot_dataset import LeRobotDataset  # noqa: E402

NAMES = ["shoulder_pan.pos", "shoulder_lift.pos", "elbow_flex.pos", "wrist_flex.pos",
         "wrist_roll.pos", "gripper.pos"]
video = {"dtype": "video", "shape": (32, 32, 3), "names": ["height", "width", "channels"]}
features = {"observation.state": {"dtype": "float32", "shape": (6,), "names": NAMES},
            "action": {"dtype": "float32", "shape": (6,), "names": NAMES},
            "observation.images.front": video, "observation.images.wrist": video}
dataset = LeRobotDataset.create("local/so101_written", fps=10, features=features, root=sys.argv[1],
                                robot_type="so101_follower", use_videos=True, image_writer_threads=0)
for e in range(3):
    for f in range(5):
        state = np.full(6, e * 10 + f, np.float32)
        front = np.zeros((32, 32, 3), np.uint8)
        front[..., 0], front[..., 1] = 40 + 30 * f, 50 + 40 * e
        wrist = np.zeros((32, 32, 3), np.uint8)
        wrist[..., 2], wrist[..., 0] = 60 + 25 * f, 200 - 50 * e
        dataset.add_frame({"observation.state": state, "action": state + 0.5, "task": f"task {e % 2}",
                           "observation.images.front": front, "observation.images.wrist": wrist})
    dataset.save_episode()
dataset.finalize()  # writes meta/episodes (buffered until now)
print("written", sys.argv[1])
