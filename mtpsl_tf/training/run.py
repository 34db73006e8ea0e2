"""One experiment end to end: config -> data -> model -> fit (resumable) -> metrics.json."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
import types
from typing import Dict, Optional

import keras
import tensorflow as tf

from mtpsl_tf.config import ExperimentConfig, save_config
from mtpsl_tf.data import pipeline
from mtpsl_tf.host_memory import check_applied
from mtpsl_tf.methods.facts import build_method, complete_options, setting_kind
from mtpsl_tf.models.registry import BACKBONES
from mtpsl_tf.training import callbacks as callbacks_lib
from mtpsl_tf.training import delta as delta_lib
from mtpsl_tf.training.model import MultiTaskModel
from mtpsl_tf.optim.optimizers import AdamL2
from mtpsl_tf.optim.schedules import PolyDecay, StepDecay

log = logging.getLogger("mtpsl_tf")


def _multi_worker() -> tf.distribute.Strategy:
    check_tf_config(os.environ.get("TF_CONFIG"))
    return tf.distribute.MultiWorkerMirroredStrategy()


def check_tf_config(value) -> None:
    """Raises ValueError saying what is wrong with a TF_CONFIG for --strategy=multi_worker."""
    example = ('e.g. {"cluster": {"worker": ["127.0.0.1:12345", "127.0.0.1:12346"]}, '
               '"task": {"type": "worker", "index": 0}}')
    if not value:
        raise ValueError(f"--strategy=multi_worker needs the TF_CONFIG environment variable (cluster spec), {example}")
    try:
        spec = json.loads(value)
    except json.JSONDecodeError as err:
        raise ValueError(f"TF_CONFIG is not valid JSON ({err}); {example}") from None
    cluster, task = spec.get("cluster"), spec.get("task")
    if not isinstance(cluster, dict) or not cluster.get("worker") and not cluster.get("chief"):
        raise ValueError(f"TF_CONFIG needs a \"cluster\" with a \"worker\" (and optionally \"chief\") "
                         f"list of host:port addresses; {example}")
    if not isinstance(task, dict) or task.get("type") not in cluster:
        raise ValueError(f"TF_CONFIG's \"task\" must name a type of the cluster {sorted(cluster)}, got {task!r}; "
                         f"{example}")
    index = task.get("index", 0)
    if not isinstance(index, int) or not 0 <= index < len(cluster[task["type"]]):
        raise ValueError(f"TF_CONFIG's task index {index!r} is out of range for the "
                         f"{len(cluster[task['type']])} {task['type']} address(es)")


# --strategy name -> the tf.distribute strategy it makes.
STRATEGIES = types.MappingProxyType({
    "default": tf.distribute.get_strategy,
    "mirrored": tf.distribute.MirroredStrategy,
    "multi_worker": _multi_worker,
})


def make_strategy(name: str) -> tf.distribute.Strategy:
    if name not in STRATEGIES:
        raise ValueError(f"unknown --strategy {name!r}; expected one of {', '.join(STRATEGIES)}")
    return STRATEGIES[name]()


@contextlib.contextmanager
def dtype_policy(name: str):
    """Keras' dtype policy is process-global: set it for the run and restore it after."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def build_network(config: ExperimentConfig, tasks, height: int, width: int, load_pretrained: bool = True):
    """The configured backbone with the tasks' heads, variables created.

    `load_pretrained=False` skips `--pretrained` (when a checkpoint will overwrite the weights
    anyway: resuming, evaluating, exporting on a machine without the ImageNet file).
    """
    heads = {t.name: t.head_spec for t in tasks}
    pretrained = os.path.expanduser(config.model.pretrained) if load_pretrained else ""
    network = BACKBONES.get(config.model.backbone)(
        heads=heads, variant=config.model.variant, filters=config.filter_list(), pretrained=pretrained,
        remat=config.model.remat_backbone)
    network(tf.zeros([1, height, width, 3]), training=False)  # create variables now
    return network


