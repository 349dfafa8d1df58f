"""The `dysta-ros` command: help lists every subcommand; unknown ones say what exists."""

import argparse
import subprocess
import sys

import pytest

from dysta_ros.cli import SUBCOMMANDS, build_parser, main


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


def help_entries(name: str) -> dict[str, str]:
    """Each option of subcommand `name` -> its entry in `dysta-ros NAME --help`, lines joined."""
    parser = build_parser(name)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[name]
    text = sub.format_help().split("\noptions:\n", 1)[1].split("\nexample:", 1)[0]
    entries: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("  -"):
            flag = line.split()[0].rstrip(",")
            entries[flag] = line
        elif entries and line.strip():
            entries[flag] += " " + line.strip()
    return entries


@pytest.mark.parametrize("name", list(SUBCOMMANDS))
def test_every_option_in_a_subcommands_help_shows_its_default(name):
    # README: "`dysta-ros <command> --help` shows every default"; an option added without a help
    # text (train --steps, link --width, ...) used to show nothing at all
    entries = help_entries(name)
    assert "--help" not in entries and "-h" in entries
    missing = [flag for flag, entry in entries.items() if flag != "-h" and "(default: " not in entry]
    assert not missing, f"{name} --help shows no default for {missing}"


def test_estop_clear_names_the_service_that_releases_it():
    # policy_node has no clear_estop of its own since publish_trajectory went (README "Migration")
    entry = help_entries("estop")["--clear"]
    assert "clear_estop" in entry and "policy_node" not in entry


def test_every_subcommand_help_returns_without_importing_torch():
    probe = ("import sys; from dysta_ros.cli import main\n"
             "try:\n    main([sys.argv[1], '--help'])\nexcept SystemExit as e:\n    code = e.code\n"
             "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', code)")
    processes = {name: subprocess.Popen([sys.executable, "-c", probe, name], stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True) for name in SUBCOMMANDS}
    for name, process in processes.items():
        out, err = process.communicate(timeout=120)
        assert out.strip().splitlines()[-1] == "NO-TORCH 0", f"{name}: {err[-2000:]}"
        assert "usage: dysta-ros " + name in out and "example:\n  dysta-ros " + name in out


def test_the_lazy_strategy_registry_names_each_class_by_its_own_name():
    from dysta_ros.tokens import STRATEGIES

    assert all(STRATEGIES[name].name == name for name in STRATEGIES)
