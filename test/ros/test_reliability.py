"""Reliability over real topics: bad inputs, faults, clock jumps against live policy_node + chunk_executor.

One policy_node (tiny preset, a raw and a compressed camera) and one chunk_executor spin on
their own executor thread for the whole module, on sim time driven by this test's /clock. A
probe node throws bad inputs at them over the wire. For every case: a diagnostic naming the
problem, no chunk from the bad input, every command the executor sends finite, inside the
position limits and within one period of velocity, the nodes alive, and the next good input
works.
"""

from __future__ import annotations

import math
import struct
import threading
import time
import zlib

import cv2
import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
import torch  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rclpy.executors import MultiThreadedExecutor, SingleThreadedExecutor  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.parameter_client import AsyncParameterClient  # noqa: E402

from dysta_ros.nodes.topics import NAMESPACE  # noqa: E402
from rosgraph_msgs.msg import Clock  # noqa: E402
from sensor_msgs.msg import CompressedImage, Image, JointState  # noqa: E402
from std_msgs.msg import Bool, String  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402
from trajectory_msgs.msg import JointTrajectory  # noqa: E402

from dysta_ros import types  # noqa: E402
from dysta_ros.execution import ExecutorConfig  # noqa: E402
from dysta_ros.msg import ActionChunk  # noqa: E402
from dysta_ros.nodes import conversions as conv  # noqa: E402
from dysta_ros.nodes.image_conversion import CHANNELS, rgb_to_image  # noqa: E402
from dysta_ros.robot import load_robot_config  # noqa: E402
from ros_helpers import spin_until  # noqa: E402

RAW_TOPIC, COMPRESSED_TOPIC = "/rel/camera/image_raw", "/rel/wrist/image_raw/compressed"
ROBOT = load_robot_config("sim_arm")
JOINTS = list(ROBOT.joints)
STATE = np.array([0.1, -0.2, 0.3, 0.0, 0.5, -0.4])
CONTROL_RATE = 20.0
ERROR, WARN, OK = 2, 1, 0
RNG = np.random.default_rng(0)
# sensor_msgs/image_encodings.hpp, less the five the node takes.
UNSUPPORTED_ENCODINGS = (
    ["rgb16", "rgba16", "bgr16", "bgra16", "mono16", "yuv422", "UYVY", "yuv422_yuy2", "YUYV", "nv21", "nv24"]
    + [f"bayer_{p}{b}" for p in ("rggb", "bggr", "gbrg", "grbg") for b in (8, 16)]
    + [f"{d}C{c}" for d in ("8U", "8S", "16U", "16S", "32S", "32F", "64F") for c in (1, 2, 3, 4)]
    + ["", "RGB8", "rgb8 ", "jpeg"])
assert not set(UNSUPPORTED_ENCODINGS) & set(CHANNELS)


class SimClock:
    """Sim time for the nodes: /clock published from a thread at 200 Hz; `jump` moves it."""

    def __init__(self):
        self.node = rclpy.create_node("reliability_clock")
        self.pub = self.node.create_publisher(Clock, "/clock", 10)
        self.origin = time.monotonic() - 1000.0
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    def now(self) -> float:
        with self.lock:
            return time.monotonic() - self.origin

    def jump(self, seconds: float):
        with self.lock:
            self.origin -= seconds

    def loop(self):
        while not self.stop.wait(0.005):  # the clock's own tick, not a wait in a test
            self.pub.publish(Clock(clock=conv.to_stamp(self.now())))

    def close(self):
        self.stop.set()
        self.thread.join()
        self.node.destroy_node()


