"""What a method is built from (`MethodFacts`), resolved from an experiment config once.

Methods never read the ExperimentConfig: `resolve_facts` turns the config, the dataset's
tasks and the label masks into plain facts, and `build_method` makes the method.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

from mtpsl_tf.options import NoOptions, resolve_options
from mtpsl_tf.tasks.base import Task


@dataclasses.dataclass(frozen=True)
class MethodFacts:
    """Resolved facts a method is built from.

    Attributes:
        tasks: the dataset's tasks, in its canonical order.
        weighting: the loss weighting's registry name.
        loss_weights: task -> static loss weight (`--loss_weights`, else the dataset's, else 1).
        explicit_loss_weights: the entries given with `--loss_weights` alone.
        loss_reduction: "per_image" or "batch" (resolved from "auto").
        setting_kind: the label setting's kind ("full", "onelabel", "randomlabels", "ratio", ...).
        seed: the run's seed.
        labelled_counts: the numbers of labelled tasks an image of the training set has
            (sorted), or None when unknown (then any of 0..T is assumed).
        backbone: the backbone's registry name.
        stl_task: the single task of `stl` ("" otherwise).
        options: the method's `Options` instance.
        weighting_options: the weighting's `Options` instance.
    """

    tasks: Tuple[Task, ...]
    weighting: str = "fixed"
    loss_weights: Mapping[str, float] = dataclasses.field(default_factory=dict)
    explicit_loss_weights: Mapping[str, float] = dataclasses.field(default_factory=dict)
    loss_reduction: str = "per_image"
    setting_kind: str = "onelabel"
    seed: int = 0
    labelled_counts: Optional[Tuple[int, ...]] = None
    backbone: str = "segnet"
    stl_task: str = ""
    options: object = dataclasses.field(default_factory=NoOptions)
    weighting_options: object = dataclasses.field(default_factory=NoOptions)


def setting_kind(setting: str) -> str:
    """"ratio=1:9" -> "ratio"; "onelabel" -> "onelabel"."""
    return setting.split("=", 1)[0] if "=" in setting else setting


def resolve_loss_weights(config, tasks: Sequence[Task]) -> Dict[str, float]:
    """Task name -> fixed loss weight: `--loss_weights`, else the dataset's defaults, else 1.

    Raises:
        ValueError: naming `--loss_weights` when it names a task the run does not have.
    """
    from mtpsl_tf.data.registry import DATASETS

    names = [t.name for t in tasks]
    defaults = {}
    if config.data.dataset in DATASETS:
        defaults = dict(getattr(DATASETS.get(config.data.dataset), "loss_weights", {}) or {})
    overrides = config.loss_weight_overrides()
    unknown = sorted(set(overrides) - set(defaults) - set(names))
    if unknown:
        raise ValueError(f"--loss_weights names unknown tasks {unknown}; the tasks are {names}")
    return {n: float(overrides.get(n, defaults.get(n, 1.0))) for n in names}


def resolve_reduction(config) -> str:
    """`--loss_reduction`, where "auto" is "batch" for `sl` with full labels (the reference's
    full-label script pools pixels over the batch) and "per_image" otherwise."""
    if config.method.loss_reduction != "auto":
        return config.method.loss_reduction
    return "batch" if config.data.setting == "full" and config.method.method == "sl" else "per_image"


def labelled_counts(label_masks) -> Optional[Tuple[int, ...]]:
    """The distinct numbers of labelled tasks per image of `[N, T]` masks (None for None)."""
    if label_masks is None:
        return None
    return tuple(sorted({int(k) for k in np.asarray(label_masks).sum(axis=1)}))


def resolve_facts(config, tasks: Sequence[Task], label_masks=None) -> MethodFacts:
    """The facts of `config`'s method for the dataset's `tasks` (and training label masks)."""
    from mtpsl_tf.methods.base import METHODS
    from mtpsl_tf.weighting.base import WEIGHTINGS

    m = config.method
    method_cls, weighting_cls = METHODS.get(m.method), WEIGHTINGS.get(m.weighting)
    return MethodFacts(
        tasks=tuple(tasks), weighting=m.weighting, loss_weights=resolve_loss_weights(config, tasks),
        explicit_loss_weights=config.loss_weight_overrides(),
        loss_reduction=resolve_reduction(config), setting_kind=setting_kind(config.data.setting),
        seed=config.train.seed, labelled_counts=labelled_counts(label_masks), backbone=config.model.backbone,
        stl_task=m.stl_task, options=resolve_options(method_cls.Options, config.options, f"--method={m.method}"),
        weighting_options=resolve_options(weighting_cls.Options, config.options, f"--weighting={m.weighting}"))


def build_method(config, tasks: Sequence[Task], label_masks=None):
    """The configured method for the dataset's `tasks`."""
    from mtpsl_tf.methods.base import METHODS

    return METHODS.get(config.method.method)(resolve_facts(config, tasks, label_masks))


def complete_options(config) -> Dict[str, object]:
    """`config.options` with the defaults of every option of the chosen method and weighting
    (what config.json records)."""
    from mtpsl_tf.methods.base import METHODS
    from mtpsl_tf.weighting.base import WEIGHTINGS

    out = dict(config.options)
    for component in (METHODS.get(config.method.method), WEIGHTINGS.get(config.method.weighting)):
        options = resolve_options(component.Options, config.options, component.__name__)
        out.update(dataclasses.asdict(options))
    return out
