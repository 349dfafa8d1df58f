"""policy_node's parameters: what it declares, and the checks a change must pass before it applies.

Plain functions and one class over a dict of values (no node), so the rules are testable
without starting ROS; the node declares `PARAMS + strategy_params_from_yaml()` and asks a
`PolicyParameters` whether a change may apply.
"""

from __future__ import annotations

import yaml

from dysta_ros.clock_sync import CLOCK_SYNC_MODES
from dysta_ros.errors import ConfigError
from dysta_ros.nodes import params as P
from dysta_ros.robot import config_path, load_yaml
from dysta_ros.tokens import DEFAULT_STRATEGY, available_strategies, strategy_class

MAX_INSTRUCTION_CHARS = 4096
PARAMS = [
    P.Param("model", "tiny", "model preset name or checkpoint directory", read_only=True),
    P.Param("vlm", "", "a SmolVLA checkpoint's backbone config + tokenizer directory (\"\": the "
            "offline Hugging Face cache)", read_only=True),
    P.Param("device", "cpu", "torch device: cpu, cuda, cuda:1, ...", read_only=True),
    P.Param("dtype", "float32", "model dtype", read_only=True, choices=("float32", "bfloat16", "float16")),
    P.Param("cpu_threads", 0, "torch CPU threads (0: torch's default); keep it at the cores that are "
            "free, or every step slows down many times", read_only=True, low=0, high=1024),
    P.Param("preset_overrides", "", "YAML mapping of preset config fields to change, e.g. "
            "'{camera_names: [main, wrist]}' (presets only; state/action dims follow the robot)",
            read_only=True),
    P.Param("seed", 0, "seed of a preset's random weights and of the action noise", read_only=True,
            low=0, high=2**31 - 1),
    P.Param("strategy", DEFAULT_STRATEGY, "token strategy; a change applies from the next step (model kept)",
            choices=available_strategies),
    P.Param("robot", "sim_arm", "robot config name (config/robots/<name>.yaml) or YAML path",
            read_only=True),
    P.Param("camera_topics", [], "topics of the model's cameras, in its order (empty: robot config)",
            read_only=True),
    P.Param("camera_transport", "raw", "compressed: subscribe to each camera topic's /compressed "
            "stream (robot_link's, from a policy host)", read_only=True, choices=("raw", "compressed")),
    P.Param("clock_sync", "assume", "assume: clocks synchronised (chrony/PTP); estimate: the robot's "
            "clock from round trips to robot_link (a policy host)", read_only=True, choices=CLOCK_SYNC_MODES),
    P.Param("inference_rate_hz", 10.0, "most policy steps per second", low=0.1, high=1000.0),
    P.Param("max_image_age_s", 0.5, "hold when a camera's latest frame is older", low=0.001, high=60.0),
    P.Param("max_state_age_s", 0.5, "hold when the latest joint state is older", low=0.001, high=60.0),
    # Read-only: the topic is the one live channel (latched, length-checked); a live set of the
    # parameter was accepted and then ignored.
    P.Param("instruction", "", "instruction until the instruction topic sets one (change it there)",
            read_only=True),
    P.Param("autostart", False, "configure and activate at startup (no lifecycle manager needed)",
            read_only=True),
    P.Param("diagnostic_period_s", 1.0, "seconds between /diagnostics messages", read_only=True,
            low=0.01, high=60.0),
]


def strategy_params_from_yaml() -> list[P.Param]:
    """Return `<strategy>.<key>` parameters, defaults from config/strategies/<strategy>.yaml."""
    declared = []
    for name in available_strategies():
        try:
            values = load_yaml(config_path("strategies", name))
        except ConfigError:
            values = {}  # no YAML: the strategy's own defaults
        for key, value in values.items():
            declared.append(P.Param(f"{name}.{key}", value, f"{name} strategy parameter {key}"))
    return declared


def preset_overrides(text: str) -> dict:
    """Parse the preset_overrides parameter (a YAML mapping); raise ConfigError if it is not one."""
    try:
        overrides = yaml.safe_load(text) if text.strip() else {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"preset_overrides is not YAML: {exc}") from exc
    if not isinstance(overrides, dict):
        raise ConfigError(f"preset_overrides must be a mapping such as '{{camera_names: [main]}}', "
                          f"got {text!r}")
    return overrides


class PolicyParameters:
    """The declared parameters, the start-up values refused, and the checks of a live change."""

    def __init__(self, refused_at_start: dict[str, str] | None = None):
        self.strategy_params = strategy_params_from_yaml()
        self.params = PARAMS + self.strategy_params
        # A value refused at start-up leaves its default in place and fails configure until a
        # valid one is set: the node stays up, unconfigured, and says why (never exits on it).
        self.refused_at_start = dict(refused_at_start or {})

    def strategy_values(self, values: dict, strategy: str) -> dict:
        """Return strategy `strategy`'s parameters (without the prefix) from all the values."""
        prefix = strategy + "."
        return {p.name[len(prefix):]: values[p.name]
                for p in self.strategy_params if p.name.startswith(prefix)}

    def check(self, values: dict, changes: dict, family=None) -> bool:
        """Raise if `changes` (applied over `values`) is refused; return whether the runtime must be rebuilt.

        Validated now, so a bad strategy parameter is refused when set, not at the next step or
        when its strategy is switched to later: the active strategy and every one changed.
        `family` (the running model's) may refuse a strategy, e.g. SmolVLA a history strategy.
        A change that passes also clears a start-up refusal of the same name.
        """
        values = {**values, **changes}
        touched = {values["strategy"]} | {k.split(".", 1)[0] for k in changes
                                          if k.split(".", 1)[0] in available_strategies()}
        for strategy in sorted(touched):
            params = strategy_class(strategy).Params.from_dict(self.strategy_values(values, strategy),
                                                               strategy)
            if family is not None:
                params.check_capabilities(family.capabilities)
        if family is not None and "strategy" in changes:
            family.check_strategy(changes["strategy"])
        for name in changes:
            self.refused_at_start.pop(name, None)
        return any(k == "strategy" or "." in k for k in changes)

    def start_refusals(self) -> str:
        """Say which start-up values were refused, why, and how to get past it ("" when none)."""
        read_only = {p.name for p in self.params if p.read_only}
        return "; ".join(
            f"{reason} (refused at start-up; " + ("read-only: restart the node with a valid value)"
                                                   if name in read_only else
                                                   "set a valid value, then configure again)")
            for name, reason in self.refused_at_start.items())

    def build_runtime(self, values: dict, robot):
        """Build the runtime the values describe; a preset takes the robot's joint count."""
        from dysta_ros.policy.config import PRESETS
        from dysta_ros.policy.runtime import build_runtime

        overrides = None
        if values["model"] in PRESETS:
            joints = len(robot.joints)
            overrides = {"state_dim": joints, "action_dim": joints,
                         **preset_overrides(values["preset_overrides"])}
        return build_runtime(values["model"], values["strategy"],
                             self.strategy_values(values, values["strategy"]), device=values["device"],
                             dtype=values["dtype"], seed=values["seed"], overrides=overrides,
                             threads=values["cpu_threads"], vlm=values["vlm"] or None)

    def rebuild_runtime(self, runtime, values: dict):
        """Switch strategy live: a new runtime around the same model (history restarts)."""
        from dysta_ros.policy.runtime import build_runtime

        return build_runtime(runtime.model, values["strategy"],
                             self.strategy_values(values, values["strategy"]), seed=values["seed"])
