"""`dysta-ros link`: the robot / policy-host split over a real network path, measured.

Two processes, as deployed: the policy host (`dysta-ros run --role policy-host`) and the robot
(chunk_executor and robot_link, with a probe standing in for the cameras, the joint states and
a robot that follows its commands: nodes/link_probe.py). `--link impaired` puts each in its own
network namespace, joined by an impaired userspace link (evaluation/impaired_link.py: delay,
jitter, loss, rate), with DDS discovering across it (ROS_AUTOMATIC_DISCOVERY_RANGE=SUBNET inside
the namespaces only); `--link loopback` runs the same on this machine's loopback. Measured at
the robot: camera -> chunk latency, chunks lost, gaps in the command stream, stale chunks
dropped, and the executor's tracking error against an ideal link; then the link is cut
(`--cut-s`): the executor must hold within the deadman, report it, and move again only on a
fresh chunk. The figures are derived in evaluation/link_report.py; link.json is
`{"runs": [one per link], "meta": {the settings}}`.

    dysta-ros link --link both --seconds 20 --cut-s 2 --out link_report
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from dysta_ros.cli_options import add_model_argument, add_runtime_arguments, write_json
from dysta_ros.evaluation.link_report import ROBOT, analyse, plot, table
from dysta_ros.results import result_document


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--link", choices=("impaired", "loopback", "both"), default="both")
    parser.add_argument("--delay-ms", type=float, default=20.0, help="one-way delay of the impaired link")
    parser.add_argument("--jitter-ms", type=float, default=5.0, help="+- uniform jitter on the delay")
    parser.add_argument("--loss", type=float, default=0.01, help="fraction of frames lost")
    parser.add_argument("--rate-mbit", type=float, default=50.0, help="rate limit, Mbit/s")
    parser.add_argument("--seconds", type=float, default=20.0, help="measuring time after the first chunk")
    parser.add_argument("--cut-s", type=float, default=2.0,
                        help="link cut after measuring (impaired; 0: none)")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--camera-rate", type=float, default=15.0, help="frames per second per camera")
    parser.add_argument("--jpeg-quality", type=int, default=80)
    add_model_argument(parser, default="tiny")
    parser.add_argument("--strategy", default="dysta")
    add_runtime_arguments(parser)  # the policy host's device, dtype and cpu_threads
    parser.add_argument("--out", default="link_report", help="directory for link.json and link.png")


def _env(discovery: str) -> dict:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "ROS_AUTOMATIC_DISCOVERY_RANGE": discovery,
           # UDP only: shared memory would carry the data past the network path between namespaces
           "FASTDDS_BUILTIN_TRANSPORTS": "UDPv4", "OMP_NUM_THREADS": "1"}
    env.pop("ROS_STATIC_PEERS", None)
    return env


def run_variant(args, impaired: bool) -> dict:
    """Run both roles once, over the impaired link or loopback; return the raw and derived figures."""
    import tempfile

    from dysta_ros.evaluation.impaired_link import Impairment, ImpairedLink

    link = None
    if impaired:
        link = ImpairedLink(Impairment(args.delay_ms / 1e3, args.jitter_ms / 1e3, args.loss,
                                       args.rate_mbit * 1e6)).__enter__()
    robot_prefix, host_prefix = (link.exec_prefix(0), link.exec_prefix(1)) if link else ([], [])
    env = _env("SUBNET" if link else "LOCALHOST")
    cut_s = args.cut_s if link else 0.0
    out = Path(tempfile.mkdtemp(prefix="dysta_link_")) / "probe.json"
    settings = {"width": args.width, "height": args.height, "camera_rate": args.camera_rate,
                "jpeg_quality": args.jpeg_quality, "seconds": args.seconds, "startup_s": 120.0,
                "after_s": (cut_s + 6.0) if cut_s else 0.5, "out": str(out)}
    host_command = [sys.executable, "-m", "dysta_ros.cli", "run", "--role", "policy-host", "--robot", ROBOT,
                    "--model", args.model, "--strategy", args.strategy, "--threads", str(args.threads),
                    "--device", args.device, "--dtype", args.dtype,
                    "--instruction", "pick up the cube"]
    if not link:
        host_command += ["--param", "policy_node:clock_sync=assume"]
    probe_command = [sys.executable, "-m", "dysta_ros.nodes.link_probe", json.dumps(settings)]
    processes = []
    cut = {}
    try:
        processes.append(subprocess.Popen(host_prefix + host_command, env=env, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.PIPE, text=True))
        probe = subprocess.Popen(robot_prefix + probe_command, env=env, stdout=subprocess.PIPE, text=True)
        processes.append(probe)
        for line in probe.stdout:
            if line.strip() == "measured" and link and cut_s:
                time.sleep(0.5)
                link.cut()
                cut["cut"] = time.time()
                time.sleep(cut_s)
                link.restore()
                cut["restore"] = time.time()
        probe.wait(timeout=60)
        if probe.returncode != 0 or not out.exists():
            host_error = ""
            if processes[0].poll() is not None:
                host_error = processes[0].stderr.read()[-2000:]
            where = "impaired link" if link else "loopback"
            raise RuntimeError(f"the robot side got no chunk from the policy host ({where})"
                               + (f"; policy host: {host_error}" if host_error else ""))
    finally:
        for process in processes:
            if process.poll() is None:
                process.terminate()
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
        link_counts = None
        if link:
            link_counts = vars(link.counts)
            link.close()
    record = json.loads(out.read_text())
    out.unlink()
    out.parent.rmdir()
    result = analyse(record, cut)
    result["link"] = ("impaired" if link else "loopback")
    result["link_counts"] = link_counts
    return result


def run(args) -> int:
    from dysta_ros.evaluation.impaired_link import namespaces_available

    variants = {"both": [False, True], "loopback": [False], "impaired": [True]}[args.link]
    reason = namespaces_available()
    if True in variants and reason:
        print(f"dysta-ros link: impaired link skipped: {reason}", file=sys.stderr)
        variants = [v for v in variants if not v]
        if not variants:
            return 1
    write_results([run_variant(args, impaired) for impaired in variants], args)
    return 0


def write_results(results: list[dict], args) -> None:
    """Write link.json (`{"runs": [one per link], "meta": {the settings}}`) and link.png; print the table."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(str(out / "link.json"), result_document(results, {"command": "link", **vars(args)}))
    plot(results, out / "link.png")
    print(table(results))
    for r in results:
        if "cut" in r:
            print(f"link cut ({r['link']}): {json.dumps(r['cut'])}")
    print(f"wrote {out / 'link.json'} and {out / 'link.png'}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
