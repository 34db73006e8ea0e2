"""LiteRTRunner falls back to LiteRT's builtin kernels when XNNPACK cannot prepare a graph."""

import numpy as np
import pytest
import tensorflow as tf


@pytest.fixture(scope="module")
def tiny_tflite():
    """A float32 model with the export contract's names: input "image", one output."""

    class Tiny(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([1, 4, 4, 3], tf.float32, name="image")])
        def serve(self, image):
            return {"depth": tf.reduce_sum(image, axis=-1, keepdims=True) * 2.0}

    module = Tiny()
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [module.serve.get_concrete_function()], module)
    return converter.convert()


def test_xnnpack_failure_falls_back_to_builtin_kernels(tiny_tflite, monkeypatch, caplog):
    from ai_edge_litert import interpreter as litert

    from mtpsl_export.runners import LiteRTRunner

    real = litert.Interpreter

    class FailingXnnpack(real):
        def __init__(self, *args, experimental_op_resolver_type=None, **kwargs):
            super().__init__(*args, experimental_op_resolver_type=experimental_op_resolver_type, **kwargs)
            self._auto = experimental_op_resolver_type == litert.OpResolverType.AUTO

        def allocate_tensors(self):
            if self._auto:
                raise RuntimeError("failed to create XNNPACK runtime\nNode number 3 failed to prepare.")
            return super().allocate_tensors()

    monkeypatch.setattr(litert, "Interpreter", FailingXnnpack)
    runner = LiteRTRunner(None, content=tiny_tflite)
    assert runner.xnnpack_error == "failed to create XNNPACK runtime"
    assert "using LiteRT's builtin kernels" in caplog.text
    assert runner.delegated_nodes() == 0
    images = np.random.default_rng(0).uniform(size=[2, 4, 4, 3]).astype(np.float32)
    np.testing.assert_allclose(runner(images)["depth"], images.sum(-1, keepdims=True) * 2.0, rtol=1e-6)


def test_xnnpack_is_used_when_it_works(tiny_tflite):
    from mtpsl_export.runners import LiteRTRunner

    runner = LiteRTRunner(None, content=tiny_tflite)
    assert runner.xnnpack_error is None
