"""Runs train.py as N MultiWorkerMirroredStrategy workers on this machine (loopback only).

    python benchmarks/multi_worker_local.py --workers=2 -- --flagfile=configs/quickstart.flags \\
        --strategy=multi_worker --model_dir=runs/mw

Every worker gets a TF_CONFIG naming free 127.0.0.1 ports; worker 0 is the chief and writes
the model directory. Prints one JSON line: the exit codes and the wall time. Stops all workers
if one fails or after --timeout seconds.
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
flags.DEFINE_integer("timeout", 1800, "Seconds before all workers are stopped.")


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


def launch(train_args, configs, log_dir=None) -> list:
    """Starts one train.py per TF_CONFIG; stdout/stderr to log_dir/worker_<i>.log if given."""
    procs = []
    for i, config in enumerate(configs):
        env = dict(os.environ, TF_CONFIG=config, TF_CPP_MIN_LOG_LEVEL="2")
        out = open(os.path.join(log_dir, f"worker_{i}.log"), "w") if log_dir else subprocess.DEVNULL
        procs.append(subprocess.Popen([sys.executable, os.path.join(ROOT, "train.py"), *train_args],
                                      env=env, stdout=out, stderr=subprocess.STDOUT))
    return procs


def wait(procs, timeout: float) -> list:
    """Exit codes; a failed worker or the timeout stops the others (code None if killed)."""
    deadline = time.time() + timeout
    while any(p.poll() is None for p in procs):
        if time.time() > deadline or any(p.returncode not in (None, 0) for p in procs):
            for p in procs:
                if p.poll() is None:
                    p.kill()
            break
        time.sleep(0.5)
    return [p.wait() for p in procs]


def main(argv):
    start = time.time()
    procs = launch(argv[1:], tf_configs(free_ports(FLAGS.workers)))
    codes = wait(procs, FLAGS.timeout)
    print(json.dumps({"workers": FLAGS.workers, "exit_codes": codes, "wall_s": round(time.time() - start, 1)}))
    return 0 if all(c == 0 for c in codes) else 1


if __name__ == "__main__":
    app.run(main)
