"""Operating from the venv without ros2cli: `run`'s status line, instruct, estop, diag, topics.

Real nodes: `dysta-ros run` in its own process (tiny model, no cameras: it holds), and each
operator command as a user types it, in its own process.
"""

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

pytest.importorskip("rclpy")

from dysta_ros.nodes.diagnostics import ERROR, OK, WARN, Entry  # noqa: E402
from dysta_ros.nodes.status_line import ChangeLog, hold_reason, status_line  # noqa: E402

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def dysta(*argv, timeout=60):
    return subprocess.run([sys.executable, "-m", "dysta_ros.cli", *argv], capture_output=True, text=True,
                          timeout=timeout, env=ENV)


def test_status_line_says_what_it_holds_on_and_the_change_log_only_changes():
    statuses = {"policy_node: lifecycle": Entry(OK, "active", {"strategy": "dysta"}),
                "policy_node: inputs": Entry(WARN, "holding, stale input: /cam (nothing received)"),
                "chunk_executor: commands": Entry(WARN, "holding: waiting for a chunk")}
    assert status_line(statuses) == ("active | dysta | no step yet | holding: stale input: /cam "
                                     "(nothing received) (policy_node: inputs)")
    statuses["policy_node: inputs"] = Entry(OK, "fresh")
    statuses["policy_node: inference"] = Entry(OK, "step 3", {"rate_hz": "9.80", "model_ms": "12.34",
                                                               "frame_age_at_start_ms": "40.2"})
    assert hold_reason(statuses) == "holding: waiting for a chunk (chunk_executor: commands)"
    statuses["chunk_executor: commands"] = Entry(OK, "commanding")
    assert status_line(statuses) == "active | dysta | 9.8 Hz | model 12.3 ms | frame age 40 ms | commanding"
    log = ChangeLog()
    statuses["chunk_executor: chunks"] = Entry()  # not reported yet: no line until it reports
    assert len(log.changes(statuses)) == 4 and log.changes(statuses) == []
    statuses["chunk_executor: commands"] = Entry(ERROR, "holding: e-stop engaged")
    statuses["chunk_executor: chunks"] = Entry(WARN, "no chunk yet")
    assert log.changes(statuses) == ["diagnostics: ERROR chunk_executor: commands: holding: e-stop engaged",
                                     "diagnostics: WARN chunk_executor: chunks: no chunk yet"]


class Output:
    """A process's stdout, read as it comes."""

    def __init__(self, stream):
        self.lines = []
        self.thread = threading.Thread(target=lambda: self.lines.extend(iter(stream.readline, "")),
                                       daemon=True)
        self.thread.start()

    def wait_for(self, text, timeout_s=90.0):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if any(text in line for line in self.lines):
                return True
            time.sleep(0.1)
        return False


def test_operator_commands_against_a_running_policy(tmp_path):
    run = subprocess.Popen([sys.executable, "-m", "dysta_ros.cli", "run", "--status-period", "0.5",
                            "--param", "policy_node:diagnostic_period_s=0.2",
                            "--param", "chunk_executor:diagnostic_period_s=0.2"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    out = Output(run.stdout)
    try:
        # the status line names what it holds on: no camera, no joint states
        holding = "status: active | dysta | no step yet | holding: stale input: /camera/image_raw"
        assert out.wait_for(holding), "".join(out.lines[-20:])
        assert out.wait_for("diagnostics: WARN policy_node: inputs: holding, stale input")

        listed = dysta("topics")
        assert listed.returncode == 0, listed.stderr
        rows = {line.split()[0]: line.split() for line in listed.stdout.splitlines()[1:]}
        assert int(rows["/dysta/action_chunk"][1]) >= 1 and int(rows["/dysta/action_chunk"][2]) >= 1
        assert int(rows["/dysta/instruction"][2]) >= 1 and "std_msgs/msg/String" in rows["/dysta/instruction"]

        sent = dysta("instruct", "touch the red cube")
        assert sent.returncode == 0 and "sent to /dysta/instruction" in sent.stdout, sent.stderr
        diag = dysta("diag", "--seconds", "6")  # a new process: discovery takes seconds on a loaded machine
        assert diag.returncode == 0, diag.stderr
        assert "diagnostics: OK policy_node: instruction: from /dysta/instruction" in diag.stdout
        assert "status: active | dysta" in diag.stdout

        latched = dysta("estop")
        assert latched.returncode == 0 and "e-stop latched on /dysta/estop" in latched.stdout, latched.stderr
        assert out.wait_for("diagnostics: ERROR chunk_executor: commands: holding: e-stop engaged")
        cleared = dysta("estop", "--clear")
        assert cleared.returncode == 0 and "/dysta/clear_estop: e-stop released" in cleared.stdout, \
            cleared.stderr

        nobody = dysta("instruct", "hello", "--namespace", "/arm9", "--wait", "1")
        assert nobody.returncode == 1 and "nobody subscribes to /arm9/instruction" in nobody.stderr
        assert nobody.stderr.count("\n") == 1 and "Traceback" not in nobody.stderr
    finally:
        run.send_signal(signal.SIGINT)
        _, err = run.communicate(timeout=60)
    assert run.returncode == 0 and "Traceback" not in err


def test_diag_and_topics_say_when_nothing_runs():
    env_domain = {**ENV, "ROS_AUTOMATIC_DISCOVERY_RANGE": "OFF"}  # sees no other process at all
    for argv in (["diag", "--seconds", "1"], ["topics", "--seconds", "1"]):
        result = subprocess.run([sys.executable, "-m", "dysta_ros.cli", *argv], capture_output=True,
                                text=True, timeout=60, env=env_domain)
        assert result.returncode == 1 and "Traceback" not in result.stderr
        assert ("nothing on /diagnostics" if argv[0] == "diag" else "no topics found") in result.stderr
