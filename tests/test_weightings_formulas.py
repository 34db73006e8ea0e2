"""Each loss weighting on tiny fixed losses / gradients for a few steps, against a numpy
transcription of its paper's formula written here, and its partial-label rule (a task
absent from the batch: loss exactly 0, zero gradient)."""

import numpy as np
import pytest
import tensorflow as tf

from mtpsl_tf.weighting.base import WEIGHTINGS, WeightingFacts

TASKS = ("semantic", "depth", "normal")


def make(name, tasks=TASKS, static=None, **options):
    cls = WEIGHTINGS.get(name)
    weighting = cls(WeightingFacts(tuple(tasks), static or {}, seed=3, options=cls.Options(**options)))
    weighting.build()
    return weighting


def named(values, tasks=TASKS):
    return {n: tf.constant(v, tf.float32) for n, v in zip(tasks, values)}


def flags(values, tasks=TASKS):
    return {n: tf.constant(bool(v)) for n, v in zip(tasks, values)}


def grads_of(matrix, tasks=TASKS):
    """Task gradients of two shared variables (a 1x1x2x2 kernel and a bias of 2) from rows `[T, 6]`."""
    return {n: [tf.constant(np.reshape(row[:4], [1, 1, 2, 2]), tf.float32), tf.constant(row[4:], tf.float32)]
            for n, row in zip(tasks, np.asarray(matrix, np.float32))}


def flat(parts):
    return np.concatenate([np.reshape(p.numpy(), [-1]) for p in parts])


def weights_of(weighting):
    return np.array([float(weighting.weights()[n]) for n in weighting.task_names])


G = np.array([[1.0, -2.0, 0.5, 0.0, 1.0, 0.3],
              [-1.5, 1.0, 0.0, 2.0, -0.5, 0.1],
              [0.2, 0.4, -1.0, 0.5, 0.8, -0.7]])


# ---------------------------------------------------------------------------- uncertainty
def test_uncertainty_matches_kendall_for_three_steps():
    w = make("uncertainty")
    c = np.array([1.0, 2.0, 2.0])  # semantic classification, depth/normal regressions
    s = np.full(3, -0.5)
    for losses in ([1.2, 0.7, 0.3], [0.9, 0.5, 0.25], [0.8, 0.45, 0.2]):
        w.log_variance.assign(s.astype(np.float32))
        with tf.GradientTape() as tape:
            total = w.combine(named(losses), flags([1, 1, 1]))
        grad = tape.gradient(total, w.log_variance).numpy()
        L = np.array(losses)
        assert float(total) == pytest.approx(np.sum(L / (c * np.exp(s)) + s / 2), rel=1e-6)
        np.testing.assert_allclose(weights_of(w), 1 / (c * np.exp(s)), rtol=1e-6)
        np.testing.assert_allclose(grad, -L / (c * np.exp(s)) + 0.5, rtol=1e-5)
        s = s - 0.1 * grad  # a plain gradient step to the next state


def test_uncertainty_absent_task_gets_no_gradient():
    w = make("uncertainty")
    with tf.GradientTape() as tape:
        total = w.combine(named([1.0, 0.0, 0.5]), flags([1, 0, 1]))
    grad = tape.gradient(total, w.log_variance).numpy()
    assert grad[1] == 0.0 and np.isfinite(grad).all()
    s, c = -0.5, np.array([1.0, 2.0])
    assert float(total) == pytest.approx(np.sum(np.array([1.0, 0.5]) / (c * np.exp(s)) + s / 2), rel=1e-6)


# ---------------------------------------------------------------------------- dwa
def _dwa(previous, before, T):
    r = np.asarray(previous) / np.asarray(before)
    return len(r) * np.exp(r / T) / np.sum(np.exp(r / T))


def test_dwa_matches_liu_for_four_epochs():
    w = make("dwa")
    assert w.options.dwa_temperature == 2.0
    means = [[1.0, 2.0, 0.5], [0.8, 1.9, 0.3], [0.7, 1.5, 0.29], [0.6, 1.4, 0.2]]
    expected = [np.ones(3), np.ones(3), _dwa(means[1], means[0], 2.0), _dwa(means[2], means[1], 2.0),
                _dwa(means[3], means[2], 2.0)]
    losses = [1.0, 2.0, 3.0]
    for epoch in range(5):
        np.testing.assert_allclose(weights_of(w), expected[epoch], rtol=1e-6)
        total = float(w.combine(named(losses), flags([1, 1, 1])))
        assert total == pytest.approx(float(np.dot(expected[epoch], losses)), rel=1e-6)
        if epoch < 4:
            w.end_epoch(epoch + 1, dict(zip(TASKS, means[epoch])))


