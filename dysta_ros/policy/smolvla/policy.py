"""SmolVLAPolicy: a LeRobot SmolVLA checkpoint run by the project's own code, stage by stage."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dysta_ros.errors import CheckpointError, ConfigError, InputError
from dysta_ros.policy.smolvla.checkpoint import CheckpointFiles, map_weights, read_checkpoint
from dysta_ros.policy.smolvla.config import ACTION_KEY, STATE_KEY
from dysta_ros.policy.smolvla.model import SmolVLAModel
from dysta_ros.policy.speed import SpeedOptions
from dysta_ros.policy.timing import StageTimer
from dysta_ros.policy.kernels import side_by_side
from dysta_ros.policy.vision_reuse import ChangedTokenEncoder, siglip_tower


@dataclass(frozen=True)
class SmolVLASpec:
    """What a runtime needs to know about a loaded SmolVLA checkpoint."""

    camera_keys: tuple[str, ...]
    camera_names: tuple[str, ...]
    resize: tuple[int, int]  # (width, height) the images are resized-with-padding to
    state_dim: int
    action_dim: int
    state_names: list[str]
    action_names: list[str]
    chunk_size: int
    n_action_steps: int
    num_steps: int
    max_state_dim: int
    max_action_dim: int
    normalization: dict[str, str]  # feature key -> MEAN_STD / MIN_MAX / IDENTITY
    dtype_layout: dict[str, int]  # tensors per dtype in model.safetensors
    parameter_count: int
    family: str = "smolvla"
    history_frames: bool = False  # SmolVLA is single-frame
    prefix_attention: str = "bidirectional"  # images + language form one bidirectional block
    extra: dict = field(default_factory=dict)


def build_model(files: CheckpointFiles, device="cpu", dtype: torch.dtype | None = None) -> SmolVLAModel:
    """Build the network on the meta device, then place the checkpoint's tensors in it."""
    with torch.device("meta"):
        model = SmolVLAModel(files.cfg, files.vlm)
    expected = {name: tuple(p.shape) for name, p in model.state_dict().items()}
    shapes = {k: tuple(t.shape) for k, t in files.weights.items()}
    mapping, _ = map_weights(expected, shapes, files.cfg, str(files.directory / "model.safetensors"))
    target = dtype or torch.float32  # CPU default: every tensor upcast to fp32
    state = {name: files.weights[key].to(device=device, dtype=target) for name, key in mapping.items()}
    model.load_state_dict(state, strict=True, assign=True)
    left = [n for n, b in model.named_buffers() if b.is_meta]
    if left:
        raise CheckpointError(f"{files.directory / 'model.safetensors'}: no value for buffer {left[0]!r}")
    return model.eval()


def fitted_size(h: int, w: int, width: int, height: int) -> tuple[int, int]:
    """(new_h, new_w) of an h x w frame resized to fit (width, height) keeping aspect, as LeRobot's."""
    ratio = max(w / width, h / height)
    return int(h / ratio), int(w / ratio)


