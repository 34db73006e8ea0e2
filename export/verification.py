"""Checks an exported format against the Keras model on held-out examples.

Rules (a format failing one is "broken" and the export fails):
- float32 formats (SavedModel, TFLite float32): every float output within `tolerance`
  (1e-4) absolute of the Keras model's at every pixel; an int32 `_label` output may differ
  only where the Keras model's two best class probabilities are within 2 x tolerance
  (a genuine tie that rounding may flip).
- every format: all outputs finite; no float output "collapsed": its standard deviation over
  the verification set below 1% of the Keras output's (e.g. all zeros), judged only where the
  Keras output varies (std >= 0.01; an untrained model's near-uniform probabilities do not);
- reduced-precision formats (float16, int8): no task's primary metric NaN where Keras' is
  finite, and none worse than the Keras model's by more than `max_degradation` (0.5 = 50%)
  relative: (worse-direction change) / |Keras value|.
"""

from __future__ import annotations

import math
from typing import Dict, List, Mapping, Sequence

import numpy as np

from mtpsl_export import contract

TOLERANCE = 1e-4
MAX_DEGRADATION = 0.5
COLLAPSE_RATIO = 0.01
COLLAPSE_MIN_STD = 0.01


class VerificationError(RuntimeError):
    """An exported format disagrees with the Keras model; `report` holds the details."""

    def __init__(self, message: str, report: dict):
        super().__init__(message)
        self.report = report


def compare_outputs(reference: Mapping[str, np.ndarray], got: Mapping[str, np.ndarray], tasks: Sequence,
                    tolerance: float = TOLERANCE) -> Dict[str, Dict[str, float]]:
    """Per output: max/mean |got - reference|, finiteness, std of both; for `_label` outputs
    also the mismatch fraction and the mismatches not explained by a near-tie in Keras."""
    out = {}
    for name, spec in contract.output_spec(tasks, 0, 0).items():
        if name not in got:
            raise ValueError(f"exported model has no output {name!r}; it has {sorted(got)}")
        ref, value = np.asarray(reference[name]), np.asarray(got[name])
        if ref.shape != value.shape:
            raise ValueError(f"output {name!r}: shape {value.shape}, Keras gives {ref.shape}")
        diff = np.abs(value.astype(np.float64) - ref.astype(np.float64))
        entry = {"max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
                 "finite": bool(np.isfinite(value).all()), "std": float(value.std()),
                 "keras_std": float(ref.std())}
        if spec["dtype"] == "int32":
            mismatch = value != ref
            probs = np.sort(np.asarray(reference[spec["task"] + contract.PROBS]), axis=-1)
            gap = probs[..., -1] - probs[..., -2]
            entry["mismatch_fraction"] = float(mismatch.mean())
            entry["unexplained_mismatches"] = int((mismatch & (gap > 2 * tolerance)).sum())
        out[name] = entry
    return out


def evaluate(tasks: Sequence, labels: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]) -> Dict[str, float]:
    """Task metrics `{"task/metric": value}` of exported `outputs` against `labels`."""
    result = {}
    for task in tasks:
        metric = task.make_metric()
        task.update_metric(metric, labels[task.name], contract.network_form(outputs, task))
        for key, value in metric.result().items():
            result[f"{task.name}/{key}"] = float(value)
    return result


def primary_deltas(tasks: Sequence, metrics: Mapping[str, float], reference: Mapping[str, float]) -> Dict[str, dict]:
    """Per task: the primary metric of the format and Keras, delta, and relative degradation
    (positive = worse, whatever the metric's direction)."""
    out = {}
    for task in tasks:
        key = f"{task.name}/{task.primary_metric}"
        value, ref = metrics[key], reference[key]
        worse = value - ref if task.metric_directions[task.primary_metric] == "lower" else ref - value
        if math.isnan(worse):
            relative = float("nan")
        elif ref == 0:
            relative = 0.0 if worse <= 0 else float("inf")
        else:
            relative = worse / abs(ref)
        out[key] = {"value": value, "keras": ref, "delta": value - ref, "relative_degradation": relative}
    return out


def problems(precision: str, comparison: Mapping[str, dict], deltas: Mapping[str, dict],
             tolerance: float = TOLERANCE, max_degradation: float = MAX_DEGRADATION) -> List[str]:
    """The rule violations of one format (empty: it passes); see the module doc."""
    found = []
    for name, entry in comparison.items():
        if not entry["finite"]:
            found.append(f"output {name!r} has non-finite values")
        elif ("mismatch_fraction" not in entry and entry["keras_std"] >= COLLAPSE_MIN_STD
              and entry["std"] < COLLAPSE_RATIO * entry["keras_std"]):
            found.append(f"output {name!r} collapsed: std {entry['std']:.3g} vs Keras {entry['keras_std']:.3g}")
        if precision != "float32":
            continue
        if "mismatch_fraction" in entry:
            if entry["unexplained_mismatches"]:
                found.append(f"output {name!r}: {entry['unexplained_mismatches']} labels differ from Keras "
                             f"away from ties")
        elif entry["max_abs_diff"] > tolerance:
            found.append(f"output {name!r}: max |diff| {entry['max_abs_diff']:.3g} > {tolerance:g}")
    if precision != "float32":
        for key, d in deltas.items():
            if math.isnan(d["value"]) and not math.isnan(d["keras"]):
                found.append(f"{key} is NaN (Keras: {d['keras']:.4g})")
            elif d["relative_degradation"] > max_degradation:
                found.append(f"{key} degrades by {100 * d['relative_degradation']:.1f}% > "
                             f"{100 * max_degradation:g}% ({d['value']:.4g} vs Keras {d['keras']:.4g})")
    return found
