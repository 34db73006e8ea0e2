"""segnet_mtan through the train.py path (flags -> config -> run) with a gradient-based loss
weighting and with MTPSL (the SegNet mapping encoder), then exported to SavedModel and LiteRT
float32 and verified against Keras."""

import json

import numpy as np
import pytest

from tests_helpers import TINY, tiny_config

MTAN = TINY + ["--backbone=segnet_mtan", "--setting=onelabel", "--epochs=1"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from mtpsl_tf.training.run import run

    root = tmp_path_factory.mktemp("mtan")
    report = run(tiny_config(root, root / "model", flags=MTAN + ["--weighting=gradnorm"]))
    assert np.isfinite(list(report["last"]["metrics"].values())).all()
    return root / "model"


def test_trains_with_gradnorm(model_dir):
    config = json.loads((model_dir / "config.json").read_text())
    assert config["model"]["backbone"] == "segnet_mtan" and config["method"]["weighting"] == "gradnorm"
    train = json.loads((model_dir / "history.json").read_text())[0]["train"]
    weights = np.array([train[f"weight/{t}"] for t in ("semantic", "depth", "normal")])
    assert np.isfinite(weights).all() and np.isclose(weights.sum(), 3.0, rtol=1e-4)


def test_mtpsl_trains_on_segnet_mtan(tmp_path):
    from mtpsl_tf.training.run import run

    report = run(tiny_config(tmp_path, tmp_path / "run", flags=MTAN + ["--method=mtpsl", "--num_train=4"]))
    assert np.isfinite(list(report["last"]["metrics"].values())).all()


def test_exports_to_saved_model_and_litert_float32(model_dir):
    from mtpsl_export.export import export_model

    out = model_dir.parent / "export"
    report = export_model(str(model_dir), str(out), formats=("saved_model", "tflite"), num_verify=2,
                          verify_source="random")
    assert report["passed"], report
    for name in ("saved_model", "tflite"):
        outputs = report["formats"][name]["outputs"]
        for output in ("semantic_probs", "depth", "normal"):
            assert outputs[output]["max_abs_diff"] <= 1e-4, (name, output)
        assert outputs["semantic_label"]["unexplained_mismatches"] == 0
    assert (out / "saved_model" / "saved_model.pb").exists() and (out / "model_float32.tflite").exists()
