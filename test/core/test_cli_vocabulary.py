"""One vocabulary: --model (old spellings warn), one strategy syntax, --json [FILE], --threads."""

import argparse
import json

import pytest

from dysta_ros.cli import SUBCOMMANDS, build_parser, main
from dysta_ros.cli_options import free_cores, write_json
from dysta_ros.results import recache_rate, result_document, speedup
from dysta_ros.types import StepStats

# subcommands that run a model: each takes --model, --device, --dtype, --threads
RUNS_A_MODEL = ("demo", "bench", "profile-entropy", "eval", "run", "latency", "load", "train", "closed-loop",
                "link")
# subcommands that produce a result: each takes --json [FILE]
WRITES_A_RESULT = ("demo", "bench", "profile-entropy", "bag-info", "eval", "latency", "load", "train",
                   "parity", "info", "closed-loop", "record", "replay", "run", "tracking", "convert")


def options(name: str) -> set[str]:
    parser = build_parser(name)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[name]
    return {flag for action in sub._actions for flag in action.option_strings}


@pytest.mark.parametrize("name", RUNS_A_MODEL)
def test_every_command_that_runs_a_model_spells_its_options_alike(name):
    assert {"--model", "--device", "--dtype", "--threads"} <= options(name)


@pytest.mark.parametrize("name", WRITES_A_RESULT)
def test_every_command_with_a_result_takes_json(name):
    assert "--json" in options(name)


def test_the_lists_cover_every_subcommand():
    # no model and no result: what an operator does instead of ros2cli
    operator = {"instruct", "estop", "diag", "topics"}
    assert set(RUNS_A_MODEL) | set(WRITES_A_RESULT) | operator >= set(SUBCOMMANDS)


def parse(*argv):
    return build_parser(argv[0]).parse_args(list(argv))


def test_strategies_comma_separated_and_repeated_add_up():
    assert parse("bench", "--strategies", "full,dysta").strategies == ["full", "dysta"]
    assert parse("bench", "--strategies", "full", "--strategies", "dysta,vla_cache").strategies == [
        "full", "dysta", "vla_cache"]
    assert parse("demo", "--strategy", "full,dysta").strategies == ["full", "dysta"]
    # one value per use: a positional after it is not taken for a strategy
    assert parse("eval", "--strategies", "dysta", "some.mcap").bags == ["some.mcap"]
    assert parse("demo").strategies == ["dysta"] and parse("demo").model == ["expert", "tiny"]
    assert parse("demo", "--model", "expert,tiny", "--model", "small").model == ["expert", "tiny", "small"]


@pytest.mark.parametrize("name", ["run", "latency", "load"])
def test_commands_that_run_one_strategy_take_it_in_the_same_syntax(name, capsys):
    assert parse(name, "--strategies", "full").strategy == "full"
    assert parse(name, "--strategy", "vla_cache").strategy == "vla_cache"
    for argv, says in ((["--strategy", "full,dysta"], "runs one strategy, got full, dysta"),
                       (["--strategy", "full", "--strategies", "dysta"], "got full, dysta"),
                       (["--strategy", "dysat"], "unknown strategy 'dysat'; choose one of full")):
        with pytest.raises(SystemExit) as refused:
            parse(name, *argv)
        assert refused.value.code == 2 and says in capsys.readouterr().err


def test_old_model_flags_still_work_and_warn(capsys):
    assert parse("bench", "--preset", "tiny").model == "tiny"
    assert "--preset is deprecated" in capsys.readouterr().err
    assert parse("eval", "b.mcap", "--checkpoint", "checkpoints/reference").model == ["checkpoints/reference"]
    assert "--checkpoint is deprecated" in capsys.readouterr().err
    assert parse("demo", "--policy", "expert", "tiny").model == ["expert", "tiny"]
    assert "--policy is deprecated and will be removed; use --model" in capsys.readouterr().err
    assert "--preset" not in build_parser("bench").format_help()  # hidden


def test_threads_default_is_the_free_cores_and_refuses_nonsense(capsys):
    assert parse("bench").threads >= 1 and free_cores() >= 1  # load may change between the two
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    assert "(default: free)" in " ".join(capsys.readouterr().out.split())
    assert parse("eval", "b.mcap", "--threads", "3").threads == 3
    with pytest.raises(SystemExit) as refused:
        parse("closed-loop", "--threads", "0")
    assert refused.value.code == 2 and "--threads: must be >= 1" in capsys.readouterr().err


