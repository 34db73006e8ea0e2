"""The MTPSL consistency loss against the authors' Mapfns (parity fixtures) and by hand."""

import numpy as np
import pytest
import tensorflow as tf

import consistency_oracle as con
from mtpsl_tf.methods.mtpsl import mapping

TASKS = ["semantic", "depth", "normal"]
PAIRS = [(s, t) for s in range(3) for t in range(3) if s != t]
SMALL = dict(task_names=TASKS, task_channels=[5, 1, 3], filters=[4, 4, 8, 8, 8])


def _reference_net(parity_weights, dtype):
    net = mapping.MappingNet(
        TASKS, dtype=dtype, **mapping.config_from_torch_state(parity_weights)
    )
    mapping.load_torch_state(net, parity_weights)
    return net


def _fixture_inputs(parity, dtype):
    preds = {
        "semantic": tf.constant(parity["eval_semantic_logprob"], dtype),
        "depth": tf.constant(parity["eval_depth"], dtype),
        "normal": tf.constant(parity["eval_normal"], dtype),
    }
    labels = {
        "semantic": parity["seg_label"],
        "depth": parity["depth_label"],
        "normal": parity["normal_label"],
    }
    return preds, labels


def _full_loss_and_grads(parity, parity_weights, dtype):
    """Reference setting: mode full, zero Gumbel noise (one-hot argmax stand-in), eval outputs."""
    net = _reference_net(parity_weights, dtype)
    preds, labels = _fixture_inputs(parity, dtype)
    with tf.GradientTape() as tape:
        tape.watch(preds["depth"])
        per_image = con.consistency_loss(
            net, preds, labels, parity["eval_feat"], np.ones((2, 3), np.float32), "full",
            num_classes=13, gumbel_noise=tf.zeros_like(preds["semantic"]),
        )
        total = tf.reduce_sum(per_image)
    sources = {
        "depth_pred_item0": preds["depth"],
        "mapfns.encoder_block.0.gamma": net.encoder_blocks[0].gamma,
        "mapfns.encoder_block.0.beta": net.encoder_blocks[0].beta,
        "mapfns.conv_block_enc.4.1.conv.weight": net.conv_blocks_enc[4][1].conv.kernel,
        "mapfns.pred_encoder_source.0.0.weight": net.input_layers[0].conv.kernel,
    }
    grads = {k: v.numpy() for k, v in tape.gradient(total, sources).items()}
    grads["depth_pred_item0"] = grads["depth_pred_item0"][:1]
    return per_image.numpy(), grads


def _reference_grad(parity, name):
    ref = parity[f"grad_con/{name}"]
    if name.startswith("mapfns.") and ref.ndim == 4:
        return ref.transpose(2, 3, 1, 0)  # conv weight OIHW -> HWIO
    return ref  # the depth prediction is already NHWC


def _max_rel(ours, ref):
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def _norm_rel(ours, ref):
    return float(np.linalg.norm(ours - ref) / np.linalg.norm(ref))


@pytest.fixture(scope="module")
def full_float32(parity, parity_weights):
    return _full_loss_and_grads(parity, parity_weights, "float32")


@pytest.fixture(scope="module")
def full_float64(parity, parity_weights):
    return _full_loss_and_grads(parity, parity_weights, "float64")


# ----------------------------------------------------------------------------- parity
@pytest.mark.parametrize("n,s,t", [(n, s, t) for n in range(2) for s, t in PAIRS])
def test_pair_loss_matches_reference(parity, n, s, t):
    key = f"pair_{n}_{s}_{t}/"
    loss = con.pair_loss(
        parity[key + "map_source"], parity[key + "map_target"], parity["eval_feat"][n : n + 1], 0.5
    )
    assert loss.shape == (1,)
    assert abs(float(loss[0]) - float(parity[key + "loss"])) < 1e-4


@pytest.mark.parametrize("n,s,t", [(n, s, t) for n in range(2) for s, t in PAIRS])
def test_preprocessing_matches_reference_inputs(parity, n, s, t):
    key = f"pair_{n}_{s}_{t}/"
    preds = [parity["eval_semantic_logprob"], parity["eval_depth"], parity["eval_normal"]]
    labels = [parity["seg_label"], parity["depth_label"], parity["normal_label"]]
    pred = preds[s][n : n + 1]
    noise = np.zeros_like(pred) if s == 0 else None
    source_in = con.preprocess_prediction(TASKS[s], pred, gumbel_noise=noise)
    target_in = con.preprocess_label(TASKS[t], labels[t][n : n + 1], num_classes=13)
    np.testing.assert_allclose(source_in, parity[key + "source_in"], atol=1e-6)
    np.testing.assert_allclose(target_in, parity[key + "target_in"], atol=1e-6)


