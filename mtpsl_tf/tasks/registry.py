"""Task kinds by name: `TASKS.get("semantic")(num_classes=13)`.

A name may be a dataset's own name for a task kind (PASCAL-Context's "semseg", "normals",
"sal"): the label of that name is augmented by that class's label hooks.
"""

from mtpsl_tf.registry import Registry

# One line per task module (see mtpsl_tf/registry.py).
TASKS: Registry = Registry("task", modules=(
    "mtpsl_tf.tasks.semantic",
    "mtpsl_tf.tasks.depth",
    "mtpsl_tf.tasks.normal",
    "mtpsl_tf.tasks.saliency",
    "mtpsl_tf.tasks.edge",
))
