"""MaxPool2d, MaxUnpool2d, Unpool2d, AvgPool2d: gradient checks, torch parity, examples, errors, GPU."""
import numpy as np
import pytest

from layers import AvgPool2d, MaxPool2d, MaxUnpool2d, Unpool2d
from nnbox.gradcheck import gradcheck

# (kernel, stride, padding, (N, C, H, W))
POOL_CASES = [
    (2, None, 0, (2, 3, 6, 6)),             # the common case: disjoint 2x2 windows
    (2, None, 0, (1, 2, 7, 5)),             # odd sizes: the last row/column is never read
    (3, 2, 1, (2, 2, 7, 6)),                # overlapping windows with padding
    ((3, 2), (1, 2), (1, 0), (1, 2, 5, 6)),  # non-square, overlapping along H
    (3, 1, 1, (2, 1, 5, 5)),                # stride 1: every pixel in several windows
    (2, 3, 1, (1, 2, 7, 8)),                # stride > kernel
]


def distinct_values(rng, shape):
    """An input without ties (a permutation of distinct values), so the max is unique."""
    return rng.permutation(int(np.prod(shape))).reshape(shape).astype(np.float64) / 10.0


# ---------------------------------------------------------------- gradient checks
@pytest.mark.parametrize("case", POOL_CASES, ids=str)
def test_max_pool_gradcheck(case, rng):
    k, s, p, shape = case
    report = gradcheck(MaxPool2d(k, s, p), distinct_values(rng, shape), rng=rng)
    assert report.checked_entries["input 0"] == np.prod(shape)


@pytest.mark.parametrize("case", POOL_CASES, ids=str)
@pytest.mark.parametrize("count_include_pad", [True, False])
def test_avg_pool_gradcheck(case, count_include_pad, rng):
    k, s, p, shape = case
    report = gradcheck(AvgPool2d(k, s, p, count_include_pad), rng.standard_normal(shape), rng=rng)
    assert report.checked_entries["input 0"] == np.prod(shape)


# Overlapping windows can share an argmax; MaxUnpool2d then writes one value over another, which
# is not differentiable in the overwritten one (PyTorch's backward, a gather, behaves the same).
# The gradient check uses the cases whose indices are distinct.
UNIQUE_INDEX_CASES = [case for case in POOL_CASES if case[1] is None or case[1] == 3]


@pytest.mark.parametrize("case", UNIQUE_INDEX_CASES, ids=str)
def test_max_unpool_gradcheck(case, rng):
    k, s, p, shape = case
    _, indices = MaxPool2d(k, s, p, return_indices=True)(distinct_values(rng, shape))
    per_plane = np.sort(indices.reshape(shape[0] * shape[1], -1), axis=1)
    assert np.all(np.diff(per_plane, axis=1) > 0), "this case needs distinct indices in every plane"
    y = rng.standard_normal(indices.shape)
    report = gradcheck(MaxUnpool2d(k, s, p), y, indices, shape, rng=rng)
    assert report.checked_entries["input 0"] == y.size


@pytest.mark.parametrize("mode", ["zeros", "nearest"])
@pytest.mark.parametrize("kernel, stride, shape", [(2, None, (2, 3, 3, 4)), ((2, 3), None, (1, 2, 3, 2)),
                                                    (2, 3, (1, 2, 3, 3)), ((1, 2), (2, 2), (2, 1, 2, 3))])
def test_unpool_gradcheck(mode, kernel, stride, shape, rng):
    report = gradcheck(Unpool2d(kernel, stride, mode), rng.standard_normal(shape), rng=rng)
    assert report.checked_entries["input 0"] == np.prod(shape)


# ---------------------------------------------------------------- torch parity (float64)
@pytest.mark.parametrize("case", POOL_CASES, ids=str)
def test_max_pool_matches_torch(case, rng, torch):
    k, s, p, shape = case
    x = distinct_values(rng, shape)
    layer = MaxPool2d(k, s, p, return_indices=True)
    y, indices = layer(x)
    x_t = torch.from_numpy(x).requires_grad_(True)
    y_t, indices_t = torch.nn.functional.max_pool2d(x_t, k, s, p, return_indices=True)
    np.testing.assert_array_equal(y, y_t.detach().numpy())
    assert indices.dtype == np.int64
    np.testing.assert_array_equal(indices, indices_t.numpy())
    dy = rng.standard_normal(y.shape)
    y_t.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(layer.backward(dy), x_t.grad.numpy(), rtol=1e-12, atol=1e-14)


