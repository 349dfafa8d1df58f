"""`dysta-ros parity DIR`: our SmolVLA against recorded LeRobot cases (checkpoint/, vlm/, cases.*)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from dysta_ros.cli_options import add_json_argument, json_to_stdout, write_json
from dysta_ros.errors import CheckpointError
from dysta_ros.results import result_document

TOLERANCE = 1e-5  # normalized actions; raw: TOLERANCE x the action std per dimension


def load_cases(directory: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """Return (cases.json, every recorded tensor as float64/uint8/... numpy arrays)."""
    from safetensors import SafetensorError
    import torch  # imported to compare, so `dysta-ros parity --help` stays instant
    from safetensors.torch import load_file

    meta_path, tensors_path = directory / "cases.json", directory / "cases.safetensors"
    for path in (meta_path, tensors_path):
        if not path.is_file():
            raise CheckpointError(
                f"{path}: missing (a parity dir holds checkpoint/, vlm/, cases.json, cases.safetensors)"
            )
    try:
        meta = json.loads(meta_path.read_text())
        tensors = load_file(str(tensors_path))
    except (json.JSONDecodeError, SafetensorError, OSError) as exc:
        raise CheckpointError(f"{exc}") from exc
    # bf16 has no numpy dtype: widen it (exactly) to float32
    arrays = {k: (v.float() if v.dtype == torch.bfloat16 else v).numpy() for k, v in tensors.items()}
    return meta, arrays


def run_cases(directory, policy=None) -> dict:
    """Run every recorded case; return per-case and overall max errors (normalized, raw)."""
    import torch

    from dysta_ros.policy.smolvla import load_smolvla

    directory = Path(directory)
    meta, arrays = load_cases(directory)
    policy = policy or load_smolvla(directory / "checkpoint", directory / "vlm")
    bf16 = policy.spec.dtype_layout.get("bfloat16", 0) > 0
    action_std = policy.files.action_normalizer.stats.get("std")
    results = []
    for case in meta.get("cases", []):
        i = case["index"]
        get = arrays.get
        images = {n: get(f"case{i}.image.{n}") for n in policy.spec.camera_names}
        raw, info = policy.predict(
            images, get(f"case{i}.state"), case["task"], noise=torch.from_numpy(get(f"case{i}.noise"))
        )
        if bf16:  # LeRobot's own bf16 run is noisy to ~3e-3: compare with its float64 re-run
            ref_norm = get(f"case{i}.actions_normalized_float64")[0]
            ref_raw = policy.files.action_normalizer.inverse(torch.from_numpy(ref_norm)).numpy()
        else:
            ref_norm, ref_raw = get(f"case{i}.actions_normalized")[0], get(f"case{i}.actions")[0]
        std = action_std.numpy() if action_std is not None else np.ones(raw.shape[1])
        err_norm = float(np.abs(info["actions_normalized"].astype(np.float64) - ref_norm).max())
        err_raw = np.abs(raw.astype(np.float64) - ref_raw)
        results.append(
            {
                "index": i,
                "task": case["task"],
                "max_error_normalized": err_norm,
                "max_error_raw": float(err_raw.max()),
                "max_error_raw_over_std": float((err_raw / std).max()),
                "reference": "actions_normalized_float64" if bf16 else "actions_normalized",
            }
        )
    return {
        "cases": results,
        "max_error_normalized": max((r["max_error_normalized"] for r in results), default=0.0),
        "max_error_raw": max((r["max_error_raw"] for r in results), default=0.0),
        "max_error_raw_over_std": max((r["max_error_raw_over_std"] for r in results), default=0.0),
        "tolerance": TOLERANCE,
    }


def passed(report: dict) -> bool:
    """Say whether every case is within tolerance (normalized, and raw in units of the action std)."""
    return (
        bool(report["cases"])
        and report["max_error_normalized"] <= report["tolerance"]
        and report["max_error_raw_over_std"] <= report["tolerance"]
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", help="folder with checkpoint/, vlm/, cases.safetensors, cases.json")
    add_json_argument(parser)


def run(args) -> int:
    report = run_cases(args.directory)
    if args.json:
        write_json(args.json, result_document(report["cases"],
                                              {k: v for k, v in report.items() if k != "cases"}))
    if not json_to_stdout(args):
        for r in report["cases"]:
            print(
                f"case {r['index']}: max error normalized {r['max_error_normalized']:.3g}, "
                f"raw {r['max_error_raw']:.3g} ({r['max_error_raw_over_std']:.3g} x std) vs {r['reference']}"
            )
        verdict = "PASS" if passed(report) else "FAIL"
        print(
            f"{verdict}: max normalized {report['max_error_normalized']:.3g}, raw/std "
            f"{report['max_error_raw_over_std']:.3g}, tolerance {report['tolerance']:g}"
        )
    return 0 if passed(report) else 1
