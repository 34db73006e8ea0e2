"""Model directories: rebuild the trained network from `config.json` + a checkpoint.

A model directory holds `config.json` (ExperimentConfig), `checkpoints/` (latest, every
epoch) and `best/` (best epoch). Network variables are stored under `network/<path>`
(see `run.weights_trackable`), so any code can restore them without the optimiser.
"""

from __future__ import annotations

import dataclasses
import os
from typing import List, Optional

import tensorflow as tf

from mtpsl_tf.config import ExperimentConfig, load_config, save_config
from mtpsl_tf.tasks.base import Task


@dataclasses.dataclass
class Restored:
    """A trained network and what describes it."""

    network: object
    config: ExperimentConfig
    tasks: List[Task]
    checkpoint: str
    height: int
    width: int


def find_checkpoint(model_dir: str, which: str = "best") -> str:
    """Path prefix of the `best` (falling back to latest) or `latest` checkpoint."""
    if which not in ("best", "latest"):
        raise ValueError(f"which must be 'best' or 'latest', got {which!r}")
    if not os.path.isfile(os.path.join(model_dir, "config.json")):
        raise FileNotFoundError(f"{model_dir!r} is not a model directory: no config.json in it")
    order = ["best", "checkpoints"] if which == "best" else ["checkpoints"]
    for sub in order:
        path = tf.train.latest_checkpoint(os.path.join(model_dir, sub))
        if path:
            return path
    raise FileNotFoundError(f"no checkpoint in {model_dir!r} (looked in {', '.join(order)})")


def dataset_tasks(config: ExperimentConfig) -> List[Task]:
    """The tasks of the network the config trains (the method's: the dataset's, or stl's one)."""
    from mtpsl_tf.data.registry import DATASETS
    from mtpsl_tf.methods.facts import build_method

    tasks = DATASETS.get(config.data.dataset).tasks(config.data.dataset_config)
    return build_method(config, tasks).network_tasks()


def training_size(config: ExperimentConfig, tasks_hint=None) -> tuple:
    """(height, width) the network was trained at, from the config or the dataset."""
    from mtpsl_tf.data import pipeline
    from mtpsl_tf.data.registry import DATASETS

    if config.data.height and config.data.width:
        return config.data.height, config.data.width
    spec = DATASETS.get(config.data.dataset)
    if spec.image_size is not None:  # stated by the dataset (PASCAL-Context): no data needed
        return config.data.height or spec.image_size[0], config.data.width or spec.image_size[1]
    builder = pipeline.make_builder(config.data, spec)
    return pipeline.image_size(config.data, spec, builder)


def load_network(model_dir: str, which: str = "best", height: Optional[int] = None,
                 width: Optional[int] = None) -> Restored:
    """Rebuilds the network of `model_dir` and restores its `which` checkpoint."""
    from mtpsl_tf.training.run import build_network, weights_trackable

    path = find_checkpoint(model_dir, which)
    config = load_config(os.path.join(model_dir, "config.json"))
    tasks = dataset_tasks(config)
    if height is None or width is None:
        height, width = training_size(config)
    network = build_network(config, tasks, height, width, load_pretrained=False)  # the checkpoint has them
    status = tf.train.Checkpoint(network=weights_trackable(network)).restore(path)
    status.expect_partial().assert_existing_objects_matched()
    return Restored(network, config, tasks, path, height, width)


def write_model_dir(model_dir: str, config: ExperimentConfig, network, extra: Optional[dict] = None,
                    epoch: int = 0) -> str:
    """Writes a model directory (config.json + checkpoints/ckpt-<epoch>) for `network`.

    Used by importers: `train.py --model_dir=<it>` then resumes (fine-tunes) from it with
    fresh optimiser state. Returns the checkpoint path.
    """
    from mtpsl_tf.training.run import weights_trackable

    if os.path.exists(os.path.join(model_dir, "checkpoints")):
        raise FileExistsError(f"{model_dir!r} already has checkpoints; choose a new --out")
    parts = {"network": weights_trackable(network), "epoch": tf.Variable(epoch, dtype=tf.int64),
             "best": tf.Variable(-float("inf"), dtype=tf.float64)}
    for name, layer in (extra or {}).items():
        parts[name] = weights_trackable(layer)
    os.makedirs(model_dir, exist_ok=True)
    save_config(config, model_dir)
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(**parts), os.path.join(model_dir, "checkpoints"), 2)
    return manager.save(checkpoint_number=epoch)
