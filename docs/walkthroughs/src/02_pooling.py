# %% [markdown]
# # 2. Pooling and unpooling
#
# Max-pooling shrinks a feature map by keeping the largest value of each window. It throws away
# *where* in the window that value was, unless we keep a note of it: the **switches** (PyTorch calls
# them indices). With the switches, **max-unpooling** can put every value back where it came from.
# A generator has no switches (nothing was pooled before it), so it upsamples with an
# **unpooling** that needs none: each value fills its block, either at one corner ("zeros") or
# everywhere ("nearest").
#
# This walkthrough works each operation out on a 4x4 array, shows it on a face, and then looks at
# the backward passes: max-pooling sends each window's gradient to its switch and nowhere else.

# %%
import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

import layers
from nnbox.gradcheck import gradcheck
from nnbox.synthetic_faces import synthetic_faces

FAST = os.environ.get("NNBOX_FAST") == "1"   # the test suite sets this: smaller checks
plt.rcParams["figure.dpi"] = 80
np.set_printoptions(precision=3, suppress=True)
rng = np.random.default_rng(0)


def as_batch(image):
    """(H, W) -> (1, 1, H, W), the NCHW layout every layer takes."""
    return np.asarray(image, dtype=np.float64)[None, None]

# %% [markdown]
# ## 1. Max-pooling and its switches
#
# With a $k \times k$ window moved $s$ pixels at a time (here $k = s = 2$: the windows tile the
# image), max-pooling keeps
#
# $$ y_{ij} = \max_{0 \le u, v < k} x_{\,i s + u,\; j s + v} $$
#
# and the switch of window $(i, j)$ is where that maximum sits, written as one flat index into the
# input plane: $\text{index}_{ij} = h \cdot W + w$ for the winning pixel $(h, w)$ of an image
# $W$ pixels wide.

# %%
x = np.array([[1, 3, 2, 0],
              [4, 2, 1, 5],
              [0, 6, 3, 1],
              [2, 1, 7, 2]], dtype=np.float64)
pool = layers.MaxPool2d(2, return_indices=True)
y, switches = pool(as_batch(x))
print("x:\n", x, "\nmax-pooled y:\n", y[0, 0], "\nswitches (flat indices h * 4 + w):\n", switches[0, 0])
print("as (row, column):", [divmod(int(i), 4) for i in switches[0, 0].ravel()])

# the same maxima from a plain reshape: split each axis into (window, position in the window)
assert np.array_equal(y[0, 0], x.reshape(2, 2, 2, 2).max(axis=(1, 3)))
assert np.array_equal(y[0, 0], [[4, 5], [6, 7]])
assert np.array_equal(switches[0, 0], [[4, 7], [9, 14]])     # (1,0), (1,3), (2,1), (3,2)
assert np.array_equal(x.ravel()[switches[0, 0]], y[0, 0])    # the switches point at the maxima

# %% [markdown]
# ## 2. Max-unpooling with the switches
#
# `MaxUnpool2d` is the inverse bookkeeping: an output of the input's size, zero everywhere except
# at each switch, which receives its window's value:
#
# $$ \text{unpool}(y, \text{index})_{hw} = \begin{cases} y_{ij} & \text{if } h W + w = \text{index}_{ij} \\ 0 & \text{otherwise.} \end{cases} $$
#
# It is not an inverse of pooling (the non-maxima are gone) but it keeps the structure: every value
# is back at its exact position, and for non-negative images (as here) pooling the result again
# gives $y$ back; a window whose maximum is negative would lose to the zeros around it. Decoders and "deconvolution networks" (Zeiler and Fergus, 2014)
# use it to map features back to pixels.

# %%
unpool = layers.MaxUnpool2d(2)
restored = unpool(y, switches)[0, 0]
print("max-unpooled:\n", restored)
is_window_max = x == np.kron(y[0, 0], np.ones((2, 2)))      # True where x equals its window's max
assert np.array_equal(restored, np.where(is_window_max, x, 0.0))
assert np.array_equal(pool(as_batch(restored))[0], y)        # pooling it again gives y back (x >= 0 here:
                                                               # a negative maximum would lose to the zeros)

# %% [markdown]
# ## 3. Unpooling without switches: "zeros" and "nearest"
#
# A generator starts from noise; no pooling happened before it, so there are no switches. Two fixed
# choices remain for where a value goes in its $k \times k$ block ($k = 2$ here), both available as
# `layers.Unpool2d(k, mode=...)`:
#
# - **"zeros"**: the value at the top-left of its block, zeros elsewhere (the unpooling of
#   Dosovitskiy et al., 2015, "Learning to generate chairs"); as if every switch pointed at the
#   top-left corner. The convolution after it fills the gaps.
# - **"nearest"**: the value repeated over the whole block (nearest-neighbour upsampling), the
#   upsampling often used instead of transposed convolutions to avoid checkerboard artefacts.
#
# With a Kronecker product: zeros $= y \otimes \begin{pmatrix}1&0\\0&0\end{pmatrix}$,
# nearest $= y \otimes \begin{pmatrix}1&1\\1&1\end{pmatrix}$.

