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
heap memory by itself (its mmap threshold adapts up to 32 MiB), while larger ones are always fresh
pages from the OS; keeping small arrays too only adds idle memory (the faces GAN's peak went from
209 to 339 MiB with 1 MiB, 232 MiB with 32 MiB).

Limits: arrays under MIN_BYTES, CuPy arrays (CuPy's own memory pool already recycles) and a
disabled workspace (NNBOX_WORKSPACE=0, or `set_enabled(False)`) get a plain `xp.empty`. A bucket
keeps at most MAX_PER_SIZE arrays; `clear()` forgets them all (their memory is freed when unused).
The cost: up to MAX_PER_SIZE idle arrays per size stay allocated between uses.
"""
import math
import os
import sys
import threading

import numpy as np

MIN_BYTES = 32 << 20       # see above: below it, malloc reuses freed memory by itself
MAX_PER_SIZE = 6

_buckets = {}              # (element count, dtype string) -> list of 1-D arrays
_lock = threading.Lock()
_enabled = os.environ.get("NNBOX_WORKSPACE", "1").strip() != "0"
# the references an unused pooled array has while `_free` looks at it: the bucket list, and
# sys.getrefcount's own argument
_UNUSED_REFS = 2


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