class System:
    """policy_node + chunk_executor spinning on their own thread; any escaped exception is kept."""

    def __init__(self):
        from dysta_ros.nodes.chunk_executor import ChunkExecutorNode
        from dysta_ros.nodes.policy_node import PolicyNode

        sim = Parameter("use_sim_time", value=True)
        self.policy = PolicyNode(parameter_overrides=[
            sim, Parameter("camera_topics", value=[RAW_TOPIC, COMPRESSED_TOPIC]),
            Parameter("preset_overrides", value="{camera_names: [main, wrist]}"),
            Parameter("strategy", value="full"), Parameter("instruction", value="touch the red cube"),
            Parameter("inference_rate_hz", value=20.0), Parameter("diagnostic_period_s", value=0.1),
            Parameter("max_image_age_s", value=0.5), Parameter("max_state_age_s", value=0.5)])
        self.executor_node = ChunkExecutorNode(parameter_overrides=[
            sim, Parameter("control_rate_hz", value=CONTROL_RATE), Parameter("max_chunk_age_s", value=0.5),
            Parameter("max_state_age_s", value=0.5), Parameter("diagnostic_period_s", value=0.1)])
        self.errors: list[BaseException] = []
        self.stop = threading.Event()
        self.executor = MultiThreadedExecutor(num_threads=2)
        for node in (self.policy, self.executor_node):
            self.executor.add_node(node)
        self.thread = threading.Thread(target=self.spin, daemon=True)
        self.thread.start()

    def spin(self):
        while not self.stop.is_set():
            try:
                self.executor.spin_once(timeout_sec=0.05)
            except BaseException as exc:  # noqa: BLE001 - recorded: the test fails on any
                self.errors.append(exc)
                return

    def alive(self) -> bool:
        loop = self.policy.loop  # the inference thread's, while active
        inference = loop.thread if loop is not None else None
        return not self.errors and self.thread.is_alive() and inference is not None and inference.is_alive()

    def close(self):
        self.policy.close()
        self.stop.set()
        self.thread.join()
        self.executor.shutdown()
        self.policy.destroy_node()
        self.executor_node.destroy_node()


class CommandWatch:
    """Checks every trajectory the executor sends: finite, in limits, one period of velocity.

    Each trajectory holds the plan ahead, point j for its stamp + (j + 1) periods (at most
    `trajectory_lookahead_s` of them): every point one period of velocity from the one before,
    the first from the previous trajectory's first by as many periods as passed between their
    stamps (each trajectory starts one period from where the one before has the controller at
    its stamp; the timer may fire late, so this is time, not ticks), or from the measured state
    after a hold. The command publisher keeps one message (a newer trajectory, or hold,
    supersedes an unsent one), so how many were sent since the last one seen is read from the
    stamps, in whole sendings; a hold not seen restarted from the measured state within as many
    ticks.
    """

    def __init__(self):
        self.moving = 0
        self.holds = 0
        self.holding = False
        self.violations: list[str] = []
        self.previous: tuple[float, np.ndarray] | None = None  # the last trajectory's (stamp, first point)

    def __call__(self, msg: JointTrajectory):
        self.holding = not msg.points  # the last message seen is a hold
        if not msg.points:
            self.holds += 1
            self.previous = None  # the executor restarts from measured joint states
            return
        self.moving += 1
        period = 1.0 / CONTROL_RATE
        times = [conv.to_seconds(p.time_from_start) for p in msg.points]
        most = round(ExecutorConfig().trajectory_lookahead_s * CONTROL_RATE)  # the points of 0.3 s
        if (list(msg.joint_names) != JOINTS or not 1 <= len(msg.points) <= most
                or not np.allclose(times, period * np.arange(1, len(times) + 1))):
            self.violations.append(f"malformed command {msg.joint_names} with {len(msg.points)} points "
                                   f"at {times}")
            return
        points = np.array([p.positions for p in msg.points])  # (N, D)
        step = ROBOT.max_velocity * period + 1e-9
        every = max(1, round(CONTROL_RATE / ExecutorConfig().trajectory_rate_hz))  # ticks per trajectory
        stamp = conv.to_seconds(msg.header.stamp)
        since = 0.0 if self.previous is None else stamp - self.previous[0]
        sendings = max(1, round(since / (every * period)))
        ticks = every * sendings
        if not np.all(np.isfinite(points)):
            self.violations.append(f"non-finite command {points}")
        elif np.any(points < ROBOT.lower) or np.any(points > ROBOT.upper):
            self.violations.append(f"command outside position limits {points}")
        elif np.any(np.abs(np.diff(points, axis=0)) > step):
            self.violations.append(f"trajectory moves faster than the velocity limit: {points}")
        # From the last command while continuing, or from the measured state after a hold.
        elif not any(np.all(np.abs(points[0] - ref) <= reach)
                     for ref, reach in ((self.previous and self.previous[1], max(since / period, 1.0) * step),
                                        (STATE, ticks * step)) if ref is not None):
            moved = np.inf if self.previous is None else np.max(np.abs(points[0] - self.previous[1]) / step)
            from_state = np.max(np.abs(points[0] - STATE) / step)
            self.violations.append(f"command moves faster than the velocity limit: {moved:.2f} periods "
                                   f"of it in {since / period:.2f} periods, {from_state:.2f} from the state")
        self.previous = (stamp, points[0])


