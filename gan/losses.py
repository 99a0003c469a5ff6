"""GAN objectives on the discriminator's logits: minimax, non-saturating, least squares, hinge, Wasserstein.

A GAN loss returns the loss and its gradient with respect to the logits; the trainer sends that
gradient back through D (and, for the generator's loss, on through G):

    loss = get_gan_loss("non_saturating")
    d_loss, d_real, d_fake = loss.discriminator_loss(D(real), D(fake), real_targets, fake_targets)
    g_loss, d_fake = loss.generator_loss(D(G(z)))
    G.backward(D.backward(d_fake))

Every loss is a mean over the batch (the D loss is the sum of the real and the fake means). The
loss value is a 0-d value on the logits' device (a NumPy scalar, or a 0-d CuPy array): nothing is
copied to the host inside a training step; `float(loss)` fetches it (the trainer fetches all the
step's logged scalars in one copy). With
x a logit, t a target and sigma the logistic sigmoid, the BCE-based losses use

    BCE(x, t) = -t log sigma(x) - (1 - t) log(1 - sigma(x)) = softplus(x) - t x,   dBCE/dx = sigma(x) - t,

with softplus(x) = log(1 + e^x) = max(x, 0) + log1p(e^-|x|) and sigma computed from e^-|x|, so that
no exponential overflows: every loss and gradient is finite for any finite logit.
"""
import numpy as np

from nnbox import gpu_kernels
from nnbox.backend import get_array_module, sum_dtype
from nnbox.losses import sigmoid  # noqa: F401  (gan.losses.sigmoid: the logits' probabilities, for callers here)


def softplus(x):
    """log(1 + e^x), stable for any x: max(x, 0) + log1p(e^-|x|)."""
    xp = get_array_module(x)
    return xp.maximum(x, 0) + xp.log1p(xp.exp(-xp.abs(x)))


def bce_with_logits(logits, targets):
    """(mean BCE, its gradient with respect to logits): mean(softplus(x) - t x), (sigma(x) - t) / N.
    float16 logits are summed in float32, and from N = 65520 on (N itself overflows float16) the
    gradient is multiplied by 1 / N instead."""
    n, dtype = logits.size, logits.dtype
    summed_in = sum_dtype(dtype)
    if get_array_module(logits) is not np:   # CuPy: both per-element terms in one kernel
        terms, grad = gpu_kernels.bce_with_logits_terms(logits, targets, n)
        return (terms.sum(dtype=summed_in) / n).astype(dtype, copy=False), grad
    loss = ((softplus(logits) - targets * logits).sum(dtype=summed_in) / n).astype(dtype, copy=False)
    difference = sigmoid(logits) - targets
    if n > float(np.finfo(dtype).max):   # (a Python float: comparing with a float16 casts n to one)
        return loss, difference * dtype.type(1.0 / n)
    return loss, difference / dtype.type(n)


class GANLoss:
    """Base class: `discriminator_loss(real_logits, fake_logits, real_targets=None, fake_targets=None)
    -> (loss, d_real_logits, d_fake_logits)` and `generator_loss(fake_logits) -> (loss, d_fake_logits)`.

    Targets are arrays shaped like the logits (soft labels from gan/tricks.LabelPolicy); None means
    1 for real and 0 for fake. `wants_weight_clipping` tells the trainer to clip D's weights.
    """

    name = None
    wants_weight_clipping = False
    uses_targets = True  # False: hinge and wasserstein ignore the targets

    def discriminator_loss(self, real_logits, fake_logits, real_targets=None, fake_targets=None):
        raise NotImplementedError

    def generator_loss(self, fake_logits):
        raise NotImplementedError

    def _targets(self, logits, targets, default, which):
        xp = get_array_module(logits)
        if targets is None:
            return xp.full(logits.shape, default, dtype=logits.dtype)
        if tuple(targets.shape) != tuple(logits.shape):
            raise ValueError(f"{type(self).__name__}: {which}_targets must have the logits' shape "
                             f"{tuple(logits.shape)}, got {tuple(targets.shape)}")
        return xp.asarray(targets, dtype=logits.dtype)

    def __repr__(self):
        return f"{type(self).__name__}()"


class _BCEDiscriminatorLoss(GANLoss):
    """D minimises BCE(D(x), t_real) + BCE(D(G(z)), t_fake): the classifier's cross-entropy."""

    def discriminator_loss(self, real_logits, fake_logits, real_targets=None, fake_targets=None):
        real_targets = self._targets(real_logits, real_targets, 1.0, "real")
        fake_targets = self._targets(fake_logits, fake_targets, 0.0, "fake")
        real_loss, d_real = bce_with_logits(real_logits, real_targets)
        fake_loss, d_fake = bce_with_logits(fake_logits, fake_targets)
        return real_loss + fake_loss, d_real, d_fake


