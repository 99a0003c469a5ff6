"""Fused CuPy kernels for the element-wise chains that dominate a GPU training step.

On the GPU each array operation is a kernel launch costing some microseconds of Python and driver
time, whatever the array's size; a DCGAN step at batch 64 is launch-bound (measured on an H200:
~2,500 array calls per step, 58 ms, while the GPU's own work is a fraction of that). These kernels
do a whole chain in one launch. They compute the same formulas as the NumPy code next to which
they are used (that code documents the maths, and the `gpu` tests compare the two); only the order
of rounding can differ.

Each kernel is compiled by CuPy on first use and cached on disk. Nothing here runs on NumPy arrays.
"""
import functools

import numpy as np

from . import backend


@functools.lru_cache(maxsize=None)
def _elementwise(in_params, out_params, body, name):
    return backend.require_cupy().ElementwiseKernel(in_params, out_params, body, name)


def scatter_sum(index, values, size):
    """out (size,) with out[k] = the sum of values[i] over the i with index[i] = k (index, values 1-D
    CuPy arrays): cupyx.scatter_add, atomic adds in one launch. CuPy's bincount(weights=) would do
    the same but first checks the indices' range on the host: two waits for the GPU."""
    cupy = backend.require_cupy()
    import cupyx
    out = cupy.zeros(size, dtype=values.dtype)
    cupyx.scatter_add(out, index, values)
    return out


# Per-channel sums over (N, C, L) arrays, one thread block per channel. CuPy's reductions over the
# axes (0, 2) cost a launch each and, on the host, several times an element-wise kernel's time; these
# do BatchNorm's two sums in one launch, in float64 (as the CPU code). TYPE: float or double.
_CHANNEL_SUMS_SOURCE = r"""
#define THREADS 256

// a and b summed over the block's threads (a shared-memory tree); every thread gets the totals
__device__ inline void block_sum(double& a, double& b) {
    __shared__ double sa[THREADS], sb[THREADS];
    sa[threadIdx.x] = a;
    sb[threadIdx.x] = b;
    __syncthreads();
    for (int half = THREADS / 2; half > 0; half >>= 1) {
        if (threadIdx.x < half) {
            sa[threadIdx.x] += sa[threadIdx.x + half];
            sb[threadIdx.x] += sb[threadIdx.x + half];
        }
        __syncthreads();
    }
    a = sa[0];
    b = sb[0];
}

// mean[c] = sum x / m, var[c] = max(sum x^2 / m - mean^2, 0) (NaN stays NaN), m = N L
extern "C" __global__ void nnbox_channel_mean_var(const TYPE* x, long long batch, long long channels,
                                                  long long length, double* mean, double* var) {
    const long long c = blockIdx.x, m = batch * length;
    double s = 0.0, q = 0.0;
    for (long long k = threadIdx.x; k < m; k += THREADS) {
        const double v = (double)x[((k / length) * channels + c) * length + k % length];
        s += v;
        q += v * v;
    }
    block_sum(s, q);
    if (threadIdx.x == 0) {
        const double mu = s / m, d = q / m - mu * mu;
        mean[c] = mu;
        var[c] = d < 0.0 ? 0.0 : d;
    }
}

// sum_dy[c] = sum dy, sum_dy_xhat[c] = sum dy xhat (over n and l)
extern "C" __global__ void nnbox_channel_sums(const TYPE* dy, const TYPE* xhat, long long batch,
                                              long long channels, long long length, TYPE* sum_dy,
                                              TYPE* sum_dy_xhat) {
    const long long c = blockIdx.x, m = batch * length;
    double s = 0.0, p = 0.0;
    for (long long k = threadIdx.x; k < m; k += THREADS) {
        const long long at = ((k / length) * channels + c) * length + k % length;
        const double g = (double)dy[at];
        s += g;
        p += g * (double)xhat[at];
    }
    block_sum(s, p);
    if (threadIdx.x == 0) {
        sum_dy[c] = (TYPE)s;
        sum_dy_xhat[c] = (TYPE)p;
    }
}
"""
_CHANNEL_THREADS = 256   # THREADS above


@functools.lru_cache(maxsize=None)
def _channel_kernel(name, c_type):
    return backend.require_cupy().RawKernel(_CHANNEL_SUMS_SOURCE.replace("TYPE", c_type), name)


def _channel_launch(name, arrays, outputs):
    """Launch the channel kernel `name` over `arrays` (N, C, ...), read as (N, C, L): one block per
    channel. If any array is float64 the double kernel runs; otherwise the arrays are read as float32
    (float16 ones through a float32 copy)."""
    cupy = backend.require_cupy()
    n, c = arrays[0].shape[:2]
    length = arrays[0].size // (n * c) if n * c else 0
    c_type = "double" if any(a.dtype == np.float64 for a in arrays) else "float"
    dtype = np.float64 if c_type == "double" else np.float32
    flat = [cupy.ascontiguousarray(a, dtype=dtype) for a in arrays]
    _channel_kernel(name, c_type)((c,), (_CHANNEL_THREADS,), (*flat, np.int64(n), np.int64(c), np.int64(length),
                                                              *outputs))


