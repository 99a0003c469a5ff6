"""Array backends: NumPy on the CPU, CuPy on the GPU.

nnbox never keeps a global "current device". Every function finds the array
module from the arrays it is given, as Chainer does::

    xp = get_array_module(x)        # numpy or cupy
    y = xp.maximum(x, 0)

Moving data between devices and dtypes goes through `to_device` and
`to_dtype`; `Module.to` and the optimisers' `to` use them.
"""
import numpy as np

_CUPY_IMPORT_ERROR = None
try:  # CuPy is optional: the `cuda12`/`cuda13` extras install it.
    import cupy as _cupy
except ImportError:  # pragma: no cover - depends on the machine
    _cupy = None
except Exception as error:  # pragma: no cover - a broken CUDA install
    _cupy = None
    _CUPY_IMPORT_ERROR = error

DEVICES = ("cpu", "gpu")
DEFAULT_DTYPE = np.float32

INSTALL_HINT = (
    "install the CuPy build that matches your CUDA driver: "
    "`pip install -e .[cuda12]` (CUDA 12.x) or `pip install -e .[cuda13]` (CUDA 13.x); "
    "`nvidia-smi` shows the driver's CUDA version"
)


def cupy_available():
    """True when CuPy imports and sees at least one CUDA device."""
    if _cupy is None:
        return False
    try:
        return _cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def require_cupy():
    """Return the cupy module, or raise a RuntimeError that says what is missing."""
    if _cupy is None:
        reason = f" (importing it failed: {_CUPY_IMPORT_ERROR})" if _CUPY_IMPORT_ERROR else ""
        raise RuntimeError(f"the GPU backend needs CuPy, which is not installed{reason}; {INSTALL_HINT}")
    try:
        count = _cupy.cuda.runtime.getDeviceCount()
    except Exception as error:
        raise RuntimeError(
            f"CuPy is installed but cannot reach a CUDA device ({error}); check the NVIDIA driver "
            f"with `nvidia-smi`, or use device='cpu'"
        ) from error
    if count == 0:
        raise RuntimeError("CuPy is installed but this machine has no CUDA device; use device='cpu'")
    return _cupy


def get_array_module(*arrays):
    """Return `cupy` if any argument is a CuPy array, else `numpy`.

    Non-array arguments (None, Python scalars) are ignored.
    """
    if _cupy is not None:
        for array in arrays:
            if isinstance(array, _cupy.ndarray):
                return _cupy
    return np


def is_gpu_array(array):
    return _cupy is not None and isinstance(array, _cupy.ndarray)


def device_of(array):
    """'gpu' for a CuPy array, 'cpu' otherwise."""
    return "gpu" if is_gpu_array(array) else "cpu"


def check_device(device):
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}: use one of {DEVICES}")
    return device


def to_device(array, device):
    """Return `array` on `device` ('cpu' or 'gpu'); no copy when it is already there."""
    check_device(device)
    if array is None:
        return None
    if device == "gpu":
        cupy = require_cupy()
        return array if isinstance(array, cupy.ndarray) else cupy.asarray(array)
    return array.get() if is_gpu_array(array) else np.asarray(array)


def to_numpy(array):
    """A NumPy copy-or-view of any array (CuPy arrays are copied to the host)."""
    return to_device(array, "cpu")


def fetch_scalars(values):
    """Floats of `values` (Python numbers or 0-d arrays, NumPy or CuPy). The device ones are stacked
    and copied to the host together: one transfer per step's logged scalars, not one wait each."""
    values = list(values)
    on_device = [i for i, value in enumerate(values) if is_gpu_array(value)]
    if on_device:
        xp = get_array_module(values[on_device[0]])
        fetched = to_numpy(xp.stack([values[i].astype(xp.float64).reshape(()) for i in on_device]))
        for i, value in zip(on_device, fetched):
            values[i] = value
    return [float(value) for value in values]


def to_dtype(array, dtype):
    """Cast floating-point arrays to `dtype`; integer arrays (indices, masks) keep theirs."""
    if array is None or not np.issubdtype(array.dtype, np.floating):
        return array
    return array.astype(dtype, copy=False)


def as_dtype(dtype):
    """Normalise 'float32', np.float32, ... to a NumPy dtype, accepting only floats."""
    dtype = np.dtype(dtype)
    if not np.issubdtype(dtype, np.floating):
        raise ValueError(f"parameters must be floating point, got dtype {dtype}")
    return dtype


def random_generator(rng, xp):
    """A random generator for arrays of module `xp`, seeded from the NumPy generator `rng`.

    NumPy arrays use `rng` itself. For CuPy a `cupy.random.Generator` is made from
    a seed drawn from `rng`, so runs stay reproducible from one NumPy seed.
    """
    if xp is np:
        return rng
    return xp.random.default_rng(int(rng.integers(2**63)))


def draw_dtype(dtype):
    """The dtype to draw random numbers in for arrays of `dtype`: itself for float32 and float64,
    float32 otherwise (NumPy's and CuPy's generators draw no float16); cast the draw afterwards."""
    dtype = np.dtype(dtype)
    return dtype if dtype in (np.float32, np.float64) else np.dtype(np.float32)


def sum_dtype(dtype):
    """The dtype to sum float arrays of `dtype` in: itself for float32 and float64, float32 for
    float16 (whose sums overflow at 65504); cast the sum back where the result keeps `dtype`."""
    return draw_dtype(dtype)


def is_gpu_generator(rng):
    """Whether `rng` is a CuPy random generator (it draws on the device)."""
    return type(rng).__module__.split(".")[0] == "cupy"


def as_rng(rng_or_seed):
    """Accept a NumPy Generator, an int seed or None (fresh entropy)."""
    if isinstance(rng_or_seed, np.random.Generator):
        return rng_or_seed
    return np.random.default_rng(rng_or_seed)


def synchronize(xp):
    """Wait for queued GPU work (a no-op on NumPy); use before reading a timer."""
    if xp is not np:
        xp.cuda.get_current_stream().synchronize()
