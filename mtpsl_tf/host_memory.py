"""Host-memory settings for training on a CPU (docs/MEMORY.md): two independent flags.

`--lean_host_memory`: glibc malloc settings that hand freed memory back to the system (mmap
for blocks from 128 KiB, trim above 128 KiB, at most 2 arenas: the same as the environment
variables `MALLOC_MMAP_THRESHOLD_=131072 MALLOC_TRIM_THRESHOLD_=131072 MALLOC_ARENA_MAX=2`,
applied through `mallopt`), so the resident set stays near the live bytes.
`--bfc_host_allocator`: TensorFlow's BFC allocator for its CPU tensors
(`TF_CPU_ALLOCATOR_USE_BFC=true`: one growing pool whose freed chunks are reused, instead of
malloc per tensor); measured slower at the same peak (docs/MEMORY.md), so not part of the first.
Neither changes any computed value. TensorFlow reads its setting once, when it creates its CPU
allocator (the first tensor), so `train.py` applies both right after parsing flags, and
`training.run` checks that the allocator setting took effect (`check_applied`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform
from typing import Dict, List, Optional

log = logging.getLogger("mtpsl_tf")

TF_BFC = ("TF_CPU_ALLOCATOR_USE_BFC", "true")
# glibc's mallopt parameters (malloc.h: name, number) and their values; why: module docstring.
GLIBC_SETTINGS = (("M_MMAP_THRESHOLD", -3, 128 * 1024), ("M_TRIM_THRESHOLD", -1, 128 * 1024), ("M_ARENA_MAX", -8, 2))


def use_lean_host_memory() -> List[str]:
    """Applies the glibc malloc settings to this process; returns them as `NAME=value` strings.
    Off glibc (macOS, musl) nothing applies: a warning, and an empty list."""
    mallopt = _glibc_mallopt()
    if mallopt is None:
        log.warning("--lean_host_memory: not glibc (%s), malloc settings left as they are", platform.libc_ver()[0] or
                    platform.system())
        return []
    applied = []
    for name, param, value in GLIBC_SETTINGS:
        if mallopt(param, value) != 1:
            raise OSError(f"--lean_host_memory: glibc mallopt({name}, {value}) failed")
        applied.append(f"{name}={value}")
    return applied


def use_bfc_host_allocator() -> List[str]:
    """Selects TensorFlow's BFC CPU allocator (effective only before TensorFlow's first tensor);
    returns the setting as a `NAME=value` string in a list."""
    os.environ[TF_BFC[0]] = TF_BFC[1]
    return ["=".join(TF_BFC)]


def apply_flags(values) -> Dict[str, List[str]]:
    """Applies `--lean_host_memory` / `--bfc_host_allocator` where `values` (absl FLAGS or any
    object with those attributes) sets them; returns flag name -> the settings applied."""
    settings = {"lean_host_memory": use_lean_host_memory, "bfc_host_allocator": use_bfc_host_allocator}
    return {flag: apply() for flag, apply in settings.items() if getattr(values, flag)}


def _glibc_mallopt():
    """glibc's `int mallopt(int, int)`, or None elsewhere."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    mallopt = libc.mallopt
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return mallopt


def check_applied(enabled: bool) -> None:
    """Raises ValueError when `--bfc_host_allocator` is set but TensorFlow's CPU allocator is not
    the BFC allocator (it was created before the setting, e.g. `training.run` called from a
    notebook that had already run TensorFlow ops)."""
    if enabled and not bfc_allocator_active():
        raise ValueError("--bfc_host_allocator is set but TensorFlow's CPU allocator was created without it: run "
                         f"train.py, or start Python with the environment variable {'='.join(TF_BFC)}")


def bfc_allocator_active() -> bool:
    """Whether TensorFlow's CPU allocator is the BFC allocator: it rounds every allocation up to
    its 256-byte minimum chunk, so a 12-byte tensor adds exactly 256 live bytes."""
    import tensorflow as tf

    with tf.device("CPU:0"):
        before = tf.config.experimental.get_memory_info("CPU:0")["current"]
        probe = tf.random.uniform([3])
        grown = tf.config.experimental.get_memory_info("CPU:0")["current"] - before
    del probe
    return grown == 256


def proc_status_mib(field: str) -> Optional[float]:
    """A size line of /proc/self/status in MiB (`VmRSS`: resident now, `VmHWM`: peak resident);
    None where there is no such file (not Linux)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return None
