"""Tests for mtpsl_tf.torch_format: torch.save files read without torch, without running code.

Synthetic checkpoints are written here without torch: fake ``torch`` / ``torch._utils``
modules are put in ``sys.modules`` (only while writing, via monkeypatch) so that ``pickle``
emits the same globals torch does (``torch FloatStorage``, ``torch._utils _rebuild_tensor_v2``).
"""

from __future__ import annotations

import collections
import dataclasses
import io
import os
import pickle
import struct
import subprocess
import sys
import types
import zipfile

import numpy as np
import pytest

from mtpsl_tf.interop.torch_format import UnsafeCheckpointError, load_torch_file

CHECKPOINT = "nyuv2_segnet_w8_64x96.pth.tar"
WEIGHTS = "nyuv2_segnet_w8_64x96_weights.npz"
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C

# ----------------------------------------------------------------------------- the fixture


@pytest.fixture(scope="module")
def checkpoint(parity_dir):
    """The authors' checkpoint, loaded once."""
    return load_torch_file(parity_dir / CHECKPOINT)


def _group(weights: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}


def test_fixture_top_level_keys(checkpoint):
    assert set(checkpoint) == {"epoch", "state_dict", "mapfns", "best_performance",
                               "optimizer", "avg_cost"}
    assert checkpoint["epoch"] == 7
    assert isinstance(checkpoint["best_performance"], float)


@pytest.mark.parametrize("group,prefix", [("state_dict", "model/"), ("mapfns", "mapfns/")])
def test_fixture_tensors_equal_npz_exactly(checkpoint, parity_weights, group, prefix):
    expected = _group(parity_weights, prefix)
    loaded = checkpoint[group]
    assert isinstance(loaded, collections.OrderedDict)
    assert list(loaded) == list(expected)  # same names, same (PyTorch) order
    for name, want in expected.items():
        got = loaded[name]
        assert isinstance(got, np.ndarray), name
        assert got.dtype == want.dtype and got.shape == want.shape, name
        np.testing.assert_array_equal(got, want, err_msg=name)  # exact: tolerance 0


def test_fixture_includes_batchnorm_buffers(checkpoint, parity_weights):
    sd = checkpoint["state_dict"]
    assert sd["encoder_block.0.0.weight"].shape == (8, 3, 3, 3)  # conv OIHW
    mean, var = sd["encoder_block.0.1.running_mean"], sd["encoder_block.0.1.running_var"]
    assert np.any(mean != 0) and np.any(var != 1)  # non-trivial running statistics
    tracked = sd["encoder_block.0.1.num_batches_tracked"]
    assert tracked.shape == () and tracked.dtype == np.int64
    assert tracked == parity_weights["model/encoder_block.0.1.num_batches_tracked"]
    assert "mapfns.encoder_block.0.bn.num_batches_tracked" in checkpoint["mapfns"]


def test_fixture_tensors_own_c_contiguous_memory(checkpoint):
    for name, value in checkpoint["state_dict"].items():
        assert value.flags.c_contiguous and value.flags.owndata and value.flags.writeable, name
        assert value.dtype.isnative, name


def test_fixture_avg_cost_is_numpy_array(checkpoint):
    avg_cost = checkpoint["avg_cost"]
    assert type(avg_cost) is np.ndarray
    assert avg_cost.dtype == np.float32 and avg_cost.shape == (200, 24)


def test_fixture_optimizer_state(checkpoint):
    optimizer = checkpoint["optimizer"]
    assert set(optimizer) == {"state", "param_groups"}
    (group,) = optimizer["param_groups"]
    assert group["betas"] == (0.9, 0.999) and isinstance(group["lr"], float)
    assert set(optimizer["state"]) <= set(group["params"]) and optimizer["state"]
    for index, state in optimizer["state"].items():
        assert state["step"].shape == (), index  # 0-d tensor stays a 0-d array
        assert state["exp_avg"].shape == state["exp_avg_sq"].shape, index
        assert np.all(state["exp_avg_sq"] >= 0), index
    # Parameter 1 is the first encoder conv (parameter 0, logsigma, got no gradient).
    assert optimizer["state"][1]["exp_avg"].shape == (8, 3, 3, 3)


# ----------------------------------------------------------------------------- synthetic writer


@dataclasses.dataclass(eq=False)
class _Storage:
    """A fake torch storage: its elements (as written to disk) and torch type name."""

    values: np.ndarray
    type_name: str = "FloatStorage"


@dataclasses.dataclass(eq=False)
class _StorageView:
    """Legacy format only: a view of ``root`` elements [offset, offset + size)."""

    root: _Storage
    key: str
    offset: int
    size: int


