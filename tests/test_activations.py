"""ReLU, LeakyReLU, Tanh, Sigmoid: gradient checks, torch parity, stability, errors, GPU."""
import numpy as np
import pytest

from layers import LeakyReLU, ReLU, Sigmoid, Tanh
from nnbox.gradcheck import gradcheck

ACTIVATIONS = {
    "relu": (ReLU, "relu"),
    "leaky_relu": (lambda: LeakyReLU(0.2), "leaky_relu"),
    "leaky_relu_default": (LeakyReLU, "leaky_relu"),
    "tanh": (Tanh, "tanh"),
    "sigmoid": (Sigmoid, "sigmoid"),
}
SHAPES = [(1, 1), (1, 7), (3, 5), (2, 3, 4, 5)]


def away_from_zero(rng, shape, margin=1e-3):
    """Standard normal values at least `margin` from 0, the kink of ReLU and LeakyReLU."""
    x = rng.standard_normal(shape)
    return x + np.sign(x) * margin


def torch_activation(torch, name):
    functional = torch.nn.functional
    return {"relu": functional.relu, "leaky_relu": lambda t: functional.leaky_relu(t, 0.2),
            "leaky_relu_default": functional.leaky_relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid}[name]


@pytest.mark.parametrize("name", ACTIVATIONS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("training", [True, False])
def test_gradcheck(name, shape, training, rng):
    layer = ACTIVATIONS[name][0]()
    layer.train(training)
    report = gradcheck(layer, away_from_zero(rng, shape), rng=rng)
    assert report.checked_entries["input 0"] == np.prod(shape)


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_torch_parity(name, rng, torch):
    x = away_from_zero(rng, (4, 3, 5))
    x[0, 0, :3] = [-40.0, 40.0, 0.0]   # saturated values and the kink itself
    dy = rng.standard_normal(x.shape)
    layer = ACTIVATIONS[name][0]()
    y = layer(x)
    dx = layer.backward(dy)
    xt = torch.tensor(x, requires_grad=True)
    yt = torch_activation(torch, name)(xt)
    yt.backward(torch.tensor(dy))
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-14, atol=0)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-14, atol=1e-300)
    assert y.dtype == np.float64 and dx.dtype == np.float64


# LeakyReLU's other slopes take other code paths: 0 is ReLU's maximum, above 1 a minimum, below 0
# (an unusual but valid choice, as in torch) the masked multiply
OTHER_SLOPES = [0.0, 1.0, 2.0, -0.5]


@pytest.mark.parametrize("slope", OTHER_SLOPES)
def test_leaky_relu_other_slopes_gradcheck(slope, rng):
    report = gradcheck(LeakyReLU(slope), away_from_zero(rng, (2, 3, 4, 5)), rng=rng)
    assert report.checked_entries["input 0"] == 120


@pytest.mark.parametrize("slope", OTHER_SLOPES)
def test_leaky_relu_other_slopes_torch_parity(slope, rng, torch):
    x = away_from_zero(rng, (4, 3, 5))
    x[0, 0, :3] = [-40.0, 40.0, 0.0]   # saturated values and the kink itself
    dy = rng.standard_normal(x.shape)
    layer = LeakyReLU(slope)
    y = layer(x)
    dx = layer.backward(dy)
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.nn.functional.leaky_relu(xt, slope)
    yt.backward(torch.tensor(dy))
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-14, atol=0)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-14, atol=1e-300)


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_float32_stays_float32(name, rng):
    x = rng.standard_normal((3, 4)).astype(np.float32)
    layer = ACTIVATIONS[name][0]()
    assert layer(x).dtype == np.float32
    assert layer.backward(np.ones_like(x)).dtype == np.float32


def test_relu_worked_example():
    relu = ReLU()
    y = relu(np.array([[-2.0, 0.0, 3.0]]))
    np.testing.assert_array_equal(y, [[0.0, 0.0, 3.0]])
    assert not np.signbit(y).any()    # max(x, 0): no -0.0 for negative inputs
    # the derivative at the kink is 0, as in PyTorch
    np.testing.assert_array_equal(relu.backward(np.array([[5.0, 5.0, 5.0]])), [[0.0, 0.0, 5.0]])


def test_leaky_relu_worked_example():
    layer = LeakyReLU(0.1)
    np.testing.assert_allclose(layer(np.array([-2.0, 0.0, 3.0])), [-0.2, 0.0, 3.0])
    np.testing.assert_allclose(layer.backward(np.array([1.0, 1.0, 1.0])), [0.1, 0.1, 1.0])
    assert LeakyReLU().negative_slope == 0.01
    assert "negative_slope=0.1" in repr(layer)


