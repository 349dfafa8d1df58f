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
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from dysta_ros.errors import ConfigError
from dysta_ros.plots import pyplot, save_png
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
    backbone_ms: float = 0.0
    speedup: float = float("nan")  # full's step_ms / this step_ms, same run
    flops_ratio: float = 1.0  # backbone FLOPs relative to full on the same history
    context_tokens: float = 0.0
    recache_rate: float = 0.0  # share of steps that refreshed the static L1 cache
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
        result.backbone_ms = float(np.mean([s.stage_ms["backbone"] for s in stats]))
        result.flops_ratio = float(np.mean([s.flops_ratio for s in stats]))
        result.context_tokens = float(np.mean([s.context_tokens for s in stats]))
        result.recache_rate = float(np.mean([s.recached_l1 for s in stats]))
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
    set_threads(threads)
    trained = {}
    if Path(model).is_dir() and family_of(model) == "dysta_vla":
        trained = read_config(model)[1].get("training", {})
    vla, tokenizer = build_model(model, vlm=vlm)
    # a LeRobot checkpoint says how many of a chunk's actions it executes (n_action_steps)
    n_action_steps = getattr(getattr(vla, "spec", None), "n_action_steps", None)
    execute_steps = int(execute_steps or trained.get("frame_stride") or n_action_steps or 4)
    params = parse_param_overrides(param_overrides or [], sorted({name for name, _ in specs.values()}))
    runtimes = {spec: runtime_around(vla, name, params[name], spec_history or history, tokenizer=tokenizer)
                for spec, (name, spec_history) in specs.items()}
    env = SimEnv()
    runs: dict[str, list[Episode]] = {spec: [] for spec in specs}
    try:
        seeds = range(seed_start, seed_start + episodes)
        for seed in tqdm(seeds, desc=f"closed loop {task}", unit="seed"):
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
            result.speedup = baseline.step_ms / result.step_ms if result.step_ms > 0 else float("nan")
    return {
        "model": str(model),
        "task": task,
        "seeds": [seed_start, seed_start + episodes - 1],
        "history": runtimes[strategies[0]].spec.history,  # of the first row; each row has its own
        "execute_steps": execute_steps,
        "learned_dysta": bool(getattr(vla, "has_learned_dysta", False)),
        "results": [asdict(r) for r in results],
    }


def speedup_text(speedup: float | None) -> str:
    """Return '1.23x', or '-' where there is no `full` in the run to compare with."""
    return "-" if speedup is None or math.isnan(speedup) else f"{speedup:.2f}x"


def format_table(report: dict) -> str:
    """A plain-text table of the results, one row per strategy."""
    header = (f"{'strategy':<18}{'T':>3}{'success':>12}{'step ms':>10}{'speedup':>9}"
              f"{'FLOPs':>8}{'context':>9}{'recache':>9}")
    lines = [f"{report['task']}: seeds {report['seeds'][0]}..{report['seeds'][1]}, "
             f"{report['execute_steps']} steps per chunk", header]
    for r in report["results"]:
        lines.append(
            f"{r['strategy']:<18}{r['history']:>3}{r['successes']:>5}/{r['episodes']:<3}"
            f"{100 * r['success_rate']:>3.0f}%"
            f"{r['step_ms']:>10.1f}{speedup_text(r['speedup']):>9}{r['flops_ratio']:>8.2f}"
            f"{r['context_tokens']:>9.0f}{r['recache_rate']:>9.2f}")
    return "\n".join(lines)


def json_safe(value):
    """Replace NaN (no successes, no `full` to compare with) by null: strict JSON has no NaN."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return value


def write_report(report: dict, directory: Path, command: str = "") -> None:
    """results.json, success.png and report.md in directory."""
    plt = pyplot()

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "results.json").write_text(json.dumps(json_safe(report), indent=2))
    results = report["results"]
    names = [r["strategy"] for r in results]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.bar(names, [100 * r["success_rate"] for r in results],
             yerr=[100 * r["success_stderr"] for r in results], capsize=4, color="tab:green")
    left.set_ylabel("success rate (%)")
    left.set_ylim(0, 105)
    left.set_title(f"{report['task']}: {results[0]['episodes']} held-out seeds")
    right.bar(names, [r["step_ms"] for r in results], color="tab:blue")
    for i, r in enumerate(results):
        if not math.isnan(r["speedup"]):
            right.text(i, r["step_ms"], f"{r['speedup']:.2f}x", ha="center", va="bottom")
    right.set_ylabel("policy step (ms)")
    right.set_title("step time, same run (speedup vs full)")
    for ax in (left, right):
        ax.tick_params(axis="x", rotation=20)
    save_png(fig, directory / "success.png", dpi=100)
    markdown = [
        f"# Closed-loop success: {report['task']}",
        "",
        f"Model `{report['model']}` (learned DySta parts: {report['learned_dysta']}), "
        f"{report['execute_steps']} actions executed per chunk, "
        f"held-out seeds {report['seeds'][0]}..{report['seeds'][1]}.",
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
    parser.add_argument("--model", default="checkpoints/reference", help="checkpoint dir or preset")
    parser.add_argument("--vlm", default=None, metavar="DIR",
                        help="a LeRobot SmolVLA checkpoint's backbone config + tokenizer directory")
    parser.add_argument("--task", default="reach", help="sim task (reach, memory)")
    parser.add_argument("--episodes", type=int, default=20, help="held-out seeds per strategy")
    parser.add_argument("--seed-start", type=int, default=HELD_OUT_SEED_START, help="first held-out seed")
    parser.add_argument("--strategies", default=",".join(available_strategies()),
                        help="comma-separated strategies; `name@T` gives one its own history, e.g. full@2")
    parser.add_argument("--history", type=int, default=None, help="frames T (default: the checkpoint's)")
    parser.add_argument("--execute-steps", type=int, default=None,
                        help="actions executed per chunk (default: the checkpoint's frame stride, "
                             "a LeRobot checkpoint's n_action_steps)")
    parser.add_argument("--param", action="append", default=[], metavar="STRATEGY.KEY=VALUE",
                        help="strategy parameter override, repeatable (e.g. dysta.delta_l1=0.3)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (more than the free cores makes every step much slower)")
    parser.add_argument("--report", default=None, help="directory for report.md, success.png, results.json")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")


def run(args: argparse.Namespace) -> int:
    report = evaluate(args.model, args.task, args.episodes, args.seed_start,
                      [s for s in args.strategies.split(",") if s], args.history, args.execute_steps,
                      args.param, args.threads, vlm=args.vlm)
    if args.report:
        write_report(report, Path(args.report), command=" ".join(["dysta-ros", *sys.argv[1:]]))
    print(json.dumps(json_safe(report), indent=2) if args.json else format_table(report))
    return 0