def resize_with_pad(image: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Resize (B, 3, h, w) in [0, 1] to fit (width, height) keeping aspect; pad top/left with 0."""
    new_h, new_w = fitted_size(*image.shape[2:], width, height)
    image = F.interpolate(image, size=(new_h, new_w), mode="bilinear", align_corners=False)
    return F.pad(image, (max(0, width - new_w), 0, max(0, height - new_h), 0), value=0.0)


class SmolVLAPolicy:
    """A LeRobot SmolVLA checkpoint: prepare inputs, encode images, prefix pass, denoise."""

    def __init__(self, files: CheckpointFiles, model: SmolVLAModel, device):
        self.files, self.cfg, self.model = files, files.cfg, model
        self.device = torch.device(device)
        self.dtype = next(model.parameters()).dtype
        cfg = files.cfg
        self.spec = SmolVLASpec(
            camera_keys=cfg.camera_keys,
            camera_names=cfg.camera_names,
            resize=cfg.resize,
            state_dim=cfg.state_dim,
            action_dim=cfg.action_dim,
            state_names=list(cfg.state_names),
            action_names=list(cfg.action_names),
            chunk_size=cfg.chunk_size,
            n_action_steps=cfg.n_action_steps,
            num_steps=cfg.num_steps,
            max_state_dim=cfg.max_state_dim,
            max_action_dim=cfg.max_action_dim,
            normalization={
                **{k: cfg.normalization_of(k) for k in cfg.camera_keys},
                STATE_KEY: files.state_normalizer.mode,
                ACTION_KEY: files.action_normalizer.mode,
            },
            dtype_layout=files.dtype_layout,
            parameter_count=files.parameter_count,
        )

    # -- stages ------------------------------------------------------------------------------
    def tokenize(self, task: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Return token ids and mask (1, L) of task + newline, padded as the config says."""
        tokenizer = self.files.tokenizer
        max_length = self.cfg.tokenizer_max_length
        ids = tokenizer.encode(task + "\n").ids
        if len(ids) > max_length:
            # truncation keeps the first tokens (so a long task loses its newline, as in LeRobot)
            tokenizer.enable_truncation(max_length)
            ids = tokenizer.encode(task + "\n").ids
            tokenizer.no_truncation()
        length = max_length if self.cfg.pad_language_to == "max_length" else len(ids)
        pad = self.files.vlm.text.pad_token_id
        tokens = torch.full((1, length), pad, dtype=torch.long)
        tokens[0, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        mask = torch.zeros((1, length), dtype=torch.bool)
        mask[0, : len(ids)] = True
        return tokens.to(self.device), mask.to(self.device)

    def prepare_pixels(self, images: dict, skip=frozenset()) -> list[torch.Tensor | None]:
        """Return each camera's frame (1, 3, h, w) resized-with-padding, in SigLIP's [-1, 1] (model order).

        Cameras in `skip` (their tokens are reused) get None instead of pixels.
        """
        pixels = []
        for name in self.spec.camera_names:
            frame = np.asarray(images[name])
            if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
                raise InputError(
                    f"images[{name!r}]: expected HxWx3 uint8 RGB, got {frame.dtype} {frame.shape}"
                )
            if min(fitted_size(*frame.shape[:2], *self.cfg.resize)) < 1:  # else a bare torch error, mid-step
                raise InputError(f"images[{name!r}]: a {frame.shape[0]}x{frame.shape[1]} frame keeps no "
                                 f"row or column when fitted to {self.cfg.resize[0]}x{self.cfg.resize[1]}")
            if name in skip:
                pixels.append(None)
                continue
            image = torch.from_numpy(np.ascontiguousarray(frame)).to(self.device).permute(2, 0, 1)[None]
            image = resize_with_pad(image.float() / 255.0, *self.cfg.resize)
            pixels.append((image * 2.0 - 1.0).to(self.dtype))  # SigLIP range; padding becomes -1
        return pixels

    def normalize_state(self, state: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the normalized state (state_dim,) and it zero-padded to (1, max_state_dim)."""
        normalized = self.files.state_normalizer.forward(torch.from_numpy(state)).to(self.device)
        padded = torch.zeros(1, self.cfg.max_state_dim, dtype=torch.float32, device=self.device)
        padded[0, : self.cfg.state_dim] = normalized
        return normalized, padded

    def prepare_inputs(self, images: dict, state, task: str, skip=frozenset()) -> dict:
        """Return pixels per camera (model order), language tokens and the padded normalized state.

        Cameras in `skip` (their tokens are reused) get None instead of pixels.
        """
        missing = [n for n in self.spec.camera_names if n not in images]
        if missing:
            raise InputError(
                f"images: missing camera(s) {missing}; the checkpoint needs {list(self.spec.camera_names)}"
            )
        pixels = self.prepare_pixels(images, skip)
        state = np.asarray(state, dtype=np.float32).reshape(-1)
        if state.shape[0] != self.cfg.state_dim or not np.isfinite(state).all():
            raise InputError(f"state: expected {self.cfg.state_dim} finite values, got {state.tolist()}")
        normalized, padded = self.normalize_state(state)
        tokens, mask = self.tokenize(task)
        return {
            "pixels": pixels,
            "lang_tokens": tokens,
            "lang_mask": mask,
            "state_normalized": normalized[None],
            "state_padded": padded,
        }

    def encode_images(self, pixels: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Return (vision last hidden, image tokens before scaling) per camera."""
        hidden, tokens = zip(*(self.model.encode_image(p) for p in pixels))
        return list(hidden), list(tokens)

    def embed_prefix(self, image_tokens, inputs: dict, drop_pads: bool = False):
        """Return prefix (embeddings, pad mask, block flags).

        drop_pads: leave out the slots that are padding in every batch row. Exact: pads are
        masked as keys everywhere, their own outputs are never read, and position ids count
        valid tokens only, so every valid token sees the same numbers.
        """
        embs, pad_mask, flags = self.model.embed_prefix(
            image_tokens, inputs["lang_tokens"], inputs["lang_mask"], inputs["state_padded"]
        )
        if drop_pads:
            keep = pad_mask.any(dim=0)
            if not bool(keep.all()):
                embs, pad_mask, flags = embs[:, keep], pad_mask[:, keep], flags[:, keep]
        return embs, pad_mask, flags

    def prefix_forward(self, embs, pad_mask, block_flags):
        """Return per-layer prefix (key, value) and the expert's per-chunk context from them."""
        prefix_kv = self.model.prefix_forward(embs, pad_mask, block_flags)
        return prefix_kv, self.model.expert_context(prefix_kv, pad_mask)

    def make_noise(self, noise) -> torch.Tensor:
        """Return noise (1, chunk, max_action_dim): the caller's (whole, padded) or a fresh sample."""
        shape = (1, self.cfg.chunk_size, self.cfg.max_action_dim)
        if noise is None:
            return torch.randn(shape, dtype=torch.float32, device=self.device)
        noise = torch.as_tensor(noise, dtype=torch.float32)
        if tuple(noise.shape) == shape[1:]:
            noise = noise[None]
        if tuple(noise.shape) != shape:
            raise InputError(f"noise: expected shape {shape} (or {shape[1:]}), got {tuple(noise.shape)}")
        return noise.to(self.device)

    def denoise(self, context, pad_mask, noise: torch.Tensor, record=None, steps: int = 0,
                start_time: float = 1.0) -> torch.Tensor:
        """Return x_0 (1, chunk, max_action_dim) from the chunk's expert context and noise."""
        return self.model.denoise(context, pad_mask, noise, record, steps=steps, start_time=start_time)

    def postprocess(self, x0: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Return (raw actions, normalized actions), each (chunk, action_dim) float32."""
        normalized = x0[0, :, : self.cfg.action_dim].float().cpu()
        raw = self.files.action_normalizer.inverse(normalized)
        return raw.numpy().astype(np.float32), normalized.numpy().astype(np.float32)

    def in_dtype(self, dtype: torch.dtype) -> SmolVLAPolicy:
        """Return this policy computing in `dtype` (a copy, made once; itself if already so).

        Copies are made from the loaded policy and shared with it, so a copy asked for another
        dtype gives the loaded weights in it (a bf16 copy asked for fp32: the loaded fp32, not
        its own weights rounded to bf16 and back).
        """
        if dtype == self.dtype:
            return self
        loaded = self.__dict__.get("_loaded", self)
        copies = loaded.__dict__.setdefault("_copies", {loaded.dtype: loaded})
        if dtype not in copies:
            model = copy.deepcopy(loaded.model).to(dtype)
            model._time_cache = {}
            copies[dtype] = SmolVLAPolicy(loaded.files, model, loaded.device)
            copies[dtype]._loaded = loaded
        return copies[dtype]

    def graphed_denoiser(self):
        """The CUDA-graph replay of the denoising loop (made on first use; CUDA only)."""
        if self.device.type != "cuda":
            raise ConfigError(f"cuda_graphs needs a CUDA device; this policy runs on {self.device}")
        if "_graphs" not in self.__dict__:
            from dysta_ros.policy.smolvla.graphs import GraphedDenoiser

            self._graphs = GraphedDenoiser(self.model)
        return self._graphs

    # -- one call ----------------------------------------------------------------------------
    @torch.inference_mode()
    def predict(self, images: dict, state, task: str, noise=None, return_intermediates: bool = False,
                options: SpeedOptions | None = None, session: SmolVLASession | None = None):
        """Return (raw action chunk (chunk, action_dim) float32, info) for one observation.

        `options` picks the speed options (default: the exact savings); `session` holds what
        they keep between calls (frame cache, vision references, the previous chunk), one per
        runtime. return_intermediates runs LeRobot's own layout (pads kept, no caches).
        """
        options = options or SpeedOptions()
        if return_intermediates:
            options, session = SpeedOptions(frame_cache=False, drop_pads=False), None
        session = session if session is not None else SmolVLASession()
        timer = StageTimer(self.device)
        names = self.spec.camera_names
        reused = {n for n in names if options.frame_cache and session.same_frame(n, images.get(n))}
        inputs = self.prepare_inputs(images, state, task, skip=reused)
        noise = self.make_noise(noise)
        timer.lap("preprocess")
        vision_hidden, image_tokens, reuse = self._encode(names, inputs["pixels"], reused, options, session)
        connector_start = timer.now()
        connect = self.model.connect
        image_tokens = [connect(h) if t is None else t for h, t in zip(vision_hidden, image_tokens)]
        for name, hidden, tokens in zip(names, vision_hidden, image_tokens):
            if options.frame_cache and name not in reused:
                session.keep_frame(name, images[name], hidden, tokens)
        timer.part("connector", connector_start)
        timer.lap("vision")
        embs, pad_mask, flags = self.embed_prefix(image_tokens, inputs, drop_pads=options.drop_pads)
        prefix_kv, context = self.prefix_forward(embs, pad_mask, flags)
        timer.lap("backbone")
        record = {} if return_intermediates else None
        start, steps = 1.0, options.denoise_steps
        if options.warm_start and session.previous is not None:
            start = options.warm_start_time
            noise = warm_start_noise(session.previous, noise.to(session.previous.dtype), start,
                                     options.warm_start_shift)
            steps = steps or max(1, round(self.cfg.num_steps * start))
        if options.cuda_graphs and record is None:
            x0 = self.graphed_denoiser()(context, pad_mask, noise, steps or self.cfg.num_steps, start)
        else:
            x0 = self.denoise(context, pad_mask, noise, record, steps=steps, start_time=start)
        session.previous = x0
        post_start = timer.now()
        raw, normalized = self.postprocess(x0)
        timer.part("postprocess", post_start)
        timer.lap("action_head")
        info = {"actions_normalized": normalized, "prefix_tokens": int(embs.shape[1]),
                "frames_reused": len(reused), **reuse,
                **{f"{k}_ms": v for k, v in {**timer.ms, **timer.parts}.items() if k != "total"}}
        if return_intermediates:
            inter = {
                "lang_tokens": inputs["lang_tokens"],
                "lang_mask": inputs["lang_mask"],
                "state_normalized": inputs["state_normalized"],
                "prefix_embs": embs,
                "prefix_pad_mask": pad_mask,
                "prefix_att_mask": flags,
                "prefix_position_ids": torch.cumsum(pad_mask.long(), dim=1) - 1,
                "prefix_att_2d": self.model.attention_2d(pad_mask, flags),
                "suffix_embs.step0": self.model.embed_suffix(
                    noise.to(self.dtype), torch.ones(1, device=self.device)
                ),
                "v_t": torch.stack(record["v_t"]),
                "timesteps": torch.stack(record["timesteps"]),
                "x0_padded": x0,
            }
            for i, (p, h, t) in enumerate(zip(inputs["pixels"], vision_hidden, image_tokens)):
                (
                    inter[f"pixel_values.cam{i}"],
                    inter[f"vision_last_hidden.cam{i}"],
                    inter[f"img_emb.cam{i}"],
                ) = p, h, t
            for layer, (k, v) in enumerate(prefix_kv):
                inter[f"kv.layer{layer}.key"], inter[f"kv.layer{layer}.value"] = k, v
            info["intermediates"] = {k: v.detach().cpu() for k, v in inter.items()}
        return raw, info

    def _encode(self, names, pixels, reused, options: SpeedOptions, session: SmolVLASession):
        """Return per camera (vision hidden, image tokens or None = still to connect), and reuse stats.

        Cameras of an unchanged frame take their stored hidden and tokens; with vision_reuse
        each other camera goes through its changed-token encoder; the rest are encoded side by
        side on the CPU threads (camera_threads, on a CPU), else in one batch (the cameras share a size).
        """
        hidden: list = [None] * len(names)
        tokens: list = [None] * len(names)
        todo = []
        fractions = []  # per camera: share of the vision tower's token-wise work done
        for i, name in enumerate(names):
            if name in reused:
                hidden[i], tokens[i] = session.frames[name][1:]
                fractions.append(0.0)
            elif options.vision_reuse:
                encoder = session.encoder(name, self.model, options)
                hidden[i] = encoder.encode(pixels[i])
                fractions.append(encoder.last.recomputed_fraction)
            else:
                todo.append(i)
                fractions.append(1.0)
        if todo and options.camera_threads and self.device.type == "cpu":  # CPU threads; a GPU batches
            jobs = [lambda i=i: self.model.vision_hidden(pixels[i]) for i in todo]
            for i, camera_hidden in zip(todo, side_by_side(jobs)):
                hidden[i] = camera_hidden
        elif todo:
            batch = self.model.vision_hidden(torch.cat([pixels[i] for i in todo]))
            for j, i in enumerate(todo):
                hidden[i] = batch[j : j + 1]
        return hidden, tokens, {"vision_recomputed": float(np.mean(fractions))}


def warm_start_noise(previous: torch.Tensor, noise: torch.Tensor, t: float, shift: int) -> torch.Tensor:
    """Return x_t = t * noise + (1 - t) * the previous chunk shifted by `shift` executed actions.

    The flow's path from actions (t = 0) to noise (t = 1) is linear, so re-noising the part of
    the previous chunk still ahead to time t starts the new one where the old one expected to
    be; the last action fills the shifted-out end.
    """
    if shift:
        tail = previous[:, -1:].expand(-1, min(shift, previous.shape[1]), -1)
        previous = torch.cat([previous[:, shift:], tail], dim=1)[:, : noise.shape[1]]
    return t * noise + (1.0 - t) * previous


class SmolVLASession:
    """What one runtime keeps between steps for the speed options; reset() forgets it all."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.frames: dict[str, tuple[np.ndarray, torch.Tensor, torch.Tensor]] = {}
        self.encoders: dict[str, ChangedTokenEncoder] = {}
        self.previous: torch.Tensor | None = None  # the last chunk's x_0 (normalized, padded)

    def same_frame(self, name: str, frame) -> bool:
        """True when camera `name` shows exactly (byte for byte) the frame whose tokens are kept."""
        kept = self.frames.get(name)
        if kept is None or frame is None:
            return False
        frame = np.asarray(frame)
        same_kind = frame.shape == kept[0].shape and frame.dtype == kept[0].dtype
        return same_kind and np.array_equal(frame, kept[0])

    def keep_frame(self, name: str, frame, hidden: torch.Tensor, tokens: torch.Tensor) -> None:
        self.frames[name] = (np.array(frame, copy=True), hidden, tokens)

    def encoder(self, name: str, model, options: SpeedOptions) -> ChangedTokenEncoder:
        encoder = self.encoders.get(name)
        if encoder is None:
            tower = siglip_tower(model.vlm_with_expert.vlm.model.vision_model)
            encoder = self.encoders[name] = ChangedTokenEncoder(tower, options.vision_threshold,
                                                                options.vision_refresh)
        return encoder


def load_smolvla(
    checkpoint_dir, vlm_dir=None, device="cpu", dtype: torch.dtype | None = None
) -> SmolVLAPolicy:
    """Load a LeRobot SmolVLA checkpoint dir (config.json, model.safetensors, policy_*processor*)."""
    files = read_checkpoint(Path(checkpoint_dir), vlm_dir)
    return SmolVLAPolicy(files, build_model(files, device, dtype), device)
