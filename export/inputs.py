"""What an export runs its formats on, without needing the training set.

Verification inputs (`verification_set`), in order of preference:
- `--images=DIR`: the first `count` images of a folder (JPEG/PNG, resized bilinear), no labels;
- `--verify_source=auto` (default): the dataset's test split when the dataset is available
  (prepared, or generated like the synthetic scenes), with labels, so task metrics are added;
  otherwise the embedded synthetic scenes rendered at the model's size (no labels);
- `--verify_source=dataset|synthetic|random`: force one (random: seeded uniform noise).

int8 calibration images (`calibration_images`): `--calibration_images=DIR`, else the
training split when the dataset is available, else the synthetic scenes (with a warning).
The export's input size (`export_size`) comes from the flags, the config, the dataset spec
or the TFDS builder's declared shape, never from the prepared data.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
VERIFY_SOURCES = ("auto", "dataset", "synthetic", "random")
SYNTHETIC_SEED = 0  # the synthetic stream of the scenes (test stream for verification)
RANDOM_SEED = 0


@dataclasses.dataclass
class InputSet:
    """Images `[K,H,W,3]` float32 in [0,1], labels {task: [K,H,W(,C)]} or None, a description."""

    images: np.ndarray
    labels: Optional[Dict[str, np.ndarray]]
    source: str


# ----------------------------------------------------------------------------- size
def export_size(config, height: Optional[int], width: Optional[int]) -> Tuple[int, int]:
    """(height, width) of the export: the flags, else the training size known without data.

    Raises ValueError naming --height/--width when only the prepared dataset would tell.
    """
    if height is not None and width is not None:
        return height, width
    if config.data.height and config.data.width:
        return config.data.height, config.data.width
    from mtpsl_tf.data.registry import DATASETS

    spec = DATASETS.get(config.data.dataset)
    if spec.image_size is not None or spec.generated or dataset_available(config.data):
        from mtpsl_tf.training.restore import training_size

        return training_size(config)
    shape = _declared_image_shape(config.data, spec)
    if shape is None:
        raise ValueError(f"the training size of this {config.data.dataset!r} model is not in its config.json "
                         f"and the dataset is not prepared: pass --height and --width (e.g. 288 and 384 "
                         f"for NYU-v2)")
    return shape


def _builder(data_config, spec):
    """The TFDS builder of `data_config` without preparing it."""
    import tensorflow_datasets as tfds

    spec.import_builder()
    kwargs = {"data_dir": os.path.expanduser(data_config.data_dir) if data_config.data_dir else None}
    name = data_config.dataset_config or spec.default_config
    if spec.custom_config is None and name:
        kwargs["config"] = name
    return tfds.builder(spec.builder_name, **kwargs)


def _declared_image_shape(data_config, spec) -> Optional[Tuple[int, int]]:
    """The builder config's fixed image (height, width), or None where images vary."""
    shape = _builder(data_config, spec).info.features["image"].shape
    return None if shape[0] is None or shape[1] is None else (int(shape[0]), int(shape[1]))


def dataset_available(data_config) -> bool:
    """True when the dataset can be read without downloading or preparing anything by hand."""
    from mtpsl_tf.data import pipeline
    from mtpsl_tf.data.registry import DATASETS

    spec = DATASETS.get(data_config.dataset)
    if spec.generated:
        return True
    return pipeline._is_prepared(_builder(data_config, spec))


