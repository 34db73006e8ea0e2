"""Delta-MTL (supplement eq. 1): mean relative gain of a model over single-task references."""

from __future__ import annotations

import math
from typing import Mapping, Optional

_DIRECTIONS = ("higher", "lower")


def _as_float(role: str, key: str, value) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError) as err:
        raise TypeError(f"delta_mtl: {role}[{key!r}] must be a number, got {value!r}") from err
    if not math.isfinite(number):
        raise ValueError(f"delta_mtl: {role}[{key!r}] must be finite, got {number}")
    return number


def _check_keys(directions: Mapping[str, str], results, reference, scale) -> None:
    if not directions:
        raise ValueError("delta_mtl: `directions` is empty; name at least one metric")
    bad = {k: v for k, v in directions.items() if v not in _DIRECTIONS}
    if bad:
        raise ValueError(f"delta_mtl: directions must be 'higher' or 'lower', got {bad}")
    for role, mapping in (("results", results), ("reference", reference)):
        missing = sorted(k for k in directions if k not in mapping)
        if missing:
            raise KeyError(f"delta_mtl: {role} lacks {missing}; it has {sorted(mapping)}")
    unknown = sorted(k for k in scale if k not in directions)
    if unknown:
        raise KeyError(f"delta_mtl: scale names {unknown}, which are not in directions")


def delta_mtl(
    results: Mapping[str, float],
    reference: Mapping[str, float],
    directions: Mapping[str, str],
    scale: Optional[Mapping[str, float]] = None,
) -> float:
    """Delta-MTL in percent: mean over the keys of `directions` of (-1)^l (P - P_ref) / P_ref * 100.

    l = 1 for metrics where lower is better. Keys look like `"semantic/miou"`.

    Args:
        results: the evaluated model's metrics (extra keys are ignored).
        reference: the single-task references, same keys, in the units of the references.
        directions: key -> `"higher"` or `"lower"` (is a larger value better?); the metrics
            averaged are exactly these keys.
        scale: optional key -> factor applied to `results[key]` to put it in the reference's
            unit. Our metrics return fractions while the authors' STL references give mIoU in
            percent (26.1113), so pass `{"semantic/miou": 100.0}` with those references.
            Keys absent from `scale` use factor 1.

    Returns:
        Delta-MTL as a Python float (percent; positive = better than the references).

    Raises:
        KeyError: a key of `directions` is missing from `results` or `reference` (the message
            names it), or `scale` names a key not in `directions`.
        ValueError: a direction other than "higher"/"lower", a zero or non-finite reference
            or result.
    """
    scale = {} if scale is None else scale
    _check_keys(directions, results, reference, scale)
    gains = []
    for key, direction in directions.items():
        value = _as_float("results", key, results[key]) * _as_float(
            "scale", key, scale.get(key, 1.0)
        )
        ref = _as_float("reference", key, reference[key])
        if ref == 0.0:
            raise ValueError(f"delta_mtl: reference[{key!r}] is 0; a relative gain is undefined")
        sign = 1.0 if direction == "higher" else -1.0
        gains.append(sign * (value - ref) / ref)
    return sum(gains) / len(gains) * 100.0
