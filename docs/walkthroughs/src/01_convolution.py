# %% [markdown]
# # 1. Convolution and transposed convolution, by hand
#
# A convolutional GAN is built from two layers: the discriminator's `Conv2d`, which turns a large
# image into a small stack of feature maps, and the generator's `ConvTranspose2d`, which turns a
# small stack back into a large image. This walkthrough works both out by hand and then checks that
# nnbox does exactly the same:
#
# 1. the output-size formulas (stride, padding, dilation, output padding);
# 2. the transposed convolution as a **sum of scaled kernels**, on a 2x2 example you can do on paper;
# 3. the DCGAN layer 512x4x4 -> 256x8x8 (kernel 4, stride 2, padding 1): shapes and parameters;
# 4. im2col: the convolution as one matrix product;
# 5. why the transposed convolution is the convolution's **adjoint**, and therefore its backward;
# 6. parity with PyTorch (when torch is installed).
#
# Every claim is checked with an `assert`, so the notebook doubles as a test.

# %%
import os

import matplotlib.pyplot as plt
import numpy as np

import layers
from layers import conv_maths
from nnbox.gradcheck import gradcheck

FAST = os.environ.get("NNBOX_FAST") == "1"   # the test suite sets this: smaller checks
plt.rcParams["figure.dpi"] = 80
np.set_printoptions(precision=4, suppress=True)
rng = np.random.default_rng(0)

# %% [markdown]
# ## 1. Output sizes
#
# A `Conv2d` slides a $k \times k$ kernel over the input, `stride` $s$ pixels at a time, after adding
# $p$ rows and columns of zeros on every side. With dilation $d$ the kernel taps are $d$ pixels apart,
# so the kernel reaches over $d(k-1)+1$ pixels. The number of positions that fit is
#
# $$ H_\text{out} = \left\lfloor \frac{H + 2p - d(k-1) - 1}{s} \right\rfloor + 1 . $$
#
# A `ConvTranspose2d` with the same $k, s, p, d$ goes the other way: it is the layer whose *input*
# has the size of that convolution's output. Inverting the formula (without the floor) gives
#
# $$ H_\text{out} = (H - 1)\,s - 2p + d(k-1) + o + 1 , $$
#
# where $o$ is the layer's `output_padding` (0 by default).
#
# The floor is why `output_padding` exists: with $s > 1$ several input sizes of the convolution give
# the same output size. With $k=4, s=2, p=1$ an 8x8 image gives $\lfloor 6/2 \rfloor + 1 = 4$ and a
# 9x9 image gives $\lfloor 7/2 \rfloor + 1 = 4$ too, so the transposed layer must be told which one
# to produce. `output_padding` (smaller than the stride) adds the missing rows at the bottom and
# columns at the right.

# %%
def conv_out(h, k, s=1, p=0, d=1):
    return (h + 2 * p - d * (k - 1) - 1) // s + 1


def conv_transpose_out(h, k, s=1, p=0, op=0, d=1):
    return (h - 1) * s - 2 * p + d * (k - 1) + op + 1


print(" H  k  s  p  d | conv  | transposed back (output_padding 0 .. s - 1)")
cases = [(8, 4, 2, 1, 1), (9, 4, 2, 1, 1), (28, 5, 1, 2, 1), (28, 3, 2, 1, 1), (32, 3, 1, 2, 2), (7, 3, 3, 0, 1)]
for h, k, s, p, d in cases:
    conv = layers.Conv2d(1, 1, k, stride=s, padding=p, dilation=d)
    oh = conv_out(h, k, s, p, d)
    assert conv(np.zeros((1, 1, h, h), np.float32)).shape == (1, 1, oh, oh)   # the formula is nnbox's
    assert conv.output_size(h, h) == (oh, oh)
    back = []
    for op in range(s):                            # the output_paddings that convolve back to oh
        tconv = layers.ConvTranspose2d(1, 1, k, stride=s, padding=p, output_padding=op, dilation=d)
        th = conv_transpose_out(oh, k, s, p, op, d)
        assert tconv(np.zeros((1, 1, oh, oh), np.float32)).shape == (1, 1, th, th)
        assert conv_out(th, k, s, p, d) == oh      # the transposed layer's output convolves back to oh
        back.append(th)
    assert h in back, "one output_padding recovers the original size"
    print(f"{h:2d} {k:2d} {s:2d} {p:2d} {d:2d} | {oh:4d}  | {back}")

