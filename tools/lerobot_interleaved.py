#!/usr/bin/env python3
"""LeRobot 0.4.4's SmolVLA and ours, one chunk each in turn, for ratios that survive a busy machine.

    python tools/lerobot_interleaved.py LEROBOT_PYTHON REFERENCE_DIR [--threads 1] [--rounds 5]
        [--options exact,bf16,best] [--lerobot-layout fp32|checkpoint] [--json out.json]

tools/compare_lerobot.sh runs the two benches one after the other; when other jobs come and
go, one side can get a quiet minute and the other a loaded one. Here a LeRobot worker (its own
venv, started from REFERENCE_DIR, timing `predict_action_chunk` plus its pre/postprocessor as
time_lerobot.py does) and this package's runtimes take turns chunk by chunk, so each round's
ratio compares times measured seconds apart. Both sides: smolvla_base size, random fp32
weights, two 480x640 cameras, the same number of torch threads. LeRobot is never imported here.

`--lerobot-layout checkpoint` gives LeRobot the layout it makes of a real checkpoint
(`load_vlm_weights: true`, smolvla_base and what is fine-tuned from it): backbone and expert in
bf16, the five heads and the expert's cross-attention k/v projections in fp32. LeRobot then
computes in bf16, as it does for users' checkpoints; this package's `full` stays its exact fp32
computation of the same weights, and the bf16 option sets are the comparison at equal precision.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

WORKER = r"""
import json, sys, tempfile, time
from collections import Counter
from pathlib import Path
import realsize  # installs the reference folder's shims
import numpy as np, torch
import generate
from lerobot.policies.smolvla.processor_smolvla import make_smolvla_pre_post_processors
torch.set_num_threads(int(sys.argv[1]))
vlm_dir = Path(tempfile.mkdtemp()) / "vlm"
realsize.write_vlm_dir(vlm_dir)
cams = {"front": (480, 640), "wrist": (480, 640)}
pcfg = realsize.real_policy_config(str(vlm_dir), cams, load_vlm_weights=False)
policy = realsize.build_policy(pcfg)
if sys.argv[2] == "checkpoint":  # what load_vlm_weights: true leaves (smolvla_tiny_bf16/README.md)
    pair = policy.model.vlm_with_expert
    pair.vlm.to(torch.bfloat16)
    pair.lm_expert.to(torch.bfloat16)
    for layer in pair.lm_expert.layers:  # cross-attention layers read the backbone's K/V width
        if layer.self_attn.k_proj.in_features != pair.lm_expert.config.hidden_size:
            layer.self_attn.k_proj.float()
            layer.self_attn.v_proj.float()
    layout = Counter(str(tensor.dtype) for tensor in policy.state_dict().values())
    print("layout", json.dumps(layout), file=sys.stderr, flush=True)
stats = {"observation.state": {"mean": np.array([2.5, -48, 61, 72.5, -3, 14], np.float32),
                               "std": np.array([14, 21, 17.5, 11, 28, 9.5], np.float32)},
         "action": {"mean": np.array([3.1, -46.5, 59, 70, -2.2, 16.5], np.float32),
                    "std": np.array([15.5, 22, 18, 12.5, 30, 11], np.float32)}}
pre, post = make_smolvla_pre_post_processors(pcfg, dataset_stats=stats)
g = np.random.default_rng(0)
case = {"task": "pick up the cube", "robot_type": "so101_follower",
        "images": {f"observation.images.{k}": generate.make_image(h, w, g) for k, (h, w) in cams.items()},
        "state": (stats["observation.state"]["mean"]
                  + stats["observation.state"]["std"] * 0.3).astype(np.float32)}
noise = torch.randn((1, pcfg.chunk_size, pcfg.max_action_dim), generator=torch.Generator().manual_seed(0))
print("ready", flush=True)
for _ in sys.stdin:
    t0 = time.perf_counter()
    obs = generate.prepare_observation_for_inference(generate.raw_observation(case), torch.device("cpu"),
                                                     task=case["task"], robot_type=case["robot_type"])
    policy.reset()
    post(policy.predict_action_chunk(pre(obs), noise=noise.clone()))  # as time_lerobot.py calls it
    print(json.dumps({"ms": 1e3 * (time.perf_counter() - t0)}), flush=True)
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("lerobot_python")
    parser.add_argument("reference_dir")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5, help="measured rounds (one warm-up round first)")
    parser.add_argument("--options", default="exact,bf16,best", help="option sets beside full")
    parser.add_argument("--lerobot-layout", choices=("fp32", "checkpoint"), default="fp32",
                        help="LeRobot's weights: all fp32, or the bf16/fp32 layout of a real checkpoint")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    import torch

    from dysta_ros.evaluation.bench import option_variants, sim_observations
    from dysta_ros.policy.runtime import build_model, runtime_around

    torch.set_num_threads(args.threads)
    worker = subprocess.Popen([args.lerobot_python, "-c", WORKER, str(args.threads), args.lerobot_layout],
                              cwd=args.reference_dir,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    policy, _ = build_model("smolvla_base")
    runs = {"full": ("full", {}), **option_variants([o for o in args.options.split(",") if o])}
    runtimes = {label: runtime_around(policy, name, values) for label, (name, values) in runs.items()}
    frames = sim_observations(args.rounds + 1, list(policy.spec.camera_names), 0, (480, 640))
    while (line := worker.stdout.readline()) and line.strip() != "ready":
        pass
    times: dict[str, list[float]] = {"lerobot": [], **{label: [] for label in runtimes}}
    for index, obs in enumerate(frames):
        worker.stdin.write("go\n")
        worker.stdin.flush()
        lerobot_ms = json.loads(worker.stdout.readline())["ms"]
        ours = {}
        for label, runtime in runtimes.items():
            start = time.perf_counter()
            runtime.step(obs)
            ours[label] = 1e3 * (time.perf_counter() - start)
        if index:  # round 0 warms both up
            times["lerobot"].append(lerobot_ms)
            for label, ms in ours.items():
                times[label].append(ms)
        print(f"round {index}: lerobot {lerobot_ms:.0f} ms, "
              + ", ".join(f"{k} {v:.0f}" for k, v in ours.items()), file=sys.stderr, flush=True)
    worker.stdin.close()
    worker.wait(timeout=60)
    lerobot = np.array(times["lerobot"])
    result = {"threads": args.threads, "rounds": args.rounds, "lerobot_layout": args.lerobot_layout,
              "lerobot_ms_p50": float(np.median(lerobot)),
              "runs": {label: {"ms_p50": float(np.median(v)),
                               "ratio_p50_of_rounds": float(np.median(lerobot / np.array(v))),
                               "ratios": [round(float(r), 2) for r in lerobot / np.array(v)]}
                       for label, v in times.items() if label != "lerobot"}}
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