def test_dwa_task_without_signal_keeps_weight_one_and_is_not_normalised():
    w = make("dwa", dwa_temperature=1.0)
    w.end_epoch(1, {"semantic": 1.0, "depth": 0.0, "normal": 0.5})
    w.end_epoch(2, {"semantic": 0.5, "depth": 0.0, "normal": 0.5})
    got = weights_of(w)
    assert np.isfinite(got).all() and got[1] == 1.0
    np.testing.assert_allclose(got[[0, 2]], _dwa([0.5, 0.5], [1.0, 0.5], 1.0), rtol=1e-6)


def test_dwa_temperature_is_validated():
    with pytest.raises(ValueError, match="--dwa_temperature"):
        make("dwa", dwa_temperature=0.0).options.validate()


# ---------------------------------------------------------------------------- gradnorm
def _gradnorm_grad(w, g_last, losses, initial, alpha, mask):
    """d/dw of sum_t |G_t - target_t| (target constant), by central differences in numpy."""
    m = np.asarray(mask, bool)
    raw = np.linalg.norm(g_last, axis=1)
    ratio = np.asarray(losses) / np.asarray(initial)
    inverse = ratio[m] / ratio[m].mean()
    target = np.mean(np.abs(w[m]) * raw[m]) * inverse ** alpha

    def objective(v):
        return np.sum(np.abs(np.abs(v[m]) * raw[m] - target))

    out = np.zeros_like(w)
    for i in np.flatnonzero(m):
        e = np.zeros_like(w)
        e[i] = 1e-6
        out[i] = (objective(w + e) - objective(w - e)) / 2e-6
    return out


def test_gradnorm_matches_chen_for_three_steps():
    w = make("gradnorm")
    weights = np.ones(3)
    initial = None
    lr = 0.1
    for step, losses in enumerate(([1.2, 0.7, 0.3], [1.0, 0.6, 0.28], [0.7, 0.55, 0.25])):
        scale = 1.0 + 0.5 * step
        grads = grads_of(G * scale)
        L = named(losses)
        combined = w.combine_gradients(grads, L, flags([1, 1, 1]))
        np.testing.assert_allclose(flat(combined), weights @ (G * scale), rtol=1e-5)
        assert float(w.combine(L, flags([1, 1, 1]))) == pytest.approx(np.dot(weights, losses), rel=1e-6)
        initial = np.array(losses) if initial is None else initial
        (got,) = w.variable_gradients(grads, L, flags([1, 1, 1]), 0)
        # The last shared layer (index 0): the 4-D kernel, the first 4 entries of each row.
        expected = _gradnorm_grad(weights, (G * scale)[:, :4], losses, initial, 1.5, [1, 1, 1])
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-4, atol=1e-5)
        weights = weights - lr * expected
        w.task_weights.assign(weights.astype(np.float32))
        w.after_update()
        weights = 3 * weights / weights.sum()
        np.testing.assert_allclose(weights_of(w), weights, rtol=1e-6)


def test_gradnorm_absent_task_is_left_out():
    w = make("gradnorm")
    g = G.copy()
    g[1] = 0.0
    (got,) = w.variable_gradients(grads_of(g), named([1.0, 0.0, 0.5]), flags([1, 0, 1]), 0)
    assert got.numpy()[1] == 0.0 and np.isfinite(got.numpy()).all()
    np.testing.assert_allclose(got.numpy(), _gradnorm_grad(np.ones(3), g[:, :4], [1.0, 1.0, 0.5],
                                                           [1.0, 1.0, 0.5], 1.5, [1, 0, 1]), atol=1e-5)
    # The absent task's initial loss is taken at its first present step, not from the 0.
    w.variable_gradients(grads_of(G), named([1.0, 2.0, 0.5]), flags([1, 1, 1]), 0)
    np.testing.assert_allclose(w.initial.numpy(), [1.0, 2.0, 0.5])


# ---------------------------------------------------------------------------- mgda
def _min_norm_two(a, b):
    """Weight gamma on `a` of the min-norm point of [a, b] (Sener & Koltun, Alg. 1)."""
    gamma = np.dot(b - a, b) / np.dot(a - b, a - b)
    return float(np.clip(gamma, 0.0, 1.0))


