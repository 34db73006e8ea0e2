"""The weightings through the train.py path (flags -> config -> run): one loss-based and
gradient-based weightings with `sl` and `mtpsl` in the one-label setting, the weights logged
(TensorBoard per step, history.json per epoch), their state checkpointed and resumed exactly."""

import json

import numpy as np
import pytest
import tensorflow as tf

from tests_helpers import TINY, tiny_config

TASKS = ("semantic", "depth", "normal")


def _checkpoint(model_dir, prefix):
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(model_dir / "checkpoints")))
    names = sorted(n for n in reader.get_variable_to_shape_map() if n.startswith(prefix) and "OPTIMIZER" not in n)
    return {n: reader.get_tensor(n) for n in names}


def _step_scalars(model_dir):
    """tag -> values of the per-step TensorBoard scalars in logs/steps."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(model_dir / "logs" / "steps"), size_guidance={"tensors": 0})
    acc.Reload()
    return {tag: [float(tf.make_ndarray(e.tensor_proto)) for e in acc.Tensors(tag)] for tag in acc.Tags()["tensors"]}


@pytest.mark.parametrize("method,weighting,stateful", [("sl", "uncertainty", True), ("sl", "mgda", False),
                                                       pytest.param("mtpsl", "uncertainty", True, marks=pytest.mark.slow),
                                                       ("mtpsl", "gradnorm", True)])
def test_weighting_trains_and_logs_its_weights(tmp_path, method, weighting, stateful):
    from mtpsl_tf.training.run import run

    model_dir = tmp_path / "run"
    report = run(tiny_config(tmp_path, model_dir, flags=TINY + [
        f"--method={method}", f"--weighting={weighting}", "--setting=onelabel", "--epochs=1"]))
    assert np.isfinite(list(report["last"]["metrics"].values())).all()
    train = json.loads((model_dir / "history.json").read_text())[0]["train"]
    weights = np.array([train[f"weight/{t}"] for t in TASKS])
    assert np.isfinite(weights).all() and (weights > 0).any()
    steps = _step_scalars(model_dir)
    assert {f"weight/{t}" for t in TASKS} <= set(steps)
    assert len(steps["weight/depth"]) == 2  # 8 images, batch 4: a value per step
    # The weighting's variables (log-variances, GradNorm's weights and first losses) are
    # checkpointed; MGDA's weights are recomputed every step and have no state.
    assert bool(_checkpoint(model_dir, "weighting/")) == stateful


def test_fixed_logs_no_weights(tmp_path):
    from mtpsl_tf.training.run import run

    model_dir = tmp_path / "run"
    run(tiny_config(tmp_path, model_dir, flags=TINY + ["--epochs=1"]))
    train = json.loads((model_dir / "history.json").read_text())[0]["train"]
    assert not [k for k in train if k.startswith("weight/")]
    assert not (model_dir / "logs" / "steps").exists()


@pytest.mark.parametrize("weighting,epochs", [("uncertainty", 2), ("dwa", 3)])
def test_weighting_state_resumes_exactly(tmp_path, weighting, epochs):
    """`epochs` straight == `epochs - 1` then 1 more: the network, the weighting's variables
    and the logged weights (dwa's third-epoch weights need the restored epoch means)."""
    from mtpsl_tf.training.run import run

    flags = TINY + [f"--weighting={weighting}", "--setting=onelabel"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run(tiny_config(tmp_path, straight, flags=flags + [f"--epochs={epochs}"]))
    run(tiny_config(tmp_path, resumed, flags=flags + [f"--epochs={epochs - 1}"]))
    run(tiny_config(tmp_path, resumed, flags=flags + [f"--epochs={epochs}"]))
    for prefix in ("network/", "weighting/"):
        a, b = _checkpoint(straight, prefix), _checkpoint(resumed, prefix)
        assert a.keys() == b.keys() and a
        for name in a:
            np.testing.assert_allclose(a[name], b[name], rtol=1e-4, atol=1e-5, err_msg=name)
    last = [json.loads((d / "history.json").read_text())[-1]["train"] for d in (straight, resumed)]
    got = [np.array([h[f"weight/{t}"] for t in TASKS]) for h in last]
    np.testing.assert_allclose(got[0], got[1], rtol=1e-5)
    if weighting == "dwa":
        assert not np.allclose(got[0], 1.0)  # the third epoch used loss-ratio weights


@pytest.mark.parametrize("weighting", [pytest.param("dwa", marks=pytest.mark.slow), "pcgrad", "cagrad", "famo"])
def test_other_weightings_take_a_training_step(tmp_path, weighting):
    from mtpsl_tf.training.run import run

    model_dir = tmp_path / "run"
    report = run(tiny_config(tmp_path, model_dir, flags=TINY + [
        f"--weighting={weighting}", "--setting=onelabel", "--epochs=1", "--steps_per_epoch=1"]))
    assert np.isfinite(list(report["last"]["metrics"].values())).all()
    train = json.loads((model_dir / "history.json").read_text())[0]["train"]
    assert np.isfinite([v for v in train.values()]).all()


def test_segnet_last_shared_kernel_is_the_last_decoder_conv():
    """GradNorm's W: SegNet's decoder runs conv_block_dec[4] .. [0], so [0] is last."""
    from mtpsl_tf.data.registry import DATASETS
    from mtpsl_tf.models.registry import BACKBONES

    tasks = DATASETS.get("synthetic").tasks()
    net = BACKBONES.get("segnet")(heads={t.name: t.head_spec for t in tasks}, filters=[4, 4, 8, 8, 8])
    net(tf.zeros([1, 32, 32, 3]))
    kernel = net.last_shared_kernel()
    assert "conv_block_dec_0_0" in kernel.path and any(kernel is v for v in net.shared_trainable_variables())


@pytest.mark.parametrize("weighting", ["uncertainty", "gradnorm", pytest.param("famo", marks=pytest.mark.slow)])
def test_weighting_trains_under_mixed_float16(tmp_path, weighting):
    """Loss scaling: a weighting trained by the tape (uncertainty), by `variable_gradients`
    (gradnorm) and by a group of its own (famo) trains with finite, positive weights (a smoke
    test: Adam is nearly scale-invariant, so this does not prove the unscaling)."""
    from mtpsl_tf.training.run import run

    model_dir = tmp_path / "run"
    run(tiny_config(tmp_path, model_dir, flags=TINY + [
        f"--weighting={weighting}", "--epochs=1", "--precision=mixed_float16"]))
    train = json.loads((model_dir / "history.json").read_text())[0]["train"]
    weights = np.array([train[f"weight/{t}"] for t in TASKS])
    assert np.isfinite(weights).all() and (weights > 0).all() and (weights < 10).all()
