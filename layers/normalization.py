"""Batch normalisation: BatchNorm1d ((N, C) and (N, C, L)) and BatchNorm2d ((N, C, H, W)).

Both are one class, `_BatchNorm`, parameterised by the layouts it accepts; the statistics of
channel c are taken over every axis but the channel axis 1 (N; N and L; N, H and W).
"""
import numpy as np

from nnbox import init
from nnbox.backend import get_array_module
from nnbox.module import Module, Parameter

from ._checks import check_input


class _BatchNorm(Module):
    """y = (x - mean) / sqrt(var + eps) * weight + bias, per channel (the shared implementation).

    Subclasses set LAYOUTS, {ndim: layout description}, the input ranks they accept.

    Args:
        num_features: C, the number of channels.
        eps: added to the variance for stability (default 1e-5).
        momentum: the weight of the newest batch in the running averages (default 0.1):
            running = (1 - momentum) * running + momentum * batch statistic.
        affine: learn a per-channel scale `weight` (ones) and shift `bias` (zeros) (default True).
        track_running_stats: keep `running_mean` (zeros) and `running_var` (ones) buffers, updated
            in training and used in eval (default True). Without them, eval also normalises by
            the batch statistics.
        dtype: dtype of the parameters and buffers (default float32).

    Statistics, over the m = N * (spatial size) values of each channel, as PyTorch:
        mean = sum(x) / m, var = sum((x - mean)^2) / m (biased: it normalises the batch);
        running_var is updated with the unbiased var * m / (m - 1). For float32 input, mean and
        var are accumulated in float64 (a float32 sum over 10^5 values loses digits); the output
        keeps the input's dtype. Training needs m > 1 (a single value has no variance).

    Backward, with xhat = (x - mean) * inv_std, inv_std = 1 / sqrt(var + eps), sums over the
    m values of a channel:
        dweight += sum(dy * xhat),  dbias += sum(dy),
        batch statistics:   dx = (1/m) * weight * inv_std * (m * dy - sum(dy) - xhat * sum(dy * xhat))
        running statistics: dx = weight * inv_std * dy  (the statistics are constants)
    """

    LAYOUTS = {}

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True,
                 dtype=init.DEFAULT_DTYPE):
        super().__init__()
        name = type(self).__name__
        if int(num_features) != num_features or num_features < 1:
            raise ValueError(f"{name}: num_features must be a positive integer, got {num_features!r}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"{name}: momentum must be in [0, 1], got {momentum!r}")
        if eps <= 0:
            raise ValueError(f"{name}: eps must be positive, got {eps!r}")
        self.num_features = int(num_features)
        self.eps = float(eps)
        self.momentum = float(momentum)
        self.affine = affine
        self.track_running_stats = track_running_stats
        shape = (self.num_features,)
        self.weight = Parameter(init.ones(shape, dtype)) if affine else None
        self.bias = Parameter(init.zeros(shape, dtype)) if affine else None
        self.register_buffer("running_mean", init.zeros(shape, dtype) if track_running_stats else None)
        self.register_buffer("running_var", init.ones(shape, dtype) if track_running_stats else None)

    def reset_running_stats(self):
        if self.track_running_stats:
            self.running_mean.fill(0)
            self.running_var.fill(1)

    def _check(self, x):
        name = type(self).__name__
        if not hasattr(x, "ndim"):
            raise TypeError(f"{name} expects an array, got {type(x).__name__}")
        if x.ndim not in self.LAYOUTS:
            layouts = " or ".join(f"a {ndim}-D input {layout}" for ndim, layout in self.LAYOUTS.items())
            raise ValueError(f"{name} expects {layouts} with C = {self.num_features}, got shape {tuple(x.shape)}")
        check_input(self, x, x.ndim, self.num_features, what=self.LAYOUTS[x.ndim])

    def forward(self, x):
        self._check(x)
        xp = get_array_module(x)
        axes = (0,) + tuple(range(2, x.ndim))            # every axis but the channels
        stat_shape = (1, self.num_features) + (1,) * (x.ndim - 2)
        count = x.size // self.num_features              # m, the values per channel
        use_batch_stats = self.training or not self.track_running_stats
        if use_batch_stats:
            if count < 2:
                raise ValueError(
                    f"{type(self).__name__}: expected more than 1 value per channel when training, got input "
                    f"shape {tuple(x.shape)} ({count} value per channel); use a batch of 2 or more, or eval()")
            # float64 accumulation for float32 input: only the C statistics are kept in float64
            acc = np.float64 if x.dtype == np.float32 else x.dtype
            mean = x.mean(axis=axes, dtype=acc, keepdims=True)
            centred = x - mean                           # in `acc` precision
            var = (centred * centred).mean(axis=axes, keepdims=True)
            if self.training and self.track_running_stats:
                m = self.momentum
                unbiased = var.reshape(-1) * (count / (count - 1))
                # in place (cast to the buffers' dtype), so references to the buffers stay valid
                self.running_mean[...] = (1 - m) * self.running_mean + m * mean.reshape(-1)
                self.running_var[...] = (1 - m) * self.running_var + m * unbiased
            inv_std = (1.0 / xp.sqrt(var + self.eps)).astype(x.dtype)
            xhat = (centred * inv_std).astype(x.dtype, copy=False)
        else:
            inv_std = (1.0 / xp.sqrt(self.running_var.astype(x.dtype) + x.dtype.type(self.eps))).reshape(stat_shape)
            xhat = (x - self.running_mean.astype(x.dtype).reshape(stat_shape)) * inv_std
        self.save_for_backward(xhat=xhat, inv_std=inv_std, batch_stats=use_batch_stats)
        if not self.affine:
            return xhat
        return xhat * self.weight.data.astype(x.dtype).reshape(stat_shape) + \
            self.bias.data.astype(x.dtype).reshape(stat_shape)

    def backward(self, dy):
        saved = self.saved_for_backward()
        xhat, inv_std = saved.xhat, saved.inv_std
        if tuple(dy.shape) != tuple(xhat.shape):
            raise ValueError(f"{type(self).__name__}.backward expects dy shaped like the forward output "
                             f"{tuple(xhat.shape)}, got shape {tuple(dy.shape)}")
        axes = (0,) + tuple(range(2, dy.ndim))
        stat_shape = inv_std.shape
        sum_dy = dy.sum(axis=axes, keepdims=True)
        sum_dy_xhat = (dy * xhat).sum(axis=axes, keepdims=True)
        if self.affine:
            if self.weight.requires_grad:
                self.weight.grad += sum_dy_xhat.reshape(-1).astype(self.weight.grad.dtype, copy=False)
            if self.bias.requires_grad:
                self.bias.grad += sum_dy.reshape(-1).astype(self.bias.grad.dtype, copy=False)
            scale = self.weight.data.astype(dy.dtype).reshape(stat_shape) * inv_std
        else:
            scale = inv_std
        if not saved.batch_stats:
            return dy * scale
        count = dy.size // self.num_features
        return (scale / count) * (count * dy - sum_dy - xhat * sum_dy_xhat)

    def extra_repr(self):
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"track_running_stats={self.track_running_stats}")


class BatchNorm1d(_BatchNorm):
    """Batch normalisation of (N, C) features or (N, C, L) sequences, per channel C.

    Args, statistics and backward: see `_BatchNorm`.

    Shape:
        x: (N, C) or (N, C, L) -> y: the same shape; statistics over N (and L).
    """

    LAYOUTS = {2: "(N, C)", 3: "(N, C, L)"}


class BatchNorm2d(_BatchNorm):
    """Batch normalisation of (N, C, H, W) images, per channel C.

    Args, statistics and backward: see `_BatchNorm`.

    Shape:
        x: (N, C, H, W) -> y: the same shape; statistics over N, H and W.
    """

    LAYOUTS = {4: "(N, C, H, W)"}
