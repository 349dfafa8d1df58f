"""Executing action chunks: latency compensation, blending, limits, workspace, e-stop and deadman.

Plain classes with no ROS: the chunk_executor node converts messages, hands values in here
with its clock's `now`, and publishes what `ChunkExecutor.tick` returns. Time is seconds on
one clock (the node's), the same clock the observation stamps were taken on.

Action k of a chunk is meant for `stamp + k * dt`. A chunk arrives after inference, so its first
actions are already in the past: sampling the blended plan at the current time skips them
(latency compensation). Between actions the plan is interpolated linearly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from dysta_ros.errors import ConfigError, InputError
from dysta_ros.robot import COMMAND_OUTPUTS, OUTPUT_ACTION_SPACE, RobotConfig, Workspace
from dysta_ros.types import ActionChunk

BLENDINGS = ("latest", "weighted_average", "temporal_ensemble")
# End-effector action layouts: a pose is xyz + rpy (6) or xyz + quaternion xyzw (7).
EE_DIMS = {"ee_pose": (6, 7), "ee_twist": (6,)}
# Chunks kept for temporal ensembling; older ones have run out long before this bound matters.
MAX_CHUNKS = 64


# Inclusive ranges of ExecutorConfig's numbers, defined once: chunk_executor declares its ROS
# parameters with them, so a live set and a start-up value are refused by the same bounds.
EXECUTOR_RANGES = {
    "control_rate_hz": (0.1, 1000.0),
    "ensemble_decay": (0.0, 10.0),
    "max_chunk_age_s": (0.001, 60.0),
    "max_state_age_s": (0.001, 60.0),
    "trajectory_lookahead_s": (0.0, 5.0),
    "trajectory_rate_hz": (0.1, 1000.0),
}


class StaleChunkError(InputError):
    """A chunk whose observation is older than the deadman allows: dropped and counted.

    Not its publisher's fault (a slow link or a queue delivered it late), so not a rejection.
    """


@dataclass(frozen=True)
class ExecutorConfig:
    """How chunk_executor turns chunks into commands (ROS parameters of the same names)."""

    control_rate_hz: float = 50.0  # commands per second
    blending: str = "weighted_average"  # one of BLENDINGS
    ensemble_decay: float = 0.01  # temporal_ensemble: chunk i (0 = oldest) weighs exp(-decay * i)
    max_chunk_age_s: float = 0.5  # deadman: hold when no valid chunk arrived for this long
    max_state_age_s: float = 0.5  # joint states older than this cannot anchor the velocity limit
    latency_compensation: bool = True  # False: a chunk's action 0 is for its arrival time
    command_output: str = ""  # one of COMMAND_OUTPUTS; "" takes the robot config's
    # joint_trajectory output: each trajectory carries the plan this far ahead (0: one point),
    # sent at this rate; a JointTrajectoryController replans on every message, so a short
    # trajectory per control period makes it stutter (see `ChunkExecutor.lookahead`).
    trajectory_lookahead_s: float = 0.3
    trajectory_rate_hz: float = 10.0
    dry_run: bool = False  # log commands instead of publishing them

    def __post_init__(self):
        for name, (low, high) in EXECUTOR_RANGES.items():
            value = getattr(self, name)
            if not (low <= value <= high):
                raise ConfigError(f"{name} must be in [{low}, {high}], got {value}")
        if self.blending not in BLENDINGS:
            raise ConfigError(f"blending {self.blending!r} is not one of {', '.join(BLENDINGS)}")
        if self.command_output not in ("",) + COMMAND_OUTPUTS:
            raise ConfigError(f"command_output {self.command_output!r} is not one of "
                              f"{', '.join(COMMAND_OUTPUTS)} (or empty for the robot config's)")

    @property
    def period(self) -> float:
        return 1.0 / self.control_rate_hz


@dataclass
class TimedChunk:
    """A validated chunk on the executor's clock: action k is meant for `start + k * dt`."""

    start: float
    dt: float
    actions: np.ndarray  # (H, D) float64, in the executor's joint/axis order
    received: float  # when it arrived; blending into it starts here
    fade_end: float = -math.inf  # weighted_average: the end of the chunk before it (set by the blender)

    @property
    def end(self) -> float:
        return self.start + (len(self.actions) - 1) * self.dt

    def covers(self, t: float) -> bool:
        return self.start <= t <= self.end

    def sample(self, t: float, action_space: str = "joint_position") -> np.ndarray:
        """Return the action for time `t` (within the chunk), interpolated linearly."""
        position = (t - self.start) / self.dt
        k = min(int(math.floor(position)), len(self.actions) - 1)
        if k >= len(self.actions) - 1:
            return weighted_mean(self.actions[-1:], np.ones(1), action_space)
        frac = position - k
        return weighted_mean(self.actions[k:k + 2], np.array([1.0 - frac, frac]), action_space)  # (D,)


