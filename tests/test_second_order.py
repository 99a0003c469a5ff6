"""Double backward of each layer (layers/second_order.py) against central differences of its backward,
and against torch's double backward (autograd with create_graph=True).

For a layer after a forward on x, with upstream gradient dy and a random cotangent c of dx, the
scalar R(dy, theta, x) = sum(c * backward(dy)) has dR/d(dy) = ddy, dR/d(theta) = what the double
backward adds into param.grad, dR/dx = the x-term (zero when None). All in float64.
"""
import numpy as np
import pytest

from layers import second_order
from layers.activations import LeakyReLU, ReLU, Sigmoid, Tanh
from layers.conv import Conv2d, ConvTranspose2d
from layers.dropout import Dropout, Dropout2d
from layers.linear import Linear
from layers.normalization import BatchNorm2d
from layers.pooling import MaxPool2d
from layers.shape import Flatten, Reshape
from nnbox import backend
from nnbox.module import Sequential

EPS = 1e-6


def away_from_zero(rng, shape, low=0.2):
    """Values with |x| >= low: no ReLU kink within EPS."""
    return rng.choice([-1.0, 1.0], size=shape) * rng.uniform(low, 1.5, size=shape)


def distinct(rng, shape):
    """A permutation of well separated values: no max-pool tie within EPS."""
    return (rng.permutation(int(np.prod(shape))).reshape(shape) * 0.01 - 0.5).astype(np.float64)


def first_backward(layer, x, dy):
    """dx of a fresh forward on x; the layer's parameters are frozen so no grad is accumulated."""
    flags = [p.requires_grad for p in layer.parameters()]
    layer.requires_grad_(False)
    layer(x)
    dx = layer.backward(dy)
    for param, flag in zip(layer.parameters(), flags):
        param.requires_grad = flag
    return dx


def central_difference(array, objective):
    flat = array.reshape(-1)
    out = np.empty(flat.size)
    for i in range(flat.size):
        original = flat[i]
        flat[i] = original + EPS
        plus = objective()
        flat[i] = original - EPS
        minus = objective()
        flat[i] = original
        out[i] = (plus - minus) / (2 * EPS)
    return out.reshape(array.shape)


def check_double_backward(layer, x, rng):
    layer.to(np.float64)
    x = np.ascontiguousarray(x, dtype=np.float64)
    y = layer(x)
    dy = rng.standard_normal(y.shape)
    dx = first_backward(layer, x, dy)
    c = rng.standard_normal(dx.shape)

    layer.zero_grad()
    first_backward(layer, x, dy)
    ddy, x_term = second_order.double_backward(layer, dy, c)
    analytical_params = {name: p.grad.copy() for name, p in layer.named_parameters()}

    def objective():
        return float((c * first_backward(layer, x, dy)).sum())

    np.testing.assert_allclose(ddy, central_difference(dy, objective), rtol=1e-6, atol=1e-8)
    expected_x = central_difference(x, objective)
    np.testing.assert_allclose(np.zeros_like(x) if x_term is None else x_term, expected_x, rtol=1e-6, atol=1e-8)
    for name, param in layer.named_parameters():
        np.testing.assert_allclose(analytical_params[name], central_difference(param.data, objective),
                                   rtol=1e-6, atol=1e-8, err_msg=name)
    return ddy, x_term


def test_linear(rng):
    check_double_backward(Linear(5, 3, rng=rng), rng.standard_normal((4, 5)), rng)


@pytest.mark.parametrize("kernel, stride, padding", [(3, 1, 1), (4, 2, 1), (2, 1, 0)])
def test_conv2d(rng, kernel, stride, padding):
    ddy, x_term = check_double_backward(Conv2d(2, 3, kernel, stride=stride, padding=padding, rng=rng),
                                        rng.standard_normal((2, 2, 6, 6)), rng)
    assert x_term is None


