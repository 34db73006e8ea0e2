"""The benchmark scripts run (tiny shapes) and end with one JSON line, so they do not rot."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(script, *args):
    result = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", script), *args],
                            capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_conv_layers_benchmark():
    report = _run("conv_layers.py", "--batch_size=1", "--height=32", "--width=32", "--repeats=1")
    frameworks = {row["framework"] for row in report["rows"]}
    assert {"tensorflow", "tensorflow+xla"} <= frameworks
    assert all(row["gflops_per_s"] > 0 for row in report["rows"])


# Loads benchmarks/train_step.py (argv[1]) as `module` in a fresh interpreter.
_LOAD_TRAIN_STEP = """
import importlib.util, json, sys
import tensorflow as tf
spec = importlib.util.spec_from_file_location("train_step", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
"""

_FLOPS_CHECK = _LOAD_TRAIN_STEP + """
out = {}
for groups in (1, 4):
    kernel = tf.Variable(tf.ones([3, 3, 8 // groups, 12]))
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = tf.nn.conv2d(x, kernel, 2, "SAME")
        return tape.gradient(y, [x, kernel])
    graph = tf.function(step).get_concrete_function(tf.TensorSpec([2, 16, 16, 8])).graph
    out[groups] = module.conv_flops(graph)
print(json.dumps(out))
"""


def _check(script):
    """Runs `script` with train_step.py's path as argv[1]; its last stdout line as JSON."""
    result = subprocess.run([sys.executable, "-c", script, os.path.join(ROOT, "benchmarks", "train_step.py")],
                            capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_train_step_counts_grouped_conv_flops():
    """Forward, input-gradient and filter-gradient convolutions each cost the forward MACs:
    2 x (2 x 8 x 8 output positions) x 12 channels x 9 taps x (8 / groups) inputs, x 3 ops."""
    flops = _check(_FLOPS_CHECK)
    assert flops == {str(g): 3 * 2.0 * (2 * 8 * 8) * 12 * 9 * (8 // g) for g in (1, 4)}


_LOOP_FLOPS_CHECK = _LOAD_TRAIN_STEP + """
kernel = tf.Variable(tf.ones([3, 3, 4, 4]))
conv = tf.function(lambda x: tf.nn.conv2d(x, kernel, 1, "SAME"))  # a nested function, called twice
def step(x, bounded):
    body = lambda j, y: (j + 1, conv(y))
    _, y = tf.while_loop(lambda j, y: j < 3, body, (tf.constant(0), x), maximum_iterations=3 if bounded else None)
    y = tf.cond(tf.reduce_sum(y) > 0, lambda: conv(conv(y)), lambda: y)  # counts as its costlier branch
    return conv(y)
spec = tf.TensorSpec([1, 8, 8, 4])
out = {"bounded": module.conv_flops(tf.function(step).get_concrete_function(spec, True).graph)}
try:
    module.conv_flops(tf.function(step).get_concrete_function(spec, False).graph)
except ValueError as error:
    out["unbounded"] = str(error)
print(json.dumps(out))
"""


def test_train_step_counts_loop_bodies_per_iteration_and_calls_per_call():
    """3 iterations of a loop calling a conv function, a conditional whose costlier branch calls
    it twice, plus one more call: 6 forward convs of 2 x 64 positions x 4 channels x 9 taps x 4
    inputs; a loop without a constant bound is refused."""
    out = _check(_LOOP_FLOPS_CHECK)
    assert out["bounded"] == 6 * 2.0 * 64 * 4 * 9 * 4
    assert "trip count is not a constant" in out["unbounded"]


@pytest.mark.slow  # CI time; `pytest -m slow` runs it (the benchmark script itself is the check)
def test_train_step_benchmark():
    # One case (the PASCAL backbone, no XLA): each costs over a minute of tracing; the
    # methods' steps themselves are covered by the training tests.
    report = _run("train_step.py", "--dataset=pascal_context", "--backbone=resnet18_aspp", "--setting=full",
                  "--noxla", "--filters=4,4,8,8,8", "--height=32", "--width=32", "--batch_size=2",
                  "--warmup=1", "--steps=1")
    assert report["step_s"] > 0 and report["conv_gflop_per_step"] > 0
    assert 0 < report["rss_before_step_mb"] <= report["peak_rss_mb"]


@pytest.mark.slow  # CI time (~45 s); `pytest -m slow` runs it (the benchmark script itself is the check)
def test_inference_benchmark_rows_per_format_and_switches():
    report = _run("inference.py", "--setups=nyuv2:32x64", "--filters=4,4,8,8,8", "--formats=keras,tflite",
                  "--litert_switches=arithmetic,compare", "--warmup=0", "--runs=1")
    rows = [(r["format"], r["switches"]) for r in report["results"]]
    assert rows == [("keras", None), ("tflite", "arithmetic"), ("tflite", "compare")]
    partitions = {r["switches"]: r["xnnpack_nodes"] for r in report["results"] if r["format"] == "tflite"}
    assert partitions["arithmetic"] == 1 < partitions["compare"]  # with the default --litert_forms=all
    assert all(r["median_ms"] > 0 and r["peak_rss_mb"] > 0 for r in report["results"])


def test_inference_benchmark_names_a_bad_torch_repo(tmp_path):
    result = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "inference.py"), "--setups=nyuv2:32x64",
                             "--formats=keras", f"--torch_repo={tmp_path}"], capture_output=True, text=True,
                            timeout=600, cwd=ROOT)
    assert result.returncode != 0
    assert f"--torch_repo={tmp_path}" in result.stderr and "model/segnet_mtl.py not found" in result.stderr


@pytest.mark.slow  # CI time; `pytest -m slow` runs it (the benchmark script itself is the check)
def test_gpu_suite_smoke():
    """benchmarks/gpu_suite.sh in its tiny CPU mode: one JSON line per method."""
    env = dict(os.environ, SMOKE="1")
    result = subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "gpu_suite.sh")], capture_output=True,
                            text=True, timeout=600, cwd=ROOT, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in result.stdout.strip().splitlines()]
    assert [r["method"] for r in rows] == ["sl", "mtpsl"]
    assert all(r["step_s"] > 0 and "peak_gpu_mb" in r for r in rows)


def test_edge_ods_benchmark():
    report = _run("edge_ods.py", "--size=48", "--images=1", "--pyedgeeval")
    assert report["ours_s_per_image"] > 0 and report["speedup"] > 0
    assert report["max_abs_count_difference"]["sumR"] == 0


@pytest.mark.slow  # CI time; `pytest -m slow` runs it (the benchmark script itself is the check)
def test_weighting_overhead_reports_each_weighting_relative_to_fixed():
    report = _run("weighting_overhead.py", "--weightings=uncertainty", "--noxla", "--filters=4,4,8,8,8",
                  "--height=32", "--width=32", "--warmup=1", "--steps=1", "--option=gradnorm_alpha=1.0")
    rows = {r["weighting"]: r for r in report["rows"]}
    assert list(rows) == ["fixed", "uncertainty"] and rows["fixed"]["relative"] == 1.0
    assert rows["uncertainty"]["step_s"] > 0
    assert abs(rows["uncertainty"]["relative"] - rows["uncertainty"]["step_s"] / rows["fixed"]["step_s"]) < 1e-2
