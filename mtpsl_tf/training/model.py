"""The Keras model that trains: network + method, custom train_step / test_step."""

from __future__ import annotations

from typing import Dict, Sequence

import keras
import tensorflow as tf

from mtpsl_tf.distribute import replica_sum
from mtpsl_tf.methods.base import Method
from mtpsl_tf.tasks.base import Task
from mtpsl_tf.weighting.base import SHARED_FEATURE, SHARED_PARAMETERS


NONFINITE = "nonfinite_steps"


def _apply_if(condition: tf.Tensor, apply_fn, grads) -> None:
    """Runs `apply_fn(grads)` (optimiser updates) when `condition` (the same on every replica)
    holds. Under a tf.distribute strategy the branch is chosen in the cross-replica context:
    an optimiser's update merges across replicas, which a cond in the replica context cannot
    contain (Keras' LossScaleOptimizer skips steps the same way).

    `grads` (this replica's gradients) travel through the merge as per-replica values and come
    back to each replica as its own. They must not be captured by `apply_fn`'s closure: the
    merge runs ONE replica's closure on every replica, so each would apply the first
    replica's gradients (MirroredStrategy with 2 devices then trained on replica 0's
    gradient x 2, the other half of the batch ignored)."""

    def run():
        apply_fn(grads)
        return tf.constant(True)

    if not tf.distribute.has_strategy():
        tf.cond(condition, run, lambda: tf.constant(False))
        return

    def cross_replica(distribution, condition, grads):
        def run_each():
            distribution.extended.call_for_each_replica(apply_fn, args=(grads,))
            return tf.constant(True)

        tf.cond(distribution.experimental_local_results(condition)[0], run_each, lambda: tf.constant(False))

    tf.distribute.get_replica_context().merge_call(cross_replica, args=(condition, grads))


