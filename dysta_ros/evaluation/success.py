"""`dysta-ros closed-loop`: success rate per token strategy on held-out sim seeds, with speed.

In-process MuJoCo + the policy runtime, no ROS, deterministic: every strategy drives the same
seeds with the same flow noise. Episodes are interleaved (seed by seed, every strategy in
turn), so load on a shared machine hits all strategies alike; step time and speedup come
from the same run as the success rates.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from dysta_ros.errors import ConfigError
from dysta_ros.cli_options import (add_json_argument, add_model_argument, add_runtime_arguments,
                                   add_strategies_argument, json_to_stdout, output_folder, seed_value,
                                   write_json)
from dysta_ros.plots import pyplot, save_png
from dysta_ros.results import command_line, recache_rate, result_document, speedup
from dysta_ros.sim.tasks import check_seed
from dysta_ros.tokens import available_strategies, parse_param_overrides

if TYPE_CHECKING:  # MuJoCo and torch: imported to run, so `dysta-ros closed-loop --help` stays instant
    from dysta_ros.evaluation.closed_loop import Episode

HELD_OUT_SEED_START = 100_000  # training uses seeds from 0; evaluation never overlaps them


@dataclass
class StrategyResult:
    """One strategy's episodes summarised."""

    strategy: str  # as asked: `name` or `name@T`
    params: dict
    history: int  # frames T the runtime kept
    episodes: int = 0
    successes: int = 0
    success_rate: float = 0.0
    success_stderr: float = 0.0  # binomial standard error of the rate
    reasons: dict[str, int] = field(default_factory=dict)
    mean_steps_to_success: float = float("nan")  # control steps
    step_ms: float = 0.0  # mean policy step (total) over all episodes
    step_ms_p50: float = 0.0  # median policy step (total)
    backbone_ms: float = 0.0
    speedup: float | None = None  # dysta_ros.results.speedup: full's median step / this one, same run
    flops_ratio: float = 1.0  # backbone FLOPs relative to full on the same history
    context_tokens: float = 0.0
    recache_rate: float | None = None  # dysta_ros.results.recache_rate
    seeds_failed: list[int] = field(default_factory=list)


def summarise(strategy: str, params: dict, episodes: list[Episode], history: int) -> StrategyResult:
    """Aggregate a strategy's episodes."""
    result = StrategyResult(strategy, params, history, episodes=len(episodes))
    stats = [s for episode in episodes for s in episode.stats]
    result.successes = sum(e.outcome.success for e in episodes)
    if episodes:
        rate = result.successes / len(episodes)
        result.success_rate = rate
        result.success_stderr = math.sqrt(rate * (1 - rate) / len(episodes))
    for episode in episodes:
        result.reasons[episode.outcome.reason] = result.reasons.get(episode.outcome.reason, 0) + 1
    steps = [e.outcome.steps for e in episodes if e.outcome.success]
    result.mean_steps_to_success = float(np.mean(steps)) if steps else float("nan")
    result.seeds_failed = [e.seed for e in episodes if not e.outcome.success]
    if stats:
        result.step_ms = float(np.mean([s.stage_ms["total"] for s in stats]))
        result.step_ms_p50 = float(np.median([s.stage_ms["total"] for s in stats]))
        result.backbone_ms = float(np.mean([s.stage_ms["backbone"] for s in stats]))
        result.flops_ratio = float(np.mean([s.flops_ratio for s in stats]))
        result.context_tokens = float(np.mean([s.context_tokens for s in stats]))
        result.recache_rate = recache_rate(episode.stats for episode in episodes)
    return result


def parse_spec(spec: str) -> tuple[str, int | None]:
    """`name` or `name@T` (a strategy with its own history length) -> (name, T or None)."""
    name, _, frames = spec.partition("@")
    if name not in available_strategies():
        raise ConfigError(f"strategies: unknown {name!r}; choose from {', '.join(available_strategies())}")
    if not frames:
        return name, None
    if not frames.isdigit() or int(frames) < 1:
        raise ConfigError(f"strategies: {spec!r}: the history after '@' must be an integer >= 1")
    return name, int(frames)


