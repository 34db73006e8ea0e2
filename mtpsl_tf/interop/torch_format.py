"""Read PyTorch ``torch.save`` checkpoints without torch and without running pickled code.

The authors' checkpoints are ``torch.save`` files holding a dict of tensors, plain Python
values and a numpy array, so ``torch.load(weights_only=True)`` refuses them and plain
``pickle`` would execute whatever the file asks for. This module unpickles them with an
allow-list: only the globals needed to rebuild tensors, storages, ``OrderedDict`` and numpy
arrays / scalars are resolved; any other global raises :class:`UnsafeCheckpointError` before
anything is called.

Both on-disk layouts are read:

* the zip layout (``torch.save`` since PyTorch 1.6): ``<prefix>/data.pkl`` plus one raw
  record ``<prefix>/data/<key>`` per storage and an optional ``<prefix>/byteorder``;
* the legacy layout (before 1.6): magic number, protocol and sys-info pickles, the object
  pickle, the list of storage keys, then each storage as ``int64 numel`` + little-endian data.

Tensors come back as C-contiguous ``np.ndarray`` in PyTorch layout (conv weights ``OIHW``),
native byte order, with PyTorch's dtype (``bfloat16`` is widened exactly to ``float32``,
numpy having no bfloat16); 0-d tensors are 0-d arrays.
"""

from __future__ import annotations

import _compat_pickle  # Python 2 -> 3 names in protocol-2 pickles
import codecs
import dataclasses
import functools
import io
import os
import pickle
import struct
import zipfile
from types import MappingProxyType
from typing import Any, Callable, Mapping, Optional

import numpy as np

__all__ = ["UnsafeCheckpointError", "load_torch_file"]

# torch.save's legacy (pre-zip) header values, see torch/serialization.py.
_LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL_VERSION = 1001

_BFLOAT16 = "bfloat16"

# Storage class name (as pickled: module "torch") -> numpy dtype string without byte order.
_STORAGE_DTYPES: Mapping[str, str] = MappingProxyType(
    {
        "FloatStorage": "f4",
        "DoubleStorage": "f8",
        "HalfStorage": "f2",
        "BFloat16Storage": _BFLOAT16,
        "LongStorage": "i8",
        "IntStorage": "i4",
        "ShortStorage": "i2",
        "CharStorage": "i1",
        "ByteStorage": "u1",
        "BoolStorage": "b1",
        "ComplexFloatStorage": "c8",
        "ComplexDoubleStorage": "c16",
        # torch >= 2 pickles untyped storages (bytes) under these names.
        "UntypedStorage": "u1",
    }
)

_TENSOR_REBUILDERS = frozenset(
    {"_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_parameter",
     "_rebuild_parameter_with_state"}
)
_NUMPY_MULTIARRAY_MODULES = frozenset({"numpy.core.multiarray", "numpy._core.multiarray"})
# Encodings numpy uses when it pickles raw bytes under protocol 2.
_CODECS_ENCODINGS = frozenset({"latin1", "latin-1", "iso-8859-1", "iso8859-1"})


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint asked for a global (or value) outside the allow-list; nothing was run."""


@dataclasses.dataclass(frozen=True)
class _StorageType:
    """Stand-in for a ``torch.<X>Storage`` class: its name and numpy dtype string."""

    name: str
    dtype: str

    @property
    def itemsize(self) -> int:
        """Bytes per element as stored on disk."""
        return 2 if self.dtype == _BFLOAT16 else np.dtype(self.dtype).itemsize


@dataclasses.dataclass(frozen=True)
class _Storage:
    """A rebuilt storage: ``data`` is a 1-D native-order array, or None in the legacy
    format's first pass (which only records which storages exist)."""

    data: Optional[np.ndarray]


# ----------------------------------------------------------------------------- public API


