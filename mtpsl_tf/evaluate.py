"""Evaluate a model directory on its dataset's test split: per-task metrics and Delta-MTL.

    python -m mtpsl_tf.evaluate --model_dir=runs/authors_onelabel --data_dir=~/tensorflow_datasets
    python -m mtpsl_tf.evaluate --model_dir=runs/pascal_sl --protocol=paper --workers=8

Works for directories written by `train.py` and by `python -m mtpsl_tf.import_torch`. Two
protocols (docs/EVALUATION.md):
- `training` (default): the streaming metrics training reports, at the network's input size
  (PASCAL-Context: 512 x 512; edge odsF approximate); written to `<model_dir>/eval_metrics.json`.
- `paper`: each test image's prediction is resized back to the image's original size and
  scored there by its task's `paper_scorer` (Multi-Task-Learning-PyTorch's final evaluation:
  8-bit PNG predictions, seism's edge odsF); written to `<model_dir>/eval_metrics_paper.json`.
Both reports carry "protocol" and, per metric, "metric_protocol" (exact or approximate, why).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Dict, Optional, Sequence, Tuple

from mtpsl_tf.cli import error_message

RESULT_FILE = "eval_metrics.json"
PROTOCOLS = ("training", "paper")
RESULT_FILES = {"training": RESULT_FILE, "paper": "eval_metrics_paper.json"}
TRAINING_NOTE = "streaming metric at the network's input size (the training protocol)"


def evaluate_network(network, tasks: Sequence, dataset) -> Dict[str, float]:
    """Streams `dataset` through `network` (inference mode) and returns the tasks' metrics.

    Args:
        network: callable `images [B,H,W,3] -> {task: [B,H,W,C], ...}` (e.g. our SegNet).
        tasks: the tasks to score; each must be an output of the network and a label.
        dataset: iterable of batches `{"image": [B,H,W,3], "labels": {task: ...}}` (the
            DESIGN.md contract; `pipeline.test_dataset` yields these).

    Returns:
        `{"task/metric": float}`, e.g. `{"semantic/miou": 0.26, "depth/abs_err": 0.77, ...}`.

    Raises:
        ValueError if `dataset` yields no batch.
    """
    import tensorflow as tf

    metrics = {t.name: t.make_metric() for t in tasks}
    predict = tf.function(lambda images: network(images, training=False), reduce_retracing=True)
    batches = 0
    for batch in dataset:
        outputs = predict(tf.convert_to_tensor(batch["image"], tf.float32))
        for task in tasks:
            task.update_metric(metrics[task.name], batch["labels"][task.name], outputs[task.name])
        batches += 1
    if not batches:
        raise ValueError("evaluate_network: the dataset yielded no batch")
    return {f"{t.name}/{key}": float(value)
            for t in tasks for key, value in metrics[t.name].result().items()}


def evaluate_network_original_size(network, tasks: Sequence, examples, batch_size: int,
                                   workers: int = 1) -> Tuple[Dict[str, float], Dict[str, str]]:
    """The `paper` protocol: predictions at the network's size, scored at each image's own size.

    Args:
        network: callable `images [B,h,w,3] -> {task: [B,h,w,C], ...}`.
        tasks: the tasks to score (each scored by `task.paper_scorer(workers)`).
        examples: iterable of UNBATCHED examples `{"image": [h,w,3], "original_labels": {task:
            [H_i, W_i, ...]}}` (`pipeline.original_size_test_dataset`); all images share h, w.
        batch_size: images per network call.
        workers: processes for scorers that use them (edge odsF).

    Returns:
        (`{"task/metric": float}`, `{"task/metric": "exact" or "approximate: why" ...}`).

    Raises:
        ValueError if `examples` yields nothing.
    """
    import numpy as np
    import tensorflow as tf

    scorers = {t.name: t.paper_scorer(workers=workers) for t in tasks}
    predict = tf.function(lambda images: network(images, training=False), reduce_retracing=True)
    images, originals, seen = [], [], 0

    def score_batch():
        outputs = predict(tf.stack(images))
        for task in tasks:
            values = tf.cast(outputs[task.name], tf.float32).numpy()
            for i, labels in enumerate(originals):
                scorers[task.name].update(labels[task.name], values[i])

    for example in examples:
        images.append(tf.convert_to_tensor(example["image"], tf.float32))
        originals.append({t.name: np.asarray(example["original_labels"][t.name]) for t in tasks})
        seen += 1
        if len(images) == batch_size:
            score_batch()
            images, originals = [], []
    if images:
        score_batch()
    if not seen:
        raise ValueError("evaluate_network_original_size: the dataset yielded no example")
    metrics, protocol = {}, {}
    for task in tasks:
        scorer = scorers[task.name]
        for key, value in scorer.result().items():
            metrics[f"{task.name}/{key}"] = float(value)
            protocol[f"{task.name}/{key}"] = scorer.protocol[key]
    return metrics, protocol


def _setting_kind(setting: str) -> str:
    """'ratio=1:9' -> 'ratio'; 'onelabel' -> 'onelabel' (the STL reference's key)."""
    return setting.split("=", 1)[0]


def _checkpoint_epoch(path: str) -> Optional[int]:
    """The `epoch` counter stored in a checkpoint, or None if it has none."""
    import tensorflow as tf

    reader = tf.train.load_checkpoint(path)
    key = "epoch/.ATTRIBUTES/VARIABLE_VALUE"
    return int(reader.get_tensor(key)) if reader.has_tensor(key) else None


def evaluate_model_dir(model_dir: str, which: str = "best", data_dir: str = "", split_dir: str = "",
                       setting: str = "", batch_size: int = 0, protocol: str = "training",
                       workers: int = 1) -> Dict[str, object]:
    """Evaluates `model_dir`'s `which` checkpoint on the test split; writes the protocol's
    result file (`RESULT_FILES`).

    Args:
        model_dir: a model directory (config.json + checkpoints/ and/or best/).
        which: "best" (falls back to the latest when there is no best/) or "latest".
        data_dir, split_dir: override the config's data locations ("" keeps them).
        setting: label setting whose STL reference Delta-MTL uses ("" keeps the config's).
        batch_size: evaluation batch size (0 keeps the config's eval_batch_size).
        protocol: "training" or "paper" (module docstring).
        workers: processes for the paper protocol's edge odsF.

    Returns:
        the report written to `<model_dir>/<RESULT_FILES[protocol]>`, plus its "path".
    """
    from mtpsl_tf.config import load_config
    from mtpsl_tf.data import pipeline
    from mtpsl_tf.training import delta as delta_lib
    from mtpsl_tf.training.callbacks import write_json_atomic
    from mtpsl_tf.training.restore import find_checkpoint, load_network

    if protocol not in PROTOCOLS:
        raise ValueError(f"--protocol must be one of {PROTOCOLS}, got {protocol!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"--workers must be an integer >= 1, got {workers!r}")
    find_checkpoint(model_dir, which)  # fails early, naming the folder, if there is none
    config = load_config(os.path.join(model_dir, "config.json"))
    data = config.data
    data.data_dir = data_dir or data.data_dir
    data.setting = setting or data.setting
    data.eval_batch_size = batch_size or data.eval_batch_size
    if data.eval_batch_size <= 0:
        raise ValueError(f"--batch_size must be > 0, got {data.eval_batch_size}")
    bundle = pipeline.load(data, split_dir=split_dir or data.split_dir)
    restored = load_network(model_dir, which, height=bundle.height, width=bundle.width)
    if protocol == "paper":
        metrics, metric_protocol = evaluate_network_original_size(
            restored.network, restored.tasks, pipeline.original_size_test_dataset(bundle),
            data.eval_batch_size, workers)
    else:
        metrics = evaluate_network(restored.network, restored.tasks,
                                   pipeline.test_dataset(bundle, data.eval_batch_size))
        metric_protocol = {key: TRAINING_NOTE for key in metrics}
    reference = delta_lib.resolve_reference(
        restored.tasks, bundle.spec.stl_reference.get(_setting_kind(data.setting), {}),
        config.stl_reference_overrides())
    report = {
        "protocol": protocol, "metric_protocol": metric_protocol,
        "model_dir": os.path.abspath(model_dir), "which": which, "checkpoint": restored.checkpoint,
        "epoch": _checkpoint_epoch(restored.checkpoint), "dataset": data.dataset,
        "dataset_config": data.dataset_config, "setting": data.setting,
        "test_examples": bundle.test_examples, "metrics": metrics, "stl_reference": reference,
        "delta_mtl": delta_lib.compute(metrics, restored.tasks, reference),
    }
    path = os.path.join(model_dir, RESULT_FILES[protocol])
    write_json_atomic(path, report)
    return {**report, "path": path}


def format_report(report: Dict[str, object]) -> str:
    """Human-readable lines: one per task, then Delta-MTL."""
    by_task: Dict[str, list] = {}
    for key, value in report["metrics"].items():
        task, metric = key.split("/", 1)
        by_task.setdefault(task, []).append(f"{metric} {value:.4f}")
    lines = [f"{report['dataset']} test split ({report['test_examples']} images), "
             f"{report['checkpoint']} (epoch {report['epoch']}), protocol {report['protocol']}:"]
    lines += [f"  {task:10s} " + "  ".join(parts) for task, parts in by_task.items()]
    notes = sorted({note for note in report["metric_protocol"].values() if note != "exact"})
    exact = [key for key, note in report["metric_protocol"].items() if note == "exact"]
    if exact:
        lines.append(f"  exact as the published protocol: {', '.join(exact)}")
    for note in notes:
        keys = [key for key, value in report["metric_protocol"].items() if value == note]
        lines.append(f"  {', '.join(keys)}: {note}")
    delta = report["delta_mtl"]
    if delta is None:
        lines.append(f"  Delta-MTL  n/a (no STL reference for setting {report['setting']!r})")
    else:
        lines.append(f"  Delta-MTL  {delta:+.2f}%")
    return "\n".join(lines)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m mtpsl_tf.evaluate",
                                     description="Evaluate a model directory on its test split.")
    parser.add_argument("--model_dir", required=True, help="model directory (train.py or import_torch output)")
    parser.add_argument("--which", default="best", choices=("best", "latest"), help="checkpoint to evaluate")
    parser.add_argument("--data_dir", default="", help="TFDS data directory (default: the config's)")
    parser.add_argument("--split_dir", default="", help="folder with the authors' split files")
    parser.add_argument("--setting", default="", help="label setting for the Delta-MTL reference "
                        "(default: the config's)")
    parser.add_argument("--batch_size", type=int, default=0, help="evaluation batch size (default: the config's)")
    parser.add_argument("--protocol", default="training", choices=PROTOCOLS,
                        help="training: streaming metrics at the network's size; paper: predictions "
                        "resized to each image's original size and scored as the published evaluation")
    parser.add_argument("--workers", type=int, default=1, help="processes for the paper protocol's edge odsF")
    return parser.parse_args(list(argv))


def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI entry point; returns the exit status (0 ok, 2 bad input)."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        report = evaluate_model_dir(args.model_dir, args.which, args.data_dir, args.split_dir,
                                    args.setting, args.batch_size, args.protocol, args.workers)
    except (FileNotFoundError, KeyError, ValueError) as err:
        print(f"error: {error_message(err)}", file=sys.stderr)
        return 2
    print(format_report(report))
    print(f"wrote {report['path']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
