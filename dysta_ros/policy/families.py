"""Model families: which code a checkpoint directory needs, and what each family supports.

A checkpoint says its family in config.json: this package's own VLA has a `policy` key, a
LeRobot checkpoint a `type` ("smolvla"). Each family declares whether it keeps history frames
and how its prefix attends, so a token strategy that cannot apply is refused at build time
with the reason, never run as something it is not.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dysta_ros.errors import CheckpointError, ConfigError, DystaError, InferenceError, InputError
from dysta_ros.policy.jsonfile import read_json_file
from dysta_ros.policy.preprocess import check_image, check_state
from dysta_ros.types import STAGES, ActionChunk, Observation, RuntimeSpec, StepStats

CONFIG_FILE = "config.json"
# LeRobot configs have no control rate; chunks then say this and the README states it.
DEFAULT_DT = 1.0 / 30.0
# LeRobot SmolVLA sizes built with random weights by name (policy/smolvla/realsize.py), no download
REAL_SIZES = ("smolvla_base",)


@dataclass(frozen=True)
class Family:
    """A model family: its name, its prefix's shape, and the strategies it cannot run, with why."""

    name: str
    history_frames: bool  # keeps a window of past frames (what temporal strategies reuse)
    causal_prefix: bool  # prefix tokens attend only backwards (what caching a prefix relies on)
    refused: dict[str, str] = field(default_factory=dict)  # strategy -> why it cannot run

    def check_strategy(self, strategy: str) -> None:
        """Raise ConfigError if `strategy` cannot run on this family, saying why."""
        if strategy in self.refused:
            from dysta_ros.tokens import STRATEGIES

            runs = ", ".join(name for name in STRATEGIES if name not in self.refused)
            raise ConfigError(f"strategy {strategy!r} is refused for {self.name}: {self.refused[strategy]}; "
                              f"{self.name} runs {runs}")


SINGLE_FRAME = "SmolVLA is single-frame (no history frames to reuse)"
BIDIRECTIONAL = "SmolVLA's prefix is bidirectional, so a kept token's K/V change when any token changes"
FAMILIES: dict[str, Family] = {
    "dysta_vla": Family("dysta_vla", history_frames=True, causal_prefix=True),
    "smolvla": Family("smolvla", history_frames=False, causal_prefix=False, refused={
        "gotohunt": f"gotohunt needs history frames; {SINGLE_FRAME}",
        "dysta": f"dysta reuses static tokens across history frames; {SINGLE_FRAME}",
        "dysta_gotohunt": f"dysta_gotohunt needs history frames; {SINGLE_FRAME}",
        "vla_cache": f"vla_cache reuses cached K/V of unchanged tokens; {BIDIRECTIONAL} "
                     "(not measured yet, so not run)",
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


class SmolVLARuntime:
    """The runtime boundary around a SmolVLA policy: one frame in, one action chunk out."""

    family = FAMILIES["smolvla"]

    def __init__(self, policy, strategy: str = "full", seed: int = 0, options=None):
        from dysta_ros.policy.smolvla.policy import SmolVLASession
        from dysta_ros.policy.speed import SpeedOptions

        self.family.check_strategy(strategy)
        self.options = options or SpeedOptions()
        self.model = policy
        if self.options.compute_dtype:
            import torch

            self.model = policy.in_dtype(getattr(torch, self.options.compute_dtype))
        if self.options.cuda_graphs and str(getattr(policy, "device", "cpu")) == "cpu":
            raise ConfigError("speed option cuda_graphs needs a CUDA device; this policy runs on the CPU")
        self.session = SmolVLASession()
        self.seed = int(seed)
        spec = policy.spec
        self.max_action_dim = int(spec.max_action_dim)
        self.spec = RuntimeSpec(
            camera_names=list(spec.camera_names),
            image_size=max(spec.resize),
            state_dim=int(spec.state_dim),
            action_dim=int(spec.action_dim),
            horizon=int(spec.chunk_size),
            dt=DEFAULT_DT,
            action_space="joint_position",
            preset="smolvla",
            strategy=strategy,
            history=1,
            tokens_per_frame=0,  # SmolVLA's image tokens are not per-frame-reusable; unused
            state_names=list(getattr(spec, "state_names", None) or []),
            action_names=list(getattr(spec, "action_names", None) or []),
        )
        self.reset()

    def reset(self) -> None:
        """Start a new episode: the sequence restarts and the speed options' caches are dropped."""
        self.sequence = 0
        self.session.reset()

    def noise(self, sequence: int) -> np.ndarray:
        """The flow's starting noise (chunk, max_action_dim) for step `sequence`, from the seed."""
        rng = np.random.default_rng(self.seed * 1_000_003 + sequence)
        return rng.standard_normal((self.spec.horizon, self.max_action_dim)).astype(np.float32)

    def step(self, obs: Observation, noise=None) -> tuple[ActionChunk, StepStats]:
        """Run one policy step; bad input raises InputError, a failed forward InferenceError."""
        start_wall, start = time.time(), time.perf_counter()
        if not isinstance(obs, Observation):
            raise InputError(f"expected an Observation, got {type(obs).__name__}")
        missing = [n for n in self.spec.camera_names if n not in (obs.images or {})]
        if missing:
            raise InputError(f"missing camera(s) {missing}; the model needs {self.spec.camera_names}, "
                             f"got {sorted(obs.images or {})}")
        images = {n: check_image(n, obs.images[n]) for n in self.spec.camera_names}
        state = check_state(obs.state, self.spec.state_dim)
        if not isinstance(obs.instruction, str):
            raise InputError(f"instruction must be a string, got {type(obs.instruction).__name__}")
        noise = self.noise(self.sequence) if noise is None else noise
        try:
            actions, info = self.model.predict(images, state, obs.instruction, noise=noise,
                                               options=self.options, session=self.session)
        except DystaError:
            raise
        except Exception as exc:
            self.session.reset()  # whatever a failed step half-updated is dropped
            raise InferenceError(f"{type(exc).__name__} during inference: {exc}") from exc
        actions = np.asarray(actions, dtype=np.float32)
        if not np.isfinite(actions).all():
            raise InferenceError("the model produced non-finite actions; the chunk is dropped")
        stage_ms = {s: float(info.get(f"{s}_ms", info.get(s, 0.0))) for s in STAGES}
        # and the family's own stages (SmolVLA: connector, postprocess)
        stage_ms.update({k[:-3]: float(v) for k, v in info.items() if k.endswith("_ms")})
        stage_ms["total"] = (time.perf_counter() - start) * 1e3
        chunk = ActionChunk(stamp=obs.stamp, actions=actions, dt=self.spec.dt, strategy=self.spec.strategy,
                            sequence=self.sequence, action_space=self.spec.action_space,
                            inference_start=start_wall, inference_end=time.time())
        stats = StepStats(strategy=self.spec.strategy, sequence=self.sequence, history_frames=1,
                          frames_attended=1, stage_ms=stage_ms, flops_ratio=1.0,
                          context_tokens=int(info.get("prefix_tokens", 0)),
                          vision_recomputed=float(info.get("vision_recomputed", 1.0)))
        self.sequence += 1
        return chunk, stats