# %% [markdown]
# Each row: the convolution's output size, then what the transposed convolution with the same
# geometry makes of it with each `output_padding` from $0$ to $s - 1$ (the sizes that convolve back to
# the same output; the layer also accepts up to $d - 1$). The original
# $H$ is always among them: for $H = 8$ it is `output_padding=0`, for $H = 9$ it is
# `output_padding=1`, and for $H = 7$ with stride 3 it is `output_padding=1` of three.
#
# ## 2. The transposed convolution as a sum of scaled kernels
#
# A convolution *gathers*: each output pixel is a weighted sum of a window of input pixels.
# A transposed convolution *scatters*: each input pixel $x_{ab}$ multiplies the whole kernel $K$ and
# adds the product into the output, at the block that starts at row $a s$, column $b s$ (with padding
# $p$ the full result is then cropped by $p$ rows and columns on every side, so the block starts at
# $(a s - p,\ b s - p)$ of the output):
#
# $$ Y = \sum_{a,b} x_{ab}\; \operatorname{shift}_{(a s,\, b s)}(K). $$
#
# With the input $X = \begin{pmatrix}0&1\\2&3\end{pmatrix}$ and the kernel
# $K = \begin{pmatrix}0&1\\2&3\end{pmatrix}$ (stride 1, no padding) the output is
# $(2-1)\cdot 1 + 2 = 3$ pixels wide, and it is the sum of four 3x3 pictures, one per input pixel:

# %%
X = np.array([[0.0, 1.0], [2.0, 3.0]])
K = np.array([[0.0, 1.0], [2.0, 3.0]])
stride = 1
out = conv_transpose_out(2, 2, stride)

pieces = {}
for a in range(2):
    for b in range(2):
        piece = np.zeros((out, out))
        piece[a * stride:a * stride + 2, b * stride:b * stride + 2] = X[a, b] * K
        pieces[(a, b)] = piece
        print(f"x[{a},{b}] = {X[a, b]:g} times K, placed at ({a * stride}, {b * stride}):\n{piece}\n")
Y = sum(pieces.values())
print("sum:\n", Y)
assert np.array_equal(Y, [[0, 0, 1], [0, 4, 6], [4, 12, 9]])

# %% [markdown]
# Now the same with nnbox. A `ConvTranspose2d(1, 1, 2)` has a weight of shape
# (in_channels, out_channels, kh, kw) = (1, 1, 2, 2); we set it to $K$ and switch the bias off.

# %%
tconv = layers.ConvTranspose2d(1, 1, kernel_size=2, stride=1, padding=0, bias=False, dtype=np.float64)
tconv.weight.data[...] = K
Y_nnbox = tconv(X.reshape(1, 1, 2, 2))[0, 0]
print(Y_nnbox)
assert np.array_equal(Y_nnbox, Y)

panels = [(f"x[{a},{b}] = {X[a, b]:g} times K", piece) for (a, b), piece in pieces.items()]
fig, axes = plt.subplots(1, 5, figsize=(11, 2.6))
for ax, (title, image) in zip(axes, panels + [("sum = the output", Y)]):
    ax.imshow(image, cmap="Blues", vmin=0, vmax=12)
    for (i, j), value in np.ndenumerate(image):
        ax.text(j, i, f"{value:g}", ha="center", va="center")
    ax.set_xticks([]), ax.set_yticks([])
    ax.set_title(title, fontsize=10)
plt.tight_layout()
plt.show()

# %% [markdown]
# With stride 2 the blocks would be placed 2 pixels apart: a 2x2 kernel then tiles a 4x4 output
# without overlap. When the kernel is not a multiple of the stride (kernel 3, stride 2) some output
# pixels receive more contributions than their neighbours; that is the origin of the
# "checkerboard" pattern of some generators. Counting the contributions (a transposed convolution
# of a 4x4 image of ones with a kernel of ones) shows it; only the outer border, where the input
# stops, differs for the even kernel:

# %%
def contributions(k, s, p, size=4):
    layer = layers.ConvTranspose2d(1, 1, k, stride=s, padding=p, bias=False, dtype=np.float64)
    layer.weight.data[...] = 1.0
    return layer(np.ones((1, 1, size, size)))[0, 0]


