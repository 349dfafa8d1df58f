"""Train a SmolVLA-architecture policy on sim demos and save it as LeRobot 0.4.4 saves one.

The network is the package's SmolVLA model (policy/smolvla/model.py), run forward with
gradients; nothing here is a second model. The objective is LeRobot's `VLAFlowMatching.forward`:
time t ~ Beta(1.5, 1) * 0.999 + 0.001, x_t = t * noise + (1 - t) * actions, target
u = noise - actions, MSE against the predicted velocity over every one of the `max_action_dim`
dimensions (LeRobot's "remove padding" slice keeps all `max_action_dim`; the zero-padded
dimensions are learnt too, so at inference their part of x_t follows the training
distribution). States and actions are MEAN_STD-normalized with the demos' statistics, as
LeRobot's preprocessor does; each batch goes through SmolVLAPolicy.prepare_inputs, the same
code inference runs (resize-with-pad, tokenizer, state padding).

The output directory is what `save_pretrained` writes (config.json with "type": "smolvla",
model.safetensors under LeRobot's tensor names, policy_preprocessor.json /
policy_postprocessor.json with their stats safetensors) plus `vlm/` (the backbone's
config.json and tokenizer; config.json's vlm_model_name points at it), train_log.json and
training.png.
"""

from __future__ import annotations

import copy
import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tqdm import tqdm

from dysta_ros.errors import ConfigError
from dysta_ros.policy.smolvla.checkpoint import (
    CONFIG_FILE,
    POSTPROCESSOR_FILE,
    PREPROCESSOR_FILE,
    WEIGHT_PREFIX,
    WEIGHTS_FILE,
    CheckpointFiles,
    Normalizer,
    load_tokenizer,
    unused_weight_names,
)
from dysta_ros.policy.smolvla.config import (
    ACTION_KEY,
    CAMERA_PREFIX,
    STATE_KEY,
    parse_smolvla_config,
    parse_vlm_config,
    read_json,
)
from dysta_ros.policy.smolvla.model import SmolVLAModel, transformers_configs
from dysta_ros.policy.smolvla.policy import SmolVLAPolicy
from dysta_ros.training.config import check_run_fields
from dysta_ros.training.data import Demo
from dysta_ros.interrupts import interrupts_deferred
from dysta_ros.training.precision import Precision
from dysta_ros.training.schedule import learning_rate

VLM_DIR = "vlm"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
NORM_EPS = 1e-8  # LeRobot's normalizer eps
PREPROCESSOR_STATS = "policy_preprocessor_step_5_normalizer_processor.safetensors"
POSTPROCESSOR_STATS = "policy_postprocessor_step_0_unnormalizer_processor.safetensors"
LOG_JSON, CURVES_PNG = "train_log.json", "training.png"

# The shape trained for the sim arm: small enough for a CPU, SmolVLA's layout throughout.
# `--set vision.hidden_size=96`, `--set text.num_hidden_layers=6`, `--set policy.chunk_size=10`.
SIM_REACH_SHAPE = {
    "vision": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
               "num_attention_heads": 4, "image_size": 128, "patch_size": 16},
    "text": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4,
             "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16},
    "scale_factor": 2,  # 8x8 patches -> 16 image tokens per camera
    "policy": {"chunk_size": 8, "n_action_steps": 4, "num_steps": 10, "num_vlm_layers": 4,
               "self_attn_every_n_layers": 2, "expert_width_multiplier": 0.75,
               "resize_imgs_with_padding": [128, 128], "tokenizer_max_length": 48,
               "pad_language_to": "max_length", "max_state_dim": 32, "max_action_dim": 32},
}

# Every other field of LeRobot 0.4.4's SmolVLAConfig, as its save_pretrained writes them (its
# config parser refuses unknown fields, so nothing of this package's own goes in config.json).
LEROBOT_CONFIG_FIELDS = {
    "n_obs_steps": 1, "device": "cpu", "use_amp": False, "use_peft": False, "push_to_hub": False,
    "repo_id": None, "private": None, "tags": None, "license": None, "pretrained_path": None,
    "normalization_mapping": {"VISUAL": "IDENTITY", "STATE": "MEAN_STD", "ACTION": "MEAN_STD"},
    "empty_cameras": 0, "adapt_to_pi_aloha": False, "use_delta_joint_actions_aloha": False,
    "use_cache": True,
    # trained from scratch, everything at once (LeRobot's defaults freeze a pretrained backbone)
    "freeze_vision_encoder": False, "train_expert_only": False, "train_state_proj": True,
    "optimizer_lr": 1e-4, "optimizer_betas": [0.9, 0.95], "optimizer_eps": 1e-8,
    "optimizer_weight_decay": 1e-10, "optimizer_grad_clip_norm": 10, "scheduler_warmup_steps": 1000,
    "scheduler_decay_steps": 30000, "scheduler_decay_lr": 2.5e-6, "vlm_model_name": f"./{VLM_DIR}",
    "load_vlm_weights": False, "add_image_special_tokens": False, "attention_mode": "cross_attn",
    "prefix_length": 0, "num_expert_layers": 0, "min_period": 4e-3, "max_period": 4.0,
    "rtc_config": None, "compile_model": False, "compile_mode": "max-autotune",
}
VISION_DEFAULTS = {"attention_dropout": 0.0, "hidden_act": "gelu_pytorch_tanh", "initializer_range": 0.02,
                   "layer_norm_eps": 1e-6, "model_type": "smolvlm_vision", "num_channels": 3}
