"""The convolution arithmetic, written once: output sizes, padding, im2col and its adjoint col2im.

Conv2d, ConvTranspose2d, the pooling layers and their backward passes all use these.

Layout. A 2-D convolution of x (N, C, H, W) with a kernel (kh, kw), stride s, padding p and
dilation d reads, for output pixel (oh, ow) and kernel offset (i, j), the padded input at

    row = oh * s_h + i * d_h,   col = ow * s_w + j * d_w.

`im2col` gathers those reads, with one contiguous copy of a sliding-window view, into the
channel-major matrix

    cols[(c, i, j), (n, oh, ow)]        shape (C * kh * kw, N * OH * OW)

so that a convolution with a weight W (O, C, kh, kw) is ONE matrix product,
W.reshape(O, -1) @ cols -> (O, N * OH * OW), and both gradients are single products too.
The innermost axis (ow) of the copy reads the input with a constant stride, which keeps the
gather fast.

The columns may instead be ordered (oh, ow, n), "batch last": cols[(c, i, j), (oh, ow, n)].
The products are the same; only the copies change, whose innermost runs become N values long
instead of OW, much faster for small maps (`batch_last_layout` decides; the layers convert with
`to_channel_major` / `from_channel_major` and pass the same flag to im2col and col2im).

`col2im` is the adjoint (transpose) of `im2col`: it adds every column entry back onto the input
pixel it was read from. It is done as kh * kw slice-adds, one per kernel offset, grouped by
stride phase so that each add is unit-stride (no scatter-add, no loop over the batch or pixels),
then the padding is cropped away. On the GPU, where every slice-add is a kernel launch, col2im is
instead a gather (`col2im_gather`): each input pixel reads its few column entries at once.
"""
import functools
import math

import numpy as np

from nnbox import gpu_kernels, parallel, workspace
from nnbox.backend import get_array_module

from ._checks import is_whole_number


def pair(value, name="value"):
    """An integer or a pair of integers -> a pair (height, width); `name` is used in the error."""
    values = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if len(values) != 2 or not all(is_whole_number(v) for v in values):
        raise ValueError(f"{name} must be an integer or a pair of integers (height, width), got {value!r}")
    return int(values[0]), int(values[1])


