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


def resolve_tasks(names, tasks=None) -> dict:
    """name -> the Task that handles the label of that name.

    `tasks` (Task objects, a sequence or a name -> Task mapping) are used as given; names not
    among them are looked up in TASKS (the class registered under that name: its label and
    mapping hooks are classmethods). Raises KeyError naming the known task names.
    """
    given = {}
    if tasks is not None:
        given = dict(tasks) if hasattr(tasks, "items") else {t.name: t for t in tasks}
    return {name: given[name] if name in given else TASKS.get(name) for name in names}