class MinimaxLoss(_BCEDiscriminatorLoss):
    """The original GAN game (Goodfellow et al. 2014): G minimises mean log(1 - D(G(z))).

    With x = D's logit, log(1 - sigma(x)) = log sigma(-x) = -softplus(x), so
        L_G = mean(-softplus(x)) = -BCE(x, 0),   dL_G/dx = -sigma(x) / N.
    It saturates: when D rejects the fakes (x << 0) the gradient sigma(x) vanishes.
    """

    name = "minimax"

    def generator_loss(self, fake_logits):
        zeros = self._targets(fake_logits, None, 0.0, "fake")
        loss, grad = bce_with_logits(fake_logits, zeros)
        return -loss, -grad


class NonSaturatingLoss(_BCEDiscriminatorLoss):
    """The non-saturating variant: G minimises mean -log D(G(z)) = mean softplus(-x) = BCE(x, 1),
    dL_G/dx = (sigma(x) - 1) / N, which is largest exactly when D rejects the fakes."""

    name = "non_saturating"

    def generator_loss(self, fake_logits):
        return bce_with_logits(fake_logits, self._targets(fake_logits, None, 1.0, "fake"))


class LeastSquaresLoss(GANLoss):
    """LSGAN (Mao et al. 2017) with a=0 (fake), b=1 (real), c=1 (G's target), on D's raw outputs x:
        L_D = 0.5 mean((x_real - b)^2) + 0.5 mean((x_fake - a)^2),   L_G = 0.5 mean((x_fake - c)^2),
    gradients (x - target) / N. Soft targets, when given, replace b and a."""

    name = "least_squares"

    def discriminator_loss(self, real_logits, fake_logits, real_targets=None, fake_targets=None):
        real_loss, d_real = _half_mean_square(real_logits, self._targets(real_logits, real_targets, 1.0, "real"))
        fake_loss, d_fake = _half_mean_square(fake_logits, self._targets(fake_logits, fake_targets, 0.0, "fake"))
        return real_loss + fake_loss, d_real, d_fake

    def generator_loss(self, fake_logits):
        return _half_mean_square(fake_logits, self._targets(fake_logits, None, 1.0, "fake"))


class HingeLoss(GANLoss):
    """The hinge loss (Lim & Ye 2017; SN-GAN, BigGAN):
        L_D = mean(relu(1 - x_real)) + mean(relu(1 + x_fake)),   L_G = -mean(x_fake),
    dL_D/dx_real = -[x_real < 1] / N, dL_D/dx_fake = [x_fake > -1] / N, dL_G/dx = -1/N.
    Targets are ignored."""

    name = "hinge"
    uses_targets = False

    def discriminator_loss(self, real_logits, fake_logits, real_targets=None, fake_targets=None):
        xp = get_array_module(real_logits)
        one = real_logits.dtype.type(1)
        real_margin, fake_margin = one - real_logits, one + fake_logits
        loss = xp.maximum(real_margin, 0).mean() + xp.maximum(fake_margin, 0).mean()
        d_real = -(real_margin > 0).astype(real_logits.dtype) / real_logits.dtype.type(real_logits.size)
        d_fake = (fake_margin > 0).astype(fake_logits.dtype) / fake_logits.dtype.type(fake_logits.size)
        return loss, d_real, d_fake

    def generator_loss(self, fake_logits):
        return _negative_mean(fake_logits)


class WassersteinLoss(GANLoss):
    """WGAN (Arjovsky et al. 2017): the critic maximises mean(x_real) - mean(x_fake), so
        L_D = mean(x_fake) - mean(x_real),   L_G = -mean(x_fake),
    gradients -1/N (real), +1/N (fake), -1/N (G). The critic must stay Lipschitz: the trainer clips
    its weights after each step (wants_weight_clipping) and the recipe uses RMSprop and 5 D steps per
    G step. Targets are ignored."""

    name = "wasserstein"
    wants_weight_clipping = True
    uses_targets = False

    def discriminator_loss(self, real_logits, fake_logits, real_targets=None, fake_targets=None):
        real_loss, d_real = _negative_mean(real_logits)
        fake_loss, d_fake = _negative_mean(fake_logits)
        return -fake_loss + real_loss, d_real, -d_fake

    def generator_loss(self, fake_logits):
        return _negative_mean(fake_logits)


def _half_mean_square(x, target):
    diff = x - target
    return x.dtype.type(0.5) * (diff * diff).mean(), diff / x.dtype.type(x.size)


def _negative_mean(x):
    """(-mean(x), its gradient -1/N everywhere)."""
    xp = get_array_module(x)
    return -x.mean(), xp.full(x.shape, -1.0 / x.size, dtype=x.dtype)


GAN_LOSSES = {cls.name: cls for cls in (MinimaxLoss, NonSaturatingLoss, LeastSquaresLoss, HingeLoss, WassersteinLoss)}


def get_gan_loss(name):
    """A GAN loss by name: "minimax", "non_saturating", "least_squares", "hinge" or "wasserstein"."""
    if name not in GAN_LOSSES:
        raise ValueError(f"unknown GAN loss {name!r}: use one of {sorted(GAN_LOSSES)}")
    return GAN_LOSSES[name]()
