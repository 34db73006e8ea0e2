"""LiteRT layer form: classification heads emit logits instead of log-probabilities.

A classification head ends in `log_softmax` (`heads.ACTIVATIONS`), which LiteRT converts to
LOG_SOFTMAX, an op the XNNPACK delegate does not run: it split the exported graph into a
delegated network, LOG_SOFTMAX on LiteRT's builtin kernel, and a second partition for the
post-processing. The export's post-processing of a classification output (`softmax` for the
probabilities, `argmax` for the label, `mtpsl_export.contract.postprocess`) is invariant to
adding one value per pixel to all classes, and log_softmax(x) = x - logsumexp(x) is such a
shift, so it gives the same probabilities and labels (up to float rounding) from the logits,
with SOFTMAX, which XNNPACK runs.

Valid only where every consumer of these outputs is shift-invariant per pixel: the exporter
traces the LiteRT formats with it; losses and metrics need the log-probabilities.

Float formats only: int8 keeps the log_softmax. XNNPACK runs no int8 SOFTMAX (nor
LOG_SOFTMAX), so there is nothing to gain, and int8 SOFTMAX has a fixed output scale of
1/256, coarser than the calibrated scale of the EXP of the log-probabilities where no class
is likely (measured: an untrained test model's int8 mIoU fell from 0.0053 to 0.0021, a 60%
"degradation" the verification rejects).
"""

from __future__ import annotations

import contextlib

import keras

from mtpsl_tf.models.registry import LITERT_FORMS

SHIFTED = "log_softmax"  # the head activation that is a per-pixel shift of the logits


@LITERT_FORMS.register("logit_heads")
@contextlib.contextmanager
def logit_heads(network: keras.layers.Layer, precision: str = "float32"):
    """Within the block, every head of `network.task_heads` whose `activation` is log_softmax
    has activation "linear" (trace the network inside it), unless `precision` is "int8";
    restored afterwards. Yields how many heads were switched."""
    heads = [] if precision == "int8" else [
        head for head in getattr(network, "task_heads", {}).values() if getattr(head, "activation", None) == SHIFTED]
    for head in heads:
        head.activation = "linear"
    try:
        yield len(heads)
    finally:
        for head in heads:
            head.activation = SHIFTED