class Probe:
    """The test's node: publishes inputs, records chunks, commands and diagnostics."""

    def __init__(self, clock: SimClock):
        self.clock = clock
        self.node = rclpy.create_node("reliability_probe")
        self.spin = SingleThreadedExecutor()
        self.spin.add_node(self.node)
        pub = self.node.create_publisher
        self.raw_pub = pub(Image, RAW_TOPIC, conv.CAMERA_QOS)
        self.compressed_pub = pub(CompressedImage, COMPRESSED_TOPIC, conv.CAMERA_QOS)
        self.state_pub = pub(JointState, "/joint_states", conv.STATE_QOS)
        self.chunk_pub = pub(ActionChunk, "/dysta/action_chunk", conv.RELIABLE_QOS)
        self.instruction_pub = pub(String, "/dysta/instruction", conv.LATCHED_QOS)
        self.estop_pub = pub(Bool, "/dysta/estop", conv.ESTOP_QOS)
        self.clear_estop = self.node.create_client(Trigger, "/dysta/clear_estop")
        self.chunks: list[ActionChunk] = []
        self.diagnostics: list[DiagnosticArray] = []
        self.watch = CommandWatch()
        self.node.create_subscription(ActionChunk, "/dysta/action_chunk", self.chunks.append, 100)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self.diagnostics.append, 100)
        self.node.create_subscription(JointTrajectory, ROBOT.command_topics["joint_trajectory"],
                                      self.watch, 100)
        ok, jpeg = cv2.imencode(".jpeg", RNG.integers(0, 255, (48, 64, 3), dtype=np.uint8))
        ok2, png = cv2.imencode(".png", RNG.integers(0, 255, (48, 64, 3), dtype=np.uint8))
        assert ok and ok2
        self.jpeg, self.png = jpeg.tobytes(), png.tobytes()
        self.sequence = 0
        self.parameter_clients: dict[str, AsyncParameterClient] = {}

    # Inputs ---------------------------------------------------------------------------

    def good_raw(self) -> Image:
        return rgb_to_image(RNG.integers(0, 255, (48, 64, 3), dtype=np.uint8), Image, "bgr8")

    def good_compressed(self) -> CompressedImage:
        return CompressedImage(format="jpeg", data=self.jpeg)

    def good_state(self) -> JointState:
        order = list(reversed(range(len(JOINTS))))  # by name, never by index
        return JointState(name=[JOINTS[i] for i in order], position=[float(STATE[i]) for i in order])

    def send(self, raw=None, compressed=None, state=None, offset_s=0.0, stamp=None, state_offset_s=0.0,
             cameras=(True, True)) -> float:
        """Publish a camera set stamped `stamp` (or `offset_s` from now) and a joint state; return it."""
        now = self.clock.now()
        stamp = conv.to_stamp(now + offset_s if stamp is None else stamp)
        raw = raw if raw is not None else self.good_raw()
        compressed = compressed if compressed is not None else self.good_compressed()
        state = state if state is not None else self.good_state()
        for msg, pub, on in ((raw, self.raw_pub, cameras[0]), (compressed, self.compressed_pub, cameras[1])):
            if on:
                msg.header.stamp = stamp
                pub.publish(msg)
        state.header.stamp = conv.to_stamp(now + state_offset_s)
        self.state_pub.publish(state)
        return conv.to_seconds(stamp)

    def send_chunk(self, offset_s=0.0, **fields):
        """Publish a good chunk, message fields replaced as given, and a fresh joint state to move from."""
        self.send(cameras=(False, False))
        self.sequence += 1
        chunk = types.ActionChunk(stamp=self.clock.now() + offset_s, dt=0.1, names=list(JOINTS),
                                  actions=np.tile(STATE + 0.2, (20, 1)).astype(np.float32),
                                  sequence=self.sequence, strategy="probe")
        msg = conv.chunk_to_msg(chunk)
        for key, val in fields.items():
            setattr(msg, key, val)
        self.chunk_pub.publish(msg)

    # Observations ---------------------------------------------------------------------

    def status(self, node: str, name: str, since: int = 0):
        """Return the latest (level, message, values) of `node: name` among diagnostics[since:]."""
        for array in reversed(self.diagnostics[since:]):
            for status in array.status:
                if status.name == f"{node}: {name}":
                    return status.level[0], status.message, {kv.key: kv.value for kv in status.values}
        return None

    def chunk_stamps(self) -> set[float]:
        return {conv.to_seconds(c.header.stamp) for c in self.chunks}

    def until(self, condition, timeout_s=30.0) -> bool:
        return spin_until(self.spin, condition, timeout_s=timeout_s)

    def publishing_until(self, condition, timeout_s=30.0, **send) -> list[float]:
        """Keep sending camera sets until `condition(stamps sent)` (or `condition()`); return the stamps."""
        sent: list[float] = []
        takes_sent = condition.__code__.co_argcount == 1

        def tick():
            if condition(sent) if takes_sent else condition():
                return True
            sent.append(self.send(**send))
            return False

        assert spin_until(self.spin, tick, timeout_s=timeout_s), self.report()
        return sent

    def holds_on(self, node: str, entry: str, level: int, text: str, **send) -> list[float]:
        """Send bad input until `node: entry` reports `text` at `level`; assert no chunk came of it."""
        since = len(self.diagnostics)
        bad = self.publishing_until(
            lambda: (s := self.status(node, entry, since)) is not None and s[0] == level and text in s[1],
            **send)
        assert not self.chunk_stamps() & set(bad), f"a chunk was made from bad input ({text})"
        return bad

    def recovers(self) -> None:
        """Assert the next good inputs give a chunk stamped with them."""
        self.publishing_until(lambda sent: bool(self.chunk_stamps() & set(sent)))

    def report(self):
        entries = [("policy_node", "inputs"), ("policy_node", "inference"), ("chunk_executor", "chunks"),
                   ("chunk_executor", "commands")]
        return {e: self.status(n, e) for n, e in entries}

    def close(self):
        self.spin.shutdown()
        self.node.destroy_node()


