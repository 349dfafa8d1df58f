"""What a training run depends on (`TrainConfig`), torch-free so `dysta-ros train --help` is instant."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from dysta_ros.errors import ConfigError
from dysta_ros.sim.tasks import TASKS, check_seed


def check_run_fields(cfg, positive: tuple[str, ...], not_negative: tuple[str, ...]) -> None:
    """Raise ConfigError naming the first field out of range (both trainers' configs).

    Caught here, before any demo is made: otherwise a negative warm-up or cache age ran a
    wrong schedule or failed deep in numpy/torch, and `--steps 0` saved untrained weights.
    """
    for name in positive:
        if not getattr(cfg, name) >= 1:
            raise ConfigError(f"{name}: must be >= 1, got {getattr(cfg, name)}")
    for name in not_negative:
        if not 0 <= getattr(cfg, name) < math.inf:  # NaN fails too
            raise ConfigError(f"{name}: must be >= 0 and finite, got {getattr(cfg, name)}")
    for name in ("seed", "sim_seed_start"):
        if hasattr(cfg, name):
            try:
                check_seed(getattr(cfg, name))
            except ConfigError:
                raise ConfigError(f"{name}: must be an integer >= 0, got {getattr(cfg, name)}") from None


@dataclass
class TrainConfig:
    """Everything a training run depends on; a resumed run must match it (but `steps`)."""

    out: str
    preset: str = "tiny"
    overrides: dict = field(default_factory=dict)  # dotted model-config overrides
    bags: list[str] = field(default_factory=list)
    topic_map: str = "sim_arm"  # where the bags keep cameras, states, actions (config/bag_topics/)
    sim_episodes: int = 0  # expert episodes per task (used when no bags are given)
    tasks: list[str] = field(default_factory=lambda: ["reach"])
    sim_seed_start: int = 0  # training seeds are sim_seed_start .. + sim_episodes - 1
    action_noise: float = 0.03  # rad: std cap of the perturbation on what the expert executes
    steps: int = 2000
    batch: int = 32
    history: int = 2  # frames T per window (also the checkpoint's default history)
    frame_stride: int = 4  # control steps between history frames = steps executed per chunk
    max_cache_age: int = 8  # largest static-cache age dt (runtime steps) seen in training
    gate_lambda: float = 0.1  # reuse prior p_dt = 1 - exp(-lambda dt)
    # DySta layout trained on (l1_fraction, l2_fraction, cache_language; missing: the default),
    # recorded in the checkpoint: run it with the same `dysta` parameters.
    dysta: dict = field(default_factory=dict)
    lr: float = 1e-3
    warmup: int = 100
    weight_decay: float = 0.01
    seed: int = 0
    save_every: int = 500
    threads: int = 1  # torch threads; on a shared CPU more threads than free cores is ~10x slower
    device: str = "cpu"  # torch device the model and batches live on (checked when training starts)
    dtype: str = "float32"  # compute dtype (autocast); weights, moments and checkpoints stay float32

    def __post_init__(self):
        check_run_fields(self,
                         positive=("steps", "batch", "history", "frame_stride", "save_every", "threads"),
                         not_negative=("max_cache_age", "warmup", "action_noise", "weight_decay"))
        if self.batch < 2:
            raise ConfigError(f"batch: must be >= 2 (InfoNCE needs negatives), got {self.batch}")
        unknown = sorted(set(self.tasks) - set(TASKS))
        if unknown:
            raise ConfigError(f"tasks: unknown {unknown}; choose from {', '.join(TASKS)}")
        if not self.bags and self.sim_episodes < 1:
            raise ConfigError("bags / sim_episodes: give --bags BAG... or --sim-episodes N >= 1")
        if not (0 < self.lr < math.inf and 0 < self.gate_lambda < math.inf):
            raise ConfigError(f"lr and gate_lambda must be > 0, got {self.lr}, {self.gate_lambda}")
        from dysta_ros.tokens.dysta import layout_params  # torch: imported to check, not to parse

        self.dysta = layout_params(self.dysta, "dysta")

    def data_key(self) -> dict:
        """The fields that decide the model and the data; a resume must not change them."""
        # a run may be moved (another folder, machine or device) or extended
        free = ("out", "steps", "save_every", "threads", "device", "dtype")
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in free}
