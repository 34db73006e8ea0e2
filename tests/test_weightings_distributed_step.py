"""A FULL training step (`MultiTaskModel.train_step` through Keras `fit`: losses, weighting,
per-task gradients, optimiser updates) under MirroredStrategy on 2 logical CPUs equals one
device's: same network weights and same weighting variables and state after 2 steps.

Cases: `uncertainty` (learned log-variances) on segnet, `gradnorm` (per-task gradients of the
shared parameters, its own loss on the last shared kernel) on segnet_mtan (whose per-task
attention gates are not shared parameters).

The global batch repeats 2 images ([a, b, a, b], labels and label masks all different), so
each replica's share is [a, b] and training-mode BatchNorm normalises with the same batch
statistics on one device and on each replica (per-replica statistics, as PyTorch
DataParallel, would otherwise legitimately differ). Runs in a subprocess: logical devices
must be configured before TensorFlow initialises.
"""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

SCRIPT = textwrap.dedent(r'''
    import json, os, sys
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

    import keras
    from mtpsl_tf.config import ExperimentConfig
    from mtpsl_tf.data.registry import DATASETS
    from mtpsl_tf.training.run import _build_optimizer_state, build, complete_options

    B, H, W, STEPS = 4, 32, 32, 2
    TASKS = DATASETS.get("synthetic").tasks()
    rng = np.random.default_rng(0)

    def batch(step):
        two = rng.uniform(size=(2, H, W, 3)).astype(np.float32)
        normal = rng.normal(size=(B, H, W, 3)).astype(np.float32)
        normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
        classes = TASKS[0].channels
        return {
            "image": np.concatenate([two, two]),
            "labels": {"semantic": rng.integers(-1, classes, size=(B, H, W)).astype(np.int32),
                       "depth": rng.uniform(0.5, 5.0, size=(B, H, W, 1)).astype(np.float32),
                       "normal": normal},
            "label_mask": {"semantic": np.array([1, 0, 1, 1], np.float32),
                           "depth": np.array([0, 1, 1, 0], np.float32),
                           "normal": np.array([1, 1, 0, 1], np.float32)},
            "index": np.arange(step * B, step * B + B, dtype=np.int64),
        }

    BATCHES = [batch(s) for s in range(STEPS)]

    def dataset():
        ds = tf.data.Dataset.from_tensor_slices(BATCHES[0])
        for b in BATCHES[1:]:
            ds = ds.concatenate(tf.data.Dataset.from_tensor_slices(b))
        return ds.batch(B)

    def make(backbone, weighting):
        config = ExperimentConfig()
        config.data.dataset, config.data.batch_size = "synthetic", B
        config.model.backbone, config.model.filters = backbone, "4,4,8,8,8"
        config.method.method, config.method.weighting = "sl", weighting
        config.train.learning_rate = 1e-3  # large enough for 2 steps to move every weight
        config.options = complete_options(config)
        model = build(config, TASKS, H, W, STEPS)
        _build_optimizer_state(model)
        return model

    def weighting_values(model):
        w = model.method.weighting
        values = {f"state/{k}": v for k, v in w.state().items()}
        values.update({f"var/{i}": v for i, v in enumerate(w.trainable_variables())})
        return {k: np.asarray(tf.convert_to_tensor(v)) for k, v in values.items()}

    def train(model):
        model.fit(dataset(), epochs=1, steps_per_epoch=STEPS, verbose=0, shuffle=False)
        return [v.numpy() for v in model.network.trainable_variables], weighting_values(model)

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    result = {}
    for backbone, weighting in json.loads(sys.argv[1]):
        keras.utils.set_random_seed(3)
        single = make(backbone, weighting)
        with strategy.scope():
            mirrored = make(backbone, weighting)
        mirrored.network.set_weights(single.network.get_weights())
        start_weighting = weighting_values(single)
        for a, b in zip(mirrored.method.weighting.trainable_variables(), single.method.weighting.trainable_variables()):
            a.assign(b)
        start = [v.numpy() for v in single.network.trainable_variables]
        net_1, w_1 = train(single)
        net_2, w_2 = train(mirrored)
        assert w_1.keys() == w_2.keys() and w_1, w_1
        result[weighting] = {
            "backbone": backbone,
            "net_scale": max(float(np.abs(a - s).max()) for a, s in zip(net_1, start)),
            "net_moved": min(float(np.abs(a - s).max()) for a, s in zip(net_1, start)),
            "net_diff": max(float(np.abs(a - b).max()) for a, b in zip(net_1, net_2)),
            "weighting_moved": {k: float(np.abs(w_1[k] - start_weighting[k]).max()) for k in w_1},
            "weighting_diff": {k: float(np.abs(w_1[k] - w_2[k]).max()) for k in w_1},
            "weighting_scale": {k: float(np.abs(w_1[k]).max()) for k in w_1},
        }
    print("RESULT" + json.dumps(result))
''')

CASES = [("segnet", "uncertainty"), ("segnet_mtan", "gradnorm")]


@pytest.fixture(scope="module")
def mirrored():
    proc = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(CASES)], capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-5000:]
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT")][-1]
    return json.loads(line[len("RESULT"):])


@pytest.mark.parametrize("backbone, weighting", CASES)
def test_mirrored_train_step_equals_single_device(mirrored, backbone, weighting):
    r = mirrored[weighting]
    assert r["backbone"] == backbone
    # 2 Adam steps at lr 1e-3 move every trainable variable by up to ~2e-3; the replicas'
    # result equals one device's to float32 rounding of the gradients' all-reduce.
    assert r["net_moved"] > 1e-5 and r["net_scale"] < 5e-3, r
    assert r["net_diff"] <= 1e-5, r
    for key, moved in r["weighting_moved"].items():
        assert r["weighting_diff"][key] <= 1e-5 * max(1.0, r["weighting_scale"][key]), (key, r)
    assert max(r["weighting_moved"].values()) > 1e-5, r  # the weighting's state did change
