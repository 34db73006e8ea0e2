"""Trains methods over several seeds with one flagfile and tabulates test metrics.

    python benchmarks/compare_methods.py --flagfile_base=configs/synthetic/evidence.flags \
        --methods=sl,mtpsl --seeds=0,1,2 --out=runs/evidence [--check_order=mtpsl>sl]
    python benchmarks/compare_methods.py --methods=sl+dwa,mtpsl+uncertainty --setting=full \
        --seeds=0,1 --jobs=2 --cpus_per_job=1 --out=runs/weightings_full

A method entry is `METHOD` or `METHOD+WEIGHTING` (`--weighting=WEIGHTING` for that run).
First trains one STL network per task (seed 0) in the same setting to get the STL
reference, then every (method, seed); each run is a separate `train.py` process. `--jobs`
runs that many at once; `--cpus_per_job=K` pins each to its own K CPUs (results on a CPU
depend on the thread count, so pinning keeps them independent of `--jobs`). Writes
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
import queue
import statistics
import subprocess
import sys
from concurrent import futures

from absl import app, flags

flags.DEFINE_string("flagfile_base", "configs/synthetic/evidence.flags", "Flagfile shared by all runs.")
flags.DEFINE_list("methods", ["sl", "mtpsl"], "Methods to compare: METHOD or METHOD+WEIGHTING.")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Training seeds.")
flags.DEFINE_string("out", "runs/evidence", "Output folder (one model_dir per run).")
flags.DEFINE_string("data_dir", "", "TFDS data dir.")
flags.DEFINE_string("setting", "", "Label setting of every run (STL included); empty: the flagfile's.")
flags.DEFINE_multi_string("method_flag", [], "ENTRY=FLAG: one more train.py flag for the runs of a --methods "
                          "entry, repeatable (e.g. direct_map=--noxla).")
flags.DEFINE_integer("jobs", 1, "Runs trained at once.", lower_bound=1)
flags.DEFINE_integer("cpus_per_job", 0, "Pin each run to this many CPUs of its own (0: no pinning).", lower_bound=0)
flags.DEFINE_list("check_order", [], "Bars a>b on mean Delta-MTL (e.g. mtpsl>sl); exit status 1 if one fails.")
flags.DEFINE_float("check_se", 0.0, "A bar a>b needs mean_a - mean_b > this many standard errors of the difference.")
FLAGS = flags.FLAGS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRIMARY = {"semantic": ("miou", "higher"), "depth": ("abs_err", "lower"), "normal": ("mean", "lower")}


def cpu_slots(jobs: int, cpus_per_job: int) -> "queue.Queue":
    """`jobs` disjoint CPU sets of `cpus_per_job` CPUs each (None: no pinning), as a queue a
    run takes its set from and gives back."""
    slots = queue.Queue()
    if not cpus_per_job:
        for _ in range(jobs):
            slots.put(None)
        return slots
    cpus = sorted(os.sched_getaffinity(0))
    if jobs * cpus_per_job > len(cpus):
        raise ValueError(f"--jobs={jobs} x --cpus_per_job={cpus_per_job} needs {jobs * cpus_per_job} CPUs, "
                         f"this process may use {len(cpus)}")
    for j in range(jobs):
        slots.put(set(cpus[j * cpus_per_job:(j + 1) * cpus_per_job]))
    return slots


def train(model_dir: str, slots: "queue.Queue", *args: str) -> dict:
    """Trains one run (unless its metrics.json exists) on a CPU set from `slots`; its metrics."""
    metrics = os.path.join(model_dir, "metrics.json")
    if not os.path.exists(metrics):
        cmd = [sys.executable, os.path.join(ROOT, "train.py"), f"--flagfile={FLAGS.flagfile_base}",
               f"--model_dir={model_dir}", *args]
        if FLAGS.setting:
            cmd.append(f"--setting={FLAGS.setting}")
        if FLAGS.data_dir:
            cmd.append(f"--data_dir={FLAGS.data_dir}")
        cpus = slots.get()
        try:
            print("+", " ".join(cmd), f"(CPUs {sorted(cpus)})" if cpus else "", flush=True)
            pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
            subprocess.run(cmd, check=True, preexec_fn=pin)
        finally:
            slots.put(cpus)
    with open(metrics) as f:
        return json.load(f)


def method_flags(entry: str, extra=()) -> list:
    """`METHOD` or `METHOD+WEIGHTING` -> train.py flags, then the `ENTRY=FLAG` items of
    `extra` (--method_flag) whose ENTRY is this entry."""
    method, _, weighting = entry.partition("+")
    more = [flag for key, _, flag in (item.partition("=") for item in extra) if key == entry]
    return [f"--method={method}"] + ([f"--weighting={weighting}"] if weighting else []) + more


def check_method_flags(extra, methods) -> None:
    """Raises ValueError for a --method_flag that is not ENTRY=--FLAG with ENTRY in --methods."""
    for item in extra:
        key, sep, flag = item.partition("=")
        if not sep or key not in methods or not flag.startswith("--"):
            raise ValueError(f"--method_flag entries must look like ENTRY=--flag with ENTRY one of "
                             f"--methods={','.join(methods)}, got {item!r}")


def train_all(runs: dict, slots: "queue.Queue") -> dict:
    """runs: key -> (model_dir, flags); trains them `--jobs` at a time; key -> metrics."""
    with futures.ThreadPoolExecutor(FLAGS.jobs) as pool:
        pending = {key: pool.submit(train, model_dir, slots, *args) for key, (model_dir, args) in runs.items()}
        return {key: job.result() for key, job in pending.items()}


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
    sample std (0 for one seed); se = std / sqrt(number of seeds); all three are None for a key
    that is None (undefined) in any seed."""
    out = {"mean": {}, "std": {}, "se": {}}
    for method, runs in rows.items():
        n = len(runs)
        for key in keys:
            values = [r[key] for r in runs]
            if None in values:  # an undefined (NaN) metric of one seed leaves the statistic undefined
                for stat in out.values():
                    stat.setdefault(method, {})[key] = None
                continue
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
        if mean[better]["delta_mtl"] is None or mean[worse]["delta_mtl"] is None:
            results.append((False, f"FAIL {better}>{worse}: a run's Delta-MTL is undefined (an undefined metric)"))
            continue
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
        cells = [_cell(summary, m, k, runs) for k in keys]
        lines.append(f"| {m} ({len(runs)} seeds) | " + " | ".join(cells) + " |")
    return lines


