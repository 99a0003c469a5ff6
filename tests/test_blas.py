"""nnbox.blas: the BLAS thread count, set to one while product work runs in pieces on parallel threads."""
import numpy as np
import pytest

from nnbox import blas

needs_control = pytest.mark.skipif(not blas.available(), reason="NumPy's BLAS here is not an OpenBLAS nnbox can find")


@needs_control
def test_one_thread_sets_one_and_restores_the_count_even_after_an_error():
    before = blas.threads()
    with blas.one_thread():
        assert blas.threads() == 1
        with blas.one_thread():                       # nested blocks: the count comes back at the outermost
            assert blas.threads() == 1
        assert blas.threads() == 1
    assert blas.threads() == before
    with pytest.raises(RuntimeError, match="inside"):
        with blas.one_thread():
            raise RuntimeError("inside")
    assert blas.threads() == before


@needs_control
def test_products_inside_one_thread_are_right():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((300, 200)), rng.standard_normal((200, 250))
    expected = a @ b
    with blas.one_thread():
        np.testing.assert_allclose(a @ b, expected, rtol=1e-12)


def test_without_control_one_thread_changes_nothing(monkeypatch):
    monkeypatch.setattr(blas, "_controls", lambda: None)
    assert not blas.available() and blas.threads() is None
    with blas.one_thread():
        pass
