"""Read a PyTorch state dict (.pth / .pt) into NumPy arrays, safely and without torch installed.

A `torch.save`d file is one of two layouts:

* the zip layout (torch >= 1.6): `<name>/data.pkl` is a pickle of the state dict in which every
  tensor is `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)` and every storage
  is a *persistent id* `('storage', torch.FloatStorage, key, location, numel)`; the raw bytes of
  storage `key` are the zip member `<name>/data/<key>`;
* the legacy layout (torch < 1.6, e.g. older released weight files): several pickles one after
  the other (a magic number, a protocol version, system info, the state dict with the same
  persistent ids, the list of storage keys), then each storage as an int64 element count
  followed by its raw bytes, in the order of that key list.

A pickle can run any code: `__reduce__` may name `os.system` as the function that rebuilds an
object. So `data.pkl` is read with a RESTRICTED unpickler: it resolves only the handful of globals
a state dict needs (collections.OrderedDict, torch._utils._rebuild_tensor_v2 and
_rebuild_parameter, and the torch.*Storage type names), each served by an inert stand-in
written here; any other global is refused with `UnsafeTorchFileError` before anything runs.
Tensor views are checked to lie inside their storage (a forged stride cannot read outside it).

    state = load_torch_state_dict("pt_inception-2015-12-05-6726825d.pth")   # {name: np.ndarray}
"""
import io
import pickle
import struct
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np

from nnbox.serialization import MAX_NPZ_BYTES, SerializationError, check_unpacked_sizes

LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001
# a state dict's pickle holds ~100-200 bytes per tensor (names, shapes, storage ids): 64 MiB is far above
# any real one, and a zip member declared larger (a compressed "bomb") is refused before it is inflated
MAX_PICKLE_BYTES = 64 * 2**20

# torch storage type name -> the NumPy dtype of its bytes (bfloat16 is widened after reading)
STORAGE_DTYPES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
    "BFloat16Storage": np.uint16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class UnsafeTorchFileError(pickle.UnpicklingError):
    """The file asks for something a plain state dict never needs (code to run, an unknown type)."""


class _Inert:
    """What the unpickler hands out for the globals it allows: shared by every load, so a file must
    not be able to change them. The BUILD opcode (which sets an object's state: obj.__setstate__,
    or its attributes) is refused, and so is setting an attribute, so one forged file cannot change
    how a later, genuine file loads."""

    __slots__ = ()

    def __setstate__(self, state):
        raise UnsafeTorchFileError(f"a state dict never sets the state of {self!r}: the file is forged")

    def __setattr__(self, name, value):
        raise UnsafeTorchFileError(f"a state dict never sets attributes of {self!r}: the file is forged")


class _StorageType(_Inert):
    """Stands in for a torch.*Storage class named in the pickle: only its name and dtype are kept."""

    __slots__ = ("name", "dtype")

    def __init__(self, name):
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "dtype", np.dtype(STORAGE_DTYPES[name]))

    def __call__(self, *args, **kwargs):
        raise UnsafeTorchFileError(f"a state dict never constructs a torch.{self.name} directly")

    def __repr__(self):
        return f"torch.{self.name}"


class _Function(_Inert):
    """Stands in for an allowed torch function (calls the inert version written here)."""

    __slots__ = ("name", "function")

    def __init__(self, name, function):
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "function", function)

    def __call__(self, *args, **kwargs):
        return self.function(*args, **kwargs)

    def __repr__(self):
        return f"torch._utils.{self.name}"


class _Storage(_Inert):
    """A storage named by a persistent id; `array` is filled from the file after unpickling (`_fill`)."""

    __slots__ = ("storage_type", "key", "numel", "array")

    def __init__(self, storage_type, key, numel):
        for name, value in (("storage_type", storage_type), ("key", key), ("numel", numel), ("array", None)):
            object.__setattr__(self, name, value)

    def __repr__(self):
        return f"storage {self.key!r}"


