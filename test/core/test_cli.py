"""The `dysta-ros` command: help lists every subcommand; unknown ones say what exists."""

import subprocess
import sys

from dysta_ros.cli import SUBCOMMANDS, main


def test_help_lists_every_subcommand_without_importing_them():
    result = subprocess.run([sys.executable, "-m", "dysta_ros.cli", "--help"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    for name in SUBCOMMANDS:
        assert name in result.stdout


def test_unknown_subcommand_names_the_valid_ones(capsys):
    assert main(["fly"]) == 2
    err = capsys.readouterr().err
    assert "unknown command 'fly'" in err
    assert "bench" in err and "demo" in err


def test_version_and_subcommand_help_shows_defaults():
    version = subprocess.run([sys.executable, "-m", "dysta_ros.cli", "--version"],
                             capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and version.stdout.startswith("dysta-ros 0.")
    shown = subprocess.run([sys.executable, "-m", "dysta_ros.cli", "latency", "--help"],
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and "(default: 30.0)" in shown.stdout


def test_subcommands_parse_without_torch_except_train():
    light = ("latency", "load", "run", "demo", "bench", "profile-entropy", "eval", "closed-loop")
    probe = ("import sys; from dysta_ros.cli import build_parser; "
             f"[build_parser(c) for c in {light}]; print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "False", result.stderr


def test_the_lazy_strategy_registry_names_each_class_by_its_own_name():
    from dysta_ros.tokens import STRATEGIES

    assert all(STRATEGIES[name].name == name for name in STRATEGIES)
