"""Input-pipeline throughput (examples/s) at the datasets' real sizes, on generated data.

    python benchmarks/input_pipeline.py [--examples=64] [--data_dir=/tmp/mtpsl_bench_tfds]

For each real size (NYU-v2 288x384 with 3 tasks, Cityscapes 128x256 and 256x512 with the
NYU tasks' labels as stand-ins), renders that many synthetic scenes into a TFDS dataset,
then times `pipeline.train_dataset` (decode, label masks, cache, shuffle, scale-crop
augmentation, batching, prefetch) with one and with two views (MTPSL), after a warm-up
epoch that fills the cache. Prints a table and, last, one JSON line. Compare with the
training step's consumption (benchmarks/train_step.py images_per_s).
"""

from __future__ import annotations

import json
import os
import platform
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

flags.DEFINE_integer("examples", 64, "Generated training examples per size.")
flags.DEFINE_integer("epochs", 3, "Timed epochs (after one warm-up epoch).")
flags.DEFINE_integer("batch_size", 2, "Batch size.")
flags.DEFINE_string("data_dir", "/tmp/mtpsl_bench_tfds", "Where the generated TFDS datasets go.")
FLAGS = flags.FLAGS

SIZES = {"nyuv2_288x384": (288, 384), "cityscapes_128x256": (128, 256), "cityscapes_256x512": (256, 512)}


def measure(height: int, width: int, two_views: bool, flip: bool) -> float:
    import dataclasses

    from mtpsl_tf.config import DataConfig
    from mtpsl_tf.data import pipeline

    config = DataConfig(dataset="synthetic", data_dir=FLAGS.data_dir, height=height, width=width,
                        num_train=FLAGS.examples, num_test=2, setting="onelabel")
    bundle = pipeline.load(config)
    bundle.spec = dataclasses.replace(bundle.spec, flip=flip)
    epochs = FLAGS.epochs + 1
    ds = pipeline.train_dataset(bundle, config, seed=0, initial_epoch=0, epochs=epochs,
                                batch_size=FLAGS.batch_size, two_views=two_views)
    steps = FLAGS.examples // FLAGS.batch_size
    iterator = iter(ds)
    for _ in range(steps):  # warm-up epoch: fills the cache
        next(iterator)
    start = time.perf_counter()
    for _ in range(steps * FLAGS.epochs):
        next(iterator)
    return steps * FLAGS.epochs * FLAGS.batch_size / (time.perf_counter() - start)


def main(argv):
    del argv
    results = {}
    print("| size | one view (ex/s) | two views, MTPSL (ex/s) |\n|---|---|---|")
    for name, (h, w) in SIZES.items():
        flip = name.startswith("cityscapes")
        one, two = measure(h, w, False, flip), measure(h, w, True, flip)
        results[name] = {"one_view_examples_per_s": round(one, 1), "two_views_examples_per_s": round(two, 1)}
        print(f"| {name} | {one:.1f} | {two:.1f} |", flush=True)
    results["machine"] = f"{platform.machine()} {os.cpu_count()} cores"
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    app.run(main)