class _TensorStub(_Inert):
    """What `_rebuild_tensor_v2` returns here: the checked view arguments, realised once storages are
    read (inert, so that a BUILD after the check cannot change them)."""

    __slots__ = ("storage", "offset", "size", "stride")

    def __init__(self, storage, offset, size, stride):
        for name, value in (("storage", storage), ("offset", offset), ("size", size), ("stride", stride)):
            object.__setattr__(self, name, value)

    def __repr__(self):
        return f"a tensor view of {self.storage!r}"


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    if not isinstance(storage, _Storage):
        raise UnsafeTorchFileError("_rebuild_tensor_v2 called on something that is not a storage")
    size, stride = tuple(size), tuple(stride)
    if not all(isinstance(v, int) for v in (storage_offset,) + size + stride) or len(size) != len(stride):
        raise UnsafeTorchFileError(f"malformed tensor view: offset {storage_offset!r}, size {size}, stride {stride}")
    return _TensorStub(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    if not isinstance(data, _TensorStub):
        raise UnsafeTorchFileError("_rebuild_parameter called on something that is not a tensor")
    return data


_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): OrderedDict,   # (a C type: its attributes cannot be set)
    ("torch._utils", "_rebuild_tensor_v2"): _Function("_rebuild_tensor_v2", _rebuild_tensor_v2),
    ("torch._utils", "_rebuild_parameter"): _Function("_rebuild_parameter", _rebuild_parameter),
}
_ALLOWED_GLOBALS.update({("torch", name): _StorageType(name) for name in STORAGE_DTYPES})


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        allowed = _ALLOWED_GLOBALS.get((module, name))
        if allowed is None:
            raise UnsafeTorchFileError(
                f"refusing to load {module}.{name} from a PyTorch file: a state dict of tensors never needs it, "
                f"and a pickle that names it may run code. Only {sorted(f'{m}.{n}' for m, n in _ALLOWED_GLOBALS)} "
                f"are allowed; re-save the weights as a plain state dict (torch.save(model.state_dict(), path))")
        return allowed

    def __init__(self, stream, storages):
        super().__init__(stream)
        self._storages = storages  # key -> _Storage, shared by views of one storage

    def persistent_load(self, pid):
        if not isinstance(pid, tuple) or len(pid) < 5 or pid[0] != "storage":
            raise UnsafeTorchFileError(f"refusing an unknown persistent id {pid!r:.80}")
        storage_type, key, _location, numel = pid[1:5]
        if not isinstance(storage_type, _StorageType) or not isinstance(numel, int) or numel < 0:
            raise UnsafeTorchFileError(f"malformed storage id {pid!r:.80}")
        key = str(key)
        storage = self._storages.get(key)
        if storage is None:
            storage = self._storages[key] = _Storage(storage_type, key, numel)
        # legacy files add view metadata (view_key, offset, view_size) as pid[5]: views of a storage
        # are not written by state_dict saves of ordinary modules, so they are refused
        if len(pid) > 5 and pid[5] is not None:
            raise UnsafeTorchFileError("storage views (legacy view metadata) are not supported")
        return storage


def _tensor_array(stub):
    """The NumPy array of one tensor: a bounds-checked strided view of its storage, copied."""
    data = stub.storage.array
    if data is None:
        raise UnsafeTorchFileError(f"storage {stub.storage.key!r} has no data in the file")
    size, stride, offset = stub.size, stub.stride, stub.offset
    if any(s < 0 for s in size) or any(s < 0 for s in stride) or offset < 0:
        raise UnsafeTorchFileError(f"negative size/stride/offset in a tensor view: {size}, {stride}, {offset}")
    if 0 not in size:
        if int(np.prod(size, dtype=np.float64)) > data.size:   # (float64: a forged size cannot overflow)
            raise UnsafeTorchFileError(
                f"a tensor view of size {size} has more elements than its storage ({data.size}): the weights of a "
                f"state dict never repeat their storage's elements, and a forged file could ask for any amount "
                f"of memory")
        last = offset + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= data.size:
            raise UnsafeTorchFileError(
                f"a tensor view (offset {offset}, size {size}, stride {stride}) reaches element {last} of a "
                f"storage of {data.size} elements: the file is corrupt or forged")
        item = data.itemsize
        view = np.lib.stride_tricks.as_strided(data[offset:], shape=size, strides=tuple(s * item for s in stride),
                                               writeable=False)
        array = np.array(view, copy=True)
    else:
        array = np.zeros(size, dtype=data.dtype)
    if stub.storage.storage_type.name == "BFloat16Storage":  # bfloat16 is the top half of a float32
        array = (array.astype(np.uint32) << 16).view(np.float32)
    return array


def _realise(obj, done=None):
    """obj with every tensor view replaced by its array; a view the pickle references many times is
    copied once (`done`: id -> array), so a small file cannot multiply one large tensor."""
    done = {} if done is None else done
    if isinstance(obj, _TensorStub):
        if id(obj) not in done:
            done[id(obj)] = _tensor_array(obj)
        return done[id(obj)]
    if isinstance(obj, dict):
        return OrderedDict((key, _realise(value, done)) for key, value in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_realise(value, done) for value in obj)
    return obj


