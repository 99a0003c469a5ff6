"""Saving and loading state as .npz files: never pickle, always written atomically.

Two levels:

- `save_state(path, state)` / `load_state(path)`: one flat dict {name: array or number},
  e.g. `model.state_dict()` or `optimizer.state_dict()`. Numbers come back as 0-d arrays.
- `save_checkpoint(path, **sections)` / `load_checkpoint(path)`: a whole training run,
  nested dicts of arrays, numbers, strings, bools, None and lists::

      save_checkpoint(run_dir / "checkpoint.npz",
                      generator=G.state_dict(), opt_g=opt_g.state_dict(),
                      rng=rng.bit_generator.state, history={"d_loss": [...]}, config={...})
      checkpoint = load_checkpoint(run_dir / "checkpoint.npz")
      G.load_state_dict(checkpoint["generator"])

  Each array is an npz entry named by its path joined with "/" ("generator/conv1.weight");
  everything else (the nesting, numbers of any size, strings, lists) is one JSON document
  stored as a string entry, "__checkpoint__.json". Tuples come back as lists.
- `load_npy(path)`: one .npy array (a data cache, a run's images), with the same rules and clear
  errors.

Files are read with `allow_pickle=False`: an object array in a file is refused, so loading a
file cannot run code. Nor can a small file fill the memory: before any entry is read, the unpacked
sizes the archive declares are added up and a total over `max_bytes` (`MAX_NPZ_BYTES`, 4 GiB, by
default) is refused, as are entries compressed other than by deflate. Writes go to a temporary
file in the same folder, which is flushed, fsynced and renamed over the target with `os.replace`:
a crash mid-write leaves the old file.
Arrays on the GPU are copied to the CPU.
"""
import json
import os
import threading
import zipfile
import zlib
from collections import OrderedDict

import numpy as np

from . import backend

SEPARATOR = "/"
CHECKPOINT_ENTRY = "__checkpoint__.json"
_ARRAY_MARK = "__nnbox_array__"
_FORMAT = "nnbox-checkpoint"
_VERSION = 1
# Unpacked bytes an .npz may declare, all entries together: far above any nnbox model with its optimiser
# state (a 100-million-parameter float32 network with Adam's two moments is 1.2 GB). A file over it is
# refused unless the caller passes a larger max_bytes.
MAX_NPZ_BYTES = 4 * 2**30


class SerializationError(ValueError):
    """A file that cannot be read as nnbox state (corrupt, truncated, pickled objects, wrong kind)."""


# ----------------------------------------------------------------- flat state
def save_state(path, state):
    """Write a flat dict {name: array or number} to `path` as .npz (atomically, no pickle).

    The path is used as given (no ".npz" is appended).
    """
    arrays = OrderedDict()
    for name, value in state.items():
        if not isinstance(name, str):
            raise TypeError(f"save_state({str(path)!r}): keys must be strings, got {name!r}")
        arrays[name] = _host_array(value, name, path)
    _write_npz(path, arrays)


def load_state(path, max_bytes=MAX_NPZ_BYTES):
    """Read a file written by `save_state`: an ordered dict {name: NumPy array}.

    A file whose entries declare more than `max_bytes` unpacked bytes in all is refused.
    """
    return _read_npz(path, max_bytes)


# ----------------------------------------------------------------- nested checkpoints
def save_checkpoint(path, **sections):
    """Write nested dicts of arrays, numbers, strings, bools, None and lists to `path` (.npz, atomic).

    Dict keys must be strings. Integers of any size (a NumPy bit generator's state) are exact;
    NumPy scalars are stored as Python numbers.
    """
    arrays = OrderedDict()
    tree = _encode(sections, [], arrays, path)
    document = {"format": _FORMAT, "version": _VERSION, "tree": tree}
    arrays[CHECKPOINT_ENTRY] = np.array(json.dumps(document))
    _write_npz(path, arrays)


def load_checkpoint(path, max_bytes=MAX_NPZ_BYTES):
    """Read a file written by `save_checkpoint`: the sections as nested dicts (arrays as NumPy arrays).

    A file whose entries declare more than `max_bytes` unpacked bytes in all is refused.
    """
    arrays = _read_npz(path, max_bytes)
    if CHECKPOINT_ENTRY not in arrays:
        raise SerializationError(
            f"{str(path)!r} is not an nnbox checkpoint (it has no {CHECKPOINT_ENTRY!r} entry); "
            f"a file written by save_state is read with load_state")
    try:
        document = json.loads(str(arrays.pop(CHECKPOINT_ENTRY)[()]))
    except (json.JSONDecodeError, ValueError, IndexError, RecursionError) as error:   # (nested 10^5 deep)
        raise SerializationError(f"{str(path)!r}: the checkpoint's {CHECKPOINT_ENTRY!r} entry is corrupt ({error})") from error
    if not isinstance(document, dict) or document.get("format") != _FORMAT:
        raise SerializationError(f"{str(path)!r}: {CHECKPOINT_ENTRY!r} is not an nnbox checkpoint description")
    if document.get("version") != _VERSION:
        raise SerializationError(f"{str(path)!r}: checkpoint format version {document.get('version')!r}, "
                                 f"this nnbox reads version {_VERSION}")
    try:
        return _decode(document["tree"], arrays, path)
    except RecursionError as error:   # (a JSON tree that json.loads read but is too deep to walk)
        raise SerializationError(f"{str(path)!r}: the checkpoint's description is nested too deeply") from error


