"""The NaN guard: a step with a non-finite loss or gradient is skipped (no variable or optimiser
state changes), counted in history.json, and too many in a row stop training with a clear error;
nothing non-finite is checkpointed."""

import json

import numpy as np
import pytest
import tensorflow as tf

from mtpsl_tf.errors import NonFiniteLossError
from mtpsl_tf.methods.base import METHODS
from mtpsl_tf.methods.supervised import SupervisedLearning
from mtpsl_tf.options import option
from tests_helpers import SMOKE, checkpoint_variables, tiny_config
import dataclasses


@dataclasses.dataclass(frozen=True)
class PoisonOptions:
    poison_every: int = option(0, "test method: every this many calls (from call 1) the loss is NaN; 0: always.")


@METHODS.register("poisoned_sl")
class PoisonedSL(SupervisedLearning):
    """`sl` whose depth loss is NaN on its calls 1, 1 + k, 1 + 2k, ... (all if k = 0); counted
    per call, since a skipped step leaves the optimiser's step count as it was."""

    Options = PoisonOptions

    def build(self, network):
        super().build(network)
        self.calls = tf.Variable(0, dtype=tf.int64, trainable=False)

    def loss_terms(self, network, batch, global_batch_size, progress, step):
        terms = super().loss_terms(network, batch, global_batch_size, progress, step)
        every = self.options.poison_every
        call = self.calls.assign_add(1) - 1
        hit = tf.constant(True) if every == 0 else tf.equal(tf.math.floormod(call - 1, every), 0)
        terms.tasks["depth"] = terms.tasks["depth"] + tf.where(hit, np.float32(np.nan), 0.0)
        return terms


def test_nonfinite_steps_are_skipped_and_counted(tmp_path):
    from mtpsl_tf.training.run import run

    # 8 images, batch 4: 2 steps per epoch; steps 1 and 3 (of 0..3) are poisoned.
    model_dir = tmp_path / "m"
    run(tiny_config(tmp_path, model_dir, flags=SMOKE + ["--method=poisoned_sl", "--poison_every=2", "--epochs=2"]))
    history = json.loads((model_dir / "history.json").read_text())
    assert [h["train"]["nonfinite_steps"] for h in history] == [1.0, 1.0]
    assert all(np.isfinite(h["train"]["total"]) for h in history)  # means over the applied steps
    weights = checkpoint_variables(model_dir)
    assert all(np.isfinite(w).all() for w in weights.values())
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(model_dir / "checkpoints")))
    iterations = [n for n in reader.get_variable_to_shape_map() if n.startswith("optimizer_main/") and "iteration" in n]
    assert iterations and int(reader.get_tensor(iterations[0])) == 2  # skipped steps leave Adam's count


def test_a_skipped_step_changes_nothing(tmp_path):
    import keras

    from mtpsl_tf.data import pipeline
    from mtpsl_tf.training.run import build, run, weights_trackable

    config = tiny_config(tmp_path, tmp_path / "skip", flags=SMOKE + ["--method=poisoned_sl", "--epochs=1",
                                                                    "--max_nonfinite_steps=5"])
    run(config)
    bundle = pipeline.load(config.data)
    keras.utils.set_random_seed(config.train.seed)  # as run() does before building
    network = build(config, bundle.tasks, bundle.height, bundle.width, 2, bundle.label_masks).network
    initial = {v.path: v.numpy() for v in network.trainable_variables}
    path = tf.train.latest_checkpoint(str(tmp_path / "skip" / "checkpoints"))
    tf.train.Checkpoint(network=weights_trackable(network)).restore(path).expect_partial()
    assert initial
    for variable in network.trainable_variables:  # every step was skipped: still the initial weights
        np.testing.assert_array_equal(variable.numpy(), initial[variable.path], err_msg=variable.path)


def test_too_many_in_a_row_stop_with_a_clear_error(tmp_path):
    from mtpsl_tf.training.run import run

    model_dir = tmp_path / "m"
    config = tiny_config(tmp_path, model_dir, flags=SMOKE + ["--method=poisoned_sl", "--max_nonfinite_steps=2"])
    with pytest.raises(NonFiniteLossError, match=r"epoch 1, step 2: 2 consecutive steps .*--max_nonfinite_steps=2"):
        run(config)
    assert not model_dir.exists()  # failed before its first checkpoint: nothing left behind