def test_full_consistency_loss_matches_reference(parity, full_float32):
    per_image, _ = full_float32
    assert per_image.shape == (2,)
    assert abs(per_image.sum() - float(parity["con_loss_total"])) < 1e-4
    for n in range(2):
        expected = sum(float(parity[f"pair_{n}_{s}_{t}/loss"]) for s, t in PAIRS)
        assert abs(per_image[n] - expected) < 1e-4


# Gradient parity. The mapping net is a deep, high-gain function of piecewise-constant inputs
# (one-hot maps, invalid-label regions), and its gradient is discontinuous (ReLU, max-pool): we
# measured that perturbing the weights by 1e-6 relative moves some FiLM gradient columns by up
# to ~8%. The reference's own float32 rounding therefore leaves part of `grad_con` uncertain at
# the percent level. We check (a) in float64 (our rounding removed), at 1e-3 relative, the
# gradients that are well conditioned: the depth prediction, the deepest conv, and the FiLM
# columns of pairs (1,0), (1,2), (2,0); (b) every gradient, float32 and float64, at 5e-2 in
# relative L2 norm (measured: <= 2.1e-2), which any real mistake (a missing term, a wrong pair
# column, a wrong stop-gradient or scale) exceeds by far.
WELL_CONDITIONED_COLUMNS = [mapping.pair_index(s, t, 3) for s, t in [(1, 0), (1, 2), (2, 0)]]


def test_gradients_match_reference_float64(parity, full_float64):
    _, grads = full_float64
    for name in ["depth_pred_item0", "mapfns.conv_block_enc.4.1.conv.weight"]:
        assert _max_rel(grads[name], _reference_grad(parity, name)) < 1e-3, name
    for name in ["mapfns.encoder_block.0.gamma", "mapfns.encoder_block.0.beta"]:
        ours, ref = grads[name], _reference_grad(parity, name)
        for k in WELL_CONDITIONED_COLUMNS:
            assert _max_rel(ours[:, k], ref[:, k]) < 1e-3, (name, k)


@pytest.mark.parametrize("precision", ["full_float32", "full_float64"])
def test_all_gradients_close_to_reference(parity, precision, request):
    _, grads = request.getfixturevalue(precision)
    for name, ours in grads.items():
        ref = _reference_grad(parity, name)
        assert ours.shape == ref.shape, name
        assert _norm_rel(ours, ref) < 5e-2, name


# ----------------------------------------------------------------------------- preprocessing
def test_semantic_label_one_hot_zeroes_ignore_pixels():
    label = np.array([[[0, -1], [2, 1]]])
    out = con.preprocess_label("semantic", label, num_classes=3).numpy()
    expected = np.array([[[[1, 0, 0], [0, 0, 0]], [[0, 0, 1], [0, 1, 0]]]], np.float32)
    np.testing.assert_array_equal(out, expected)


def test_depth_is_divided_by_each_images_max():
    depth = np.array([[[[1.0], [4.0]]], [[[0.5], [0.25]]], [[[0.0], [0.0]]]], np.float32)
    for fn in (
        lambda x: con.preprocess_label("depth", x),
        lambda x: con.preprocess_prediction("depth", x),
    ):
        out = fn(depth).numpy()
        np.testing.assert_allclose(out[0].ravel(), [0.25, 1.0])
        np.testing.assert_allclose(out[1].ravel(), [1.0, 0.5])
        np.testing.assert_array_equal(out[2], 0.0)  # all-invalid label stays finite


def test_normals_are_mapped_to_unit_interval():
    normals = np.array([[[[-1.0, 0.0, 1.0]]]], np.float32)
    outputs = (con.preprocess_label("normal", normals), con.preprocess_prediction("normal", normals))
    for out in outputs:
        np.testing.assert_allclose(out, [[[[0.0, 0.5, 1.0]]]])