def _for_keras_reduction(logs: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
    """The step's logs (scalars, equal on every replica) shaped for Keras' cross-replica
    reduction: with MultiWorkerMirroredStrategy Keras reduces them with MEAN over axis 0,
    which a scalar lacks (Keras 3.15), so they travel as `[1]` there."""
    if isinstance(tf.distribute.get_strategy(), tf.distribute.MultiWorkerMirroredStrategy):
        return {name: tf.reshape(value, [1]) for name, value in logs.items()}
    return logs


class _SharedOutputs:
    """The network as a method calls it, keeping each call's shared representation
    (`Backbone.shared_output`, the tensor every head reads) in `shared`, so the step can
    differentiate each task's loss with respect to it (`--mgda_on=feature`). Everything else
    is the network's."""

    def __init__(self, network):
        self.network = network
        self.shared = []

    def __call__(self, images, training=False, **kwargs):
        outputs = self.network(images, training=training, **kwargs)
        self.shared.append(outputs[self.network.shared_output])
        return outputs

    def __getattr__(self, name):
        return getattr(self.network, name)


class MultiTaskModel(keras.Model):
    """Wraps a network (dict outputs) and a Method (losses) for `fit` / `evaluate`.

    `train_step` computes the method's loss terms, combines the task losses with the method's
    loss weighting (for a weighting that asks for them, from the per-task gradients of the
    network's shared variables), applies loss scaling for mixed precision, and updates each
    variable group with its own optimiser (`optimizers[group]`). `test_step` streams every task's metrics over the whole split;
    `evaluate` returns them flattened as "task/metric".

    Args:
        network: a keras Model mapping images `[B,H,W,3]` to `{task: ..., "feature": ...}`.
        method: the training objective.
        tasks: the tasks evaluated (the network's tasks).
        global_batch_size: training batch size summed over replicas.
        steps_per_epoch: for the fractional-epoch `progress` the method sees.
    """

    def __init__(self, network, method: Method, tasks: Sequence[Task], global_batch_size: int,
                 steps_per_epoch: int, **kwargs):
        super().__init__(**kwargs)
        self.network = network
        self.method = method
        self.method_layers = list(method.extra_layers())
        self.tasks = list(tasks)
        self.global_batch_size = global_batch_size
        self.steps_per_epoch = steps_per_epoch
        self.task_metrics = {t.name: t.make_metric() for t in self.tasks}
        self.loss_trackers = {name: keras.metrics.Mean(name=name) for name in method.loss_names()}
        # Steps skipped this epoch because their loss or a gradient was not finite.
        self.nonfinite_tracker = keras.metrics.Sum(name=NONFINITE)
        # A weighting whose weights change logs them each step ("weight/<task>": the weights
        # this step applied; in the epoch logs and history.json, the last step's).
        self.log_weights = not method.weighting.constant_weights
        if method.weighting.gradient_source == SHARED_FEATURE and network.shared_output is None:
            raise ValueError(
                f"--mgda_on=feature (the weighting differentiates the shared representation) needs a backbone whose "
                f"task heads all read one shared representation; {type(network).__name__} has none (its heads read "
                f"task-specific features): use --mgda_on=parameters")
        self.group_optimizers: Dict[str, keras.optimizers.Optimizer] = {}

    def call(self, images, training=False):
        return self.network(images, training=training)

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Every variable is created by training.run.build before fit/evaluate. Keras' own
        # symbolic build would first reduce a distributed dict batch across replicas, which
        # MultiWorkerMirroredStrategy rejects (Keras 3.15, TF backend).
        return None

    def set_optimizers(self, optimizers: Dict[str, keras.optimizers.Optimizer]) -> None:
        """Optimiser per variable group; "main" is also the model's `optimizer`."""
        groups = self.method.variable_groups(self.network)
        if set(groups) != set(optimizers):
            raise ValueError(f"optimisers {sorted(optimizers)} do not match variable groups {sorted(groups)}")
        self.group_optimizers = dict(optimizers)
        self.compile(optimizer=optimizers["main"], jit_compile=self._jit)

    def configure(self, jit_compile: bool) -> None:
        self._jit = jit_compile

    @property
    def metrics(self):
        return [*self.loss_trackers.values(), self.nonfinite_tracker, *self.task_metrics.values()]

    def train_step(self, batch):
        """One update. A step whose total loss or any gradient is not finite (on any replica)
        is skipped: no variable or optimiser state changes, and `nonfinite_steps` counts it
        (under mixed_float16 the loss-scale optimiser does this itself, lowering its scale)."""
        groups = self.method.variable_groups(self.network)
        main = self.group_optimizers["main"]
        grads, terms, total = self.compute_gradients(batch)
        # Read before the update: the weights this step used.
        applied = self.method.weighting.weights() if self.log_weights else {}

        def apply_groups(names, grads):
            start = 0
            for name in groups:
                count = len(groups[name])
                if name in names:
                    self._apply(name, list(zip(grads[start:start + count], groups[name])), main)
                start += count

        def apply_all(grads):
            apply_groups(set(groups), grads)
            self.method.after_update()

        if isinstance(main, keras.optimizers.LossScaleOptimizer):
            # The loss-scale optimiser skips (and lowers its scale) on its own; the other
            # groups' plain optimisers must skip a step with an overflowing scaled gradient
            # too, or it writes inf into their variables (e.g. MTPSL's FiLM tables).
            apply_groups({"main"}, grads)
            others = set(groups) - {"main"}
            _apply_if(self._all_finite(total, grads),
                      lambda grads: (apply_groups(others, grads), self.method.after_update()), grads)
            self.nonfinite_tracker.update_state(0.0)
        else:
            finite = self._all_finite(total, grads)
            _apply_if(finite, apply_all, grads)
            # `finite` is the same on every replica, like the replica-summed losses below.
            self.nonfinite_tracker.update_state(1.0 - tf.cast(finite, tf.float32))
        losses = {f"{name}_loss": value for name, value in terms.tasks.items()}
        losses.update(terms.extra)
        losses["total"] = total
        # Each replica's loss is its share of the global mean: every replica tracks the
        # replica-summed value, so the replicas' results agree whatever Keras reduces them with.
        # A step with a non-finite total adds nothing to the epoch's mean losses.
        kept = tf.cast(tf.math.is_finite(replica_sum(total)), tf.float32)
        for name, value in losses.items():
            value = replica_sum(value)
            self.loss_trackers[name].update_state(tf.where(kept > 0, value, 0.0), sample_weight=kept)
        logs = {name: tracker.result() for name, tracker in self.loss_trackers.items()}
        logs[NONFINITE] = self.nonfinite_tracker.result()
        logs.update({f"weight/{name}": tf.identity(value) for name, value in applied.items()})
        return _for_keras_reduction(logs)

    @staticmethod
    def _all_finite(total, grads) -> tf.Tensor:
        """bool scalar, the same on every replica: the total and all gradients are finite."""
        bad = tf.cast(tf.logical_not(tf.math.is_finite(total)), tf.float32)
        for g in grads:
            if g is not None:
                bad += tf.cast(tf.logical_not(tf.reduce_all(tf.math.is_finite(g))), tf.float32)
        return tf.equal(replica_sum(bad), 0.0)

    def compute_gradients(self, batch):
        """(gradients aligned with the variable groups' variables in group order, the step's
        LossTerms, the total). Gradients are of the SCALED loss under mixed_float16."""
        groups = self.method.variable_groups(self.network)
        main = self.group_optimizers["main"]
        progress = tf.cast(main.iterations, tf.float32) / float(self.steps_per_epoch)
        source = self.method.weighting.gradient_source
        per_task = source == SHARED_PARAMETERS
        by_feature = source == SHARED_FEATURE
        flat = [v for n in groups for v in groups[n]]
        network = _SharedOutputs(self.network) if by_feature else self.network
        with tf.GradientTape(persistent=per_task or by_feature) as tape:
            terms = self.method.loss_terms(network, batch, self.global_batch_size, progress, main.iterations)
            if by_feature:
                scaled_tasks = {name: main.scale_loss(loss) for name, loss in terms.tasks.items()}
        if by_feature:
            # The weights of `combine` follow from each task's gradient of the shared
            # representation; the total is then recorded on the same (persistent) tape.
            feature_grads = {name: [tf.zeros_like(z) if g is None else g
                                    for g, z in zip(tape.gradient(loss, network.shared), network.shared)]
                             for name, loss in scaled_tasks.items()}
            self.method.weighting.observe_feature_gradients(feature_grads, terms.tasks, terms.present)
        with tape:  # re-entered: the total's operations join the tape
            total = self.method.total(terms)
            scaled = main.scale_loss(total)
            if per_task:  # differentiated separately below, so recorded on the tape here
                scaled_tasks = {name: main.scale_loss(loss) for name, loss in terms.tasks.items()}
                extra = self.method.extra_total(terms)
                scaled_extra = None if extra is None else main.scale_loss(extra)
        grads = tape.gradient(scaled, flat)
        if per_task:
            grads = self._per_task_gradients(tape, terms, scaled_tasks, scaled_extra, flat, grads)
        del tape
        return grads, terms, total

    def _per_task_gradients(self, tape, terms, scaled_tasks, scaled_extra, flat, grads):
        """`grads` with the shared variables' entries replaced by the weighting's combination
        of each task's (scaled) gradient of them, plus the extra terms' own gradient."""
        shared = {id(v) for v in self.network.shared_trainable_variables()}
        positions = [i for i, v in enumerate(flat) if id(v) in shared]
        variables = [flat[i] for i in positions]
        task_grads = {}
        for name, loss in scaled_tasks.items():
            g = tape.gradient(loss, variables)
            task_grads[name] = [tf.zeros_like(v) if x is None else x for x, v in zip(g, variables)]
        weighting = self.method.weighting
        combined = weighting.combine_gradients(task_grads, terms.tasks, terms.present)
        last = [id(v) for v in variables].index(id(self.network.last_shared_kernel()))
        own = weighting.variable_gradients(task_grads, terms.tasks, terms.present, last)
        if own is not None:  # the weighting's variables follow a loss of their own (GradNorm)
            where = {id(v): i for i, v in enumerate(flat)}
            grads = list(grads)
            for v, g in zip(weighting.trainable_variables(), own):
                grads[where[id(v)]] = g
        extra_grads = [None] * len(variables) if scaled_extra is None else tape.gradient(scaled_extra, variables)
        grads = list(grads)
        for i, c, e in zip(positions, combined, extra_grads):
            grads[i] = c if e is None else c + e
        return grads

    def _apply(self, name, pairs, main):
        optimizer = self.group_optimizers[name]
        pairs = [(g, v) for g, v in pairs if g is not None]
        if not pairs:
            return
        if optimizer is not main and isinstance(main, keras.optimizers.LossScaleOptimizer):
            # One loss scale for all groups: unscale the secondary group's gradients here.
            scale = main.dynamic_scale
            pairs = [(g / tf.cast(scale, g.dtype), v) for g, v in pairs]
        optimizer.apply_gradients(pairs)

    def test_step(self, batch):
        outputs = self.network(batch["image"], training=False)
        for task in self.tasks:
            task.update_metric(self.task_metrics[task.name], batch["labels"][task.name], outputs[task.name])
        return _for_keras_reduction(self.metric_results())

    def metric_results(self) -> Dict[str, tf.Tensor]:
        out = {}
        for task in self.tasks:
            for key, value in self.task_metrics[task.name].result().items():
                out[f"{task.name}/{key}"] = value
        return out

    def reset_task_metrics(self) -> None:
        for metric in self.task_metrics.values():
            metric.reset_state()
