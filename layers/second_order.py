"""Double backward: the backward of each layer's backward, for losses on input gradients (WGAN-GP).

A layer's backward is a function of three things: dx = B(dy; theta, x), where dy is the upstream
gradient, theta the parameters and x the saved input of the last forward. B is always LINEAR in
dy. A loss R(dx) on the input gradient (the gradient penalty) needs the gradients of R with
respect to dy (to continue through the layer before), theta and x. Given the cotangent
ddx = dR/d(dx), a layer's double backward

    ddy = dR/d(dy)   = (dB/d(dy))^T ddx  (as B is linear in dy, this is the layer's forward
                                          derivative, its Jacobian J, applied to ddx: ddy = J ddx)
    dR/d(theta)     += (dB/d(theta))^T ddx          (added into param.grad)
    dR/d(x)          = (dB/dx)^T ddx                (the term through the saved input)

Per layer (y = f(x); the first backward's dy is recorded by the caller and passed in):

    Linear     y = x W^T + b,  dx = dy W:        ddy = ddx W^T,  dW += dy^T ddx,  db: 0,  x-term 0
    Conv2d     dx = col2im(W2^T dY):              ddy = conv(ddx, W) (no bias),
                                                  dW2 += dY im2col(ddx)^T,  db: 0,  x-term 0
    ReLU       dx = dy [x > 0]:                   ddy = ddx [x > 0],  x-term 0 (almost everywhere)
    LeakyReLU  dx = dy s(x):                      ddy = ddx s(x),  x-term 0 (almost everywhere)
    MaxPool2d  dx = scatter of dy to the argmax:  ddy = ddx gathered at the argmax, x-term 0
    Dropout    dx = dy m / (1 - p):               ddy = ddx m / (1 - p) (the forward's mask; Dropout2d too)
    Flatten, Reshape  dx = reshape(dy):           ddy = reshape(ddx)
    Tanh       dx = dy (1 - y^2):                 ddy = ddx (1 - y^2),  x-term = -2 ddx dy y (1 - y^2)
    Sigmoid    dx = dy y (1 - y):                 ddy = ddx y (1 - y),  x-term = ddx dy y (1 - y)(1 - 2y)

The x-term of the piecewise-linear layers is zero wherever they are differentiable: their masks
and switches do not move under a small change of x. Linear and convolution layers have a zero
x-term because their backward does not read x at all.

A network is a chain of these layers: `chain(module)` flattens Sequential containers (and any
container registered with `register_container`) into its leaf layers in forward order. An
unsupported layer (BatchNorm, SpectralNorm, ...) raises a TypeError naming it.
"""
from nnbox.module import Module, Sequential

from . import conv_maths
from .activations import LeakyReLU, ReLU, Sigmoid, Tanh
from .conv import Conv2d
from .dropout import Dropout
from .linear import Linear
from .pooling import MaxPool2d, flat_indices
from .shape import Flatten, Reshape


def _linear(layer, dy, ddx):
    if layer.weight.requires_grad:
        layer.weight.grad += dy.T @ ddx
    return ddx @ layer.weight.data.T, None


def _conv2d(layer, dy, ddx):
    saved = layer.saved_for_backward()
    n = saved.x_shape[0]
    ddy_matrix, cols = layer._convolve(ddx, saved.out_size)
    layer._accumulate_weight_grad(conv_maths.to_channel_major(dy), cols)
    return conv_maths.from_channel_major(ddy_matrix, (n, layer.out_channels) + saved.out_size), None


def _relu(layer, dy, ddx):
    return ddx * layer.saved_for_backward().positive, None


def _leaky_relu(layer, dy, ddx):
    return ddx * layer._slopes(layer.saved_for_backward().positive, ddx.dtype), None


def _max_pool2d(layer, dy, ddx):
    saved = layer.saved_for_backward()
    h, w = saved.x_shape[2:]
    return ddx.reshape(-1)[flat_indices(saved.indices, h * w)].reshape(saved.indices.shape), None


