"""MTPSL in the conventional semi-supervised setting (--setting=ssl=F, supplement Tab. 8):
which pairs are active, the capacity, the clear error for a mode with no possible pair, and a
tiny end-to-end run."""

import json

import numpy as np
import pytest
import tensorflow as tf

from mtpsl_tf.data.registry import DATASETS
from mtpsl_tf.methods.facts import MethodFacts
from mtpsl_tf.methods.mtpsl.method import MTPSL, MTPSLOptions
from mtpsl_tf.methods.mtpsl.pairs import active_pairs
from tests_helpers import TINY, tiny_config

TASKS = tuple(DATASETS.get("synthetic").tasks())


def _facts(**options):
    return MethodFacts(tasks=TASKS, setting_kind="ssl", labelled_counts=(0, 3), options=MTPSLOptions(**options))


def test_auto_mode_is_every_pair_of_fully_labelled_images():
    method = MTPSL(_facts())
    assert method.mode == "mtpsl_plus"
    assert method.capacity(2) == 2 * 6
    active = active_pairs(tf.constant([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]), method.mode).numpy()
    np.testing.assert_array_equal(active[0], 1 - np.eye(3))  # prediction of s vs label of t, all s != t
    np.testing.assert_array_equal(active[1], np.zeros([3, 3]))  # unlabelled image: none


def test_mode_without_any_possible_pair_is_refused():
    with pytest.raises(ValueError, match="--consistency_mode=mtpsl.*no task pair"):
        MTPSL(_facts(consistency_mode="mtpsl"))


def test_mtpsl_trains_in_ssl_setting(tmp_path):
    from mtpsl_tf.training.run import run

    model_dir = tmp_path / "run"
    run(tiny_config(tmp_path, model_dir, flags=TINY + ["--method=mtpsl", "--setting=ssl=0.5", "--epochs=1"]))
    config = json.loads((model_dir / "config.json").read_text())
    assert config["options"]["consistency_mode"] == "auto"
    train = json.loads((model_dir / "history.json").read_text())[0]["train"]
    assert train["consistency"] > 0 and np.isfinite(train["total"])
