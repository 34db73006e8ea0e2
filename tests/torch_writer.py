"""Writes PyTorch-format (zip layout) files WITHOUT torch, for tests of our readers.

A fake `torch` / `torch._utils` module pair lets pickle name torch's globals; numpy arrays
become tensors with one storage each.
"""
from __future__ import annotations

import collections
import contextlib
import io
import pathlib
import pickle
import sys
import types
import zipfile

import numpy as np
import pytest


@contextlib.contextmanager
def _fake_torch():
    """Fake `torch` / `torch._utils` modules so pickle can name torch's globals."""
    torch, utils = types.ModuleType("torch"), types.ModuleType("torch._utils")
    for name in ("FloatStorage", "LongStorage"):
        setattr(torch, name, type(name, (), {"__module__": "torch"}))

    def _rebuild_tensor_v2(*args):
        raise AssertionError("only pickled, never called")

    _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = "torch._utils", "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, "torch", torch)
        patch.setitem(sys.modules, "torch._utils", utils)
        yield torch, utils


class _Storage:
    def __init__(self, values):
        self.values = values


class _TorchPickler(pickle.Pickler):
    """numpy arrays -> torch tensors (one storage each, zip layout)."""

    def __init__(self, file, torch, utils):
        super().__init__(file, protocol=2)
        self.torch, self.utils, self.storages = torch, utils, []

    def reducer_override(self, obj):
        if not isinstance(obj, np.ndarray):
            return NotImplemented
        values = np.ascontiguousarray(obj)
        stride = tuple(s // values.itemsize for s in values.strides)
        return self.utils._rebuild_tensor_v2, (_Storage(values.reshape(-1)), 0, values.shape, stride,
                                               False, collections.OrderedDict())

    def persistent_id(self, obj):
        if not isinstance(obj, _Storage):
            return None
        self.storages.append(obj)
        kind = {np.dtype(np.float32): "FloatStorage", np.dtype(np.int64): "LongStorage"}[obj.values.dtype]
        return "storage", getattr(self.torch, kind), str(len(self.storages) - 1), "cpu", obj.values.size


def write_torch_file(path, obj) -> pathlib.Path:
    """A zip-layout torch.save file of `obj` (dicts, ints, numpy float32/int64 arrays)."""
    buffer = io.BytesIO()
    with _fake_torch() as (torch, utils):
        pickler = _TorchPickler(buffer, torch, utils)
        pickler.dump(obj)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", buffer.getvalue())
        archive.writestr("archive/byteorder", "little")
        for key, storage in enumerate(pickler.storages):
            archive.writestr(f"archive/data/{key}", storage.values.astype("<" + storage.values.dtype.str[1:]).tobytes())
    return pathlib.Path(path)
