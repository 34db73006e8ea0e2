"""Writers of the export formats: SavedModel and LiteRT flatbuffers (float32, float16, int8).

All TFLite formats are converted with builtin ops only (no Flex/select-TF ops) from a
batch-1 SavedModel, so the flatbuffer carries the `serving_default` signature with the
contract's input and output names.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterable, Optional, Sequence, Tuple, Union

import numpy as np
import tensorflow as tf

from mtpsl_export import contract


ALL_FORMS, NO_FORMS = "all", "none"


def resolve_litert_forms(value: Union[str, Sequence[str]]) -> Tuple[str, ...]:
    """`--litert_forms` -> names of `mtpsl_tf.models.registry.LITERT_FORMS`, in registry order.

    "all" (the default): every registered form; "none" or empty: none; else comma-separated
    names (or a sequence of them). Raises ValueError naming the flag for an unknown name.
    """
    from mtpsl_tf.models.registry import LITERT_FORMS

    names = [v.strip() for v in (value.split(",") if isinstance(value, str) else value) if v.strip()]
    if names == [ALL_FORMS]:
        return tuple(LITERT_FORMS.names())
    if names in ([], [NO_FORMS]):
        return ()
    unknown = [n for n in names if n not in LITERT_FORMS]
    if unknown:
        raise ValueError(f"--litert_forms={','.join(names)}: unknown form {unknown[0]!r}; expected "
                         f"{ALL_FORMS}, {NO_FORMS} or some of {', '.join(LITERT_FORMS.names())}")
    return tuple(n for n in LITERT_FORMS.names() if n in names)


@contextlib.contextmanager
def litert_forms(network, forms: Sequence[str], switches: str = "arithmetic", precision: str = "float32"):
    """Within the block `network` is in the LiteRT layer forms `forms` (resolved names) for
    `precision` and, with `switches="arithmetic"`, its SegNet pooling computes the XNNPACK
    switches (`layers.arithmetic_switches`): trace a LiteRT format's SavedModel inside it."""
    from mtpsl_tf.models.layers import arithmetic_switches
    from mtpsl_tf.models.registry import LITERT_FORMS

    with contextlib.ExitStack() as stack:
        if switches == "arithmetic":
            stack.enter_context(arithmetic_switches(network))
        for name in forms:
            stack.enter_context(LITERT_FORMS.get(name)(network, precision))
        yield


def serving_fn(network, tasks: Sequence) -> Callable:
    """float32 images `[N,H,W,3]` in [0,1] -> the contract's output dict."""
    return lambda image: contract.postprocess(network(image, training=False), tasks)


def write_saved_model(network, tasks: Sequence, height: int, width: int, path: str,
                      batch: Optional[int] = None, uint8: bool = True) -> str:
    """SavedModel with `serving_default` (float32 `image`) and, with `uint8`, `serving_uint8`
    (uint8 `image` in [0, 255]); batch `batch` (None: any).

    A plain tf.Module holding the network's variables, not a Keras export archive: it saves
    and loads about twice as fast and carries only the serving functions.
    """
    serve = serving_fn(network, tasks)
    module = tf.Module()
    module.network_variables = [v.value for v in network.variables]  # tracked: saved with the model
    signatures = {"serving_default": tf.function(serve, input_signature=[
        tf.TensorSpec([batch, height, width, 3], tf.float32, name="image")]).get_concrete_function()}
    if uint8:
        signatures["serving_uint8"] = tf.function(
            lambda image: serve(tf.cast(image, tf.float32) / 255.0),
            input_signature=[tf.TensorSpec([batch, height, width, 3], tf.uint8, name="image")]).get_concrete_function()
    tf.saved_model.save(module, path, signatures=signatures)
    return path


def tflite_converter(saved_model_dir: str, precision: str,
                     representative: Optional[Callable[[], Iterable[dict]]] = None):
    """A configured TFLiteConverter for `saved_model_dir`'s `serving_default` (builtin ops only).

    float16: weights stored as float16 (dequantised at load). int8: full-integer quantisation
    of every op (TFLITE_BUILTINS_INT8; conversion fails if an op cannot be quantised), with
    float32 input/output tensors, calibrated on `representative()` batches `{"image": [1,H,W,3]}`.
    """
    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir, signature_keys=["serving_default"])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if precision == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif precision == "int8":
        if representative is None:
            raise ValueError("int8 conversion needs a representative dataset")
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.representative_dataset = representative
    elif precision != "float32":
        raise ValueError(f"unknown TFLite precision {precision!r}; expected float32, float16 or int8")
    return converter


def convert_tflite(saved_model_dir: str, precision: str,
                   representative: Optional[Callable[[], Iterable[dict]]] = None) -> bytes:
    """The flatbuffer of `saved_model_dir` at `precision` (see `tflite_converter`)."""
    return tflite_converter(saved_model_dir, precision, representative).convert()


def representative_from(images: np.ndarray) -> Callable[[], Iterable[dict]]:
    """`[K,H,W,3]` calibration images -> the converter's representative_dataset callable."""
    images = np.asarray(images, np.float32)
    return lambda: ({"image": image[None]} for image in images)


def write_tflite(content: bytes, path: str) -> str:
    with open(path, "wb") as f:
        f.write(content)
    return path


def tflite_summary(content: bytes) -> dict:
    """Op types and tensor dtype counts of a flatbuffer (to show e.g. that int8 is integer)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(model_content=content,
                              experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    ops = sorted({op["op_name"] for op in interpreter._get_ops_details()})
    dtypes = {}
    for tensor in interpreter.get_tensor_details():
        name = np.dtype(tensor["dtype"]).name
        dtypes[name] = dtypes.get(name, 0) + 1
    return {"bytes": len(content), "ops": ops, "tensor_dtypes": dtypes}
