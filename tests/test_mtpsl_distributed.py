"""MTPSL under MirroredStrategy (2 logical CPUs) = one device: loss and gradients.

Runs in a subprocess because logical devices must be configured before TensorFlow
initialises. The SegNet runs in inference mode (its BatchNorm would otherwise use
per-replica batch statistics, as PyTorch DataParallel does, which legitimately differ);
the mapping net runs in training mode, whose per-item statistics do not depend on how the
batch is split. Tasks without Gumbel sampling (whose noise is per replica): depth + normal on
the SegNet; PASCAL's normals + edge (per-image loss weights) and depth on resnet18_aspp (the
ResNet-18 mapping net).
"""

import textwrap

import pytest

from mirrored_check import run_mirrored_script

SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

    from mirrored_check import assert_gradients_close, replica_sums
    from mtpsl_tf.config import ExperimentConfig
    from mtpsl_tf.methods.mtpsl import MTPSL
    from mtpsl_tf.models.registry import BACKBONES
    from mtpsl_tf.tasks.depth import Depth
    from mtpsl_tf.tasks.edge import Edge
    from mtpsl_tf.tasks.normal import Normal

    import keras
    keras.utils.set_random_seed(0)  # deterministic initial weights
    config = ExperimentConfig()
    config.method.method, config.data.setting = "mtpsl", "onelabel"
    backbone = sys.argv[1]
    config.model.backbone = backbone
    tasks = [Depth(), Normal()] if backbone == "segnet" else [Normal("normals", loss="l1"), Edge(), Depth()]
    method = MTPSL(config, tasks)
    network = BACKBONES.get(backbone)({t.name: t.head_spec for t in tasks}, filters=[4, 4, 8, 8, 8])
    network(tf.zeros([1, 32, 32, 3]))
    method.build(network)
    groups = method.variable_groups(network)
    variables = groups["main"] + groups["film"]
    infer = lambda x, training: network(x, training=False)

    rng = np.random.default_rng(0)
    def normals(n):
        v = rng.normal(size=[n, 32, 32, 3]).astype("float32")
        return v / np.linalg.norm(v, axis=-1, keepdims=True)
    def binary(n):
        return rng.integers(-1, 2, [n, 32, 32, 1]).astype("float32")
    B = 4
    if backbone == "segnet":
        def labels():
            return {"depth": rng.uniform(0.5, 3, [B, 32, 32, 1]).astype("float32"), "normal": normals(B)}
        mask = {"depth": np.array([1, 0, 0, 1], "float32"), "normal": np.array([0, 1, 1, 0], "float32")}
    else:
        def labels():
            return {"normals": normals(B), "edge": binary(B),
                    "depth": rng.uniform(0.5, 3, [B, 32, 32, 1]).astype("float32")}
        mask = {"normals": np.array([1, 0, 0, 1], "float32"), "edge": np.array([0, 1, 0, 1], "float32"),
                "depth": np.array([0, 0, 1, 0], "float32")}
    batch = {
        "image": rng.uniform(size=[B, 32, 32, 3]).astype("float32"),
        "image_aug": rng.uniform(size=[B, 32, 32, 3]).astype("float32"),
        "labels": labels(), "labels_aug": labels(), "label_mask": mask,
    }
    batch = tf.nest.map_structure(tf.constant, batch)

    def step(b):
        with tf.GradientTape() as tape:
            parts = method.losses(infer, b, B, tf.constant(0.0), tf.constant(0, tf.int64))
        return parts["total"], parts["consistency"], tape.gradient(parts["total"], variables)

    total_1, con_1, grads_1 = step(batch)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    total_2, con_2, grads_2 = replica_sums(strategy, step, batch, 2)
    assert float(con_1) > 0, "no active pair: the test would be vacuous"
    np.testing.assert_allclose(float(total_2), float(total_1), rtol=1e-5)
    np.testing.assert_allclose(float(con_2), float(con_1), rtol=1e-5)
    assert all(np.isfinite(tf.convert_to_tensor(g).numpy()).all() for g in grads_1 + grads_2), "non-finite gradient"
    worst = assert_gradients_close(variables, grads_1, grads_2)
    print("OK", float(total_1), float(con_1), worst)
""")


@pytest.mark.parametrize("backbone", ["segnet", "resnet18_aspp"])
def test_mirrored_mtpsl_equals_single_device(backbone):
    run_mirrored_script(SCRIPT, backbone)
