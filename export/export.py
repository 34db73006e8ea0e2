"""Export a trained model directory to SavedModel and LiteRT (float32, float16, int8), verified.

    python export/export.py --model_dir=runs/x --out=exports/x \
        --formats=saved_model,tflite,tflite_fp16,tflite_int8 [--height=288 --width=384]

Writes into --out (atomically: a temporary sibling directory renamed at the end, removed on
any failure): `saved_model/`, `model_float32.tflite`, `model_float16.tflite`,
`model_int8.tflite`, `export_report.json` (per format and output: differences to the Keras
model, task metrics when the dataset is available, rule violations), `model_card.md/.json`
and the training `config.json`. Nothing here needs the training set: `export/inputs.py`
chooses the verification and calibration images (dataset, `--images`, `--calibration_images`,
synthetic scenes, seeded noise). Exits non-zero when a format breaks a rule of
`mtpsl_export.verification` (exit 1) or on bad input (exit 2). See docs/EXPORT.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import sys
import tempfile
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from mtpsl_tf.cli import error_message, quiet_library_logs

DEFAULT_FORMATS = ("saved_model", "tflite", "tflite_fp16", "tflite_int8")
REPORT = "export_report.json"
SWITCH_CHOICES = ("arithmetic", "compare")  # mtpsl_tf.models.layers.SWITCH_OPS, without TensorFlow


def export_model(model_dir: str, out_dir: str, formats=DEFAULT_FORMATS, height: Optional[int] = None,
                 width: Optional[int] = None, which: str = "best", num_verify: int = 16,
                 num_calibration: int = 32, data_dir: Optional[str] = None,
                 tolerance: Optional[float] = None, max_degradation: Optional[float] = None,
                 overwrite: bool = False, images_dir: Optional[str] = None, verify_source: str = "auto",
                 calibration_dir: Optional[str] = None, litert_switches: str = "arithmetic",
                 litert_forms="all") -> dict:
    """Exports `model_dir`'s `which` checkpoint to `out_dir` in `formats` and verifies them.

    Args:
        height, width: input size (multiples of 32); None: the training size.
        num_verify: images every format is compared with Keras on (`inputs.verification_set`).
        num_calibration: images calibrating int8 quantisation (`inputs.calibration_set`).
        data_dir: overrides the config's TFDS data directory.
        images_dir: verify on this folder's images (no task metrics) instead of the dataset.
        verify_source: "auto" (the test split when the dataset is available, else synthetic
            scenes), "dataset", "synthetic" or "random" (seeded noise).
        calibration_dir: calibrate int8 on this folder's images (else the training split when
            available, else the synthetic scenes with a warning).
        litert_switches: "arithmetic" (default) converts the LiteRT formats with the SegNet's
            inference-only pooling switches built from XNNPACK ops (one delegated partition
            for the network), "compare" with the training-time comparison ops.
        litert_forms: the inference-only layer forms the LiteRT formats are traced with
            (`mtpsl_tf.models.registry.LITERT_FORMS`): "all" (default), "none" or a comma list
            (`writers.resolve_litert_forms`).
        tolerance, max_degradation: verification rules (defaults in `verification`).
        overwrite: replace an existing `out_dir`.

    Returns the report (also `out_dir/export_report.json`). Raises ValueError /
    FileNotFoundError on bad input and `verification.VerificationError` when a format is
    broken; `out_dir` is then left as it was.
    """
    from mtpsl_export import formats as formats_lib
    from mtpsl_export import verification

    chosen = formats_lib.parse_formats(formats)
    _check_request(out_dir, height, width, num_verify, num_calibration, overwrite, verify_source)
    if litert_switches not in SWITCH_CHOICES:
        raise ValueError(f"--litert_switches={litert_switches!r}: expected one of {', '.join(SWITCH_CHOICES)}")
    from mtpsl_export import writers

    forms = writers.resolve_litert_forms(litert_forms)
    tolerance = verification.TOLERANCE if tolerance is None else tolerance
    max_degradation = verification.MAX_DEGRADATION if max_degradation is None else max_degradation

    from mtpsl_export import contract, inputs
    from mtpsl_tf.config import load_config
    from mtpsl_tf.training.restore import find_checkpoint, load_network

    find_checkpoint(model_dir, which)  # a clear error for a directory that is no model's
    config = load_config(os.path.join(model_dir, "config.json"))
    data_config = dataclasses.replace(config.data, **({"data_dir": data_dir} if data_dir else {}))
    config = dataclasses.replace(config, data=data_config)
    height, width = inputs.export_size(config, height, width)
    contract.check_size(height, width)
    restored = load_network(model_dir, which=which, height=height, width=width)
    unsupported = restored.network.unsupported_export_formats  # models.backbone.Backbone
    refused = [f.name for f in chosen if f.name in unsupported]
    if refused:
        raise ValueError(f"--formats={','.join(refused)}: not supported for the "
                         f"{restored.config.model.backbone} backbone of {model_dir!r} "
                         f"({unsupported[refused[0]]}); choose among the other formats")
    size = (restored.height, restored.width)
    verify = inputs.verification_set(data_config, restored.tasks, size, num_verify, images_dir, verify_source)
    calibration, calibration_source = inputs.calibration_set(data_config, size, num_calibration, calibration_dir) \
        if any(f.precision == "int8" for f in chosen) else (None, None)

    parent = os.path.dirname(os.path.abspath(out_dir))
    created = _make_parents(parent)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(out_dir))}.partial-", dir=parent)
    try:
        os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes it private; the export is not
        files = _write_formats(restored, chosen, staging, calibration, litert_switches, forms)
        report = _verify(restored, chosen, files, staging, verify, tolerance, max_degradation)
        report.update(model_dir=os.path.abspath(model_dir), which=which, num_calibration=(
            0 if calibration is None else len(calibration)), calibration_source=calibration_source,
            litert_switches=litert_switches, litert_forms=list(forms))
        failures = {name: f["problems"] for name, f in report["formats"].items() if f["problems"]}
        if failures:
            raise verification.VerificationError(_failure_message(failures), report)
        _write_metadata(restored, model_dir, staging, report)
        _publish(staging, out_dir, overwrite)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for folder in reversed(created):  # parents this call made, innermost first, if still empty
            with contextlib.suppress(OSError):
                os.rmdir(folder)
        raise
    report["out_dir"] = os.path.abspath(out_dir)
    return report


def _make_parents(folder: str) -> list:
    """Creates `folder` and missing ancestors; returns those created, outermost first."""
    missing = []
    while folder and not os.path.exists(folder):
        missing.insert(0, folder)
        folder = os.path.dirname(folder)
    if missing:
        os.makedirs(missing[-1], exist_ok=True)
    return missing


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _check_request(out_dir, height, width, num_verify, num_calibration, overwrite, verify_source) -> None:
    from mtpsl_export import contract, inputs

    if (height is None) != (width is None):
        raise ValueError(f"give both --height and --width or neither (got height={height}, width={width})")
    if height is not None:
        contract.check_size(height, width)
    if num_verify < 1:
        raise ValueError(f"--num_verify must be >= 1, got {num_verify}")
    if num_calibration < 1:
        raise ValueError(f"--num_calibration must be >= 1, got {num_calibration}")
    if verify_source not in inputs.VERIFY_SOURCES:
        raise ValueError(f"--verify_source={verify_source!r}: expected one of {', '.join(inputs.VERIFY_SOURCES)}")
    if os.path.exists(out_dir) and not overwrite:
        raise FileExistsError(f"--out={out_dir!r} already exists; choose another or pass --overwrite")


def _failure_message(failures: Dict[str, list]) -> str:
    lines = ["export verification failed:"]
    for name, found in failures.items():
        lines += [f"  {name}: {p}" for p in found]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- formats
def _write_formats(restored, chosen, staging: str, calibration, litert_switches: str,
                   forms: Sequence[str]) -> Dict[str, str]:
    """Writes each format into `staging`; returns format name -> path. The LiteRT formats are
    converted from a batch-1 SavedModel traced with `litert_switches` pooling switches and the
    LiteRT layer `forms` at their precision."""
    from mtpsl_export import writers

    net, tasks, h, w = restored.network, restored.tasks, restored.height, restored.width
    files = {}
    for fmt in chosen:
        if not fmt.tflite:
            files[fmt.name] = writers.write_saved_model(net, tasks, h, w, os.path.join(staging, fmt.filename))
    representative = None if calibration is None else writers.representative_from(calibration)
    for fmt in chosen:
        if fmt.tflite:  # traced per precision: a form may apply to some precisions only
            with writers.litert_forms(net, forms, litert_switches, fmt.precision):
                scratch = writers.write_saved_model(net, tasks, h, w, os.path.join(staging, ".batch1"), batch=1,
                                                    uint8=False)
            content = writers.convert_tflite(scratch, fmt.precision, representative)
            files[fmt.name] = writers.write_tflite(content, os.path.join(staging, fmt.filename))
            shutil.rmtree(scratch)
    return files


def _verify(restored, chosen, files, staging, verify, tolerance, max_degradation) -> dict:
    """Runs every format on `verify` (an `inputs.InputSet`) and applies the rules; task
    metrics (and the metric rules of reduced precisions) only when it has labels."""
    from mtpsl_export import runners, verification, writers

    tasks, images, labels = restored.tasks, verify.images, verify.labels
    keras_out = runners.KerasRunner(restored.network, tasks, restored.height, restored.width)(images)
    keras_metrics = verification.evaluate(tasks, labels, keras_out) if labels is not None else {}
    report = {"checkpoint": restored.checkpoint, "input": {"height": restored.height, "width": restored.width},
              "num_verify": int(len(images)), "verify_source": verify.source,
              "task_metrics": labels is not None,
              "rules": {"tolerance": tolerance, "max_degradation": max_degradation,
                        "collapse_ratio": verification.COLLAPSE_RATIO,
                        "collapse_min_std": verification.COLLAPSE_MIN_STD,
                        "text": verification.__doc__.split("Rules", 1)[1].strip()},
              "keras": {"metrics": keras_metrics}, "formats": {}}
    for fmt in chosen:
        runner = runners.load_runner(files[fmt.name])
        got = runner(images)
        comparison = verification.compare_outputs(keras_out, got, tasks, tolerance)
        metrics = verification.evaluate(tasks, labels, got) if labels is not None else {}
        deltas = verification.primary_deltas(tasks, metrics, keras_metrics) if labels is not None else {}
        found = verification.problems(fmt.precision, comparison, deltas, tolerance, max_degradation)
        entry = {"file": os.path.relpath(files[fmt.name], staging), "precision": fmt.precision,
                 "outputs": comparison, "metrics": metrics,
                 "metric_deltas": {k: metrics[k] - keras_metrics[k] for k in metrics},
                 "primary": deltas, "problems": found, "passed": not found}
        if fmt.tflite:
            with open(files[fmt.name], "rb") as f:
                entry["tflite"] = writers.tflite_summary(f.read())
            entry["xnnpack_delegated_nodes"] = runner.delegated_nodes()
            if runner.xnnpack_error:
                entry["xnnpack_error"] = runner.xnnpack_error
        else:
            entry["uint8_signature_max_abs_diff"] = _check_uint8(runner, images)
            if entry["uint8_signature_max_abs_diff"] > tolerance:
                found.append(f"serving_uint8 differs from serving_default by "
                             f"{entry['uint8_signature_max_abs_diff']:.3g} on the same uint8 images")
                entry["passed"] = False
        report["formats"][fmt.name] = entry
    report["passed"] = all(f["passed"] for f in report["formats"].values())
    return report


def _check_uint8(runner, images: np.ndarray) -> float:
    """Max |serving_uint8(u) - serving_default(u / 255)| over float outputs, u = images in uint8."""
    as_uint8 = np.clip(np.round(images * 255.0), 0, 255)
    via_float = runner(as_uint8 / 255.0)
    via_uint8 = runner.with_signature("serving_uint8")(as_uint8 / 255.0)
    return max(float(np.abs(via_float[k] - via_uint8[k]).max())
               for k in via_float if via_float[k].dtype == np.float32)


# ----------------------------------------------------------------------------- metadata
def _write_metadata(restored, model_dir: str, staging: str, report: dict) -> None:
    from mtpsl_export import model_card
    from mtpsl_tf.config import save_config

    save_config(restored.config, staging)
    metrics_path = os.path.join(model_dir, "metrics.json")
    training = None
    if os.path.isfile(metrics_path):
        with open(metrics_path) as f:
            training = json.load(f)
    card = model_card.build(restored.config, restored.tasks, restored.height, restored.width,
                            restored.checkpoint, report, training)
    model_card.write(card, staging)
    with open(os.path.join(staging, REPORT), "w") as f:
        json.dump(report, f, indent=2)


def _publish(staging: str, out_dir: str, overwrite: bool) -> None:
    """Renames the finished `staging` directory to `out_dir` (replacing it with overwrite)."""
    if os.path.exists(out_dir):
        if not overwrite:
            raise FileExistsError(f"--out={out_dir!r} already exists; choose another or pass --overwrite")
        old = staging + ".old"
        os.replace(out_dir, old)
        os.replace(staging, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, out_dir)


# ----------------------------------------------------------------------------- CLI
def define_flags(flag_values=None):
    """Defines this command's flags on `flag_values` (default: absl's global FLAGS)."""
    from absl import flags

    fv = flag_values if flag_values is not None else flags.FLAGS
    flags.DEFINE_string("model_dir", None, "Model directory written by train.py.", flag_values=fv)
    flags.DEFINE_string("out", None, "Export directory to create.", flag_values=fv)
    flags.DEFINE_string("formats", ",".join(DEFAULT_FORMATS), "Comma-separated: " + ", ".join(DEFAULT_FORMATS),
                        flag_values=fv)
    flags.DEFINE_integer("height", None, "Input height (multiple of 32); default: the training size.", flag_values=fv)
    flags.DEFINE_integer("width", None, "Input width (multiple of 32); default: the training size.", flag_values=fv)
    flags.DEFINE_enum("which", "best", ["best", "latest"], "Checkpoint to export.", flag_values=fv)
    flags.DEFINE_integer("num_verify", 16, "Images every format is compared with Keras on.", flag_values=fv)
    flags.DEFINE_integer("num_calibration", 32, "Images calibrating int8.", flag_values=fv)
    flags.DEFINE_string("images", "", "Verify on the JPEG/PNG images of this folder (resized; no task "
                        "metrics) instead of --verify_source.", flag_values=fv)
    flags.DEFINE_enum("verify_source", "auto", ["auto", "dataset", "synthetic", "random"],
                      "Verification inputs: auto = the test split when the dataset is available, else the "
                      "embedded synthetic scenes; random = seeded noise.", flag_values=fv)
    flags.DEFINE_string("calibration_images", "", "Calibrate int8 on the JPEG/PNG images of this folder "
                        "(default: the training split when available, else synthetic scenes, with a warning).",
                        flag_values=fv)
    flags.DEFINE_string("data_dir", "", "TFDS data directory (default: the one in the model's config).",
                        flag_values=fv)
    flags.DEFINE_float("tolerance", 1e-4, "Max |diff| of float32 formats vs Keras.", flag_values=fv)
    flags.DEFINE_float("max_degradation", 0.5, "Max relative primary-metric degradation of fp16/int8.",
                       flag_values=fv)
    flags.DEFINE_enum("litert_switches", "arithmetic", list(SWITCH_CHOICES),
                      "SegNet pooling switches of the LiteRT formats: arithmetic = inference-only ops XNNPACK "
                      "delegates (same values), compare = the training-time comparison ops.", flag_values=fv)
    flags.DEFINE_string("litert_forms", "all", "Inference-only layer forms of the LiteRT formats (ops the XNNPACK "
                        "delegate runs, same outputs up to rounding): all, none, or some of direct_dilation, "
                        "logit_heads (mtpsl_tf.models.registry.LITERT_FORMS).", flag_values=fv)
    flags.DEFINE_boolean("overwrite", False, "Replace an existing --out.", flag_values=fv)
    flags.mark_flags_as_required(["model_dir", "out"], flag_values=fv)


def main(argv) -> int:
    from absl import app, flags

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    return cli(flags.FLAGS)


def cli(f) -> int:
    """Runs the export for parsed flags `f`; returns the exit code (0 ok, 1 broken, 2 bad input)."""
    from mtpsl_export.verification import VerificationError

    quiet_library_logs()
    try:
        report = export_model(f.model_dir, f.out, f.formats, f.height, f.width, which=f.which,
                              num_verify=f.num_verify, num_calibration=f.num_calibration,
                              data_dir=f.data_dir or None, tolerance=f.tolerance,
                              max_degradation=f.max_degradation, overwrite=f.overwrite,
                              images_dir=f.images or None, verify_source=f.verify_source,
                              calibration_dir=f.calibration_images or None,
                              litert_switches=f.litert_switches, litert_forms=f.litert_forms)
    except VerificationError as err:
        print(summary(err.report), file=sys.stderr)
        print(f"error: {err}\nnothing was written to {f.out!r}", file=sys.stderr)
        return 1
    except (ValueError, KeyError, FileNotFoundError, FileExistsError) as err:
        print(f"error: {error_message(err)}", file=sys.stderr)
        return 2
    print(summary(report))
    print(f"\nexported to {report['out_dir']} (report: {REPORT}, model card: model_card.md)")
    return 0




def summary(report: dict) -> str:
    """A table: per format, the largest float-output |diff| and each primary metric."""
    keys = list(next(iter(report["formats"].values()))["primary"]) if report["formats"] else []
    head = f"{'format':14s} {'max|diff|':>10s} " + " ".join(f"{k:>16s}" for k in keys) + "  status"
    rows = [head, f"{'keras':14s} {'':>10s} " + " ".join(f"{report['keras']['metrics'][k]:16.4f}" for k in keys)]
    for name, entry in report["formats"].items():
        diff = max(o["max_abs_diff"] for o in entry["outputs"].values() if "mismatch_fraction" not in o)
        status = "ok" if entry["passed"] else "BROKEN"
        rows.append(f"{name:14s} {diff:10.2e} " + " ".join(f"{entry['primary'][k]['value']:16.4f}" for k in keys)
                    + f"  {status}")
    return "\n".join(rows)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from absl import app

    define_flags()
    app.run(lambda argv: sys.exit(main(argv)))