# ----------------------------------------------------------------------------- images
def list_images(folder: str, flag: str) -> List[str]:
    """Sorted JPEG/PNG files of `folder`; ValueError naming `flag` when there are none."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{flag}={folder!r}: no such folder")
    paths = sorted(os.path.join(folder, n) for n in os.listdir(folder)
                   if n.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(folder, n)))
    if not paths:
        raise ValueError(f"{flag}={folder!r}: no {'/'.join(e[1:].upper() for e in IMAGE_EXTENSIONS)} "
                         f"images in this folder")
    return paths


def read_image(path: str, size: Tuple[int, int]) -> np.ndarray:
    """`path` -> float32 `[H, W, 3]` in [0, 1], RGB, resized (bilinear) to `size` = (H, W)."""
    from PIL import Image, UnidentifiedImageError

    if not os.path.isfile(path):
        raise FileNotFoundError(f"no image file {path!r}")
    try:
        with Image.open(path) as image:
            image = image.convert("RGB").resize((size[1], size[0]), Image.BILINEAR)
            return np.asarray(image, np.float32) / 255.0
    except (UnidentifiedImageError, OSError):
        raise ValueError(f"{path!r} is not an image file PIL can read") from None


def folder_images(folder: str, size: Tuple[int, int], count: int, flag: str) -> np.ndarray:
    """The first `count` images of `folder` at `size`: `[K,H,W,3]`."""
    return np.stack([read_image(p, size) for p in list_images(folder, flag)[:count]])


def synthetic_images(size: Tuple[int, int], count: int, split: str) -> np.ndarray:
    """`count` embedded synthetic scenes rendered at `size`: `[K,H,W,3]` (no dataset needed)."""
    from mtpsl_datasets.synthetic import render

    seed = render.split_seed(SYNTHETIC_SEED, split)
    return np.stack([render.render_example(i, size[0], size[1], seed)["image"] for i in range(count)])


def random_images(size: Tuple[int, int], count: int) -> np.ndarray:
    """Seeded uniform noise `[K,H,W,3]` in [0, 1]."""
    return np.random.default_rng(RANDOM_SEED).uniform(size=(count, *size, 3)).astype(np.float32)


# ----------------------------------------------------------------------------- sets
def _resize(value: np.ndarray, size: Tuple[int, int], nearest: bool) -> np.ndarray:
    import tensorflow as tf

    if value.shape[1:3] == tuple(size):
        return value
    squeeze = value.ndim == 3
    x = value[..., None] if squeeze else value
    out = tf.image.resize(x, size, method="nearest" if nearest else "bilinear").numpy().astype(value.dtype)
    return out[..., 0] if squeeze else out


def held_out_examples(data_config, tasks: Sequence, size: Tuple[int, int], count: int):
    """Up to `count` test examples at `size`: images `[K,H,W,3]`, labels {task: [K,H,W(,C)]}."""
    from mtpsl_tf.data import pipeline

    bundle = pipeline.load(dataclasses.replace(data_config, split_dir=""))
    batches = list(pipeline.test_dataset(bundle, 8).unbatch().take(count).batch(count).as_numpy_iterator())
    if not batches:
        raise ValueError(f"dataset {data_config.dataset!r} has no test examples to verify on")
    images = _resize(batches[0]["image"], size, nearest=False)
    labels = {t.name: _resize(batches[0]["labels"][t.name], size, nearest=True) for t in tasks}
    return images, labels


def training_images(data_config, size: Tuple[int, int], count: int) -> np.ndarray:
    """Up to `count` un-augmented training images `[K,H,W,3]`."""
    from mtpsl_tf.data import pipeline

    plain = dataclasses.replace(data_config, split_dir="", augment=False)
    bundle = pipeline.load(plain)
    ds = pipeline.train_dataset(bundle, plain, seed=0, initial_epoch=0, epochs=1, batch_size=1)
    images = np.concatenate([b["image"] for b in ds.take(count).as_numpy_iterator()])
    return _resize(images, size, nearest=False)


def verification_set(data_config, tasks: Sequence, size: Tuple[int, int], count: int,
                     images_dir: Optional[str] = None, source: str = "auto") -> InputSet:
    """The inputs every format is compared with Keras on (see the module doc)."""
    if source not in VERIFY_SOURCES:
        raise ValueError(f"--verify_source={source!r}: expected one of {', '.join(VERIFY_SOURCES)}")
    if images_dir:
        return InputSet(folder_images(images_dir, size, count, "--images"), None, f"images in {images_dir}")
    if source == "dataset" or (source == "auto" and dataset_available(data_config)):
        images, labels = held_out_examples(data_config, tasks, size, count)
        return InputSet(images, labels, f"{data_config.dataset} test split (first examples)")
    if source == "random":
        return InputSet(random_images(size, count), None, f"seeded uniform noise (seed {RANDOM_SEED})")
    return InputSet(synthetic_images(size, count, "test"), None,
                    f"synthetic scenes (test stream, seed {SYNTHETIC_SEED}; the dataset is not available)"
                    if source == "auto" else f"synthetic scenes (test stream, seed {SYNTHETIC_SEED})")


def calibration_set(data_config, size: Tuple[int, int], count: int,
                    images_dir: Optional[str] = None) -> Tuple[np.ndarray, str]:
    """(images `[K,H,W,3]`, description) calibrating int8 (see the module doc)."""
    if images_dir:
        return folder_images(images_dir, size, count, "--calibration_images"), f"images in {images_dir}"
    if dataset_available(data_config):
        return training_images(data_config, size, count), f"{data_config.dataset} training split"
    message = (f"int8 calibration: dataset {data_config.dataset!r} is not available and no "
               f"--calibration_images=DIR was given; calibrating on {count} synthetic scenes, which "
               f"may quantise real images less accurately")
    print(f"warning: {message}", file=sys.stderr, flush=True)
    return synthetic_images(size, count, "train"), "synthetic scenes (fallback: no dataset, no --calibration_images)"
