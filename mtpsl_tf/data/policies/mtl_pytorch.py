"""`mtl_pytorch`: Multi-Task-Learning-PyTorch's PASCAL-Context policy (data/augment_pascal.py):
flip, scale (0.75..1.25) and rotation (+-20 degrees), resize to the fixed size; test: resize."""

from __future__ import annotations

from mtpsl_tf.data.registry import AUGMENTATIONS, AugmentationPolicy


def make_train(size, flip: bool, tasks=None):
    from mtpsl_tf.data import augment_pascal

    return augment_pascal.TrainTransform(size=size, flip=flip, tasks=tasks)


def make_test(size, tasks=None):
    from mtpsl_tf.data import augment_pascal

    return augment_pascal.TestTransform(size=size, tasks=tasks)


AUGMENTATIONS.register("mtl_pytorch")(AugmentationPolicy(
    name="mtl_pytorch", make_train=make_train, make_test=make_test, resizes=True))
