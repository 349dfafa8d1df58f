"""The package builds in a ROS 2 workspace with colcon, as users of a ROS 2 package expect."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
VENV = Path(sys.prefix)


@pytest.mark.skipif(shutil.which("colcon") is None and not (VENV / "bin" / "colcon").exists(),
                    reason="colcon is not installed")
def test_colcon_build_installs_messages_package_and_executables(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "dysta_ros").symlink_to(REPO)
    env = dict(os.environ, AMENT_PREFIX_PATH=str(VENV), CMAKE_PREFIX_PATH=str(VENV),
               PATH=f"{VENV / 'bin'}:{os.environ['PATH']}")
    build = subprocess.run(
        ["colcon", "build", "--packages-select", "dysta_ros", "--cmake-args",
         f"-DPython3_EXECUTABLE={sys.executable}", "-DBUILD_TESTING=OFF"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]

    prefix = tmp_path / "install" / "dysta_ros"
    executables = {p.name for p in (prefix / "lib" / "dysta_ros").iterdir()}
    assert {"policy_node", "chunk_executor", "sim_node", "bag_player", "dysta-ros"} <= executables
    share = prefix / "share" / "dysta_ros"
    assert (share / "package.xml").is_file()
    assert (share / "config" / "robots" / "sim_arm.yaml").is_file()
    assert (share / "launch").is_dir()

    # From the install space (as after `source install/setup.bash`): our package, with its
    # generated messages, not the source tree.
    probe = ("import dysta_ros, dysta_ros.types; from dysta_ros.msg import ActionChunk, TokenStats;"
             "print(dysta_ros.types.__file__); print(ActionChunk().horizon, TokenStats().flops_ratio)")
    site = prefix / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    run = subprocess.run(
        ["bash", "-c", f"source {tmp_path}/install/setup.bash && cd / && python -c '{probe}'"],
        env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    types_file, values = run.stdout.split("\n")[:2]
    assert types_file.startswith(str(site)), types_file
    assert values == "0 0.0"