def weighted_mean(actions: np.ndarray, weights: np.ndarray, action_space: str) -> np.ndarray:
    """Return the weighted mean (D,) of actions (N, D), pose orientations in one representation.

    q and -q are one rotation, as are rpy angles 2*pi apart; averaged as they come they cancel
    (a quaternion shrinks towards zero, yaw 3.1 and -3.1 give 0: half a turn away). So each
    orientation is first aligned to the most weighted one, and a mean quaternion is normalised
    again (normalised linear interpolation), an angle wrapped back into [-pi, pi).
    """
    actions = np.array(actions, dtype=np.float64)  # (N, D), a copy: aligned in place below
    dim = actions.shape[1]
    pose = action_space == "ee_pose" and dim in EE_DIMS["ee_pose"]
    if pose:
        reference = actions[int(np.argmax(weights)), 3:].copy()  # (R,)
        with np.errstate(invalid="ignore"):  # a non-finite value stays so; tick() holds on it
            if dim == 7:
                actions[actions[:, 3:] @ reference < 0, 3:] *= -1.0
            else:
                actions[:, 3:] = reference + wrap_angle(actions[:, 3:] - reference)
    mean = weights @ actions / weights.sum()  # (D,)
    if pose and dim == 7:
        # Aligned, every quaternion has a non-negative dot with the reference, whose weight is
        # the largest, so the mean is at least that far from zero.
        mean[3:] /= np.linalg.norm(mean[3:])
    elif pose:
        mean[3:] = wrap_angle(mean[3:])
    return mean


def wrap_angle(angle: np.ndarray) -> np.ndarray:
    """Return angles (radians) wrapped into [-pi, pi)."""
    return (angle + math.pi) % (2.0 * math.pi) - math.pi


def prepare_actions(chunk: ActionChunk, names: tuple[str, ...], action_space: str) -> np.ndarray:
    """Validate a chunk for this executor and return its actions (H, D) in `names` order."""
    if chunk.action_space != action_space:
        raise InputError(f"chunk action_space {chunk.action_space!r} does not fit this output, "
                         f"which takes {action_space!r}")
    actions = np.asarray(chunk.actions, dtype=np.float64)
    if actions.ndim != 2 or actions.shape[0] < 1 or actions.shape[1] < 1:
        raise InputError(f"chunk actions must be (horizon >= 1, dim >= 1), got shape {actions.shape}")
    if not np.all(np.isfinite(actions)):
        raise InputError(f"chunk holds {int(np.sum(~np.isfinite(actions)))} non-finite action values")
    if not (math.isfinite(chunk.dt) and chunk.dt > 0):
        raise InputError(f"chunk dt must be a positive number of seconds, got {chunk.dt}")
    if not math.isfinite(chunk.stamp):
        raise InputError(f"chunk stamp must be finite, got {chunk.stamp}")
    if action_space == "joint_position":
        if len(chunk.names) != actions.shape[1] or len(set(chunk.names)) != len(chunk.names):
            raise InputError(f"chunk needs {actions.shape[1]} distinct joint names, got {list(chunk.names)}")
        if set(chunk.names) != set(names):
            raise InputError(f"chunk joints {sorted(chunk.names)} differ from the robot's {sorted(names)}")
        order = [list(chunk.names).index(n) for n in names]  # by name, never by index
        return actions[:, order]
    if actions.shape[1] not in EE_DIMS[action_space]:
        raise InputError(f"{action_space} chunks need dim in {EE_DIMS[action_space]}, got {actions.shape[1]}")
    if actions.shape[1] == 7 and np.any(np.linalg.norm(actions[:, 3:], axis=1) < 1e-6):
        raise InputError("ee_pose chunk holds a zero quaternion (no orientation)")
    return actions


