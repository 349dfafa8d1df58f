"""The policy node's latest-value inputs: freshness, drops, order and complete camera sets."""

import threading

import numpy as np
import pytest

from dysta_ros.nodes.inputs import MIN_GAPS, FrameGaps, LatestInputs, estimate_period

CAMERAS = ["/cam_a", "/cam_b"]


def test_nothing_received_is_named_and_nothing_is_stepped_on():
    inputs = LatestInputs(CAMERAS, "/joint_states")
    snapshot = inputs.take(now=10.0, max_image_age_s=0.5, max_state_age_s=0.5)
    assert snapshot.stale == ["/cam_a (nothing received)", "/cam_b (nothing received)",
                              "/joint_states (nothing received)"]


def test_a_step_needs_a_new_frame_from_every_camera_and_uses_them_once():
    inputs = LatestInputs(CAMERAS, "/joint_states")
    inputs.put_state("state", 10.0)
    inputs.put_frame("/cam_a", "a1", 10.0)
    inputs.put_frame("/cam_b", "b1", 10.0)
    snapshot = inputs.take(10.1, 0.5, 0.5)
    assert not snapshot.stale and snapshot.new_frames and snapshot.stamp == 10.0
    assert not inputs.take(10.1, 0.5, 0.5).new_frames  # already used
    inputs.put_frame("/cam_a", "a2", 10.2)
    assert not inputs.take(10.2, 0.5, 0.5).new_frames  # cam_b has nothing new yet
    inputs.put_frame("/cam_b", "b2", 10.25)
    snapshot = inputs.take(10.3, 0.5, 0.5)
    assert snapshot.new_frames and snapshot.stamp == 10.2  # the oldest camera's stamp
    assert {c: f.msg for c, f in snapshot.frames.items()} == {"/cam_a": "a2", "/cam_b": "b2"}


def test_unused_frames_are_dropped_and_counted_and_older_ones_refused():
    inputs = LatestInputs(["/cam"], "/joint_states")
    for k in range(5):
        inputs.put_frame("/cam", f"f{k}", 10.0 + k * 0.03)
    inputs.put_frame("/cam", "late", 9.0)
    assert inputs.counts["/cam"] == {"received": 6, "used": 0, "dropped": 4, "out_of_order": 1}
    inputs.put_state("state", 10.1)
    assert inputs.take(10.15, 0.5, 0.5).frames["/cam"].msg == "f4"


def test_old_and_future_stamps_are_stale_with_the_reason():
    inputs = LatestInputs(["/cam"], "/joint_states")
    inputs.put_frame("/cam", "old", 5.0)
    inputs.put_state("future", 20.0)
    stale = inputs.take(10.0, 0.5, 0.5).stale
    assert stale[0].startswith("/cam (5.00 s old")
    assert stale[1] == "/joint_states (stamp 10.00 s in the future)"


def test_wait_returns_on_a_new_arrival_or_times_out():
    inputs = LatestInputs(["/cam"], "/joint_states")
    assert inputs.wait(0, timeout=0.01) == 0
    inputs.put_frame("/cam", "f", 1.0)
    assert inputs.wait(0, timeout=10.0) == 1


def test_wait_wakes_for_a_complete_set_of_new_views_only():
    inputs = LatestInputs(["/a", "/b"], "/joint_states")
    inputs.put_frame("/a", "a1", 1.0)
    woke = threading.Event()
    waiter = threading.Thread(target=lambda: (inputs.wait(0, timeout=10.0), woke.set()))
    waiter.start()
    assert not woke.wait(0.3)  # one camera of the set: nothing to step on yet
    inputs.put_frame("/b", "b1", 1.0)
    assert woke.wait(10.0)
    waiter.join()
    assert inputs.take(1.1, 0.5, 0.5).new_frames
    # both used now: a new frame of one camera alone does not wake it, the timeout does
    inputs.put_frame("/a", "a2", 1.05)
    assert inputs.wait(2, timeout=0.05) == 3


