"""The scripted expert: damped-least-squares IK on MuJoCo's Jacobian, from privileged state.

It knows where the target cube is (a policy does not), moves the fingertip above it with the
finger pointing down, then descends until it touches. It speaks the policy runtime's boundary,
`step(observation) -> (chunk, stats)` and `reset()`, so every loop that runs a policy runs it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import mujoco
import numpy as np

from dysta_ros.sim.env import SimEnv
from dysta_ros.sim.scene import CUBE_HALF
from dysta_ros.types import ActionChunk, Observation, StepStats

DOWN = np.array([0.0, 0.0, -1.0])


@dataclass(frozen=True)
class ExpertConfig:
    """How the expert plans: chunk length, IK damping, approach height and speed."""

    horizon: int = 10  # actions per chunk, one per control period
    damping: float = 0.05  # DLS lambda: larger is smoother near singularities, slower to converge
    approach_height: float = 0.07  # m above the cube top to line up before descending
    aligned_within: float = 0.015  # m of horizontal error below which the descent starts
    max_tcp_speed: float = 0.25  # m/s of fingertip motion the plan asks for
    orientation_weight: float = 0.3  # how hard the finger is kept pointing down


class ScriptedExpert:
    """Plan joint targets toward the target cube with DLS IK, one chunk per step."""

    name = "expert"

    def __init__(self, env: SimEnv, config: ExpertConfig | None = None, cube: int | None = None):
        self.env = env
        self.config = config or ExpertConfig()
        self.cube = cube  # aim at this cube instead of the task's target (failure cases, tests)
        self._plan_data = mujoco.MjData(env.model)  # kinematics scratch; the sim's data stays untouched
        self._sequence = 0

    def reset(self) -> None:
        """Forget the previous episode."""
        self._sequence = 0

    def plan(self, start: np.ndarray, horizon: int | None = None) -> np.ndarray:
        """Return (H, 6) joint targets from joint positions `start` toward touching the target."""
        cfg, env = self.config, self.env
        model, data = env.model, self._plan_data
        speed_per_step = cfg.max_tcp_speed * env.config.control_dt
        velocity_per_step = env.arm.max_velocity * env.config.control_dt
        cube = env.target_position if self.cube is None else env.cube_positions[self.cube]
        touch = cube + (0.0, 0.0, CUBE_HALF - 0.005)  # slightly into the top face: touching counts
        above = touch + (0.0, 0.0, cfg.approach_height)
        jac_pos, jac_rot = np.zeros((3, model.nv)), np.zeros((3, model.nv))
        dofs = [model.joint(j).dofadr[0] for j in env.arm.joints]
        qpos_index = [model.joint(j).qposadr[0] for j in env.arm.joints]
        q = np.array(start, dtype=np.float64)
        actions = []
        for _ in range(horizon or cfg.horizon):
            data.qpos[qpos_index] = q
            mujoco.mj_kinematics(model, data)
            mujoco.mj_comPos(model, data)
            tcp = data.site_xpos[env.tcp_site]
            finger_axis = data.site_xmat[env.tcp_site].reshape(3, 3)[:, 2]
            horizontal = np.linalg.norm((tcp - above)[:2])
            goal = touch if horizontal < cfg.aligned_within else above
            error = goal - tcp
            if np.linalg.norm(error) > speed_per_step:  # a straight line at bounded speed
                error *= speed_per_step / np.linalg.norm(error)
            rot_error = cfg.orientation_weight * np.cross(finger_axis, DOWN)
            mujoco.mj_jacSite(model, data, jac_pos, jac_rot, env.tcp_site)
            jac = np.vstack([jac_pos[:, dofs], cfg.orientation_weight * jac_rot[:, dofs]])  # (6, 6)
            err = np.concatenate([error, rot_error])  # (6,)
            # DLS: dq = J^T (J J^T + lambda^2 I)^-1 e, stable through singular poses.
            dq = jac.T @ np.linalg.solve(jac @ jac.T + cfg.damping**2 * np.eye(6), err)
            dq = np.clip(dq, -velocity_per_step, velocity_per_step)
            q = np.clip(q + dq, env.arm.lower, env.arm.upper)
            actions.append(q.copy())
        return np.array(actions, dtype=np.float32)

    def step(self, observation: Observation) -> tuple[ActionChunk, StepStats]:
        """Plan a chunk from the observed joint state, as a policy runtime would."""
        started = time.time()
        actions = self.plan(observation.state.astype(np.float64))
        ended = time.time()
        self._sequence += 1
        chunk = ActionChunk(stamp=observation.stamp, actions=actions, dt=self.env.config.control_dt,
                            strategy=self.name, sequence=self._sequence, names=list(self.env.arm.joints),
                            inference_start=started, inference_end=ended)
        stats = StepStats(strategy=self.name, sequence=self._sequence)
        stats.stage_ms["total"] = (ended - started) * 1000.0
        return chunk, stats
