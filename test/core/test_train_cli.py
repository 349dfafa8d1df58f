"""`dysta-ros train --out` never overwrites a saved run silently."""

from dysta_ros.cli import main
from dysta_ros.errors import EXIT_CONFIG
from dysta_ros.policy.checkpoint import save_checkpoint
from dysta_ros.policy.runtime import build_model
from dysta_ros.training.train import check_out


def test_train_over_a_saved_run_refuses_without_resume_or_force(tmp_path, capsys):
    out = tmp_path / "run"
    check_out(str(out), resume=False, force=False)  # nothing there yet: a fresh run may start
    model, _ = build_model("tiny")
    save_checkpoint(out, model)
    before = (out / "model.safetensors").read_bytes()
    assert main(["train", "--out", str(out), "--sim-episodes", "1", "--steps", "1"]) == EXIT_CONFIG
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "holds a run already (config.json)" in err and "--force" in err
    assert (out / "model.safetensors").read_bytes() == before
    assert main(["train", "--out", str(out), "--sim-episodes", "1", "--resume", "--force"]) == EXIT_CONFIG
    assert "contradict" in capsys.readouterr().err
    check_out(str(out), resume=False, force=True)  # --force: told to overwrite, so no refusal
