"""Step time of each loss weighting relative to `fixed`; last line is one JSON object.

    python benchmarks/weighting_overhead.py --weightings=fixed,uncertainty,dwa,gradnorm,mgda

Runs `benchmarks/train_step.py --weighting=NAME` once per weighting, each in a fresh process
(so tracing caches and peak RSS are its own), with the same shape and method flags (default:
NYU-v2 size 288x384, batch 2, `sl`, segnet, full labels: every task present, so the
gradient-based weightings do their full work). Prints each run's JSON line as it finishes,
then `{"baseline": "fixed", "rows": [{"weighting", "step_s", "relative", ...}], ...}` with
`relative` = step_s / step_s of `fixed`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from absl import app, flags

flags.DEFINE_list("weightings", ["fixed", "uncertainty", "dwa", "gradnorm", "mgda"],
                  "Weightings to time (registry names); `fixed` is added first when missing.")
flags.DEFINE_string("method", "sl", "Method name.")
flags.DEFINE_string("dataset", "nyuv2", "Dataset whose tasks the network predicts.")
flags.DEFINE_string("backbone", "segnet", "Backbone name.")
flags.DEFINE_string("setting", "full", "Label masks of the random batch: full or onelabel.")
flags.DEFINE_integer("height", 288, "Image height (multiple of 32).")
flags.DEFINE_integer("width", 384, "Image width (multiple of 32).")
flags.DEFINE_integer("batch_size", 2, "Images per step.")
flags.DEFINE_string("filters", "", "Comma-separated 5 widths (empty: standard SegNet).")
flags.DEFINE_boolean("xla", True, "jit_compile the step.")
flags.DEFINE_integer("warmup", 2, "Untimed steps per weighting.")
flags.DEFINE_integer("steps", 5, "Timed steps per weighting.")
flags.DEFINE_multi_string("option", [], "A weighting/method option as name=value, passed to every run "
                          "(a component ignores options it does not declare).")
FLAGS = flags.FLAGS

BASELINE = "fixed"
TRAIN_STEP = os.path.join(os.path.dirname(os.path.abspath(__file__)), "train_step.py")


def time_weighting(name: str) -> dict:
    """train_step.py's JSON result for weighting `name` (a fresh process)."""
    args = [sys.executable, TRAIN_STEP, f"--weighting={name}", f"--method={FLAGS.method}",
            f"--dataset={FLAGS.dataset}", f"--backbone={FLAGS.backbone}", f"--setting={FLAGS.setting}",
            f"--height={FLAGS.height}", f"--width={FLAGS.width}", f"--batch_size={FLAGS.batch_size}",
            f"--filters={FLAGS.filters}", "--xla" if FLAGS.xla else "--noxla", f"--warmup={FLAGS.warmup}",
            f"--steps={FLAGS.steps}", *[f"--option={item}" for item in FLAGS.option]]
    proc = subprocess.run(args, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"train_step.py --weighting={name} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def relative_rows(results: list) -> list:
    """Rows `{"weighting", "step_s", "relative", "images_per_s", "peak_rss_mb"}`; relative to the
    `fixed` row's step time."""
    base = next(r["step_s"] for r in results if r["weighting"] == BASELINE)
    return [{"weighting": r["weighting"], "step_s": r["step_s"], "relative": round(r["step_s"] / base, 3),
             "images_per_s": r["images_per_s"], "peak_rss_mb": r["peak_rss_mb"]} for r in results]


def main(argv):
    del argv
    names = [BASELINE] + [n for n in FLAGS.weightings if n != BASELINE]
    results = []
    for name in names:
        results.append(time_weighting(name))
        print(json.dumps(results[-1]), flush=True)
    print(json.dumps({"baseline": BASELINE, "method": FLAGS.method, "backbone": FLAGS.backbone,
                      "height": FLAGS.height, "width": FLAGS.width, "batch_size": FLAGS.batch_size,
                      "setting": FLAGS.setting, "xla": FLAGS.xla, "filters": FLAGS.filters or "standard",
                      "machine": results[0]["machine"], "rows": relative_rows(results)}))
    return 0


if __name__ == "__main__":
    sys.exit(app.run(main))
