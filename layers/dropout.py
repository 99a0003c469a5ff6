"""Inverted dropout: Dropout (single values) and Dropout2d (whole channels).

In training each unit is kept with probability 1 - p and the kept units are scaled by
1 / (1 - p), so the expected output equals the input and evaluation needs no rescaling:
in eval mode both layers are the identity.

Randomness is explicit: the masks come from the NumPy generator given at construction
(`rng`, a Generator or a seed). On CuPy arrays the masks are drawn on the device by a CuPy
generator seeded once from `rng` (`nnbox.backend.random_generator`), cached until the layer
is moved with `to()`.

A mask can be replayed, which makes the layer deterministic for a gradient check or a
re-run: set `layer.fixed_mask = mask` (used by every training forward until set back to
None) or pass `forward(x, mask=mask)` (this call only). A mask holds the keep decisions
(1/True = keep, 0/False = drop), shaped like the random draw: x's shape for Dropout,
(N, C) for Dropout2d. `layer.last_mask` is the mask the last training forward used.
"""
from nnbox import backend
from nnbox.backend import get_array_module

from ._checks import check_array, check_grad, check_input
from ._random import RandomLayer


class Dropout(RandomLayer):
    """Zeroes each value with probability p in training and scales the rest by 1 / (1 - p).

    Args:
        p: the probability of dropping a value, in [0, 1] (default 0.5). p = 0 is the
            identity; p = 1 drops everything (the output and dx are all zeros).
        rng: NumPy generator or seed for the masks.

    Shape:
        x: any shape -> y: the same shape. The mask has x's shape.

    Backward, with m the 0/1 mask: y = x * m / (1 - p), so dx = dy * m / (1 - p)
    (dx = dy in eval mode).
    """

    def __init__(self, p=0.5, rng=None):
        super().__init__(rng)
        p = float(p)
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{type(self).__name__}: p is a probability and must be in [0, 1], got {p}")
        self.p = p
        self.fixed_mask = None
        self.last_mask = None

    def _on_to(self, target):
        self.reset_device_rng()
        self.last_mask = None
        if self.fixed_mask is not None and isinstance(target, str):
            self.fixed_mask = backend.to_device(self.fixed_mask, target)

    def _check(self, x):
        check_array(self, x)

    def mask_shape(self, x):
        """The shape of the random keep-mask for input x."""
        return tuple(x.shape)

    def _broadcastable(self, mask, x):
        """The mask in a shape that broadcasts against x."""
        return mask

    def _draw_mask(self, x):
        # P(u >= p) = 1 - p for u ~ U[0, 1): always kept at p = 0, never at p = 1
        generator = self.generator(get_array_module(x))
        return generator.random(self.mask_shape(x), dtype=backend.draw_dtype(x.dtype)) >= self.p

    def forward(self, x, mask=None):
        self._check(x)
        if not self.training or self.p == 0.0 and mask is None and self.fixed_mask is None:
            self.save_for_backward(scaled_mask=None, shape=tuple(x.shape))
            return x
        if mask is None:
            mask = self.fixed_mask
        xp = get_array_module(x)
        if mask is None:
            mask = self._draw_mask(x)
        else:
            mask = xp.asarray(mask)
            if tuple(mask.shape) != self.mask_shape(x):
                raise ValueError(f"{type(self).__name__}: the mask must have shape {self.mask_shape(x)} for an "
                                 f"input of shape {tuple(x.shape)}, got shape {tuple(mask.shape)}")
        self.last_mask = mask
        # p = 1 keeps nothing: scale 0 instead of 1/0 (the output is all zeros, as PyTorch)
        scale = 0.0 if self.p == 1.0 else 1.0 / (1.0 - self.p)
        scaled_mask = self._broadcastable(mask.astype(x.dtype) * x.dtype.type(scale), x)
        self.save_for_backward(scaled_mask=scaled_mask, shape=tuple(x.shape))
        return x * scaled_mask

    def backward(self, dy):
        saved = self.saved_for_backward()
        check_grad(self, dy, saved.shape)
        return dy if saved.scaled_mask is None else dy * saved.scaled_mask

    def extra_repr(self):
        return f"p={self.p}"


class Dropout2d(Dropout):
    """Zeroes whole channels with probability p in training and scales the rest by 1 / (1 - p).

    Neighbouring pixels of a feature map are strongly correlated, so dropping single pixels
    barely regularises a convolution; dropping channel (n, c) everywhere does (Tompson et al.,
    2015; torch.nn.Dropout2d).

    Args:
        p: the probability of dropping a channel, in [0, 1] (default 0.5).
        rng: NumPy generator or seed for the masks.

    Shape:
        x: (N, C, H, W) -> y: the same shape. The mask is (N, C), one decision per channel.

    Backward, with m the (N, C) 0/1 mask broadcast over H, W: dx = dy * m / (1 - p).
    """

    def _check(self, x):
        check_input(self, x, 4, what="(N, C, H, W)")

    def mask_shape(self, x):
        return tuple(x.shape[:2])

    def _broadcastable(self, mask, x):
        return mask.reshape(mask.shape + (1,) * (x.ndim - 2))
