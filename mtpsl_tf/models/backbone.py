"""`Backbone`: the base class of every registered network, with its declared capabilities.

The trainer, the methods and the exporters read these attributes instead of probing the
network (`getattr(network, ..., default)`); a new backbone subclasses `Backbone`, sets what
differs from the defaults and registers a builder in `models.registry.BACKBONES`.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import ClassVar, Dict, List, Mapping, Optional

import keras

from mtpsl_tf.models.input_size import check_multiple


class Backbone(keras.Model):
    """A shared network with one head per task.

    Call: `model(images [B,H,W,3] float32 in [0, 1], training)` -> `{task: [B,H,W,channels]
    float32, ..., "feature": [B,H/feature_stride,W/feature_stride,filters[-1]] float32}`.

    Subclasses set the class attributes below that differ from the defaults and `filters` in
    `__init__`.
    """

    heads: Dict[str, Dict[str, object]]
    """Ordered task name -> head spec {"channels": int, "activation": str}, set by `__init__`."""

    task_heads: Dict[str, keras.layers.Layer]
    """Task name -> its head layer, created by `__init__`."""

    filters: List[int]
    """The backbone's widths, set by `__init__` (SegNet: its five encoder widths; ResNet: stem,
    layer1..layer4). The MTPSL mapping net is built with the same widths."""

    feature_stride: ClassVar[int] = 1
    """Input size / size of the "feature" output (SegNet 32, dilated ResNet 8)."""

    input_multiple: ClassVar[int] = 1
    """Height and width must be positive multiples of this (SegNet 32; the dilated ResNet
    takes any size, its heads upsample to exactly H x W). See `check_input_size`."""

    unsupported_export_formats: ClassVar[Mapping[str, str]] = MappingProxyType({})
    """Export format name (`mtpsl_export.formats`) -> why it is refused. The exporter refuses
    these before writing anything; the keys are the refused names."""

    shared_output: ClassVar[Optional[str]] = None
    """The output key of the representation every task head reads, exactly the tensor the
    heads take (compute dtype), or None when the heads read task-specific features (MTAN):
    what `--mgda_on=feature` differentiates each task's loss with respect to (MGDA-UB)."""
    slow_under_xla_on_cpu: ClassVar[bool] = False
    """True when XLA on a CPU-only machine makes training much slower (the trainer warns when
    --xla is set there)."""

    @classmethod
    def check_input_size(cls, height, width, where: str = "input") -> None:
        """Raises ValueError unless `height` and `width` are positive multiples of
        `input_multiple`; None (a dynamic dimension) passes. The message names the class and
        `where`, e.g. "SegNet input height must be a positive multiple of 32, got 48"."""
        check_multiple(height, width, cls.input_multiple, f"{cls.__name__} {where}", allow_unknown=True)

    @property
    def task_names(self) -> List[str]:
        """The tasks in head order."""
        return list(self.heads)

    def head_layers(self) -> Dict[str, keras.layers.Layer]:
        """Task name -> the layer holding that task's own (unshared) variables
        (`task_heads`, which subclasses create in `__init__`)."""
        return dict(self.task_heads)

    def shared_trainable_variables(self) -> list:
        """The trainable variables every task's loss reaches (all but the heads'): what a
        gradient-based loss weighting differentiates each task's loss with respect to."""
        own = {id(v) for layer in self.head_layers().values() for v in layer.trainable_variables}
        return [v for v in self.trainable_variables if id(v) not in own]

    def last_shared_kernel(self):
        """The kernel of the last shared convolution before the heads (GradNorm's W).
        Default: the last 4-D shared variable, right when variables are created in the order
        they are applied (ResNet: layer4's last conv); SegNet overrides it."""
        kernels = [v for v in self.shared_trainable_variables() if len(v.shape) == 4]
        if not kernels:
            raise ValueError(f"{self.name}: no shared convolution kernel")
        return kernels[-1]
