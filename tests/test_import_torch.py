"""The authors' PyTorch checkpoints -> our SegNet / MappingNet / model directory; evaluation.

Tolerances (../shared/parity/README.md): inference outputs and the feature 1e-5 absolute,
metrics 1e-5 relative, mapping-net embeddings 1e-3 relative to the output's max |value|.
Synthetic checkpoints are written here without torch: fake `torch` modules exist in
`sys.modules` only while pickling, so the files carry the same globals torch writes.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import subprocess
import sys
import types

import numpy as np
import pytest
import tensorflow as tf

from mtpsl_tf import import_torch
from torch_writer import write_torch_file
from mtpsl_tf.evaluate import evaluate_network
from mtpsl_tf.import_torch import Architecture, infer_architecture, load_torch_checkpoint
from mtpsl_tf.tasks.depth import Depth
from mtpsl_tf.tasks.normal import Normal
from mtpsl_tf.tasks.semantic import Semantic

ROOT = pathlib.Path(__file__).resolve().parents[1]
CHECKPOINT = "nyuv2_segnet_w8_64x96.pth.tar"
FILTERS = (8, 16, 32, 64, 64)
PAIRS = [(s, t) for s in range(3) for t in range(3) if s != t]
NYU_OUTPUTS = {"semantic": "eval_semantic_logprob", "depth": "eval_depth", "normal": "eval_normal",
               "feature": "eval_feat"}
TINY = ["--dataset=synthetic", "--dataset_config=small", "--height=32", "--width=64", "--num_train=8",
        "--num_test=4", "--filters=4,4,8,8,8", "--batch_size=4", "--eval_batch_size=2", "--verbose=0",
        "--tensorboard_images=0", "--epochs=1",
        "--stl_reference=semantic/miou=0.5,depth/abs_err=1.0,normal/mean=30"]


# ----------------------------------------------------------------------------- torch.save writer


class _Evil:
    """Pickles as `os.system("touch <marker>")`: what a malicious checkpoint does."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


# ----------------------------------------------------------------------------- authors' layout


def authors_segnet_shapes(filters, deep=False, head_channels=(13, 1, 3)) -> dict:
    """Name -> shape of the authors' SegNet state dict (model/segnet_mtl*.py), written out
    from their module structure, independently of our name mapping."""
    f, shapes = list(filters), {}

    def conv_layer(prefix, cin, cout):
        units = [(cin, cout), (cout, cout)] if deep else [(cin, cout)]
        for u, (a, b) in enumerate(units):
            shapes[f"{prefix}.{3 * u}.weight"], shapes[f"{prefix}.{3 * u}.bias"] = (b, a, 3, 3), (b,)
            for name in ("weight", "bias", "running_mean", "running_var"):
                shapes[f"{prefix}.{3 * u + 1}.{name}"] = (b,)
            shapes[f"{prefix}.{3 * u + 1}.num_batches_tracked"] = ()

    conv_layer("encoder_block.0", 3, f[0])
    conv_layer("decoder_block.0", f[0], f[0])
    for i in range(4):
        conv_layer(f"encoder_block.{i + 1}", f[i], f[i + 1])
        conv_layer(f"decoder_block.{i + 1}", f[i + 1], f[i])
    conv_layer("conv_block_enc.0", f[0], f[0])
    conv_layer("conv_block_dec.0", f[0], f[0])
    for i in range(4):
        if i == 0:
            conv_layer("conv_block_enc.1", f[1], f[1])
            conv_layer("conv_block_dec.1", f[0], f[0])
        else:
            for j in range(2):
                conv_layer(f"conv_block_enc.{i + 1}.{j}", f[i + 1], f[i + 1])
                conv_layer(f"conv_block_dec.{i + 1}.{j}", f[i], f[i])
    for k, channels in enumerate(head_channels, start=1):
        shapes[f"pred_task{k}.0.weight"], shapes[f"pred_task{k}.0.bias"] = (f[0], f[0], 3, 3), (f[0],)
        shapes[f"pred_task{k}.1.weight"], shapes[f"pred_task{k}.1.bias"] = (channels, f[0], 1, 1), (channels,)
    return shapes


