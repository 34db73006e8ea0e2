"""The authors' PyTorch checkpoints -> our SegNet (+ mapping net) and a model directory.

    python -m mtpsl_tf.import_torch results/nyuv2/mtl_xtc_onelabel.pth.tar \\
        --dataset=nyuv2 --setting=onelabel --out=runs/authors_onelabel

The file is read with `interop.torch_format.load_torch_file` (a restricted unpickler: no code
from the file runs). The SegNet architecture is inferred from the tensors themselves: the five
filter widths (`encoder_block.{i}.0.weight`), the "deep" variant (two conv-BN-ReLU units
per block: `encoder_block.0.3.weight` exists) and the heads `pred_task1..K`, which map to
the dataset's tasks in order. Tensors the model does not use (e.g. `logsigma`, the Cityscapes
model's unused normal head and `con_tasks`) are reported, never silently dropped.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import logging
import os
import shutil
import sys
import uuid
from typing import Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from mtpsl_tf.cli import error_message

log = logging.getLogger("mtpsl_tf")

NUM_STAGES = 5
# The authors' heads are pred_task1..pred_task{K}, numbered in the dataset's task order.
HEAD_PREFIX = "pred_task"
# A DataParallel-wrapped model saves every key with this prefix.
_DATA_PARALLEL_PREFIX = "module."
# Spatial size of the dummy input that creates the variables (weights do not depend on it).
_BUILD_SIZE = 32


@dataclasses.dataclass(frozen=True)
class Architecture:
    """What the tensors say about the authors' SegNet.

    Attributes:
        variant: "standard", "wide" or "deep" (our `SegNet` variants).
        filters: the five encoder widths, e.g. (64, 128, 256, 512, 512).
        head_channels: output channels of `pred_task1..K`, in that order.
    """

    variant: str
    filters: Tuple[int, ...]
    head_channels: Tuple[int, ...]

    @property
    def num_classes(self) -> int:
        """Semantic classes: the first head's output channels."""
        return self.head_channels[0]

    def filters_flag(self) -> str:
        """The `--filters` value: empty when the widths are the variant's own."""
        from mtpsl_tf.models.segnet import VARIANT_FILTERS

        if tuple(self.filters) == tuple(VARIANT_FILTERS[self.variant]):
            return ""
        return ",".join(str(f) for f in self.filters)


@dataclasses.dataclass
class ImportedModel:
    """Result of `load_torch_checkpoint`; unpacks as `model, mapping = ...`.

    Attributes:
        model: the built Keras `SegNet` holding the checkpoint's weights.
        mapping: the `MappingNet` from the checkpoint's `mapfns`, or None if it has none.
        architecture: what was inferred from the tensors.
        tasks: the dataset's tasks (the SegNet's heads, in order).
        unused_keys: checkpoint tensors not copied (`mapfns/` prefixed for the mapping net's).
        epoch: the checkpoint's `epoch` (completed epochs), 0 if absent.
    """

    model: object
    mapping: Optional[object]
    architecture: Architecture
    tasks: list
    unused_keys: List[str]
    epoch: int

    def __iter__(self) -> Iterator[object]:
        yield self.model
        yield self.mapping


# ----------------------------------------------------------------------------- reading


def split_checkpoint(obj: Mapping, source: str = "checkpoint") -> Tuple[dict, Optional[dict], int]:
    """A loaded checkpoint -> (SegNet state dict, mapfns state dict or None, epoch).

    Accepts a training checkpoint `{"state_dict", "mapfns"?, "epoch"?, ...}` or a bare
    SegNet state dict. Raises ValueError naming `source` for anything else.
    """
    if "state_dict" in obj:
        state, mapfns = obj["state_dict"], obj.get("mapfns")
        epoch = _epoch(obj.get("epoch", 0), source)
    elif _looks_like_state_dict(obj):
        state, mapfns, epoch = obj, None, 0
    else:
        raise ValueError(
            f"{source}: no 'state_dict' entry and not a bare SegNet state dict (expected keys "
            f"like 'encoder_block.0.0.weight'); top-level keys are {sorted(map(str, obj))[:10]}")
    state = _tensor_dict(state, f"{source}: 'state_dict'")
    if mapfns is not None:
        mapfns = _tensor_dict(mapfns, f"{source}: 'mapfns'")
    return state, mapfns, epoch


