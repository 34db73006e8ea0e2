"""segnet_mtan through the train.py path (flags -> config -> run) with a learned loss weighting,
then exported to LiteRT float32 (through the SavedModel concrete function) and verified against
Keras. Gradient-based weightings on segnet_mtan: docs/MTAN.md."""

import json

import numpy as np
import pytest
import tensorflow as tf

from tests_helpers import TINY, tiny_config

MTAN = TINY + ["--backbone=segnet_mtan", "--setting=onelabel", "--epochs=1", "--num_train=4"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from mtpsl_tf.training.run import run

    root = tmp_path_factory.mktemp("mtan")
    report = run(tiny_config(root, root / "model", flags=MTAN + ["--weighting=uncertainty"]))
    assert np.isfinite(list(report["last"]["metrics"].values())).all()
    return root / "model"


def test_trains_with_uncertainty(model_dir):
    config = json.loads((model_dir / "config.json").read_text())
    assert config["model"]["backbone"] == "segnet_mtan" and config["method"]["weighting"] == "uncertainty"
    train = json.loads((model_dir / "history.json").read_text())[0]["train"]
    weights = np.array([train[f"weight/{t}"] for t in ("semantic", "depth", "normal")])
    # the weights the only step applied: 1 / (c_t exp(s_t)), c = 1 for semantic, 2 else, s = -0.5
    np.testing.assert_allclose(weights, np.exp(0.5) / np.array([1.0, 2.0, 2.0]), rtol=1e-6)
    # and that step moved the (checkpointed) log-variances by about Adam's learning rate
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(model_dir / "checkpoints")))
    (name,) = [n for n in reader.get_variable_to_shape_map() if n.startswith("weighting/") and "OPTIMIZER" not in n]
    moved = np.abs(reader.get_tensor(name) + 0.5)
    assert ((moved > 1e-5) & (moved < 2e-4)).all(), moved


def test_exports_to_saved_model_and_litert_float32(model_dir):
    from mtpsl_export.export import export_model

    out = model_dir.parent / "export"
    report = export_model(str(model_dir), str(out), formats=("tflite",), num_verify=2,
                          verify_source="random")
    assert report["passed"], report
    outputs = report["formats"]["tflite"]["outputs"]
    for output in ("semantic_probs", "depth", "normal"):
        assert outputs[output]["max_abs_diff"] <= 1e-4, output
    assert outputs["semantic_label"]["unexplained_mismatches"] == 0
    assert (out / "model_float32.tflite").exists()
