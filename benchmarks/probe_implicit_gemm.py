"""A measured dead end, kept so it can be rerun: convolutions as "implicit GEMM" through OpenBLAS.

    python benchmarks/probe_implicit_gemm.py

nnbox's CPU convolutions build im2col columns (or, for transposed convolutions, product columns
that col2im folds back); at 64x64 those copies are about a third of a DCGAN step
(docs/performance.md). NumPy's `matmul` cannot avoid them: it cannot read a strided window of an
array as a matrix operand, nor add a product into an existing array. The BLAS behind NumPy can do
both (`cblas_sgemm` with a leading dimension and beta = 1), so this probe calls NumPy's own OpenBLAS
through ctypes and computes the kernel-4, stride-2, padding-1 layers of the DCGANs without columns:

- Conv2d: the padded input split into its four stride phases, batch-last, one row longer and one
  column wider than the output grid; tap (kh, kw) of the kernel reads phase (kh % 2, kw % 2) shifted
  by (kh // 2, kw // 2), which in the flattened phase is a column offset. y = sum over the 16 taps
  of W[:, :, kh, kw] @ phase[:, offset:offset + L], accumulated by beta = 1, in chunks of L so the
  output stays in the cache. The grid's extra column is computed and dropped.
- ConvTranspose2d: the input on a grid two columns wider (zeros there), and each tap's product
  W[:, :, kh, kw].T @ x added (beta = 1) straight into the output's stride phase at its offset.

- Conv2d by shifts (tenth round): the same phases, read as one (4 C_in, ...) matrix whose rows are
  (channel, row phase, column phase), so the 16 taps group into 4 products, one per shift (0 or 1
  row, 0 or 1 column), each with inner dimension 4 C_in: a stride-2 convolution as a stride-1
  2x2 convolution of the space-to-depth image.

All three agree with nnbox's layers to float32 rounding, and all are slower at every DCGAN shape
(this VM, eighth/ninth round: e.g. D.conv2 64->128 on 32x32 42 ms against nnbox's 30; G.convT4
128->64 on 16x16 58 against 32): each product has only C_in (not 16 C_in) as its inner dimension,
OpenBLAS packs its operands again for each of the 16 calls, and the accumulation reads and writes
the output 16 times. Grouping the taps by shift (inner dimension 4 C_in, 4 calls) helps but not
enough (tenth round: D.conv2 64->128 on 32x32 42 ms against nnbox's 29, D.conv4 29 against 18, the
32x32 DCGAN's D.conv2 2.7 against 2.6): OpenBLAS runs these products, whose second operand has a long leading dimension,
at about 120 GFLOP/s against about 200 for im2col's one product. So nnbox keeps im2col/col2im; the copies it would save are smaller than the
efficiency the products lose. Linux with NumPy's OpenBLAS only (nnbox.blas finds the library).
"""
import ctypes
import os
import statistics
import sys
import time

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")  # as nnbox and bench_train set it
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from layers.conv import Conv2d, ConvTranspose2d  # noqa: E402
from nnbox import blas  # noqa: E402

ROW_MAJOR, NO_TRANS = 101, 111


def _sgemm():
    """cblas_sgemm of the OpenBLAS NumPy loaded (64-bit integers in NumPy's own wheels)."""
    library = blas._library()
    if library is None:
        sys.exit("probe_implicit_gemm: NumPy's OpenBLAS was not found (Linux with NumPy's own OpenBLAS only)")
    for name, integer in (("scipy_cblas_sgemm64_", ctypes.c_int64), ("cblas_sgemm64_", ctypes.c_int64),
                          ("scipy_cblas_sgemm", ctypes.c_int), ("cblas_sgemm", ctypes.c_int)):
        function = getattr(library, name, None)
        if function is not None:
            function.restype = None
            function.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, integer, integer, integer, ctypes.c_float,
                                 ctypes.c_void_p, integer, ctypes.c_void_p, integer, ctypes.c_float,
                                 ctypes.c_void_p, integer]
            return function
    sys.exit("probe_implicit_gemm: this OpenBLAS exports no cblas_sgemm")


SGEMM = _sgemm()


