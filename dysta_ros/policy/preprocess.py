"""The runtime's preprocess stage: validate an Observation, crop and resize its images.

Everyone who feeds the policy (nodes, sim loop, bag evaluator, bench) goes through
`prepare_observation`, so a frame is cropped and scaled the same way everywhere.
"""

from __future__ import annotations

import cv2
import numpy as np

from dysta_ros.errors import InputError
from dysta_ros.types import Observation


def center_crop_resize(image: np.ndarray, size: int) -> np.ndarray:
    """Center-crop (H, W, 3) to a square and resize it to (size, size, 3), keeping uint8."""
    h, w = image.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = image[top : top + side, left : left + side]
    if side == size:
        return np.ascontiguousarray(square)
    interpolation = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    return cv2.resize(square, (size, size), interpolation=interpolation)


def check_image(name: str, image) -> np.ndarray:
    """Return image if it is an (H, W, 3) uint8 array; raise InputError naming the camera otherwise."""
    if not isinstance(image, np.ndarray):
        raise InputError(f"camera {name!r}: image must be a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise InputError(f"camera {name!r}: image dtype must be uint8, got {image.dtype}")
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] < 1 or image.shape[1] < 1:
        raise InputError(f"camera {name!r}: image shape must be (H, W, 3), got {image.shape}")
    return image


def check_state(state, state_dim: int) -> np.ndarray:
    """Return state as (state_dim,) float32; raise InputError on a wrong shape or non-finite value."""
    try:
        array = np.asarray(state, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise InputError(f"state is not numeric: {exc}") from exc
    if array.shape != (state_dim,):
        raise InputError(f"state shape must be ({state_dim},), got {array.shape}")
    bad = np.flatnonzero(~np.isfinite(array))
    if len(bad):
        raise InputError(f"state has non-finite values at indices {bad.tolist()}")
    return array


def check_instruction(instruction) -> str:
    """Return instruction if it is a string a tokenizer can encode; raise InputError otherwise."""
    if not isinstance(instruction, str):
        raise InputError(f"instruction must be a string, got {type(instruction).__name__}")
    try:
        instruction.encode("utf-8")  # what every tokenizer here reads
    except UnicodeEncodeError as exc:  # a lone surrogate: tokenizing it failed mid-step, caches lost
        raise InputError(f"instruction is not valid text: {exc}") from exc
    return instruction


def prepare_observation(obs: Observation, camera_names: list[str], image_size: int, state_dim: int):
    """Validate obs; return pixels (C, 3, S, S) float32 in [-1, 1], state (S,) and instruction."""
    if not isinstance(obs, Observation):
        raise InputError(f"expected an Observation, got {type(obs).__name__}")
    if not isinstance(obs.images, dict):
        raise InputError(
            f"observation images must be a dict camera -> array, got {type(obs.images).__name__}"
        )
    missing = [name for name in camera_names if name not in obs.images]
    if missing:
        raise InputError(
            f"missing camera(s) {missing}; the model needs {camera_names}, got {sorted(obs.images)}"
        )
    squares = [center_crop_resize(check_image(name, obs.images[name]), image_size) for name in camera_names]
    pixels = np.stack(squares).astype(np.float32).transpose(0, 3, 1, 2)  # (C, 3, S, S)
    pixels = pixels / 127.5 - 1.0  # SigLIP normalisation: mean 0.5, std 0.5
    state = check_state(obs.state, state_dim)
    return pixels, state, check_instruction(obs.instruction)