def test_every_status_starts_as_error_until_set():
    from dysta_ros.nodes.diagnostics import ERROR, OK, StatusBoard

    board = StatusBoard("policy_node", "cpu", ["inputs", "inference"])
    assert {n: e.level for n, e in board.snapshot().items()} == {"inputs": ERROR, "inference": ERROR}
    board.set("inputs", OK, "fresh", dropped=3)
    board.update("inputs", received=10)
    entry = board.get("inputs")
    assert (entry.level, entry.message, entry.values) == (OK, "fresh", {"dropped": "3", "received": "10"})
    assert board.get("inference").message == "no report yet"


# Frames that never reached the node -------------------------------------------------------


def feed(gaps, stamps):
    for stamp in stamps:
        gaps.add(float(stamp))
    return gaps


def test_missed_frames_are_read_from_stamp_gaps_from_the_first_frame_on():
    period = 1 / 30
    sent = np.arange(200)
    skipped = {1, 2, 5, 40, 41, 42, 43, 120, 198}  # early ones too: counted once the period is known
    gaps = feed(FrameGaps(), [100.0 + k * period for k in sent if k not in skipped])
    assert gaps.period == pytest.approx(period)
    assert gaps.counts() == (len(skipped), 0)


# Exact while a gap's jitter stays under half a period: the more frames lost, the longer the
# gaps and the less jitter it takes (checked over 20 seeds each).
@pytest.mark.parametrize("loss, jitter, period", [(0.0, 0.0, 0.1), (0.3, 0.2, 1.0), (0.5, 0.15, 1 / 30),
                                                  (0.5, 0.1, 1 / 120), (0.8, 0.1, 1 / 30)])
def test_missed_frames_are_exact_under_random_loss_and_jittered_stamps(loss, jitter, period):
    rng = np.random.default_rng(int(loss * 100 + jitter * 10))
    stamps = 50.0 + period * (np.arange(2000) + rng.uniform(-jitter, jitter, 2000))  # jitter: of a period
    arrived = np.flatnonzero(rng.random(2000) >= loss)
    gaps = feed(FrameGaps(), stamps[arrived])
    assert gaps.counts()[0] == arrived[-1] - arrived[0] + 1 - len(arrived)
    assert gaps.period == pytest.approx(period, rel=0.05)


def test_a_pause_or_clock_jump_is_an_interruption_not_lost_frames():
    period = 1 / 30
    gaps = feed(FrameGaps(), [10.0 + k * period for k in range(30)])
    gaps.add(15.0)  # the camera paused 4 s: not 120 frames lost
    gaps.add(15.0 + 2 * period)  # one lost after it
    assert gaps.counts() == (1, 1)
    feed(gaps, [2.0 + k * period for k in range(20)])  # sim time reset: a new timeline
    feed(gaps, [2.0 + k * period for k in range(21, 25)])
    assert gaps.counts() == (2, 1)


def test_the_period_needs_a_few_gaps_and_survives_losing_most_frames():
    assert estimate_period([0.1] * (MIN_GAPS - 1)) is None
    # 80 % of gaps are 2-5 periods: a low quantile still finds one period.
    gaps = [0.05] * 16 + [0.1, 0.15, 0.2, 0.25] * 16
    assert estimate_period(gaps) == pytest.approx(0.05)


def test_dropped_missed_and_used_frames_are_counted_separately():
    inputs = LatestInputs(["/cam"], "/joint_states")
    inputs.put_state("state", 10.0)
    period = 0.1
    sent = [k for k in range(30) if k not in (10, 11, 25)]  # 10, 11 and 25 never arrive
    for k in sent:
        inputs.put_frame("/cam", f"f{k}", 10.0 + k * period)
        if k % 5 == 4:  # a step every 5th frame uses it; the 4 before it were replaced unused
            assert inputs.take(10.0 + k * period, 5.0, 5.0).new_frames
    assert inputs.frame_report()["/cam.used"] == 6  # at 4, 9, 14, 19, 24, 29
    inputs.put_frame("/cam", "late", 10.05)
    report = inputs.frame_report()
    assert {k: report[f"/cam.{k}"] for k in ("received", "used", "dropped", "missed", "out_of_order")} == {
        "received": 28, "used": 6, "dropped": 21, "missed": 3, "out_of_order": 1}
    assert report["/cam.period_ms"] == "100.00" and report["/cam.interruptions"] == 0


