"""Batch normalisation: BatchNorm1d ((N, C) and (N, C, L)) and BatchNorm2d ((N, C, H, W)).

Both are one class, `_BatchNorm`, parameterised by the layouts it accepts; the statistics of
channel c are taken over every axis but the channel axis 1 (N; N and L; N, H and W).
"""
import math

import numpy as np

from nnbox import gpu_kernels, init, parallel, workspace
from nnbox.backend import get_array_module, sum_dtype
from nnbox.module import Module, Parameter

from ._checks import check_array, check_grad, check_input, is_whole_number


class _BatchNorm(Module):
    """y = (x - mean) / sqrt(var + eps) * weight + bias, per channel (the shared implementation).

    Subclasses set LAYOUTS, {ndim: layout description}, the input ranks they accept.

    Args:
        num_features: C, the number of channels.
        eps: added to the variance for stability (default 1e-5).
        momentum: the weight of the newest batch in the running averages (default 0.1):
            running = (1 - momentum) * running + momentum * batch statistic. None: the cumulative
            average of all batches so far, momentum = 1 / k at the k-th training batch (as PyTorch;
            the count is the buffer `num_batches_tracked`).
        affine: learn a per-channel scale `weight` (ones) and shift `bias` (zeros) (default True).
        track_running_stats: keep `running_mean` (zeros) and `running_var` (ones) buffers, updated
            in training and used in eval (default True). Without them, eval also normalises by
            the batch statistics.
        dtype: dtype of the parameters and buffers (default float32).

    Statistics, over the m = N * (spatial size) values of each channel, as PyTorch:
        mean = sum(x) / m, var = sum((x - mean)^2) / m (biased: it normalises the batch);
        running_var is updated with the unbiased var * m / (m - 1). For float32 input the mean is
        accumulated in float64 (over the samples of each (channel, position), then over the
        positions); the squares of x - mean32 are summed over the samples in float32 and over the
        positions in float64 (see `_batch_statistics`). The output keeps the input's dtype.
        Training needs m > 1 (a single value has no variance).

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
        if not is_whole_number(num_features) or num_features < 1:
            raise ValueError(f"{name}: num_features must be a positive integer, got {num_features!r}")
        if momentum is not None and not 0.0 <= momentum <= 1.0:
            raise ValueError(f"{name}: momentum must be in [0, 1] or None (cumulative average), got {momentum!r}")
        if eps <= 0:
            raise ValueError(f"{name}: eps must be positive, got {eps!r}")
        self.num_features = int(num_features)
        self.eps = float(eps)
        self.momentum = None if momentum is None else float(momentum)
        self.affine = affine
        self.track_running_stats = track_running_stats
        shape = (self.num_features,)
        self.weight = Parameter(init.ones(shape, dtype)) if affine else None
        self.bias = Parameter(init.zeros(shape, dtype)) if affine else None
        self.register_buffer("running_mean", init.zeros(shape, dtype) if track_running_stats else None)
        self.register_buffer("running_var", init.ones(shape, dtype) if track_running_stats else None)
        if momentum is None and track_running_stats:
            self.register_buffer("num_batches_tracked", np.zeros((), np.int64))

    def reset_running_stats(self):
        if self.track_running_stats:
            self.running_mean.fill(0)
            self.running_var.fill(1)
            if self.momentum is None:
                self.num_batches_tracked.fill(0)

    def _update_weight(self, dtype):
        """The running averages' weight for this batch: momentum, or 1/k for the cumulative average
        (a 0-d array on the buffers' device: no host round trip on the GPU)."""
        if self.momentum is not None:
            return self.momentum
        self.num_batches_tracked += 1
        return 1.0 / self.num_batches_tracked.astype(dtype)

    def _check(self, x):
        name = type(self).__name__
        check_array(self, x)
        if x.ndim not in self.LAYOUTS:
            layouts = " or ".join(f"a {ndim}-D input {layout}" for ndim, layout in self.LAYOUTS.items())
            raise ValueError(f"{name} expects {layouts} with C = {self.num_features}, got shape {tuple(x.shape)}")
        check_input(self, x, x.ndim, self.num_features, what=self.LAYOUTS[x.ndim])

    def forward(self, x):
        self._check(x)
        xp = get_array_module(x)
        stat_shape = (1, self.num_features) + (1,) * (x.ndim - 2)
        count = x.size // self.num_features              # m, the values per channel
        use_batch_stats = self.training or not self.track_running_stats
        if use_batch_stats and count < 2:
            when = "when training" if self.training else "with track_running_stats=False"
            hint = ", or eval()" if self.track_running_stats else ""
            raise ValueError(
                f"{type(self).__name__}: expected more than 1 value per channel {when}, got input "
                f"shape {tuple(x.shape)} ({count} value per channel); use a batch of 2 or more{hint}")
        weight = bias = None
        if self.affine:
            weight = self.weight.data.astype(x.dtype, copy=False).reshape(stat_shape)
            bias = self.bias.data.astype(x.dtype, copy=False).reshape(stat_shape)
        forward = self._forward_numpy if xp is np else self._forward_cupy
        xhat, y, inv_std = forward(x, stat_shape, count, use_batch_stats, weight, bias)
        self.save_for_backward(xhat=xhat, inv_std=inv_std, batch_stats=use_batch_stats)
        return xhat if y is None else y

    def _update_running_stats(self, mean, var, count):
        """running = (1 - w) running + w batch value (the unbiased variance), in place (cast to the
        buffers' dtype), so references to the buffers stay valid."""
        m = self._update_weight(mean.dtype)
        unbiased = var * (count / (count - 1))
        self.running_mean[...] = (1 - m) * self.running_mean + m * mean
        self.running_var[...] = (1 - m) * self.running_var + m * unbiased

    def _forward_numpy(self, x, stat_shape, count, use_batch_stats, weight, bias):
        """(xhat, y or None, inv_std): the passes split over the samples (nnbox.parallel), on x as
        (N, C * L) with the per-channel values spread over their L positions (`_spread`)."""
        xp = np
        n = x.shape[0]
        if use_batch_stats:
            mean, var, xhat = self._batch_statistics(x, count)
            if self.training and self.track_running_stats:
                self._update_running_stats(mean, var, count)
            inv_std = (1.0 / xp.sqrt(var + self.eps)).astype(x.dtype).reshape(stat_shape)
            # float32 input: xhat holds x - mean32; the rounding mean - mean32 is subtracted below
            shift = None if mean.dtype == x.dtype else \
                _spread((mean - mean.astype(x.dtype).astype(mean.dtype)).astype(x.dtype), x)
        else:
            inv_std = (1.0 / xp.sqrt(self.running_var.astype(x.dtype) + x.dtype.type(self.eps))).reshape(stat_shape)
            xhat = workspace.empty(x.shape, x.dtype, xp)
            xp.subtract(_rows(x), _spread(self.running_mean.astype(x.dtype), x), out=_rows(xhat))
            shift = None
        y = None if weight is None else workspace.empty(x.shape, x.dtype, xp)
        rows, scale = _rows(xhat), _spread(inv_std, x)
        if y is not None:
            out, spread_weight, spread_bias = _rows(y), _spread(weight, x), _spread(bias, x)

        def normalise(a, b):   # xhat = (held - shift) * inv_std, y = xhat * weight + bias, per sample range
            if shift is not None:
                rows[a:b] -= shift
            rows[a:b] *= scale
            if y is not None:
                xp.multiply(rows[a:b], spread_weight, out=out[a:b])
                out[a:b] += spread_bias

        parallel.run(n, normalise, x.size, xp)
        return xhat, y, inv_std

    def _forward_cupy(self, x, stat_shape, count, use_batch_stats, weight, bias):
        """(xhat, y or None, inv_std): the same maths as `_forward_numpy` in few kernel launches
        (nnbox.gpu_kernels), without the float32 rounding correction."""
        xp = get_array_module(x)
        if use_batch_stats:
            mean, var = gpu_kernels.channel_mean_var(x)   # float64, as on the CPU
            if self.training and self.track_running_stats:   # running averages and inv_std: one kernel
                inv_std = xp.empty(stat_shape, x.dtype)
                gpu_kernels.batch_norm_running_stats(mean, var, self._update_weight(mean.dtype), count / (count - 1),
                                                     self.eps, self.running_mean, self.running_var,
                                                     inv_std.reshape(-1))
            else:
                inv_std = (1.0 / xp.sqrt(var + self.eps)).astype(x.dtype).reshape(stat_shape)
        else:
            mean = self.running_mean
            inv_std = (1.0 / xp.sqrt(self.running_var.astype(x.dtype) + x.dtype.type(self.eps))).reshape(stat_shape)
        xhat = xp.empty_like(x)
        y = None if weight is None else xp.empty_like(x)
        gpu_kernels.batch_norm_normalise(x, mean.astype(x.dtype).reshape(stat_shape), inv_std, weight, bias, xhat, y)
        return xhat, y, inv_std

    def _batch_statistics(self, x, count):
        """(mean, var, x - mean) of a batch: mean and var (C,) in float64 for float32 input, x - mean
        in x's dtype (a fresh array, which forward turns into xhat in place).

        Passes over x as (N, C * L): the sums over the samples of every (channel, position),
        accumulated in float64 (`acc`), then over the positions; x - mean32, with mean32 the mean
        rounded to x's dtype (exact for x near the mean); the sums of its squares over the samples
        in x's dtype (np.einsum's vectorised loop), then over the positions in `acc`. With the
        rounding error r = mean - mean32 (tiny, and known), var = sum((x - mean32)^2) / m - r^2, and
        x - mean = (x - mean32) - r (forward subtracts r while normalising; with float64 input r is
        0). The sums are split over the columns, the subtraction over the samples (nnbox.parallel),
        so results do not depend on the thread count.
        """
        xp = np
        acc = _accumulator(x.dtype)
        n, c = x.shape[:2]
        rows = _rows(x)
        summed = _summable(rows)
        mean = _over_samples(summed, lambda a, b: summed[:, a:b].sum(axis=0, dtype=acc)).reshape(c, -1).sum(axis=1)
        mean /= count
        mean_x = mean.astype(x.dtype)
        centred = workspace.empty(x.shape, x.dtype, xp)
        centred_rows, spread_mean = _rows(centred), _spread(mean_x, x)
        parallel.run(n, lambda a, b: xp.subtract(rows[a:b], spread_mean, out=centred_rows[a:b]), x.size, xp)
        summed = _summable(centred_rows)
        squares = _over_samples(summed, lambda a, b: xp.einsum("nk,nk->k", summed[:, a:b], summed[:, a:b]))
        squares = squares.reshape(c, -1).sum(axis=1, dtype=acc)
        rounding = mean - mean_x.astype(acc)
        var = xp.maximum(squares / count - rounding * rounding, 0.0)
        return mean, var, centred   # forward subtracts the rounding (float32) while normalising

    def backward(self, dy):
        saved = self.saved_for_backward()
        xhat, inv_std = saved.xhat, saved.inv_std
        check_grad(self, dy, xhat.shape)
        xp = get_array_module(dy)
        stat_shape = inv_std.shape
        n, c = dy.shape[:2]
        if xp is np:   # sums over the samples of dy and dy xhat as (N, C * L), then over the positions
            dy_flat, xhat_flat = _summable(_rows(dy)), _summable(_rows(xhat))
            acc, kept = _accumulator(dy.dtype), dy_flat.dtype   # kept: float16's sums overflow, float32's do not
            sum_dy = _over_samples(dy_flat, lambda a, b: dy_flat[:, a:b].sum(axis=0))
            sum_dy = sum_dy.reshape(c, -1).sum(axis=1, dtype=acc).astype(kept)                           # (C,)
            sum_dy_xhat = _over_samples(dy_flat, lambda a, b: xp.einsum("nk,nk->k", dy_flat[:, a:b],
                                                                        xhat_flat[:, a:b]))
            sum_dy_xhat = sum_dy_xhat.reshape(c, -1).sum(axis=1, dtype=acc).astype(kept)                  # (C,)
        else:
            sum_dy, sum_dy_xhat = gpu_kernels.channel_sums(dy, xhat)
            if self.affine and self.weight.requires_grad and self.bias.requires_grad and saved.batch_stats:
                # CuPy: the per-channel lines below (both gradients, scale, k_xhat, k_dy) in one kernel
                scale, k_xhat, k_dy = (xp.empty(stat_shape, dy.dtype) for _ in range(3))
                gpu_kernels.batch_norm_channel_grads(sum_dy, sum_dy_xhat, self.weight.data, inv_std.reshape(-1),
                                                     dy.size // self.num_features, self.weight.grad,
                                                     self.bias.grad, scale.reshape(-1), k_xhat.reshape(-1),
                                                     k_dy.reshape(-1))
                dx = xp.empty_like(dy)
                gpu_kernels.batch_norm_input_grad(dy, xhat, k_xhat, k_dy, scale, dx)
                return dx
        if self.affine:
            if self.weight.requires_grad:
                self.weight.grad += sum_dy_xhat.astype(self.weight.grad.dtype, copy=False)
            if self.bias.requires_grad:
                self.bias.grad += sum_dy.astype(self.bias.grad.dtype, copy=False)
            scale = self.weight.data.astype(dy.dtype, copy=False).reshape(stat_shape) * inv_std
        else:
            scale = inv_std
        if not saved.batch_stats:
            return dy * scale
        # dx = scale * (dy - xhat * sum(dy xhat) / m - sum(dy) / m), in four passes over one array
        count = dy.size // self.num_features
        k_xhat = (sum_dy_xhat / count).astype(dy.dtype, copy=False).reshape(stat_shape)
        k_dy = (sum_dy / count).astype(dy.dtype, copy=False).reshape(stat_shape)
        dx = workspace.empty(dy.shape, dy.dtype, xp)
        if xp is not np:   # CuPy: the four passes below in one kernel
            gpu_kernels.batch_norm_input_grad(dy, xhat, k_xhat, k_dy, scale, dx)
            return dx

        dy_flat, xhat_flat, dx_flat = _rows(dy), _rows(xhat), _rows(dx)
        k_xhat, k_dy, scale = _spread(k_xhat, dy), _spread(k_dy, dy), _spread(scale, dy)

        def input_grad(a, b):
            xp.multiply(xhat_flat[a:b], k_xhat, out=dx_flat[a:b])
            xp.subtract(dy_flat[a:b], dx_flat[a:b], out=dx_flat[a:b])
            dx_flat[a:b] -= k_dy
            dx_flat[a:b] *= scale

        parallel.run(n, input_grad, dy.size, xp)
        return dx

    def extra_repr(self):
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"track_running_stats={self.track_running_stats}")