TEXT_DEFAULTS = {"attention_bias": False, "attention_dropout": 0.0, "hidden_act": "silu",
                 "initializer_range": 0.02, "max_position_embeddings": 8192, "mlp_bias": False,
                 "model_type": "llama", "pretraining_tp": 1, "rms_norm_eps": 1e-5,
                 "rope_parameters": {"rope_theta": 100000.0, "rope_type": "default"},
                 "tie_word_embeddings": False, "use_cache": True}


def apply_shape_overrides(shape: dict, overrides: dict) -> dict:
    """Return shape with `section.key=value` overrides (sections vision, text, policy; or scale_factor)."""
    shape = copy.deepcopy(shape)
    for key, value in overrides.items():
        section, _, leaf = key.partition(".")
        if not leaf and section in shape and not isinstance(shape[section], dict):
            shape[section] = value
            continue
        if section not in shape or not isinstance(shape[section], dict) or leaf not in shape[section]:
            fields = [f"{s}.{k}" if isinstance(v, dict) else s
                      for s, v in shape.items() for k in (v if isinstance(v, dict) else [None])]
            raise ConfigError(f"--set {key}: no such SmolVLA shape field; fields: {', '.join(fields)}")
        shape[section][leaf] = value
    return shape


def vlm_config(shape: dict, tokenizer_dir: Path) -> dict:
    """The backbone's config.json (SmolVLM layout) for this shape and the tokenizer in tokenizer_dir."""
    tokenizer = load_tokenizer(tokenizer_dir)
    special = read_json(tokenizer_dir / "tokenizer_config.json")

    def token_id(name: str) -> int:
        value = tokenizer.token_to_id(special.get(name, ""))
        if value is None:
            raise ConfigError(f"{tokenizer_dir / 'tokenizer_config.json'}: {name} "
                              f"{special.get(name)!r} is not in tokenizer.json")
        return value

    text = {**TEXT_DEFAULTS, **shape["text"], "vocab_size": tokenizer.get_vocab_size(),
            "pad_token_id": token_id("pad_token"), "bos_token_id": token_id("bos_token"),
            "eos_token_id": token_id("eos_token")}
    text["num_hidden_layers"] = max(text["num_hidden_layers"], shape["policy"]["num_vlm_layers"])
    return {"model_type": "smolvlm", "scale_factor": shape["scale_factor"],
            "image_token_id": tokenizer.token_to_id(special.get("image_token", "<image>")) or 0,
            "text_config": text, "vision_config": {**VISION_DEFAULTS, **shape["vision"]},
            "tie_word_embeddings": False, "use_cache": True}


def policy_config(shape: dict, frame_shapes: dict[str, tuple[int, int]], state_dim: int,
                  action_dim: int) -> dict:
    """LeRobot's config.json for cameras {name: (height, width)} and the state/action dims."""
    inputs = {f"{CAMERA_PREFIX}{name}": {"type": "VISUAL", "shape": [3, h, w]}
              for name, (h, w) in frame_shapes.items()}
    inputs[STATE_KEY] = {"type": "STATE", "shape": [state_dim]}
    return {"type": "smolvla", **LEROBOT_CONFIG_FIELDS, "input_features": inputs,
            "output_features": {ACTION_KEY: {"type": "ACTION", "shape": [action_dim]}}, **shape["policy"]}


