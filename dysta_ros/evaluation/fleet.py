"""`dysta-ros eval` over many bags x checkpoints, serially or on Ray (`--ray`).

One Ray task per (bag, checkpoint) runs every strategy side by side on that bag, exactly as a
serial run does, so speedups stay ratios measured in one process. Each worker process keeps
the models it has built (open_loop.loaded_runtimes), so a model is loaded once per worker, not
once per task. Tasks are retried here, not by Ray, so that every retry is counted and reported:
a worker that dies (killed, out of memory, its node lost) is retried up to `retries` times; a
task whose own code failed (a bad bag) is not, it would fail again. Either kind of failure is
listed in the report and makes the exit status non-zero; nothing is dropped silently.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from tqdm import tqdm

from dysta_ros.bags import find_bags
from dysta_ros.cli_options import (add_json_argument, add_model_argument, add_runtime_arguments,
                                   add_strategies_argument, json_to_stdout, seed_value, write_json)
from dysta_ros.bags.episodes import check_bag
from dysta_ros.errors import BagError, CheckpointError, ConfigError, DystaError, exit_status
from dysta_ros.evaluation.open_loop import (
    BASELINE,
    EvalConfig,
    StepRecord,
    bag_topic_map,
    evaluate,
    evaluate_bag,
    loaded_runtimes,
    run_open_loop,
)
from dysta_ros.results import command_line, result_document
from dysta_ros.tokens import parse_param_overrides

log = logging.getLogger(__name__)

# a hook run in the worker before a task's work: (bag, checkpoint) -> None; tests use it to kill one
TaskHook = Callable[[str, str], None]


@dataclass
class FleetLog:
    """What happened to the tasks: where they ran, what was retried, what failed."""

    engine: str = "serial"
    address: str | None = None
    tasks: int = 0
    workers: list[int] = field(default_factory=list)  # process ids that ran a task
    model_loads: int = 0  # models built over all workers (once per worker and checkpoint)
    retried: list[dict] = field(default_factory=list)  # one entry per attempt that a worker died in
    failed: list[dict] = field(default_factory=list)  # tasks given up: their bag has no records
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return {"engine": self.engine, "address": self.address, "tasks": self.tasks,
                "workers": sorted(set(self.workers)), "model_loads": self.model_loads,
                "retried": self.retried, "failed": self.failed, "seconds": round(self.seconds, 3)}


def checkpoint_labels(models: list[str]) -> list[str]:
    """Return a directory name per checkpoint (its folder name or preset), unique."""
    labels: list[str] = []
    for model in models:
        base = Path(model).name or "checkpoint"
        label, n = base, 2
        while label in labels:
            label, n = f"{base}_{n}", n + 1
        labels.append(label)
    return labels


def configs_for(config: EvalConfig, models: list[str]) -> list[EvalConfig]:
    """One config per checkpoint; with several, each reports into its own subdirectory."""
    if not models:
        raise ConfigError("checkpoint: give at least one")
    if len(models) == 1:
        return [replace(config, model=models[0])]
    return [replace(config, model=model, report=str(Path(config.report) / label))
            for model, label in zip(models, checkpoint_labels(models))]


def _bag_task(config: EvalConfig, bag: str, before_task: TaskHook | None) -> dict:
    """One (bag, checkpoint): every strategy on the bag; runs in a Ray worker."""
    if before_task is not None:
        before_task(bag, config.model)
    _, loaded_now = loaded_runtimes(config)
    return {"records": evaluate_bag(config, bag), "pid": os.getpid(), "loaded_model": loaded_now}


def _ray():
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage report leaves the machine
    try:
        import ray
    except ModuleNotFoundError as exc:
        raise ConfigError("--ray needs Ray: pip install 'dysta_ros[fleet]' (or ray==2.58.0)") from exc
    return ray


def init_ray(address: str | None, num_cpus: int | None) -> bool:
    """Connect to Ray (a local instance when address is None); return whether we started it."""
    ray = _ray()
    if ray.is_initialized():
        return False
    try:
        if address:
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
        else:  # loopback only, no dashboard: a local pool of worker processes
            ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=False,
                     _node_ip_address="127.0.0.1", logging_level=logging.WARNING, log_to_driver=False)
    # a bad address is a ValueError, an unreachable one a ConnectionError or (after Ray's own
    # timeout) its sys.exit: one line naming the address, not a traceback or a bare exit status
    except (ValueError, ConnectionError, RuntimeError, SystemExit) as exc:
        ray.shutdown()
        where = f"at {address}" if address else "locally"
        raise ConfigError(f"--ray: could not start or reach Ray {where}: "
                          f"{type(exc).__name__}: {str(exc).strip() or 'no reason given'}") from None
    return True


def _check_feasible(ray, cpus: int) -> None:
    """Refuse tasks no node can run: Ray queues an infeasible task forever (eval hung)."""
    largest = max((node["Resources"].get("CPU", 0.0) for node in ray.nodes() if node.get("Alive")),
                  default=0.0)
    if cpus > largest:
        raise ConfigError(f"--threads {cpus}: each Ray task asks for {cpus} CPUs but no Ray node has "
                          f"more than {largest:g} (--ray-cpus); lower --threads or raise --ray-cpus")


def run_on_ray(configs: list[EvalConfig], address: str | None = None, num_cpus: int | None = None,
               retries: int = 2, progress: bool = True,
               before_task: TaskHook | None = None) -> tuple[list[dict[str, list[StepRecord]]], FleetLog]:
    """Run one Ray task per (bag, checkpoint); return per config its records (bag order) and the log."""
    ray = _ray()
    started = time.perf_counter()
    owned = init_ray(address, num_cpus)
    fleet = FleetLog(engine="ray", address=address or "local")
    try:
        cpus = max(1, configs[0].threads)
        _check_feasible(ray, cpus)
        remote = ray.remote(max_retries=0, num_cpus=cpus)(_bag_task)
        tasks = [(c, b) for c in range(len(configs)) for b in range(len(configs[c].bags))]
        fleet.tasks = len(tasks)
        results: dict[tuple[int, int], dict] = {}
        pending = {}

        def submit(task: tuple[int, int], attempt: int) -> None:
            config = configs[task[0]]
            pending[remote.remote(config, config.bags[task[1]], before_task)] = (task, attempt)

        for task in tasks:
            submit(task, 1)
        with tqdm(total=len(tasks), desc="eval tasks", unit="task", disable=not progress) as bar:
            while pending:
                (ref,), _ = ray.wait(list(pending), num_returns=1)
                task, attempt = pending.pop(ref)
                where = {"bag": configs[task[0]].bags[task[1]], "checkpoint": configs[task[0]].model,
                         "attempt": attempt}
                try:
                    results[task] = ray.get(ref)
                except ray.exceptions.RayTaskError as exc:  # our code raised: it would again
                    fleet.failed.append({**where, "error": _cause(exc)})
                except ray.exceptions.RayError as exc:  # the worker or its node died: retry
                    fleet.retried.append({**where, "error": f"{type(exc).__name__}: "
                                                            f"{str(exc).splitlines()[0]}"})
                    log.warning("eval task %s (%s) lost its worker on attempt %d: %s",
                                where["bag"], where["checkpoint"], attempt, type(exc).__name__)
                    if attempt <= retries:
                        submit(task, attempt + 1)
                        continue
                    fleet.failed.append({**where, "error": f"worker died {attempt} times"})
                bar.update()
    finally:
        if owned:
            ray.shutdown()
    # in task order (checkpoint, bag, attempt), not in the order Ray happened to finish them
    order = {(c.model, bag): (i, j) for i, c in enumerate(configs) for j, bag in enumerate(c.bags)}
    for entries in (fleet.retried, fleet.failed):
        entries.sort(key=lambda e: (order[(e["checkpoint"], e["bag"])], e["attempt"]))
    for result in results.values():
        fleet.workers.append(result["pid"])
        fleet.model_loads += int(result["loaded_model"])
    fleet.seconds = time.perf_counter() - started
    records = []
    for c, config in enumerate(configs):
        merged: dict[str, list[StepRecord]] = {name: [] for name in config.strategies}
        for b in range(len(config.bags)):
            for name, steps in results.get((c, b), {"records": {}})["records"].items():
                merged[name] += steps
        records.append(merged)
    return records, fleet


def _cause(exc) -> str:
    cause = getattr(exc, "cause", None)
    if isinstance(cause, DystaError):
        return str(cause)
    return f"{type(cause or exc).__name__}: {cause or exc}".splitlines()[0]


def evaluate_fleet(configs: list[EvalConfig], ray_address: str | None = None, use_ray: bool = False,
                   num_cpus: int | None = None, retries: int = 2, progress: bool = True,
                   before_task: TaskHook | None = None) -> dict:
    """Evaluate every checkpoint on every bag; write each checkpoint's report; return all results.

    One checkpoint: its report and results.json are where a serial run writes them. Several:
    one subdirectory each plus an index (report.md, results.json) over them.
    """
    for config in configs:  # before any model is built or any worker started
        topic_map = bag_topic_map(config)  # each checkpoint's cameras only
        for bag in config.bags:
            check_bag(bag, topic_map)
    from dysta_ros.policy.devices import check_device  # torch: not imported for `eval --help`

    for config in configs:  # a missing device is one line, before any progress bar or worker
        check_device(config.device, config.dtype)
    if use_ray:
        records, fleet = run_on_ray(configs, ray_address, num_cpus, retries, progress, before_task)
    else:
        started = time.perf_counter()
        records, fleet = [], FleetLog(tasks=sum(len(c.bags) for c in configs))
        for config in configs:
            records.append(run_open_loop(config, progress))
            fleet.model_loads += 1
        fleet.workers, fleet.seconds = [os.getpid()], time.perf_counter() - started
    fleet_log = fleet.as_dict()
    per_checkpoint = {}
    for config, recorded in zip(configs, records):
        if not any(recorded.values()):  # every task of this checkpoint failed: nothing to report
            per_checkpoint[config.model] = None
            continue
        results = evaluate(config, progress=False, records=recorded, fleet=fleet_log)
        per_checkpoint[config.model] = results
    if len(configs) > 1:
        _write_index(Path(configs[0].report).parent, configs, per_checkpoint, fleet_log)
    elif per_checkpoint[configs[0].model] is None:
        _write_index(Path(configs[0].report), configs, per_checkpoint, fleet_log)
    return {"checkpoints": per_checkpoint, "fleet": fleet_log}


def _write_index(directory: Path, configs: list[EvalConfig], per_checkpoint: dict, fleet_log: dict) -> None:
    from dysta_ros.evaluation.open_loop_report import fleet_section, summary_table

    directory.mkdir(parents=True, exist_ok=True)
    text = ["# Open-loop evaluation over checkpoints", "",
            f"{len(configs[0].bags)} bag(s) x {len(configs)} checkpoint(s) x "
            f"{len(configs[0].strategies)} strategies; engine: {fleet_log['engine']}.", ""]
    for config in configs:
        results = per_checkpoint[config.model]
        text += [f"## `{config.model}`", ""]
        if results is None:
            text += ["No task of this checkpoint finished (see the fleet section).", ""]
            continue
        link = f"{Path(config.report).name}/report.md"
        text += [f"Full report: [{link}]({link})", "", summary_table(results["summary"]), ""]
    (directory / "report.md").write_text("\n".join(text) + fleet_section(fleet_log, always=True))
    write_json(str(directory / "results.json"), fleet_document(configs, per_checkpoint, fleet_log))


def fleet_document(configs: list[EvalConfig], per_checkpoint: dict, fleet_log: dict) -> dict:
    """Every checkpoint's strategies in the one shape: what `eval --json` and the index results.json hold.

    One run per (checkpoint, strategy): `model`, `strategy` and the summary's fields (a checkpoint
    whose every task failed has none); `meta`: the first evaluated checkpoint's settings, `models`,
    the `fleet` log and the command.
    """
    runs = [{"model": config.model, "strategy": name, **summary}
            for config in configs if per_checkpoint[config.model]
            for name, summary in per_checkpoint[config.model]["summary"].items()]
    first = next((results for results in per_checkpoint.values() if results), {})
    return result_document(runs, {**first.get("config", {}), "models": [c.model for c in configs],
                                  "fleet": fleet_log, "command": command_line()})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add `dysta-ros eval` arguments (open-loop replay: open_loop.py; over bags x checkpoints: here)."""
    parser.add_argument("bags", nargs="+", metavar="BAG",
                        help="rosbag2 directories or files, directories of bags, or globs ('bags/*')")
    add_strategies_argument(parser, extra_help="; `full` is always run as the yardstick")
    # several checkpoints: one report subdirectory each, and an index
    add_model_argument(parser, default=["tiny"], several=True)
    parser.add_argument("--vlm", default=None, metavar="DIR",
                        help="a LeRobot SmolVLA checkpoint's backbone config + tokenizer directory")
    parser.add_argument("--topic-map", default="sim_arm",
                        help="bag topic mapping: a name in config/bag_topics/ or a YAML path")
    parser.add_argument("--rate", type=float, default=0.0,
                        help="policy steps per second (default: 1 / the model's action dt)")
    parser.add_argument("--first-k", type=int, default=4, help="chunk actions compared (default 4)")
    parser.add_argument("--max-steps", type=int, default=0, help="per episode (default: all)")
    parser.add_argument("--seed", type=seed_value, default=0)
    add_runtime_arguments(parser)
    parser.add_argument("--param", action="append", default=[], metavar="STRATEGY.KEY=VALUE",
                        help="strategy parameter over its YAML, repeatable, e.g. --param full.history=8")
    parser.add_argument("--report", default="eval_report", help="report directory")
    add_json_argument(parser)
    parser.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                        help="one Ray task per (bag, checkpoint): a local Ray without ADDRESS, "
                             "else the cluster at ADDRESS (pip install 'dysta_ros[fleet]')")
    parser.add_argument("--ray-cpus", type=int, default=0,
                        help="CPUs of the local Ray, i.e. tasks at once (0: every core)")
    parser.add_argument("--retries", type=int, default=2,
                        help="times a task whose worker died is run again before it is reported failed")
    parser.add_argument("--time", choices=["header", "receive"], default="header",
                        help="clock that places bag messages: header stamps (default) or "
                             "receive times (for bags whose stamps use another clock)")
    parser.add_argument("--window-s", type=float, default=0.3,
                        help="task-critical windows: seconds either side of a gripper change or "
                             "large acceleration of the recorded actions")
    parser.add_argument("--gripper-joint", default="auto",
                        help="joint whose open/close changes are critical events (auto: the first "
                             "named *gripper*; none: off)")
    parser.add_argument("--accel-quantile", type=float, default=0.95,
                        help="recorded accelerations above this quantile of an episode's are "
                             "critical events (1: off)")


