"""Speed options of a policy step, one dataclass for every family.

Exact savings (on by default) give `full`'s numbers within the fixture tolerance; approximate
ones (off by default) trade a measured action deviation for time, and `dysta-ros bench
--options` runs them beside `full` in one run. The keys may stand in any strategy's YAML or
--param, next to the strategy's own keys: `split_speed_options` takes them out first.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dysta_ros.errors import ConfigError

COMPUTE_DTYPES = ("", "auto", "float32", "bfloat16", "float16")


@dataclass(frozen=True)
class SpeedOptions:
    """How a step may save time. Defaults: every exact saving on, every approximate one off."""

    # exact
    frame_cache: bool = True  # a byte-identical camera frame reuses its vision tokens
    drop_pads: bool = True  # padded language slots leave the prefix (they are masked anyway)
    camera_threads: bool = True  # cameras side by side, each on its share of the CPU threads (CPU only)
    # approximate: vision reuse (Eventful-Transformers style, see policy/vision_reuse.py)
    vision_reuse: bool = False
    vision_threshold: float = 0.1  # a token is recomputed when its input moved > this x its norm
    vision_refresh: int = 8  # a full encode every N frames of a camera (1 = every frame)
    # approximate: the flow
    denoise_steps: int = 0  # Euler steps; 0 = the checkpoint's num_steps
    warm_start: bool = False  # start from the previous chunk's tail, re-noised to warm_start_time
    warm_start_time: float = 0.5  # t in (0, 1] the warm start integrates from
    warm_start_shift: int = 1  # actions executed between two chunks (the tail is shifted by it)
    # approximate: arithmetic
    compute_dtype: str = ""  # "" = the loaded dtype; "bfloat16" runs a bf16 copy; "auto": bf16 where native
    # GPU (fixed shapes): off on CPU
    cuda_graphs: bool = False  # capture the denoising loop once per prefix length and replay it

    def __post_init__(self):
        for field in dataclasses.fields(self):  # YAML's `true` for a count, or "yes" for a flag
            value, kind = getattr(self, field.name), type(field.default)
            numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not (isinstance(value, bool) if kind is bool else numeric if kind is float
                    else numeric and isinstance(value, int) if kind is int else isinstance(value, kind)):
                raise ConfigError(f"speed options: {field.name} must be of type {kind.__name__}, "
                                  f"got {value!r}")
        checks = [
            (self.vision_threshold >= 0, "vision_threshold must be >= 0"),
            (isinstance(self.vision_refresh, int) and self.vision_refresh >= 1,
             "vision_refresh must be an int >= 1"),
            (isinstance(self.denoise_steps, int) and self.denoise_steps >= 0,
             "denoise_steps must be an int >= 0"),
            (0.0 < self.warm_start_time <= 1.0, "warm_start_time must be in (0, 1]"),
            (isinstance(self.warm_start_shift, int) and self.warm_start_shift >= 0,
             "warm_start_shift must be an int >= 0"),
            (self.compute_dtype in COMPUTE_DTYPES, f"compute_dtype must be one of {list(COMPUTE_DTYPES)}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"speed options: {message}, got {dataclasses.asdict(self)}")

    @property
    def exact(self) -> bool:
        """True when nothing approximate is on (the actions are `full`'s)."""
        return self == dataclasses.replace(SpeedOptions(), frame_cache=self.frame_cache,
                                           drop_pads=self.drop_pads, cuda_graphs=self.cuda_graphs,
                                           camera_threads=self.camera_threads)

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> SpeedOptions:
        values = dict(values or {})
        unknown = sorted(set(values) - SPEED_KEYS)
        if unknown:
            raise ConfigError(f"speed options: unknown key(s) {unknown}; allowed: {sorted(SPEED_KEYS)}")
        try:
            return cls(**values)
        except TypeError as exc:
            raise ConfigError(f"speed options: {exc}") from exc


SPEED_KEYS = frozenset(f.name for f in dataclasses.fields(SpeedOptions))


def split_speed_options(params: dict | None) -> tuple[SpeedOptions, dict]:
    """Return (the speed options among params, the strategy's own params)."""
    params = dict(params or {})
    speed = {k: params.pop(k) for k in list(params) if k in SPEED_KEYS}
    return SpeedOptions.from_dict(speed), params


def option_sets_file() -> Path | None:
    """config/speed_options.yaml of the first config directory that has one."""
    from dysta_ros.robot import config_dirs

    for directory in config_dirs():
        if (path := directory / "speed_options.yaml").is_file():
            return path
    return None


def load_option_sets() -> dict[str, dict]:
    """The named option sets `dysta-ros bench --options` picks from (config/speed_options.yaml)."""
    from dysta_ros.robot import load_yaml

    path = option_sets_file()
    if path is None:
        return {"exact": {}}
    data = load_yaml(path) or {}
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ConfigError(f"{path}: expected a mapping of option-set name -> mapping of speed options")
    for name, values in data.items():
        try:
            SpeedOptions.from_dict(values)
        except ConfigError as exc:
            raise ConfigError(f"{path}: option set {name!r}: {exc}") from exc
    return data
