"""One device check where a model is built: a missing or unknown device is one line naming what exists."""

import subprocess
import sys

import pytest
import torch
from bag_helpers import BagSpec, write_episode_bag

from dysta_ros.errors import EXIT_CONFIG, ConfigError
from dysta_ros.policy.devices import check_device
from dysta_ros.policy.runtime import build_model


def test_cpu_passes_and_unknown_strings_name_what_exists():
    assert check_device("cpu", "float32").type == "cpu"
    with pytest.raises(ConfigError, match=r"device 'gpu' is not a torch device; available here: cpu"):
        check_device("gpu")
    with pytest.raises(ConfigError, match=r"dtype 'float64' is not one of float32, bfloat16, float16"):
        check_device("cpu", "float64")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_cuda_without_cuda_is_refused_by_build_model():
    refusal = r"'cuda:1' requested but CUDA is not available.*available here: cpu"
    with pytest.raises(ConfigError, match=refusal):
        build_model("tiny", device="cuda:1")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
@pytest.mark.parametrize("command", [["bench", "--quiet"], ["eval", "no-such-bag"], ["profile-entropy"]])
def test_entry_points_print_one_line_and_exit_with_the_config_status(command, tmp_path):
    if command[0] == "eval":  # eval checks its bags first: give it a real one
        command = ["eval", str(write_episode_bag(tmp_path / "bag", BagSpec(episodes=1, seconds=0.3)))]
    result = subprocess.run([sys.executable, "-m", "dysta_ros.cli", *command, "--device", "cuda"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == EXIT_CONFIG, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert "CUDA is not available" in lines[0] and "available here: cpu" in lines[0], lines


def test_compute_dtype_auto_is_bfloat16_only_where_it_is_native():
    import torch

    from dysta_ros.policy.devices import compute_dtype_for, native_bfloat16

    cpu = torch.device("cpu")
    assert compute_dtype_for("", cpu) is None and compute_dtype_for("bfloat16", cpu) == torch.bfloat16
    assert compute_dtype_for("auto", cpu) == (torch.bfloat16 if native_bfloat16(cpu) else None)
    # oneDNN's own answer: bf16 kernels need AVX512-BF16 or AMX, which an AVX2-only CPU lacks
    avx2_only = torch.backends.cpu.get_cpu_capability() == "AVX2"
    assert not (avx2_only and native_bfloat16(cpu))
