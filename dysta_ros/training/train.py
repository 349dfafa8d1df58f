"""`dysta-ros train`: behaviour cloning of the VLA with DySta's learned parts, resumable.

Demos come from rosbags (`--bags`) or from the scripted expert run in-process
(`--sim-episodes`). The output directory is a checkpoint (config.json + model.safetensors,
with the state/action normalisation the runtime applies) plus the resume state
(training_state.json + training_state.safetensors: optimizer moments, step, RNG states; no
pickle) and the loss curves (train_log.json, training.png).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from dysta_ros.errors import CheckpointError, ConfigError
from dysta_ros.plots import pyplot, save_png
from dysta_ros.policy.checkpoint import CONFIG_FILE, load_checkpoint, save_checkpoint
from dysta_ros.policy.config import apply_overrides, preset_config
from dysta_ros.policy.model import VLAModel
from dysta_ros.policy.tokenizer import ByteTokenizer
from dysta_ros.sim.tasks import TASKS
from dysta_ros.tokens import parse_param_overrides
from dysta_ros.tokens.dysta import DystaParams
from dysta_ros.training.config import TrainConfig
from dysta_ros.training.data import Demo, bag_demos, collect_sim_demos, normalisation_stats
from dysta_ros.interrupts import interrupts_deferred
from dysta_ros.training.objectives import WindowSampler, training_losses
from dysta_ros.training.precision import Precision
from dysta_ros.training.schedule import learning_rate

STATE_JSON, STATE_TENSORS, LOG_JSON, CURVES_PNG = (
    "training_state.json", "training_state.safetensors", "train_log.json", "training.png")


def load_demos(cfg: TrainConfig, model_cfg):
    """Demos from bags, else from the scripted expert in the sim."""
    args = (model_cfg.camera_names, model_cfg.vision.image_size, model_cfg.horizon)
    if cfg.bags:
        return bag_demos(cfg.bags, *args, topic_map=cfg.topic_map)
    return collect_sim_demos(cfg.tasks, cfg.sim_episodes, *args, seed_start=cfg.sim_seed_start,
                             action_noise=cfg.action_noise)


class Trainer:
    """Owns the model, optimizer, RNGs and the loss log; saves and resumes them."""

    def __init__(self, cfg: TrainConfig, resume: bool = False, demos: list[Demo] | None = None):
        """Build the run; `demos` given by a caller (tests) replace loading them again."""
        self.cfg = cfg
        self.out = Path(cfg.out)
        torch.set_num_threads(cfg.threads)
        self.precision = Precision(cfg.device, cfg.dtype)
        model_cfg = apply_overrides(preset_config(cfg.preset, cfg.overrides), {"history": cfg.history})
        self.demos = demos if demos is not None else load_demos(cfg, model_cfg)
        norm = normalisation_stats(self.demos)
        torch.manual_seed(cfg.seed)
        self.model = VLAModel(apply_overrides(model_cfg, norm)).to(self.precision.device)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.rng = np.random.default_rng(cfg.seed)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.dysta = DystaParams.from_dict(cfg.dysta, "dysta")
        self.sampler = WindowSampler(self.demos, cfg.history, cfg.frame_stride, cfg.max_cache_age, norm,
                                     ByteTokenizer())
        self.step = 0
        self.log: list[dict[str, float]] = []
        if resume:
            self.load_state()

    # --- resume ----------------------------------------------------------------------------
    def save(self) -> None:
        """Write the checkpoint, the resume state and the loss log into cfg.out, never half of them."""
        with interrupts_deferred():
            self._save()

    def _save(self) -> None:
        save_checkpoint(self.out, self.model, extra_config={
            "training": {**self.cfg.data_key(), "step": self.step, "episodes": len(self.demos)}})
        tensors = {"rng.torch_global": torch.get_rng_state(), "rng.generator": self.generator.get_state()}
        optimizer = self.optimizer.state_dict()
        for index, values in optimizer["state"].items():
            for name, value in values.items():
                tensors[f"optimizer.{index}.{name}"] = value.detach().contiguous()
        save_file(tensors, str(self.out / STATE_TENSORS))
        state = {"step": self.step, "config": self.cfg.data_key(), "param_groups": optimizer["param_groups"],
                 "numpy_rng": self.rng.bit_generator.state, "grad_scaler": self.precision.state_dict()}
        (self.out / STATE_JSON).write_text(json.dumps(state, indent=1))
        (self.out / LOG_JSON).write_text(json.dumps(self.log))

    def load_state(self) -> None:
        """Continue from cfg.out: weights, optimizer moments, step, RNG states, loss log."""
        state_path = self.out / STATE_JSON
        if not state_path.is_file():
            raise CheckpointError(f"{state_path}: missing; nothing to resume (train without --resume)")
        try:
            state = json.loads(state_path.read_text())
            saved, param_groups = state["config"], state["param_groups"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{state_path}: not a training state ({type(exc).__name__}: {exc})") \
                from exc
        saved.setdefault("dysta", DystaParams().layout_fields())  # runs from before it was an option
        saved.setdefault("topic_map", "sim_arm")  # likewise
        current = self.cfg.data_key()
        changed = sorted(k for k in {*saved, *current} if saved.get(k) != current.get(k))
        if changed:
            raise ConfigError(
                f"resume: {', '.join(changed)} differ from the run in {self.out} "
                f"(saved: {', '.join(f'{k}={saved.get(k)!r}' for k in changed)})")
        model, extra = load_checkpoint(self.out)
        log_path = self.out / LOG_JSON
        try:
            log = json.loads(log_path.read_text()) if log_path.is_file() else []
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"{log_path}: not a loss log ({type(exc).__name__}: {exc})") from exc
        # a save cut short (killed between its files) leaves the files at different steps
        steps = {CONFIG_FILE: extra.get("training", {}).get("step"), STATE_JSON: state.get("step")}
        if len(set(steps.values())) > 1 or not isinstance(log, list) or len(log) < (state.get("step") or 0):
            raise CheckpointError(
                f"{self.out}: its files are from different steps ("
                + ", ".join(f"{name} at step {step}" for name, step in steps.items())
                + f", {LOG_JSON} with {len(log) if isinstance(log, list) else '?'} steps): a save was cut "
                "short; nothing to resume safely, start over with --force")
        self.model.load_state_dict(model.state_dict())
        tensors_path = self.out / STATE_TENSORS
        try:
            tensors = load_file(str(tensors_path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{tensors_path}: not a readable safetensors file: {exc}") from exc
        try:
            per_param: dict[int, dict[str, torch.Tensor]] = {}
            for key, value in tensors.items():
                if key.startswith("optimizer."):
                    _, index, name = key.split(".", 2)
                    per_param.setdefault(int(index), {})[name] = value
            self.optimizer.load_state_dict({"state": per_param, "param_groups": param_groups})
            torch.set_rng_state(tensors["rng.torch_global"])
            self.generator.set_state(tensors["rng.generator"])
            self.rng.bit_generator.state = state["numpy_rng"]
            self.step = int(state["step"])
            self.precision.load_state_dict(state.get("grad_scaler", {}))
        except (KeyError, ValueError, RuntimeError, TypeError) as exc:
            raise CheckpointError(f"{tensors_path}: does not fit this run ({type(exc).__name__}: {exc})") \
                from exc
        self.log = log[: self.step]

    # --- training ----------------------------------------------------------------------------
    def train_step(self) -> dict[str, float]:
        """One optimizer step on one sampled batch; return its losses."""
        self.model.train()
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(self.cfg, self.step)
        batch = self.precision.to_device(self.sampler.sample(self.rng, self.cfg.batch))
        with self.precision.autocast():
            losses = training_losses(self.model, batch, self.cfg.gate_lambda, self.generator, self.dysta)
        self.precision.step(losses.total, self.model, self.optimizer)
        self.step += 1
        record = {"step": self.step, **losses.as_floats()}
        self.log.append(record)
        return record

    def run(self, until: int | None = None) -> dict[str, float]:
        """Train up to step `until` (default cfg.steps), saving every cfg.save_every steps and at the end."""
        self.out.mkdir(parents=True, exist_ok=True)
        until = min(until or self.cfg.steps, self.cfg.steps)
        bar = tqdm(total=self.cfg.steps, initial=self.step, desc="train", unit="step")
        record: dict[str, float] = {}
        while self.step < until:
            record = self.train_step()
            bar.update(1)
            bar.set_postfix(loss=f"{record['total']:.3f}", full=f"{record['task_full']:.3f}",
                            dysta=f"{record['task_dysta']:.3f}", nce1=f"{record['nce_l1']:.2f}",
                            gate=f"{record['gate']:.2f}", refresh=f"{record['refresh_rate']:.2f}")
            if self.step % self.cfg.save_every == 0:
                self.save()
        bar.close()
        self.save()
        plot_curves(self.log, self.out / CURVES_PNG)
        # a resumed run already at its last step trains nothing: its result is the last logged step
        return record or (dict(self.log[-1]) if self.log else {})


def plot_curves(log: list[dict[str, float]], path: Path, smooth: int = 25) -> None:
    """Plot each loss (moving average) against the step."""
    plt = pyplot()

    if not log:
        return
    steps = np.array([r["step"] for r in log])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    window = max(1, min(smooth, len(log) // 5 or 1))
    kernel = np.ones(window) / window
    for name, ax in (("task_full", 0), ("task_dysta", 0), ("nce_l1", 1), ("nce_l2", 1), ("gate", 1)):
        values = np.convolve([r[name] for r in log], kernel, mode="valid")
        axes[ax].plot(steps[window - 1 :], values, label=name)
    axes[0].set_title("flow-matching loss (full and DySta layouts)")
    axes[1].set_title("DySta's InfoNCE per level and gate prior")
    for ax in axes:
        ax.set_xlabel("step")
        ax.set_yscale("log")
        ax.legend()
    save_png(fig, path, dpi=100)


def parse_overrides(items: list[str]) -> dict:
    """`key=value` strings -> {key: JSON value (or the string itself)}."""
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. vision.patch_size=8")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    return overrides


def check_out(out: str, resume: bool, force: bool) -> None:
    """Refuse to start a fresh run over one saved in out, unless told to resume or overwrite it."""
    if resume and force:
        raise ConfigError("--resume and --force contradict each other: continue the run, or replace it")
    saved = [name for name in (CONFIG_FILE, STATE_JSON) if (Path(out) / name).is_file()]
    if saved and not (resume or force):
        raise ConfigError(f"--out {out}: holds a run already ({', '.join(saved)}); "
                          "pass --resume to continue it or --force to overwrite it")


def run_smolvla(args: argparse.Namespace) -> dict:
    """`--family smolvla`: sim demos with the raw camera frames, then LeRobot's objective and layout.

    Returns the run's last losses (`dysta-ros train` writes them as its result).
    """
    from dysta_ros.sim.env import CAMERAS
    from dysta_ros.training.smolvla import SmolVLATrainConfig, SmolVLATrainer, apply_shape_overrides, \
        SIM_REACH_SHAPE, raw_frames, vlm_config

    for flag, given in (("--bags", args.bags), ("--resume", args.resume), ("--param", args.param)):
        if given:
            raise ConfigError(f"{flag}: not available with --family smolvla (sim demos, one fresh run)")
    # this package's VLA's own settings: given here they were ignored without a word
    own = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    for name in ("preset", "topic_map", "history", "frame_stride", "max_cache_age", "gate_lambda",
                 "save_every"):
        if getattr(args, "model" if name == "preset" else name) != own[name]:
            flag = "--model" if name == "preset" else f"--{name.replace('_', '-')}"
            raise ConfigError(f"{flag}: not read with --family smolvla (the shape comes from --set, "
                              f"one save at the end)")
    if not args.vlm:
        raise ConfigError("--vlm DIR: --family smolvla needs a backbone dir with tokenizer.json "
                          "(e.g. test/data/smolvla_tiny/vlm)")
    tasks = [t for t in args.task.split(",") if t]
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown or args.sim_episodes < 1:
        raise ConfigError(f"--task / --sim-episodes: unknown tasks {unknown} or no episodes "
                          f"({args.sim_episodes}); tasks: {', '.join(TASKS)}")
    cfg = SmolVLATrainConfig(out=args.out, tokenizer_dir=args.vlm, overrides=parse_overrides(args.overrides),
                             steps=args.steps, batch=args.batch, lr=args.lr, warmup=args.warmup,
                             weight_decay=args.weight_decay, seed=args.seed, threads=args.threads,
                             device=args.device, dtype=args.dtype)
    shape = apply_shape_overrides(SIM_REACH_SHAPE, cfg.overrides)  # a bad --set or --vlm fails
    vlm_config(shape, Path(args.vlm))                                # before the demos are made
    cameras = list(CAMERAS)
    demos = collect_sim_demos(tasks, args.sim_episodes, cameras, 0, shape["policy"]["chunk_size"],
                              seed_start=args.sim_seed_start, action_noise=args.action_noise,
                              frames=raw_frames(cameras))
    record = SmolVLATrainer(cfg, demos, cameras).run()
    return {"out": cfg.out, "episodes": len(demos), **record}


def train_config(args: argparse.Namespace) -> TrainConfig:
    """Return the TrainConfig the command line asks for."""
    return TrainConfig(
        out=args.out, preset=args.model, overrides=parse_overrides(args.overrides), bags=args.bags or [],
        topic_map=args.topic_map, sim_episodes=args.sim_episodes or 0,
        tasks=[t for t in args.task.split(",") if t],
        sim_seed_start=args.sim_seed_start, action_noise=args.action_noise, steps=args.steps,
        batch=args.batch, history=args.history, frame_stride=args.frame_stride,
        max_cache_age=args.max_cache_age, gate_lambda=args.gate_lambda, lr=args.lr, warmup=args.warmup,
        weight_decay=args.weight_decay, seed=args.seed, save_every=args.save_every, threads=args.threads,
        device=args.device, dtype=args.dtype, dysta=parse_param_overrides(args.param, ["dysta"])["dysta"])