def channel_sums(dy, xhat):
    """(sum_dy, sum_dy_xhat), each (C,): the sums of dy and of dy xhat over every axis but 1 (dy, xhat
    (N, C, ...)), accumulated in float64, in one kernel; returned in dy's dtype, or float32 for
    float16 dy (a float16 channel sum overflows at 65504, as on the CPU)."""
    cupy = backend.require_cupy()
    kernel_dtype = np.float64 if np.float64 in (dy.dtype, xhat.dtype) else np.float32
    sums = cupy.empty((2, dy.shape[1]), dtype=kernel_dtype)
    _channel_launch("nnbox_channel_sums", (dy, xhat), (sums[0], sums[1]))
    sums = sums.astype(np.result_type(dy.dtype, np.float32), copy=False)
    return sums[0], sums[1]


def channel_mean_var(x):
    """Per-channel mean and biased variance of x (N, C, ...) over every axis but 1, as float64 (C,)
    arrays, in one kernel: mean = sum(x) / m, var = max(sum(x^2) / m - mean^2, 0), m = x.size / C,
    summed in float64. (float64 sums of float32 squares keep the cancellation harmless unless
    |mean| / std exceeds ~1e5.) The max keeps a NaN variance NaN, as the CPU's np.maximum (CUDA's
    max() is fmax, which would turn it into 0)."""
    cupy = backend.require_cupy()
    stats = cupy.empty((2, x.shape[1]), dtype=np.float64)
    _channel_launch("nnbox_channel_mean_var", (x,), (stats[0], stats[1]))
    return stats[0], stats[1]


def relu(x):
    """(y = max(x, 0), positive = x > 0) in one kernel; NaN stays NaN, as NumPy's maximum."""
    return _elementwise("T x", "T y, bool positive", "positive = x > 0; y = x <= 0 ? (T)0 : x",
                        "nnbox_relu")(x)


def relu_grad(dy, positive):
    """dx = dy [x > 0] in one kernel."""
    return _elementwise("T dy, bool positive", "T dx", "dx = dy * (T)positive", "nnbox_relu_grad")(dy, positive)


def leaky_relu(x, slope):
    """(y = x where x > 0 else slope x, positive = x > 0) in one kernel."""
    return _elementwise("T x, T slope", "T y, bool positive", "positive = x > 0; y = positive ? x : (T)(x * slope)",
                        "nnbox_leaky_relu")(x, slope)


def leaky_relu_grad(dy, positive, slope):
    """dx = dy where x > 0 else slope dy, in one kernel."""
    return _elementwise("T dy, bool positive, T slope", "T dx", "dx = dy * (positive ? (T)1 : slope)",
                        "nnbox_leaky_relu_grad")(dy, positive, slope)


def bce_with_logits_terms(x, t, n):
    """Per element, in one kernel: the loss softplus(x) - t x = max(x, 0) + log1p(e^-|x|) - t x, and
    its gradient (sigma(x) - t) / n (sigma from e^-|x|, as the NumPy code). n is a float64: from
    65520 on it would be inf as a float16."""
    return _elementwise("T x, T t, float64 n", "T loss, T grad",
                        """T e = exp(-fabs(x));
                           loss = (x > 0 ? x : (T)0) + log1p(e) - t * x;
                           grad = (T)(((x >= 0 ? 1 / (1 + e) : e / (1 + e)) - t) / n);""",
                        "nnbox_bce_with_logits")(x, t, n)


def sigmoid(x):
    """1 / (1 + e^-x) from e^-|x| (never overflows), as nnbox's NumPy sigmoid, in one kernel."""
    return _elementwise("T x", "T y", "T e = exp(-fabs(x)); y = x >= 0 ? 1 / (1 + e) : e / (1 + e)",
                        "nnbox_sigmoid")(x)


def adam_update(param, grad, m, v, beta1, beta2, eps_term, step_size, weight_decay):
    """One Adam step in place on CuPy arrays (see nnbox.optim.Adam for the formula):

        g = grad + weight_decay * param
        m = beta1 (m - g) + g,   v = beta2 v + (1 - beta2) g^2
        param += step_size * m / (sqrt(v) + eps_term)

    with step_size = -lr sqrt(1 - beta2^t) / (1 - beta1^t) and eps_term = eps sqrt(1 - beta2^t).
    """
    kernel = _elementwise(
        "T grad, T beta1, T beta2, T one_minus_beta2, T eps_term, T step_size, T weight_decay",
        "T param, T m, T v",
        """T g = grad + weight_decay * param;
           m = beta1 * (m - g) + g;
           v = beta2 * v + g * g * one_minus_beta2;
           param += m / (sqrt(v) + eps_term) * step_size;""",
        "nnbox_adam")
    kernel(grad, beta1, beta2, 1.0 - beta2, eps_term, step_size, weight_decay, param, m, v)


