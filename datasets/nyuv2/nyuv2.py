"""`mtpsl_nyuv2`: the NYU-v2 release of github.com/lorenmt/mtan as a TFDS dataset.

Nothing is downloaded: the user places the release in the manual folder (see
`MANUAL_DOWNLOAD_INSTRUCTIONS`) and builds with `datasets/prepare.py`.
"""
from __future__ import annotations

import os

import numpy as np
import tensorflow_datasets as tfds

from mtpsl_datasets.nyuv2 import mtan_layout

NUM_CLASSES = 13
# TFDS feature -> its folder in a release split folder.
FEATURE_FOLDERS = {"image": "image", "semantic": "label", "depth": "depth", "normal": "normal"}
# Number of examples in each release folder.
RELEASE_COUNTS = {"train": 795, "val": 654}

_MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Download the pre-processed NYU-v2 release of MTAN (Liu et al., CVPR 2019), linked from
https://github.com/lorenmt/mtan (README: "Download our pre-processed NYUv2 dataset"),
unpack it and pass the folder that holds `train/` and `val/` as the manual dir:

  <manual_dir>/
    train/                       795 examples, i = 0..794
      image/{i}.npy              float32 [H, W, 3] RGB in [0, 1]
      label/{i}.npy              float   [H, W]    13 classes 0..12, -1 = ignore
      depth/{i}.npy              float   [H, W, 1] metres, 0 = invalid
      normal/{i}.npy             float   [H, W, 3] in [-1, 1], all-zero = invalid
    val/                         654 examples, same four folders (the test split)

H x W is 288 x 384 in the release; every file must have the same H x W.
Row i of the authors' split files (e.g. nyuv2_onelabel.npy) is `train/*/{i}.npy`,
stored as the feature `index`.
"""


def array_rules() -> list[mtan_layout.ArrayRule]:
    """What each modality folder of the NYU-v2 release must hold (image rule first)."""
    return [
        mtan_layout.ArrayRule("image", 3, mtan_layout.in_range(0.0, 1.0),
                              "an RGB image, float in [0, 1]"),
        mtan_layout.ArrayRule("label", None, mtan_layout.class_labels(NUM_CLASSES),
                              f"a label map, whole numbers in [0, {NUM_CLASSES - 1}] or -1",
                              integral=True),
        mtan_layout.ArrayRule("depth", 1, mtan_layout.in_range(0.0, np.inf),
                              "a depth map, float >= 0 (0 = invalid)"),
        # Tolerance: unit vectors saved in float32 can exceed 1 by rounding.
        mtan_layout.ArrayRule("normal", 3, mtan_layout.in_range(-1.0 - 1e-4, 1.0 + 1e-4),
                              "a normal map, float in [-1, 1] (all-zero = invalid)"),
    ]


def validate_manual_dir(path: str, split_counts=None) -> list[str]:
    """Problems with an NYU-v2 release folder; empty when it is valid.

    Args:
      path: the folder holding `train/` and `val/`.
      split_counts: release folder -> required number of examples; default
        RELEASE_COUNTS (795 / 654). A value None accepts any N > 0.

    Returns:
      One line per problem, naming the file, what was expected and what was found.
    """
    counts = RELEASE_COUNTS if split_counts is None else split_counts
    return mtan_layout.validate_release(os.fspath(path), array_rules(), counts, image_size=None)


def load_example(split_dir: str, i: int) -> dict[str, np.ndarray | int]:
    """Example i of a release split folder, typed as the TFDS features."""
    return mtan_layout.load_example(split_dir, i, FEATURE_FOLDERS)


class MtpslNyuv2(mtan_layout.MtanRelease, tfds.core.GeneratorBasedBuilder):
    """NYU-v2 (mtan release): RGB, 13-class semantics, depth and surface normals."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {
        "1.0.0": "First release: the mtan .npy release, splits train (795) and test (654, "
                 "from val/), features image/semantic/depth/normal/index.",
    }
    MANUAL_DOWNLOAD_INSTRUCTIONS = _MANUAL_DOWNLOAD_INSTRUCTIONS
    SPLIT_COUNTS = RELEASE_COUNTS

    def _info(self) -> tfds.core.DatasetInfo:
        float_map = dict(dtype=np.float32, encoding=tfds.features.Encoding.BYTES)
        return self._mtan_info(
            description=(
                "NYU-v2 as pre-processed by MTAN (lorenmt/mtan): 795 training and 654 test "
                "indoor RGB images at 288x384 with 13-class semantic labels, depth and "
                "surface normals."
            ),
            features={
                "image": tfds.features.Tensor(
                    shape=(None, None, 3), **float_map, doc="RGB, float32 [H, W, 3] in [0, 1]."),
                "semantic": tfds.features.Tensor(
                    shape=(None, None), dtype=np.int32, encoding=tfds.features.Encoding.ZLIB,
                    doc="Class per pixel, int32 [H, W]: 0..12, -1 = ignore."),
                "depth": tfds.features.Tensor(
                    shape=(None, None, 1), **float_map,
                    doc="Depth in metres, float32 [H, W, 1]; 0 = invalid."),
                "normal": tfds.features.Tensor(
                    shape=(None, None, 3), **float_map,
                    doc="Surface normal, float32 [H, W, 3] in [-1, 1]; all-zero = invalid."),
            },
            citation=_CITATION,
        )

    def _problems(self, root):
        return validate_manual_dir(root, self.SPLIT_COUNTS)

    def _load_example(self, split_dir, i):
        return load_example(split_dir, i)


_CITATION = mtan_layout.MTAN_CITATION + """\
@inproceedings{silberman2012indoor,
  title={Indoor Segmentation and Support Inference from RGBD Images},
  author={Silberman, Nathan and Hoiem, Derek and Kohli, Pushmeet and Fergus, Rob},
  booktitle={ECCV},
  year={2012}
}
"""
