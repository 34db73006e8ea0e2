"""Times batch-1 inference of every export format; last line is one JSON object.

    python benchmarks/inference.py                       # standard SegNet, random weights,
                                                         # NYU-v2 288x384 and Cityscapes 128x256
    python benchmarks/inference.py --model_dir=runs/x [--height=288 --width=384]

Formats: keras (the network in a tf.function), saved_model (its `serving_default`), and LiteRT
float32 / float16 / int8 flatbuffers on `ai_edge_litert`'s interpreter, whose default op
resolver applies the XNNPACK delegate (`xnnpack_nodes`: the delegated partitions, DELEGATE
nodes after the first invoke; `--no_xnnpack` times the builtin kernels instead). LiteRT files
are converted with the export's default inference-only pooling switches (`--litert_switches=
arithmetic`, XNNPACK ops) and/or the training-time comparison ops (`compare`), one row each,
and the export's LiteRT layer forms (`--litert_forms`, default all: direct dilated convolutions,
logit heads; `none` converts the training-time layers). Each format is timed in its own
subprocess so its peak RSS (ru_maxrss) is its own; LiteRT workers never import TensorFlow.
Random-weight models are calibrated for int8 on uniform-noise images (speed does not
depend on the calibration).

`--torch_repo=DIR` (a local checkout of the authors' code, github.com/VICO-UoE/MTPSL; nothing
is downloaded) adds a `pytorch_eager` row per SegNet setup: the authors' own SegNet class
(model/segnet_mtl.py for NYU-v2, model/segnet_mtl_cityscapes.py for Cityscapes) with random
weights, eval mode, torch.no_grad(), torch.set_num_threads(--num_threads), same input size.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

FORMATS = ("keras", "saved_model", "tflite", "tflite_fp16", "tflite_int8")
# The authors' SegNet per dataset (module in their repository, number of classes).
TORCH_SEGNETS = {"nyuv2": ("model.segnet_mtl", 13), "cityscapes": ("model.segnet_mtl_cityscapes", 7)}
flags.DEFINE_string("model_dir", "", "Model directory of train.py (empty: random-weight SegNets per --setups).")
flags.DEFINE_enum("which", "best", ["best", "latest"], "Checkpoint of --model_dir.")
flags.DEFINE_integer("height", None, "With --model_dir: input height (default: training size).")
flags.DEFINE_integer("width", None, "With --model_dir: input width (default: training size).")
flags.DEFINE_string("setups", "nyuv2:288x384,cityscapes:128x256",
                    "Without --model_dir: dataset:HxW,... (the dataset gives the task heads).")
flags.DEFINE_string("backbone", "segnet", "Backbone of random-weight models: segnet or resnet18_aspp "
                    "(e.g. --backbone=resnet18_aspp --setups=pascal_context:512x512).")
flags.DEFINE_string("variant", "standard", "SegNet variant of random-weight models.")
flags.DEFINE_string("filters", "", "Comma-separated 5 widths of random-weight models (empty: the variant's).")
flags.DEFINE_list("formats", list(FORMATS), "Formats to time.")
flags.DEFINE_integer("warmup", 3, "Untimed runs.")
flags.DEFINE_integer("runs", 10, "Timed runs.")
flags.DEFINE_integer("num_threads", 2, "Threads of LiteRT and of TensorFlow's intra-op pool.")
flags.DEFINE_boolean("xnnpack", True, "LiteRT with its default XNNPACK delegate.")
flags.DEFINE_boolean("litert_latest_features", False, "XNNPACK with its newest opt-in features "
                     "(the interpreter's experimental_default_delegate_latest_features).")
flags.DEFINE_integer("num_calibration", 8, "int8 calibration images.")
flags.DEFINE_list("litert_switches", ["arithmetic"],
                  "SegNet pooling switches of the LiteRT formats, one row each: arithmetic (XNNPACK ops, the "
                  "export default) and/or compare (the training-time comparison ops).")
flags.DEFINE_string("litert_forms", "all", "LiteRT layer forms the LiteRT files are traced with: all, none or "
                    "names of mtpsl_tf.models.registry.LITERT_FORMS (as export.py --litert_forms).")
flags.DEFINE_string("torch_repo", "", "A local checkout of VICO-UoE/MTPSL: adds the authors' PyTorch SegNet "
                    "in eager mode as a `pytorch_eager` row (SegNet setups of nyuv2/cityscapes; needs torch).")
flags.DEFINE_string("workdir", "", "Where exports are written (empty: a temporary folder, removed).")
# Internal: one format timed in a child process.
flags.DEFINE_string("worker", "", "(internal) format to time in this process.")
flags.DEFINE_string("path", "", "(internal) exported model of the worker.")
flags.DEFINE_string("dataset", "", "(internal) dataset of a random-weight model.")
FLAGS = flags.FLAGS

TFLITE_FILES = {"tflite": ("float32", "model_float32.tflite"), "tflite_fp16": ("float16", "model_float16.tflite"),
                "tflite_int8": ("int8", "model_int8.tflite")}


def peak_rss_mb() -> float:
    """This process's peak resident set size in MiB.

    VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across fork+exec, so
    every worker would report at least the (large) parent's peak.
    """
    from mtpsl_tf.host_memory import proc_status_mib

    peak = proc_status_mib("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def build(dataset: str, height: int, width: int):
    """(network, tasks): the --model_dir network, or a seeded random-weight SegNet for `dataset`."""
    import keras

    if FLAGS.model_dir:
        from mtpsl_tf.training.restore import load_network

        restored = load_network(FLAGS.model_dir, FLAGS.which, height, width)
        return restored.network, restored.tasks
    from mtpsl_tf.config import ExperimentConfig
    from mtpsl_tf.data.registry import DATASETS
    from mtpsl_tf.training.run import build_network

    config = ExperimentConfig()
    config.model.backbone, config.model.variant, config.model.filters = FLAGS.backbone, FLAGS.variant, FLAGS.filters
    tasks = DATASETS.get(dataset).tasks()
    keras.utils.set_random_seed(0)
    return build_network(config.validate(), tasks, height, width), tasks


def time_calls(fn, image) -> dict:
    for _ in range(FLAGS.warmup):
        fn(image)
    times = []
    for _ in range(FLAGS.runs):
        start = time.perf_counter()
        fn(image)
        times.append(time.perf_counter() - start)
    times.sort()
    return {"median_ms": 1e3 * times[len(times) // 2], "min_ms": 1e3 * times[0],
            "mean_ms": 1e3 * sum(times) / len(times)}


def worker(fmt: str, height: int, width: int) -> dict:
    """Times `fmt` in this process; returns timings and this process's peak RSS."""
    import numpy as np

    image = np.random.default_rng(0).uniform(size=(1, height, width, 3)).astype(np.float32)
    if fmt == "pytorch_eager":
        fn = torch_segnet(FLAGS.dataset, FLAGS.torch_repo, FLAGS.num_threads)
    elif fmt.startswith("tflite"):
        from mtpsl_export.runners import LiteRTRunner

        fn = LiteRTRunner(FLAGS.path, num_threads=FLAGS.num_threads, xnnpack=FLAGS.xnnpack,
                          latest_features=FLAGS.litert_latest_features)
    else:
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(FLAGS.num_threads)
        from mtpsl_export.runners import KerasRunner, SavedModelRunner

        if fmt == "keras":
            network, tasks = build(FLAGS.dataset, height, width)
            fn = KerasRunner(network, tasks, height, width)
        else:
            fn = SavedModelRunner(FLAGS.path)
    result = time_calls(fn, image)
    if fmt.startswith("tflite"):  # delegates are applied by the first invoke: count after it
        result["xnnpack_nodes"] = fn.delegated_nodes()
    result["peak_rss_mb"] = peak_rss_mb()
    return result


