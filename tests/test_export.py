"""Export to SavedModel / LiteRT (float32, float16, int8): files, verification, CLI, predict.

One tiny model (filters 4,4,8,8,8, 32x64 synthetic) is trained once per module and exported
once through the CLI; the other tests reuse that export.
"""

import json
import math
import os
import pathlib
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = ["--dataset=synthetic", "--dataset_config=small", "--height=32", "--width=64", "--num_train=8",
        "--num_test=4", "--filters=4,4,8,8,8", "--batch_size=4", "--eval_batch_size=4", "--verbose=0",
        "--tensorboard_images=0", "--epochs=1"]
ALL_FORMATS = "saved_model,tflite,tflite_fp16,tflite_int8"
FLOAT_OUTPUTS = ("semantic_probs", "depth", "normal")
SAVED_MODEL_CLI = pathlib.Path(sys.executable).parent / "saved_model_cli"


def _env():
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")


def _script(name, args, cwd):
    return subprocess.run([sys.executable, str(ROOT / "export" / name), *args], cwd=cwd, env=_env(),
                          capture_output=True, text=True, timeout=600)


def _leftovers(parent: pathlib.Path):
    return [p.name for p in parent.iterdir() if ".partial-" in p.name]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from mtpsl_tf.training.run import run
    from tests_helpers import tiny_config

    root = tmp_path_factory.mktemp("export_model")
    run(tiny_config(root, root / "model", flags=TINY))
    return root / "model"


def _cli(args):
    """export.py's command line, in this process (the script itself runs in the bad-input tests)."""
    from absl import flags

    from mtpsl_export import export

    flag_values = flags.FlagValues()
    export.define_flags(flag_values)
    flag_values(["export.py", *args])
    return export.cli(flag_values)


@pytest.fixture(scope="module")
def exported(model_dir):
    out = model_dir.parent / "export"
    code = _cli([f"--model_dir={model_dir}", f"--out={out}", f"--formats={ALL_FORMATS}", "--num_verify=4",
                 "--num_calibration=8"])
    assert code == 0
    return out


def test_cli_prints_a_summary(exported):
    report = json.loads((exported / "export_report.json").read_text())
    from mtpsl_export.export import summary

    text = summary(report)
    assert text.splitlines()[0].split()[:3] == ["format", "max|diff|", "semantic/miou"]
    assert [line.split()[0] for line in text.splitlines()[1:]] == ["keras", *ALL_FORMATS.split(",")]
    assert "BROKEN" not in text


def _report(exported):
    return json.loads((exported / "export_report.json").read_text())


def test_every_format_is_written_with_report_and_model_card(exported):
    for name in ("saved_model/saved_model.pb", "model_float32.tflite", "model_float16.tflite", "model_int8.tflite",
                 "export_report.json", "model_card.md", "model_card.json", "config.json"):
        assert (exported / name).exists(), name
    assert not _leftovers(exported.parent)
    assert not (exported / ".batch1").exists()  # the scratch batch-1 SavedModel is removed
    report = _report(exported)
    assert report["passed"] and set(report["formats"]) == set(ALL_FORMATS.split(","))
    assert report["input"] == {"height": 32, "width": 64} and report["num_verify"] == 4
    card = json.loads((exported / "model_card.json").read_text())
    assert card["dataset"] == "synthetic" and card["setting"] == "onelabel" and card["method"] == "sl"
    assert card["input"]["shape"] == ["N", 32, 64, 3] and card["input"]["range"] == [0.0, 1.0]
    assert set(card["outputs"]) == {"semantic_probs", "semantic_label", "depth", "normal"}
    from mtpsl_datasets.synthetic.render import CLASS_NAMES

    assert card["tasks"][0]["class_names"] == list(CLASS_NAMES)
    markdown = (exported / "model_card.md").read_text()
    assert "semantic/miou" in markdown and "`semantic_label` | int32" in markdown


def test_export_with_a_prepared_dataset_reports_metrics_and_calibration(exported):
    report = _report(exported)
    assert report["task_metrics"] and report["verify_source"] == "synthetic test split (first examples)"
    assert report["calibration_source"] == "synthetic training split" and report["num_calibration"] == 8
    assert report["litert_switches"] == "arithmetic"
    assert report["litert_forms"] == ["direct_dilation", "logit_heads"]
    # One XNNPACK partition; only the label's ARG_MAX (no XNNPACK op) runs after it.
    assert report["formats"]["tflite"]["xnnpack_delegated_nodes"] == 1
    assert "LOG_SOFTMAX" not in report["formats"]["tflite"]["tflite"]["ops"]
    assert "int8 calibrated on 8 images: synthetic training split" in (exported / "model_card.md").read_text()


