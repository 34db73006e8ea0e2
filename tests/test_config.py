"""Flagfiles under configs/ parse into valid configs; bad flags are rejected by name;
the config JSON round trip."""

import json
import pathlib

import pytest
from absl import flags

from mtpsl_tf.config import ExperimentConfig, load_config, save_config
from mtpsl_tf.data.registry import DATASETS
from mtpsl_tf.flags import config_from_flagfile
from mtpsl_tf.methods.all import METHODS

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"
FLAGFILES = sorted(CONFIGS.rglob("*.flags"))


def test_configs_folder_has_flagfiles():
    assert len(FLAGFILES) >= 10, f"expected the experiment flagfiles under {CONFIGS}"


@pytest.mark.parametrize("path", FLAGFILES, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_flagfile_parses_into_valid_config(path):
    config = config_from_flagfile(str(path))
    assert isinstance(config, ExperimentConfig)
    assert config.method.method in METHODS, config.method.method
    assert config.data.dataset in DATASETS, config.data.dataset
    spec = DATASETS.get(config.data.dataset)
    tasks = [t.name for t in spec.tasks(config.data.dataset_config)]
    if config.method.method == "stl":
        assert config.method.stl_task in tasks, (config.method.stl_task, tasks)
    else:
        assert config.method.stl_task == ""
    assert config.train.model_dir


def write_flagfile(tmp_path, *lines) -> str:
    path = tmp_path / "exp.flags"
    path.write_text("\n".join(["--dataset=nyuv2", "--method=sl", *lines]) + "\n")
    return str(path)


def test_flagfile_values_reach_the_config(tmp_path):
    config = config_from_flagfile(write_flagfile(
        tmp_path, "--batch_size=4", "--filters=4,4,8,8,8", "--precision=mixed_bfloat16", "--noaugment",
        "--learning_rate=3e-4", "--stl_reference=semantic/miou=0.25,depth/abs_err=0.7"))
    assert config.data.dataset == "nyuv2" and config.data.batch_size == 4 and config.data.augment is False
    assert config.filter_list() == (4, 4, 8, 8, 8)
    assert config.train.precision == "mixed_bfloat16" and config.train.learning_rate == 3e-4
    assert config.stl_reference_overrides() == {"semantic/miou": 0.25, "depth/abs_err": 0.7}


def test_extra_args_override_flagfile(tmp_path):
    config = config_from_flagfile(write_flagfile(tmp_path, "--batch_size=4"), ["--batch_size=8"])
    assert config.data.batch_size == 8


def test_unknown_flag_in_flagfile_raises_naming_it(tmp_path):
    with pytest.raises(flags.Error, match="num_gpus"):
        config_from_flagfile(write_flagfile(tmp_path, "--num_gpus=2"))


@pytest.mark.parametrize("line, flag", [
    ("--precision=fp8", "precision"),
    ("--height=100", "height"),
    ("--width=-32", "width"),
    ("--filters=1,2", "filters"),
    ("--filters=4,4,8,8,x", "filters"),
    ("--filters=4,4,8,8,0", "filters"),
    ("--batch_size=0", "batch_size"),
    ("--eval_batch_size=-1", "eval_batch_size"),
    ("--epochs=0", "epochs"),
    ("--learning_rate=0", "learning_rate"),
    ("--stl_reference=foo", "stl_reference"),
    ("--stl_reference=semantic/miou=abc", "stl_reference"),
    ("--stl_reference=miou=0.3", "stl_reference"),
    ("--strategy=tpu", "strategy"),
    ("--loss_reduction=mean", "loss_reduction"),
])
def test_bad_values_raise_valueerror_naming_flag(tmp_path, line, flag):
    with pytest.raises(ValueError, match=f"--{flag}"):
        config_from_flagfile(write_flagfile(tmp_path, line))


def test_config_json_round_trip(tmp_path):
    config = config_from_flagfile(write_flagfile(tmp_path, "--filters=4,4,8,8,8", "--noaugment", "--epochs=3"))
    model_dir = tmp_path / "run" / "nested"
    path = save_config(config, str(model_dir))
    assert pathlib.Path(path) == model_dir / "config.json"
    assert not list(model_dir.glob("*.tmp")), "save_config left its temp file behind"
    assert load_config(path) == config
    assert json.loads(pathlib.Path(path).read_text())["data"]["augment"] is False
    # Saving again replaces the file atomically, still without leftovers.
    config.train.epochs = 5
    save_config(config, str(model_dir))
    assert load_config(path).train.epochs == 5
    assert sorted(p.name for p in model_dir.iterdir()) == ["config.json"]


def test_load_config_rejects_unknown_keys(tmp_path):
    values = ExperimentConfig().to_dict()
    values["train"]["num_gpus"] = 2
    path = tmp_path / "config.json"
    path.write_text(json.dumps(values))
    with pytest.raises(ValueError, match="num_gpus"):
        load_config(str(path))
