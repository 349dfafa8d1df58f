"""`dysta-ros bench`: token strategies side by side, interleaved on the same frames, in one run.

Per history length T and strategy: step time p50/p90 and per stage, speedup vs `full` from
the same run, tokens in context and recomputed, backbone FLOPs ratio, recache rate, and the
action deviation from `full` on the same inputs (same frames, same noise), relative to the
range of `full`'s actions. A table for people, JSON for machines, a PNG plot.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from dysta_ros.cli_options import (add_json_argument, add_model_argument, add_runtime_arguments,
                                   add_strategies_argument, json_to_stdout, output_file, seed_value,
                                   write_json)
from dysta_ros.errors import ConfigError, DystaError, InferenceError, exit_status
from dysta_ros.evaluation.scenes import structured_frames
from dysta_ros.plots import pyplot, save_png
from dysta_ros.results import command_line, recache_rate, result_document, speedup
from dysta_ros.tokens import available_strategies, parse_param_overrides
from dysta_ros.types import STAGES, Observation

BASELINE = "full"
INSTRUCTION = "push the red block to the left"


def parse_list(text: str, cast=str) -> list:
    """Split "a,b,c" into a typed list; empty items are dropped."""
    return [cast(item.strip()) for item in text.split(",") if item.strip()]


def synthetic_observations(count: int, camera_names: list[str], state_dim: int, seed: int = 0,
                           size: tuple[int, int] = (240, 320)):
    """Structured frames (static table, moving arm and block) for every camera, a slow state."""
    cameras = {name: structured_frames(count, *size, seed=seed + i) for i, name in enumerate(camera_names)}
    return [
        Observation(
            stamp=0.1 * t,
            images={name: frames[t] for name, frames in cameras.items()},
            state=np.full(state_dim, 0.01 * t, np.float32),
            instruction=INSTRUCTION,
        )
        for t in range(count)
    ]


def sim_observations(count: int, camera_names: list[str], seed: int = 0, size: tuple[int, int] = (224, 224),
                     state_dim: int | None = None):
    """Frames rendered by the MuJoCo sim while its scripted expert works on the reach task.

    The scene is static but for the arm (and what the wrist camera sees as it moves).
    `state_dim`: a model with another state size gets the sim's joints cut or zero-padded.
    """
    from dysta_ros.sim.env import SimConfig, SimEnv
    from dysta_ros.sim.expert import ScriptedExpert

    env = SimEnv(SimConfig(image_width=size[1], image_height=size[0]))
    try:
        obs = env.reset("reach", seed=seed)
        expert = ScriptedExpert(env)
        observations = [obs]
        while len(observations) < count:
            for target in expert.plan(obs.state):
                obs, _ = env.step(target)
                observations.append(obs)
                if len(observations) == count:
                    break
    finally:
        env.close()  # release the GL context here, not in a garbage collector's thread
    missing = [name for name in camera_names if name not in observations[0].images]
    if missing:
        raise ConfigError(f"the sim renders {sorted(observations[0].images)}, the model needs {missing}")
    if state_dim is not None:
        for o in observations:
            state = np.zeros(state_dim, np.float32)
            kept = min(state_dim, len(o.state))
            state[:kept] = np.asarray(o.state, np.float32)[:kept]
            o.state = state
    return observations


def bag_observations(path: str, count: int, camera_names: list[str]):
    """The first `count` observations of a bag's episodes (10 Hz, zero-order hold), in order."""
    from dysta_ros.bags import load_episodes

    observations = []
    for episode in load_episodes(path):
        observations.extend(episode.observation(i) for i in range(len(episode)))
        if len(observations) >= count:
            break
    if len(observations) < count:
        raise ConfigError(f"{path}: holds {len(observations)} observations; the bench needs {count} "
                          "(--warmup + --steps)")
    missing = [name for name in camera_names if name not in observations[0].images]
    if missing:
        raise ConfigError(f"{path}: the bag has cameras {sorted(observations[0].images)}, "
                          f"the model needs {missing}")
    return observations[:count]