def conv_output_size(size, kernel, stride, padding, dilation=1):
    """Output length of a convolution along one axis: floor((size + 2p - d(k-1) - 1) / s) + 1."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def conv_transpose_output_size(size, kernel, stride, padding, output_padding=0, dilation=1):
    """Output length of a transposed convolution along one axis:
    (size - 1) * s - 2p + d(k-1) + output_padding + 1."""
    return (size - 1) * stride - 2 * padding + dilation * (kernel - 1) + output_padding + 1


def check_window_fits(layer, x, kernel, padding, dilation=(1, 1), channels="C"):
    """Raise ValueError unless one (dilated) kernel window fits the padded image of x (N, C, H, W);
    the message names the layer, both sizes and the smallest input that fits. `channels`: what to
    show for the channel axis of that input."""
    h, w = x.shape[2:]
    (ph, pw), reach = padding, tuple(d * (k - 1) + 1 for d, k in zip(dilation, kernel))
    if h + 2 * ph < reach[0] or w + 2 * pw < reach[1]:
        what = "the dilated kernel" if tuple(dilation) != (1, 1) else "the kernel"
        need = (max(reach[0] - 2 * ph, 1), max(reach[1] - 2 * pw, 1))
        raise ValueError(
            f"{type(layer).__name__}: the input image {h}x{w} padded by {tuple(padding)} is "
            f"{h + 2 * ph}x{w + 2 * pw}, smaller than {what} {reach[0]}x{reach[1]}; "
            f"expected shape (N, {channels}, >={need[0]}, >={need[1]}), got shape {tuple(x.shape)}")


def pad2d(x, padding, value=0.0):
    """Pad the last two axes of x by padding = (ph, pw) on both sides with `value`.

    Returns x itself (no copy) when there is no padding.
    """
    ph, pw = padding
    if ph == 0 and pw == 0:
        return x
    xp = get_array_module(x)
    n, c, h, w = x.shape
    padded = workspace.empty((n, c, h + 2 * ph, w + 2 * pw), x.dtype, xp)
    # one fill of everything: here the columns are the innermost axis, so `fill_border`'s column
    # strips would be runs of pw values (measured 30% slower than this for (64, 64, 34, 34))
    padded.fill(value)
    parallel.assign(padded[:, :, ph:ph + h, pw:pw + w], x)
    return padded


def fill_border(padded, axes, padding, value=0.0):
    """Set the border of width padding = (ph, pw) on the two `axes` (rows, columns) of `padded` to
    `value`, leaving the inside alone: the four strips only, not the whole array (a copy fills the
    inside next). Worth it when an axis after `columns` makes the strips long runs (batch-last
    im2col's (C, Hp, Wp, N): 10-25% off the padded copy at batch 64)."""
    (rows, columns), (ph, pw) = axes, padding

    def strip(axis, part):
        index = [slice(None)] * padded.ndim
        index[axis] = part
        return tuple(index)

    for axis, pad in ((rows, ph), (columns, pw)):
        if pad:
            size = padded.shape[axis]
            padded[strip(axis, slice(0, pad))] = value
            padded[strip(axis, slice(size - pad, size))] = value


def _as_strided(x, shape, strides):
    xp = get_array_module(x)
    return xp.lib.stride_tricks.as_strided(x, shape=shape, strides=strides)


def window_view(x_padded, kernel, stride, dilation, out_size):
    """A read-only view (N, C, kh, kw, OH, OW) of the windows of a padded (N, C, Hp, Wp) array.

    view[n, c, i, j, oh, ow] = x_padded[n, c, oh * s_h + i * d_h, ow * s_w + j * d_w]; no copy.
    """
    (kh, kw), (sh, sw), (dh, dw), (oh, ow) = kernel, stride, dilation, out_size
    n, c = x_padded.shape[:2]
    s_n, s_c, s_h, s_w = x_padded.strides
    return _as_strided(x_padded, (n, c, kh, kw, oh, ow),
                       (s_n, s_c, s_h * dh, s_w * dw, s_h * sh, s_w * sw))


def im2col(x, kernel, stride, padding, dilation, out_size, batch_last=False):
    """Gather the windows of x (N, C, H, W) into cols (C * kh * kw, N * OH * OW): one contiguous copy
    (or, when one unpadded window is the whole image, no copy: the transposed view of x as (N, C*H*W)).

    cols[(c, i, j), (n, oh, ow)] = x_padded[n, c, oh * s_h + i * d_h, ow * s_w + j * d_w].

    With batch_last the columns are ordered (oh, ow, n) instead (see `batch_last_layout`): x is
    first copied, padded, to (C, Hp, Wp, N), so that the gather copies runs of N values. On CuPy
    the formula above is one kernel (`gpu_kernels.im2col`), padding included: no padded copy.
    """
    xp = get_array_module(x)
    n, c = x.shape[:2]
    if _one_window_covers(x.shape[2:], kernel, padding, dilation) and x.flags.c_contiguous:
        # the DCGAN's 4x4 -> 1x1 layers: the columns are the samples, cols = x as (N, C*H*W)
        # transposed; a view, no copy (either column order: with one window they are the same)
        return x.reshape(n, math.prod(x.shape[1:])).T
    if xp is not np:
        cols = gpu_kernels.im2col(x, kernel, stride, padding, dilation, out_size, batch_last)
        return cols.reshape(c * kernel[0] * kernel[1], n * out_size[0] * out_size[1])
    if batch_last:
        ph, pw = padding
        h, w = x.shape[2:]
        padded = workspace.empty((c, h + 2 * ph, w + 2 * pw, n), x.dtype, xp)
        fill_border(padded, (1, 2), padding)
        parallel.assign(padded[:, ph:ph + h, pw:pw + w, :], x.transpose(1, 2, 3, 0))
        (kh, kw), (sh, sw), (dh, dw), (oh, ow) = kernel, stride, dilation, out_size
        s_c, s_h, s_w, s_n = padded.strides
        view = _as_strided(padded, (c, kh, kw, oh, ow, n), (s_c, s_h * dh, s_w * dw, s_h * sh, s_w * sw, s_n))
    else:
        view = window_view(pad2d(x, padding), kernel, stride, dilation, out_size).transpose(1, 2, 3, 0, 4, 5)
    cols = parallel.assign(workspace.empty(view.shape, x.dtype, xp), view)   # one copy, split over channels
    return cols.reshape(c * kernel[0] * kernel[1], n * out_size[0] * out_size[1])


def _one_window_covers(size, kernel, padding, dilation):
    """Whether one kernel window, unpadded and undilated, is exactly the whole (H, W) image."""
    return tuple(size) == tuple(kernel) and tuple(padding) == (0, 0) and tuple(dilation) == (1, 1)


def offset_slices(kernel, stride, dilation, out_size):
    """For each kernel offset (i, j): (i, j, rows, cols), the slices of the padded input that
    offset reads for every output pixel (rows = i*d_h, i*d_h + s_h, ..., OH of them)."""
    (kh, kw), (sh, sw), (dh, dw), (oh, ow) = kernel, stride, dilation, out_size
    for i in range(kh):
        rows = slice(i * dh, i * dh + sh * (oh - 1) + 1, sh)
        for j in range(kw):
            yield i, j, rows, slice(j * dw, j * dw + sw * (ow - 1) + 1, sw)


def col2im(cols, image_shape, kernel, stride, padding, dilation, out_size, batch_last=False):
    """The adjoint of im2col: cols (C * kh * kw, N * OH * OW) -> image (N, C, H, W).

    Each column entry is added back onto the input pixel im2col read it from (pixels read by
    several windows get the sum); padding is cropped. `batch_last`: the columns are ordered
    (oh, ow, n), as im2col(..., batch_last=True) makes them.

    Done by stride phases: padded row r = oh * s_h + i * d_h belongs to phase a = r mod s_h, at
    row q = oh + (i * d_h) // s_h of that phase. Within a phase every kernel offset is one
    unit-stride shifted slice-add (kh * kw adds in all, no scatter-add, no loop over the batch or
    pixels); each phase is then written, cropped, into every s_h-th row of the image. This is
    about 1.8x faster than strided slice-adds straight into the image (measured at batch 64,
    64 channels, 32x32, kernel 4, stride 2). The innermost run of each add is OW values. With
    batch_last the runs are N values whatever the stride, so the adds go straight into a padded
    batch-last image, without phases (2-4x faster for 8x8 and smaller maps than the (n, oh, ow)
    order, see `batch_last_layout`).
    """
    xp = get_array_module(cols)
    n, c, h, w = image_shape
    (kh, kw), (ph, pw), (dh, dw), (oh, ow) = kernel, padding, dilation, out_size
    if xp is np and _one_window_covers((h, w), kernel, padding, dilation):
        # the adjoint of im2col's view: image as (N, C*H*W) = cols^T, a transposing copy in slabs
        image = workspace.empty((n, c, h, w), cols.dtype, xp)
        parallel.assign(image.reshape(n, c * h * w).T, cols.reshape(c * h * w, n), axis=0, block=TRANSPOSE_SLAB_ROWS)
        return image
    if oh == 1 and ow == 1:
        # a single window (on CuPy, or one that padding or dilation keeps from covering the image):
        # nothing overlaps, so col2im is one transposing copy; slice-adds over (C, N, 1, 1) slabs
        # would be 3x slower. With one window
        # the (n, oh, ow) and (oh, ow, n) column orders are the same.
        cols = cols.reshape(c, kh, kw, n)
        padded = workspace.zeros((n, c, h + 2 * ph, w + 2 * pw), cols.dtype, xp)
        padded[:, :, 0:dh * (kh - 1) + 1:dh, 0:dw * (kw - 1) + 1:dw] = cols.transpose(3, 0, 1, 2)
        return xp.ascontiguousarray(padded[:, :, ph:ph + h, pw:pw + w]) if ph or pw else padded
    if xp is not np:   # CuPy: one gather instead of kh * kw slice-adds per phase (kernel launches)
        return col2im_gather(cols, image_shape, kernel, stride, padding, dilation, out_size, batch_last)
    image = workspace.empty((n, c, h, w), cols.dtype, xp)
    per_channel = kh * kw
    parallel.run(c, lambda start, stop: _col2im_channels(
        cols[start * per_channel:stop * per_channel], image[:, start:stop], kernel, stride, padding, dilation,
        out_size, batch_last), size=cols.size, xp=xp)
    return image


def _col2im_channels(cols, image, kernel, stride, padding, dilation, out_size, batch_last):
    """col2im of the channels that `image` (a view (N, C', H, W) of the whole image) holds, from
    their rows of cols (C' * kh * kw, N * OH * OW): the phases of the col2im docstring, or with
    batch_last `_col2im_batch_last`."""
    if batch_last:
        return _col2im_batch_last(cols, image, kernel, stride, padding, dilation, out_size)
    xp = get_array_module(cols)
    n, c, h, w = image.shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw), (oh, ow) = kernel, stride, padding, dilation, out_size
    # channel-major like cols, so every add is between two arrays laid out the same way
    cols = cols.reshape(c, kh, kw, n, oh, ow)
    for a in range(sh):
        first_row, rows = _phase_crop(a, sh, ph, h)
        for b in range(sw):
            first_col, columns = _phase_crop(b, sw, pw, w)
            phase = workspace.zeros((c, n, -(-(h + 2 * ph - a) // sh), -(-(w + 2 * pw - b) // sw)), cols.dtype, xp)
            for i in range(kh):
                if (i * dh) % sh != a:
                    continue
                di = (i * dh) // sh
                for j in range(kw):
                    if (j * dw) % sw == b:
                        dj = (j * dw) // sw
                        phase[:, :, di:di + oh, dj:dj + ow] += cols[:, i, j]
            crop = phase[:, :, first_row:first_row + len(range(h)[rows]),
                         first_col:first_col + len(range(w)[columns])]
            image[:, :, rows, columns] = crop.transpose(1, 0, 2, 3)


def _col2im_batch_last(cols, image, kernel, stride, padding, dilation, out_size):
    """col2im from batch-last columns (C' * kh * kw, OH * OW * N) into `image` (N, C', H, W): the
    kh * kw slice-adds go straight into a padded (C', Hp, Wp, N) array (strided, but every run is
    N values, so no phases are needed), then one transposing copy, cropped, in channel slabs that
    stay in the cache. 20-25% faster than the earlier batch-last col2im by phases for 8x8 and 16x16
    images at batch 64 (64x32x16x16: 2.08 -> 1.63 ms), the same for larger."""
    xp = get_array_module(cols)
    n, c, h, w = image.shape
    (kh, kw), (ph, pw), (oh, ow) = kernel, padding, out_size
    cols = cols.reshape(c, kh, kw, oh, ow, n)
    padded = workspace.zeros((c, h + 2 * ph, w + 2 * pw, n), cols.dtype, xp)
    for i, j, rows, columns in offset_slices(kernel, stride, dilation, out_size):
        padded[:, rows, columns] += cols[:, i, j]
    inside = padded[:, ph:ph + h, pw:pw + w]
    slab = max(1, TRANSPOSE_SLAB_ROWS // (h * w))
    for k in range(0, c, slab):
        image[:, k:k + slab] = inside[k:k + slab].transpose(3, 0, 1, 2)


def col2im_gather(cols, image_shape, kernel, stride, padding, dilation, out_size, batch_last=False):
    """col2im as a gather: image[n, c, y, x] = sum over the (i, oh, j, ow) with oh s_h + i d_h = y + p_h
    and ow s_w + j d_w = x + p_w of cols[(c, i, j), column(n, oh, ow)].

    Each pixel has at most T = T_h T_w such entries (T_h = ceil(kh d_h / s_h) at most: 4 for
    kernel 4, stride 2). Their positions in a channel's block of cols are fixed by the shapes, so
    they are computed once (`_gather_plan`, cached) as sample 0's index (H, W, T), the step between
    samples' columns (1 batch-last, OH * OW otherwise) and a mask (H, W, T) of the taps that exist,
    for pixels with fewer; then col2im is one take, one masked sum over T and one transpose. The
    result equals `col2im`'s up to the order of the additions (tested on NumPy). The missing taps
    read their sample's entry 0 and are dropped by `where`, not multiplied by 0, which would turn an
    inf there into NaN. On CuPy the same gather and masked sum are one kernel
    (`gpu_kernels.col2im_gather`), writing the (N, C, H, W) image directly: no (C, N, H, W, T)
    intermediate, T times the image's size.
    """
    xp = get_array_module(cols)
    n, c, h, w = image_shape
    base, per_sample, mask = _gather_plan(xp, image_shape, tuple(kernel), tuple(stride), tuple(padding),
                                          tuple(dilation), tuple(out_size), bool(batch_last))
    if xp is not np:
        return gpu_kernels.col2im_gather(cols.reshape(c, -1), base, per_sample, mask, image_shape)
    index = base[None] + per_sample * xp.arange(n).reshape(n, 1, 1, 1)   # (N, H, W, T)
    gathered = xp.take(cols.reshape(c, -1), index, axis=1)            # (C, N, H, W, T)
    summed = xp.where(mask, gathered, 0).sum(axis=-1)                  # (C, N, H, W)
    return xp.ascontiguousarray(summed.transpose(1, 0, 2, 3))


@functools.lru_cache(maxsize=64)
def _gather_plan(xp, image_shape, kernel, stride, padding, dilation, out_size, batch_last):
    """(sample 0's index (H, W, T) into a channel's block of cols, the step from one sample's columns to
    the next's, boolean mask (H, W, T)) for `col2im_gather`, on xp. Sample n reads base + n * step: a
    plan for the whole batch would be N times larger (8 MiB per geometry at 64x64, batch 64)."""
    n, _, h, w = image_shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw), (oh, ow) = kernel, stride, padding, dilation, out_size

    def taps(size, k, s, p, d, out):
        """Per image row y: the (kernel offset, output row) pairs reading it, padded to the longest."""
        pairs = [[(i, o) for i in range(k) for o in range(out) if o * s + i * d == y + p] for y in range(size)]
        longest = max(1, max(len(found) for found in pairs))
        offset = np.zeros((size, longest), np.int64)
        position = np.zeros((size, longest), np.int64)
        valid = np.zeros((size, longest), bool)
        for y, found in enumerate(pairs):
            for t, (i, o) in enumerate(found):
                offset[y, t], position[y, t], valid[y, t] = i, o, True
        return offset, position, valid

    i, oy, row_valid = taps(h, kh, sh, ph, dh, oh)                    # (H, Th)
    j, ox, col_valid = taps(w, kw, sw, pw, dw, ow)                    # (W, Tw)
    kernel_offset = i[:, None, :, None] * kw + j[None, :, None, :]    # (H, W, Th, Tw)
    if batch_last:   # cols[(c, i, j), (oh, ow, n)]
        base = (kernel_offset * oh * ow + oy[:, None, :, None] * ow + ox[None, :, None, :]) * n
        per_sample = 1
    else:            # cols[(c, i, j), (n, oh, ow)]
        base = kernel_offset * n * oh * ow + oy[:, None, :, None] * ow + ox[None, :, None, :]
        per_sample = oh * ow
    valid = row_valid[:, None, :, None] & col_valid[None, :, None, :]
    base = np.where(valid, base, 0).reshape(h, w, -1)                 # masked taps read sample n's entry 0
    return xp.asarray(base), per_sample, xp.asarray(valid.reshape(h, w, -1))


def _phase_crop(phase, stride, padding, size):
    """For padded rows phase, phase + stride, ...: (the first of them inside the image, as an index
    into the phase, and the slice of image rows they are)."""
    first = -(-(padding - phase) // stride) if padding > phase else 0
    return first, slice(phase + first * stride - padding, size, stride)


def sum_views(views):
    """The sum of same-shaped arrays, as a new contiguous array (the first view copied, then adds)."""
    total = views[0].copy()
    for view in views[1:]:
        total += view
    return total


def window_sum(x_padded, kernel, stride, out_size):
    """Sum of every (kh, kw) window of a padded (N, C, Hp, Wp) array -> (N, C, OH, OW).

    kh * kw strided slice-adds; no copy of the windows.
    """
    return sum_views([x_padded[:, :, rows, columns]
                      for _, _, rows, columns in offset_slices(kernel, stride, (1, 1), out_size)])


def window_spread(values, image_shape, kernel, stride, padding, out_size):
    """The adjoint of window_sum followed by cropping: add values[n, c, oh, ow] to every pixel of
    its window, and return the (N, C, H, W) image without the padding."""
    xp = get_array_module(values)
    n, c, h, w = image_shape
    ph, pw = padding
    padded = xp.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=values.dtype)
    for _, _, rows, columns in offset_slices(kernel, stride, (1, 1), out_size):
        padded[:, :, rows, columns] += values
    if ph == 0 and pw == 0:
        return padded
    return xp.ascontiguousarray(padded[:, :, ph:ph + h, pw:pw + w])


def batch_last_layout(small_size):
    """Whether a convolution whose small side is `small_size` (OH, OW) uses batch-last columns.

    The products do not care how the N * OH * OW columns are ordered, but im2col and col2im
    copy runs of OW values in the (n, oh, ow) order and runs of N values (OW * N in col2im) in
    the (oh, ow, n) order. For maps up to 8x8 batch-last is 1.6-3.6x faster (batch 64, kernel 4,
    stride 2, seventh round: col2im onto 64x128x16x16 11.1 -> 6.7 ms on 2 threads, 21.1 -> 12.2 on
    one; im2col of it 4.3 -> 2.3 and 9.4 -> 4.2 ms; onto 64x32x8x8 2.1x and 3.6x); for larger maps the
    transposing copies between (N, C, H, W) and (C, H, W, N) cost as much as the runs save (with
    those copies done in slabs, TRANSPOSE_SLAB_ROWS, a limit of 16x16 measured the same as 8x8
    on whole training steps of all three benchmark GANs, 32x32 slower).
    """
    return small_size[0] * small_size[1] <= BATCH_LAST_MAX_PIXELS


BATCH_LAST_MAX_PIXELS = 64
TRANSPOSE_SLAB_ROWS = 256   # rows of a (C*H*W, N) matrix per slab of a transposing copy (64 KiB at N = 64)


def to_channel_major(y, batch_last=False):
    """(N, C, H, W) -> a contiguous (C, N * H * W) matrix, the layout the products use;
    with batch_last, (C, H * W * N)."""
    xp = get_array_module(y)
    n, c, h, w = y.shape
    source = y.transpose(1, 2, 3, 0) if batch_last else y.transpose(1, 0, 2, 3)
    return parallel.assign(workspace.empty(source.shape, y.dtype, xp), source).reshape(c, n * h * w)


def from_channel_major(matrix, shape, bias=None, batch_last=False):
    """A (C, N * H * W) matrix (with batch_last, (C, H * W * N)) -> a contiguous (N, C, H, W)
    array, adding bias (C,) on the way."""
    xp = get_array_module(matrix)
    n, c, h, w = shape
    out = workspace.empty((n, c, h, w), matrix.dtype, xp)
    if batch_last and xp is np and matrix.flags.c_contiguous:
        # (C*H*W, N) -> (N, C*H*W) is a transpose: copied in slabs (parallel.assign's block), at
        # batch 64 2x faster than in one go for 8x8 maps (64x256x8x8: 1.54 -> 0.72 ms), 5x for 16x16
        parallel.assign(out.reshape(n, c * h * w).T, matrix.reshape(c * h * w, n), axis=0, block=TRANSPOSE_SLAB_ROWS)
        if bias is not None:
            bias = bias.reshape(1, c, 1, 1).astype(matrix.dtype, copy=False)
            parallel.run(n, lambda a, b: xp.add(out[a:b], bias, out=out[a:b]), size=out.size, xp=xp)
        return out
    if batch_last:
        source, target = matrix.reshape(c, h * w, n), out.reshape(n, c, h * w).transpose(1, 2, 0)
        bias_shape = (c, 1, 1)
    else:
        source, target = matrix.reshape(c, n, h * w).transpose(1, 0, 2), out.reshape(n, c, h * w)
        bias_shape = (1, c, 1)
    if bias is None:
        parallel.assign(target, source)
        return out
    bias = bias.reshape(bias_shape).astype(matrix.dtype, copy=False)
    if batch_last:
        parallel.run(c, lambda a, b: xp.add(source[a:b], bias[a:b], out=target[a:b]), size=out.size, xp=xp)
    else:
        parallel.run(n, lambda a, b: xp.add(source[a:b], bias, out=target[a:b]), size=out.size, xp=xp)
    return out