def _cell(summary, method, key, runs):
    values = ", ".join("undefined" if r[key] is None else f"{r[key]:.4f}" for r in runs)
    if summary["mean"][method][key] is None:
        return f"undefined ({values})"
    return (f"{summary['mean'][method][key]:.4f} ± {summary['std'][method][key]:.4f} "
            f"(se {summary['se'][method][key]:.4f}; {values})")


def train_stl_and_methods(slots: "queue.Queue"):
    """The STL runs (seed 0), then every (method, seed) against their reference:
    (reference: primary metric -> STL value, reports: (method, seed) -> metrics.json)."""
    stl = train_all({task: (os.path.join(FLAGS.out, f"stl_{task}"), ("--method=stl", f"--stl_task={task}", "--seed=0"))
                     for task in PRIMARY}, slots)
    reference = {f"{task}/{metric}": stl[task]["last"]["metrics"][f"{task}/{metric}"]
                 for task, (metric, _) in PRIMARY.items()}
    undefined = [key for key, value in reference.items() if value is None]
    if undefined:
        raise ValueError(f"the STL runs in {FLAGS.out}/stl_* left {', '.join(undefined)} undefined (NaN): "
                         "no Delta-MTL reference; rerun them")
    ref_flag = ",".join(f"{k}={v}" for k, v in reference.items())
    reports = train_all({(method, seed): (os.path.join(FLAGS.out, f"{method}_seed{seed}"),
                                          (*method_flags(method, FLAGS.method_flag), f"--seed={seed}", f"--stl_reference={ref_flag}"))
                         for method in FLAGS.methods for seed in FLAGS.seeds}, slots)
    return reference, reports


def main(argv):
    del argv
    try:
        orders = parse_orders(FLAGS.check_order, FLAGS.methods)
        check_method_flags(FLAGS.method_flag, FLAGS.methods)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        slots = cpu_slots(FLAGS.jobs, FLAGS.cpus_per_job)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        reference, reports = train_stl_and_methods(slots)
    except subprocess.CalledProcessError as err:
        print(f"error: a run failed (exit status {err.returncode}; its output is above): {' '.join(err.cmd)}",
              file=sys.stderr)
        return 1
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    rows = {}
    for (method, _), report in reports.items():
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
