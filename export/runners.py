"""One calling convention for every format: `runner(images) -> {output name: array}`.

`images` is float32 `[N, H, W, 3]` in [0, 1] at the runner's `size`; outputs follow
`contract.output_spec`. TensorFlow is imported only by the Keras and SavedModel runners, so a
LiteRT runner (and a process that only benchmarks one) stays TensorFlow-free.
"""

from __future__ import annotations

import logging

import os
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

SAVED_MODEL_FILE = "saved_model.pb"


def _check_images(images: np.ndarray, size: Tuple[int, int], where: str) -> np.ndarray:
    images = np.asarray(images, np.float32)
    if images.ndim != 4 or images.shape[1:] != (size[0], size[1], 3):
        raise ValueError(f"{where}: images must be [N, {size[0]}, {size[1]}, 3], got shape {images.shape}")
    return images


class KerasRunner:
    """The restored Keras network plus the export post-processing, as a tf.function."""

    kind = "keras"

    def __init__(self, network, tasks: Sequence, height: int, width: int):
        import tensorflow as tf

        from mtpsl_export import contract

        self.size = (height, width)
        self._fn = tf.function(lambda x: contract.postprocess(network(x, training=False), tasks))

    def __call__(self, images) -> Dict[str, np.ndarray]:
        images = _check_images(images, self.size, "keras")
        return {k: v.numpy() for k, v in self._fn(images).items()}


class SavedModelRunner:
    """A signature (`serving_default` by default) of an exported SavedModel directory."""

    kind = "saved_model"

    def __init__(self, path: str, signature: str = "serving_default", loaded=None):
        import tensorflow as tf

        self.path = path
        self._loaded = loaded if loaded is not None else tf.saved_model.load(path)  # keeps variables alive
        if signature not in self._loaded.signatures:
            raise ValueError(f"{path!r} has no signature {signature!r}; it has {sorted(self._loaded.signatures)}")
        self._fn = self._loaded.signatures[signature]
        spec = self._fn.structured_input_signature[1]["image"]
        self.size = (int(spec.shape[1]), int(spec.shape[2]))
        self.input_dtype = spec.dtype.as_numpy_dtype

    def with_signature(self, signature: str) -> "SavedModelRunner":
        """A runner of another signature of the same loaded model (no second load)."""
        return SavedModelRunner(self.path, signature, loaded=self._loaded)

    def __call__(self, images) -> Dict[str, np.ndarray]:
        import tensorflow as tf

        images = _check_images(images, self.size, self.path)
        if self.input_dtype == np.uint8:
            images = np.clip(np.round(images * 255.0), 0, 255)
        return {k: v.numpy() for k, v in self._fn(image=tf.constant(images.astype(self.input_dtype))).items()}


class LiteRTRunner:
    """A `.tflite` model on the LiteRT interpreter (XNNPACK applied by default), batch 1 at a time.

    Args:
        path: the `.tflite` file (or None with `content`).
        num_threads: interpreter threads (None: LiteRT's default).
        xnnpack: False uses the builtin kernels without default delegates (for comparison).
        content: the flatbuffer bytes instead of a file.
        latest_features: XNNPACK with its newest (opt-in) features
            (`experimental_default_delegate_latest_features`); measured in docs/EXPORT.md.
    """

    kind = "tflite"

    def __init__(self, path: Optional[str], num_threads: Optional[int] = None, xnnpack: bool = True,
                 content: Optional[bytes] = None, latest_features: bool = False):
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        self.path = path or "<flatbuffer>"
        # Why XNNPACK is not in use although it was asked for (None: it is, or was not asked).
        self.xnnpack_error: Optional[str] = None
        self.interpreter = None
        if xnnpack:
            try:
                self.interpreter = Interpreter(model_path=path, model_content=content, num_threads=num_threads,
                                               experimental_op_resolver_type=OpResolverType.AUTO,
                                               experimental_default_delegate_latest_features=latest_features)
                self.interpreter.allocate_tensors()  # XNNPACK prepares its nodes here
            except RuntimeError as err:
                # XNNPACK refuses some int8 graphs (e.g. dilated convolutions of the ResNet
                # backbone); LiteRT's builtin kernels still run them.
                self.xnnpack_error = str(err).strip().splitlines()[0]
                logging.getLogger("mtpsl_export").warning(
                    "%s: XNNPACK failed (%s); using LiteRT's builtin kernels", self.path, self.xnnpack_error)
                self.interpreter = None
        if self.interpreter is None:
            self.interpreter = Interpreter(model_path=path, model_content=content, num_threads=num_threads,
                                           experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        signatures = self.interpreter.get_signature_list()
        if "serving_default" not in signatures:
            raise ValueError(f"{self.path!r} has no 'serving_default' signature; it has {sorted(signatures)}")
        self._runner = self.interpreter.get_signature_runner("serving_default")
        self._input = self._runner.get_input_details()["image"]
        self._outputs = self._runner.get_output_details()
        shape = self._input["shape"]
        self.size = (int(shape[1]), int(shape[2]))

    def delegated_nodes(self) -> int:
        """Number of graph nodes handed to a delegate (XNNPACK): > 0 means it is in use."""
        return sum(op["op_name"] == "DELEGATE" for op in self.interpreter._get_ops_details())

    def __call__(self, images) -> Dict[str, np.ndarray]:
        images = _check_images(images, self.size, self.path)
        results = [self._run_one(image[None]) for image in images]
        return {name: np.concatenate([r[name] for r in results]) for name in results[0]}

    def _run_one(self, image: np.ndarray) -> Dict[str, np.ndarray]:
        raw = self._runner(image=_quantize(image, self._input))
        return {name: _dequantize(value, self._outputs[name]) for name, value in raw.items()}


def _quantize(x: np.ndarray, detail) -> np.ndarray:
    dtype = detail["dtype"]
    if dtype == np.float32:
        return x
    scale, zero = detail["quantization"]
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale + zero), info.min, info.max).astype(dtype)


def _dequantize(x: np.ndarray, detail) -> np.ndarray:
    scale, zero = detail["quantization"]
    if x.dtype in (np.int8, np.uint8) and scale:
        return ((x.astype(np.float32) - zero) * scale).astype(np.float32)
    return x


def load_runner(path: str, num_threads: Optional[int] = None):
    """A runner for an exported model: a SavedModel directory or a `.tflite` file."""
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, SAVED_MODEL_FILE)):
            raise ValueError(f"{path!r} is a directory without {SAVED_MODEL_FILE}: not a SavedModel")
        return SavedModelRunner(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no exported model at {path!r}")
    if not path.endswith(".tflite"):
        raise ValueError(f"{path!r}: expected a SavedModel directory or a .tflite file")
    return LiteRTRunner(path, num_threads=num_threads)