def build_optimizers(config: ExperimentConfig, method, steps_per_epoch: int) -> Dict[str, keras.optimizers.Optimizer]:
    t = config.train
    if t.lr_schedule == "poly":
        lr = PolyDecay(t.learning_rate, steps_per_epoch, t.epochs)
    else:
        lr = StepDecay(t.learning_rate, steps_per_epoch, t.lr_decay_epochs, t.lr_decay_factor)
    # torch.optim.Adam defaults: betas (0.9, 0.999), eps 1e-8 (Keras' default eps is 1e-7).
    main = AdamL2(l2=t.weight_decay, learning_rate=lr, beta_1=0.9, beta_2=0.999, epsilon=1e-8)
    if t.precision == "mixed_float16":
        main = keras.optimizers.LossScaleOptimizer(main)
    optimizers = {"main": main}
    optimizers.update(method.extra_optimizers(steps_per_epoch))
    return optimizers


def build(config: ExperimentConfig, tasks, height: int, width: int, steps: int,
          label_masks=None, load_pretrained: bool = True) -> MultiTaskModel:
    """Builds method, network and the training model (call inside the strategy scope)."""
    method = build_method(config, tasks, label_masks)
    tasks = method.network_tasks()
    network = build_network(config, tasks, height, width, load_pretrained)
    if (config.train.xla and network.slow_under_xla_on_cpu
            and not tf.config.list_physical_devices("GPU")):
        log.warning("--xla with --backbone=%s on a CPU-only machine: XLA's CPU convolutions are slow "
                    "with dilation (about 2.6x slower steps here); consider --noxla", config.model.backbone)
    method.build(network)
    model = MultiTaskModel(network, method, tasks, config.data.batch_size, steps)
    model.configure(jit_compile=config.train.xla)
    model.set_optimizers(build_optimizers(config, method, steps))
    # Every variable exists now; under a tf.distribute strategy Keras would otherwise try to
    # build the model symbolically from a batch, which a dict-input training model cannot do.
    model.built = True
    return model


def weights_trackable(layer) -> tf.train.Checkpoint:
    """A checkpointable view of all of `layer`'s variables keyed by their path below it.

    Keras 3 layers kept in Python lists/dicts are invisible to tf.train.Checkpoint's
    attribute tracking, so checkpoints name variables explicitly (stable across runs).
    """
    out = {}
    for variable in layer.weights:
        key = variable.path.split("/", 1)[-1].replace("/", ".")
        if key in out:
            raise ValueError(f"two variables of {layer.name} share the checkpoint key {key!r}")
        out[key] = variable
    return tf.train.Checkpoint(**out)


def make_checkpoint(model: MultiTaskModel) -> tf.train.Checkpoint:
    optimizers = {f"optimizer_{k}": v for k, v in model.group_optimizers.items()}
    layers = {f"method_{i}": weights_trackable(layer) for i, layer in enumerate(model.method_layers)}
    weighting = model.method.weighting
    state = {**weighting.state(), **{f"var_{i}": v for i, v in enumerate(weighting.trainable_variables())}}
    if state:
        layers["weighting"] = tf.train.Checkpoint(**state)
    return tf.train.Checkpoint(
        network=weights_trackable(model.network), epoch=tf.Variable(0, dtype=tf.int64),
        best=tf.Variable(-float("inf"), dtype=tf.float64), **optimizers, **layers)


def _build_optimizer_state(model: MultiTaskModel) -> None:
    """Creates the optimisers' slot variables so a checkpoint restores them immediately."""
    for name, optimizer in model.group_optimizers.items():
        variables = model.method.variable_groups(model.network)[name]
        optimizer.build(variables)


def run(config: ExperimentConfig) -> Dict[str, object]:
    """Trains and evaluates as configured; returns the final metrics dict (also written to
    `<model_dir>/metrics.json`)."""
    config.validate()
    check_applied(config.train.bfc_host_allocator)
    config.options = complete_options(config)
    model_dir = config.train.model_dir
    fresh = not os.path.exists(model_dir)
    try:
        with dtype_policy(config.train.precision):
            return _run(config, model_dir)
    except BaseException:
        # A run that fails before its first checkpoint leaves no half-made model_dir.
        if fresh and os.path.isdir(model_dir) and not tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints")):
            shutil.rmtree(model_dir, ignore_errors=True)
        raise


