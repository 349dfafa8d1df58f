"""The options every `dysta-ros` subcommand spells the same way (README "One vocabulary").

`--model` (a preset or a checkpoint directory), `--strategies` (comma-separated and/or
repeated; `--strategy` is the same option, and commands that run one strategy take it by either
name), `--device`, `--dtype`, `--threads` (default: the free cores) and `--json [FILE]`
(stdout when no FILE). Old spellings (`--policy`, `--checkpoint`, `--preset`) stay one release
as hidden aliases that print a warning. Plain Python: parsing never imports torch, so `--help`
stays instant.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import weakref
from pathlib import Path

from dysta_ros.tokens import available_strategies

DTYPE_CHOICES = ("float32", "bfloat16", "float16")
FREE = "free"  # --threads' default, resolved when the arguments are parsed
JSON_STDOUT = "-"
OLD_MODEL_FLAGS = ("--policy", "--checkpoint", "--preset")


def free_cores() -> int:
    """Cores this process may use minus the ones the machine is busy with (1-minute load), >= 1.

    More torch threads than free cores makes every step several times slower on a shared
    machine, and speedups measured then measure contention.
    """
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, usable - int(os.getloadavg()[0]))


def threads_value(text: str) -> int:
    """`--threads` value: `free` (the free cores) or an integer >= 1."""
    if text == FREE:
        return free_cores()
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer or {FREE!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1 (or {FREE!r}), got {value}")
    return value


SEED_LIMIT = 2**63  # seeds reach ROS int64 parameters (sim_node's `seed`) and numpy's generators


def seed_value(text: str) -> int:
    """A seed flag's value: an integer in 0 .. 2**63 - 1 (numpy's generators refuse negative seeds)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not 0 <= value < SEED_LIMIT:
        raise argparse.ArgumentTypeError(f"must be in 0..{SEED_LIMIT - 1}, got {value}")
    return value


def _creatable(path: Path, text: str) -> None:
    """Refuse a path whose nearest existing ancestor is a file: its folders cannot be made."""
    ancestor = next((p for p in path.absolute().parents if p.exists()), None)
    if ancestor is not None and not ancestor.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r}: {ancestor} is a file, not a folder")


def output_file(text: str) -> str:
    """A result file's path, checked when parsed: the run would fail writing it only at its end."""
    path = Path(text)
    if text == JSON_STDOUT:
        return text
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a folder; give a file path")
    _creatable(path, text)
    return text


