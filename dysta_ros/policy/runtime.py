"""The step runtime: Observation -> (ActionChunk, StepStats), with history, caches and a strategy.

The one boundary everything calls (ROS node, MuJoCo loop, bag evaluator, bench):
`runtime.step(observation)` and `runtime.reset()`. Each frame is vision-encoded once and kept
for its life in the window; the strategy builds the backbone prefix; the flow-matching expert
turns it into an action chunk. Noise comes from (seed, sequence), so every strategy sees the
same noise on the same step.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import deque
from pathlib import Path

import numpy as np
import torch

from dysta_ros.errors import CheckpointError, ConfigError, DystaError, InferenceError
from dysta_ros.policy.checkpoint import load_checkpoint
from dysta_ros.policy.config import PRESETS, preset_config
from dysta_ros.policy.devices import DTYPES, check_device
from dysta_ros.policy.families import FAMILIES, REAL_SIZES, SmolVLARuntime, family_of, load_smolvla_policy
from dysta_ros.policy.model import VLAModel
from dysta_ros.policy.preprocess import prepare_observation
from dysta_ros.policy.speed import SpeedOptions, split_speed_options
from dysta_ros.policy.vision_reuse import ChangedTokenEncoder, siglip_tower
from dysta_ros.policy.timing import StageTimer
from dysta_ros.policy.tokenizer import model_tokenizer
from dysta_ros.tokens import build_strategy, strategy_class
from dysta_ros.tokens.base import Frame, StepContext, check_history
from dysta_ros.tokens.flops import full_flops
from dysta_ros.types import ActionChunk, Observation, RuntimeSpec, StepStats

log = logging.getLogger(__name__)


class PolicyRuntime:
    """Holds the model, the history window, the strategy's caches and the step counter."""

    def __init__(
        self,
        model: VLAModel,
        strategy: str = "full",
        strategy_params: dict | None = None,
        history: int | None = None,
        seed: int = 0,
        tokenizer=None,
    ):
        cfg = model.cfg
        self.model = model.eval()
        self.strategy = build_strategy(strategy, strategy_params, cfg)
        self.history = check_history(history or self.strategy.params.history or cfg.history)
        self.seed = int(seed)
        self.tokenizer = tokenizer or model_tokenizer(model)
        self.options = own_vla_options(strategy, strategy_params)
        self.spec = RuntimeSpec(
            camera_names=list(cfg.camera_names),
            image_size=cfg.vision.image_size,
            state_dim=cfg.state_dim,
            action_dim=cfg.action_dim,
            horizon=cfg.horizon,
            dt=cfg.dt,
            action_space=cfg.action_space,
            preset=cfg.preset,
            strategy=strategy,
            history=self.history,
            tokens_per_frame=cfg.tokens_per_frame,
        )
        self._stats_tensors()
        self.reset()

    def _stats_tensors(self) -> None:
        cfg, device = self.model.cfg, self.model.device
        self.state_mean = torch.tensor(cfg.state_mean or [0.0] * cfg.state_dim, device=device)
        self.state_std = torch.tensor(cfg.state_std or [1.0] * cfg.state_dim, device=device)
        self.action_mean = torch.tensor(cfg.action_mean or [0.0] * cfg.action_dim, device=device)
        self.action_std = torch.tensor(cfg.action_std or [1.0] * cfg.action_dim, device=device)

    def reset(self) -> None:
        """Start a new episode or instruction: history, caches and sequence cleared."""
        self.frames: deque[Frame] = deque(maxlen=self.history)
        self.frame_count = 0
        self.sequence = 0
        self._text_cache: tuple[str, torch.Tensor] | None = None
        self.vision_encoders: dict[int, ChangedTokenEncoder] = {}  # per camera, for vision_reuse
        self.strategy.reset()

    def _text_embeds(self, instruction: str) -> torch.Tensor:
        if self._text_cache is None or self._text_cache[0] != instruction:
            ids = torch.tensor(self.tokenizer.encode(instruction), device=self.model.device)
            self._text_cache = (instruction, self.model.embed_text(ids))
        return self._text_cache[1]

    def noise(self, sequence: int) -> torch.Tensor:
        """The flow's starting noise (H, A) for step `sequence`: the same for every strategy."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + sequence)
        noise = torch.randn(self.spec.horizon, self.spec.action_dim, generator=generator)
        return noise.to(self.model.device, self.model.dtype)

    def step(self, obs: Observation, noise: torch.Tensor | None = None) -> tuple[ActionChunk, StepStats]:
        """Run one policy step; InputError leaves everything untouched, InferenceError resets caches.

        `noise` (horizon, action_dim) replaces the seeded flow noise, to compare with another run.
        """
        start_wall = time.time()
        timer = StageTimer(self.model.device)
        pixels, state, instruction = prepare_observation(
            obs, self.spec.camera_names, self.spec.image_size, self.spec.state_dim
        )
        timer.lap("preprocess")
        saved_frames, saved_count = list(self.frames), self.frame_count
        try:
            with torch.inference_mode():
                actions, stats = self._infer(pixels, state, instruction, timer, noise)
        except Exception as exc:
            # Whatever the strategy had half-updated is dropped; the next good step starts clean.
            self.frames = deque(saved_frames, maxlen=self.history)
            self.frame_count = saved_count
            self.strategy.reset()
            if isinstance(exc, DystaError):
                raise
            raise InferenceError(f"{type(exc).__name__} during inference: {exc}") from exc
        chunk = ActionChunk(
            stamp=obs.stamp,
            actions=actions,
            dt=self.spec.dt,
            strategy=self.spec.strategy,
            sequence=self.sequence,
            action_space=self.spec.action_space,
            inference_start=start_wall,
            inference_end=time.time(),
        )
        stats.stage_ms = timer.finish()
        self.sequence += 1
        return chunk, stats

    def _infer(self, pixels: np.ndarray, state: np.ndarray, instruction: str, timer: StageTimer, noise=None):
        model, device, dtype = self.model, self.model.device, self.model.dtype
        features, tokens, vision_share = self._encode(torch.from_numpy(pixels).to(device, dtype))
        frame = Frame(features=features, tokens=tokens, index=self.frame_count)
        self.frame_count += 1
        if not self.frames:  # a new episode: the window starts full of its first frame
            self.frames.extend([frame] * self.history)
        else:
            self.frames.append(frame)
        timer.lap("vision")
        state_t = (torch.from_numpy(state).to(device) - self.state_mean) / self.state_std
        ctx = StepContext(
            model=model,
            frames=list(self.frames),
            text=self._text_embeds(instruction),
            state=model.embed_state(state_t.to(dtype)),
            grid=model.cfg.vision.grid,
            cameras=len(self.spec.camera_names),
        )
        result = self.strategy.build_prefix(ctx)
        timer.ms["gate"] += result.gate_ms
        timer.lap("backbone")
        timer.ms["backbone"] -= result.gate_ms
        noise = self.noise(self.sequence) if noise is None else torch.as_tensor(noise).to(device, dtype)
        normalised = model.sample_actions(result.records, ctx.full_length, noise)
        actions = (normalised.float() * self.action_std + self.action_mean).cpu().numpy()
        timer.lap("action_head")
        if not np.isfinite(actions).all():
            raise InferenceError("the model produced non-finite actions; the chunk is dropped")
        full = full_flops(model.cfg.backbone, ctx.full_length)
        stats = StepStats(
            strategy=self.spec.strategy,
            sequence=self.sequence,
            context_tokens=result.context_tokens,
            recomputed_tokens=ctx.computed_tokens,
            static_l1_tokens=result.static_l1_tokens,
            static_l2_tokens=result.static_l2_tokens,
            dynamic_tokens=result.dynamic_tokens,
            history_frames=len(self.frames),
            frames_attended=result.frames_attended,
            recached_l1=result.recached_l1,
            recached_l2=result.recached_l2,
            flops_ratio=self.strategy.flops(ctx) / full,
            vision_recomputed=vision_share,
        )
        return actions.astype(np.float32), stats


    def _encode(self, pixels: torch.Tensor):
        """Return (features (N, Cv), tokens (N, W), share of the vision work done) of a frame's cameras."""
        if not self.options.vision_reuse:
            features, tokens = self.model.encode_frame(pixels)
            return features, tokens, 1.0
        hidden, shares = [], []
        for camera in range(pixels.shape[0]):
            encoder = self.vision_encoders.get(camera)
            if encoder is None:
                options = self.options
                encoder = self.vision_encoders[camera] = ChangedTokenEncoder(
                    siglip_tower(self.model.vision), options.vision_threshold, options.vision_refresh)
            hidden.append(encoder.encode(pixels[camera : camera + 1])[0])
            shares.append(encoder.last.recomputed_fraction)
        features = torch.cat(hidden)  # (C*n, Cv): cameras concatenated, as encode_frame gives them
        return features, self.model.projector(features), float(np.mean(shares))


