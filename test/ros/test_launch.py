"""Launch files and config, checked statically (launch/launch_ros are not installable here).

Every executable a launch file names is an entry point of the package; every file it names
exists for every allowed argument value; every strategy has a YAML; every parameter in a YAML
is declared by the node it is for; `dysta-ros run` reads the same files.
"""

import ast
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from dysta_ros.robot import load_robot_config
from dysta_ros.tokens import available_strategies

REPO = Path(__file__).resolve().parents[2]
LAUNCH_FILES = sorted((REPO / "launch").glob("*.launch.xml"))
SHARE = "$(find-pkg-share dysta_ros)"


def console_scripts() -> dict[str, str]:
    """Return setup.py's console_scripts as {name: module}, without running setup()."""
    tree = ast.parse((REPO / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "ENTRY_POINTS":
            scripts = ast.literal_eval(node.value)["console_scripts"]
            return {s.split("=")[0].strip(): s.split("=")[1].split(":")[0].strip() for s in scripts}
    raise AssertionError("setup.py has no ENTRY_POINTS")


def cmake_executables() -> set[str]:
    text = (REPO / "CMakeLists.txt").read_text()
    return set(re.findall(r'"([\w-]+)=dysta_ros[\w.]*"', text))


def args_of(root) -> dict[str, list[str]]:
    """Return each <arg>'s possible values: its choices, or its default."""
    values = {}
    for arg in root.iter("arg"):
        if "value" in arg.attrib:
            continue  # an <include>'s argument, not a declaration
        choices = [c.attrib["value"] for c in arg.findall("choice")]
        values[arg.attrib["name"]] = choices or [arg.attrib.get("default", "")]
    return values


def substitutions(text: str, arg_values: dict[str, list[str]]) -> list[str]:
    """Return `text` with $(var x) and the package share resolved, once per value of each var."""
    results = [text.replace(SHARE, str(REPO))]
    for name in set(re.findall(r"\$\(var (\w+)\)", text)):
        results = [r.replace(f"$(var {name})", value) for r in results for value in arg_values[name]]
    return results


def test_there_are_launch_files():
    assert {p.name for p in LAUNCH_FILES} >= {"dysta.launch.xml", "robot.launch.xml"}


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=lambda p: p.name)
def test_executables_exist_and_named_files_exist_for_every_argument_value(path):
    root = ET.parse(path).getroot()
    arg_values = args_of(root)
    scripts = console_scripts()
    for node in root.iter("node"):
        assert node.attrib["pkg"] == "dysta_ros"
        executable = node.attrib["exec"]
        assert executable in scripts, f"{executable} is not a console_scripts entry point"
        assert executable in cmake_executables(), f"{executable} is not installed to lib/dysta_ros"
        module = __import__(scripts[executable], fromlist=["main"])
        assert callable(module.main)
    for element in root.iter():
        for attribute in ("from", "file"):
            if attribute in element.attrib:
                for resolved in substitutions(element.attrib[attribute], arg_values):
                    assert Path(resolved).is_file(), f"{path.name} names {resolved}, which does not exist"


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=lambda p: p.name)
def test_strategy_choices_are_the_registered_strategies_and_includes_pass_declared_args(path):
    root = ET.parse(path).getroot()
    runs_policy = any(node.attrib["exec"] == "policy_node" for node in root.iter("node"))
    if runs_policy or root.find("include") is not None:  # robot_side.launch.xml runs no policy
        assert args_of(root)["strategy"] == available_strategies()
    for include in root.iter("include"):
        included = ET.parse(include.attrib["file"].replace(SHARE, str(REPO))).getroot()
        declared = set(args_of(included))
        passed = {a.attrib["name"] for a in include.findall("arg")}
        assert passed <= declared, f"{path.name} passes undeclared args {passed - declared}"


@pytest.mark.parametrize("name", ["robot.launch.xml", "robot_side.launch.xml"])
def test_robot_launch_is_dry_run_by_default(name):
    root = ET.parse(REPO / "launch" / name).getroot()
    assert args_of(root)["dry_run"] == ["true"]