def evaluate(
    model: str,
    task: str = "reach",
    episodes: int = 20,
    seed_start: int = HELD_OUT_SEED_START,
    strategies: list[str] | None = None,
    history: int | None = None,
    execute_steps: int | None = None,
    param_overrides: list[str] | None = None,
    threads: int = 1,
    vlm: str | None = None,
    device: str = "cpu",
    dtype: str = "float32",
    progress: bool = True,
) -> dict:
    """Run every strategy on seeds seed_start .. + episodes - 1; return the results dict."""
    from dysta_ros.policy.checkpoint import read_config
    from dysta_ros.evaluation.closed_loop import run_episode
    from dysta_ros.policy.families import family_of
    from dysta_ros.policy.runtime import build_model, runtime_around, set_threads
    from dysta_ros.sim.env import SimEnv

    strategies = strategies or ["full"]
    specs = {spec: parse_spec(spec) for spec in strategies}
    if episodes < 1:
        raise ConfigError(f"episodes: must be >= 1, got {episodes}")
    check_seed(seed_start)  # before the model loads, not at the first reset
    # 0 is no "use the default": `or` below would have swapped it for the checkpoint's value silently
    for name, value in (("history", history), ("execute_steps", execute_steps)):
        if value is not None and value < 1:
            raise ConfigError(f"{name}: must be >= 1, got {value}")
    set_threads(threads)
    trained = {}
    if Path(model).is_dir() and family_of(model) == "dysta_vla":
        trained = read_config(model)[1].get("training", {})
    vla, tokenizer = build_model(model, device, dtype, vlm=vlm)
    # a LeRobot checkpoint says how many of a chunk's actions it executes (n_action_steps)
    n_action_steps = getattr(getattr(vla, "spec", None), "n_action_steps", None)
    if execute_steps is None:
        execute_steps = trained.get("frame_stride") or n_action_steps or 4
    execute_steps = int(execute_steps)
    params = parse_param_overrides(param_overrides or [], sorted({name for name, _ in specs.values()}))
    runtimes = {spec: runtime_around(vla, name, params[name],
                                     history if spec_history is None else spec_history, tokenizer=tokenizer)
                for spec, (name, spec_history) in specs.items()}
    env = SimEnv()
    runs: dict[str, list[Episode]] = {spec: [] for spec in specs}
    try:
        seeds = range(seed_start, seed_start + episodes)
        for seed in tqdm(seeds, desc=f"closed loop {task}", unit="seed", disable=not progress):
            for spec, runtime in runtimes.items():
                runs[spec].append(
                    run_episode(env, runtime, task, seed, execute_steps, keep_observations=False))
    finally:
        env.close()
    results = [summarise(spec, params[specs[spec][0]], runs[spec], runtimes[spec].spec.history)
               for spec in specs]
    baseline = next((r for r in results if specs[r.strategy][0] == "full"), None)
    if baseline is not None:
        for result in results:
            result.speedup = speedup(baseline.step_ms_p50, result.step_ms_p50)
    return result_document([asdict(r) for r in results], {
        "model": str(model),
        "task": task,
        "seeds": [seed_start, seed_start + episodes - 1],
        "history": runtimes[strategies[0]].spec.history,  # of the first row; each row has its own
        "execute_steps": execute_steps,
        "learned_dysta": bool(getattr(vla, "has_learned_dysta", False)),
        "device": device, "dtype": dtype, "threads": threads,
    })


def speedup_text(speedup: float | None) -> str:
    """Return '1.23x', or '-' where there is no `full` in the run to compare with."""
    return "-" if speedup is None else f"{speedup:.2f}x"


