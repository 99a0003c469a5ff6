"""2-D convolution and transposed convolution (the adjoint of convolution), on NCHW arrays.

Both layers share one base class and the arithmetic of `conv_maths`. A convolution maps a
"large" image to a "small" one; its weight is stored as (small channels, large channels, kh, kw)
in both layers, which is why PyTorch's Conv2d weight is (out, in, kh, kw) and its
ConvTranspose2d weight is (in, out, kh, kw). With W2 = weight.reshape(small channels, -1):

    convolve:          small = W2 @ im2col(large)              (Conv2d forward)
    adjoint:           large = col2im(W2^T @ small)             (ConvTranspose2d forward)
    weight gradient:   dW2   = small_gradient @ im2col(large)^T  (both)

Conv2d's backward is the adjoint (for dx); ConvTranspose2d's backward is the convolution (for dx).
"""

import numpy as np

from nnbox import init, workspace
from nnbox.backend import get_array_module
from nnbox.module import Module, Parameter

from . import conv_maths
from ._checks import check_grad, check_input, is_whole_number


def _matmul(a, b):
    """a @ b, into a recycled array (nnbox.workspace): these products are the largest arrays of a step."""
    xp = get_array_module(a, b)
    out = workspace.empty((a.shape[0], b.shape[1]), xp.result_type(a, b), xp)
    if a.shape[1] == 1:
        # an outer product (inner dimension 1: one channel on the layer's small side, e.g. the adjoint of
        # the DCGAN D's last layer): OpenBLAS's sgemm takes 2.6x as long as the broadcast multiply, whose
        # result is the same bit for bit ((2048, 1) @ (1, 64): 174 against 61 us)
        return xp.multiply(a, b, out=out)
    return xp.matmul(a, b, out=out)