@pytest.mark.parametrize("command,flag", [("closed-loop", "--seed-start"), ("demo", "--seed"),
                                          ("bench", "--seed"), ("train", "--seed"),
                                          ("train", "--sim-seed-start"), ("eval", "--seed"),
                                          ("record", "--seed"), ("profile-entropy", "--seed")])
def test_a_negative_seed_is_refused_when_parsed(command, flag, capsys):
    # numpy's generators refuse negative seeds: it was a traceback after the model had loaded
    required = {"train": ["--sim-episodes", "1", "--out", "x"], "eval": ["bag"],
                "record": ["--out", "x"]}.get(command, [])
    assert getattr(parse(command, *required, flag, "7"), flag[2:].replace("-", "_")) == 7
    with pytest.raises(SystemExit) as refused:
        parse(command, *required, flag, "-3")
    assert refused.value.code == 2 and f"{flag}: must be in 0.." in capsys.readouterr().err


@pytest.mark.parametrize("command,flag,kind", [
    ("closed-loop", "--json", "folder"), ("bench", "--plot", "folder"), ("closed-loop", "--report", "file"),
    ("demo", "--report", "file"), ("train", "--out", "file"), ("eval", "--json", "folder")])
def test_an_output_path_that_cannot_be_written_is_refused_when_parsed(command, flag, kind, tmp_path, capsys):
    # written only after the run: a folder given for a file (or the reverse) lost the whole run
    # in a traceback (IsADirectoryError, FileExistsError) at its end
    (tmp_path / "folder").mkdir()
    (tmp_path / "file").write_text("")
    required = {"train": ["--sim-episodes", "1"], "eval": ["b.mcap"]}.get(command, [])
    with pytest.raises(SystemExit) as refused:
        parse(command, *required, flag, str(tmp_path / kind))
    assert refused.value.code == 2 and f"{flag}: " in capsys.readouterr().err
    with pytest.raises(SystemExit):  # below a file, no folder can be made
        parse(command, *required, flag, str(tmp_path / "file" / "below" / "x.json"))
    assert "is a file, not a folder" in capsys.readouterr().err
    fine = str(tmp_path / "new" / ("x.json" if kind == "folder" else "report"))
    assert getattr(parse(command, *required, flag, fine), flag[2:]) == fine


def test_json_goes_to_stdout_without_a_file_and_to_the_file_with_one(tmp_path, capsys):
    assert parse("bench", "--json").json == "-" and parse("bench").json is None
    assert parse("bench", "--json", str(tmp_path / "r.json")).json == str(tmp_path / "r.json")
    document = result_document([{"strategy": "full", "speedup": float("nan")}], {"model": "tiny"})
    write_json("-", document)
    assert json.loads(capsys.readouterr().out) == {"runs": [{"strategy": "full", "speedup": None}],
                                                   "meta": {"model": "tiny"}}
    write_json(str(tmp_path / "sub" / "r.json"), document)
    assert json.loads((tmp_path / "sub" / "r.json").read_text())["meta"] == {"model": "tiny"}


def test_speedup_and_recache_rate_are_defined_once():
    assert speedup(40.0, 10.0) == 4.0
    assert speedup(None, 10.0) is None and speedup(40.0, None) is None and speedup(40.0, 0.0) is None
    built, reused = StepStats(recached_l1=True), StepStats()
    # an episode's first step always builds the cache and is not counted
    assert recache_rate([[built, reused, built], [built, reused]]) == pytest.approx(1 / 3)
    assert recache_rate([[built]]) is None
    assert recache_rate([[reused, StepStats(recached_l2=True)]], skip_first=False) == 0.5


def test_bench_json_on_stdout_is_the_one_shape(capsys):
    assert main(["bench", "--model", "tiny", "--strategies", "full,dysta", "--history", "2", "--steps", "1",
                 "--warmup", "1", "--threads", "1", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert set(document) == {"runs", "meta"}
    full, dysta = document["runs"]
    assert full["speedup"] == 1.0 and dysta["speedup"] > 0 and "recache_rate" in dysta
    assert document["meta"]["model"] == "tiny" and document["meta"]["threads"] == 1


def test_train_refuses_a_device_that_is_not_here_in_one_line_before_any_demo(tmp_path, capsys):
    import torch

    wanted = "cuda:7" if torch.cuda.is_available() else "cuda"  # absent either way
    for device, says in ((wanted, "available here: cpu"), ("gpu", "'gpu' is not a torch device")):
        code = main(["train", "--sim-episodes", "1", "--out", str(tmp_path / "r"), "--device", device])
        err = capsys.readouterr().err.strip()
        assert code == 2 and err.count("\n") == 0 and err.startswith("dysta-ros train: ") and says in err
    assert not (tmp_path / "r").exists()
