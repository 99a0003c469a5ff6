"""Unpool2d("nearest") then a "same" convolution, run by Sequential as one ResizeConvolution step:
the same values and gradients as the two layers one after the other and as torch, gradient checks,
when it applies and when not, and the GPU."""
import numpy as np
import pytest

from gan.models import build_gan
from layers import Conv2d, ConvTranspose2d, ReLU, SpectralNorm, Unpool2d
from layers.resize_conv import ResizeConvolution, phase_taps
from nnbox.gradcheck import gradcheck
from nnbox.module import Sequential

# (layer class, in, out, kernel, unpool scale, (N, H, W), bias)
CASES = [
    (ConvTranspose2d, 3, 4, 3, 2, (2, 5, 6), True),       # the faces generator's block
    (Conv2d, 3, 4, 3, 2, (2, 6, 5), True),                # upsample + Conv2d
    (ConvTranspose2d, 2, 3, 5, 2, (2, 5, 5), False),
    (Conv2d, 2, 3, (3, 5), (3, 2), (1, 4, 5), True),      # non-square kernel and scale
    (ConvTranspose2d, 2, 2, 3, 3, (2, 4, 4), True),
]


def make_pair(case, rng, dtype=np.float64):
    layer_class, cin, cout, k, scale, (n, h, w), bias = case
    kernel = (k, k) if isinstance(k, int) else k
    conv = layer_class(cin, cout, kernel, padding=tuple((size - 1) // 2 for size in kernel), bias=bias, rng=rng)
    if bias:   # O(1) biases, so a wrong bias path cannot hide
        conv.bias.data = rng.standard_normal(conv.bias.data.shape)
    unpool = Unpool2d(scale, mode="nearest")
    return unpool, conv.to(dtype), rng.standard_normal((n, cin, h, w)).astype(dtype)


def run_separately(unpool, conv, x, dy):
    """(y, dx, weight grad, bias grad) of the two layers one after the other; grads start at zero."""
    conv.zero_grad()
    y = conv(unpool(x))
    dx = unpool.backward(conv.backward(dy))
    result = (y, dx, conv.weight.grad.copy(), None if conv.bias is None else conv.bias.grad.copy())
    conv.zero_grad()
    return result


@pytest.mark.parametrize("case", CASES, ids=str)
def test_fused_step_equals_the_two_layers(case, rng):
    unpool, conv, x = make_pair(case, rng)
    model = Sequential(unpool, conv)
    y = model(x)
    step = model._last_steps()[0]
    assert isinstance(step, ResizeConvolution) and step.saved is not None   # it did run fused
    dy = rng.standard_normal(y.shape)
    dx = model.backward(dy)
    grads = (conv.weight.grad.copy(), None if conv.bias is None else conv.bias.grad.copy())
    expected = run_separately(unpool, conv, x, dy)
    for got, want in zip((y, dx) + grads, expected):
        if want is not None:
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_fused_gradcheck(case, rng):
    unpool, conv, x = make_pair(case, rng)
    gradcheck(Sequential(unpool, conv, ReLU()), x, rng=rng)


def test_backward_parameters_gives_the_parameter_gradients_only(rng):
    unpool, conv, x = make_pair(CASES[0], rng)
    model = Sequential(unpool, conv)
    y = model(x)
    dy = rng.standard_normal(y.shape)
    assert model.backward_parameters(dy) is None
    _, _, weight_grad, bias_grad = run_separately(unpool, conv, x, dy)
    model(x)
    model.backward_parameters(dy)
    np.testing.assert_allclose(conv.weight.grad, weight_grad, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(conv.bias.grad, bias_grad, rtol=1e-12, atol=1e-12)


def test_frozen_convolution_still_passes_the_input_gradient(rng):
    unpool, conv, x = make_pair(CASES[0], rng)
    model = Sequential(unpool, conv)
    y = model(x)
    dy = rng.standard_normal(y.shape)
    _, dx, _, _ = run_separately(unpool, conv, x, dy)
    conv.requires_grad_(False)
    model(x)
    np.testing.assert_allclose(model.backward(dy), dx, rtol=1e-12, atol=1e-12)
    assert not conv.weight.grad.any() and not conv.bias.grad.any()


def test_the_faces_generator_runs_fused_and_matches_the_layers_in_float32(rng):
    G = build_gan("faces", image_size=32, latent_dim=8, width=8, rng=0)[0]
    z = rng.standard_normal((4, 8)).astype(np.float32)
    y = G(z)
    steps = G.main._last_steps()
    assert sum(isinstance(step, ResizeConvolution) and step.saved is not None for step in steps) >= 2
    separately = z
    for module in G.main:
        separately = module(separately)
    np.testing.assert_allclose(y, separately, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("unpool, conv", [
    (Unpool2d(2, mode="zeros"), ConvTranspose2d(2, 2, 3, padding=1)),          # not nearest
    (Unpool2d(2, stride=3, mode="nearest"), ConvTranspose2d(2, 2, 3, padding=1)),  # gaps between blocks
    (Unpool2d(2, mode="nearest"), ConvTranspose2d(2, 2, 4, stride=2, padding=1)),  # stride 2
    (Unpool2d(2, mode="nearest"), Conv2d(2, 2, 4, padding=2)),                    # even kernel
    (Unpool2d(2, mode="nearest"), Conv2d(2, 2, 3, padding=0)),                    # not "same"
    (Unpool2d(2, mode="nearest"), Conv2d(2, 2, 3, padding=2, dilation=2)),        # dilated
    (Unpool2d(2, mode="nearest"), SpectralNorm(Conv2d(2, 2, 3, padding=1))),      # wrapped
], ids=["zeros", "gaps", "stride2", "even-kernel", "valid", "dilated", "spectral-norm"])
def test_other_pairs_run_as_written(unpool, conv):
    assert unpool.fused_with(conv) is None
    model = Sequential(unpool, conv)
    model(np.ones((1, 2, 4, 4)))
    assert model._last_steps() == [unpool, conv]


def test_small_maps_run_as_written_with_the_same_result(rng):
    """On a 2x2 input the fused product would do as many multiply-adds (border of the grid)."""
    unpool, conv, _ = make_pair(CASES[0], rng)
    x = rng.standard_normal((2, 3, 2, 2))
    model = Sequential(unpool, conv)
    y = model(x)
    assert model._last_steps()[0].saved is None
    dy = rng.standard_normal(y.shape)
    dx = model.backward(dy)
    expected = run_separately(unpool, conv, x, dy)
    np.testing.assert_array_equal(y, expected[0])
    np.testing.assert_array_equal(dx, expected[1])


def test_fused_output_has_the_dtype_of_the_unfused_pair(rng):
    # float32 images into float64 weights: the conv's product, hence its output, is float64
    unpool, conv = Unpool2d(2, mode="nearest"), Conv2d(3, 4, 3, padding=1, rng=0, dtype=np.float64)
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    model = Sequential(unpool, conv)
    y = model(x)
    assert model._last_steps()[0].saved is not None          # it did fuse
    assert y.dtype == conv(unpool(x)).dtype == np.float64
    np.testing.assert_allclose(y, conv(unpool(x)), rtol=1e-12, atol=1e-12)


def test_an_empty_batch_gives_empty_results(rng):
    model = Sequential(Unpool2d(2, mode="nearest"), Conv2d(3, 4, 3, padding=1, rng=0))
    y = model(np.zeros((0, 3, 8, 8), np.float32))
    assert y.shape == (0, 4, 16, 16)
    assert model.backward(np.zeros_like(y)).shape == (0, 3, 8, 8)


def test_clear_saved_drops_the_fused_state(rng):
    unpool, conv, x = make_pair(CASES[0], rng)
    model = Sequential(unpool, conv)
    y = model(x)
    model.clear_saved()
    with pytest.raises(RuntimeError, match="before forward"):
        model.backward(np.ones_like(y))


def test_errors_name_the_layer(rng):
    unpool, conv, _ = make_pair(CASES[0], rng)
    model = Sequential(unpool, conv)
    with pytest.raises(ValueError, match="ConvTranspose2d"):
        model(np.ones((2, 5, 4, 4)))                     # 5 channels, the conv takes 3
    y = model(np.ones((2, 3, 4, 4)))
    with pytest.raises(ValueError, match="expects dy shaped like"):
        model.backward(np.ones(y.shape[:-1] + (3,)))


def test_phase_taps_for_the_faces_kernel():
    """3x3 kernel, scale 2: phase 0 reads rows h-1 (tap 0) and h (taps 1, 2); phase 1 rows h (taps
    0, 1) and h+1 (tap 2); windows of 2 rows, padding 1."""
    lo, window, padding, sums = phase_taps(3, 2)
    assert lo == (-1, 0) and window == 2 and padding == 1
    np.testing.assert_array_equal(sums, [[1, 0, 0], [0, 1, 1], [1, 1, 0], [0, 0, 1]])


@pytest.mark.parametrize("case", CASES, ids=str)
def test_torch_parity(case, rng, torch):
    """The same as torch's nearest upsampling followed by the same convolution, values and gradients."""
    unpool, conv, x = make_pair(case, rng)
    model = Sequential(unpool, conv)
    y = model(x)
    dy = rng.standard_normal(y.shape)
    dx = model.backward(dy)
    twin = getattr(torch.nn, type(conv).__name__)(conv.in_channels, conv.out_channels, conv.kernel_size,
                                                   padding=conv.padding, bias=conv.bias is not None).double()
    with torch.no_grad():
        twin.weight.copy_(torch.tensor(conv.weight.data))
        if conv.bias is not None:
            twin.bias.copy_(torch.tensor(conv.bias.data))
    xt = torch.tensor(x, requires_grad=True)
    yt = twin(torch.nn.functional.interpolate(xt, scale_factor=unpool.kernel_size, mode="nearest"))
    yt.backward(torch.tensor(dy))
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(conv.weight.grad, twin.weight.grad.numpy(), rtol=1e-10, atol=1e-10)
    if conv.bias is not None:
        np.testing.assert_allclose(conv.bias.grad, twin.bias.grad.numpy(), rtol=1e-10, atol=1e-10)


@pytest.mark.gpu
@pytest.mark.parametrize("case", [CASES[0], CASES[3]], ids=str)
def test_gpu_matches_cpu(case, rng):
    import cupy

    unpool, conv, x = make_pair(case, rng, np.float32)
    model = Sequential(unpool, conv)
    y = model(x)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx = model.backward(dy)
    weight_grad = conv.weight.grad.copy()
    conv.zero_grad()
    model.to("gpu")
    y_gpu = model(cupy.asarray(x))
    assert isinstance(model._last_steps()[0], ResizeConvolution)
    dx_gpu = model.backward(cupy.asarray(dy))
    np.testing.assert_allclose(cupy.asnumpy(y_gpu), y, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(cupy.asnumpy(dx_gpu), dx, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(cupy.asnumpy(conv.weight.grad), weight_grad, rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
def test_gpu_gradcheck(rng):
    import cupy

    unpool, conv, x = make_pair(CASES[0], rng)
    model = Sequential(unpool, conv)
    model.to("gpu")
    gradcheck(model, cupy.asarray(x), rng=rng)