def _looks_like_state_dict(obj: Mapping) -> bool:
    keys = [k for k in obj if isinstance(k, str)]
    return any(_strip_data_parallel(k).startswith("encoder_block.") for k in keys)


def _strip_data_parallel(key: str) -> str:
    return key[len(_DATA_PARALLEL_PREFIX):] if key.startswith(_DATA_PARALLEL_PREFIX) else key


def _tensor_dict(value, what: str) -> dict:
    """`{name: np.ndarray}` with a DataParallel `module.` prefix removed; else ValueError."""
    if not isinstance(value, Mapping):
        raise ValueError(f"{what} must be a dict of tensors, got {type(value).__name__}")
    bad = [k for k, v in value.items() if not (isinstance(k, str) and isinstance(v, np.ndarray))]
    if bad:
        raise ValueError(f"{what} must map names to tensors; offending entries: {bad[:5]}")
    if value and all(k.startswith(_DATA_PARALLEL_PREFIX) for k in value):
        return {_strip_data_parallel(k): v for k, v in value.items()}
    return dict(value)


def _epoch(value, source: str) -> int:
    if isinstance(value, np.ndarray) and value.shape == ():
        value = value.item()
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 0:
        return int(value)
    raise ValueError(f"{source}: 'epoch' must be a non-negative integer, got {value!r}")


# ----------------------------------------------------------------------------- architecture


def infer_architecture(state: Mapping[str, np.ndarray]) -> Architecture:
    """Reads variant, widths and heads off a SegNet state dict (PyTorch names/layouts).

    Raises KeyError naming the missing tensors, ValueError on inconsistent shapes.
    """
    names = [f"encoder_block.{i}.0.weight" for i in range(NUM_STAGES)]
    missing = [n for n in names if n not in state]
    if missing:
        raise KeyError(f"not an MTPSL SegNet state dict: missing {missing}")
    for name in names:
        if state[name].ndim != 4:
            raise ValueError(f"{name} must be a conv weight [O, I, kH, kW], got shape {state[name].shape}")
    filters = tuple(int(state[n].shape[0]) for n in names)
    heads = []
    while f"{HEAD_PREFIX}{len(heads) + 1}.1.weight" in state:
        heads.append(int(state[f"{HEAD_PREFIX}{len(heads) + 1}.1.weight"].shape[0]))
    if not heads:
        raise KeyError(f"no task heads in the state dict: missing '{HEAD_PREFIX}1.1.weight'")
    return Architecture(_variant(state, filters), filters, tuple(heads))


def _variant(state: Mapping[str, np.ndarray], filters: Tuple[int, ...]) -> str:
    from mtpsl_tf.models.segnet import VARIANT_FILTERS

    if "encoder_block.0.3.weight" in state:  # Sequential(conv, bn, relu, conv, bn, relu)
        return "deep"
    return "wide" if filters == tuple(VARIANT_FILTERS["wide"]) else "standard"


def match_heads(arch: Architecture, tasks: Sequence, dataset: str) -> None:
    """Checks that heads `pred_task1..` fit the dataset's tasks (extra heads stay unused).

    Raises ValueError naming the dataset, the task and both channel counts.
    """
    names = [t.name for t in tasks]
    if len(arch.head_channels) < len(tasks):
        raise ValueError(
            f"dataset {dataset!r} has tasks {names} but the checkpoint has only "
            f"{len(arch.head_channels)} heads ({HEAD_PREFIX}1..{len(arch.head_channels)})")
    for k, task in enumerate(tasks):
        if arch.head_channels[k] != task.channels:
            raise ValueError(
                f"dataset {dataset!r}: head {HEAD_PREFIX}{k + 1} has {arch.head_channels[k]} output "
                f"channels but task {task.name!r} needs {task.channels}; the checkpoint was trained "
                f"for a different dataset (or, for semantic, a different number of classes: try "
                f"another --dataset_config)")


def dataset_tasks(dataset: str, dataset_config: str = "") -> list:
    """The registered dataset's tasks (KeyError naming the known datasets otherwise)."""
    from mtpsl_tf.data.registry import DATASETS

    return DATASETS.get(dataset).tasks(dataset_config)


