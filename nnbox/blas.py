"""The OpenBLAS library behind NumPy, reached while the program runs (Linux; OpenBLAS only).

One job: `reread_environment()`, for when NumPy was imported before nnbox (most user scripts).
nnbox sets OPENBLAS_THREAD_TIMEOUT when it is imported (nnbox/__init__.py): without it OpenBLAS's
threads spin for ~0.1 s after every matrix product, on the cores nnbox's own threads
(nnbox.parallel) and the main thread need next. OpenBLAS reads the variable only when it starts its
threads, which it does when NumPy loads it; if NumPy came first, that was too early. Measured on 2
cores with NumPy imported first, a GAN training step without and with the re-read: faces GAN 382
-> 286 ms, 32x32 DCGAN 120 -> 104 ms (291 and 110 ms with the variable set before NumPy loads).

The library is the OpenBLAS file among the process's mapped files (NumPy's own scipy-openblas build
or a plain one). Elsewhere, or with another BLAS (MKL, Accelerate, BLIS), nothing is done.
"""
import ctypes
import functools
import sys


@functools.lru_cache(maxsize=1)
def _library():
    """The OpenBLAS library NumPy loaded, as a ctypes.CDLL, or None where it cannot be found."""
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
        if hasattr(library, "openblas_read_env"):
            return library
    return None


def reread_environment():
    """Make the loaded OpenBLAS read its environment variables again and restart its threads with
    them; True if it could. The threads stop here (blas_thread_shutdown_) and start again, with the
    values read (openblas_read_env), at the next product that uses them. Call it while no other
    thread is inside a BLAS call (nnbox calls it once, while being imported)."""
    library = _library()
    shutdown = getattr(library, "blas_thread_shutdown_", None) if library is not None else None
    if shutdown is None:
        return False
    library.openblas_read_env.argtypes, library.openblas_read_env.restype = (), None
    shutdown.argtypes, shutdown.restype = (), ctypes.c_int
    library.openblas_read_env()
    shutdown()
    return True
