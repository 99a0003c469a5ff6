"""Loss functions: BCE (on logits and on probabilities), MSE, L1, cross-entropy and the VAE KL terms.

A loss is a Module::

    loss = BCEWithLogitsLoss()
    value = loss(logits, targets)     # a 0-d array
    dlogits = loss.backward()         # dL/dlogits, times the upstream gradient (default 1.0)

The targets are constants: no gradient is returned for them. `reduction="mean"` divides the
sum by the number of elements (CrossEntropyLoss: by the batch size N; GaussianKLLoss and
CategoricalKLLoss: see there), `"sum"` does not. The functional forms (`bce_with_logits(x, t)`, ...) return
`(value, dinput)` for an upstream gradient of 1; their `name` is the one errors show.

Forward computes the gradient too and keeps only it: the inputs are not saved.
"""
import numpy as np

from . import gpu_kernels
from .backend import get_array_module, sum_dtype
from .module import Module

REDUCTIONS = ("mean", "sum")
BCE_LOG_CLAMP = -100.0  # torch clamps log(p) and log(1 - p) at -100 in binary_cross_entropy
BCE_GRAD_EPSILON = float(np.float32(1e-12))  # and divides by max(p (1 - p), 1e-12) (a float32 constant)


def _check_reduction(owner, reduction):
    if reduction not in REDUCTIONS:
        raise ValueError(f"{owner}: reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return reduction


def _check_arrays(owner, **arrays):
    """TypeError naming the argument unless every one of `arrays` (name=value) is an array."""
    for name, array in arrays.items():
        if not hasattr(array, "shape"):
            raise TypeError(f"{owner} expects arrays, got {type(array).__name__} for the {name}")


def _check_same_shape(owner, input, target, names=("input", "target")):
    _check_arrays(owner, **dict(zip(names, (input, target))))
    if tuple(input.shape) != tuple(target.shape):
        raise ValueError(f"{owner}: the {names[0]} has shape {tuple(input.shape)} but the {names[1]} has shape "
                         f"{tuple(target.shape)}; they must match")


def _check_float(owner, array, name="input"):
    if not np.issubdtype(array.dtype, np.floating):
        raise TypeError(f"{owner}: the {name} must be a floating-point array, got dtype {array.dtype}")


def _as_input_dtype(xp, input, target):
    """target in the input's dtype (and array module): float64 targets such as np.ones(n) would
    otherwise turn a float32 loss into float64."""
    return xp.asarray(target, dtype=input.dtype)


def _value_range(xp, array):
    """(min, max) of a non-empty array as Python numbers, fetched from the GPU in one transfer."""
    ends = xp.stack((array.min(), array.max()))
    return tuple((ends if xp is np else ends.get()).tolist())


def _reduce(xp, elementwise, reduction, count):
    """(0-d loss, scale of the gradient): the mean divides by `count`. float16 terms are summed in
    float32 (a float16 sum overflows at 65504), the loss returned in their dtype."""
    total = xp.sum(elementwise, dtype=sum_dtype(elementwise.dtype))
    if reduction == "sum":
        return xp.asarray(total).astype(elementwise.dtype, copy=False), 1.0
    return xp.asarray(total / count).astype(elementwise.dtype, copy=False), 1.0 / count


# ----------------------------------------------------------------- functional forms
def sigmoid(x):
    """1 / (1 + e^-x) without overflow: from e^-|x|, 1/(1+e) for x >= 0 and e/(1+e) below (every
    exponent <= 0; sigmoid(-40) = 4.2e-18 keeps its relative precision). The one sigmoid of nnbox:
    layers.Sigmoid, the VAE and the GAN losses use it."""
    xp = get_array_module(x)
    if xp is not np and x.dtype.kind == "f":   # CuPy: the same formula in one kernel
        return gpu_kernels.sigmoid(x)
    e = xp.exp(-xp.abs(x))
    positive = (x >= 0).astype(x.dtype)
    return (positive + (1 - positive) * e) / (1 + e)


def bce_with_logits(input, target, reduction="mean", name="bce_with_logits"):
    """Binary cross-entropy on logits x with targets t in [0, 1]: (loss, dloss/dx).

    l = max(x, 0) - x t + log1p(e^-|x|)  (= -t log s(x) - (1 - t) log(1 - s(x)), finite for any x),
    dl/dx = s(x) - t, with s the logistic sigmoid.
    """
    owner = name
    _check_reduction(owner, reduction)
    _check_same_shape(owner, input, target)
    _check_float(owner, input)
    xp = get_array_module(input)
    target = _as_input_dtype(xp, input, target)
    elementwise = xp.maximum(input, 0) - input * target + xp.log1p(xp.exp(-xp.abs(input)))
    value, scale = _reduce(xp, elementwise, reduction, input.size)
    grad = sigmoid(input) - target
    grad *= scale
    return value, grad.astype(input.dtype, copy=False)


def binary_cross_entropy(input, target, reduction="mean", name="binary_cross_entropy"):
    """Binary cross-entropy on probabilities p in [0, 1], as torch: (loss, dloss/dp).

    l = -(t max(log p, -100) + (1 - t) max(log(1 - p), -100)),
    dl/dp = (p - t) / max(p (1 - p), 1e-12).
    Prefer bce_with_logits: it is exact for every logit, this saturates at p = 0 and 1.
    """
    owner = name
    _check_reduction(owner, reduction)
    _check_same_shape(owner, input, target)
    _check_float(owner, input)
    xp = get_array_module(input)
    target = _as_input_dtype(xp, input, target)
    if input.size:
        low, high = _value_range(xp, input)
        if not 0 <= low <= high <= 1:   # (also false for NaN)
            raise ValueError(f"{owner}: the input must hold probabilities in [0, 1], got values in "
                             f"[{low:g}, {high:g}]; for logits use BCEWithLogitsLoss")
    with np.errstate(divide="ignore"):  # log(0) = -inf, clamped just below
        log_p = xp.maximum(xp.log(input), BCE_LOG_CLAMP)
        log_1mp = xp.maximum(xp.log1p(-input), BCE_LOG_CLAMP)
    elementwise = -(target * log_p + (1 - target) * log_1mp)
    value, scale = _reduce(xp, elementwise, reduction, input.size)
    grad = (input - target) / xp.maximum(input * (1 - input), BCE_GRAD_EPSILON)
    grad *= scale
    return value, grad.astype(input.dtype, copy=False)


def mse(input, target, reduction="mean", name="mse"):
    """Mean squared error: l = (x - t)^2, dl/dx = 2 (x - t)."""
    owner = name
    _check_reduction(owner, reduction)
    _check_same_shape(owner, input, target)
    _check_float(owner, input)
    xp = get_array_module(input)
    target = _as_input_dtype(xp, input, target)
    diff = input - target
    value, scale = _reduce(xp, diff * diff, reduction, input.size)
    diff *= 2 * scale
    return value, diff.astype(input.dtype, copy=False)


def l1(input, target, reduction="mean", name="l1"):
    """Mean absolute error: l = |x - t|, dl/dx = sign(x - t) (0 where x = t, as torch)."""
    owner = name
    _check_reduction(owner, reduction)
    _check_same_shape(owner, input, target)
    _check_float(owner, input)
    xp = get_array_module(input)
    target = _as_input_dtype(xp, input, target)
    diff = input - target
    value, scale = _reduce(xp, xp.abs(diff), reduction, input.size)
    grad = xp.sign(diff)
    grad *= scale
    return value, grad.astype(input.dtype, copy=False)


def log_softmax(x, axis=1):
    """log(softmax(x)) along `axis`, stable: x - max - log(sum(exp(x - max)))."""
    xp = get_array_module(x)
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - xp.log(xp.exp(shifted).sum(axis=axis, keepdims=True))


def cross_entropy(input, target, reduction="mean", name="cross_entropy"):
    """Cross-entropy of logits (N, C) against integer classes (N,): (loss, dloss/dlogits).

    l_n = -log softmax(x_n)[t_n] = logsumexp(x_n) - x_n[t_n];  dl_n/dx_n = softmax(x_n) - onehot(t_n).
    The mean divides by N.
    """
    owner = name
    _check_reduction(owner, reduction)
    _check_arrays(owner, input=input, target=target)
    _check_float(owner, input)
    if input.ndim != 2 or target.shape != input.shape[:1]:
        raise ValueError(f"{owner} expects logits (N, C) and integer classes (N,): the input has shape "
                         f"{tuple(input.shape)}, the target has shape {tuple(target.shape)}")
    if not np.issubdtype(target.dtype, np.integer):
        raise TypeError(f"{owner}: the target must hold integer class indices, got dtype {target.dtype}")
    n, classes = input.shape
    xp = get_array_module(input)
    if n:
        low, high = _value_range(xp, target)
        if low < 0 or high >= classes:
            raise ValueError(f"{owner}: class indices must be in [0, {classes - 1}], got values in [{low}, {high}]")
    log_probs = log_softmax(input, axis=1)
    rows = xp.arange(n)
    value, scale = _reduce(xp, -log_probs[rows, target], reduction, n)
    grad = xp.exp(log_probs)
    grad[rows, target] -= 1
    grad *= scale
    return value, grad.astype(input.dtype, copy=False)


def gaussian_kl(mu, logvar, reduction="mean", name="gaussian_kl"):
    """KL(N(mu, exp(logvar)) || N(0, 1)) of a VAE's latent code: (loss, dloss/dmu, dloss/dlogvar).

    Per sample n (summed over every axis after the first, the latent dimensions):
        KL_n = -1/2 sum_j (1 + logvar_nj - mu_nj^2 - exp(logvar_nj)),
    then the mean ("mean") or the sum ("sum") over the batch. Note that "mean" divides by the
    batch size N only, not by N times the latent size: the usual VAE objective.
        dKL/dmu = mu,   dKL/dlogvar = (exp(logvar) - 1) / 2   (times 1/N for the mean)
    """
    owner = name
    _check_reduction(owner, reduction)
    _check_same_shape(owner, mu, logvar, names=("mu", "logvar"))
    _check_float(owner, mu, "mu")
    _check_float(owner, logvar, "logvar")
    if mu.ndim < 2:
        raise ValueError(f"{owner} expects (N, latent_dim, ...) arrays, got shape {tuple(mu.shape)}")
    xp = get_array_module(mu)
    variance = xp.exp(logvar)
    elementwise = -0.5 * (1 + logvar - mu * mu - variance)
    value, scale = _reduce(xp, elementwise, reduction, mu.shape[0])
    dmu = mu * scale
    variance -= 1
    variance *= 0.5 * scale
    return value, dmu.astype(mu.dtype, copy=False), variance.astype(logvar.dtype, copy=False)


def categorical_kl(logits, reduction="mean", name="categorical_kl"):
    """KL(q || uniform) of a categorical code q = softmax(logits) over K categories: (loss, dloss/dlogits).

    The categories are the last axis. Per sample n (summed over every latent variable, i.e. every
    axis after the first):
        KL_n = sum_k q_k log q_k + log K   (>= 0, zero for the uniform q),
    then the mean ("mean", over the batch size N only, as gaussian_kl) or the sum ("sum").
    With log q = log_softmax(logits) it is finite for any logits, and
        dKL/dlogits_j = q_j (log q_j - sum_k q_k log q_k)   (times 1/N for the mean)
    """
    owner = name
    _check_reduction(owner, reduction)
    if not hasattr(logits, "shape"):
        raise TypeError(f"{owner} expects an array of logits, got {type(logits).__name__}")
    _check_float(owner, logits, "logits")
    if logits.ndim < 2:
        raise ValueError(f"{owner} expects logits (N, ..., K) with the K categories on the last axis, "
                         f"got shape {tuple(logits.shape)}")
    xp = get_array_module(logits)
    log_q = log_softmax(logits, axis=-1)
    q = xp.exp(log_q)
    negative_entropy = (q * log_q).sum(axis=-1, keepdims=True)
    categories = logits.shape[-1]
    value, scale = _reduce(xp, negative_entropy + np.log(categories), reduction, logits.shape[0])
    grad = q * (log_q - negative_entropy)
    grad *= scale
    return value, grad.astype(logits.dtype, copy=False)


# ----------------------------------------------------------------- modules
class _Loss(Module):
    """Base of the loss modules: forward saves the gradient for grad = 1, backward scales it."""

    function = None  # the functional form: (input, target, reduction) -> (value, *grads)

    def __init__(self, reduction="mean"):
        super().__init__()
        self.reduction = _check_reduction(type(self).__name__, reduction)

    def forward(self, input, target):
        value, *grads = type(self).function(input, target, self.reduction, name=type(self).__name__)
        self.save_for_backward(grads=grads)
        return value

    def backward(self, grad=1.0):
        """dL/dinput (a tuple (dmu, dlogvar) for GaussianKLLoss), times the upstream `grad`."""
        grads = self.saved_for_backward().grads
        if not (isinstance(grad, (int, float)) and grad == 1.0):
            xp = get_array_module(grads[0])
            if getattr(grad, "size", 1) != 1:
                raise ValueError(f"{type(self).__name__}.backward: the loss is a scalar, so the upstream "
                                 f"gradient must be one number, got shape {tuple(grad.shape)}")
            grad = xp.asarray(grad, dtype=grads[0].dtype).reshape(())
            grads = [g * grad for g in grads]
        return grads[0] if len(grads) == 1 else tuple(grads)

    def extra_repr(self):
        return f"reduction={self.reduction!r}"


class BCEWithLogitsLoss(_Loss):
    """Binary cross-entropy on logits, stable for any logit (use this, not Sigmoid + BCELoss).

    Args:
        reduction: "mean" (over all elements) or "sum".

    Shape:
        input: logits, any shape; target: the same shape, values in [0, 1] (soft labels allowed).

    Maths: l = max(x, 0) - x t + log1p(e^-|x|);  backward: dl/dx = sigmoid(x) - t.
    """

    function = staticmethod(bce_with_logits)


class BCELoss(_Loss):
    """Binary cross-entropy on probabilities, as torch.nn.BCELoss (logs clamped at -100).

    Args:
        reduction: "mean" (over all elements) or "sum".

    Shape:
        input: probabilities in [0, 1], any shape; target: the same shape.

    Maths: l = -(t log p + (1 - t) log(1 - p));  backward: dl/dp = (p - t) / max(p (1 - p), 1e-12).
    """

    function = staticmethod(binary_cross_entropy)


class MSELoss(_Loss):
    """Mean squared error. Shape: input and target alike. Backward: dl/dx = 2 (x - t)."""

    function = staticmethod(mse)


class L1Loss(_Loss):
    """Mean absolute error. Shape: input and target alike. Backward: dl/dx = sign(x - t)."""

    function = staticmethod(l1)


class CrossEntropyLoss(_Loss):
    """Cross-entropy of logits against integer class labels (log-softmax inside, stable).

    Args:
        reduction: "mean" (over the batch) or "sum".

    Shape:
        input: logits (N, C); target: integer classes (N,) in [0, C).

    Maths: l_n = logsumexp(x_n) - x_n[t_n];  backward: dl_n/dx_n = softmax(x_n) - onehot(t_n).
    """

    function = staticmethod(cross_entropy)


class GaussianKLLoss(_Loss):
    """KL(N(mu, exp(logvar)) || N(0, I)), a VAE's latent regulariser: `loss(mu, logvar)`.

    Args:
        reduction: sum over the latent dimensions (every axis after the first), then "mean"
            (divide by the batch size N) or "sum" over the batch.

    Shape:
        mu, logvar: (N, latent_dim, ...), the same shape.

    Maths: KL_n = -1/2 sum_j (1 + logvar - mu^2 - exp(logvar));
    backward returns (dmu, dlogvar) = (mu, (exp(logvar) - 1) / 2), times 1/N for the mean.
    """

    function = staticmethod(gaussian_kl)


class CategoricalKLLoss(_Loss):
    """KL(softmax(logits) || uniform over K), a discrete VAE latent's regulariser: `loss(logits)`.

    Args:
        reduction: sum over the latent variables (every axis after the first), then "mean"
            (divide by the batch size N) or "sum" over the batch.

    Shape:
        logits: (N, ..., K), the K categories on the last axis.

    Maths: KL_n = sum_k q log q + log K with q = softmax(logits);
    backward: dKL/dlogits = q (log q - sum_k q log q), times 1/N for the mean.
    """

    def forward(self, logits):
        value, grad = categorical_kl(logits, self.reduction, name=type(self).__name__)
        self.save_for_backward(grads=[grad])
        return value
