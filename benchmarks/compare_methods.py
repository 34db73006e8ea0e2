"""Trains methods over several seeds with one flagfile and tabulates test metrics.

    python benchmarks/compare_methods.py --flagfile_base=configs/synthetic/evidence.flags \
        --methods=sl,mtpsl --seeds=0,1,2 --out=runs/evidence [--check_order=mtpsl>sl]

First trains one STL network per task (seed 0) in the same setting to get the STL
reference, then every (method, seed); each run is a separate `train.py` process. Writes
`<out>/summary.json` and prints a markdown table: per-task primary metrics and Delta-MTL as
mean ± sample std over seeds, the standard error of the mean (std / sqrt(seeds)) and each
seed's value. Finished runs are reused (resume). `--check_order=a>b` is a bar: the exit
status is 1 when method a's mean Delta-MTL does not exceed b's by more than
`--check_se` standard errors of the difference (sqrt(se_a^2 + se_b^2)).
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys

from absl import app, flags

flags.DEFINE_string("flagfile_base", "configs/synthetic/evidence.flags", "Flagfile shared by all runs.")
flags.DEFINE_list("methods", ["sl", "mtpsl"], "Methods to compare.")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Training seeds.")
flags.DEFINE_string("out", "runs/evidence", "Output folder (one model_dir per run).")
flags.DEFINE_string("data_dir", "", "TFDS data dir.")
flags.DEFINE_list("check_order", [], "Bars a>b on mean Delta-MTL (e.g. mtpsl>sl); exit status 1 if one fails.")
flags.DEFINE_float("check_se", 0.0, "A bar a>b needs mean_a - mean_b > this many standard errors of the difference.")
FLAGS = flags.FLAGS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRIMARY = {"semantic": ("miou", "higher"), "depth": ("abs_err", "lower"), "normal": ("mean", "lower")}


def train(model_dir: str, *args: str) -> dict:
    metrics = os.path.join(model_dir, "metrics.json")
    if not os.path.exists(metrics):
        cmd = [sys.executable, os.path.join(ROOT, "train.py"), f"--flagfile={FLAGS.flagfile_base}",
               f"--model_dir={model_dir}", *args]
        if FLAGS.data_dir:
            cmd.append(f"--data_dir={FLAGS.data_dir}")
        print("+", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
    with open(metrics) as f:
        return json.load(f)


def parse_orders(specs, methods):
    """`["a>b", ...]` -> [(a, b), ...]; both must be in `methods`."""
    orders = []
    for spec in specs:
        better, sep, worse = (part.strip() for part in spec.partition(">"))
        if not sep or better not in methods or worse not in methods or better == worse:
            raise ValueError(f"--check_order entries must look like a>b with a, b two of --methods={','.join(methods)}, "
                             f"got {spec!r}")
        orders.append((better, worse))
    return orders


def aggregate(rows, keys):
    """rows: method -> [per-seed dict] -> {mean, std, se}: method -> key -> value. std is the
    sample std (0 for one seed); se = std / sqrt(number of seeds)."""
    out = {"mean": {}, "std": {}, "se": {}}
    for method, runs in rows.items():
        n = len(runs)
        for key in keys:
            values = [r[key] for r in runs]
            std = statistics.stdev(values) if n > 1 else 0.0
            out["mean"].setdefault(method, {})[key] = statistics.mean(values)
            out["std"].setdefault(method, {})[key] = std
            out["se"].setdefault(method, {})[key] = std / math.sqrt(n)
    return out


def check_orders(summary, orders, num_se):
    """One line per bar: (passed, text) on mean Delta-MTL."""
    results = []
    for better, worse in orders:
        mean, se = summary["mean"], summary["se"]
        diff = mean[better]["delta_mtl"] - mean[worse]["delta_mtl"]
        se_diff = math.hypot(se[better]["delta_mtl"], se[worse]["delta_mtl"])
        passed = diff > num_se * se_diff
        results.append((passed, f"{'PASS' if passed else 'FAIL'} {better}>{worse}: Delta-MTL difference "
                                f"{diff:+.2f} points, standard error {se_diff:.2f} (bar: > {num_se:g} x se)"))
    return results


def table(summary, rows, keys):
    reference = summary["stl_reference"]
    lines = ["| method | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|",
             "| STL (seed 0) | " + " | ".join(f"{reference[k]:.4f}" for k in reference) + " | 0 |"]
    for m, runs in rows.items():
        cells = [f"{summary['mean'][m][k]:.4f} ± {summary['std'][m][k]:.4f} (se {summary['se'][m][k]:.4f}; "
                 + ", ".join(f"{r[k]:.4f}" for r in runs) + ")" for k in keys]
        lines.append(f"| {m} ({len(runs)} seeds) | " + " | ".join(cells) + " |")
    return lines


def main(argv):
    del argv
    try:
        orders = parse_orders(FLAGS.check_order, FLAGS.methods)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    reference = {}
    for task, (metric, _) in PRIMARY.items():
        report = train(os.path.join(FLAGS.out, f"stl_{task}"), "--method=stl", f"--stl_task={task}", "--seed=0")
        reference[f"{task}/{metric}"] = report["last"]["metrics"][f"{task}/{metric}"]
    ref_flag = ",".join(f"{k}={v}" for k, v in reference.items())
    rows = {}
    for method in FLAGS.methods:
        for seed in FLAGS.seeds:
            report = train(os.path.join(FLAGS.out, f"{method}_seed{seed}"), f"--method={method}", f"--seed={seed}",
                           f"--stl_reference={ref_flag}")
            rows.setdefault(method, []).append({**report["last"]["metrics"], "delta_mtl": report["last"]["delta_mtl"]})
    keys = list(reference) + ["delta_mtl"]
    summary = {"stl_reference": reference, "runs": rows, **aggregate(rows, keys)}
    checks = check_orders(summary, orders, FLAGS.check_se)
    summary["checks"] = [text for _, text in checks]
    os.makedirs(FLAGS.out, exist_ok=True)
    tmp = os.path.join(FLAGS.out, "summary.json.tmp")
    with open(tmp, "w") as f:
        json.dump(summary, f, indent=2)
    os.replace(tmp, os.path.join(FLAGS.out, "summary.json"))
    print("\n" + "\n".join(table(summary, rows, keys)))
    for _, text in checks:
        print(text)
    return 0 if all(passed for passed, _ in checks) else 1


if __name__ == "__main__":
    app.run(main)