class ChunkBlender:
    """The plan the executor follows: recent chunks on one timeline, blended where they overlap."""

    def __init__(self, blending: str = "weighted_average", ensemble_decay: float = 0.01,
                 action_space: str = "joint_position"):
        if blending not in BLENDINGS:
            raise ConfigError(f"blending {blending!r} is not one of {', '.join(BLENDINGS)}")
        self.blending = blending
        self.ensemble_decay = ensemble_decay
        self.action_space = action_space  # how actions combine: see weighted_mean
        self.chunks: list[TimedChunk] = []

    def clear(self):
        self.chunks.clear()

    def add(self, chunk: TimedChunk, now: float) -> int:
        """Add a chunk; return how many of its actions were already past (skipped)."""
        if chunk.end < now:
            raise InputError(f"chunk arrived {now - chunk.end:.3f} s after its last action's time")
        chunk.fade_end = self.chunks[-1].end if self.chunks else -math.inf
        self.chunks = [c for c in self.chunks if c.end >= now][-(MAX_CHUNKS - 1):] + [chunk]
        return int(sum(chunk.start + k * chunk.dt < now for k in range(len(chunk.actions))))

    def target(self, t: float) -> np.ndarray | None:
        """Return the blended action for time `t`, or None when no chunk covers it."""
        covering = [c for c in self.chunks if c.covers(t)]
        if not covering:
            return None
        newest = covering[-1]
        if self.blending == "latest" or len(covering) == 1:
            return newest.sample(t, self.action_space)
        if self.blending == "weighted_average":
            # Cross-fade from the previous plan (itself a blend, when chunks come faster than
            # they fade) to each newer chunk across the rest of the chunk before it, so a new
            # chunk never makes the target jump. A finished fade hides all that is older.
            fades = [fade(c, t) for c in covering]
            first = max((i for i, w in enumerate(fades) if w >= 1.0), default=0)
            value = covering[first].sample(t, self.action_space)
            for chunk, weight in zip(covering[first + 1:], fades[first + 1:]):
                pair = np.stack([value, chunk.sample(t, self.action_space)])  # (2, D)
                value = weighted_mean(pair, np.array([1.0 - weight, weight]), self.action_space)
            return value
        # temporal_ensemble (ACT): every chunk that covers t votes; older chunks weigh more.
        weights = np.exp(-self.ensemble_decay * np.arange(len(covering)))  # (N,)
        samples = np.stack([c.sample(t, self.action_space) for c in covering])  # (N, D)
        return weighted_mean(samples, weights, self.action_space)


def fade(chunk: TimedChunk, t: float) -> float:
    """Return the weight of `chunk` over the plan before it at `t`: 0 on arrival, 1 at its fade_end."""
    begin = max(chunk.start, chunk.received)
    span = chunk.fade_end - begin
    return 1.0 if span <= 0 else float(np.clip((t - begin) / span, 0.0, 1.0))


def clip_to_limits(target: np.ndarray, reference: np.ndarray, period: float,
                   robot: RobotConfig) -> tuple[np.ndarray, bool]:
    """Limit a joint target to one period of velocity from `reference`, then to position limits."""
    step = robot.max_velocity * period
    command = np.clip(target, reference - step, reference + step)
    command = np.clip(command, robot.lower, robot.upper)  # position limits win over velocity
    return command, bool(np.any(np.abs(command - target) > 1e-12))