def percentile(values, q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if len(values) else float("nan")


def summarize(records: dict[str, list], history: int, peaks: dict | None = None) -> list[dict]:
    """One JSON row per strategy from its measured (chunk, stats) records."""
    baseline = records.get(BASELINE)
    action_range = None
    if baseline:
        actions = np.stack([chunk.actions for chunk, _ in baseline])  # (steps, H, A)
        spread = actions.max(axis=(0, 1)) - actions.min(axis=(0, 1))  # (A,)
        action_range = np.where(spread > 1e-9, spread, 1.0)
    base_p50 = percentile([s.stage_ms["total"] for _, s in baseline], 50) if baseline else None
    rows = []
    for name, steps in records.items():
        stats = [s for _, s in steps]
        totals = [s.stage_ms["total"] for s in stats]
        row = {
            "strategy": name,
            "history": history,
            "steps": len(steps),
            "step_ms_p50": percentile(totals, 50),
            "step_ms_p90": percentile(totals, 90),
            "stage_ms_p50": {stage: percentile([s.stage_ms[stage] for s in stats], 50) for stage in STAGES},
            # parts of the stages above (connector: of vision; postprocess: of action_head)
            "part_ms_p50": {part: percentile([s.part_ms.get(part, 0.0) for s in stats], 50)
                            for part in dict.fromkeys(k for s in stats for k in s.part_ms)},
            "speedup": None,
            "action_dev_mean": None,
            "action_dev_max": None,
            "context_tokens": float(np.mean([s.context_tokens for s in stats])),
            "recomputed_tokens": float(np.mean([s.recomputed_tokens for s in stats])),
            "static_tokens": float(np.mean([s.static_l1_tokens + s.static_l2_tokens for s in stats])),
            "frames_attended": float(np.mean([s.frames_attended for s in stats])),
            "flops_ratio": float(np.mean([s.flops_ratio for s in stats])),
            # the warm-up steps built the caches: every measured step counts
            "recache_rate": recache_rate([stats], skip_first=False),
            "recache_rate_l1": float(np.mean([s.recached_l1 for s in stats])),
            "vision_recomputed": float(np.mean([s.vision_recomputed for s in stats])),
            "peak_memory_mb": peaks.get(name) if peaks else None,
        }
        if baseline:
            row["speedup"] = speedup(base_p50, row["step_ms_p50"])
            deviation = np.stack(
                [
                    np.abs(chunk.actions - ref.actions) / action_range
                    for (chunk, _), (ref, _) in zip(steps, baseline)
                ]
            )
            row["action_dev_mean"], row["action_dev_max"] = float(deviation.mean()), float(deviation.max())
        rows.append(row)
    return rows


def run_bench(
    model,
    strategies: list[str],
    histories: list[int],
    observations: list[Observation],
    warmup: int,
    params: dict[str, dict] | None = None,
    seed: int = 0,
    progress: bool = True,
    variants: dict[str, tuple[str, dict]] | None = None,
    failed: list[dict] | None = None,
) -> list[dict]:
    """Step every strategy (and variant) on the same observations, interleaved; return the JSON rows.

    `variants`: extra rows, label -> (strategy, params), e.g. "full+vision" -> ("full", {...}).
    A run whose step fails (InferenceError: a CUDA-only option that breaks, out of memory) stops
    there and gives no row; the others go on. `failed` gets {"run", "history", "step", "error"}
    for each, so one broken option does not cost the whole measurement.
    """
    import torch

    from dysta_ros.policy.runtime import runtime_around  # torch: imported to run, not for --help

    params = params or {}
    runs = {name: (name, params.get(name)) for name in strategies}
    runs.update(variants or {})
    cuda = torch.cuda.is_available() and str(getattr(model, "device", "cpu")).startswith("cuda")
    rows = []
    total = len(histories) * len(observations) * len(runs)
    with tqdm(total=total, desc="bench", unit="step", disable=not progress, file=sys.stderr) as bar:
        for history in histories:
            runtimes = {label: runtime_around(model, name, values, history=history, seed=seed,
                                              tokenizer=tokenizer_of(model))
                        for label, (name, values) in runs.items()}
            records: dict[str, list] = {label: [] for label in runs}
            peaks: dict[str, float] = {}
            broken: set[str] = set()
            for index, obs in enumerate(observations):
                # Interleaved: every strategy sees this frame before the next one is shown, so
                # load from other processes hits all strategies alike.
                for label, runtime in runtimes.items():
                    if label in broken:
                        bar.update()
                        continue
                    if cuda:
                        torch.cuda.reset_peak_memory_stats()
                    try:
                        result = runtime.step(obs)
                    except InferenceError as exc:
                        broken.add(label)
                        failure = {"run": label, "history": history, "step": index, "error": str(exc)}
                        if failed is not None:
                            failed.append(failure)
                        print(f"dysta-ros bench: T={history} {label} failed at step {index} (no row): {exc}",
                              file=sys.stderr)
                        bar.update()
                        continue
                    if cuda:
                        peaks[label] = max(peaks.get(label, 0.0), torch.cuda.max_memory_allocated() / 2**20)
                    if index >= warmup:
                        records[label].append(result)
                    bar.set_postfix(T=history, run=label)
                    bar.update()
            rows.extend(summarize({k: v for k, v in records.items() if k not in broken}, history, peaks))
    return rows


def tokenizer_of(model):
    """The tokenizer the runtime needs: this package's own VLA carries one, SmolVLA its own inside."""
    from dysta_ros.policy.model import VLAModel
    from dysta_ros.policy.tokenizer import model_tokenizer

    return model_tokenizer(model) if isinstance(model, VLAModel) else None


PLOTTED_STAGES = ("preprocess", "vision", "gate", "backbone", "action_head")


def format_table(rows: list[dict]) -> str:
    """A fixed-width table of the rows, one line per (history, strategy or variant)."""
    width = max([15, *(len(r["strategy"]) for r in rows)])
    header = (
        f"{'T':>3} {'run':<{width}} {'p50 ms':>8} {'p90 ms':>8} {'speedup':>7} {'context':>7} "
        f"{'recomp':>7} {'flops':>6} {'recache':>7} {'dev mean':>8} {'dev max':>8}  "
        f"{'prep':>5} {'vision':>6} {'conn':>5} {'gate':>5} {'backbone':>8} {'head':>6} {'post':>5} "
        f"{'vis%':>5}"
    )
    lines = [header, "-" * len(header)]

    def fmt(value, spec):
        return format(value, spec) if value is not None else "-".rjust(len(format(0.0, spec)))

    for r in rows:
        st, parts = r["stage_ms_p50"], r.get("part_ms_p50", {})
        lines.append(
            f"{r['history']:>3} {r['strategy']:<{width}} {r['step_ms_p50']:>8.1f} {r['step_ms_p90']:>8.1f} "
            f"{fmt(r['speedup'], '7.2f')} {r['context_tokens']:>7.0f} {r['recomputed_tokens']:>7.0f} "
            f"{r['flops_ratio']:>6.3f} {r['recache_rate']:>7.2f} {fmt(r['action_dev_mean'], '8.4f')} "
            f"{fmt(r['action_dev_max'], '8.4f')}  {st['preprocess']:>5.1f} {st['vision']:>6.1f} "
            f"{parts.get('connector', 0.0):>5.1f} {st['gate']:>5.1f} {st['backbone']:>8.1f} "
            f"{st['action_head']:>6.1f} "
            f"{parts.get('postprocess', 0.0):>5.1f} {100 * r.get('vision_recomputed', 1.0):>5.0f}"
        )
    return "\n".join(lines)


def plot(rows: list[dict], path: Path, title: str) -> Path:
    """Stacked per-stage p50 bars per (T, strategy), and p50 step time against T per strategy."""
    plt = pyplot()

    fig, (bars, growth) = plt.subplots(1, 2, figsize=(14, 5), gridspec_kw={"width_ratios": [2, 1]})
    labels = [f"T={r['history']}\n{r['strategy']}" for r in rows]
    bottom = np.zeros(len(rows))
    for stage in PLOTTED_STAGES:
        values = np.array([r["stage_ms_p50"].get(stage, 0.0) for r in rows])
        if not values.any():
            continue
        bars.bar(range(len(rows)), values, bottom=bottom, label=stage)
        bottom += values
    for i, r in enumerate(rows):
        if r["speedup"]:
            bars.text(i, bottom[i], f"{r['speedup']:.2f}x", ha="center", va="bottom", fontsize=8)
    bars.set_xticks(range(len(rows)), labels, fontsize=7, rotation=90)
    bars.set_ylabel("p50 ms per step (stages)")
    bars.set_yscale("log" if bottom.max() > 20 * max(bottom.min(), 1e-3) else "linear")
    bars.legend(fontsize=8)
    bars.set_title(title, fontsize=9)
    for name in dict.fromkeys(r["strategy"] for r in rows):
        points = sorted((r["history"], r["step_ms_p50"]) for r in rows if r["strategy"] == name)
        growth.plot(*zip(*points), marker="o", label=name)
    growth.set_xlabel("history frames T")
    growth.set_ylabel("p50 ms per step")
    growth.set_xscale("log", base=2)
    growth.set_yscale("log")
    growth.grid(alpha=0.3)
    growth.legend(fontsize=8)
    return save_png(fig, path, dpi=120)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # a preset, smolvla_base (LeRobot SmolVLA at its real size, random weights, no download) or a
    # checkpoint directory
    add_model_argument(parser, default="small")
    parser.add_argument("--vlm", default=None, metavar="DIR",
                        help="a LeRobot SmolVLA checkpoint's backbone config + tokenizer directory")
    add_strategies_argument(parser)
    parser.add_argument("--history", default="1,8", help="comma-separated history lengths T, e.g. 1,8,32")
    parser.add_argument("--steps", type=int, default=10, help="measured steps per strategy and T")
    parser.add_argument("--warmup", type=int, default=3, help="unmeasured steps first (caches, allocator)")
    add_runtime_arguments(parser)
    parser.add_argument(
        "--frames",
        default="synthetic",
        metavar="synthetic|sim|BAG",
        help="structured synthetic scene, MuJoCo renders of the reach task, or a rosbag2 path",
    )
    parser.add_argument("--camera-size", default=None, metavar="HxW",
                        help="camera frames' size for synthetic/sim frames (default: 480x640 for SmolVLA, "
                             "else the model's image size)")
    parser.add_argument(
        "--options",
        default="",
        metavar="SET,SET",
        help="speed-option sets of config/speed_options.yaml run beside `full` (rows full+SET), "
             "e.g. exact,vision,steps5,warm,bf16,best",
    )
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="STRATEGY.KEY=VALUE",
        help="strategy parameter, repeatable, e.g. --param dysta.delta_l1=0.1",
    )
    parser.add_argument("--seed", type=seed_value, default=0)
    add_json_argument(parser)
    parser.add_argument("--plot", type=output_file, help="PNG plot path (default: beside the --json FILE)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def parse_size(text: str) -> tuple[int, int]:
    height, sep, width = text.lower().partition("x")
    if not sep or not height.isdigit() or not width.isdigit() or int(height) < 16 or int(width) < 16:
        raise ConfigError(f"--camera-size {text!r}: expected HxW, e.g. 480x640")
    return int(height), int(width)


def option_variants(names: list[str]) -> dict[str, tuple[str, dict]]:
    """Rows `full+SET` of the named speed-option sets (config/speed_options.yaml)."""
    from dysta_ros.policy.speed import load_option_sets, option_sets_file

    sets = load_option_sets()
    unknown = [n for n in names if n not in sets]
    if unknown:
        raise ConfigError(f"--options: unknown set(s) {unknown}; {option_sets_file()} defines "
                          f"{', '.join(sets)}")
    return {f"{BASELINE}+{name}": (BASELINE, dict(sets[name])) for name in names}


def load_observations(frames: str, count: int, spec, size, seed: int):
    if frames == "sim":
        return sim_observations(count, spec.camera_names, seed, size, spec.state_dim)
    if frames == "synthetic":
        return synthetic_observations(count, spec.camera_names, spec.state_dim, seed, size)
    if not Path(frames).exists():
        raise ConfigError(f"--frames {frames!r}: not synthetic, sim or an existing bag path")
    return bag_observations(frames, count, spec.camera_names)


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (Linux reports KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(args: argparse.Namespace) -> int:
    import torch  # imported to run, so `dysta-ros bench --help` stays instant

    from dysta_ros.policy.devices import machine
    from dysta_ros.policy.runtime import build_model, runtime_around, set_threads

    try:
        strategies = args.strategies
        histories = parse_list(args.history, int)
        unknown = [s for s in strategies if s not in available_strategies()]
        if unknown or not strategies:
            raise ConfigError(
                f"unknown strategies {unknown}; choose from {', '.join(available_strategies())}"
            )
        if not histories or min(histories) < 1 or args.steps < 1 or args.warmup < 0:
            raise ConfigError("--history needs values >= 1, --steps >= 1, --warmup >= 0")
        json_file = args.json if args.json and not json_to_stdout(args) else None
        plot_path = (Path(args.plot) if args.plot
                     else Path(json_file).with_suffix(".png") if json_file else None)
        if plot_path and json_file and plot_path.resolve() == Path(json_file).resolve():
            raise ConfigError(f"--json and the plot are one file, {json_file}: the plot would overwrite "
                              f"the results (give --plot another path, or --json a .json name)")
        params = parse_param_overrides(args.param, strategies)
        variants = option_variants(parse_list(args.options))
        set_threads(args.threads)
        model_name = args.model
        model, tokenizer = build_model(model_name, args.device, args.dtype, args.seed, vlm=args.vlm)
        smolvla = getattr(model, "family_name", "") == "smolvla"
        # The cameras and state the frames need, from the model's own spec (any family)
        cfg = runtime_around(model, strategies[0], params.get(strategies[0]), seed=args.seed,
                             tokenizer=tokenizer).spec
        size = parse_size(args.camera_size) if args.camera_size else (
            (480, 640) if smolvla else (cfg.image_size, cfg.image_size))
        count = args.warmup + args.steps
        observations = load_observations(args.frames, count, cfg, size, args.seed)
        started = time.time()
        failed: list[dict] = []
        rows = run_bench(
            model,
            strategies,
            histories,
            observations,
            args.warmup,
            params,
            args.seed,
            progress=not (args.quiet or json_to_stdout(args)),
            variants=variants,
            failed=failed,
        )
    except DystaError as exc:
        print(f"dysta-ros bench: {exc}", file=sys.stderr)
        return exit_status(exc)
    meta = {
        "model": model_name,
        "preset": cfg.preset,
        "device": args.device,
        "dtype": args.dtype,
        "threads": torch.get_num_threads(),
        "frames": args.frames,
        "camera_size": list(observations[0].images[cfg.camera_names[0]].shape[:2]),
        "steps": args.steps,
        "warmup": args.warmup,
        "tokens_per_frame": cfg.tokens_per_frame,
        "params": params,
        "options": {label: values for label, (_, values) in variants.items()},
        "instruction": INSTRUCTION,
        "failed": failed,  # runs whose step failed: they have no row
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "machine": machine(args.device),
        "seconds": round(time.time() - started, 1),
        "command": command_line(),
    }
    out = sys.stderr if json_to_stdout(args) else sys.stdout  # stdout is the JSON's then
    print(format_table(rows), file=out)
    print(f"peak memory (process RSS): {meta['peak_rss_mb']:.0f} MB", file=out)
    write_json(args.json, result_document(rows, meta))
    if plot_path and rows:
        title = f"{model_name} on {args.device}/{args.dtype}, {args.frames} frames, {args.steps} steps"
        print(f"wrote {plot(rows, plot_path, title)}", file=out)
    if failed:
        print(f"dysta-ros bench: {len(failed)} run(s) failed and have no row: "
              f"{', '.join(f['run'] for f in failed)}", file=sys.stderr)
        return exit_status(InferenceError(failed[0]["error"]))
    return 0
