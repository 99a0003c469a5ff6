"""Element-wise activations: ReLU, LeakyReLU, Tanh, Sigmoid.

Each keeps only what its backward needs: a boolean mask (ReLU, LeakyReLU) or its own output
(Tanh, Sigmoid, whose derivatives are functions of the output). Backward multiplies by the
mask instead of branching with `where`.
"""
import numpy as np

from nnbox import gpu_kernels, parallel, workspace
from nnbox.backend import get_array_module
from nnbox.losses import sigmoid
from nnbox.module import Module

from ._checks import check_array, check_grad


def _positive(x):
    """The mask x > 0 (bool), in a recycled array (nnbox.workspace)."""
    xp = get_array_module(x)
    return xp.greater(x, 0, out=workspace.empty(x.shape, bool, xp))


def _like(x, dtype=None):
    """An uninitialised recycled array shaped like x."""
    return workspace.empty(x.shape, x.dtype if dtype is None else dtype, get_array_module(x))


def _elementwise(work, *arrays):
    """work(*pieces) on the same flat ranges of arrays of one shape, split over threads
    (nnbox.parallel). Outputs among `arrays` must be contiguous (they are written through views)."""
    flats = [array.reshape(-1) for array in arrays]
    parallel.run(flats[0].size, lambda a, b: work(*(flat[a:b] for flat in flats)), flats[0].size,
                 get_array_module(arrays[0]))


class ReLU(Module):
    """Applies y = max(x, 0) element-wise.

    Shape:
        x: any shape -> y: the same shape.

    Backward: dx = dy * [x > 0] (0 at x = 0, as PyTorch).
    """

    def forward(self, x):
        check_array(self, x)
        xp = get_array_module(x)
        if xp is not np:   # CuPy: both outputs in one kernel
            y, positive = gpu_kernels.relu(x)
            self.save_for_backward(positive=positive)
            return y
        positive, y = _like(x, bool), _like(x)

        def relu(x, positive, y):
            xp.greater(x, 0, out=positive)
            xp.maximum(x, 0, out=y)

        _elementwise(relu, x, positive, y)
        self.save_for_backward(positive=positive)
        return y

    def backward(self, dy):
        positive = self.saved_for_backward().positive
        check_grad(self, dy, positive.shape)
        if get_array_module(dy) is not np:
            return gpu_kernels.relu_grad(dy, positive)
        dx = _like(dy)
        _elementwise(lambda dy, positive, dx: get_array_module(dy).multiply(dy, positive, out=dx), dy, positive, dx)
        return dx


class LeakyReLU(Module):
    """Applies y = x for x > 0 and y = negative_slope * x otherwise.

    Args:
        negative_slope: the slope for x <= 0 (default 0.01).

    Shape:
        x: any shape -> y: the same shape.

    Backward: dx = dy * s with s = 1 where x > 0 and negative_slope elsewhere
    (negative_slope at x = 0, as PyTorch).

    For 0 <= negative_slope <= 1 the forward is y = max(x, negative_slope * x) (min for a slope
    above 1): two passes and no float temporary besides y.
    """

    def __init__(self, negative_slope=0.01):
        super().__init__()
        self.negative_slope = float(negative_slope)

    def _slopes(self, positive, dtype, out=None):
        # slope + (1 - slope) * [x > 0]: 1 where positive, slope elsewhere, without a branch
        xp = get_array_module(positive)
        dtype = np.dtype(dtype)  # (a NumPy dtype serves CuPy too)
        slopes = xp.multiply(positive, dtype.type(1.0 - self.negative_slope), dtype=dtype,
                             out=_like(positive, dtype) if out is None else out)
        slopes += dtype.type(self.negative_slope)
        return slopes

    def forward(self, x):
        check_array(self, x)
        xp = get_array_module(x)
        slope = self.negative_slope
        if xp is not np and x.dtype.kind == "f":   # CuPy: y and the mask in one kernel
            # slope 0 is ReLU, whose kernel gives 0 at x = -inf where 0 x would be NaN (as on the CPU)
            y, positive = gpu_kernels.relu(x) if slope == 0.0 else gpu_kernels.leaky_relu(x, slope)
            self.save_for_backward(positive=positive)
            return y
        if not 0.0 <= slope or x.dtype.kind != "f":
            # integer input gives a float output (int64 -> float64): slopes of 0.2 and 1 - 0.2 would
            # be 0 in an integer dtype
            positive = _positive(x)
            self.save_for_backward(positive=positive)
            dtype = x.dtype if x.dtype.kind == "f" else np.result_type(x.dtype, np.float32)
            return x * self._slopes(positive, dtype)
        positive, y = _like(x, bool), _like(x)

        def leaky(x, positive, y):
            xp.greater(x, 0, out=positive)
            if slope == 0.0:   # max(0 x, x) would be NaN at x = inf, and 0 x at x = -inf (0 inf)
                xp.maximum(x, 0, out=y)
                return
            xp.multiply(x, x.dtype.type(slope), out=y)
            (xp.maximum if slope <= 1.0 else xp.minimum)(y, x, out=y)

        _elementwise(leaky, x, positive, y)
        self.save_for_backward(positive=positive)
        return y

    def backward(self, dy):
        positive = self.saved_for_backward().positive
        check_grad(self, dy, positive.shape)
        if get_array_module(dy) is not np and dy.dtype.kind == "f":
            return gpu_kernels.leaky_relu_grad(dy, positive, self.negative_slope)
        dx = _like(dy)

        def leaky_grad(positive, dy, dx):
            self._slopes(positive, dy.dtype, out=dx)
            dx *= dy

        _elementwise(leaky_grad, positive, dy, dx)
        return dx

    def extra_repr(self):
        return f"negative_slope={self.negative_slope}"


class Tanh(Module):
    """Applies y = tanh(x) element-wise.

    Shape:
        x: any shape -> y: the same shape.

    Backward: dx = dy * (1 - y^2), from the saved output.
    """

    def forward(self, x):
        check_array(self, x)
        y = get_array_module(x).tanh(x)
        self.save_for_backward(y=y)
        return y

    def backward(self, dy):
        y = self.saved_for_backward().y
        check_grad(self, dy, y.shape)
        return dy * (1 - y * y)


class Sigmoid(Module):
    """Applies y = 1 / (1 + exp(-x)) element-wise, without overflow for any x.

    Computed by nnbox.losses.sigmoid from e^-|x|: every exponent is <= 0, so nothing
    overflows, and for very negative x the result keeps its relative precision
    (sigmoid(-40) = 4.2e-18, not 0 as 0.5 * (1 + tanh(x / 2)) would give).

    Shape:
        x: any shape -> y: the same shape.

    Backward: dx = dy * y * (1 - y), from the saved output.
    """

    def forward(self, x):
        check_array(self, x)
        y = sigmoid(x)
        self.save_for_backward(y=y)
        return y

    def backward(self, dy):
        y = self.saved_for_backward().y
        check_grad(self, dy, y.shape)
        return dy * y * (1 - y)
