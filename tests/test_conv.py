"""Conv2d and ConvTranspose2d: gradient checks, torch parity, worked examples, errors, dtypes, GPU."""
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from layers import Conv2d, ConvTranspose2d
from layers import conv_maths
from nnbox.gradcheck import gradcheck

# (in, out, kernel, stride, padding, dilation, (N, H, W), bias)
CONV_CASES = [
    (1, 1, 1, 1, 0, 1, (1, 3, 3), True),
    (2, 3, 3, 1, 1, 1, (2, 5, 5), True),
    (2, 3, 3, 2, 0, 1, (2, 7, 6), False),            # odd, non-square image
    (3, 2, (2, 3), (2, 1), (1, 2), 1, (1, 5, 7), True),  # non-square kernel, stride, padding
    (2, 2, 5, 3, 2, 1, (2, 8, 9), True),
    (2, 3, 3, 1, 0, 2, (1, 7, 6), True),              # dilation
    (1, 2, (3, 2), (3, 2), (0, 1), (1, 2), (2, 8, 7), False),
    (2, 2, 4, 2, 1, 1, (2, 8, 8), True),              # the DCGAN discriminator block
    (3, 1, 4, 1, 0, 1, (2, 4, 4), True),              # the DCGAN last layer: 4x4 -> 1x1
    (2, 2, 2, 3, 0, 1, (1, 7, 5), True),              # stride > kernel: some pixels unread
]

# (in, out, kernel, stride, padding, output_padding, dilation, (N, H, W), bias)
CONV_T_CASES = [
    (2, 3, 4, 1, 0, 0, 1, (2, 1, 1), True),           # the DCGAN generator's first layer
    (2, 2, 4, 2, 1, 0, 1, (2, 3, 3), True),           # the DCGAN generator block
    (3, 2, 3, 2, 1, 1, 1, (1, 3, 4), False),          # output_padding
    (2, 3, (2, 3), (3, 2), (0, 1), (2, 1), 1, (2, 2, 3), True),
    (1, 2, 5, 3, 2, 0, 1, (1, 2, 2), True),
    (2, 2, 3, 1, 1, 1, 2, (2, 3, 3), True),           # output_padding < dilation
    (2, 1, (3, 2), (2, 1), 0, (1, 0), (2, 1), (1, 3, 3), True),
    (2, 2, 1, 1, 0, 0, 1, (2, 3, 3), False),
]


def make_conv(case, rng):
    cin, cout, k, s, p, d, (n, h, w), bias = case
    layer = Conv2d(cin, cout, k, s, p, d, bias=bias, rng=rng)
    return layer, rng.standard_normal((n, cin, h, w))


def make_conv_t(case, rng):
    cin, cout, k, s, p, op, d, (n, h, w), bias = case
    layer = ConvTranspose2d(cin, cout, k, s, p, op, d, bias=bias, rng=rng)
    return layer, rng.standard_normal((n, cin, h, w))


def give_bias_values(layer, rng):
    """PyTorch's default bias is tiny; make it O(1) so a wrong bias path cannot hide."""
    if layer.bias is not None:
        layer.bias.data = rng.standard_normal(layer.bias.data.shape).astype(layer.bias.data.dtype)


# ---------------------------------------------------------------- gradient checks
@pytest.mark.parametrize("case", CONV_CASES, ids=str)
def test_conv2d_gradcheck(case, rng):
    layer, x = make_conv(case, rng)
    give_bias_values(layer, rng)
    report = gradcheck(layer, x, rng=rng)
    assert "input 0" in report.max_abs_error and "parameter 'weight'" in report.max_abs_error


@pytest.mark.parametrize("case", CONV_T_CASES, ids=str)
def test_conv_transpose2d_gradcheck(case, rng):
    layer, x = make_conv_t(case, rng)
    give_bias_values(layer, rng)
    report = gradcheck(layer, x, rng=rng)
    assert "input 0" in report.max_abs_error and "parameter 'weight'" in report.max_abs_error


small = st.integers(1, 2)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cin=small, cout=small, kh=st.integers(1, 3), kw=st.integers(1, 3), sh=st.integers(1, 3),
       sw=st.integers(1, 3), ph=st.integers(0, 2), pw=st.integers(0, 2), dh=st.integers(1, 2),
       dw=st.integers(1, 2), n=small, h=st.integers(1, 6), w=st.integers(1, 6), bias=st.booleans(),
       seed=st.integers(0, 2**16))