def output_folder(text: str) -> str:
    """A report folder's path, checked when parsed (it may exist: its files are replaced)."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a file, not a folder")
    _creatable(path, text)
    return text


class _DeprecatedModelFlag(argparse.Action):
    """`--policy/--checkpoint/--preset X`: sets --model, with a warning on stderr."""

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"{parser.prog}: {option_string} is deprecated and will be removed; use --model",
              file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_model_argument(parser: argparse.ArgumentParser, default: str | list[str] = "tiny",
                       several: bool = False) -> None:
    """`--model NAME|DIR` (several: comma-separated and/or repeated, like --strategies)."""
    help_text = "model preset name (tiny, small, ...) or checkpoint directory"
    default = list(default) if several else default  # one object: the aliases replace it, not extend it
    if several:
        parser.add_argument("--model", dest="model", action=_ListAction, default=default,
                            metavar="MODEL", help=help_text + "; several: comma-separated and/or repeated")
    else:
        parser.add_argument("--model", default=default, help=help_text)
    for flag in OLD_MODEL_FLAGS:
        parser.add_argument(flag, dest="model", nargs="+" if several else None, default=default,
                            action=_DeprecatedListFlag if several else _DeprecatedModelFlag,
                            help=argparse.SUPPRESS)


class _ListAction(argparse.Action):
    """A list option given comma-separated and/or repeated: all add up.

    The first use replaces the default; `--strategies full,dysta --strategies vla_cache` is
    `full, dysta, vla_cache`. One value per use, so a positional after it is never eaten.
    """

    def __call__(self, parser, namespace, values, option_string=None):
        current = getattr(namespace, self.dest, None)
        if current is self.default or current is None:
            current = []
        values = values if isinstance(values, list) else [values]
        items = [item.strip() for value in values for item in value.split(",") if item.strip()]
        setattr(namespace, self.dest, [*current, *items])


class _DeprecatedListFlag(_ListAction):
    def __call__(self, parser, namespace, values, option_string=None):
        print(f"{parser.prog}: {option_string} is deprecated and will be removed; use --model",
              file=sys.stderr)
        super().__call__(parser, namespace, values, option_string)


def add_strategies_argument(parser: argparse.ArgumentParser, default: list[str] | None = None,
                            extra_help: str = "") -> None:
    """`--strategies A,B` and/or repeated (`--strategy` is the same option)."""
    default = list(available_strategies()) if default is None else list(default)
    parser.add_argument("--strategies", "--strategy", dest="strategies", action=_ListAction,
                        default=default, metavar="A,B",
                        help="token strategies, comma-separated and/or repeated "
                             f"({', '.join(available_strategies())}){extra_help}")


class _OneStrategyAction(argparse.Action):
    """`--strategy`/`--strategies` where a command runs one strategy: the same syntax, one known name.

    Given twice (or `a,b`), the names add up as with --strategies, and more than one is refused.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.given_in: list[weakref.ref] = []  # the namespaces this option was given in already

    def __call__(self, parser, namespace, values, option_string=None):
        earlier = any(ref() is namespace for ref in self.given_in)
        self.given_in = [ref for ref in self.given_in if ref() is not None] + [weakref.ref(namespace)]
        chosen = ([getattr(namespace, self.dest)] if earlier else []) + [
            item.strip() for item in values.split(",") if item.strip()]
        if len(chosen) != 1:
            parser.error(f"{option_string}: this command runs one strategy, "
                         f"got {', '.join(chosen) or 'none'}")
        if chosen[0] not in available_strategies():
            parser.error(f"{option_string}: unknown strategy {chosen[0]!r}; choose one of "
                         f"{', '.join(available_strategies())}")
        setattr(namespace, self.dest, chosen[0])


def add_strategy_argument(parser: argparse.ArgumentParser, default: str = "dysta",
                          extra_help: str = "") -> None:
    """`--strategy NAME` (or `--strategies NAME`, the same option) for a command that runs one strategy."""
    parser.add_argument("--strategy", "--strategies", dest="strategy", action=_OneStrategyAction,
                        default=default, metavar="NAME",
                        help=f"token strategy, one of {', '.join(available_strategies())}{extra_help}")


def add_runtime_arguments(parser: argparse.ArgumentParser, device: str | None = "cpu",
                          dtype: str | None = "float32", threads: str | None = FREE) -> None:
    """`--device`, `--dtype`, `--threads` as every command that runs a model spells them."""
    parser.add_argument("--device", default=device, help="torch device: cpu, cuda, cuda:N, mps")
    parser.add_argument("--dtype", default=dtype, choices=DTYPE_CHOICES, help="model weights' dtype")
    parser.add_argument("--threads", type=threads_value, default=threads, metavar="N|free",
                        help="torch CPU threads; 'free' = the cores not busy now "
                             "(usable cores minus the 1-minute load average, at least 1)")


def add_json_argument(parser: argparse.ArgumentParser) -> None:
    """`--json [FILE]`: the result as {"runs": [...], "meta": {...}}; stdout when no FILE."""
    parser.add_argument("--json", nargs="?", const=JSON_STDOUT, default=None, metavar="FILE",
                        type=output_file,
                        help='write the result as {"runs": [...], "meta": {...}} to FILE, '
                             "or to stdout when no FILE is given")


def json_to_stdout(args: argparse.Namespace) -> bool:
    """True when the JSON document takes stdout (so tables and progress must stay off it)."""
    return getattr(args, "json", None) == JSON_STDOUT


def write_json(destination: str | None, document: dict) -> None:
    """Write the document to stdout (`-`) or a file (its folder created); None: nothing."""
    if destination is None:
        return
    text = json.dumps(document, indent=2, default=_plain)
    if destination == JSON_STDOUT:
        print(text)
        return
    path = Path(destination)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")
    print(f"wrote {path}", file=sys.stderr)


def _plain(value):
    """JSON for numpy scalars/arrays and paths (what results hold besides plain Python)."""
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)
