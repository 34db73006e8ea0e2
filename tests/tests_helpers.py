"""Helpers shared by test modules (tiny synthetic experiments)."""

import dataclasses

from mtpsl_tf.config import ExperimentConfig

TINY = ["--dataset=synthetic", "--dataset_config=small", "--height=32", "--width=64", "--num_train=8",
        "--num_test=4", "--filters=4,4,8,8,8", "--batch_size=4", "--eval_batch_size=4", "--verbose=0",
        "--tensorboard_images=1"]


def tiny_config(tmp_path, model_dir, flags=TINY, **overrides) -> ExperimentConfig:
    """A validated config for a seconds-long synthetic run from the flag lines `flags`
    (written to `tmp_path/tiny.flags`; TFDS data in `tmp_path/tfds`); overrides name any
    config field."""
    from mtpsl_tf.flags import config_from_flagfile

    flagfile = tmp_path / "tiny.flags"
    flagfile.write_text("\n".join(flags) + "\n")
    config = config_from_flagfile(str(flagfile), [f"--model_dir={model_dir}", f"--data_dir={tmp_path / 'tfds'}"])
    sections = {f.name: section for section in ("data", "model", "method", "train")
                for f in dataclasses.fields(getattr(config, section))}
    for key, value in overrides.items():
        setattr(getattr(config, sections[key]), key, value)
    return config.validate()


def checkpoint_network_weights(model_dir) -> dict:
    """The network's variables in a model directory's latest checkpoint: name -> array."""
    import os

    import tensorflow as tf

    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(os.path.join(str(model_dir), "checkpoints")))
    names = sorted(n for n in reader.get_variable_to_shape_map() if n.startswith("network/"))
    return {n: reader.get_tensor(n) for n in names}
