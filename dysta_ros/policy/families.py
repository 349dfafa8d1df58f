"""Model families: which code a checkpoint directory needs, and what each family supports.

A checkpoint says its family in config.json: this package's own VLA has a `policy` key, a
LeRobot checkpoint a `type` ("smolvla"). Each family declares its capabilities (history frames,
how its prefix attends) and, from them, which token strategies run as designed, which run as a
stated approximation, and which are refused at build time with the reason, never run as
something they are not.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


from dysta_ros.errors import CheckpointError, ConfigError
from dysta_ros.policy.contract import Capabilities
from dysta_ros.policy.checkpoint_files import read_json_file

CONFIG_FILE = "config.json"
# LeRobot configs have no control rate; chunks then say this and the README states it.
DEFAULT_DT = 1.0 / 30.0
# LeRobot SmolVLA sizes built with random weights by name (policy/smolvla/realsize.py), no download
REAL_SIZES = ("smolvla_base",)


@dataclass(frozen=True)
class Family:
    """A model family: its name, its prefix's shape, and the strategies it cannot run, with why."""

    name: str
    capabilities: Capabilities  # what its models support (each model carries the same object)
    refused: dict[str, str] = field(default_factory=dict)  # strategy -> why it cannot run
    approximated: dict[str, str] = field(default_factory=dict)  # strategy -> what it approximates here

    def strategy_table(self) -> dict[str, str]:
        """Return strategy -> "exact" / "approximated: what" / "refused: why" on this family."""
        from dysta_ros.tokens import STRATEGIES

        table = {}
        for name in STRATEGIES:
            if name in self.refused:
                table[name] = f"refused: {self.refused[name]}"
            elif name in self.approximated:
                table[name] = f"approximated: {self.approximated[name]}"
            else:
                table[name] = "exact" if name == "full" else "runs as designed"
        return table

    def check_strategy(self, strategy: str) -> None:
        """Raise ConfigError if `strategy` cannot run on this family, saying why."""
        if strategy in self.refused:
            from dysta_ros.tokens import STRATEGIES

            runs = ", ".join(name for name in STRATEGIES if name not in self.refused)
            raise ConfigError(f"strategy {strategy!r} is refused for {self.name}: {self.refused[strategy]}; "
                              f"{self.name} runs {runs}")


SINGLE_FRAME = "SmolVLA is single-frame (no history frames)"
# What vla_cache and dysta approximate on SmolVLA (README "Bring your LeRobot checkpoint").
BIDIRECTIONAL_REUSE = (
    "SmolVLA's prefix is bidirectional, so a kept token's K/V also depend on the tokens that "
    "changed since they were computed: reusing them across steps is an approximation (exact on an "
    "unchanged frame)"
)
FAMILIES: dict[str, Family] = {
    "dysta_vla": Family("dysta_vla", Capabilities(history_frames=True, causal_prefix=True)),
    "smolvla": Family("smolvla", Capabilities(history_frames=False, causal_prefix=False), refused={
        "gotohunt": f"gotohunt needs history frames; {SINGLE_FRAME}",
        "dysta_gotohunt": f"dysta_gotohunt needs history frames; {SINGLE_FRAME}",
    }, approximated={
        "vla_cache": f"reuses the last step's K/V of unchanged patches; {BIDIRECTIONAL_REUSE}",
        "dysta": f"keeps the static patches' K/V cached between refreshes, across consecutive steps of "
                 f"its one frame; {BIDIRECTIONAL_REUSE}",
    }),
}


def family_of(directory) -> str:
    """Return the family name of a checkpoint directory from its config.json."""
    path = Path(directory) / CONFIG_FILE
    data = read_json_file(path, f" (a checkpoint directory holds {CONFIG_FILE})")
    if isinstance(data, dict) and "type" in data:
        if data["type"] not in FAMILIES or data["type"] == "dysta_vla":
            supported = ", ".join(f"'type': {name!r}" for name in FAMILIES if name != "dysta_vla")
            raise CheckpointError(f"{path}: key 'type' is {data['type']!r}, not a supported family "
                                  f"(supported: {supported}, or this package's own checkpoints with a "
                                  f"'policy' key)")
        return str(data["type"])
    if isinstance(data, dict) and "policy" in data:
        return "dysta_vla"
    lerobot = ", ".join(n for n in FAMILIES if n != "dysta_vla")
    raise CheckpointError(f"{path}: missing key 'policy' (the model config of this package's checkpoints) "
                          f"or key 'type' (a LeRobot checkpoint: {lerobot})")


def load_smolvla_policy(directory, vlm=None, device: str = "cpu", dtype=None):
    """Load a LeRobot SmolVLA checkpoint directory (torch and transformers imported here)."""
    from dysta_ros.policy.smolvla import load_smolvla

    return load_smolvla(directory, vlm_dir=vlm, device=device, dtype=dtype)
