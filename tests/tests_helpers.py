"""Helpers shared by test modules (tiny synthetic experiments)."""

import dataclasses

from mtpsl_tf.config import ExperimentConfig

TINY = ["--dataset=synthetic", "--dataset_config=small", "--height=32", "--width=64", "--num_train=8",
        "--num_test=4", "--filters=4,4,8,8,8", "--batch_size=4", "--eval_batch_size=4", "--verbose=0",
        "--tensorboard_images=1"]
# Tests of the machinery (resume, logs, weightings, skipped steps, distribution, methods that
# do not build a mapping net) train the three-convolution `tiny` backbone: its run traces ~3x
# faster than SegNet's. SegNet itself is trained where it is the subject (parity, MTPSL, MTAN,
# export, import of the authors' checkpoints).
SMOKE = TINY + ["--backbone=tiny"]


def flags_for(method: str) -> list:
    """SMOKE, or TINY (SegNet) for `mtpsl`, whose mapping net needs SegNet's encoder (the tiny
    backbone has no mapping encoder)."""
    return TINY if method == "mtpsl" else SMOKE


def tiny_config(tmp_path, model_dir, flags=TINY, **overrides) -> ExperimentConfig:
    """A validated config for a seconds-long synthetic run from the flag lines `flags`
    (written to `tmp_path/tiny.flags`; TFDS data in `tmp_path/tfds`); overrides name any
    config field."""
    from mtpsl_tf.flags import config_from_flagfile

    flagfile = tmp_path / "tiny.flags"
    flagfile.write_text("\n".join(flags) + "\n")
    config = config_from_flagfile(str(flagfile), [f"--model_dir={model_dir}", f"--data_dir={tmp_path / 'tfds'}"])
    sections = {f.name: section for section in ("data", "model", "method", "train")
                for f in dataclasses.fields(getattr(config, section))}
    for key, value in overrides.items():
        setattr(getattr(config, sections[key]), key, value)
    return config.validate()


def checkpoint_variables(model_dir, prefix: str = "network/", optimizer_slots: bool = True) -> dict:
    """The variables under `prefix` in a model directory's latest checkpoint: name -> array
    (with or without the optimiser's slots for them)."""
    import os

    import tensorflow as tf

    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(os.path.join(str(model_dir), "checkpoints")))
    names = sorted(n for n in reader.get_variable_to_shape_map()
                   if n.startswith(prefix) and (optimizer_slots or "OPTIMIZER" not in n))
    return {n: reader.get_tensor(n) for n in names}


def built_joint_space_method(tmp_path, method_name: str, b: int = 2, size: int = 32):
    """A built joint-space method (contrastive / discriminator) on the synthetic tasks, its tiny
    SegNet and a constant one-label batch of `b` images of `size`^2 (the last image labelled
    for nothing): (method, network, batch)."""
    import numpy as np
    import tensorflow as tf

    from mtpsl_tf.data.registry import DATASETS
    from mtpsl_tf.methods.facts import build_method
    from mtpsl_tf.models.segnet import SegNet

    config = tiny_config(tmp_path, tmp_path / "m", flags=TINY + [f"--method={method_name}"])
    tasks = DATASETS.get("synthetic").tasks()
    method = build_method(config, tasks)
    net = SegNet({t.name: t.head_spec for t in tasks}, filters=[4, 4, 8, 8, 8])
    net(tf.zeros([1, size, size, 3]))
    method.build(net)
    rng = np.random.default_rng(0)
    labels = {"semantic": rng.integers(0, 13, [b, size, size]).astype("int32"),
              "depth": rng.uniform(0.5, 3, [b, size, size, 1]).astype("float32"),
              "normal": np.tile(np.array([0, 0, 1], "float32"), [b, size, size, 1])}
    masks = np.zeros([3, b], "float32")
    masks[np.arange(b - 1) % 3, np.arange(b - 1)] = 1.0
    batch = {"image": rng.uniform(size=[b, size, size, 3]).astype("float32"), "labels": labels,
             "labels_aug": labels, "label_mask": dict(zip(["semantic", "depth", "normal"], masks))}
    batch["image_aug"] = batch["image"]
    return method, net, tf.nest.map_structure(tf.constant, batch)


