"""The loss-weighting axis: a weighting defined here, registered, trained through the code path
of train.py (flags -> config -> run); per-task gradients; epoch hook; checkpointed state;
the `fixed` weighting and task presence on hand-computed values."""

import dataclasses
import json

import numpy as np
import pytest
import tensorflow as tf

from mtpsl_tf.methods.base import presence
from mtpsl_tf.options import option
from mtpsl_tf.tasks.depth import Depth
from mtpsl_tf.tasks.normal import Normal
from mtpsl_tf.weighting.base import SHARED_PARAMETERS, WEIGHTINGS, LossWeighting, WeightingFacts, weighted_total
from tests_helpers import SMOKE, TINY, checkpoint_variables, flags_for, tiny_config


@dataclasses.dataclass(frozen=True)
class ToyOptions:
    toy_scale: float = option(1.0, "toy weighting: factor on every task's gradient.")

    def validate(self):
        if self.toy_scale <= 0:
            raise ValueError(f"--toy_scale must be > 0, got {self.toy_scale}")


@WEIGHTINGS.register("toy_gradient_sum")
class ToyGradientSum(LossWeighting):
    """Sums the present tasks' gradients of the shared variables, times --toy_scale; counts
    epochs in a checkpointed variable. With scale 1 and unit weights it equals `fixed`."""

    Options = ToyOptions
    gradient_source = SHARED_PARAMETERS

    def build(self):
        self.epochs_seen = tf.Variable(0, dtype=tf.int64, trainable=False, name="toy_epochs")
        self.last_means = {}

    def state(self):
        return {"epochs_seen": self.epochs_seen}

    def combine(self, losses, present):
        return self.options.toy_scale * weighted_total(losses, self.static_weights)

    def combine_gradients(self, task_gradients, losses, present):
        names = list(task_gradients)
        summed = []
        for parts in zip(*(task_gradients[n] for n in names)):
            kept = [tf.where(present[n], g, tf.zeros_like(g)) * self.static_weights[n] for n, g in zip(names, parts)]
            summed.append(self.options.toy_scale * tf.add_n(kept))
        return summed

    def end_epoch(self, epoch, mean_losses):
        self.epochs_seen.assign_add(1)
        self.last_means = dict(mean_losses)


def test_toy_weighting_trains_through_the_train_py_path_and_its_option_counts(tmp_path):
    """A registered weighting trains through run(): its option reaches the config, its epoch
    hook's state is checkpointed (restoring weighting state on resume: the dwa and uncertainty
    resume tests), --toy_scale changes training and a bad value is named."""
    from mtpsl_tf.training.run import run

    with pytest.raises(ValueError, match="--toy_scale"):
        tiny_config(tmp_path, tmp_path / "bad", flags=TINY + ["--weighting=toy_gradient_sum", "--toy_scale=0"])
    toy_dir = tmp_path / "toy"
    report = run(tiny_config(tmp_path, toy_dir, flags=SMOKE + ["--weighting=toy_gradient_sum", "--epochs=1"]))
    config = json.loads((toy_dir / "config.json").read_text())
    assert config["method"]["weighting"] == "toy_gradient_sum" and config["options"]["toy_scale"] == 1.0
    assert np.isfinite(list(report["last"]["metrics"].values())).all()
    a = checkpoint_variables(toy_dir, optimizer_slots=False)
    saved = checkpoint_variables(toy_dir, "weighting/")
    assert list(saved.values()) == [1]  # end_epoch ran once and was checkpointed
    run(tiny_config(tmp_path, tmp_path / "b", flags=SMOKE + ["--weighting=toy_gradient_sum", "--epochs=1",
                                                           "--toy_scale=3"]))
    b = checkpoint_variables(tmp_path / "b", optimizer_slots=False)
    assert any(not np.allclose(a[n], b[n]) for n in a)


def _gradients(tmp_path, weighting, method="sl"):
    """One training batch's gradients of a freshly built model (seed 0) with `weighting`."""
    import keras

    from mtpsl_tf.data import pipeline
    from mtpsl_tf.training.run import build

    config = tiny_config(tmp_path, tmp_path / weighting, flags=flags_for(method), method=method, weighting=weighting)
    bundle = pipeline.load(config.data)
    keras.utils.set_random_seed(0)
    model = build(config, bundle.tasks, bundle.height, bundle.width, 2, bundle.label_masks)
    two_views = model.method.two_views
    batch = next(iter(pipeline.train_dataset(bundle, config.data, seed=0, initial_epoch=0, epochs=1,
                                             batch_size=4, two_views=two_views)))
    grads, _, total = model.compute_gradients(batch)
    return [g.numpy() for g in grads], float(total)


@pytest.mark.parametrize("method", ["sl", "mtpsl"])
def test_per_task_gradients_sum_to_the_gradient_of_the_sum(tmp_path, method):
    fixed, fixed_total = _gradients(tmp_path, "fixed", method)
    toy, toy_total = _gradients(tmp_path, "toy_gradient_sum", method)
    assert toy_total == pytest.approx(fixed_total, rel=1e-6)
    assert len(toy) == len(fixed)
    scale = max(np.abs(b).max() for b in fixed)
    # float32 rounding (measured up to 1.3e-5 of the largest gradient), far below a missing term.
    for a, b in zip(toy, fixed):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-4 * scale)


def test_unknown_weighting_is_named(tmp_path):
    with pytest.raises(KeyError, match="unknown loss weighting 'nope'.*fixed"):
        tiny_config(tmp_path, tmp_path / "m", flags=TINY + ["--weighting=nope"])


def test_fixed_weighting_hand_computed():
    fixed = WEIGHTINGS.get("fixed")(WeightingFacts(("a", "b"), {"a": 1.0, "b": 10.0}))
    losses = {"a": tf.constant(2.0), "b": tf.constant(3.0)}
    present = {"a": tf.constant(True), "b": tf.constant(False)}
    assert float(fixed.combine(losses, present)) == pytest.approx(32.0)
    assert {k: float(v) for k, v in fixed.weights().items()} == {"a": 1.0, "b": 10.0}


def test_presence_is_over_the_global_batch():
    masks = {"depth": tf.constant([0.0, 0.0, 1.0]), "normal": tf.constant([0.0, 0.0, 0.0])}
    got = presence([Depth(), Normal()], masks)
    assert bool(got["depth"]) and not bool(got["normal"])


def test_every_method_composes_with_the_weighting(tmp_path):
    """`sl`, `stl` and `mtpsl` all hand their task losses to the configured weighting."""
    from mtpsl_tf.data.registry import DATASETS
    from mtpsl_tf.methods.facts import build_method

    tasks = DATASETS.get("synthetic").tasks()
    for method, extra in (("sl", {}), ("stl", {"stl_task": "depth"}), ("mtpsl", {})):
        config = tiny_config(tmp_path, tmp_path / method, method=method, weighting="toy_gradient_sum", **extra)
        built = build_method(config, tasks)
        assert isinstance(built.weighting, ToyGradientSum)
        assert built.weighting.task_names == [t.name for t in built.tasks]