def run(args: argparse.Namespace) -> int:
    """Evaluate; print where the report is (or the JSON summary); return the exit status."""
    try:
        config = EvalConfig(bags=find_bags(args.bags),
                            strategies=args.strategies,
                            model=args.model[0], vlm=args.vlm, topic_map=args.topic_map, rate_hz=args.rate,
                            first_k=args.first_k, max_steps=args.max_steps, device=args.device,
                            dtype=args.dtype, seed=args.seed, report=args.report, threads=args.threads,
                            window_s=args.window_s, gripper_joint=args.gripper_joint,
                            accel_quantile=args.accel_quantile,
                            time=args.time,
                            params=parse_param_overrides(args.param, [BASELINE, *args.strategies]))
        if args.retries < 0 or args.ray_cpus < 0:
            raise ConfigError("--retries and --ray-cpus must be >= 0")
        configs = configs_for(config, args.model)
        results = evaluate_fleet(configs, ray_address=args.ray or None, use_ray=args.ray is not None,
                                 num_cpus=args.ray_cpus or None, retries=args.retries,
                                 progress=not json_to_stdout(args))
    except (BagError, ConfigError, CheckpointError) as exc:
        print(f"dysta-ros eval: {exc}", file=sys.stderr)
        return exit_status(exc)
    per_checkpoint = results["checkpoints"]
    summaries = {model: r and r["summary"] for model, r in per_checkpoint.items()}
    write_json(args.json, fleet_document(configs, per_checkpoint, results["fleet"]))
    if not json_to_stdout(args):
        from dysta_ros.evaluation.open_loop_report import summary_table

        for model, summary in summaries.items():
            if len(configs) > 1:
                print(f"\n{model}")
            print(summary_table(summary) if summary else "no results")
        print(f"\nreport: {Path(config.report) / 'report.md'}")
    if failed := results["fleet"]["failed"]:
        print(f"dysta-ros eval: {len(failed)} task(s) failed, their bags have no results: "
              + "; ".join(f"{f['bag']} ({f['checkpoint']}): {f['error']}" for f in failed), file=sys.stderr)
        return 1
    return 0