def torch_segnet(dataset: str, repo: str, num_threads: int):
    """image [1, H, W, 3] float32 numpy -> the authors' SegNet outputs, eager, no autograd."""
    import importlib

    import torch

    torch.set_num_threads(num_threads)
    sys.path.insert(0, os.path.abspath(repo))
    module_name, classes = TORCH_SEGNETS[dataset]
    torch.manual_seed(0)
    net = importlib.import_module(module_name).SegNet(type_="standard", class_nb=classes).eval()

    def run(image):
        with torch.no_grad():
            return net(torch.from_numpy(image).permute(0, 3, 1, 2).contiguous())
    return run


def torch_rows_wanted(dataset: str) -> bool:
    """Whether a `pytorch_eager` row is timed for `dataset` (and why not, on stderr)."""
    if not FLAGS.torch_repo:
        return False
    standard = FLAGS.backbone == "segnet" and FLAGS.variant == "standard" and not FLAGS.filters
    if FLAGS.model_dir or not standard or dataset not in TORCH_SEGNETS:
        print(f"  no pytorch_eager row for {dataset}: the authors' class is the random-weight standard SegNet "
              f"of {', '.join(TORCH_SEGNETS)} (no --model_dir, --backbone=segnet, no --filters)", file=sys.stderr)
        return False
    module = os.path.join(FLAGS.torch_repo, *TORCH_SEGNETS[dataset][0].split(".")) + ".py"
    if not os.path.isfile(module):
        raise app.UsageError(f"--torch_repo={FLAGS.torch_repo}: {module} not found (expected a checkout of "
                             "VICO-UoE/MTPSL)")
    return True


