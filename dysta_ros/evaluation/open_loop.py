"""`dysta-ros eval`: open-loop replay of recorded episodes through every strategy, side by side.

Each observation of a bag is fed to one runtime per strategy in the same loop (the order
rotates per step so no strategy always runs first), so step times compare like with like.
Per strategy: action error against the recorded actions over the first k actions of each
chunk, deviation from `full` on the same steps (pruning error, apart from model error), step
time and speedup, tokens, and how often the static cache was rebuilt; and the metrics of
open_loop_metrics.py: error in task-critical windows, chunk-boundary discontinuity.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from dysta_ros.bags import TopicMap, load_episodes
from dysta_ros.bags.episodes import Episode, check_bag
from dysta_ros.errors import ConfigError, InferenceError, InputError
from dysta_ros.results import recache_rate, speedup
from dysta_ros.tokens import available_strategies
from dysta_ros.types import STAGES, StepStats
from dysta_ros.evaluation.open_loop_metrics import (
    CriticalWindows,
    chunk_boundaries,
    critical_events,
    window_errors,
    window_tags,
)

if TYPE_CHECKING:  # torch: imported to evaluate, so `dysta-ros eval --help` stays instant
    from dysta_ros.policy.runtime import PolicyRuntime

BASELINE = "full"


@dataclass
class EvalConfig:
    """What to evaluate, on which bags, and where the report goes."""

    bags: list[str]
    strategies: list[str] = field(default_factory=lambda: list(available_strategies()))
    model: str = "tiny"  # a preset name or a checkpoint directory
    vlm: str | None = None  # a SmolVLA checkpoint's backbone config + tokenizer directory
    topic_map: str = "sim_arm"  # bundled name or YAML path (config/bag_topics/)
    rate_hz: float = 0.0  # policy steps per second; 0: one per action (1 / the model's dt)
    first_k: int = 4  # actions of each chunk compared with the recording
    max_steps: int = 0  # per episode; 0: all
    device: str = "cpu"
    dtype: str = "float32"
    seed: int = 0
    report: str = "eval_report"
    params: dict[str, dict] = field(default_factory=dict)  # strategy -> overrides of its YAML
    threads: int = 0  # torch CPU threads; 0: torch's default
    time: str = "header"  # which clock places bag messages: header stamps or receive times
    window_s: float = 0.3  # task-critical windows: seconds either side of an event
    gripper_joint: str = "auto"  # the joint whose changes are events (auto: *gripper*; none)
    accel_quantile: float = 0.95  # accelerations above this quantile of an episode's are events

    def __post_init__(self):
        if not self.bags:
            raise ConfigError("bags: give at least one bag")
        known = available_strategies()
        if unknown := [s for s in self.strategies if s not in known]:
            raise ConfigError(f"strategies: unknown {unknown}; choose from {', '.join(known)}")
        if not self.strategies:
            raise ConfigError(f"strategies: give at least one of {', '.join(known)}")
        # `full` is the yardstick for deviation and speedup: always measured, always first.
        self.strategies = [BASELINE] + [s for s in dict.fromkeys(self.strategies) if s != BASELINE]
        if self.first_k < 1:
            raise ConfigError(f"first_k must be >= 1, got {self.first_k}")
        if self.rate_hz < 0 or self.max_steps < 0:
            raise ConfigError("rate_hz and max_steps must be >= 0 (0 means: the default)")
        CriticalWindows(self.window_s, self.gripper_joint, self.accel_quantile)  # validates

    @property
    def windows(self) -> CriticalWindows:
        """Return the task-critical window settings."""
        return CriticalWindows(self.window_s, self.gripper_joint, self.accel_quantile)


@dataclass
class StepRecord:
    """One strategy's step on one observation."""

    bag: str
    episode: int
    step: int
    time_s: float  # since the episode's first step
    actions: np.ndarray | None  # (H, D) predicted; None when the step failed
    targets: np.ndarray  # (k, D) recorded actions at the chunk's first k times (NaN: none)
    step_ms: float = 0.0
    stats: StepStats | None = None
    error: str = ""
    stamp: float = 0.0  # the chunk's stamp (bag time): action k is meant for stamp + k * dt
    dt: float = 0.0


