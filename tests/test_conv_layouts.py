"""The batch-last column order of the convolution maths ((oh, ow, n) instead of (n, oh, ow)).

The layers pick the order by map size (conv_maths.batch_last_layout); both orders must give the
same layers. Checked here: im2col/col2im in batch-last order are the same matrices with permuted
columns and stay adjoint; the channel-major conversions round-trip; and Conv2d/ConvTranspose2d
give identical outputs and gradients whichever order is forced, with gradchecks in both.
"""
import numpy as np
import pytest

from layers import conv_maths
from layers.conv import Conv2d, ConvTranspose2d
from nnbox.gradcheck import gradcheck

GEOMETRIES = [
    (((3, 2), (2, 3), (1, 0), (2, 1)), (9, 8)),   # stride phases with dilation and padding
    (((4, 4), (2, 2), (1, 1), (1, 1)), (8, 8)),   # the DCGAN block
    (((4, 4), (1, 1), (0, 0), (1, 1)), (4, 4)),   # one output pixel
    (((3, 3), (1, 1), (1, 1), (1, 1)), (5, 6)),   # the faces GAN's 3x3 convolutions
    (((2, 2), (3, 3), (0, 0), (1, 1)), (7, 8)),   # stride > kernel: pixels no window reads
]


def _out_size(geometry, size):
    return tuple(conv_maths.conv_output_size(s, k, st_, p, d) for s, k, st_, p, d in zip(size, *geometry))


def _to_batch_last_columns(cols, n, out_size):
    """Reorder the columns of a (rows, N * OH * OW) matrix from (n, oh, ow) to (oh, ow, n)."""
    rows = cols.shape[0]
    return np.ascontiguousarray(cols.reshape(rows, n, *out_size).transpose(0, 2, 3, 1)).reshape(rows, -1)


@pytest.mark.parametrize("geometry, size", GEOMETRIES)
def test_batch_last_im2col_is_the_column_permutation(geometry, size, rng):
    x = rng.standard_normal((3, 2) + size)
    out_size = _out_size(geometry, size)
    cols = conv_maths.im2col(x, *geometry, out_size)
    cols_last = conv_maths.im2col(x, *geometry, out_size, batch_last=True)
    assert cols_last.shape == cols.shape
    assert cols_last.flags.c_contiguous or np.shares_memory(cols_last, x)   # one covering window: a view of x
    np.testing.assert_array_equal(cols_last, _to_batch_last_columns(cols, 3, out_size))