def test_conv2d_gradcheck_property(cin, cout, kh, kw, sh, sw, ph, pw, dh, dw, n, h, w, bias, seed):
    assume(h + 2 * ph >= dh * (kh - 1) + 1 and w + 2 * pw >= dw * (kw - 1) + 1)
    rng = np.random.default_rng(seed)
    layer = Conv2d(cin, cout, (kh, kw), (sh, sw), (ph, pw), (dh, dw), bias=bias, rng=rng)
    x = rng.standard_normal((n, cin, h, w))
    assert layer(x).shape == (n, cout) + layer.output_size(h, w)
    gradcheck(layer, x, rng=rng)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cin=small, cout=small, kh=st.integers(1, 3), kw=st.integers(1, 3), sh=st.integers(1, 3),
       sw=st.integers(1, 3), ph=st.integers(0, 2), pw=st.integers(0, 2), oph=st.integers(0, 2),
       opw=st.integers(0, 2), dh=st.integers(1, 2), dw=st.integers(1, 2), n=small, h=st.integers(1, 4),
       w=st.integers(1, 4), bias=st.booleans(), seed=st.integers(0, 2**16))
def test_conv_transpose2d_gradcheck_property(cin, cout, kh, kw, sh, sw, ph, pw, oph, opw, dh, dw, n, h, w,
                                             bias, seed):
    assume(oph < max(sh, dh) and opw < max(sw, dw))
    out = (conv_maths.conv_transpose_output_size(h, kh, sh, ph, oph, dh),
           conv_maths.conv_transpose_output_size(w, kw, sw, pw, opw, dw))
    assume(min(out) >= 1)
    rng = np.random.default_rng(seed)
    layer = ConvTranspose2d(cin, cout, (kh, kw), (sh, sw), (ph, pw), (oph, opw), (dh, dw), bias=bias, rng=rng)
    x = rng.standard_normal((n, cin, h, w))
    assert layer(x).shape == (n, cout) + out
    gradcheck(layer, x, rng=rng)