@pytest.mark.parametrize("layer", [ReLU(), LeakyReLU(0.2)], ids=["relu", "leaky_relu"])
def test_piecewise_linear_activations(rng, layer):
    check_double_backward(layer, away_from_zero(rng, (3, 2, 3, 3)), rng)


@pytest.mark.parametrize("layer", [Tanh(), Sigmoid()], ids=["tanh", "sigmoid"])
def test_smooth_activations_have_a_term_through_the_input(rng, layer):
    _, x_term = check_double_backward(layer, rng.standard_normal((3, 4)), rng)
    assert x_term is not None and np.abs(x_term).max() > 1e-3


@pytest.mark.parametrize("pool", [MaxPool2d(2), MaxPool2d(3, stride=1, padding=1)], ids=["disjoint", "overlapping"])
def test_max_pool(rng, pool):
    check_double_backward(pool, distinct(rng, (2, 2, 4, 4)), rng)


@pytest.mark.parametrize("layer, mask_shape", [(Dropout(0.4), (3, 2, 3, 3)), (Dropout2d(0.5), (3, 2))],
                         ids=["dropout", "dropout2d"])
def test_dropout_with_a_fixed_mask(rng, layer, mask_shape):
    layer.fixed_mask = rng.random(mask_shape) > 0.4
    check_double_backward(layer, rng.standard_normal((3, 2, 3, 3)), rng)


@pytest.mark.parametrize("layer", [Flatten(), Reshape(6, 3)], ids=["flatten", "reshape"])
def test_shape_layers(rng, layer):
    check_double_backward(layer, rng.standard_normal((2, 2, 3, 3)), rng)


# layer options the tests above leave out: a Linear without bias, dilated, non-square, strided and
# bias-free convolutions, LeakyReLU's other slopes (each its own forward code path), a non-square
# max pool with padding, a partial Flatten. (name, layer maker, input maker)
OPTION_CASES = [
    ("linear_no_bias", lambda rng: Linear(5, 3, bias=False, rng=rng), lambda rng: rng.standard_normal((4, 5))),
    ("conv2d_dilated_no_bias", lambda rng: Conv2d(2, 3, 3, padding=2, dilation=2, bias=False, rng=rng),
     lambda rng: rng.standard_normal((2, 2, 6, 5))),
    ("conv2d_non_square", lambda rng: Conv2d(2, 3, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2), rng=rng),
     lambda rng: rng.standard_normal((2, 2, 7, 6))),
    ("leaky_relu_0", lambda rng: LeakyReLU(0.0), lambda rng: away_from_zero(rng, (3, 4, 2))),
    ("leaky_relu_2", lambda rng: LeakyReLU(2.0), lambda rng: away_from_zero(rng, (3, 4, 2))),
    ("leaky_relu_negative", lambda rng: LeakyReLU(-0.5), lambda rng: away_from_zero(rng, (3, 4, 2))),
    ("max_pool_non_square", lambda rng: MaxPool2d((3, 2), stride=(1, 2), padding=(1, 0)),
     lambda rng: distinct(rng, (2, 2, 5, 6))),
    ("flatten_middle", lambda rng: Flatten(1, 2), lambda rng: rng.standard_normal((2, 3, 2, 4))),
]


@pytest.mark.parametrize("name, make, make_x", OPTION_CASES, ids=[case[0] for case in OPTION_CASES])
def test_layer_options(rng, name, make, make_x):
    check_double_backward(make(rng), make_x(rng), rng)


