"""Weight initialisation schemes. Each fills an array drawn from a NumPy generator.

All functions take `shape`, a NumPy `rng` (Generator or seed) and `dtype`, and
return a new NumPy array; `Module.to("gpu")` moves it afterwards.

fan_in/fan_out follow PyTorch: for a weight of shape (out, in, *kernel),
fan_in = in * prod(kernel) and fan_out = out * prod(kernel).
"""
import math

import numpy as np

from .backend import DEFAULT_DTYPE, as_rng, device_of, get_array_module, to_device

GAINS = {"linear": 1.0, "sigmoid": 1.0, "tanh": 5.0 / 3, "relu": math.sqrt(2.0)}


def fans(shape):
    """(fan_in, fan_out) of a weight shaped (out, in, *kernel) or (out, in)."""
    if len(shape) < 2:
        raise ValueError(f"fan_in/fan_out need a weight with at least 2 dimensions, got shape {shape}")
    receptive = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    return shape[1] * receptive, shape[0] * receptive


def _fan(shape, mode):
    """fan_in or fan_out of a weight, by name (a typo must not silently pick the other)."""
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"mode must be 'fan_in' or 'fan_out', got {mode!r}")
    return fans(shape)[0 if mode == "fan_in" else 1]


def gain(nonlinearity, negative_slope=0.01):
    """The recommended gain for a nonlinearity (as torch.nn.init.calculate_gain)."""
    if nonlinearity == "leaky_relu":
        return math.sqrt(2.0 / (1 + negative_slope**2))
    if nonlinearity not in GAINS:
        raise ValueError(f"unknown nonlinearity {nonlinearity!r}: use one of {sorted(GAINS) + ['leaky_relu']}")
    return GAINS[nonlinearity]


def normal(shape, mean=0.0, std=1.0, rng=None, dtype=DEFAULT_DTYPE):
    return as_rng(rng).normal(mean, std, size=shape).astype(dtype)


def uniform(shape, low=0.0, high=1.0, rng=None, dtype=DEFAULT_DTYPE):
    return as_rng(rng).uniform(low, high, size=shape).astype(dtype)


def zeros(shape, dtype=DEFAULT_DTYPE):
    return np.zeros(shape, dtype=dtype)


def ones(shape, dtype=DEFAULT_DTYPE):
    return np.ones(shape, dtype=dtype)


def xavier_uniform(shape, gain_=1.0, rng=None, dtype=DEFAULT_DTYPE):
    """Glorot: U(-a, a) with a = gain * sqrt(6 / (fan_in + fan_out))."""
    fan_in, fan_out = fans(shape)
    bound = gain_ * math.sqrt(6.0 / (fan_in + fan_out))
    return uniform(shape, -bound, bound, rng, dtype)


def xavier_normal(shape, gain_=1.0, rng=None, dtype=DEFAULT_DTYPE):
    """Glorot: N(0, std^2) with std = gain * sqrt(2 / (fan_in + fan_out))."""
    fan_in, fan_out = fans(shape)
    return normal(shape, 0.0, gain_ * math.sqrt(2.0 / (fan_in + fan_out)), rng, dtype)


def kaiming_uniform(shape, a=0.0, nonlinearity="leaky_relu", mode="fan_in", rng=None, dtype=DEFAULT_DTYPE):
    """He: U(-b, b) with b = gain * sqrt(3 / fan); `a` is the leaky slope."""
    fan = _fan(shape, mode)
    bound = gain(nonlinearity, a) * math.sqrt(3.0 / fan)
    return uniform(shape, -bound, bound, rng, dtype)


def kaiming_normal(shape, a=0.0, nonlinearity="leaky_relu", mode="fan_in", rng=None, dtype=DEFAULT_DTYPE):
    """He: N(0, std^2) with std = gain / sqrt(fan)."""
    fan = _fan(shape, mode)
    return normal(shape, 0.0, gain(nonlinearity, a) / math.sqrt(fan), rng, dtype)


def dcgan_normal(shape, rng=None, dtype=DEFAULT_DTYPE):
    """The DCGAN scheme for conv weights: N(0, 0.02^2)."""
    return normal(shape, 0.0, 0.02, rng, dtype)


def default_weight_and_bias(weight_shape, fan_in, bias_size, rng=None, dtype=DEFAULT_DTYPE):
    """PyTorch's default for Linear/Conv: weight ~ kaiming_uniform(a=sqrt(5)), i.e.
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)), and bias ~ the same; bias_size None: no bias."""
    rng = as_rng(rng)
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    weight = uniform(weight_shape, -bound, bound, rng, dtype)
    bias = None if bias_size is None else uniform((bias_size,), -bound, bound, rng, dtype)
    return weight, bias


def init_dcgan(module, rng=None):
    """Apply the DCGAN initialisation to a model in place: conv weights N(0, 0.02),
    BatchNorm weights N(1, 0.02) and biases 0 (Radford et al., 2015)."""
    rng = as_rng(rng)
    for sub in module.modules():
        kind = type(sub).__name__
        if kind == "SpectralNorm":   # it owns the wrapped layer's weight as `weight_orig`
            kind = type(sub.module).__name__
        for name, param in sub._parameters.items():
            xp = get_array_module(param.data)
            if kind.startswith("Conv") and name in ("weight", "weight_orig"):
                new = normal(param.data.shape, 0.0, 0.02, rng, param.data.dtype)
            elif kind.startswith("BatchNorm") and name == "weight":
                new = normal(param.data.shape, 1.0, 0.02, rng, param.data.dtype)
            elif name == "bias":
                new = np.zeros(param.data.shape, param.data.dtype)
            else:
                continue
            param.data = xp.asarray(to_device(new, device_of(param.data)))
        if hasattr(sub, "reset_estimate"):   # SpectralNorm: its u, v belonged to the old weight
            sub.reset_estimate()
    return module