@pytest.mark.parametrize("geometry, size", GEOMETRIES)
def test_batch_last_col2im_matches_and_is_adjoint(geometry, size, rng):
    x = rng.standard_normal((3, 2) + size)
    out_size = _out_size(geometry, size)
    cols_last = conv_maths.im2col(x, *geometry, out_size, batch_last=True)
    other = rng.standard_normal(cols_last.shape)
    back_last = conv_maths.col2im(other, x.shape, *geometry, out_size, batch_last=True)
    np.testing.assert_allclose(np.sum(cols_last * other), np.sum(x * back_last), rtol=1e-12)
    # the same image as the default order given the same entries in (n, oh, ow) order
    rows = other.shape[0]
    other_default = np.ascontiguousarray(other.reshape(rows, *out_size, 3).transpose(0, 3, 1, 2)).reshape(rows, -1)
    back = conv_maths.col2im(other_default, x.shape, *geometry, out_size)
    np.testing.assert_allclose(back_last, back, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("geometry, size", GEOMETRIES[:2])
def test_batch_last_col2im_in_one_channel_slabs(geometry, size, rng, monkeypatch):
    """col2im's batch-last write goes in slabs of channels (TRANSPOSE_SLAB_ROWS); with slabs of one
    channel the image is the same."""
    x = rng.standard_normal((3, 5) + size)
    out_size = _out_size(geometry, size)
    cols = rng.standard_normal(conv_maths.im2col(x, *geometry, out_size, batch_last=True).shape)
    whole = conv_maths.col2im(cols, x.shape, *geometry, out_size, batch_last=True)
    monkeypatch.setattr(conv_maths, "TRANSPOSE_SLAB_ROWS", 1)
    np.testing.assert_array_equal(conv_maths.col2im(cols, x.shape, *geometry, out_size, batch_last=True), whole)


@pytest.mark.parametrize("batch_last", [False, True])
def test_channel_major_round_trip_with_bias(batch_last, rng):
    y = rng.standard_normal((3, 4, 2, 5))
    bias = rng.standard_normal(4)
    matrix = conv_maths.to_channel_major(y, batch_last)
    assert matrix.shape == (4, 3 * 2 * 5) and matrix.flags.c_contiguous
    expected = y.transpose(1, 2, 3, 0) if batch_last else y.transpose(1, 0, 2, 3)
    np.testing.assert_array_equal(matrix, expected.reshape(4, -1))
    back = conv_maths.from_channel_major(matrix, y.shape, bias, batch_last)
    assert back.flags.c_contiguous
    np.testing.assert_allclose(back, y + bias.reshape(1, 4, 1, 1), rtol=1e-15)


def test_layout_rule():
    assert conv_maths.batch_last_layout((8, 8)) and conv_maths.batch_last_layout((1, 1))
    assert not conv_maths.batch_last_layout((16, 16)) and not conv_maths.batch_last_layout((9, 8))


LAYERS = [
    (Conv2d, dict(in_channels=3, out_channels=4, kernel_size=4, stride=2, padding=1), (10, 10)),
    (Conv2d, dict(in_channels=2, out_channels=3, kernel_size=3, padding=1, dilation=2), (7, 6)),
    (ConvTranspose2d, dict(in_channels=4, out_channels=3, kernel_size=4, stride=2, padding=1), (5, 5)),
    (ConvTranspose2d, dict(in_channels=3, out_channels=2, kernel_size=3, stride=2, padding=1,
                           output_padding=1), (4, 3)),
]


def _run(layer, x, dy):
    layer.zero_grad()
    y = layer(x)
    dx = layer.backward(dy)
    return y, dx, layer.weight.grad.copy(), layer.bias.grad.copy()


@pytest.mark.parametrize("cls, kwargs, size", LAYERS)
def test_layers_identical_in_both_layouts(cls, kwargs, size, rng, monkeypatch):
    layer = cls(**kwargs, rng=rng).to(np.float64)
    x = rng.standard_normal((3, kwargs["in_channels"]) + size)
    dy = rng.standard_normal(layer(x).shape)
    results = {}
    for max_pixels in (-1, 10**9):   # never, always batch-last
        monkeypatch.setattr(conv_maths, "BATCH_LAST_MAX_PIXELS", max_pixels)
        results[max_pixels] = _run(layer, x, dy)
    for default, last in zip(results[-1], results[10**9]):
        np.testing.assert_allclose(last, default, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("max_pixels", [-1, 10**9])
@pytest.mark.parametrize("cls, kwargs, size", LAYERS)
def test_gradcheck_in_each_layout(cls, kwargs, size, max_pixels, rng, monkeypatch):
    monkeypatch.setattr(conv_maths, "BATCH_LAST_MAX_PIXELS", max_pixels)
    layer = cls(**kwargs, rng=rng).to(np.float64)
    gradcheck(layer, rng.standard_normal((2, kwargs["in_channels"]) + size))


@pytest.mark.parametrize("batch_last", [False, True])
@pytest.mark.parametrize("geometry, size", GEOMETRIES + [
    (((4, 4), (2, 2), (1, 1), (1, 1)), (32, 32)),   # the DCGAN block at a size where phases overlap
    (((3, 3), (1, 1), (1, 1), (1, 1)), (6, 5)),     # stride 1: up to 9 entries per pixel
])
def test_col2im_gather_equals_col2im(geometry, size, batch_last, rng):
    """The GPU's col2im (a gather) on NumPy: the same image as the phase slice-adds."""
    x_shape = (3, 2) + size
    out_size = _out_size(geometry, size)
    cols = rng.standard_normal((2 * geometry[0][0] * geometry[0][1], 3 * out_size[0] * out_size[1]))
    want = conv_maths.col2im(cols, x_shape, *geometry, out_size, batch_last=batch_last)
    got = conv_maths.col2im_gather(cols, x_shape, *geometry, out_size, batch_last=batch_last)
    assert got.shape == x_shape and got.flags.c_contiguous
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("batch_last", [False, True])
def test_col2im_gather_plan_does_not_grow_with_the_batch(batch_last):
    """The cached plan holds one sample's index (H, W, T); samples differ by a fixed column step."""
    geometry, out_size = ((4, 4), (2, 2), (1, 1), (1, 1)), (8, 8)
    plans = [conv_maths._gather_plan(np, (n, 3, 16, 16), *geometry, out_size, batch_last) for n in (1, 64)]
    (base_1, step_1, mask_1), (base_64, step_64, mask_64) = plans
    assert base_1.shape == base_64.shape == mask_64.shape == (16, 16, 4)
    assert (step_1, step_64) == ((1, 1) if batch_last else (64, 64))


@pytest.mark.parametrize("batch_last", [False, True])
def test_col2im_gather_does_not_spread_an_inf_it_should_not_read(batch_last):
    """Pixels with fewer taps read a stand-in entry (the block's first) that must be dropped, not
    multiplied by 0: an inf there (a tap that lands in the padding, so col2im crops it away) would
    otherwise spread NaN over the border pixels of its channel and sample."""
    geometry, x_shape, out_size = ((4, 4), (2, 2), (1, 1), (1, 1)), (2, 3, 8, 8), (4, 4)
    cols = np.ones((3 * 16, 2 * 4 * 4))
    cols[0, 0] = np.inf
    want = conv_maths.col2im(cols, x_shape, *geometry, out_size, batch_last=batch_last)
    got = conv_maths.col2im_gather(cols, x_shape, *geometry, out_size, batch_last=batch_last)
    assert np.isfinite(want).all() and not np.isnan(got).any()
    np.testing.assert_array_equal(got, want)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("batch_last", [False, True])
@pytest.mark.parametrize("geometry, size", GEOMETRIES + [
    (((4, 4), (2, 2), (1, 1), (1, 1)), (32, 32)),
    (((3, 3), (1, 1), (1, 1), (1, 1)), (6, 5)),
])
def test_col2im_gather_kernel_on_the_gpu_equals_col2im(geometry, size, batch_last, dtype, rng):
    """CuPy's col2im (one gather kernel, nnbox.gpu_kernels.col2im_gather): the phase slice-adds'
    image on the CPU, in the same dtype."""
    import cupy
    x_shape = (3, 2) + size
    out_size = _out_size(geometry, size)
    cols = rng.standard_normal((2 * geometry[0][0] * geometry[0][1], 3 * out_size[0] * out_size[1])).astype(dtype)
    want = conv_maths.col2im(cols, x_shape, *geometry, out_size, batch_last=batch_last)
    got = conv_maths.col2im_gather(cupy.asarray(cols), x_shape, *geometry, out_size, batch_last=batch_last)
    assert got.shape == x_shape and got.dtype == dtype and got.flags.c_contiguous
    tolerance = 1e-12 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(cupy.asnumpy(got), want, rtol=tolerance, atol=tolerance)


@pytest.mark.gpu
@pytest.mark.parametrize("batch_last", [False, True])
def test_col2im_gather_kernel_does_not_spread_an_inf_it_should_not_read(batch_last):
    import cupy
    geometry, x_shape, out_size = ((4, 4), (2, 2), (1, 1), (1, 1)), (2, 3, 8, 8), (4, 4)
    cols = np.ones((3 * 16, 2 * 4 * 4), np.float32)
    cols[0, 0] = np.inf
    want = conv_maths.col2im(cols, x_shape, *geometry, out_size, batch_last=batch_last)
    got = cupy.asnumpy(conv_maths.col2im_gather(cupy.asarray(cols), x_shape, *geometry, out_size,
                                                batch_last=batch_last))
    assert np.isfinite(want).all()
    np.testing.assert_array_equal(got, want)


@pytest.mark.gpu
@pytest.mark.parametrize("batch_last", [False, True])
@pytest.mark.parametrize("geometry, size", GEOMETRIES)
def test_im2col_kernel_on_the_gpu_equals_the_cpus(geometry, size, batch_last, rng):
    """CuPy's im2col (one kernel, padding included) against NumPy's, on a strided (non-contiguous)
    float16 input and on an empty batch."""
    import cupy
    out_size = _out_size(geometry, size)
    x = rng.standard_normal((3, 2) + size).astype(np.float16)
    strided = cupy.asarray(np.ascontiguousarray(x.transpose(0, 1, 3, 2))).transpose(0, 1, 3, 2)
    want = conv_maths.im2col(x, *geometry, out_size, batch_last=batch_last)
    got = conv_maths.im2col(strided, *geometry, out_size, batch_last=batch_last)
    assert got.dtype == np.float16 and got.shape == want.shape
    np.testing.assert_array_equal(cupy.asnumpy(got), want)
    empty = conv_maths.im2col(cupy.zeros((0, 2) + size, np.float32), *geometry, out_size, batch_last=batch_last)
    assert empty.shape == (want.shape[0], 0)