# every supported layer, for the torch parity of its double backward: the cases above and those of the
# tests before them
PARITY_CASES = OPTION_CASES + [
    ("linear", lambda rng: Linear(5, 3, rng=rng), lambda rng: rng.standard_normal((4, 5))),
    ("conv2d", lambda rng: Conv2d(2, 3, 4, stride=2, padding=1, rng=rng), lambda rng: rng.standard_normal((2, 2, 6, 6))),
    ("relu", lambda rng: ReLU(), lambda rng: away_from_zero(rng, (3, 2, 3, 3))),
    ("leaky_relu", lambda rng: LeakyReLU(0.2), lambda rng: away_from_zero(rng, (3, 2, 3, 3))),
    ("tanh", lambda rng: Tanh(), lambda rng: rng.standard_normal((3, 4))),
    ("sigmoid", lambda rng: Sigmoid(), lambda rng: rng.standard_normal((3, 4))),
    ("max_pool_overlapping", lambda rng: MaxPool2d(3, stride=1, padding=1), lambda rng: distinct(rng, (2, 2, 4, 4))),
    ("dropout", lambda rng: fixed_mask(Dropout(0.4), rng, (3, 2, 3, 3)), lambda rng: rng.standard_normal((3, 2, 3, 3))),
    ("dropout2d", lambda rng: fixed_mask(Dropout2d(0.5), rng, (3, 2)), lambda rng: rng.standard_normal((3, 2, 3, 3))),
    ("flatten", lambda rng: Flatten(), lambda rng: rng.standard_normal((2, 2, 3, 3))),
    ("reshape", lambda rng: Reshape(6, 3), lambda rng: rng.standard_normal((2, 2, 3, 3))),
]


def fixed_mask(layer, rng, mask_shape):
    layer.fixed_mask = rng.random(mask_shape) > layer.p
    return layer


def torch_function(torch, layer):
    """The layer's forward in torch, f(x, params) with params {name: tensor}; Dropout with its saved mask."""
    F = torch.nn.functional
    if isinstance(layer, Linear):
        return lambda x, p: F.linear(x, p["weight"], p.get("bias"))
    if isinstance(layer, Conv2d):
        return lambda x, p: F.conv2d(x, p["weight"], p.get("bias"), layer.stride, layer.padding, layer.dilation)
    if isinstance(layer, LeakyReLU):
        return lambda x, p: F.leaky_relu(x, layer.negative_slope)
    if isinstance(layer, MaxPool2d):
        return lambda x, p: F.max_pool2d(x, layer.kernel_size, layer.stride, layer.padding)
    if isinstance(layer, Dropout):
        mask = torch.tensor(layer.saved_for_backward().scaled_mask)
        return lambda x, p: x * mask
    if isinstance(layer, (Flatten, Reshape)):
        shape = layer.saved_for_backward().output_shape
        return lambda x, p: x.reshape(shape)
    return {ReLU: lambda x, p: F.relu(x), Tanh: lambda x, p: torch.tanh(x),
            Sigmoid: lambda x, p: torch.sigmoid(x)}[type(layer)]


