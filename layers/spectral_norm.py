"""Spectral normalisation (Miyato et al., 2018): a wrapper that divides a layer's weight by its
largest singular value, estimated by power iteration, as torch.nn.utils.spectral_norm does.

Design: the wrapper owns the trainable weight, `weight_orig` (a Parameter, as in PyTorch), and
the power-iteration vectors `u`, `v` (buffers, saved in the state dict). The wrapped layer's own
`weight` Parameter is taken out of its registered parameters (so optimisers, `parameters()` and
the state dict see only `weight_orig`) and becomes scratch space: before each forward the wrapper
writes W_sn = weight_orig / sigma into it, and before each backward the wrapper writes the W_sn of
the matching forward back, zeroes its gradient, lets the layer accumulate dL/dW_sn there, and
turns that into dL/dweight_orig. The layer's other parameters (its bias) stay the layer's own,
trained as usual. State dict keys: `weight_orig`, `u`, `v`, `module.bias`.
"""
from nnbox import backend
from nnbox.backend import get_array_module
from nnbox.module import Module, Parameter

from .conv import ConvTranspose2d

INITIAL_POWER_ITERATIONS = 15   # at construction, as torch.nn.utils.parametrizations.spectral_norm


def _normalize(vector, eps):
    """vector / max(||vector||, eps), as torch.nn.functional.normalize."""
    xp = get_array_module(vector)
    return vector / xp.maximum(xp.linalg.norm(vector), eps)