@dataclasses.dataclass(eq=False)
class _Tensor:
    """A fake tensor pickled exactly as torch pickles one."""

    storage: object
    offset: int
    size: tuple
    stride: tuple

    def __reduce__(self):
        rebuild = sys.modules["torch._utils"]._rebuild_tensor_v2
        return rebuild, (self.storage, self.offset, self.size, self.stride, False,
                         collections.OrderedDict())


class _Payload:
    """Pickles as ``fn(*args)``: what a malicious checkpoint does."""

    def __init__(self, fn, args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


class _TorchPickler(pickle.Pickler):
    """Emits torch's persistent storage references; remembers the storages in order."""

    def __init__(self, file, legacy: bool):
        super().__init__(file, protocol=2)
        self.legacy = legacy
        self.storages: dict[int, tuple[str, _Storage]] = {}

    def _key(self, storage: _Storage) -> str:
        key = str(len(self.storages))
        return self.storages.setdefault(id(storage), (key, storage))[0]

    def persistent_id(self, obj):
        if isinstance(obj, _StorageView):
            root = obj.root
            return ("storage", getattr(sys.modules["torch"], root.type_name), self._key(root),
                    "cpu", root.values.size, (obj.key, obj.offset, obj.size))
        if not isinstance(obj, _Storage):
            return None
        pid = ("storage", getattr(sys.modules["torch"], obj.type_name), self._key(obj), "cpu",
               obj.values.size)
        return pid + (None,) if self.legacy else pid


def _raw(storage: _Storage, byteorder: str) -> bytes:
    values = storage.values
    return values.astype(values.dtype.newbyteorder("<" if byteorder == "little" else ">")).tobytes()


@pytest.fixture
def fake_torch(monkeypatch):
    """Fake ``torch`` modules so pickle writes torch's globals; removed after the test."""
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")
    for name in ("FloatStorage", "DoubleStorage", "HalfStorage", "BFloat16Storage",
                 "LongStorage", "IntStorage", "ShortStorage", "CharStorage", "ByteStorage",
                 "BoolStorage", "ComplexFloatStorage", "Tensor"):
        setattr(torch, name, type(name, (), {"__module__": "torch"}))

    def _rebuild_tensor_v2(*args):
        raise AssertionError("never called: only pickled")

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    torch._utils = utils
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)
    return torch


def _write_zip(path, obj, byteorder="little", pickled: bytes | None = None):
    """A zip-layout torch.save file of ``obj`` (or of the given pickle bytes)."""
    buffer = io.BytesIO()
    pickler = _TorchPickler(buffer, legacy=False)
    if pickled is None:
        pickler.dump(obj)
        pickled = buffer.getvalue()
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickled)
        archive.writestr("archive/byteorder", byteorder)
        archive.writestr("archive/version", "3\n")
        for key, storage in pickler.storages.values():
            archive.writestr(f"archive/data/{key}", _raw(storage, byteorder))
    return path


def _write_legacy(path, obj, protocol_version=1001):
    """A legacy-layout (pre-1.6) torch.save file of ``obj``."""
    with open(path, "wb") as f:
        for header in (LEGACY_MAGIC, protocol_version,
                       {"protocol_version": 1001, "little_endian": True,
                        "type_sizes": {"short": 2, "int": 4, "long": 4}}):
            pickle.dump(header, f, protocol=2)
        pickler = _TorchPickler(f, legacy=True)
        pickler.dump(obj)
        storages = list(pickler.storages.values())
        pickle.dump([key for key, _ in storages], f, protocol=2)
        for _, storage in storages:
            f.write(struct.pack("<q", storage.values.size) + _raw(storage, "little"))
    return path


def _expected(storage: _Storage, offset, size, stride) -> np.ndarray:
    """``storage[offset + sum(i_k * stride_k)]`` by explicit index arithmetic."""
    index = np.full(size, offset, dtype=np.int64)
    for axis, (n, s) in enumerate(zip(size, stride)):
        shape = [1] * len(size)
        shape[axis] = n
        index = index + np.arange(n).reshape(shape) * s
    return storage.values[index]


# ----------------------------------------------------------------------------- synthetic: layout


@pytest.mark.parametrize("writer", ["zip", "legacy"])
def test_offsets_strides_shared_storage_and_0d(tmp_path, fake_torch, writer):
    storage = _Storage(np.arange(30, dtype=np.float32) * 0.5)
    specs = {
        "contiguous": (0, (2, 3), (3, 1)),
        "transposed": (2, (3, 4), (1, 3)),  # non-contiguous view with an offset
        "broadcast": (1, (2, 3), (0, 2)),   # stride 0, as expand() makes
        "scalar": (5, (), ()),
        "empty": (0, (0, 4), (4, 1)),
    }
    obj = {name: _Tensor(storage, *spec) for name, spec in specs.items()}
    write = _write_zip if writer == "zip" else _write_legacy
    loaded = load_torch_file(write(tmp_path / "ckpt.pth", obj))
    for name, spec in specs.items():
        got = loaded[name]
        assert got.shape == spec[1] and got.dtype == np.float32, name
        assert got.flags.c_contiguous and got.flags.owndata, name
        np.testing.assert_array_equal(got, _expected(storage, *spec), err_msg=name)
    loaded["contiguous"][0, 0] = -1.0  # tensors must not share memory
    assert loaded["transposed"][0, 0] == storage.values[2]