# ---------------------------------------------------------------- torch parity (float64)
def check_parity(torch, layer, torch_layer, x, rng):
    layer.to(np.float64)
    give_bias_values(layer, rng)
    torch_layer = torch_layer.double()
    with torch.no_grad():
        torch_layer.weight.copy_(torch.from_numpy(layer.weight.data))
        if layer.bias is not None:
            torch_layer.bias.copy_(torch.from_numpy(layer.bias.data))
    y = layer(x)
    x_t = torch.from_numpy(x).requires_grad_(True)
    y_t = torch_layer(x_t)
    np.testing.assert_allclose(y, y_t.detach().numpy(), rtol=1e-10, atol=1e-12)
    dy = rng.standard_normal(y.shape)
    layer.zero_grad()
    dx = layer.backward(dy)
    y_t.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(dx, x_t.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(layer.weight.grad, torch_layer.weight.grad.numpy(), rtol=1e-10, atol=1e-12)
    if layer.bias is not None:
        np.testing.assert_allclose(layer.bias.grad, torch_layer.bias.grad.numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("case", CONV_CASES, ids=str)
def test_conv2d_matches_torch(case, rng, torch):
    cin, cout, k, s, p, d, _, bias = case
    layer, x = make_conv(case, rng)
    check_parity(torch, layer, torch.nn.Conv2d(cin, cout, k, s, p, d, bias=bias), x, rng)


@pytest.mark.parametrize("case", CONV_T_CASES, ids=str)
def test_conv_transpose2d_matches_torch(case, rng, torch):
    cin, cout, k, s, p, op, d, _, bias = case
    layer, x = make_conv_t(case, rng)
    torch_layer = torch.nn.ConvTranspose2d(cin, cout, k, s, p, op, bias=bias, dilation=d)
    check_parity(torch, layer, torch_layer, x, rng)


def test_conv2d_larger_batch_matches_torch(rng, torch):
    layer = Conv2d(8, 16, 4, 2, 1, rng=rng)
    x = rng.standard_normal((5, 8, 16, 12))
    check_parity(torch, layer, torch.nn.Conv2d(8, 16, 4, 2, 1), x, rng)


@pytest.mark.parametrize("padding, kernel, dilation", [("same", 3, 1), ("same", (5, 3), 1), ("same", 4, 2),
                                                       ("same", (3, 2), (1, 2)), ("valid", 3, 1)])
def test_padding_strings_match_torch(padding, kernel, dilation, rng, torch):
    layer = Conv2d(3, 4, kernel, padding=padding, dilation=dilation, rng=rng)
    x = rng.standard_normal((2, 3, 7, 6))
    if padding == "same":
        assert layer(x).shape[2:] == x.shape[2:]
    check_parity(torch, layer, torch.nn.Conv2d(3, 4, kernel, padding=padding, dilation=dilation), x, rng)


def test_same_padding_gradcheck(rng):
    gradcheck(Conv2d(2, 3, (3, 5), padding="same", dilation=(2, 1), rng=rng).to(np.float64),
              rng.standard_normal((2, 2, 6, 5)), rng=rng)


def test_conv_transpose2d_larger_batch_matches_torch(rng, torch):
    layer = ConvTranspose2d(16, 8, 4, 2, 1, rng=rng)
    x = rng.standard_normal((5, 16, 6, 7))
    check_parity(torch, layer, torch.nn.ConvTranspose2d(16, 8, 4, 2, 1), x, rng)


@pytest.mark.parametrize("cls", [Conv2d, ConvTranspose2d])
def test_wide_layers_match_a_direct_sum(cls, rng):
    """256+ channels on the small side: the products are ordered differently there (conv.py
    `_convolve`, `_accumulate_weight_grad`); output and both gradients still equal the defining sums."""
    wide, narrow = 256, 3
    layer = cls(narrow, wide, 2, 2, 0, bias=False, rng=rng) if cls is Conv2d else \
        cls(wide, narrow, 2, 2, 0, bias=False, rng=rng)
    layer.to(np.float64)
    w = layer.weight.data                                   # (small, large, 2, 2)
    if cls is Conv2d:
        x = rng.standard_normal((2, narrow, 4, 4))
        windows = x.reshape(2, narrow, 2, 2, 2, 2).transpose(0, 1, 3, 5, 2, 4)   # (n, c, i, j, oh, ow)
        expected = np.einsum("ocij,ncijhw->nohw", w, windows)
    else:
        x = rng.standard_normal((2, wide, 2, 2))
        expected = np.einsum("coij,nchw->nohiwj", w, x).reshape(2, narrow, 4, 4)
    y = layer(x)
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)
    dy = rng.standard_normal(y.shape)
    layer.zero_grad()
    dx = layer.backward(dy)
    # y is linear in x and in w: <dy, y(x, w)> differentiated by each
    if cls is Conv2d:
        expected_dw = np.einsum("nohw,ncijhw->ocij", dy, windows)
        expected_dx = np.einsum("ocij,nohw->nchiwj", w, dy).reshape(x.shape)
    else:
        dy_blocks = dy.reshape(2, narrow, 2, 2, 2, 2)          # (n, o, h, i, w, j)
        expected_dw = np.einsum("nohiwj,nchw->coij", dy_blocks, x)
        expected_dx = np.einsum("coij,nohiwj->nchw", w, dy_blocks)
    np.testing.assert_allclose(layer.weight.grad, expected_dw, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dx, expected_dx, rtol=1e-12, atol=1e-12)


def test_default_init_bounds_follow_torch():
    """weight and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = weight.shape[1] * kh * kw."""
    conv = Conv2d(16, 32, 3, rng=0)
    conv_t = ConvTranspose2d(16, 32, 3, rng=0)
    assert conv.weight.shape == (32, 16, 3, 3) and conv_t.weight.shape == (16, 32, 3, 3)
    for layer, fan_in in ((conv, 16 * 9), (conv_t, 32 * 9)):
        bound = 1 / np.sqrt(fan_in)
        assert np.abs(layer.weight.data).max() <= bound
        assert np.abs(layer.weight.data).max() > 0.9 * bound
        assert np.abs(layer.bias.data).max() <= bound
        assert layer.weight.data.dtype == np.float32


# ---------------------------------------------------------------- worked examples
def test_conv_transpose2d_worked_example():
    layer = ConvTranspose2d(1, 1, 2, stride=1, bias=False)
    layer.weight.data = np.array([[[[0.0, 1.0], [2.0, 3.0]]]], dtype=np.float32)
    x = np.array([[[[0.0, 1.0], [2.0, 3.0]]]], dtype=np.float32)
    expected = np.array([[0, 0, 1], [0, 4, 6], [4, 12, 9]], dtype=np.float32)
    np.testing.assert_array_equal(layer(x)[0, 0], expected)


def test_conv2d_worked_example():
    """A 2x2 kernel of ones sums each 2x2 window; the bias is added once."""
    layer = Conv2d(1, 1, 2)
    layer.weight.data = np.ones((1, 1, 2, 2), dtype=np.float32)
    layer.bias.data = np.array([10.0], dtype=np.float32)
    x = np.arange(9, dtype=np.float32).reshape(1, 1, 3, 3)
    np.testing.assert_array_equal(layer(x)[0, 0], [[18, 22], [30, 34]])


def test_conv_transpose2d_is_the_adjoint_of_conv2d(rng):
    """<conv(x), y> = <x, conv_transpose(y)> with the same weight and no bias."""
    conv = Conv2d(3, 4, (3, 2), (2, 1), (1, 1), (1, 2), bias=False, rng=rng).to(np.float64)
    conv_t = ConvTranspose2d(4, 3, (3, 2), (2, 1), (1, 1), (1, 0), (1, 2), bias=False).to(np.float64)
    conv_t.weight.data = conv.weight.data.copy()
    x = rng.standard_normal((2, 3, 8, 7))
    y = rng.standard_normal(conv(x).shape)
    assert conv_t(y).shape == x.shape
    np.testing.assert_allclose(np.sum(conv(x) * y), np.sum(x * conv_t(y)), rtol=1e-12)


def test_dcgan_generator_block_shape():
    layer = ConvTranspose2d(512, 256, 4, stride=2, padding=1, rng=0)
    x = np.zeros((2, 512, 4, 4), dtype=np.float32)
    y = layer(x)
    assert y.shape == (2, 256, 8, 8)
    assert layer.backward(np.ones_like(y)).shape == x.shape


@pytest.mark.parametrize("geometry, size", [
    (((3, 2), (2, 3), (1, 0), (2, 1)), (9, 8)),   # stride phases with dilation and padding
    (((4, 4), (2, 2), (1, 1), (1, 1)), (8, 8)),   # the DCGAN block
    (((4, 4), (1, 1), (0, 0), (1, 1)), (4, 4)),   # one output pixel: the transposing fast path
    (((3, 2), (2, 1), (1, 1), (2, 2)), (4, 1)),   # one output pixel with dilation and padding
    (((2, 2), (3, 3), (0, 0), (1, 1)), (7, 8)),   # stride > kernel: pixels no window reads
])
def test_im2col_col2im_are_adjoint(geometry, size, rng):
    x = rng.standard_normal((2, 3) + size)
    out_size = tuple(conv_maths.conv_output_size(s, k, st_, p, d)
                     for s, k, st_, p, d in zip(size, *geometry))
    cols = conv_maths.im2col(x, *geometry, out_size)
    kh, kw = geometry[0]
    assert cols.shape == (3 * kh * kw, 2 * out_size[0] * out_size[1])
    # one copy, C-contiguous; or, when one window covers the whole image, x itself as (N, C*H*W)^T
    one_window = tuple(out_size) == (1, 1) and geometry[0] == size and geometry[2] == (0, 0)
    assert cols.flags.c_contiguous if not one_window else np.shares_memory(cols, x) and cols.T.flags.c_contiguous
    other = rng.standard_normal(cols.shape)
    back = conv_maths.col2im(other, x.shape, *geometry, out_size)
    np.testing.assert_allclose(np.sum(cols * other), np.sum(x * back), rtol=1e-12)


# ---------------------------------------------------------------- state, dtype, frozen weights
@pytest.mark.parametrize("padding, value", [((1, 2), 0.0), ((2, 0), -np.inf), ((0, 1), 3.0)])
def test_pad2d_border_is_written_over_recycled_memory(padding, value, monkeypatch):
    """pad2d fills only the border strips; the recycled buffer it gets holds old values, so every
    border element must still come out as `value` and the inside as x."""
    from nnbox import workspace
    monkeypatch.setattr(workspace, "MIN_BYTES", 0)
    previous = workspace.set_enabled(True)
    try:
        x = np.arange(2 * 3 * 4 * 5, dtype=np.float64).reshape(2, 3, 4, 5)
        shape = (2, 3, 4 + 2 * padding[0], 5 + 2 * padding[1])
        workspace.empty(shape, np.float64).fill(np.nan)          # the memory pad2d will get back
        padded = conv_maths.pad2d(x, padding, value)
        np.testing.assert_array_equal(padded, np.pad(x, ((0, 0), (0, 0), (padding[0],) * 2, (padding[1],) * 2),
                                                     constant_values=value))
    finally:
        workspace.clear()
        workspace.set_enabled(previous)


def test_batch_last_im2col_padding_is_written_over_recycled_memory(monkeypatch, rng):
    from nnbox import workspace
    x = rng.standard_normal((3, 2, 5, 4))
    geometry, out_size = ((4, 4), (2, 2), (1, 2), (1, 1)), (2, 3)
    expected = conv_maths.im2col(x, *geometry, out_size, batch_last=True)   # fresh memory
    monkeypatch.setattr(workspace, "MIN_BYTES", 0)
    previous = workspace.set_enabled(True)
    try:
        workspace.empty((2, 5 + 2, 4 + 4, 3), np.float64).fill(np.nan)   # the padded copy's memory
        np.testing.assert_array_equal(conv_maths.im2col(x, *geometry, out_size, batch_last=True), expected)
    finally:
        workspace.clear()
        workspace.set_enabled(previous)


def test_gradients_accumulate_and_frozen_weight_is_left_alone(rng):
    layer = Conv2d(2, 3, 3, padding=1, rng=rng).to(np.float64)
    x = rng.standard_normal((2, 2, 5, 5))
    dy = rng.standard_normal((2, 3, 5, 5))
    layer(x)
    dx_once = layer.backward(dy)
    grad_once = layer.weight.grad.copy()
    layer(x)
    layer.backward(dy)
    np.testing.assert_allclose(layer.weight.grad, 2 * grad_once)

    layer.zero_grad()
    layer.weight.requires_grad = False
    layer(x)
    dx_frozen = layer.backward(dy)
    np.testing.assert_array_equal(layer.weight.grad, 0)
    np.testing.assert_allclose(dx_frozen, dx_once)
    assert np.any(layer.bias.grad != 0)


def test_conv_transpose_frozen_weight_still_gives_dx(rng):
    layer = ConvTranspose2d(2, 3, 4, 2, 1, rng=rng).to(np.float64)
    x = rng.standard_normal((2, 2, 3, 3))
    dy = rng.standard_normal((2, 3, 6, 6))
    layer(x)
    dx = layer.backward(dy)
    layer.zero_grad()
    layer.requires_grad_(False)
    layer(x)
    np.testing.assert_allclose(layer.backward(dy), dx)
    np.testing.assert_array_equal(layer.weight.grad, 0)
    np.testing.assert_array_equal(layer.bias.grad, 0)


@pytest.mark.parametrize("make", [lambda: Conv2d(3, 4, 3, 2, 1), lambda: ConvTranspose2d(3, 4, 4, 2, 1)],
                         ids=["Conv2d", "ConvTranspose2d"])
def test_float32_stays_float32(make, rng):
    layer = make()
    x = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    y = layer(x)
    assert y.dtype == np.float32
    dx = layer.backward(np.ones_like(y))
    assert dx.dtype == np.float32 and layer.weight.grad.dtype == np.float32
    assert layer.bias.grad.dtype == np.float32


def test_single_channel_products_match_the_matrix_product(rng):
    """With one small channel (a 1x1-output last layer's adjoint) the product's inner dimension is 1,
    and layers.conv computes it as a broadcast multiply: the same values, bit for bit."""
    from layers.conv import _matmul
    w2 = rng.standard_normal((1, 48)).astype(np.float32)
    dy = rng.standard_normal((1, 30)).astype(np.float32)
    np.testing.assert_array_equal(_matmul(w2.T, dy), np.matmul(w2.T, dy))
    layer = Conv2d(3, 1, 4, bias=False, rng=rng)
    x = rng.standard_normal((5, 3, 4, 4)).astype(np.float32)
    dy = rng.standard_normal(layer(x).shape).astype(np.float32)
    expected = np.einsum("no,oc->nc", dy.reshape(5, 1), layer.weight.data.reshape(1, -1)).reshape(x.shape)
    np.testing.assert_allclose(layer.backward(dy), expected, rtol=1e-6, atol=1e-6)


def test_output_is_c_contiguous(rng):
    for layer in (Conv2d(2, 3, 3, 2, 1), ConvTranspose2d(2, 3, 3, 2, 1, 1)):
        y = layer(rng.standard_normal((2, 2, 5, 5)).astype(np.float32))
        assert y.flags.c_contiguous
        assert layer.backward(np.ones_like(y)).flags.c_contiguous


# ---------------------------------------------------------------- errors
@pytest.mark.parametrize("cls", [Conv2d, ConvTranspose2d])
def test_wrong_ndim_names_layer_and_shapes(cls):
    layer = cls(3, 4, 3)
    with pytest.raises(ValueError, match=rf"{cls.__name__} expects a 4-D input \(N, C, H, W\), got shape \(3, 5, 5\)"):
        layer(np.zeros((3, 5, 5), dtype=np.float32))


@pytest.mark.parametrize("cls", [Conv2d, ConvTranspose2d])
def test_wrong_channels_names_layer_and_shapes(cls):
    layer = cls(3, 4, 3)
    with pytest.raises(ValueError, match=rf"{cls.__name__} expects 3 channels.*\(2, 3, 5, 5\).*got shape \(2, 5, 5, 5\)"):
        layer(np.zeros((2, 5, 5, 5), dtype=np.float32))


def test_conv2d_image_smaller_than_kernel():
    layer = Conv2d(3, 4, 3, padding=0, dilation=2)
    with pytest.raises(ValueError, match=r"Conv2d: the input image 4x9 padded by \(0, 0\) is 4x9, smaller than "
                                         r"the dilated kernel 5x5; expected shape \(N, 3, >=5, >=5\), "
                                         r"got shape \(1, 3, 4, 9\)"):
        layer(np.zeros((1, 3, 4, 9), dtype=np.float32))


def test_conv2d_padding_makes_small_image_fit():
    layer = Conv2d(1, 1, 3, padding=1)
    assert layer(np.zeros((1, 1, 1, 1), dtype=np.float32)).shape == (1, 1, 1, 1)


@pytest.mark.parametrize("make, x_shape", [
    (lambda: Conv2d(3, 4, 3), (0, 3, 5, 5)),                       # batch-last columns
    (lambda: Conv2d(3, 4, 3, padding=1), (0, 3, 12, 12)),          # channel-major columns
    (lambda: Conv2d(3, 4, 4), (0, 3, 4, 4)),                       # one window covers the image
    (lambda: ConvTranspose2d(3, 4, 4, 2, 1), (0, 3, 4, 4)),
    (lambda: ConvTranspose2d(3, 4, 4), (0, 3, 1, 1)),
])
def test_an_empty_batch_gives_empty_results_like_torch(make, x_shape):
    layer = make()
    y = layer(np.zeros(x_shape, np.float32))
    assert y.shape[0] == 0 and y.shape[1] == 4
    assert layer.backward(np.zeros_like(y)).shape == x_shape
    assert not layer.weight.grad.any()


def test_conv_transpose2d_empty_output():
    layer = ConvTranspose2d(1, 1, 1, padding=1)
    with pytest.raises(ValueError, match=r"ConvTranspose2d: the input image 1x1 gives an empty output -1x-1.*"
                                         r"got input shape \(1, 1, 1, 1\)"):
        layer(np.zeros((1, 1, 1, 1), dtype=np.float32))


@pytest.mark.parametrize("output_padding, stride, dilation", [(2, 2, 1), (1, 1, 1), ((0, 3), (1, 3), 1),
                                                              (2, 1, 2)])
def test_conv_transpose2d_bad_output_padding(output_padding, stride, dilation):
    with pytest.raises(ValueError, match=r"ConvTranspose2d: output_padding must be smaller than either stride "
                                         r"or dilation"):
        ConvTranspose2d(1, 1, 3, stride=stride, output_padding=output_padding, dilation=dilation)


def test_output_padding_allowed_below_stride_or_dilation():
    assert ConvTranspose2d(1, 1, 3, stride=1, output_padding=1, dilation=2).output_size(3, 3) == (8, 8)
    assert ConvTranspose2d(1, 1, 3, stride=2, output_padding=1).output_size(3, 3) == (8, 8)


@pytest.mark.parametrize("kwargs, message", [
    (dict(kernel_size=0), r"Conv2d: kernel_size must be >= 1, got \(0, 0\)"),
    (dict(kernel_size=3, stride=0), r"Conv2d: stride must be >= 1, got \(0, 0\)"),
    (dict(kernel_size=3, padding=-1), r"Conv2d: padding must be >= 0, got \(-1, -1\)"),
    (dict(kernel_size=(3, 3, 3)),
     r"Conv2d: kernel_size must be an integer or a pair of integers \(height, width\), got \(3, 3, 3\)"),
    # int() would have truncated these without a word, or failed naming no argument
    (dict(kernel_size=2.5), r"Conv2d: kernel_size must be an integer .*, got 2.5"),
    (dict(kernel_size=3, stride=(1, 1.5)), r"Conv2d: stride must be an integer .*, got \(1, 1.5\)"),
    (dict(kernel_size="3"), r"Conv2d: kernel_size must be an integer .*, got '3'"),
    (dict(kernel_size=3, padding="full"), r"Conv2d: padding must be an integer or a pair, 'same' or 'valid', got 'full'"),
    (dict(kernel_size=3, padding="same", stride=2), r"Conv2d: padding='same' needs stride 1 .*got stride=\(2, 2\)"),
    (dict(kernel_size=4, padding="same"), r"Conv2d: padding='same' with kernel_size=\(4, 4\) and dilation=\(1, 1\) "
                                          r"would need one more row or column of zeros on one side"),
])
def test_bad_hyperparameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Conv2d(1, 1, **kwargs)


@pytest.mark.parametrize("cls, args, message", [
    (Conv2d, (3.9, 4, 3), r"Conv2d: in_channels must be an integer, got 3.9"),
    (ConvTranspose2d, (3, "4", 3), r"ConvTranspose2d: out_channels must be an integer, got '4'"),
    (ConvTranspose2d, (3, 4, 3, 1, "same"), r"ConvTranspose2d: padding must be an integer or a pair, got 'same'"),
])
def test_bad_channels_and_padding_named(cls, args, message):
    with pytest.raises(ValueError, match=message):
        cls(*args)


def test_whole_floats_are_accepted():
    layer = Conv2d(3.0, 4, (3.0, 3), stride=np.int64(2))
    assert (layer.in_channels, layer.kernel_size, layer.stride) == (3, (3, 3), (2, 2))
    assert all(type(v) is int for v in layer.kernel_size + layer.stride)


@pytest.mark.parametrize("cls", [Conv2d, ConvTranspose2d])
def test_backward_before_forward_raises(cls):
    with pytest.raises(RuntimeError, match=rf"{cls.__name__}.backward was called before forward"):
        cls(1, 1, 3).backward(np.zeros((1, 1, 3, 3), dtype=np.float32))


@pytest.mark.parametrize("cls", [Conv2d, ConvTranspose2d])
def test_backward_with_wrong_dy_shape(cls):
    layer = cls(1, 2, 3, padding=1)
    y = layer(np.zeros((1, 1, 4, 4), dtype=np.float32))
    with pytest.raises(ValueError, match=rf"{cls.__name__}.backward expects dy shaped like the forward output "
                                         rf"\(1, 2, 4, 4\), got shape \(1, 2, 4, 5\)"):
        layer.backward(np.zeros(y.shape[:3] + (5,), dtype=np.float32))


# ---------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.parametrize("case", [CONV_CASES[3], CONV_CASES[7], CONV_CASES[6]], ids=str)
def test_conv2d_gradcheck_gpu(case, rng):
    import cupy

    layer, x = make_conv(case, rng)
    layer.to("gpu")
    gradcheck(layer, cupy.asarray(x), rng=rng)


@pytest.mark.gpu
@pytest.mark.parametrize("case", [CONV_T_CASES[1], CONV_T_CASES[3], CONV_T_CASES[6]], ids=str)
def test_conv_transpose2d_gradcheck_gpu(case, rng):
    import cupy

    layer, x = make_conv_t(case, rng)
    layer.to("gpu")
    gradcheck(layer, cupy.asarray(x), rng=rng)


@pytest.mark.gpu
def test_gpu_matches_cpu(rng):
    import cupy

    for layer in (Conv2d(3, 4, 4, 2, 1, rng=0), ConvTranspose2d(3, 4, 4, 2, 1, rng=0)):
        x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
        y = layer(x)
        dy = rng.standard_normal(y.shape).astype(np.float32)
        dx = layer.backward(dy)
        weight_grad = layer.weight.grad.copy()
        layer.zero_grad()
        layer.to("gpu")
        y_gpu = layer(cupy.asarray(x))
        dx_gpu = layer.backward(cupy.asarray(dy))
        assert isinstance(y_gpu, cupy.ndarray) and y_gpu.dtype == np.float32
        np.testing.assert_allclose(cupy.asnumpy(y_gpu), y, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(cupy.asnumpy(dx_gpu), dx, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(cupy.asnumpy(layer.weight.grad), weight_grad, rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("kwargs, size", [
    (dict(in_channels=3, out_channels=4, kernel_size=4, stride=2, padding=1), 8),
    (dict(in_channels=3, out_channels=5, kernel_size=3, stride=1, padding=1, dilation=2), 6),
    (dict(in_channels=3, out_channels=2, kernel_size=4), 4),                 # one window: cols are a view of x
    (dict(in_channels=2, out_channels=3, kernel_size=(3, 2), stride=(2, 1), padding=(0, 1)), 12),  # 5x13: batch first
], ids=["dcgan", "dilated", "one-window", "non-square"])
def test_gpu_conv2d_rebuilt_columns_give_the_cpus_gradients(kwargs, size, rng):
    """Conv2d on CuPy rebuilds its columns from x in backward (either column order): dW, db and dx
    equal the CPU's, which kept its columns, in float64."""
    import cupy

    cpu = Conv2d(**kwargs, rng=0).to(np.float64)
    gpu = Conv2d(**kwargs, rng=0).to(np.float64).to("gpu")
    x = rng.standard_normal((3, kwargs["in_channels"], size, size))
    y = cpu(x)
    gpu(cupy.asarray(x))
    dy = rng.standard_normal(y.shape)
    np.testing.assert_allclose(cupy.asnumpy(gpu.backward(cupy.asarray(dy))), cpu.backward(dy), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(cupy.asnumpy(gpu.weight.grad), cpu.weight.grad, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(cupy.asnumpy(gpu.bias.grad), cpu.bias.grad, rtol=1e-12, atol=1e-12)


@pytest.mark.gpu
def test_gpu_conv2d_keeps_its_input_not_the_columns(rng):
    """On CuPy a training Conv2d holds x for its weight gradient and rebuilds the columns in backward
    (4x x's size for a 4x4 stride-2 layer); on NumPy it keeps the columns. The gradients are the
    CPU's either way; a frozen layer keeps neither."""
    import cupy

    cpu, gpu = Conv2d(3, 4, 4, 2, 1, rng=0), Conv2d(3, 4, 4, 2, 1, rng=0).to("gpu")
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    x_gpu = cupy.asarray(x)
    y = cpu(x)
    gpu(x_gpu)
    assert cpu.saved_for_backward().cols is not None and cpu.saved_for_backward().x is None
    saved = gpu.saved_for_backward()
    assert saved.cols is None and saved.x is x_gpu
    dy = rng.standard_normal(y.shape).astype(np.float32)
    np.testing.assert_allclose(cupy.asnumpy(gpu.backward(cupy.asarray(dy))), cpu.backward(dy), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(cupy.asnumpy(gpu.weight.grad), cpu.weight.grad, rtol=1e-5, atol=1e-5)
    gpu.requires_grad_(False)
    gpu(x_gpu)
    assert gpu.saved_for_backward().x is None and gpu.saved_for_backward().cols is None
