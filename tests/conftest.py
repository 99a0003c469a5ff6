"""Shared fixtures: a seeded generator, the optional torch oracle, GPU skipping, a watch on
host-device copies for the GPU step tests, paths that hold no data set, and pytest.raises that allows no warning."""
import contextlib
import warnings

import numpy as np
import pytest

from nnbox import backend


def pytest_collection_modifyitems(config, items):
    if backend.cupy_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CuPy and a CUDA device (install .[cuda12] or .[cuda13] on a GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def torch():
    """PyTorch as a test oracle; the test is skipped, with the reason shown, when it is missing."""
    return pytest.importorskip("torch", reason="torch is not installed: `pip install -e .[parity]` runs the parity tests")


@pytest.fixture(params=["missing", "empty", "a_file", "unrelated_files"])
def no_data_set(request, tmp_path):
    """A path that holds no data set (LFW, MNIST, CIFAR-10), in four kinds: missing, an empty folder, a
    file, a folder of unrelated files (a loose image and a text file; LFW has one folder per person)."""
    from PIL import Image
    path = tmp_path / request.param
    if request.param == "a_file":
        path.write_text("not a data set")
    elif request.param != "missing":
        path.mkdir()
    if request.param == "unrelated_files":
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path / "face.jpg")
        (path / "README.txt").write_text("not a data set")
    return path


@pytest.fixture
def raises_quietly():
    """raises_quietly(error, match): pytest.raises(error, match=match) that also fails on any warning inside
    (it becomes the exception instead), and checks that NumPy's error settings are the same after it: the
    trainers silence NumPy's overflow and invalid-value warnings inside their steps only."""
    @contextlib.contextmanager
    def raises(error, match):
        settings = np.geterr()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with pytest.raises(error, match=match):
                yield
        assert np.geterr() == settings
    return raises


@pytest.fixture
def device_copies(monkeypatch):
    """watch(fetch_owner): a context manager yielding (uploads, fetches), the shapes of the NumPy arrays
    given to cupy.asarray/cupy.array and of the arrays passed to fetch_owner.to_numpy inside it;
    any other wait for the GPU raises there (cupyx.allow_synchronize(False)). For issue 6's "no
    host-device copies inside a step but the logged scalars, fetched once"."""
    import cupy
    import cupyx

    @contextlib.contextmanager
    def watch(fetch_owner):
        uploads, fetches = [], []
        for name in ("asarray", "array"):
            original = getattr(cupy, name)

            def counted(a, *args, _original=original, **kwargs):
                if isinstance(a, np.ndarray) and not isinstance(a, cupy.ndarray) and a.ndim > 0:
                    uploads.append(a.shape)
                return _original(a, *args, **kwargs)
            monkeypatch.setattr(cupy, name, counted)

        def fetch(array, _original=fetch_owner.to_numpy):
            fetches.append(array.shape)
            with cupyx.allow_synchronize(True):
                return _original(array)
        monkeypatch.setattr(fetch_owner, "to_numpy", fetch)
        with cupyx.allow_synchronize(False):
            yield uploads, fetches

    return watch