even = contributions(4, 2, 1)   # the DCGAN's choice: every inner pixel gets 2 x 2 = 4 contributions
odd = contributions(3, 2, 1)    # kernel 3, stride 2: 1, 2 or 4 contributions -> a checkerboard
print("kernel 4, stride 2, padding 1:\n", even, "\nkernel 3, stride 2, padding 1:\n", odd)
assert np.all(even[1:-1, 1:-1] == 4)                     # only the border sees fewer (the input ends)
assert set(np.unique(odd[1:-1, 1:-1])) == {1.0, 2.0, 4.0}

# %% [markdown]
# ## 3. The DCGAN layer: 512 x 4 x 4 -> 256 x 8 x 8
#
# A DCGAN generator doubles the image size at each layer with kernel 4, stride 2, padding 1:
# $(4-1)\cdot 2 - 2\cdot 1 + (4-1) + 1 = 8$. The weight holds one 4x4 kernel for every pair of
# (input channel, output channel), plus one bias per output channel:
#
# $$ 512 \cdot 256 \cdot 4 \cdot 4 + 256 = 2\,097\,152 + 256 = 2\,097\,408 \text{ parameters.} $$
#
# The discriminator's mirror layer, `Conv2d(256, 512, 4, stride=2, padding=1)`, maps 8x8 back to
# $\lfloor (8 + 2 - 3 - 1)/2 \rfloor + 1 = 4$, with a weight of the very same shape.

# %%
up = layers.ConvTranspose2d(512, 256, kernel_size=4, stride=2, padding=1, rng=0)
down = layers.Conv2d(256, 512, kernel_size=4, stride=2, padding=1, rng=0)
z = rng.standard_normal((2, 512, 4, 4)).astype(np.float32)
image = up(z)
n_params = sum(p.data.size for p in up.parameters())
print("input", z.shape, "-> output", image.shape)
print("weight", up.weight.data.shape, "bias", up.bias.data.shape, "parameters:", f"{n_params:,}")
assert image.shape == (2, 256, 8, 8)
assert n_params == 512 * 256 * 4 * 4 + 256 == 2_097_408
assert down(image).shape == (2, 512, 4, 4)
assert down.weight.data.shape == up.weight.data.shape == (512, 256, 4, 4)

# %% [markdown]
# ## 4. im2col: a convolution is one matrix product
#
# Written out, a convolution (PyTorch's and nnbox's are cross-correlations: the kernel is not
# flipped) is
#
# $$ y_{n,o,i,j} = b_o + \sum_{c,u,v} W_{o,c,u,v}\; x^\text{pad}_{n,\,c,\; i s + u d,\; j s + v d}. $$
#
# Loops over $n, o, i, j, c, u, v$ are slow in Python. **im2col** copies every window the kernel
# reads into one column of a matrix: `cols` has one row per (channel, kernel row, kernel column) and
# one column per (image, output row, output column). The kernel, flattened to
# $W_2 = W.\text{reshape}(O, C k_h k_w)$, then meets every window at once:
#
# $$ Y = W_2 \cdot \text{cols}, \qquad (O \times C k_h k_w)\cdot(C k_h k_w \times N H_\text{out} W_\text{out}). $$
#
# For a 3x4 image and a 2x2 kernel the six windows become the six columns (a square image would
# give a symmetric `cols` here, and the print below could not tell taps from windows):

# %%
small = np.arange(12.0).reshape(1, 1, 3, 4)
cols = conv_maths.im2col(small, (2, 2), (1, 1), (0, 0), (1, 1), (2, 3))
print("image:\n", small[0, 0], "\ncols (rows: kernel taps (u, v); columns: windows (i, j)):\n", cols)
assert cols.shape == (4, 6)                              # 4 taps, 2 x 3 windows
assert np.array_equal(cols[:, 0], [0, 1, 4, 5])          # the top-left window, read row by row
assert np.array_equal(cols[:, 5], [6, 7, 10, 11])        # the bottom-right window

# %% [markdown]
# Now a real case (2 images, 3 channels, 4 output channels, stride 2, padding 1), three ways: the
# seven nested loops of the formula, the im2col product, and `layers.Conv2d`.