def own_vla_options(strategy: str, strategy_params: dict | None) -> SpeedOptions:
    """The speed options this package's own VLA reads (vision_reuse so far); the others are refused."""
    from dysta_ros.tokens import strategy_defaults

    options, _ = split_speed_options({**strategy_defaults(strategy), **(strategy_params or {})})
    unread = {k: v for k, v in dataclasses.asdict(options).items()
              if k in OWN_VLA_UNREAD and v != getattr(SpeedOptions(), k)}
    if unread:
        raise ConfigError(f"speed option(s) {sorted(unread)} run on SmolVLA models only; this package's own "
                          f"VLA reads {', '.join(sorted(OWN_VLA_READS))}")
    return options


OWN_VLA_READS = ("vision_reuse", "vision_threshold", "vision_refresh")
OWN_VLA_UNREAD = ("denoise_steps", "warm_start", "compute_dtype", "cuda_graphs")


def build_model(
    model: str | VLAModel = "tiny",
    device: str = "cpu",
    dtype: str = "float32",
    seed: int = 0,
    overrides: dict | None = None,
    vlm: str | None = None,
) -> tuple[VLAModel, object]:
    """Return (model, tokenizer) from a preset name (seeded random init) or a checkpoint directory.

    A LeRobot SmolVLA directory gives (SmolVLA policy, None): its tokenizer lives in the policy,
    read from `vlm` (the backbone's config and tokenizer) or the offline Hugging Face cache.
    """
    check_device(device, dtype)
    torch_dtype = DTYPES[dtype]
    if isinstance(model, VLAModel):
        return model, model_tokenizer(model)
    if hasattr(model, "predict"):  # an already loaded SmolVLA policy (a node switching strategy)
        return model, None
    if model in PRESETS:
        torch.manual_seed(seed)
        vla = VLAModel(preset_config(model, overrides))
        return vla.to(device=device, dtype=torch_dtype), model_tokenizer(vla)
    if model in REAL_SIZES:  # a LeRobot SmolVLA of that size, random weights, no download
        from dysta_ros.policy.smolvla.realsize import real_size_policy

        return real_size_policy(model, seed=seed, device=device, dtype=torch_dtype), None
    path = Path(model)
    if not path.is_dir():
        raise ConfigError(
            f"model {model!r} is neither a preset ({', '.join([*PRESETS, *REAL_SIZES])}) nor a "
            "checkpoint directory"
        )
    if overrides:
        raise ConfigError(
            "overrides apply to presets only; a checkpoint's config is what it was trained with"
        )
    if family_of(path) == "smolvla":
        return load_smolvla_policy(path, vlm=vlm or None, device=device, dtype=torch_dtype), None
    if vlm:
        raise ConfigError(f"vlm {vlm!r} applies to LeRobot SmolVLA checkpoints; {path} is this "
                          "package's own checkpoint, which carries its tokenizer")
    vla, _ = load_checkpoint(path, device=device, overrides_dtype=torch_dtype)
    tokenizer = model_tokenizer(vla)
    if tokenizer.vocab_size > vla.cfg.backbone.vocab_size:
        raise CheckpointError(
            f"{path / 'tokenizer.json'}: vocabulary of {tokenizer.vocab_size} ids does not fit "
            f"the backbone's embedding of {vla.cfg.backbone.vocab_size}"
        )
    return vla, tokenizer


