"""Strategy statistics travel as one key/value mapping: PrefixResult -> StepStats -> TokenStats."""

import numpy as np
import pytest

from dysta_ros.policy.runtime import build_runtime
from dysta_ros.types import Observation


def observation(seed: int) -> Observation:
    rng = np.random.default_rng(seed)
    return Observation(0.0, {"main": rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)}, np.zeros(6), "go")


@pytest.mark.parametrize("strategy, keys", [
    ("dysta", {"static_l1_tokens", "static_l2_tokens", "recached_l1", "recached_l2"}),
    ("vla_cache", {"reused_tokens"}),
    ("full", set()),
])
def test_each_strategy_reports_its_own_keys_and_the_message_carries_them(strategy, keys):
    from dysta_ros.nodes.conversions import stats_to_msg

    runtime = build_runtime("tiny", strategy)
    runtime.step(observation(0))
    _, stats = runtime.step(observation(0))  # a second step: caches reused
    assert set(stats.strategy_stats) == keys
    msg = stats_to_msg(stats, 0.0)
    assert dict(zip(msg.stat_keys, msg.stat_values)) == pytest.approx(stats.strategy_stats)
    # the older DySta fields of the message come from the mapping, and are 0 where it has no key
    assert msg.static_l1_tokens == stats.strategy_stats.get("static_l1_tokens", 0)
    assert msg.recached_l1 == bool(stats.strategy_stats.get("recached_l1", 0))
    if strategy == "dysta":
        assert stats.static_l1_tokens > 0 and not stats.recached_l1
    if strategy == "vla_cache":
        assert stats.strategy_stats["reused_tokens"] > 0  # an unchanged frame is reused
