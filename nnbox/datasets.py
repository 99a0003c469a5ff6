"""Real data sets: LFW faces, MNIST, coloured MNIST, CIFAR-10 and Olivetti faces, from a local folder or
downloaded.

A `data_dir` you give is the only place a loader looks: a folder without the data set's files is a
FileNotFoundError naming the folder and the files, never a silent switch to another copy. Without
`data_dir`, a loader looks in the cache (`nnbox.data.default_cache_dir()`, `$NNBOX_CACHE` overrides)
and only then downloads the official archive, checks its SHA-256, and extracts it safely into the
cache (Olivetti, which has no official download, needs a `data_dir`). Nothing read from disk
can execute code: arrays come from raw bytes, the CIFAR-10 "python version" goes through an
unpickler that refuses every global (`safe_unpickle`), and archives are checked member by member
(`safe_extract_tar`).

Images come back as float32 NCHW in [-1, 1] (MNIST, CIFAR-10, Olivetti) or as an `ImageFolder` whose
`images` are uint8 NHWC and whose batches are float32 NCHW (LFW).
"""
import functools
import gzip
import hashlib
import io
import math
import os
import pickle
import shutil
import tarfile
import types
import urllib.request
import zlib
from collections import namedtuple
from pathlib import Path

import numpy as np

from .data import CenterCrop, ColorJitter, ImageFolder, RandomHorizontalFlip, Resize, default_cache_dir
from .serialization import SerializationError, load_npy

RemoteFile = namedtuple("RemoteFile", "filename url sha256")

# The archive scikit-learn's fetch_lfw_people(funneled=True) downloads (sklearn/datasets/_lfw.py);
# it unpacks to lfw_funneled/<Person_Name>/<Person_Name>_0001.jpg, 250x250 JPEGs.
LFW_FUNNELED = RemoteFile(
    "lfw-funneled.tgz", "https://ndownloader.figshare.com/files/5976015",
    "b47c8422c8cded889dc5a13418c4bc2abbda121092b3533a83306f90d900100a")
# Same pictures without alignment (scikit-learn's funneled=False).
LFW_ORIGINAL = RemoteFile(
    "lfw.tgz", "https://ndownloader.figshare.com/files/5976018",
    "055f7d9c632d7370e6fb4afc7468d40f970c34a80d4c6f50ffec63f5a8d536c0")
# Folder names an LFW copy may have: the deep-funneled set (lfw-deepfunneled/, as distributed by
# UMass as lfw-deepfunneled.tgz), the funneled one, the original one.
LFW_FOLDER_NAMES = ("lfw-deepfunneled", "lfw_funneled", "lfw-funneled", "lfw")
# A face crop for 250x250 LFW: the face fills the central ~120 px; 128 keeps the chin, the eyebrows
# and a little hair, which the generator learns easily at 32x32 or 64x64.
LFW_DEFAULT_CROP = 128

MNIST_MIRROR = "https://ossci-datasets.s3.amazonaws.com/mnist/"   # torchvision's mirror of LeCun's files
MNIST_FILES = {
    "train-images-idx3-ubyte": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}
MNIST_IMAGES_MAGIC, MNIST_LABELS_MAGIC = 2051, 2049

CIFAR10_BINARY = RemoteFile(
    "cifar-10-binary.tar.gz", "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
    "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd")
