"""The step runtime: Observation -> (ActionChunk, StepStats), with history, caches and a strategy.

The one boundary everything calls (ROS node, MuJoCo loop, bag evaluator, bench):
`runtime.step(observation)` and `runtime.reset()`. Each frame is vision-encoded once and kept
for its life in the window; the strategy builds the backbone prefix; the flow-matching expert
turns it into an action chunk. Noise comes from (seed, sequence), so every strategy sees the
same noise on the same step.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from pathlib import Path

import numpy as np
import torch

from dysta_ros.errors import CheckpointError, ConfigError, DystaError, InferenceError, InputError
from dysta_ros.policy.checkpoint import load_checkpoint
from dysta_ros.policy.config import PRESETS, preset_config
from dysta_ros.policy.devices import DTYPES, check_device, compute_dtype_for, native_bfloat16
from dysta_ros.policy.contract import PolicyModel
from dysta_ros.policy.families import FAMILIES, REAL_SIZES, family_of, load_smolvla_policy
from dysta_ros.policy.model import VLAModel
from dysta_ros.policy.speed import SpeedOptions, split_speed_options
from dysta_ros.policy.kernels import side_by_side
from dysta_ros.policy.vision_reuse import ChangedTokenEncoder, encode_full, siglip_tower
from dysta_ros.policy.timing import StageTimer
from dysta_ros.policy.tokenizer import model_tokenizer
from dysta_ros.tokens import build_strategy, strategy_class
from dysta_ros.tokens.base import Frame, StepContext, check_history
from dysta_ros.types import ActionChunk, Observation, RuntimeSpec, StepStats

log = logging.getLogger(__name__)


class PolicyRuntime:
    """Holds the model, the history window, the strategy's caches and the step counter.

    `model` is any family behind the model contract (policy/contract.py): this package's
    VLAModel or a LeRobot SmolVLA's SmolVLABackend; a strategy the family cannot run is refused.
    """

    def __init__(
        self,
        model: PolicyModel,
        strategy: str = "full",
        strategy_params: dict | None = None,
        history: int | None = None,
        seed: int = 0,
        tokenizer=None,
    ):
        self.family = FAMILIES[model.family_name]
        self.family.check_strategy(strategy)
        if strategy in self.family.approximated:  # said once, where it is built: nothing pretends
            log.warning("%s on %s is an approximation: %s", strategy, self.family.name,
                        self.family.approximated[strategy])
        self.options = speed_options(model, strategy, strategy_params)
        device = torch.device(model.device)
        compute_dtype = compute_dtype_for(self.options.compute_dtype, device)
        if compute_dtype is not None:  # SmolVLA: the same weights in another dtype (a copy, made once)
            if compute_dtype == torch.bfloat16 and not native_bfloat16(device):
                log.warning("compute_dtype bfloat16 on %s: no bf16 matrix units here, so it is emulated "
                            "and slower than float32 (compute_dtype: auto picks for you)", device)
            model = model.in_dtype(compute_dtype)
        elif (getattr(model, "stored_in_bfloat16", False) and model.dtype == torch.float32
              and native_bfloat16(device)):  # why LeRobot can be faster than `full` on this machine
            log.info("this checkpoint is stored in bf16, and LeRobot computes it in bf16; it runs here as "
                     "its exact fp32 upcast. compute_dtype: auto computes in bf16 on this device's bf16 "
                     "units (an AMX Xeon: 3.1x faster than the upcast, 0.13 %% mean action deviation)")
        self.model = model.eval()
        self.strategy = build_strategy(strategy, strategy_params, model.cfg)
        self.strategy.params.check_capabilities(model.capabilities)
        spec = model.spec
        self.history = check_history(history or self.strategy.params.history or spec.default_history)
        if self.history > 1 and not model.capabilities.history_frames:
            raise ConfigError(f"history {self.history}: {self.family.name} is single-frame (history 1)")
        self.seed = int(seed)
        self.tokenizer = tokenizer or model_tokenizer(model)
        self.spec = RuntimeSpec(
            camera_names=list(spec.camera_names),
            image_size=max(spec.image_size),
            state_dim=spec.state_dim,
            action_dim=spec.action_dim,
            horizon=spec.horizon,
            dt=spec.dt,
            action_space=spec.action_space,
            preset=spec.preset,
            strategy=strategy,
            history=self.history,
            tokens_per_frame=spec.tokens_per_frame,
            state_names=list(spec.state_names),
            action_names=list(spec.action_names),
        )
        self.reset()

    def reset(self) -> None:
        """Start a new episode or instruction: history, caches and sequence cleared."""
        self.frames: deque[Frame] = deque(maxlen=self.history)
        self.frame_count = 0
        self.sequence = 0
        self._text_cache: tuple[str, torch.Tensor] | None = None
        self.vision_encoders: dict[int, ChangedTokenEncoder] = {}  # per camera, for vision_reuse
        self.kept_frames: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # camera -> (pixels, hidden)
        self.previous_chunk: torch.Tensor | None = None  # normalized, padded: what warm_start starts from
        self.strategy.reset()

    def warm_up(self, instruction: str = "") -> None:
        """Step once on blank frames, then reset: the one-time costs fall here, not on a real chunk.

        The first step packs the weights for the CPU's matrix units and makes oneDNN's kernels
        for these shapes (the instruction's length sets the prefix's): SmolVLA at its real size,
        bf16 with vision reuse, took 1.6 s for its first step and 0.64 s after. A node calls it
        in configure, before any frame counts.
        """
        size = self.spec.image_size
        images = {name: np.zeros((size, size, 3), np.uint8) for name in self.spec.camera_names}
        self.step(Observation(0.0, images, np.zeros(self.spec.state_dim, np.float32), instruction))
        self.reset()

    def _text_embeds(self, instruction: str) -> torch.Tensor:
        if self._text_cache is None or self._text_cache[0] != instruction:
            ids = torch.tensor(self.tokenizer.encode(instruction), device=self.model.device)
            self._text_cache = (instruction, self.model.embed_text(ids))
        return self._text_cache[1]

    def noise(self, sequence: int) -> torch.Tensor:
        """The flow's starting noise (spec.noise_shape) for step `sequence`: the same for every strategy."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + sequence)
        noise = torch.randn(*self.model.spec.noise_shape, generator=generator)
        return noise.to(self.model.device, self.model.dtype)

    def _check_noise(self, noise) -> torch.Tensor:
        """The caller's flow noise on the model's device and dtype; InputError before anything changes."""
        try:
            tensor = torch.as_tensor(noise)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise InputError(f"noise is not numeric: {exc}") from exc
        shape = tuple(self.model.spec.noise_shape)
        if tuple(tensor.shape) == (1, *shape):  # with its batch of one
            tensor = tensor[0]
        if tuple(tensor.shape) != shape:
            raise InputError(f"noise shape must be {shape}, got {tuple(tensor.shape)}")
        if not bool(torch.isfinite(tensor).all()):  # every action of the chunk would come out NaN
            raise InputError("noise has non-finite values")
        return tensor.to(self.model.device, self.model.dtype)

    def step(self, obs: Observation, noise: torch.Tensor | None = None) -> tuple[ActionChunk, StepStats]:
        """Run one policy step; InputError leaves everything untouched, InferenceError resets caches.

        `noise` (spec.noise_shape) replaces the seeded flow noise, to compare with another run.
        """
        start_wall = time.time()
        timer = StageTimer(self.model.device)
        noise = None if noise is None else self._check_noise(noise)
        if not isinstance(obs.stamp, (int, float)) or not math.isfinite(obs.stamp):
            raise InputError(f"stamp must be a finite number of seconds, got {obs.stamp!r}")
        pixels, state, instruction = self.model.preprocess(obs)
        timer.lap("preprocess")
        saved_frames, saved_count, saved_chunk = list(self.frames), self.frame_count, self.previous_chunk
        try:
            with torch.inference_mode():
                actions, stats = self._infer(pixels, state, instruction, timer, noise)
        except Exception as exc:
            # Whatever the strategy had half-updated is dropped; the next good step starts clean.
            # A refused chunk was never executed: warm_start goes on from the last one that was.
            self.frames = deque(saved_frames, maxlen=self.history)
            self.frame_count = saved_count
            self.previous_chunk = saved_chunk
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
        stats.part_ms = dict(timer.parts)
        self.sequence += 1
        return chunk, stats

    def _infer(self, pixels, state: np.ndarray, instruction: str, timer: StageTimer, noise=None):
        model = self.model
        features, tokens, vision_share = self._encode(pixels, timer)  # (N, Cv), (N, W)
        frame = Frame(features=features, tokens=tokens, index=self.frame_count)
        self.frame_count += 1
        if not self.frames:  # a new episode: the window starts full of its first frame
            self.frames.extend([frame] * self.history)
        else:
            self.frames.append(frame)
        timer.lap("vision")
        ctx = StepContext(
            model=model,
            frames=list(self.frames),
            text=self._text_embeds(instruction),
            state=model.embed_observed_state(state),
            grid=model.spec.grid,
            cameras=len(self.spec.camera_names),
        )
        result = self.strategy.build_prefix(ctx)
        timer.ms["gate"] += result.gate_ms
        timer.lap("backbone")
        timer.ms["backbone"] -= result.gate_ms
        noise = self.noise(self.sequence) if noise is None else noise
        if isinstance(model, VLAModel):
            normalized = model.sample_actions(result.records, ctx.full_length, noise)
        else:  # SmolVLA reads the flow's speed options
            normalized = model.sample_actions(result.records, ctx.full_length, noise, self.options,
                                              self.previous_chunk)
            self.previous_chunk = normalized
        start = timer.now()
        actions = model.actions_to_robot(normalized)
        timer.part("postprocess", start)
        timer.lap("action_head")
        if not np.isfinite(actions).all():
            raise InferenceError("the model produced non-finite actions; the chunk is dropped")
        full = model.full_flops(ctx.full_length)
        stats = StepStats(
            strategy=self.spec.strategy,
            sequence=self.sequence,
            context_tokens=result.context_tokens,
            recomputed_tokens=ctx.computed_tokens,
            dynamic_tokens=result.dynamic_tokens,
            history_frames=len(self.frames),
            frames_attended=result.frames_attended,
            flops_ratio=self.strategy.flops(ctx) / full,
            strategy_stats=dict(result.stats),
            vision_recomputed=vision_share,
        )
        stats.fill_message_fields()
        return actions, stats


    def _encode(self, pixels, timer: StageTimer):
        """Return (features (N, Cv), tokens (N, W), share of the vision work done) of a frame's cameras.

        frame_cache (exact): a camera whose pixels equal the kept ones takes its kept vision
        hidden state; vision_reuse (approximate): each other camera through its changed-token
        encoder. SmolVLA caches by default; this package's VLA only with vision_reuse on.
        """
        options, model = self.options, self.model
        cache = options.frame_cache and (options.vision_reuse or model.family_name == "smolvla")
        if not (cache or options.vision_reuse):
            features, tokens = model.encode_frame(pixels)
            return features, tokens, 1.0
        images = camera_images(model, pixels)
        hidden: list = [None] * len(images)
        shares = [0.0] * len(images)
        todo = []
        for camera, image in enumerate(images):
            kept = self.kept_frames.get(camera)
            if cache and kept is not None and torch.equal(kept[0], image):
                hidden[camera] = kept[1]
            else:
                todo.append(camera)
        mode = camera_encoding(model.device, options, len(todo))
        if mode == "batch":  # a GPU: one encode of the cameras, one set of kernel launches
            batch = encode_full(vision_tower(model), torch.cat([images[camera] for camera in todo]))
            done = [(batch[j : j + 1], 1.0) for j in range(len(todo))]
        else:
            jobs = [self._camera_job(camera, images[camera]) for camera in todo]
            done = side_by_side(jobs) if mode == "threads" else [job() for job in jobs]
        for camera, (camera_hidden, share) in zip(todo, done):
            hidden[camera], shares[camera] = camera_hidden, share
            if cache:
                self.kept_frames[camera] = (images[camera].clone(), camera_hidden)
        start = timer.now()
        features, tokens = tokens_from_hidden(model, hidden)
        timer.part("connector", start)
        return features, tokens, float(np.mean(shares))


    def _camera_job(self, camera: int, image: torch.Tensor):
        """What encodes one camera's frame: () -> (vision hidden (1, n, Cv), share of the work done)."""
        tower = vision_tower(self.model)
        if not self.options.vision_reuse:
            return lambda: (encode_full(tower, image), 1.0)
        encoder = self.vision_encoders.get(camera)
        if encoder is None:
            encoder = self.vision_encoders[camera] = ChangedTokenEncoder(
                siglip_tower(tower), self.options.vision_threshold, self.options.vision_refresh)
        return lambda: (encoder.encode(image), encoder.last.recomputed_fraction)