class _ConvNd(Module):
    """What Conv2d and ConvTranspose2d share: the geometry, the parameters and the three products."""

    transposed = False

    def __init__(self, in_channels, out_channels, kernel_size, stride, padding, dilation,
                 output_padding, bias, rng, dtype):
        super().__init__()
        name = type(self).__name__
        for label, value in (("in_channels", in_channels), ("out_channels", out_channels)):
            if not is_whole_number(value):
                raise ValueError(f"{name}: {label} must be an integer, got {value!r}")
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.kernel_size = conv_maths.pair(kernel_size, f"{name}: kernel_size")
        self.stride = conv_maths.pair(stride, f"{name}: stride")
        self.dilation = conv_maths.pair(dilation, f"{name}: dilation")
        self.padding = (self._named_padding(padding) if isinstance(padding, str)
                        else conv_maths.pair(padding, f"{name}: padding"))
        self.output_padding = conv_maths.pair(output_padding, f"{name}: output_padding")
        for label, value, low in (("in_channels", (self.in_channels,), 1), ("out_channels", (self.out_channels,), 1),
                                  ("kernel_size", self.kernel_size, 1), ("stride", self.stride, 1),
                                  ("padding", self.padding, 0), ("dilation", self.dilation, 1),
                                  ("output_padding", self.output_padding, 0)):
            if min(value) < low:
                raise ValueError(f"{name}: {label} must be >= {low}, got {value if len(value) > 1 else value[0]}")
        kh, kw = self.kernel_size
        if self.transposed:
            # the small side of the convolution is this layer's input
            small, large = self.in_channels, self.out_channels
        else:
            small, large = self.out_channels, self.in_channels
        # PyTorch's fan_in is weight.shape[1] * kh * kw for both layers
        weight, bias_data = init.default_weight_and_bias(
            (small, large, kh, kw), large * kh * kw, self.out_channels if bias else None, rng, dtype)
        self.weight = Parameter(weight)
        self.bias = Parameter(bias_data) if bias else None

    def _named_padding(self, padding):
        """PyTorch's padding strings, for Conv2d: 'valid' is no padding; 'same' keeps the size at
        stride 1, padding d (k - 1) / 2 on each side (nnbox pads both sides alike, so d (k - 1) must
        be even: an odd kernel, or an even one with an even dilation)."""
        name = type(self).__name__
        if self.transposed or padding not in ("same", "valid"):
            allowed = "an integer or a pair" + ("" if self.transposed else ", 'same' or 'valid'")
            raise ValueError(f"{name}: padding must be {allowed}, got {padding!r}")
        if padding == "valid":
            return 0, 0
        spans = [d * (k - 1) for d, k in zip(self.dilation, self.kernel_size)]
        if self.stride != (1, 1):
            raise ValueError(f"{name}: padding='same' needs stride 1 (as in PyTorch), got stride={self.stride}")
        if any(span % 2 for span in spans):
            raise ValueError(f"{name}: padding='same' with kernel_size={self.kernel_size} and dilation="
                             f"{self.dilation} would need one more row or column of zeros on one side, and "
                             f"nnbox pads both sides alike; use an odd kernel size, or pad the input yourself")
        return spans[0] // 2, spans[1] // 2

    # ------------------------------------------------------------------ the shared maths
    def _geometry(self):
        return self.kernel_size, self.stride, self.padding, self.dilation

    def _convolve(self, large, small_size, batch_last=False):
        """large (N, C_large, H, W) -> (W2 @ cols as (C_small, N * OH * OW), cols); with batch_last
        the columns are ordered (OH, OW, N) (conv_maths.batch_last_layout)."""
        cols = conv_maths.im2col(large, *self._geometry(), small_size, batch_last=batch_last)
        w2 = self.weight.data.reshape(self.weight.data.shape[0], -1)
        # One order for every shape: computing the product transposed (cols^T W2^T, returned as a
        # transposed view) for 256+ output rows was faster with the OpenBLAS of the first round,
        # but with OpenBLAS 0.3.31 the plain product is as fast or faster, and its contiguous result
        # makes from_channel_major 2-5x cheaper (D.conv3 of the 64x64 DCGAN, batch 64, forward
        # 27.5 -> 20.8 ms on 2 threads, 59.7 -> 46.2 ms on one)
        return _matmul(w2, cols), cols

    def _convolve_adjoint(self, small_matrix, large_shape, small_size, batch_last=False):
        """small_matrix (C_small, N * OH * OW) -> the large image col2im(W2^T @ small_matrix)."""
        w2 = self.weight.data.reshape(self.weight.data.shape[0], -1)
        return conv_maths.col2im(_matmul(w2.T, small_matrix), large_shape, *self._geometry(), small_size,
                                 batch_last=batch_last)

    def _accumulate_weight_grad(self, small_matrix, cols):
        """weight.grad += small_matrix @ cols^T (when the weight is trainable)."""
        if self.weight.requires_grad:
            # Both operands share the long inner axis N*OH*OW. With one thread OpenBLAS was several
            # times faster when the operand with more rows comes first (batch 64: D.conv2 64 ms
            # against 420 ms, G.convT5 40 ms against 1700 ms). But that order gives dW transposed,
            # and adding a (C_small, K) transpose with C_small >= 256 reads memory 1-2 KiB apart:
            # 16 ms of D.conv4's 29 ms (batch 64, 2 threads), while the product in dW's own order
            # takes as long as the other. So the small operand comes first from 256 rows on.
            small_rows = small_matrix.shape[0]
            if cols.shape[0] >= small_rows and small_rows < 256:
                grad = (cols @ small_matrix.T).T
            else:
                grad = small_matrix @ cols.T
            self.weight.grad += grad.reshape(self.weight.grad.shape)

    def _accumulate_bias_grad(self, dy):
        if self.bias is not None and self.bias.requires_grad:
            self.bias.grad += dy.sum(axis=(0, 2, 3))

    def extra_repr(self):
        text = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}")
        if self.transposed and self.output_padding != (0, 0):
            text += f", output_padding={self.output_padding}"
        if self.dilation != (1, 1):
            text += f", dilation={self.dilation}"
        return text + f", bias={self.bias is not None}"


