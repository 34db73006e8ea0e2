"""Morphological thinning of binary maps, as MATLAB's `bwmorph(bw, 'thin', Inf)`.

The two-sub-iteration parallel algorithm of Guo & Hall (Comm. ACM 32(3), 1989, "A2"), which
bwmorph and scikit-image's `thin` implement with look-up tables over the 8-neighbourhood.
Here each sub-iteration looks only at the remaining foreground pixels (a gather of their 8
neighbours), instead of correlating the whole image, which makes it several times faster on
sparse edge maps; the result is the same (tests compare with scikit-image on random maps).
"""

from __future__ import annotations

from typing import Tuple

import numpy as np


def _neighbour_bits() -> np.ndarray:
    """bool `[256, 8]`: x1..x8 of every neighbourhood code (bit i-1 = x_i; x1 east, then
    counter-clockwise: north-east, north, north-west, west, south-west, south, south-east)."""
    codes = np.arange(256)[:, None]
    return ((codes >> np.arange(8)[None, :]) & 1).astype(bool)


def guo_hall_tables() -> Tuple[np.ndarray, np.ndarray]:
    """bool `[256]` deletion tables of the first and second sub-iteration, by code.

    A pixel is deleted when G1 (one 8-connected crossing: X_H = 1), G2 (2 <= min(n1, n2) <= 3)
    and G3 (first: (x2 | x3 | ~x8) & x1 == 0; second: (x6 | x7 | ~x4) & x5 == 0) hold.
    """
    x = _neighbour_bits()

    def at(i):  # x_i with x9 = x1
        return x[:, (i - 1) % 8]

    crossings = sum((~at(2 * i - 1) & (at(2 * i) | at(2 * i + 1))).astype(int) for i in range(1, 5))
    n1 = sum((at(2 * k - 1) | at(2 * k)).astype(int) for k in range(1, 5))
    n2 = sum((at(2 * k) | at(2 * k + 1)).astype(int) for k in range(1, 5))
    g12 = (crossings == 1) & (np.minimum(n1, n2) >= 2) & (np.minimum(n1, n2) <= 3)
    g3_first = ~((at(2) | at(3) | ~at(8)) & at(1))
    g3_second = ~((at(6) | at(7) | ~at(4)) & at(5))
    return g12 & g3_first, g12 & g3_second


def thin(binary: np.ndarray) -> np.ndarray:
    """bool `[H, W]`: `binary` thinned until it no longer changes (pixels outside are 0)."""
    binary = np.asarray(binary, bool)
    if binary.ndim != 2:
        raise ValueError(f"thin: expected a 2-D binary map, got shape {binary.shape}")
    height, width = binary.shape
    stride = width + 2
    padded = np.zeros((height + 2, stride), np.uint8)
    padded[1:-1, 1:-1] = binary
    flat = padded.reshape(-1)
    # Flat offsets of x1..x8 (bit i - 1 of the code).
    offsets = (1, 1 - stride, -stride, -stride - 1, -1, stride - 1, stride, stride + 1)
    tables = guo_hall_tables()

    def codes_of(pixels):
        codes = np.zeros(pixels.size, np.uint8)
        for bit, offset in enumerate(offsets):
            codes |= flat[pixels + offset] << np.uint8(bit)
        return codes

    alive = np.flatnonzero(flat)
    changed = alive.size > 0
    while changed:
        changed = False
        for table in tables:
            delete = table[codes_of(alive)]
            if delete.any():
                # Parallel step: every code was read before any deletion.
                flat[alive[delete]] = 0
                alive = alive[~delete]
                changed = True
    return padded[1:-1, 1:-1].astype(bool)
