"""Run an exported model on image files and save side-by-side pictures of its predictions.

    python export/predict.py --model=exports/x/model_int8.tflite --images=photos/ --out=preds [--raw]
    python export/predict.py --model=exports/x/saved_model --images=a.png,b.jpg --out=preds

`--images`: comma-separated image files and/or folders (a folder stands for its JPEG/PNG
files, sorted). Each image is resized (bilinear) to the model's input size;
`<out>/<image stem>.png` shows the input, then each task's colourised prediction
(segmentation, depth, normals, ...) left to right, using the tasks' own `visualise`. With
`--raw`, also `<out>/<image stem>.<output name>.npy` per exported output (batch axis
dropped, e.g. `semantic_label` int32 `[H, W]`). Every file is written under a temporary
name and renamed. The tasks are read from the `config.json` that `export.py` writes next to
the model.
"""

from __future__ import annotations

import os
import sys
from typing import List, Optional, Sequence

import numpy as np

CONFIG = "config.json"


def export_dir_of(model_path: str) -> str:
    """The export directory holding `model_path` (a .tflite file or the saved_model dir)."""
    return os.path.dirname(os.path.abspath(model_path.rstrip(os.sep)))


def tasks_of(export_dir: str) -> list:
    """The tasks of the exported network, from the training config saved with the export."""
    from mtpsl_tf.config import load_config
    from mtpsl_tf.training.restore import dataset_tasks

    path = os.path.join(export_dir, CONFIG)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no {CONFIG} in {export_dir!r}: pass a model inside a directory "
                                f"written by export/export.py")
    return dataset_tasks(load_config(path))


def read_image(path: str, size) -> np.ndarray:
    """`path` -> float32 `[H, W, 3]` in [0, 1], RGB, resized (bilinear) to `size` = (H, W)."""
    from mtpsl_export.inputs import read_image as read

    return read(path, size)


def expand_images(entries: Sequence[str]) -> List[str]:
    """Image files and folders (-> their sorted JPEG/PNG files) -> image paths."""
    from mtpsl_export.inputs import list_images

    paths = []
    for entry in entries:
        paths += list_images(entry, "--images") if os.path.isdir(entry) else [entry]
    return paths


def panels(image: np.ndarray, outputs: dict, tasks: Sequence) -> np.ndarray:
    """`[H, W, 3]` input + one colourised `[H, W, 3]` panel per task -> `[H, W * (1 + T), 3]`."""
    import tensorflow as tf

    from mtpsl_export import contract

    row = [image]
    for task in tasks:
        if contract.is_classification(task):
            value = outputs[task.name + contract.LABEL]  # [1, H, W] class ids
        else:
            value = outputs[task.name]
        row.append(np.asarray(task.visualise(tf.convert_to_tensor(value)))[0])
    return np.concatenate(row, axis=1)


def _unique_stem(path: str, used: set) -> str:
    stem = os.path.splitext(os.path.basename(path))[0]
    name, n = stem, 1
    while name in used:
        n += 1
        name = f"{stem}_{n}"
    used.add(name)
    return name


def _save_png(picture: np.ndarray, target: str) -> None:
    """`[H, W, 3]` float in [0, 1] -> `target` PNG, via a temporary name."""
    from PIL import Image

    partial = target + ".partial"
    Image.fromarray(np.round(np.clip(picture, 0, 1) * 255).astype(np.uint8)).save(partial, format="PNG")
    os.replace(partial, target)


def _save_npy(value: np.ndarray, target: str) -> None:
    partial = target + ".partial"
    with open(partial, "wb") as f:
        np.save(f, value)
    os.replace(partial, target)


def predict(model_path: str, image_paths: Sequence[str], out_dir: str,
            num_threads: Optional[int] = None, raw: bool = False) -> List[str]:
    """Writes one PNG per image into `out_dir` (created) and, with `raw`, one `.npy` per
    image and output; `image_paths` may name folders. Returns the PNG paths."""
    from mtpsl_export.runners import load_runner

    image_paths = expand_images(image_paths)
    if not image_paths:
        raise ValueError("no --images given")
    tasks = tasks_of(export_dir_of(model_path))
    runner = load_runner(model_path, num_threads=num_threads)
    images = [read_image(p, runner.size) for p in image_paths]  # all read before writing anything
    os.makedirs(out_dir, exist_ok=True)
    written, used = [], set()
    for path, image in zip(image_paths, images):
        outputs = runner(image[None])
        stem = os.path.join(out_dir, _unique_stem(path, used))
        _save_png(panels(image, outputs, tasks), stem + ".png")
        for name, value in outputs.items() if raw else ():
            _save_npy(np.asarray(value)[0], f"{stem}.{name}.npy")
        written.append(stem + ".png")
    return written


def define_flags():
    from absl import flags

    flags.DEFINE_string("model", None, "Exported model: a .tflite file or the saved_model directory.")
    flags.DEFINE_list("images", None, "Comma-separated image files and/or folders (their JPEG/PNG files).")
    flags.DEFINE_boolean("raw", False, "Also write each output as <out>/<image stem>.<output>.npy.")
    flags.DEFINE_string("out", None, "Folder for the PNGs.")
    flags.DEFINE_integer("num_threads", None, "LiteRT interpreter threads (default: LiteRT's).")
    flags.mark_flags_as_required(["model", "images", "out"])


def main(argv) -> int:
    from absl import app, flags

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    f = flags.FLAGS
    try:
        written = predict(f.model, f.images, f.out, f.num_threads, raw=f.raw)
    except (ValueError, KeyError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from absl import app

    define_flags()
    app.run(lambda argv: sys.exit(main(argv)))
