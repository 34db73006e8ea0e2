"""The paper's method, MTPSL: supervised losses + joint pairwise task-space consistency.

Modules: `method` (the Method), `pairs` (ordered task pairs, active pairs, capacity bounds),
`film` (per-item BatchNorm, input and FiLM conv blocks), `encoders` (the mapping-encoder
registry, keyed by backbone) with one module per encoder (`encoder_segnet`), `mapping`
(the mapping net), `consistency` (the pair loss) and `compact` (the consistency loss over the
active items, one batched mapping-net call).
"""

from mtpsl_tf.methods.mtpsl.method import MTPSL  # noqa: F401  (registers "mtpsl")
