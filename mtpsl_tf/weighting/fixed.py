"""`fixed`: constant per-task weights (the reference recipes: 1 for every NYU-v2 / Cityscapes
task, PASCAL-Context's 1/2/10/5/50), total = sum_t w_t L_t.

Partial labels: a task without a labelled image in the batch has L_t = 0 and adds nothing;
there is no state to corrupt.
"""

from __future__ import annotations

from mtpsl_tf.weighting.base import WEIGHTINGS, LossWeighting


@WEIGHTINGS.register("fixed")
class FixedWeighting(LossWeighting):
    """sum_t w_t L_t with w = the static weights (`--loss_weights` / the dataset's): the
    base class's `combine`."""

    constant_weights = True