def test_gumbel_sample_is_one_hot_of_perturbed_argmax():
    logp = tf.math.log_softmax(tf.constant([[[[0.1, 2.0, 0.3], [1.0, 0.0, 0.5]]]]))
    out = con.preprocess_prediction("semantic", logp, gumbel_noise=tf.zeros_like(logp))
    np.testing.assert_allclose(out, [[[[0, 1, 0], [1, 0, 0]]]], atol=1e-7)
    noise = tf.constant([[[[0.0, 0.0, 5.0], [0.0, 3.0, 0.0]]]])
    out = con.preprocess_prediction("semantic", logp, gumbel_noise=noise)
    np.testing.assert_allclose(out, [[[[0, 0, 1], [0, 1, 0]]]], atol=1e-7)


def test_gumbel_straight_through_gradient_is_softmax_gradient():
    rng = np.random.default_rng(0)
    logits = tf.constant(rng.normal(size=(2, 3, 4, 6)), tf.float32)
    noise = tf.constant(rng.gumbel(size=(2, 3, 4, 6)), tf.float32)
    weights = tf.constant(rng.normal(size=(2, 3, 4, 6)), tf.float32)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(logits)
        hard = con.gumbel_softmax_hard(logits, noise, tau=1.0)
        soft = tf.nn.softmax(logits + noise, axis=-1)
        hard_loss = tf.reduce_sum(hard * weights)
        soft_loss = tf.reduce_sum(soft * weights)
    np.testing.assert_allclose(
        tape.gradient(hard_loss, logits), tape.gradient(soft_loss, logits), atol=1e-6
    )


def test_gumbel_noise_from_seed():
    a = con.sample_gumbel([20000], seed=[1, 2]).numpy()
    np.testing.assert_array_equal(a, con.sample_gumbel([20000], seed=[1, 2]).numpy())
    assert not np.array_equal(a, con.sample_gumbel([20000], seed=[1, 3]).numpy())
    assert np.isfinite(a).all()
    assert abs(a.mean() - np.euler_gamma) < 0.03  # the standard Gumbel's mean


def test_preprocessing_rejects_bad_requests():
    with pytest.raises(ValueError, match="unknown task kind 'edge'"):
        con.preprocess_label("edge", np.zeros((1, 2, 2)))
    with pytest.raises(ValueError, match="gumbel_noise or a seed"):
        con.preprocess_prediction("semantic", np.zeros((1, 2, 2, 3), np.float32))
    with pytest.raises(ValueError, match="num_classes"):
        con.preprocess_label("semantic", np.zeros((1, 2, 2)))


# ----------------------------------------------------------------------------- cosine / pair loss
def test_cosine_similarity_eps_semantics():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(5, 7)), rng.normal(size=(5, 7))
    expected = (x * y).sum(-1) / (np.linalg.norm(x, axis=-1) * np.linalg.norm(y, axis=-1))
    np.testing.assert_allclose(con.cosine_similarity(x, y), expected, rtol=1e-6)
    # A zero vector: x / max(||x||, eps) = 0, so cos = 0 and the gradient stays finite.
    zero = tf.zeros((1, 7), tf.float64)
    with tf.GradientTape() as tape:
        tape.watch(zero)
        cos = con.cosine_similarity(zero, tf.constant(y[:1]))
    assert float(cos[0]) == 0.0
    assert np.isfinite(tape.gradient(cos, zero).numpy()).all()


def test_pair_loss_stops_gradient_at_feature_only():
    rng = np.random.default_rng(2)
    e_s, e_t, f = (tf.constant(rng.normal(size=(2, 2, 3, 4)), tf.float32) for _ in range(3))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([e_s, e_t, f])
        loss = con.pair_loss(e_s, e_t, f, reg_weight=0.5)
    assert tape.gradient(loss, f) is None
    assert np.abs(tape.gradient(loss, e_s).numpy()).sum() > 0

    def cos(a, b):
        return np.mean(con.cosine_similarity(a, b).numpy(), axis=(1, 2))

    expected = (1 - cos(e_s, e_t)) + 0.5 * ((1 - cos(e_s, f)) + (1 - cos(e_t, f)))
    np.testing.assert_allclose(loss, expected, rtol=1e-6)
    no_reg = con.pair_loss(e_s, e_t, f, reg_weight=0.0)
    np.testing.assert_allclose(no_reg, 1 - cos(e_s, e_t), rtol=1e-6)


