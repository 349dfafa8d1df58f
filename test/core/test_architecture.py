"""The package's shape: no import circles, ROS only in nodes/, and importing it changes no global state."""

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "dysta_ros"
CORE = ("policy", "tokens", "evaluation", "training", "sim", "bags")
ROS_ROOTS = ("rclpy", "rosidl_runtime_py", "launch", "launch_ros", "sensor_msgs", "std_msgs", "std_srvs",
             "lifecycle_msgs", "rcl_interfaces", "diagnostic_msgs", "trajectory_msgs", "builtin_interfaces",
             "geometry_msgs", "rosbag2_py")


def module_names() -> dict[str, Path]:
    """Return every module of dysta_ros (dotted name -> file)."""
    names = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def imports_of(name: str, path: Path, modules: set[str]) -> set[str]:
    """Return what `name` imports anywhere in its file (top level or inside functions), as dotted names."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            # `from dysta_ros.nodes import policy_node` imports the module policy_node
            found |= {f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in modules}
    return found


def import_graph() -> dict[str, set[str]]:
    """Return the graph of dysta_ros modules, with each module's imports (inside and outside the package)."""
    names = module_names()
    return {name: imports_of(name, path, set(names)) for name, path in names.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """Return one import circle among the package's modules, or None."""
    inside = {name: {m for m in deps if m in graph and m != name} for name, deps in graph.items()}
    # a package's __init__ is imported with any of its modules; edges into it are not circles of the code
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(name):
        state[name] = 1
        stack.append(name)
        for dep in sorted(inside[name]):
            if name.startswith(dep + "."):
                continue  # a module importing its own parent package (its __init__) is no circle
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        stack.pop()
        state[name] = 2
        return None

    for name in sorted(inside):
        if name not in state and (cycle := visit(name)):
            return cycle
    return None


def test_the_graph_sees_imports_inside_functions():
    graph = import_graph()
    # evaluation.demo imports PRESETS inside check_arguments: the graph must see lazy imports too
    assert "dysta_ros.policy.config" in graph["dysta_ros.evaluation.demo"]
    assert "dysta_ros.nodes.policy_node" in graph["dysta_ros.nodes.demo_session"]


def test_find_cycle_finds_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_circle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_core_never_imports_ros_or_nodes():
    offences = []
    for name, deps in import_graph().items():
        if name.split(".")[1:2] and name.split(".")[1] in CORE:
            for dep in deps:
                if dep.split(".")[0] in ROS_ROOTS or dep.startswith(("dysta_ros.nodes", "dysta_ros.msg")):
                    offences.append(f"{name} imports {dep}")
    assert not offences, "\n".join(offences)


STATE_PROBE = """
import gc, json, sys
import torch
from transformers import AttentionInterface

def state():
    return {"switch_interval": sys.getswitchinterval(), "gc_frozen": gc.get_freeze_count(),
            "torch_threads": torch.get_num_threads(),
            "torch_interop_threads": torch.get_num_interop_threads(),
            "attention": sorted(AttentionInterface._global_mapping)}

before = state()
import importlib
for name in json.loads(sys.argv[1]):
    importlib.import_module(name)
print(json.dumps({"before": before, "after": state()}))
"""


def test_importing_every_module_changes_no_interpreter_or_library_state():
    names = [n for n in module_names() if not n.endswith("__main__")]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-c", STATE_PROBE, json.dumps(names)], capture_output=True,
                            text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    states = json.loads(result.stdout.strip().splitlines()[-1])
    assert states["after"] == states["before"]


def test_building_a_model_registers_the_plan_attention():
    from transformers import AttentionInterface

    from dysta_ros.policy.attention import ATTENTION_NAME, plan_attention
    from dysta_ros.policy.config import PRESETS
    from dysta_ros.policy.model import VLAModel

    AttentionInterface._global_mapping.pop(ATTENTION_NAME, None)  # as in a fresh process
    VLAModel(PRESETS["tiny"])
    assert AttentionInterface._global_mapping[ATTENTION_NAME] is plan_attention


# Modules that build or load a model family: strategies reach a model only through the contract.
FAMILY_MODULES = ("dysta_ros.policy.model", "dysta_ros.policy.checkpoint", "dysta_ros.policy.action_expert",
                  "dysta_ros.policy.runtime", "dysta_ros.policy.families", "dysta_ros.policy.smolvla")


def test_strategies_never_import_a_model_family():
    offences = [f"{name} imports {dep}" for name, deps in import_graph().items()
                if name.startswith("dysta_ros.tokens") for dep in deps
                if dep.startswith(FAMILY_MODULES)]
    assert not offences, "\n".join(offences)
    # the check itself sees such an import: the VLA family's model imports tokens, not the reverse
    assert any(d.startswith("dysta_ros.tokens") for d in import_graph()["dysta_ros.policy.model"])
