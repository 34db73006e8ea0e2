"""The registries and hooks of the architecture (docs/DESIGN.md, "To add X"): every registry's
module list loads and registers; tasks own label geometry and mapping inputs; methods get
resolved facts; component options become flags and survive config.json."""

import json

import numpy as np
import pytest
import tensorflow as tf

from mtpsl_tf.config import ExperimentConfig, load_config, save_config
from mtpsl_tf.data import augment
from mtpsl_tf.methods.facts import labelled_counts, resolve_facts
from mtpsl_tf.tasks.depth import Depth
from mtpsl_tf.tasks.edge import Edge
from mtpsl_tf.tasks.normal import Normal
from mtpsl_tf.tasks.registry import resolve_tasks
from mtpsl_tf.tasks.saliency import Saliency
from mtpsl_tf.tasks.semantic import HumanParts, Semantic


def _registries():
    from mtpsl_export.formats import FORMATS
    from mtpsl_tf.data.registry import AUGMENTATIONS, DATASETS
    from mtpsl_tf.methods.base import METHODS
    from mtpsl_tf.methods.mtpsl.encoders import MAPPING_ENCODERS
    from mtpsl_tf.models.registry import BACKBONES, LITERT_FORMS
    from mtpsl_tf.tasks.registry import TASKS
    from mtpsl_tf.weighting.base import WEIGHTINGS

    return {"method": METHODS, "weighting": WEIGHTINGS, "task": TASKS, "dataset": DATASETS,
            "backbone": BACKBONES, "mapping encoder": MAPPING_ENCODERS, "augmentation": AUGMENTATIONS,
            "export format": FORMATS, "LiteRT layer form": LITERT_FORMS}


@pytest.mark.parametrize("axis, expected", [
    ("method", {"sl", "stl", "mtpsl"}), ("weighting", {"fixed"}),
    ("task", {"semantic", "depth", "normal", "saliency", "edge", "semseg", "human_parts", "normals", "sal"}),
    ("dataset", {"synthetic", "nyuv2", "cityscapes", "pascal_context"}), ("backbone", {"segnet", "resnet18_aspp"}),
    ("mapping encoder", {"segnet"}), ("augmentation", {"mtan", "mtl_pytorch"}),
    ("export format", {"saved_model", "tflite", "tflite_fp16", "tflite_int8"}),
    ("LiteRT layer form", {"direct_dilation", "logit_heads"}),
])
def test_each_registry_loads_its_module_list(axis, expected):
    registry = _registries()[axis]
    assert expected <= set(registry.names())
    with pytest.raises(KeyError, match=f"unknown {registry.kind} 'nope'; expected one of"):
        registry.get("nope")


def test_labels_are_handled_by_their_tasks_whatever_their_names():
    # A dataset may name its tasks as it likes: the Task objects, not the names, decide.
    image = tf.random.uniform([8, 12, 3], seed=1)
    normals = tf.math.l2_normalize(tf.random.normal([8, 12, 3], seed=2), axis=-1)
    depth = tf.random.uniform([8, 12, 1], 1.0, 2.0, seed=3)
    tasks = [Normal(name="surface"), Depth(name="range")]
    _, flipped = augment.flip_horizontal(image, {"surface": normals, "range": depth}, tasks=tasks)
    mirrored = normals.numpy()[:, ::-1]
    np.testing.assert_array_equal(flipped["surface"].numpy()[..., 0], -mirrored[..., 0])
    np.testing.assert_array_equal(flipped["range"].numpy(), depth.numpy()[:, ::-1])
    with pytest.raises(KeyError, match="unknown task 'surface'"):
        augment.flip_horizontal(image, {"surface": normals})  # no Task given, none registered so


def test_resolve_tasks_prefers_given_tasks():
    mine = Semantic(5, name="semantic")
    got = resolve_tasks(["semantic", "depth"], [mine])
    assert got["semantic"] is mine and got["depth"] is Depth
    assert resolve_tasks(["human_parts"])["human_parts"] is HumanParts


