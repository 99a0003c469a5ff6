"""backward_parameters: the parameters' gradients of backward, without the input gradient."""
import numpy as np
import pytest

from gan.models import build_gan
from layers import BatchNorm2d, Conv2d, ConvTranspose2d, LeakyReLU, Linear, Tanh
from nnbox.module import Sequential


def _grads(model):
    return [p.grad.copy() for p in model.parameters()]


def _both_ways(make, x, dy):
    """(parameter gradients after backward, after backward_parameters, what the latter returned)."""
    full, partial = make(), make()
    full(x)
    full.backward(dy)
    partial(x)
    returned = partial.backward_parameters(dy)
    return _grads(full), _grads(partial), returned


@pytest.mark.parametrize("make, x_shape", [
    (lambda: Conv2d(3, 4, 3, stride=2, padding=1, rng=0).to(np.float64), (2, 3, 7, 6)),
    (lambda: ConvTranspose2d(4, 3, 4, stride=2, padding=1, rng=0).to(np.float64), (2, 4, 3, 5)),
    (lambda: Linear(5, 3, rng=0).to(np.float64), (4, 5)),
    (lambda: Sequential(Tanh(), Conv2d(2, 3, 3, rng=0), BatchNorm2d(3), LeakyReLU(0.2),
                        Conv2d(3, 2, 3, padding=1, rng=1)).to(np.float64), (2, 2, 6, 6)),
], ids=["conv", "conv_transpose", "linear", "sequential"])
def test_same_parameter_gradients_as_backward(make, x_shape, rng):
    x = rng.standard_normal(x_shape)
    dy = rng.standard_normal(make()(x).shape)
    full, partial, returned = _both_ways(make, x, dy)
    assert returned is None and len(full) == len(partial) > 0
    for a, b in zip(full, partial):
        np.testing.assert_allclose(b, a, rtol=1e-13, atol=1e-15)


def test_sequential_stops_at_the_first_trainable_child(rng):
    class Spy(Tanh):
        calls = []

        def backward(self, dy):
            Spy.calls.append("backward")
            return super().backward(dy)

    conv = Conv2d(2, 2, 3, padding=1, rng=0).to(np.float64)
    model = Sequential(Spy(), conv, LeakyReLU(0.2))
    x = rng.standard_normal((1, 2, 4, 4))
    model(x)
    model.backward_parameters(rng.standard_normal((1, 2, 4, 4)))
    assert Spy.calls == [] and np.any(conv.weight.grad != 0)
    conv.weight.requires_grad = conv.bias.requires_grad = False     # nothing trainable: nothing to do
    model.zero_grad()
    model(x)
    model.backward_parameters(rng.standard_normal((1, 2, 4, 4)))
    assert Spy.calls == [] and not np.any(conv.weight.grad)


def test_a_discriminator_skips_its_first_layers_input_gradient(rng):
    _, d = build_gan("dcgan", image_size=32, width=4, rng=0)
    d = d.to(np.float64)
    x = rng.standard_normal((2, 3, 32, 32))
    dy = rng.standard_normal((2, 1))
    d(x)
    d.backward(dy)
    want = _grads(d)
    d.zero_grad()
    d(x)
    assert d.backward_parameters(dy) is None
    for a, b in zip(want, _grads(d)):
        np.testing.assert_allclose(b, a, rtol=1e-13, atol=1e-15)