def batch_norm_running_stats(mean, var, weight, unbias, eps, running_mean, running_var, inv_std):
    """BatchNorm's per-channel bookkeeping in one kernel over the C channels, in place:

        running_mean = (1 - w) running_mean + w mean
        running_var  = (1 - w) running_var + w var unbias      (unbias = m / (m - 1))
        inv_std      = 1 / sqrt(var + eps)                       (in inv_std's dtype)

    mean, var: (C,) batch statistics; weight w: the momentum (a float) or a 0-d array (1/k)."""
    _elementwise("S mean, S var, S weight, float64 unbias, float64 eps", "R running_mean, R running_var, T inv_std",
                 """running_mean = (1 - weight) * running_mean + weight * mean;
                    running_var = (1 - weight) * running_var + weight * (var * unbias);
                    inv_std = 1.0 / sqrt(var + eps);""",
                 "nnbox_bn_running_stats")(mean, var, weight, unbias, eps, running_mean, running_var, inv_std)


def batch_norm_normalise(x, mean, inv_std, weight, bias, xhat, y):
    """xhat = (x - mean) inv_std and y = xhat weight + bias in one pass (per-channel values broadcast);
    writes into `xhat` and `y` (y may be None: no affine part)."""
    if y is None:
        _elementwise("T x, T mean, T inv_std", "T xhat", "xhat = (x - mean) * inv_std",
                     "nnbox_bn_normalise")(x, mean, inv_std, xhat)
        return
    _elementwise("T x, T mean, T inv_std, T weight, T bias", "T xhat, T y",
                 "xhat = (x - mean) * inv_std; y = xhat * weight + bias",
                 "nnbox_bn_normalise_affine")(x, mean, inv_std, weight, bias, xhat, y)


def batch_norm_channel_grads(sum_dy, sum_dy_xhat, weight, inv_std, count, weight_grad, bias_grad, scale, k_xhat,
                             k_dy):
    """BatchNorm backward's per-channel values in one kernel over the C channels:

        weight_grad += sum(dy xhat),  bias_grad += sum(dy),  scale = weight inv_std,
        k_xhat = sum(dy xhat) / m,   k_dy = sum(dy) / m          (m: the values per channel)
    The sums (S) are float32 for float16 data (T), whose own sums could overflow (channel_sums)."""
    _elementwise("S sum_dy, S sum_dy_xhat, P weight, T inv_std, float64 count",
                 "P weight_grad, P bias_grad, T scale, T k_xhat, T k_dy",
                 """weight_grad += (P)sum_dy_xhat;
                    bias_grad += (P)sum_dy;
                    scale = weight * inv_std;
                    k_xhat = (T)(S)(sum_dy_xhat / count);
                    k_dy = (T)(S)(sum_dy / count);""",
                 "nnbox_bn_channel_grads")(sum_dy, sum_dy_xhat, weight, inv_std, count, weight_grad, bias_grad,
                                           scale, k_xhat, k_dy)


def batch_norm_input_grad(dy, xhat, k_xhat, k_dy, scale, dx):
    """dx = scale (dy - xhat k_xhat - k_dy) in one pass, into `dx` (per-channel values broadcast)."""
    _elementwise("T dy, T xhat, T k_xhat, T k_dy, T scale", "T dx",
                 "dx = scale * (dy - xhat * k_xhat - k_dy)",
                 "nnbox_bn_input_grad")(dy, xhat, k_xhat, k_dy, scale, dx)