def limit_path(targets: np.ndarray, start: np.ndarray, period: float,
               robot: RobotConfig) -> tuple[np.ndarray, int]:
    """Return joint targets (N, D) one `period` apart, each held to the limits from the one before.

    Each point is clipped as a command is (`clip_to_limits`): one period of velocity from the
    point before (the first from `start`), then the position limits. Return the points and how
    many were changed.
    """
    limited = np.empty((len(targets), len(start)), dtype=np.float64)  # (N, D)
    reference, clamped = np.asarray(start, dtype=np.float64), 0
    for k, target in enumerate(np.asarray(targets, dtype=np.float64)):
        limited[k], changed = clip_to_limits(target, reference, period, robot)
        clamped += changed
        reference = limited[k]
    return limited, clamped


def clip_to_workspace(target: np.ndarray, action_space: str,
                      workspace: Workspace) -> tuple[np.ndarray, dict[str, float]]:
    """Clamp a pose's position into the box, or scale a twist's speeds down to the limits.

    Return the command and how far the target was outside, per kind (empty when inside).
    """
    command = np.array(target, dtype=np.float64)
    excess = {}
    if action_space == "ee_pose":
        command[:3] = np.clip(command[:3], workspace.lower, workspace.upper)
        outside = float(np.linalg.norm(command[:3] - target[:3]))
        if outside > 0:
            excess["position_m"] = outside
        return command, excess
    # ee_twist: scale each vector as a whole, so the motion keeps its direction (as servo
    # controllers do), rather than clipping axes and bending the path.
    for key, axes, limit in (("linear_speed_m_s", slice(0, 3), workspace.max_linear_speed),
                             ("angular_speed_rad_s", slice(3, 6), workspace.max_angular_speed)):
        speed = float(np.linalg.norm(command[axes]))
        if speed > limit:
            command[axes] *= limit / speed
            excess[key] = speed - limit
    return command, excess


def describe_excess(excess: dict[str, float]) -> str:
    """Say how far a target was outside the workspace, e.g. 'position 0.150 m outside the box'."""
    words = {"position_m": "position {:.3f} m outside the box",
             "linear_speed_m_s": "linear speed {:.3f} m/s over the limit",
             "angular_speed_rad_s": "angular speed {:.3f} rad/s over the limit"}
    return ", ".join(words[key].format(value) for key, value in excess.items())


class EStopLatch:
    """An emergency stop that stays engaged until explicitly cleared."""

    def __init__(self):
        self.engaged = False
        self.reason = ""

    def trip(self, reason: str):
        if not self.engaged:
            self.engaged, self.reason = True, reason

    def clear(self) -> bool:
        """Release the latch; return whether it was engaged."""
        was_engaged = self.engaged
        self.engaged, self.reason = False, ""
        return was_engaged


class Deadman:
    """Holds when nothing fresh has arrived for `max_age_s`."""

    def __init__(self, max_age_s: float):
        self.max_age_s = max_age_s
        self.last_fed: float | None = None

    def feed(self, now: float):
        self.last_fed = now

    def reset(self):
        self.last_fed = None

    def expired(self, now: float) -> bool:
        return self.last_fed is None or now - self.last_fed > self.max_age_s


@dataclass
class Tick:
    """One control period's outcome: a command to send, or the reason for holding."""

    command: np.ndarray | None  # (D,) joint positions or end-effector values; None = hold
    hold_reason: str = ""
    clipped: bool = False
    excess: dict[str, float] = field(default_factory=dict)  # how far outside the workspace (EE)