def test_label_hooks_hand_computed():
    label = tf.constant([[[0.6, 0.0, 0.8]]])
    np.testing.assert_allclose(Normal.mirror_label_values(label).numpy(), [[[-0.6, 0.0, 0.8]]])
    np.testing.assert_allclose(Depth.zoom_label(tf.constant([3.0]), 1.5).numpy(), [2.0])
    np.testing.assert_allclose(Semantic.zoom_label(tf.constant([3]), 1.5).numpy(), [3])
    parts = tf.zeros([2, 2], tf.int32)
    np.testing.assert_array_equal(HumanParts.add_ignore_regions(parts).numpy(), -np.ones([2, 2]))
    np.testing.assert_array_equal(Semantic.add_ignore_regions(parts).numpy(), np.zeros([2, 2]))
    assert Normal.label_resampling == "smooth" and Depth.label_resampling == "nearest"


def test_mapping_inputs_of_binary_tasks_hand_computed():
    logits = tf.constant([[[[0.0], [2.0]]]])
    np.testing.assert_allclose(Saliency.mapping_prediction(logits).numpy().ravel(), [0.5, 1 / (1 + np.exp(-2.0))],
                               rtol=1e-6)
    label = tf.constant([[[[1.0], [-1.0], [0.0]]]])
    np.testing.assert_array_equal(Edge.mapping_label(label, 1).numpy().ravel(), [1.0, 0.0, 0.0])
    np.testing.assert_allclose(Normal.mapping_label(tf.constant([[-1.0, 0.0, 1.0]]), 3).numpy(), [[0.0, 0.5, 1.0]])
    one_hot = Semantic.mapping_label(tf.constant([[1, -1]]), 3).numpy()
    np.testing.assert_array_equal(one_hot, [[[0, 1, 0], [0, 0, 0]]])


def test_facts_are_resolved_from_the_config():
    config = ExperimentConfig()
    config.method.method, config.data.setting, config.train.seed = "mtpsl", "full", 7
    config.options = {"con_weight": 0.25}
    tasks = [Semantic(13), Depth(), Normal()]
    facts = resolve_facts(config, tasks, label_masks=np.array([[1, 0, 0], [1, 1, 0], [0, 1, 0]]))
    assert facts.labelled_counts == (1, 2) and facts.setting_kind == "full" and facts.seed == 7
    assert facts.options.con_weight == 0.25 and facts.options.consistency_mode == "auto"
    assert facts.loss_reduction == "per_image" and dict(facts.loss_weights) == {t.name: 1.0 for t in tasks}
    assert labelled_counts(None) is None


def test_method_options_are_flags_and_round_trip(tmp_path):
    from mtpsl_tf.flags import config_from_flagfile

    path = tmp_path / "x.flags"
    path.write_text("--dataset=nyuv2\n--method=mtpsl\n--con_weight=1.5\n--consistency_mode=mtpsl_plus\n")
    config = config_from_flagfile(str(path))
    assert config.options["con_weight"] == 1.5 and config.options["consistency_mode"] == "mtpsl_plus"
    assert load_config(save_config(config, str(tmp_path / "run"))) == config
    path.write_text("--dataset=nyuv2\n--method=mtpsl\n--consistency_mode=ours\n")
    with pytest.raises(ValueError, match="--consistency_mode"):
        config_from_flagfile(str(path))
    path.write_text("--dataset=nyuv2\n--method=sl\n")
    assert config_from_flagfile(str(path)).options == {}  # sl and fixed have no options


def test_config_json_of_earlier_versions_loads(tmp_path):
    values = ExperimentConfig().to_dict()
    del values["options"]
    values["method"].update(method="mtpsl", con_weight=1.0, film_learning_rate=1e-5)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(values))
    config = load_config(str(path))
    assert config.method.method == "mtpsl" and config.options == {"con_weight": 1.0, "film_learning_rate": 1e-5}
