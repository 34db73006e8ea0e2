"""`mtpsl_synthetic`: NYU-v2-like dense labels (semantic, depth, normal) rendered, not downloaded.

Usage::

    import tensorflow_datasets as tfds
    from mtpsl_datasets.synthetic import MtpslSynthetic, SyntheticConfig

    builder = MtpslSynthetic(config="small", data_dir=...)            # a predefined config
    builder = MtpslSynthetic(config=SyntheticConfig(name="tiny", height=32, width=48,
                                                    num_train=8, num_test=4), data_dir=...)
    builder.download_and_prepare()      # renders; nothing to download, no manual step
    train = builder.as_dataset(split="train")

Sizes: `small` renders in seconds and takes ~30 MB; `nyu_size` takes a few minutes and
~2.2 GB (features are zlib-compressed float32 tensors; the noisy image dominates).

Example ``i`` of split ``s`` equals
``render_example(i, height, width, split_seed(seed, s))`` of `mtpsl_datasets.synthetic.render`.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from mtpsl_datasets.synthetic import render

_SPLITS = ("train", "test")


@dataclasses.dataclass(eq=False)
class SyntheticConfig(tfds.core.BuilderConfig):
    """Resolution, split sizes and seed of a synthetic dataset.

    Attributes:
      height, width: image size in pixels (>= 2).
      num_train, num_test: number of examples per split (>= 1).
      seed: non-negative base seed; the test split uses `render.split_seed(seed, "test")`.
    """

    height: int = 64
    width: int = 96
    num_train: int = 256
    num_test: int = 64
    seed: int = 0

    def __post_init__(self):
        for field in ("height", "width"):
            _check_int(self, field, minimum=2)
        for field in ("num_train", "num_test"):
            _check_int(self, field, minimum=1)
        _check_int(self, "seed", minimum=0)
        if self.description is None:
            self.description = (
                f"{self.height}x{self.width}, {self.num_train} train / {self.num_test} test, "
                f"seed {self.seed}")


def _check_int(config, field, minimum):
    value = getattr(config, field)
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        raise ValueError(
            f"SyntheticConfig {config.name!r}: {field} must be an integer >= {minimum}, got {value!r}")


class MtpslSynthetic(tfds.core.GeneratorBasedBuilder):
    """Procedural indoor scenes with exact per-pixel semantic, depth and normal labels."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {
        "1.0.0": "First release: rooms with beds, sofas, cabinets, books, TVs, tables, chairs, "
                 "pictures, windows and small objects; 13 NYU-v2 classes.",
    }
    BUILDER_CONFIGS = [
        SyntheticConfig(name="small", height=64, width=96, num_train=256, num_test=64, seed=0,
                        description="64x96 (the parity-test size), 256 train / 64 test."),
        SyntheticConfig(name="nyu_size", height=288, width=384, num_train=795, num_test=654,
                        seed=0, description="NYU-v2's size and split sizes: 288x384, 795 / 654."),
    ]
    DEFAULT_CONFIG_NAME = "small"

    def _info(self) -> tfds.core.DatasetInfo:
        h, w = self.builder_config.height, self.builder_config.width

        def tensor(shape, dtype):
            # zlib: the labels are piecewise smooth and compress well; lossless.
            return tfds.features.Tensor(shape=shape, dtype=dtype,
                                        encoding=tfds.features.Encoding.ZLIB)

        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                "Procedural indoor scenes ray-cast with numpy (mtpsl_datasets.synthetic.render). "
                "Labels follow the NYU-v2 (mtan) conventions: semantic class ids of 13 classes "
                f"{render.CLASS_NAMES} with -1 = ignore, z-depth in metres with 0 = invalid, "
                "unit camera-space normals (x right, y up, z to the viewer) with all-zero = "
                "invalid."),
            features=tfds.features.FeaturesDict({
                "image": tensor((h, w, 3), np.float32),
                "semantic": tensor((h, w), np.int32),
                "depth": tensor((h, w, 1), np.float32),
                "normal": tensor((h, w, 3), np.float32),
                "index": np.int64,
            }),
            supervised_keys=None,
            homepage="https://github.com/VICO-UoE/MTPSL",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        config = self.builder_config
        sizes = {"train": config.num_train, "test": config.num_test}
        return {split: self._generate_examples(split, sizes[split]) for split in _SPLITS}

    def _generate_examples(self, split, num):
        config = self.builder_config
        seed = render.split_seed(config.seed, split)
        for index in range(num):
            example = render.render_example(index, config.height, config.width, seed)
            example["index"] = index
            yield index, example
