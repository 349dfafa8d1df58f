"""Does LeRobot 0.4.4 load a checkpoint this package wrote, and predict the same chunk?

    python tools/lerobot_load_check.py CHECKPOINT LEROBOT_PYTHON REFERENCE_DIR [--observations N]

A by-hand check, never a test: LeRobot is not a dependency. CHECKPOINT: a SmolVLA directory
whose features match the sim arm (e.g. checkpoints/smolvla_reach, written by `dysta-ros train
--family smolvla`). LEROBOT_PYTHON: the python of a venv with LeRobot 0.4.4; REFERENCE_DIR: the
folder of generate.py and shims.py (lerobot_reference), which load a checkpoint with LeRobot's
own `from_pretrained` (strict) and run its preprocessor -> predict_action_chunk -> postprocessor.
Both sides get the same sim observations and flow noise; prints the largest differences.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

# Run by LEROBOT_PYTHON with the checkpoint as working directory (vlm_model_name "./vlm").
LEROBOT_SIDE = """
import json, sys
sys.path.insert(0, sys.argv[1])
import generate  # installs LeRobot's import shims, imports LeRobot
import numpy as np, torch
from pathlib import Path
torch.set_num_threads(1)
policy, pre, post = generate.load_from_disk(Path(".").resolve())
policy.eval()
out = []
for c in json.loads(Path(sys.argv[2]).read_text()):
    images = {"observation.images." + k: np.array(v, dtype=np.uint8) for k, v in c["images"].items()}
    case = {"images": images,
            "state": np.array(c["state"], dtype=np.float32), "task": c["task"]}
    _, norm, raw = generate.lerobot_infer(policy, pre, post, case, torch.tensor(c["noise"])[None])
    out.append({"normalized": norm[0].tolist(), "raw": raw[0].tolist()})
print(json.dumps(out))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("lerobot_python")
    parser.add_argument("reference_dir")
    parser.add_argument("--observations", type=int, default=3, help="sim observations compared")
    args = parser.parse_args()

    from dysta_ros.policy.smolvla import load_smolvla
    from dysta_ros.sim.env import SimEnv

    checkpoint = Path(args.checkpoint).resolve()
    policy = load_smolvla(checkpoint)
    cases, ours = [], []
    with SimEnv() as env:
        for index in range(args.observations):
            seed = 100_000 + index
            observation = env.reset("reach", seed)
            for _ in range(index):  # a few steps in, so the arm is not always at home
                observation, _ = env.step(observation.state + 0.05)
            shape = (policy.cfg.chunk_size, policy.cfg.max_action_dim)
            noise = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
            raw, info = policy.predict(observation.images, observation.state, observation.instruction,
                                       noise=noise)
            cases.append({"images": {k: v.tolist() for k, v in observation.images.items()},
                          "state": observation.state.tolist(), "task": observation.instruction,
                          "noise": noise.tolist()})
            ours.append((raw, info["actions_normalized"]))
    with tempfile.TemporaryDirectory() as tmp:
        cases_path = Path(tmp) / "cases.json"
        cases_path.write_text(json.dumps(cases))
        reference = str(Path(args.reference_dir).resolve())
        result = subprocess.run([args.lerobot_python, "-c", LEROBOT_SIDE, reference, str(cases_path)],
                                cwd=checkpoint, capture_output=True, text=True)
    if result.returncode:
        print(result.stderr[-3000:], file=sys.stderr)
        return 1
    theirs = json.loads(result.stdout.strip().splitlines()[-1])
    worst = {"normalized": 0.0, "raw": 0.0}
    for (raw, normalized), lerobot in zip(ours, theirs):
        for key, value in (("normalized", normalized), ("raw", raw)):
            worst[key] = max(worst[key], float(np.abs(value - lerobot[key]).max()))
    print(json.dumps({"checkpoint": str(checkpoint), "observations": len(cases),
                      "max_error_normalized": worst["normalized"], "max_error_raw": worst["raw"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
