"""`mtan`: the SegNet/MTAN scripts' RandomScaleCrop (+ flip with p 0.5 when the dataset flips,
Cityscapes) and MTPSL's two views; test examples unchanged. Keeps the input size."""

from __future__ import annotations

from mtpsl_tf.data.registry import AUGMENTATIONS, AugmentationPolicy


def make_train(size, flip: bool, tasks=None):
    import tensorflow as tf

    from mtpsl_tf.data import augment

    del size

    def transform(image, labels, seed):
        image, labels = augment.random_scale_crop(image, labels, seed, tasks=tasks)
        if flip:
            image, labels = augment.random_horizontal_flip(
                image, labels, tf.random.experimental.stateless_fold_in(seed, 1), tasks=tasks)
        return image, labels

    return transform


def make_two_views(size, flip: bool, tasks=None):
    from mtpsl_tf.data import augment

    del size
    return lambda image, labels, seed: augment.two_views(image, labels, seed, flip=flip, tasks=tasks)


def make_test(size, tasks=None):
    del size, tasks
    return None


AUGMENTATIONS.register("mtan")(AugmentationPolicy(
    name="mtan", make_train=make_train, make_test=make_test, make_two_views=make_two_views))