def test_max_pool_ties_pick_the_first_like_torch(torch):
    x = np.zeros((1, 1, 4, 4))
    x[0, 0, 1, 1] = x[0, 0, 0, 3] = 1.0
    y, indices = MaxPool2d(2, return_indices=True)(x)
    _, indices_t = torch.nn.functional.max_pool2d(torch.from_numpy(x), 2, return_indices=True)
    np.testing.assert_array_equal(indices, indices_t.numpy())
    np.testing.assert_array_equal(indices[0, 0], [[5, 3], [8, 10]])  # all-zero windows: the first


def _minus_inf_and_nan_planes():
    """A plane of -inf but one pixel, and windows holding one NaN, two NaNs, and NaN among -inf."""
    corner = np.full((1, 1, 3, 3), -np.inf)
    corner[0, 0, 2, 2] = 1.0
    nans = np.array([[[[1.0, np.nan, 2.0, np.nan], [np.nan, 5.0, -np.inf, np.nan]]]])
    return corner, nans


def test_max_pool_never_picks_the_padding_and_picks_the_last_nan():
    corner, nans = _minus_inf_and_nan_planes()
    layer = MaxPool2d(2, padding=1, return_indices=True)
    y, indices = layer(corner)
    np.testing.assert_array_equal(y[0, 0], [[-np.inf, -np.inf], [-np.inf, 1.0]])
    np.testing.assert_array_equal(indices[0, 0], [[0, 1], [3, 8]])     # all -inf: the first real pixel
    dx = layer.backward(np.ones_like(y))
    np.testing.assert_array_equal(dx[0, 0], [[1, 1, 0], [1, 0, 0], [0, 0, 1]])   # inside the plane
    y, indices = MaxPool2d((1, 4), return_indices=True)(nans)
    assert np.isnan(y).all()
    np.testing.assert_array_equal(indices[0, 0, :, 0], [3, 7])           # the last NaN of each row


@pytest.mark.parametrize("kernel, stride, padding", [(2, 1, 1), (3, 2, 1), ((1, 4), 1, 0), (2, 2, 0)])
def test_max_pool_minus_inf_and_nan_windows_match_torch(kernel, stride, padding, rng, torch):
    x = rng.choice([-np.inf, np.nan, 0.0, 1.0], size=(2, 3, 5, 6), p=[0.5, 0.2, 0.15, 0.15])
    layer = MaxPool2d(kernel, stride, padding, return_indices=True)
    y, indices = layer(x)
    x_t = torch.from_numpy(x).requires_grad_()
    y_t, indices_t = torch.nn.functional.max_pool2d(x_t, kernel, stride, padding, return_indices=True)
    np.testing.assert_array_equal(y, y_t.detach().numpy())
    np.testing.assert_array_equal(indices, indices_t.numpy())
    dy = rng.standard_normal(y.shape)
    y_t.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(layer.backward(dy), x_t.grad.numpy(), rtol=1e-12, atol=0)


