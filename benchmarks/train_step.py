"""Times training steps of a named method on random data; last line is one JSON object.

    python benchmarks/train_step.py --method=sl --height=288 --width=384 --batch_size=2 --xla
    python benchmarks/train_step.py --weighting=gradnorm --option=gradnorm_alpha=1.5
    python benchmarks/train_step.py --method=mtpsl --remat_backbone --option=remat_mapping=true

(`benchmarks/weighting_overhead.py` compares the weightings' step times with `fixed`.)

Reports images/s, seconds per step, peak RSS (at the end of the timed steps), TensorFlow's
allocator figures on the CPU (`alloc_before_step_mb`: live bytes before the first step, i.e.
weights, optimiser slots and the batch; `rss_before_step_mb`: the resident set then: runtime,
model and batch; `alloc_peak_mb`: the most live at once from then on, XLA temporaries
included), the step's convolution FLOPs (counted from a second trace of the step after the
timed steps: forward and backward Conv2D ops) over its time, and the GFLOP/s of a large
float32 matmul timed in the same process (the machine's practical peak).
"""

from __future__ import annotations

import json
import os
import platform
import resource
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

flags.DEFINE_string("method", "sl", "Method name (registry).")
flags.DEFINE_string("dataset", "nyuv2", "Dataset whose tasks the network predicts (nyuv2, cityscapes, "
                    "pascal_context, synthetic).")
flags.DEFINE_string("backbone", "segnet", "Backbone name (segnet, segnet_mtan, resnet18_aspp).")
flags.DEFINE_string("weighting", "fixed", "Loss weighting name (registry; its options via --option).")
flags.DEFINE_integer("height", 288, "Image height (multiple of 32).")
flags.DEFINE_integer("width", 384, "Image width (multiple of 32).")
flags.DEFINE_integer("batch_size", 2, "Images per step (two views each for two-view methods).")
flags.DEFINE_boolean("xla", True, "jit_compile the step.")
flags.DEFINE_string("filters", "", "Comma-separated 5 widths (empty: standard SegNet).")
flags.DEFINE_boolean("lean_host_memory", False, "glibc malloc settings that return freed memory "
                     "(train.py --lean_host_memory; mtpsl_tf/host_memory.py).")
flags.DEFINE_boolean("bfc_host_allocator", False, "TensorFlow's BFC CPU allocator "
                     "(train.py --bfc_host_allocator; mtpsl_tf/host_memory.py).")
flags.DEFINE_string("precision", "float32", "float32, mixed_float16 or mixed_bfloat16.")
flags.DEFINE_integer("warmup", 2, "Untimed steps.")
flags.DEFINE_integer("steps", 5, "Timed steps.")
flags.DEFINE_string("setting", "onelabel", "Label masks of the random batch: onelabel or full.")
flags.DEFINE_boolean("remat_backbone", False, "Recompute the backbone's activations in the backward pass "
                     "(--remat_backbone of train.py).")
flags.DEFINE_multi_string("option", [], "A method/weighting option as name=value (e.g. remat_mapping=true); "
                          "repeatable.")
FLAGS = flags.FLAGS

CONV_OPS = ("Conv2D", "Conv2DBackpropInput", "Conv2DBackpropFilter")


def conv_flops(graph) -> float:
    """2*MACs of every forward/backward Conv2D op one run of `graph` executes.

    Each of the three ops of a convolution costs its forward pass's MACs: output positions x
    output channels x kernel taps x input channels per group (a grouped convolution's kernel
    is [kh, kw, Cin / groups, Cout]). A function the graph calls counts once per call, a
    conditional as its costliest branch, a while loop's body once per iteration: its
    `maximum_iterations` (the loop op's second input) must be a constant wherever the body
    holds a convolution, else the count raises ValueError."""
    library = _function_graphs(graph)
    memo = {}

    def run_flops(g):
        if g not in memo:
            memo[g] = sum(_op_flops(op, library, run_flops) for op in g.get_operations())
        return memo[g]

    return run_flops(graph)


def _function_graphs(graph) -> dict:
    """Name -> graph of every function `graph` and the functions it holds define."""
    library, pending = {}, [graph]
    while pending:
        for name, function in getattr(pending.pop(), "_functions", {}).items():
            if name not in library and hasattr(function, "graph"):
                library[name] = function.graph
                pending.append(function.graph)
    return library