def _gemm(m, n, k, a, lda, b, ldb, beta, c, ldc):
    """c[m, n] (row stride ldc, address c) = a @ b + beta * c, addresses and strides in floats."""
    SGEMM(ROW_MAJOR, NO_TRANS, NO_TRANS, m, n, k, 1.0, a, lda, b, ldb, beta, c, ldc)


def conv2d_implicit(x, weight, chunk=16384):
    """x (N, C, H, W), weight (O, C, 4, 4), stride 2, padding 1 -> (N, O, H/2, W/2)."""
    n, c, h, w = x.shape
    o, oh, ow = weight.shape[0], h // 2, w // 2
    phases = np.zeros((c, 2, 2, oh + 2, ow + 1, n), np.float32)     # padded row 2t + a -> phase a, row t
    image = x.transpose(1, 2, 3, 0)
    for a in range(2):
        for b in range(2):
            phases[:, a, b, 1 - a:oh + 1 - a, 1 - b:ow + 1 - b] = image[:, 1 - a::2, 1 - b::2]
    span = (oh + 2) * (ow + 1) * n
    flat = phases.reshape(c, 4, span)
    length = oh * (ow + 1) * n
    out = np.empty((o, length), np.float32)
    taps = np.ascontiguousarray(weight.transpose(2, 3, 0, 1))         # (4, 4, O, C)
    item = 4
    for start in range(0, length, chunk):
        cols = min(chunk, length - start)
        for t, (kh, kw) in enumerate((kh, kw) for kh in range(4) for kw in range(4)):
            offset = ((kh // 2) * (ow + 1) + kw // 2) * n
            source = flat.ctypes.data + ((kh % 2 * 2 + kw % 2) * span + start + offset) * item
            _gemm(o, cols, c, taps[kh, kw].ctypes.data, c, source, 4 * span, 1.0 if t else 0.0,
                  out.ctypes.data + start * item, length)
    grid = out.reshape(o, oh, ow + 1, n)[:, :, :ow]
    return np.ascontiguousarray(grid.transpose(3, 0, 1, 2))


def conv2d_by_shifts(x, weight):
    """x (N, C, H, W), weight (O, C, 4, 4), stride 2, padding 1 -> (N, O, H/2, W/2): four products
    with inner dimension 4 C, one per shift (di, dj) of the space-to-depth image (module docstring)."""
    n, c, h, w = x.shape
    o, oh, ow = weight.shape[0], h // 2, w // 2
    phases = np.zeros((c, 2, 2, oh + 2, ow + 1, n), np.float32)
    image = x.transpose(1, 2, 3, 0)
    for a in range(2):
        for b in range(2):
            phases[:, a, b, 1 - a:oh + 1 - a, 1 - b:ow + 1 - b] = image[:, 1 - a::2, 1 - b::2]
    span = (oh + 2) * (ow + 1) * n
    length = oh * (ow + 1) * n
    out = np.empty((o, length), np.float32)
    for shift, (di, dj) in enumerate((di, dj) for di in range(2) for dj in range(2)):
        # kernel tap (2 di + a, 2 dj + b) reads phase (a, b) shifted by (di, dj): rows (c, a, b)
        taps = np.ascontiguousarray(weight[:, :, 2 * di:2 * di + 2, 2 * dj:2 * dj + 2]).reshape(o, 4 * c)
        offset = (di * (ow + 1) + dj) * n
        _gemm(o, length, 4 * c, taps.ctypes.data, 4 * c, phases.ctypes.data + offset * 4, span,
              1.0 if shift else 0.0, out.ctypes.data, length)
    grid = out.reshape(o, oh, ow + 1, n)[:, :, :ow]
    return np.ascontiguousarray(grid.transpose(3, 0, 1, 2))


def conv_transpose2d_implicit(x, weight):
    """x (N, C, H, W), weight (C, O, 4, 4), stride 2, padding 1 -> (N, O, 2H, 2W)."""
    n, c, h, w = x.shape
    o, width = weight.shape[1], w + 2
    grid = np.zeros((c, h, width, n), np.float32)
    grid[:, :, :w] = x.transpose(1, 2, 3, 0)
    length = h * width * n
    span = (h + 3) * width * n
    phases = np.zeros((2, 2, o, span), np.float32)          # output row 2t + a - 2 -> phase a, row t
    taps = np.ascontiguousarray(weight.transpose(2, 3, 1, 0))         # (4, 4, O, C)
    for kh in range(4):
        for kw in range(4):
            a, b = (kh + 1) % 2, (kw + 1) % 2
            offset = (((kh - 1 - a) // 2 + 1) * width + (kw - 1 - b) // 2 + 1) * n
            target = phases.ctypes.data + ((a * 2 + b) * o * span + offset) * 4
            _gemm(o, length, c, taps[kh, kw].ctypes.data, c, grid.ctypes.data, length, 1.0, target, span)
    phases = phases.reshape(2, 2, o, h + 3, width, n)
    out = np.empty((n, o, 2 * h, 2 * w), np.float32)
    for a in range(2):
        for b in range(2):
            out[:, :, a::2, b::2] = phases[a, b, :, 1:h + 1, 1:w + 1].transpose(3, 0, 1, 2)
    return out


# (layer, nnbox class, probe, in_channels, out_channels, input size), batch 64
LAYERS = [
    ("D.conv2 64->128 32->16", Conv2d, conv2d_implicit, 64, 128, 32),
    ("D.conv3 128->256 16->8", Conv2d, conv2d_implicit, 128, 256, 16),
    ("D.conv4 256->512 8->4", Conv2d, conv2d_implicit, 256, 512, 8),
    ("D.conv1 3->64 64->32", Conv2d, conv2d_implicit, 3, 64, 64),
    ("dcgan32 D.conv2 32->64 16->8", Conv2d, conv2d_implicit, 32, 64, 16),
    ("by shifts: D.conv2 64->128 32->16", Conv2d, conv2d_by_shifts, 64, 128, 32),
    ("by shifts: D.conv3 128->256 16->8", Conv2d, conv2d_by_shifts, 128, 256, 16),
    ("by shifts: D.conv4 256->512 8->4", Conv2d, conv2d_by_shifts, 256, 512, 8),
    ("by shifts: dcgan32 D.conv2 32->64 16->8", Conv2d, conv2d_by_shifts, 32, 64, 16),
    ("by shifts: dcgan32 D.conv3 64->128 8->4", Conv2d, conv2d_by_shifts, 64, 128, 8),
    ("G.convT2 512->256 4->8", ConvTranspose2d, conv_transpose2d_implicit, 512, 256, 4),
    ("G.convT3 256->128 8->16", ConvTranspose2d, conv_transpose2d_implicit, 256, 128, 8),
    ("G.convT4 128->64 16->32", ConvTranspose2d, conv_transpose2d_implicit, 128, 64, 16),
    ("G.convT5 64->3 32->64", ConvTranspose2d, conv_transpose2d_implicit, 64, 3, 32),
    ("dcgan32 G.convT3 64->32 8->16", ConvTranspose2d, conv_transpose2d_implicit, 64, 32, 8),
]


def main(repeats=7, batch=64):
    rng = np.random.default_rng(0)
    print(f"{'layer (forward, batch 64, float32)':40s} {'nnbox ms':>9s} {'implicit ms':>12s} {'ratio':>6s}  max rel. difference")
    for name, layer_class, probe, cin, cout, size in LAYERS:
        layer = layer_class(cin, cout, 4, stride=2, padding=1, bias=False)
        layer.weight.data[...] = 0.05 * rng.standard_normal(layer.weight.data.shape, dtype=np.float32)
        x = rng.standard_normal((batch, cin, size, size), dtype=np.float32)
        expected = layer.forward(x)
        difference = np.abs(probe(x, layer.weight.data) - expected).max() / np.abs(expected).max()
        times = {"nnbox": [], "implicit": []}
        for _ in range(repeats):                      # alternate, so both see the same machine noise
            for label, run in (("nnbox", lambda: layer.forward(x)), ("implicit", lambda: probe(x, layer.weight.data))):
                start = time.perf_counter()
                run()
                times[label].append(1e3 * (time.perf_counter() - start))
        ours, implicit = statistics.median(times["nnbox"]), statistics.median(times["implicit"])
        print(f"{name:40s} {ours:9.2f} {implicit:12.2f} {implicit / ours:6.2f}  {difference:.1e}")


if __name__ == "__main__":
    main()