CIFAR10_PYTHON = RemoteFile(
    "cifar-10-python.tar.gz", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10_PIXELS = 3 * 32 * 32
CIFAR10_RECORD = 1 + CIFAR10_PIXELS
CIFAR10_BATCH_RECORDS = 10_000    # in each of data_batch_1..5.bin and test_batch.bin
CIFAR100_RECORD = 2 + CIFAR10_PIXELS          # coarse and fine label: recognised only to say it is not CIFAR-10
CIFAR100_FILE_RECORDS = (50_000, 10_000)      # its train.bin and test.bin

# Fixed colours for the class-coloured MNIST (matplotlib's tab10), RGB in [0, 1].
CLASS_COLORS = np.array([
    [0.12, 0.47, 0.71], [1.00, 0.50, 0.05], [0.17, 0.63, 0.17], [0.84, 0.15, 0.16], [0.58, 0.40, 0.74],
    [0.55, 0.34, 0.29], [0.89, 0.47, 0.76], [0.50, 0.50, 0.50], [0.74, 0.74, 0.13], [0.09, 0.75, 0.81],
], dtype=np.float32)


class ChecksumError(ValueError):
    """A downloaded file's SHA-256 is not the expected one."""


class UnsafeArchiveError(ValueError):
    """An archive member would land outside the target folder, or is a link or a device."""


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle asked for a global (a class or function), which could run arbitrary code."""


# --------------------------------------------------------------------------- download
def sha256_of(path, chunk_size=1 << 20):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk_size), b""):
            digest.update(block)
    return digest.hexdigest()


def download(url, dest, sha256, progress=True, opener=None, chunk_size=1 << 16):
    """Download `url` to `dest` (a file path) and check its SHA-256; returns `dest`.

    An existing `dest` with the right checksum is kept as is. The data goes to `dest + '.part'`
    and is renamed only once the checksum matches; on a mismatch the partial file is removed and
    a `ChecksumError` says so. `opener(url)` (default `urllib.request.urlopen`) must return a
    file-like response; any URL urllib understands works, `file://` included.
    """
    if not sha256 or len(str(sha256)) != 64:
        raise ValueError(f"download({url!r}): a 64-hex-digit SHA-256 checksum is required, got {sha256!r}")
    sha256 = str(sha256).lower()
    dest = Path(dest)
    if dest.is_file() and sha256_of(dest) == sha256:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".part")
    digest = hashlib.sha256()
    opener = opener or urllib.request.urlopen
    try:
        with opener(url) as response, open(partial, "wb") as out:
            total = _content_length(response)
            bar = None
            if progress:
                from tqdm import tqdm
                bar = tqdm(total=total, desc=f"downloading {dest.name}", unit="B", unit_scale=True, leave=False)
            for block in iter(lambda: response.read(chunk_size), b""):
                out.write(block)
                digest.update(block)
                if bar is not None:
                    bar.update(len(block))
            if bar is not None:
                bar.close()
        got = digest.hexdigest()
        if got != sha256:
            raise ChecksumError(
                f"download({url!r}): SHA-256 mismatch, expected {sha256} but got {got}; the file was removed. "
                f"The download was corrupted or the server changed the file: retry, or download it yourself and "
                f"pass its folder as data_dir")
        os.replace(partial, dest)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return dest


def _content_length(response):
    try:
        length = response.headers.get("Content-Length") if hasattr(response, "headers") else None
        return int(length) if length else None
    except (TypeError, ValueError):
        return None


MAX_ARCHIVE_MEMBERS = 200_000     # LFW has about 19,000 (files and folders), CIFAR-10 a dozen
MAX_ARCHIVE_BYTES = 8 * 2**30     # unpacked; LFW is about 0.2 GB


def safe_extract_tar(archive, dest, max_members=MAX_ARCHIVE_MEMBERS, max_bytes=MAX_ARCHIVE_BYTES):
    """Extract a tar archive (any compression) into `dest`, refusing anything that could escape it,
    or fill the disk: an archive of more than `max_members` members or `max_bytes` unpacked bytes (as
    its headers declare them, before anything is written; a compressed "tar bomb" declares its size
    too) is refused with an `UnsafeArchiveError`.

    Refused, with an `UnsafeArchiveError` naming the member: absolute paths, '..' components,
    devices and FIFOs, and symbolic or hard links whose target is absolute or has a '..' component.
    Links may thus only point into their own folder's subtree, so no chain of links can lead
    outside `dest` (checking each target's text alone cannot see that `b -> a/..` with
    `a -> ..` leaves). Python's 'data' extraction filter is applied as a second line of defence
    where it exists.
    Extraction goes to a temporary folder beside `dest` that is renamed at the end, so a refused
    or interrupted archive leaves nothing behind. Returns `dest`.
    """
    dest = Path(dest)
    if dest.exists():
        raise FileExistsError(f"safe_extract_tar: {dest} already exists; remove it or extract elsewhere")
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = dest.with_name(f".{dest.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for member in members:
                _check_member(member)
            unpacked = sum(member.size for member in members if member.isfile())
            if len(members) > max_members or unpacked > max_bytes:
                raise UnsafeArchiveError(
                    f"{archive} holds {len(members)} members and {unpacked} unpacked bytes, more than the "
                    f"{max_members} members and {max_bytes} bytes allowed; refusing to extract it (pass "
                    f"max_members= and max_bytes= to safe_extract_tar for an archive you trust)")
            staging.mkdir(parents=True)
            if hasattr(tarfile, "data_filter"):
                tar.extractall(staging, members=members, filter="data")
            else:    # pragma: no cover - Python without extraction filters
                tar.extractall(staging, members=members)
        os.replace(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return dest


def _is_absolute(path_text):
    """An absolute path on any system: '/x', '\\x', 'C:...'."""
    return path_text.startswith(("/", "\\")) or Path(path_text).is_absolute() or path_text[1:2] == ":"


def _check_member(member):
    name = member.name
    parts = Path(name).parts
    if _is_absolute(name):
        raise UnsafeArchiveError(f"archive member {name!r} has an absolute path; refusing to extract the archive")
    if ".." in parts:
        raise UnsafeArchiveError(f"archive member {name!r} contains '..'; refusing to extract the archive")
    if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
        raise UnsafeArchiveError(f"archive member {name!r} is a device or FIFO; refusing to extract the archive")
    if member.issym() or member.islnk():
        target = member.linkname
        if _is_absolute(target) or ".." in Path(target).parts:
            raise UnsafeArchiveError(
                f"archive member {name!r} links to {target!r}, which may lead outside the target folder "
                f"(only links without '..' that are not absolute are extracted); refusing to extract")


# --------------------------------------------------------------------------- safe unpickling
class _ArrayStub:
    """Stands in for numpy.ndarray while unpickling; becomes a real array in `_realise`."""

    def __init__(self, *args):
        self.state = None

    def __setstate__(self, state):
        self.state = state


class _DtypeStub:
    """Stands in for numpy.dtype while unpickling; only plain numeric dtypes are accepted."""

    ALLOWED = {"b1", "i1", "u1", "i2", "u2", "i4", "u4", "i8", "u8", "f2", "f4", "f8"}

    def __init__(self, code, align=0, copy=0):
        code = code.decode() if isinstance(code, bytes) else str(code)
        if code not in self.ALLOWED:
            raise UnsafePickleError(f"refusing numpy dtype {code!r} in a pickle: only plain numeric arrays are read")
        self.code, self.order = code, "|"

    def __setstate__(self, state):
        order = state[1] if isinstance(state, tuple) and len(state) > 1 else "|"
        self.order = order.decode() if isinstance(order, bytes) else order

    def dtype(self):
        order = self.order if self.order in ("<", ">") else "="
        return np.dtype(self.code).newbyteorder(order) if self.code not in ("b1", "i1", "u1") else np.dtype(self.code)


def _reconstruct_stub(cls, shape, typecode):
    return _ArrayStub()


def _frombuffer_stub(buffer, dtype, shape, order):
    """numpy's protocol-5 array rebuild: raw bytes + a plain numeric dtype -> array (copied)."""
    if not isinstance(dtype, _DtypeStub) or not isinstance(buffer, (bytes, bytearray, pickle.PickleBuffer)):
        raise UnsafePickleError("refusing a numpy array that is not plain numeric data in a pickle")
    array = np.frombuffer(bytes(buffer), dtype=dtype.dtype())
    return array.reshape(tuple(shape), order="F" if order == "F" else "C").copy()


def _latin1_encode_stub(text, encoding="latin1"):
    """Python 3 writes bytes into protocol-2 pickles as _codecs.encode(str, 'latin1'); only that is allowed."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError(f"refusing _codecs.encode({type(text).__name__}, {encoding!r}) in a pickle")
    return text.encode("latin1")


# The only names a pickle may mention: numpy's array-rebuilding triple and the latin-1 bytes
# encoding, each replaced by an inert stand-in defined here. Nothing named in the pickle is ever
# imported or called.
_PICKLE_STANDINS = {
    ("_codecs", "encode"): _latin1_encode_stub,
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct_stub,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct_stub,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer_stub,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer_stub,
    ("numpy", "ndarray"): _ArrayStub,
    ("numpy", "dtype"): _DtypeStub,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        standin = _PICKLE_STANDINS.get((module, name))
        if standin is None:
            raise UnsafePickleError(
                f"refusing to load {module}.{name} from a pickle: pickles can run code, so nnbox reads only "
                f"plain data (dicts, lists, numbers, bytes, numeric arrays). If this is CIFAR-10, use the "
                f"binary version (cifar-10-binary.tar.gz) instead")
        # a fresh wrapper per use: the BUILD opcode may set attributes of what it gets (a function's
        # __defaults__), and must not change how a later pickle loads. (The stand-in classes define
        # __setstate__ as a method, so BUILD on the class itself fails.)
        return functools.partial(standin) if isinstance(standin, types.FunctionType) else standin

    def persistent_load(self, pid):
        raise UnsafePickleError("refusing a pickle with persistent ids")


def _realise(obj, done=None):
    """obj with every array stand-in turned into its array. Each object is realised once (`done`:
    id -> result), so shared references stay shared: a small pickle whose lists refer to one another
    at every level would otherwise be walked 2^depth times."""
    done = {} if done is None else done
    if id(obj) in done:
        return done[id(obj)]
    if isinstance(obj, list):        # entered in `done` before its items: a list may contain itself
        done[id(obj)] = out = []
        out.extend(_realise(v, done) for v in obj)
        return out
    if isinstance(obj, dict):
        done[id(obj)] = out = {}
        out.update((_realise(k, done), _realise(v, done)) for k, v in obj.items())
        return out
    done[id(obj)] = result = _realise_one(obj, done)
    return result


def _realise_one(obj, done):
    if isinstance(obj, _ArrayStub):
        state = obj.state
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise UnsafePickleError("malformed numpy array in pickle")
        shape, dtype, fortran, raw = state[-4:]
        if not isinstance(dtype, _DtypeStub) or not isinstance(raw, (bytes, bytearray, str)):
            raise UnsafePickleError("refusing a numpy array of objects in a pickle")
        raw = raw.encode("latin1") if isinstance(raw, str) else bytes(raw)
        array = np.frombuffer(raw, dtype=dtype.dtype())
        return array.reshape(tuple(shape), order="F" if fortran else "C").copy()
    if isinstance(obj, tuple):
        return tuple(_realise(v, done) for v in obj)
    return obj


def safe_unpickle(data, encoding="bytes"):
    """Load pickled plain data (bytes or a binary file) without executing anything.

    Every global a pickle names is refused with `UnsafePickleError` (that is how a pickle runs code:
    `__reduce__` returns a global such as `os.system`), except numpy's array reconstruction and
    latin-1 bytes, which are served by inert stand-ins that turn raw bytes into numeric arrays.
    """
    stream = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data
    try:
        return _realise(_RestrictedUnpickler(stream, encoding=encoding).load())
    except RecursionError as error:
        raise UnsafePickleError("refusing a pickle nested too deeply to be plain data") from error
    except TypeError as error:   # a stand-in called or BUILT with what plain data never gives it
        raise UnsafePickleError(f"refusing a malformed pickle ({error})") from error


# --------------------------------------------------------------------------- LFW
def _looks_like_lfw(folder):
    """True when `folder` holds person folders with JPEGs in them."""
    if not folder.is_dir():
        return False
    for child in sorted(folder.iterdir())[:20]:
        if child.is_dir() and any(p.suffix.lower() in (".jpg", ".jpeg") for p in child.iterdir()):
            return True
    return False


def find_lfw(folder):
    """The LFW image folder in or at `folder` (one of `LFW_FOLDER_NAMES`, or person folders), or None."""
    folder = Path(folder).expanduser()
    for candidate in [folder / name for name in LFW_FOLDER_NAMES] + [folder]:
        if _looks_like_lfw(candidate):
            return candidate
    return None


def load_lfw(data_dir=None, image_size=32, crop=LFW_DEFAULT_CROP, download=True, cache_dir=None, flip=False,
             jitter=0.0, augment_copies=0, progress=True, workers=None, remote=LFW_FUNNELED):
    """Labeled Faces in the Wild as an `ImageFolder`: central face crop, resized, cached as .npy.

    With `data_dir`, LFW is read from there only (the folder itself, or a `lfw-deepfunneled`,
    `lfw_funneled` or `lfw` folder inside it): a folder without LFW's person folders of JPEGs (or a
    missing one, or a file) is a FileNotFoundError, never a silent switch to the cache's copy or a
    240 MB download. Without `data_dir`: the copy in `cache_dir/lfw`, else (when `download`) `remote`
    (by default the funneled archive scikit-learn uses) is downloaded, its SHA-256 checked, and it is
    extracted into `cache_dir/lfw`.

    Args:
        image_size: side of the square output images (32 or 64 for the GANs).
        crop: side of the central square cut from the 250x250 picture before resizing (None: no crop).
        flip, jitter: per-batch random horizontal flip / colour jitter amount (for the GAN's batches).
        augment_copies: see `ImageFolder`.

    Returns:
        `ImageFolder` with `images` uint8 (13233, image_size, image_size, 3), `labels` (person index),
        `classes` (person names); `get_batch` / `DataLoader` give float32 NCHW in [-1, 1].
    """
    cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    if data_dir is not None:
        folder = find_lfw(data_dir)
        if folder is None:
            raise FileNotFoundError(_lfw_missing(
                Path(data_dir).expanduser(), "pass data_dir=<the folder holding LFW>, or data_dir=None for the cache"))
    else:
        folder = find_lfw(cache_dir / "lfw")
    if folder is None:
        if not download:
            raise FileNotFoundError(_lfw_missing(
                cache_dir / "lfw", f"pass data_dir=<folder>, or download=True to fetch {LFW_FUNNELED.url}"))
        archive = _download_file(remote, cache_dir / "downloads", progress)
        target = cache_dir / "lfw"
        if target.exists():    # an earlier extraction without images: start again
            shutil.rmtree(target)
        safe_extract_tar(archive, target)
        folder = find_lfw(target)
        if folder is None:
            raise FileNotFoundError(f"load_lfw: the archive {archive} did not contain LFW's person folders")
    transform = ([CenterCrop(crop)] if crop else []) + [Resize(image_size)]
    if flip:
        transform.append(RandomHorizontalFlip(0.5))
    if jitter:
        transform.append(ColorJitter(jitter, jitter, jitter))
    return ImageFolder(folder, transform, cache_dir=cache_dir, augment_copies=augment_copies,
                       progress=progress, workers=workers, name="lfw")


def _lfw_missing(searched, advice):
    return (f"load_lfw: no LFW images found in {searched} (looked for one folder per person holding JPEGs, "
            f"directly or inside {', '.join(LFW_FOLDER_NAMES)}); {advice}")


def _download_file(remote, folder, progress):
    # module-level, because the loaders' `download` argument hides the function of that name
    return download(remote.url, Path(folder) / remote.filename, remote.sha256, progress=progress)


# --------------------------------------------------------------------------- MNIST
_IDX_TYPES = {0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype(">i2"),
              0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path, expected_magic=None):
    """Read an IDX file (gzipped or raw) into a NumPy array, validating its header.

    The header is two zero bytes, a type code (0x08 = uint8, ...), the number of dimensions and one
    big-endian uint32 per dimension; MNIST images have magic 2051 (uint8, 3-D), labels 2049 (1-D).
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as error:   # (a damaged .gz: zlib's "invalid distance")
        raise ValueError(f"read_idx: cannot read {path} ({error}); is it a complete IDX file?") from error
    if len(data) < 4:
        raise ValueError(f"read_idx: {path} is too short for an IDX header ({len(data)} bytes)")
    magic = int.from_bytes(data[:4], "big")
    if expected_magic is not None and magic != expected_magic:
        raise ValueError(f"read_idx: {path} has magic number {magic}, expected {expected_magic}; "
                         f"is it the right file (images 2051, labels 2049), not corrupted?")
    zero, type_code, ndim = int.from_bytes(data[:2], "big"), data[2], data[3]
    if zero != 0 or type_code not in _IDX_TYPES or ndim == 0:
        raise ValueError(f"read_idx: {path} is not an IDX file (magic number {magic:#010x})")
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    dtype = _IDX_TYPES[type_code]
    expected = math.prod(shape) * dtype.itemsize   # Python ints: a corrupt header cannot overflow
    if len(data) - header != expected:
        raise ValueError(f"read_idx: {path} declares shape {shape} ({expected} bytes of data) but holds "
                         f"{len(data) - header}; the file is truncated or corrupted")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _find_file(folders, stem, suffixes=(".gz", "")):
    for folder in folders:
        for suffix in suffixes:
            candidate = Path(folder) / f"{stem}{suffix}"
            if candidate.is_file():
                return candidate
    return None


def load_mnist(data_dir=None, split="train", download=True, cache_dir=None, progress=True):
    """MNIST digits from the four official IDX files (gzipped or not).

    With `data_dir`, reads the split's two files from `data_dir`, `data_dir/mnist` or
    `data_dir/MNIST/raw` only: a missing file is a FileNotFoundError, never a file taken from the cache
    or a download. Without it: `cache_dir/mnist`, downloading the missing files (SHA-256 checked) into
    it when `download`.

    Returns:
        images float32 (N, 1, 28, 28) in [-1, 1], labels int64 (N,); N = 60000 (train) or 10000 (test).
    """
    prefix = {"train": "train", "test": "t10k"}.get(split)
    if prefix is None:
        raise ValueError(f"load_mnist: split must be 'train' or 'test', got {split!r}")
    cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    stems = {f"{prefix}-images-idx3-ubyte": MNIST_IMAGES_MAGIC, f"{prefix}-labels-idx1-ubyte": MNIST_LABELS_MAGIC}
    if data_dir is not None:
        d = Path(data_dir).expanduser()
        folders = [d, d / "mnist", d / "MNIST" / "raw"]
    else:
        folders = [cache_dir / "mnist"]
    paths = {stem: _find_file(folders, stem) for stem in stems}
    missing = ", ".join(f"{stem}[.gz]" for stem, path in paths.items() if path is None)
    if missing and data_dir is not None:
        raise FileNotFoundError(f"load_mnist: {missing} not found in {d}, {d / 'mnist'} or {d / 'MNIST' / 'raw'}; "
                                f"pass data_dir=<the folder with MNIST's IDX files>, or data_dir=None for the cache "
                                f"({cache_dir / 'mnist'}) and a download of what it lacks")
    if missing and not download:
        raise FileNotFoundError(f"load_mnist: {missing} not found in {folders[0]}; pass data_dir=<folder with the "
                                f"four IDX files>, or download=True")
    arrays = []
    for stem, magic in stems.items():
        path = paths[stem]
        if path is None:
            remote = RemoteFile(f"{stem}.gz", MNIST_MIRROR + stem + ".gz", MNIST_FILES[stem])
            path = _download_file(remote, cache_dir / "mnist", progress)
        arrays.append(read_idx(path, magic))
    images, labels = arrays
    if images.ndim != 3 or len(images) != len(labels):
        raise ValueError(f"load_mnist: {len(images)} images of shape {images.shape[1:]} but {len(labels)} labels")
    return _uint8_to_float(images[:, None]), labels.astype(np.int64)


def _uint8_to_float(images):
    return images.astype(np.float32) * np.float32(1 / 127.5) - np.float32(1.0)


def colorize_mnist(images, labels, mode="random", rng=None, colors=None):
    """Tint greyscale digits: the stroke takes a colour, the background stays black.

    Args:
        images: (N, 1, H, W) float in [-1, 1] (as `load_mnist` returns) or (N, H, W) uint8.
        labels: (N,) digit classes.
        mode: "random" (each image its own random colour) or "class" (each digit class a fixed colour,
            `colors` (10, 3) or `CLASS_COLORS`).
        rng: NumPy Generator or seed for the random colours.

    Returns:
        images float32 (N, 3, H, W) in [-1, 1], labels, colors: (N, 3) per image ("random") or
        (10, 3) per class ("class"), RGB in [0, 1].
    """
    images = np.asarray(images)
    intensity = images.astype(np.float32) / 255.0 if images.dtype == np.uint8 else (images.astype(np.float32) + 1) / 2
    if intensity.ndim == 3:
        intensity = intensity[:, None]
    if intensity.ndim != 4 or intensity.shape[1] != 1:
        raise ValueError(f"colorize_mnist: expected (N, 1, H, W) or (N, H, W) greyscale digits, got {images.shape}")
    labels = np.asarray(labels)
    if len(labels) != len(intensity):
        raise ValueError(f"colorize_mnist: {len(intensity)} images but {len(labels)} labels")
    if mode == "random":
        rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        # bright, saturated colours: a random hue at full value, so no digit disappears into the black
        hue = rng.random(len(labels))
        colors = _hsv_to_rgb(hue, rng.uniform(0.6, 1.0, len(labels)), np.ones(len(labels))).astype(np.float32)
        per_image = colors
    elif mode == "class":
        colors = CLASS_COLORS if colors is None else np.asarray(colors, dtype=np.float32)
        if colors.ndim != 2 or colors.shape[1] != 3 or len(colors) <= int(labels.max(initial=0)):
            raise ValueError(f"colorize_mnist: colors must be (n_classes, 3), got {colors.shape}")
        per_image = colors[labels]
    else:
        raise ValueError(f"colorize_mnist: mode must be 'random' or 'class', got {mode!r}")
    tinted = intensity * per_image[:, :, None, None]
    return tinted * 2 - 1, labels, colors


def _hsv_to_rgb(h, s, v):
    k = (np.array([5.0, 3.0, 1.0])[None] + h[:, None] * 6) % 6
    return v[:, None] - v[:, None] * s[:, None] * np.clip(np.minimum(k, 4 - k), 0, 1)


def load_colored_mnist(data_dir=None, split="train", mode="random", rng=None, **kwargs):
    """`load_mnist` followed by `colorize_mnist`: (images (N, 3, 28, 28), labels, colors)."""
    images, labels = load_mnist(data_dir, split, **kwargs)
    return colorize_mnist(images, labels, mode=mode, rng=rng)


# --------------------------------------------------------------------------- CIFAR-10
def read_cifar_binary(path):
    """One CIFAR-10 binary batch: 10,000 records of 1 label byte + 3072 pixel bytes (R, G, B planes of 32x32).

    A file of any other size (truncated, even at a record boundary, or not a batch) is a ValueError; one
    of the size of CIFAR-100's train.bin or test.bin says so.
    Returns uint8 images (10000, 3, 32, 32) and int64 labels.
    """
    size, expected = Path(path).stat().st_size, CIFAR10_BATCH_RECORDS * CIFAR10_RECORD
    if size in [n * CIFAR100_RECORD for n in CIFAR100_FILE_RECORDS]:
        raise ValueError(f"read_cifar_binary: {path} holds {size} bytes: {size // CIFAR100_RECORD} records of "
                         f"{CIFAR100_RECORD} bytes (2 labels + {CIFAR10_PIXELS} pixels), the layout of CIFAR-100, "
                         f"which nnbox does not load; for CIFAR-10 use {CIFAR10_BINARY.filename} "
                         f"({CIFAR10_BINARY.url})")
    if size != expected:
        whole = "not a whole number of records" if size % CIFAR10_RECORD else f"{size // CIFAR10_RECORD} whole records"
        raise ValueError(f"read_cifar_binary: {path} holds {size} bytes ({whole}); a CIFAR-10 binary batch holds "
                         f"exactly {expected} ({CIFAR10_BATCH_RECORDS} records of {CIFAR10_RECORD} bytes: 1 label + "
                         f"{CIFAR10_PIXELS} pixels). The file is truncated or is not a CIFAR-10 .bin batch: "
                         f"{_cifar_fetch_again(CIFAR10_BINARY)}")
    records = np.fromfile(path, dtype=np.uint8).reshape(-1, CIFAR10_RECORD)
    labels = records[:, 0].astype(np.int64)
    if labels.max() > 9:
        raise ValueError(f"read_cifar_binary: {path} has label {labels.max()} > 9 (CIFAR-10's classes are 0..9), so "
                         f"the file is corrupt: {_cifar_fetch_again(CIFAR10_BINARY)}")
    return records[:, 1:].reshape(-1, 3, 32, 32), labels


def read_cifar_python(path):
    """One CIFAR-10 "python version" batch, through `safe_unpickle` (no code can run).

    A batch of any other size than 10,000 records of 3072 pixels, with as many labels, is a ValueError.
    Returns uint8 images (10000, 3, 32, 32) and int64 labels.
    """
    with open(path, "rb") as f:
        try:
            batch = safe_unpickle(f)
        except (pickle.UnpicklingError, EOFError, ValueError) as error:
            if isinstance(error, UnsafePickleError):
                raise
            raise ValueError(f"read_cifar_python: cannot read {path} ({type(error).__name__}: {error}); "
                             f"is it a complete CIFAR-10 python batch?") from error
    if isinstance(batch, dict) and b"fine_labels" in batch:
        raise ValueError(f"read_cifar_python: {path} has b'fine_labels': it is a CIFAR-100 batch, which nnbox does "
                         f"not load; for CIFAR-10 {_cifar_fetch_again(CIFAR10_PYTHON)}")
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise ValueError(f"read_cifar_python: {path} is not a CIFAR-10 batch (a dict with b'data' and b'labels')")
    data, labels = np.asarray(batch[b"data"]), np.asarray(batch[b"labels"])
    for name, values, low, high in (("pixel", data, 0, 255), ("label", labels, 0, 9)):
        if values.dtype.kind not in "iub" or (values.size and (values.min() < low or values.max() > high)):
            found = (f"{values.dtype} values" if values.dtype.kind not in "iub"
                     else f"values from {values.min()} to {values.max()}")
            raise ValueError(f"read_cifar_python: {path} has {name}s of {found}, not integers in {low}..{high}; the "
                             f"file is corrupt or is not a CIFAR-10 python batch: {_cifar_fetch_again(CIFAR10_PYTHON)}")
    data, labels = data.astype(np.uint8), labels.astype(np.int64)
    n = CIFAR10_BATCH_RECORDS
    if data.shape != (n, CIFAR10_PIXELS) or labels.shape != (n,):
        raise ValueError(f"read_cifar_python: {path} holds data {data.shape} and labels {labels.shape}; a CIFAR-10 "
                         f"python batch holds exactly {n} records: data ({n}, {CIFAR10_PIXELS}) (R, G, B planes of "
                         f"32x32) and labels ({n},). The file is truncated or is not a CIFAR-10 python batch: "
                         f"{_cifar_fetch_again(CIFAR10_PYTHON)}")
    return data.reshape(-1, 3, 32, 32), labels


def _cifar_fetch_again(remote):
    return f"download {remote.filename} again ({remote.url}) and extract it afresh"


def _cifar_folder(folder):
    for sub in ("cifar-10-batches-bin", "cifar-10-batches-py", ""):
        candidate = Path(folder) / sub
        if (candidate / "test_batch.bin").is_file() or (candidate / "data_batch_1.bin").is_file():
            return candidate, "binary"
        if (candidate / "test_batch").is_file() or (candidate / "data_batch_1").is_file():
            return candidate, "python"
    return None, None


def load_cifar10(data_dir=None, split="train", download=True, cache_dir=None, progress=True):
    """CIFAR-10 from the binary version (or the python version, read safely).

    Looks for `cifar-10-batches-bin` (`data_batch_1..5.bin`, `test_batch.bin`) or `cifar-10-batches-py`,
    or those files directly, in `data_dir` only when it is given: a folder without them is a
    FileNotFoundError, never the cache's copy or a download. Without `data_dir`: in `cache_dir/cifar10`,
    else (when `download`) the binary archive is downloaded (SHA-256 checked) and extracted there.

    Returns:
        images float32 (N, 3, 32, 32) in [-1, 1], labels int64 (N,), class names (list of 10 str).
    """
    if split not in ("train", "test"):
        raise ValueError(f"load_cifar10: split must be 'train' or 'test', got {split!r}")
    cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    searched = Path(data_dir).expanduser() if data_dir is not None else cache_dir / "cifar10"
    folder, kind = _cifar_folder(searched)
    if folder is None and data_dir is not None:
        raise FileNotFoundError(_cifar_missing(searched, "pass data_dir=<the folder holding cifar-10-batches-bin>, "
                                                         f"or data_dir=None for the cache ({cache_dir / 'cifar10'}) "
                                                         f"and a download"))
    if folder is None:
        if not download:
            raise FileNotFoundError(_cifar_missing(searched, "pass data_dir=<folder>, or download=True"))
        archive = _download_file(CIFAR10_BINARY, cache_dir / "downloads", progress)
        target = cache_dir / "cifar10"
        if target.exists():
            shutil.rmtree(target)
        safe_extract_tar(archive, target)
        folder, kind = _cifar_folder(target)
        if folder is None:
            raise FileNotFoundError(f"load_cifar10: the archive {archive} did not contain CIFAR-10 batches")
    suffix = ".bin" if kind == "binary" else ""
    names = [f"data_batch_{i}{suffix}" for i in range(1, 6)] if split == "train" else [f"test_batch{suffix}"]
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise FileNotFoundError(f"load_cifar10: {folder} lacks {', '.join(missing)} for split={split!r}"
                                + ("; this copy may hold only the test split" if split == "train" else ""))
    reader = read_cifar_binary if kind == "binary" else read_cifar_python
    parts = [reader(folder / n) for n in names]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return _uint8_to_float(images), labels, _cifar_classes(folder)


def _cifar_missing(searched, advice):
    return (f"load_cifar10: no CIFAR-10 batches in {searched} (looked for test_batch.bin or data_batch_1.bin, or the "
            f"python version's test_batch or data_batch_1, in it or in its cifar-10-batches-bin or "
            f"cifar-10-batches-py folder); {advice}")


def _cifar_classes(folder):
    meta = folder / "batches.meta.txt"
    if meta.is_file():
        names = [line.strip() for line in meta.read_text().splitlines() if line.strip()]
        if len(names) == 10:
            return names
    return list(CIFAR10_CLASSES)


# --------------------------------------------------------------------------- Olivetti
OLIVETTI_SHAPE = (400, 64, 64)


def load_olivetti(data_dir):
    """The Olivetti (AT&T) faces: 400 greyscale 64x64 photos, 10 of each of 40 people.

    Reads `olivetti_faces.npy` (uint8 in [0, 255], or floats in [0, 1] as scikit-learn's
    `fetch_olivetti_faces().images` saved with `np.save`) and `olivetti_target.npy` (the person ids)
    from `data_dir` or `data_dir/olivetti`, with `allow_pickle=False`. There is no download: the
    official copy is a MATLAB file, which scikit-learn converts.

    Returns:
        images float32 (400, 1, 64, 64) in [-1, 1], labels int64 (400,) in 0..39.
    """
    root = Path(data_dir).expanduser()
    folder = next((f for f in (root, root / "olivetti") if (f / "olivetti_faces.npy").is_file()), None)
    if folder is None:
        raise FileNotFoundError(f"load_olivetti: olivetti_faces.npy not found in {root} or {root / 'olivetti'}; pass "
                                f"data_dir=<folder with olivetti_faces.npy and olivetti_target.npy> (scikit-learn's "
                                f"fetch_olivetti_faces() gives the arrays: np.save them there)")
    images, labels = (_read_npy(folder / name, what) for name, what in (("olivetti_faces.npy", "images"),
                                                                          ("olivetti_target.npy", "person ids")))
    if images.shape != OLIVETTI_SHAPE or labels.shape != OLIVETTI_SHAPE[:1]:
        flat = " (scikit-learn's .data: reshape it to (400, 64, 64))" if images.shape == (400, 64 * 64) else ""
        raise ValueError(f"load_olivetti: expected images {OLIVETTI_SHAPE} and labels (400,), got {images.shape}"
                         f"{flat} and {labels.shape} in {folder}")
    if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() > 39:
        found = f" values in [{labels.min()}, {labels.max()}]" if np.issubdtype(labels.dtype, np.number) else ""
        raise ValueError(f"load_olivetti: {folder / 'olivetti_target.npy'} must hold person ids 0..39, got "
                         f"{labels.dtype}{found}")
    labels = labels.astype(np.int64)
    if images.dtype == np.uint8:
        return np.ascontiguousarray(_uint8_to_float(images[:, None])), labels
    in_range = np.issubdtype(images.dtype, np.floating) and np.isfinite(images).all() and images.min() >= 0 \
        and images.max() <= 1
    if not in_range:
        found = f" in [{images.min()}, {images.max()}]" if np.issubdtype(images.dtype, np.number) else ""
        raise ValueError(f"load_olivetti: {folder / 'olivetti_faces.npy'} must be uint8, or floats in [0, 1]; got "
                         f"{images.dtype}{found}")
    return np.ascontiguousarray(images[:, None] * 2 - 1, dtype=np.float32), labels


def _read_npy(path, what):
    """The array in the .npy file `path` (holding `what`), read without pickle; clear errors otherwise."""
    if not path.is_file():
        raise FileNotFoundError(f"load_olivetti: {path} is missing (it holds the {what})")
    try:
        return load_npy(path)
    except SerializationError as error:
        raise ValueError(f"load_olivetti: {error}") from None