# %%
def conv_loops(x, W, b, s, p):
    """The formula above with explicit loops: slow, but obviously right."""
    n, c, h, w = x.shape
    o, _, k, _ = W.shape
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    oh, ow = conv_out(h, k, s, p), conv_out(w, k, s, p)
    y = np.zeros((n, o, oh, ow))
    for ni in range(n):
        for oi in range(o):
            for i in range(oh):
                for j in range(ow):
                    y[ni, oi, i, j] = b[oi] + np.sum(W[oi] * xp[ni, :, i * s:i * s + k, j * s:j * s + k])
    return y


conv = layers.Conv2d(3, 4, kernel_size=3, stride=2, padding=1, rng=1, dtype=np.float64)
x = rng.standard_normal((2, 3, 7, 7))
W, b = conv.weight.data, conv.bias.data
oh = conv_out(7, 3, 2, 1)
cols = conv_maths.im2col(x, (3, 3), (2, 2), (1, 1), (1, 1), (oh, oh))
y_matrix = W.reshape(4, -1) @ cols                                  # (4, 2 * oh * oh)
y_im2col = y_matrix.reshape(4, 2, oh, oh).transpose(1, 0, 2, 3) + b.reshape(1, 4, 1, 1)
y_loops = conv_loops(x, W, b, 2, 1)
print("cols:", cols.shape, " W2:", W.reshape(4, -1).shape, " y:", y_loops.shape)
assert np.allclose(y_im2col, y_loops)
assert np.allclose(conv(x), y_loops)

# %% [markdown]
# ## 5. The transposed convolution is the convolution's adjoint
#
# Without its bias a convolution is linear in $x$: flatten $x$ and $y$ into vectors and it is a
# (huge, mostly zero) matrix $A$, $y = A x$. The **adjoint** (transpose) $A^\top$ is the one linear
# map with
#
# $$ \langle A x, y \rangle = \langle x, A^\top y \rangle \quad \text{for every } x, y . $$
#
# Row $r$ of $A$ says which input pixels output pixel $r$ gathers, with which weights. Column $q$ of
# $A$, which is row $q$ of $A^\top$, says which output pixels input pixel $q$ contributes to, with
# which weights; that is exactly the scatter of section 2. So **the transposed convolution with the
# same weight computes $A^\top y$**, which is where its name comes from.
#
# In nnbox both layers store the weight as (channels of the small image's side, channels of the
# large image's side, kh, kw): Conv2d's (out, in) is ConvTranspose2d's (in, out). So a
# `Conv2d(3, 5, ...)` and a `ConvTranspose2d(5, 3, ...)` share one weight array, of shape (5, 3, 4, 4). We check the
# identity numerically, and then build both matrices column by column (apply each layer to every
# basis vector) to see that one is the transpose of the other.

# %%
k, s, p = 4, 2, 1
conv = layers.Conv2d(3, 5, k, stride=s, padding=p, bias=False, rng=2, dtype=np.float64)
tconv = layers.ConvTranspose2d(5, 3, k, stride=s, padding=p, bias=False, dtype=np.float64)
tconv.weight.data = conv.weight.data        # the same array: (5, 3, 4, 4) for both

x = rng.standard_normal((2, 3, 8, 8))       # the "large" side
y = rng.standard_normal((2, 5, 4, 4))       # the "small" side
lhs = np.sum(conv(x) * y)                   # <conv(x), y>
rhs = np.sum(x * tconv(y))                  # <x, conv_T(y)>
print(f"<conv(x), y> = {lhs:.12f}\n<x, convT(y)> = {rhs:.12f}")
assert np.isclose(lhs, rhs, rtol=1e-12)


def as_matrix(layer, in_shape):
    """The matrix of a linear layer: column q is the layer applied to the q-th basis image."""
    size = int(np.prod(in_shape))
    basis = np.eye(size).reshape((size,) + in_shape)
    return layer(basis).reshape(size, -1).T


A = as_matrix(conv, (3, 8, 8))              # (5*4*4, 3*8*8) = (80, 192)
A_T = as_matrix(tconv, (5, 4, 4))           # (192, 80)
print("A:", A.shape, " convT matrix:", A_T.shape, f" nonzero fraction of A: {np.mean(A != 0):.2f}")
assert np.array_equal(A_T, A.T)

plt.figure(figsize=(9, 2.2))
plt.imshow(A != 0, cmap="Greys", aspect="auto", interpolation="nearest")
plt.title("the convolution as a matrix A (80 x 192): black = a weight, white = 0")
plt.xlabel("input pixel (channel, row, column)"), plt.ylabel("output pixel")
plt.show()

