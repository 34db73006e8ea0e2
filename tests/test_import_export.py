"""The authors' checkpoint, imported then exported (SavedModel, LiteRT float32), still
reproduces the fixture's inference outputs."""

import numpy as np
import pytest

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


# ----------------------------------------------------------------------------- no dataset
def _write_pngs(folder, count):
    from PIL import Image

    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, size=(40 + i, 70, 3)).astype(np.uint8)).save(folder / f"{i}.png")
    (folder / "notes.txt").write_text("not an image")  # ignored
    return folder


@pytest.fixture(scope="module")
def imported_dir(parity_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("import_nodata")
    import_to_model_dir(str(parity_dir / "nyuv2_segnet_w8_64x96.pth.tar"), "nyuv2", str(root / "model"))
    (root / "empty_data").mkdir()  # a TFDS data_dir where NYU-v2 is not prepared
    return root


def test_export_of_imported_checkpoint_needs_no_dataset(imported_dir, parity, capsys):
    """All four formats, verified on the synthetic scenes; int8 calibrated on them (warning)."""
    import json

    from mtpsl_export.export import export_model

    root = imported_dir
    report = export_model(str(root / "model"), str(root / "export"), which="latest", height=64, width=96,
                          num_verify=3, num_calibration=3, data_dir=str(root / "empty_data"))
    assert "calibrating on 3 synthetic scenes" in capsys.readouterr().err
    assert report["passed"] and not report["task_metrics"] and report["keras"]["metrics"] == {}
    assert report["verify_source"].startswith("synthetic scenes") and report["num_verify"] == 3
    assert report["calibration_source"].startswith("synthetic scenes (fallback")
    assert report["litert_switches"] == "arithmetic"
    for name in ("saved_model", "tflite"):
        for output in ("semantic_probs", "depth", "normal"):
            assert report["formats"][name]["outputs"][output]["max_abs_diff"] <= 1e-4, (name, output)
    for name in ("tflite", "tflite_fp16", "tflite_int8"):
        assert report["formats"][name]["xnnpack_delegated_nodes"] >= 1
    assert report["formats"]["tflite"]["xnnpack_delegated_nodes"] <= 2
    card = (root / "export" / "model_card.md").read_text()
    assert "int8 calibrated on 3 images: synthetic scenes" in card and "No task metrics" in card
    assert json.loads((root / "export" / "model_card.json").read_text())["verification"]["keras_metrics"] == {}
    # The exported float32 model still reproduces the authors' outputs.
    outputs = runners.load_runner(str(root / "export" / "model_float32.tflite"))(parity["x"])
    np.testing.assert_allclose(outputs["depth"], parity["eval_depth"], atol=1e-4)


def test_export_without_dataset_on_image_folders(imported_dir, tmp_path):
    from mtpsl_export.export import export_model

    root = imported_dir
    photos = _write_pngs(tmp_path / "photos", 3)
    report = export_model(str(root / "model"), str(tmp_path / "out"), "tflite,tflite_int8", which="latest",
                          height=64, width=96, num_verify=2, num_calibration=5, data_dir=str(root / "empty_data"),
                          images_dir=str(photos), calibration_dir=str(photos), litert_switches="compare")
    assert report["verify_source"] == f"images in {photos}" and report["num_verify"] == 2
    assert report["calibration_source"] == f"images in {photos}" and report["num_calibration"] == 3
    assert report["formats"]["tflite"]["xnnpack_delegated_nodes"] > 2  # the comparison ops split the graph
    random = export_model(str(root / "model"), str(tmp_path / "random"), "saved_model", which="latest",
                          height=64, width=96, num_verify=2, data_dir=str(root / "empty_data"),
                          verify_source="random")
    assert random["verify_source"].startswith("seeded uniform noise") and random["passed"]


@pytest.mark.parametrize("kwargs, error, expected", [
    ({}, ValueError, "pass --height and --width"),
    ({"height": 64, "width": 96, "verify_source": "dataset"}, FileNotFoundError, "'nyuv2' is not prepared"),
    ({"height": 64, "width": 96, "images_dir": "missing"}, FileNotFoundError, "--images="),
    ({"height": 64, "width": 96, "calibration_dir": "EMPTY"}, ValueError, "--calibration_images=.*: no JPG/JPEG/PNG images"),
    ({"height": 64, "width": 96, "verify_source": "testset"}, ValueError, "--verify_source='testset'"),
    ({"height": 64, "width": 96, "litert_switches": "eq"}, ValueError, "--litert_switches='eq'"),
])
def test_export_without_dataset_bad_input(imported_dir, tmp_path, kwargs, error, expected):
    from mtpsl_export.export import export_model

    root = imported_dir
    (tmp_path / "EMPTY").mkdir()
    kwargs = {k: (str(tmp_path / v) if k.endswith("_dir") else v) for k, v in kwargs.items()}
    with pytest.raises(error, match=expected):
        export_model(str(root / "model"), str(tmp_path / "out"), "tflite_int8", which="latest", num_verify=1,
                     num_calibration=1, data_dir=str(root / "empty_data"), **kwargs)
    assert not (tmp_path / "out").exists() and not [p for p in tmp_path.iterdir() if ".partial-" in p.name]
