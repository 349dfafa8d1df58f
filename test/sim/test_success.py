"""Closed-loop success per strategy: the table, the JSON and the report; the shipped checkpoint."""

import json

import pytest

from dysta_ros.cli import main
from dysta_ros.errors import ConfigError
from dysta_ros.evaluation.success import evaluate, format_table, write_report

@pytest.fixture(scope="module")
def report():
    return evaluate("tiny", "reach", episodes=1, strategies=["full", "dysta", "full@1"], history=2,
                    execute_steps=6, threads=1)


def test_every_strategy_gets_sane_numbers_from_one_run(report):
    results = {r["strategy"]: r for r in report["runs"]}
    assert list(results) == ["full", "dysta", "full@1"]
    assert [r["history"] for r in results.values()] == [2, 2, 1]
    for r in results.values():
        assert r["episodes"] == 1 and 0 <= r["successes"] <= 1
        assert 0.0 <= r["success_rate"] <= 1.0 and sum(r["reasons"].values()) == 1
        assert r["step_ms"] > 0 and r["backbone_ms"] > 0
    assert results["full"]["speedup"] == 1.0 and results["full"]["flops_ratio"] == pytest.approx(1.0)
    # DySta computes one static copy: fewer context tokens and backbone FLOPs than full.
    assert results["dysta"]["context_tokens"] < results["full"]["context_tokens"]
    assert results["dysta"]["flops_ratio"] < 1.0
    # `full@1` keeps one frame: a shorter context than `full` at T=2, still every token of it.
    assert results["full@1"]["context_tokens"] < results["full"]["context_tokens"]
    assert results["full@1"]["flops_ratio"] == pytest.approx(1.0)
    assert report["meta"]["history"] == 2 and report["meta"]["execute_steps"] == 6


def test_table_json_and_report_files(report, tmp_path):
    table = format_table(report)
    assert "full" in table.splitlines()[2] and "dysta" in table.splitlines()[3]
    assert "full@1" in table.splitlines()[4]
    write_report(report, tmp_path, command="dysta-ros closed-loop --episodes 1")
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved == json.loads(json.dumps(report))
    assert (tmp_path / "success.png").stat().st_size > 1000
    assert "dysta-ros closed-loop --episodes 1" in (tmp_path / "report.md").read_text()


def test_cli_prints_json(capsys):
    code = main(["closed-loop", "--model", "tiny", "--episodes", "1", "--strategies", "full",
                 "--history", "1", "--execute-steps", "8", "--json", "--threads", "1"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"runs", "meta"}
    assert out["runs"][0]["strategy"] == "full" and out["runs"][0]["episodes"] == 1


def test_unknown_strategy_and_bad_param_are_named():
    with pytest.raises(ConfigError, match="warp"):
        evaluate("tiny", strategies=["warp"], episodes=1)
    with pytest.raises(ConfigError, match="full@x"):
        evaluate("tiny", strategies=["full@x"], episodes=1)
    with pytest.raises(ConfigError, match="STRATEGY.KEY=VALUE"):
        evaluate("tiny", strategies=["full"], episodes=1, param_overrides=["delta=1"])
    with pytest.raises(ConfigError, match="seed"):  # numpy's ValueError after the model loaded, before
        evaluate("tiny", strategies=["full"], episodes=1, seed_start=-3)


@pytest.mark.parametrize("flag", ["--execute-steps", "--history"])
def test_zero_is_refused_not_replaced_by_the_default(flag, capsys):
    # 0 ran silently with the checkpoint's value (the table said 4 steps per chunk, T=4)
    assert main(["closed-loop", "--model", "tiny", "--episodes", "1", "--strategies", "full",
                 flag, "0", "--threads", "1"]) == 2
    assert f"{flag[2:].replace('-', '_')}: must be >= 1, got 0" in capsys.readouterr().err


def test_table_without_full_prints_no_nan(report):
    without_full = {**report, "runs": [{**r, "speedup": None} for r in report["runs"]]}
    table = format_table(without_full)
    assert "nan" not in table.lower() and table.splitlines()[3].split()[5] == "-"
    assert "1.00x" in format_table(report).splitlines()[2]
