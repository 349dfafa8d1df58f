"""`dysta-ros info DIR`: what a checkpoint directory holds, read from its files without loading it.

Reads config.json and the safetensors header only (no torch, no weights in memory), so it
answers at once even for a multi-gigabyte checkpoint.
"""

from __future__ import annotations

import argparse
import json
import struct
from collections import Counter
from pathlib import Path

from dysta_ros.cli_options import add_json_argument, json_to_stdout, write_json
from dysta_ros.errors import CheckpointError
from dysta_ros.policy.families import CONFIG_FILE, DEFAULT_DT, FAMILIES, family_of
from dysta_ros.results import result_document
from dysta_ros.policy.checkpoint_files import read_json_file

WEIGHTS_FILE = "model.safetensors"
CAMERA_PREFIX = "observation.images."


def tensor_header(weights: Path) -> dict[str, dict]:
    """Return name -> {dtype, shape} from a safetensors file's JSON header."""
    try:
        with open(weights, "rb") as handle:
            (size,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(size))
    except (OSError, struct.error, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{weights}: not a readable safetensors file: {exc}") from exc
    header.pop("__metadata__", None)
    # only the header is read, so check that the tensors it lists fit in the file (a truncated
    # download otherwise looks complete here and fails only when loaded)
    try:
        needed = 8 + size + max((int(e["data_offsets"][1]) for e in header.values()), default=0)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
        raise CheckpointError(f"{weights}: not a readable safetensors file: bad header ({exc})") from exc
    if weights.stat().st_size < needed:
        raise CheckpointError(f"{weights}: truncated: its header lists {needed} bytes, the file has "
                              f"{weights.stat().st_size}")
    return header


def weights_summary(directory: Path) -> dict:
    """Return the parameter count and the count of tensors per dtype."""
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{weights}: missing")
    header = tensor_header(weights)
    count = 0
    for entry in header.values():
        size = 1
        for dim in entry["shape"]:
            size *= dim
        count += size
    return {"parameters": count, "dtype_layout": dict(Counter(e["dtype"] for e in header.values()))}


def smolvla_info(data: dict) -> dict:
    inputs = data.get("input_features") or {}
    outputs = data.get("output_features") or {}
    cameras = [k for k, v in inputs.items() if v.get("type") == "VISUAL"]
    state = inputs.get("observation.state", {}).get("shape", [0])
    action = outputs.get("action", {}).get("shape", [0])
    return {
        "camera_keys": cameras,
        "camera_names": [k.removeprefix(CAMERA_PREFIX) for k in cameras],
        "image_size": data.get("resize_imgs_with_padding"),
        "state_dim": state[0], "action_dim": action[0],
        "state_names": None, "action_names": None,  # LeRobot's config.json does not carry them
        "max_state_dim": data.get("max_state_dim"), "max_action_dim": data.get("max_action_dim"),
        "chunk_size": data.get("chunk_size"), "n_action_steps": data.get("n_action_steps"),
        "flow_steps": data.get("num_steps"),
        "dt": DEFAULT_DT, "dt_source": "not in the checkpoint: 1/30 s assumed",
        "normalization": data.get("normalization_mapping"),
        "vlm_model_name": data.get("vlm_model_name"),
    }


def dysta_info(data: dict) -> dict:
    policy = data["policy"]
    return {
        "camera_keys": list(policy["camera_names"]), "camera_names": list(policy["camera_names"]),
        "image_size": policy.get("vision", {}).get("image_size"),
        "state_dim": policy["state_dim"], "action_dim": policy["action_dim"],
        "state_names": None, "action_names": None,  # the robot config names the joints
        "chunk_size": policy["horizon"], "flow_steps": policy.get("expert", {}).get("flow_steps"),
        "history": policy.get("history"), "dt": policy["dt"], "dt_source": "config.json",
        "normalization": {"STATE": "MEAN_STD" if policy.get("state_std") else "IDENTITY",
                          "ACTION": "MEAN_STD" if policy.get("action_std") else "IDENTITY"},
        "preset": policy.get("preset"),
    }


def model_camera_names(model: str) -> list[str] | None:
    """The cameras a preset or checkpoint directory reads, without building it; None if unknown.

    Unknown (a missing or malformed checkpoint, an unknown name) is left to building the model,
    which says what is wrong.
    """
    from dysta_ros.policy.config import PRESETS

    if model in PRESETS:
        return list(PRESETS[model].camera_names)
    directory = Path(model)
    try:
        data = read_json_file(directory / CONFIG_FILE)
        return (smolvla_info(data) if family_of(directory) == "smolvla" else dysta_info(data))["camera_names"]
    except (CheckpointError, KeyError, TypeError, AttributeError, IndexError, OSError):
        return None


def checkpoint_info(directory) -> dict:
    """Return what `dysta-ros info` prints for a checkpoint directory."""
    directory = Path(directory)
    family = family_of(directory)
    data = read_json_file(directory / CONFIG_FILE)
    try:
        described = smolvla_info(data) if family == "smolvla" else dysta_info(data)
    except (KeyError, TypeError, AttributeError, IndexError) as exc:
        raise CheckpointError(f"{directory / CONFIG_FILE}: missing or malformed key {exc}") from exc
    return {"directory": str(directory), "family": family, **described, **weights_summary(directory),
            "strategies": FAMILIES[family].strategy_table()}


BAG_SUFFIXES = (".mcap", ".db3", ".bag")


def is_bag(path: str | Path) -> bool:
    """Return True for a bag file or a directory that holds one (a checkpoint holds none)."""
    path = Path(path)
    if path.is_file():
        return path.suffix in BAG_SUFFIXES
    return (path / "metadata.yaml").is_file() or any(
        child.suffix in BAG_SUFFIXES for child in path.glob("*") if child.is_file())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", metavar="PATH",
                        help="checkpoint directory, or a rosbag2 bag (directory or .mcap/.db3 file)")
    parser.add_argument("--topic-map", default="sim_arm",
                        help="for a bag: topic mapping, a name in config/bag_topics/ or a YAML path")
    add_json_argument(parser)


def run(args: argparse.Namespace) -> int:
    if is_bag(args.directory):  # the user's first command on an unknown bag, too
        from dysta_ros.bags import inspect

        return inspect.run(argparse.Namespace(bag=args.directory, topic_map=args.topic_map,
                                              json=args.json))
    info = checkpoint_info(args.directory)
    if args.json:
        write_json(args.json, result_document([info], {"path": args.directory, "kind": "checkpoint"}))
    if json_to_stdout(args):
        return 0
    width = max(len(k) for k in info)
    for key, value in info.items():
        if key == "strategies":
            continue
        print(f"{key:<{width}}  {'(not in the checkpoint)' if value is None else value}")
    print("strategies:")
    for name, verdict in info["strategies"].items():
        print(f"  {name:<16}{verdict}")
    return 0
