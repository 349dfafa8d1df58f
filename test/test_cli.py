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
