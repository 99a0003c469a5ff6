"""Shared fixtures: a seeded generator, the optional torch oracle, and GPU skipping."""
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