def test_leaky_relu_keeps_float16_with_any_slope():
    for slope in (0.2, -0.5):
        assert LeakyReLU(slope)(np.array([-2.0, 3.0], np.float16)).dtype == np.float16


@pytest.mark.parametrize("dtype, out_dtype", [(np.int64, np.float64), (np.int8, np.float32)])
def test_leaky_relu_of_integers_is_a_float(dtype, out_dtype):
    # its slopes 0.2 and 1 - 0.2 were computed in the integer dtype: 0 and 0
    layer = LeakyReLU(0.2)
    y = layer(np.array([-2, -1, 0, 3], dtype=dtype))
    assert y.dtype == out_dtype
    np.testing.assert_allclose(y, [-0.4, -0.2, 0.0, 3.0], rtol=1e-6)
    np.testing.assert_allclose(layer.backward(np.ones(4)), [0.2, 0.2, 0.2, 1.0], rtol=1e-6)


def test_leaky_relu_slope_above_one():
    # y = x * slope on the negative side, not max(x, slope * x), which would be wrong for slope > 1
    layer = LeakyReLU(2.0)
    np.testing.assert_allclose(layer(np.array([-1.0, 1.0])), [-2.0, 1.0])


@pytest.mark.parametrize("slope", [0.0, 0.2, 1.0, 2.0])
def test_leaky_relu_of_infinities_and_nan(slope):
    # slope 0 computed max(0 x, x), which is NaN at x = inf; torch gives inf
    y = LeakyReLU(slope)(np.array([np.inf, -np.inf, np.nan, -1.0, 2.0]))
    np.testing.assert_array_equal(y, [np.inf, -np.inf if slope else 0.0, np.nan, -slope, 2.0])


def test_sigmoid_is_stable_at_extremes():
    sigmoid = Sigmoid()
    x = np.array([-1000.0, -40.0, 0.0, 40.0, 1000.0])
    with np.errstate(over="raise", under="ignore"):
        y = sigmoid(x)
    np.testing.assert_allclose(y[1], np.exp(-40.0) / (1 + np.exp(-40.0)), rtol=1e-14)  # relative precision kept
    np.testing.assert_array_equal(y[[0, 2, 3, 4]], [0.0, 0.5, 1.0, 1.0])
    dx = sigmoid.backward(np.ones_like(x))
    assert np.all(np.isfinite(dx)) and dx[2] == 0.25
    y32 = Sigmoid()(np.array([-100.0, 100.0], np.float32))
    assert y32.dtype == np.float32 and np.all(np.isfinite(y32))


def test_tanh_backward_uses_output():
    tanh = Tanh()
    x = np.array([0.5, -1.5])
    tanh(x)
    np.testing.assert_allclose(tanh.backward(np.ones(2)), 1 - np.tanh(x) ** 2, rtol=1e-15)


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_backward_before_forward(name):
    with pytest.raises(RuntimeError, match="backward was called before forward"):
        ACTIVATIONS[name][0]().backward(np.ones((2, 3)))


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_errors_name_layer_and_shapes(name):
    layer = ACTIVATIONS[name][0]()
    with pytest.raises(TypeError, match=type(layer).__name__):
        layer([1.0, 2.0])
    layer(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=rf"{type(layer).__name__}.backward expects dy .*\(2, 3\), got shape \(3, 2\)"):
        layer.backward(np.zeros((3, 2)))


@pytest.mark.gpu
@pytest.mark.parametrize("name", ACTIVATIONS)
def test_gpu_gradcheck_and_match_cpu(name, rng):
    import cupy
    x = away_from_zero(rng, (3, 4, 5))
    dy = rng.standard_normal(x.shape)
    cpu = ACTIVATIONS[name][0]()
    gpu = ACTIVATIONS[name][0]().to("gpu")
    gradcheck(gpu, cupy.asarray(x), rng=rng)
    np.testing.assert_allclose(cupy.asnumpy(gpu(cupy.asarray(x))), cpu(x), rtol=1e-12)
    np.testing.assert_allclose(cupy.asnumpy(gpu.backward(cupy.asarray(dy))), cpu.backward(dy), rtol=1e-12)


@pytest.mark.gpu
@pytest.mark.parametrize("slope", [0.0, 0.2, 2.0])
def test_gpu_leaky_relu_of_infinities_and_nan_match_cpu(slope):
    import cupy
    x = np.array([np.inf, -np.inf, np.nan, -1.0, 2.0])
    np.testing.assert_array_equal(cupy.asnumpy(LeakyReLU(slope)(cupy.asarray(x))), LeakyReLU(slope)(x))
