"""Differentiable sampling for VAEs: Reparameterize (Gaussian) and GumbelSoftmax (categorical).

Both layers turn a random draw into a deterministic function of the network's outputs and of
noise drawn *outside* the network, so that gradients flow to the distribution's parameters:

    Gaussian:     z = mu + exp(logvar / 2) * eps,                 eps ~ N(0, I)
    Categorical:  y = softmax((logits + g) / tau),  g = -log(-log U),  U ~ U(0, 1)

Randomness is explicit, as in Dropout: the noise comes from the NumPy generator given at
construction (`rng`, a Generator or a seed); on CuPy arrays it is drawn on the device by a CuPy
generator seeded once from `rng` (`nnbox.backend.random_generator`), cached until the layer is
moved with `to()`. Noise can be replayed, which makes the layers deterministic for a gradient
check or a re-run: set `layer.fixed_noise = noise` (used by every training forward until set back
to None) or pass `forward(..., noise=noise)` (this call only). `layer.last_noise` is the noise the
last training forward used (eps for Reparameterize, g for GumbelSoftmax).

In eval mode neither layer adds noise: Reparameterize returns mu, GumbelSoftmax returns
softmax(logits / tau) (one-hot of argmax(logits) when hard): the most likely code.
"""
import numpy as np

from nnbox import backend
from nnbox.backend import get_array_module
from nnbox.losses import log_softmax

from ._checks import check_grad
from ._random import RandomLayer


class _NoisyLayer(RandomLayer):
    """The explicit-noise machinery shared by the sampling layers (replay, devices).

    Subclasses implement `_draw(xp, shape, dtype)` with a generator from `generator(xp)`.
    """

    def __init__(self, rng=None):
        super().__init__(rng)
        self.fixed_noise = None
        self.last_noise = None

    def _on_to(self, target):
        self.reset_device_rng()
        self.last_noise = None
        if self.fixed_noise is not None:
            self.fixed_noise = (backend.to_device(self.fixed_noise, target) if isinstance(target, str)
                                else backend.to_dtype(self.fixed_noise, target))


    def _noise(self, like, noise):
        """The noise for this training forward: `noise`, else `fixed_noise`, else a fresh draw."""
        if noise is None:
            noise = self.fixed_noise
        xp = get_array_module(like)
        if noise is None:
            noise = self._draw(xp, tuple(like.shape), like.dtype)
        else:
            noise = xp.asarray(noise, dtype=like.dtype)
            if tuple(noise.shape) != tuple(like.shape):
                raise ValueError(f"{type(self).__name__}: the noise must have shape {tuple(like.shape)} (the "
                                 f"input's), got shape {tuple(noise.shape)}")
        self.last_noise = noise
        return noise


def _check_floating(layer, name, x):
    if not hasattr(x, "dtype"):
        raise TypeError(f"{type(layer).__name__} expects arrays, got {type(x).__name__} for {name}")
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"{type(layer).__name__}: {name} must be a floating-point array, got dtype {x.dtype}")


class Reparameterize(_NoisyLayer):
    """Draws z ~ N(mu, exp(logvar)) as z = mu + exp(logvar / 2) * eps, eps ~ N(0, I).

    The reparameterisation trick (Kingma and Welling, 2014): the randomness sits in eps, which
    does not depend on the parameters, so z is a smooth function of (mu, logvar) and the usual
    chain rule gives their gradients. `forward(mu, logvar)` returns z; `backward(dz)` returns
    the tuple (dmu, dlogvar).

    Args:
        rng: NumPy generator or seed for eps.

    Shape:
        mu, logvar: (N, D, ...), the same shape -> z: that shape. eps has that shape too.

    Backward, with s = exp(logvar / 2) the standard deviation:
        dmu = dz,   dlogvar = dz * eps * s / 2
    In eval mode z = mu: dmu = dz, dlogvar = 0.
    """

    def _draw(self, xp, shape, dtype):
        return self.generator(xp).standard_normal(shape, dtype=backend.draw_dtype(dtype)).astype(dtype, copy=False)

    def forward(self, mu, logvar, noise=None):
        for name, array in (("mu", mu), ("logvar", logvar)):
            _check_floating(self, name, array)
        if tuple(mu.shape) != tuple(logvar.shape):
            raise ValueError(f"Reparameterize: mu has shape {tuple(mu.shape)} but logvar has shape "
                             f"{tuple(logvar.shape)}; they must match")
        if not self.training:
            self.save_for_backward(scaled_noise=None, shape=tuple(mu.shape))
            return mu
        xp = get_array_module(mu)
        eps = self._noise(mu, noise)
        scaled_noise = xp.exp(0.5 * logvar) * eps  # s * eps = z - mu, all that backward needs
        self.save_for_backward(scaled_noise=scaled_noise, shape=tuple(mu.shape))
        return mu + scaled_noise

    def backward(self, dz):
        saved = self.saved_for_backward()
        check_grad(self, dz, saved.shape)
        scaled_noise = saved.scaled_noise
        if scaled_noise is None:
            return dz, get_array_module(dz).zeros_like(dz)
        return dz, 0.5 * dz * scaled_noise


