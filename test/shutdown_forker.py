"""Start an executable's main() many times, signal each once it runs, and report how each ended.

    python shutdown_forker.py TARGET OUTDIR COUNT MARKER BATCH ISOLATED -- ARGV...

The executables' imports (torch, rclpy, MuJoCo, the node module) are done once here; each try
is a fork that calls the same `main()` its console script calls, with its own sys.argv, its
output in OUTDIR/<n>.log. A try gets SIGINT or SIGTERM (alternating) once MARKER is in its
log, i.e. once it is up and spinning. Prints one JSON line per try: signal, exit status, and
the error lines and tracebacks it logged from the signal on (its shutdown). A try not up after
UP_TIMEOUT_S, or still running END_TIMEOUT_S after its signal (then killed), first writes every
thread's Python stack to its log (faulthandler), and its report carries the end of that log, so
a hang says where it hung.
"""

from __future__ import annotations

import ctypes
import faulthandler
import importlib
import json
import os
import re
import signal
import sys
import time
import traceback

MAINS = {  # what setup.py's console_scripts call
    "dysta-ros": "dysta_ros.cli",
    "policy_node": "dysta_ros.nodes.policy_node",
    "chunk_executor": "dysta_ros.nodes.chunk_executor",
    "sim_node": "dysta_ros.nodes.sim_node",
    "bag_player": "dysta_ros.nodes.bag_player",
}
ERROR_LINE = re.compile(r"\[(ERROR|FATAL)\]|Traceback|Exception|Error:")
UP_TIMEOUT_S = 90.0
END_TIMEOUT_S = 60.0
PR_SET_PDEATHSIG = 1  # linux/prctl.h
STACKS_SIGNAL = signal.SIGUSR1  # a hung try writes every thread's Python stack to its log on it


def die_with_parent(parent: int) -> None:
    """Have the kernel SIGKILL this process when the forker dies (a killed forker leaves no try behind).

    A try left running after its forker was killed stays on the ROS graph: one that outlived a
    timed-out forker took later tests' sim cameras and commanded their arms.
    """
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the forker died before the line above
        os._exit(75)


def start(target: str, argv: list[str], log_path: str, isolated: bool, n: int) -> int:
    open(log_path, "w").close()  # empty before the fork: no marker is read from an older try
    parent = os.getpid()
    pid = os.fork()
    if pid:
        return pid
    die_with_parent(parent)
    code = 70
    try:
        if isolated:  # a try that needs nobody: no discovery, so many tries cost no DDS traffic
            os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "OFF"
        fd = os.open(log_path, os.O_WRONLY | os.O_APPEND)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        faulthandler.register(STACKS_SIGNAL, all_threads=True)
        sys.argv = [target, *(a.replace("{n}", str(n)) for a in argv)]  # {n}: this try's number
        result = importlib.import_module(MAINS[target]).main()
        code = result if isinstance(result, int) else 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 0
    except BaseException:  # noqa: BLE001 - the report counts it: print it where the test looks
        traceback.print_exc()
        code = 71
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def wait_exit(pid: int, timeout_s: float) -> int | None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.05)
    return None


def main() -> None:
    target, outdir, count, marker, batch_size, isolated, separator, *argv = sys.argv[1:]
    assert separator == "--"
    batch_size, isolated = int(batch_size), isolated == "isolated"
    importlib.import_module(MAINS[target])
    if target in ("dysta-ros", "policy_node"):
        importlib.import_module("dysta_ros.policy.runtime")  # torch and the model code, once
        importlib.import_module("dysta_ros.nodes.run")
    signals = [signal.SIGINT, signal.SIGTERM]
    tries = list(range(int(count)))
    for first in range(0, len(tries), batch_size):
        batch = {}
        for n in tries[first:first + batch_size]:
            log = os.path.join(outdir, f"{target}-{n}.log")
            batch[n] = (start(target, argv, log, isolated, n), log)
        ended = {}  # tries that ended before they were up: the report shows why
        signalled = {}
        for n, (pid, log) in batch.items():
            deadline = time.monotonic() + UP_TIMEOUT_S
            while marker not in open(log, errors="replace").read() and time.monotonic() < deadline:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    ended[n] = os.waitstatus_to_exitcode(status)
                    break
                time.sleep(0.05)
            if n not in ended:
                if marker not in open(log, errors="replace").read():  # stuck starting: where?
                    os.kill(pid, STACKS_SIGNAL)
                    time.sleep(2.0)
                signalled[n] = os.path.getsize(log)  # what it logs from here is its shutdown
                os.kill(pid, signals[n % 2])
        for n, (pid, log) in batch.items():
            status = ended[n] if n in ended else wait_exit(pid, END_TIMEOUT_S)
            if status is None:  # hung: its stacks go to its log and the report, and it is ended
                os.kill(pid, STACKS_SIGNAL)
                time.sleep(2.0)
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            text = open(log, errors="replace").read()
            after = text[signalled.get(n, 0):]  # a try that never came up: all of it
            report = {"try": n, "signal": signals[n % 2].name, "status": status, "up": marker in text,
                      "errors": [line for line in after.splitlines() if ERROR_LINE.search(line)]}
            if status is None or marker not in text:
                report["log_tail"] = text[-6000:]
            print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
