"""--lean_host_memory (glibc malloc settings) and --bfc_host_allocator (TensorFlow's BFC CPU
allocator, taken before TensorFlow starts): mtpsl_tf/host_memory.py."""

import json
import os
import pathlib
import platform
import subprocess
import sys

import pytest

from tests_helpers import SMOKE, tiny_config

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Imports TensorFlow first (as train.py, whose flag definitions do), then applies the settings
# named in argv[1] ("lean", "bfc", both joined by "+", or "default"), then reports them, what a
# 12-byte tensor costs TensorFlow's CPU allocator (the BFC allocator rounds every allocation up
# to its 256-byte minimum chunk) and check_applied's verdict.
_PROBE = """
import json, sys
import tensorflow as tf
from mtpsl_tf.host_memory import check_applied, use_bfc_host_allocator, use_lean_host_memory
modes = sys.argv[1].split("+")
applied = (use_lean_host_memory() if "lean" in modes else []) + (use_bfc_host_allocator() if "bfc" in modes else [])
before = tf.config.experimental.get_memory_info("CPU:0")["current"]
x = tf.random.uniform([3])
grown = tf.config.experimental.get_memory_info("CPU:0")["current"] - before
try:
    check_applied(True)
    verdict = "ok"
except ValueError as err:
    verdict = str(err)
print(json.dumps({"applied": applied, "bytes": grown, "check": verdict}))
"""


def _env_without_bfc():
    """This environment minus TensorFlow's allocator switch, quiet."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPU_ALLOCATOR_USE_BFC"}
    return dict(env, TF_CPP_MIN_LOG_LEVEL="3")


def _probe(mode):
    result = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, timeout=300,
                            cwd=ROOT, env=_env_without_bfc())
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_lean_host_memory_sets_glibc_malloc_only():
    assert platform.libc_ver()[0] == "glibc"  # the settings below are glibc's (CI: Linux)
    lean = _probe("lean")
    assert lean["applied"] == ["M_MMAP_THRESHOLD=131072", "M_TRIM_THRESHOLD=131072", "M_ARENA_MAX=2"]
    assert lean["bytes"] != 256  # TensorFlow's allocator untouched


def test_bfc_host_allocator_selects_bfc():
    both = _probe("lean+bfc")
    assert both["applied"] == ["M_MMAP_THRESHOLD=131072", "M_TRIM_THRESHOLD=131072", "M_ARENA_MAX=2",
                               "TF_CPU_ALLOCATOR_USE_BFC=true"]
    assert both["bytes"] == 256 and both["check"] == "ok"


def test_check_applied_names_the_flag_without_bfc():
    default = _probe("default")
    assert default["bytes"] != 256
    assert default["check"].startswith("--bfc_host_allocator is set but TensorFlow's CPU allocator was created without")


def test_run_refuses_bfc_host_allocator_it_cannot_apply(tmp_path, monkeypatch):
    from mtpsl_tf.training.run import run

    monkeypatch.delenv("TF_CPU_ALLOCATOR_USE_BFC", raising=False)
    with pytest.raises(ValueError, match="--bfc_host_allocator"):
        run(tiny_config(tmp_path, tmp_path / "out", epochs=1, bfc_host_allocator=True))
    assert not (tmp_path / "out").exists()


def test_train_py_applies_both_host_memory_flags(tmp_path):
    model_dir = tmp_path / "out"
    result = subprocess.run([sys.executable, str(ROOT / "train.py"), *SMOKE, "--epochs=1", "--lean_host_memory",
                             "--bfc_host_allocator", f"--data_dir={tmp_path / 'tfds'}", f"--model_dir={model_dir}"],
                            cwd=tmp_path, env=_env_without_bfc(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "--lean_host_memory: M_MMAP_THRESHOLD=131072 M_TRIM_THRESHOLD=131072 M_ARENA_MAX=2" in result.stderr
    assert "--bfc_host_allocator: TF_CPU_ALLOCATOR_USE_BFC=true" in result.stderr
    train = json.loads((model_dir / "config.json").read_text())["train"]
    assert train["lean_host_memory"] is True and train["bfc_host_allocator"] is True
    assert (model_dir / "metrics.json").exists()
