"""Recycled large NumPy arrays: `empty(shape, dtype, xp)` reuses an array that nothing uses any more.

    from nnbox import workspace
    cols = workspace.empty((rows, columns), np.float32, xp)     # like xp.empty, maybe recycled

A training step makes the same large temporaries every time (im2col matrices, products before
col2im, layer outputs, BatchNorm's normalised input). A fresh large array costs more than filling
it: the allocator maps new pages from the operating system, which zeroes each one on first touch
(measured: a 64 MB im2col matrix costs ~10 ms in page faults alone; a DCGAN 64x64 step at one
thread went from 4.1 to 3.1 s when freed memory was kept for reuse).

`empty` keeps every large array it hands out (in a bucket per element count and dtype) and hands
the same memory out again once NOTHING references it any more: CPython's reference count says so
(a view that is still alive references its base, so a saved array, a view of it, or an output in
use is never recycled). There is no `free` to forget and no aliasing to get wrong: an array is
reused only when no Python object can see it.

Only arrays of MIN_BYTES (32 MiB) or more are kept: glibc's malloc serves smaller ones from freed
heap memory (once `tune_malloc` below has told it to keep that memory), while larger ones are always
fresh pages from the OS; keeping small arrays too only adds idle memory (the faces GAN's peak went from
209 to 339 MiB with 1 MiB, 232 MiB with 32 MiB).

Arrays under MIN_BYTES are glibc's to reuse, and by default it often does not: it returns freed
memory at the top of the heap to the OS once more than 128 KiB-64 MiB is free there, and maps
arrays above its (adaptive) threshold afresh, so a step's temporaries fault in new zeroed pages
every time (measured: 4,000-9,000 page faults and 20-60 ms of system time per GAN step).
`tune_malloc()`, called when nnbox is imported, sets glibc's mmap threshold to MIN_BYTES (arrays
below it come from the heap) and its trim threshold to TRIM_BYTES (freed heap memory stays for the
next step): 20-130 faults per step, and steps 3-6% faster (32x32 DCGAN 104 -> 97 ms, faces GAN
299 -> 288 ms, 64x64 DCGAN 1037 -> 984 ms on 2 cores), peak memory unchanged. The cost: up to
TRIM_BYTES of freed memory stays with the process. NNBOX_MALLOC_TUNING=0 leaves malloc alone; on
other C libraries (no glibc mallopt) it does nothing.

Limits: arrays under MIN_BYTES, CuPy arrays (CuPy's own memory pool already recycles) and a
disabled workspace (NNBOX_WORKSPACE=0, or `set_enabled(False)`) get a plain `xp.empty`. A bucket
keeps at most MAX_PER_SIZE arrays; `clear()` forgets them all (their memory is freed when unused).
The cost: up to MAX_PER_SIZE idle arrays per size stay allocated between uses.
"""
import ctypes
import ctypes.util
import math
import os
import sys
import threading

import numpy as np

MIN_BYTES = 32 << 20       # see above: below it, malloc reuses freed memory (with tune_malloc)
MAX_PER_SIZE = 6
TRIM_BYTES = 256 << 20     # tune_malloc: freed heap memory kept for reuse (1 GiB measured no faster)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3   # glibc's mallopt parameters (malloc.h)

_buckets = {}              # (element count, dtype string) -> list of 1-D arrays
_lock = threading.Lock()
_enabled = os.environ.get("NNBOX_WORKSPACE", "1").strip() != "0"
# the references an unused pooled array has while `_free` looks at it: the bucket list, and
# sys.getrefcount's own argument
_UNUSED_REFS = 2


def tune_malloc():
    """Make glibc's malloc keep and reuse the memory of arrays under MIN_BYTES (see the module
    docstring); True if it was applied. MIN_BYTES (32 MiB) is also the largest mmap threshold glibc
    accepts on 64-bit systems."""
    if os.environ.get("NNBOX_MALLOC_TUNING", "1").strip() == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):   # no glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MIN_BYTES)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_BYTES))


def set_enabled(enabled):
    """Turn recycling on or off (off: `empty` is xp.empty); returns the previous setting."""
    global _enabled
    previous, _enabled = _enabled, bool(enabled)
    if not _enabled:
        clear()
    return previous


def clear():
    """Forget every kept array (arrays still in use stay valid; the rest are freed)."""
    with _lock:
        _buckets.clear()


def kept_bytes():
    """Bytes held by the kept arrays, in use or not."""
    with _lock:
        return sum(array.nbytes for bucket in _buckets.values() for array in bucket)


def _free(bucket, index):
    return sys.getrefcount(bucket[index]) == _UNUSED_REFS


def empty(shape, dtype, xp=np):
    """An uninitialised array of `shape` and `dtype` on `xp`'s device, recycled when possible."""
    dtype = np.dtype(dtype)
    shape = tuple(int(size) for size in shape) if isinstance(shape, (tuple, list)) else (int(shape),)
    count = math.prod(shape)
    if xp is not np or not _enabled or count * dtype.itemsize < MIN_BYTES:
        return xp.empty(shape, dtype=dtype)
    key = (count, dtype.str)
    with _lock:
        bucket = _buckets.setdefault(key, [])
        for index in range(len(bucket)):
            if _free(bucket, index):
                return bucket[index].reshape(shape)
        array = np.empty(count, dtype=dtype)
        if len(bucket) < MAX_PER_SIZE:
            bucket.append(array)
    return array.reshape(shape)


def zeros(shape, dtype, xp=np):
    """`empty` filled with zeros."""
    array = empty(shape, dtype, xp)
    array.fill(0)
    return array
