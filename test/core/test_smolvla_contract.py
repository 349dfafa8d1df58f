"""SmolVLA behind the model contract: the one runtime runs LeRobot checkpoints, `full` exactly."""

from pathlib import Path

import numpy as np
import pytest
import torch

from dysta_ros.evaluation.parity import load_cases
from dysta_ros.policy.runtime import build_runtime
from dysta_ros.types import Observation

DATA = Path(__file__).parents[1] / "data"


def case_observation(runtime, meta, arrays, index):
    images = {n: arrays[f"case{index}.image.{n}"] for n in runtime.spec.camera_names}
    return Observation(0.0, images, arrays[f"case{index}.state"], meta["cases"][index]["task"])


@pytest.mark.parametrize("fixture, reference", [
    ("smolvla_tiny", "actions_normalized"),
    ("smolvla_other", "actions_normalized"),
    ("smolvla_sim", "actions_normalized"),  # 2 expert layers of 4, an empty camera
    ("smolvla_tiny_bf16", "actions_normalized_float64"),  # fp32 upcast vs LeRobot's float64 re-run
])
def test_runtime_full_reproduces_lerobot_cases(fixture, reference):
    directory = DATA / fixture
    runtime = build_runtime(str(directory / "checkpoint"), "full", vlm=str(directory / "vlm"))
    meta, arrays = load_cases(directory)
    normalizer = runtime.model.policy.files.action_normalizer
    for case in meta["cases"]:
        i = case["index"]
        chunk, stats = runtime.step(case_observation(runtime, meta, arrays, i),
                                    noise=torch.from_numpy(arrays[f"case{i}.noise"][0]))
        normalized = normalizer.forward(torch.from_numpy(chunk.actions)).numpy()
        error = np.abs(normalized - arrays[f"case{i}.{reference}"][0]).max()
        assert error <= 1e-5, (fixture, i, error)  # the fixtures' tolerance on normalized actions
        assert stats.recomputed_tokens == stats.context_tokens  # full computes every token
        assert stats.flops_ratio == pytest.approx(1.0)  # and counts what full_flops says
        runtime.reset()


def test_both_families_implement_the_contract():
    from dysta_ros.policy.contract import PolicyModel
    from dysta_ros.policy.runtime import build_model

    vla, _ = build_model("tiny")
    tiny = DATA / "smolvla_tiny"
    smolvla, tokenizer = build_model(str(tiny / "checkpoint"), vlm=str(tiny / "vlm"))
    assert isinstance(vla, PolicyModel) and isinstance(smolvla, PolicyModel)
    assert vla.capabilities.causal_prefix and vla.capabilities.history_frames
    assert not smolvla.capabilities.causal_prefix and not smolvla.capabilities.history_frames
    assert smolvla.spec.camera_keys[0].startswith("observation.images.") and smolvla.spec.horizon == 10
    # the prefix holds the task's tokens only: padded language slots are left out
    assert len(tokenizer.encode("pick")) == int(smolvla.policy.tokenize("pick")[1].sum())


def test_smolvla_runs_single_frame_only():
    from dysta_ros.errors import ConfigError

    with pytest.raises(ConfigError, match="smolvla is single-frame"):
        build_runtime(str(DATA / "smolvla_tiny" / "checkpoint"), "full", history=3,
                      vlm=str(DATA / "smolvla_tiny" / "vlm"))
