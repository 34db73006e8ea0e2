"""Throughput of single 3x3 convolutions (forward + both backward passes) at SegNet's
resolutions, in TensorFlow (with and without XLA) and, if torch is importable in the same
environment, in PyTorch: the ceiling any training step built from them can reach.

    python benchmarks/conv_layers.py [--batch_size=4 --height=288 --width=384 --repeats=3]

Prints one line per (framework, shape) and a final JSON object.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

flags.DEFINE_integer("batch_size", 4, "Images per call.")
flags.DEFINE_integer("height", 288, "Full-resolution height (stages halve it).")
flags.DEFINE_integer("width", 384, "Full-resolution width.")
flags.DEFINE_integer("repeats", 3, "Timed calls per shape (after 2 untimed).")
FLAGS = flags.FLAGS

STAGES = ((1, 64), (2, 128), (4, 256), (8, 512))  # (downscale, channels in = out)


def _flops(b, h, w, c) -> float:
    return 3 * 2.0 * b * h * w * c * c * 9  # forward, input gradient, filter gradient


def _time(fn, repeats: int) -> float:
    fn(), fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def tensorflow_rows(b, height, width, repeats):
    import tensorflow as tf

    rows = []
    for xla in (False, True):
        for down, c in STAGES:
            h, w = height // down, width // down
            x = tf.random.normal([b, h, w, c])
            k = tf.Variable(tf.random.normal([3, 3, c, c]) * 0.05)

            @tf.function(jit_compile=xla)
            def step(x):
                with tf.GradientTape() as tape:
                    tape.watch(x)
                    y = tf.nn.conv2d(x, k, 1, "SAME")
                    loss = tf.reduce_sum(y * y)
                return tape.gradient(loss, [x, k])

            seconds = _time(lambda: step(x)[0].numpy(), repeats)
            rows.append({"framework": "tensorflow" + ("+xla" if xla else ""), "shape": [b, h, w, c],
                         "seconds": round(seconds, 4), "gflops_per_s": round(_flops(b, h, w, c) / seconds / 1e9, 1)})
    return rows


def torch_rows(b, height, width, repeats):
    try:
        import torch
    except ImportError:
        return []
    rows = []
    for down, c in STAGES:
        h, w = height // down, width // down
        x = torch.randn(b, c, h, w, requires_grad=True)
        conv = torch.nn.Conv2d(c, c, 3, padding=1, bias=False)

        def step():
            x.grad, conv.weight.grad = None, None
            y = conv(x)
            (y * y).sum().backward()

        seconds = _time(step, repeats)
        rows.append({"framework": f"torch {torch.__version__}", "shape": [b, h, w, c], "seconds": round(seconds, 4),
                     "gflops_per_s": round(_flops(b, h, w, c) / seconds / 1e9, 1)})
    return rows


def main(argv):
    del argv
    import tensorflow as tf

    rows = tensorflow_rows(FLAGS.batch_size, FLAGS.height, FLAGS.width, FLAGS.repeats)
    rows += torch_rows(FLAGS.batch_size, FLAGS.height, FLAGS.width, FLAGS.repeats)
    for row in rows:
        print(f"{row['framework']:>22} {str(row['shape']):>22} {row['seconds']:8.3f} s {row['gflops_per_s']:6.1f} GFLOP/s")
    print(json.dumps({"rows": rows, "machine": f"{platform.machine()} {os.cpu_count()} cores, TF {tf.__version__}"}))
    return 0


if __name__ == "__main__":
    sys.exit(app.run(main))