def mean_std_stats(demos: list[Demo]) -> dict[str, dict[str, np.ndarray]]:
    """Per-feature mean/std/min/max of states and actions (std floored: a joint may never move)."""
    states = np.concatenate([d.states for d in demos]).astype(np.float64)
    actions = np.concatenate([d.chunks.reshape(-1, d.chunks.shape[-1]) for d in demos]).astype(np.float64)
    return {key: {"mean": v.mean(0).astype(np.float32), "std": np.maximum(v.std(0), 1e-3).astype(np.float32),
                  "min": v.min(0).astype(np.float32), "max": v.max(0).astype(np.float32)}
            for key, v in ((STATE_KEY, states), (ACTION_KEY, actions))}


def processor_configs(config: dict, tokenizer_name: str) -> tuple[dict, dict]:
    """policy_preprocessor.json and policy_postprocessor.json as LeRobot 0.4.4 writes them for SmolVLA."""
    norm_map = config["normalization_mapping"]
    features = {**config["input_features"], **config["output_features"]}
    device = {"registry_name": "device_processor", "config": {"device": "cpu", "float_dtype": None}}
    pre = {"name": "policy_preprocessor", "steps": [
        {"registry_name": "rename_observations_processor", "config": {"rename_map": {}}},
        {"registry_name": "to_batch_processor", "config": {}},
        {"registry_name": "smolvla_new_line_processor", "config": {}},
        {"registry_name": "tokenizer_processor", "config": {
            "max_length": config["tokenizer_max_length"], "task_key": "task", "padding_side": "right",
            "padding": config["pad_language_to"], "truncation": True, "tokenizer_name": tokenizer_name}},
        device,
        {"registry_name": "normalizer_processor",
         "config": {"eps": NORM_EPS, "features": features, "norm_map": norm_map},
         "state_file": PREPROCESSOR_STATS},
    ]}
    post = {"name": "policy_postprocessor", "steps": [
        {"registry_name": "unnormalizer_processor",
         "config": {"eps": NORM_EPS, "features": config["output_features"], "norm_map": norm_map},
         "state_file": POSTPROCESSOR_STATS},
        device,
    ]}
    return pre, post


def initialise(model: SmolVLAModel) -> SmolVLAModel:
    """From-scratch init: token embeddings at 1/sqrt(width).

    After SmolVLA's sqrt(width) scaling, language then enters at unit scale like the image
    tokens (torch's default N(0, 1) would make it sqrt(width) times larger).
    """
    embed = model.vlm_with_expert.vlm.model.text_model.embed_tokens
    with torch.no_grad():
        embed.weight.normal_(0.0, embed.weight.shape[1] ** -0.5)
    return model