def load_torch_file(path: str | os.PathLike) -> dict:
    """Load a ``torch.save`` file whose top-level object is a dict, without torch.

    Args:
      path: a zip-layout (PyTorch >= 1.6) or legacy-layout ``torch.save`` file.

    Returns:
      The saved dict; tensors are ``np.ndarray`` (PyTorch shape/layout, native byte order,
      own C-contiguous memory), containers are dict / OrderedDict / list / tuple, numpy
      arrays and scalars are rebuilt by numpy itself.

    Raises:
      FileNotFoundError: ``path`` does not exist.
      UnsafeCheckpointError: the pickle references a global outside the allow-list (message
        names it and the file); no code from the file was executed.
      ValueError: the file is not a torch.save checkpoint, is corrupt, or is not a dict.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"torch checkpoint not found: {path!r}")
    try:
        obj = _load_any(path)
    except UnsafeCheckpointError as exc:
        raise UnsafeCheckpointError(f"{path}: {exc}") from exc
    except (pickle.UnpicklingError, EOFError, TypeError, ValueError, KeyError, IndexError,
            AttributeError, OverflowError, struct.error, zipfile.BadZipFile) as exc:
        raise ValueError(f"{path}: cannot read torch checkpoint: {exc}") from exc
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a dict at the top level, got {type(obj).__name__}")
    return obj


# ----------------------------------------------------------------------------- file layouts


def _load_any(path: str) -> Any:
    """Dispatch on the file layout; errors here carry no path (the caller adds it)."""
    if zipfile.is_zipfile(path):
        return _load_zip(path)
    with open(path, "rb") as f:
        head = f.read(512)
        # Only legacy files (a pickle, b"\x80" = PROTO) are read whole into memory.
        data = head + f.read() if head.startswith(b"\x80") else head
    if _is_legacy(data):
        return _load_legacy(data)
    if data[257:262] == b"ustar":
        raise ValueError("this is a tar-format torch.save file (PyTorch < 0.1.10), which is "
                         "not supported; load and re-save it with a recent torch")
    raise ValueError("not a torch.save checkpoint (neither a zip archive nor the legacy "
                     "pickle layout starting with torch's magic number)")


def _load_zip(path: str) -> Any:
    """Unpickle ``<prefix>/data.pkl`` of a zip-layout checkpoint, storages read on demand."""
    with zipfile.ZipFile(path) as archive:
        prefix = _zip_prefix(archive)
        byteorder = _zip_byteorder(archive, prefix)
        cache: dict[str, _Storage] = {}  # storages shared by several tensors load once

        def persistent_load(pid: Any) -> _Storage:
            storage_type, key, _location, numel = _parse_storage_pid(pid, n_fields=4)
            if not isinstance(key, str):
                raise ValueError(f"storage key must be a string, got {key!r}")
            if key not in cache:
                cache[key] = _zip_storage(archive, f"{prefix}/data/{key}", storage_type,
                                          numel, byteorder)
            return cache[key]

        pickled = archive.read(f"{prefix}/data.pkl")
        return _RestrictedUnpickler(io.BytesIO(pickled), persistent_load).load()


def _zip_prefix(archive: zipfile.ZipFile) -> str:
    """The archive's top folder: the one holding ``data.pkl``."""
    prefixes = [name[: -len("/data.pkl")] for name in archive.namelist()
                if name.endswith("/data.pkl") and name.count("/") == 1]
    if len(prefixes) != 1:
        raise ValueError(f"expected exactly one '<prefix>/data.pkl' in the zip archive, "
                         f"found {len(prefixes)}; this zip is not a torch.save checkpoint")
    return prefixes[0]


def _zip_byteorder(archive: zipfile.ZipFile, prefix: str) -> str:
    """numpy byte-order character of the storages; torch assumes little-endian if absent."""
    name = f"{prefix}/byteorder"
    if name not in archive.namelist():
        return "<"
    value = archive.read(name).strip()
    orders = {b"little": "<", b"big": ">"}
    if value not in orders:
        raise ValueError(f"unknown byteorder {value!r} in {name} (expected b'little' or b'big')")
    return orders[value]


def _zip_storage(archive: zipfile.ZipFile, name: str, storage_type: _StorageType,
                 numel: int, byteorder: str) -> _Storage:
    """Read one storage record as a 1-D native-order array of ``numel`` elements."""
    try:
        raw = archive.read(name)
    except KeyError:
        raise ValueError(f"storage record {name!r} is missing from the archive") from None
    nbytes = numel * storage_type.itemsize
    if len(raw) < nbytes:
        raise ValueError(f"storage record {name!r} has {len(raw)} bytes, expected {nbytes} "
                         f"({numel} x {storage_type.name})")
    return _Storage(_decode_storage(raw[:nbytes], storage_type, byteorder))


