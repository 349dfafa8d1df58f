"""policy_node's plain parts, without ROS: the inference loop and the step report."""

import threading
from types import SimpleNamespace

from dysta_ros.nodes.inference_loop import InferenceLoop
from dysta_ros.nodes.step_report import StepReport


def test_the_loop_steps_on_new_inputs_and_survives_a_failing_step():
    arrivals, failures, steps = threading.Semaphore(0), [], []
    done = threading.Event()

    def wait(seen, timeout):
        return seen + 1 if arrivals.acquire(timeout=timeout) else seen

    def step():
        steps.append(len(steps))
        if len(steps) == 2:
            raise RuntimeError("bad step")
        if len(steps) == 3:
            done.set()
        return True

    loop = InferenceLoop(wait, step, lambda: 1000.0, failures.append)
    loop.start()
    for _ in range(3):
        arrivals.release()
    assert done.wait(10.0)
    loop.stop()
    assert loop.thread is None
    assert [str(f) for f in failures] == ["bad step"] and len(steps) >= 3


def test_stop_waits_for_the_running_step():
    started, release, finished = threading.Event(), threading.Event(), []

    def step():
        started.set()
        release.wait(10.0)
        finished.append(True)
        return True

    loop = InferenceLoop(lambda seen, timeout: seen + 1, step, lambda: 1000.0, lambda exc: None)
    loop.start()
    assert started.wait(10.0)
    stopper = threading.Thread(target=loop.stop)
    stopper.start()
    release.set()
    stopper.join(10.0)
    assert finished and not stopper.is_alive()


def test_step_report_measures_rate_overhead_and_ages():
    report = StepReport()
    stats = SimpleNamespace(stage_ms={"total": 12.5}, context_tokens=40)
    for k in range(5):  # steps 0.1 s apart, each started 2 ms after its frames arrived
        values = report.stepped(stats, received=k * 0.1, stamp=k * 0.1 - 0.010, start=k * 0.1 + 0.002,
                                now=k * 0.1 + 0.020)
    assert report.steps == 5
    assert values["rate_hz"] == "10.00" and values["model_ms"] == "12.50"
    assert values["frame_age_at_start_ms"] == "12.00" and values["stamp_to_chunk_ms"] == "30.00"
    assert values["arrival_to_step_ms_p50"] == "2.00" and values["context_tokens"] == 40
    report.errors += 2
    assert report.stepped(stats, 1.0, 1.0, 1.0, 1.0)["errors"] == 2
    report.reset()
    assert report.steps == report.errors == 0