@pytest.mark.parametrize("case", POOL_CASES, ids=str)
def test_max_unpool_matches_torch(case, rng, torch):
    k, s, p, shape = case
    _, indices = MaxPool2d(k, s, p, return_indices=True)(distinct_values(rng, shape))
    y = rng.standard_normal(indices.shape)
    layer = MaxUnpool2d(k, s, p)
    out = layer(y, indices, output_size=shape[2:])
    y_t = torch.from_numpy(y).requires_grad_(True)
    out_t = torch.nn.functional.max_unpool2d(y_t, torch.from_numpy(indices), k, s, p, output_size=shape[2:])
    # Where windows share an argmax, both write one position and which write lands is unspecified
    # (torch documents max_unpool as nondeterministic there; its order changes with its threads).
    # Positions written once must match exactly; a shared one must hold one of its candidates.
    n, c = shape[:2]
    flat_out, flat_t = out.reshape(n * c, -1), out_t.detach().numpy().reshape(n * c, -1)
    for plane, (where, values) in enumerate(zip(indices.reshape(n * c, -1), y.reshape(n * c, -1))):
        counts = np.bincount(where, minlength=flat_out.shape[1])
        once = counts <= 1
        np.testing.assert_array_equal(flat_out[plane, once], flat_t[plane, once])
        for position in np.flatnonzero(~once):
            candidates = values[where == position]
            assert flat_out[plane, position] in candidates and flat_t[plane, position] in candidates
    dout = rng.standard_normal(out.shape)
    out_t.backward(torch.from_numpy(dout))
    np.testing.assert_array_equal(layer.backward(dout), y_t.grad.numpy())