def _fill(storage, raw, byteorder):
    dtype = storage.storage_type.dtype.newbyteorder("<" if byteorder == "little" else ">")
    expected = storage.numel * dtype.itemsize
    if len(raw) < expected:
        raise UnsafeTorchFileError(f"storage {storage.key!r} holds {len(raw)} bytes, {expected} expected")
    object.__setattr__(storage, "array", np.frombuffer(raw[:expected], dtype=dtype).astype(dtype.newbyteorder("=")))


def _load_zip(path, max_bytes):
    storages = {}
    with zipfile.ZipFile(path) as archive:
        try:   # the declared unpacked sizes, checked before anything is inflated
            check_unpacked_sizes(archive, str(path), max_bytes, "load_torch_state_dict")
        except SerializationError as error:
            raise UnsafeTorchFileError(str(error)) from error
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pickles) != 1:
            raise ValueError(f"{path} is a zip but not a torch.save file: expected one data.pkl, found {pickles}")
        root = pickles[0][: -len("data.pkl")]
        for member, limit in ((pickles[0], MAX_PICKLE_BYTES), (root + "byteorder", 16)):
            if member in names and archive.getinfo(member).file_size > limit:
                raise UnsafeTorchFileError(f"{path}: {member} declares {archive.getinfo(member).file_size} bytes, "
                                           f"more than the {limit} a state dict needs: the file is corrupt or forged")
        byteorder = "little"
        if root + "byteorder" in names:
            byteorder = archive.read(root + "byteorder").decode("ascii").strip()
        obj = _RestrictedUnpickler(io.BytesIO(archive.read(pickles[0])), storages).load()
        for key, storage in storages.items():
            member = f"{root}data/{key}"
            if member not in names:
                raise UnsafeTorchFileError(f"{path}: the pickle names storage {key!r} but {member} is missing")
            expected = storage.numel * storage.storage_type.dtype.itemsize
            if archive.getinfo(member).file_size != expected:   # checked before decompressing anything
                raise UnsafeTorchFileError(f"storage {key!r} holds {archive.getinfo(member).file_size} bytes, "
                                           f"{expected} expected")
            _fill(storage, archive.read(member), byteorder)
    return obj


def _load_legacy(path):
    storages = {}
    with open(path, "rb") as f:
        header = _RestrictedUnpickler(f, storages)
        if header.load() != LEGACY_MAGIC_NUMBER:
            raise ValueError(f"{path} is neither a zip nor a legacy torch.save file (wrong magic number)")
        if header.load() != LEGACY_PROTOCOL_VERSION:
            raise ValueError(f"{path}: unsupported legacy torch.save protocol version")
        sys_info = header.load()
        little = sys_info.get("little_endian", True) if isinstance(sys_info, dict) else True
        obj = _RestrictedUnpickler(f, storages).load()
        keys = _RestrictedUnpickler(f, storages).load()
        if not isinstance(keys, list):
            raise UnsafeTorchFileError(f"{path}: malformed storage key list")
        for key in keys:
            storage = storages.get(str(key))
            if storage is None:
                raise UnsafeTorchFileError(f"{path}: storage {key!r} is listed but never used")
            (numel,) = struct.unpack("<q" if little else ">q", f.read(8))
            if numel != storage.numel:
                raise UnsafeTorchFileError(f"{path}: storage {key!r} has {numel} elements, {storage.numel} expected")
            _fill(storage, f.read(numel * storage.storage_type.dtype.itemsize), "little" if little else "big")
    return obj


def load_torch_state_dict(path, max_bytes=MAX_NPZ_BYTES):
    """An OrderedDict {name: np.ndarray} from a torch.save'd state dict, without torch or code execution.

    Raises FileNotFoundError when `path` does not exist, UnsafeTorchFileError for anything that is not
    plain tensors in (ordered) dicts (or a zip-layout file whose members declare more than `max_bytes`
    unpacked bytes in all, 4 GiB by default), ValueError for a file that is not a torch.save file at all.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such PyTorch weights file: {path}")
    try:
        obj = _load_zip(path, max_bytes) if zipfile.is_zipfile(path) else _load_legacy(path)
    except (UnsafeTorchFileError, FileNotFoundError):
        raise
    except (pickle.UnpicklingError, EOFError, struct.error, zipfile.BadZipFile, KeyError) as error:
        raise ValueError(f"{path} is not a readable torch.save file ({type(error).__name__}: {error})") from error
    state = _realise(obj)
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict")
    if "state_dict" in state and isinstance(state["state_dict"], dict):  # a checkpoint wrapping one
        state = state["state_dict"]
    return state
