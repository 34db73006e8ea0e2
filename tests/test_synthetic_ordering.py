"""The paper's claim on the embedded benchmark, as a regression test (issue #16): in the
one-label setting MTPSL (`--rampup=up`) ends with a higher mean Delta-MTL than SL.

Slow (about 25 minutes on 2 cores: 3 seeds of each plus 3 STL runs), so `pytest -m slow`
runs it; docs/SYNTHETIC_BENCHMARK.md has the many-seed table with the 2-standard-error bar.
The seeds (0, 1, 2) were fixed before their results were known; on 3 seeds only the order of
the means is checked, not the margin.
"""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow  # ~25 min; the many-seed bar is benchmarks/compare_methods.py --check_se=2
def test_mtpsl_beats_sl_on_the_mean_of_three_seeds(tmp_path):
    jobs = min(2, len(os.sched_getaffinity(0)))
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "compare_methods.py"),
         "--flagfile_base=configs/synthetic/evidence.flags", "--methods=mtpsl,sl",
         "--method_flag=mtpsl=--rampup=up", "--seeds=0,1,2", f"--jobs={jobs}", "--cpus_per_job=1",
         "--check_order=mtpsl>sl", f"--out={tmp_path}"],
        capture_output=True, text=True, timeout=3600, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "PASS mtpsl>sl" in result.stdout
