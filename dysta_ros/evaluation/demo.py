"""`dysta-ros demo`: closed-loop episodes in MuJoCo over real ROS topics, with a report.

sim_node (the arm, its cameras and controllers), policy_node or the scripted expert, and
chunk_executor run in one process and talk over topics, as on a robot. Each episode is reset
through sim_node's services and ends on its /dysta/episode_outcome. Afterwards: a summary table,
and a report folder with summary.json, a plot of step latency / tokens in context / recache
events (from /dysta/token_stats) and a strip of what the main camera saw.

This module is the ROS-free part (arguments, records, report); the closed-loop episode runner
that runs the nodes, and the subcommand's `run`, is dysta_ros.nodes.demo_session, which
imports this one (never the other way round).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from dysta_ros.cli_options import (add_json_argument, add_model_argument, add_runtime_arguments,
                                   add_strategies_argument, output_folder, seed_value)
from dysta_ros.errors import ConfigError
from dysta_ros.plots import pyplot, save_png
from dysta_ros.results import recache_rate, result_document, speedup
from dysta_ros.sim.tasks import TASKS

EXPERT = "expert"
STRIP_FRAMES = 8  # frames per episode in the camera strip


@dataclass
class StepRecord:
    """One policy step as /dysta/token_stats reported it."""

    seconds: float  # since the episode started (wall clock of the demo)
    total_ms: float
    context_tokens: int
    recomputed_tokens: int
    recached_l1: bool
    recached_l2: bool


@dataclass
class EpisodeRecord:
    """One closed-loop episode: who drove, how it ended, what each policy step cost, what was seen."""

    policy: str
    strategy: str
    task: str
    seed: int
    success: bool = False
    reason: str = ""
    seconds: float = 0.0  # sim seconds until the outcome
    chunks: int = 0  # action chunks the executor received
    steps: list[StepRecord] = field(default_factory=list)
    frames: list[np.ndarray] = field(default_factory=list, repr=False)  # main camera, RGB

    @property
    def label(self) -> str:
        return self.policy if self.policy == EXPERT else f"{self.policy}/{self.strategy}"

    def summary(self) -> dict:
        data = {k: v for k, v in asdict(self).items() if k not in ("steps", "frames")}
        data["policy_steps"] = len(self.steps)
        data["step_ms"] = [round(s.total_ms, 3) for s in self.steps]
        return data


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add `dysta-ros demo` arguments."""
    add_model_argument(parser, default=[EXPERT, "tiny"], several=True)  # 'expert': scripted, privileged
    parser.add_argument("--vlm", default=None, metavar="DIR",
                        help="a LeRobot SmolVLA checkpoint's backbone config + tokenizer directory")
    add_strategies_argument(parser, default=["dysta"],
                            extra_help=" for learned policies; with `full` among them the table shows "
                                       "each one's speedup")
    parser.add_argument("--task", default="reach", choices=list(TASKS), help="task of every episode")
    parser.add_argument("--episodes", type=int, default=2, help="episodes per policy and strategy")
    parser.add_argument("--seed", type=seed_value, default=100, help="seed of the first episode (then +1)")
    parser.add_argument("--episode-seconds", type=float, default=0.0,
                        help="time limit of an episode (0: the task's own)")
    parser.add_argument("--image-size", type=int, default=128, help="camera images are SIZE x SIZE px")
    parser.add_argument("--report", default="reports/demo", type=output_folder,
                        help="folder for the report (created)")
    add_runtime_arguments(parser)  # of learned policies; the sim renders on the same CPU
    add_json_argument(parser)


def policies(args: argparse.Namespace) -> list[str]:
    """Return who drives, in turn: --model's list ('expert', presets, checkpoint directories)."""
    return list(args.model)


def check_arguments(args: argparse.Namespace) -> None:
    """Raise ConfigError naming the argument when one is not usable."""
    from dysta_ros.policy.config import PRESETS
    from dysta_ros.tokens import available_strategies

    for policy in policies(args):
        if policy != EXPERT and policy not in PRESETS and not Path(policy).is_dir():
            raise ConfigError(f"--model {policy!r}: not 'expert', a preset ({', '.join(PRESETS)}) "
                              "or an existing checkpoint directory")
    if unknown := [s for s in args.strategies if s not in available_strategies()]:
        raise ConfigError(f"--strategies: unknown {unknown}; choose from {', '.join(available_strategies())}")
    if args.episodes < 1:
        raise ConfigError(f"--episodes must be >= 1, got {args.episodes}")
    if not 0 <= args.episode_seconds < float("inf"):  # NaN and inf reach sim_node's reset otherwise
        raise ConfigError(f"--episode-seconds must be >= 0 and finite, got {args.episode_seconds}")
    if not 16 <= args.image_size <= 1024:
        raise ConfigError(f"--image-size must be in 16..1024, got {args.image_size}")


def plan(args: argparse.Namespace) -> list[tuple[str, str, int]]:
    """Return the episodes to run as (policy, strategy, seed); each combination sees the same seeds."""
    runs = []
    for policy in policies(args):
        for strategy in ([EXPERT] if policy == EXPERT else args.strategies):
            runs += [(policy, strategy, args.seed + i) for i in range(args.episodes)]
    return runs