@pytest.fixture(scope="module")
def live():
    from rclpy.lifecycle import TransitionCallbackReturn

    rclpy.init()
    clock = SimClock()
    system = System()
    probe = Probe(clock)
    try:
        assert system.policy.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert system.policy.trigger_activate() == TransitionCallbackReturn.SUCCESS
        pubs = (probe.raw_pub, probe.compressed_pub, probe.state_pub, probe.chunk_pub, probe.estop_pub)
        assert probe.until(lambda: all(p.get_subscription_count() for p in pubs), timeout_s=60.0)
        probe.recovers()  # warm: the first chunk
        yield system, probe, clock
    finally:
        probe.close()
        system.close()
        clock.close()
        rclpy.shutdown()


@pytest.fixture
def rig(live):
    """Per case: the nodes are alive and every command was safe, before and after."""
    system, probe, clock = live
    assert system.alive(), system.errors
    yield system, probe, clock
    assert system.alive(), system.errors
    assert not probe.watch.violations, probe.watch.violations[:5]


def bad_raw(**fields):
    def make(probe):
        msg = probe.good_raw()
        for key, value in fields.items():
            setattr(msg, key, value)
        return msg
    return make


def png_bomb(side: int) -> bytes:
    """A valid 1-bit PNG of side x side pixels: a few kB that decode to side^2 x 3 bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = zlib.compressobj(9)
    row = bytes(1 + (side + 7) // 8)
    body = b"".join(rows.compress(row) for _ in range(side)) + rows.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def jpeg_bomb(jpeg: bytes, side: int) -> bytes:
    """`jpeg` whose frame header says side x side, behind stray bytes libjpeg skips and decodes past."""
    sof = jpeg.index(b"\xff\xc0")
    jpeg = jpeg[:sof + 5] + side.to_bytes(2, "big") * 2 + jpeg[sof + 9:]
    after_app0 = 4 + int.from_bytes(jpeg[4:6], "big")
    return jpeg[:after_app0] + b"\x00\x12\x00" + jpeg[after_app0:]


def test_every_unsupported_encoding_holds_with_an_error_naming_it(rig):
    system, probe, _ = rig
    for encoding in UNSUPPORTED_ENCODINGS:
        probe.holds_on("policy_node", "inputs", ERROR, f"unsupported image encoding {encoding!r}",
                       raw=bad_raw(encoding=encoding)(probe))
        probe.recovers()


@pytest.mark.parametrize("make, text", [
    (bad_raw(step=63), "step 63 is below width*channels = 192"),
    (bad_raw(height=51), "step*height"),
    (bad_raw(width=65), "is below width*channels"),
    (bad_raw(data=b""), "holds 0 bytes"),
    (bad_raw(height=0, width=0, step=0, data=b""), "empty"),
    (bad_raw(height=100_000, width=100_000, step=300_000, data=b""), "pixel limit"),
    (bad_raw(is_bigendian=7), "is_bigendian"),
], ids=["short-step", "wrong-height", "wrong-width", "empty-data", "zero-size", "huge-header", "endianness"])
def test_malformed_raw_frames_hold_with_an_error_and_the_next_good_one_works(rig, make, text):
    _, probe, _ = rig
    probe.holds_on("policy_node", "inputs", ERROR, text, raw=make(probe))
    probe.recovers()


@pytest.mark.parametrize("make, text", [
    (lambda p: CompressedImage(format="jpeg", data=p.jpeg[: len(p.jpeg) // 2]), "truncated JPEG"),
    (lambda p: CompressedImage(format="jpeg", data=b"\xff\xd8" + bytes(500) + b"\xff\xd9"), "cannot decode"),
    (lambda p: CompressedImage(format="png", data=p.png[:-30]), "truncated PNG"),
    (lambda p: CompressedImage(format="png", data=p.png[:8] + bytes(300) + p.png[-12:]), "cannot decode"),
    (lambda p: CompressedImage(format="jpeg", data=b""), "no data"),
    (lambda p: CompressedImage(format="tiff", data=p.png), "supported: jpeg, png"),
    (lambda p: CompressedImage(format="png", data=png_bomb(12_000)), "pixel limit"),
    (lambda p: CompressedImage(format="jpeg", data=jpeg_bomb(p.jpeg, 40_000)), "pixel limit"),
], ids=["truncated-jpeg", "corrupt-jpeg", "truncated-png", "corrupt-png", "empty", "tiff", "png-bomb",
        "jpeg-bomb"])
def test_corrupt_compressed_frames_hold_with_an_error_and_the_next_good_one_works(rig, make, text):
    _, probe, _ = rig
    probe.holds_on("policy_node", "inputs", ERROR, text, compressed=make(probe))
    probe.recovers()


def test_a_large_valid_frame_is_stepped_on(rig):
    _, probe, _ = rig
    rows = np.linspace(0, 255, 3000, dtype=np.uint8)[:, None, None]
    ok, jpeg = cv2.imencode(".jpeg", np.broadcast_to(rows, (3000, 4000, 3)).copy())
    assert ok
    large = CompressedImage(format="jpeg", data=jpeg.tobytes())  # 4000x3000: under the pixel limit
    probe.publishing_until(lambda sent: bool(probe.chunk_stamps() & set(sent)), compressed=large)


@pytest.mark.parametrize("names, positions, text", [
    (JOINTS, [math.nan] + [0.0] * 5, "non-finite positions for ['joint1']"),
    (JOINTS, [0.0] * 5 + [math.inf], "non-finite positions for ['joint6']"),
    (JOINTS[:5], [0.0] * 5, "lacks joints ['joint6']"),
    (JOINTS + ["joint1"], [0.0] * 7, "duplicated: ['joint1']"),
    (JOINTS, [0.0] * 4, "6 names but 4 positions"),
    ([], [], "lacks joints"),
], ids=["nan", "inf", "missing", "duplicated", "lengths", "empty"])
def test_bad_joint_states_hold_on_both_nodes_and_the_next_good_one_works(rig, names, positions, text):
    _, probe, _ = rig
    since = len(probe.diagnostics)
    moving = probe.watch.moving
    bad = JointState(name=names, position=positions)
    # Frames count as bad only once the bad state has reached the node: camera and state topics
    # arrive independently, so the first frames sent with it may still pair with the last good
    # state (and rightly make a chunk; under load this failed the check below now and then).
    probe.publishing_until(lambda: (s := probe.status("policy_node", "inputs", since)) is not None
                           and s[0] == ERROR and text in s[1], state=bad)
    probe.holds_on("policy_node", "inputs", ERROR, text, state=bad)
    assert probe.until(lambda: (s := probe.status("chunk_executor", "joint_states", since)) is not None
                       and s[0] == ERROR and text in s[1])
    probe.recovers()
    assert probe.watch.moving >= moving


def test_out_of_order_frames_are_refused_and_newer_ones_work(rig):
    system, probe, _ = rig
    probe.recovers()
    newest = max(probe.chunk_stamps())
    refused = system.policy.inputs.counts[RAW_TOPIC]["out_of_order"]
    since = len(probe.diagnostics)
    # Frames stamped before the one already used: never stepped on, counted, and said.
    old = probe.publishing_until(
        lambda: (s := probe.status("policy_node", "inputs", since)) is not None
        and int(s[2].get(f"{RAW_TOPIC}.out_of_order", 0)) > refused and "out of order" in s[1],
        stamp=newest - 0.05)
    assert not probe.chunk_stamps() & set(old)
    probe.recovers()


@pytest.mark.parametrize("offset_s, text", [(5.0, "in the future"), (3600.0, "in the future"),
                                             (-5.0, "s old")])
def test_stamps_from_the_future_or_the_past_hold_and_do_not_block_later_frames(rig, offset_s, text):
    _, probe, _ = rig
    probe.holds_on("policy_node", "inputs", WARN, text, offset_s=offset_s)
    probe.recovers()


def test_a_joint_state_from_the_future_holds_and_does_not_block_later_ones(rig):
    system, probe, clock = rig
    # Frames count as bad only once a future-stamped state has reached the node: camera and
    # state topics arrive independently, so the first frames sent with it may still pair with
    # the last good state (and rightly make a chunk).
    probe.publishing_until(lambda: (system.policy.inputs.state_stamp() or 0.0) > clock.now() + 50.0,
                           state_offset_s=100.0)
    probe.holds_on("policy_node", "inputs", WARN, "/joint_states (stamp", state_offset_s=100.0)
    probe.recovers()


def test_a_one_megabyte_instruction_is_refused_and_the_previous_one_kept(rig):
    system, probe, _ = rig
    before = system.policy.inputs.instruction
    since = len(probe.diagnostics)
    probe.instruction_pub.publish(String(data="x" * 1_000_000))
    probe.publishing_until(lambda: (s := probe.status("policy_node", "instruction", since)) is not None
                           and s[0] == ERROR and "1000000 characters refused" in s[1])
    assert system.policy.inputs.instruction == before
    probe.recovers()
    probe.instruction_pub.publish(String(data="touch the blue cube"))
    probe.publishing_until(lambda: (s := probe.status("policy_node", "instruction")) is not None
                           and s[0] == OK and system.policy.inputs.instruction == "touch the blue cube")
    probe.recovers()


def set_remote(probe, node_name: str, name: str, value):
    """Set one parameter over the node's set_parameters service; return (successful, reason)."""
    if node_name not in probe.parameter_clients:
        # the nodes live in their default namespace (/dysta): the service is /dysta/<node>/...
        probe.parameter_clients[node_name] = AsyncParameterClient(probe.node, f"{NAMESPACE}/{node_name}")
    client = probe.parameter_clients[node_name]
    assert client.wait_for_services(timeout_sec=10.0)
    future = client.set_parameters([Parameter(name, value=value)])
    assert probe.until(future.done)
    result = future.result().results[0]
    return result.successful, result.reason


