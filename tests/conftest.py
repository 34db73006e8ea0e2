"""Shared pytest fixtures."""

import os
import pathlib

import numpy as np
import pytest

# Quieter TF logs in tests; set before TensorFlow is imported by any test module.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = pathlib.Path(os.environ.get("MTPSL_SHARED_DIR", ROOT.parent / "shared"))


@pytest.fixture(scope="session")
def parity_dir() -> pathlib.Path:
    """The authors' PyTorch fixtures (never copied into the project).

    A missing directory is an error, not a skip: parity is part of the product.
    """
    path = SHARED / "parity"
    if not path.is_dir():
        raise FileNotFoundError(
            f"parity fixtures not found at {path}; set MTPSL_SHARED_DIR to the shared/ folder"
        )
    return path


@pytest.fixture(scope="session")
def parity(parity_dir):
    """Dict of the reference inputs/outputs in `nyuv2_segnet_w8_64x96.npz`."""
    with np.load(parity_dir / "nyuv2_segnet_w8_64x96.npz") as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="session")
def parity_weights(parity_dir):
    """Dict of the reference weights (PyTorch names/layouts) in `..._weights.npz`."""
    with np.load(parity_dir / "nyuv2_segnet_w8_64x96_weights.npz") as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="session")
def splits_dir() -> pathlib.Path:
    path = SHARED / "data" / "mtpsl_splits"
    if not path.is_dir():
        raise FileNotFoundError(f"split files not found at {path}")
    return path


@pytest.fixture(scope="session", autouse=True)
def _graph_optimizer_off():
    """Grappler off in the test processes (MTPSL_TEST_GRAPPLER=1 keeps it on): a tiny run's
    first calls spend ~5 s optimising graphs that then run for milliseconds. Subprocesses
    (train.py, workers) and every benchmark keep TensorFlow's default."""
    if os.environ.get("MTPSL_TEST_GRAPPLER") != "1":
        import tensorflow as tf

        tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
    yield


# Files whose tests take minutes (subprocess clusters and training runs): scheduled first, so
# that with `-n 2 --dist loadfile` no worker starts one of them while the other is nearly done
# (longest first; the last run of the suite left one worker alone for ~3 minutes).
_LONG_FIRST = ("test_multi_worker.py", "test_weightings_distributed_step.py", "test_weightings_train.py",
               "test_pascal_pipeline.py", "test_baselines_mapping.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(_LONG_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(_LONG_FIRST)))  # stable: the rest keep their order
