"""Nearest-neighbour upsampling followed by a "same" convolution, computed on the small image.

`Unpool2d(s, mode="nearest")` then a stride-1 `Conv2d` or `ConvTranspose2d` with an odd kernel
k and padding (k - 1) / 2 (the faces generator's blocks; a "resize-convolution") is run by
`Sequential` as one step, `ResizeConvolution`, with the same parameters and the same result up
to rounding. Written as a convolution of the upsampled image u with kernel K (O, C, k, k) and
padding q = (k - 1) / 2 (a transposed convolution is one with K = W flipped, in and out swapped):

    y[o, Y, X] = b[o] + sum_{c, i, j} K[o, c, i, j] u[c, Y - q + i, X - q + j],   u[c, Y, X] = x[c, Y // s, X // s]

Output row Y = s h + a (phase a < s) reads x's rows h + floor((a - q + i) / s): for each phase
only T distinct rows (T = 2 for k = 3, s = 2), lo_a + t for t < T. So phase (a, b) of y is a
T x T convolution of x itself, with taps that are sums of K's:

    V[a, b][o, c, t, u] = sum of K[o, c, i, j] over i with floor((a - q + i) / s) = lo_a + t
                                                and j with floor((b - q + j) / s) = lo_b + u

All phases read T x T windows of x padded by P, the window of phase a starting lo_a rows from
the pixel: ONE im2col of x (kernel T, padding P, output Hc x Wc), ONE product with the s*s phase
kernels stacked, and each phase's pixels picked from its rows of the product. For k = 3, s = 2
that is 16 instead of 36 multiply-adds per small pixel (2.25x fewer, less the border of the
Hc x Wc = (H + 1) x (W + 1) grid), and neither the upsampled image nor its 9x larger im2col is made.

Backward: dy's phases go back into that grid (zeros at the border), then the same three products
as a convolution's (conv.py): dV = dY cols^T (folded back onto K's taps: dK = S_a^T dV S_b),
dcols = V^T dY (col2im gives dx), db = the sum of dy.
"""
import functools
from collections import namedtuple

import numpy as np

from nnbox import parallel, workspace
from nnbox.backend import get_array_module

from . import conv_maths
from ._checks import check_grad, check_input
from .conv import Conv2d, ConvTranspose2d, _matmul

# run the pair as written when the fused product would save less than this factor of
# multiply-adds (small maps, where the grid's border costs most). Measured forward + backward at
# batch 64, 256 -> 128 channels, 3x3 kernel, on 2 cores: 2x2 inputs (factor 1.0) 11.1 -> 16.9 ms,
# 3x3 (1.27) 21.6 -> 23.8 ms, 4x4 (1.44) 36.7 -> 32.7 ms, 8x8 (1.78) 152.9 -> 86.5 ms
MIN_SAVING = 1.4


