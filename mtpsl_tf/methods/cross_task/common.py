"""What the cross-task mapping methods share: their options, the mapping networks, the
mapping inputs and the two summed losses."""

from __future__ import annotations

import dataclasses
from typing import Dict, List

import tensorflow as tf

from mtpsl_tf.methods.base import REMAT_MAPPING_HELP, LossTerms, Method, presence
from mtpsl_tf.methods.cross_task import losses, pairs
from mtpsl_tf.methods.cross_task.networks import PairMappings
from mtpsl_tf.methods.supervised import task_losses
from mtpsl_tf.options import choice, option

MAP_PAIRS_HELP = ("which (image, pair) items: unlabelled_source (the paper's partial-label definition: "
                  "unlabelled task -> labelled task), all (every pair into / out of a labelled task), auto "
                  "(all for --setting=full, else unlabelled_source).")


def parse_filters(text: str, flag: str = "map_filters") -> List[int]:
    """"64,128,256,512,512" -> five ints; "" -> []; ValueError naming --flag otherwise."""
    if not text.strip():
        return []
    try:
        widths = [int(part) for part in text.split(",")]
    except ValueError:
        widths = []
    if len(widths) != 5 or min(widths) <= 0:
        raise ValueError(f"--{flag}={text!r}: expected five positive SegNet widths, e.g. 64,128,256,512,512")
    return widths


@dataclasses.dataclass(frozen=True)
class CrossTaskOptions:
    """The flags every cross-task mapping method has (direct_map, perceptual_map, xtask)."""

    map_weight: float = option(1.0, "direct_map / perceptual_map / xtask: weight of the cross-task term.")
    map_pairs: str = option("auto", MAP_PAIRS_HELP)
    remat_mapping: bool = option(False, REMAT_MAPPING_HELP)

    def validate(self) -> None:
        """Raises ValueError naming the flag."""
        choice("map_pairs", self.map_pairs, ("auto",) + pairs.PAIR_MODES)
        if self.map_weight < 0:
            raise ValueError(f"--map_weight must be >= 0, got {self.map_weight}")


@dataclasses.dataclass(frozen=True)
class TrainedMappingOptions(CrossTaskOptions):
    """The flags of the methods that train their own mapping SegNets (direct_map, perceptual_map)."""

    map_filters: str = option("", "direct_map / perceptual_map: the mapping SegNets' five widths "
                              "(empty: the network's --filters).")

    def validate(self) -> None:
        super().validate()
        parse_filters(self.map_filters)


def step_seed(seed: int, step, salt: int) -> tf.Tensor:
    """Stateless seed from (train seed, step, replica, salt): fresh Gumbel noise for every
    step, replica and pair, reproducible across resumes."""
    ctx = tf.distribute.get_replica_context()
    replica = ctx.replica_id_in_sync_group if ctx is not None else 0
    base = tf.stack([tf.constant(seed, tf.int64), tf.cast(step, tf.int64)])
    folded = tf.random.experimental.stateless_fold_in(base, tf.cast(replica, tf.int64))
    return tf.random.experimental.stateless_fold_in(folded, salt)


class CrossTaskMethod(Method):
    """Supervised losses plus terms computed through `PairMappings` (one SegNet per ordered
    task pair, built in `build`). Subclasses choose the terms in `extra_terms`."""

    extra_names: tuple = ()

    def __init__(self, facts, tasks=None):
        super().__init__(facts, tasks)
        self.mode = pairs.resolve_mode(self.options.map_pairs, self.facts.setting_kind)
        self.by_name = {t.name: t for t in self.tasks}
        self.mappings: PairMappings | None = None

    def mapping_filters(self, network) -> List[int]:
        return parse_filters(getattr(self.options, "map_filters", "")) or list(network.filters)

    def build(self, network) -> None:
        super().build(network)
        self.mappings = PairMappings({t.name: t.head_spec for t in self.tasks}, self.mapping_filters(network),
                                     remat=self.options.remat_mapping, name="mappings")
        self.mappings.build()

    def extra_layers(self) -> list:
        return [self.mappings]

    def extra_loss_names(self) -> List[str]:
        return list(self.extra_names)

    def source_input(self, source: str, prediction, step, salt: int) -> tf.Tensor:
        task = self.by_name[source]
        seed = step_seed(self.facts.seed, step, salt) if task.mapping_needs_noise else None
        return task.mapping_prediction(prediction, seed=seed)

    def direct_sum(self, outputs, labels, label_mask, step, train_network: bool) -> tf.Tensor:
        """sum over fit items of target's loss of m_{s->t}(prediction of s) (scalar, local).
        `train_network=False` stops the gradient into the network (the mappings still learn)."""
        pair_list = self.mappings.pairs()
        inputs = [self.source_input(s, outputs[s], step, k) for k, (s, _) in enumerate(pair_list)]
        if not train_network:
            inputs = [tf.stop_gradient(x) for x in inputs]
        mapped = self.mappings.map_all(inputs, training=True)
        total = tf.constant(0.0, tf.float32)
        for (s, t), out in zip(pair_list, mapped):  # static: one loss per target kind
            per_image = losses.direct_loss(self.by_name[t], out, labels[t])
            total += tf.reduce_sum(pairs.fit_items(label_mask, s, t, self.mode) * per_image)
        return total

    def perceptual_sum(self, outputs, labels, label_mask, step) -> tf.Tensor:
        """sum over perceptual items of |m_{s->t}(prediction of s) - m_{s->t}(label of s)| (L1
        in t's perceptual form; scalar, local). The mappings get no gradient from it."""
        pair_list = self.mappings.pairs()
        inputs = []
        for k, (s, _) in enumerate(pair_list):  # prediction and label as one batch of 2B
            source = self.by_name[s]
            inputs.append(tf.concat([self.source_input(s, outputs[s], step, k),
                                     source.mapping_label(labels[s], source.channels)], axis=0))
        mapped = self.mappings.map_all_frozen(inputs)
        total = tf.constant(0.0, tf.float32)
        for (s, t), out in zip(pair_list, mapped):
            local = outputs[s].shape[0]
            per_image = losses.perceptual_loss(self.by_name[t], out[:local], out[local:])
            total += tf.reduce_sum(pairs.perceptual_items(label_mask, s, t, self.mode) * per_image)
        return total

    def extra_terms(self, outputs, batch, step) -> Dict[str, tf.Tensor]:
        """name -> LOCAL sum of the term (divided by the global batch in `loss_terms`)."""
        raise NotImplementedError

    def extra_weights(self) -> Dict[str, float]:
        raise NotImplementedError

    def loss_terms(self, network, batch, global_batch_size, progress, step):
        outputs = network(batch["image"], training=True)
        task = task_losses(self.tasks, outputs, batch["labels"], batch["label_mask"], global_batch_size,
                           self.facts.loss_reduction)
        extra = {name: value / float(global_batch_size)
                 for name, value in self.extra_terms(outputs, batch, step).items()}
        return LossTerms(task, presence(self.tasks, batch["label_mask"]), extra, self.extra_weights())
