"""A real network path on one machine: two network namespaces joined by an impaired userspace link.

Each namespace gets one TAP device; this process holds both and forwards every Ethernet frame
from one to the other, after a delay (mean +- uniform jitter), with random loss, through a
token-bucket rate limit, and not at all while the link is cut. The kernel here has no `netem`
qdisc, so the impairment lives in userspace, but packets still cross both kernels' network
stacks: DDS discovery, UDP, IP fragmentation and reassembly are the real ones.

Needs root (CAP_NET_ADMIN) and /dev/net/tun; `namespaces_available()` says why not, so callers
skip with that reason. Everything made (namespaces, their TAPs) is removed on exit, even on
failure: `with ImpairedLink(...) as link:`.

    python -m dysta_ros.evaluation.impaired_link --delay-ms 20 --jitter-ms 5 --loss 0.01 --rate-mbit 50
"""

from __future__ import annotations

import argparse
import fcntl
import heapq
import os
import random
import re
import select
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

TUNSETIFF = 0x400454CA
IFF_TAP, IFF_NO_PI = 0x0002, 0x1000
MTU = 1500
SUBNET = "10.213.7"  # a private /24 that only these namespaces use


@dataclass(frozen=True)
class Impairment:
    """What the link does to each frame (one direction; both directions alike)."""

    delay_s: float = 0.020
    jitter_s: float = 0.005  # uniform in [-jitter, +jitter] around the delay
    loss: float = 0.01  # fraction of frames dropped
    rate_bit_s: float = 50e6  # token bucket: frames leave no faster than this
    seed: int = 0

    @classmethod
    def none(cls) -> Impairment:
        return cls(delay_s=0.0, jitter_s=0.0, loss=0.0, rate_bit_s=0.0)


@dataclass
class LinkCounts:
    forwarded: int = 0
    lost: int = 0  # dropped by the loss draw
    cut: int = 0  # dropped while the link was down
    bytes: int = 0
    queue_max: int = 0
    directions: dict = field(default_factory=dict)


def _run(*command: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, check=check)