def _is_legacy(data: bytes) -> bool:
    """True if ``data`` starts with the pickled legacy magic number."""
    if not data.startswith(b"\x80"):
        return False
    try:
        magic = _RestrictedUnpickler(io.BytesIO(data), _no_persistent_load).load()
    except UnsafeCheckpointError:
        raise  # a plain pickle asking for e.g. os.system: report it as such
    except Exception:  # noqa: BLE001 - any other garbage simply means "not legacy"
        return False
    return type(magic) is int and magic == _LEGACY_MAGIC_NUMBER


def _load_legacy(data: bytes) -> Any:
    """Read a legacy-layout checkpoint held in memory.

    Storage data follows the object pickle, and its element size is only known from the
    pickle's storage references, so the object pickle is unpickled twice: first to record
    the storages (tensors are not built), then, with the data decoded, for real.
    """
    stream = io.BytesIO(data)
    for _ in range(2):  # magic number, then protocol version
        header = _RestrictedUnpickler(stream, _no_persistent_load).load()
    if header != _LEGACY_PROTOCOL_VERSION:
        raise ValueError(f"legacy torch.save protocol {header!r} is not supported "
                         f"(expected {_LEGACY_PROTOCOL_VERSION})")
    _RestrictedUnpickler(stream, _no_persistent_load).load()  # sys_info: not needed
    main_start = stream.tell()

    recorded: dict[str, tuple[_StorageType, int]] = {}
    _RestrictedUnpickler(stream, functools.partial(_legacy_record, recorded)).load()
    keys = _RestrictedUnpickler(stream, _no_persistent_load).load()
    roots = _legacy_read_storages(stream, keys, recorded)

    stream.seek(main_start)
    views: dict[str, _Storage] = {}
    return _RestrictedUnpickler(stream, functools.partial(_legacy_resolve, roots, views)).load()


def _legacy_record(recorded: dict, pid: Any) -> _Storage:
    """First legacy pass: remember each root storage's type and size."""
    storage_type, key, _location, numel, _view = _parse_storage_pid(pid, n_fields=5)
    if not isinstance(key, str) or not isinstance(numel, int) or numel < 0:
        raise ValueError(f"bad legacy storage reference {pid!r}")
    if recorded.setdefault(key, (storage_type, numel)) != (storage_type, numel):
        raise ValueError(f"legacy storage {key!r} is referenced with different types/sizes")
    return _Storage(None)


def _legacy_read_storages(stream: io.BytesIO, keys: Any,
                          recorded: Mapping[str, tuple[_StorageType, int]]) -> dict:
    """Read the storages that follow the object pickle: ``int64 numel`` + data, each."""
    if not isinstance(keys, list) or sorted(map(str, keys)) != sorted(recorded):
        raise ValueError(f"legacy storage key list {keys!r} does not match the storages "
                         f"referenced by the pickle {sorted(recorded)}")
    roots = {}
    for key in keys:
        storage_type, numel = recorded[key]
        (stored_numel,) = struct.unpack("<q", _read_exact(stream, 8))
        if stored_numel != numel:
            raise ValueError(f"legacy storage {key!r} holds {stored_numel} elements, the "
                             f"pickle says {numel}")
        raw = _read_exact(stream, numel * storage_type.itemsize)
        # Legacy storages are always written little-endian (torch's writeFileRaw).
        roots[key] = _Storage(_decode_storage(raw, storage_type, "<"))
    return roots


def _legacy_resolve(roots: Mapping[str, _Storage], views: dict, pid: Any) -> _Storage:
    """Second legacy pass: a root storage, or a view ``(view_key, offset, size)`` of it."""
    _storage_type, key, _location, _numel, view = _parse_storage_pid(pid, n_fields=5)
    root = roots[key]
    if view is None:
        return root
    if not (isinstance(view, tuple) and len(view) == 3):
        raise ValueError(f"bad legacy storage view {view!r}; expected (key, offset, size)")
    view_key, offset, size = view
    if view_key not in views:
        _check_range(offset, size, root.data.size, what=f"storage view {view_key!r}")
        views[view_key] = _Storage(root.data[offset: offset + size])
    return views[view_key]


def _read_exact(stream: io.BytesIO, n: int) -> bytes:
    """``n`` bytes from ``stream``, or ValueError if the file ends early."""
    raw = stream.read(n)
    if len(raw) != n:
        raise ValueError(f"file ends early: needed {n} bytes, {len(raw)} left")
    return raw


