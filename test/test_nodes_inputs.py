"""The policy node's latest-value inputs: freshness, drops, order and complete camera sets."""

from dysta_ros.nodes.inputs import LatestInputs

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
    assert inputs.counts["/cam"] == {"received": 6, "dropped": 4, "out_of_order": 1}
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


def test_every_status_starts_as_error_until_set():
    from dysta_ros.nodes.diagnostics import ERROR, OK, StatusBoard

    board = StatusBoard("policy_node", "cpu", ["inputs", "inference"])
    assert {n: e.level for n, e in board.snapshot().items()} == {"inputs": ERROR, "inference": ERROR}
    board.set("inputs", OK, "fresh", dropped=3)
    board.update("inputs", received=10)
    entry = board.get("inputs")
    assert (entry.level, entry.message, entry.values) == (OK, "fresh", {"dropped": "3", "received": "10"})
    assert board.get("inference").message == "no report yet"