def test_mgda_two_tasks_matches_the_closed_form():
    tasks = ("depth", "normal")
    w = make("mgda", tasks=tasks, mgda_on="parameters")
    for losses, rows in (([0.5, 2.0], G[:2]), ([0.4, 1.5], G[1:]), ([1.0, 1.0], G[[0, 2]])):
        normalised = rows / np.array(losses)[:, None]
        gamma = _min_norm_two(normalised[0], normalised[1])
        combined = w.combine_gradients(grads_of(rows, tasks), named(losses, tasks), flags([1, 1], tasks))
        np.testing.assert_allclose(weights_of(w), [gamma, 1 - gamma], atol=1e-5)
        np.testing.assert_allclose(flat(combined), gamma * rows[0] + (1 - gamma) * rows[1], rtol=1e-4, atol=1e-5)


def test_mgda_three_tasks_is_the_min_norm_point_of_the_hull():
    w = make("mgda", mgda_on="parameters")
    losses = np.array([1.0, 0.5, 2.0])
    w.combine_gradients(grads_of(G), named(losses), flags([1, 1, 1]))
    got = weights_of(w)
    normalised = G / losses[:, None]
    grid = np.array([(a, b, 1 - a - b) for a in np.linspace(0, 1, 201) for b in np.linspace(0, 1, 201)
                     if a + b <= 1 + 1e-12])
    best = np.min(np.linalg.norm(grid @ normalised, axis=1))
    assert got.sum() == pytest.approx(1.0, abs=1e-5) and (got >= -1e-7).all()
    assert np.linalg.norm(got @ normalised) <= best + 1e-4


def test_mgda_absent_task_gets_weight_zero():
    w = make("mgda", mgda_on="parameters")
    g = G.copy()
    g[0] = 0.0
    combined = w.combine_gradients(grads_of(g), named([0.0, 0.5, 2.0]), flags([0, 1, 1]))
    n = G[1:] / np.array([0.5, 2.0])[:, None]
    gamma = _min_norm_two(n[0], n[1])
    np.testing.assert_allclose(weights_of(w), [0.0, gamma, 1 - gamma], atol=1e-5)
    np.testing.assert_allclose(flat(combined), gamma * G[1] + (1 - gamma) * G[2], rtol=1e-4, atol=1e-5)


def _np_min_norm_fw(gram, mask, iterations=250):
    """numpy transcription of Sener & Koltun's MinNormSolver.find_min_norm_element_FW on a
    Gram matrix, restricted to the tasks with mask 1: start uniform, move towards the vertex
    of smallest (G w)_t with the exact line search of `_min_norm_element_from2`."""
    mask = np.asarray(mask, np.float64)
    w = mask / mask.sum()
    for _ in range(iterations):
        gw = gram @ w
        t = int(np.argmin(np.where(mask > 0, gw, np.inf)))
        v1v1, v1v2, v2v2 = w @ gw, gw[t], gram[t, t]
        if v1v2 >= v1v1:
            gamma = 1.0
        elif v1v2 >= v2v2:
            gamma = 0.0
        else:
            gamma = (v2v2 - v1v2) / (v1v1 + v2v2 - 2 * v1v2)
        w = gamma * w + (1 - gamma) * np.eye(len(w))[t]
    return w


def _np_normaliser(rows, losses, kind):
    """The reference's `gradient_normalizers` (min_norm_solvers.py) per task row."""
    norm = np.linalg.norm(rows, axis=1)
    return {"loss": losses, "loss+": losses * norm, "l2": norm, "none": np.ones_like(losses)}[kind]


FEATURE_SHAPES = ([2, 2, 2, 3], [1, 4, 2, 3])  # two network calls' shared outputs (e.g. two views)


def _feature_grads(rng, present=(1, 1, 1)):
    """task -> [one gradient per call] (an absent task's are 0) and the task rows [T, N]."""
    grads = {n: [rng.normal(size=s).astype(np.float32) * p for s in FEATURE_SHAPES] for n, p in zip(TASKS, present)}
    rows = np.stack([np.concatenate([g.reshape(-1) for g in grads[n]]).astype(np.float64) for n in TASKS])
    return {n: [tf.constant(g) for g in gs] for n, gs in grads.items()}, rows


