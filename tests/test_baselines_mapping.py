"""The cross-task mapping baselines (`direct_map`, `perceptual_map`, `xtask`): losses against
numpy transcriptions, which (image, pair) items count, where the gradients go, loading the
frozen mappings of a pre-training run, and tiny runs through train.py's path."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from mtpsl_tf.config import ExperimentConfig
from mtpsl_tf.methods.base import METHODS
from mtpsl_tf.methods.cross_task import losses
from mtpsl_tf.methods.cross_task.networks import ordered_pairs
from mtpsl_tf.models.segnet import SegNet
from mtpsl_tf.tasks.depth import Depth
from mtpsl_tf.tasks.semantic import Semantic

B, S = 3, 32
FILTERS = [2, 2, 4, 4, 4]
MASK = {"semantic": np.array([1, 0, 1], np.float32), "depth": np.array([0, 1, 1], np.float32)}
# Items by hand for MASK, pair (source, target) -> [B]:
FIT = {"unlabelled_source": {("semantic", "depth"): [0, 1, 0], ("depth", "semantic"): [1, 0, 0]},
       "all": {("semantic", "depth"): [0, 1, 1], ("depth", "semantic"): [1, 0, 1]}}
PERCEPTUAL = {"unlabelled_source": {("semantic", "depth"): [1, 0, 0], ("depth", "semantic"): [0, 1, 0]},
              "all": {("semantic", "depth"): [1, 0, 1], ("depth", "semantic"): [0, 1, 1]}}


def log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def np_depth_loss(pred, label):
    valid = (label.sum(-1) != 0).astype(np.float64)
    return (np.abs(pred - label)[..., 0] * valid).sum((1, 2)) / valid.sum((1, 2))


def np_semantic_loss(pred, label):
    valid = label >= 0
    nll = -np.take_along_axis(pred, np.where(valid, label, 0)[..., None], -1)[..., 0]
    return (nll * valid).sum((1, 2)) / valid.sum((1, 2))


NP_LOSS = {"depth": np_depth_loss, "semantic": np_semantic_loss}


def make(method, mode="auto", setting="onelabel", build=True, **options):
    # Seeded: at these tiny widths some random inits leave a mapping SegNet's inference-mode
    # output constant (every ReLU of a layer dead), which would make the gradient checks
    # depend on the tests that ran before in the same process.
    keras.utils.set_random_seed(0)
    config = ExperimentConfig()
    config.method.method, config.data.setting = method, setting
    config.options.update(map_pairs=mode, **options)
    m = METHODS.get(method)(config, [Semantic(3), Depth()])
    if not build:
        return m, None
    network = SegNet({t.name: t.head_spec for t in m.tasks}, filters=FILTERS)
    network(tf.zeros([1, S, S, 3]))
    m.build(network)
    return m, network


@pytest.fixture(scope="module")
def built():
    """One built perceptual_map method (its direct and perceptual sums are those of every
    mapping method); tests switch its item mode (building SegNets is the slow part)."""
    method, _ = make("perceptual_map")
    return method


def with_mode(method, mode):
    method.mode = mode
    return method


def batch_data(seed=0):
    rng = np.random.default_rng(seed)
    outputs = {"semantic": log_softmax(rng.normal(size=[B, S, S, 3]) * 2).astype(np.float32),
               "depth": rng.uniform(0.5, 2, [B, S, S, 1]).astype(np.float32)}
    semantic = rng.integers(-1, 3, [B, S, S]).astype(np.int32)
    depth = rng.uniform(0.5, 2, [B, S, S, 1]).astype(np.float32) * (rng.uniform(size=[B, S, S, 1]) > 0.2)
    return outputs, {"semantic": semantic, "depth": depth.astype(np.float32)}


def tf_dict(d):
    return {k: tf.constant(v) for k, v in d.items()}


def test_losses_match_numpy():
    rng = np.random.default_rng(1)
    depth_pred = rng.normal(size=[2, 4, 5, 1]).astype(np.float32)
    depth_label = (rng.uniform(0.5, 2, [2, 4, 5, 1]) * (rng.uniform(size=[2, 4, 5, 1]) > 0.3)).astype(np.float32)
    np.testing.assert_allclose(losses.direct_loss(Depth(), depth_pred, depth_label).numpy(),
                               np_depth_loss(depth_pred, depth_label), rtol=1e-5)
    a, b = (log_softmax(rng.normal(size=[2, 4, 5, 3])).astype(np.float32) for _ in range(2))
    want = np.abs(np.exp(a) - np.exp(b)).mean((1, 2, 3))
    np.testing.assert_allclose(losses.perceptual_loss(Semantic(3), a, b).numpy(), want, rtol=1e-5)
    want = np.abs(depth_pred - depth_label).mean((1, 2, 3))
    np.testing.assert_allclose(losses.perceptual_loss(Depth(), depth_pred, depth_label).numpy(), want, rtol=1e-5)


@pytest.mark.parametrize("mode", ["unlabelled_source", "all"])
def test_direct_sum_counts_the_fit_items(built, mode):
    method = with_mode(built, mode)
    outputs, labels = batch_data()
    step = tf.constant(3, tf.int64)
    got = method.direct_sum(tf_dict(outputs), tf_dict(labels), tf_dict(MASK), step, train_network=True)
    pairs = ordered_pairs(["semantic", "depth"])
    inputs = [method.source_input(s, tf.constant(outputs[s]), step, k) for k, (s, _) in enumerate(pairs)]
    want = 0.0
    for (s, t), mapped in zip(pairs, method.mappings.map_all(inputs, training=True)):
        mapped = mapped.numpy().astype(np.float64)
        want += (np.array(FIT[mode][(s, t)]) * NP_LOSS[t](mapped, labels[t])).sum()
    assert want > 0
    np.testing.assert_allclose(float(got), want, rtol=1e-5)


@pytest.mark.parametrize("mode", ["unlabelled_source", "all"])
def test_perceptual_sum_counts_the_perceptual_items(built, mode):
    method = with_mode(built, mode)
    outputs, labels = batch_data(1)
    step = tf.constant(5, tf.int64)
    got = method.perceptual_sum(tf_dict(outputs), tf_dict(labels), tf_dict(MASK), step)
    forms = {"semantic": np.exp, "depth": lambda x: x}
    pairs = ordered_pairs(["semantic", "depth"])
    x_pred = [method.source_input(s, tf.constant(outputs[s]), step, k) for k, (s, _) in enumerate(pairs)]
    x_label = [method.by_name[s].mapping_label(tf.constant(labels[s]), method.by_name[s].channels)
               for s, _ in pairs]
    m_pred = method.mappings.map_all(x_pred, training=False)
    m_label = method.mappings.map_all(x_label, training=False)
    want = 0.0
    for (s, t), a, b in zip(pairs, m_pred, m_label):
        a, b = a.numpy().astype(np.float64), b.numpy().astype(np.float64)
        per_image = np.abs(forms[t](a) - forms[t](b)).mean((1, 2, 3))
        want += (np.array(PERCEPTUAL[mode][(s, t)]) * per_image).sum()
    assert want > 0
    np.testing.assert_allclose(float(got), want, rtol=1e-4)


def test_grouped_mapping_networks_are_independent_per_pair():
    """Pair p's output depends on pair p's input and weights only (the grouped convolutions
    keep the pairs' SegNets apart); kernels start with a separate SegNet's Xavier scale.
    A fresh method in training mode: batch statistics keep every ReLU layer alive (at tiny
    widths and random weights the inference-mode output can be constant, showing nothing),
    and the module's shared method keeps its moving statistics."""
    rng = np.random.default_rng(4)
    mappings = make("perceptual_map")[0].mappings
    inputs = [tf.constant(rng.uniform(size=[2, S, S, 3]), tf.float32),
              tf.constant(rng.uniform(size=[2, S, S, 1]), tf.float32)]
    before = mappings.map_all(inputs, training=True)
    for changed_input in range(2):
        changed_inputs = list(inputs)
        changed_inputs[changed_input] = tf.constant(rng.uniform(size=inputs[changed_input].shape), tf.float32)
        changed = mappings.map_all(changed_inputs, training=True)
        other = 1 - changed_input
        np.testing.assert_array_equal(before[other].numpy(), changed[other].numpy())
        assert np.abs(before[changed_input].numpy() - changed[changed_input].numpy()).max() > 0
    assert [o.shape[-1] for o in before] == [1, 3]  # semantic -> depth, depth -> semantic
    kernel = mappings.encoder_block[1].conv.kernel.numpy()  # [3, 3, f0, 2 * f1]
    fans = 9 * FILTERS[0] + 9 * FILTERS[1]
    assert kernel.shape == (3, 3, FILTERS[0], 2 * FILTERS[1])
    assert 0.3 < kernel.std() / np.sqrt(2.0 / fans) < 2.0


def test_perceptual_map_gradients_go_where_documented(built):
    """The perceptual term trains the network only, the fitting term the mappings only;
    Direct-Map trains both."""
    method = with_mode(built, "all")
    outputs, labels = batch_data(2)
    outputs = {k: tf.Variable(v) for k, v in outputs.items()}
    mapping_vars = method.mappings.trainable_variables
    step = tf.constant(0, tf.int64)
    with tf.GradientTape(persistent=True) as tape:
        perceptual = method.perceptual_sum(outputs, tf_dict(labels), tf_dict(MASK), step)
        fit = method.direct_sum(outputs, tf_dict(labels), tf_dict(MASK), step, train_network=False)
        direct = method.direct_sum(outputs, tf_dict(labels), tf_dict(MASK), step, train_network=True)

    def norm(grads):
        return sum(0.0 if g is None else float(tf.reduce_sum(tf.abs(tf.convert_to_tensor(g)))) for g in grads)

    assert norm(tape.gradient(perceptual, mapping_vars)) == 0.0
    assert norm(tape.gradient(perceptual, list(outputs.values()))) > 0
    assert norm(tape.gradient(fit, list(outputs.values()))) == 0.0
    assert norm(tape.gradient(fit, mapping_vars)) > 0
    assert norm(tape.gradient(direct, list(outputs.values()))) > 0
    assert norm(tape.gradient(direct, mapping_vars)) > 0


def test_auto_pairs_follow_the_setting():
    assert make("direct_map", setting="full", build=False)[0].mode == "all"
    assert make("direct_map", setting="onelabel", build=False)[0].mode == "unlabelled_source"
    with pytest.raises(ValueError, match="--map_filters"):
        make("direct_map", map_filters="4,4", build=False)
    with pytest.raises(ValueError, match="--map_pairs"):
        make("perceptual_map", mode="some", build=False)


def save_pretraining(model_dir, method):
    """A model directory as a direct_map run leaves it (config.json + checkpoint)."""
    from mtpsl_tf.training.run import weights_trackable

    model_dir.mkdir()
    config = {"method": {"method": "direct_map"}, "model": {"filters": ",".join(map(str, FILTERS))},
              "options": {"map_filters": ""}}
    (model_dir / "config.json").write_text(json.dumps(config))
    tf.train.Checkpoint(method_0=weights_trackable(method.mappings)).save(str(model_dir / "best" / "ckpt"))


def test_xtask_loads_frozen_mappings(built, tmp_path):
    source = built
    save_pretraining(tmp_path / "dm", source)
    xtask, network = make("xtask", setting="full", xtask_mappings_dir=str(tmp_path / "dm"))
    for a, b in zip(source.mappings.weights, xtask.mappings.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
    assert xtask.mappings.trainable_variables == []
    main = xtask.variable_groups(network)["main"]
    assert {id(v) for v in main} == {id(v) for v in network.trainable_variables}


def test_xtask_refuses_bad_directories(built, tmp_path):
    with pytest.raises(ValueError, match="--xtask_mappings_dir"):
        make("xtask", setting="full", build=False)
    xtask, _ = make("xtask", setting="full", build=False, xtask_mappings_dir=str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="no config.json"):
        xtask.mapping_filters(None)
    (tmp_path / "sl").mkdir()
    (tmp_path / "sl" / "config.json").write_text(json.dumps({"method": {"method": "sl"}}))
    xtask, _ = make("xtask", setting="full", build=False, xtask_mappings_dir=str(tmp_path / "sl"))
    with pytest.raises(ValueError, match="--method=sl"):
        xtask.mapping_filters(None)
    save_pretraining(tmp_path / "dm", built)
    config = json.loads((tmp_path / "dm" / "config.json").read_text())
    config["options"]["map_filters"] = "2,2,4,4,8"  # other widths than the checkpoint's
    (tmp_path / "dm" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="does not hold this run's mapping networks"):
        make("xtask", setting="full", xtask_mappings_dir=str(tmp_path / "dm"))


def test_direct_map_then_xtask_then_perceptual_map_train_through_run(tmp_path):
    from tests_helpers import tiny_config

    from mtpsl_tf.training.run import run

    def train(name, method, **options):
        config = tiny_config(tmp_path, tmp_path / name, epochs=1, method=method,
                             **({"setting": "full"} if method == "xtask" else {}))
        config.options.update(options)
        run(config)
        return json.loads((tmp_path / name / "history.json").read_text())[0]["train"]

    # Mapping widths = the tiny network's (narrower ones can leave a normal head all-zero,
    # whose L2 normalisation is then 0/0, as in the reference's heads).
    direct = train("dm", "direct_map")
    assert direct["nonfinite_steps"] == 0 and direct["direct_map"] > 0 and np.isfinite(direct["total"])
    xtask = train("xt", "xtask", xtask_mappings_dir=str(tmp_path / "dm"))
    assert xtask["nonfinite_steps"] == 0 and xtask["perceptual"] > 0 and np.isfinite(xtask["total"])
    perceptual = train("pm", "perceptual_map")
    assert perceptual["nonfinite_steps"] == 0 and np.isfinite(perceptual["total"])
    assert perceptual["perceptual"] > 0 and perceptual["map_fit"] > 0