def set_threads(threads: int) -> None:
    """Set torch's CPU threads for the process (0: leave torch's default, one per core).

    More threads than the cores left free by the rest of the robot (sim, rendering, drivers, a
    second process) makes every step many times slower, and speedups measured then are noise.
    """
    if threads < 0:
        raise ConfigError(f"threads must be >= 0 (0 = torch's default), got {threads}")
    if threads:
        torch.set_num_threads(threads)


def build_runtime(
    model: str | VLAModel = "tiny",
    strategy: str = "full",
    strategy_params: dict | None = None,
    history: int | None = None,
    device: str = "cpu",
    dtype: str = "float32",
    seed: int = 0,
    overrides: dict | None = None,
    threads: int = 0,
    vlm: str | None = None,
) -> PolicyRuntime | SmolVLARuntime:
    """Build a runtime from a preset name, a checkpoint directory or an already built model.

    A LeRobot SmolVLA checkpoint (with `vlm`, see build_model) gives a SmolVLARuntime with the
    same boundary; the strategies it cannot run are refused here, before anything loads.

    `threads` > 0 sets torch's CPU threads for the process: more than the cores left free by the
    rest of the robot (sim, rendering, drivers) makes every step many times slower.
    """
    set_threads(threads)
    strategy_class(strategy)  # an unknown name is refused before any model loads
    if isinstance(model, (str, Path)) and Path(model).is_dir() and family_of(model) == "smolvla":
        FAMILIES["smolvla"].check_strategy(strategy)
    vla, tokenizer = build_model(model, device, dtype, seed, overrides, vlm)
    return runtime_around(vla, strategy, strategy_params, history, seed, tokenizer)


def runtime_around(
    model,
    strategy: str = "full",
    strategy_params: dict | None = None,
    history: int | None = None,
    seed: int = 0,
    tokenizer=None,
) -> PolicyRuntime | SmolVLARuntime:
    """Return the runtime of the model's family around a model from build_model (and its tokenizer)."""
    if not isinstance(model, VLAModel):  # a SmolVLA policy: single-frame, its own tokenizer
        from dysta_ros.tokens import strategy_defaults

        options, _ = split_speed_options({**strategy_defaults(strategy), **(strategy_params or {})})
        return SmolVLARuntime(model, strategy=strategy, seed=seed, options=options)
    return PolicyRuntime(model, strategy=strategy, strategy_params=strategy_params, history=history,
                         seed=seed, tokenizer=tokenizer)