# %%
zeros_up = layers.Unpool2d(2, mode="zeros")
nearest_up = layers.Unpool2d(2, mode="nearest")
z_out, n_out = zeros_up(y)[0, 0], nearest_up(y)[0, 0]
print("zeros:\n", z_out, "\nnearest:\n", n_out)
assert np.array_equal(z_out, np.kron(y[0, 0], [[1, 0], [0, 0]]))
assert np.array_equal(n_out, np.kron(y[0, 0], np.ones((2, 2))))

# %% [markdown]
# Both are transposed convolutions (walkthrough 1) with a fixed kernel, stride 2, one channel at a
# time: every input value scales the kernel and adds it into its block. The kernel
# $\begin{pmatrix}1&0\\0&0\end{pmatrix}$ gives "zeros", the kernel of ones gives "nearest":

# %%
for mode, kernel in [("zeros", [[1, 0], [0, 0]]), ("nearest", [[1, 1], [1, 1]])]:
    tconv = layers.ConvTranspose2d(1, 1, 2, stride=2, bias=False, dtype=np.float64)
    tconv.weight.data[...] = kernel
    assert np.array_equal(tconv(y), layers.Unpool2d(2, mode=mode)(y)), mode
print("Unpool2d(2, mode) == ConvTranspose2d(1, 1, 2, stride=2) with a fixed kernel, for both modes")

# %% [markdown]
# ## 4. On a real image
#
# An Olivetti face (64x64 grey levels) when the data set is next to the repository, otherwise a
# synthetic face from `nnbox.synthetic_faces`. We pool with 4x4 windows (64 -> 16), so the effects
# are visible, and unpool back to 64x64 three ways.

# %%
olivetti = Path("../../../shared/data/olivetti/olivetti_faces.npy")
if olivetti.is_file():
    face = np.load(olivetti, allow_pickle=False)[0] / 255.0
    source = "Olivetti face 0"
else:
    face = synthetic_faces(1, 64, rng=0)[0].mean(axis=2) / 255.0
    source = "synthetic face (Olivetti not found)"
print(source, face.shape)

