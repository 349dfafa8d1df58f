"""MuJoCo tabletop arm: scene, tasks with success checks, scripted expert, episode runner."""

import ctypes.util
import os


def offscreen_backend() -> str:
    """Return EGL where its library is installed, else OSMesa (software GL) where that is."""
    if ctypes.util.find_library("EGL") or not ctypes.util.find_library("OSMesa"):
        return "egl"
    return "osmesa"


# Offscreen rendering with no display, unless the user chose a backend (MUJOCO_GL). Must be
# set before mujoco is first imported, so it lives where every sim import passes.
os.environ.setdefault("MUJOCO_GL", offscreen_backend())
