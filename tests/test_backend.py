"""Array backends: picking NumPy or CuPy from the data, moving between devices and dtypes, clear errors."""
from types import SimpleNamespace

import numpy as np
import pytest

from nnbox import backend


class FakeCupyArray:
    """Stands in for cupy.ndarray so the CuPy branches are tested on machines without a GPU."""

    def __init__(self, array):
        self.array = np.asarray(array)
        self.dtype = self.array.dtype

    def get(self):
        return self.array


def fake_cupy(device_count=1, error=None):
    def get_device_count():
        if error is not None:
            raise error
        return device_count

    return SimpleNamespace(ndarray=FakeCupyArray, asarray=FakeCupyArray,
                           cuda=SimpleNamespace(runtime=SimpleNamespace(getDeviceCount=get_device_count)))


def test_get_array_module_is_numpy_for_cpu_data():
    assert backend.get_array_module(np.zeros(2)) is np
    assert backend.get_array_module(np.zeros(2), None, 3.0) is np
    assert backend.get_array_module() is np


def test_get_array_module_finds_a_cupy_array_among_the_arguments(monkeypatch):
    cupy = fake_cupy()
    monkeypatch.setattr(backend, "_cupy", cupy)
    assert backend.get_array_module(np.zeros(1), None, FakeCupyArray([1.0])) is cupy
    assert backend.get_array_module(np.zeros(1)) is np
    assert backend.is_gpu_array(FakeCupyArray([1.0])) and not backend.is_gpu_array(np.zeros(1))
    assert backend.device_of(FakeCupyArray([1.0])) == "gpu" and backend.device_of(np.zeros(1)) == "cpu"


def test_without_cupy_nothing_is_a_gpu_array(monkeypatch):
    monkeypatch.setattr(backend, "_cupy", None)
    assert not backend.cupy_available()
    assert backend.device_of(np.zeros(1)) == "cpu"
    assert backend.get_array_module(np.zeros(1)) is np


def test_to_device_cpu_is_free_for_numpy_arrays():
    x = np.arange(3.0)
    assert backend.to_device(x, "cpu") is x
    np.testing.assert_array_equal(backend.to_device([1, 2], "cpu"), [1, 2])
    assert backend.to_device(None, "cpu") is None
    assert backend.to_numpy(x) is x


def test_to_device_unknown_device():
    with pytest.raises(ValueError, match=r"unknown device 'cuda'.*\('cpu', 'gpu'\)"):
        backend.to_device(np.zeros(1), "cuda")


def test_to_gpu_without_cupy_names_the_extras(monkeypatch):
    monkeypatch.setattr(backend, "_cupy", None)
    monkeypatch.setattr(backend, "_CUPY_IMPORT_ERROR", None)
    with pytest.raises(RuntimeError, match=r"needs CuPy, which is not installed.*\.\[cuda12\].*\.\[cuda13\].*nvidia-smi"):
        backend.to_device(np.zeros(1), "gpu")


def test_a_broken_cupy_import_is_reported(monkeypatch):
    monkeypatch.setattr(backend, "_cupy", None)
    monkeypatch.setattr(backend, "_CUPY_IMPORT_ERROR", ImportError("libcudart.so.12: cannot open shared object"))
    with pytest.raises(RuntimeError, match=r"importing it failed: libcudart"):
        backend.require_cupy()


def test_cupy_without_a_device(monkeypatch):
    monkeypatch.setattr(backend, "_cupy", fake_cupy(device_count=0))
    assert not backend.cupy_available()
    with pytest.raises(RuntimeError, match="no CUDA device; use device='cpu'"):
        backend.to_device(np.zeros(1), "gpu")
    monkeypatch.setattr(backend, "_cupy", fake_cupy(error=RuntimeError("driver too old")))
    assert not backend.cupy_available()
    with pytest.raises(RuntimeError, match=r"cannot reach a CUDA device \(driver too old\).*nvidia-smi"):
        backend.require_cupy()


def test_to_device_moves_through_cupy(monkeypatch):
    monkeypatch.setattr(backend, "_cupy", fake_cupy())
    assert backend.cupy_available()
    on_gpu = backend.to_device(np.arange(3.0), "gpu")
    assert isinstance(on_gpu, FakeCupyArray)
    assert backend.to_device(on_gpu, "gpu") is on_gpu  # already there: no copy
    back = backend.to_device(on_gpu, "cpu")
    assert isinstance(back, np.ndarray)
    np.testing.assert_array_equal(back, [0.0, 1.0, 2.0])


def test_to_dtype_casts_floats_and_keeps_integers():
    x = np.arange(3.0, dtype=np.float32)
    assert backend.to_dtype(x, np.float32) is x
    assert backend.to_dtype(x, np.float64).dtype == np.float64
    indices = np.arange(3)
    assert backend.to_dtype(indices, np.float64) is indices
    mask = np.array([True, False])
    assert backend.to_dtype(mask, np.float64) is mask
    assert backend.to_dtype(None, np.float64) is None


def test_as_dtype():
    assert backend.as_dtype("float64") == np.float64
    assert backend.as_dtype(np.float16) == np.float16
    with pytest.raises(ValueError, match="floating point, got dtype int32"):
        backend.as_dtype(np.int32)


def test_as_rng_and_random_generator():
    generator = np.random.default_rng(3)
    assert backend.as_rng(generator) is generator
    assert backend.as_rng(5).integers(1000) == np.random.default_rng(5).integers(1000)
    assert isinstance(backend.as_rng(None), np.random.Generator)
    assert backend.random_generator(generator, np) is generator


def test_random_generator_for_cupy_is_seeded_from_the_numpy_rng():
    seeds = []
    fake = SimpleNamespace(random=SimpleNamespace(default_rng=lambda seed: seeds.append(seed) or seed))
    first = backend.random_generator(np.random.default_rng(7), fake)
    second = backend.random_generator(np.random.default_rng(7), fake)
    assert first == second == seeds[0] and isinstance(first, int)


def test_synchronize_is_a_no_op_on_numpy():
    assert backend.synchronize(np) is None


@pytest.mark.gpu
def test_real_gpu_round_trip():
    import cupy

    x = np.arange(6.0).reshape(2, 3)
    on_gpu = backend.to_device(x, "gpu")
    assert isinstance(on_gpu, cupy.ndarray)
    assert backend.get_array_module(on_gpu) is cupy
    backend.synchronize(cupy)
    np.testing.assert_array_equal(backend.to_numpy(on_gpu), x)
    assert backend.to_dtype(on_gpu, np.float32).dtype == np.float32


def test_fetch_scalars_gives_floats_in_order():
    values = [1, np.float32(2.5), np.asarray(3.0), np.array([4.0]).sum()]
    assert backend.fetch_scalars(values) == [1.0, 2.5, 3.0, 4.0]
    assert all(type(v) is float for v in backend.fetch_scalars(values))