def export_all(folder: str, dataset: str, height: int, width: int) -> list:
    """Writes the SavedModel and the TFLite files needed by --formats (the LiteRT ones once per
    --litert_switches); returns [(format, switches or None, path)] in timing order."""
    import numpy as np

    from mtpsl_export import writers

    network, tasks = build(dataset, height, width)
    forms = writers.resolve_litert_forms(FLAGS.litert_forms)
    jobs = [("keras", None, "")] if "keras" in FLAGS.formats else []
    if "saved_model" in FLAGS.formats:
        jobs.append(("saved_model", None, writers.write_saved_model(network, tasks, height, width,
                                                                     os.path.join(folder, "saved_model"))))
    wanted = [f for f in FLAGS.formats if f in TFLITE_FILES]
    calibration = np.random.default_rng(1).uniform(size=(FLAGS.num_calibration, height, width, 3))
    for switches in FLAGS.litert_switches if wanted else ():
        for fmt in wanted:
            precision, name = TFLITE_FILES[fmt]
            with writers.litert_forms(network, forms, switches, precision):
                scratch = writers.write_saved_model(network, tasks, height, width,
                                                    os.path.join(folder, f"batch1_{switches}_{precision}"), batch=1)
            start = time.perf_counter()
            content = writers.convert_tflite(scratch, precision, writers.representative_from(calibration))
            shutil.rmtree(scratch)
            path = writers.write_tflite(content, os.path.join(folder, f"{switches}_{name}"))
            jobs.append((fmt, switches, path))
            print(f"  converted {fmt} ({switches} switches, {len(content) / 2**20:.1f} MiB) in "
                  f"{time.perf_counter() - start:.0f} s", file=sys.stderr)
    return jobs