class GumbelSoftmax(_NoisyLayer):
    """A relaxed one-hot sample of a categorical: y = softmax((logits + g) / tau) over the last axis.

    With g ~ Gumbel(0, 1) (g = -log(-log U), U ~ U(0, 1)), argmax(logits + g) is an exact sample
    of the categorical with probabilities softmax(logits) (the Gumbel-max trick); the softmax at
    temperature tau relaxes that argmax (Jang et al. 2017; Maddison et al. 2017). As tau -> 0 the
    samples approach one-hot vectors (and the gradients' variance grows); as tau grows they
    approach the uniform vector 1/K.

    Args:
        temperature: tau > 0 (an attribute: anneal it during training).
        hard: return the one-hot vector of argmax(y) in forward, and differentiate as if the
            soft y had been returned (the straight-through estimator, as torch's
            `F.gumbel_softmax(hard=True)`, whose value is y_hard - y.detach() + y).
        rng: NumPy generator or seed for g.

    Shape:
        logits: (..., K), unnormalised log-probabilities over K categories on the last axis
            -> y: the same shape, each row summing to 1. g has that shape too.

    Backward, with y the soft sample (also when hard):
        dlogits = y * (dy - sum_k(dy_k y_k)) / tau     (the softmax's Jacobian, divided by tau)
    In eval mode g = 0: y = softmax(logits / tau), one-hot of argmax(logits) when hard.

    Noise replay takes g itself (`fixed_noise`, `forward(logits, noise=g)`, `last_noise`);
    `gumbel_noise(u)` turns uniforms into g.
    """

    def __init__(self, temperature=1.0, hard=False, rng=None):
        super().__init__(rng)
        self.temperature = temperature
        self.hard = bool(hard)

    @property
    def temperature(self):
        return self._temperature

    @temperature.setter
    def temperature(self, value):
        value = float(value)
        if not value > 0:
            raise ValueError(f"GumbelSoftmax: the temperature must be positive, got {value}")
        self._temperature = value

    def _draw(self, xp, shape, dtype):
        # -log(E) with E ~ Exp(1) is -log(-log U): torch draws g the same way; E > 0 keeps g finite
        exponential = self.generator(xp).standard_exponential(shape, dtype=backend.draw_dtype(dtype))
        return -xp.log(xp.maximum(exponential, np.finfo(exponential.dtype).tiny)).astype(dtype, copy=False)

    def forward(self, logits, noise=None):
        _check_floating(self, "logits", logits)
        if logits.ndim < 1 or logits.shape[-1] < 1:
            raise ValueError(f"GumbelSoftmax expects logits (..., K) with the K categories on the last axis, "
                             f"got shape {tuple(logits.shape)}")
        perturbed = logits + self._noise(logits, noise) if self.training else logits
        xp = get_array_module(logits)
        y = xp.exp(log_softmax(perturbed / self.temperature, axis=-1))
        self.save_for_backward(y=y, temperature=self.temperature)   # annealing may change it before backward
        return one_hot_argmax(y) if self.hard else y

    def backward(self, dy):
        saved = self.saved_for_backward()
        check_grad(self, dy, saved.y.shape)
        return saved.y * (dy - (dy * saved.y).sum(axis=-1, keepdims=True)) / saved.temperature

    def extra_repr(self):
        return f"temperature={self.temperature}, hard={self.hard}"


def gumbel_noise(u):
    """g = -log(-log u): uniforms u in (0, 1) to standard Gumbel noise (same shape, same array module)."""
    xp = get_array_module(u)
    return -xp.log(-xp.log(u))


def one_hot_argmax(y):
    """The one-hot vector of argmax over the last axis (the first maximum on ties), y's dtype."""
    xp = get_array_module(y)
    index = y.argmax(axis=-1)[..., None]
    return (xp.arange(y.shape[-1]) == index).astype(y.dtype)
