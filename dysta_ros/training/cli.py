"""`dysta-ros train`'s command line, torch-free: `--help` parses without importing the trainer."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from dysta_ros.cli_options import add_json_argument, add_model_argument, add_runtime_arguments, write_json
from dysta_ros.errors import ConfigError, DystaError, exit_status
from dysta_ros.results import result_document
from dysta_ros.training.config import TrainConfig

# What the trainer runs on today: its batches, noise generator and optimizer live on the CPU in
# float32. Other values are refused by name rather than ignored.
TRAIN_DEVICES, TRAIN_DTYPES = ("cpu",), ("float32",)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--bags", nargs="+", metavar="BAG", help="rosbag2 files of expert episodes")
    source.add_argument("--sim-episodes", type=int, metavar="N", help="expert episodes per task from the sim")
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
    parser.add_argument("--out", required=True, help="checkpoint directory to write")
    # the dataclass's own defaults, read without building one (its checks import torch)
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    for name in ("steps", "batch", "history", "frame_stride", "max_cache_age", "save_every", "seed",
                 "warmup", "sim_seed_start"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=defaults[name])
    for name in ("lr", "gate_lambda", "action_noise", "weight_decay"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=float, default=defaults[name])
    add_runtime_arguments(parser)
    parser.add_argument("--param", action="append", default=[], metavar="dysta.KEY=VALUE",
                        help="DySta layout to train, repeatable: dysta.cache_language=true, "
                             "dysta.l1_fraction=0.6, dysta.l2_fraction=0.3 (run it with the same)")
    parser.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    parser.add_argument("--force", action="store_true",
                        help="start afresh over the run already saved in --out (it is overwritten)")
    add_json_argument(parser)


def check_train_device(device: str, dtype: str) -> None:
    """Refuse a device/dtype the trainer does not run on (after the common check names bad ones)."""
    from dysta_ros.policy.devices import check_device

    check_device(device, dtype)
    if device not in TRAIN_DEVICES or dtype not in TRAIN_DTYPES:
        raise ConfigError(f"--device {device} --dtype {dtype}: train runs on "
                          f"{'/'.join(TRAIN_DEVICES)} in {'/'.join(TRAIN_DTYPES)} only")


def run(args: argparse.Namespace) -> int:
    from dysta_ros.training.train import Trainer, check_out, run_smolvla, train_config

    try:
        check_train_device(args.device, args.dtype)
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
                                "command": " ".join(["dysta-ros", *sys.argv[1:]])})
    write_json(args.json or "-", document)  # the last losses: stdout unless a FILE was given
    return 0
