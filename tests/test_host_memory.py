"""--lean_host_memory: TensorFlow's BFC CPU allocator and glibc malloc settings, taken before
TensorFlow starts (mtpsl_tf/host_memory.py)."""

import json
import os
import pathlib
import platform
import subprocess
import sys

import pytest

from tests_helpers import TINY, tiny_config

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Imports TensorFlow first (as train.py, whose flag definitions do), then optionally applies the
# settings, then reports them, what a 12-byte tensor costs TensorFlow's CPU allocator (the BFC
# allocator rounds every allocation up to its 256-byte minimum chunk) and check_applied's verdict.
_PROBE = """
import json, sys
import tensorflow as tf
from mtpsl_tf.host_memory import check_applied, use_lean_host_memory
applied = use_lean_host_memory() if sys.argv[1] == "lean" else []
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


def test_lean_host_memory_selects_bfc_and_glibc_settings():
    assert platform.libc_ver()[0] == "glibc"  # the settings below are glibc's (CI: Linux)
    lean = _probe("lean")
    assert lean["applied"] == ["TF_CPU_ALLOCATOR_USE_BFC=true", "M_MMAP_THRESHOLD=131072",
                               "M_TRIM_THRESHOLD=131072", "M_ARENA_MAX=2"]
    assert lean["bytes"] == 256 and lean["check"] == "ok"


def test_check_applied_names_the_flag_without_bfc():
    default = _probe("default")
    assert default["bytes"] != 256
    assert default["check"].startswith("--lean_host_memory is set but TensorFlow's CPU allocator was created without")


def test_run_refuses_lean_host_memory_it_cannot_apply(tmp_path, monkeypatch):
    from mtpsl_tf.training.run import run

    monkeypatch.delenv("TF_CPU_ALLOCATOR_USE_BFC", raising=False)
    with pytest.raises(ValueError, match="--lean_host_memory"):
        run(tiny_config(tmp_path, tmp_path / "out", epochs=1, lean_host_memory=True))
    assert not (tmp_path / "out").exists()


def test_train_py_applies_lean_host_memory(tmp_path):
    model_dir = tmp_path / "out"
    result = subprocess.run([sys.executable, str(ROOT / "train.py"), *TINY, "--epochs=1", "--lean_host_memory",
                             f"--data_dir={tmp_path / 'tfds'}", f"--model_dir={model_dir}"], cwd=tmp_path,
                            env=_env_without_bfc(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "lean host memory: TF_CPU_ALLOCATOR_USE_BFC=true M_MMAP_THRESHOLD=131072" in result.stderr
    assert json.loads((model_dir / "config.json").read_text())["train"]["lean_host_memory"] is True
    assert (model_dir / "metrics.json").exists()
