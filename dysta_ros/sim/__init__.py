"""MuJoCo tabletop arm: scene, tasks with success checks, scripted expert, episode runner."""

import os

# Offscreen rendering with no display: EGL unless the user chose otherwise (osmesa also works).
# Must be set before mujoco is first imported, so it lives where every sim import passes.
os.environ.setdefault("MUJOCO_GL", "egl")