def _encode(value, keys, arrays, path):
    """The JSON-able form of `value`; arrays go into `arrays` under their joined key path."""
    where = SEPARATOR.join(keys) or "<top level>"
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"save_checkpoint({str(path)!r}): dict keys must be strings, got {key!r} in {where!r}")
            if key == _ARRAY_MARK:
                raise ValueError(f"save_checkpoint({str(path)!r}): the key {_ARRAY_MARK!r} is reserved (in {where!r})")
            out[key] = _encode(item, keys + [key], arrays, path)
        return out
    if isinstance(value, (list, tuple)):
        return [_encode(item, keys + [str(index)], arrays, path) for index, item in enumerate(value)]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic) and not isinstance(value, np.object_):
        return _encode(value.item(), keys, arrays, path)
    if hasattr(value, "dtype") and hasattr(value, "shape"):
        name = SEPARATOR.join(keys)
        if name in arrays or name == CHECKPOINT_ENTRY:
            raise ValueError(f"save_checkpoint({str(path)!r}): two arrays would be stored as {name!r} "
                             f"(a key contains {SEPARATOR!r}); rename one")
        arrays[name] = _host_array(value, name, path)
        return {_ARRAY_MARK: name}
    raise TypeError(f"save_checkpoint({str(path)!r}): cannot store {type(value).__name__} at {where!r}; "
                    f"use arrays, numbers, strings, bools, None, lists and dicts")


def _decode(value, arrays, path):
    if isinstance(value, dict):
        if set(value) == {_ARRAY_MARK}:
            name = value[_ARRAY_MARK]
            if not isinstance(name, str) or name not in arrays:
                raise SerializationError(f"{str(path)!r}: the checkpoint refers to a missing array {name!r}")
            return arrays[name]
        return {key: _decode(item, arrays, path) for key, item in value.items()}
    if isinstance(value, list):
        return [_decode(item, arrays, path) for item in value]
    return value


# ----------------------------------------------------------------- files
def _host_array(value, name, path):
    """A NumPy array of `value` (a NumPy/CuPy array or a number), refusing object arrays."""
    if isinstance(value, (bool, int, float, np.generic)):
        value = np.asarray(value)
    if not hasattr(value, "dtype"):
        raise TypeError(f"cannot save {name!r} to {str(path)!r}: it is a {type(value).__name__}, "
                        f"not an array or a number")
    array = backend.to_numpy(value)
    if array.dtype.hasobject:
        raise TypeError(f"cannot save {name!r} to {str(path)!r}: object arrays would need pickle")
    return array


