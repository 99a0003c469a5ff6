"""Large NumPy array work split over the cores (NumPy releases the GIL inside its loops).

    from nnbox import parallel
    parallel.run(len(rows), lambda a, b: np.multiply(x[a:b], 2, out=y[a:b]), size=x.size, xp=np)

The matrix products already use every core (BLAS threads); the element-wise work between them
(copies for im2col, BatchNorm, activations, Adam) would otherwise run on one. NumPy drops the GIL
once a ufunc, a copy or a reduction loop starts, so threads that each take a contiguous piece of a
large array run truly in parallel.

`run(n, work, size, xp)` calls `work(start, stop)` on pieces that cover range(n) in order and
returns their results in that order (pieces as equal as integers allow). It runs in the calling
thread, as one piece `work(0, n)`, when:
  - the arrays are CuPy's (`xp` is not NumPy): the GPU parallelises on its own;
  - `size` (the number of elements the work touches) is below MIN_SIZE: handing work to a thread
    costs tens of microseconds, more than it saves on small arrays;
  - the call comes from inside a worker (no nesting), or THREADS is 1.
A worker's exception is raised in the caller. Results never depend on the thread count when the
caller combines per-piece results in piece order (e.g. per-sample partial sums concatenated, then
summed), which nnbox's layers do.

THREADS: the environment variable NNBOX_THREADS if set, else the number of CPUs (at most 8);
`set_threads(n)` changes it (1 turns the splitting off).
"""
import contextvars
import os
import threading
from concurrent.futures import ThreadPoolExecutor, wait

import numpy as np

MIN_SIZE = 1 << 17          # elements (512 KB of float32)
MAX_DEFAULT_THREADS = 8

_local = threading.local()
_pool = None
_pool_lock = threading.Lock()


def _default_threads():
    value = os.environ.get("NNBOX_THREADS", "").strip()
    if value:
        if not value.isdigit() or int(value) < 1:
            raise ValueError(f"NNBOX_THREADS must be a positive integer, got {value!r}")
        return int(value)
    return max(1, min(os.cpu_count() or 1, MAX_DEFAULT_THREADS))


THREADS = _default_threads()


def set_threads(count):
    """Use `count` threads (>= 1) for large array work from now on; returns the previous count."""
    global THREADS, _pool
    if int(count) != count or count < 1:
        raise ValueError(f"set_threads: count must be a positive integer, got {count!r}")
    previous = THREADS
    with _pool_lock:
        THREADS = int(count)
        if _pool is not None:
            _pool.shutdown(wait=True)
            _pool = None
    return previous


def split(n, parts):
    """[(start, stop), ...]: `parts` (at most n) contiguous, near-equal pieces covering range(n)."""
    parts = max(1, min(int(parts), int(n)))
    base, extra = divmod(int(n), parts)
    bounds, start = [], 0
    for index in range(parts):
        stop = start + base + (index < extra)
        bounds.append((start, stop))
        start = stop
    return bounds


def _executor():
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=max(THREADS - 1, 1), thread_name_prefix="nnbox",
                                       initializer=_mark_worker)
        return _pool


def _mark_worker():
    _local.in_worker = True


def run(n, work, size, xp=np):
    """Results of work(start, stop) over pieces of range(n), in order (see the module docstring)."""
    threads = THREADS
    if (threads < 2 or n < 2 or size < MIN_SIZE or xp is not np or getattr(_local, "in_worker", False)):
        return [work(0, n)]
    pieces = split(n, min(threads, max(1, size // MIN_SIZE)))
    if len(pieces) == 1:
        return [work(0, n)]
    # each piece runs in a copy of the caller's context: np.errstate (context-local in NumPy 2) then
    # applies to every piece, not only to the calling thread's
    futures = [_executor().submit(contextvars.copy_context().run, work, start, stop) for start, stop in pieces[1:]]
    try:
        first = work(*pieces[0])            # the calling thread takes the first piece
        return [first] + [future.result() for future in futures]
    except BaseException:
        wait(futures)   # no piece may still be writing into the caller's arrays once run has raised
        raise           # the calling thread's error, or else the first failed piece's


def assign(dest, source, axis=None, block=None):
    """dest[...] = source (broadcast to dest's shape), split along `axis` of dest to give every
    thread a piece; by default the first axis long enough (a copy of 3 channels splits along the
    next axis instead).

    block: copy each piece in slabs of `block` indices along `axis`, one after the other. For a
    transposing copy (dest and source laid out in different axis orders) this is what makes it
    fast: NumPy walks dest in order and source with a large stride, so a whole-array copy reads
    every cache line of source once per element it uses; a slab small enough for the cache reads
    each line once. Measured at batch 64, 2 threads: (N, C*H*W) -> (C*H*W, N) of 8 MiB,
    13.5 ms whole, 1.2 ms in slabs of 64 rows.
    """
    from .backend import get_array_module
    xp = get_array_module(dest)
    if dest.ndim == 0 or xp is not np:   # CuPy: one copy kernel, no pieces to hand out
        dest[...] = source
        return dest
    if tuple(getattr(source, "shape", ())) != tuple(dest.shape):
        source = xp.broadcast_to(source, dest.shape)
    if axis is None:
        axis = next((k for k, extent in enumerate(dest.shape) if extent >= 2 * THREADS), 0)
    step = None if block is None or xp is not np else max(1, int(block))

    def work(start, stop):
        slab = step or max(stop - start, 1)
        for first in range(start, stop, slab):
            index = (slice(None),) * axis + (slice(first, min(first + slab, stop)),)
            dest[index] = source[index]

    run(dest.shape[axis], work, dest.size, xp)
    return dest