def test_float32_formats_match_keras_within_1e4(exported):
    report = _report(exported)
    for name in ("saved_model", "tflite"):
        outputs = report["formats"][name]["outputs"]
        for output in FLOAT_OUTPUTS:
            assert outputs[output]["max_abs_diff"] <= 1e-4, (name, output)
        assert outputs["semantic_label"]["unexplained_mismatches"] == 0
        for key, delta in report["formats"][name]["metric_deltas"].items():
            assert abs(delta) < 1e-3, (name, key)


def test_reduced_precision_formats_report_metric_deltas(exported):
    report = _report(exported)
    keras_metrics = report["keras"]["metrics"]
    for name in ("tflite_fp16", "tflite_int8"):
        entry = report["formats"][name]
        assert entry["passed"] and entry["problems"] == []
        assert set(entry["primary"]) == {"semantic/miou", "depth/abs_err", "normal/mean"}
        for key, d in entry["primary"].items():
            assert d["keras"] == keras_metrics[key]
            assert math.isclose(d["delta"], entry["metrics"][key] - keras_metrics[key], abs_tol=1e-12)
    int8 = report["formats"]["tflite_int8"]["tflite"]
    assert int8["tensor_dtypes"].get("int8", 0) > 0 and "CONV_2D" in int8["ops"]
    for name in ("tflite", "tflite_fp16", "tflite_int8"):
        ops = report["formats"][name]["tflite"]["ops"]
        assert not [op for op in ops if "FLEX" in op.upper() or op == "CUSTOM"], ops
        assert report["formats"][name]["xnnpack_delegated_nodes"] > 0


def test_saved_model_signatures_follow_the_contract(exported):
    import tensorflow as tf

    loaded = tf.saved_model.load(str(exported / "saved_model"))
    assert {"serving_default", "serving_uint8"} <= set(loaded.signatures)
    images = np.random.default_rng(0).integers(0, 256, size=(2, 32, 64, 3)).astype(np.uint8)
    out = loaded.signatures["serving_default"](image=tf.constant(images.astype(np.float32) / 255.0))
    out8 = loaded.signatures["serving_uint8"](image=tf.constant(images))
    assert out["semantic_probs"].shape == (2, 32, 64, 13) and out["semantic_label"].dtype == tf.int32
    assert out["semantic_label"].shape == (2, 32, 64) and out["depth"].shape == (2, 32, 64, 1)
    np.testing.assert_allclose(tf.reduce_sum(out["semantic_probs"], -1).numpy(), 1.0, atol=1e-5)
    np.testing.assert_allclose(tf.norm(out["normal"], axis=-1).numpy(), 1.0, atol=1e-5)
    for key in out:
        np.testing.assert_allclose(out8[key].numpy(), out[key].numpy(), atol=1e-6, err_msg=key)