def _over_samples(rows, partial):
    """The sums over the samples of rows (N, K): partial(a, b) -> the (b - a,) sums of columns a:b,
    computed for ranges of columns in parallel (nnbox.parallel) and joined; each column is summed
    whole by one thread, so results do not depend on the split."""
    pieces = parallel.run(rows.shape[1], partial, rows.size, np)
    return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)


def _accumulator(dtype):
    """The dtype per-channel sums are accumulated in: float64, or the input's own if wider."""
    return np.float64 if np.dtype(dtype).itemsize < 8 else dtype


def _summable(rows):
    """rows, or a float32 copy where their dtype is narrower (float16): the sums over the samples run
    in the rows' dtype, and float16's overflow at 65504 (as the CuPy kernels, which read float16 as float32)."""
    return rows.astype(sum_dtype(rows.dtype), copy=False)


def _rows(a):
    """a (N, C, ...) as a (N, C * L) view; unlike reshape(n, -1) it works for N = 0."""
    return a.reshape(a.shape[0], math.prod(a.shape[1:]))


def _spread(values, x):
    """Per-channel values (C,) (any shape holding C values) -> (1, C * L) for x (N, C, ...) seen as
    (N, C * L): each value repeated over its channel's L positions. Passes over x then run over
    rows of C * L values; with (1, C, 1, 1) broadcasting the runs are L values long, which made
    BatchNorm 2-3x slower on 4x4 and 8x8 maps."""
    per_channel = math.prod(x.shape[2:])
    return np.repeat(values.reshape(-1).astype(x.dtype, copy=False), per_channel).reshape(1, -1)


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