def _run(config: ExperimentConfig, model_dir: str) -> Dict[str, object]:
    strategy = make_strategy(config.train.strategy)
    _log_devices(strategy, config.train.strategy)
    if strategy.extended.should_checkpoint:
        return _train(config, strategy, model_dir, model_dir)
    # Not the chief of a multi-worker run: it writes its checkpoints, logs and metrics into a
    # temporary directory that is removed afterwards (Keras' multi-worker guide); it resumes
    # from the chief's checkpoints.
    out_dir = tempfile.mkdtemp(prefix="mtpsl_worker_")
    try:
        return _train(config, strategy, model_dir, out_dir)
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)


def _train(config: ExperimentConfig, strategy, model_dir: str, out_dir: str) -> Dict[str, object]:
    """Trains with `strategy`, resuming from `model_dir`'s checkpoints, writing to `out_dir`."""
    d = config.data
    if d.batch_size % strategy.num_replicas_in_sync:
        raise ValueError(f"--batch_size={d.batch_size} must be divisible by the {strategy.num_replicas_in_sync} replicas")
    bundle = pipeline.load(d, split_dir=d.split_dir)
    steps = pipeline.steps_per_epoch(bundle, d.batch_size, config.train.steps_per_epoch)
    # Seed right before creating weights: preparing a dataset may consume Python/TF
    # random state, and the initial weights must not depend on whether it was cached.
    keras.utils.set_random_seed(config.train.seed)
    resuming = tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints")) is not None
    with strategy.scope():
        model = build(config, bundle.tasks, bundle.height, bundle.width, steps, bundle.label_masks,
                      load_pretrained=not resuming)
        _build_optimizer_state(model)
        ckpt = make_checkpoint(model)
    manager = tf.train.CheckpointManager(ckpt, os.path.join(out_dir, "checkpoints"), max_to_keep=2)
    best_manager = tf.train.CheckpointManager(ckpt, os.path.join(out_dir, "best"), max_to_keep=1)
    latest = tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
    if latest:
        # Partial matches are allowed: an imported model directory has no optimiser state.
        ckpt.restore(latest).expect_partial().assert_nontrivial_match()
        log.info("resumed from %s (epoch %d)", latest, int(ckpt.epoch.numpy()))
    initial_epoch = int(ckpt.epoch.numpy())
    os.makedirs(out_dir, exist_ok=True)
    save_config(config, out_dir)
    _truncate_history(out_dir, initial_epoch)

    epochs = config.train.epochs
    tasks = model.tasks
    reference = delta_lib.resolve_reference(
        tasks, bundle.spec.stl_reference.get(setting_kind(d.setting), {}), config.stl_reference_overrides())
    if reference is None:
        log.warning("no STL reference for dataset %s / setting %s: Delta-MTL is not computed "
                    "(pass --stl_reference=task/metric=value,...)", d.dataset, d.setting)
    test_ds = pipeline.test_dataset(bundle, d.eval_batch_size)
    writer = tf.summary.create_file_writer(os.path.join(out_dir, "logs", "test"))
    image_batch = _image_batch(test_ds, config.train.tensorboard_images)
    epoch_end = callbacks_lib.EpochEnd(tasks, ckpt, manager, best_manager, reference, out_dir, writer, image_batch)
    callbacks = [keras.callbacks.TensorBoard(os.path.join(out_dir, "logs"), update_freq="epoch", write_graph=False),
                 callbacks_lib.NonFiniteGuard(config.train.max_nonfinite_steps),
                 callbacks_lib.WeightingEpochEnd(model.method.weighting), epoch_end]
    if model.log_weights:
        step_writer = tf.summary.create_file_writer(os.path.join(out_dir, "logs", "steps"))
        callbacks.append(callbacks_lib.WeightSummaries(step_writer, steps))
    if initial_epoch < epochs:
        train_ds = pipeline.train_dataset(bundle, d, seed=config.train.seed, initial_epoch=initial_epoch,
                                          epochs=epochs, batch_size=d.batch_size, two_views=model.method.two_views,
                                          align_views=model.method.align_views)
        start = time.time()
        model.fit(train_ds, epochs=epochs, initial_epoch=initial_epoch, steps_per_epoch=steps,
                  validation_data=test_ds, validation_freq=_eval_epochs(config, initial_epoch),
                  callbacks=callbacks, verbose=config.train.verbose)
        log.info("trained epochs %d..%d in %.1f s", initial_epoch + 1, epochs, time.time() - start)
    return _final_report(config, model, ckpt, os.path.join(model_dir, "best"), test_ds, tasks, reference, out_dir)