@pytest.mark.parametrize("node, name, value, text", [
    ("policy_node", "strategy", "fastest", "choose one of: full, dysta, gotohunt, vla_cache, dysta_gotohunt"),
    ("policy_node", "strategy", "", "choose one of"),
    ("policy_node", "inference_rate_hz", 0.0, "inference_rate_hz"),
    ("policy_node", "inference_rate_hz", 1e9, "inference_rate_hz"),
    ("policy_node", "inference_rate_hz", math.nan, "inference_rate_hz"),
    ("policy_node", "max_image_age_s", -1.0, "max_image_age_s"),
    ("policy_node", "dysta.l1_fraction", 1.5, "l1_fraction"),
    ("policy_node", "dysta.change_ema", math.nan, "change_ema"),
    ("policy_node", "dysta.delta_l1", math.nan, "delta_l1 must be a number"),
    ("policy_node", "dysta_gotohunt.learned_gate_threshold", math.nan, "learned_gate_threshold"),
    ("policy_node", "gotohunt.sigma", 0, "sigma"),
    ("policy_node", "model", "base", "read-only"),
    ("policy_node", "instruction", "touch the blue cube", "read-only"),  # the topic changes it
    ("chunk_executor", "blending", "average", "latest, weighted_average, temporal_ensemble"),
    ("chunk_executor", "max_chunk_age_s", 0.0, "max_chunk_age_s"),
    ("chunk_executor", "ensemble_decay", math.inf, "ensemble_decay"),
], ids=lambda v: str(v)[:24])
def test_bad_parameters_at_run_time_are_refused_with_what_is_allowed(rig, node, name, value, text):
    system, probe, _ = rig
    successful, reason = set_remote(probe, node, name, value)
    assert not successful and text in reason, reason
    assert system.policy.values["strategy"] == "full"
    probe.recovers()