def test_the_offboard_split_runs_each_node_on_one_side_only():
    def executables(name):
        return {n.attrib["exec"] for n in ET.parse(REPO / "launch" / name).getroot().iter("node")}

    assert executables("robot_side.launch.xml") == {"chunk_executor", "robot_link"}
    assert executables("policy_host.launch.xml") == {"policy_node"}
    host = {p.attrib["name"]: p.attrib["value"]
            for p in ET.parse(REPO / "launch" / "policy_host.launch.xml").getroot().iter("param")
            if "name" in p.attrib}
    assert host["camera_transport"] == "compressed"  # raw frames never cross the link


@pytest.mark.parametrize("strategy", available_strategies())
def test_every_strategy_has_a_yaml_the_strategy_accepts(strategy):
    from dysta_ros.tokens import strategy_class

    path = REPO / "config" / "strategies" / f"{strategy}.yaml"
    assert path.is_file(), f"no {path.relative_to(REPO)}"
    strategy_class(strategy).Params.from_dict(yaml.safe_load(path.read_text()), strategy)


@pytest.mark.parametrize("path", sorted((REPO / "config" / "robots").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_robot_config_loads(path):
    robot = load_robot_config(str(path))
    assert robot.name == path.stem


@pytest.fixture(scope="module")
def declared():
    """Return {node name: set of declared parameters}, from the real nodes."""
    rclpy = pytest.importorskip("rclpy")
    from dysta_ros.nodes.chunk_executor import ChunkExecutorNode
    from dysta_ros.nodes.policy_node import PolicyNode
    from dysta_ros.nodes.robot_link import RobotLinkNode

    rclpy.init()
    nodes = [PolicyNode(), ChunkExecutorNode(), RobotLinkNode()]
    names = {node.get_name(): set(node.list_parameters([], 0).names) for node in nodes}
    for node in nodes:
        node.destroy_node()
    rclpy.shutdown()
    return names


def test_every_parameter_in_yaml_and_launch_is_declared_by_its_node(declared):
    nodes_yaml = yaml.safe_load((REPO / "config" / "dysta_nodes.yaml").read_text())
    for node, section in nodes_yaml.items():
        assert node in declared, f"dysta_nodes.yaml configures {node}, which is not a node"
        undeclared = set(section["ros__parameters"]) - declared[node]
        assert not undeclared, f"{node} does not declare {undeclared}"
    for path in LAUNCH_FILES:
        for node in ET.parse(path).getroot().iter("node"):
            assert node.attrib["name"] in declared  # node names match, so the YAML sections apply
            names = {p.attrib["name"] for p in node.findall("param") if "name" in p.attrib}
            undeclared = names - declared[node.attrib["name"]]
            assert not undeclared, f"{path.name}: {node.attrib['name']} does not declare {undeclared}"
    for strategy in available_strategies():
        keys = yaml.safe_load((REPO / "config" / "strategies" / f"{strategy}.yaml").read_text()) or {}
        undeclared = {f"{strategy}.{key}" for key in keys} - declared["policy_node"]
        assert not undeclared, f"policy_node does not declare {undeclared}"


def test_run_reads_the_same_files(declared):
    import argparse

    from dysta_ros.nodes import run

    parser = argparse.ArgumentParser()
    run.add_arguments(parser)
    args = parser.parse_args(["--strategy", "gotohunt", "--robot", "sim_arm", "--dry-run",
                              "--param", "policy_node:gotohunt.sigma=3"])
    values = run.node_values(args)
    assert values["policy_node"]["strategy"] == "gotohunt"
    assert values["policy_node"]["gotohunt.sigma"] == 3
    assert values["chunk_executor"]["dry_run"] is True
    for node, params in values.items():
        assert set(params) <= declared[node], set(params) - declared[node]
    with pytest.raises(ValueError, match="NODE:NAME=VALUE"):
        run.node_values(parser.parse_args(["--param", "inference_rate_hz=5"]))