@pytest.mark.parametrize("normalisation", ["loss", "loss+", "l2", "none"])
def test_mgda_feature_weights_are_the_reference_min_norm_of_normalised_gradients(normalisation):
    """Feature mode (MGDA-UB): weights from the shared representation's task gradients (all
    calls concatenated), normalised as the reference; `combine` is sum_t w_t L_t, w constant."""
    w = make("mgda", mgda_normalisation=normalisation)
    assert w.gradient_source == "shared_feature"
    rng = np.random.default_rng(5)
    for losses in ([1.2, 0.7, 0.3], [0.5, 2.0, 1.0]):
        grads, rows = _feature_grads(rng)
        w.observe_feature_gradients(grads, named(losses), flags([1, 1, 1]))
        normalised = rows / _np_normaliser(rows, np.array(losses), normalisation)[:, None]
        want = _np_min_norm_fw(normalised @ normalised.T, [1, 1, 1])
        np.testing.assert_allclose(weights_of(w), want, atol=2e-5)
        # ... and it is the minimum-norm point of the hull (checked on a grid).
        grid = np.array([(a, b, 1 - a - b) for a in np.linspace(0, 1, 101) for b in np.linspace(0, 1, 101)
                         if a + b <= 1 + 1e-12])
        assert np.linalg.norm(weights_of(w) @ normalised) <= np.min(np.linalg.norm(grid @ normalised, axis=1)) + 1e-4
        loss_t = named(losses)
        with tf.GradientTape() as tape:
            tape.watch(list(loss_t.values()))
            total = w.combine(loss_t, flags([1, 1, 1]))
        assert float(total) == pytest.approx(float(weights_of(w) @ np.array(losses)), rel=1e-6)
        d = tape.gradient(total, [loss_t[n] for n in TASKS])
        np.testing.assert_allclose([float(x) for x in d], weights_of(w), rtol=1e-6)  # weights held constant


def test_mgda_feature_absent_task_gets_weight_zero():
    w = make("mgda")
    grads, rows = _feature_grads(np.random.default_rng(6), present=(1, 0, 1))
    w.observe_feature_gradients(grads, named([0.8, 0.0, 1.5]), flags([1, 0, 1]))
    normalised = rows / np.array([0.8, 1.0, 1.5])[:, None]
    want = _np_min_norm_fw(normalised @ normalised.T, [1, 0, 1])
    assert weights_of(w)[1] == 0.0
    np.testing.assert_allclose(weights_of(w), want, atol=2e-5)
    a, b = normalised[0], normalised[2]
    np.testing.assert_allclose(weights_of(w)[0], _min_norm_two(a, b), atol=2e-5)  # the two-task closed form


@pytest.mark.parametrize("flag, value", [("mgda_on", "features"), ("mgda_normalisation", "loss++")])
def test_mgda_bad_option_names_the_flag(flag, value):
    from mtpsl_tf.weighting.mgda import Options

    with pytest.raises(ValueError, match=f"--{flag} must be one of"):
        Options(**{flag: value}).validate()


# ---------------------------------------------------------------------------- pcgrad
def _pcgrad(g, orders, mask):
    out = np.zeros(g.shape[1])
    for i in range(len(g)):
        if not mask[i]:
            continue
        p = g[i].copy()
        for j in orders[i]:
            if j != i and mask[j] and np.dot(p, g[j]) < 0:
                p = p - np.dot(p, g[j]) / np.dot(g[j], g[j]) * g[j]
        out += p
    return out


def test_pcgrad_matches_yu_for_three_steps():
    w = make("pcgrad", static={"normal": 2.0})
    static = np.array([1.0, 1.0, 2.0])
    for step in range(3):
        g = G * (1 + step) + step * 0.1
        orders = [w.order(step, i).numpy() for i in range(3)]
        combined = w.combine_gradients(grads_of(g), named([1, 1, 1]), flags([1, 1, 1]))
        np.testing.assert_allclose(flat(combined), _pcgrad(g * static[:, None], orders, [1, 1, 1]),
                                   rtol=1e-5, atol=1e-5)
    assert int(w.step.numpy()) == 3


def test_pcgrad_absent_task_is_skipped():
    w = make("pcgrad")
    g = G.copy()
    g[2] = 0.0
    orders = [w.order(0, i).numpy() for i in range(3)]
    combined = w.combine_gradients(grads_of(g), named([1, 1, 0]), flags([1, 1, 0]))
    got = flat(combined)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, _pcgrad(g, orders, [1, 1, 0]), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------- cagrad
def _cagrad(g, alpha):
    """LibMTL's CAGrad (rescale 1) transcribed, the inner problem solved by scipy's SLSQP."""
    from scipy.optimize import minimize

    k = len(g)
    A = g @ g.T
    b = np.ones(k) / k
    c = alpha * np.sqrt(A.mean() + 1e-8)

    def objective(x):
        return x @ A @ b + c * np.sqrt(x @ A @ x + 1e-8)

    res = minimize(objective, b, bounds=[(0, 1)] * k, constraints={"type": "eq", "fun": lambda x: 1 - x.sum()},
                   tol=1e-12)
    gw = res.x @ g
    update = (g.mean(0) + c / (np.linalg.norm(gw) + 1e-8) * gw) / (1 + alpha ** 2)
    return res.x, update, objective


