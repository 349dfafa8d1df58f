"""`dysta-ros profile-entropy`: attention entropy per backbone layer -> a GoToHunt layer schedule.

As GoToHunt profiles VGGT: on real frames (structured synthetic scenes or MuJoCo renders, not
noise), run the `full` context once per sample and record, per layer, the normalised
attention entropy (row entropy / log(#keys), averaged over a few sampled heads and queries).
Near-uniform leading layers (entropy >= local threshold) become local, other flat layers
(>= strided threshold) strided, spiky layers keep all anchor tokens: striding spiky layers
is what the paper found to hurt.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from dysta_ros.cli_options import (add_json_argument, add_model_argument, add_runtime_arguments,
                                   json_to_stdout, seed_value, write_json)
from dysta_ros.errors import ConfigError, DystaError, exit_status
from dysta_ros.evaluation.bench import sim_observations, synthetic_observations
from dysta_ros.plots import pyplot, save_png
from dysta_ros.policy.config import PROFILE_HEADS, PROFILE_QUERIES
from dysta_ros.results import result_document


def entropy_profile(
    model,
    observations,
    history: int,
    heads: int = 4,
    queries: int = 32,
    tokenizer=None,
    progress: bool = False,
) -> np.ndarray:
    """Return (samples, layers) normalised attention entropies of `full` windows of `history` frames."""
    import torch  # imported to run, so `dysta-ros profile-entropy --help` stays instant

    with torch.inference_mode():
        return _entropy_profile(model, observations, history, heads, queries, tokenizer, progress)


def _entropy_profile(model, observations, history, heads, queries, tokenizer, progress) -> np.ndarray:
    """Compute entropy_profile (its imports are here: torch only when a profile is taken)."""
    import torch

    from dysta_ros.policy.attention import AttentionPlan
    from dysta_ros.policy.preprocess import prepare_observation
    from dysta_ros.policy.tokenizer import model_tokenizer
    from dysta_ros.tokens.base import Frame, StepContext
    from dysta_ros.tokens.full import full_layout

    cfg, tokenizer = model.cfg, tokenizer or model_tokenizer(model)
    frames = []
    for index, obs in enumerate(observations):
        pixels, _, _ = prepare_observation(obs, cfg.camera_names, cfg.vision.image_size, cfg.state_dim)
        features, tokens = model.encode_frame(torch.from_numpy(pixels).to(model.device, model.dtype))
        frames.append(Frame(features=features, tokens=tokens, index=index))
    if len(frames) < history:
        raise ConfigError(f"need at least {history} frames for history {history}, got {len(frames)}")
    rows = []
    windows = range(history - 1, len(frames))
    for end in tqdm(windows, desc="entropy", disable=not progress, file=sys.stderr):
        obs = observations[end]
        state = torch.as_tensor(np.asarray(obs.state, np.float32), device=model.device).to(model.dtype)
        text_ids = torch.tensor(tokenizer.encode(obs.instruction), device=model.device)
        ctx = StepContext(
            model=model,
            frames=frames[end - history + 1 : end + 1],
            text=model.embed_text(text_ids),
            state=model.embed_state(state),
            grid=cfg.vision.grid,
            cameras=len(cfg.camera_names),
        )
        embeds, positions = full_layout(ctx)
        plan = AttentionPlan(query_order=positions, entropy_heads=heads, entropy_queries=queries)
        model.run_backbone(embeds, positions, plan)
        rows.append([plan.entropy.get(layer, float("nan")) for layer in range(cfg.backbone.layers)])
    return np.asarray(rows)


def propose_schedule(entropy: np.ndarray, local_threshold: float, strided_threshold: float):
    """Return (local_layers, strided_layers) from per-layer mean entropies (layers,)."""
    local, strided = [], []
    leading = True
    for layer, value in enumerate(entropy):
        if leading and value >= local_threshold:
            local.append(layer)
            continue
        leading = False
        if value >= strided_threshold:
            strided.append(layer)
    return local, strided


def plot_profile(entropy: np.ndarray, local, strided, path: Path, title: str) -> Path:
    plt = pyplot()

    mean, std = entropy.mean(axis=0), entropy.std(axis=0)
    layers = np.arange(len(mean))
    colors = ["tab:green" if i in local else "tab:orange" if i in strided else "tab:blue" for i in layers]
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.bar(layers, mean, yerr=std, color=colors, capsize=2)
    ax.set_xlabel("backbone layer")
    ax.set_ylabel("normalised attention entropy")
    ax.set_ylim(0, 1.05)
    ax.set_title(title + "\ngreen: local, orange: strided, blue: all", fontsize=9)
    return save_png(fig, path, dpi=120)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_argument(parser, default="tiny")  # a trained model's profile is the useful one
    parser.add_argument("--history", type=int, default=4, help="frames T in each profiled window")
    parser.add_argument("--samples", type=int, default=4, help="windows profiled")
    parser.add_argument("--heads", type=int, default=PROFILE_HEADS, help="sampled heads per layer")
    parser.add_argument("--queries", type=int, default=PROFILE_QUERIES, help="sampled queries per layer")
    parser.add_argument("--local-threshold", type=float, default=0.9)
    parser.add_argument("--strided-threshold", type=float, default=0.75)
    parser.add_argument("--frames", default="synthetic", choices=["synthetic", "sim"])
    add_runtime_arguments(parser)
    parser.add_argument("--seed", type=seed_value, default=0)
    parser.add_argument("--plot", default="entropy_profile.png", help="PNG output")
    add_json_argument(parser)


def run(args: argparse.Namespace) -> int:
    from dysta_ros.policy.runtime import build_model, set_threads

    out = sys.stderr if json_to_stdout(args) else sys.stdout  # stdout is the JSON's then
    try:
        if args.history < 1 or args.samples < 1:
            raise ConfigError("--history and --samples must be >= 1")
        set_threads(args.threads)
        model, tokenizer = build_model(args.model, args.device, args.dtype, args.seed)
        count = args.history + args.samples - 1
        cfg = model.cfg
        if args.frames == "sim":
            observations = sim_observations(count, cfg.camera_names, args.seed)
        else:
            observations = synthetic_observations(count, cfg.camera_names, cfg.state_dim, args.seed)
        entropy = entropy_profile(
            model, observations, args.history, args.heads, args.queries, tokenizer,
            progress=not json_to_stdout(args)
        )
    except DystaError as exc:
        print(f"dysta-ros profile-entropy: {exc}", file=sys.stderr)
        return exit_status(exc)
    mean = entropy.mean(axis=0)
    local, strided = propose_schedule(mean, args.local_threshold, args.strided_threshold)
    print("layer  entropy (mean +- std over windows)", file=out)
    for layer, (m, s) in enumerate(zip(mean, entropy.std(axis=0))):
        mode = "local" if layer in local else "strided" if layer in strided else "all"
        print(f"{layer:>5}  {m:.3f} +- {s:.3f}  {mode}", file=out)
    print("# proposed GoToHunt schedule (config/strategies/gotohunt.yaml):", file=out)
    print(f"local_layers: {local}", file=out)
    print(f"strided_layers: {strided}", file=out)
    print("# this model's profile for VLA-Cache's layer-adaptive reuse (config/strategies/vla_cache.yaml):",
          file=out)
    print(f"layer_entropy: {[round(float(m), 4) for m in mean]}", file=out)
    title = f"{args.model}, T={args.history}, {args.frames} frames"
    print(f"wrote {plot_profile(entropy, local, strided, Path(args.plot), title)}", file=out)
    write_json(args.json, result_document(
        [{"layer": layer, "entropy_mean": float(m), "entropy_std": float(s),
          "mode": "local" if layer in local else "strided" if layer in strided else "all"}
         for layer, (m, s) in enumerate(zip(mean, entropy.std(axis=0)))],
        {"model": args.model, "history": args.history, "samples": args.samples, "frames": args.frames,
         "device": args.device, "dtype": args.dtype, "threads": args.threads,
         "local_layers": local, "strided_layers": strided,
         "layer_entropy": [round(float(m), 4) for m in mean]}))
    return 0
