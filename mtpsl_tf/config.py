"""Typed experiment configuration; absl flags are generated from these dataclasses.

Every field is one flag of the same name (flag names are unique across sections), with
its type, default and help taken from the field. `train.py --flagfile=...` binds flags
to an `ExperimentConfig`; the resolved config is written next to the checkpoints.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Dict, Optional, Tuple

from mtpsl_tf.models.input_size import SEGNET_INPUT_MULTIPLE, SEGNET_REASON

PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
STRATEGIES = ("default", "mirrored", "multi_worker")
LR_SCHEDULES = ("step", "poly")


def _field(default, help: str, **kw):
    return dataclasses.field(default=default, metadata={"help": help, **kw})


@dataclasses.dataclass
class DataConfig:
    dataset: str = _field("synthetic", "Dataset name (registry): synthetic, nyuv2, cityscapes, pascal_context.")
    data_dir: str = _field("", "TFDS data directory (empty: ~/tensorflow_datasets). Synthetic data is generated there.")
    dataset_config: str = _field("", "TFDS builder config name (empty: the dataset's default).")
    setting: str = _field("onelabel", "Label setting: full, onelabel, randomlabels, ratio=A:B[:..], ssl=F, or file=PATH.")
    setting_seed: int = _field(0, "Seed of the generated label masks.")
    split_dir: str = _field(
        "", "Folder with the authors' split files (e.g. nyuv2_onelabel.npy); when the setting has one "
        "there it is used instead of drawing masks.")
    height: int = _field(0, "Image height (multiple of 32) for datasets that render or resize (synthetic, "
                         "PASCAL-Context's 512). 0: the dataset's default.")
    width: int = _field(0, "Image width (multiple of 32) for datasets that render or resize (synthetic, "
                        "PASCAL-Context's 512). 0: the dataset's default.")
    num_train: int = _field(0, "Synthetic: number of training images. 0: the dataset's default.")
    num_test: int = _field(0, "Synthetic: number of test images. 0: the dataset's default.")
    batch_size: int = _field(2, "Global training batch size (split across replicas).")
    eval_batch_size: int = _field(2, "Global evaluation batch size.")
    augment: bool = _field(True, "Random scale-crop augmentation of training images (as the reference).")
    cache: bool = _field(True, "Cache decoded examples in memory.")


@dataclasses.dataclass
class ModelConfig:
    backbone: str = _field("segnet", "Backbone name (registry): segnet, segnet_mtan (MTAN), resnet18_aspp "
                           "(PASCAL-Context), tiny (three convolutions: seconds-long smoke runs, not a "
                           "network of the paper).")
    variant: str = _field("standard", "SegNet variant: standard, wide, deep (segnet_mtan: its shared SegNet).")
    filters: str = _field("", "Comma-separated 5 widths overriding the variant's (e.g. 16,32,64,128,128; "
                          "resnet18_aspp: stem,layer1..layer4, default 64,64,128,256,512).")
    pretrained: str = _field(
        "", "Path to ImageNet weights for the backbone (resnet18_aspp: torchvision's resnet18 .pth state "
        "dict, read without executing code). Empty: random init. Never downloaded.")
    remat_backbone: bool = _field(
        False, "Recompute the backbone's activations in the backward pass instead of keeping them "
        "(segnet: its ten stages and the heads; resnet18_aspp: the stem and every residual block): "
        "less memory, one more backbone forward pass per step; docs/MEMORY.md.")


@dataclasses.dataclass
class MethodConfig:
    method: str = _field("sl", "Training method (registry): sl, stl, mtpsl.")
    weighting: str = _field(
        "fixed", "Loss weighting (registry): how the per-task losses combine into the total; fixed: "
        "the per-task weights of --loss_weights.")
    stl_task: str = _field("", "stl: the single task this network learns.")
    loss_reduction: str = _field(
        "auto",
        "Supervised loss over a batch: per_image (mean of per-image losses, the partial-label "
        "scripts), batch (pixels pooled over the batch, the reference's full-label SL script) or "
        "auto (batch for setting=full with method sl, else per_image).")
    loss_weights: str = _field(
        "", "Fixed per-task loss weights as task=w,... (empty: the dataset's, e.g. PASCAL-Context "
        "semseg 1, human_parts 2, normals 10, sal 5, edge 50; 1 for every task elsewhere).")


@dataclasses.dataclass
class TrainConfig:
    model_dir: str = _field("runs/default", "Where checkpoints, logs, config and metrics go; reused to resume.")
    epochs: int = _field(200, "Training epochs.")
    steps_per_epoch: int = _field(0, "Cap on steps per epoch (0: one pass over the training set).")
    learning_rate: float = _field(1e-4, "Adam learning rate of the network.")
    lr_decay_epochs: int = _field(100, "Halve (x lr_decay_factor) the learning rate every this many epochs.")
    lr_decay_factor: float = _field(0.5, "Step-decay factor.")
    lr_schedule: str = _field(
        "step", "step (x lr_decay_factor every lr_decay_epochs, the SegNet scripts) or poly "
        "(lr * (1 - epoch/epochs)^0.9 per epoch, Multi-Task-Learning-PyTorch).")
    weight_decay: float = _field(
        0.0, "L2 penalty added to the gradients before Adam, as torch.optim.Adam(weight_decay=...) "
        "(PASCAL-Context: 1e-4). 0: none.")
    precision: str = _field("float32", "float32, mixed_float16 or mixed_bfloat16.")
    xla: bool = _field(False, "Compile train/test steps with XLA (jit_compile).")
    lean_host_memory: bool = _field(
        False, "CPU: glibc malloc settings that return freed memory, so the resident set stays near the live "
        "bytes (same values; docs/MEMORY.md). Applied by train.py.")
    bfc_host_allocator: bool = _field(
        False, "CPU: TensorFlow's BFC allocator for its CPU tensors (same values; slower at the same peak here, "
        "docs/MEMORY.md). Applied by train.py before TensorFlow's first tensor.")
    strategy: str = _field("default", "default, mirrored (all local devices) or multi_worker (TF_CONFIG).")
    seed: int = _field(0, "Seed of weights init, shuffling and augmentation.")
    eval_every: int = _field(1, "Evaluate every this many epochs (and always after the last).")
    max_nonfinite_steps: int = _field(
        10, "A step whose loss or a gradient is NaN/Inf is skipped and counted (history.json, "
        "TensorBoard: nonfinite_steps); after this many in a row training stops with an error.")
    verbose: int = _field(1, "Keras progress: 1 progress bar, 2 one line per epoch, 0 silent.")
    tensorboard_images: int = _field(2, "Validation images shown in TensorBoard (0: none).")
    stl_reference: str = _field(
        "", "STL reference for Delta-MTL as task/metric=value,... (empty: the dataset's values for the setting).")
    compare_delta_mtl: str = _field(
        "", "Stored Delta-MTL of other runs to print beside this run's, as name:value,... in percent "
        "(e.g. sl:-11.1, measured against the same STL reference).")


@dataclasses.dataclass
class ExperimentConfig:
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    method: MethodConfig = dataclasses.field(default_factory=MethodConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    # The options of the method and the loss weighting in use (flag name -> value): they are
    # declared by those components (mtpsl_tf/options.py), not here.
    options: Dict[str, Any] = dataclasses.field(default_factory=dict)

    def validate(self) -> "ExperimentConfig":
        """Checks values that need no other module; raises ValueError naming the flag."""
        t, d = self.train, self.data
        _choice("precision", t.precision, PRECISIONS)
        _choice("strategy", t.strategy, STRATEGIES)
        _choice("loss_reduction", self.method.loss_reduction, ("auto", "per_image", "batch"))
        _choice("lr_schedule", t.lr_schedule, LR_SCHEDULES)
        if t.weight_decay < 0:
            raise ValueError(f"--weight_decay must be >= 0, got {t.weight_decay}")
        self.loss_weight_overrides()
        for name, value in (("epochs", t.epochs), ("batch_size", d.batch_size),
                            ("eval_batch_size", d.eval_batch_size), ("lr_decay_epochs", t.lr_decay_epochs),
                            ("eval_every", t.eval_every), ("max_nonfinite_steps", t.max_nonfinite_steps)):
            if value <= 0:
                raise ValueError(f"--{name} must be > 0, got {value}")
        for name, value in (("height", d.height), ("width", d.width)):
            if value < 0 or value % SEGNET_INPUT_MULTIPLE:
                raise ValueError(f"--{name} must be a multiple of {SEGNET_INPUT_MULTIPLE} ({SEGNET_REASON}), got {value}")
        if t.learning_rate <= 0:
            raise ValueError(f"--learning_rate must be > 0, got {t.learning_rate}")
        self.filter_list()
        self.stl_reference_overrides()
        self.compare_delta_mtl_values()
        return self

    def filter_list(self) -> Optional[Tuple[int, ...]]:
        if not self.model.filters:
            return None
        try:
            widths = tuple(int(v) for v in self.model.filters.split(","))
        except ValueError:
            raise ValueError(f"--filters must be 5 comma-separated integers, got {self.model.filters!r}") from None
        if len(widths) != 5 or min(widths) <= 0:
            raise ValueError(f"--filters must be 5 positive integers, got {self.model.filters!r}")
        return widths

    def loss_weight_overrides(self) -> Dict[str, float]:
        """`--loss_weights` parsed: task -> weight (>= 0)."""
        out = {}
        for item in filter(None, self.method.loss_weights.split(",")):
            key, sep, value = item.partition("=")
            try:
                weight = float(value)
            except ValueError:
                sep = ""
            if not sep or not key.strip() or weight < 0:
                raise ValueError(f"--loss_weights entries must look like task=w with w >= 0, got {item!r}")
            out[key.strip()] = weight
        return out

    def stl_reference_overrides(self) -> Dict[str, float]:
        out = {}
        for item in filter(None, self.train.stl_reference.split(",")):
            key, sep, value = item.partition("=")
            try:
                out[key.strip()] = float(value)
            except ValueError:
                sep = ""
            if not sep or "/" not in key:
                raise ValueError(f"--stl_reference entries must look like task/metric=value, got {item!r}")
        return out

    def compare_delta_mtl_values(self) -> Dict[str, float]:
        """`--compare_delta_mtl` parsed: name -> stored Delta-MTL (percent)."""
        out = {}
        for item in filter(None, self.train.compare_delta_mtl.split(",")):
            name, sep, value = item.partition(":")
            try:
                out[name.strip()] = float(value)
            except ValueError:
                sep = ""
            if not sep or not name.strip():
                raise ValueError(f"--compare_delta_mtl entries must look like name:value (e.g. sl:-11.1), got {item!r}")
        return out

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Dict[str, Any]) -> "ExperimentConfig":
        sections = {"options": dict(values.get("options", {}))}
        for f in dataclasses.fields(cls):
            if f.name == "options":
                continue
            section_cls = f.default_factory
            known = {x.name for x in dataclasses.fields(section_cls)}
            given = dict(values.get(f.name, {}))
            if f.name == "method":  # config.json written before components owned their options
                sections["options"].update({k: given.pop(k) for k in _LEGACY_METHOD_OPTIONS if k in given})
            unknown = set(given) - known
            if unknown:
                raise ValueError(f"config section {f.name!r} has unknown keys {sorted(unknown)}")
            sections[f.name] = section_cls(**given)
        return cls(**sections)


# Fields of the method section that became the MTPSL method's own options; config.json files
# written before that still load.
_LEGACY_METHOD_OPTIONS = ("consistency_mode", "con_weight", "reg_weight", "rampup", "film_learning_rate",
                          "film_lr_decay_epochs")


def _choice(flag: str, value: str, choices) -> None:
    if value not in choices:
        raise ValueError(f"--{flag}={value!r} is not one of {', '.join(choices)}")


def section_fields():
    """Yields (section name, dataclasses.Field) for every flag-bound field of the sections
    (the components' own options are declared by the components, see mtpsl_tf/options.py)."""
    for section in dataclasses.fields(ExperimentConfig):
        if section.name == "options":
            continue
        for f in dataclasses.fields(section.default_factory):
            yield section.name, f


def save_config(config: ExperimentConfig, model_dir: str, name: str = "config.json") -> str:
    """Writes the resolved config atomically (temp file + rename); returns its path."""
    os.makedirs(model_dir, exist_ok=True)
    path = os.path.join(model_dir, name)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(config.to_dict(), f, indent=2, sort_keys=True)
    os.replace(tmp, path)
    return path


def load_config(path: str) -> ExperimentConfig:
    with open(path) as f:
        return ExperimentConfig.from_dict(json.load(f))
