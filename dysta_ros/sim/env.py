"""The MuJoCo environment: reset(task, seed), step(joint targets), observe, render cameras.

The sim arm behaves like a position-controlled arm under ros2_control: joint targets go to
position actuators and are tracked by the physics; the state is the measured joint positions.
Everything a policy may see is in `observe()`; privileged state (cube positions, the target)
is exposed separately, for the scripted expert and for success checks.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import mujoco
import numpy as np

from dysta_ros.errors import ConfigError, InputError, RenderError
from dysta_ros.robot import load_robot_config
from dysta_ros.sim.scene import CUBE_HALF, N_CUBES, ROBOT, build_mjcf, check_arm
from dysta_ros.sim.tasks import TOUCH_TOLERANCE, Placement, Task, box_distance, check_seed, get_task
from dysta_ros.types import Observation

CAMERAS = ("main", "wrist")
# Arm bent over the table, fingertip pointing down, wrist camera looking at the workspace.
HOME = np.array([0.0, -0.1, 2.0, 0.0, 1.24, 0.0])
HOME_NOISE = 0.05  # rad of seeded jitter on the start pose, so episodes differ


@dataclass(frozen=True)
class SimConfig:
    """How the sim renders and how long one control step lasts."""

    image_width: int = 128  # px of every camera image
    image_height: int = 128
    control_dt: float = 0.1  # s of physics per step(); the policy's action period
    robot: str = ROBOT  # joint names and limits: a name under config/robots/ or a YAML path

    def __post_init__(self):
        for name in ("image_width", "image_height"):
            value = getattr(self, name)
            if not 16 <= value <= 2048:
                raise ConfigError(f"{name}: {value} px is outside 16..2048")
        if not 0.002 <= self.control_dt <= 1.0:
            raise ConfigError(f"control_dt: {self.control_dt} s is outside 0.002..1.0")


@dataclass(frozen=True)
class Outcome:
    """Where an episode stands: done, success, why it ended, and how long it took."""

    done: bool = False
    success: bool = False
    reason: str = ""  # "" while running; touched_target | touched_wrong_cube | timeout | unstable
    steps: int = 0
    seconds: float = 0.0


class SimEnv:
    """The tabletop arm: one episode at a time."""

    def __init__(self, config: SimConfig | None = None):
        self.config = config or SimConfig()
        self.arm = check_arm(load_robot_config(self.config.robot))
        self.model = mujoco.MjModel.from_xml_string(
            build_mjcf(self.arm, self.config.image_width, self.config.image_height))
        self.data = mujoco.MjData(self.model)
        self._substeps = max(1, round(self.config.control_dt / self.model.opt.timestep))
        self._qpos_index = [self.model.joint(j).qposadr[0] for j in self.arm.joints]
        self.tcp_site = self.model.site("tcp").id
        self.cube_geoms = [self.model.geom(f"cube{i}").id for i in range(N_CUBES)]
        self._cube_mocap = [self.model.body(f"cube{i}").mocapid[0] for i in range(N_CUBES)]
        # Every GL call runs on one thread of its own: a GL (EGL/OSMesa) context is current on one
        # thread only, and ROS executors may call render() from any thread of their pool.
        self._gl_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mujoco-gl")
        self._renderer: mujoco.Renderer | None = None
        self.task: Task | None = None
        self.seed = 0
        self.placement: Placement | None = None
        self.outcome = Outcome()

    # --- episode -----------------------------------------------------------------------
    def reset(self, task: str = "reach", seed: int = 0, episode_seconds: float | None = None) -> Observation:
        """Start an episode of `task` with the layout and start pose drawn from `seed`.

        `episode_seconds` shortens (or lengthens) the task's time limit, e.g. for quick checks.
        """
        # all checked before anything changes: a refused reset leaves the episode as it was
        seed, chosen = check_seed(seed), get_task(task)
        if episode_seconds is not None:
            if not 0 < episode_seconds < math.inf:  # inf would never time out; NaN compares false
                raise ConfigError(f"episode_seconds: {episode_seconds} must be > 0 and finite")
            chosen = replace(chosen, episode_seconds=float(episode_seconds))
        self.task, self.seed = chosen, seed
        self.placement = self.task.place(self.seed, N_CUBES)
        mujoco.mj_resetData(self.model, self.data)
        start = HOME + np.random.default_rng(self.seed + 1_000_003).uniform(-HOME_NOISE, HOME_NOISE, 6)
        self.data.qpos[self._qpos_index] = start
        self.data.ctrl[:] = start
        for mocap, (x, y) in zip(self._cube_mocap, self.placement.positions):
            self.data.mocap_pos[mocap] = (x, y, CUBE_HALF)
        self._paint(0.0)
        mujoco.mj_forward(self.model, self.data)
        self.outcome = Outcome()
        return self.observe()

    def step(self, targets: np.ndarray) -> tuple[Observation, Outcome]:
        """Hold joint position `targets` for one control period; return what the cameras see."""
        self.command(targets)
        self.advance(self.config.control_dt)
        return self.observe(), self.outcome

    def command(self, targets: np.ndarray) -> None:
        """Set joint position targets (clipped to the limits); reject non-finite or mis-sized ones."""
        targets = np.asarray(targets, dtype=np.float64)
        if targets.shape != (len(self.arm.joints),):
            raise InputError(f"joint targets: expected shape ({len(self.arm.joints)},), got {targets.shape}")
        if not np.all(np.isfinite(targets)):
            raise InputError("joint targets: non-finite values; holding the previous targets")
        self.data.ctrl[:] = np.clip(targets, self.arm.lower, self.arm.upper)

    def advance(self, seconds: float) -> Outcome:
        """Run the physics for `seconds` (whole timesteps), then update colours and the outcome."""
        if self.task is None:
            raise InputError("the episode has not started: call reset(task, seed) first")
        if self.outcome.done:
            return self.outcome  # the episode is over; the world stays as it ended
        n = max(1, round(seconds / self.model.opt.timestep))
        mujoco.mj_step(self.model, self.data, nstep=n)
        self._paint(self.data.time)
        mujoco.mj_forward(self.model, self.data)  # colours and sites in sync for rendering
        self.outcome = self._judge(self.outcome.steps + 1)
        return self.outcome

    def _paint(self, seconds: float) -> None:
        for geom, rgba in zip(self.cube_geoms, self.task.colours(self.placement, seconds)):
            self.model.geom_rgba[geom] = rgba

    def _judge(self, steps: int) -> Outcome:
        tcp = self.tcp_position
        touched = [i for i, cube in enumerate(self.cube_positions)
                   if box_distance(tcp, cube, CUBE_HALF) <= TOUCH_TOLERANCE]
        seconds = float(self.data.time)
        if self.data.warning[mujoco.mjtWarning.mjWARN_BADQACC].number:
            # MuJoCo reset the state after a numerical blow-up: end the episode, say so.
            return Outcome(True, False, "unstable", steps, seconds)
        if self.placement.target in touched:
            return Outcome(True, True, "touched_target", steps, seconds)
        if touched:
            return Outcome(True, False, "touched_wrong_cube", steps, seconds)
        if seconds >= self.task.episode_seconds - 1e-9:
            return Outcome(True, False, "timeout", steps, seconds)
        return Outcome(False, False, "", steps, seconds)

    # --- what a policy sees ------------------------------------------------------------
    def observe(self) -> Observation:
        """Return the cameras' images, the measured joint positions and the instruction."""
        return Observation(stamp=float(self.data.time),
                           images={name: self.render(name) for name in CAMERAS},
                           state=self.joint_positions.astype(np.float32),
                           instruction=self.task.instruction if self.task else "")

    def render(self, camera: str) -> np.ndarray:
        """Return camera `camera`'s current view as (H, W, 3) uint8 RGB."""
        if camera not in CAMERAS:
            raise ConfigError(f"camera: unknown camera {camera!r}; choose one of {', '.join(CAMERAS)}")
        return self._gl_thread.submit(self._render, camera).result()

    def _render(self, camera: str) -> np.ndarray:
        if self._renderer is None:  # created on first use: code that never renders needs no GL
            try:
                size = self.config.image_height, self.config.image_width
                self._renderer = mujoco.Renderer(self.model, *size)
            except (mujoco.FatalError, RuntimeError, ImportError) as exc:  # what GL setup raises
                raise RenderError(
                    f"MuJoCo cannot render offscreen with MUJOCO_GL={os.environ.get('MUJOCO_GL')!r}: {exc}. "
                    "A machine without a display needs EGL (apt: libegl1 libegl-mesa0 libgl1-mesa-dri) "
                    "or OSMesa (apt: libosmesa6, then MUJOCO_GL=osmesa); `make setup` installs both"
                ) from exc
        self._renderer.update_scene(self.data, camera=camera)
        return self._renderer.render().copy()

    def intrinsics(self, camera: str) -> tuple[float, float, float, float]:
        """Return the pinhole (fx, fy, cx, cy) in pixels of `camera` at the configured size."""
        fovy = np.deg2rad(self.model.cam_fovy[self.model.camera(camera).id])
        focal = 0.5 * self.config.image_height / np.tan(fovy / 2)  # square pixels
        return focal, focal, (self.config.image_width - 1) / 2, (self.config.image_height - 1) / 2

    def close(self) -> None:
        """Free the renderer's GL context and its thread."""
        if self._renderer is not None:
            self._gl_thread.submit(self._renderer.close).result()
            self._renderer = None
        self._gl_thread.shutdown()

    def __enter__(self) -> SimEnv:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()  # in this thread, not in a garbage collector's, which has no GL context

    # --- privileged state (expert, success checks, reports) -----------------------------
    @property
    def joint_positions(self) -> np.ndarray:
        return self.data.qpos[self._qpos_index].copy()

    @property
    def joint_velocities(self) -> np.ndarray:
        return self.data.qvel[[self.model.joint(j).dofadr[0] for j in self.arm.joints]].copy()

    @property
    def joint_targets(self) -> np.ndarray:
        return self.data.ctrl.copy()

    @property
    def tcp_position(self) -> np.ndarray:
        return self.data.site_xpos[self.tcp_site].copy()

    @property
    def cube_positions(self) -> np.ndarray:
        return np.array([self.data.mocap_pos[m] for m in self._cube_mocap])

    @property
    def target_position(self) -> np.ndarray:
        return self.cube_positions[self.placement.target]

    @property
    def time(self) -> float:
        return float(self.data.time)
