"""nnbox.gpu_kernels' hand-written (RawKernel) reductions against NumPy in float64, at the sizes
where a block reduction goes wrong: fewer values per channel than threads in a block, many times
more, a length that is not a multiple of the block, many channels, and a NaN. The layers' own
CPU/GPU comparisons (test_normalization) check them inside BatchNorm."""
import numpy as np
import pytest

from nnbox import gpu_kernels

pytestmark = pytest.mark.gpu

SHAPES = [(2, 3), (4, 5, 3), (64, 7, 33, 17), (3, 300, 2, 2), (1, 2, 1, 1)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_channel_mean_var(shape, dtype, rng):
    import cupy
    x = (rng.standard_normal(shape) * 3 + 1).astype(dtype)
    mean, var = gpu_kernels.channel_mean_var(cupy.asarray(x))
    axes = (0,) + tuple(range(2, x.ndim))
    assert mean.dtype == var.dtype == np.float64 and mean.shape == var.shape == (shape[1],)
    np.testing.assert_allclose(cupy.asnumpy(mean), x.astype(np.float64).mean(axis=axes), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(cupy.asnumpy(var), x.astype(np.float64).var(axis=axes), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_channel_sums(shape, dtype, rng):
    import cupy
    dy, xhat = (rng.standard_normal(shape).astype(dtype) for _ in range(2))
    sum_dy, sum_dy_xhat = gpu_kernels.channel_sums(cupy.asarray(dy), cupy.asarray(xhat))
    axes = (0,) + tuple(range(2, dy.ndim))
    wide = dy.astype(np.float64)
    assert sum_dy.dtype == sum_dy_xhat.dtype == dtype
    tolerance = 1e-12 if dtype == np.float64 else 1e-6
    np.testing.assert_allclose(cupy.asnumpy(sum_dy), wide.sum(axis=axes), rtol=tolerance, atol=tolerance)
    np.testing.assert_allclose(cupy.asnumpy(sum_dy_xhat), (wide * xhat).sum(axis=axes), rtol=tolerance,
                               atol=tolerance)


def test_channel_kernels_read_non_contiguous_and_float16_input(rng):
    import cupy
    x = rng.standard_normal((6, 4, 5, 3)).astype(np.float16)
    strided = cupy.asarray(np.ascontiguousarray(x.transpose(0, 1, 3, 2))).transpose(0, 1, 3, 2)
    mean, var = gpu_kernels.channel_mean_var(strided)
    wide = x.astype(np.float64)
    np.testing.assert_allclose(cupy.asnumpy(mean), wide.mean(axis=(0, 2, 3)), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(cupy.asnumpy(var), wide.var(axis=(0, 2, 3)), rtol=1e-10)
    sum_dy, _ = gpu_kernels.channel_sums(strided, strided)
    assert sum_dy.dtype == np.float32         # float16 sums overflow at 65504: kept in float32
    np.testing.assert_allclose(cupy.asnumpy(sum_dy).astype(np.float64), wide.sum(axis=(0, 2, 3)), rtol=1e-6)


def test_a_nan_makes_its_channel_nan_and_no_other(rng):
    import cupy
    x = rng.standard_normal((4, 3, 5, 5))
    x[2, 1, 3, 0] = np.nan
    mean, var = (cupy.asnumpy(a) for a in gpu_kernels.channel_mean_var(cupy.asarray(x)))
    assert np.isnan(mean[1]) and np.isnan(var[1])
    assert np.isfinite(mean[[0, 2]]).all() and np.isfinite(var[[0, 2]]).all()