CALL_ATTRS = {"PartitionedCall": "f", "StatefulPartitionedCall": "f"}
LOOP_OPS = ("While", "StatelessWhile")
BRANCH_ATTRS = {"If": ("then_branch", "else_branch"), "StatelessIf": ("then_branch", "else_branch"),
                "Case": ("branches",), "StatelessCase": ("branches",)}


def _op_flops(op, library, run_flops) -> float:
    """Conv FLOPs of one op: a convolution's own, a call's callee, a loop's body x its trips."""
    if op.type in CONV_OPS:
        return _conv_op_flops(op)
    if op.type in CALL_ATTRS:
        return run_flops(library[op.get_attr(CALL_ATTRS[op.type]).name])
    if op.type in BRANCH_ATTRS:  # the costliest branch: an upper bound
        names = [f.name for attr in BRANCH_ATTRS[op.type] for f in _as_list(op.get_attr(attr))]
        return max(run_flops(library[name]) for name in names)
    if op.type in LOOP_OPS:
        body = run_flops(library[op.get_attr("body").name])
        if body == 0:
            return 0.0
        import tensorflow as tf

        trips = tf.get_static_value(op.inputs[1])
        if trips is None or trips < 0:
            raise ValueError(f"while loop {op.name} runs convolutions but its trip count is not a constant: "
                             "build it with maximum_iterations=<int> so that its FLOPs can be counted")
        return float(trips) * body
    return 0.0


