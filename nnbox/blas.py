"""The thread count of the BLAS behind NumPy, read and set while the program runs (OpenBLAS only).

    from nnbox import blas
    with blas.one_thread():        # every matrix product in here runs on the calling thread alone
        ...

Why: `nnbox.parallel` can split work that does matrix products over its own threads (a
convolution over pieces of the batch). Each piece must then run its products on one BLAS thread;
otherwise each piece's product would also start BLAS threads and the pieces would fight over the
cores. Two pieces on two cores, each with a one-thread product, were measured 20-35% faster than
the same work done as one two-thread product after another (one piece's copies, which wait on
memory, overlap the other's products, and no product waits for a second thread).

NumPy does not expose the setting, so it is called in the OpenBLAS library NumPy loaded (found
among the process's mapped files on Linux, under the names of NumPy's own OpenBLAS build and of a
plain one). Elsewhere, or with another BLAS (MKL, Accelerate, BLIS), `available()` is False and
`one_thread()` changes nothing; `nnbox.parallel` then does not split product work.

The setting is process-wide: inside `one_thread()`, a product started by any thread runs on one
thread. `nnbox.parallel` holds it only while its pieces run.
"""
import contextlib
import ctypes
import functools
import sys
import threading

# (set, get) symbol names: NumPy's wheels (scipy-openblas, 64-bit integers), then plain OpenBLAS builds
_SYMBOLS = (("scipy_openblas_set_num_threads64_", "scipy_openblas_get_num_threads64_"),
            ("scipy_openblas_set_num_threads", "scipy_openblas_get_num_threads"),
            ("openblas_set_num_threads64_", "openblas_get_num_threads64_"),
            ("openblas_set_num_threads", "openblas_get_num_threads"))
_lock = threading.Lock()
_depth = 0            # one_thread() blocks open now
_previous = None      # the count to restore when the last one ends


@functools.lru_cache(maxsize=1)
def _library():
    """The OpenBLAS library NumPy loaded (a ctypes.CDLL with the thread-count functions), or None."""
    import numpy  # noqa: F401  (NumPy loads its BLAS)
    if not sys.platform.startswith("linux"):
        return None
    try:
        with open("/proc/self/maps") as maps:
            paths = sorted({line.split()[-1] for line in maps if "openblas" in line.lower() and "/" in line})
    except OSError:
        return None
    for path in paths:
        try:
            library = ctypes.CDLL(path)
        except OSError:
            continue
        if any(hasattr(library, set_name) for set_name, _ in _SYMBOLS):
            return library
    return None


@functools.lru_cache(maxsize=1)
def _controls():
    """(set_num_threads, get_num_threads) of the loaded OpenBLAS, or None where it cannot be found."""
    library = _library()
    for set_name, get_name in _SYMBOLS if library is not None else ():
        set_threads, get_threads = getattr(library, set_name, None), getattr(library, get_name, None)
        if set_threads is not None and get_threads is not None:
            set_threads.argtypes, set_threads.restype = (ctypes.c_int,), None
            get_threads.argtypes, get_threads.restype = (), ctypes.c_int
            return set_threads, get_threads
    return None


def reread_environment():
    """Make the loaded OpenBLAS read its environment variables again and restart its threads with
    them; True if it could. For OPENBLAS_THREAD_TIMEOUT when NumPy (hence OpenBLAS) was imported
    before nnbox set it: OpenBLAS reads it only when it starts its threads, and without it they
    spin for ~0.1 s after every product, on the cores nnbox's own threads need next (measured, NumPy
    imported first: faces GAN step 299 -> 431 ms, 32x32 DCGAN 102 -> 120 ms on 2 cores). The threads
    stop here and start again, reading the new value, at the next product that uses them."""
    library = _library()
    read_env = getattr(library, "openblas_read_env", None) if library is not None else None
    shutdown = getattr(library, "blas_thread_shutdown_", None) if library is not None else None
    if read_env is None or shutdown is None:
        return False
    read_env.argtypes, read_env.restype = (), None
    shutdown.argtypes, shutdown.restype = (), ctypes.c_int
    read_env()
    shutdown()
    return True


def available():
    """Whether the BLAS thread count can be read and set (NumPy on OpenBLAS, on Linux)."""
    return _controls() is not None


def threads():
    """The BLAS thread count, or None when it cannot be read."""
    controls = _controls()
    return None if controls is None else int(controls[1]())


@contextlib.contextmanager
def one_thread():
    """Run the block with BLAS on one thread, and restore the previous count after it (nested uses
    and uses from several threads are fine: the count comes back when the outermost block ends)."""
    controls = _controls()
    if controls is None:
        yield
        return
    global _depth, _previous
    set_threads, get_threads = controls
    with _lock:
        _depth += 1
        if _depth == 1:
            _previous = get_threads()
            set_threads(1)
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                set_threads(_previous)