def camera_encoding(device, options: SpeedOptions, cameras: int) -> str:
    """How `cameras` frames still to encode run: "threads", "batch" or "each" (one after the other).

    camera_threads is about the CPU's threads: on the CPU the cameras run side by side, each on
    its share of them. On a GPU threads only contend for the GIL and the one stream (and each
    worker would set the process's CPU thread count), so the cameras go in one batch there,
    except with vision_reuse, whose changed-token encoders take one camera each.
    """
    if cameras < 2:
        return "each"
    if torch.device(device).type == "cpu":
        return "threads" if options.camera_threads else "each"
    return "each" if options.vision_reuse else "batch"


def camera_images(model, pixels) -> list[torch.Tensor]:
    """One (1, 3, h, w) tensor per camera, from what the family's preprocess returned."""
    if isinstance(pixels, (list, tuple)):  # SmolVLA: one resized frame per camera
        return list(pixels)
    return [pixels[i : i + 1] for i in range(len(pixels))]  # this package's VLA: (C, 3, S, S)


def vision_tower(model):
    """The family's SigLIP-like vision transformer (what changed-token reuse runs through)."""
    return model.vision if isinstance(model, VLAModel) else model.vision_tower()


def tokens_from_hidden(model, hidden: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-camera vision hidden states (1, n, Cv) -> what encode_frame returns (features, tokens)."""
    if isinstance(model, VLAModel):
        features = torch.cat(hidden)
        features = features.reshape(-1, features.shape[-1])  # (C*n, Cv): cameras concatenated
        return features, model.projector(features)
    return model.tokens_from_hidden(hidden)


def speed_options(model, strategy: str, strategy_params: dict | None) -> SpeedOptions:
    """The speed options among the strategy's params (YAML + overrides) that the family reads.

    SmolVLA reads them all; this package's own VLA the vision ones (the rest are refused).
    """
    from dysta_ros.tokens import strategy_defaults

    options, _ = split_speed_options({**strategy_defaults(strategy), **(strategy_params or {})})
    if isinstance(model, VLAModel):
        unread = [k for k in OWN_VLA_UNREAD if getattr(options, k) != getattr(SpeedOptions(), k)]
        if unread:
            raise ConfigError(f"speed option(s) {unread} run on SmolVLA models only; this package's own "
                              f"VLA reads {', '.join(OWN_VLA_READS)}")
    if options.cuda_graphs and str(model.device) == "cpu":
        raise ConfigError("speed option cuda_graphs needs a CUDA device; this model runs on the CPU")
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

    A LeRobot SmolVLA directory gives (SmolVLABackend, its tokenizer): the same model contract,
    its backbone config and tokenizer read from `vlm` or the offline Hugging Face cache.
    """
    check_device(device, dtype)
    torch_dtype = DTYPES[dtype]
    if isinstance(model, PolicyModel):  # already built (a node switching strategy)
        return model, model_tokenizer(model)
    if model in PRESETS:
        torch.manual_seed(seed)
        vla = VLAModel(preset_config(model, overrides))
        return vla.to(device=device, dtype=torch_dtype), model_tokenizer(vla)
    if model in REAL_SIZES:  # a LeRobot SmolVLA of that size, random weights, no download
        from dysta_ros.policy.smolvla.realsize import real_size_policy

        from dysta_ros.policy.smolvla.backend import SmolVLABackend

        backend = SmolVLABackend(real_size_policy(model, seed=seed, device=device, dtype=torch_dtype))
        return backend, backend.tokenizer
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
        from dysta_ros.policy.smolvla.backend import SmolVLABackend

        backend = SmolVLABackend(load_smolvla_policy(path, vlm=vlm or None, device=device, dtype=torch_dtype))
        return backend, backend.tokenizer
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
) -> PolicyRuntime:
    """Build a runtime from a preset name, a checkpoint directory or an already built model.

    A LeRobot SmolVLA checkpoint (with `vlm`, see build_model) runs in the same runtime; the
    strategies its family cannot run are refused here, before anything loads.

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
) -> PolicyRuntime:
    """Return the runtime around a model from build_model (and its tokenizer)."""
    return PolicyRuntime(model, strategy=strategy, strategy_params=strategy_params, history=history,
                         seed=seed, tokenizer=tokenizer)