def _as_list(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _conv_op_flops(op) -> float:
    if op.type == "Conv2D":
        kernel, out = op.inputs[1].shape, op.outputs[0].shape
    elif op.type == "Conv2DBackpropInput":  # (input_sizes, filter, dL/d(output))
        kernel, out = op.inputs[1].shape, op.inputs[2].shape
    else:  # Conv2DBackpropFilter: (input, filter_sizes, dL/d(output)) -> the filter's shape
        kernel, out = op.outputs[0].shape, op.inputs[2].shape
    return 2.0 * out[0] * out[1] * out[2] * out[3] * kernel[0] * kernel[1] * kernel[2]


def matmul_peak(n: int = 2048, repeats: int = 10) -> float:
    import tensorflow as tf

    a = tf.random.uniform([n, n])
    b = tf.random.uniform([n, n])
    mm = tf.function(lambda x, y: tf.matmul(x, y))
    mm(a, b).numpy()
    start = time.perf_counter()
    for _ in range(repeats):
        c = mm(a, b)
    c.numpy()
    return 2.0 * n ** 3 * repeats / (time.perf_counter() - start) / 1e9


def random_batch(tasks, batch_size, height, width, setting, two_views, align_views=False):
    import numpy as np
    import tensorflow as tf

    from mtpsl_tf.tasks.saliency import BinaryLogitTask

    rng = np.random.default_rng(0)

    def labels():
        out = {}
        for t in tasks:
            spec = t.label_signature(height, width)
            if spec.dtype == tf.int32:
                out[t.name] = tf.constant(rng.integers(-1, t.num_classes, [batch_size, height, width]), tf.int32)
            elif isinstance(t, BinaryLogitTask):  # saliency / edges: {0, 1}
                out[t.name] = tf.constant(rng.integers(0, 2, [batch_size, height, width, 1]).astype("float32"))
            elif t.channels == 3:
                v = rng.normal(size=[batch_size, height, width, 3]).astype("float32")
                out[t.name] = tf.constant(v / np.linalg.norm(v, axis=-1, keepdims=True))
            else:
                out[t.name] = tf.constant(rng.uniform(0.5, 5, [batch_size, height, width, 1]).astype("float32"))
        return out

    names = [t.name for t in tasks]
    mask = {n: tf.constant([1.0 if setting == "full" or i % len(names) == k else 0.0 for i in range(batch_size)])
            for k, n in enumerate(names)}
    batch = {"image": tf.random.uniform([batch_size, height, width, 3]), "labels": labels(),
             "label_mask": mask, "index": tf.range(batch_size, dtype=tf.int64)}
    if two_views:
        batch.update(image_aug=tf.random.uniform([batch_size, height, width, 3]), labels_aug=labels())
    if align_views:  # view 2 = a 1.2x zoom into view 1's centre
        zoom = [1 / 1.2, 0.0, height / 12.0, 0.0, 1 / 1.2, width / 12.0]
        batch["view_transform"] = tf.constant([zoom] * batch_size, tf.float32)
    return batch


def _parse_option(item: str):
    """"name=value" -> (name, value) with JSON values (true, 2, 0.5) or else the string."""
    import json

    name, sep, value = item.partition("=")
    if not sep:
        raise ValueError(f"--option must look like name=value, got {item!r}")
    try:
        return name, json.loads(value)
    except json.JSONDecodeError:
        return name, value


def _peak_gpu_mb(tf):
    """Peak memory TensorFlow allocated on the first GPU (None without a GPU)."""
    if not tf.config.list_physical_devices("GPU"):
        return None
    return round(tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20, 1)


def _alloc_mb(tf, key):
    """TensorFlow's CPU allocator statistic `key` ("current" / "peak") in MiB."""
    return round(tf.config.experimental.get_memory_info("CPU:0")[key] / 2**20, 1)


def main(argv):
    del argv
    from mtpsl_tf.host_memory import apply_flags

    apply_flags(FLAGS)  # before TensorFlow is imported
    import keras
    import tensorflow as tf

    from mtpsl_tf.config import ExperimentConfig
    from mtpsl_tf.data.registry import DATASETS
    from mtpsl_tf.host_memory import proc_status_mib
    from mtpsl_tf.training.run import build, dtype_policy

    config = ExperimentConfig()
    config.method.method = FLAGS.method
    config.method.weighting = FLAGS.weighting
    config.model.filters = FLAGS.filters
    config.model.backbone = FLAGS.backbone
    config.model.remat_backbone = FLAGS.remat_backbone
    config.data.dataset, config.data.setting = FLAGS.dataset, FLAGS.setting
    config.data.batch_size = FLAGS.batch_size
    config.train.precision = FLAGS.precision
    if FLAGS.method == "stl":
        config.method.stl_task = DATASETS.get(FLAGS.dataset).tasks()[0].name
    config.options = dict(_parse_option(item) for item in FLAGS.option)
    config.validate()
    keras.utils.set_random_seed(0)
    with dtype_policy(FLAGS.precision):
        spec = DATASETS.get(FLAGS.dataset)
        model = build(config, spec.tasks(), FLAGS.height, FLAGS.width, steps=100)
        batch = random_batch(model.method.tasks, FLAGS.batch_size, FLAGS.height, FLAGS.width, FLAGS.setting,
                             model.method.two_views, model.method.align_views)
        step = tf.function(model.train_step, jit_compile=FLAGS.xla)
        tf.config.experimental.reset_memory_stats("CPU:0")
        alloc_before, rss_before = _alloc_mb(tf, "current"), proc_status_mib("VmRSS")
        for _ in range(FLAGS.warmup):
            tf.nest.map_structure(lambda t: t.numpy(), step(batch))
        start = time.perf_counter()
        for _ in range(FLAGS.steps):
            out = step(batch)
        tf.nest.map_structure(lambda t: t.numpy(), out)
        step_s = (time.perf_counter() - start) / FLAGS.steps
        alloc_peak = _alloc_mb(tf, "peak")
        peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        # Counted after the timed steps: this second trace of the step is not part of training.
        flops = conv_flops(tf.function(model.train_step).get_concrete_function(batch).graph)
    peak = matmul_peak()
    result = {
        "method": FLAGS.method, "weighting": FLAGS.weighting, "dataset": FLAGS.dataset, "backbone": FLAGS.backbone,
        "height": FLAGS.height, "width": FLAGS.width, "batch_size": FLAGS.batch_size, "xla": FLAGS.xla,
        "remat_backbone": FLAGS.remat_backbone, "lean_host_memory": FLAGS.lean_host_memory,
        "bfc_host_allocator": FLAGS.bfc_host_allocator,
        "precision": FLAGS.precision, "filters": FLAGS.filters or "standard",
        "options": config.options,
        "step_s": round(step_s, 4), "images_per_s": round(FLAGS.batch_size / step_s, 3),
        "conv_gflop_per_step": round(flops / 1e9, 2), "gflops_per_s": round(flops / step_s / 1e9, 2),
        "matmul_peak_gflops_per_s": round(peak, 2),
        "fraction_of_matmul_peak": round(flops / step_s / 1e9 / peak, 3),
        "peak_rss_mb": round(peak_rss, 1),
        "rss_before_step_mb": rss_before and round(rss_before, 1),
        "alloc_before_step_mb": alloc_before, "alloc_peak_mb": alloc_peak,
        "peak_gpu_mb": _peak_gpu_mb(tf),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, TF {tf.__version__}",
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(app.run(main))
