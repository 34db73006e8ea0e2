"""The authors' checkpoint, imported then exported (SavedModel, LiteRT float32), still
reproduces the fixture's inference outputs."""

import numpy as np
import pytest
import tensorflow as tf

from mtpsl_export import runners, writers
from mtpsl_tf.import_torch import import_to_model_dir
from mtpsl_tf.training.restore import load_network


@pytest.fixture(scope="module")
def exported(parity_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("import_export")
    import_to_model_dir(str(parity_dir / "nyuv2_segnet_w8_64x96.pth.tar"), "nyuv2", str(root / "model"))
    restored = load_network(str(root / "model"), "latest", height=64, width=96)
    saved = writers.write_saved_model(restored.network, restored.tasks, 64, 96, str(root / "saved_model"), batch=None)
    one = writers.write_saved_model(restored.network, restored.tasks, 64, 96, str(root / "batch1"), batch=1,
                                    uint8=False)
    tflite = writers.write_tflite(writers.convert_tflite(one, "float32"), str(root / "model.tflite"))
    return {"saved_model": saved, "tflite": tflite}


@pytest.mark.parametrize("fmt", ["saved_model", "tflite"])
def test_export_of_imported_model_matches_reference(exported, parity, fmt):
    runner = runners.load_runner(exported[fmt])
    outputs = runner(parity["x"])
    np.testing.assert_allclose(outputs["depth"], parity["eval_depth"], atol=1e-4)
    np.testing.assert_allclose(outputs["normal"], parity["eval_normal"], atol=1e-4)
    probs = np.exp(parity["eval_semantic_logprob"])
    np.testing.assert_allclose(outputs["semantic_probs"], probs, atol=1e-4)
    agree = np.mean(outputs["semantic_label"] == parity["eval_semantic_logprob"].argmax(-1))
    assert agree > 0.999
