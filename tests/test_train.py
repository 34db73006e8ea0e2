"""End-to-end: train.py / run() on tiny synthetic data, resume, outputs, bad input."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest


ROOT = pathlib.Path(__file__).resolve().parents[1]
from tests_helpers import SMOKE, TINY, checkpoint_variables, tiny_config  # noqa: E402


def test_run_writes_outputs_and_resumes_exactly(tmp_path):
    from mtpsl_tf.training.run import run

    straight = tmp_path / "straight"
    report = run(tiny_config(tmp_path, straight, flags=SMOKE, epochs=2, stl_reference=
                             "semantic/miou=0.5,depth/abs_err=1.0,normal/mean=30", compare_delta_mtl="sl:-11.1"))
    for name in ("config.json", "metrics.json", "history.json", "checkpoints", "best", "logs"):
        assert (straight / name).exists(), name
    metrics = json.loads((straight / "metrics.json").read_text())
    assert metrics["epochs"] == 2
    assert set(metrics["last"]["metrics"]) >= {"semantic/miou", "depth/abs_err", "normal/mean"}
    assert isinstance(metrics["last"]["delta_mtl"], float)
    assert metrics["compare_delta_mtl"] == {"sl": -11.1}
    assert report["path"].endswith("metrics.json")
    assert not list(straight.glob("*.tmp"))
    # The fixed weighting logs no weights: no weight/ keys, no per-step TensorBoard scalars.
    train = json.loads((straight / "history.json").read_text())[0]["train"]
    assert not [k for k in train if k.startswith("weight/")]
    assert not (straight / "logs" / "steps").exists()

    resumed = tmp_path / "resumed"
    run(tiny_config(tmp_path, resumed, flags=SMOKE, epochs=1))
    run(tiny_config(tmp_path, resumed, flags=SMOKE, epochs=2))
    history = json.loads((resumed / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    a, b = (checkpoint_variables(d, optimizer_slots=False) for d in (straight, resumed))
    assert a.keys() == b.keys() and a
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-4, atol=1e-5, err_msg=name)


def test_stl_trains_one_head(tmp_path):
    from mtpsl_tf.training.run import run

    report = run(tiny_config(tmp_path, tmp_path / "stl", flags=SMOKE, epochs=1, method="stl", stl_task="depth"))
    assert set(report["last"]["metrics"]) == {"depth/abs_err", "depth/rel_err", "depth/rmse"}


def _train(args, cwd):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_bad_input_exits_non_zero_with_the_message_and_leaves_nothing(tmp_path):
    """train.py end to end: a user error is printed as `error: ...`, exit status 2."""
    model_dir = tmp_path / "out"
    result = _train([*TINY, f"--data_dir={tmp_path / 'tfds'}", f"--model_dir={model_dir}", "--method=nope"], tmp_path)
    assert result.returncode == 2
    assert "error: unknown method 'nope'" in result.stderr, result.stderr[-2000:]
    assert not model_dir.exists()


@pytest.mark.parametrize("args, expected", [
    (["--dataset=nope"], "unknown dataset 'nope'"),
    (["--setting=ratio=1:0:0"], "depth"),
    (["--setting=sometimes"], "sometimes"),
    (["--batch_size=64"], "--batch_size=64"),
    (["--compare_delta_mtl=sl=-11.1"], "--compare_delta_mtl entries must look like name:value"),
])
def test_bad_input_is_a_user_error_naming_it(tmp_path, args, expected):
    """The errors train.py prints (USER_ERRORS, the test above), raised by the config or by
    run() before anything is written (in-process: a train.py process costs seconds of CI)."""
    from mtpsl_tf.cli import USER_ERRORS, error_message
    from mtpsl_tf.training.run import run

    model_dir = tmp_path / "out"
    with pytest.raises(USER_ERRORS) as info:
        run(tiny_config(tmp_path, model_dir, flags=TINY + args))
    assert expected in error_message(info.value)
    assert not model_dir.exists()


def test_missing_real_dataset_is_explained(tmp_path):
    result = _train(["--dataset=nyuv2", f"--data_dir={tmp_path / 'empty'}", f"--model_dir={tmp_path / 'out'}"], tmp_path)
    assert result.returncode != 0
    assert "prepare.py" in result.stderr and "nyuv2" in result.stderr, result.stderr[-2000:]
    assert not (tmp_path / "out").exists()


def test_unknown_flag_in_flagfile(tmp_path):
    flagfile = tmp_path / "bad.flags"
    flagfile.write_text("--dataset=synthetic\n--learning_rat=0.1\n")
    result = _train([f"--flagfile={flagfile}", f"--model_dir={tmp_path / 'out'}"], tmp_path)
    assert result.returncode != 0
    assert "learning_rat" in result.stderr
    assert not (tmp_path / "out").exists()


def test_delta_mtl_is_none_when_a_primary_metric_is_undefined():
    from mtpsl_tf.data.registry import DATASETS
    from mtpsl_tf.training.delta import compute

    tasks = DATASETS.get("synthetic").tasks()
    reference = {"semantic/miou": 0.5, "depth/abs_err": 1.0, "normal/mean": 30.0}
    results = {"semantic/miou": 0.5, "depth/abs_err": 2.0, "normal/mean": 30.0}
    # (0 - 100 + 0) / 3: depth's error doubled
    assert compute(results, tasks, reference) == pytest.approx(-100.0 / 3)
    assert compute({**results, "normal/mean": None}, tasks, reference) is None  # a NaN metric
    assert compute(results, tasks, None) is None


def test_undefined_test_metric_is_none_in_the_report(tmp_path):
    """A NaN test metric is None in metrics.json (valid JSON, as history.json does) and reads
    "undefined" in train.py's summary."""
    from mtpsl_tf.cli import metric_text
    from mtpsl_tf.training import callbacks, run

    class Evaluates:  # the one method _evaluate calls
        def evaluate(self, dataset, verbose, return_dict):
            return {"normal/mean": np.float32("nan"), "depth/abs_err": np.array([0.25]), "loss": 1.0}

    metrics = run._evaluate(Evaluates(), test_ds=None)
    assert metrics == {"normal/mean": None, "depth/abs_err": 0.25}  # "loss" is no test metric
    path = tmp_path / "metrics.json"
    callbacks.write_json_atomic(str(path), {"last": {"metrics": metrics}})
    assert "NaN" not in path.read_text()
    assert json.loads(path.read_text())["last"]["metrics"]["normal/mean"] is None
    assert (metric_text(None), metric_text(0.25)) == ("undefined", "0.2500")


def test_compare_delta_mtl_lines():
    from mtpsl_tf.training.delta import comparison_lines

    assert comparison_lines("mtpsl", -5.0, {"sl": -11.1, "stl": 0.0}) == [
        "compare: mtpsl -5.00% vs sl -11.10% (stored): mtpsl is higher (better) by +6.10 points",
        "compare: mtpsl -5.00% vs stl +0.00% (stored): mtpsl is not higher (not better) by -5.00 points"]
    assert comparison_lines("sl", None, {"sl": -11.1}) == [
        "compare: sl -11.10% (stored); this run has no Delta-MTL (no STL reference)"]
    assert comparison_lines("sl", -1.0, {}) == []
