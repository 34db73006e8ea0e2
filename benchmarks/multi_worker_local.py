"""Runs train.py as N MultiWorkerMirroredStrategy workers on this machine (loopback only).

    python benchmarks/multi_worker_local.py --workers=2 -- --flagfile=configs/quickstart.flags \\
        --strategy=multi_worker --model_dir=runs/mw

Every worker gets a TF_CONFIG naming free 127.0.0.1 ports; worker 0 is the chief and writes
the model directory. Prints one JSON line: the exit codes, the restarts and the wall time.

A failed worker (crash, kill, lost peer) fails the whole cluster, as in Keras' multi-worker
guide: all workers are stopped and, up to --max_restarts times, started again on fresh ports.
Restarted workers resume from the chief's last per-epoch checkpoint (the run's own exact
resume, the equivalent of keras.callbacks.BackupAndRestore with save_freq="epoch"), so the
run ends as an uninterrupted one would; only the interrupted epoch is trained again.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = flags.FLAGS
flags.DEFINE_integer("workers", 2, "Number of worker processes.")
flags.DEFINE_integer("timeout", 1800, "Seconds before all workers are stopped (per attempt).")
flags.DEFINE_integer("max_restarts", 0, "Times the whole cluster is restarted after a worker fails.")
flags.DEFINE_string("worker_logs", "", "Folder for worker_<i>.log files (empty: worker output is discarded).")


def free_ports(count: int) -> list:
    """`count` distinct free TCP ports on 127.0.0.1."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def tf_configs(ports) -> list:
    """One TF_CONFIG per worker for a loopback cluster."""
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    return [json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}}) for i in range(len(ports))]


def launch(train_args, configs, log_dir=None, suffix: str = "") -> list:
    """Starts one train.py per TF_CONFIG; stdout/stderr to log_dir/worker_<i><suffix>.log if given."""
    procs = []
    for i, config in enumerate(configs):
        env = dict(os.environ, TF_CONFIG=config, TF_CPP_MIN_LOG_LEVEL="2")
        out = open(os.path.join(log_dir, f"worker_{i}{suffix}.log"), "w") if log_dir else subprocess.DEVNULL
        procs.append(subprocess.Popen([sys.executable, os.path.join(ROOT, "train.py"), *train_args],
                                      env=env, stdout=out, stderr=subprocess.STDOUT))
    return procs


def wait(procs, timeout: float) -> list:
    """Exit codes; a failed worker or the timeout stops the others (code -9 if killed)."""
    deadline = time.time() + timeout
    while True:
        codes = [p.poll() for p in procs]  # every process polled: returncode is set by poll()
        if all(c is not None for c in codes):
            break
        if time.time() > deadline or any(c not in (None, 0) for c in codes):
            for p in procs:
                if p.poll() is None:
                    p.kill()
            break
        time.sleep(0.2)
    return [p.wait() for p in procs]


def supervise(train_args, workers: int, timeout: float, max_restarts: int = 0, log_dir=None,
              on_launch=None) -> dict:
    """Runs the cluster until every worker exits 0, restarting all of it after a failure.

    on_launch(attempt, procs), if given, is called after each start (tests use it to kill a
    worker). Returns {"exit_codes": last attempt's codes, "restarts": n, "attempt_codes": [...]}.
    Logs of attempt k > 0 go to worker_<i>.restart<k>.log.
    """
    attempts = []
    for attempt in range(max_restarts + 1):
        suffix = f".restart{attempt}" if attempt else ""
        procs = launch(train_args, tf_configs(free_ports(workers)), log_dir=log_dir, suffix=suffix)
        if on_launch is not None:
            on_launch(attempt, procs)
        codes = wait(procs, timeout)
        attempts.append(codes)
        if all(c == 0 for c in codes):
            break
        print(f"attempt {attempt}: worker exit codes {codes}"
              + ("; restarting all workers" if attempt < max_restarts else "; no restarts left"), file=sys.stderr)
    return {"exit_codes": attempts[-1], "restarts": len(attempts) - 1, "attempt_codes": attempts}


def main(argv):
    if FLAGS.max_restarts < 0:
        raise app.UsageError(f"--max_restarts must be >= 0, got {FLAGS.max_restarts}")
    if FLAGS.worker_logs:
        os.makedirs(FLAGS.worker_logs, exist_ok=True)
    start = time.time()
    result = supervise(argv[1:], FLAGS.workers, FLAGS.timeout, FLAGS.max_restarts, FLAGS.worker_logs or None)
    print(json.dumps({"workers": FLAGS.workers, **result, "wall_s": round(time.time() - start, 1)}))
    return 0 if all(c == 0 for c in result["exit_codes"]) else 1


if __name__ == "__main__":
    app.run(main)
