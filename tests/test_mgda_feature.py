"""`--weighting=mgda --mgda_on=feature` (MGDA-UB) through the training step: the weights are
the min-norm weights of each task's loss-normalised gradient of the backbone's shared
representation (computed here independently, on the same outputs), and the network follows
sum_t w_t L_t; a backbone without one shared representation (MTAN) is refused, naming the
flag. The formula itself is tested in test_weightings_formulas.py."""

import numpy as np
import pytest
import tensorflow as tf

from mtpsl_tf.config import ExperimentConfig
from test_weightings_formulas import _np_min_norm_fw

B, H, W = 2, 32, 32


def _model(backbone="segnet", setting="onelabel"):
    import keras

    from mtpsl_tf.data.registry import DATASETS
    from mtpsl_tf.training.run import build, complete_options

    keras.utils.set_random_seed(4)
    config = ExperimentConfig()
    config.data.dataset, config.data.batch_size, config.data.setting = "synthetic", B, setting
    config.model.backbone, config.model.filters = backbone, "4,4,8,8,8"
    config.method.method, config.method.weighting = "sl", "mgda"
    config.options = complete_options(config)
    return build(config, DATASETS.get("synthetic").tasks(), H, W, 1)


def _batch(tasks):
    rng = np.random.default_rng(2)
    normal = rng.normal(size=(B, H, W, 3)).astype(np.float32)
    normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
    return tf.nest.map_structure(tf.constant, {
        "image": rng.uniform(size=(B, H, W, 3)).astype(np.float32),
        "labels": {"semantic": rng.integers(-1, tasks[0].channels, size=(B, H, W)).astype(np.int32),
                   "depth": rng.uniform(0.5, 5.0, size=(B, H, W, 1)).astype(np.float32), "normal": normal},
        # 2 images, 3 tasks: semantic on both, depth on one, normal on none (absent: weight 0)
        "label_mask": {"semantic": np.array([1, 1], np.float32), "depth": np.array([0, 1], np.float32),
                       "normal": np.array([0, 0], np.float32)},
        "index": np.arange(B, dtype=np.int64)})


def test_feature_weights_follow_the_shared_representation_gradients():
    model = _model()
    weighting = model.method.weighting
    assert weighting.gradient_source == "shared_feature"
    names = weighting.task_names
    batch = _batch(model.tasks)
    variables = model.network.trainable_variables
    grads, terms, total = model.compute_gradients(batch)  # no optimiser update: same weights below
    got = np.array([float(weighting.weights()[n]) for n in names])

    # Independently: the same training-mode forward (same weights, same batch statistics),
    # each task's gradient of the "shared" output, normalised by its loss.
    with tf.GradientTape(persistent=True) as tape:
        outputs = model.network(batch["image"], training=True)
        losses = model.method.loss_terms(lambda images, training: outputs, batch, B, 0.0, 0).tasks
        reweighted = tf.add_n([float(w) * losses[n] for w, n in zip(got, names)])
    rows = np.stack([np.reshape(np.zeros(outputs["shared"].shape) if g is None else g.numpy(), [-1])
                     for g in (tape.gradient(losses[n], outputs["shared"]) for n in names)]).astype(np.float64)
    loss = np.array([float(losses[n]) for n in names])
    assert loss[2] == 0.0 and loss[0] > 0 and loss[1] > 0
    normalised = rows / np.maximum(loss, 1e-12)[:, None]
    want = _np_min_norm_fw(normalised @ normalised.T, [1, 1, 0])
    np.testing.assert_allclose(got, want, atol=1e-4)
    assert got[2] == 0.0 and 0.0 < got[0] < 1.0  # a genuine mixture of the two present tasks
    # The network (heads included) follows sum_t w_t L_t with w held constant.
    assert float(total) == pytest.approx(float(got @ loss), rel=1e-5)
    expected = tape.gradient(reweighted, variables)
    for v, a, b in zip(variables, grads, expected):
        a = np.zeros(v.shape) if a is None else np.asarray(a)
        b = np.zeros(v.shape) if b is None else b.numpy()
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-6 * max(1.0, np.abs(b).max()), err_msg=v.path)


def test_feature_mode_under_mixed_float16():
    """The shared representation is float16 there (the heads' own input, not a float32 copy,
    which the losses would not reach): its gradients exist and give convex weights."""
    from mtpsl_tf.training.run import dtype_policy

    with dtype_policy("mixed_float16"):
        model = _model()
        assert model.network(tf.zeros([1, H, W, 3]))["shared"].dtype == tf.float16
        model.compute_gradients(_batch(model.tasks))
    got = np.array([float(model.method.weighting.weights()[n]) for n in model.method.weighting.task_names])
    assert np.isfinite(got).all() and got.sum() == pytest.approx(1.0, abs=1e-5) and got[2] == 0.0
    assert 0.0 < got[0] < 1.0, got  # the semantic and depth gradients reached the solver


def test_feature_mode_refuses_a_backbone_without_a_shared_representation():
    from mtpsl_tf.data.registry import DATASETS
    from mtpsl_tf.methods.facts import build_method, complete_options
    from mtpsl_tf.models.segnet_mtan import SegNetMTAN
    from mtpsl_tf.training.model import MultiTaskModel

    config = ExperimentConfig()
    config.method.method, config.method.weighting, config.model.backbone = "sl", "mgda", "segnet_mtan"
    config.options = complete_options(config)
    tasks = DATASETS.get("synthetic").tasks()
    network = SegNetMTAN({t.name: t.head_spec for t in tasks}, filters=[4, 4, 8, 8, 8])  # unbuilt: cheap
    with pytest.raises(ValueError, match="--mgda_on=feature .* SegNetMTAN has none .* --mgda_on=parameters"):
        MultiTaskModel(network, build_method(config, tasks), tasks, B, 1)
