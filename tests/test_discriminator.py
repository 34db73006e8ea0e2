"""--method=discriminator: GAN losses on hand-made logits (numpy transcription), the
discriminator layer (frozen weights, pair/feature conditioning), the separation of the two
terms' gradients, and a tiny end-to-end run under mixed_float16, the step under XLA."""

import json

import numpy as np
import pytest
import tensorflow as tf

from mtpsl_tf.methods.joint_space.gan import JointSpaceDiscriminator, discriminator_loss, generator_loss
from tests_helpers import TINY, check_jit_step, tiny_config

REAL = np.array([2.0, -0.5, 0.0], np.float32)
FAKE = np.array([-1.0, 0.3, 4.0], np.float32)


def _softplus(x):
    return np.log1p(np.exp(x))


def test_non_saturating_losses():
    np.testing.assert_allclose(discriminator_loss(REAL, FAKE, "non_saturating").numpy(),
                               -np.log(1 / (1 + np.exp(-REAL))) - np.log(1 - 1 / (1 + np.exp(-FAKE))), rtol=1e-6)
    np.testing.assert_allclose(generator_loss(FAKE, "non_saturating").numpy(), _softplus(-FAKE), rtol=1e-6)
    assert generator_loss(FAKE, "non_saturating").numpy()[0] == pytest.approx(np.log(1 + np.e), rel=1e-6)


def test_least_squares_losses():
    np.testing.assert_allclose(discriminator_loss(REAL, FAKE, "least_squares").numpy(),
                               0.5 * ((REAL - 1) ** 2 + FAKE ** 2), rtol=1e-6)
    np.testing.assert_allclose(generator_loss(FAKE, "least_squares").numpy(), [2.0, 0.245, 4.5], rtol=1e-6)
    with pytest.raises(ValueError, match="GAN loss"):
        generator_loss(FAKE, "wasserstein")


def _disc(use_feature=True):
    d = JointSpaceDiscriminator(3, 2, width=4, use_feature=use_feature)
    d.build()
    return d


def test_discriminator_matches_numpy_and_frozen_stops_weight_gradients():
    keras_seed = np.random.default_rng(0)
    d = _disc(use_feature=False)
    for w in d.weights:
        w.assign(keras_seed.normal(size=w.shape).astype("float32"))
    x = tf.constant(keras_seed.normal(size=[2, 1, 1, 3]).astype("float32"))
    pair = tf.constant([0, 1])
    # 1x1 spatial: the 3x3 conv sees only its centre tap.
    k1, b1, k2, b2 = (w.numpy() for w in (d.kernel_1, d.bias_1, d.kernel_2, d.bias_2))
    inp = np.concatenate([x.numpy()[:, 0, 0], np.eye(2)[[0, 1]]], axis=1)
    h = inp @ k1[1, 1] + b1
    h = np.where(h > 0, h, 0.2 * h)
    np.testing.assert_allclose(d(x, pair).numpy(), (h @ k2[0, 0] + b2)[:, 0], rtol=1e-5)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        frozen = tf.reduce_sum(d(x, pair, frozen=True))
        live = tf.reduce_sum(d(x, pair))
    assert all(g is None for g in tape.gradient(frozen, d.trainable_variables))
    assert all(g is not None for g in tape.gradient(live, d.trainable_variables))
    np.testing.assert_allclose(tape.gradient(frozen, x).numpy(), tape.gradient(live, x).numpy(), rtol=1e-6)


def test_discriminator_needs_feature_when_conditioned():
    with pytest.raises(ValueError, match="feature"):
        _disc()(tf.zeros([1, 2, 2, 3]), tf.constant([0]))


def test_terms_train_separate_parameters(tmp_path):
    """The adversarial term moves the network and mapping net, not the discriminator; the
    discriminator's term moves only the discriminator."""
    from mtpsl_tf.data.registry import DATASETS
    from mtpsl_tf.methods.facts import build_method
    from mtpsl_tf.models.segnet import SegNet

    config = tiny_config(tmp_path, tmp_path / "m", flags=TINY + ["--method=discriminator"])
    tasks = DATASETS.get("synthetic").tasks()
    method = build_method(config, tasks)
    net = SegNet({t.name: t.head_spec for t in tasks}, filters=[4, 4, 8, 8, 8])
    net(tf.zeros([1, 32, 32, 3]))
    method.build(net)
    rng = np.random.default_rng(0)
    b = 2
    labels = {"semantic": rng.integers(0, 13, [b, 32, 32]).astype("int32"),
              "depth": rng.uniform(0.5, 3, [b, 32, 32, 1]).astype("float32"),
              "normal": np.tile(np.array([0, 0, 1], "float32"), [b, 32, 32, 1])}
    batch = {"image": rng.uniform(size=[b, 32, 32, 3]).astype("float32"), "labels": labels, "labels_aug": labels,
             "label_mask": {"semantic": np.array([1, 0], "float32"), "depth": np.array([0, 1], "float32"),
                            "normal": np.array([0, 0], "float32")}}
    batch["image_aug"] = batch["image"]
    batch = tf.nest.map_structure(tf.constant, batch)
    groups = method.variable_groups(net)
    assert set(groups) == {"main", "film", "discriminator"}
    with tf.GradientTape(persistent=True) as tape:
        terms = method.loss_terms(net, batch, b, tf.constant(0.0), tf.constant(0, tf.int64))
    adv, own = terms.extra["adversarial"], terms.extra["discriminator"]
    assert float(adv) > 0 and float(own) > 0
    assert all(g is None for g in tape.gradient(adv, groups["discriminator"]))
    assert any(g is not None for g in tape.gradient(adv, groups["main"]))
    assert all(g is not None for g in tape.gradient(own, groups["discriminator"]))
    assert all(g is None for g in tape.gradient(own, groups["main"] + groups["film"]))


def test_discriminator_trains_under_mixed_float16(tmp_path):
    """train.py's path (run) end to end, with loss scaling (the smoke test of mixed precision)."""
    from mtpsl_tf.training.run import run

    model_dir = tmp_path / "run"
    run(tiny_config(tmp_path, model_dir, flags=TINY + [
        "--method=discriminator", "--epochs=1", "--precision=mixed_float16", "--width=32"]))
    train = json.loads((model_dir / "history.json").read_text())[0]["train"]
    assert train["adversarial"] > 0 and train["discriminator"] > 0 and np.isfinite(train["total"])
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(model_dir / "checkpoints")))
    names = list(reader.get_variable_to_shape_map())
    assert any(n.startswith("optimizer_discriminator/") for n in names)
    assert any("kernel_1" in n and n.startswith("method_1/") for n in names), [n for n in names if "method_" in n]


# Slow (~35 s of CI): `python benchmarks/train_step.py --method=discriminator` compiles the whole step
# with XLA (its default) at NYU-v2 size; `pytest -m slow` runs this one.
@pytest.mark.slow
def test_discriminator_step_compiles_under_xla(tmp_path):
    """The loss terms and the gradients of every variable group compile with jit_compile=True
    (one-label batch with an unlabelled image) and are finite."""
    check_jit_step(tmp_path, "discriminator", "adversarial")
