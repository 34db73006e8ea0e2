"""Input-pipeline throughput (examples/s) at the datasets' real sizes, on generated data.

    python benchmarks/input_pipeline.py [--examples=64] [--data_dir=/tmp/mtpsl_bench_tfds] \
        [--only=pascal_context_512x512]

For each real size (NYU-v2 288x384 with 3 tasks, Cityscapes 128x256 and 256x512 with the
NYU tasks' labels as stand-ins), renders that many synthetic scenes into a TFDS dataset,
then times `pipeline.train_dataset` (decode, label masks, cache, shuffle, scale-crop
augmentation, batching, prefetch) with one and with two views (MTPSL), after a warm-up
epoch that fills the cache. PASCAL-Context: writes a fake PASCAL_MT release of VOC-sized
images (500x375, 375x500, 500x333; tests/fake_layouts.py), prepares it with the real builder
and times its own policy (MTL-PyTorch flip / scale / rotate + resize to 512x512, no cache;
it has no two-view sampling) and its test pipeline (resize to 512x512). Prints a table and,
last, one JSON line. Compare with the training step's consumption
(benchmarks/train_step.py images_per_s).
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
flags.DEFINE_list("only", [], "Rows to run (default all): " + ", ".join(
    ["nyuv2_288x384", "cityscapes_128x256", "cityscapes_256x512", "pascal_context_512x512"]))
FLAGS = flags.FLAGS

SIZES = {"nyuv2_288x384": (288, 384), "cityscapes_128x256": (128, 256), "cityscapes_256x512": (256, 512)}
PASCAL = "pascal_context_512x512"
PASCAL_IMAGE_SIZES = ((375, 500), (500, 375), (333, 500))  # the usual VOC image sizes


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


def _prepare_fake_pascal(data_dir: str, examples: int) -> None:
    """A fake PASCAL_MT release of `examples` train and 8 val images, prepared as the
    `mtpsl_pascal_context` TFDS dataset in `data_dir` (kept: later runs with the same data_dir
    reuse it)."""
    import sys

    import numpy as np
    import tensorflow_datasets as tfds

    from mtpsl_datasets.pascal_context import MtpslPascalContext

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
    import fake_layouts  # the tests' writer of PASCAL_MT files

    counts = {"train": examples, "val": 8}
    with tfds.core.registered.skip_registration():
        cls = type("BenchMtpslPascalContext", (MtpslPascalContext,),
                   {"SPLIT_COUNTS": counts, "name": MtpslPascalContext.name,
                    "__module__": MtpslPascalContext.__module__})
    builder = cls(data_dir=data_dir)
    if builder.is_prepared():
        return
    manual = os.path.join(data_dir, "fake_pascal_mt")
    rng = np.random.default_rng(0)
    os.makedirs(os.path.join(manual, "ImageSets", "Context"), exist_ok=True)
    k = 0
    for split, n in counts.items():
        ids = [f"{2008 + (split == 'val')}_{i:06d}" for i in range(n)]
        with open(os.path.join(manual, "ImageSets", "Context", f"{split}.txt"), "w") as f:
            f.write("\n".join(ids) + "\n")
        for image_id in ids:
            size = PASCAL_IMAGE_SIZES[k % len(PASCAL_IMAGE_SIZES)]
            fake_layouts._pascal_image(rng, manual, image_id, size, k % 2 == 0, "pascal-context")
            k += 1
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual))


def measure_pascal() -> tuple:
    """(training examples/s with the PASCAL policy, test examples/s) at 512x512."""
    from mtpsl_tf.config import DataConfig
    from mtpsl_tf.data import pipeline

    data_dir = os.path.join(FLAGS.data_dir, f"pascal_{FLAGS.examples}")
    _prepare_fake_pascal(data_dir, FLAGS.examples)
    config = DataConfig(dataset="pascal_context", data_dir=data_dir, setting="onelabel")
    bundle = pipeline.load(config)
    assert (bundle.height, bundle.width) == (512, 512)
    ds = pipeline.train_dataset(bundle, config, seed=0, initial_epoch=0, epochs=FLAGS.epochs + 1,
                                batch_size=FLAGS.batch_size)
    steps = FLAGS.examples // FLAGS.batch_size
    iterator = iter(ds)
    for _ in range(steps):  # warm-up epoch: XLA compiles the transforms (once per size bucket)
        next(iterator)
    start = time.perf_counter()
    for _ in range(steps * FLAGS.epochs):
        next(iterator)
    train = steps * FLAGS.epochs * FLAGS.batch_size / (time.perf_counter() - start)
    test_ds = pipeline.test_dataset(bundle, FLAGS.batch_size)
    for _ in test_ds:  # warm-up: compiles
        pass
    start, count = time.perf_counter(), 0
    for _ in range(FLAGS.epochs):
        for batch in test_ds:
            count += int(batch["image"].shape[0])
    return train, count / (time.perf_counter() - start)


def main(argv):
    del argv
    results = {}
    print("| size | one view (ex/s) | two views, MTPSL (ex/s) |\n|---|---|---|")
    for name, (h, w) in SIZES.items():
        if FLAGS.only and name not in FLAGS.only:
            continue
        flip = name.startswith("cityscapes")
        one, two = measure(h, w, False, flip), measure(h, w, True, flip)
        results[name] = {"one_view_examples_per_s": round(one, 1), "two_views_examples_per_s": round(two, 1)}
        print(f"| {name} | {one:.1f} | {two:.1f} |", flush=True)
    if not FLAGS.only or PASCAL in FLAGS.only:
        train, test = measure_pascal()
        results[PASCAL] = {"one_view_examples_per_s": round(train, 1), "test_examples_per_s": round(test, 1)}
        print(f"| {PASCAL} (test pipeline: {test:.1f} ex/s) | {train:.1f} | n/a |", flush=True)
    results["machine"] = f"{platform.machine()} {os.cpu_count()} cores"
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    app.run(main)
