"""Loss normalisation under MirroredStrategy: replica gradients summed = single device.

Runs in a subprocess because the 2 logical CPU devices must be configured before
TensorFlow initialises its devices (the test process has already done so).
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

    import keras
    from mtpsl_tf.methods.supervised import masked_task_loss
    from mtpsl_tf.models.segnet import SegNet
    from mtpsl_tf.tasks.depth import Depth
    from mtpsl_tf.tasks.normal import Normal
    from mtpsl_tf.tasks.semantic import Semantic

    B, H, W = 4, 32, 32
    TASKS = [Semantic(5), Depth(), Normal()]
    HEADS = {t.name: t.head_spec for t in TASKS}
    rng = np.random.default_rng(0)
    label = rng.integers(-1, 5, size=(B, H, W)).astype(np.int32)
    depth = rng.uniform(0.5, 5.0, size=(B, H, W, 1)).astype(np.float32)
    depth[:, :, :10] = 0.0          # invalid columns
    depth[3] = 0.0                  # an image with no valid depth at all
    normal = rng.normal(size=(B, H, W, 3)).astype(np.float32)
    normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
    normal[:, 20:] = 0.0            # invalid rows
    BATCH = {
        "image": rng.uniform(size=(B, H, W, 3)).astype(np.float32),
        "labels": {"semantic": label, "depth": depth, "normal": normal},
        # some images unlabelled for some tasks, each replica half differs
        "label_mask": {"semantic": np.array([1, 0, 1, 1], np.float32),
                       "depth": np.array([0, 1, 1, 1], np.float32),
                       "normal": np.array([1, 1, 0, 0], np.float32)},
    }

    def loss_fn(model, batch, reduction):
        # Inference mode: BatchNorm uses running statistics, so outputs do not depend on how
        # the batch is split and only the loss normalisation is under test.
        out = model(batch["image"], training=False)
        return tf.add_n([masked_task_loss(t, out[t.name], batch["labels"][t.name],
                                          batch["label_mask"][t.name], B, reduction) for t in TASKS])

    def single_device(model, reduction):
        with tf.GradientTape() as tape:
            loss = loss_fn(model, tf.nest.map_structure(tf.constant, BATCH), reduction)
        return loss, tape.gradient(loss, model.trainable_variables)

    keras.utils.set_random_seed(1)
    single = SegNet(HEADS, filters=[4, 4, 8, 8, 8])
    single(tf.zeros([1, H, W, 3]))
    # Non-trivial BN running statistics so inference mode is not an identity BN.
    for v in single.non_trainable_variables:
        v.assign(rng.uniform(0.5, 1.5, size=v.shape).astype(np.float32) if "variance" in v.path
                 else rng.normal(0.0, 0.1, size=v.shape).astype(np.float32))

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert strategy.num_replicas_in_sync == 2
    with strategy.scope():
        mirrored = SegNet(HEADS, filters=[4, 4, 8, 8, 8])
        mirrored(tf.zeros([1, H, W, 3]))
    mirrored.set_weights(single.get_weights())

    def local_share(context):
        n = B // context.num_replicas_in_sync
        start = context.replica_id_in_sync_group * n
        return tf.nest.map_structure(lambda x: tf.constant(x[start:start + n]), BATCH)

    dist_batch = strategy.experimental_distribute_values_from_function(local_share)

    def distributed(reduction):
        @tf.function
        def step(batch):
            def replica_step(local):
                with tf.GradientTape() as tape:
                    loss = loss_fn(mirrored, local, reduction)
                return loss, tape.gradient(loss, mirrored.trainable_variables)
            loss, grads = strategy.run(replica_step, args=(batch,))
            reduce = lambda x: strategy.reduce(tf.distribute.ReduceOp.SUM, x, axis=None)
            return reduce(loss), [reduce(g) for g in grads]
        return step(dist_batch)

    report = {}
    for reduction in ("per_image", "batch"):
        loss_1, grads_1 = single_device(single, reduction)
        loss_2, grads_2 = distributed(reduction)
        report[reduction] = {
            "loss": [float(loss_1), float(loss_2)],
            "grad_names": [v.path for v in single.trainable_variables],
            "grad_max_abs": [float(np.abs(g.numpy()).max()) for g in grads_1],
            "grad_max_diff": [float(np.abs(a.numpy() - b.numpy()).max()) for a, b in zip(grads_1, grads_2)],
        }
    print("RESULT " + json.dumps(report))
''')


@pytest.fixture(scope="module")
def report():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"subprocess failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return json.loads(lines[-1][len("RESULT "):])


@pytest.mark.parametrize("reduction", ["per_image", "batch"])
def test_replica_sum_matches_single_device(report, reduction):
    """Inference-mode forward (training=False) on purpose: BatchNorm batch statistics are
    per replica (as PyTorch DataParallel), so training-mode outputs legitimately depend on
    the split; with running statistics the only difference left is the loss normalisation
    (local sums over the GLOBAL batch for per_image, all-reduced valid count for batch)."""
    result = report[reduction]
    single, summed = result["loss"]
    assert single > 0
    np.testing.assert_allclose(summed, single, rtol=1e-5)
    scale = max(result["grad_max_abs"])
    assert 0.1 < scale < 10  # gradients of order 1, so an absolute tolerance is meaningful
    worst = max(result["grad_max_diff"])
    assert worst <= 1e-5, (worst, scale)  # a wrong normalisation is off by ~scale
    assert len(result["grad_names"]) == len(result["grad_max_diff"]) > 50