def test_a_live_strategy_switch_over_the_parameter_service_keeps_stepping(rig):
    _, probe, _ = rig
    assert set_remote(probe, "policy_node", "strategy", "dysta")[0]
    probe.publishing_until(lambda: probe.chunks and probe.chunks[-1].strategy == "dysta")
    assert set_remote(probe, "policy_node", "strategy", "full")[0]
    probe.publishing_until(lambda: probe.chunks and probe.chunks[-1].strategy == "full")


def wait_until_idle(probe):
    """Stop the cameras: the policy holds, the executor's deadman holds; return once both say so.

    And once its hold reached the watch: a trajectory sent before it may arrive after the
    diagnostics that report the hold (another topic), never after the hold (same publisher).
    """
    since = len(probe.diagnostics)
    assert probe.until(lambda: (s := probe.status("chunk_executor", "commands", since)) is not None
                       and "deadman" in s[1] and probe.watch.holding), probe.report()


@pytest.mark.parametrize("fields, text", [
    ({"actions": [math.nan] * 120}, "non-finite"),
    ({"actions": [math.inf] * 120}, "non-finite"),
    ({"horizon": 19}, "holds 120"),
    ({"dim": 7, "names": JOINTS + ["joint7"], "actions": [0.0] * 140}, "differ from the robot's"),
    ({"names": ["a", "b", "c", "d", "e", "f"]}, "differ from the robot's"),
    ({"names": JOINTS[:5] + ["joint1"]}, "distinct joint names"),
    ({"action_space": "ee_pose"}, "action_space 'ee_pose'"),
    ({"dt": 0.0}, "dt must be a positive"),
    ({"dt": math.nan}, "dt is not finite"),
    ({"horizon": 0, "actions": []}, "horizon >= 1"),
], ids=["nan", "inf", "sizes", "seven-joints", "unknown-names", "duplicated-names", "action-space",
        "zero-dt", "nan-dt", "empty"])