def unused_tensors(cfg, vlm, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """The tensors LeRobot saves that never affect actions, seeded random.

    lm_head, the final norm and the last kept layer's q/o/MLP: LeRobot's strict loader needs
    them; this model has no place for them.
    """
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    _, text, _ = transformers_configs(cfg, vlm)
    last = cfg.num_vlm_layers - 1
    with torch.device("meta"):
        layer = LlamaDecoderLayer(text, last)
    prefix = f"{WEIGHT_PREFIX}vlm_with_expert.vlm.model.text_model."
    shapes = {f"{prefix}layers.{last}.{name}": p.shape for name, p in layer.state_dict().items()}
    shapes[f"{WEIGHT_PREFIX}vlm_with_expert.vlm.lm_head.weight"] = (text.vocab_size, text.hidden_size)
    shapes[f"{prefix}norm.weight"] = (text.hidden_size,)
    wanted = unused_weight_names(cfg)
    out = {}
    for name in sorted(wanted):
        shape = tuple(shapes[name])
        out[name] = torch.ones(shape) if len(shape) == 1 else 0.02 * torch.randn(shape, generator=generator)
    return out


@dataclass
class SmolVLATrainConfig:
    """One SmolVLA training run on sim demos (built by `dysta-ros train --family smolvla`)."""

    out: str
    tokenizer_dir: str  # a backbone dir whose tokenizer.json + tokenizer_config.json are used
    overrides: dict = field(default_factory=dict)
    steps: int = 3000
    batch: int = 32
    lr: float = 1e-3
    warmup: int = 100
    weight_decay: float = 0.01
    seed: int = 0
    threads: int = 1
    device: str = "cpu"  # torch device of the model and batches
    dtype: str = "float32"  # compute dtype (autocast); weights and the checkpoint stay float32

    def __post_init__(self):
        check_run_fields(self, positive=("steps", "batch", "threads"),
                         not_negative=("warmup", "weight_decay"))
        if not 0 < self.lr < math.inf:
            raise ConfigError(f"lr: must be > 0 and finite, got {self.lr}")


class SmolVLATrainer:
    """Owns the model, its inference wrapper (for preprocessing), the optimizer and the log."""

    def __init__(self, cfg: SmolVLATrainConfig, demos: list[Demo], camera_names: list[str]):
        self.cfg, self.demos, self.camera_names = cfg, demos, list(camera_names)
        torch.set_num_threads(cfg.threads)
        self.precision = Precision(cfg.device, cfg.dtype)
        self.shape = apply_shape_overrides(SIM_REACH_SHAPE, cfg.overrides)
        tokenizer_dir = Path(cfg.tokenizer_dir)
        frames = demos[0].pixels  # (N, C, H, W, 3)
        if frames.ndim != 5 or frames.shape[1] != len(self.camera_names):
            raise ConfigError(f"demos: expected raw frames (N, {len(self.camera_names)}, H, W, 3), "
                              f"got {frames.shape}")
        self.config = policy_config(self.shape, {n: frames.shape[2:4] for n in self.camera_names},
                                    demos[0].states.shape[1], demos[0].chunks.shape[2])
        self.vlm = vlm_config(self.shape, tokenizer_dir)
        self.stats = mean_std_stats(demos)
        self.tokenizer_dir = tokenizer_dir
        cfg_parsed = parse_smolvla_config(self.config, Path("<training config>"))
        vlm_parsed = parse_vlm_config(self.vlm, Path("<training vlm config>"))
        torch.manual_seed(cfg.seed)
        self.model = initialise(SmolVLAModel(cfg_parsed, vlm_parsed)).to(self.precision.device)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.unused = unused_tensors(cfg_parsed, vlm_parsed, self.generator)
        normalizer = {key: Normalizer("MEAN_STD", {k: torch.from_numpy(v) for k, v in s.items()}, NORM_EPS)
                      for key, s in self.stats.items()}
        self.files = CheckpointFiles(
            directory=Path(cfg.out), vlm_dir=tokenizer_dir, cfg=cfg_parsed, vlm=vlm_parsed, weights={},
            dtype_layout={"float32": 0}, parameter_count=0, state_normalizer=normalizer[STATE_KEY],
            action_normalizer=normalizer[ACTION_KEY], tokenizer=load_tokenizer(tokenizer_dir))
        # the in-memory model, run as loaded; its preprocessing puts the inputs on the device
        self.policy = SmolVLAPolicy(self.files, self.model, self.precision.device)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.rng = np.random.default_rng(cfg.seed)
        self.step = 0
        self.log: list[dict[str, float]] = []

    # --- data --------------------------------------------------------------------------------
    def sample(self, batch: int) -> dict[str, torch.Tensor]:
        """A batch of single frames from random demos and steps."""
        items = []
        for _ in range(batch):
            demo = int(self.rng.integers(len(self.demos)))
            items.append((demo, int(self.rng.integers(len(self.demos[demo])))))
        return self.batch_of(items)

    def batch_of(self, items: list[tuple[int, int]]) -> dict[str, torch.Tensor]:
        """The (demo, step) items preprocessed as inference does (SmolVLAPolicy.prepare_inputs)."""
        prepared = []
        for demo_index, t in items:
            demo = self.demos[demo_index]
            images = dict(zip(self.camera_names, demo.pixels[t]))
            inputs = self.policy.prepare_inputs(images, demo.states[t], demo.instruction)
            actions = self.files.action_normalizer.forward(torch.from_numpy(demo.chunks[t]))  # (C, A)
            inputs["actions"] = F.pad(actions, (0, self.files.cfg.max_action_dim - actions.shape[1]))
            prepared.append(inputs)
        lang = [item["lang_tokens"] for item in prepared]
        if len({tuple(x.shape) for x in lang}) > 1:
            raise ConfigError("policy.pad_language_to: 'longest' pads each instruction to its own length, "
                              "so a batch of different tasks cannot stack; use 'max_length'")
        return {
            "pixels": [torch.cat([item["pixels"][c] for item in prepared])
                       for c in range(len(self.camera_names))],
            "lang_tokens": torch.cat(lang), "lang_mask": torch.cat([item["lang_mask"] for item in prepared]),
            "state_padded": torch.cat([item["state_padded"] for item in prepared]),
            "actions": torch.stack([item["actions"] for item in prepared]).to(self.precision.device),
        }

    # --- objective ---------------------------------------------------------------------------
    def sample_time(self, batch: int) -> torch.Tensor:
        """T ~ Beta(1.5, 1) * 0.999 + 0.001, LeRobot's; Beta(a, 1) is u ** (1 / a) for uniform u."""
        u = torch.rand(batch, generator=self.generator)
        return u ** (1.0 / 1.5) * 0.999 + 0.001

    def loss(self, batch: dict[str, torch.Tensor], noise=None, time=None) -> torch.Tensor:
        """LeRobot's flow-matching loss on a batch, through the model's own inference stages."""
        actions = batch["actions"]  # (B, C, max_action_dim), normalized, zero-padded
        # drawn on the CPU generator (the same draws on every device), then moved
        noise = torch.randn(actions.shape, generator=self.generator) if noise is None else noise
        time = self.sample_time(actions.shape[0]) if time is None else time
        noise, time = noise.to(actions.device), time.to(actions.device)
        x_t = time[:, None, None] * noise + (1 - time[:, None, None]) * actions
        target = noise - actions
        image_tokens = [self.model.encode_image(p)[1] for p in batch["pixels"]]
        embs, pad_mask, flags = self.model.embed_prefix(
            image_tokens, batch["lang_tokens"], batch["lang_mask"], batch["state_padded"])
        context = self.model.expert_context(self.model.prefix_forward(embs, pad_mask, flags), pad_mask)
        velocity = self.model.velocity(context, pad_mask, x_t, time)
        return F.mse_loss(velocity.float(), target)

    def train_step(self) -> dict[str, float]:
        self.model.train()
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(self.cfg, self.step)
        batch = self.sample(self.cfg.batch)
        with self.precision.autocast():
            loss = self.loss(batch)
        self.precision.step(loss, self.model, self.optimizer)
        self.step += 1
        record = {"step": self.step, "loss": float(loss.detach())}
        self.log.append(record)
        return record

    def run(self) -> dict[str, float]:
        record: dict[str, float] = {}
        with tqdm(total=self.cfg.steps, initial=self.step, desc="train smolvla", unit="step") as bar:
            while self.step < self.cfg.steps:
                record = self.train_step()
                bar.update(1)
                bar.set_postfix(loss=f"{record['loss']:.4f}")
        self.model.eval()
        self.save()
        return record

    # --- LeRobot's layout ----------------------------------------------------------------------
    def save(self) -> Path:
        """Write the checkpoint in LeRobot's layout (plus vlm/, the log and the loss plot), all of it."""
        with interrupts_deferred():
            return self._save()

    def _save(self) -> Path:
        out = Path(self.cfg.out)
        vlm_dir = out / VLM_DIR
        vlm_dir.mkdir(parents=True, exist_ok=True)
        config = self.config
        (out / CONFIG_FILE).write_text(json.dumps(config, indent=4))
        (vlm_dir / CONFIG_FILE).write_text(json.dumps(self.vlm, indent=2))
        for name in TOKENIZER_FILES:
            if (self.tokenizer_dir / name).resolve() != (vlm_dir / name).resolve():
                shutil.copyfile(self.tokenizer_dir / name, vlm_dir / name)
        weights = {WEIGHT_PREFIX + k: v.detach().contiguous() for k, v in self.model.state_dict().items()}
        save_file({**weights, **self.unused}, str(out / WEIGHTS_FILE))
        pre, post = processor_configs(config, f"./{VLM_DIR}")
        (out / PREPROCESSOR_FILE).write_text(json.dumps(pre, indent=2))
        (out / POSTPROCESSOR_FILE).write_text(json.dumps(post, indent=2))
        stats = {f"{key}.{stat}": torch.from_numpy(value.copy())
                 for key, values in self.stats.items() for stat, value in values.items()}
        save_file(stats, str(out / PREPROCESSOR_STATS))
        save_file(stats, str(out / POSTPROCESSOR_STATS))
        (out / LOG_JSON).write_text(json.dumps(self.log))
        plot_loss(self.log, out / CURVES_PNG)
        return out


def plot_loss(log: list[dict[str, float]], path: Path, smooth: int = 25) -> None:
    """The flow-matching loss (moving average) against the step."""
    from dysta_ros.plots import pyplot, save_png

    if not log:
        return
    plt = pyplot()
    window = max(1, min(smooth, len(log) // 5 or 1))
    values = np.convolve([r["loss"] for r in log], np.ones(window) / window, mode="valid")
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r["step"] for r in log][window - 1:], values)
    ax.set_xlabel("step")
    ax.set_yscale("log")
    ax.set_title("SmolVLA flow-matching loss (LeRobot's objective)")
    save_png(fig, path, dpi=100)


def raw_frames(camera_names: list[str]):
    """Observation -> (C, H, W, 3) uint8: SmolVLA demos keep the cameras' frames as they arrive."""
    def frames(observation) -> np.ndarray:
        return np.stack([np.asarray(observation.images[name], dtype=np.uint8) for name in camera_names])
    return frames
