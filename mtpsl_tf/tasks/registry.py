"""Task kinds by name: `TASKS.get("semantic")(num_classes=13)`."""

from mtpsl_tf.registry import Registry

TASKS: Registry = Registry("task")
