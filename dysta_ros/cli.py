"""`dysta-ros`: one command, one subcommand per job.

Each subcommand lives in its own module, which defines `add_arguments(parser)` and
`run(args) -> int`; only the chosen one is imported, so `dysta-ros --help` stays instant and
the core subcommands never import ROS.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from dysta_ros import __version__
from dysta_ros.errors import DystaError, exit_status

# name -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("dysta_ros.nodes.demo_session", "closed loop in MuJoCo over real ROS topics, with a report"),
    "bench": ("dysta_ros.evaluation.bench", "strategies side by side on the same frames: speed, deviation"),
    "profile-entropy": ("dysta_ros.evaluation.entropy", "attention entropy per layer -> GoToHunt layers"),
    "convert": ("dysta_ros.bags.convert", "LeRobot dataset <-> rosbag2 bag, either way"),
    "bag-info": ("dysta_ros.bags.inspect", "what a bag holds: topics, counts, rates, episodes"),
    "eval": ("dysta_ros.evaluation.fleet", "open-loop replay of rosbags: action error per strategy"),
    "record": ("dysta_ros.nodes.recorder", "record expert episodes from the sim to a rosbag2 (MCAP)"),
    "replay": ("dysta_ros.nodes.bag_player", "publish a bag's messages with their original timing"),
    "run": ("dysta_ros.nodes.run", "policy_node + chunk_executor in one process (no ros2 launch needed)"),
    "latency": ("dysta_ros.nodes.latency", "ROS-layer camera-to-chunk latency beyond model time"),
    "link": ("dysta_ros.nodes.link_bench", "robot + policy host over loopback or an impaired link, measured"),
    "load": ("dysta_ros.nodes.load_test", "hold policy_node under camera load: memory, frame age, drops"),
    "tracking": ("dysta_ros.nodes.tracking", "how closely the sim arm follows the executor's plan, per "
                 "trajectory scheme"),
    "train": ("dysta_ros.training.cli", "behaviour cloning with DySta's learned parts"),
    "parity": ("dysta_ros.evaluation.parity", "our SmolVLA vs recorded LeRobot cases: max action errors"),
    "info": ("dysta_ros.info", "what a checkpoint directory holds: family, cameras, dims, dtypes"),
    "closed-loop": ("dysta_ros.evaluation.success", "success rate per strategy on held-out sim seeds"),
    # what an operator does without ros2cli (not on PyPI): module:class with add_arguments/run
    "instruct": ("dysta_ros.nodes.operator:Instruct", "send the policy an instruction"),
    "estop": ("dysta_ros.nodes.operator:EStop", "latch the e-stop, or release it (--clear)"),
    "diag": ("dysta_ros.nodes.operator:Diag", "show /diagnostics (--follow: changes as they happen)"),
    "topics": ("dysta_ros.nodes.operator:Topics", "list the graph's topics: type, publishers, subscribers"),
}


# name -> one command line that works from a fresh clone (shown at the end of `--help`)
EXAMPLES: dict[str, str] = {
    "demo": "dysta-ros demo --model expert,checkpoints/reference --strategies full,dysta --episodes 2",
    "bench": "dysta-ros bench --model small --strategies full,dysta --history 1,8 --json bench.json",
    "profile-entropy": "dysta-ros profile-entropy --model checkpoints/reference --frames sim",
    "bag-info": "dysta-ros bag-info bags/expert.mcap",
    "eval": "dysta-ros eval bags/expert.mcap --model checkpoints/reference --strategies full,dysta --json",
    "record": "dysta-ros record --out bags/expert --task reach --episodes 5",
    "replay": "dysta-ros replay bags/expert --loop",
    "run": "dysta-ros run --model checkpoints/reference --strategy dysta",
    "latency": "dysta-ros latency --cameras 2 --width 640 --height 480 --seconds 20",
    "load": "dysta-ros load --cameras 3 --seconds 300",
    "train": "dysta-ros train --sim-episodes 400 --task reach --out runs/reach",
    "parity": "dysta-ros parity test/data/smolvla_tiny --json",
    "info": "dysta-ros info checkpoints/reference",
    "closed-loop": "dysta-ros closed-loop --model checkpoints/reference --strategies full,dysta",
    "instruct": "dysta-ros instruct 'touch the red cube'",
    "estop": "dysta-ros estop    # then: dysta-ros estop --clear",
    "diag": "dysta-ros diag --follow",
    "topics": "dysta-ros topics",
    "convert": "dysta-ros convert bags/reach datasets/reach --fps 10",
    "link": "dysta-ros link --link both --seconds 20 --out link_report",
    "tracking": "dysta-ros tracking --seconds 30",
}


def command_module(name: str):
    """The object with `add_arguments(parser)` and `run(args)` for subcommand `name` (imported now)."""
    module_name, _, attribute = SUBCOMMANDS[name][0].partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, attribute) if attribute else module


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults after each option; the example epilog keeps its line breaks."""


def build_parser(chosen: str | None = None) -> argparse.ArgumentParser:
    """Return the parser; only the chosen subcommand's module is imported."""
    parser = argparse.ArgumentParser(prog="dysta-ros", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in SUBCOMMANDS.items():
        # every option's help shows its default, so nobody has to read the source for it
        example = EXAMPLES.get(name)
        sub_parser = sub.add_parser(name, help=help_text, description=help_text,
                                    epilog=f"example:\n  {example}" if example else None,
                                    formatter_class=HelpFormatter)
        if name == chosen:
            command_module(name).add_arguments(sub_parser)
            show_every_default(sub_parser)
    return parser


def show_every_default(parser: argparse.ArgumentParser) -> None:
    """Give an option added without a help text one that shows its default.

    argparse prints nothing for an option whose help is None, so the formatter's
    "(default: ...)" would be missing exactly where no help text was written.
    """
    for action in parser._actions:
        if action.option_strings and action.help is None and action.default is not argparse.SUPPRESS:
            action.help = "(default: %(default)s)"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    chosen = next((a for a in argv if not a.startswith("-")), None)
    if chosen is not None and chosen not in SUBCOMMANDS:
        print(f"dysta-ros: unknown command {chosen!r}; choose one of {', '.join(SUBCOMMANDS)}",
              file=sys.stderr)
        return 2
    try:
        parser = build_parser(chosen)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("dysta_ros"):
            print(f"dysta-ros: {chosen!r} is not available in this build ({exc.name} is missing)",
                  file=sys.stderr)
            return 2
        raise
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0 if chosen is None else 2
    # args stays plain data (reports write vars(args) as JSON): the module is looked up, not stored
    module = command_module(args.command)
    try:
        return int(module.run(args) or 0)
    except DystaError as exc:  # what a subcommand did not catch itself: one line, no traceback
        print(f"dysta-ros {args.command}: {exc}", file=sys.stderr)
        return exit_status(exc)


if __name__ == "__main__":
    sys.exit(main())