def _check_compatible(runtime: PolicyRuntime, topic_map: TopicMap, episode: Episode) -> None:
    """Raise ConfigError when the bag cannot feed this model, before any step runs."""
    spec = runtime.spec
    if missing := [c for c in spec.camera_names if c not in topic_map.cameras]:
        raise ConfigError(f"the model needs cameras {spec.camera_names}; topic map "
                          f"{topic_map.source} has {sorted(topic_map.cameras)} (missing {missing})")
    if episode.states.shape[1] != spec.state_dim:
        raise ConfigError(f"{episode.source}: state has {episode.states.shape[1]} joints "
                          f"{list(episode.joints)}; the model's state_dim is {spec.state_dim}")
    if episode.action_values.shape[1] != spec.action_dim:
        raise ConfigError(f"{episode.source}: recorded actions have {episode.action_values.shape[1]} "
                          f"dimensions; the model's action_dim is {spec.action_dim}")


def bag_topic_map(config: EvalConfig) -> TopicMap:
    """The config's topic map, requiring only the cameras its model reads (known before it is built)."""
    from dysta_ros.info import model_camera_names

    return TopicMap.load(config.topic_map).for_cameras(model_camera_names(config.model))


def run_open_loop(config: EvalConfig, progress: bool = True) -> dict[str, list[StepRecord]]:
    """Step every strategy through every episode; return each strategy's step records."""
    topic_map = bag_topic_map(config)
    for bag in config.bags:  # seconds of model building are wasted on a bag that can't be used
        check_bag(bag, topic_map)
    records: dict[str, list[StepRecord]] = {name: [] for name in config.strategies}
    try:
        with tqdm(total=0, desc="eval", unit="step", disable=not progress) as bar:
            for bag in config.bags:
                for name, steps in evaluate_bag(config, bag, bar).items():
                    records[name] += steps
    finally:
        forget_models()  # a serial run over several checkpoints holds one model at a time
    return records


# Built runtimes per process, so a fleet worker loads each model once, not once per task.
_LOADED: dict[tuple, dict[str, PolicyRuntime]] = {}


def _model_key(config: EvalConfig) -> tuple:
    return (config.model, config.vlm, config.device, config.dtype, config.seed, config.threads,
            tuple(config.strategies), json.dumps(config.params, sort_keys=True))


def loaded_runtimes(config: EvalConfig) -> tuple[dict[str, PolicyRuntime], bool]:
    """Return (one runtime per strategy around the config's model, whether it was loaded now)."""
    from dysta_ros.policy.runtime import build_model, runtime_around, set_threads

    key = _model_key(config)
    if key in _LOADED:
        return _LOADED[key], False
    set_threads(config.threads)
    model, tokenizer = build_model(config.model, config.device, config.dtype, config.seed, vlm=config.vlm)
    _LOADED[key] = {name: runtime_around(model, name, config.params.get(name), seed=config.seed,
                                         tokenizer=tokenizer)
                    for name in config.strategies}
    return _LOADED[key], True


def forget_models() -> None:
    """Drop the models this process holds."""
    _LOADED.clear()