def _write_npz(path, arrays):
    """Write `arrays` to `path` atomically (`atomic_write`), entry by entry: what np.savez does,
    without its keyword arguments, so an entry may be called "file" or "allow_pickle"."""
    def write(file):
        with zipfile.ZipFile(file, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
            for name, array in arrays.items():
                with archive.open(name + ".npy", "w", force_zip64=True) as entry:
                    np.lib.format.write_array(entry, np.asanyarray(array), allow_pickle=False)

    atomic_write(path, write)


def atomic_write(path, write):
    """Call write(file) on a temporary file in path's folder, flush and fsync it, os.replace it onto
    `path` and fsync the folder: readers see the old file or the new one, never half of one, and a
    crash leaves the old one. Every file nnbox and its trainers write goes through here.

    The file gets the mode open() would give it (0o666 less the umask), or the one of the file it
    replaces. A folder that does not exist is a FileNotFoundError naming it.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"cannot save {path!r}: the folder {folder!r} does not exist; create it first")
    temporary = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(temporary, "wb") as file:
            if os.path.exists(path):
                os.chmod(temporary, os.stat(path).st_mode & 0o777)
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        try:
            os.remove(temporary)
        except FileNotFoundError:
            pass
        raise
    _fsync_folder(folder)


def _fsync_folder(folder):
    """Make the rename itself durable (POSIX); a no-op where folders cannot be opened."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def _read_npz(path, max_bytes=MAX_NPZ_BYTES):
    """Every entry of an .npz file, read with allow_pickle=False after `check_unpacked_sizes`; clear
    errors naming the file."""
    shown = str(os.fspath(path))
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file: {shown!r}")
    try:
        npz = np.load(path, allow_pickle=False)
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise SerializationError(f"{shown!r} holds a single .npy array, not an .npz archive of named arrays")
        with npz:
            check_unpacked_sizes(npz.zip, shown, max_bytes, "load_state or load_checkpoint")
            out = OrderedDict()
            for name in npz.files:
                try:
                    out[name] = npz[name]
                except ValueError as error:
                    if "allow_pickle" in str(error):
                        raise SerializationError(
                            f"{shown!r}: the entry {name!r} is an object array, which only pickle could "
                            f"load; refusing it (loading pickled data can run arbitrary code)") from error
                    raise
            return out
    except SerializationError:
        raise
    except MemoryError as error:   # an entry's header asks for more memory than there is (a forged shape)
        raise SerializationError(f"cannot read {shown!r}: an entry asks for more memory than is available; the "
                                 f"file is corrupt or forged") from error
    except (zipfile.BadZipFile, zlib.error, ValueError, OSError, EOFError, KeyError) as error:
        raise SerializationError(f"cannot read {shown!r}: the file is corrupt or truncated, or not an .npz file "
                                 f"({_unreadable_reason(error)})") from error


def load_npy(path):
    """The one array in the .npy file `path`, read with allow_pickle=False.

    Raises FileNotFoundError when there is no such file, and SerializationError naming the file and what
    it holds instead when that is not an .npy array of plain values: an .npz archive, an object array, an
    empty, truncated or corrupt file, or another format (a pickle, say).
    """
    shown = str(os.fspath(path))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such file: {shown!r}")
    try:
        array = np.load(path, allow_pickle=False)
    except MemoryError as error:   # a header that asks for more memory than there is (a forged shape)
        raise SerializationError(f"cannot read {shown!r}: its header asks for more memory than is available; the "
                                 f"file is corrupt or forged") from error
    except (ValueError, EOFError) as error:
        raise SerializationError(f"cannot read {shown!r} as an .npy array: {_npy_problem(error)}") from error
    if not isinstance(array, np.ndarray):
        with array:
            count = len(array.files)
        raise SerializationError(f"{shown!r} is an .npz archive of {count} named array(s), not the single .npy "
                                 f"array expected")
    return array


def _npy_problem(error):
    """What is wrong with a file that np.load(allow_pickle=False) refused as an .npy array."""
    if isinstance(error, EOFError):
        return "the file is empty"
    if str(error).startswith("Object arrays"):
        return "it holds an object array, which only pickle could load (nnbox never loads pickles)"
    if "allow_pickle" in str(error):
        return _unreadable_reason(error)
    return f"the file is truncated or corrupt ({error})"


def check_unpacked_sizes(archive, shown, max_bytes, loader):
    """Refuse (SerializationError) a zip archive (a zipfile.ZipFile named `shown`) whose entries declare
    more than `max_bytes` unpacked bytes in all, or are compressed other than by deflate, before any entry
    is read; `loader` names the functions whose max_bytes= raises the limit. Also used for PyTorch files
    (gan/torch_weights.py).

    A compressed entry can inflate a thousandfold (a "deflate bomb"). zipfile never returns more of an
    entry than the size it declares and inflates deflate no further than it is asked to, so checking the
    declared sizes bounds what reading can unpack; bzip2 and LZMA it decompresses a whole read at once.
    """
    entries = archive.infolist()
    for entry in entries:
        if entry.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise SerializationError(
                f"{shown!r}: the entry {entry.filename!r} is compressed with method {entry.compress_type}; "
                f"nnbox reads only stored or deflated entries (as np.savez, np.savez_compressed and torch.save write "
                f"them)")
    total = sum(entry.file_size for entry in entries)
    if total > max_bytes:
        largest = max(entries, key=lambda entry: entry.file_size)
        raise SerializationError(
            f"{shown!r}: its entries declare {total} unpacked bytes in all (the largest, {largest.filename!r}, "
            f"{largest.file_size}), more than the {max_bytes} allowed; refusing to read it (the file is corrupt, "
            f"or a small file made to inflate until the memory is full). For a file you trust, pass a larger "
            f"max_bytes= to {loader}")


def _unreadable_reason(error):
    """Why NumPy could not read a file. A file that starts like neither an .npz (zip) nor an .npy is one
    NumPy would only unpickle: its advice to do so unsafely is replaced (nnbox never reads pickles)."""
    if isinstance(error, ValueError) and "allow_pickle" in str(error):
        return "it starts like neither a zip archive nor an .npy array: a pickle, say, which nnbox never loads"
    return f"{type(error).__name__}: {error}"
