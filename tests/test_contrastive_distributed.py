"""--method=contrastive under MirroredStrategy (2 logical CPUs) = one device, WITH
cross-replica negatives: loss and gradients (gathered label embeddings get the replica-summed
gradient). With --contrastive_scope=replica the negatives of the other replica are lost and
the loss differs, so the equality is not vacuous.

Pattern of tests/test_mtpsl_distributed.py: subprocess (logical devices), SegNet in inference
mode, depth + normal tasks (no per-replica Gumbel noise); image i's only negative lives on
the other replica (same pair).
"""

import textwrap

from mirrored_check import run_mirrored_script

SCRIPT = textwrap.dedent("""
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

    import keras
    from mirrored_check import assert_gradients_close, replica_sums
    from mtpsl_tf.config import ExperimentConfig
    from mtpsl_tf.methods.joint_space.contrastive import ContrastiveLoss
    from mtpsl_tf.models.segnet import SegNet
    from mtpsl_tf.tasks.depth import Depth
    from mtpsl_tf.tasks.normal import Normal

    tasks = [Depth(), Normal()]

    def make(scope):
        keras.utils.set_random_seed(0)  # the same initial weights for both methods
        config = ExperimentConfig()
        config.method.method, config.data.setting = "contrastive", "onelabel"
        config.options = {"contrastive_scope": scope, "temperature": 0.5}
        method = ContrastiveLoss(config, tasks)
        network = SegNet({t.name: t.head_spec for t in tasks}, filters=[4, 4, 8, 8, 8])
        network(tf.zeros([1, 32, 32, 3]))
        method.build(network)
        groups = method.variable_groups(network)
        return method, network, groups["main"] + groups["film"]

    rng = np.random.default_rng(0)
    def normals(n):
        v = rng.normal(size=[n, 32, 32, 3]).astype("float32")
        return v / np.linalg.norm(v, axis=-1, keepdims=True)
    B = 4
    batch = {
        "image": rng.uniform(size=[B, 32, 32, 3]).astype("float32"),
        "image_aug": rng.uniform(size=[B, 32, 32, 3]).astype("float32"),
        "labels": {"depth": rng.uniform(0.5, 3, [B, 32, 32, 1]).astype("float32"), "normal": normals(B)},
        "labels_aug": {"depth": rng.uniform(0.5, 3, [B, 32, 32, 1]).astype("float32"), "normal": normals(B)},
        "label_mask": {"depth": np.array([1, 0, 0, 1], "float32"), "normal": np.array([0, 1, 1, 0], "float32")},
    }
    batch = tf.nest.map_structure(tf.constant, batch)

    def stepper(method, network, variables):
        infer = lambda x, training: network(x, training=False)
        def step(b):
            with tf.GradientTape() as tape:
                parts = method.losses(infer, b, B, tf.constant(0.0), tf.constant(0, tf.int64))
            return parts["total"], parts["contrastive"], tape.gradient(parts["total"], variables)
        return step

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    def mirrored(step):
        return replica_sums(strategy, step, batch, 2)

    method, network, variables = make("global")
    step = stepper(method, network, variables)
    total_1, con_1, grads_1 = step(batch)
    total_2, con_2, grads_2 = mirrored(step)
    method_r, network_r, variables_r = make("replica")
    _, con_r, _ = mirrored(stepper(method_r, network_r, variables_r))

    assert float(con_1) > 0
    assert abs(float(con_r) - float(con_1)) > 1e-3 * abs(float(con_1)), (float(con_r), float(con_1))
    np.testing.assert_allclose(float(total_2), float(total_1), rtol=1e-5)
    np.testing.assert_allclose(float(con_2), float(con_1), rtol=1e-5)
    assert all(np.isfinite(tf.convert_to_tensor(g).numpy()).all() for g in grads_1 + grads_2), "non-finite gradient"
    assert_gradients_close(variables, grads_1, grads_2)
    print("OK", float(total_1), float(con_1), float(con_r))
""")


def test_mirrored_contrastive_with_global_negatives_equals_single_device():
    run_mirrored_script(SCRIPT)
