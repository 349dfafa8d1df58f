"""The core/shell split: everything outside dysta_ros.nodes imports and runs without ROS."""

import subprocess
import sys
import textwrap

# A meta-path finder that refuses ROS and message packages, as on a GPU box without ROS.
NO_ROS = textwrap.dedent(
    """
    import importlib, pkgutil, sys
    BLOCKED = ("rclpy", "rosidl_runtime_py", "std_msgs", "sensor_msgs", "geometry_msgs",
               "trajectory_msgs", "diagnostic_msgs", "builtin_interfaces", "lifecycle_msgs",
               "rosgraph_msgs", "std_srvs", "dysta_ros.msg")

    class RefuseRos:
        def find_spec(self, name, path=None, target=None):
            if name.startswith(BLOCKED):
                raise ModuleNotFoundError(f"{name} is blocked: the core must not import ROS", name=name)
            return None

    sys.meta_path.insert(0, RefuseRos())
    """
)
CORE = textwrap.dedent(
    """
    import dysta_ros
    imported = []
    for info in pkgutil.walk_packages(dysta_ros.__path__, "dysta_ros."):
        if info.name.startswith(("dysta_ros.nodes", "dysta_ros.msg")):
            continue
        importlib.import_module(info.name)
        imported.append(info.name)
    # ...and runs: a simulated arm seen by the tiny policy, one DySta step, no ROS anywhere.
    from dysta_ros.policy.runtime import build_runtime
    from dysta_ros.sim.env import SimEnv
    env = SimEnv()
    observation = env.reset("reach", seed=0)
    runtime = build_runtime("tiny", strategy="dysta")
    chunk, stats = runtime.step(observation)
    env.close()
    assert chunk.actions.shape == (runtime.spec.horizon, runtime.spec.action_dim), chunk.actions.shape
    assert stats.context_tokens > 0 and stats.strategy == "dysta"
    print(len(imported))
    """
)


def test_core_modules_import_with_ros_unimportable():
    result = subprocess.run([sys.executable, "-c", NO_ROS + CORE], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.split()[-1]) >= 5  # the core packages and their modules


def test_blocking_really_blocks_ros():
    probe = NO_ROS + "import rclpy\n"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode != 0
    assert "must not import ROS" in result.stderr
