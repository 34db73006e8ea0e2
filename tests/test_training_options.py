"""Loss weights, the poly schedule, Adam with coupled L2, and their flags."""

import numpy as np
import pytest
import tensorflow as tf

from mtpsl_tf.methods.base import resolve_loss_weights
from mtpsl_tf.methods.supervised import weighted_sum
from mtpsl_tf.optim.optimizers import AdamL2
from mtpsl_tf.optim.schedules import PolyDecay
from tests_helpers import tiny_config


def test_poly_decay_matches_reference_formula():
    schedule = PolyDecay(1e-4, steps_per_epoch=10, epochs=100)
    for step, epoch in ((0, 0), (9, 0), (10, 1), (505, 50), (999, 99)):
        assert float(schedule(step)) == pytest.approx(1e-4 * (1 - epoch / 100) ** 0.9, rel=1e-6)
    assert PolyDecay.from_config(schedule.get_config()).get_config() == schedule.get_config()


def test_adam_l2_is_torch_adam_weight_decay():
    """One step by hand: g' = g + l2*w; m = 0.1 g'; v = 0.001 g'^2; w -= lr * m_hat / (sqrt(v_hat) + eps)."""
    w0, g, l2, lr, eps = np.array([1.0, -2.0, 0.5]), np.array([0.3, 0.0, -1e-5]), 0.1, 0.01, 1e-8
    var = tf.Variable(w0.astype(np.float32))
    opt = AdamL2(l2=l2, learning_rate=lr, epsilon=eps)
    opt.apply_gradients([(tf.constant(g, tf.float32), var)])
    g2 = g + l2 * w0
    m_hat, v_hat = g2, g2 ** 2
    expected = w0 - lr * m_hat / (np.sqrt(v_hat) + eps)
    np.testing.assert_allclose(var.numpy(), expected, rtol=1e-5)
    # l2 = 0 is plain Adam: the zero gradient leaves w unchanged.
    var0 = tf.Variable(w0.astype(np.float32))
    AdamL2(l2=0.0, learning_rate=lr).apply_gradients([(tf.zeros(3), var0)])
    np.testing.assert_allclose(var0.numpy(), w0)
    assert AdamL2.from_config(opt.get_config()).l2 == l2