def _no_persistent_load(pid: Any) -> Any:
    raise pickle.UnpicklingError(f"unexpected persistent reference {pid!r} in a header pickle")


# ----------------------------------------------------------------------------- storages


def _parse_storage_pid(pid: Any, n_fields: int) -> tuple:
    """``('storage', storage_type, key, location, numel[, view])`` -> the fields after the tag."""
    if not (isinstance(pid, tuple) and len(pid) == n_fields + 1):
        raise pickle.UnpicklingError(f"unsupported persistent reference {pid!r}")
    tag, storage_type, *rest = pid
    tag = tag.decode("ascii") if isinstance(tag, bytes) else tag
    if tag != "storage":
        raise pickle.UnpicklingError(f"unsupported persistent reference type {tag!r}")
    if not isinstance(storage_type, _StorageType):
        raise pickle.UnpicklingError(f"storage reference with unknown type {storage_type!r}")
    numel = rest[2]
    if not isinstance(numel, int) or numel < 0:
        raise pickle.UnpicklingError(f"storage reference with bad element count {numel!r}")
    return (storage_type, *rest)


def _decode_storage(raw: bytes, storage_type: _StorageType, byteorder: str) -> np.ndarray:
    """Raw storage bytes -> 1-D array in native byte order (bfloat16 widened to float32)."""
    if storage_type.dtype == _BFLOAT16:
        # bfloat16 is the top half of a float32: shifting the bits is exact.
        bits = np.frombuffer(raw, dtype=f"{byteorder}u2").astype(np.uint32) << 16
        return bits.view(np.float32)
    dtype = np.dtype(storage_type.dtype).newbyteorder(byteorder)
    return np.frombuffer(raw, dtype=dtype).astype(dtype.newbyteorder("="))


def _check_range(offset: Any, size: Any, limit: int, what: str) -> None:
    """Raise unless ``0 <= offset`` and ``offset + size <= limit`` (ints)."""
    if not all(isinstance(v, int) and v >= 0 for v in (offset, size)) or offset + size > limit:
        raise ValueError(f"{what} [offset {offset!r}, size {size!r}] lies outside its storage "
                         f"of {limit} elements")


# ----------------------------------------------------------------------------- tensors


def _rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any) -> Any:
    """A tensor's values: ``storage[offset + sum(i_k * stride_k)]`` over the index grid.

    Returns a C-contiguous ``np.ndarray`` of shape ``size`` that owns its memory (None in
    the legacy first pass). Out-of-bounds offsets / strides are refused, never read.
    """
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError(f"tensor rebuilt from a non-storage {type(storage).__name__}")
    size, stride = _int_tuple(size, "size"), _int_tuple(stride, "stride")
    if len(size) != len(stride):
        raise ValueError(f"tensor size {size} and stride {stride} differ in length")
    if storage.data is None:
        return None
    data = storage.data
    if 0 in size:
        return np.zeros(size, dtype=data.dtype)
    extent = 1 + sum((n - 1) * s for n, s in zip(size, stride))
    _check_range(storage_offset, extent, data.size, what=f"tensor of size {size} stride {stride}")
    view = np.lib.stride_tricks.as_strided(
        data[storage_offset:], shape=size, strides=[s * data.itemsize for s in stride],
        writeable=False)
    return view.copy(order="C")


def _rebuild_tensor_v2(storage: Any, storage_offset: Any, size: Any, stride: Any,
                       requires_grad: Any = False, backward_hooks: Any = None,
                       metadata: Any = None) -> Any:
    """torch._utils._rebuild_tensor_v2; autograd flags, hooks and metadata are dropped."""
    del requires_grad, backward_hooks, metadata
    return _rebuild_tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data: Any, requires_grad: Any = False, backward_hooks: Any = None,
                       state: Any = None) -> Any:
    """torch._utils._rebuild_parameter(_with_state): a Parameter is just its tensor here."""
    del requires_grad, backward_hooks, state
    return data


def _int_tuple(value: Any, what: str) -> tuple:
    """A tuple of non-negative ints, or ValueError naming ``what``."""
    if not (isinstance(value, (tuple, list))
            and all(isinstance(v, int) and v >= 0 for v in value)):
        raise ValueError(f"tensor {what} must be a tuple of non-negative ints, got {value!r}")
    return tuple(value)


# ----------------------------------------------------------------------------- numpy


