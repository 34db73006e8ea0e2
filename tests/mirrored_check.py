"""Shared pieces of the tests that compare a MirroredStrategy over 2 logical CPUs with one
device. Those comparisons run as scripts in a subprocess (logical devices must be configured
before TensorFlow starts); the scripts import this module (the tests folder is on their path)."""

import os
import pathlib
import subprocess
import sys

TESTS_DIR = str(pathlib.Path(__file__).parent)


def run_mirrored_script(script: str, *args: str, timeout: int = 600):
    """Runs `script` (python -c) with the tests folder as working directory and on PYTHONPATH;
    asserts it exits 0 and prints "OK"."""
    result = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True,
                            timeout=timeout, cwd=TESTS_DIR, env={**os.environ, "PYTHONPATH": TESTS_DIR})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    assert "OK" in result.stdout


def replica_sums(strategy, step, batch, per_replica: int):
    """Runs `step` on each replica with its slice of `batch` (replica i: examples
    [i * per_replica, (i + 1) * per_replica)) and returns every output summed over replicas
    (same nesting as `step`'s outputs)."""
    import tensorflow as tf

    def local(ctx):
        i = ctx.replica_id_in_sync_group
        return tf.nest.map_structure(lambda t: t[per_replica * i: per_replica * (i + 1)], batch)

    outputs = strategy.run(step, args=(strategy.experimental_distribute_values_from_function(local),))
    return tf.nest.map_structure(lambda t: strategy.reduce("SUM", t, axis=None), outputs)


def assert_gradients_close(variables, grads_1, grads_2, relative_atol: float = 1e-4) -> float:
    """Each gradient of `grads_2` within `relative_atol` x the largest `grads_1` entry of
    `grads_1` (one scale for all: some gradients are exactly 0 mathematically, e.g. a conv bias
    before BatchNorm, and hold only rounding noise). Returns the worst difference / scale."""
    import numpy as np
    import tensorflow as tf

    grads_1 = [tf.convert_to_tensor(g).numpy() for g in grads_1]
    grads_2 = [tf.convert_to_tensor(g).numpy() for g in grads_2]
    scale = max(np.abs(g).max() for g in grads_1)
    for v, a, b in zip(variables, grads_1, grads_2):
        np.testing.assert_allclose(b, a, atol=relative_atol * scale, err_msg=v.path)
    return max(np.abs(a - b).max() for a, b in zip(grads_1, grads_2)) / scale
