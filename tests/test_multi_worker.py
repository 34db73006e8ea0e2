"""--strategy=multi_worker: two worker processes on 127.0.0.1 (free ports) train the tiny synthetic
set; the chief's weights equal a one-process MirroredStrategy run over 2 logical CPUs with the
same global batch; only the chief writes the model directory; a worker killed during epoch 2 is
recovered by restarting the cluster (benchmarks/multi_worker_local.py --max_restarts) and the run
ends with the same weights; bad TF_CONFIGs are named.

The learning rate is tiny (1e-12): Adam's first steps move every weight by about +-lr
whatever the gradient's size, so float noise in near-zero gradients (biases before BatchNorm)
would flip signs between the two runs; with a tiny rate the comparison tests what multi-worker
changes, i.e. which images each replica sees (BatchNorm statistics, per-epoch losses) and the
loss normalisation, to float32 rounding."""

import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import multi_worker_local  # noqa: E402
from tests_helpers import SMOKE, checkpoint_variables  # noqa: E402

MIRRORED = textwrap.dedent("""
    import sys
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from mtpsl_tf.flags import config_from_flagfile
    from mtpsl_tf.training.run import run
    run(config_from_flagfile(sys.argv[1], sys.argv[2:]))
""")


EPOCHS = 3


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """(flagfile, model dir of the one-process mirrored run); it also prepares the data once,
    so the workers do not race to write it."""
    root = tmp_path_factory.mktemp("multi_worker")
    flagfile = root / "tiny.flags"
    flagfile.write_text("\n".join(SMOKE + ["--num_train=16", f"--epochs={EPOCHS}", "--learning_rate=1e-12",
                                          f"--data_dir={root / 'tfds'}"]) + "\n")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    model_dir = root / "mirrored"
    done = subprocess.run([sys.executable, "-c", MIRRORED, str(flagfile), "--strategy=mirrored",
                           f"--model_dir={model_dir}"], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return flagfile, model_dir


def _assert_same_run(model_dir, reference_dir):
    history = json.loads((model_dir / "history.json").read_text())
    assert [h["epoch"] for h in history] == list(range(1, EPOCHS + 1))
    want_history = json.loads((reference_dir / "history.json").read_text())
    for got, want in zip(history, want_history):
        for key, value in want["train"].items():
            assert got["train"][key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
    ours, want = checkpoint_variables(model_dir), checkpoint_variables(reference_dir)
    assert ours.keys() == want.keys() and ours
    for name in ours:
        np.testing.assert_allclose(ours[name], want[name], rtol=1e-5, atol=1e-6, err_msg=name)


def _logs(log_dir):
    return "\n".join(p.read_text()[-2000:] for p in sorted(log_dir.glob("worker_*.log")))


def _kill_after_first_checkpoint(model_dir, victim: int):
    """on_launch hook: in the first attempt, kills worker `victim` as soon as the chief has
    written its epoch-1 checkpoint, i.e. while epoch 2 trains."""
    def hook(attempt, procs):
        if attempt:
            return

        def watch():
            state = model_dir / "checkpoints" / "checkpoint"
            deadline = time.time() + 600
            while time.time() < deadline and procs[victim].poll() is None:
                if state.exists() and "ckpt-1" in state.read_text():
                    procs[victim].kill()
                    return
                time.sleep(0.01)
        threading.Thread(target=watch, daemon=True).start()
    return hook


def test_two_workers_train_like_one_mirrored_process_through_a_killed_worker(tmp_path, reference):
    flagfile, reference_dir = reference
    model_dir = tmp_path / "workers"
    args = [f"--flagfile={flagfile}", "--strategy=multi_worker", f"--model_dir={model_dir}"]
    result = multi_worker_local.supervise(args, workers=2, timeout=600, max_restarts=1, log_dir=str(tmp_path),
                                          on_launch=_kill_after_first_checkpoint(model_dir, victim=1))
    assert result["restarts"] == 1 and result["attempt_codes"][0][1] == -signal.SIGKILL, (result, _logs(tmp_path))
    assert result["exit_codes"] == [0, 0], _logs(tmp_path)
    resumed = re.search(r"resumed from \S+ \(epoch (\d+)\)", (tmp_path / "worker_0.restart1.log").read_text())
    assert resumed and 1 <= int(resumed.group(1)) < EPOCHS, _logs(tmp_path)
    # train.py says where it trains (its INFO lines reach the log under absl).
    assert "training with --strategy=multi_worker (CollectiveAllReduceStrategy) on 2 replica(s)" in (
        tmp_path / "worker_0.log").read_text()
    _assert_same_run(model_dir, reference_dir)
    # The best model is the mirrored run's. At --learning_rate=1e-12 only the BatchNorm
    # statistics move and the best epoch here is the first, saved before the kill: the
    # restarted worker's own (temporary) directory lacks it, and evaluating it must still
    # be a step every worker takes (it once was the chief's alone, and the chief failed).
    report, want = (json.loads((d / "metrics.json").read_text()) for d in (model_dir, reference_dir))
    assert report["best"]["epoch"] == want["best"]["epoch"], (report["best"], want["best"])
    # Only the chief wrote the model directory (workers write to temporary ones).
    assert sorted(p.name for p in model_dir.iterdir()) == ["best", "checkpoints", "config.json", "history.json",
                                                          "logs", "metrics.json"]


@pytest.mark.parametrize("value, message", [
    (None, "needs the TF_CONFIG environment variable"),
    ("{not json", "TF_CONFIG is not valid JSON"),
    ('{"task": {"type": "worker", "index": 0}}', 'needs a "cluster"'),
    ('{"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "ps", "index": 0}}', 'must name a type'),
    ('{"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": 3}}', "index 3 is out of range"),
])
def test_bad_tf_config_is_named(value, message):
    from mtpsl_tf.training.run import check_tf_config

    with pytest.raises(ValueError, match=message):
        check_tf_config(value)