def test_adam_l2_fused_update_is_adams_formula_over_steps():
    """Three steps of the fused kernel against Adam transcribed in numpy (float64) and against
    Keras' Adam: the same trajectory within float32 rounding."""
    import keras

    rng = np.random.default_rng(0)
    w0, grads = rng.normal(size=6), rng.normal(size=(3, 6))
    lr, b1, b2, eps = 0.01, 0.9, 0.999, 1e-8
    fused, plain = tf.Variable(w0.astype(np.float32)), tf.Variable(w0.astype(np.float32))
    opt = AdamL2(learning_rate=lr, beta_1=b1, beta_2=b2, epsilon=eps)
    ref = keras.optimizers.Adam(learning_rate=lr, beta_1=b1, beta_2=b2, epsilon=eps)
    w, m, v = w0.copy(), np.zeros(6), np.zeros(6)
    for t, g in enumerate(grads, start=1):
        opt.apply_gradients([(tf.constant(g, tf.float32), fused)])
        ref.apply_gradients([(tf.constant(g, tf.float32), plain)])
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g ** 2
        w = w - lr * np.sqrt(1 - b2 ** t) / (1 - b1 ** t) * m / (np.sqrt(v) + eps)
        np.testing.assert_allclose(fused.numpy(), w, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(fused.numpy(), plain.numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(opt._momentums[0].numpy(), m, rtol=1e-5)  # the first moment, checkpointed


def test_loss_weights_default_override_and_errors(tmp_path):
    from mtpsl_tf.data.registry import DATASETS

    config = tiny_config(tmp_path, tmp_path / "m")
    tasks = DATASETS.get("synthetic").tasks()
    assert resolve_loss_weights(config, tasks) == {"semantic": 1.0, "depth": 1.0, "normal": 1.0}
    config.method.loss_weights = "depth=2.5"
    assert resolve_loss_weights(config, tasks) == {"semantic": 1.0, "depth": 2.5, "normal": 1.0}
    config.method.loss_weights = "edge=3"
    with pytest.raises(ValueError, match="--loss_weights names unknown tasks"):
        resolve_loss_weights(config, tasks)
    for bad in ("depth", "depth=x", "depth=-1", "=2"):
        config.method.loss_weights = bad
        with pytest.raises(ValueError, match="--loss_weights"):
            config.validate()


def test_weighted_sum():
    parts = {"a_loss": tf.constant(2.0), "b_loss": tf.constant(3.0)}
    assert float(weighted_sum(parts, {"a": 1.0, "b": 10.0})) == pytest.approx(32.0)


def test_training_flag_validation(tmp_path):
    config = tiny_config(tmp_path, tmp_path / "m")
    config.train.lr_schedule = "cosine"
    with pytest.raises(ValueError, match="lr_schedule"):
        config.validate()
    config.train.lr_schedule = "poly"
    config.train.weight_decay = -1.0
    with pytest.raises(ValueError, match="--weight_decay"):
        config.validate()


def test_segnet_rejects_pretrained():
    from mtpsl_tf.models.registry import BACKBONES

    with pytest.raises(ValueError, match="--pretrained='w.pth'.*from scratch"):
        BACKBONES.get("segnet")(heads={"depth": {"channels": 1, "activation": "linear"}}, pretrained="w.pth")


def test_stl_loss_is_unweighted(tmp_path):
    from mtpsl_tf.methods.all import METHODS
    from mtpsl_tf.data.registry import DATASETS

    config = tiny_config(tmp_path, tmp_path / "m", method="stl", stl_task="depth", loss_weights="depth=1,normal=7")
    method = METHODS.get("stl")(config, DATASETS.get("synthetic").tasks())
    assert method.loss_weights == {"depth": 1.0}
    config.method.loss_weights = "depth=4"
    assert METHODS.get("stl")(config, DATASETS.get("synthetic").tasks()).loss_weights == {"depth": 4.0}


@pytest.mark.slow  # CI time; `pytest -m slow` runs it (PASCAL end-to-end tests cover resnet18_aspp training)
def test_resnet18_aspp_trains_evaluates_and_resumes_on_synthetic(tmp_path):
    """The PASCAL backbone through the whole run (tiny widths): SL with poly lr, L2 and weights."""
    import json

    from mtpsl_tf.training.restore import load_network
    from mtpsl_tf.training.run import run

    model_dir = tmp_path / "resnet"
    kwargs = dict(backbone="resnet18_aspp", filters="4,4,8,8,8", lr_schedule="poly", weight_decay=1e-4,
                  loss_weights="normal=10")
    report = run(tiny_config(tmp_path, model_dir, epochs=1, **kwargs))
    assert np.isfinite(report["last"]["metrics"]["depth/abs_err"])
    config = json.loads((model_dir / "config.json").read_text())
    assert config["model"]["backbone"] == "resnet18_aspp" and config["train"]["lr_schedule"] == "poly"
    run(tiny_config(tmp_path, model_dir, epochs=2, **kwargs))
    history = json.loads((model_dir / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    restored = load_network(str(model_dir))
    assert restored.network.get_config()["aspp_channels"] == 4
    # Deployable: SavedModel, float32 and int8 LiteRT verify against Keras (int8 ran into a
    # LiteRT abort before the stem's max-pool padded with 0 instead of -3.4e38).
    from mtpsl_export.export import export_model

    report = export_model(str(model_dir), str(tmp_path / "export"), "saved_model,tflite,tflite_int8",
                          num_verify=2, num_calibration=2)
    assert all(entry["passed"] for entry in report["formats"].values())
    assert report["formats"]["tflite_int8"]["xnnpack_delegated_nodes"] >= 1
    assert "xnnpack_error" not in report["formats"]["tflite_int8"]


def test_xla_with_dilated_backbone_on_cpu_warns(tmp_path, caplog):
    import logging

    from mtpsl_tf.data.registry import DATASETS
    from mtpsl_tf.training.run import build

    config = tiny_config(tmp_path, tmp_path / "m", backbone="resnet18_aspp", xla=True)
    with caplog.at_level(logging.WARNING, logger="mtpsl_tf"):
        build(config, DATASETS.get("synthetic").tasks(), 32, 64, steps=1)
    assert "consider --noxla" in caplog.text
    caplog.clear()
    config.model.backbone = "segnet"
    with caplog.at_level(logging.WARNING, logger="mtpsl_tf"):
        build(config, DATASETS.get("synthetic").tasks(), 32, 64, steps=1)
    assert "consider --noxla" not in caplog.text