def test_policy_node_reports_frames_missed_before_its_callback_apart_from_dropped_ones():
    """A camera at 30 Hz whose stamps skip every 6th frame, against a policy stepping at 5 Hz."""
    rclpy = pytest.importorskip("rclpy")
    import time

    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter
    from sensor_msgs.msg import Image, JointState

    from dysta_ros.nodes import conversions as conv
    from dysta_ros.nodes.image_conversion import rgb_to_image
    from dysta_ros.nodes.policy_node import PolicyNode
    from ros_helpers import spin_until

    topic, period, frames = "/counted/image_raw", 1 / 30, 90
    rclpy.init()
    node = PolicyNode(parameter_overrides=[
        Parameter("autostart", value=True), Parameter("camera_topics", value=[topic]),
        Parameter("strategy", value="full"), Parameter("inference_rate_hz", value=5.0),
        Parameter("max_image_age_s", value=10.0), Parameter("max_state_age_s", value=10.0),
        Parameter("diagnostic_period_s", value=0.1)])
    probe = rclpy.create_node("frame_count_probe")
    spin = SingleThreadedExecutor()
    spin.add_node(node)
    spin.add_node(probe)
    camera_pub = probe.create_publisher(Image, topic, conv.CAMERA_QOS)
    state_pub = probe.create_publisher(JointState, "/joint_states", conv.STATE_QOS)
    diagnostics = []
    probe.create_subscription(DiagnosticArray, "/diagnostics", diagnostics.append, 50)
    image = rgb_to_image(np.zeros((48, 64, 3), np.uint8), Image, "rgb8")

    def received():
        return node.inputs.counts[topic]["received"]

    def inputs_values():
        for array in reversed(diagnostics):
            for status in array.status:
                if status.name == "policy_node: inputs":
                    return {kv.key: kv.value for kv in status.values}
        return {}

    try:
        assert spin_until(spin, lambda: camera_pub.get_subscription_count() > 0
                          and state_pub.get_subscription_count() > 0, timeout_s=30.0)
        now = probe.get_clock().now().nanoseconds * 1e-9
        first_stamp, start, arrived = now - 4.0, time.monotonic(), []
        for k in range(frames):
            # Paced like the camera (and so the inference thread gets its turn), stamped at its rate.
            spin_until(spin, lambda k=k: time.monotonic() >= start + k * period, timeout_s=1.0)
            if k % 6 == 3:
                continue  # a frame the camera took that never reaches the node
            image.header.stamp = conv.to_stamp(first_stamp + k * period)
            state = JointState(name=[f"joint{i}" for i in range(1, 7)], position=[0.0] * 6)
            state.header.stamp = probe.get_clock().now().to_msg()
            before = received()
            state_pub.publish(state)
            camera_pub.publish(image)
            if spin_until(spin, lambda before=before: received() > before, timeout_s=2.0):
                arrived.append(k)  # a frame best effort lost on the way counts as missed too
        assert len(arrived) > frames // 2
        assert spin_until(spin, lambda: inputs_values().get(f"{topic}.received") == str(len(arrived)))
        values = inputs_values()
        counts = {key: int(values[f"{topic}.{key}"])
                  for key in ("received", "used", "dropped", "missed", "out_of_order", "interruptions")}
        # Every frame between the first and the last that arrived is either received or missed.
        assert counts["missed"] == arrived[-1] - arrived[0] + 1 - len(arrived)
        assert counts["missed"] >= 13  # the skipped stamps between frame 0 and frame 89
        assert counts["interruptions"] == 0 and counts["out_of_order"] == 0
        assert float(values[f"{topic}.period_ms"]) == pytest.approx(period * 1e3, abs=0.05)
        # Of those received, steps used a few and the rest were replaced first: dropped, not missed.
        assert counts["used"] >= 2 and counts["dropped"] > counts["used"]
        assert counts["used"] + counts["dropped"] in (counts["received"], counts["received"] - 1)
    finally:
        node.close()
        spin.shutdown()
        node.destroy_node()
        probe.destroy_node()
        rclpy.shutdown()
