"""The SegNet mapping encoder (the authors' `Mapfns`): SegNet's encoder with a FiLM transform
after every conv -> BatchNorm, and a 2x2 max-pool ending each of its five stages."""

from __future__ import annotations

import keras

from mtpsl_tf.methods.mtpsl.encoders import MAPPING_ENCODERS, MappingEncoder
from mtpsl_tf.methods.mtpsl.film import FiLMConvBlock, max_pool_2x2

# Number of FiLM conv blocks in `conv_block_enc[i]` of the reference SegNet encoder.
CONV_BLOCKS_PER_STAGE = (1, 1, 2, 2, 2)


@MAPPING_ENCODERS.register("segnet")
@MAPPING_ENCODERS.register("segnet_mtan")  # same shared encoder, same "feature" shape
@keras.saving.register_keras_serializable(package="mtpsl_tf")
class SegNetMappingEncoder(MappingEncoder):
    """`[N,H,W,f0]`, int32 `[N]` -> `[N,H/32,W/32,f4]` (SegNet's "feature").

    Sublayers: `encoder_blocks[i]` (FiLM conv f(i-1)->f(i), with f(-1) = f0) and
    `conv_blocks_enc[i]` (a list of 1, 1, 2, 2, 2 FiLM convs), as the reference's names.
    """

    def __init__(self, filters, num_pairs, epsilon=1e-5, **kwargs):
        super().__init__(filters, num_pairs, epsilon, **kwargs)
        if len(self.filters) != len(CONV_BLOCKS_PER_STAGE):
            raise ValueError(f"filters must have {len(CONV_BLOCKS_PER_STAGE)} entries, got {list(filters)}")

        def block(width, name):
            return FiLMConvBlock(width, self.num_pairs, epsilon=epsilon, name=name, dtype=self.dtype_policy)

        self.encoder_blocks = [block(width, f"encoder_block_{i}") for i, width in enumerate(self.filters)]
        self.conv_blocks_enc = [[block(self.filters[i], f"conv_block_enc_{i}_{j}") for j in range(count)]
                                for i, count in enumerate(CONV_BLOCKS_PER_STAGE)]

    @property
    def input_width(self) -> int:
        return self.filters[0]

    def build(self, input_shape=None):
        in_channels = self.filters[0]
        for block, stage, width in zip(self.encoder_blocks, self.conv_blocks_enc, self.filters):
            block.build((None, None, None, in_channels))
            for conv in stage:
                conv.build((None, None, None, width))
            in_channels = width
        super().build(input_shape)

    def film_blocks(self) -> list:
        blocks = []
        for block, stage in zip(self.encoder_blocks, self.conv_blocks_enc):
            blocks.append(block)
            blocks.extend(stage)
        return blocks

    def call(self, x, pair_idx, training=None, remat=False):
        for block, stage in zip(self.encoder_blocks, self.conv_blocks_enc):
            convs = [block] + list(stage)
            for k, conv in enumerate(convs):
                # Under remat each FiLM conv is its own segment (the stage's last one ends with
                # the pool): the items run at full resolution, so a whole stage recomputed at
                # once would hold several full-resolution maps per item again.
                pool = k == len(convs) - 1
                x = self.segment(lambda h, conv=conv, pool=pool: self._conv(conv, h, pair_idx, training, pool),
                                 x, remat)
        return x

    @staticmethod
    def _conv(conv, x, pair_idx, training, pool):
        x = conv(x, pair_idx, training=training)
        return max_pool_2x2(x) if pool else x