# ----------------------------------------------------------------------------- active pairs
HAND_MASK = np.array([[1, 0, 0], [0, 1, 1], [1, 1, 1], [0, 0, 0]], np.float32)


def _pairs_of(active):
    return [sorted((int(s), int(t)) for s, t in np.argwhere(a > 0)) for a in active]


def test_active_pairs_by_mode():
    assert _pairs_of(con.active_pairs(HAND_MASK, "mtpsl").numpy()) == [
        [(1, 0), (2, 0)], [(0, 1), (0, 2)], [], []
    ]
    assert _pairs_of(con.active_pairs(HAND_MASK, "mtpsl_plus").numpy()) == [
        [(1, 0), (2, 0)], [(0, 1), (0, 2), (1, 2), (2, 1)], PAIRS, []
    ]
    assert _pairs_of(con.active_pairs(HAND_MASK, "full").numpy()) == [PAIRS] * 4
    with pytest.raises(ValueError, match="unknown consistency mode 'ours'"):
        con.active_pairs(HAND_MASK, "ours")
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        con.active_pairs(HAND_MASK[0], "full")


# ----------------------------------------------------------------------------- vectorised loss
def _small_problem(seed, batch=4, hw=(32, 32), dtype=tf.float32):
    rng = np.random.default_rng(seed)
    net = mapping.MappingNet(**SMALL, dtype=dtype.name)
    for v in net.film_variables:  # non-trivial, pair-dependent FiLM tables
        v.assign(v.numpy() + 0.3 * rng.standard_normal(v.shape))
    shape = (batch,) + hw
    normal = rng.normal(size=shape + (3,))
    preds = {
        "semantic": tf.math.log_softmax(tf.constant(rng.normal(size=shape + (5,)), dtype)),
        "depth": tf.constant(rng.uniform(0.1, 3.0, size=shape + (1,)), dtype),
        "normal": tf.constant(normal / np.linalg.norm(normal, axis=-1, keepdims=True), dtype),
    }
    labels = {
        "semantic": rng.integers(-1, 5, size=shape),
        "depth": rng.uniform(0.0, 3.0, size=shape + (1,)).astype(dtype.as_numpy_dtype),
        "normal": (normal / np.linalg.norm(normal, axis=-1, keepdims=True)).astype(
            dtype.as_numpy_dtype
        ),
    }
    feat = rng.normal(size=(batch, 1, 1, 8)).astype(dtype.as_numpy_dtype)
    noise = rng.gumbel(size=(batch, 2) + hw + (5,)).astype(dtype.as_numpy_dtype)
    return net, preds, labels, feat, noise


def _looped_loss(net, preds, labels, feat, mask, mode, noise):
    """The authors' structure: per image, per active pair, one-item embeddings."""
    active = con.active_pairs(mask, mode).numpy()
    totals = []
    for n in range(len(mask)):
        total = 0.0
        for s, t in PAIRS:
            if not active[n, s, t]:
                continue
            pred = preds[TASKS[s]][n : n + 1]
            item_noise = noise[n : n + 1, t - 1] if s == 0 else None  # targets != 0: j = t - 1
            source_in = con.preprocess_prediction(TASKS[s], pred, gumbel_noise=item_noise)
            target_in = con.preprocess_label(
                TASKS[t], labels[TASKS[t]][n : n + 1], num_classes=5, dtype=pred.dtype
            )
            e_s = net.embed(source_in, s, s, t, training=True)
            e_t = net.embed(target_in, t, s, t, training=True)
            total += float(con.pair_loss(e_s, e_t, feat[n : n + 1])[0])
        totals.append(total)
    return np.array(totals)


@pytest.mark.parametrize("mode", ["mtpsl", "mtpsl_plus", "full"])
def test_vectorised_equals_per_item_loop(mode):
    # float64: the comparison is about the item layout, not float32 rounding (which this deep
    # random net amplifies; see test_mapping's batching test).
    net, preds, labels, feat, noise = _small_problem(0, dtype=tf.float64)
    loss = con.consistency_loss(
        net, preds, labels, feat, HAND_MASK, mode, num_classes=5, gumbel_noise=noise
    )
    expected = _looped_loss(net, preds, labels, feat, HAND_MASK, mode, noise)
    np.testing.assert_allclose(loss, expected, rtol=1e-5, atol=1e-5)
    if mode != "full":
        assert float(loss[3]) == 0.0  # an image without labels has no active pair


