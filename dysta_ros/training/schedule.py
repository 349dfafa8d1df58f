"""The learning-rate schedule both trainers (train.py, smolvla.py) use."""

from __future__ import annotations

import math


def learning_rate(cfg, step: int) -> float:
    """Linear warm-up, then cosine decay to a tenth of lr at cfg.steps (cfg: lr, warmup, steps)."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
