"""The open-loop evaluation's report: report.md (tables), results.json and PNG plots."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from dysta_ros.plots import pyplot, save_png
from dysta_ros.results import result_document
from dysta_ros.types import STAGES

PLOTS = {"latency": "latency.png", "error": "error_over_time.png", "recache": "recache_events.png",
         "joints": "joint_actions.png"}


def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def summary_table(summary: dict[str, dict]) -> str:
    """Return the per-strategy table in Markdown."""
    lines = ["| strategy | steps | action MSE | action MAE | dev. from full (MSE) | step p50 ms | "
             "speedup | context tokens | recomputed | FLOPs vs full | recache rate |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, s in summary.items():
        recache = _fmt(s["recache_rate"], 3) if s["static_cache"] else "n/a"
        lines.append(
            f"| {name} | {s['steps'] - s['failed_steps']}/{s['steps']} | "
            f"{_fmt(s['action_error']['mse'])} | {_fmt(s['action_error']['mae'])} | "
            f"{_fmt(s['deviation_from_full']['mse'])} | {_fmt(s['step_ms']['p50'], 3)} | "
            f"{_fmt(s['speedup'], 3)}x | {_fmt(s['context_tokens'], 4)} | "
            f"{_fmt(s['recomputed_tokens'], 4)} | {_fmt(s['flops_ratio'], 3)} | {recache} |")
    return "\n".join(lines)


def _per_dim_table(summary: dict[str, dict], key: str, joints: list[str]) -> str:
    dims = max(len(s[key]["mse_per_dim"]) for s in summary.values())
    names = joints if len(joints) == dims else [f"dim {d}" for d in range(dims)]
    lines = ["| strategy | " + " | ".join(names) + " |", "|---" * (dims + 1) + "|"]
    for name, s in summary.items():
        values = s[key]["mse_per_dim"] or [None] * dims
        lines.append(f"| {name} | " + " | ".join(_fmt(v, 3) for v in values) + " |")
    return "\n".join(lines)


def _stage_table(summary: dict[str, dict]) -> str:
    lines = ["| strategy | " + " | ".join(STAGES) + " |", "|---" * (len(STAGES) + 1) + "|"]
    for name, s in summary.items():
        lines.append(f"| {name} | " + " | ".join(_fmt(s["stage_ms_p50"][st], 3) for st in STAGES) + " |")
    return "\n".join(lines)


def _critical_table(summary: dict[str, dict]) -> str:
    lines = ["| strategy | steps in windows | MSE in windows | gripper | acceleration | elsewhere | "
             "in / elsewhere |", "|---|---|---|---|---|---|---|"]
    for name, s in summary.items():
        w = s["critical_windows"]
        lines.append(f"| {name} | {w['steps']['critical']} | {_fmt(w['mse']['critical'])} | "
                     f"{_fmt(w['mse']['gripper'])} | {_fmt(w['mse']['acceleration'])} | "
                     f"{_fmt(w['mse']['elsewhere'])} | {_fmt(w['critical_over_elsewhere'], 3)} |")
    return "\n".join(lines)


def _boundary_table(summary: dict[str, dict]) -> str:
    lines = ["| strategy | boundaries | jump mean | jump p90 | jump max | overlap RMSE |",
             "|---|---|---|---|---|---|"]
    for name, s in summary.items():
        b = s["chunk_boundary"]
        lines.append(f"| {name} | {b['boundaries']} | {_fmt(b['jump_mean'])} | "
                     f"{_fmt(b['jump_p90'])} | {_fmt(b['jump_max'])} | "
                     f"{_fmt(b['overlap_rmse_mean'])} |")
    return "\n".join(lines)


def _plot_joints(results: dict, path: Path) -> None:
    """Plot recorded vs predicted actions per joint for the first episode, as GR00T's eval does.

    Each chunk's first k actions are drawn from its inference point (a dot); task-critical
    steps are shaded.
    """
    data = results.get("joint_plot") or {}
    recorded = [v for v in data.get("recorded", []) if v]
    dims = max((len(v) for v in recorded), default=0)
    plt = pyplot()
    if not dims:
        fig, ax = plt.subplots(figsize=(6, 2))
        ax.text(0.5, 0.5, "no step to plot", ha="center", va="center")
        save_png(fig, path, dpi=100)
        return
    joints = results.get("joints") or []
    names = joints if len(joints) == dims else [f"dim {d}" for d in range(dims)]
    columns = 1 if dims <= 8 else 2
    rows = -(-dims // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(11 * columns, 1.9 * rows + 1),
                             squeeze=False, sharex=True)
    times = np.asarray(data["time_s"])
    truth = np.asarray([v or [None] * dims for v in data["recorded"]], dtype=float)  # None: NaN
    period = float(np.median(np.diff(times))) if len(times) > 1 else 0.1
    colours = pyplot().rcParams["axes.prop_cycle"].by_key()["color"]
    for d in range(dims):
        ax = axes[d % rows, d // rows]
        for t, tags in zip(times, data["critical"]):
            if tags:
                ax.axvspan(t - period / 2, t + period / 2, color="tab:red", alpha=0.08, linewidth=0)
        ax.plot(times, truth[:, d], color="black", linewidth=1.6, label="recorded")
        for i, (name, strategy) in enumerate(data["strategies"].items()):
            colour = colours[i % len(colours)]
            for j, (t, chunk) in enumerate(zip(strategy["time_s"], strategy["actions"])):
                chunk = np.asarray(chunk)
                ax.plot(t + np.arange(len(chunk)) * strategy["dt"], chunk[:, d], color=colour,
                        linewidth=0.9, alpha=0.8, label=name if j == 0 else None)
            starts = np.asarray([np.asarray(c)[0, d] for c in strategy["actions"]])
            ax.scatter(strategy["time_s"], starts, color=colour, s=10, zorder=3,
                       label=f"{name} inference points" if d == 0 else None)
        ax.set_ylabel(names[d], fontsize=8)
    for ax in axes[-1]:
        ax.set_xlabel("seconds into the episode")
    axes[0, 0].legend(fontsize=7, loc="upper right")
    axes[0, 0].set_title(f"{data['bag']} episode {data['episode']}: recorded vs predicted "
                         f"actions per joint (dots: inference points; shaded: task-critical)")
    save_png(fig, path, dpi=90)


def _plot_latency(results: dict, path: Path) -> None:
    names = list(results["series"])
    times = [[t for t in results["series"][n]["step_ms"] if t is not None] for n in names]
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.boxplot(times, showfliers=False)
    left.set_xticks(range(1, len(names) + 1), names, rotation=20)
    left.set_ylabel("step time (ms)")
    left.set_title("step time per strategy (same frames, same run)")
    bottom = np.zeros(len(names))
    for stage in STAGES[:-1]:  # stacked stages; `total` is their sum
        values = np.asarray([results["summary"][n]["stage_ms_p50"][stage] or 0.0 for n in names])
        right.bar(names, values, bottom=bottom, label=stage)
        bottom += values
    right.set_ylabel("median ms per step")
    right.set_title("where the time goes")
    right.tick_params(axis="x", rotation=20)
    right.legend(fontsize=8)
    save_png(fig, path, dpi=100)


def _episode_starts(series: dict) -> list[int]:
    episodes = series["episode"]
    return [i for i in range(1, len(episodes)) if series["step"][i] == 0]


def _plot_error(results: dict, path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(11, 4))
    for name, s in results["series"].items():
        values = [np.nan if v is None else v for v in s["action_mse"]]
        ax.plot(values, label=name, linewidth=1.2)
    for start in _episode_starts(next(iter(results["series"].values()))):
        ax.axvline(start, color="grey", linestyle=":", linewidth=0.8)
    ax.set_xlabel("policy step (dotted: a new episode)")
    ax.set_ylabel(f"MSE of the first {results['config']['first_k']} actions vs recorded")
    ax.set_title("action error over time")
    ax.legend(fontsize=8)
    save_png(fig, path, dpi=100)


def _plot_recache(results: dict, path: Path) -> None:
    cached = [n for n, s in results["summary"].items() if s["static_cache"]] or list(results["series"])
    plt = pyplot()
    fig, axes = plt.subplots(len(cached), 1, figsize=(11, 1.8 + 1.4 * len(cached)), squeeze=False)
    for ax, name in zip(axes[:, 0], cached):
        s = results["series"][name]
        tokens = [np.nan if v is None else v for v in s["context_tokens"]]
        ax.plot(tokens, color="tab:blue", linewidth=1.0, label="context tokens")
        for level, colour in (("recached_l1", "tab:red"), ("recached_l2", "tab:orange")):
            steps = [i for i, fired in enumerate(s[level]) if fired]
            ax.scatter(steps, [np.nanmax(tokens) if tokens else 0] * len(steps), marker="v",
                       color=colour, label=f"{level.split('_')[1].upper()} recache", zorder=3)
        for start in _episode_starts(s):
            ax.axvline(start, color="grey", linestyle=":", linewidth=0.8)
        ax.set_ylabel(name)
        ax.legend(fontsize=7, loc="lower right")
    axes[-1, 0].set_xlabel("policy step (dotted: a new episode)")
    axes[0, 0].set_title("static-cache rebuilds along the episodes, and tokens in context")
    save_png(fig, path, dpi=100)


def results_document(results: dict) -> dict:
    """results.json of one checkpoint in the one shape (results.py).

    One run per strategy: `model`, `strategy`, the summary's fields (as `eval --json` gives them)
    and `series` (per step: episode, step, time_s, action_mse, step_ms, context_tokens,
    recached_l1/l2, errors). `meta`: the evaluation's settings (EvalConfig), the `episodes`, the
    `joints`, the `critical_events`, the first episode's `joint_plot` data and the `fleet` log.
    """
    config = results["config"]
    runs = [{"model": config["model"], "strategy": name, **summary, "series": results["series"][name]}
            for name, summary in results["summary"].items()]
    extra = ("episodes", "joints", "critical_events", "joint_plot", "fleet")
    return result_document(runs, {**config, **{key: results[key] for key in extra if key in results}})


def write_report(directory: Path, results: dict) -> None:
    """Write report.md, results.json and the PNG plots into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "results.json").write_text(json.dumps(results_document(results), indent=1))
    _plot_latency(results, directory / PLOTS["latency"])
    _plot_error(results, directory / PLOTS["error"])
    _plot_recache(results, directory / PLOTS["recache"])
    _plot_joints(results, directory / PLOTS["joints"])
    config, summary = results["config"], results["summary"]
    episodes = results["episodes"]
    joints = results.get("joints", [])
    text = [
        "# Open-loop evaluation",
        "",
        f"Model `{config['model']}` on {len(episodes)} episode(s) from {len(config['bags'])} bag(s), "
        f"{config['device']} {config['dtype']}. Every strategy stepped through the same observations "
        "in one run (order rotated per step), so step times and speedups compare like with like.",
        "",
        "- **action MSE / MAE**: first "
        f"{config['first_k']} actions of each chunk against the recorded actions at the same times.",
        "- **dev. from full**: the same actions against `full`'s on the same step: the error a "
        "strategy adds, apart from the model's own.",
        "- **recache rate**: share of steps after an episode's first that rebuilt a static cache "
        "(n/a: the strategy keeps none).",
        "",
        "## Strategies",
        "",
        summary_table(summary),
        "",
        "## Action error per dimension (MSE)",
        "",
        _per_dim_table(summary, "action_error", joints),
        "",
        "## Deviation from `full` per dimension (MSE)",
        "",
        _per_dim_table(summary, "deviation_from_full", joints),
        "",
        "## Task-critical windows (action MSE)",
        "",
        f"Steps within {config.get('window_s', 0.3)} s of a gripper change or of a large "
        "acceleration of the recorded actions (above the episode's "
        f"{config.get('accel_quantile', 0.95)} quantile): where tasks are won or lost. "
        f"{len(results.get('critical_events', []))} event(s) found.",
        "",
        _critical_table(summary),
        "",
        "## Chunk boundaries",
        "",
        "Between consecutive chunks: the jump (L2) from the old chunk's action to the new "
        "chunk's first action for the same instant, and the RMS difference over every instant "
        "both chunks plan for.",
        "",
        _boundary_table(summary),
        "",
        "## Median milliseconds per stage",
        "",
        _stage_table(summary),
        "",
        "## Plots",
        "",
        f"![latency]({PLOTS['latency']})",
        "",
        f"![error over time]({PLOTS['error']})",
        "",
        f"![recache events]({PLOTS['recache']})",
        "",
        f"![actions per joint]({PLOTS['joints']})",
        "",
        "## Episodes",
        "",
        "| bag | episode | steps |",
        "|---|---|---|",
        *[f"| {e['bag']} | {e['episode']} | {e['steps']} |" for e in episodes],
        "",
    ]
    failures = {n: s["errors"] for n, s in results["series"].items() if s["errors"]}
    if failures:
        text += ["## Failed steps", ""] + [f"- {n}: {'; '.join(e)}" for n, e in failures.items()] + [""]
    (directory / "report.md").write_text("\n".join(text) + fleet_section(results.get("fleet")))


def fleet_section(fleet: dict | None, always: bool = False) -> str:
    """Return the report's section on how the tasks ran: only when on Ray or something went wrong."""
    if not fleet or not (always or fleet["engine"] != "serial" or fleet["retried"] or fleet["failed"]):
        return ""
    text = ["", "## Tasks", "",
            f"{fleet['tasks']} task(s) (one per bag and checkpoint) on {fleet['engine']}"
            f"{' at ' + fleet['address'] if fleet['address'] else ''}: {len(fleet['workers'])} worker "
            f"process(es), {fleet['model_loads']} model load(s), {fleet['seconds']:.1f} s.", ""]
    if fleet["retried"]:
        text += ["Retried (the worker died):", ""] + [
            f"- {r['bag']} / `{r['checkpoint']}`, attempt {r['attempt']}: {r['error']}"
            for r in fleet["retried"]] + [""]
    if fleet["failed"]:
        text += ["**Failed: these bags have no results**", ""] + [
            f"- {r['bag']} / `{r['checkpoint']}`: {r['error']}" for r in fleet["failed"]] + [""]
    return "\n".join(text) + "\n"