class ChunkExecutor:
    """Turn a stream of chunks and joint states into safe commands, one tick at a time."""

    def __init__(self, config: ExecutorConfig, robot: RobotConfig):
        self.config = config
        self.robot = robot
        self.output = config.command_output or robot.command_output
        if self.output not in robot.command_topics:
            raise ConfigError(f"command_output {self.output!r} has no topic in robot {robot.name!r}'s "
                              f"command_topics ({', '.join(robot.command_topics)})")
        self.action_space = OUTPUT_ACTION_SPACE[self.output]
        self.blender = ChunkBlender(config.blending, config.ensemble_decay, self.action_space)
        self.estop = EStopLatch()
        self.deadman = Deadman(config.max_chunk_age_s)
        self.joint_positions: np.ndarray | None = None
        self.joint_time: float | None = None
        self.last_command: np.ndarray | None = None
        self.last_command_time: float | None = None
        # The last trajectory handed out by `lookahead`: (its `now`, points (N, D)). Between
        # trajectories the controller follows it, so the next one starts from it (see tick).
        self.sent: tuple[float, np.ndarray] | None = None
        # stale: dropped because their observation was older than max_chunk_age_s on arrival
        self.counts = {"accepted": 0, "rejected": 0, "stale": 0, "late_actions_skipped": 0, "clipped": 0,
                       "commands": 0}
        self.last_rejection = ""
        self.workspace = robot.workspace if self.action_space != "joint_position" else None
        self.worst_excess: dict[str, float] = {}  # the farthest outside the workspace so far, per kind
        self.last_tick: float | None = None

    def reconfigure(self, config: ExecutorConfig):
        """Apply a new config live (blending, ages, compensation, dry_run); the output stays."""
        if (config.command_output or self.robot.command_output) != self.output:
            raise ConfigError("command_output cannot change while running")
        if config.dry_run != self.config.dry_run:
            # A dry run's commands are not sent: the controller is not where they went.
            self.last_command = self.sent = None
        self.config = config
        self.blender.blending, self.blender.ensemble_decay = config.blending, config.ensemble_decay
        self.deadman.max_age_s = config.max_chunk_age_s

    def on_chunk(self, chunk: ActionChunk, now: float) -> None:
        """Take a chunk into the plan; raise InputError (and count it) when it is unusable."""
        try:
            actions = prepare_actions(chunk, self.robot.joints, self.action_space)
            if chunk.stamp > now + self.config.max_chunk_age_s:
                # An observation cannot be newer than now: the publisher's clock is wrong.
                raise InputError(f"chunk stamped {chunk.stamp - now:.3f} s in the future (observation "
                                 f"stamps precede their chunk); check the clocks")
            start = chunk.stamp if self.config.latency_compensation else now
            timed = TimedChunk(start, chunk.dt, actions, now)
            age = now - chunk.stamp
            # A chunk wholly in the past is refused by the blender, as an error (a clock, most
            # likely); one still running but older than the deadman allows was delivered late.
            if age > self.config.max_chunk_age_s and timed.end >= now:
                # Acting on it, or letting it keep the deadman fed, would move the robot on a
                # view of the world that old.
                raise StaleChunkError(f"observation {age:.3f} s old on arrival "
                                      f"(> max_chunk_age_s {self.config.max_chunk_age_s})")
            skipped = self.blender.add(timed, now)
        except StaleChunkError as exc:
            self.counts["stale"] += 1
            self.last_rejection = str(exc)
            raise
        except InputError as exc:
            self.reject(str(exc))
            raise
        self.counts["accepted"] += 1
        self.counts["late_actions_skipped"] += skipped
        self.deadman.feed(now)

    def reject(self, reason: str):
        """Count a chunk that could not be used, and remember why."""
        self.counts["rejected"] += 1
        self.last_rejection = reason

    def on_joint_state(self, names: list[str], positions: list[float], now: float) -> None:
        """Store the measured joint positions (picked by name); raise InputError if unusable."""
        self.joint_positions = self.robot.pick_joints(names, positions)
        self.joint_time = now

    def trip_estop(self, reason: str):
        self.estop.trip(reason)
        self.blender.clear()

    def clear_estop(self) -> bool:
        """Release the e-stop; the robot moves again only on a chunk that arrives afterwards."""
        self.blender.clear()
        self.deadman.reset()
        return self.estop.clear()

    def _hold(self, reason: str) -> Tick:
        self.last_command = self.sent = None  # resume from the measured position, not a stale command
        return Tick(None, reason)

    def tick(self, now: float) -> Tick:
        """Return this period's command, or why there is none."""
        jumped_back = self.last_tick is not None and now < self.last_tick
        self.last_tick = now
        if jumped_back:
            # Sim time reset or a bag looped: plans and ages on the old timeline mean nothing now.
            self.blender.clear()
            self.deadman.reset()
            return self._hold("the clock jumped back; waiting for a chunk on the new time")
        if self.estop.engaged:
            return self._hold(f"e-stop engaged ({self.estop.reason}); call /dysta/clear_estop to release")
        if self.deadman.expired(now):
            if self.deadman.last_fed is None:
                return self._hold("waiting for a chunk")
            return self._hold(f"deadman: no valid chunk for {now - self.deadman.last_fed:.2f} s "
                              f"(max_chunk_age_s {self.config.max_chunk_age_s})")
        # Aim at where the plan is one period from now: the command is reached by the next tick.
        target = self.blender.target(now + self.config.period)
        if target is None:
            return self._hold("the plan has run out: no chunk covers the next period")
        clipped = False
        if self.action_space == "joint_position":
            continuing = (self.last_command is not None and self.last_command_time is not None
                          and now - self.last_command_time <= 2.5 * self.config.period)
            if continuing and self.sent is not None:
                # joint_trajectory: the controller is on the last trajectory sent, not on the
                # commands computed (unsent) since, which may have gone another way.
                reference = self.sent_position(now)
            elif continuing:
                reference = self.last_command
            elif (self.joint_positions is not None
                  # negative: taken on a timeline the clock has since jumped back from
                  and 0.0 <= now - self.joint_time <= self.config.max_state_age_s):
                reference = self.joint_positions
            else:
                return self._hold("no fresh joint states to start from (velocity limit needs them)")
            target, clipped = clip_to_limits(target, reference, self.config.period, self.robot)
        if not np.all(np.isfinite(target)):
            # Chunks are checked on arrival; this guards the blend and the limits behind them.
            return self._hold("the plan gave a non-finite target")
        excess = {}
        if self.workspace is not None:
            target, excess = clip_to_workspace(target, self.action_space, self.workspace)
            clipped = bool(excess)
            for key, value in excess.items():
                self.worst_excess[key] = max(value, self.worst_excess.get(key, 0.0))
        self.counts["clipped"] += int(clipped)
        self.last_command, self.last_command_time = target, now
        self.counts["commands"] += 1
        return Tick(target, "", clipped, excess)

    def lookahead(self, now: float, command: np.ndarray) -> np.ndarray:
        """Return trajectory points (N, D): `command` (this tick's, for `now + period`), then the plan.

        The blended plan is sampled every period up to `trajectory_lookahead_s` ahead, each
        point held to the joint limits from the point before (`clip_to_limits`, as a command is
        from the last), and cut where the plan runs out. Point j is meant for `now + (j + 1) *
        period`. Sent at `trajectory_rate_hz`, the controller always has the next stretch of the
        plan and interpolates it itself, instead of replanning towards one point each period.
        """
        period = self.config.period
        targets = []
        for j in range(1, max(1, int(round(self.config.trajectory_lookahead_s / period)))):
            target = self.blender.target(now + (j + 1) * period)
            if target is None or not np.all(np.isfinite(target)):
                break
            targets.append(target)
        ahead, _ = limit_path(np.reshape(targets, (-1, len(command))), command, period, self.robot)
        points = np.vstack([np.asarray(command, dtype=np.float64)[None, :], ahead])  # (N, D)
        self.sent = (now, points)  # the node sends what it is given
        return points

    def sent_position(self, now: float) -> np.ndarray:
        """Return where the last trajectory sent has the controller at `now` (its last point after it)."""
        sent, points = self.sent
        path = TimedChunk(sent + self.config.period, self.config.period, points, received=sent)
        return path.sample(min(max(now, path.start), path.end))

    @property
    def bounded(self) -> bool:
        """Whether every command is bounded: joint limits, or a workspace for end-effector outputs."""
        return self.action_space == "joint_position" or self.workspace is not None