def evaluate_bag(config: EvalConfig, bag: str, bar: tqdm | None = None) -> dict[str, list[StepRecord]]:
    """Step every strategy through one bag's episodes with the config's model.

    Episodes depend on nothing before them (runtimes reset, noise seeded per step), so bags
    evaluated one by one, in any process, give the numbers of one run over all of them.
    """
    runtimes, loaded_now = loaded_runtimes(config)
    spec = runtimes[BASELINE].spec
    # a camera the model does not read is not needed in the bag
    topic_map = TopicMap.load(config.topic_map).for_cameras(spec.camera_names)
    rate_hz = config.rate_hz or 1.0 / spec.dt
    episodes = load_episodes(bag, topic_map, rate_hz, clock=config.time)
    for episode in episodes:
        _check_compatible(runtimes[BASELINE], topic_map, episode)
    steps = [min(len(e), config.max_steps or len(e)) for e in episodes]
    if loaded_now and episodes:
        _warm_up(runtimes, episodes[0].observation(0))

    records: dict[str, list[StepRecord]] = {name: [] for name in runtimes}
    names = list(runtimes)
    if bar is not None:
        bar.total += sum(steps) * len(names)
        bar.refresh()
    for episode, n_steps in zip(episodes, steps):
        for runtime in runtimes.values():
            runtime.reset()
        for step in range(n_steps):
            observation = episode.observation(step)
            for offset in range(len(names)):
                name = names[(step + offset) % len(names)]
                records[name].append(_step(runtimes[name], episode, step, observation,
                                           config.first_k))
                if bar is not None:
                    bar.update()
    return records


def _warm_up(runtimes: dict[str, PolicyRuntime], observation) -> None:
    """Run each strategy once so one-off costs (allocation, kernel selection) are not timed."""
    for runtime in runtimes.values():
        runtime.step(observation)
        runtime.reset()


def _step(runtime: PolicyRuntime, episode: Episode, step: int, observation, first_k: int) -> StepRecord:
    started = time.perf_counter()
    record = StepRecord(bag=episode.source, episode=episode.index, step=step,
                        time_s=float(episode.times[step] - episode.times[0]), actions=None,
                        targets=np.zeros((0, 0)))
    try:
        chunk, stats = runtime.step(observation)
    except (InputError, InferenceError) as exc:
        record.error = str(exc)
        return record
    record.step_ms = (time.perf_counter() - started) * 1e3
    record.actions, record.stats = chunk.actions, stats
    record.stamp, record.dt = float(chunk.stamp), float(chunk.dt)
    record.targets = episode.recorded_actions(chunk.stamp + np.arange(first_k) * chunk.dt)
    return record


