"""`dysta-ros train`'s command line, torch-free: `--help` parses without importing the trainer."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from dysta_ros.cli_options import (add_json_argument, add_model_argument, add_runtime_arguments,
                                   json_to_stdout, output_folder, seed_value, write_json)
from dysta_ros.errors import DystaError, exit_status
from dysta_ros.results import command_line, result_document
from dysta_ros.training.config import TrainConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--bags", nargs="+", metavar="BAG", help="rosbag2 files of expert episodes")
    source.add_argument("--sim-episodes", type=int, metavar="N", help="expert episodes per task from the sim")
    parser.add_argument("--topic-map", default="sim_arm",
                        help="with --bags: where they keep cameras, joint states and actions: a name in "
                             "config/bag_topics/ or a YAML path (as eval takes it)")
    parser.add_argument("--task", default="reach", help="comma-separated sim tasks (reach,memory)")
    parser.add_argument("--family", choices=("dysta_vla", "smolvla"), default="dysta_vla",
                        help="dysta_vla: this package's VLA with DySta's learned parts; smolvla: a "
                             "SmolVLA-architecture policy on the sim arm, saved in LeRobot's checkpoint "
                             "format (LeRobot's flow-matching objective; --set vision.KEY / text.KEY / "
                             "policy.KEY / scale_factor change its shape)")
    parser.add_argument("--vlm", default=None, metavar="DIR",
                        help="smolvla: a backbone dir whose tokenizer (tokenizer.json, "
                             "tokenizer_config.json) the policy uses; copied into OUT/vlm")
    add_model_argument(parser, default="tiny")  # a preset: training starts from random weights
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="model config override, repeatable (e.g. vision.patch_size=8)")
    parser.add_argument("--out", required=True, type=output_folder, help="checkpoint directory to write")
    # the dataclass's own defaults, read without building one (its checks import torch)
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    for name in ("steps", "batch", "history", "frame_stride", "max_cache_age", "save_every", "seed",
                 "warmup", "sim_seed_start"):
        parser.add_argument(f"--{name.replace('_', '-')}", default=defaults[name],
                            type=seed_value if "seed" in name else int)
    for name in ("lr", "gate_lambda", "action_noise", "weight_decay"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=float, default=defaults[name])
    # --dtype bfloat16/float16: mixed precision (autocast) over float32 weights (training/precision.py)
    add_runtime_arguments(parser)
    parser.add_argument("--param", action="append", default=[], metavar="dysta.KEY=VALUE",
                        help="DySta layout to train, repeatable: dysta.cache_language=true, "
                             "dysta.l1_fraction=0.6, dysta.l2_fraction=0.3 (run it with the same)")
    parser.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    parser.add_argument("--force", action="store_true",
                        help="start afresh over the run already saved in --out (it is overwritten)")
    add_json_argument(parser)


def run(args: argparse.Namespace) -> int:
    from dysta_ros.policy.devices import check_device
    from dysta_ros.training.train import Trainer, check_out, run_smolvla, train_config

    try:
        check_device(args.device, args.dtype)  # before any demo is collected: one line, exit 2
        check_out(args.out, args.resume, args.force)
        if args.family == "smolvla":
            record = run_smolvla(args)
        else:
            cfg = train_config(args)
            record = {"out": cfg.out, **Trainer(cfg, resume=args.resume).run()}
    except DystaError as exc:  # a bad flag, bag, checkpoint or resume state: one line, not a traceback
        print(f"dysta-ros train: {exc}", file=sys.stderr)
        return exit_status(exc)
    document = result_document([record],
                               {"family": args.family, "model": args.model, "steps": args.steps,
                                "device": args.device,
                                "dtype": args.dtype, "threads": args.threads,
                                "command": command_line()})
    write_json(args.json, document)
    if not json_to_stdout(args):  # the last losses in one line (the JSON has them all)
        print(f"trained {record['out']}: " + ", ".join(
            f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}"
            for key, value in record.items() if key != "out"))
    return 0