def format_table(report: dict) -> str:
    """A plain-text table of the results, one row per strategy."""
    meta = report["meta"]
    header = (f"{'strategy':<18}{'T':>3}{'success':>12}{'step ms':>10}{'speedup':>9}"
              f"{'FLOPs':>8}{'context':>9}{'recache':>9}")
    lines = [f"{meta['task']}: seeds {meta['seeds'][0]}..{meta['seeds'][1]}, "
             f"{meta['execute_steps']} steps per chunk", header]
    for r in report["runs"]:
        lines.append(
            f"{r['strategy']:<18}{r['history']:>3}{r['successes']:>5}/{r['episodes']:<3}"
            f"{100 * r['success_rate']:>3.0f}%"
            f"{r['step_ms_p50']:>10.1f}{speedup_text(r['speedup']):>9}{r['flops_ratio']:>8.2f}"
            f"{r['context_tokens']:>9.0f}{_rate(r['recache_rate']):>9}")
    return "\n".join(lines)


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def write_report(report: dict, directory: Path, command: str = "") -> None:
    """results.json, success.png and report.md in directory."""
    plt = pyplot()

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "results.json").write_text(json.dumps(report, indent=2))
    results, meta = report["runs"], report["meta"]
    names = [r["strategy"] for r in results]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.bar(names, [100 * r["success_rate"] for r in results],
             yerr=[100 * r["success_stderr"] for r in results], capsize=4, color="tab:green")
    left.set_ylabel("success rate (%)")
    left.set_ylim(0, 105)
    left.set_title(f"{meta['task']}: {results[0]['episodes']} held-out seeds")
    right.bar(names, [r["step_ms_p50"] for r in results], color="tab:blue")
    for i, r in enumerate(results):
        if r["speedup"] is not None:
            right.text(i, r["step_ms_p50"], f"{r['speedup']:.2f}x", ha="center", va="bottom")
    right.set_ylabel("policy step, median (ms)")
    right.set_title("step time, same run (speedup vs full)")
    for ax in (left, right):
        ax.tick_params(axis="x", rotation=20)
    save_png(fig, directory / "success.png", dpi=100)
    markdown = [
        f"# Closed-loop success: {meta['task']}",
        "",
        f"Model `{meta['model']}` (learned DySta parts: {meta['learned_dysta']}), "
        f"{meta['execute_steps']} actions executed per chunk, "
        f"held-out seeds {meta['seeds'][0]}..{meta['seeds'][1]}.",
        "",
        "```",
        format_table(report),
        "```",
        "",
        "![success and step time](success.png)",
        "",
        "Failure reasons per strategy: "
        + "; ".join(f"{r['strategy']}: {r['reasons']}" for r in results),
    ]
    if command:
        markdown += ["", f"Command: `{command}`"]
    (directory / "report.md").write_text("\n".join(markdown) + "\n")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_argument(parser, default="checkpoints/reference")
    parser.add_argument("--vlm", default=None, metavar="DIR",
                        help="a LeRobot SmolVLA checkpoint's backbone config + tokenizer directory")
    parser.add_argument("--task", default="reach", help="sim task (reach, memory)")
    parser.add_argument("--episodes", type=int, default=20, help="held-out seeds per strategy")
    parser.add_argument("--seed-start", type=seed_value, default=HELD_OUT_SEED_START,
                        help="first held-out seed")
    add_strategies_argument(parser, extra_help="; `name@T` gives one its own history, e.g. full@2")
    parser.add_argument("--history", type=int, default=None, help="frames T (default: the checkpoint's)")
    parser.add_argument("--execute-steps", type=int, default=None,
                        help="actions executed per chunk (default: the checkpoint's frame stride, "
                             "a LeRobot checkpoint's n_action_steps)")
    parser.add_argument("--param", action="append", default=[], metavar="STRATEGY.KEY=VALUE",
                        help="strategy parameter override, repeatable (e.g. dysta.delta_l1=0.3)")
    add_runtime_arguments(parser)
    parser.add_argument("--report", default=None, type=output_folder,
                        help="directory for report.md, success.png, results.json")
    add_json_argument(parser)


def run(args: argparse.Namespace) -> int:
    report = evaluate(args.model, args.task, args.episodes, args.seed_start, args.strategies,
                      args.history, args.execute_steps, args.param, args.threads, vlm=args.vlm,
                      device=args.device, dtype=args.dtype, progress=not json_to_stdout(args))
    report["meta"]["command"] = command_line()
    if args.report:
        write_report(report, Path(args.report), command=report["meta"]["command"])
    if not json_to_stdout(args):
        print(format_table(report))
    write_json(args.json, report)
    return 0
