"""`mtl_pytorch`: Multi-Task-Learning-PyTorch's PASCAL-Context policy (data/augment_pascal.py):
flip, scale (0.75..1.25) and rotation (+-20 degrees), resize to the fixed size; test: resize.

Two views (MTPSL): view 1 = this training transform; view 2 = a random scale-crop of view 1
as MTPSL's NYU-v2 pipeline draws it (`augment.random_scale_crop`, scales {1, 1.2, 1.5}:
bilinear for the image and SMOOTH labels, nearest for the others, so class ids, ignore (-1)
and the {0, 1} saliency / edge maps stay what they are), then each Task's
`renormalise_label` (normals back to unit length, all-zero stays invalid), as the fixed
resize of view 1 does. The choice and why: docs/PASCAL_MTPSL.md.
"""

from __future__ import annotations

from mtpsl_tf.data.registry import AUGMENTATIONS, AugmentationPolicy


def make_train(size, flip: bool, tasks=None):
    from mtpsl_tf.data import augment_pascal

    return augment_pascal.TrainTransform(size=size, flip=flip, tasks=tasks)


def make_test(size, tasks=None):
    from mtpsl_tf.data import augment_pascal

    return augment_pascal.TestTransform(size=size, tasks=tasks)


def second_view(image, labels, seed, tasks=None):
    """View 2 from view 1 (`image` [H, W, 3], `labels` dict of [H, W(, C)]): random scale-crop
    (MTPSL's) then each task's `renormalise_label`; same shapes and dtypes."""
    from mtpsl_tf.data import augment
    from mtpsl_tf.tasks.registry import resolve_tasks

    image, labels = augment.random_scale_crop(image, labels, seed, tasks=tasks)
    kinds = resolve_tasks(labels, tasks)
    return image, {key: kinds[key].renormalise_label(value) for key, value in labels.items()}


def make_two_views(size, flip: bool, tasks=None):
    import tensorflow as tf

    train = make_train(size, flip, tasks)

    def transform(image, labels, seed):
        seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=2)
        image1, labels1 = train(image, labels, seeds[0])
        image2, labels2 = second_view(image1, labels1, seeds[1], tasks)
        return image1, labels1, image2, labels2

    return transform


AUGMENTATIONS.register("mtl_pytorch")(AugmentationPolicy(
    name="mtl_pytorch", make_train=make_train, make_test=make_test, make_two_views=make_two_views,
    resizes=True))