@pytest.mark.parametrize("name, make, make_x", PARITY_CASES, ids=[case[0] for case in PARITY_CASES])
def test_matches_torch_double_backward(rng, torch, name, make, make_x):
    """For R = sum(c * dx), dx = layer.backward(dy): ddy, the parameters' gradients and the x-term equal
    torch's gradients of R (torch.autograd.grad with create_graph=True, then R's backward)."""
    layer = make(rng).to(np.float64)
    x = make_x(rng)
    y = layer(x)
    dy = rng.standard_normal(y.shape)
    c = rng.standard_normal(x.shape)
    layer.zero_grad()
    first_backward(layer, x, dy)
    ddy, x_term = second_order.double_backward(layer, dy, c)

    params = {param_name: torch.tensor(p.data, requires_grad=True) for param_name, p in layer.named_parameters()}
    xt, dyt = torch.tensor(x, requires_grad=True), torch.tensor(dy, requires_grad=True)
    (dxt,) = torch.autograd.grad(torch_function(torch, layer)(xt, params), xt, dyt, create_graph=True)
    np.testing.assert_allclose(first_backward(layer, x, dy), dxt.detach().numpy(), rtol=1e-10, atol=1e-12)
    wanted = [dyt, xt] + list(params.values())
    grads = torch.autograd.grad((torch.tensor(c) * dxt).sum(), wanted, allow_unused=True)
    grads = [np.zeros(t.shape) if g is None else g.numpy() for t, g in zip(wanted, grads)]
    np.testing.assert_allclose(ddy, grads[0], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(np.zeros_like(x) if x_term is None else x_term, grads[1], rtol=1e-10, atol=1e-12)
    for (param_name, param), expected in zip(layer.named_parameters(), grads[2:]):
        np.testing.assert_allclose(param.grad, expected, rtol=1e-10, atol=1e-12, err_msg=param_name)


def test_frozen_parameters_get_no_gradient(rng):
    layer = Linear(4, 2, rng=rng).to(np.float64)
    x, dy = rng.standard_normal((3, 4)), rng.standard_normal((3, 2))
    first_backward(layer, x, dy)
    layer.requires_grad_(False)
    second_order.double_backward(layer, dy, rng.standard_normal((3, 4)))
    assert not layer.weight.grad.any() and not layer.bias.grad.any()


def test_chain_flattens_nested_containers_in_forward_order():
    inner = Sequential(Conv2d(1, 2, 3), LeakyReLU())
    net = Sequential(inner, Flatten(), Sequential(Linear(8, 1)))
    assert [type(layer).__name__ for layer in second_order.chain(net)] == ["Conv2d", "LeakyReLU", "Flatten", "Linear"]


def test_chain_double_backward_sends_the_input_terms_back_through_the_forward(rng):
    """R = sum(c * dx) of a whole Tanh network: weight and input gradients against central differences."""
    net = Sequential(Linear(3, 4, rng=rng), Tanh(), Linear(4, 2, rng=rng), Sigmoid(), Linear(2, 1, rng=rng)).to(np.float64)
    layers = second_order.chain(net)
    x, c = rng.standard_normal((5, 3)), rng.standard_normal((5, 3))
    dy = rng.standard_normal((5, 1))

    def dx_of_chain():
        net.requires_grad_(False)
        net(x)
        dx, received = second_order.backward_recording(layers, dy)
        net.requires_grad_(True)
        return dx, received

    def objective():
        return float((c * dx_of_chain()[0]).sum())

    net.zero_grad()
    _, received = dx_of_chain()
    ddy, dx = second_order.chain_double_backward(layers, received, c)
    np.testing.assert_allclose(dx, central_difference(x, objective), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(ddy, central_difference(dy, objective), rtol=1e-6, atol=1e-8)
    grads = {name: p.grad.copy() for name, p in net.named_parameters()}
    for name, param in net.named_parameters():
        np.testing.assert_allclose(grads[name], central_difference(param.data, objective), rtol=1e-6,
                                   atol=1e-8, err_msg=name)


@pytest.mark.parametrize("layer", [BatchNorm2d(2), ConvTranspose2d(2, 2, 3)], ids=["batchnorm", "conv_transpose"])
def test_an_unsupported_layer_is_named(layer):
    with pytest.raises(TypeError, match=type(layer).__name__ + " has no double backward"):
        second_order.chain(Sequential(Conv2d(2, 2, 3), layer))


@pytest.mark.gpu
def test_double_backward_on_the_gpu(rng):
    import cupy
    net = Sequential(Conv2d(2, 3, 3, padding=1, rng=rng), MaxPool2d(2), LeakyReLU(0.2), Flatten(), Linear(12, 1, rng=rng))
    x, c = rng.standard_normal((2, 2, 4, 4)), rng.standard_normal((2, 2, 4, 4))
    results = []
    for device in ("cpu", "gpu"):
        net.to(device).to(np.float64)
        net.zero_grad()
        layers = second_order.chain(net)
        net(backend.to_device(x, device))
        _, received = second_order.backward_recording(layers, backend.to_device(np.ones((2, 1)), device))
        second_order.chain_double_backward(layers, received, backend.to_device(c, device))
        results.append([backend.to_numpy(p.grad) for p in net.parameters()])
    assert isinstance(net.parameters()[0].grad, cupy.ndarray)
    for cpu, gpu in zip(*results):
        np.testing.assert_allclose(gpu, cpu, rtol=1e-10, atol=1e-12)