def test_bad_chunks_are_rejected_and_nothing_moves(rig, fields, text):
    _, probe, _ = rig
    wait_until_idle(probe)
    moving = probe.watch.moving
    since = len(probe.diagnostics)
    assert probe.until(lambda: (probe.send_chunk(**fields) or True)
                       and (s := probe.status("chunk_executor", "chunks", since)) is not None
                       and s[0] == ERROR and text in s[1]), probe.report()
    assert probe.watch.moving == moving
    probe.send_chunk()  # a good one moves it again
    assert probe.until(lambda: probe.watch.moving > moving)


@pytest.mark.parametrize("offset_s, text", [(30.0, "in the future"), (-30.0, "after its last action")])
def test_chunks_stamped_far_from_now_are_rejected(rig, offset_s, text):
    _, probe, _ = rig
    wait_until_idle(probe)
    moving = probe.watch.moving
    since = len(probe.diagnostics)
    assert probe.until(lambda: (probe.send_chunk(offset_s=offset_s) or True)
                       and (s := probe.status("chunk_executor", "chunks", since)) is not None
                       and s[0] == ERROR and text in s[1]), probe.report()
    assert probe.watch.moving == moving


def test_runtime_out_of_memory_mid_inference_holds_reports_and_recovers(rig):
    system, probe, _ = rig
    armed = threading.Event()

    def out_of_memory(module, args):
        if armed.is_set():
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")

    # A real forward pre-hook on the live model's vision encoder: the failure happens inside
    # runtime.step, where a CUDA OOM would.
    hook = system.policy.runtime.model.vision.register_forward_pre_hook(out_of_memory)
    try:
        probe.recovers()
        armed.set()
        errors = system.policy.step.report.errors
        since = len(probe.diagnostics)
        failed = probe.publishing_until(
            lambda: (s := probe.status("policy_node", "inference", since)) is not None
            and s[0] == ERROR and "OutOfMemoryError" in s[1])
        assert system.policy.step.report.errors > errors
        assert not probe.chunk_stamps() & set(failed)
        # Without chunks the executor's deadman stops the arm.
        probe.publishing_until(lambda: (s := probe.status("chunk_executor", "commands", since)) is not None
                               and "deadman" in s[1])
        armed.clear()
        probe.recovers()
        assert probe.status("policy_node", "inference") is not None
    finally:
        hook.remove()