def random_state(shapes, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    state = {}
    for name, shape in shapes.items():
        if name.endswith("num_batches_tracked"):
            state[name] = np.array(5, np.int64)
        elif name.endswith("running_var"):
            state[name] = rng.uniform(0.5, 2.0, shape).astype(np.float32)
        else:
            state[name] = (0.3 * rng.standard_normal(shape)).astype(np.float32)
    return state


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def fixture_path(parity_dir):
    return parity_dir / CHECKPOINT


@pytest.fixture(scope="module")
def imported(fixture_path):
    return load_torch_checkpoint(fixture_path, "nyuv2")


@pytest.fixture(scope="module")
def fixture_dict(fixture_path):
    from mtpsl_tf.interop.torch_format import load_torch_file

    return load_torch_file(fixture_path)


def _rel_err(ours, ref):
    return float(np.abs(np.asarray(ours) - ref).max() / np.abs(ref).max())


def _parity_batch(parity):
    return {"image": parity["x"].astype(np.float32),
            "labels": {"semantic": parity["seg_label"].astype(np.int32), "depth": parity["depth_label"],
                       "normal": parity["normal_label"]}}


# ----------------------------------------------------------------------------- the fixture checkpoint


def test_fixture_architecture_epoch_and_unused(imported, caplog, fixture_path):
    assert imported.architecture == Architecture("standard", FILTERS, (13, 1, 3))
    assert imported.architecture.num_classes == 13
    assert imported.epoch == 7
    assert imported.unused_keys == ["logsigma"]
    assert [t.name for t in imported.tasks] == ["semantic", "depth", "normal"]
    model, mapping = imported  # unpacks like a tuple
    assert model is imported.model and mapping is imported.mapping
    assert mapping.task_channels == [13, 1, 3] and list(mapping.filters) == list(FILTERS)
    with caplog.at_level(logging.WARNING, logger="mtpsl_tf"):
        load_torch_checkpoint(fixture_path, "nyuv2")
    assert any("logsigma" in r.getMessage() for r in caplog.records)


def test_segnet_outputs_match_reference(imported, parity):
    outputs = imported.model(tf.constant(parity["x"], tf.float32), training=False)
    for ours, theirs in NYU_OUTPUTS.items():
        assert outputs[ours].shape == parity[theirs].shape, ours
        np.testing.assert_allclose(outputs[ours].numpy(), parity[theirs], rtol=0, atol=1e-5, err_msg=ours)


def test_metrics_on_imported_outputs_match_reference(imported, parity):
    batch = _parity_batch(parity)
    # Two batches of one image: the metrics must accumulate over the dataset, not average.
    dataset = [{"image": batch["image"][i:i + 1], "labels": {k: v[i:i + 1] for k, v in batch["labels"].items()}}
               for i in range(2)]
    got = evaluate_network(imported.model, imported.tasks, dataset)
    for ours, theirs in (("semantic/miou", "metric_miou"), ("semantic/pixel_acc", "metric_pixacc"),
                         ("depth/abs_err", "metric_depth_l1"), ("depth/rmse", "metric_depth_rmse"),
                         ("normal/mean", "metric_normal_mean")):
        assert got[ours] == pytest.approx(float(parity[theirs]), rel=1e-5), ours


@pytest.mark.parametrize("n", range(2))
def test_mapping_embeddings_match_reference(imported, parity, n):
    for s, t in PAIRS:
        key = f"pair_{n}_{s}_{t}/"
        embedding = imported.mapping.embed(parity[key + "source_in"], s, s, t, training=True)
        assert embedding.shape == parity[key + "map_source"].shape
        assert _rel_err(embedding, parity[key + "map_source"]) < 1e-3, (s, t)


def test_bare_state_dict(tmp_path, fixture_dict, parity):
    path = write_torch_file(tmp_path / "bare.pth", dict(fixture_dict["state_dict"]))
    model, mapping = load_torch_checkpoint(path, "nyuv2")
    assert mapping is None
    out = model(tf.constant(parity["x"], tf.float32), training=False)
    np.testing.assert_allclose(out["depth"].numpy(), parity["eval_depth"], rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------- inference on synthetic dicts


def test_infer_wide_variant_from_shapes():
    # Shape-only stand-ins (zero-stride views): the real wide widths without the memory.
    shapes = authors_segnet_shapes((64, 128, 256, 512, 1024))
    state = {k: np.broadcast_to(np.float32(0), s) for k, s in shapes.items()}
    arch = infer_architecture(state)
    assert arch == Architecture("wide", (64, 128, 256, 512, 1024), (13, 1, 3))
    assert arch.filters_flag() == ""
    standard = infer_architecture({k: np.broadcast_to(np.float32(0), s)
                                   for k, s in authors_segnet_shapes((64, 128, 256, 512, 512)).items()})
    assert standard.variant == "standard" and standard.filters_flag() == ""


def test_deep_variant_loads_every_tensor(tmp_path):
    shapes = authors_segnet_shapes((4, 4, 8, 8, 8), deep=True)
    state = random_state(shapes)
    path = write_torch_file(tmp_path / "deep.pth", {"epoch": 3, "state_dict": state})
    result = load_torch_checkpoint(path, "nyuv2")
    assert result.architecture == Architecture("deep", (4, 4, 8, 8, 8), (13, 1, 3))
    assert result.architecture.filters_flag() == "4,4,8,8,8"
    assert result.unused_keys == [] and result.mapping is None and result.epoch == 3
    # Second unit of a deep block: conv index 3, BN index 4.
    block = result.model.conv_block_dec[3][1]
    np.testing.assert_array_equal(block.convs[1].kernel.numpy(),
                                  state["conv_block_dec.3.1.3.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(block.norms[1].moving_variance.numpy(), state["conv_block_dec.3.1.4.running_var"])


def test_cityscapes_like_two_heads_and_unused_extras(tmp_path):
    # The authors' Cityscapes SegNet keeps a normal head (pred_task3), an unused map_fn
    # (con_tasks.*) and logsigma_dist; only two heads are used.
    state = random_state(authors_segnet_shapes((4, 4, 8, 8, 8), head_channels=(7, 1, 3)), seed=1)
    state["logsigma_dist"] = np.zeros(6, np.float32)
    state["con_tasks.encoder_block.0.0.weight"] = np.zeros((4, 4, 3, 3), np.float32)
    path = write_torch_file(tmp_path / "city.pth", {"epoch": 2, "state_dict": state})
    result = load_torch_checkpoint(path, "cityscapes")
    assert result.architecture.head_channels == (7, 1, 3)
    assert list(result.model.heads) == ["semantic", "depth"]
    assert {"logsigma_dist", "con_tasks.encoder_block.0.0.weight", "pred_task3.1.weight"} <= set(result.unused_keys)
    assert not any(k.startswith(("pred_task1", "pred_task2", "encoder_block")) for k in result.unused_keys)
    np.testing.assert_array_equal(result.model.task_heads["depth"].out.kernel.numpy(),
                                  state["pred_task2.1.weight"].transpose(2, 3, 1, 0))
    out = result.model(tf.zeros([1, 32, 64, 3]), training=False)
    assert out["semantic"].shape == (1, 32, 64, 7) and "normal" not in out
    with pytest.raises(ValueError, match=r"'cityscapes'.*pred_task1 has 7 .* needs 19.*dataset_config"):
        load_torch_checkpoint(path, "cityscapes", "c19_128x256")
    with pytest.raises(ValueError, match=r"'nyuv2'.*pred_task1 has 7 .* needs 13"):
        load_torch_checkpoint(path, "nyuv2")


def test_method_is_mtpsl_only_for_a_mapping_net_sized_like_the_segnet(imported):
    from mtpsl_tf.methods.all import METHODS

    arch = imported.architecture
    config = import_torch.experiment_config(imported, "nyuv2", "/tmp/x")
    assert config.method.method == "mtpsl" and "mtpsl" in METHODS
    other = import_torch.ImportedModel(imported.model, types.SimpleNamespace(filters=[8, 16, 32, 64, 128]),
                                       arch, imported.tasks, [], 0)
    assert import_torch.experiment_config(other, "nyuv2", "/tmp/x").method.method == "sl"
    without = import_torch.ImportedModel(imported.model, None, arch, imported.tasks, [], 0)
    assert import_torch.experiment_config(without, "nyuv2", "/tmp/x").method.method == "sl"


# ----------------------------------------------------------------------------- bad input


def test_missing_tensors_are_named(tmp_path, fixture_dict):
    state = dict(fixture_dict["state_dict"])
    del state["decoder_block.3.1.running_var"]
    path = write_torch_file(tmp_path / "partial.pth", {"epoch": 1, "state_dict": state})
    with pytest.raises(KeyError, match=r"decoder_block\.3\.1\.running_var"):
        load_torch_checkpoint(path, "nyuv2")


def test_missing_mapping_tensor_is_named(tmp_path, fixture_dict):
    mapfns = dict(fixture_dict["mapfns"])
    del mapfns["mapfns.encoder_block.2.gamma"]
    path = write_torch_file(tmp_path / "partial.pth", {"state_dict": dict(fixture_dict["state_dict"]),
                                                        "mapfns": mapfns})
    with pytest.raises(KeyError, match=r"encoder_block\.2\.gamma"):
        load_torch_checkpoint(path, "nyuv2")


@pytest.mark.parametrize("obj, message", [
    ({"epoch": 1, "model": {}}, r"no 'state_dict' entry .*\['epoch', 'model'\]"),
    ({"state_dict": [1, 2]}, r"'state_dict' must be a dict of tensors, got list"),
    ({"state_dict": {"encoder_block.0.0.weight": 3}}, r"must map names to tensors"),
    ({"state_dict": {}, "epoch": -1}, r"'epoch' must be a non-negative integer"),
])
def test_malformed_checkpoints(tmp_path, obj, message):
    path = write_torch_file(tmp_path / "bad.pth", obj)
    with pytest.raises(ValueError, match=message):
        load_torch_checkpoint(path, "nyuv2")


def test_too_few_heads_and_unknown_dataset(tmp_path):
    state = random_state(authors_segnet_shapes((4, 4, 8, 8, 8), head_channels=(13, 1)))
    path = write_torch_file(tmp_path / "two.pth", state)
    with pytest.raises(ValueError, match=r"tasks \['semantic', 'depth', 'normal'\] .* only 2 heads"):
        load_torch_checkpoint(path, "nyuv2")
    with pytest.raises(KeyError, match=r"unknown dataset 'nyu'"):
        load_torch_checkpoint(path, "nyu")


def test_mapping_net_must_fit_the_tasks(fixture_dict):
    from mtpsl_tf.data.registry import DATASETS

    with pytest.raises(ValueError, match=r"'cityscapes'.*channels \[13, 1, 3\]"):
        import_torch.build_mapping(fixture_dict["mapfns"], DATASETS.get("cityscapes").tasks(), "cityscapes")


# ----------------------------------------------------------------------------- CLI


def _python(module, *args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def test_cli_writes_a_model_dir_that_reloads(tmp_path, fixture_path, imported, parity):
    from mtpsl_tf.methods.all import METHODS
    from mtpsl_tf.methods.mtpsl.mapping import MappingNet
    from mtpsl_tf.training.restore import load_network
    from mtpsl_tf.training.run import weights_trackable

    out = tmp_path / "runs" / "authors"
    result = _python("mtpsl_tf.import_torch", fixture_path, "--dataset=nyuv2", f"--out={out}",
                     "--setting=randomlabels")
    assert result.returncode == 0, result.stderr
    assert "logsigma" in result.stdout + result.stderr
    assert sorted(os.listdir(out.parent)) == ["authors"]  # no temp folder left behind
    config = json.loads((out / "config.json").read_text())
    assert config["data"]["dataset"] == "nyuv2" and config["data"]["setting"] == "randomlabels"
    assert config["model"] == {"backbone": "segnet", "variant": "standard", "filters": "8,16,32,64,64",
                               "pretrained": "", "remat_backbone": False}
    assert config["method"]["method"] == "mtpsl" and "mtpsl" in METHODS

    restored = load_network(str(out), "latest", height=64, width=96)
    assert restored.checkpoint.endswith("ckpt-7")
    x = tf.constant(parity["x"], tf.float32)
    ours, reloaded = imported.model(x, training=False), restored.network(x, training=False)
    for key in NYU_OUTPUTS:
        np.testing.assert_array_equal(reloaded[key].numpy(), ours[key].numpy(), err_msg=key)
    reader = tf.train.load_checkpoint(restored.checkpoint)
    assert int(reader.get_tensor("epoch/.ATTRIBUTES/VARIABLE_VALUE")) == 7
    # The mapping net is saved as method_0: restore it into a fresh net and compare.
    fresh = MappingNet(["semantic", "depth", "normal"], [13, 1, 3], list(FILTERS))
    tf.train.Checkpoint(method_0=weights_trackable(fresh)).restore(restored.checkpoint).expect_partial() \
        .assert_existing_objects_matched()
    assert len(fresh.weights) == len(imported.mapping.weights)
    for a, b in zip(fresh.weights, imported.mapping.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)


def test_cli_refuses_malicious_checkpoint(tmp_path, capsys):
    marker, out = tmp_path / "pwned", tmp_path / "out"
    path = write_torch_file(tmp_path / "evil.pth.tar", {"epoch": 1, "state_dict": {
        "encoder_block.0.0.weight": np.zeros((4, 3, 3, 3), np.float32), "x": _Evil(marker)}})
    status = import_torch.main([str(path), "--dataset=nyuv2", f"--out={out}"])
    err = capsys.readouterr().err
    assert status == 2
    assert f"'{os.system.__module__}.system'" in err and str(path) in err
    assert not marker.exists() and not out.exists()
    assert sorted(os.listdir(tmp_path)) == ["evil.pth.tar"]


def test_cli_bad_inputs(tmp_path, fixture_path, capsys):
    status = import_torch.main([str(tmp_path / "nope.pth"), "--dataset=nyuv2", f"--out={tmp_path / 'a'}"])
    assert status == 2 and "not found" in capsys.readouterr().err
    status = import_torch.main([str(fixture_path), "--dataset=cityscapes", f"--out={tmp_path / 'b'}"])
    assert status == 2 and "pred_task1 has 13" in capsys.readouterr().err
    taken = tmp_path / "taken"
    (taken / "checkpoints").mkdir(parents=True)
    status = import_torch.main([str(fixture_path), "--dataset=nyuv2", f"--out={taken}"])
    assert status == 2 and "already exists and holds checkpoints" in capsys.readouterr().err
    assert os.listdir(taken) == ["checkpoints"]
    assert sorted(os.listdir(tmp_path)) == ["taken"]  # nothing half-written for a, b


def test_import_into_existing_empty_folder(tmp_path, fixture_path):
    out = tmp_path / "empty"
    out.mkdir()
    result = import_torch.import_to_model_dir(str(fixture_path), "nyuv2", str(out))
    assert result.epoch == 7 and (out / "config.json").is_file() and (out / "checkpoints").is_dir()
    assert sorted(os.listdir(tmp_path)) == ["empty"]


@pytest.fixture(scope="module")
def trained_dir(tmp_path_factory, fixture_path):
    """The authors' fixture imported, then trained one epoch on the tiny synthetic set through
    run(): (model dir, its metrics.json). Also the model directory of the evaluate tests."""
    from mtpsl_tf.flags import config_from_flagfile
    from mtpsl_tf.training.run import run

    root = tmp_path_factory.mktemp("imported")
    out = root / "imported"
    # The synthetic dataset has NYU-v2's three tasks and 13 classes, so the fixture fits it.
    import_torch.import_to_model_dir(str(fixture_path), "synthetic", str(out))
    flagfile = root / "tiny.flags"
    flagfile.write_text("\n".join(TINY) + "\n")
    config = config_from_flagfile(str(flagfile), [
        f"--model_dir={out}", f"--data_dir={root / 'tfds'}", "--filters=8,16,32,64,64",
        "--epochs=8", "--learning_rate=1e-12", "--method=mtpsl", "--film_learning_rate=1e-12"])
    run(config)
    return out, json.loads((out / "metrics.json").read_text())


def test_train_resumes_from_an_imported_dir(trained_dir, imported):
    """`train.py --model_dir=<imported>` continues at the checkpoint's epoch from its weights."""
    out, _ = trained_dir
    assert [h["epoch"] for h in json.loads((out / "history.json").read_text())] == [8]
    reader = tf.train.load_checkpoint(str(out / "checkpoints" / "ckpt-8"))
    for group, layer in (("network", imported.model), ("method_0", imported.mapping)):
        names = [n for n in reader.get_variable_to_shape_map()
                 if n.startswith(group + "/") and ("kernel" in n or "gamma" in n) and "OPTIMIZER" not in n]
        ours = {v.path.split("/", 1)[-1]: v.numpy() for v in layer.weights}
        assert names, group
        for name in names:
            key = name[len(group) + 1:].split("/.ATTRIBUTES")[0].replace("..", "/")
            # 1e-12 learning rates barely move them: they are the imported weights, not a fresh init.
            np.testing.assert_allclose(reader.get_tensor(name), ours[key], rtol=0, atol=1e-6, err_msg=name)


# ----------------------------------------------------------------------------- evaluate


def test_evaluate_network_matches_training_evaluation(trained_dir):
    from mtpsl_tf.config import load_config
    from mtpsl_tf.data import pipeline
    from mtpsl_tf.training.restore import load_network

    model_dir, metrics = trained_dir
    config = load_config(str(model_dir / "config.json"))
    bundle = pipeline.load(config.data)
    restored = load_network(str(model_dir), "latest", bundle.height, bundle.width)
    got = evaluate_network(restored.network, restored.tasks, pipeline.test_dataset(bundle, 3))
    expected = metrics["last"]["metrics"]
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key


def test_evaluate_network_needs_data():
    model = lambda images, training=False: {}  # noqa: E731
    with pytest.raises(ValueError, match="no batch"):
        evaluate_network(model, [Semantic(3), Depth(), Normal()], [])


def test_evaluate_cli(trained_dir):
    model_dir, metrics = trained_dir
    result = _python("mtpsl_tf.evaluate", f"--model_dir={model_dir}", "--which=latest")
    assert result.returncode == 0, result.stderr
    assert "Delta-MTL" in result.stdout and "semantic" in result.stdout
    report = json.loads((model_dir / "eval_metrics.json").read_text())
    assert report["epoch"] == 8 and report["checkpoint"].endswith("ckpt-8")
    for key, value in metrics["last"]["metrics"].items():
        assert report["metrics"][key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
    assert report["delta_mtl"] == pytest.approx(metrics["last"]["delta_mtl"], rel=1e-5, abs=1e-6)
    assert not list(model_dir.glob("*.tmp"))


def test_evaluate_cli_bad_model_dir(tmp_path, capsys):
    from mtpsl_tf import evaluate

    assert evaluate.main([f"--model_dir={tmp_path}"]) == 2
    assert "no config.json" in capsys.readouterr().err