def _numpy_multiarray():
    """numpy's multiarray module (``numpy._core`` in numpy 2, ``numpy.core`` before)."""
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy < 2
        from numpy.core import multiarray
    return multiarray


def _safe_dtype(obj: Any, align: bool = False, copy: bool = False) -> np.dtype:
    """numpy.dtype, refusing object dtypes (they would hold arbitrary pickled objects)."""
    dtype = np.dtype(obj, align, copy)
    if dtype.hasobject:
        raise UnsafeCheckpointError(f"refusing numpy object dtype {obj!r}")
    return dtype


def _safe_reconstruct(subtype: Any, shape: Any, typecode: Any) -> np.ndarray:
    """numpy's ``_reconstruct``, only for plain ``np.ndarray`` (no subclasses)."""
    if subtype is not np.ndarray:
        raise UnsafeCheckpointError(f"refusing to reconstruct numpy subtype {subtype!r}")
    return _numpy_multiarray()._reconstruct(subtype, shape, typecode)


def _safe_scalar(dtype: Any, *args: Any) -> Any:
    """numpy's pickled-scalar constructor, only for non-object dtypes."""
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise UnsafeCheckpointError(f"refusing numpy scalar of dtype {dtype!r}")
    return _numpy_multiarray().scalar(dtype, *args)


def _safe_codecs_encode(text: Any, encoding: Any = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` as numpy's protocol-2 pickles use it: str -> latin-1 bytes only."""
    if not isinstance(text, str) or str(encoding).lower() not in _CODECS_ENCODINGS:
        raise UnsafeCheckpointError(f"refusing _codecs.encode with encoding {encoding!r}")
    return codecs.encode(text, "latin1", errors)


# ----------------------------------------------------------------------------- unpickler


def _allowed_global(module: str, name: str) -> Optional[Any]:
    """What ``module.name`` resolves to under the allow-list, or None if it is refused."""
    if module == "torch" and name in _STORAGE_DTYPES:
        return _StorageType(name, _STORAGE_DTYPES[name])
    if module == "torch.storage" and name == "UntypedStorage":
        return _StorageType(name, _STORAGE_DTYPES[name])
    if module == "torch._utils" and name in _TENSOR_REBUILDERS:
        return {"_rebuild_tensor": _rebuild_tensor,
                "_rebuild_tensor_v2": _rebuild_tensor_v2}.get(name, _rebuild_parameter)
    if module == "collections" and name == "OrderedDict":
        from collections import OrderedDict
        return OrderedDict
    if module == "numpy" and name == "ndarray":
        return np.ndarray
    if module == "numpy" and name == "dtype":
        return _safe_dtype
    if module in _NUMPY_MULTIARRAY_MODULES and name == "_reconstruct":
        return _safe_reconstruct
    if module in _NUMPY_MULTIARRAY_MODULES and name == "scalar":
        return _safe_scalar
    if module == "_codecs" and name == "encode":
        return _safe_codecs_encode
    return None


def _display_name(module: str, name: str) -> str:
    """``'module.name'`` as written, plus its Python 3 name when protocol-2 pickles spell it
    the Python 2 way (``__builtin__.eval`` is ``builtins.eval``)."""
    written = f"'{module}.{name}'"
    module3, name3 = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
    module3 = _compat_pickle.IMPORT_MAPPING.get(module3, module3)
    return written if (module3, name3) == (module, name) else f"{written} ('{module3}.{name3}')"


class _RestrictedUnpickler(pickle.Unpickler):
    """An Unpickler resolving only allow-listed globals; storages via ``persistent_load``.

    Args:
      file: binary stream positioned at the pickle.
      load_storage: ``pid -> _Storage`` for torch's persistent storage references.
    """

    def __init__(self, file: io.BytesIO, load_storage: Callable[[Any], _Storage]):
        super().__init__(file)
        self._load_storage = load_storage

    def find_class(self, module: str, name: str) -> Any:
        # The allow-list is checked on the name exactly as written in the file.
        resolved = _allowed_global(module, name)
        if resolved is None:
            raise UnsafeCheckpointError(
                f"refusing to load global {_display_name(module, name)}: only tensors, "
                f"storages, OrderedDict and numpy arrays/scalars are allowed in a checkpoint")
        return resolved

    def persistent_load(self, pid: Any) -> Any:
        return self._load_storage(pid)