def fuses(unpool, conv):
    """Whether `Unpool2d` `unpool` followed by `conv` can run as a ResizeConvolution."""
    if unpool.mode != "nearest" or unpool.kernel_size != unpool.stride or type(conv) not in (Conv2d, ConvTranspose2d):
        return False
    same = tuple((k - 1) // 2 for k in conv.kernel_size)
    return (all(k % 2 == 1 for k in conv.kernel_size) and conv.padding == same and conv.stride == (1, 1)
            and conv.dilation == (1, 1) and conv.output_padding == (0, 0))


PhaseTaps = namedtuple("PhaseTaps", "lo window padding sums")
# what a fused forward keeps for its backward: the small image's shape, its im2col (None for a frozen
# conv), the stacked phase kernels, each axis's PhaseTaps and the (H+1) x (W+1)-like grid of windows
FusedSaved = namedtuple("FusedSaved", "x_shape cols phase_kernels rows columns grid")


@functools.lru_cache(maxsize=32)
def phase_taps(kernel, scale):
    """For one axis, PhaseTaps: phase a's first row offset lo[a], the window T, the padding P that
    keeps every window inside the padded image, and sums S (scale * T, kernel), S[a * T + t, i] = 1
    where tap i of the kernel reads row lo[a] + t of the small image in phase a."""
    q = (kernel - 1) // 2
    offsets = [[(a - q + i) // scale for i in range(kernel)] for a in range(scale)]
    lo = tuple(min(row) for row in offsets)
    window = max(max(row) - min(row) + 1 for row in offsets)
    padding = max(max(-first for first in lo), max(first + window - 1 for first in lo))
    sums = np.zeros((scale * window, kernel))
    for a, row in enumerate(offsets):
        for i, offset in enumerate(row):
            sums[a * window + offset - lo[a], i] = 1
    return PhaseTaps(lo, window, padding, sums)


@functools.lru_cache(maxsize=32)
def _fold_matrix(xp, dtype, kernel, scale):
    """np.kron of the two axes' S, transposed, on xp's device (made once: no upload per step)."""
    rows, columns = phase_taps(kernel[0], scale[0]), phase_taps(kernel[1], scale[1])
    return xp.asarray(np.kron(rows.sums, columns.sums).T.astype(dtype))


class ResizeConvolution:
    """One step of a Sequential standing for its children `unpool` and `conv` (see the module
    docstring): forward, backward and backward_parameters as the pair's, parameters the conv's.
    Its saved state lives as long as the Sequential's (`Module.clear_saved` frees it)."""

    def __init__(self, unpool, conv):
        self.unpool, self.conv = unpool, conv
        self.saved = None

    def parameters(self):
        return self.conv.parameters()

    def __call__(self, x):
        return self.forward(x)

    # ---------------------------------------------------------------- geometry and kernels
    def _plan(self, x):
        """(rows, columns: the PhaseTaps of each axis; the Hc x Wc grid of windows im2col makes;
        the factor by which the fused product does fewer multiply-adds than the pair)."""
        (kh, kw), (sh, sw) = self.conv.kernel_size, self.unpool.kernel_size
        rows, columns = phase_taps(kh, sh), phase_taps(kw, sw)
        h, w = x.shape[2:]
        grid = (h + 2 * rows.padding - rows.window + 1, w + 2 * columns.padding - columns.window + 1)
        saving = (kh * kw * h * w) / (rows.window * columns.window * grid[0] * grid[1])
        return rows, columns, grid, saving

    def _kernel(self):
        """K (O, C, kh, kw), the kernel of the convolution of the upsampled image."""
        weight = self.conv.weight.data
        return weight.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1] if self.conv.transposed else weight

    def _fold(self, xp, dtype):
        """M (kh * kw, sh * Th * sw * Tw): K2 @ M sums K's taps into every phase kernel."""
        return _fold_matrix(xp, np.dtype(dtype).str, self.conv.kernel_size, self.unpool.kernel_size)

    def _phase_kernels(self, rows, columns):
        """V stacked (sh * sw * O, C * Th * Tw), rows ordered (a, b, o)."""
        kernel = self._kernel()
        xp = get_array_module(kernel)
        o, c, kh, kw = kernel.shape
        (sh, sw), th, tw = self.unpool.kernel_size, rows.window, columns.window
        folded = xp.ascontiguousarray(kernel).reshape(o * c, kh * kw) @ self._fold(xp, kernel.dtype)
        stacked = folded.reshape(o, c, sh, th, sw, tw).transpose(2, 4, 0, 1, 3, 5)
        return xp.ascontiguousarray(stacked).reshape(sh * sw * o, c * th * tw)

    def _phases(self, rows, columns, size):
        """(a, b, row slice, column slice): where phase (a, b)'s pixels sit in the Hc x Wc grid."""
        (sh, sw), (h, w) = self.unpool.kernel_size, size
        for a in range(sh):
            r0 = rows.lo[a] + rows.padding
            for b in range(sw):
                c0 = columns.lo[b] + columns.padding
                yield a, b, slice(r0, r0 + h), slice(c0, c0 + w)

    # ---------------------------------------------------------------- forward / backward
    def forward(self, x):
        """x (N, C, H, W) -> y (N, O, s_h H, s_w W), what conv(unpool(x)) gives."""
        check_input(self.unpool, x, 4, what="(N, C, H, W)")
        check_input(self.conv, x, 4, self.conv.in_channels, what="(N, C, H, W)")
        rows, columns, grid, saving = self._plan(x)
        if saving < MIN_SAVING:   # small maps: the pair as written
            self.saved = None
            return self.conv(self.unpool(x))
        xp = get_array_module(x)
        n, _, h, w = x.shape
        (sh, sw), o = self.unpool.kernel_size, self.conv.out_channels
        phase_kernels = self._phase_kernels(rows, columns)
        window, padding = (rows.window, columns.window), (rows.padding, columns.padding)
        cols = conv_maths.im2col(x, window, (1, 1), padding, (1, 1), grid)
        product = _matmul(phase_kernels, cols).reshape((sh, sw, o, n) + grid)
        # the product's dtype, as the unfused conv gives (float32 x with float64 weights: float64)
        y = workspace.empty((n, o, h * sh, w * sw), product.dtype, xp)
        bias = None if self.conv.bias is None else self.conv.bias.data.astype(y.dtype, copy=False).reshape(1, o, 1, 1)

        def write(first, last):   # each phase's pixels into every s-th row and column of y
            for a, b, phase_rows, phase_columns in self._phases(rows, columns, (h, w)):
                phase = product[a, b, :, first:last, phase_rows, phase_columns].transpose(1, 0, 2, 3)
                target = y[first:last, :, a::sh, b::sw]
                if bias is None:
                    target[...] = phase
                else:
                    xp.add(phase, bias, out=target)

        parallel.run(n, write, size=y.size, xp=xp)
        self.saved = FusedSaved(tuple(x.shape), cols if self.conv.weight.requires_grad else None, phase_kernels,
                                rows, columns, grid)
        return y

    def backward(self, dy):
        return self._backward(dy, input_grad=True)

    def backward_parameters(self, dy):
        """The conv's gradients only (the unpooling before it has no parameters)."""
        self._backward(dy, input_grad=False)

    def _backward(self, dy, input_grad):
        if self.saved is None:   # forward ran the pair as written
            if input_grad:
                return self.unpool.backward(self.conv.backward(dy))
            return self.conv.backward_parameters(dy)
        saved = self.saved
        rows, columns, grid, cols = saved.rows, saved.columns, saved.grid, saved.cols
        n, c, h, w = saved.x_shape
        (sh, sw), o = self.unpool.kernel_size, self.conv.out_channels
        check_grad(self.conv, dy, (n, o, h * sh, w * sw))
        xp = get_array_module(dy)
        grid_grad = workspace.zeros((sh, sw, o, n) + grid, dy.dtype, xp)

        def gather(first, last):   # dy's phases back into the grid; its border stays zero
            for a, b, phase_rows, phase_columns in self._phases(rows, columns, (h, w)):
                grid_grad[a, b, :, first:last, phase_rows, phase_columns] = \
                    dy[first:last, :, a::sh, b::sw].transpose(1, 0, 2, 3)

        parallel.run(n, gather, size=dy.size, xp=xp)
        grid_grad = grid_grad.reshape(sh * sw * o, -1)
        if cols is not None:   # dV = dY cols^T, folded back onto the kernel's taps
            th, tw = rows.window, columns.window
            phase_grad = _matmul(grid_grad, cols.T).reshape(sh, sw, o, c, th, tw).transpose(2, 3, 0, 4, 1, 5)
            kh, kw = self.conv.kernel_size
            kernel_grad = (xp.ascontiguousarray(phase_grad).reshape(o * c, -1)
                           @ self._fold(xp, dy.dtype).T).reshape(o, c, kh, kw)
            if self.conv.transposed:
                kernel_grad = kernel_grad[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)
            self.conv.weight.grad += kernel_grad
        self.conv._accumulate_bias_grad(dy)
        if not input_grad:
            return None
        return conv_maths.col2im(_matmul(saved.phase_kernels.T, grid_grad), saved.x_shape,
                                 (rows.window, columns.window), (1, 1), (rows.padding, columns.padding), (1, 1), grid)