def im2col(x, kernel, stride, padding, dilation, out_size, batch_last):
    """layers.conv_maths.im2col's columns for a CuPy x (N, C, H, W) in one kernel, the zero padding
    included: cols[c, i, j, n, oh, ow] (or [c, i, j, oh, ow, n] with batch_last) =
    x[n, c, oh s_h - p_h + i d_h, ow s_w - p_w + j d_w], 0 where that falls in the padding."""
    cupy = backend.require_cupy()
    n, c, h, w = x.shape
    (kh, kw), (oh, ow) = kernel, out_size
    shape = (c, kh, kw, oh, ow, n) if batch_last else (c, kh, kw, n, oh, ow)
    cols = cupy.empty(shape, dtype=x.dtype)
    _elementwise(
        "raw T x, int32 batch, int32 channels, int32 h, int32 w, int32 kh, int32 kw, int32 oh, int32 ow, "
        "int32 sh, int32 sw, int32 ph, int32 pw, int32 dh, int32 dw, int32 batch_last",
        "T cols",
        """long long rest = i;
           int sample, ox, oy;
           if (batch_last) {
               sample = (int)(rest % batch); rest /= batch;
               ox = (int)(rest % ow); rest /= ow;
               oy = (int)(rest % oh); rest /= oh;
           } else {
               ox = (int)(rest % ow); rest /= ow;
               oy = (int)(rest % oh); rest /= oh;
               sample = (int)(rest % batch); rest /= batch;
           }
           const int b = (int)(rest % kw); rest /= kw;
           const int a = (int)(rest % kh);
           const long long channel = rest / kh;
           const int row = oy * sh - ph + a * dh, col = ox * sw - pw + b * dw;
           cols = (row < 0 || row >= h || col < 0 || col >= w) ? (T)0
                  : x[(((long long)sample * channels + channel) * h + row) * w + col];""",
        "nnbox_im2col")(cupy.ascontiguousarray(x).reshape(-1), n, c, h, w, kh, kw, oh, ow, stride[0], stride[1],
                        padding[0], padding[1], dilation[0], dilation[1], int(batch_last), cols)
    return cols


def col2im_gather(cols, base, per_sample, mask, image_shape):
    """image (N, C, H, W) with image[n, c, y, x] = the sum over t with mask[y, x, t] of
    cols[c, base[y, x, t] + n * per_sample], in one kernel: layers.conv_maths.col2im_gather's take,
    masked sum and transpose (that NumPy code documents the maths). The taps are added in order
    t = 0, 1, ...; NumPy's sum may group them otherwise (from T = 8 on), so results can differ by rounding.
    cols: (C, L) CuPy array; base: (H, W, T) int64; per_sample: int; mask: (H, W, T) bool."""
    cupy = backend.require_cupy()
    n, c, h, w = image_shape
    taps = mask.shape[-1]
    image = cupy.empty((n, c, h, w), dtype=cols.dtype)
    _elementwise(
        "raw T cols, raw int64 base, raw bool mask, int32 channels, int32 pixels, int32 taps, int64 row, "
        "int64 per_sample",
        "T image",
        """const long long n = i / ((long long)channels * pixels);
           const long long c = (i / pixels) % channels;
           const long long p = i % pixels;
           const long long first = c * row + n * per_sample;
           T total = 0;
           for (int t = 0; t < taps; ++t) {
               if (mask[p * taps + t]) total += cols[first + base[p * taps + t]];
           }
           image = total;""",
        "nnbox_col2im_gather")(cupy.ascontiguousarray(cols).reshape(-1), cupy.ascontiguousarray(base).reshape(-1),
                               cupy.ascontiguousarray(mask).reshape(-1), c, h * w, taps, cols.shape[1], per_sample,
                               image)
    return image


def max_pool(x, kernel, stride, padding, out_size):
    """MaxPool2d's (y, indices) for a CuPy x (N, C, H, W) in one kernel: each output element scans its
    window; padding never wins (it is -inf on the CPU); ties keep the first maximum in row-major
    window order (strict >, as the CPU and PyTorch); a NaN in the window makes the output NaN, at
    the last NaN's position (as PyTorch).
    indices[n, c, oh, ow] is the flat position y * W + x of the maximum within its input plane."""
    cupy = backend.require_cupy()
    n, c, h, w = x.shape
    y = cupy.empty((n, c) + tuple(out_size), dtype=x.dtype)
    argmax = cupy.empty((n, c) + tuple(out_size), dtype=np.int64)
    _elementwise(
        "raw T x, int32 h, int32 w, int32 oh, int32 ow, int32 kh, int32 kw, int32 sh, int32 sw, int32 ph, int32 pw",
        "T y, int64 argmax",
        """const long long plane = i / ((long long)oh * ow);
           const int oy = (int)((i / ow) % oh), ox = (int)(i % ow);
           bool found = false;
           T best = 0;
           long long where = 0;
           for (int a = 0; a < kh; ++a) {
               const int row = oy * sh - ph + a;
               if (row < 0 || row >= h) continue;
               for (int b = 0; b < kw; ++b) {
                   const int col = ox * sw - pw + b;
                   if (col < 0 || col >= w) continue;
                   const T v = x[plane * h * w + (long long)row * w + col];
                   if (!found || v > best || v != v) {
                       best = v;
                       where = (long long)row * w + col;
                       found = true;
                   }
               }
           }
           y = best;
           argmax = where;""",
        "nnbox_max_pool")(cupy.ascontiguousarray(x).reshape(-1), h, w, out_size[0], out_size[1], kernel[0], kernel[1],
                          stride[0], stride[1], padding[0], padding[1], y, argmax)
    return y, argmax
