"""Declaring ROS parameters with descriptors, and refusing bad values with what is allowed.

Each node lists its parameters once as `Param`s; `declare` gives them descriptors (ranges,
read-only, the allowed choices in the description) and returns the start-up values it refused,
`refusal` explains why a value is not acceptable (at start-up, live, or on `dysta-ros run`'s
command line), `unknown_name` refuses a name no node declares, and `read` returns the current
values as a plain dict for the node's config dataclass.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.exceptions import ParameterUninitializedException
from rclpy.parameter import Parameter

from dysta_ros.errors import ConfigError

WILDCARD = "/**"  # a parameter that came from a `/**` section of a params file: applies where declared


@dataclass(frozen=True)
class Param:
    """One ROS parameter: its default, meaning, and what values it accepts."""

    name: str
    default: Any  # bool, int, float, str or a list of one of them; its type is the parameter's
    description: str
    read_only: bool = False  # True where changing it live makes no sense
    low: float | None = None  # inclusive range for numbers
    high: float | None = None
    choices: Sequence[str] | Callable[[], Sequence[str]] | None = None  # allowed strings

    def allowed(self) -> list[str] | None:
        if self.choices is None:
            return None
        return list(self.choices() if callable(self.choices) else self.choices)

    def coerce(self, value):
        """Return `value` as this parameter's type where that loses nothing (YAML writes 10 for 10.0)."""
        if isinstance(self.default, float) and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if isinstance(self.default, list) and not isinstance(value, (str, bytes, list)):
            try:
                return list(value)  # rclpy hands number arrays over as array.array
            except TypeError:
                return value
        return value

    def refusal(self, value) -> str | None:
        """Return why `value` is not acceptable, or None if it is."""
        expected = type(self.default)
        value = self.coerce(value)
        if expected is list:
            items = self.default or value  # an empty default takes any one element type
            item = type(items[0]) if isinstance(items, (list, tuple)) and items else str
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, item) for v in value):
                return f"{self.name} must be a list of {item.__name__} values, got {value!r}"
        elif not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            return f"{self.name} must be of type {expected.__name__}, got {value!r}"
        if self.low is not None and not (self.low <= value <= self.high):
            return f"{self.name} must be in [{self.low}, {self.high}], got {value}"
        allowed = self.allowed()
        if allowed is not None and value not in allowed:
            return f"{self.name} {value!r} is not allowed; choose one of: {', '.join(allowed)}"
        return None

    def descriptor(self) -> ParameterDescriptor:
        descriptor = ParameterDescriptor(description=self.description, read_only=self.read_only)
        allowed = self.allowed()
        if allowed is not None:
            descriptor.additional_constraints = "one of: " + ", ".join(allowed)
        if self.low is not None and isinstance(self.default, float):
            descriptor.floating_point_range = [
                FloatingPointRange(from_value=float(self.low), to_value=float(self.high), step=0.0)]
        elif self.low is not None and isinstance(self.default, int):
            descriptor.integer_range = [
                IntegerRange(from_value=int(self.low), to_value=int(self.high), step=1)]
        return descriptor


def declare(node, params: Sequence[Param]) -> dict[str, str]:
    """Declare every parameter on `node`; return why each refused override was refused, by name.

    Launch/YAML/`-p` overrides apply when `refusal` accepts them. A refused one is not raised
    (rclpy would end the process with a traceback): the parameter keeps its default and the node
    decides what the refusal means (policy_node: configure fails; plain nodes: no start). An
    override of a name the node does not declare is logged, with the closest known names.
    """
    # rclpy offers no public view of a node's overrides; this dict is where it keeps them.
    overrides = getattr(node, "_parameter_overrides", {})
    refused = {}
    for param in params:
        value = param.default
        if param.name in overrides:
            given = param.coerce(overrides[param.name].value)
            reason = param.refusal(given)
            if reason is None:
                value = given
            else:
                refused[param.name] = reason
        descriptor = param.descriptor()
        if isinstance(value, list) and not value:
            # An empty list carries no element type: the default's, or strings.
            kind = Parameter.Type.from_parameter_value(param.default) if param.default \
                else Parameter.Type.STRING_ARRAY
            descriptor.type = kind.value
            node.declare_parameter(param.name, kind, descriptor, ignore_override=True)
        else:
            node.declare_parameter(param.name, value, descriptor, ignore_override=True)
    for name in overrides:
        # Warned, not refused: a parameters file's `/**` section reaches every node, needed or not.
        if not node.has_parameter(name):
            node.get_logger().warning(f"ignored: {unknown_name(name, params, node.get_name())}")
    return refused


