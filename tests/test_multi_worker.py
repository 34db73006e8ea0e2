"""--strategy=multi_worker: two worker processes on 127.0.0.1 (free ports) train the tiny synthetic
set; the chief's weights equal a one-process MirroredStrategy run over 2 logical CPUs with the
same global batch; only the chief writes the model directory; bad TF_CONFIGs are named.

The learning rate is tiny (1e-12): Adam's first steps move every weight by about +-lr
whatever the gradient's size, so float noise in near-zero gradients (biases before BatchNorm)
would flip signs between the two runs; with a tiny rate the comparison tests what multi-worker
changes, i.e. which images each replica sees (BatchNorm statistics, per-epoch losses) and the
loss normalisation, to float32 rounding."""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import multi_worker_local  # noqa: E402
from tests_helpers import TINY, checkpoint_network_weights  # noqa: E402

MIRRORED = textwrap.dedent("""
    import sys
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from mtpsl_tf.flags import config_from_flagfile
    from mtpsl_tf.training.run import run
    run(config_from_flagfile(sys.argv[1], sys.argv[2:]))
""")


def test_two_workers_train_like_one_mirrored_process(tmp_path):
    flagfile = tmp_path / "tiny.flags"
    flagfile.write_text("\n".join(TINY + ["--epochs=2", "--learning_rate=1e-12", f"--data_dir={tmp_path / 'tfds'}"])
                        + "\n")
    # Prepare the data once, so the workers do not race to write it.
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    reference = tmp_path / "mirrored"
    done = subprocess.run([sys.executable, "-c", MIRRORED, str(flagfile), "--strategy=mirrored",
                           f"--model_dir={reference}"], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    model_dir = tmp_path / "workers"
    args = [f"--flagfile={flagfile}", "--strategy=multi_worker", f"--model_dir={model_dir}"]
    procs = multi_worker_local.launch(args, multi_worker_local.tf_configs(multi_worker_local.free_ports(2)),
                                      log_dir=str(tmp_path))
    codes = multi_worker_local.wait(procs, timeout=600)
    logs = "\n".join((tmp_path / f"worker_{i}.log").read_text()[-2000:] for i in range(2))
    assert codes == [0, 0], logs
    history = json.loads((model_dir / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    want_history = json.loads((reference / "history.json").read_text())
    for got, want in zip(history, want_history):
        for key, value in want["train"].items():
            assert got["train"][key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
    assert sorted(p.name for p in model_dir.iterdir()) == ["best", "checkpoints", "config.json", "history.json",
                                                          "logs", "metrics.json"]
    ours, want = checkpoint_network_weights(model_dir), checkpoint_network_weights(reference)
    assert ours.keys() == want.keys() and ours
    for name in ours:
        np.testing.assert_allclose(ours[name], want[name], rtol=1e-5, atol=1e-6, err_msg=name)


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