class SpectralNorm(Module):
    """Wraps a layer with a `weight` Parameter so that it computes with W_sn = W / sigma(W).

    Args:
        layer: the layer to wrap (Linear, Conv2d, ConvTranspose2d or any Module with a `weight`
            Parameter of at least 2 dimensions). It is modified: its `weight` moves to the wrapper.
        n_power_iterations: power-iteration steps per training forward (default 1).
        eps: the floor of the norms in the power iteration (default 1e-12).
        dim: the axis of the weight that indexes the outputs; None (default) picks 1 for
            ConvTranspose2d (its weight is (in, out, kh, kw)) and 0 otherwise, as PyTorch.
        rng: NumPy generator or seed for the initial u and v (normalised standard normal draws).

    Shape:
        those of the wrapped layer. With W the weight moved so that `dim` comes first and reshaped
        to a matrix (out, rest): u: (out,), v: (rest,).

    Forward: in training, n_power_iterations of
        v = normalize(W^T u),  u = normalize(W v)
    update the buffers (never in eval); then sigma = u^T W v and the layer runs with W_sn = W / sigma.

    Backward: the layer gives G = dL/dW_sn; with u, v treated as constants (as PyTorch does),
        dL/dW = (G - sum(G * W_sn) u v^T) / sigma
    is added into weight_orig.grad.
    """

    def __init__(self, layer, n_power_iterations=1, eps=1e-12, dim=None, rng=None):
        super().__init__()
        weight = getattr(layer, "_parameters", {}).get("weight")
        if not isinstance(layer, Module) or weight is None:
            raise TypeError(f"SpectralNorm wraps a layer with a `weight` Parameter (Linear, Conv2d, ...), "
                            f"got {type(layer).__name__}")
        if weight.data.ndim < 2:
            raise ValueError(f"SpectralNorm needs a weight with at least 2 dimensions, got shape "
                             f"{tuple(weight.data.shape)} in {type(layer).__name__}")
        if int(n_power_iterations) < 1:
            raise ValueError(f"SpectralNorm: n_power_iterations must be >= 1, got {n_power_iterations}")
        self.n_power_iterations = int(n_power_iterations)
        self.eps = float(eps)
        self.dim = (1 if isinstance(layer, ConvTranspose2d) else 0) if dim is None else int(dim)
        if not 0 <= self.dim < weight.data.ndim:
            raise ValueError(f"SpectralNorm: dim={dim} is not an axis of the weight of shape {tuple(weight.data.shape)}")

        # the weight moves to the wrapper; the layer keeps an unregistered scratch Parameter
        del layer._parameters["weight"]
        self.weight_orig = Parameter(weight.data, weight.requires_grad)
        object.__setattr__(layer, "weight", Parameter(weight.data.copy(), weight.requires_grad))
        self.module = layer

        rows, cols = self._matrix(weight.data).shape
        rng = backend.as_rng(rng)
        xp = get_array_module(weight.data)
        dtype = weight.data.dtype
        u = _normalize(rng.standard_normal(rows), self.eps).astype(dtype)
        v = _normalize(rng.standard_normal(cols), self.eps).astype(dtype)
        self.register_buffer("u", xp.asarray(u))
        self.register_buffer("v", xp.asarray(v))
        self.reset_estimate()

    # ------------------------------------------------------------- weight as a matrix
    def _matrix(self, weight):
        """The weight with `dim` first, as an (out, rest) matrix (a view when dim is 0)."""
        if self.dim != 0:
            weight = get_array_module(weight).moveaxis(weight, self.dim, 0)
        return weight.reshape(weight.shape[0], -1)

    def _unmatrix(self, matrix, shape):
        """The inverse of _matrix: an (out, rest) matrix back to a weight of `shape`."""
        if self.dim == 0:
            return matrix.reshape(shape)
        moved = (shape[self.dim],) + tuple(size for axis, size in enumerate(shape) if axis != self.dim)
        return get_array_module(matrix).moveaxis(matrix.reshape(moved), 0, self.dim)

    def reset_estimate(self, iterations=INITIAL_POWER_ITERATIONS):
        """Run `iterations` power-iteration steps from the current u, v, so that sigma estimates W's
        largest singular value before any training forward (an eval forward uses u and v as they
        are: random ones gave a sigma of 0.007 for 0.18, scaling W by 25). Done at construction, and
        by nnbox.init.init_dcgan after it redraws the weight. As torch.nn.utils.parametrizations."""
        self._power_iteration(iterations)
        self.module.weight.data = self._normalized()[0]

    def _power_iteration(self, iterations=None):
        """Update u and v (in place) towards the top singular vectors of W: n_power_iterations
        steps (each training forward) or `iterations`."""
        w = self._matrix(self.weight_orig.data)
        u, v = self.u, self.v
        for _ in range(self.n_power_iterations if iterations is None else iterations):
            v = _normalize(w.T @ u, self.eps)
            u = _normalize(w @ v, self.eps)
        self.u[...] = u
        self.v[...] = v

    def _normalized(self):
        """(W_sn, sigma) from the current u, v."""
        weight = self.weight_orig.data
        sigma = self.u @ (self._matrix(weight) @ self.v)
        return weight / sigma, sigma

    @property
    def sigma(self):
        """The current estimate of the largest singular value, u^T W v."""
        return self._normalized()[1]

    # ------------------------------------------------------------- forward/backward
    def _use_weight(self, weight_sn):
        inner = self.module.weight
        inner.data = weight_sn
        inner.requires_grad = self.weight_orig.requires_grad

    def forward(self, *args, **kwargs):
        if self.training:
            self._power_iteration()
        weight_sn, sigma = self._normalized()
        self._use_weight(weight_sn)
        y = self.module(*args, **kwargs)
        # u, v copied: a later training forward updates the buffers in place
        self.save_for_backward(weight_sn=weight_sn, sigma=sigma, u=self.u.copy(), v=self.v.copy())
        return y

    def backward(self, dy):
        saved = self.saved_for_backward()
        self._use_weight(saved.weight_sn)    # the W_sn of this backward's forward (D runs twice per step)
        inner = self.module.weight
        inner.grad = get_array_module(saved.weight_sn).zeros_like(saved.weight_sn)
        dx = self.module.backward(dy)
        if self.weight_orig.requires_grad:
            grad_sn = self._matrix(inner.grad)
            weight_sn = self._matrix(saved.weight_sn)
            projection = (grad_sn * weight_sn).sum()
            grad = (grad_sn - projection * (saved.u[:, None] * saved.v[None, :])) / saved.sigma
            self.weight_orig.grad += self._unmatrix(grad, inner.grad.shape)
        return dx

    def extra_repr(self):
        return f"n_power_iterations={self.n_power_iterations}, eps={self.eps}, dim={self.dim}"