def _errors(records: list[StepRecord], first_k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return per-step MSE (NaN where nothing to compare), all valid residuals (n, D), and counts.

    The counts: per step, the number of values its MSE is over.
    """
    per_step, residuals, compared = [], [], []
    for record in records:
        if record.actions is None:
            per_step.append(np.nan)
            compared.append(0)
            continue
        diff = record.actions[:first_k] - record.targets[: len(record.actions[:first_k])]
        diff = diff[np.isfinite(diff).all(axis=1)]
        per_step.append(float(np.mean(diff ** 2)) if len(diff) else np.nan)
        compared.append(diff.size)
        residuals.append(diff)
    stacked = np.concatenate(residuals) if residuals else np.zeros((0, 0))
    return np.asarray(per_step), stacked, np.asarray(compared)


def _deviation(records: list[StepRecord], baseline: list[StepRecord], first_k: int) -> np.ndarray:
    """Return residuals (n, D) of this strategy's first k actions against `full`'s, same steps."""
    diffs = [r.actions[:first_k] - b.actions[:first_k] for r, b in zip(records, baseline)
             if r.actions is not None and b.actions is not None]
    return np.concatenate(diffs) if diffs else np.zeros((0, 0))


def _moments(residuals: np.ndarray) -> dict:
    if not residuals.size:
        return {"mse": None, "mae": None, "mse_per_dim": [], "mae_per_dim": []}
    return {"mse": float(np.mean(residuals ** 2)), "mae": float(np.mean(np.abs(residuals))),
            "mse_per_dim": np.mean(residuals ** 2, axis=0).tolist(),
            "mae_per_dim": np.mean(np.abs(residuals), axis=0).tolist()}


def summarize(records: dict[str, list[StepRecord]], first_k: int) -> dict[str, dict]:
    """Return the per-strategy table: errors, deviation from full, time, tokens, recaching."""
    baseline_p50 = None  # `full` comes first (EvalConfig puts it there)
    summary = {}
    for name, steps in records.items():
        done = [r for r in steps if r.stats is not None]
        times = np.asarray([r.step_ms for r in done])
        _, residuals, _ = _errors(steps, first_k)
        episodes = {}
        for r in done:
            episodes.setdefault((r.bag, r.episode), []).append(r.stats)
        # an episode's first step that ran (step 0, unless it failed) builds the cache: count
        # only the rebuilds after it, per level as recache_rate does
        later = [stats for steps in episodes.values() for stats in steps[1:]]
        p50 = float(np.median(times)) if len(times) else None
        baseline_p50 = p50 if name == BASELINE else baseline_p50
        summary[name] = {
            "steps": len(steps), "failed_steps": len(steps) - len(done),
            "action_error": _moments(residuals),
            "deviation_from_full": _moments(_deviation(steps, records[BASELINE], first_k)),
            "step_ms": {"mean": float(times.mean()) if len(times) else None, "p50": p50,
                        "p90": float(np.percentile(times, 90)) if len(times) else None},
            "step_ms_p50": p50,
            "speedup": speedup(baseline_p50, p50),
            # medians: on a shared machine a few preempted steps would dominate a mean
            "stage_ms_p50": {s: float(np.median([r.stats.stage_ms.get(s, 0.0) for r in done]))
                              if done else None for s in STAGES},
            "context_tokens": _mean([r.stats.context_tokens for r in done]),
            "recomputed_tokens": _mean([r.stats.recomputed_tokens for r in done]),
            "flops_ratio": _mean([r.stats.flops_ratio for r in done]),
            "static_cache": any(r.stats.static_l1_tokens + r.stats.static_l2_tokens > 0 for r in done),
            "recache_rate": recache_rate(episodes.values()),
            "recache_rate_l1": _mean([float(s.recached_l1) for s in later]),
            "recache_rate_l2": _mean([float(s.recached_l2) for s in later]),
        }
    return summary


def _chunk_runs(records: list[StepRecord]) -> list[list[tuple[float, float, np.ndarray]]]:
    """Return consecutive predicted chunks per episode; a failed step ends a run."""
    runs, previous = [], None
    for record in records:
        key = (record.bag, record.episode, record.step - 1)
        if record.actions is None:
            previous = None
            continue
        if previous != key:
            runs.append([])
        runs[-1].append((record.stamp, record.dt, record.actions))
        previous = (record.bag, record.episode, record.step)
    return runs


def _critical_tags(baseline: list[StepRecord], joints, windows: CriticalWindows):
    """Return (per step of `baseline`, the kinds of event near it; the events found).

    Events come from the recorded actions at the steps' times (each step's first target), so
    they are found from the records alone, wherever the steps ran.
    """
    episodes: dict[tuple, list[int]] = {}
    for i, record in enumerate(baseline):
        episodes.setdefault((record.bag, record.episode), []).append(i)
    tags: list[tuple[str, ...]] = [()] * len(baseline)
    found = []
    for (bag, episode), indices in episodes.items():
        usable = [i for i in indices
                  if len(baseline[i].targets) and np.isfinite(baseline[i].targets[0]).all()]
        if not usable:
            continue
        times = np.asarray([baseline[i].time_s for i in usable])
        values = np.stack([baseline[i].targets[0] for i in usable])
        events = critical_events(times, values, joints, windows)
        found += [{"bag": bag, "episode": episode, "kind": kind, "time_s": round(t, 4)}
                  for kind, t in events]
        for i, tag in zip(indices, window_tags([baseline[i].time_s for i in indices], events,
                                               windows.window_s)):
            tags[i] = tag
    return tags, found


def add_window_and_boundary_metrics(results: dict, records: dict[str, list[StepRecord]],
                                    config: EvalConfig) -> dict:
    """Add the metrics of open_loop_metrics.py to evaluation results.

    Each strategy's summary gets its error in task-critical windows and its chunk-boundary
    discontinuity; the results get the events found and the per-joint plot's data.
    """
    tags, events = _critical_tags(records[BASELINE], results.get("joints") or (), config.windows)
    by_step = {(r.bag, r.episode, r.step): tag for r, tag in zip(records[BASELINE], tags)}
    for name, steps in records.items():
        per_step_mse, _, compared = _errors(steps, config.first_k)
        results["summary"][name]["critical_windows"] = window_errors(
            per_step_mse, [by_step.get((r.bag, r.episode, r.step), ()) for r in steps],
            config.window_s, compared)
        results["summary"][name]["chunk_boundary"] = chunk_boundaries(_chunk_runs(steps))
    results["critical_events"] = events
    results["joint_plot"] = joint_plot_data(records, config.first_k, by_step)
    return results


def joint_plot_data(records: dict[str, list[StepRecord]], first_k: int, tags: dict) -> dict:
    """Return the first episode's recorded and predicted actions, for the per-joint plot.

    Per strategy, each step's first k actions at their times (the step time is the
    inference point); the recorded action at each step time; the critical tags per step.
    """
    baseline = records[BASELINE]
    if not baseline:
        return {}
    first = (baseline[0].bag, baseline[0].episode)
    mine = [r for r in baseline if (r.bag, r.episode) == first]
    data = {"bag": first[0], "episode": first[1], "time_s": [r.time_s for r in mine],
            "recorded": [[float(x) if np.isfinite(x) else None for x in r.targets[0]]
                         if len(r.targets) else None for r in mine],
            "critical": [list(tags.get((r.bag, r.episode, r.step), ())) for r in mine],
            "strategies": {}}
    for name, steps in records.items():
        chosen = [r for r in steps if (r.bag, r.episode) == first and r.actions is not None]
        data["strategies"][name] = {
            "time_s": [r.time_s for r in chosen], "dt": chosen[0].dt if chosen else 0.0,
            "actions": [r.actions[:first_k].tolist() for r in chosen]}
    return data


def _mean(values) -> float | None:
    return float(np.mean(values)) if len(values) else None


def series(records: dict[str, list[StepRecord]], first_k: int) -> dict[str, dict]:
    """Return per-step series for plots and results.json."""
    out = {}
    for name, steps in records.items():
        per_step_mse, _, _ = _errors(steps, first_k)
        out[name] = {
            "episode": [r.episode for r in steps], "step": [r.step for r in steps],
            "time_s": [round(r.time_s, 4) for r in steps],
            "action_mse": [None if np.isnan(v) else float(v) for v in per_step_mse],
            "step_ms": [r.step_ms if r.stats else None for r in steps],
            "context_tokens": [r.stats.context_tokens if r.stats else None for r in steps],
            "recached_l1": [bool(r.stats and r.stats.recached_l1) for r in steps],
            "recached_l2": [bool(r.stats and r.stats.recached_l2) for r in steps],
            "errors": sorted({r.error for r in steps if r.error}),
        }
    return out


def evaluate(config: EvalConfig, progress: bool = True,
             records: dict[str, list[StepRecord]] | None = None, fleet: dict | None = None) -> dict:
    """Run the evaluation and write report.md, results.json and the PNG plots; return results.

    `records` evaluated elsewhere (a fleet's tasks, bag by bag) are reported as they are, with
    `fleet` (how the tasks ran) beside them.
    """
    from dysta_ros.evaluation.open_loop_report import write_report

    records = run_open_loop(config, progress) if records is None else records
    results = {"config": asdict(config), "summary": summarize(records, config.first_k),
               "series": series(records, config.first_k),
               "episodes": _episode_list(records[BASELINE]),
               "joints": list(TopicMap.load(config.topic_map).joints)}
    add_window_and_boundary_metrics(results, records, config)
    if fleet is not None:
        results["fleet"] = fleet
    write_report(Path(config.report), results)
    return results


def _episode_list(records: list[StepRecord]) -> list[dict]:
    seen = {}
    for r in records:
        seen.setdefault((r.bag, r.episode), 0)
        seen[(r.bag, r.episode)] += 1
    return [{"bag": bag, "episode": episode, "steps": n} for (bag, episode), n in seen.items()]
