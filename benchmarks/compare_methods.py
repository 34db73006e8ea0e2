"""Trains methods over several seeds with one flagfile and tabulates test metrics.

    python benchmarks/compare_methods.py --flagfile_base=configs/synthetic/evidence.flags \
        --methods=sl,mtpsl --seeds=0,1,2 --out=runs/evidence

First trains one STL network per task (seed 0) in the same setting to get the STL
reference, then every (method, seed); each run is a separate `train.py` process. Writes
`<out>/summary.json` and prints a markdown table: per-task primary metrics and Delta-MTL
(mean +- std over seeds, and each seed's value). Finished runs are reused (resume).
"""

from __future__ import annotations

import json
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


def main(argv):
    del argv
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
    summary = {"stl_reference": reference, "runs": rows,
               "mean": {m: {k: statistics.mean(r[k] for r in rs) for k in keys} for m, rs in rows.items()},
               "std": {m: {k: statistics.pstdev(r[k] for r in rs) for k in keys} for m, rs in rows.items()}}
    os.makedirs(FLAGS.out, exist_ok=True)
    tmp = os.path.join(FLAGS.out, "summary.json.tmp")
    with open(tmp, "w") as f:
        json.dump(summary, f, indent=2)
    os.replace(tmp, os.path.join(FLAGS.out, "summary.json"))
    print("\n| method | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    print("| STL (seed 0) | " + " | ".join(f"{reference[k]:.4f}" for k in reference) + " | 0 |")
    for m in rows:
        cells = [f"{summary['mean'][m][k]:.4f} ± {summary['std'][m][k]:.4f}" for k in keys]
        print(f"| {m} ({len(rows[m])} seeds) | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    app.run(main)