# ----------------------------------------------------------------------------- networks


def build_segnet(arch: Architecture, tasks: Sequence):
    """A SegNet with `arch` and one head per task, its variables created."""
    import tensorflow as tf

    from mtpsl_tf.models.segnet import SegNet

    heads = {t.name: t.head_spec for t in tasks}
    model = SegNet(heads, variant=arch.variant, filters=list(arch.filters))
    model(tf.zeros([1, _BUILD_SIZE, _BUILD_SIZE, 3]), training=False)
    return model


def build_mapping(mapfns: Mapping[str, np.ndarray], tasks: Sequence, dataset: str):
    """The MappingNet of `mapfns` (the authors' `Mapfns` state dict), weights copied.

    Returns (net, unused keys). Raises ValueError if its inputs do not fit the dataset's tasks.
    """
    from mtpsl_tf.methods.mtpsl import mapping

    config = mapping.config_from_torch_state(mapfns)
    channels = [t.channels for t in tasks]
    if list(config["task_channels"]) != channels:
        raise ValueError(
            f"dataset {dataset!r}: the checkpoint's mapping net takes inputs with channels "
            f"{config['task_channels']}, the tasks {[t.name for t in tasks]} have {channels}")
    net = mapping.MappingNet([t.name for t in tasks], config["task_channels"], config["filters"])
    return net, mapping.load_torch_state(net, mapfns)


def load_torch_checkpoint(path: str, dataset: str, dataset_config: str = "") -> ImportedModel:
    """Reads an authors' checkpoint into our SegNet (+ MappingNet); unpacks as (model, mapping).

    Args:
        path: a `.pth` / `.pth.tar` file: a training checkpoint dict (`state_dict`, optional
            `mapfns`, `epoch`) or a bare SegNet state dict.
        dataset: registered dataset name (nyuv2, cityscapes); its tasks are the heads.
        dataset_config: the dataset's config (decides the number of semantic classes).

    Raises:
        FileNotFoundError / UnsafeCheckpointError / ValueError from reading the file;
        KeyError naming missing tensors (or an unknown dataset); ValueError when the heads
        or the mapping net do not fit the dataset's tasks, or a tensor's shape is wrong.
    """
    from mtpsl_tf.interop.segnet import assign_torch_state
    from mtpsl_tf.interop.torch_format import load_torch_file

    tasks = dataset_tasks(dataset, dataset_config)
    state, mapfns, epoch = split_checkpoint(load_torch_file(path), source=str(path))
    arch = infer_architecture(state)
    match_heads(arch, tasks, dataset)
    model = build_segnet(arch, tasks)
    unused = assign_torch_state(model, state, [t.name for t in tasks], source=str(path))
    mapping = None
    if mapfns is not None:
        mapping, unused_map = build_mapping(mapfns, tasks, dataset)
        unused += [f"mapfns/{k}" for k in unused_map]
    if unused:
        log.warning("%s: %d checkpoint tensors are not used by the %s model: %s",
                    path, len(unused), dataset, summarise_keys(unused))
    return ImportedModel(model, mapping, arch, list(tasks), unused, epoch)


def summarise_keys(keys: Sequence[str]) -> str:
    """'logsigma, con_tasks.* (42 tensors)': keys grouped by their first dotted component."""
    groups = collections.OrderedDict()
    for key in keys:
        groups.setdefault(key.split(".", 1)[0], []).append(key)
    parts = []
    for head, members in groups.items():
        parts.append(members[0] if len(members) == 1 else f"{head}.* ({len(members)} tensors)")
    return ", ".join(parts)


# ----------------------------------------------------------------------------- model dir


def experiment_config(imported: ImportedModel, dataset: str, out: str, dataset_config: str = "",
                      setting: str = "", data_dir: str = ""):
    """The ExperimentConfig describing the imported model (written as config.json)."""
    from mtpsl_tf.config import ExperimentConfig
    from mtpsl_tf.methods.all import METHODS

    config = ExperimentConfig()
    config.data.dataset = dataset
    config.data.dataset_config = dataset_config
    config.data.data_dir = data_dir
    if setting:
        config.data.setting = setting
    config.model.variant = imported.architecture.variant
    config.model.filters = imported.architecture.filters_flag()
    config.method.method = "mtpsl" if _fits_mtpsl(imported, METHODS) else "sl"
    config.train.model_dir = out
    return config.validate()


