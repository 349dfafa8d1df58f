"""Every tool builds strategies from config/strategies/<name>.yaml, not only policy_node."""

import pytest
import yaml

import dysta_ros.tokens as tokens
from dysta_ros.errors import ConfigError
from dysta_ros.policy.config import preset_config


def write_strategy_yaml(root, name, values):
    (root / "strategies").mkdir(parents=True, exist_ok=True)
    (root / "strategies" / f"{name}.yaml").write_text(yaml.safe_dump(values))


def test_an_edited_yaml_changes_what_build_strategy_builds(tmp_path, monkeypatch):
    monkeypatch.setattr(tokens, "config_dirs", lambda: [tmp_path])
    write_strategy_yaml(tmp_path, "dysta", {"max_static_age": 7, "delta_l1": 0.25})
    config = preset_config("tiny")
    built = tokens.build_strategy("dysta", None, config)
    assert (built.params.max_static_age, built.params.delta_l1) == (7, 0.25)
    overridden = tokens.build_strategy("dysta", {"max_static_age": 3}, config)  # flat params win
    assert (overridden.params.max_static_age, overridden.params.delta_l1) == (3, 0.25)


def test_a_bad_yaml_value_is_refused_naming_the_field(tmp_path, monkeypatch):
    monkeypatch.setattr(tokens, "config_dirs", lambda: [tmp_path])
    write_strategy_yaml(tmp_path, "gotohunt", {"sigma": 0})
    with pytest.raises(ConfigError, match="sigma"):
        tokens.build_strategy("gotohunt", None, preset_config("tiny"))


def test_without_a_config_directory_the_dataclass_defaults_apply(monkeypatch):
    monkeypatch.setattr(tokens, "config_dirs", lambda: [])
    built = tokens.build_strategy("dysta", None, preset_config("tiny"))
    assert built.params == tokens.strategy_class("dysta").Params()


@pytest.mark.parametrize("strategy, key", [
    ("dysta", "delta_l1"), ("dysta", "delta_l2"), ("dysta", "learned_gate_threshold"),
    ("dysta_gotohunt", "delta_l1"), ("vla_cache", "similarity_threshold")])
def test_a_nan_threshold_is_refused_naming_it(strategy, key):
    # NaN passed every range check and meant "never" (delta_l1: the static cache never refreshed on change)
    with pytest.raises(ConfigError, match=f"{key} must be a number, got nan"):
        tokens.strategy_class(strategy).Params.from_dict({key: float("nan")}, strategy)
