"""Each fact once: where a value must also be written elsewhere (YAML, launch files), it equals the source."""

import dataclasses
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from dysta_ros import robot
from dysta_ros.errors import ConfigError
from dysta_ros.execution import EXECUTOR_RANGES, ExecutorConfig
from dysta_ros.policy import config as policy_config
from dysta_ros.tokens import DEFAULT_STRATEGY, available_strategies, strategy_class

REPO = Path(__file__).resolve().parents[2]


def plain(value):
    """Return `value` with tuples as lists, as YAML writes them."""
    return [plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def test_one_list_of_action_spaces():
    assert policy_config.ACTION_SPACES is robot.ACTION_SPACES
    # every action space can reach a robot through some command output, and only those exist
    assert set(robot.OUTPUT_ACTION_SPACE.values()) == set(robot.ACTION_SPACES)
    cfg = policy_config.preset_config("tiny").to_dict()
    with pytest.raises(ConfigError, match="joint_velocity"):
        policy_config.PolicyConfig.from_dict({**cfg, "action_space": "joint_velocity"})


@pytest.mark.parametrize("strategy", available_strategies())
def test_strategy_yaml_states_exactly_the_params_dataclass_defaults(strategy):
    params = strategy_class(strategy).Params
    defaults = {f.name: plain(f.default if f.default is not dataclasses.MISSING else f.default_factory())
                for f in dataclasses.fields(params)}
    written = yaml.safe_load((REPO / "config" / "strategies" / f"{strategy}.yaml").read_text()) or {}
    assert sorted(written) == sorted(defaults), f"{strategy}.yaml keys differ from {params.__name__}'s fields"
    assert {k: plain(v) for k, v in written.items()} == defaults


def test_executor_parameters_take_default_and_range_from_the_executor_config():
    from dysta_ros.nodes.chunk_executor import PARAMS

    declared = {p.name: p for p in PARAMS}
    for field in dataclasses.fields(ExecutorConfig):
        assert declared[field.name].default == field.default, field.name
        assert (declared[field.name].low, declared[field.name].high) == EXECUTOR_RANGES.get(field.name,
                                                                                            (None, None))
    for name, (low, high) in EXECUTOR_RANGES.items():  # the range the config refuses outside of
        with pytest.raises(ConfigError, match=f"{name} must be in"):
            ExecutorConfig(**{name: high * 2 + 1})
        ExecutorConfig(**{name: low})


def test_node_parameter_file_repeats_the_declared_defaults():
    from dysta_ros.nodes import chunk_executor, policy_node

    written = yaml.safe_load((REPO / "config" / "dysta_nodes.yaml").read_text())
    for node, params in (("policy_node", policy_node.PARAMS), ("chunk_executor", chunk_executor.PARAMS)):
        declared = {p.name: p.default for p in params}
        for key, value in written[node]["ros__parameters"].items():
            if key == "autostart":
                continue  # launch starts the node itself; standalone, it waits for a lifecycle manager
            assert value == declared[key], f"dysta_nodes.yaml {node}.{key}: {value!r} != {declared[key]!r}"


def launch_default(path: Path) -> str:
    if path.suffix == ".xml":
        args = ET.parse(path).getroot().iter("arg")
        return next(a.get("default") for a in args if a.get("name") == "strategy" and "value" not in a.attrib)
    text = path.read_text()
    start = text.index('DeclareLaunchArgument("strategy"')
    return text[start:].split('default_value="', 1)[1].split('"', 1)[0]


def test_one_default_strategy_everywhere():
    import argparse

    from dysta_ros.nodes import policy_node, run

    assert {p.name: p.default for p in policy_node.PARAMS}["strategy"] == DEFAULT_STRATEGY
    parser = argparse.ArgumentParser()
    run.add_arguments(parser)
    assert parser.parse_args([]).strategy == DEFAULT_STRATEGY
    launches = sorted((REPO / "launch").glob("*.launch.*"))
    assert launches
    for path in launches:
        if 'name="strategy"' in path.read_text() or 'DeclareLaunchArgument("strategy"' in path.read_text():
            assert launch_default(path) == DEFAULT_STRATEGY, path.name
