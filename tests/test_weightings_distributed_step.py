"""A FULL training step with a loss weighting (`MultiTaskModel.train_step`, as Keras `fit` runs
it: losses, weighting, per-task gradients, NaN guard, optimiser updates, BatchNorm running
statistics; the `tiny` backbone: the
step's mechanics do not depend on the network) under
MirroredStrategy on 2 logical CPUs equals one device's on the same global batch: network
variables (trainable and running statistics) and the weighting's variables and state after 2
steps, for `--method=sl` with `uncertainty` (loss-based) and `gradnorm` (gradient-based).

One-label batches: each image is labelled for one task, so on each step some task has no
labelled image on one replica (semantic on replica 1 in step 1, normal on replica 0 in step 2)
while present in the global batch.

Why float64 and a repeated batch: the global batch repeats 2 images ([a, b, a, b], labels and
masks all different), so each replica's share is [a, b] and training-mode BatchNorm normalises
with the same batch statistics on one device and on each replica (per-replica statistics, as
PyTorch DataParallel, would otherwise legitimately differ). In float32 the result would still
differ by ~1e-3 relative: a randomly initialised SegNet in training mode amplifies the rounding
of its 26 BatchNorm reductions layer by layer (~1.3x per layer), so merely permuting the 2
images of a batch on ONE device moves the outputs by ~2e-3 and the gradients by ~1e-3 relative,
and Adam's first steps (updates of about +-lr whatever the gradient's size) turn that into
differences of order lr in every variable. The network runs in float64 (Keras dtype policy),
which removes the rounding and leaves what the strategy changes; 1e-5 relative then holds with
a wide margin. Runs in a subprocess: logical devices must be configured before TensorFlow
initialises.
"""

