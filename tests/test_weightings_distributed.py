"""The weightings under MirroredStrategy (2 logical CPUs): each replica sees its share of the
losses and task gradients (shares summing to the global values); the replicas' results summed
(as the optimiser sums gradients) equal one device's on the global values, and the state the
step assigns is the global one.

Runs in a subprocess because the 2 logical CPU devices must be configured before TensorFlow
initialises its devices (the test process has already done so).
"""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

SCRIPT = textwrap.dedent(r'''
    import json, os
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

    from mtpsl_tf.weighting.base import WEIGHTINGS, WeightingFacts

    TASKS = ("semantic", "depth", "normal")
    G = np.array([[1.0, -2.0, 0.5, 0.0, 1.0, 0.3], [-1.5, 1.0, 0.0, 2.0, -0.5, 0.1],
                  [0.2, 0.4, -1.0, 0.5, 0.8, -0.7]], np.float32)
    G[2] = 0.0                         # normal absent from the global batch
    L = np.array([1.2, 0.7, 0.0], np.float32)
    PRESENT = {n: tf.constant(p) for n, p in zip(TASKS, (True, True, False))}
    SHARE = (0.3, 0.7)                 # replica 0's and replica 1's share of every value

    def make(case):
        name, _, mode = case.partition(":")
        cls = WEIGHTINGS.get(name)
        w = cls(WeightingFacts(TASKS, {}, seed=1, options=cls.Options(**({"mgda_on": mode} if mode else {}))))
        w.build()
        return w

    def inputs(share):
        grads = {n: [tf.reshape(tf.constant(G[i, :4]) * share, [1, 1, 2, 2]), tf.constant(G[i, 4:]) * share]
                 for i, n in enumerate(TASKS)}
        return grads, {n: tf.constant(L[i]) * share for i, n in enumerate(TASKS)}

    def step(w, share, part):
        grads, losses = inputs(share)
        variables = w.trainable_variables()
        if w.gradient_source == "shared_feature":
            # Each replica holds its own images' part of the shared representation (`part`
            # masks the gradient's coordinates), so the parts' Gram matrices sum to the global one.
            w.observe_feature_gradients({n: [tf.constant(G[i]) * part] for i, n in enumerate(TASKS)}, losses, PRESENT)
        with tf.GradientTape() as tape:
            total = w.combine(losses, PRESENT)
        # The tape's gradients of the weighting's variables (None where another rule trains them).
        out = [tf.convert_to_tensor(g) for g in tape.gradient(total, variables) if g is not None]
        if w.gradient_source == "shared_feature":
            out.append(total)  # the replicas' shares of sum_t w_t L_t
        if w.gradient_source == "shared_parameters":
            out += [tf.reshape(g, [-1]) for g in w.combine_gradients(grads, losses, PRESENT)]
            own = w.variable_gradients(grads, losses, PRESENT, 0)
            out += [] if own is None else list(own)
        return out

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    result = {}
    PARTS = tf.constant([[1.0, 1.0, 1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]])
    for name in ("uncertainty", "gradnorm", "mgda:parameters", "mgda:feature", "pcgrad", "cagrad", "famo"):
        single = make(name)
        expected = [step(single, 1.0, tf.ones([6])) for _ in range(2)]
        with strategy.scope():
            mirrored = make(name)
        got = []
        for _ in range(2):
            per_replica = strategy.run(tf.function(lambda: step(
                mirrored, tf.gather(tf.constant(SHARE), tf.distribute.get_replica_context().replica_id_in_sync_group),
                tf.gather(PARTS, tf.distribute.get_replica_context().replica_id_in_sync_group))))
            got.append([strategy.reduce(tf.distribute.ReduceOp.SUM, x, axis=None) for x in per_replica])
        assert [len(e) for e in expected] == [len(g) for g in got], name
        weights = [float(mirrored.weights()[n]) for n in TASKS], [float(single.weights()[n]) for n in TASKS]
        result[name] = {
            "error": max(float(np.max(np.abs(a.numpy() - b.numpy()))) for e, g in zip(expected, got)
                         for a, b in zip(e, g)),
            "scale": max(float(np.max(np.abs(a.numpy()))) for e in expected for a in e),
            "count": sum(len(e) for e in expected), "weights": weights}
    print("RESULT" + json.dumps(result))
''')


@pytest.fixture(scope="module")
def mirrored():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT")][-1]
    return json.loads(line[len("RESULT"):])


@pytest.mark.parametrize("name", ["uncertainty", "gradnorm", "mgda:parameters", "mgda:feature", "pcgrad", "cagrad",
                                  "famo"])
def test_mirrored_weighting_equals_single_device(mirrored, name):
    r = mirrored[name]
    assert r["count"] > 0
    assert r["error"] <= 1e-5 * max(r["scale"], 1.0), r
    np.testing.assert_allclose(r["weights"][0], r["weights"][1], rtol=1e-5, atol=1e-6)