def declare_or_refuse(node, params: Sequence[Param]) -> None:
    """Declare `params` on a plain node; raise ConfigError naming every refused start-up value.

    A plain node does not start on a refused value (see chunk_executor); policy_node instead
    keeps `declare`'s refusals and fails configure until they are fixed.
    """
    refused = declare(node, params)
    if refused:
        raise ConfigError("; ".join(refused.values()))


def unknown_name(name: str, params: Sequence[Param], owner: str) -> str | None:
    """Return why `name` is refused when no parameter in `params` has it (closest names first)."""
    known = [p.name for p in params]
    if name in known:
        return None
    def likeness(other: str) -> float:
        return difflib.SequenceMatcher(None, name, other).ratio()

    # get_close_matches' picks, ties in alphabetical order (it breaks them by reverse order)
    close = sorted(difflib.get_close_matches(name, known, n=3, cutoff=0.6), key=lambda k: (-likeness(k), k))
    hint = f" (did you mean {' or '.join(repr(k) for k in close)}?)" if close else ""
    ordered = close + sorted(set(known) - set(close))
    return f"{owner} has no parameter {name!r}{hint}; known: {', '.join(ordered)}"


def read(node, params: Sequence[Param]) -> dict[str, Any]:
    """Return the parameters' current values by name."""
    values = {}
    for param in params:
        try:
            value = node.get_parameter(param.name).value
        except ParameterUninitializedException:
            value = None
        values[param.name] = list(value) if isinstance(value, (list, tuple)) else value
        if values[param.name] is None:
            values[param.name] = param.default
    return values


def validator(params: Sequence[Param], log=None,
              apply=None) -> Callable[[list[Parameter]], SetParametersResult]:
    """Return a set-parameters callback that refuses values `params` do not allow.

    `apply({name: value})` receives accepted changes (here rather than in a post-set callback,
    which Humble lacks).
    """
    by_name = {p.name: p for p in params}

    def on_set(changes: list[Parameter]) -> SetParametersResult:
        for change in changes:
            param = by_name.get(change.name)
            reason = param.refusal(change.value) if param is not None else None
            if reason is not None:
                if log is not None:
                    log(f"refused: {reason}")
                return SetParametersResult(successful=False, reason=reason)
        if apply is not None:
            try:
                apply({change.name: change.value for change in changes})
            except ValueError as exc:  # ConfigError: the combination is refused as a whole
                return SetParametersResult(successful=False, reason=str(exc))
        return SetParametersResult(successful=True)

    return on_set


def params_file_values(path, data, nodes: Sequence[str], namespace: str = "/dysta") -> dict[str, dict]:
    """Return {node: {parameter: value}} for `nodes` from a ROS 2 params file, read as ROS 2 does.

    A section applies to a node when its key is the node's name, `/name`, `/**/name`, the
    wildcard `/**`, or matches the node's full name (`namespace`/name) as ROS 2 matches it
    (`*`: one name, `**`: any); sections apply in file order (a later one overrides). A section
    without `ros__parameters` is refused: ROS 2 would drop it without a word.
    """
    values: dict[str, dict] = {node: {} for node in nodes}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of node names to sections")
    for key, section in data.items():
        if not isinstance(section, dict) or not isinstance(section.get("ros__parameters"), dict):
            raise ConfigError(f"{path}: section {key!r} has no 'ros__parameters' mapping "
                              "(expected NODE: {ros__parameters: {name: value}})")
        name = str(key)
        wildcard = name in ("/**", "**")
        spread = wildcard or "*" in name.rsplit("/", 1)[-1]  # e.g. /dysta/*: names several nodes
        for node in nodes:
            full_name = f"{namespace.rstrip('/')}/{node}"
            if wildcard or name in (node, f"/{node}", f"/**/{node}") or _matches(name, full_name):
                # a wildcard applies to every node, each taking the names it declares (ROS 2
                # ignores the rest); marked so to_parameters can tell them from typos
                for param, value in section["ros__parameters"].items():
                    values[node].pop(param, None)
                    values[node].pop((WILDCARD, param), None)
                    values[node][(WILDCARD, param) if spread else param] = value
    return values


def _matches(key: str, full_name: str) -> bool:
    """Whether a params file's section `key` names the node `full_name` (ROS 2's `*` and `**`)."""
    pattern = re.escape("/" + key.lstrip("/"))
    pattern = pattern.replace(r"/\*\*", "(?:/[^/]+)*").replace(r"\*", "[^/]*")
    return re.fullmatch(pattern, full_name) is not None