def _dropout(layer, dy, ddx):
    # backward is the multiplication by the forward's scaled mask, so is its double backward
    return layer.backward(ddx), None


def _reshape(layer, dy, ddx):
    return ddx.reshape(layer.saved_for_backward().output_shape), None


def _tanh(layer, dy, ddx):
    y = layer.saved_for_backward().y
    slope = 1 - y * y
    return ddx * slope, -2 * ddx * dy * y * slope


def _sigmoid(layer, dy, ddx):
    y = layer.saved_for_backward().y
    slope = y * (1 - y)
    return ddx * slope, ddx * dy * slope * (1 - 2 * y)


# layer class -> double_backward(layer, dy, ddx) -> (ddy, x_term or None)
DOUBLE_BACKWARD = {
    Linear: _linear, Conv2d: _conv2d, ReLU: _relu, LeakyReLU: _leaky_relu, MaxPool2d: _max_pool2d,
    Dropout: _dropout, Flatten: _reshape, Reshape: _reshape, Tanh: _tanh, Sigmoid: _sigmoid,
}
# container class -> function giving its children in forward order (forward = running them in turn)
CONTAINERS = {Sequential: lambda module: list(module)}


def register_container(cls, children):
    """Declare that `cls`'s forward (and backward) runs `children(module)` in order, e.g. a model
    whose forward is `self.main(x)`: register_container(Model, lambda m: [m.main])."""
    CONTAINERS[cls] = children


def _lookup(table, module):
    for cls in type(module).__mro__:
        if cls in table:
            return table[cls]
    return None


def chain(module):
    """The leaf layers of `module` in forward order; a TypeError names any layer without a double backward."""
    children = _lookup(CONTAINERS, module)
    if children is not None:
        return [leaf for child in children(module) for leaf in chain(child)]
    if not isinstance(module, Module) or _lookup(DOUBLE_BACKWARD, module) is None:
        supported = sorted(cls.__name__ for cls in DOUBLE_BACKWARD)
        raise TypeError(
            f"{type(module).__name__} has no double backward (needed for a penalty on input gradients, "
            f"e.g. WGAN-GP); supported layers: {supported}. WGAN-GP critics use no BatchNorm (the penalty "
            f"is per sample) and no SpectralNorm: build the critic without them")
    return [module]


def double_backward(layer, dy, ddx):
    """(ddy, x_term) of one leaf layer after its forward: see the module docstring for the formulas.

    dy: the upstream gradient the layer's (first) backward received; ddx: the cotangent of the dx
    it returned. Parameter gradients are added into param.grad (when requires_grad). x_term is
    None when it is zero.
    """
    return _lookup(DOUBLE_BACKWARD, layer)(layer, dy, ddx)


def backward_recording(layers, dy):
    """Backpropagate dy through `layers` (a chain, in forward order); return (dx, the dy each layer got)."""
    received = [None] * len(layers)
    for index in reversed(range(len(layers))):
        received[index] = dy
        dy = layers[index].backward(dy)
    return dy, received


def chain_double_backward(layers, received, ddx):
    """The double backward of a chain whose backward (`backward_recording`) returned dx and `received`.

    ddx: the cotangent of that dx. Runs each layer's double backward in forward order (the reverse
    of the backward's order), adding parameter gradients; then sends the x-terms back through the
    forward pass (each layer's ordinary backward, which adds the parameter gradients of that path).
    Returns (ddy, dx): the cotangent of the chain's upstream dy, and dR/dx for the chain's input x
    (None when every x-term is zero).
    """
    x_terms = []
    for layer, dy in zip(layers, received):
        ddx, x_term = double_backward(layer, dy, ddx)
        x_terms.append(x_term)
    total = None  # dR/d(activation) along the forward pass, from the layers after it
    for layer, x_term in zip(reversed(layers), reversed(x_terms)):
        if total is not None:
            total = layer.backward(total)
        if x_term is not None:
            total = x_term if total is None else total + x_term
    return ddx, total
