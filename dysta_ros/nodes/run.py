"""`dysta-ros run`: policy_node + chunk_executor in one process, for machines without `ros2 launch`.

`--role robot` / `--role policy-host` run the two halves of an offboard deployment instead.

The same YAML files as the launch file (config/dysta_nodes.yaml, config/strategies/<strategy>.yaml,
config/robots/<robot>.yaml), both nodes on one multi-threaded executor (as a component
container runs them); the policy node is configured and activated here, and Ctrl-C
deactivates it and shuts down cleanly.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time

import yaml

from dysta_ros.cli_options import (add_json_argument, add_model_argument, add_runtime_arguments,
                                   add_strategy_argument, free_cores, json_to_stdout, write_json)
from dysta_ros.errors import ConfigError
from dysta_ros.results import command_line, result_document
from dysta_ros.robot import config_dirs, load_yaml

NODES = ("policy_node", "chunk_executor", "robot_link")
# --role: which nodes this process runs. `both` is one machine; `robot` and `policy-host` split
# them across a network (robot_link compresses the cameras and answers clock pings).
ROLES = {"both": ("policy_node", "chunk_executor"), "robot": ("chunk_executor", "robot_link"),
         "policy-host": ("policy_node",)}
# rclpy declares these on every node itself; `--param policy_node:use_sim_time=true` sets them
BUILTINS = {"use_sim_time": bool}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_strategy_argument(parser, default="dysta")
    add_model_argument(parser, default="tiny")
    parser.add_argument("--vlm", default="", metavar="DIR",
                        help="a LeRobot SmolVLA checkpoint's backbone config + tokenizer directory")
    parser.add_argument("--robot", default="sim_arm",
                        help="robot config: name under config/robots/ or YAML path")
    # None: the params file's device/dtype (cpu, float32) and cpu_threads, else the free cores
    add_runtime_arguments(parser, device=None, dtype=None, threads=None)
    parser.add_argument("--instruction", default=None, help="instruction until /dysta/instruction sets one")
    parser.add_argument("--dry-run", action="store_true",
                        help="chunk_executor logs commands instead of sending them")
    parser.add_argument("--params-file", default=None,
                        help="ROS 2 parameters YAML for both nodes (default: config/dysta_nodes.yaml)")
    parser.add_argument("--param", action="append", default=[], metavar="NODE:NAME=VALUE",
                        help="override one parameter, e.g. policy_node:inference_rate_hz=5 or "
                             "policy_node:dysta.delta_l1=0.1 (repeatable; VALUE is YAML)")
    parser.add_argument("--role", default="both", choices=tuple(ROLES),
                        help="both: policy and executor here; robot: chunk_executor + robot_link "
                             "(compressed cameras, clock pings); policy-host: policy_node on the "
                             "compressed cameras, robot clock estimated from round trips")
    parser.add_argument("--duration", type=float, default=0.0, help="seconds to run (0: until Ctrl-C)")
    parser.add_argument("--namespace", default=None, metavar="NS",
                        help="the nodes' namespace (default /dysta): /arm2 runs a second arm beside the "
                             "first, its topics /arm2/action_chunk, /arm2/estop, ...")
    parser.add_argument("--status-period", type=float, default=1.0, metavar="SECONDS",
                        help="status line (state, strategy, rate, model ms, frame age, what it holds on) "
                             "every SECONDS, diagnostics changes as they happen; 0: changes only")
    add_json_argument(parser)  # a summary at exit: one run per node (steps, step_ms_p50, last statuses)


def run_document(args, policy: dict, boards, step_report, seconds: float) -> dict:
    """The summary `--json` writes at exit: one run per node, with its last statuses.

    `policy`: policy_node's parameter values (as it read them, or as given when it does not run here).
    policy_node's run, where it runs here, adds its steps, refusals and step times
    (`step_report.summary()`); every node's run holds each /diagnostics status as it last was.
    """
    from dysta_ros.nodes.diagnostics import LEVEL_NAMES
    from dysta_ros.nodes.topics import NAMESPACE

    runs = []
    for board in boards:
        statuses = {name: {"level": LEVEL_NAMES.get(entry.level, entry.level), "message": entry.message,
                           **entry.values} for name, entry in board.snapshot().items()}
        run = {"node": board.node_name}
        if board.node_name == "policy_node" and step_report is not None:
            run.update(step_report.summary())
        runs.append({**run, "statuses": statuses})
    return result_document(runs, {
        "role": getattr(args, "role", "both"), "namespace": args.namespace or NAMESPACE,
        "strategy": policy["strategy"], "model": policy["model"], "robot": policy["robot"],
        "device": policy.get("device", "cpu"), "dtype": policy.get("dtype", "float32"),
        "threads": policy.get("cpu_threads"), "seconds": round(seconds, 3), "command": command_line()})


def default_params_file() -> str:
    for directory in config_dirs():
        if (directory / "dysta_nodes.yaml").is_file():
            return str(directory / "dysta_nodes.yaml")
    raise ConfigError("config/dysta_nodes.yaml not found; pass --params-file")


def node_values(args) -> dict[str, dict]:
    """Return {node: {parameter: value}} from the params file, then the command line."""
    from dysta_ros.nodes.params import WILDCARD, params_file_values
    from dysta_ros.nodes.topics import NAMESPACE

    path = args.params_file or default_params_file()
    namespace = "/" + (getattr(args, "namespace", None) or NAMESPACE).strip("/")
    values = params_file_values(path, load_yaml(path), NODES, namespace)
    values["policy_node"].update(strategy=args.strategy, model=args.model, vlm=args.vlm, robot=args.robot,
                                 autostart=False)  # configured and activated below
    values["chunk_executor"]["robot"] = args.robot
    values["robot_link"]["robot"] = args.robot
    if getattr(args, "role", "both") == "policy-host":  # the cameras and the clock are the robot's
        values["policy_node"].update(camera_transport="compressed", clock_sync="estimate")
    for name in ("device", "dtype", "instruction"):
        if getattr(args, name) is not None:
            values["policy_node"][name] = getattr(args, name)
    if args.threads is not None:
        values["policy_node"]["cpu_threads"] = args.threads
    elif not {"cpu_threads", (WILDCARD, "cpu_threads")} & set(values["policy_node"]):
        values["policy_node"]["cpu_threads"] = free_cores()
    if args.dry_run:
        values["chunk_executor"]["dry_run"] = True
    for item in args.param:
        node, sep, rest = item.partition(":")
        name, eq, text = rest.partition("=")
        if node not in NODES or not sep or not eq or not name:
            raise ConfigError(f"--param {item!r}: expected NODE:NAME=VALUE, NODE one of {', '.join(NODES)}")
        values[node][name] = yaml.safe_load(text)
    return values


def declared_params() -> dict[str, list]:
    """Return the parameters each node declares, by node."""
    from dysta_ros.nodes import chunk_executor, policy_node, robot_link

    return {"policy_node": policy_node.PARAMS + policy_node.strategy_params_from_yaml(),
            "chunk_executor": list(chunk_executor.PARAMS), "robot_link": list(robot_link.PARAMS)}


def to_parameters(values: dict, declared, node: str = "the node") -> list:
    """Return rclpy Parameters; raise ConfigError on an unknown name or a refused value.

    Checked here, before any node starts, because a node ignores an override it does not
    declare: a typo (`dysta.delta_l` for `dysta.delta_l1`) would run with the default unnoticed.
    """
    from rclpy.parameter import Parameter

    from dysta_ros.nodes.params import unknown_name

    by_name = {p.name: p for p in declared}
    parameters = []
    for name, value in values.items():
        if isinstance(name, tuple):  # from a `/**` section: where declared, unless set since
            name = name[1]
            if name in values or (name not in by_name and name not in BUILTINS):
                continue
        if name in BUILTINS:
            if not isinstance(value, BUILTINS[name]):
                raise ConfigError(f"{node}: {name} must be true or false, got {value!r}")
            parameters.append(Parameter(name, value=value))
            continue
        reason = unknown_name(name, declared, node)
        if reason is None:
            value = by_name[name].coerce(value)  # YAML writes 10 for 10.0
            reason = by_name[name].refusal(value)
            reason = reason and f"{node}: {reason}"
        if reason is not None:
            raise ConfigError(reason)
        parameters.append(Parameter(name, value=value))
    return parameters


def run(args) -> int:
    from dysta_ros.nodes.spin import interrupts_end_ros, share_the_gil_finely
    from dysta_ros.nodes.transport import use_large_frame_transport

    role = ROLES[getattr(args, "role", "both")]
    try:
        values = node_values(args)
        declared = declared_params()
        overrides = {node: to_parameters(values[node], declared[node], node) for node in NODES}
    except ConfigError as exc:
        print(f"dysta-ros run: {exc}", file=sys.stderr)
        return 2
    share_the_gil_finely()  # the nodes share this process
    use_large_frame_transport()
    with interrupts_end_ros():
        return start_and_spin(args, role, values, overrides)


def start_and_spin(args, role, values: dict, overrides: dict) -> int:
    """Start this role's nodes (configuring and activating policy_node) and spin them until the end."""
    import rclpy
    from rclpy.executors import MultiThreadedExecutor, SingleThreadedExecutor
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.signals import SignalHandlerOptions, install_signal_handlers

    from dysta_ros.nodes import chunk_executor, policy_node, robot_link
    from dysta_ros.nodes.spin import signals_interrupt, spin_nodes
    from dysta_ros.nodes.status_line import StatusPrinter, board_statuses

    # While the nodes start (a model loads for seconds), Ctrl-C or SIGTERM raises here and the
    # start is undone; rclpy's handlers, which shut the context down under whatever runs (a
    # lifecycle transition then fails and rclpy logs an ERROR), take over once the nodes are up.
    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
    makers = {"policy_node": policy_node.PolicyNode, "chunk_executor": chunk_executor.ChunkExecutorNode,
              "robot_link": robot_link.RobotLinkNode}
    nodes = []
    try:
        with signals_interrupt():
            for name in role:
                try:
                    namespace = {"namespace": args.namespace} if getattr(args, "namespace", None) else {}
                    nodes.append(makers[name](parameter_overrides=overrides[name], **namespace))
                except ConfigError as exc:
                    print(f"dysta-ros run: {name}: {exc}", file=sys.stderr)
                    return _undo_start(nodes, 2)
            policy = next((n for n in nodes if isinstance(n, policy_node.PolicyNode)), None)
            boards = [n.board for n in nodes if hasattr(n, "board")]
            if policy is not None and (policy.trigger_configure() != TransitionCallbackReturn.SUCCESS
                                       or policy.trigger_activate() != TransitionCallbackReturn.SUCCESS):
                # policy_node logged the reason as one line; a non-zero exit says it did not run, and
                # --json still gets the document, its lifecycle status saying why.
                write_json(args.json, run_document(args, policy.values, boards, None, 0.0))
                return _undo_start(nodes, 1)
    except KeyboardInterrupt as interrupt:
        return _undo_start(nodes, 130 if interrupt.args == (signal.SIGINT,) else 0)
    install_signal_handlers()
    started = time.monotonic()
    deadline = started + args.duration if args.duration > 0 else None
    step_report = policy.step.report if policy is not None else None  # kept past the nodes' end
    printer = StatusPrinter(lambda: board_statuses(*boards),
                            sys.stderr if json_to_stdout(args) else sys.stdout, args.status_period)
    # One callback thread, as policy_node's and chunk_executor's executables spin (their callbacks
    # only store and send; inference has its own thread). A stalled `run` in the shutdown test had
    # its main thread at 95 % CPU inside MultiThreadedExecutor.spin_once, walking its pending
    # callbacks, and its inference thread starved mid-step; the single-threaded executables never did.
    executor = MultiThreadedExecutor if "robot_link" in role else SingleThreadedExecutor
    try:
        return spin_nodes(nodes, executor, until=deadline, tick=printer.tick)
    finally:
        printer.close()
        settings = policy.values if policy is not None else values["policy_node"]
        write_json(args.json, run_document(args, settings, boards, step_report, time.monotonic() - started))


def _undo_start(nodes, code: int) -> int:
    """End a start-up that stops early: the nodes made so far, then ROS; return the exit code."""
    import rclpy

    for node in nodes:
        getattr(node, "close", lambda: None)()  # an inference thread already started
        node.destroy_node()
    rclpy.try_shutdown()
    return code
