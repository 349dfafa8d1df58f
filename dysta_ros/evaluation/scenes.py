"""Structured synthetic camera frames: a static tabletop, a moving arm-like bar, a sliding block.

Mostly static background with moving parts, as a robot's camera sees it (not noise), so
token strategies are measured on the kind of redundancy they exploit.
"""

from __future__ import annotations

import math

import cv2
import numpy as np


def table_texture(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A wood-grain table under a back wall, fixed per seed: (H, W, 3) uint8."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    grain = 0.5 + 0.5 * np.sin(x / width * 40 + 3 * np.sin(y / height * 6 + rng.uniform(0, 6)))
    base = np.array([150, 105, 60], np.float32) * (0.8 + 0.25 * grain[..., None])
    base += rng.normal(0, 6, (height, width, 1)).astype(np.float32)
    wall = int(height * 0.3)
    base[:wall] = np.array([200, 205, 210], np.float32) - y[:wall, :, None] * 0.2
    image = np.clip(base, 0, 255).astype(np.uint8)
    # A few resting objects: they never move.
    for _ in range(3):
        cx, cy = int(rng.uniform(0.1, 0.9) * width), int(rng.uniform(0.4, 0.95) * height)
        color = tuple(int(c) for c in rng.integers(40, 220, 3))
        cv2.circle(image, (cx, cy), max(2, width // 20), color, -1)
    cv2.rectangle(
        image,
        (int(0.05 * width), int(0.05 * height)),
        (int(0.3 * width), int(0.22 * height)),
        (90, 120, 160),
        -1,
    )
    return image


def render_frame(background: np.ndarray, t: int, motion: float = 1.0) -> np.ndarray:
    """Draw the arm and the block at step t on a copy of background; motion scales their speed."""
    image = background.copy()
    h, w = image.shape[:2]
    base = (int(0.5 * w), h - 1)
    angle = -math.pi / 2 + 0.5 * math.sin(0.15 * motion * t)
    length = 0.55 * h
    elbow = (int(base[0] + length * math.cos(angle)), int(base[1] + length * math.sin(angle)))
    hand_angle = angle + 0.8 + 0.3 * math.sin(0.23 * motion * t)
    hand = (int(elbow[0] + 0.25 * h * math.cos(hand_angle)), int(elbow[1] + 0.25 * h * math.sin(hand_angle)))
    thickness = max(2, w // 22)
    cv2.line(image, base, elbow, (70, 70, 80), thickness)
    cv2.line(image, elbow, hand, (90, 90, 100), max(2, thickness - 2))
    cv2.circle(image, hand, max(2, thickness // 2 + 1), (30, 160, 30), -1)
    block_x = int((0.2 + 0.6 * (0.5 + 0.5 * math.sin(0.07 * motion * t))) * w)
    size = max(3, w // 12)
    cv2.rectangle(
        image, (block_x - size, int(0.7 * h) - size), (block_x + size, int(0.7 * h) + size), (200, 40, 40), -1
    )
    return image


def structured_frames(
    count: int, height: int = 240, width: int = 320, seed: int = 0, motion: float = 1.0
) -> list[np.ndarray]:
    """`count` frames (H, W, 3) uint8 of one scene with a static background and moving parts."""
    background = table_texture(height, width, seed)
    return [render_frame(background, t, motion) for t in range(count)]