def test_legacy_storage_views(tmp_path, fake_torch):
    root = _Storage(np.arange(10, dtype=np.int64), "LongStorage")
    view = _StorageView(root, key="v0", offset=4, size=5)
    obj = {"whole": _Tensor(root, 0, (10,), (1,)), "of_view": _Tensor(view, 1, (2, 2), (2, 1))}
    loaded = load_torch_file(_write_legacy(tmp_path / "legacy.pt", obj))
    np.testing.assert_array_equal(loaded["whole"], np.arange(10))
    np.testing.assert_array_equal(loaded["of_view"], [[5, 6], [7, 8]])


@pytest.mark.parametrize("byteorder", ["little", "big"])
@pytest.mark.parametrize("type_name,dtype", [
    ("FloatStorage", "f4"), ("DoubleStorage", "f8"), ("HalfStorage", "f2"),
    ("LongStorage", "i8"), ("IntStorage", "i4"), ("ShortStorage", "i2"),
    ("CharStorage", "i1"), ("ByteStorage", "u1"), ("BoolStorage", "?"),
    ("ComplexFloatStorage", "c8"),
])
def test_dtypes_and_byte_order(tmp_path, fake_torch, type_name, dtype, byteorder):
    values = (np.arange(6) - 2).astype(dtype)
    storage = _Storage(values, type_name)
    path = _write_zip(tmp_path / "ckpt.pth", {"t": _Tensor(storage, 0, (2, 3), (3, 1))},
                      byteorder=byteorder)
    got = load_torch_file(path)["t"]
    assert got.dtype == np.dtype(dtype) and got.dtype.isnative
    np.testing.assert_array_equal(got, values.reshape(2, 3))


def test_bfloat16_is_widened_exactly_to_float32(tmp_path, fake_torch):
    want = np.array([1.0, -2.5, 3.140625, 0.0, 65280.0, -1e-3], dtype=np.float32)
    want = ((want.view(np.uint32) >> 16) << 16).view(np.float32)  # representable in bf16
    bits = (want.view(np.uint32) >> 16).astype(np.uint16)
    path = _write_zip(tmp_path / "ckpt.pth",
                      {"t": _Tensor(_Storage(bits, "BFloat16Storage"), 0, (6,), (1,))})
    got = load_torch_file(path)["t"]
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, want)


def test_numpy_values_round_trip(tmp_path, fake_torch):
    obj = {"arr": np.arange(6, dtype=np.float64).reshape(2, 3), "f": np.float64(0.25),
           "i": np.int64(-3), "nested": [(1, "a"), {"k": None}], "flag": True}
    loaded = load_torch_file(_write_zip(tmp_path / "ckpt.pth", obj))
    np.testing.assert_array_equal(loaded["arr"], obj["arr"])
    assert loaded["f"] == 0.25 and type(loaded["f"]) is np.float64
    assert loaded["i"] == -3 and type(loaded["i"]) is np.int64
    assert loaded["nested"] == [(1, "a"), {"k": None}] and loaded["flag"] is True


# ----------------------------------------------------------------------------- malicious files


def _payloads(marker):
    """(global name the loader must report, payload object that would create ``marker``)."""
    return {
        "builtins.eval": _Payload(eval, (f"open({str(marker)!r}, 'w').close()",)),
        f"{os.system.__module__}.system": _Payload(os.system, (f"touch {marker}",)),
        "subprocess.Popen": _Payload(subprocess.Popen, (["touch", str(marker)],)),
    }


PAYLOAD_NAMES = ["builtins.eval", f"{os.system.__module__}.system", "subprocess.Popen"]


@pytest.mark.parametrize("name", PAYLOAD_NAMES)
def test_payloads_really_create_the_marker_when_unpickled_naively(tmp_path, name):
    """Control: the payloads used below are live, so the refusal tests can fail."""
    marker = tmp_path / "pwned"
    result = pickle.loads(pickle.dumps(_payloads(marker)[name], protocol=2))
    if isinstance(result, subprocess.Popen):
        result.wait()
    assert marker.exists()


