"""`dysta-ros record --task`'s episodes: reset the sim, release the executor, wait for the outcome.

The driver runs on a worker thread while the main thread spins every node; it marks each
episode's start and end on /dysta/episode (JSON in std_msgs/String), which the bag records.
"""

from __future__ import annotations

import json
import sys

from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from std_msgs.msg import Bool, String
from std_srvs.srv import Trigger

from dysta_ros.cli_options import json_to_stdout
from dysta_ros.errors import ConfigError
from dysta_ros.nodes import topics as dysta_topics
from dysta_ros.nodes.conversions import ESTOP_QOS
from dysta_ros.nodes.service_calls import call_service, wait_until

EPISODE_TOPIC = dysta_topics.absolute("episode")  # the recorder's start/end events, JSON in a String
OUTCOME_TOPIC = dysta_topics.absolute(dysta_topics.EPISODE_OUTCOME)
# Episode events and outcomes reach nodes (and the recorder) that start later.
LATCHED_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)


class EpisodeDriver(Node):
    """Start sim episodes one after another and mark their start and outcome on /dysta/episode."""

    def __init__(self, set_seed):
        super().__init__("episode_driver")
        self._set_seed = set_seed  # the sim's next episode uses its `seed` parameter
        self._events = self.create_publisher(String, EPISODE_TOPIC, LATCHED_QOS)
        self._reset = self.create_client(Trigger, dysta_topics.node_service("sim_node", "reset"))
        # Between episodes the executor is held, as an operator would: the last episode's plan
        # must not drive the arm of the next (it would head for where the old target was).
        self._estop = self.create_publisher(Bool, dysta_topics.absolute(dysta_topics.ESTOP), ESTOP_QOS)
        self._clear_estop = self.create_client(Trigger, dysta_topics.absolute(dysta_topics.CLEAR_ESTOP))
        self.outcomes: dict[int, dict] = {}
        self.create_subscription(String, OUTCOME_TOPIC, self._on_outcome, LATCHED_QOS)

    def _on_outcome(self, msg: String) -> None:
        outcome = json.loads(msg.data)
        self.outcomes[int(outcome.get("episode", -1))] = outcome

    def run_episode(self, index: int, seed: int, timeout_s: float) -> dict:
        """Reset the sim, mark the start, wait for the outcome (or the timeout), mark the end."""
        self._set_seed(seed)
        self._estop.publish(Bool(data=True))
        response = self._call(self._reset, "sim_node's ~/reset")
        if not response.success:
            raise ConfigError(f"sim reset failed: {response.message}")
        started = json.loads(response.message)
        self._call(self._clear_estop, "chunk_executor's /dysta/clear_estop")
        self._events.publish(String(data=json.dumps({"event": "start", "index": index, **started})))
        sim_episode = int(started["episode"])
        finished = wait_until(lambda: sim_episode in self.outcomes, timeout_s)
        outcome = self.outcomes.get(sim_episode) or {"success": False, "reason": "timeout"}
        self._events.publish(String(data=json.dumps({"event": "end", "index": index, **outcome})))
        return outcome if finished else {**outcome, "reason": "timeout"}

    def _call(self, client, what: str):
        """Call a Trigger service (spun by the main thread) and return its response."""
        return call_service(client, Trigger.Request(), what)


def record_episodes(driver: EpisodeDriver, args, outcome: dict) -> None:
    """Run the episodes (on a worker thread while the main thread spins).

    Sets outcome['status'] (1: an episode could not run) and outcome['episodes'] (each one's outcome).
    """
    successes = 0
    out = sys.stderr if json_to_stdout(args) else sys.stdout  # stdout is the JSON's then
    outcome.setdefault("episodes", [])
    try:
        for index in range(args.episodes):
            result = driver.run_episode(index, args.seed + index, args.episode_timeout)
            outcome["episodes"].append(result)
            successes += bool(result.get("success"))
            print(f"episode {index + 1}/{args.episodes}: {result.get('reason', '?')} "
                  f"({'success' if result.get('success') else 'failure'})", file=out, flush=True)
    except (ConfigError, TimeoutError) as exc:
        print(f"dysta-ros record: {exc}", file=sys.stderr)
        outcome["status"] = 1
        return
    print(f"{successes}/{args.episodes} episodes succeeded", file=out)