def test_inactive_items_give_zero_loss_and_zero_gradient():
    net, preds, labels, feat, noise = _small_problem(1)
    pred_list = [preds[name] for name in TASKS]
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(pred_list)
        loss = con.consistency_loss(
            net, dict(zip(TASKS, pred_list)), labels, feat, HAND_MASK, "mtpsl",
            gumbel_noise=noise,
        )
        inactive = loss[2] + loss[3]  # fully labelled / unlabelled: no source-target pair
        active = loss[0]
    assert float(inactive) == 0.0
    for grad in tape.gradient(inactive, pred_list + net.trainable_variables):
        assert grad is None or not np.any(tf.convert_to_tensor(grad).numpy())
    # Image 0 (semantic labelled) sends gradient into its depth / normal predictions only.
    grads = tape.gradient(active, pred_list)
    assert not np.any(grads[0].numpy())
    assert np.any(grads[1][0].numpy()) and not np.any(grads[1][1:].numpy())


def test_label_mask_dict_and_seeded_noise():
    net, preds, labels, feat, _ = _small_problem(2, batch=2)
    mask = {"semantic": [0.0, 1.0], "depth": [1.0, 1.0], "normal": [0.0, 0.0]}
    stacked = np.stack([mask[name] for name in TASKS], axis=1)
    kwargs = dict(mode="mtpsl_plus", seed=tf.constant([3, 4]))
    a = con.consistency_loss(net, preds, labels, feat, mask, **kwargs)
    b = con.consistency_loss(net, preds, labels, feat, stacked, **kwargs)
    np.testing.assert_array_equal(a, b)
    c = con.consistency_loss(net, preds, labels, feat, mask, mode="mtpsl_plus", seed=[3, 5])
    assert np.all(np.isfinite(c)) and not np.allclose(a, c)
    with pytest.raises(ValueError, match="gumbel_noise or a seed"):
        con.consistency_loss(net, preds, labels, feat, mask, mode="full")
    with pytest.raises(ValueError, match="num_classes=13"):
        con.consistency_loss(net, preds, labels, feat, mask, "full", num_classes=13, seed=[1, 1])
    with pytest.raises(KeyError, match="normal"):
        only_semantic = {"semantic": labels["semantic"]}
        con.consistency_loss(net, preds, only_semantic, feat, mask, "full", seed=[1, 1])


def test_consistency_loss_compiles_with_xla_and_traces_once():
    net, preds, labels, feat, noise = _small_problem(3, batch=2)
    traces = []

    @tf.function(jit_compile=True)
    def step(preds, labels, mask, noise):
        traces.append(1)
        with tf.GradientTape() as tape:
            loss = con.consistency_loss(net, preds, labels, feat, mask, "mtpsl", gumbel_noise=noise)
            total = tf.reduce_sum(loss)
        return loss, tape.gradient(total, net.trainable_variables)

    for mask, scale in [([[1, 0, 0], [0, 1, 1]], 1.0), ([[0, 0, 1], [1, 1, 1]], 2.0)]:
        mask = tf.constant(mask, tf.float32)
        loss, grads = step(preds, labels, mask, noise * scale)
        eager = con.consistency_loss(
            net, preds, labels, feat, mask, "mtpsl", gumbel_noise=noise * scale
        )
        # XLA reorders float32 arithmetic (see test_mapping's XLA test): 1e-3 relative.
        np.testing.assert_allclose(loss, eager, rtol=1e-3, atol=1e-4)
        assert all(np.all(np.isfinite(g.numpy())) for g in grads)
    assert len(traces) == 1


def test_seeded_noise_compiles_with_xla():
    # XLA's stateless Philox stream differs from the CPU kernel's, so a compiled step is
    # compared with itself (deterministic per seed), not with eager.
    net, preds, labels, feat, _ = _small_problem(4, batch=2)
    mask = tf.constant([[0, 1, 0], [0, 0, 1]], tf.float32)
    step = tf.function(
        lambda seed: con.consistency_loss(net, preds, labels, feat, mask, "mtpsl", seed=seed),
        jit_compile=True,
        autograph=False,
    )
    a, b, c = (step(tf.constant(seed)).numpy() for seed in ([1, 2], [1, 2], [7, 8]))
    np.testing.assert_array_equal(a, b)
    assert np.all(np.isfinite(c)) and not np.array_equal(a, c)