@pytest.mark.parametrize("writer", ["zip", "legacy", "plain_pickle"])
@pytest.mark.parametrize("name", PAYLOAD_NAMES)
def test_malicious_checkpoint_refused_without_running(tmp_path, fake_torch, writer, name):
    marker = tmp_path / "pwned"
    storage = _Storage(np.ones(4, dtype=np.float32))
    # The payload hides after a legitimate tensor, inside the state dict.
    obj = {"epoch": 1, "state_dict": collections.OrderedDict(
        [("w", _Tensor(storage, 0, (4,), (1,))), ("evil", _payloads(marker)[name])])}
    path = tmp_path / "evil.pth"
    if writer == "zip":
        _write_zip(path, obj)
    elif writer == "legacy":
        _write_legacy(path, obj)
    else:
        path.write_bytes(pickle.dumps(_payloads(marker)[name], protocol=2))
    with pytest.raises(UnsafeCheckpointError) as info:
        load_torch_file(path)
    assert isinstance(info.value, pickle.UnpicklingError)
    assert f"'{name}'" in str(info.value) and str(path) in str(info.value)
    assert not marker.exists()


def test_torch_global_outside_allow_list_refused(tmp_path, fake_torch):
    path = _write_zip(tmp_path / "ckpt.pth", {"t": sys.modules["torch"].Tensor})
    with pytest.raises(UnsafeCheckpointError, match=r"'torch\.Tensor'"):
        load_torch_file(path)


def test_numpy_object_array_refused(tmp_path, fake_torch):
    path = _write_zip(tmp_path / "ckpt.pth", {"a": np.array([1, "x"], dtype=object)})
    with pytest.raises(UnsafeCheckpointError, match="object dtype"):
        load_torch_file(path)


def test_codecs_encode_other_than_latin1_refused(tmp_path):
    # _codecs.encode('abc', 'rot13'): allowed global, disallowed use.
    pickled = (b"\x80\x02}X\x01\x00\x00\x00kc_codecs\nencode\nX\x03\x00\x00\x00abc"
               b"X\x05\x00\x00\x00rot13\x86Rs.")
    path = _write_zip(tmp_path / "ckpt.pth", None, pickled=pickled)
    with pytest.raises(UnsafeCheckpointError, match="rot13"):
        load_torch_file(path)


# ----------------------------------------------------------------------------- bad files


def test_missing_file(tmp_path):
    path = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_torch_file(path)


@pytest.mark.parametrize("content", [b"not a checkpoint at all", b"",
                                     pickle.dumps({"a": 1}, protocol=2)])
def test_not_a_torch_file(tmp_path, content):
    path = tmp_path / "junk.bin"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="junk.bin.*not a torch.save checkpoint"):
        load_torch_file(path)


def test_zip_without_data_pkl(tmp_path):
    path = tmp_path / "other.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "hello")
    with pytest.raises(ValueError, match="other.zip.*data.pkl"):
        load_torch_file(path)


def test_zip_missing_storage_record(tmp_path, fake_torch):
    path = _write_zip(tmp_path / "ckpt.pth",
                      {"t": _Tensor(_Storage(np.ones(3, np.float32)), 0, (3,), (1,))})
    stripped = tmp_path / "stripped.pth"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(stripped, "w") as dst:
        for item in src.infolist():
            if "/data/" not in item.filename:
                dst.writestr(item, src.read(item))
    with pytest.raises(ValueError, match=r"stripped.pth.*archive/data/0.*missing"):
        load_torch_file(stripped)


@pytest.mark.parametrize("offset,size,stride", [
    (0, (5,), (1,)),      # one element past the end
    (3, (2,), (1,)),      # offset pushes it past the end
    (0, (2, 2), (1, 3)),  # stride reaches past the end
    (-1, (2,), (1,)),     # negative offset
    (0, (2,), (-1,)),     # negative stride
])
def test_out_of_bounds_tensor_refused(tmp_path, fake_torch, offset, size, stride):
    storage = _Storage(np.arange(4, dtype=np.float32))
    path = _write_zip(tmp_path / "ckpt.pth", {"t": _Tensor(storage, offset, size, stride)})
    with pytest.raises(ValueError, match="ckpt.pth"):
        load_torch_file(path)


def test_legacy_wrong_protocol_version(tmp_path, fake_torch):
    path = _write_legacy(tmp_path / "old.pt", {"a": 1}, protocol_version=999)
    with pytest.raises(ValueError, match="old.pt.*protocol 999"):
        load_torch_file(path)


def test_top_level_must_be_a_dict(tmp_path, fake_torch):
    path = _write_zip(tmp_path / "ckpt.pth", [1, 2])
    with pytest.raises(ValueError, match="ckpt.pth.*expected a dict.*list"):
        load_torch_file(path)