def jit_step_of(method, net):
    """An XLA-compiled (jit_compile=True) function of a batch: ({"tasks": ..., "extra": ...} loss
    terms, gradients of the total loss with respect to every variable group of `method`)."""
    import tensorflow as tf

    groups = method.variable_groups(net)

    @tf.function(jit_compile=True)
    def step(batch):
        b = tf.shape(batch["image"])[0]
        with tf.GradientTape() as tape:
            terms = method.loss_terms(net, batch, b, tf.constant(0.0), tf.constant(0, tf.int64))
            total = tf.add_n(list(terms.tasks.values()) + list(terms.extra.values()))
        return {"tasks": terms.tasks, "extra": terms.extra}, tape.gradient(total, groups)

    return step


def check_jit_step(tmp_path, method_name: str, term: str):
    """`jit_step_of` on `built_joint_space_method(method_name)`: the extra `term` is positive,
    every loss term and every gradient finite, and the main group gets gradients."""
    import numpy as np

    method, net, batch = built_joint_space_method(tmp_path, method_name)
    terms, grads = jit_step_of(method, net)(batch)
    assert float(terms["extra"][term]) > 0
    assert all(np.isfinite(float(v)) for v in list(terms["tasks"].values()) + list(terms["extra"].values()))
    assert any(g is not None for g in grads["main"])
    assert all(np.isfinite(g.numpy()).all() for group in grads.values() for g in group if g is not None)


def mtpsl_batch(tasks=None):
    """A two-view MTPSL batch of 2 random 32x32 NYU-v2 images (semantic, depth, normal), one
    label each: the `tasks` order decides which task each image is labelled for."""
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(0)
    b, h, w = 2, 32, 32

    def labels():
        normal = rng.normal(size=[b, h, w, 3])
        return {"semantic": tf.constant(rng.integers(-1, 13, [b, h, w]), tf.int32),
                "depth": tf.constant(rng.uniform(0.5, 5, [b, h, w, 1]), tf.float32),
                "normal": tf.constant(normal / np.linalg.norm(normal, axis=-1, keepdims=True), tf.float32)}

    names = ["semantic", "depth", "normal"] if tasks is None else [t.name for t in tasks]
    return {"image": tf.constant(rng.uniform(size=[b, h, w, 3]), tf.float32), "labels": labels(),
            "image_aug": tf.constant(rng.uniform(size=[b, h, w, 3]), tf.float32), "labels_aug": labels(),
            "label_mask": {n: tf.constant([1.0 if i % len(names) == k else 0.0 for i in range(b)])
                           for k, n in enumerate(names)},
            "index": tf.range(b, dtype=tf.int64)}


def tiny_mtpsl_model(method="mtpsl", precision="float32", remat_backbone=False, **options):
    """A tiny (widths 4,8,8,8,8, 32x32) NYU-v2 model of `method`, seeded; `options` are the
    method's (e.g. remat_mapping=True, mapping_chunks=2)."""
    import keras

    from mtpsl_tf.data.registry import DATASETS
    from mtpsl_tf.training.run import build, dtype_policy

    config = ExperimentConfig()
    config.method.method = method
    config.model.filters = "4,8,8,8,8"
    config.model.remat_backbone = remat_backbone
    config.options = dict(options)
    config.train.precision = precision
    config.validate()
    keras.utils.set_random_seed(0)
    with dtype_policy(precision):
        return build(config, DATASETS.get("nyuv2").tasks(), 32, 32, steps=10)


def mtpsl_step(model, batch, jit_compile=False):
    """(total, consistency, gradients as numpy) of one MTPSL step in a tf.function."""
    import tensorflow as tf

    def step():
        grads, terms, total = model.compute_gradients(batch)
        return grads, terms.extra["consistency"], total

    grads, consistency, total = tf.function(step, jit_compile=jit_compile)()
    return float(total), float(consistency), [g.numpy() for g in grads]


def assert_same_mtpsl_step(plain, other):
    """Gives `other` the weights of `plain` (network and mapping net), runs one MTPSL step of
    each on the same batch, and asserts equal total and consistency terms (rel 1e-6) and
    gradients (rtol 1e-4, atol 1e-5 of the largest gradient: conv biases in front of a
    training-mode BatchNorm have a true gradient of 0 and float noise)."""
    import numpy as np
    import pytest

    other.network.set_weights(plain.network.get_weights())
    other.method.mapping.set_weights(plain.method.mapping.get_weights())
    batch = mtpsl_batch(plain.method.tasks)
    total, consistency, grads = mtpsl_step(plain, batch)
    total_o, consistency_o, grads_o = mtpsl_step(other, batch)
    assert consistency > 0
    assert (total_o, consistency_o) == pytest.approx((total, consistency), rel=1e-6)
    scale = max(np.abs(g).max() for g in grads)
    for a, b in zip(grads_o, grads):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * scale)