import json
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(r'''
    import json, os, sys
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import numpy as np
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

    import keras
    keras.config.set_dtype_policy("float64")
    from mtpsl_tf.config import ExperimentConfig
    from mtpsl_tf.data.registry import DATASETS
    from mtpsl_tf.training.run import _build_optimizer_state, build, complete_options

    B, H, W, STEPS = 4, 32, 32, 2
    TASKS = DATASETS.get("synthetic").tasks()
    assert [t.name for t in TASKS] == ["semantic", "depth", "normal"]
    # One label per image; replica 0 gets images 0-1, replica 1 images 2-3.
    MASKS = [{"semantic": [1, 0, 0, 0], "depth": [0, 0, 1, 1], "normal": [0, 1, 0, 0]},
             {"semantic": [0, 0, 1, 0], "depth": [1, 0, 0, 1], "normal": [0, 0, 0, 1]}]
    rng = np.random.default_rng(0)

    def batch(step):
        two = rng.uniform(size=(2, H, W, 3)).astype(np.float32)
        normal = rng.normal(size=(B, H, W, 3)).astype(np.float32)
        normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
        return {
            "image": np.concatenate([two, two]),
            "labels": {"semantic": rng.integers(-1, TASKS[0].channels, size=(B, H, W)).astype(np.int32),
                       "depth": rng.uniform(0.5, 5.0, size=(B, H, W, 1)).astype(np.float32),
                       "normal": normal},
            "label_mask": {k: np.array(v, np.float32) for k, v in MASKS[step].items()},
            "index": np.arange(step * B, step * B + B, dtype=np.int64),
        }

    BATCHES = [tf.nest.map_structure(tf.constant, batch(s)) for s in range(STEPS)]
    def make(method, weighting):
        config = ExperimentConfig()
        config.data.dataset, config.data.batch_size = "synthetic", B
        config.model.backbone, config.model.filters = "tiny", "4,4,8,8,8"
        config.method.method, config.method.weighting = method, weighting
        config.train.learning_rate = 1e-3  # large enough for 2 steps to move every weight
        config.options = complete_options(config)
        model = build(config, TASKS, H, W, STEPS)
        _build_optimizer_state(model)
        return model

    def weighting_values(model):
        w = model.method.weighting
        values = {f"state/{k}": v for k, v in w.state().items()}
        values.update({f"var/{i}": v for i, v in enumerate(w.trainable_variables())})
        return {k: np.asarray(tf.convert_to_tensor(v), np.float64) for k, v in values.items()}

    def network_values(model):
        return {v.path: np.asarray(v.numpy(), np.float64) for v in model.network.weights}

    def train(model, strategy=None):
        """STEPS calls of the model's train_step (what Keras fit runs per batch); under a
        strategy each replica gets its half of the global batch, in order."""
        if strategy is None:
            step = tf.function(model.train_step)
            for b in BATCHES:
                step(b)
        else:
            step = tf.function(lambda b: strategy.run(model.train_step, args=(b,)))
            for b in BATCHES:
                step(strategy.experimental_distribute_values_from_function(
                    lambda ctx, b=b: tf.nest.map_structure(lambda t: t[2 * ctx.replica_id_in_sync_group:][:2], b)))
        return network_values(model), weighting_values(model)

    def rel(a, b):
        # Floor 1e-3: the biases of convolutions followed by BatchNorm have a zero gradient
        # (they hold ~1e-10 of rounding after Adam's steps); every other variable is >> 1e-3.
        return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-3))

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    result = {}
    for method, weighting in json.loads(sys.argv[1]):
        keras.utils.set_random_seed(3)
        single = make(method, weighting)
        with strategy.scope():
            mirrored = make(method, weighting)
        mirrored.network.set_weights(single.network.get_weights())
        for a, b in zip(mirrored.method.weighting.trainable_variables(), single.method.weighting.trainable_variables()):
            a.assign(b)
        start_net, start_w = network_values(single), weighting_values(single)
        net_1, w_1 = train(single)
        net_2, w_2 = train(mirrored, strategy)
        # Every replica's copy of a mirrored variable holds the same value.
        copies = max(float(np.abs(np.asarray(c) - np.asarray(v.value._values[0])).max())
                     for v in mirrored.network.weights for c in v.value._values)
        assert net_1.keys() == net_2.keys() and w_1.keys() == w_2.keys() and w_1, (w_1, w_2)
        result[weighting] = {
            "dtype": str(single.network.weights[0].dtype),
            "net_rel": {k: rel(net_2[k], net_1[k]) for k in net_1},
            # How far each variable moved, relative to its size: 2 Adam steps move every
            # trainable weight by about 2e-3, so a 1e-5 relative agreement is meaningful.
            "net_moved": {k: float(np.abs(net_1[k] - start_net[k]).max()) for k in net_1},
            "weighting_rel": {k: rel(w_2[k], w_1[k]) for k in w_1},
            "weighting_moved": {k: float(np.abs(w_1[k] - start_w[k]).max()) for k in w_1},
            "replica_copies_diff": copies,
        }
    print("RESULT" + json.dumps(result))
''')

CASES = [("sl", "uncertainty"), ("sl", "gradnorm")]


@pytest.fixture(scope="module")
def mirrored():
    proc = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(CASES)], capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-5000:]
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT")][-1]
    return json.loads(line[len("RESULT"):])


@pytest.mark.parametrize("method, weighting", CASES)
def test_mirrored_train_step_equals_single_device(mirrored, method, weighting):
    r = mirrored[weighting]
    assert r["dtype"] == "float64"
    running = [k for k in r["net_rel"] if "moving_" in k]
    assert running and len(r["net_rel"]) > len(running) > 0
    # Every variable moved (running statistics included), so equality is not vacuous; but
    # the biases of convolutions followed by BatchNorm, whose gradient is exactly 0.
    before_bn = [k for k in r["net_moved"] if k.endswith("/bias") and "head_" not in k]
    moved = {k: v for k, v in r["net_moved"].items() if k not in before_bn}
    assert before_bn and max(r["net_moved"][k] for k in before_bn) < 1e-8
    assert min(moved.values()) > 1e-6, moved
    worst = max(r["net_rel"], key=r["net_rel"].get)
    assert r["net_rel"][worst] <= 1e-5, (worst, r["net_rel"][worst])
    assert r["replica_copies_diff"] == 0.0, r["replica_copies_diff"]
    for key, value in r["weighting_rel"].items():
        assert value <= 1e-5, (key, r["weighting_rel"])
    assert max(r["weighting_moved"].values()) > 1e-6, r  # the weighting's state did change