# --- the report ---------------------------------------------------------------------------------
def summary_rows(episodes: list[EpisodeRecord]) -> list[dict]:
    """Return one row per policy/strategy: success, time, step p50, speedup vs full, tokens."""
    groups: dict[str, list[EpisodeRecord]] = {}
    for episode in episodes:
        groups.setdefault(episode.label, []).append(episode)
    rows = []
    for label, group in groups.items():
        step_ms = [s.total_ms for e in group for s in e.steps]
        tokens = [s.context_tokens for e in group for s in e.steps]
        rows.append({"policy": label, "task": group[0].task, "episodes": len(group),
                     "success": sum(e.success for e in group) / len(group),
                     "seconds": float(np.mean([e.seconds for e in group])),
                     "policy_steps": float(np.mean([len(e.steps) for e in group])),
                     "step_ms_p50": float(np.median(step_ms)) if step_ms else None,
                     "context_tokens": float(np.mean(tokens)) if tokens else None,
                     "recaches": sum(s.recached_l1 or s.recached_l2 for e in group for s in e.steps),
                     "recache_rate": recache_rate(e.steps for e in group)})
    for row in rows:  # speedup of each learned strategy over `full` of the same policy, same run
        policy = row["policy"].rsplit("/", 1)[0]  # labels are <policy>/<strategy>; policies may be paths
        full = next((r for r in rows if r["policy"] == f"{policy}/full"), None)
        row["speedup"] = speedup(full and full["step_ms_p50"], row["step_ms_p50"])
    return rows


def format_table(rows: list[dict]) -> str:
    """Return the summary as an aligned text table."""
    def cell(value, fmt):
        return "-" if value is None else format(value, fmt)

    header = ["policy", "task", "episodes", "success", "sim s", "steps", "step p50 ms", "speedup", "tokens",
              "recaches"]
    lines = [[r["policy"], r["task"], str(r["episodes"]), f"{100 * r['success']:.0f} %",
              cell(r["seconds"], ".1f"),
              cell(r["policy_steps"], ".1f"), cell(r["step_ms_p50"], ".1f"),
              cell(r["speedup"], ".2f") + ("x" if r["speedup"] else ""),
              cell(r["context_tokens"], ".0f"), str(r["recaches"])] for r in rows]
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    out.append("  ".join("-" * w for w in widths))
    out += ["  ".join(c.ljust(w) for c, w in zip(line, widths)) for line in lines]
    return "\n".join(out)


def plot_steps(episodes: list[EpisodeRecord], path: Path) -> None:
    """Plot step latency, tokens in context and recache events over each episode's time."""
    plt = pyplot()

    fig, axes = plt.subplots(3, 1, figsize=(9, 7), sharex=True)
    names = []
    for episode in episodes:
        if not episode.steps:
            continue
        t = [s.seconds for s in episode.steps]
        name = f"{episode.label} seed {episode.seed}"
        (line,) = axes[0].plot(t, [s.total_ms for s in episode.steps], marker=".", label=name)
        axes[1].plot(t, [s.context_tokens for s in episode.steps], marker=".", color=line.get_color())
        for level, offset in (("recached_l1", 0.2), ("recached_l2", -0.2)):  # L1 above, L2 below
            events = [s.seconds for s in episode.steps if getattr(s, level)]
            axes[2].eventplot([events], lineoffsets=len(names) + offset, linelengths=0.35,
                              colors=[line.get_color()])
        names.append(name)
    axes[0].set_ylabel("step latency (ms)")
    axes[1].set_ylabel("tokens in context")
    axes[2].set_ylabel("recache events\n(L1 upper, L2 lower)")
    axes[2].set_yticks(range(len(names)), names, fontsize=7)
    axes[2].set_ylim(-0.6, max(len(names), 1) - 0.4)
    axes[2].set_xlabel("seconds since the episode started")
    if any(e.steps for e in episodes):
        axes[0].legend(fontsize=7, loc="upper right")
    else:
        axes[0].text(0.5, 0.5, "no policy steps (the scripted expert publishes no TokenStats)",
                     ha="center", va="center", transform=axes[0].transAxes)
    fig.suptitle("policy steps from /dysta/token_stats")
    save_png(fig, path, dpi=110)


def camera_strip(episodes: list[EpisodeRecord], path: Path) -> None:
    """Save one row per episode of evenly spaced main-camera frames, labelled with the outcome."""
    plt = pyplot()

    shown = [e for e in episodes if e.frames]
    if not shown:
        return
    fig, axes = plt.subplots(len(shown), STRIP_FRAMES, figsize=(1.6 * STRIP_FRAMES, 1.8 * len(shown)),
                             squeeze=False)
    for row, episode in zip(axes, shown):
        picks = np.linspace(0, len(episode.frames) - 1, STRIP_FRAMES).round().astype(int)
        for ax, index in zip(row, picks):
            ax.imshow(episode.frames[index])
            ax.set_xticks([])
            ax.set_yticks([])
        verdict = "success" if episode.success else episode.reason
        row[0].set_ylabel(f"{episode.label}\nseed {episode.seed}\n{verdict}", fontsize=7)
    fig.suptitle("what the main camera saw (left to right: start to end of each episode)")
    save_png(fig, path, dpi=110)


def summary_document(episodes: list[EpisodeRecord], meta: dict | None = None) -> dict:
    """The demo's result: a run per policy/strategy, the episodes themselves in meta."""
    return result_document(summary_rows(episodes),
                           {**(meta or {}), "episodes": [e.summary() for e in episodes]})


def write_report(episodes: list[EpisodeRecord], folder: Path) -> dict[str, Path]:
    """Write summary.json, steps.png and camera.png into `folder`; return their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"summary": folder / "summary.json", "steps": folder / "steps.png",
             "camera": folder / "camera.png"}
    paths["summary"].write_text(json.dumps(summary_document(episodes), indent=2))
    plot_steps(episodes, paths["steps"])
    camera_strip(episodes, paths["camera"])
    return paths