class Conv2d(_ConvNd):
    """Applies a 2-D convolution (cross-correlation, as PyTorch) to an NCHW batch.

    y[n, o, oh, ow] = b[o] + sum_{c, i, j} W[o, c, i, j] * x_pad[n, c, oh*s_h + i*d_h, ow*s_w + j*d_w]

    Args:
        in_channels, out_channels: channels of x and y.
        kernel_size, stride, padding, dilation: an int or a pair (height, width).
            Padding is with zeros on both sides; padding='same' (stride 1, d (k - 1) even) keeps
            the size, padding='valid' is 0, as in PyTorch.
        bias: learn an additive per-channel bias (default True).
        rng: NumPy generator or seed for the initial weights (PyTorch's default scheme).
        dtype: of the parameters (float32).

    Shape:
        x: (N, in_channels, H, W) -> y: (N, out_channels, OH, OW) with
        OH = floor((H + 2 p_h - d_h (k_h - 1) - 1) / s_h) + 1 (and OW alike).
        weight: (out_channels, in_channels, k_h, k_w); bias: (out_channels,).

    Backward, with cols = im2col(x) (in_channels*k_h*k_w, N*OH*OW), W2 = W.reshape(out, -1),
    dY = dy as (out_channels, N*OH*OW):
        dW += dY cols^T,  db += sum_{n,oh,ow} dy,  dx = col2im(W2^T dY)  (col2im is im2col's adjoint)
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 bias=True, rng=None, dtype=init.DEFAULT_DTYPE):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, 0, bias, rng, dtype)

    def output_size(self, height, width):
        """(OH, OW) for an input of (height, width)."""
        return tuple(conv_maths.conv_output_size(size, k, s, p, d) for size, k, s, p, d in
                     zip((height, width), self.kernel_size, self.stride, self.padding, self.dilation))

    def _check(self, x):
        check_input(self, x, 4, self.in_channels, what="(N, C, H, W)")
        conv_maths.check_window_fits(self, x, self.kernel_size, self.padding, self.dilation, self.in_channels)

    def forward(self, x):
        self._check(x)
        n = x.shape[0]
        out_size = self.output_size(*x.shape[2:])
        batch_last = conv_maths.batch_last_layout(out_size)
        y_matrix, cols = self._convolve(x, out_size, batch_last)
        bias = None if self.bias is None else self.bias.data
        # The weight gradient needs cols (a frozen D in a generator step keeps nothing). NumPy keeps
        # them: rebuilding would add a memory-bound copy per layer to the CPU's step. CuPy keeps x
        # and rebuilds cols in backward with one kernel: cols are k_h k_w / (s_h s_w) times x's size
        # (4x for the DCGAN's 4x4 stride-2 layers), most of the memory a GPU step holds.
        keep_cols = self.weight.requires_grad and get_array_module(x) is np
        keep_x = self.weight.requires_grad and not keep_cols
        self.save_for_backward(cols=cols if keep_cols else None, x=x if keep_x else None,
                               x_shape=tuple(x.shape), out_size=out_size)
        return conv_maths.from_channel_major(y_matrix, (n, self.out_channels) + out_size, bias, batch_last)

    def backward(self, dy):
        saved, dy_matrix, batch_last = self._parameter_grads(dy)
        return self._convolve_adjoint(dy_matrix, saved.x_shape, saved.out_size, batch_last)

    def backward_parameters(self, dy):
        """dW and db only: no W2^T dY product, no col2im."""
        self._parameter_grads(dy)

    def _parameter_grads(self, dy):
        saved = self.saved_for_backward()
        n = saved.x_shape[0]
        check_grad(self, dy, (n, self.out_channels) + saved.out_size)
        batch_last = conv_maths.batch_last_layout(saved.out_size)
        dy_matrix = conv_maths.to_channel_major(dy, batch_last)
        if saved.cols is not None:
            self._accumulate_weight_grad(dy_matrix, saved.cols)
        elif saved.x is not None:
            cols = conv_maths.im2col(saved.x, *self._geometry(), saved.out_size, batch_last=batch_last)
            self._accumulate_weight_grad(dy_matrix, cols)
        self._accumulate_bias_grad(dy)
        return saved, dy_matrix, batch_last


class ConvTranspose2d(_ConvNd):
    """Applies a 2-D transposed convolution: the adjoint of Conv2d (the gradient of a Conv2d with
    respect to its input), used by generators to upsample.

    y = col2im(W2^T x) + b, where W2 = W.reshape(in_channels, -1): every input pixel adds its
    kernel-weighted values into a kh x kw block of the output, blocks `stride` apart.

    Args:
        in_channels, out_channels: channels of x and y.
        kernel_size, stride, padding, dilation: an int or a pair (height, width), with the meaning
            they have for the Conv2d this layer is the adjoint of (padding crops the output).
        output_padding: extra rows/columns added at the bottom/right of the output, to pick among
            the output sizes that a stride > 1 convolution maps to the same input size; must be
            smaller than the stride or the dilation.
        bias: learn an additive per-channel bias (default True).
        rng, dtype: as Conv2d.

    Shape:
        x: (N, in_channels, H, W) -> y: (N, out_channels, OH, OW) with
        OH = (H - 1) s_h - 2 p_h + d_h (k_h - 1) + output_padding_h + 1 (and OW alike).
        weight: (in_channels, out_channels, k_h, k_w); bias: (out_channels,).

    Backward is Conv2d's forward: with cols = im2col(dy) (out_channels*k_h*k_w, N*H*W) and
    X = x as (in_channels, N*H*W):
        dW += X cols^T,  db += sum_{n,oh,ow} dy,  dx = W2 cols  (as (N, in_channels, H, W))
    """

    transposed = True

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, output_padding=0,
                 dilation=1, bias=True, rng=None, dtype=init.DEFAULT_DTYPE):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, output_padding,
                         bias, rng, dtype)
        for axis, (op, s, d) in enumerate(zip(self.output_padding, self.stride, self.dilation)):
            if op >= s and op >= d:
                raise ValueError(
                    f"ConvTranspose2d: output_padding must be smaller than either stride or dilation "
                    f"(axis {'hw'[axis]}): got output_padding={self.output_padding}, stride={self.stride}, "
                    f"dilation={self.dilation}")

    def output_size(self, height, width):
        """(OH, OW) for an input of (height, width)."""
        return tuple(conv_maths.conv_transpose_output_size(size, k, s, p, op, d) for size, k, s, p, op, d in
                     zip((height, width), self.kernel_size, self.stride, self.padding, self.output_padding,
                         self.dilation))

    def _check(self, x):
        check_input(self, x, 4, self.in_channels, what="(N, C, H, W)")
        out = self.output_size(*x.shape[2:])
        if min(out) < 1:
            raise ValueError(
                f"{type(self).__name__}: the input image {x.shape[2]}x{x.shape[3]} gives an empty output "
                f"{out[0]}x{out[1]} with kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}: the padding crops more than the "
                f"output has; got input shape {tuple(x.shape)}")
        return out

    def forward(self, x):
        out_size = self._check(x)
        n, _, h, w = x.shape
        batch_last = conv_maths.batch_last_layout((h, w))
        x_matrix = conv_maths.to_channel_major(x, batch_last)
        y = self._convolve_adjoint(x_matrix, (n, self.out_channels) + out_size, (h, w), batch_last)
        if self.bias is not None:
            y += self.bias.data.reshape(1, -1, 1, 1)
        self.save_for_backward(x_matrix=x_matrix if self.weight.requires_grad else None,
                               x_shape=tuple(x.shape), out_size=out_size)
        return y

    def backward(self, dy):
        saved = self.saved_for_backward()
        n, _, h, w = saved.x_shape
        check_grad(self, dy, (n, self.out_channels) + saved.out_size)
        batch_last = conv_maths.batch_last_layout((h, w))
        dx_matrix, cols = self._convolve(dy, (h, w), batch_last)
        if saved.x_matrix is not None:
            self._accumulate_weight_grad(saved.x_matrix, cols)
        self._accumulate_bias_grad(dy)
        return conv_maths.from_channel_major(dx_matrix, saved.x_shape, None, batch_last)

    def backward_parameters(self, dy):
        """dW and db only: im2col(dy) without the W2 cols product."""
        saved = self.saved_for_backward()
        n, _, h, w = saved.x_shape
        check_grad(self, dy, (n, self.out_channels) + saved.out_size)
        if saved.x_matrix is not None:
            cols = conv_maths.im2col(dy, *self._geometry(), (h, w), batch_last=conv_maths.batch_last_layout((h, w)))
            self._accumulate_weight_grad(saved.x_matrix, cols)
        self._accumulate_bias_grad(dy)
