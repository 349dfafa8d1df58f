"""`dysta-ros bench` and `profile-entropy` on the tiny preset: schema, like-for-like, schedule."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dysta_ros.cli import main
from dysta_ros.errors import ConfigError
from dysta_ros.evaluation.bench import run_bench, synthetic_observations
from dysta_ros.evaluation.entropy import entropy_profile, propose_schedule
from dysta_ros.policy.runtime import build_model
from dysta_ros.tokens import available_strategies, parse_param_overrides

SCHEMA = {
    "strategy",
    "history",
    "step_ms_p50",
    "step_ms_p90",
    "speedup",
    "context_tokens",
    "flops_ratio",
    "recache_rate",
    "action_dev_mean",
    "action_dev_max",
    "stage_ms_p50",
}


@pytest.fixture(scope="module")
def model():
    return build_model("tiny", seed=0)[0]


def test_bench_rows_compare_like_for_like(model):
    observations = synthetic_observations(4, model.cfg.camera_names, model.cfg.state_dim)
    rows = run_bench(model, available_strategies(), [1, 5], observations, warmup=1, progress=False)
    assert len(rows) == 2 * len(available_strategies())
    by_key = {(r["strategy"], r["history"]): r for r in rows}
    for row in rows:
        assert SCHEMA <= set(row) and row["steps"] == 3
        assert row["step_ms_p90"] >= row["step_ms_p50"] > 0
        assert 0 <= row["action_dev_mean"] <= row["action_dev_max"]
    for t in (1, 5):
        full = by_key[("full", t)]
        assert full["speedup"] == 1.0 and full["action_dev_max"] == 0.0 and full["flops_ratio"] == 1.0
        dysta = by_key[("dysta", t)]
        assert dysta["recomputed_tokens"] < full["recomputed_tokens"] and dysta["flops_ratio"] < 1.0
        assert dysta["static_tokens"] > 0
    # One static copy instead of one per frame: the context itself shrinks with history.
    assert by_key[("dysta", 5)]["context_tokens"] < by_key[("full", 5)]["context_tokens"]
    assert by_key[("full", 5)]["context_tokens"] > by_key[("full", 1)]["context_tokens"]
    assert by_key[("gotohunt", 5)]["frames_attended"] == 4  # num_anchors
    assert by_key[("gotohunt", 5)]["context_tokens"] < by_key[("full", 5)]["context_tokens"]


def test_bench_cli_writes_json_and_plot(tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = main(
        [
            "bench",
            "--model",
            "tiny",
            "--strategies",
            "full,dysta",
            "--history",
            "2",
            "--steps",
            "2",
            "--warmup",
            "1",
            "--json",
            str(out),
            "--quiet",
            "--param",
            "dysta.delta_l1=0.5",
        ]
    )
    assert code == 0
    data = json.loads(out.read_text())
    assert [r["strategy"] for r in data["runs"]] == ["full", "dysta"]
    assert data["meta"]["params"]["dysta"] == {"delta_l1": 0.5}
    assert (tmp_path / "bench.png").stat().st_size > 1000
    assert "speedup" in capsys.readouterr().out


def test_bench_refuses_a_json_path_its_plot_would_overwrite(tmp_path, capsys):
    # the plot goes beside --json with a .png suffix: --json x.png made the plot overwrite it
    json_file = tmp_path / "x.png"
    assert main(["bench", "--model", "tiny", "--strategies", "full", "--json", str(json_file),
                 "--quiet"]) == 2
    assert "the plot would overwrite the results" in capsys.readouterr().err and not json_file.exists()


def test_bench_cli_rejects_unknown_strategy(capsys):
    assert main(["bench", "--model", "tiny", "--strategies", "full,warp", "--quiet"]) == 2
    assert "warp" in capsys.readouterr().err


def test_param_overrides_name_the_problem():
    parsed = parse_param_overrides(["dysta.local_layers=[0, 1]", "full@2.history=2"], ["dysta", "full@2"])
    assert parsed == {"dysta": {"local_layers": [0, 1]}, "full@2": {"history": 2}}
    with pytest.raises(ConfigError, match="STRATEGY.KEY=VALUE"):
        parse_param_overrides(["dysta_delta=1"], ["dysta"])
    with pytest.raises(ConfigError, match="not one of those run"):
        parse_param_overrides(["gotohunt.sigma=2"], ["dysta"])
    with pytest.raises(ConfigError, match="not YAML"):
        parse_param_overrides(["dysta.local_layers=[0, 1"], ["dysta"])


def test_entropy_profile_sees_spiky_layers_and_schedules_them_as_all():
    model = build_model("tiny", seed=0, overrides={"backbone.layers": 3})[0]
    observations = synthetic_observations(3, model.cfg.camera_names, model.cfg.state_dim)
    flat = entropy_profile(model, observations, history=2)
    assert flat.shape == (2, 3) and np.all((flat > 0) & (flat <= 1.0 + 1e-6))
    with torch.no_grad():  # sharpen layer 2's attention: large query/key scales make it spiky
        model.backbone.layers[2].self_attn.q_proj.weight.mul_(40.0)
        model.backbone.layers[2].self_attn.k_proj.weight.mul_(40.0)
    spiky = entropy_profile(model, observations, history=2).mean(axis=0)
    assert spiky[2] < flat.mean(axis=0)[2] - 0.2
    local, strided = propose_schedule(spiky, local_threshold=0.9, strided_threshold=spiky[2] + 0.05)
    assert 2 not in local and 2 not in strided


def test_propose_schedule_leading_flat_layers_local_then_strided():
    assert propose_schedule(np.array([0.97, 0.95, 0.8, 0.5, 0.92, 0.3]), 0.9, 0.75) == ([0, 1], [2, 4])
    assert propose_schedule(np.array([0.5, 0.95]), 0.9, 0.75) == ([], [1])


def test_profile_entropy_prints_a_layer_entropy_line_vla_cache_accepts(tmp_path, capsys):
    import yaml

    from dysta_ros.tokens import build_strategy

    assert main(["profile-entropy", "--model", "tiny", "--history", "2", "--samples", "1",
                 "--plot", str(tmp_path / "entropy.png")]) == 0
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("layer_entropy:"))
    profile = yaml.safe_load(line)["layer_entropy"]
    model, _ = build_model("tiny")
    assert len(profile) == model.cfg.backbone.layers and all(0.0 <= e <= 1.0 for e in profile)
    assert build_strategy("vla_cache", {"layer_entropy": profile}, model.cfg).params.layer_entropy == profile


def test_bench_runs_speed_options_beside_full_on_a_smolvla_checkpoint(tmp_path, capsys):
    data_dir = Path(__file__).parents[1] / "data" / "smolvla_tiny"
    out = tmp_path / "smolvla.json"
    code = main(["bench", "--model", str(data_dir / "checkpoint"), "--vlm", str(data_dir / "vlm"),
                 "--strategies", "full", "--history", "1", "--steps", "2", "--warmup", "1",
                 "--camera-size", "48x64", "--options", "reference,vision,steps5",
                 "--json", str(out), "--quiet"])
    assert code == 0, capsys.readouterr().err
    data = json.loads(out.read_text())
    rows = {r["strategy"]: r for r in data["runs"]}
    assert list(rows) == ["full", "full+reference", "full+vision", "full+steps5"]
    # without the frame cache: full's actions; fewer steps move them, by a measured amount
    assert rows["full+reference"]["action_dev_max"] <= 1e-5
    assert rows["full+steps5"]["action_dev_mean"] > 1e-4
    assert rows["full+vision"]["vision_recomputed"] < 1.0
    for stage in ("preprocess", "vision", "backbone", "action_head"):
        assert rows["full"]["stage_ms_p50"][stage] > 0
    assert set(rows["full"]["part_ms_p50"]) == {"connector", "postprocess"}
    assert data["meta"]["camera_size"] == [48, 64] and data["meta"]["peak_rss_mb"] > 0
    # what it ran on: build machines differ by 2-3x, and bf16 units decide compute_dtype: auto
    from dysta_ros.policy.devices import native_bfloat16

    machine = data["meta"]["machine"]
    assert machine["cpu_count"] >= 1 and machine["cpu_capability"] and len(machine["load_average"]) == 3
    assert machine["bf16_units"] == native_bfloat16(torch.device("cpu")) and machine["gpu"] is None


def test_bench_refuses_options_the_model_family_does_not_read(capsys):
    assert main(["bench", "--preset", "tiny", "--strategies", "full", "--options", "steps5", "--quiet"]) == 2
    assert "SmolVLA" in capsys.readouterr().err
    assert main(["bench", "--preset", "tiny", "--options", "nosuch", "--quiet"]) == 2
    assert "speed_options.yaml" in capsys.readouterr().err


def test_bench_reads_frames_from_a_bag(tmp_path):
    from bag_helpers import BagSpec, write_episode_bag

    bag = write_episode_bag(tmp_path / "bag", BagSpec(episodes=1, seconds=0.6))
    out = tmp_path / "bag.json"
    assert main(["bench", "--preset", "tiny", "--strategies", "full,dysta", "--history", "1", "--steps", "2",
                 "--warmup", "1", "--frames", str(bag), "--json", str(out), "--quiet"]) == 0
    data = json.loads(out.read_text())
    assert data["meta"]["frames"] == str(bag) and data["meta"]["camera_size"] == [24, 24]
    assert main(["bench", "--preset", "tiny", "--frames", str(tmp_path / "none"), "--quiet"]) == 2


def test_bench_gives_smolvla_two_480x640_cameras_by_default(tmp_path):
    data_dir = Path(__file__).parents[1] / "data" / "smolvla_tiny"
    out = tmp_path / "default_size.json"
    assert main(["bench", "--model", str(data_dir / "checkpoint"), "--vlm", str(data_dir / "vlm"),
                 "--strategies", "full", "--history", "1", "--steps", "1", "--warmup", "0",
                 "--json", str(out), "--quiet"]) == 0
    assert json.loads(out.read_text())["meta"]["camera_size"] == [480, 640]


def test_a_run_whose_step_fails_has_no_row_and_the_others_go_on(tmp_path, capsys, monkeypatch):
    # On a lent GPU one bench is all there is: an option that breaks (a CUDA graph that will not
    # capture, out of memory) must not cost the other rows of the same command.
    from dysta_ros.policy.smolvla.model import SmolVLAModel

    denoise = SmolVLAModel.denoise

    def broken_at_five_steps(self, *args, steps=0, **kwargs):
        if steps == 5:
            raise RuntimeError("stream capture invalidated")
        return denoise(self, *args, steps=steps, **kwargs)

    monkeypatch.setattr(SmolVLAModel, "denoise", broken_at_five_steps)
    data_dir = Path(__file__).parents[1] / "data" / "smolvla_tiny"
    out = tmp_path / "smolvla.json"
    code = main(["bench", "--model", str(data_dir / "checkpoint"), "--vlm", str(data_dir / "vlm"),
                 "--strategies", "full", "--history", "1", "--steps", "2", "--warmup", "1",
                 "--camera-size", "48x64", "--options", "steps5,reference", "--json", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 1 and "full+steps5 failed at step 0" in err and "stream capture invalidated" in err
    data = json.loads(out.read_text())
    assert [r["strategy"] for r in data["runs"]] == ["full", "full+reference"]
    assert all(r["steps"] == 2 for r in data["runs"]) and data["runs"][1]["speedup"] is not None
    [failure] = data["meta"]["failed"]
    assert failure["run"] == "full+steps5" and failure["step"] == 0 and failure["history"] == 1
    assert out.with_suffix(".png").is_file()
