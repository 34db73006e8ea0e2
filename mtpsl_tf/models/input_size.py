"""The backbones' input-size rule, written once (no TensorFlow import: flag checks use it).

A backbone accepts images whose height and width are positive multiples of its
`Backbone.input_multiple`: 32 for SegNet (five 2x2 poolings whose switches MaxUnpool2D must
match exactly), 1 for the dilated ResNet (its heads upsample to exactly H x W).
"""

from __future__ import annotations

from typing import Optional

import numpy as np

# SegNet pools five times; the exporters and the config use SegNet's rule for every backbone.
SEGNET_INPUT_MULTIPLE = 32
SEGNET_REASON = "SegNet pools 5 times"


def check_multiple(height, width, multiple: int, subject: str, reason: str = "",
                   allow_unknown: bool = False) -> None:
    """Raises ValueError unless `height` and `width` are positive integer multiples of `multiple`.

    Args:
        subject: start of the message, e.g. "SegNet input" or "export".
        reason: appended in parentheses after the rule, e.g. "SegNet pools 5 times".
        allow_unknown: a size of None (a dynamic dimension) passes.

    The message reads "<subject> <height|width> must be a positive multiple of <multiple>
    [(<reason>)], got <size!r>".
    """
    for label, size in (("height", height), ("width", width)):
        if size is None and allow_unknown:
            continue
        if not _is_positive_multiple(size, multiple):
            why = f" ({reason})" if reason else ""
            raise ValueError(f"{subject} {label} must be a positive multiple of {multiple}{why}, got {size!r}")


def _is_positive_multiple(size: Optional[object], multiple: int) -> bool:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
        return False
    return size > 0 and size % multiple == 0