def test_saved_model_cli_runs_the_export(exported, tmp_path):
    assert SAVED_MODEL_CLI.exists(), SAVED_MODEL_CLI
    np.save(tmp_path / "image.npy", np.random.default_rng(1).uniform(size=(1, 32, 64, 3)).astype(np.float32))
    result = subprocess.run([str(SAVED_MODEL_CLI), "run", "--dir", str(exported / "saved_model"), "--tag_set", "serve",
                             "--signature_def", "serving_default", "--inputs", f"image={tmp_path / 'image.npy'}",
                             "--outdir", str(tmp_path / "out")],
                            env=_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert np.load(tmp_path / "out" / "semantic_label.npy").shape == (1, 32, 64)
    assert np.load(tmp_path / "out" / "normal.npy").shape == (1, 32, 64, 3)


def test_litert_runner_matches_saved_model(exported):
    from mtpsl_export.runners import load_runner

    images = np.random.default_rng(2).uniform(size=(2, 32, 64, 3)).astype(np.float32)
    reference = load_runner(str(exported / "saved_model"))(images)
    got = load_runner(str(exported / "model_float32.tflite"))(images)
    for key in FLOAT_OUTPUTS:
        np.testing.assert_allclose(got[key], reference[key], atol=1e-4, err_msg=key)
    with pytest.raises(ValueError, match=r"\[N, 32, 64, 3\]"):
        load_runner(str(exported / "model_int8.tflite"))(images[:, :16])


def _break_fp16_conversion(monkeypatch, scratch):
    """Makes the float16 TFLite conversion produce negated normals and depth + 10."""
    import tensorflow as tf

    from mtpsl_export import writers

    original = writers.convert_tflite

    def broken(saved_model_dir, precision, representative=None):
        if precision != "float16":
            return original(saved_model_dir, precision, representative)
        loaded = tf.saved_model.load(saved_model_dir)
        spec = loaded.signatures["serving_default"].structured_input_signature[1]["image"]
        module = tf.Module()
        module.loaded = loaded

        @tf.function(input_signature=[spec])
        def serve(image):
            out = dict(loaded.signatures["serving_default"](image=image))
            out["normal"], out["depth"] = -out["normal"], out["depth"] + 10.0
            return out

        tf.saved_model.save(module, str(scratch), signatures={"serving_default": serve})
        return original(str(scratch), precision, representative)

    monkeypatch.setattr(writers, "convert_tflite", broken)


def test_broken_export_fails_loudly_and_leaves_nothing(model_dir, tmp_path, monkeypatch, capsys):
    """Also exports at a size other than the training one (64x96: the data are resized)."""
    _break_fp16_conversion(monkeypatch, tmp_path / "scratch")
    out = tmp_path / "exports" / "broken"
    code = _cli([f"--model_dir={model_dir}", f"--out={out}", "--formats=tflite_fp16", "--height=64", "--width=96",
                 "--num_verify=4"])
    stderr = capsys.readouterr().err
    assert code == 1
    assert "export verification failed" in stderr and "BROKEN" in stderr
    assert "tflite_fp16: normal/mean degrades by" in stderr and "tflite_fp16: depth/abs_err degrades by" in stderr
    assert not out.parent.exists()  # nor the parent folder this export created


def test_float32_mismatch_raises_with_report(model_dir, tmp_path):
    """A tolerance no float32 export can meet fails the export (VerificationError, report attached)."""
    from mtpsl_export.export import export_model
    from mtpsl_export.verification import VerificationError

    out = tmp_path / "strict"
    with pytest.raises(VerificationError, match=r"saved_model: output '\w+': max \|diff\|") as caught:
        export_model(str(model_dir), str(out), "saved_model", num_verify=2, tolerance=-1.0)
    assert not caught.value.report["passed"] and caught.value.report["formats"]["saved_model"]["problems"]
    assert not out.exists() and not _leftovers(tmp_path)


@pytest.mark.parametrize("kwargs, expected", [
    ({"height": 48, "width": 64}, "height must be a positive multiple of 32 (SegNet pools 5 times), got 48"),
    ({"height": 32, "width": 70}, "width must be a positive multiple of 32 (SegNet pools 5 times), got 70"),
    ({"height": 32}, "both --height and --width"),
    ({"formats": "saved_model,onnx"}, "unknown export format 'onnx'"),
    ({"formats": ""}, "no export format"),
    ({"which": "newest"}, "which must be 'best' or 'latest'"),
])
def test_bad_requests_are_rejected_without_leftovers(model_dir, tmp_path, kwargs, expected):
    from mtpsl_export.export import export_model

    out = tmp_path / "out"
    with pytest.raises(ValueError, match=re.escape(expected)):
        export_model(str(model_dir), str(out), **kwargs)
    assert not out.exists() and not _leftovers(tmp_path)


def test_model_dir_without_checkpoint_or_config_is_rejected(model_dir, tmp_path):
    from mtpsl_export.export import export_model

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        export_model(str(empty), str(tmp_path / "out"))
    shutil.copy(model_dir / "config.json", empty / "config.json")
    with pytest.raises(FileNotFoundError, match="no checkpoint in"):
        export_model(str(empty), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists() and not _leftovers(tmp_path)


def test_existing_out_is_not_overwritten(model_dir, exported):
    from mtpsl_export.export import export_model

    before = sorted(p.name for p in exported.iterdir())
    with pytest.raises(FileExistsError, match="already exists"):
        export_model(str(model_dir), str(exported))
    assert sorted(p.name for p in exported.iterdir()) == before


@pytest.mark.parametrize("args, expected", [
    (["--height=33", "--width=64"], "height must be a positive multiple of 32 (SegNet pools 5 times), got 33"),
    (["--formats=tflite,coreml"], "unknown export format 'coreml'"),
])
def test_cli_bad_input_exits_2_with_message(model_dir, tmp_path, args, expected):
    out = tmp_path / "out"
    result = _script("export.py", [f"--model_dir={model_dir}", f"--out={out}", *args], tmp_path)
    assert result.returncode == 2
    assert expected in result.stderr, result.stderr[-2000:]
    assert not out.exists() and not _leftovers(tmp_path)


def _write_images(folder):
    from PIL import Image

    rng = np.random.default_rng(3)
    paths = []
    for name, size in (("a.png", (50, 70)), ("b.jpg", (100, 90))):
        path = folder / name
        Image.fromarray(rng.integers(0, 256, size=(*size, 3)).astype(np.uint8)).save(path)
        paths.append(str(path))
    return paths


def test_predict_writes_side_by_side_pngs(exported, tmp_path):
    from PIL import Image

    from mtpsl_export.predict import predict

    images = _write_images(tmp_path)
    for model in ("model_int8.tflite", "saved_model"):
        written = predict(str(exported / model), images, str(tmp_path / model))
        assert [os.path.basename(p) for p in written] == ["a.png", "b.png"]
        for path in written:
            picture = np.asarray(Image.open(path))
            assert picture.shape == (32, 64 * 4, 3)  # input, segmentation, depth, normals
            assert picture[:, 64:].std() > 0  # predictions are drawn, not blank


def test_predict_cli(exported, tmp_path):
    images = _write_images(tmp_path)
    result = _script("predict.py", [f"--model={exported / 'model_float32.tflite'}", f"--images={','.join(images)}",
                                    f"--out={tmp_path / 'pred'}"], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(os.listdir(tmp_path / "pred")) == ["a.png", "b.png"]


def test_predict_on_a_folder_with_every_format_and_raw_outputs(exported, tmp_path):
    from mtpsl_export.predict import predict

    folder = tmp_path / "photos"
    folder.mkdir()
    _write_images(folder)
    (folder / "notes.txt").write_text("skipped: not a JPEG/PNG")
    for model in ("model_float32.tflite", "model_float16.tflite", "model_int8.tflite", "saved_model"):
        out = tmp_path / model
        written = predict(str(exported / model), [str(folder)], str(out), raw=True)
        assert [os.path.basename(p) for p in written] == ["a.png", "b.png"]
        assert sorted(os.listdir(out)) == sorted(f"{stem}{suffix}" for stem in "ab" for suffix in (
            ".png", ".semantic_probs.npy", ".semantic_label.npy", ".depth.npy", ".normal.npy"))
        label = np.load(out / "a.semantic_label.npy")
        assert label.shape == (32, 64) and label.dtype == np.int32
        assert np.load(out / "b.depth.npy").shape == (32, 64, 1)
        assert np.load(out / "b.semantic_probs.npy").shape == (32, 64, 13)


def test_predict_cli_on_a_folder(exported, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    _write_images(folder)
    result = _script("predict.py", [f"--model={exported / 'model_int8.tflite'}", f"--images={folder}",
                                    f"--out={tmp_path / 'pred'}", "--raw"], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert {"a.png", "b.png", "a.normal.npy"} <= set(os.listdir(tmp_path / "pred"))
    empty = tmp_path / "empty"
    empty.mkdir()
    result = _script("predict.py", [f"--model={exported / 'model_int8.tflite'}", f"--images={empty}",
                                    f"--out={tmp_path / 'none'}"], tmp_path)
    assert result.returncode == 2 and "--images=" in result.stderr and "no JPG/JPEG/PNG images" in result.stderr
    assert not (tmp_path / "none").exists()


def test_predict_rejects_bad_inputs(exported, tmp_path):
    from mtpsl_export.predict import predict

    model = str(exported / "model_float32.tflite")
    (tmp_path / "not_image.png").write_text("hello")
    good = _write_images(tmp_path)[0]
    with pytest.raises(FileNotFoundError, match="no image file .*missing.png"):
        predict(model, [good, str(tmp_path / "missing.png")], str(tmp_path / "bad"))
    with pytest.raises(ValueError, match="not_image.png' is not an image"):
        predict(model, [str(tmp_path / "not_image.png")], str(tmp_path / "bad"))
    with pytest.raises(ValueError, match="expected a SavedModel directory or a .tflite file"):
        predict(str(exported / "model_card.md"), [good], str(tmp_path / "bad"))
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(model, lone / "m.tflite")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        predict(str(lone / "m.tflite"), [good], str(tmp_path / "bad"))
    assert not (tmp_path / "bad").exists()


def _tiny_tasks():
    from mtpsl_tf.tasks.depth import Depth
    from mtpsl_tf.tasks.normal import Normal
    from mtpsl_tf.tasks.semantic import Semantic

    return [Semantic(3), Depth(), Normal()]


def _outputs(rng):
    probs = rng.dirichlet([1, 1, 1], size=(2, 4, 4)).astype(np.float32)
    normal = rng.normal(size=(2, 4, 4, 3)).astype(np.float32)
    return {"semantic_probs": probs, "semantic_label": probs.argmax(-1).astype(np.int32),
            "depth": rng.uniform(1, 5, size=(2, 4, 4, 1)).astype(np.float32),
            "normal": normal / np.linalg.norm(normal, axis=-1, keepdims=True)}


def test_verification_rules_on_synthetic_outputs():
    from mtpsl_export import verification as v

    tasks, rng = _tiny_tasks(), np.random.default_rng(4)
    keras_out = _outputs(rng)
    same = v.compare_outputs(keras_out, keras_out, tasks)
    assert v.problems("float32", same, {}) == []

    off = dict(keras_out, depth=keras_out["depth"] + 2e-4)
    assert v.problems("float32", v.compare_outputs(keras_out, off, tasks), {}) == [
        "output 'depth': max |diff| 0.0002 > 0.0001"]
    assert v.problems("float16", v.compare_outputs(keras_out, off, tasks), {}) == []  # judged by metrics

    zeros = dict(keras_out, normal=np.zeros_like(keras_out["normal"]))
    assert "collapsed" in v.problems("int8", v.compare_outputs(keras_out, zeros, tasks), {})[0]
    nan = dict(keras_out, depth=np.full_like(keras_out["depth"], np.nan))
    assert "non-finite" in v.problems("int8", v.compare_outputs(keras_out, nan, tasks), {})[0]

    # A flipped label is allowed only at a near-tie of the Keras probabilities.
    flipped = keras_out["semantic_label"].copy()
    flipped[0, 0, 0] = (flipped[0, 0, 0] + 1) % 3
    labels = v.compare_outputs(keras_out, dict(keras_out, semantic_label=flipped), tasks)["semantic_label"]
    assert labels["mismatch_fraction"] == 1 / 32 and labels["unexplained_mismatches"] == 1
    tie = dict(keras_out, semantic_probs=keras_out["semantic_probs"].copy())
    tie["semantic_probs"][0, 0, 0] = [0.5, 0.5, 0.0]
    tie_label = tie["semantic_probs"].argmax(-1).astype(np.int32)
    tie["semantic_label"] = tie_label
    swapped = tie_label.copy()
    swapped[0, 0, 0] = 1 - tie_label[0, 0, 0]
    entry = v.compare_outputs(tie, dict(tie, semantic_label=swapped), tasks)["semantic_label"]
    assert entry["unexplained_mismatches"] == 0


def test_metric_degradation_rule_respects_direction():
    from mtpsl_export import verification as v

    tasks = _tiny_tasks()
    keras_metrics = {"semantic/miou": 0.4, "depth/abs_err": 0.5, "normal/mean": 30.0}
    ok = v.primary_deltas(tasks, {"semantic/miou": 0.3, "depth/abs_err": 0.7, "normal/mean": 20.0}, keras_metrics)
    assert v.problems("int8", {}, ok) == []  # -25%, +40%, better
    assert ok["depth/abs_err"]["relative_degradation"] == pytest.approx(0.4)
    assert ok["normal/mean"]["relative_degradation"] == pytest.approx(-1 / 3)
    bad = v.primary_deltas(tasks, {"semantic/miou": 0.1, "depth/abs_err": float("nan"), "normal/mean": 46.0},
                           keras_metrics)
    found = v.problems("int8", {}, bad)
    assert found == ["semantic/miou degrades by 75.0% > 50% (0.1 vs Keras 0.4)",
                     "depth/abs_err is NaN (Keras: 0.5)",
                     "normal/mean degrades by 53.3% > 50% (46 vs Keras 30)"]
    assert v.problems("int8", {}, bad, max_degradation=0.8) == ["depth/abs_err is NaN (Keras: 0.5)"]
