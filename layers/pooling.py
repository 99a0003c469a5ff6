"""2-D pooling and unpooling on NCHW arrays: MaxPool2d, MaxUnpool2d, Unpool2d, AvgPool2d.

The window arithmetic (output sizes, padding, the strided slice per kernel offset) is
`conv_maths`'s, shared with the convolutions.
"""
import math

import numpy as np

from nnbox import backend, gpu_kernels, parallel
from nnbox.backend import get_array_module
from nnbox.module import Module

from . import conv_maths, resize_conv
from ._checks import check_grad, check_input


class _Pool2d(Module):
    """Kernel, stride (default: the kernel) and padding, and the input check, shared by the pools."""

    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        name = type(self).__name__
        self.kernel_size = conv_maths.pair(kernel_size, f"{name}: kernel_size")
        self.stride = self.kernel_size if stride is None else conv_maths.pair(stride, f"{name}: stride")
        self.padding = conv_maths.pair(padding, f"{name}: padding")
        if min(self.kernel_size) < 1 or min(self.stride) < 1 or min(self.padding) < 0:
            raise ValueError(f"{name}: kernel_size and stride must be >= 1 and padding >= 0, got "
                             f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}")
        if any(p > k // 2 for p, k in zip(self.padding, self.kernel_size)):
            raise ValueError(f"{name}: padding should be at most half the kernel size (as PyTorch), got "
                             f"padding={self.padding} for kernel_size={self.kernel_size}")

    def output_size(self, height, width):
        """(OH, OW) = floor((H + 2p - k) / s) + 1 per axis."""
        return tuple(conv_maths.conv_output_size(size, k, s, p) for size, k, s, p in
                     zip((height, width), self.kernel_size, self.stride, self.padding))

    def _check(self, x):
        check_input(self, x, 4, what="(N, C, H, W)")
        conv_maths.check_window_fits(self, x, self.kernel_size, self.padding)
        return self.output_size(*x.shape[2:])

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


def flat_indices(indices, plane_size):
    """Positions within each (H, W) plane, indices (N, C, ...), -> positions in the flattened
    (N, C, H, W) array, as one 1-D int64 array."""
    xp = get_array_module(indices)
    n, c = indices.shape[:2]
    offsets = (xp.arange(n * c, dtype=np.int64) * plane_size).reshape((n, c) + (1,) * (indices.ndim - 2))
    return (indices.astype(np.int64, copy=False) + offsets).reshape(-1)


class MaxPool2d(_Pool2d):
    """Takes the maximum of each (kh, kw) window.

    Args:
        kernel_size: an int or a pair (height, width).
        stride: an int or a pair; None (default) means kernel_size.
        padding: implicit -inf padding on both sides, at most half the kernel.
        return_indices: forward returns (y, indices) instead of y; indices[n, c, oh, ow] is the
            flat position h * W + w of the maximum within the (H, W) input plane (int64, as
            PyTorch), what MaxUnpool2d takes.

    Shape:
        x: (N, C, H, W) -> y, indices: (N, C, OH, OW), OH = floor((H + 2p - k_h) / s_h) + 1.

    Backward: dx is zero except at each window's argmax, which receives that window's dy (summed
    where overlapping windows share an argmax). Ties go to the first maximum in the window; as in
    PyTorch, a window with a NaN gives NaN at its last NaN, and one whose pixels are all -inf
    gives -inf at its first pixel (never at the padding).
    """

    def __init__(self, kernel_size, stride=None, padding=0, return_indices=False):
        super().__init__(kernel_size, stride, padding)
        self.return_indices = return_indices

    def forward(self, x):
        out_size = self._check(x)
        xp = get_array_module(x)
        if xp is not np:   # CuPy: the maxima and their positions in one kernel
            y, indices = gpu_kernels.max_pool(x, self.kernel_size, self.stride, self.padding, out_size)
            self.save_for_backward(indices=indices, x_shape=tuple(x.shape))
            return (y, indices) if self.return_indices else y
        n, c, h, w = x.shape
        padded = conv_maths.pad2d(x, self.padding, value=-np.inf)
        kh, kw = self.kernel_size
        # flat index in the plane = where the window starts + where in the window the max is
        start_row = xp.arange(out_size[0], dtype=np.int64) * self.stride[0] - self.padding[0]
        start_col = xp.arange(out_size[1], dtype=np.int64) * self.stride[1] - self.padding[1]
        start = start_row.reshape(-1, 1) * w + start_col.reshape(1, -1)
        within = (xp.arange(kh, dtype=np.int64).reshape(-1, 1) * w + xp.arange(kw, dtype=np.int64)).reshape(-1)
        offset_type = np.int8 if kh * kw <= 127 else np.int64
        y = xp.empty((n, c) + out_size, dtype=x.dtype)
        indices = xp.empty((n, c) + out_size, dtype=np.int64)

        def pool(a, b):
            """A running maximum over the kernel offsets for samples a:b; `offset` remembers which won.
            Returns whether a maximum is NaN or -inf (`_exact_indices` must then set its index)."""
            out, offset = y[a:b], None
            for i, j, rows, columns in conv_maths.offset_slices(self.kernel_size, self.stride, (1, 1), out_size):
                window = padded[a:b, :, rows, columns]
                if offset is None:
                    out[...] = window
                    offset = xp.zeros(out.shape, dtype=offset_type)
                    continue
                better = window > out  # strict: ties keep the first maximum, as PyTorch
                xp.maximum(out, window, out=out)
                # offsets are visited in increasing order, so "offset = k where better" is a maximum
                # with the mask times k (a multiply by the mask: 40x faster than copyto(where=))
                xp.maximum(offset, better * offset_type(i * kw + j), out=offset)
            xp.add(within[offset], start, out=indices[a:b])
            return out.size > 0 and not out.min() > -np.inf    # one reduction; NaN propagates through min

        if any(parallel.run(n, pool, x.size, xp)):   # split over the samples (nnbox.parallel)
            self._exact_indices(x, ~(y > -np.inf), indices)
        self.save_for_backward(indices=indices, x_shape=tuple(x.shape))
        return (y, indices) if self.return_indices else y

    def _exact_indices(self, x, which, indices):
        """Set indices[which] as PyTorch does, scanning only the windows' real pixels: the last NaN
        if there is one, else (all pixels -inf) the first pixel. The running maximum cannot: NaN
        never compares greater, and the -inf padding ties with -inf pixels."""
        n, c, h, w = x.shape
        kh, kw = self.kernel_size
        sample, channel, out_row, out_col = np.nonzero(which)
        rows = out_row[:, None] * self.stride[0] - self.padding[0] + np.arange(kh)        # (S, kh)
        cols = out_col[:, None] * self.stride[1] - self.padding[1] + np.arange(kw)        # (S, kw)
        real = (((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]).reshape(len(rows), -1)
        rows, cols = np.clip(rows, 0, h - 1)[:, :, None], np.clip(cols, 0, w - 1)[:, None, :]
        values = x[sample[:, None, None], channel[:, None, None], rows, cols].reshape(len(real), -1)
        position = (rows * w + cols).reshape(len(real), -1)
        nan = np.isnan(values) & real
        last_nan = nan.shape[1] - 1 - np.argmax(nan[:, ::-1], axis=1)
        choice = np.where(nan.any(axis=1), last_nan, np.argmax(real, axis=1))
        indices[which] = position[np.arange(len(choice)), choice]

    def backward(self, dy):
        saved = self.saved_for_backward()
        n, c, h, w = saved.x_shape
        check_grad(self, dy, saved.indices.shape)
        xp = get_array_module(dy)
        overlapping = any(s < k for s, k in zip(self.stride, self.kernel_size))
        if overlapping:
            # several windows can pick the same pixel: sum their gradients
            flat = flat_indices(saved.indices, h * w)
            if xp is not np:
                return gpu_kernels.scatter_sum(flat, dy.reshape(-1), n * c * h * w).reshape(saved.x_shape)
            dx = xp.bincount(flat, weights=dy.reshape(-1), minlength=n * c * h * w).astype(dy.dtype, copy=False)
            return dx.reshape(saved.x_shape)
        # disjoint windows have distinct argmaxes: a plain scatter, no accumulation needed; split
        # over the samples (nnbox.parallel), each piece into its own samples of dx
        dx = xp.empty(saved.x_shape, dtype=dy.dtype)

        def scatter(a, b):
            piece = dx[a:b].reshape(-1)
            piece.fill(0)
            piece[flat_indices(saved.indices[a:b], h * w)] = dy[a:b].reshape(-1)

        parallel.run(n, scatter, size=dx.size, xp=xp)
        return dx

    def extra_repr(self):
        return super().extra_repr() + f", return_indices={self.return_indices}"


class MaxUnpool2d(_Pool2d):
    """Undoes MaxPool2d: puts each value back at the position its indices name, zeros elsewhere.

    Args:
        kernel_size, stride, padding: those of the MaxPool2d being undone.

    forward(y, indices, output_size=None): indices as returned by MaxPool2d(return_indices=True)
    (flat positions within each output plane); output_size (H, W) or (N, C, H, W), by default
    H = (OH - 1) s_h - 2 p_h + k_h (and W alike).

    Shape:
        y, indices: (N, C, OH, OW) -> x: (N, C, H, W).

    Backward: dy[n, c, oh, ow] = dx[n, c].flat[indices[n, c, oh, ow]] (a gather). Where indices
    repeat (overlapping pool windows that share an argmax) forward keeps one of the values and
    backward still gives each its gather, as PyTorch does.
    """

    def default_output_size(self, height, width):
        """(H, W) = (OH - 1) s - 2p + k per axis: the size of the pooled image (a transposed convolution's)."""
        return tuple(conv_maths.conv_transpose_output_size(size, k, s, p) for size, k, s, p in
                     zip((height, width), self.kernel_size, self.stride, self.padding))

    def forward(self, y, indices, output_size=None):
        name = type(self).__name__
        check_input(self, y, 4, what="(N, C, OH, OW)")
        xp = get_array_module(y)
        if tuple(getattr(indices, "shape", ())) != tuple(y.shape):
            raise ValueError(f"{name}: indices must have the shape of the input {tuple(y.shape)}, "
                             f"got shape {tuple(getattr(indices, 'shape', ()))}")
        n, c, oh, ow = y.shape
        default = self.default_output_size(oh, ow)
        if output_size is None:
            h, w = default
        else:
            h, w = (int(size) for size in tuple(output_size)[-2:])
            if len(tuple(output_size)) not in (2, 4):
                raise ValueError(f"{name}: output_size must be (H, W) or (N, C, H, W), got {tuple(output_size)}")
            low = tuple(d - s for d, s in zip(default, self.stride))
            high = tuple(d + s for d, s in zip(default, self.stride))
            if not (low[0] < h < high[0] and low[1] < w < high[1]):
                raise ValueError(f"{name}: output_size {(h, w)} is not between {low} and {high} (exclusive) "
                                 f"for an input of shape {tuple(y.shape)}")
        if h < 1 or w < 1:
            raise ValueError(f"{name}: the input of shape {tuple(y.shape)} gives an empty output {h}x{w}")
        if indices.size:   # both bounds in one fetch: on the GPU each would be a wait for the device
            low, high = (int(v) for v in backend.fetch_scalars([indices.min(), indices.max()]))
            if low < 0 or high >= h * w:
                raise ValueError(f"{name}: indices must lie in [0, {h * w}) for an output plane of {h}x{w}, got "
                                 f"values in [{low}, {high}]")
        flat = flat_indices(xp.asarray(indices), h * w)
        x = xp.zeros(n * c * h * w, dtype=y.dtype)
        x[flat] = y.reshape(-1)
        self.save_for_backward(flat=flat, y_shape=tuple(y.shape), x_shape=(n, c, h, w))
        return x.reshape(n, c, h, w)

    def backward(self, dx):
        saved = self.saved_for_backward()
        check_grad(self, dx, saved.x_shape)
        return dx.reshape(-1)[saved.flat].reshape(saved.y_shape)


class Unpool2d(_Pool2d):
    """Upsamples without indices (for generators): each value fills its (kh, kw) block of the output.

    Args:
        kernel_size: the block size, an int or a pair (default 2).
        stride: block spacing, an int or a pair >= kernel_size; None (default) means kernel_size.
        mode: "zeros" puts each value at the top-left of its block and zeros elsewhere;
            "nearest" repeats it over the whole block.

    Shape:
        x: (N, C, H, W) -> y: (N, C, OH, OW), OH = (H - 1) s_h + k_h (H k_h when stride = kernel).

    Backward: "zeros" reads dy at each block's top-left; "nearest" sums dy over each block.
    """

    MODES = ("zeros", "nearest")

    def __init__(self, kernel_size=2, stride=None, mode="zeros"):
        super().__init__(kernel_size, stride, 0)
        if mode not in self.MODES:
            raise ValueError(f"Unpool2d: mode must be one of {self.MODES}, got {mode!r}")
        if any(s < k for s, k in zip(self.stride, self.kernel_size)):
            raise ValueError(f"Unpool2d: stride {self.stride} must be >= kernel_size {self.kernel_size} "
                             f"(blocks must not overlap)")
        self.mode = mode

    def output_size(self, height, width):
        """(H, W) = (h - 1) s + k per axis: a transposed convolution's size without padding."""
        return tuple(conv_maths.conv_transpose_output_size(size, k, s, 0) for size, k, s in
                     zip((height, width), self.kernel_size, self.stride))

    def fused_with(self, following):
        """Inside a Sequential: with mode "nearest", a "same" stride-1 convolution right after this
        layer runs with it on the small image (layers/resize_conv.py); None otherwise."""
        return resize_conv.ResizeConvolution(self, following) if resize_conv.fuses(self, following) else None

    def forward(self, x):
        check_input(self, x, 4, what="(N, C, H, W)")
        xp = get_array_module(x)
        n, c, h, w = x.shape
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        # one (sh, sw) cell per input pixel; the block is its top-left (kh, kw) corner
        if self.mode == "nearest" and (kh, kw) == (sh, sw):
            # blocks fill their cells: widen each row (runs of kw), then repeat the widened rows
            # (runs of w * kw): 4x faster than one broadcast into the (N, C, H, kh, W, kw) view;
            # split over the samples (nnbox.parallel)
            wide = xp.empty((n, c, h, w, sw), dtype=x.dtype)
            cells = xp.empty((n, c, h, sh, w, sw), dtype=x.dtype)

            def fill(a, b):
                wide[a:b] = x[a:b, ..., None]
                cells[a:b] = wide[a:b, :, :, None]

            parallel.run(n, fill, size=cells.size, xp=xp)
        else:
            cells = xp.zeros((n, c, h, sh, w, sw), dtype=x.dtype)
            if self.mode == "zeros":
                cells[:, :, :, 0, :, 0] = x
            else:
                cells[:, :, :, :kh, :, :kw] = x[:, :, :, None, :, None]
        out_h, out_w = self.output_size(h, w)
        self.save_for_backward(x_shape=tuple(x.shape))
        y = cells.reshape(n, c, h * sh, w * sw)
        if (out_h, out_w) == (h * sh, w * sw):
            return y
        return xp.ascontiguousarray(y[:, :, :out_h, :out_w])

    def backward(self, dy):
        saved = self.saved_for_backward()
        n, c, h, w = saved.x_shape
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        check_grad(self, dy, (n, c) + self.output_size(h, w))
        xp = get_array_module(dy)
        if dy.shape[2:] != (h * sh, w * sw):  # the last cells were cropped: they had zero gradient
            full = xp.zeros((n, c, h * sh, w * sw), dtype=dy.dtype)
            full[:, :, :dy.shape[2], :dy.shape[3]] = dy
            dy = full
        cells = dy.reshape(n, c, h, sh, w, sw)
        if self.mode == "zeros":
            return xp.ascontiguousarray(cells[:, :, :, 0, :, 0])
        # the block sums as kh + kw - 2 adds of views (a reduction over the two short strided
        # axes, .sum(axis=(3, 5)), is 10x slower): first across each block's columns, then rows;
        # split over the samples (nnbox.parallel)
        dx = xp.empty((n, c, h, w), dtype=dy.dtype)

        def block_sums(a, b):
            across = conv_maths.sum_views([cells[a:b, :, :, :kh, :, j] for j in range(kw)])
            dx[a:b] = conv_maths.sum_views([across[:, :, :, i] for i in range(kh)])

        parallel.run(n, block_sums, size=cells.size, xp=xp)
        return dx

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, mode={self.mode!r}"


class AvgPool2d(_Pool2d):
    """Takes the mean of each (kh, kw) window.

    Args:
        kernel_size: an int or a pair (height, width).
        stride: an int or a pair; None (default) means kernel_size.
        padding: implicit zero padding on both sides, at most half the kernel.
        count_include_pad: divide by kh * kw even where the window covers padding (default True,
            as PyTorch); False divides by the number of real pixels in the window.

    Shape:
        x: (N, C, H, W) -> y: (N, C, OH, OW), OH = floor((H + 2p - k_h) / s_h) + 1.

    Backward: every pixel of a window receives dy / divisor of that window (summed over the
    windows that contain it).
    """

    def __init__(self, kernel_size, stride=None, padding=0, count_include_pad=True):
        super().__init__(kernel_size, stride, padding)
        self.count_include_pad = count_include_pad

    def _divisor(self, xp, image_size, out_size, dtype):
        """kh * kw, or (OH, OW) counts of real pixels when padding is excluded."""
        if self.count_include_pad or self.padding == (0, 0):
            return float(math.prod(self.kernel_size))
        ones = conv_maths.pad2d(xp.ones((1, 1) + tuple(image_size), dtype=dtype), self.padding)
        return conv_maths.window_sum(ones, self.kernel_size, self.stride, out_size)[0, 0]

    def forward(self, x):
        out_size = self._check(x)
        xp = get_array_module(x)
        padded = conv_maths.pad2d(x, self.padding)
        divisor = self._divisor(xp, x.shape[2:], out_size, x.dtype)
        y = conv_maths.window_sum(padded, self.kernel_size, self.stride, out_size)
        y /= divisor
        self.save_for_backward(x_shape=tuple(x.shape), divisor=divisor)
        return y

    def backward(self, dy):
        saved = self.saved_for_backward()
        n, c, h, w = saved.x_shape
        check_grad(self, dy, (n, c) + self.output_size(h, w))
        return conv_maths.window_spread(dy / saved.divisor, saved.x_shape, self.kernel_size, self.stride,
                                        self.padding, dy.shape[2:])

    def extra_repr(self):
        return super().extra_repr() + f", count_include_pad={self.count_include_pad}"
