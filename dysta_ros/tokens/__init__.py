"""Token strategies, registered by name: a new strategy is one file, one YAML and one line here."""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

import yaml

from dysta_ros.errors import ConfigError
from dysta_ros.robot import config_dirs, load_yaml

if TYPE_CHECKING:
    from dysta_ros.tokens.base import Strategy

# name -> (module, class). The classes are imported on first use, so listing the names (a
# command's --help, its choices) does not import torch.
_REGISTERED = {
    "full": ("dysta_ros.tokens.full", "FullStrategy"),
    "dysta": ("dysta_ros.tokens.dysta", "DystaStrategy"),
    "gotohunt": ("dysta_ros.tokens.gotohunt", "GotohuntStrategy"),
    "vla_cache": ("dysta_ros.tokens.vla_cache", "VlaCacheStrategy"),
    "dysta_gotohunt": ("dysta_ros.tokens.dysta_gotohunt", "DystaGotohuntStrategy"),
}

# What policy_node, `dysta-ros run` and the launch files run unless told otherwise: the
# project's point (test/core/test_one_source.py checks each place names this one).
DEFAULT_STRATEGY = "dysta"


class _Registry(Mapping):
    """Strategy classes by name, each imported when first looked up."""

    def __getitem__(self, name: str) -> type[Strategy]:
        module, cls = _REGISTERED[name]
        return getattr(importlib.import_module(module), cls)

    def __iter__(self) -> Iterator[str]:
        return iter(_REGISTERED)

    def __len__(self) -> int:
        return len(_REGISTERED)


STRATEGIES: Mapping[str, type[Strategy]] = _Registry()


def available_strategies() -> list[str]:
    return list(STRATEGIES)


def strategy_class(name: str) -> type[Strategy]:
    """Return the strategy registered as name; an unknown name lists the valid ones."""
    if name not in STRATEGIES:
        raise ConfigError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
    return STRATEGIES[name]


def strategy_defaults(name: str) -> dict:
    """Return config/strategies/<name>.yaml: what the node, bench, eval and closed loop start from."""
    strategy_class(name)
    for directory in config_dirs():
        if (path := directory / "strategies" / f"{name}.yaml").is_file():
            return load_yaml(path)
    return {}  # no config directory (a bare wheel): the Params dataclass defaults


def build_strategy(name: str, params: dict | None, model_config) -> Strategy:
    """Build strategy `name`: its YAML defaults, overridden by flat `params`."""
    cls = strategy_class(name)
    return cls(cls.Params.from_dict({**strategy_defaults(name), **(params or {})}, name), model_config)


def parse_param_overrides(items: list[str], strategies: list[str]) -> dict[str, dict]:
    """Turn repeated `--param STRATEGY.KEY=VALUE` (YAML values) into {strategy: {key: value}}."""
    params: dict[str, dict] = {name: {} for name in strategies}
    for item in items:
        name, sep, rest = item.partition(".")
        key, eq, value = rest.partition("=")
        if not sep or not eq or not key:
            raise ConfigError(f"--param {item!r}: expected STRATEGY.KEY=VALUE, e.g. dysta.delta_l1=0.1")
        if name not in params:
            raise ConfigError(f"--param {item!r}: strategy {name!r} is not one of those run "
                              f"({', '.join(strategies)})")
        try:
            params[name][key] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--param {item!r}: the value is not YAML: {exc}") from exc
    return params