# %% [markdown]
# ### ... and therefore its backward
#
# For any loss $L$ and $y = A x$, the chain rule gives $\partial L/\partial x = A^\top\, \partial L/\partial y$.
# So the backward pass of a convolution (for its input) *is* a transposed convolution of the upstream
# gradient, and the backward pass of a transposed convolution is a convolution. nnbox's layers are
# written that way, from the same two routines (`_convolve` and `_convolve_adjoint` in
# `layers/conv.py`), so the check below holds exactly, not just to rounding:

# %%
dy = rng.standard_normal((2, 5, 4, 4))
conv(x)
dx_from_conv_backward = conv.backward(dy)
assert np.array_equal(dx_from_conv_backward, tconv(dy))

dz = rng.standard_normal((2, 3, 8, 8))
tconv(y)
assert np.array_equal(tconv.backward(dz), conv(dz))
print("Conv2d.backward = ConvTranspose2d.forward, and ConvTranspose2d.backward = Conv2d.forward")

# %% [markdown]
# The weight gradient comes from the same matrices: it is (small-side matrix) $\cdot$
# im2col(large-side image)$^\top$, where exactly one of the two is a gradient. For `Conv2d`,
# $dW_2 = dY \cdot \text{im2col}(x)^\top$ ($dY$ the gradient of its small output); for
# `ConvTranspose2d`, $dW_2 = X \cdot \text{im2col}(dY)^\top$ ($X$ its small input, $dY$ the gradient of
# its large output). `nnbox.gradcheck` confirms both layers, input and weights, against central
# differences (walkthrough 4 explains how):

# %%
n_check = 1 if FAST else 2
for layer, inp in [(layers.Conv2d(2, 3, 4, stride=2, padding=1, rng=3), rng.standard_normal((n_check, 2, 6, 6))),
                   (layers.ConvTranspose2d(3, 2, 4, stride=2, padding=1, output_padding=1, rng=4),
                    rng.standard_normal((n_check, 3, 3, 3)))]:
    report = gradcheck(layer, inp, rng=0)
    print(type(layer).__name__, {name: f"{err:.1e}" for name, err in report.max_abs_error.items()})

# %% [markdown]
# ## 6. Parity with PyTorch
#
# nnbox follows PyTorch's conventions (NCHW, cross-correlation, weight layouts), so the same weights
# give the same outputs. This cell runs only when torch is installed (and not in the test suite's
# fast mode, where importing torch would take most of the time; `tests/test_conv.py` has the full
# parity tests).

# %%
import importlib.util

run_parity = not FAST and importlib.util.find_spec("torch") is not None
print("torch parity:", "running" if run_parity else "skipped (fast mode, or torch not installed)")
if run_parity:
    import torch
    import torch.nn.functional as F
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a))
    Y_torch = F.conv_transpose2d(t(X.reshape(1, 1, 2, 2)), t(K.reshape(1, 1, 2, 2)))[0, 0].numpy()
    assert np.array_equal(Y_torch, Y)
    assert np.allclose(F.conv2d(t(x), t(conv.weight.data), stride=s, padding=p).numpy(), conv(x))
    assert np.allclose(F.conv_transpose2d(t(y), t(tconv.weight.data), stride=s, padding=p).numpy(), tconv(y))
    print(f"torch {torch.__version__}: the worked example, Conv2d and ConvTranspose2d agree with nnbox")

# %% [markdown]
# ## Summary
#
# - Convolution output: $\lfloor (H + 2p - d(k-1) - 1)/s \rfloor + 1$; transposed:
#   $(H-1)s - 2p + d(k-1) + o + 1$ with $o$ = `output_padding`.
# - A transposed convolution scatters: every input pixel adds a scaled copy of the kernel into the
#   output, $s$ pixels apart. Kernel 4 with stride 2 covers every interior output pixel equally
#   often (4 times; the border fewer).
# - im2col turns the convolution into one matrix product $W_2 \cdot \text{cols}$.
# - The transposed convolution is the adjoint $A^\top$ of the convolution $A$ with the same weight,
#   $\langle Ax, y\rangle = \langle x, A^\top y\rangle$, so each layer's input gradient is the other
#   layer's forward pass.
#
# Next: [2. Pooling and unpooling](02_pooling.ipynb).
