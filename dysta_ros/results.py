"""One shape for every result `dysta-ros` writes, and the quantities every result shares.

Every JSON result is `{"runs": [...], "meta": {...}}`: one entry of `runs` per measured thing
(a strategy, a strategy at a history length, a policy, a checkpoint), and `meta` for what the
run was (command, model, device, seeds). The same quantity has the same name and the same
definition in every command; README "Results" lists them:

- `speedup`: `full`'s median step time divided by this run's median step time, both measured
  in the same run (None when `full` was not run).
- `recache_rate`: the share of policy steps that rebuilt a static cache (L1 or L2), counting
  only steps after an episode's first (which always builds it).
- `step_ms_p50`: the median policy step (all stages), in milliseconds.

Plain Python, no torch: the CLI imports it before any model.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable, Sequence


def result_document(runs: list[dict], meta: dict) -> dict:
    """Return `{"runs": runs, "meta": meta}` with NaN/inf as null (JSON has no NaN)."""
    return {"runs": [_finite(run) for run in runs], "meta": _finite(meta)}


def command_line() -> str:
    """The command as it was typed (every result's `meta.command`)."""
    return " ".join(["dysta-ros", *sys.argv[1:]])


def speedup(full_step_ms_p50: float | None, step_ms_p50: float | None) -> float | None:
    """`full`'s median step time / this median step time, same run; None without both."""
    if not full_step_ms_p50 or not step_ms_p50 or not math.isfinite(full_step_ms_p50 / step_ms_p50):
        return None
    return full_step_ms_p50 / step_ms_p50


def recache_rate(episodes: Iterable[Sequence], skip_first: bool = True) -> float | None:
    """Share of steps (each with `recached_l1`/`recached_l2`) that rebuilt a static cache.

    `episodes`: the steps of each episode in order. An episode's first step always builds the
    cache, so it is skipped; `skip_first=False` is for steps that follow unmeasured warm-up
    steps (bench), which built the cache already. None when no step counts.
    """
    counted = [bool(step.recached_l1 or step.recached_l2)
               for steps in episodes for step in list(steps)[1 if skip_first else 0:]]
    return sum(counted) / len(counted) if counted else None


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def percentiles(values: Sequence[float]) -> dict:
    """p50, p90, p99, max and mean of measured values (each None when there are none)."""
    import numpy as np  # here, not at import: the CLI imports this module before parsing

    values = np.asarray(values, dtype=np.float64)
    if not values.size:
        return dict.fromkeys(("p50", "p90", "p99", "max", "mean"))
    return {"p50": float(np.percentile(values, 50)), "p90": float(np.percentile(values, 90)),
            "p99": float(np.percentile(values, 99)), "max": float(values.max()), "mean": float(values.mean())}