@pytest.mark.parametrize("case", POOL_CASES, ids=str)
@pytest.mark.parametrize("count_include_pad", [True, False])
def test_avg_pool_matches_torch(case, count_include_pad, rng, torch):
    k, s, p, shape = case
    x = rng.standard_normal(shape)
    layer = AvgPool2d(k, s, p, count_include_pad)
    y = layer(x)
    x_t = torch.from_numpy(x).requires_grad_(True)
    y_t = torch.nn.functional.avg_pool2d(x_t, k, s, p, count_include_pad=count_include_pad)
    np.testing.assert_allclose(y, y_t.detach().numpy(), rtol=1e-12, atol=1e-14)
    dy = rng.standard_normal(y.shape)
    y_t.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(layer.backward(dy), x_t.grad.numpy(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("kernel", [2, (2, 3), (1, 2)], ids=str)
def test_unpool_nearest_matches_torch_upsample(kernel, rng, torch):
    x = rng.standard_normal((2, 3, 4, 5))
    layer = Unpool2d(kernel, mode="nearest")
    y = layer(x)
    x_t = torch.from_numpy(x).requires_grad_(True)
    y_t = torch.nn.functional.interpolate(x_t, scale_factor=layer.kernel_size, mode="nearest")
    np.testing.assert_array_equal(y, y_t.detach().numpy())
    dy = rng.standard_normal(y.shape)
    y_t.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(layer.backward(dy), x_t.grad.numpy(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("kernel, stride", [(2, None), ((2, 3), None), (2, 3), ((1, 2), (2, 2))], ids=str)
def test_unpool_zeros_matches_torch_max_unpool_with_top_left_indices(kernel, stride, rng, torch):
    """mode="zeros" is max_unpool2d with every value at the top-left of its block: forward and backward."""
    x = rng.standard_normal((2, 3, 4, 5))
    layer = Unpool2d(kernel, stride, mode="zeros")
    y = layer(x)
    (sh, sw), out_w = layer.stride, y.shape[3]
    rows = np.arange(4).reshape(-1, 1) * sh * out_w
    cols = np.arange(5).reshape(1, -1) * sw
    indices = torch.from_numpy(np.broadcast_to(rows + cols, x.shape).copy())
    x_t = torch.from_numpy(x).requires_grad_(True)
    y_t = torch.nn.functional.max_unpool2d(x_t, indices, layer.kernel_size, layer.stride, output_size=y.shape[2:])
    np.testing.assert_array_equal(y, y_t.detach().numpy())
    dy = rng.standard_normal(y.shape)
    y_t.backward(torch.from_numpy(dy))
    np.testing.assert_array_equal(layer.backward(dy), x_t.grad.numpy())


# ---------------------------------------------------------------- worked examples and round trips
def test_max_pool_worked_example():
    x = np.array([[1, 5, 2, 0], [3, 4, 8, 7], [9, 0, 1, 1], [2, 6, 3, 0]], dtype=np.float32).reshape(1, 1, 4, 4)
    layer = MaxPool2d(2, return_indices=True)
    y, indices = layer(x)
    np.testing.assert_array_equal(y[0, 0], [[5, 8], [9, 3]])
    np.testing.assert_array_equal(indices[0, 0], [[1, 6], [8, 14]])
    dx = layer.backward(np.array([[[[1, 2], [3, 4]]]], dtype=np.float32))
    expected = np.zeros((4, 4), dtype=np.float32)
    expected[0, 1], expected[1, 2], expected[2, 0], expected[3, 2] = 1, 2, 3, 4
    np.testing.assert_array_equal(dx[0, 0], expected)


def test_max_pool_overlapping_windows_sum_gradients():
    """With stride 1 the centre 9 is the max of all four 2x2 windows: it gets all four gradients."""
    x = np.array([[0, 1, 0], [2, 9, 3], [0, 4, 0]], dtype=np.float64).reshape(1, 1, 3, 3)
    layer = MaxPool2d(2, stride=1)
    np.testing.assert_array_equal(layer(x)[0, 0], [[9, 9], [9, 9]])
    dx = layer.backward(np.array([[[[1.0, 2.0], [3.0, 4.0]]]]))
    expected = np.zeros((3, 3))
    expected[1, 1] = 10.0
    np.testing.assert_array_equal(dx[0, 0], expected)


def test_max_pool_then_unpool_keeps_only_the_maxima(rng):
    x = distinct_values(rng, (2, 3, 6, 6))
    y, indices = MaxPool2d(2, return_indices=True)(x)
    restored = MaxUnpool2d(2)(y, indices)
    assert restored.shape == x.shape
    kept = restored != 0
    np.testing.assert_array_equal(restored[kept], x[kept])
    assert kept.sum() == y.size - np.count_nonzero(y == 0)


def test_max_unpool_default_and_explicit_output_size(rng):
    y, indices = MaxPool2d(2, return_indices=True)(distinct_values(rng, (1, 1, 4, 4)))
    assert MaxUnpool2d(2)(y, indices).shape == (1, 1, 4, 4)
    # a 5x5 input pools to 2x2 as well; its indices need the explicit size to come back
    y, indices = MaxPool2d(2, return_indices=True)(distinct_values(rng, (1, 1, 5, 5)))
    assert MaxUnpool2d(2)(y, indices, output_size=(5, 5)).shape == (1, 1, 5, 5)
    assert MaxUnpool2d(2)(y, indices, output_size=(1, 1, 5, 5)).shape == (1, 1, 5, 5)


def test_unpool_worked_examples():
    x = np.array([[0.0, 1.0], [2.0, 3.0]], dtype=np.float32).reshape(1, 1, 2, 2)
    zeros = Unpool2d(2, mode="zeros")(x)[0, 0]
    nearest = Unpool2d(2, mode="nearest")(x)[0, 0]
    np.testing.assert_array_equal(zeros, [[0, 0, 1, 0], [0, 0, 0, 0], [2, 0, 3, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(nearest, [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]])
    spaced = Unpool2d(2, stride=3, mode="nearest")(x)[0, 0]
    np.testing.assert_array_equal(spaced, [[0, 0, 0, 1, 1], [0, 0, 0, 1, 1], [0, 0, 0, 0, 0],
                                           [2, 2, 0, 3, 3], [2, 2, 0, 3, 3]])


def test_avg_pool_worked_example_with_padding():
    x = np.arange(1, 5, dtype=np.float64).reshape(1, 1, 2, 2)  # [[1, 2], [3, 4]]
    # 2x2 windows, stride 2, padding 1: each window holds one real pixel and three zeros
    np.testing.assert_array_equal(AvgPool2d(2, 2, 1)(x)[0, 0], [[0.25, 0.5], [0.75, 1.0]])
    np.testing.assert_array_equal(AvgPool2d(2, 2, 1, count_include_pad=False)(x)[0, 0], [[1, 2], [3, 4]])


@pytest.mark.parametrize("make", [lambda: MaxPool2d(2), lambda: AvgPool2d(3, 2, 1), lambda: Unpool2d(2),
                                  lambda: Unpool2d(2, mode="nearest"), lambda: MaxPool2d(3, 1, 1)],
                         ids=["max", "avg", "unpool-zeros", "unpool-nearest", "max-overlap"])
def test_float32_stays_float32(make, rng):
    layer = make()
    y = layer(rng.standard_normal((2, 3, 6, 6)).astype(np.float32))
    assert y.dtype == np.float32
    assert layer.backward(np.ones_like(y)).dtype == np.float32


def test_max_unpool_float32(rng):
    y, indices = MaxPool2d(2, return_indices=True)(rng.standard_normal((2, 3, 6, 6)).astype(np.float32))
    layer = MaxUnpool2d(2)
    out = layer(y, indices)
    assert out.dtype == np.float32 and layer.backward(np.ones_like(out)).dtype == np.float32


# ---------------------------------------------------------------- errors
@pytest.mark.parametrize("layer", [MaxPool2d(2), AvgPool2d(2), Unpool2d(2)], ids=lambda layer: type(layer).__name__)
def test_wrong_ndim_names_layer_and_shape(layer):
    with pytest.raises(ValueError, match=rf"{type(layer).__name__} expects a 4-D input \(N, C, H, W\), "
                                         rf"got shape \(3, 4, 4\)"):
        layer(np.zeros((3, 4, 4)))


def test_max_unpool_wrong_ndim():
    with pytest.raises(ValueError, match=r"MaxUnpool2d expects a 4-D input \(N, C, OH, OW\), got shape \(3, 4, 4\)"):
        MaxUnpool2d(2)(np.zeros((3, 4, 4)), np.zeros((3, 4, 4), dtype=np.int64))


@pytest.mark.parametrize("cls", [MaxPool2d, AvgPool2d])
def test_image_smaller_than_kernel(cls):
    with pytest.raises(ValueError, match=rf"{cls.__name__}: the input image 2x5 padded by \(1, 1\) is 4x7, "
                                         rf"smaller than the kernel 5x5; expected shape \(N, C, >=3, >=3\), "
                                         rf"got shape \(1, 2, 2, 5\)"):
        cls(5, padding=1)(np.zeros((1, 2, 2, 5)))


@pytest.mark.parametrize("cls", [MaxPool2d, AvgPool2d, MaxUnpool2d])
def test_padding_more_than_half_the_kernel(cls):
    with pytest.raises(ValueError, match=rf"{cls.__name__}: padding should be at most half the kernel size"):
        cls(2, padding=2)


@pytest.mark.parametrize("cls", [MaxPool2d, AvgPool2d, MaxUnpool2d, Unpool2d])
def test_sizes_that_are_not_whole_numbers_are_refused(cls):
    # int() truncated them: MaxPool2d(2.9) was a 2x2 pool
    with pytest.raises(ValueError, match=rf"{cls.__name__}: kernel_size must be an integer or a pair of integers "
                                         r"\(height, width\), got 2.9"):
        cls(2.9)
    with pytest.raises(ValueError, match=rf"{cls.__name__}: stride must be an integer .*, got \(2, None\)"):
        cls(2, stride=(2, None))


def test_max_unpool_indices_shape_and_range():
    y = np.zeros((1, 1, 2, 2))
    with pytest.raises(ValueError, match=r"MaxUnpool2d: indices must have the shape of the input \(1, 1, 2, 2\), "
                                         r"got shape \(1, 1, 2, 3\)"):
        MaxUnpool2d(2)(y, np.zeros((1, 1, 2, 3), dtype=np.int64))
    with pytest.raises(ValueError, match=r"MaxUnpool2d: indices must lie in \[0, 16\)"):
        MaxUnpool2d(2)(y, np.full((1, 1, 2, 2), 16, dtype=np.int64))
    with pytest.raises(ValueError, match=r"MaxUnpool2d: output_size \(9, 4\) is not between"):
        MaxUnpool2d(2)(y, np.zeros((1, 1, 2, 2), dtype=np.int64), output_size=(9, 4))


def test_unpool_bad_arguments():
    with pytest.raises(ValueError, match=r"Unpool2d: mode must be one of \('zeros', 'nearest'\), got 'bilinear'"):
        Unpool2d(2, mode="bilinear")
    with pytest.raises(ValueError, match=r"Unpool2d: stride \(1, 1\) must be >= kernel_size \(2, 2\)"):
        Unpool2d(2, stride=1)


@pytest.mark.parametrize("layer", [MaxPool2d(2), AvgPool2d(2), Unpool2d(2), MaxUnpool2d(2)],
                         ids=lambda layer: type(layer).__name__)
def test_backward_before_forward_raises(layer):
    with pytest.raises(RuntimeError, match=rf"{type(layer).__name__}.backward was called before forward"):
        layer.backward(np.zeros((1, 1, 2, 2)))


@pytest.mark.parametrize("layer", [MaxPool2d(2), AvgPool2d(2), Unpool2d(2)], ids=lambda layer: type(layer).__name__)
def test_backward_with_wrong_dy_shape(layer):
    y = layer(np.arange(16.0).reshape(1, 1, 4, 4))
    with pytest.raises(ValueError, match=rf"{type(layer).__name__}.backward expects dy shaped like the forward "
                                         rf"output \(1, 1, {y.shape[2]}, {y.shape[3]}\), got shape \(1, 2, "):
        layer.backward(np.zeros((1, 2) + y.shape[2:]))


# ---------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.parametrize("case", [POOL_CASES[0], POOL_CASES[2], POOL_CASES[3]], ids=str)
def test_pools_gradcheck_gpu(case, rng):
    import cupy

    k, s, p, shape = case
    x = cupy.asarray(distinct_values(rng, shape))
    gradcheck(MaxPool2d(k, s, p), x, rng=rng)
    gradcheck(AvgPool2d(k, s, p, count_include_pad=False), x, rng=rng)
    if case in UNIQUE_INDEX_CASES:   # shared argmaxes make MaxUnpool2d non-differentiable (see above)
        y, indices = MaxPool2d(k, s, p, return_indices=True)(x)
        gradcheck(MaxUnpool2d(k, s, p), cupy.asarray(rng.standard_normal(y.shape)), indices, shape, rng=rng)


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["zeros", "nearest"])
def test_unpool_gradcheck_gpu(mode, rng):
    import cupy

    gradcheck(Unpool2d(2, 3, mode), cupy.asarray(rng.standard_normal((2, 2, 3, 3))), rng=rng)


@pytest.mark.gpu
def test_max_pool_gpu_matches_cpu(rng):
    import cupy

    x = distinct_values(rng, (2, 3, 7, 6))
    y, indices = MaxPool2d(3, 2, 1, return_indices=True)(x)
    y_gpu, indices_gpu = MaxPool2d(3, 2, 1, return_indices=True)(cupy.asarray(x))
    np.testing.assert_array_equal(cupy.asnumpy(y_gpu), y)
    np.testing.assert_array_equal(cupy.asnumpy(indices_gpu), indices)


@pytest.mark.gpu
def test_max_pool_gpu_matches_cpu_on_minus_inf_and_nan_windows():
    import cupy

    for x, layer in zip(_minus_inf_and_nan_planes(), (MaxPool2d(2, padding=1, return_indices=True),
                                                      MaxPool2d((1, 4), return_indices=True))):
        y, indices = layer(x)
        y_gpu, indices_gpu = layer(cupy.asarray(x))
        np.testing.assert_array_equal(cupy.asnumpy(y_gpu), y)
        np.testing.assert_array_equal(cupy.asnumpy(indices_gpu), indices)


@pytest.mark.gpu
@pytest.mark.parametrize("case", POOL_CASES, ids=str)
def test_max_pool_gpu_kernel_matches_cpu_with_ties(case, rng):
    """The GPU's one-kernel MaxPool2d: same maxima and indices as the CPU, ties to the first maximum."""
    import cupy

    k, s, p, shape = case
    x = rng.integers(-2, 3, size=shape).astype(np.float32)       # many ties
    y, indices = MaxPool2d(k, s, p, return_indices=True)(x)
    y_gpu, indices_gpu = MaxPool2d(k, s, p, return_indices=True)(cupy.asarray(x))
    np.testing.assert_array_equal(cupy.asnumpy(y_gpu), y)
    np.testing.assert_array_equal(cupy.asnumpy(indices_gpu), indices)
