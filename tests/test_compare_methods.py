"""benchmarks/compare_methods.py: mean ± std, standard error and the --check_order bar, on
finished runs written here (the script reuses them, so nothing trains)."""

import json
import math
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "compare_methods.py")
STL = {"semantic/miou": 0.2, "depth/abs_err": 0.5, "normal/mean": 30.0}
DELTAS = {"sl": [-10.0, -14.0, -12.0], "mtpsl": [-6.0, -8.0, -7.0]}


def _write(path, metrics, delta):
    os.makedirs(path)
    with open(os.path.join(path, "metrics.json"), "w") as f:
        json.dump({"last": {"metrics": metrics, "delta_mtl": delta}}, f)


@pytest.fixture()
def finished(tmp_path):
    for task in ("semantic", "depth", "normal"):
        _write(tmp_path / f"stl_{task}", STL, 0.0)
    for method, deltas in DELTAS.items():
        for seed, delta in enumerate(deltas):
            _write(tmp_path / f"{method}_seed{seed}", {k: v + seed for k, v in STL.items()}, delta)
    return tmp_path


def _compare(out, *args):
    return subprocess.run([sys.executable, SCRIPT, f"--out={out}", "--methods=sl,mtpsl", "--seeds=0,1,2", *args],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_summary_has_mean_sample_std_and_standard_error(finished):
    result = _compare(finished)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((finished / "summary.json").read_text())
    # numpy-free transcription: sample std (n - 1), se = std / sqrt(n).
    for method, deltas in DELTAS.items():
        mean = sum(deltas) / 3
        std = math.sqrt(sum((d - mean) ** 2 for d in deltas) / 2)
        assert summary["mean"][method]["delta_mtl"] == pytest.approx(mean)
        assert summary["std"][method]["delta_mtl"] == pytest.approx(std)
        assert summary["se"][method]["delta_mtl"] == pytest.approx(std / math.sqrt(3))
    assert summary["std"]["sl"]["depth/abs_err"] == pytest.approx(1.0)  # seeds add 0, 1, 2
    assert "| sl (3 seeds) |" in result.stdout and "-12.0000 ± 2.0000 (se 1.1547; -10.0000, -14.0000, -12.0000)" \
        in result.stdout


@pytest.mark.parametrize("args, code, line", [
    # difference 5 points; its standard error sqrt(4/3 + 1/3) = 1.29.
    (["--check_order=mtpsl>sl", "--check_se=2"], 0, "PASS mtpsl>sl: Delta-MTL difference +5.00 points, standard error 1.29"),
    (["--check_order=mtpsl>sl", "--check_se=4"], 1, "FAIL mtpsl>sl"),
    (["--check_order=sl>mtpsl"], 1, "FAIL sl>mtpsl: Delta-MTL difference -5.00 points"),
])
def test_check_order_bar_sets_the_exit_status(finished, args, code, line):
    result = _compare(finished, *args)
    assert result.returncode == code, result.stderr[-2000:]
    assert line in result.stdout


def test_bad_check_order_is_named(finished):
    result = _compare(finished, "--check_order=mtpsl>stl")
    assert result.returncode == 2
    assert "--check_order entries must look like a>b" in result.stderr and "'mtpsl>stl'" in result.stderr


def test_method_with_weighting_entries_are_runs_of_their_own(finished):
    for seed, delta in enumerate([-3.0, -5.0]):
        _write(finished / f"mtpsl+dwa_seed{seed}", STL, delta)
    result = subprocess.run([sys.executable, SCRIPT, f"--out={finished}", "--methods=sl,mtpsl+dwa", "--seeds=0,1",
                             "--jobs=2", "--check_order=mtpsl+dwa>sl"],
                            capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((finished / "summary.json").read_text())
    assert summary["mean"]["mtpsl+dwa"]["delta_mtl"] == pytest.approx(-4.0)
    assert summary["mean"]["sl"]["delta_mtl"] == pytest.approx(-12.0)  # seeds 0, 1 only
    assert "| mtpsl+dwa (2 seeds) |" in result.stdout


def test_more_pinned_cpus_than_available_is_refused(finished):
    result = _compare(finished, "--jobs=2", f"--cpus_per_job={len(os.sched_getaffinity(0))}")
    assert result.returncode == 2
    assert "--jobs=2 x --cpus_per_job=" in result.stderr and "this process may use" in result.stderr


def test_method_flags_and_cpu_slots():
    """In a subprocess: importing the script defines its absl flags, which would clash with
    other modules' flags in this test process."""
    code = ("import compare_methods as c; "
            "assert c.method_flags('sl') == ['--method=sl']; "
            "assert c.method_flags('mtpsl+uncertainty') == ['--method=mtpsl', '--weighting=uncertainty']; "
            "assert c.method_flags('direct_map', ['direct_map=--noxla', 'sl=--epochs=2']) == "
            "['--method=direct_map', '--noxla']; "
            "assert len(c.cpu_slots(1, 1).get()) == 1; "
            "assert c.cpu_slots(2, 0).get() is None; print('ok')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            cwd=os.path.join(ROOT, "benchmarks"))
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


def test_bad_method_flag_is_named(finished):
    result = _compare(finished, "--method_flag=stl=--noxla")
    assert result.returncode == 2
    assert "--method_flag entries must look like ENTRY=--flag" in result.stderr and "'stl=--noxla'" in result.stderr


def test_a_failed_run_is_named_and_the_exit_status_is_1(finished):
    """sl seed 3 is not finished, so it trains, from a flagfile that does not exist."""
    result = subprocess.run([sys.executable, SCRIPT, f"--out={finished}", "--methods=sl", "--seeds=0,3",
                             f"--flagfile_base={finished / 'missing.flags'}"],
                            capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 1
    assert "error: a run failed (exit status" in result.stderr and "sl_seed3" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_undefined_metric_leaves_its_statistics_undefined(finished):
    """A run with a NaN metric (None in metrics.json) makes its method's mean undefined, not a
    crash after hours of training; a bar on it fails."""
    run = finished / "mtpsl_seed1"
    metrics = json.loads((run / "metrics.json").read_text())["last"]["metrics"]
    (run / "metrics.json").write_text(json.dumps({"last": {"metrics": {**metrics, "normal/mean": None},
                                                          "delta_mtl": None}}))
    result = _compare(finished, "--check_order=mtpsl>sl")
    assert result.returncode == 1, result.stderr[-2000:]
    summary = json.loads((finished / "summary.json").read_text())
    assert summary["mean"]["mtpsl"]["delta_mtl"] is None and summary["se"]["mtpsl"]["normal/mean"] is None
    assert summary["mean"]["mtpsl"]["depth/abs_err"] == pytest.approx(STL["depth/abs_err"] + 1)
    assert summary["mean"]["sl"]["delta_mtl"] == pytest.approx(-12.0)
    assert "undefined (-6.0000, undefined, -7.0000)" in result.stdout
    assert "FAIL mtpsl>sl: a run's Delta-MTL is undefined" in result.stdout


def test_an_undefined_stl_metric_is_named(finished):
    (finished / "stl_normal" / "metrics.json").write_text(json.dumps(
        {"last": {"metrics": {**STL, "normal/mean": None}, "delta_mtl": 0.0}}))
    result = _compare(finished)
    assert result.returncode == 1
    assert "normal/mean undefined" in result.stderr and "stl_" in result.stderr