def _log_devices(strategy: tf.distribute.Strategy, name: str) -> None:
    """Says where the run trains (a GPU machine that trains on its CPU is easy to miss)."""
    gpus = tf.config.list_physical_devices("GPU")
    log.info("training with --strategy=%s (%s) on %d replica(s); GPUs visible to TensorFlow: %s", name,
             type(strategy).__name__, strategy.num_replicas_in_sync,
             ", ".join(g.name for g in gpus) or "none (training on the CPU)")


def _eval_epochs(config: ExperimentConfig, initial_epoch: int):
    every, epochs = config.train.eval_every, config.train.epochs
    due = [e for e in range(initial_epoch + 1, epochs + 1) if e % every == 0 or e == epochs]
    return due or [epochs]


def _image_batch(test_ds, count: int):
    if count <= 0:
        return None
    batch = next(iter(test_ds.unbatch().batch(count).take(1)))
    return batch


def _truncate_history(model_dir: str, epoch: int) -> None:
    path = os.path.join(model_dir, "history.json")
    history = callbacks_lib._read_history(path)
    kept = [h for h in history if h["epoch"] <= epoch]
    if len(kept) != len(history):
        callbacks_lib.write_json_atomic(path, kept)


def _final_report(config, model, ckpt, best_dir, test_ds, tasks, reference, out_dir) -> Dict[str, object]:
    """Evaluates the last and the best model; writes metrics.json atomically.

    The best model is read from `best_dir`, the CHIEF's directory, on every worker: a worker
    writes to a temporary directory of its own that, after a restart, lacks the best
    checkpoint of an earlier attempt, and every worker must take part in the same
    evaluations with the same weights (the chief's best was written before the last
    evaluation, which every worker joins, ended)."""
    last = _evaluate(model, test_ds)
    # "training": streaming metrics at the network's input size (docs/EVALUATION.md).
    report = {"protocol": "training", "dataset": config.data.dataset, "setting": config.data.setting,
              "method": config.method.method,
              "epochs": int(ckpt.epoch.numpy()), "stl_reference": reference,
              "compare_delta_mtl": config.compare_delta_mtl_values(),
              "last": {"metrics": last, "delta_mtl": delta_lib.compute(last, tasks, reference)}}
    best_path = tf.train.latest_checkpoint(best_dir)
    if best_path:
        epoch_now = int(ckpt.epoch.numpy())
        best_state = tf.train.Checkpoint(network=weights_trackable(model.network))
        best_state.restore(best_path).expect_partial()
        best = _evaluate(model, test_ds)
        best_epoch = int(best_path.rsplit("-", 1)[-1])
        report["best"] = {"epoch": best_epoch, "metrics": best, "delta_mtl": delta_lib.compute(best, tasks, reference)}
        ckpt.epoch.assign(epoch_now)
    path = os.path.join(out_dir, "metrics.json")
    callbacks_lib.write_json_atomic(path, report)
    report["path"] = path
    return report


def _evaluate(model: MultiTaskModel, test_ds) -> Dict[str, Optional[float]]:
    """Test metrics keyed "task/metric"; an undefined (NaN) metric is None, as in history.json."""
    results = model.evaluate(test_ds, verbose=0, return_dict=True)
    return {k: callbacks_lib.defined(v) for k, v in results.items() if "/" in k}