pool4 = layers.MaxPool2d(4, return_indices=True)
small, face_switches = pool4(as_batch(face))
pictures = {
    source: face,
    "max-pooled 4x4 -> 16x16": small[0, 0],
    "MaxUnpool2d (switches)": layers.MaxUnpool2d(4)(small, face_switches)[0, 0],
    'Unpool2d "zeros"': layers.Unpool2d(4, mode="zeros")(small)[0, 0],
    'Unpool2d "nearest"': layers.Unpool2d(4, mode="nearest")(small)[0, 0],
}
fig, axes = plt.subplots(1, 5, figsize=(12, 2.9))
for ax, (title, picture) in zip(axes, pictures.items()):
    ax.imshow(picture, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.axis("off")
plt.tight_layout()
plt.show()

unpooled = pictures["MaxUnpool2d (switches)"]
blocks = unpooled.reshape(16, 4, 16, 4)
assert np.all((blocks != 0).sum(axis=(1, 3)) <= 1)               # at most one pixel per 4x4 block
assert np.array_equal(pool4(as_batch(unpooled))[0], small)        # and it is the block's maximum
assert np.array_equal(pictures['Unpool2d "nearest"'], np.kron(small[0, 0], np.ones((4, 4))))

# %% [markdown]
# The switches keep the face's geometry: the bright dots sit where the bright pixels were (on the
# forehead, the cheeks, the nose), scattered inside their blocks. "zeros" puts every dot on the same
# regular grid, which is why a generator follows it with a convolution that learns to spread the
# values; "nearest" is the blocky 16x16 picture blown up.
#
# ## 5. Backward passes
#
# **Max-pooling.** Inside a window $y = \max_u x_u$ is just $x_{u^*}$ for the winning pixel $u^*$
# (when the maximum is unique), so
#
# $$ \frac{\partial y}{\partial x_u} = [u = u^*], \qquad
#    \frac{\partial L}{\partial x_{hw}} = \sum_{(i,j):\ \text{index}_{ij} = hW + w} \frac{\partial L}{\partial y_{ij}} . $$
#
# The gradient of each window goes to its switch and nowhere else; the losers get exactly zero. With
# non-overlapping windows that is *max-unpooling of the upstream gradient* with the switches:

# %%
x_rand = rng.standard_normal((2, 3, 8, 8))              # continuous values: no ties
pool = layers.MaxPool2d(2, return_indices=True)
y_rand, idx = pool(x_rand)
dy = rng.standard_normal(y_rand.shape)
dx = pool.backward(dy)
assert np.array_equal(dx, layers.MaxUnpool2d(2)(dy, idx))
assert np.count_nonzero(dx) == dy.size                  # one pixel per window receives a gradient
print(f"dx has {np.count_nonzero(dx)} non-zeros out of {dx.size}: one per window, at its switch")

# %% [markdown]
# With **overlapping** windows (kernel 3, stride 2) one pixel can be the switch of several windows,
# and then it receives the *sum* of their gradients. Put the largest value in the middle of a 5x5
# image: it wins all four 3x3 windows.

# %%
x5 = rng.uniform(0, 1, (5, 5))
x5[2, 2] = 9.0
pool3 = layers.MaxPool2d(3, stride=2, return_indices=True)
y5, idx5 = pool3(as_batch(x5))
dy5 = np.array([[1.0, 2.0], [3.0, 4.0]])
dx5 = pool3.backward(as_batch(dy5))[0, 0]
print("switches:\n", idx5[0, 0], "\ndx:\n", dx5)
assert np.all(idx5 == 12)                               # 2 * 5 + 2: the centre, four times
assert dx5[2, 2] == dy5.sum() and np.count_nonzero(dx5) == 1

# %% [markdown]
# **Max-unpooling** forward is a scatter to the switches, so its backward is the gather from them:
# $\partial L / \partial y_{ij} = \partial L / \partial \text{out}_{\text{index}_{ij}}$.
#
# **Unpooling.** "zeros" copies $y_{ij}$ to one pixel, so its backward reads the gradient at the
# block's top-left pixel (a strided subsampling, `dy[..., ::2, ::2]`); "nearest" copies it to the
# whole block, so its backward sums the gradient over the block (4 times an average pooling):

# %%
dout = rng.standard_normal((2, 3, 8, 8))
zeros_up(rng.standard_normal((2, 3, 4, 4)))
assert np.array_equal(zeros_up.backward(dout), dout[:, :, ::2, ::2])
nearest_up(rng.standard_normal((2, 3, 4, 4)))
assert np.allclose(nearest_up.backward(dout), 4 * layers.AvgPool2d(2)(dout))
print('Unpool2d backward: "zeros" = dout[..., ::2, ::2];  "nearest" = 4 * AvgPool2d(2)(dout)')

# %% [markdown]
# Finally `nnbox.gradcheck` (walkthrough 4) compares every one of these backward passes with
# central differences. Max-pooling is checked on random inputs, where ties (equal maxima, at which
# the gradient is not defined) have probability zero.

# %%
n = 1 if FAST else 2
checks = [
    ("MaxPool2d(2)", layers.MaxPool2d(2), (rng.standard_normal((n, 2, 6, 6)),)),
    ("MaxPool2d(3, stride=2)", layers.MaxPool2d(3, stride=2), (rng.standard_normal((n, 2, 7, 7)),)),
    ("MaxUnpool2d(2)", layers.MaxUnpool2d(2), (rng.standard_normal((n, 2, 3, 3)),
                                                 pool(rng.standard_normal((n, 2, 6, 6)))[1])),
    ('Unpool2d "zeros"', layers.Unpool2d(2, mode="zeros"), (rng.standard_normal((n, 2, 3, 3)),)),
    ('Unpool2d "nearest"', layers.Unpool2d(2, mode="nearest"), (rng.standard_normal((n, 2, 3, 3)),)),
]
for name, layer, inputs in checks:
    report = gradcheck(layer, *inputs, rng=0)
    print(f"{name:24s} max |analytical - numerical| = {report.max_abs_error['input 0']:.1e}")

# %% [markdown]
# ## 6. Parity with PyTorch
#
# The same maxima and the same switches as `torch.nn.functional.max_pool2d(..., return_indices=True)`;
# `max_unpool2d` and nearest `interpolate` agree too. Runs only when torch is installed (and not in
# the test suite's fast mode; `tests/test_pooling.py` has the parity tests).

# %%
import importlib.util

run_parity = not FAST and importlib.util.find_spec("torch") is not None
print("torch parity:", "running" if run_parity else "skipped (fast mode, or torch not installed)")
if run_parity:
    import torch
    import torch.nn.functional as F
    t_y, t_idx = F.max_pool2d(torch.from_numpy(x_rand), 2, return_indices=True)
    assert np.array_equal(t_y.numpy(), y_rand) and np.array_equal(t_idx.numpy(), idx)
    assert np.array_equal(F.max_unpool2d(t_y, t_idx, 2).numpy(), layers.MaxUnpool2d(2)(y_rand, idx))
    t_near = F.interpolate(torch.from_numpy(y_rand), scale_factor=2, mode="nearest").numpy()
    assert np.array_equal(t_near, layers.Unpool2d(2, mode="nearest")(y_rand))
    print(f"torch {torch.__version__}: max_pool2d (values and indices), max_unpool2d and nearest "
          f"interpolation agree with nnbox")

# %% [markdown]
# ## 7. Upsample, then convolve: the same thing on the small image
#
# The faces generator follows every "nearest" unpooling with a 3x3 convolution (padding 1). Look at
# one output row $Y = 2h + a$ of that pair: its three kernel taps read upsampled rows $Y - 1, Y,
# Y + 1$, which are small-image rows
#
# - phase $a = 0$ (even rows): $h - 1$ (tap 0) and $h$ (taps 1 and 2);
# - phase $a = 1$ (odd rows): $h$ (taps 0 and 1) and $h + 1$ (tap 2).
#
# So each of the four output phases (even/odd row, even/odd column) is a **2x2 convolution of the
# small image**, with taps that are sums of the 3x3 kernel's. For the even-even phase
#
# $$ V_{00} = \begin{pmatrix} K_{00} & K_{01} + K_{02} \\ K_{10} + K_{20} & K_{11} + K_{12} + K_{21} + K_{22} \end{pmatrix}, $$
#
# read at small rows $h - 1, h$ and columns $w - 1, w$. That is 4 phases x 4 taps = 16 multiply-adds
# per position instead of 4 x 9 = 36 per small pixel, and the upsampled image is never made. The
# phases are computed together on an $(H+1) \times (W+1)$ grid of positions (each phase drops one
# row and one column of it), so the cost per small pixel is $16 (H+1)(W+1) / (HW)$: 22.4 for the
# 5x6 image below, tending to 16 (2.25x fewer) on large maps; on maps of 3x3 and smaller, where the
# saving falls under 1.4x, `Sequential` runs the pair as written. `Sequential` does this
# by itself for such a pair (`layers/resize_conv.py`: one im2col of the small image, one product
# with the four phase kernels stacked); the cell below checks the even-even phase by hand and the
# whole thing against the two layers.

# %%
from nnbox.module import Sequential
from layers.resize_conv import ResizeConvolution

K = np.arange(9.0).reshape(3, 3)
conv = layers.Conv2d(1, 1, 3, padding=1, bias=False, rng=0).to(np.float64)
conv.weight.data[...] = K
small = rng.standard_normal((1, 1, 5, 6))
upsampled_then_convolved = conv(layers.Unpool2d(2, mode="nearest")(small))   # the two layers as written

V00 = np.array([[K[0, 0], K[0, 1] + K[0, 2]],
                [K[1, 0] + K[2, 0], K[1:, 1:].sum()]])
padded = np.pad(small[0, 0], 1)            # small-image row h - 1 is padded row h
even_even = np.array([[np.sum(V00 * padded[h:h + 2, w:w + 2]) for w in range(6)] for h in range(5)])
assert np.allclose(upsampled_then_convolved[0, 0, 0::2, 0::2], even_even)

pair = Sequential(layers.Unpool2d(2, mode="nearest"), conv)
fused = pair(small)
assert isinstance(pair._last_steps()[0], ResizeConvolution)
assert np.allclose(fused, upsampled_then_convolved, rtol=1e-12, atol=1e-12)
print("even-even phase by hand = the two layers; Sequential's fused step = the two layers")
height, width = small.shape[2:]
print(f"multiply-adds per small pixel: 36 for the pair as written, "
      f"{16 * (height + 1) * (width + 1) / (height * width):.1f} on the {height}x{width} image's (H+1) x (W+1) grid")

# %% [markdown]
# ## Summary
#
# - Max-pooling keeps each window's maximum; its switches record where it was.
# - `MaxUnpool2d(y, switches)` puts each value back at its switch, zeros elsewhere.
# - Without switches a generator uses `Unpool2d`: "zeros" (top-left of the block) or "nearest"
#   (repeated), both transposed convolutions with a fixed kernel.
# - Backward: max-pooling routes each window's gradient to its switch (summing where windows share
#   one), which is max-unpooling of the gradient; "zeros" reads the top-left gradient, "nearest"
#   sums the block's.
# - "Nearest" unpooling followed by a 3x3 convolution is four 2x2 convolutions of the small image,
#   one per output phase, with summed taps: nnbox's Sequential computes it that way (up to 2.25x
#   fewer multiply-adds, on large maps).
#
# Previous: [1. Convolution](01_convolution.ipynb). Next: [3. BatchNorm and Dropout](03_batchnorm_dropout.ipynb).