def namespaces_available() -> str | None:
    """Return why two namespaces with TAP devices cannot be made here, or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root (CAP_NET_ADMIN); running as uid %d" % os.geteuid()
    if not os.path.exists("/dev/net/tun"):
        return "/dev/net/tun does not exist (no TUN/TAP support)"
    probe = f"dysta_probe_{os.getpid()}"
    made = _run("ip", "netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip() or made.stdout.strip()}"
    _run("ip", "netns", "del", probe, check=False)
    return None


def remove_abandoned_namespaces() -> list[str]:
    """Delete the namespaces a killed run of this module left (its pid is in their name); return them."""
    listed = _run("ip", "netns", "list", check=False).stdout.split("\n")
    removed = []
    for line in listed:
        name = line.split(" ")[0]
        match = re.fullmatch(r"dy(\d+)[ab]", name)
        if match and not os.path.exists(f"/proc/{match.group(1)}"):
            _run("ip", "netns", "del", name, check=False)
            removed.append(name)
    return removed


def _open_tap(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI))
    return fd


class ImpairedLink:
    """Two namespaces `<prefix>a` (10.213.7.1) and `<prefix>b` (.2) joined by an impaired link."""

    def __init__(self, impairment: Impairment, prefix: str | None = None):
        self.impairment = impairment
        self.prefix = prefix or f"dy{os.getpid()}"  # TAP names stay within 15 characters
        self.namespaces = (f"{self.prefix}a", f"{self.prefix}b")
        self.addresses = (f"{SUBNET}.1", f"{SUBNET}.2")
        self.taps = (f"{self.prefix}ta", f"{self.prefix}tb")
        self.fds: list[int] = []
        self.counts = LinkCounts()
        self.down = threading.Event()  # set: the link is cut, every frame dropped
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._random = random.Random(impairment.seed)

    # Set-up and tear-down ----------------------------------------------------------------

    def __enter__(self) -> ImpairedLink:
        try:
            self._create()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _create(self) -> None:
        remove_abandoned_namespaces()
        for namespace, tap, address in zip(self.namespaces, self.taps, self.addresses):
            _run("ip", "netns", "add", namespace)
            self.fds.append(_open_tap(tap))  # made here, then moved: the open fd stays attached
            _run("ip", "link", "set", tap, "netns", namespace)
            inside = ("ip", "netns", "exec", namespace)
            _run(*inside, "ip", "link", "set", "lo", "up")
            _run(*inside, "ip", "link", "set", tap, "mtu", str(MTU), "up")
            _run(*inside, "ip", "addr", "add", f"{address}/24", "dev", tap)
            # DDS discovery is multicast: route it over the link, the namespace's only way out
            _run(*inside, "ip", "route", "add", "224.0.0.0/4", "dev", tap)
        self._thread = threading.Thread(target=self._forward, name="impaired-link", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop forwarding; remove the namespaces (their TAPs go with them, and with our fds)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        for fd in self.fds:
            os.close(fd)
        self.fds.clear()
        for namespace in self.namespaces:
            _run("ip", "netns", "del", namespace, check=False)

    def exec_prefix(self, side: int) -> list[str]:
        """The command prefix that runs a program in namespace `side` (0 or 1)."""
        return ["ip", "netns", "exec", self.namespaces[side]]

    # The link itself ---------------------------------------------------------------------

    def _forward(self) -> None:
        a, b = self.fds
        peer = {a: b, b: a}
        queue: list[tuple[float, int, int, bytes]] = []  # (departure, order, out fd, frame)
        free_at = {a: 0.0, b: 0.0}  # when each direction's rate limiter is free again
        order = 0
        imp = self.impairment
        while not self._stop.is_set():
            now = time.monotonic()
            timeout = 0.05 if not queue else max(0.0, min(0.05, queue[0][0] - now))
            readable, _, _ = select.select([a, b], [], [], timeout)
            now = time.monotonic()
            for fd in readable:
                while True:
                    try:
                        frame = os.read(fd, 65536)
                    except BlockingIOError:
                        break
                    if self.down.is_set():
                        self.counts.cut += 1
                        continue
                    if imp.loss and self._random.random() < imp.loss:
                        self.counts.lost += 1
                        continue
                    out = peer[fd]
                    leaves = now
                    if imp.rate_bit_s:
                        leaves = max(now, free_at[out]) + len(frame) * 8 / imp.rate_bit_s
                        free_at[out] = leaves
                    jitter = self._random.uniform(-imp.jitter_s, imp.jitter_s) if imp.jitter_s else 0.0
                    order += 1
                    heapq.heappush(queue, (leaves + max(0.0, imp.delay_s + jitter), order, out, frame))
            self.counts.queue_max = max(self.counts.queue_max, len(queue))
            while queue and queue[0][0] <= time.monotonic():
                _, _, out, frame = heapq.heappop(queue)
                if self.down.is_set():
                    self.counts.cut += 1
                    continue
                try:
                    os.write(out, frame)
                except OSError:  # the device is down in its namespace: the frame is lost
                    self.counts.cut += 1
                    continue
                self.counts.forwarded += 1
                self.counts.bytes += len(frame)

    def cut(self) -> None:
        """Cut the link: as a cable pulled, nothing crosses until `restore()`."""
        self.down.set()

    def restore(self) -> None:
        self.down.clear()


def main(argv=None) -> int:
    """Make the namespaces, ping across, print the round-trip times, remove everything."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delay-ms", type=float, default=20.0)
    parser.add_argument("--jitter-ms", type=float, default=5.0)
    parser.add_argument("--loss", type=float, default=0.01)
    parser.add_argument("--rate-mbit", type=float, default=50.0)
    args = parser.parse_args(argv)
    if reason := namespaces_available():
        print(f"cannot make namespaces: {reason}", file=sys.stderr)
        return 1
    impairment = Impairment(args.delay_ms / 1e3, args.jitter_ms / 1e3, args.loss, args.rate_mbit * 1e6)
    with ImpairedLink(impairment) as link:
        result = _run(*link.exec_prefix(0), "ping", "-c", "20", "-i", "0.05", link.addresses[1], check=False)
        print(result.stdout.strip().splitlines()[-1] if result.stdout else result.stderr)
        print(link.counts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
