"""`mtpsl_cityscapes`: the Cityscapes releases of github.com/lorenmt/mtan as TFDS datasets.

One BuilderConfig per (label set, resolution): `c7_128x256`, `c19_128x256`, `c7_256x512`,
`c19_256x512`. Nothing is downloaded: see `MANUAL_DOWNLOAD_INSTRUCTIONS`.
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np
import tensorflow_datasets as tfds

from mtpsl_datasets.nyuv2 import mtan_layout

# Number of examples in each release folder (both resolutions).
RELEASE_COUNTS = {"train": 2975, "val": 500}

_MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Download a pre-processed Cityscapes release of MTAN (Liu et al., CVPR 2019), linked from
https://github.com/lorenmt/mtan (README, "Update - Jun 2019": the 128x256 and the 256x512
versions), unpack it and pass the folder that holds `train/` and `val/` as the manual dir.
Use a config whose size matches the release (c7_128x256 / c19_128x256 for 128x256,
c7_256x512 / c19_256x512 for 256x512):

  <manual_dir>/
    train/                       2975 examples, i = 0..2974
      image/{i}.npy              float [H, W, 3] RGB in [0, 1]
      label_7/{i}.npy            float [H, W] 7 classes 0..6, -1 = ignore    (c7_* configs)
      label_19/{i}.npy           float [H, W] 19 classes 0..18, -1 = ignore  (c19_* configs)
      depth/{i}.npy              float [H, W, 1] scaled inverse depth, 0 = invalid
    val/                         500 examples, same folders (the test split)

Only the label folder of the chosen config is read (`label_2/` may exist; it is ignored).
Row i of the authors' split files (e.g. cityscapes_onelabel.npy) is `train/*/{i}.npy`,
stored as the feature `index`.
"""


@dataclasses.dataclass
class CityscapesConfig(tfds.core.BuilderConfig):
    """A Cityscapes release: label set and image size.

    Attributes:
      num_classes: 7 or 19; selects the folder `label_{num_classes}/`.
      height, width: the size H x W every array of the release has.
    """

    num_classes: int = 7
    height: int = 128
    width: int = 256

    @property
    def label_folder(self) -> str:
        return f"label_{self.num_classes}"


def _config(num_classes: int, height: int, width: int) -> CityscapesConfig:
    return CityscapesConfig(
        name=f"c{num_classes}_{height}x{width}",
        description=f"{num_classes}-class labels from label_{num_classes}/, {height}x{width}.",
        num_classes=num_classes, height=height, width=width,
    )


def release_configs() -> list[CityscapesConfig]:
    """The four configs matching the mtan releases."""
    return [_config(c, h, w) for (h, w) in [(128, 256), (256, 512)] for c in (7, 19)]


def array_rules(config: CityscapesConfig) -> list[mtan_layout.ArrayRule]:
    """What each modality folder read for `config` must hold (image rule first)."""
    c = config.num_classes
    return [
        mtan_layout.ArrayRule("image", 3, mtan_layout.in_range(0.0, 1.0),
                              "an RGB image, float in [0, 1]"),
        mtan_layout.ArrayRule(config.label_folder, None, mtan_layout.class_labels(c),
                              f"a label map, whole numbers in [0, {c - 1}] or -1", integral=True),
        # The authors' loaders apply np.moveaxis(depth, -1, 0): only [H, W, 1] works there.
        mtan_layout.ArrayRule("depth", 1, mtan_layout.in_range(0.0, np.inf),
                              "a depth (disparity) map, float >= 0 (0 = invalid)"),
    ]


def validate_manual_dir(path: str, config: CityscapesConfig | None = None,
                        split_counts=None) -> list[str]:
    """Problems with a Cityscapes release folder for `config`; empty when it is valid.

    Args:
      path: the folder holding `train/` and `val/`.
      config: label set and size to check against; default `c7_128x256`.
      split_counts: release folder -> required number of examples; default
        RELEASE_COUNTS (2975 / 500). A value None accepts any N > 0.

    Returns:
      One line per problem, naming the file, what was expected and what was found.
    """
    config = config or release_configs()[0]
    counts = RELEASE_COUNTS if split_counts is None else split_counts
    return mtan_layout.validate_release(
        os.fspath(path), array_rules(config), counts, image_size=(config.height, config.width))


def load_example(split_dir: str, i: int, config: CityscapesConfig) -> dict[str, np.ndarray | int]:
    """Example i of a release split folder, typed as the TFDS features."""
    folders = {"image": "image", "semantic": config.label_folder, "depth": "depth"}
    return mtan_layout.load_example(split_dir, i, folders)


class MtpslCityscapes(mtan_layout.MtanRelease, tfds.core.GeneratorBasedBuilder):
    """Cityscapes (mtan releases): RGB, 7- or 19-class semantics and disparity."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {
        "1.0.0": "First release: the mtan .npy releases (128x256, 256x512; 7 or 19 classes), "
                 "splits train (2975) and test (500, from val/), "
                 "features image/semantic/depth/index.",
    }
    MANUAL_DOWNLOAD_INSTRUCTIONS = _MANUAL_DOWNLOAD_INSTRUCTIONS
    BUILDER_CONFIGS = release_configs()
    DEFAULT_CONFIG_NAME = "c7_128x256"
    SPLIT_COUNTS = RELEASE_COUNTS

    def _info(self) -> tfds.core.DatasetInfo:
        cfg = self.builder_config
        h, w, c = cfg.height, cfg.width, cfg.num_classes
        return self._mtan_info(
            description=(
                "Cityscapes as pre-processed by MTAN (lorenmt/mtan): 2975 training and 500 "
                "test street scenes with semantic labels and scaled inverse depth."
            ),
            features={
                "image": tfds.features.Tensor(
                    shape=(h, w, 3), dtype=np.float32, doc="RGB, float32 [H, W, 3] in [0, 1]."),
                "semantic": tfds.features.Tensor(
                    shape=(h, w), dtype=np.int32,
                    doc=f"Class per pixel, int32 [H, W]: 0..{c - 1}, -1 = ignore."),
                "depth": tfds.features.Tensor(
                    shape=(h, w, 1), dtype=np.float32,
                    doc="Scaled inverse depth (disparity), float32 [H, W, 1]; 0 = invalid."),
            },
            citation=_CITATION,
        )

    def _problems(self, root):
        return validate_manual_dir(root, self.builder_config, self.SPLIT_COUNTS)

    def _load_example(self, split_dir, i):
        return load_example(split_dir, i, self.builder_config)


_CITATION = mtan_layout.MTAN_CITATION + """\
@inproceedings{cordts2016cityscapes,
  title={The Cityscapes Dataset for Semantic Urban Scene Understanding},
  author={Cordts, Marius and Omran, Mohamed and Ramos, Sebastian and Rehfeld, Timo and
          Enzweiler, Markus and Benenson, Rodrigo and Franke, Uwe and Roth, Stefan and
          Schiele, Bernt},
  booktitle={CVPR},
  year={2016}
}
"""
