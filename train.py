"""Train / evaluate a multi-task dense-prediction model.

    python train.py --flagfile=configs/quickstart.flags
    python train.py --flagfile=configs/nyuv2/onelabel_sl.flags --data_dir=~/tensorflow_datasets

Writes into --model_dir: checkpoints/ (every epoch; rerun to resume), best/ (best by
Delta-MTL), logs/ (TensorBoard), config.json (resolved config), history.json and
metrics.json (final per-task metrics and Delta-MTL).
"""

from __future__ import annotations

import logging
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported

from absl import app, flags  # noqa: E402

from mtpsl_tf.cli import RUN_ERRORS, USER_ERRORS, error_message, metric_text, quiet_library_logs  # noqa: E402
from mtpsl_tf.flags import config_from_flags, define_flags  # noqa: E402

define_flags()


def _apply_host_memory_flags():
    """--lean_host_memory / --bfc_host_allocator, before TensorFlow's first tensor (mtpsl_tf/host_memory.py)."""
    from mtpsl_tf.host_memory import apply_flags

    for flag, applied in apply_flags(flags.FLAGS).items():
        logging.getLogger("mtpsl_tf").info("--%s: %s", flag, " ".join(applied))


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    quiet_library_logs()
    # absl.app has already given the root logger its handler and WARNING level (so basicConfig
    # does nothing): our own INFO lines (devices, resume point, epochs) need their own level.
    logging.getLogger("mtpsl_tf").setLevel(logging.INFO)
    try:
        _apply_host_memory_flags()
        config = config_from_flags(flags.FLAGS)
        from mtpsl_tf.training.run import run

        report = run(config)
    except USER_ERRORS as err:
        print(f"error: {error_message(err)}", file=sys.stderr)
        return 2
    except RUN_ERRORS as err:
        print(f"error: {error_message(err)}", file=sys.stderr)
        return 1
    _print_summary(report)
    return 0


def _print_summary(report):
    from mtpsl_tf.training.delta import comparison_lines

    model_dir = os.path.dirname(report["path"])
    print("\n== results ==")
    for name in ("last", "best"):
        if name in report:
            part = report[name]
            delta = part["delta_mtl"]
            label = f"{name} (epoch {part['epoch']})" if "epoch" in part else name
            print(f"{label}: Delta-MTL = {'n/a' if delta is None else f'{delta:+.2f}%'}")
            for key, value in sorted(part["metrics"].items()):
                print(f"  {key:28s} {metric_text(value)}")
    if "last" in report:
        for line in comparison_lines(report["method"], report["last"]["delta_mtl"], report.get("compare_delta_mtl", {})):
            print(line)
    print(f"\nmodel directory: {model_dir}")
    print(f"  metrics:     {report['path']}")
    print(f"  config:      {os.path.join(model_dir, 'config.json')}")
    print(f"  checkpoints: {os.path.join(model_dir, 'checkpoints')} (best: {os.path.join(model_dir, 'best')})")
    print(f"  tensorboard: tensorboard --logdir {os.path.join(model_dir, 'logs')}")


if __name__ == "__main__":
    app.run(main)