def _fits_mtpsl(imported: ImportedModel, methods) -> bool:
    """True if our `mtpsl` method exists and would build this very mapping net (it sizes the
    mapping net like the SegNet), so that resuming restores the imported one."""
    mapping = imported.mapping
    return (mapping is not None and "mtpsl" in methods
            and tuple(mapping.filters) == tuple(imported.architecture.filters))


def import_to_model_dir(checkpoint: str, dataset: str, out: str, dataset_config: str = "",
                        setting: str = "", data_dir: str = "") -> ImportedModel:
    """Imports `checkpoint` and writes model directory `out` (config.json + checkpoints/).

    Written into a temporary sibling folder and renamed at the end: on any failure nothing
    is left at `out`. Raises FileExistsError if `out` exists and is not an empty folder.
    """
    from mtpsl_tf.training.restore import write_model_dir

    out = os.path.abspath(out)
    _check_out(out)
    imported = load_torch_checkpoint(checkpoint, dataset, dataset_config)
    config = experiment_config(imported, dataset, out, dataset_config, setting, data_dir)
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    # os.mkdir (unlike mkdtemp) honours the umask, so the renamed folder gets normal permissions.
    tmp = os.path.join(parent, f".{os.path.basename(out)}.import-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    os.mkdir(tmp)
    try:
        extra = {"method_0": imported.mapping} if imported.mapping is not None else None
        write_model_dir(tmp, config, imported.model, extra=extra, epoch=imported.epoch)
        _check_out(out)  # it may have appeared meanwhile
        os.replace(tmp, out)  # an empty existing folder is replaced atomically
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return imported


def _check_out(out: str) -> None:
    if os.path.isdir(out) and os.listdir(out):
        what = "checkpoints" if os.path.exists(os.path.join(out, "checkpoints")) else "files"
        raise FileExistsError(f"--out {out!r} already exists and holds {what}; choose a new folder")
    if os.path.exists(out) and not os.path.isdir(out):
        raise FileExistsError(f"--out {out!r} exists and is not a folder")


# ----------------------------------------------------------------------------- CLI


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m mtpsl_tf.import_torch",
        description="Convert the MTPSL authors' PyTorch checkpoint into an mtpsl_tf model directory "
                    "(no code from the file is executed).")
    parser.add_argument("checkpoint", help="the .pth / .pth.tar file")
    parser.add_argument("--dataset", required=True, help="dataset the model was trained on: nyuv2, cityscapes")
    parser.add_argument("--out", required=True, help="model directory to create (must not exist or be empty)")
    parser.add_argument("--dataset_config", default="", help="dataset config (e.g. cityscapes c19_128x256)")
    parser.add_argument("--setting", default="", help="label setting recorded in config.json "
                        "(onelabel, randomlabels, full); picks the Delta-MTL reference")
    parser.add_argument("--data_dir", default="", help="TFDS data directory recorded in config.json")
    return parser.parse_args(list(argv))


def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI entry point; returns the exit status (0 ok, 2 bad input)."""
    from mtpsl_tf.interop.torch_format import UnsafeCheckpointError

    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)  # TF's checkpoint writer chatters at INFO
    try:
        imported = import_to_model_dir(args.checkpoint, args.dataset, args.out, args.dataset_config,
                                       args.setting, args.data_dir)
    except (UnsafeCheckpointError, FileNotFoundError, FileExistsError, KeyError, ValueError) as err:
        print(f"error: {error_message(err)}", file=sys.stderr)
        return 2
    arch = imported.architecture
    print(f"imported {args.checkpoint} (epoch {imported.epoch}): SegNet {arch.variant} "
          f"filters {list(arch.filters)}, heads {[t.name for t in imported.tasks]}, "
          f"mapping net {'yes' if imported.mapping is not None else 'no'} -> {os.path.abspath(args.out)}")
    if imported.unused_keys:
        print(f"unused tensors: {summarise_keys(imported.unused_keys)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
