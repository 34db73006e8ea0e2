"""Delta-MTL over the tasks' primary metrics, with the STL reference resolved per run."""

from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Sequence

from mtpsl_tf.metrics import delta_mtl
from mtpsl_tf.tasks.base import Task


def primary_directions(tasks: Sequence[Task]) -> Dict[str, str]:
    return {f"{t.name}/{t.primary_metric}": t.metric_directions[t.primary_metric] for t in tasks}


def resolve_reference(tasks: Sequence[Task], defaults: Mapping[str, float],
                      overrides: Mapping[str, float]) -> Optional[Dict[str, float]]:
    """The STL values for every task's primary metric, or None if some are unknown."""
    merged = {**defaults, **overrides}
    keys = list(primary_directions(tasks))
    if not all(k in merged for k in keys):
        return None
    return {k: float(merged[k]) for k in keys}


def compute(results: Mapping[str, Optional[float]], tasks: Sequence[Task],
            reference: Optional[Mapping[str, float]]) -> Optional[float]:
    """Delta-MTL (percent) of `results` against `reference`; None without a reference or when a
    task's primary metric is undefined (None: a NaN metric, e.g. the normal head's
    epsilon-free normalisation of a zero vector)."""
    directions = primary_directions(tasks)
    if reference is None or any(results.get(k) is None for k in directions):
        return None
    return float(delta_mtl({k: float(results[k]) for k in directions}, reference, directions))


def comparison_lines(method: str, delta: Optional[float], stored: Mapping[str, float]) -> List[str]:
    """One line per stored Delta-MTL (`--compare_delta_mtl`): this run's `delta` (percent,
    None when there is no STL reference) beside it and which is higher (better)."""
    lines = []
    for name, value in stored.items():
        if delta is None:
            lines.append(f"compare: {name} {value:+.2f}% (stored); this run has no Delta-MTL (no STL reference)")
            continue
        verdict = "higher (better)" if delta > value else "not higher (not better)"
        lines.append(f"compare: {method} {delta:+.2f}% vs {name} {value:+.2f}% (stored): {method} is {verdict} "
                     f"by {delta - value:+.2f} points")
    return lines
