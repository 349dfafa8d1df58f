"""`dysta-ros run` reads params files as ROS 2 does and accepts rclpy's built-in parameters."""

import pytest
import rclpy

from dysta_ros.cli import build_parser, main
from dysta_ros.nodes.run import declared_params, node_values, to_parameters

PARAMS = """\
/**:
  ros__parameters:
    use_sim_time: true
    cpu_threads: 3
    inference_rate_hz: 4.0
policy_node:
  ros__parameters:
    inference_rate_hz: 5.0
chunk_executor:
  ros__parameters:
    control_rate_hz: 40.0
"""


def parameters(*argv):
    args = build_parser("run").parse_args(["run", *argv])
    values, declared = node_values(args), declared_params()
    return {node: {p.name: p.value for p in to_parameters(values[node], declared[node], node)}
            for node in values}


def test_wildcard_sections_apply_where_declared_and_later_sections_win(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(PARAMS)
    got = parameters("--params-file", str(path))
    assert got["policy_node"]["use_sim_time"] is True and got["chunk_executor"]["use_sim_time"] is True
    assert got["policy_node"]["cpu_threads"] == 3 and "cpu_threads" not in got["chunk_executor"]
    assert got["policy_node"]["inference_rate_hz"] == 5.0  # its own section comes after /**
    assert got["chunk_executor"]["control_rate_hz"] == 40.0
    # the command line overrides the file, wildcard or not
    got = parameters("--params-file", str(path), "--threads", "1",
                     "--param", "policy_node:use_sim_time=false")
    assert got["policy_node"]["cpu_threads"] == 1 and got["policy_node"]["use_sim_time"] is False


def test_use_sim_time_is_accepted_and_checked():
    assert parameters("--param", "policy_node:use_sim_time=true")["policy_node"]["use_sim_time"] is True


@pytest.mark.parametrize("text, says", [
    ("policy_node:\n  inference_rate_hz: 5.0\n", "section 'policy_node' has no 'ros__parameters' mapping "
     "(expected NODE: {ros__parameters: {name: value}})"),
    ("/**:\n  ros__parameters:\n    cpu_thread: 2\n", None),
])
def test_unreadable_sections_are_refused_in_one_line(tmp_path, capsys, text, says):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    if says is None:  # a wildcard name no node declares is ignored, as ROS 2 ignores it
        assert "cpu_thread" not in parameters("--params-file", str(path))["policy_node"]
        return
    assert main(["run", "--duration", "1", "--params-file", str(path)]) == 2
    err = capsys.readouterr().err
    assert says in err and len(err.strip().splitlines()) == 1, err
    assert not rclpy.ok()


def test_use_sim_time_must_be_a_bool(capsys):
    assert main(["run", "--duration", "1", "--param", "policy_node:use_sim_time=maybe"]) == 2
    assert "use_sim_time must be true or false, got 'maybe'" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["latency", "load"])
def test_latency_and_load_pass_threads_to_policy_node(command):
    from dysta_ros.nodes.camera_probe import policy_node_command

    args = build_parser(command).parse_args([command, "--threads", "2"])
    assert "cpu_threads:=2" in policy_node_command(args, ["/cam0"], None, 1.0)
    default = build_parser(command).parse_args([command])
    assert f"cpu_threads:={default.threads}" in policy_node_command(default, ["/cam0"], None, 1.0)
    assert default.threads >= 1  # the free cores


@pytest.mark.parametrize("key, namespace", [("/dysta/policy_node", None), ("/arm2/policy_node", "/arm2"),
                                            ("/*/policy_node", None)])
def test_a_section_keyed_by_the_nodes_full_name_applies_as_in_ros2(tmp_path, key, namespace):
    # ROS 2 matches a section against the node's fully qualified name (`*`: one name, `**`: any);
    # `run` dropped such a section without a word and ran on the defaults
    path = tmp_path / "params.yaml"
    path.write_text(f"{key}:\n  ros__parameters:\n    inference_rate_hz: 3.0\n")
    got = parameters("--params-file", str(path), *(["--namespace", namespace] if namespace else []))
    assert got["policy_node"]["inference_rate_hz"] == 3.0 and "inference_rate_hz" not in got["chunk_executor"]


def test_a_section_for_another_namespace_does_not_apply(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("/arm2/policy_node:\n  ros__parameters:\n    inference_rate_hz: 3.0\n")
    assert "inference_rate_hz" not in parameters("--params-file", str(path))["policy_node"]


def test_a_section_naming_every_node_of_the_namespace_gives_each_what_it_declares(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("/dysta/*:\n  ros__parameters:\n    inference_rate_hz: 3.0\n    control_rate_hz: 40.0\n")
    got = parameters("--params-file", str(path))
    assert got["policy_node"]["inference_rate_hz"] == 3.0 and "control_rate_hz" not in got["policy_node"]
    assert got["chunk_executor"]["control_rate_hz"] == 40.0
