"""Loss weightings: how the named per-task losses of a step combine into the total (and,
for gradient-based weightings, how the per-task gradients combine). One module each,
registered in WEIGHTINGS (mtpsl_tf/weighting/base.py)."""