def run_worker(fmt: str, path: str, dataset: str, height: int, width: int) -> dict:
    args = [sys.executable, os.path.abspath(__file__), f"--worker={fmt}", f"--path={path}", f"--dataset={dataset}",
            f"--height={height}", f"--width={width}", f"--warmup={FLAGS.warmup}", f"--runs={FLAGS.runs}",
            f"--num_threads={FLAGS.num_threads}", f"--{'' if FLAGS.xnnpack else 'no'}xnnpack",
            f"--{'' if FLAGS.litert_latest_features else 'no'}litert_latest_features",
            f"--backbone={FLAGS.backbone}", f"--variant={FLAGS.variant}", f"--filters={FLAGS.filters}",
            f"--model_dir={FLAGS.model_dir}", f"--torch_repo={FLAGS.torch_repo}",
            f"--which={FLAGS.which}"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(args, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"benchmark worker {fmt} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def setups():
    """[(dataset label, height, width)] to benchmark."""
    if FLAGS.model_dir:
        from mtpsl_tf.config import load_config
        from mtpsl_tf.training.restore import training_size

        config = load_config(os.path.join(FLAGS.model_dir, "config.json"))
        height, width = (FLAGS.height, FLAGS.width) if FLAGS.height else training_size(config)
        return [(config.data.dataset, height, width)]
    out = []
    for item in filter(None, FLAGS.setups.split(",")):
        dataset, _, size = item.partition(":")
        try:
            height, width = (int(v) for v in size.lower().split("x"))
        except ValueError:
            raise app.UsageError(f"--setups entries must look like dataset:HxW, got {item!r}") from None
        out.append((dataset, height, width))
    return out


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{os.cpu_count()}-core {platform.machine()} ({model}), load average {load:.2f} at start"


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if FLAGS.worker:
        print(json.dumps(worker(FLAGS.worker, FLAGS.height, FLAGS.width)))
        return
    unknown = sorted(set(FLAGS.formats) - set(FORMATS))
    if unknown:
        raise app.UsageError(f"unknown format {unknown[0]!r}; expected some of {', '.join(FORMATS)}")
    bad = sorted(set(FLAGS.litert_switches) - {"arithmetic", "compare"})
    if bad or not FLAGS.litert_switches:
        raise app.UsageError(f"--litert_switches: expected arithmetic and/or compare, got {FLAGS.litert_switches}")
    from mtpsl_export.writers import resolve_litert_forms

    try:
        resolve_litert_forms(FLAGS.litert_forms)
    except ValueError as err:
        raise app.UsageError(str(err)) from None
    from mtpsl_export import contract

    host = machine()
    rows = []
    with tempfile.TemporaryDirectory(dir=FLAGS.workdir or None) as tmp:
        for dataset, height, width in setups():
            contract.check_size(height, width)
            print(f"{dataset} {height}x{width}: exporting ...", file=sys.stderr)
            with_torch = torch_rows_wanted(dataset)
            jobs = export_all(os.path.join(tmp, f"{dataset}_{height}x{width}"), dataset, height, width)
            if with_torch:
                jobs.append(("pytorch_eager", None, ""))
            for fmt, switches, path in jobs:
                result = run_worker(fmt, path, dataset, height, width)
                size_mb = _size_mb(path) if path else None
                rows.append({"setup": f"{dataset} {height}x{width}", "format": fmt, "switches": switches,
                             "file_mb": size_mb, **result})
                print(f"  {fmt}{'' if switches is None else ' (' + switches + ')'}: {result['median_ms']:.1f} ms",
                      file=sys.stderr)
    print(f"\nmachine: {host}; threads: {FLAGS.num_threads}; batch 1; median of {FLAGS.runs} runs "
          f"after {FLAGS.warmup} warm-up; XNNPACK {'on' if FLAGS.xnnpack else 'off'}\n")
    print(table(rows))
    print(json.dumps({"machine": host, "num_threads": FLAGS.num_threads, "runs": FLAGS.runs,
                      "xnnpack": FLAGS.xnnpack, "litert_latest_features": FLAGS.litert_latest_features,
                      "litert_forms": FLAGS.litert_forms,
                      "results": rows}))


def _size_mb(path: str) -> float:
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs) / 2**20
    return os.path.getsize(path) / 2**20


def table(rows) -> str:
    lines = ["| setup | format | switches | median ms | min ms | peak RSS MB | file MB | XNNPACK partitions |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        size = "" if r["file_mb"] is None else f"{r['file_mb']:.1f}"
        lines.append(f"| {r['setup']} | {r['format']} | {r.get('switches') or ''} | {r['median_ms']:.1f} | "
                     f"{r['min_ms']:.1f} | {r['peak_rss_mb']:.0f} | {size} | {r.get('xnnpack_nodes', '')} |")
    return "\n".join(lines)


if __name__ == "__main__":
    app.run(main)