def test_cagrad_matches_liu_for_three_steps():
    w = make("cagrad")
    for step in range(3):
        g = G * (1 + step) + np.roll(G, step, axis=1) * 0.3
        expected_w, expected, objective = _cagrad(g, 0.5)
        combined = w.combine_gradients(grads_of(g), named([1, 1, 1]), flags([1, 1, 1]))
        got_w = weights_of(w)
        # The inner optimum: the same objective value (the argmin may be flat).
        assert objective(got_w) <= objective(expected_w) + 1e-4 * abs(objective(expected_w))
        np.testing.assert_allclose(flat(combined), expected, rtol=2e-3, atol=2e-3 * np.abs(expected).max())


def test_cagrad_absent_task_is_left_out():
    w = make("cagrad")
    g = G.copy()
    g[1] = 0.0
    combined = w.combine_gradients(grads_of(g), named([1, 0, 1]), flags([1, 0, 1]))
    _, expected, _ = _cagrad(G[[0, 2]], 0.5)
    assert weights_of(w)[1] == 0.0
    np.testing.assert_allclose(flat(combined), expected, rtol=2e-3, atol=2e-3 * np.abs(expected).max())


# ---------------------------------------------------------------------------- famo
def _softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def test_famo_matches_liu_for_three_steps():
    w = make("famo")
    xi = np.zeros(3)
    previous = None
    lr = 0.5
    for losses in ([1.2, 0.7, 0.3], [1.0, 0.6, 0.28], [0.7, 0.65, 0.2]):
        L = np.array(losses)
        w.logits.assign(xi.astype(np.float32))
        with tf.GradientTape() as tape:
            total = w.combine(named(losses), flags([1, 1, 1]))
        d = tape.gradient(total, w.logits).numpy()
        z = _softmax(xi)
        v = (z / (L + 1e-8)) / np.sum(z / (L + 1e-8))
        assert float(total) == pytest.approx(np.dot(v, L), rel=1e-6)
        np.testing.assert_allclose(weights_of(w), v, rtol=1e-5)
        delta = np.zeros(3) if previous is None else np.log(previous + 1e-8) - np.log(L + 1e-8)
        jacobian = np.diag(z) - np.outer(z, z)
        np.testing.assert_allclose(d, jacobian.T @ delta, atol=1e-6)
        xi = xi - lr * d
        previous = L


def test_famo_absent_task_gets_no_weight_and_no_feedback():
    w = make("famo")
    w.combine(named([1.0, 0.5, 0.3]), flags([1, 1, 1]))
    with tf.GradientTape() as tape:
        total = w.combine(named([0.8, 0.0, 0.2]), flags([1, 0, 1]))
    d = tape.gradient(total, w.logits).numpy()
    v = weights_of(w)
    assert v[1] == 0.0 and np.isfinite(v).all() and np.isfinite(d).all()
    z = np.ones(3) / 3
    delta = np.array([np.log(1.0 / 0.8), 0.0, np.log(0.3 / 0.2)])
    np.testing.assert_allclose(d, (np.diag(z) - np.outer(z, z)) @ delta, atol=1e-6)


@pytest.mark.parametrize("name, options", [("uncertainty", {}), ("dwa", {}), ("gradnorm", {}),
                                           ("mgda", {"mgda_on": "parameters"}), ("mgda", {"mgda_on": "feature"}),
                                           ("pcgrad", {}), ("cagrad", {}), ("famo", {})],
                         ids=lambda v: ",".join(f"{k}={x}" for k, x in v.items()) if isinstance(v, dict) else v)
def test_weighting_step_compiles_under_xla(name, options):
    w = make(name, **options)
    features = {n: [tf.constant(np.full(s, float(i + 1) * (i != 2), np.float32)) for s in FEATURE_SHAPES]
                for i, n in enumerate(TASKS)}

    @tf.function(jit_compile=True)
    def step(losses, present, grads):
        if w.gradient_source == "shared_feature":
            w.observe_feature_gradients(features, losses, present)
        out = [w.combine(losses, present)]
        if w.gradient_source == "shared_parameters":
            out += w.combine_gradients(grads, losses, present)
            own = w.variable_gradients(grads, losses, present, 0)
            out += [] if own is None else own
        return out

    out = step(named([1.0, 0.5, 0.0]), flags([1, 1, 0]), grads_of(G * [[1], [1], [0]]))
    assert all(np.isfinite(o.numpy()).all() for o in out)


def test_every_weighting_is_registered():
    assert {"fixed", "uncertainty", "dwa", "gradnorm", "mgda", "pcgrad", "cagrad", "famo"} <= set(WEIGHTINGS.names())