def test_a_camera_dropping_out_holds_naming_it_and_its_return_resumes(rig):
    _, probe, _ = rig
    probe.recovers()
    probe.holds_on("policy_node", "inputs", WARN, f"stale input: {COMPRESSED_TOPIC}", cameras=(True, False))
    probe.recovers()


@pytest.mark.parametrize("jump_s", [-30.0, 30.0], ids=["back", "forward"])
def test_a_sim_clock_jump_holds_safely_and_stepping_resumes_on_the_new_time(rig, jump_s):
    system, probe, clock = rig
    probe.recovers()
    clock.jump(jump_s)
    before = clock.now()
    good = probe.publishing_until(lambda sent: bool(probe.chunk_stamps() & set(sent)))
    assert max(probe.chunk_stamps() & set(good)) >= before
    moving = probe.watch.moving
    probe.publishing_until(lambda: probe.watch.moving > moving + 3)


def test_starved_executor_holds_on_its_deadman_and_sends_no_targets(rig):
    _, probe, _ = rig
    probe.recovers()
    wait_until_idle(probe)
    moving = probe.watch.moving
    count = len(probe.diagnostics)
    assert probe.until(lambda: len(probe.diagnostics) >= count + 6)
    assert probe.watch.moving == moving
    assert "deadman" in probe.status("chunk_executor", "commands")[1]


def test_estop_stays_latched_until_cleared_by_the_service(rig):
    _, probe, _ = rig
    probe.recovers()
    holds = probe.watch.holds
    probe.estop_pub.publish(Bool(data=True))
    since = len(probe.diagnostics)
    # and its hold at the watch: a trajectory sent before the hold may be taken after the
    # diagnostics that report the e-stop (another topic, read first), never after the hold
    probe.publishing_until(lambda: (s := probe.status("chunk_executor", "commands", since)) is not None
                           and s[0] == ERROR and "e-stop" in s[1]
                           and probe.watch.holds > holds and probe.watch.holding)
    moving = probe.watch.moving
    probe.estop_pub.publish(Bool(data=False))  # not a release
    chunks = len(probe.chunks)
    probe.publishing_until(lambda: len(probe.chunks) > chunks + 5)  # chunks keep coming ...
    assert probe.watch.moving == moving  # ... and nothing moves
    assert "e-stop" in probe.status("chunk_executor", "commands")[1]
    assert probe.clear_estop.wait_for_service(timeout_sec=10.0)
    future = probe.clear_estop.call_async(Trigger.Request())
    assert probe.until(future.done) and future.result().success
    probe.publishing_until(lambda: probe.watch.moving > moving)
