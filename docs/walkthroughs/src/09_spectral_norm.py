# %% [markdown]
# # 9. Spectral normalisation
#
# A discriminator that can change its output very fast as its input moves gives the generator wild
# gradients; the WGAN critic of walkthrough 7 must have a bounded Lipschitz constant $K$ for its loss
# to estimate the Wasserstein distance (times $K$). Spectral normalisation (Miyato et al., 2018) bounds how fast each layer can stretch its
# input by dividing the layer's weight by its largest singular value. It costs three matrix-vector
# products per layer and training step, and unlike weight clipping (walkthrough 7) it rescales the
# whole weight instead of flattening its large entries.
#
# 1. a linear layer's Lipschitz constant is the largest singular value $\sigma(W)$ of its weight;
# 2. power iteration finds $\sigma(W)$ with matrix-vector products only;
# 3. the layer `SpectralNorm`: $W_{sn} = W / \sigma(W)$, one power-iteration step per training forward;
# 4. convolutions: the weight as a matrix, and what $\sigma$ of that matrix bounds;
# 5. the backward pass through $\sigma$, derived and checked;
# 6. a spectrally normalised discriminator: the bound on its input gradient, measured;
# 7. parity with PyTorch's `torch.nn.utils.spectral_norm`.

# %%
import matplotlib.pyplot as plt
import numpy as np

from gan.models import build_gan
from layers import Linear, SpectralNorm, conv_maths
from layers.conv import Conv2d, ConvTranspose2d
from nnbox.gradcheck import gradcheck

plt.rcParams["figure.dpi"] = 80
np.set_printoptions(precision=4, suppress=True)
rng = np.random.default_rng(0)


def normalize(vector):
    return vector / np.linalg.norm(vector)


def largest_singular_value(matrix):
    return np.linalg.svd(matrix, compute_uv=False)[0]

# %% [markdown]
# ## 1. A linear layer stretches by at most $\sigma(W)$
#
# For $y = Wx$ the most any input direction is stretched is the largest singular value:
#
# $$ \|W x - W x'\| = \|W (x - x')\| \le \sigma(W)\, \|x - x'\|, $$
#
# with equality along the top right-singular vector $v_1$ ($W = U \Sigma V^\top$). A bias does not
# change differences, and ReLU, LeakyReLU (slope below 1) and Tanh are 1-Lipschitz, so a network of
# such layers stretches by at most the **product** of its weights' largest singular values.

# %%
W = rng.standard_normal((6, 4))
_, singular_values, right = np.linalg.svd(W)
sigma = singular_values[0]
x = rng.standard_normal((2000, 4))
stretch = np.linalg.norm(x @ W.T, axis=1) / np.linalg.norm(x, axis=1)
print(f"sigma(W) = {sigma:.4f}; the largest stretch over 2,000 random directions: {stretch.max():.4f}; "
      f"along v1: {np.linalg.norm(W @ right[0]):.4f}")
assert stretch.max() <= sigma + 1e-12
assert np.isclose(np.linalg.norm(W @ right[0]), sigma)

# %% [markdown]
# ## 2. Power iteration
#
# A full SVD per layer and step would be far too dear. Power iteration needs only products with
# $W$ and $W^\top$:
#
# $$ v \leftarrow \frac{W^\top u}{\|W^\top u\|}, \qquad u \leftarrow \frac{W v}{\|W v\|}, \qquad
#    \hat\sigma = u^\top W v . $$
#
# Each step multiplies the components of $u$ along the left singular vectors by $\sigma_i^2$, so the
# angle between $u$ and $u_1$ shrinks like $(\sigma_2 / \sigma_1)^{2k}$ after $k$ steps. The estimate
# $\hat\sigma$ is off by about the square of that angle, so its error shrinks like
# $(\sigma_2 / \sigma_1)^{4k}$: the plot shows that slope. Since $u$ and $v$ have unit length,
# $\hat\sigma = u^\top W v \le \|W v\| \le \sigma$ (Cauchy-Schwarz, then section 1): the estimate
# approaches from below.

# %%
u = normalize(rng.standard_normal(6))
estimates = []
for _ in range(25):
    v = normalize(W.T @ u)
    u = normalize(W @ v)
    estimates.append(u @ W @ v)
errors = sigma - np.array(estimates)
ratio = (singular_values[1] / singular_values[0]) ** 4
assert (errors >= -1e-12).all() and errors[-1] < 1e-9
fig, ax = plt.subplots(figsize=(5, 3))
steps = np.arange(1, len(errors) + 1)
ax.semilogy(steps, np.maximum(errors, 1e-17), "o-", label=r"$\sigma - \hat\sigma$")
ax.semilogy(steps, errors[0] * ratio ** (steps - 1), "--", label=r"$(\sigma_2/\sigma_1)^{4k}$, scaled")
ax.set_xlabel("power-iteration steps")
ax.legend()
plt.show()
per_step = (errors[10] / errors[5]) ** (1 / 5)
print(f"sigma_2 / sigma_1 = {singular_values[1] / singular_values[0]:.3f}; the error shrinks by {per_step:.3f} "
      f"per step, (sigma_2 / sigma_1)^4 = {ratio:.3f}; error after 5 steps {errors[4]:.2e}")
assert abs(per_step / ratio - 1) < 0.1

# %% [markdown]
# ## 3. The layer: $W_{sn} = W / \sigma(W)$, one step per training forward
#
# `SpectralNorm(layer)` takes over the layer's weight (as `weight_orig`, the trained Parameter) and
# keeps $u$ and $v$ as buffers. At construction it runs 15 power-iteration steps from random
# vectors (as PyTorch's `parametrizations.spectral_norm`), so $\hat\sigma$ is good before any
# training. Every **training** forward then runs one more step from the $u$ of the step before, and
# computes with $W_{sn} = W / \hat\sigma$. Training changes $W$ a little per step, so the persistent
# $u$ keeps tracking $\sigma$: one step per forward is enough (PyTorch's default too). To watch that
# tracking converge, we put $u$ back to the random vector it started from: the two largest singular
# values are close here (0.94 and 0.80), and the first estimate is 41% low, the fifteenth 0.004%.
# In **eval** mode $u$ and $v$ do not move, so evaluation never changes the model.

# %%
layer = SpectralNorm(Linear(4, 6, rng=1), rng=2).to(np.float64)
true_sigma = largest_singular_value(layer.weight_orig.data)
print(f"estimate after the 15 steps at construction: {float(layer.sigma):.6f}")
assert abs(float(layer.sigma) - true_sigma) < 1e-3 * true_sigma
start = np.random.default_rng(2).standard_normal(6)   # the random u the construction started from
layer.u[...] = start / np.linalg.norm(start)
batch = rng.standard_normal((8, 4))
tracked = []
for _ in range(40):
    layer(batch)                                   # training mode: one power-iteration step
    tracked.append(float(layer.sigma))
normalised = layer.module.weight.data              # the W_sn the wrapped Linear computed with
second = np.linalg.svd(layer.weight_orig.data, compute_uv=False)[1]
print(f"true sigma {true_sigma:.6f} (the next singular value: {second:.6f}); estimates after 1, 5, 15, 40 "
      f"forwards: {tracked[0]:.6f}, {tracked[4]:.6f}, {tracked[14]:.6f}, {tracked[-1]:.6f}")
print(f"largest singular value of the W_sn of the last forward: {largest_singular_value(normalised):.9f}")
assert abs(tracked[-1] - true_sigma) < 1e-9 * true_sigma
assert abs(largest_singular_value(normalised) - 1) < 1e-9

layer.eval()
u_before = layer.u.copy()
layer(batch)
assert np.array_equal(layer.u, u_before)           # eval: the buffers stay put

# %% [markdown]
# A consequence worth knowing: $W_{sn}$ does not depend on the scale of $W$. Multiply `weight_orig`
# by 100 and the layer computes exactly the same thing ($\sigma$ scales by 100 too). Growing weights,
# which make an unconstrained discriminator ever more confident, change nothing here.

# %%
y_before = layer(batch)
layer.weight_orig.data *= 100.0
np.testing.assert_allclose(layer(batch), y_before, rtol=1e-12, atol=1e-12)
layer.weight_orig.data /= 100.0
print("the same output with the weight scaled by 100")

# %% [markdown]
# ## 4. Convolutions: the weight as a matrix
#
# A convolution's weight is 4-D. Spectral normalisation uses it as a matrix with one row per output
# channel: `Conv2d`'s weight $(C_{out}, C_{in}, k_h, k_w)$ becomes $(C_{out}, C_{in} k_h k_w)$, the
# very matrix $W_2$ that multiplies the im2col columns in walkthrough 1. `ConvTranspose2d` keeps its
# weight as $(C_{in}, C_{out}, k_h, k_w)$, so its output axis is 1 (`dim=1`, PyTorch's choice too);
# its forward multiplies by the transpose of the $(C_{in}, C_{out} k_h k_w)$ matrix, which is not the
# one normalised, so the bound below is for `Conv2d` (what discriminators use).
#
# What does $\sigma(W_2)$ bound? The convolution is $y = W_2\,\mathrm{im2col}(x)$, and im2col copies
# each input pixel into at most $T$ columns, the number of windows that read it. Without dilation,
# $T = \lceil k_h / s_h \rceil \lceil k_w / s_w \rceil$ (4 for kernel 4, stride 2); in general col2im
# of a matrix of ones counts it exactly, pixel by pixel (col2im adds each column entry back onto the
# pixel it was read from). So $\|\mathrm{im2col}(x)\| \le \sqrt{T} \|x\|$ and
#
# $$ \|\mathrm{conv}(x)\| \le \sqrt{T}\, \sigma(W_2)\, \|x\| . $$
#
# The other way, an input that is $v_1$ on one window lying wholly inside the image (and 0 elsewhere)
# gives that window's output $W_2 v_1$ of norm $\sigma(W_2)$, and other outputs only add to the norm:
# so on an image large enough for such a window, the convolution's operator norm lies between
# $\sigma(W_2)$ and $\sqrt{T}\, \sigma(W_2)$. It depends on the image size; we measure it at 16x16 by
# power iteration on the operator itself: the forward is the map, the backward (the adjoint, as
# walkthrough 1 showed) its transpose.

# %%
def windows_per_pixel(conv, size):
    """The largest number of windows of `conv` that read one pixel of a size x size image: col2im of
    all-ones columns (one channel, one sample) adds 1 onto a pixel for every column entry read from it."""
    out_size = conv.output_size(size, size)
    ones = np.ones((conv.kernel_size[0] * conv.kernel_size[1], out_size[0] * out_size[1]))
    counts = conv_maths.col2im(ones, (1, 1, size, size), conv.kernel_size, conv.stride, conv.padding,
                               conv.dilation, out_size)
    return int(counts.max())


def operator_norm(conv, shape, steps=60):
    """The largest singular value of a bias-free convolution as a linear map, by power iteration
    with its forward (the map) and its backward (the adjoint)."""
    x = normalize(rng.standard_normal(shape).ravel()).reshape(shape)
    for _ in range(steps):
        y = conv(x)
        x = conv.backward(y)                       # adjoint of the map applied to y
        x = x / np.linalg.norm(x)
    return np.linalg.norm(conv(x))


for make in (lambda: Conv2d(3, 8, 4, stride=2, padding=1, bias=False, rng=5),
             lambda: Conv2d(3, 8, 3, stride=1, padding=1, bias=False, rng=6)):
    wrapped = SpectralNorm(make(), rng=8).to(np.float64)
    taps = windows_per_pixel(wrapped.module, 16)
    for _ in range(300):
        wrapped.train()(np.zeros((1, wrapped.module.in_channels, 4, 4)))   # converge u, v
    wrapped.eval()
    inner = wrapped.module
    wrapped(np.zeros((1, inner.in_channels, 8, 8)))   # an eval forward leaves W_sn in the inner layer
    norm = operator_norm(inner, (1, inner.in_channels, 16, 16))
    print(f"{type(inner).__name__} kernel {inner.kernel_size}, stride {inner.stride}: sigma(W_2) = "
          f"{largest_singular_value(wrapped._matrix(inner.weight.data)):.4f}, operator norm {norm:.4f}, "
          f"bound sqrt(T) = {np.sqrt(taps):.0f}")
    assert abs(largest_singular_value(wrapped._matrix(inner.weight.data)) - 1) < 1e-6
    assert 1 - 1e-6 <= norm <= np.sqrt(taps) + 1e-9

# %% [markdown]
# So a spectrally normalised convolution stretches by at most $\sqrt{T}$, not 1 (here 1.38 of at most
# 2, and 1.87 of at most 3): spectral normalisation as practised (and as here) constrains the matrix,
# which fixes the layer's scale, but it is not an exact 1-Lipschitz guarantee for convolutions.
#
# The transposed convolution normalises the matrix with one row per output channel (`dim=1`):

# %%
transposed = SpectralNorm(ConvTranspose2d(8, 3, 4, stride=2, padding=1, rng=7))
print(f"ConvTranspose2d(8, 3, 4): weight {tuple(transposed.weight_orig.data.shape)}, dim {transposed.dim}, "
      f"u {tuple(transposed.u.shape)} (one per output channel), v {tuple(transposed.v.shape)}")
assert transposed.dim == 1 and transposed.u.shape == (3,) and transposed.v.shape == (8 * 16,)

# %% [markdown]
# ## 5. The backward pass through $\sigma$
#
# The wrapped layer's backward gives $G = \partial L / \partial W_{sn}$. With $u$ and $v$ treated
# as constants (PyTorch does the same: they come out of a no-gradient power iteration),
# $\sigma = u^\top W v$ has $\partial \sigma / \partial W = u v^\top$, and
#
# $$ \frac{\partial L}{\partial W} = \frac{G}{\sigma} - \frac{\langle G, W \rangle}{\sigma^2}\, u v^\top
#    = \frac{1}{\sigma} \left( G - \langle G, W_{sn} \rangle\, u v^\top \right), $$
#
# $\langle G, W_{sn} \rangle = \sum_{ij} G_{ij} (W_{sn})_{ij}$. The second term makes the gradient
# orthogonal to $W$ itself, $\langle \partial L / \partial W, W \rangle = 0$ (use $u^\top W v =
# \sigma$): a step never moves $W$ along $W$, the one direction, scaling, that the division undoes. For a `Linear` layer $G = \mathrm{d}y^\top x$; we compute the formula by hand,
# compare with the layer, and then let central differences confirm it (in eval mode, where $u$ and
# $v$ really are constants; a training forward moves them, so two forwards would differ).

# %%
layer = SpectralNorm(Linear(5, 3, rng=3), rng=4).to(np.float64)
for _ in range(3):
    layer(rng.standard_normal((4, 5)))             # a few power-iteration steps
layer.eval()
x, dy = rng.standard_normal((4, 5)), rng.standard_normal((4, 3))
layer.zero_grad()
layer(x)
dx = layer.backward(dy)
W, u, v = layer.weight_orig.data, layer.u, layer.v
s = u @ W @ v
W_sn = W / s
G = dy.T @ x                                       # Linear: dL/dW_sn
by_hand = (G - (G * W_sn).sum() * np.outer(u, v)) / s
np.testing.assert_allclose(layer.weight_orig.grad, by_hand, rtol=1e-12, atol=1e-14)
assert abs((layer.weight_orig.grad * W).sum()) < 1e-12 * np.abs(layer.weight_orig.grad).sum()   # orthogonal to W
np.testing.assert_allclose(dx, dy @ W_sn, rtol=1e-12, atol=1e-14)
report = gradcheck(layer, x, rng=rng)
print("by hand = the layer's gradient; gradcheck:", dict(report.checked_entries))

# %% [markdown]
# ## 6. A spectrally normalised discriminator
#
# `build_gan(..., d_spectral_norm=True)` wraps every `Conv2d` and `Linear` of D (and leaves out
# D's BatchNorms, which spectral normalisation replaces). The faces example has it as
# `--spectral-norm`. Each layer then computes with a matrix whose largest singular value is about 1
# (slightly above until the power iteration has converged, since $\hat\sigma \le \sigma$), and
# LeakyReLU is 1-Lipschitz, so
#
# $$ \|\nabla_x D(x)\| \le \prod_{\text{layers}} \sqrt{T_l}\; \sigma(W_{sn,l}) , $$
#
# with $T_l$ counted exactly on each layer's input size (section 4). We check it on a small DCGAN
# discriminator: `D.backward` of ones gives each sample's input gradient at once (the samples do not
# interact without BatchNorm). Then we scale every weight by 10, as a long training might, in it and
# in the same discriminator without spectral normalisation (both built without BatchNorm): the
# unnormalised D's gradients grow with the scale past the bound, the normalised one's do not move.

# %%
def input_gradient_norms(discriminator, images):
    logits = discriminator(images)
    grads = discriminator.backward(np.ones_like(logits))
    return np.linalg.norm(grads.reshape(len(images), -1), axis=1)


def gradient_bound(discriminator, images):
    """The product over D's normalised convolutions of sqrt(T) sigma(W_sn), each T on its input's size."""
    bound, x = 1.0, images[:1]
    for layer in discriminator.main:
        if isinstance(layer, SpectralNorm):
            matrix = layer._matrix(layer.weight_orig.data / layer.sigma)
            bound *= np.sqrt(windows_per_pixel(layer.module, x.shape[-1])) * largest_singular_value(matrix)
        x = layer(x)
    return bound


images = np.tanh(rng.standard_normal((16, 3, 32, 32)))
results = {}
for spectral in (False, True):
    _, D = build_gan("dcgan", image_size=32, width=8, rng=9, d_spectral_norm=spectral, d_batch_norm=False)
    D.to(np.float64)
    for _ in range(30):
        D(images)                                  # training forwards: the power iterations converge
    D.eval()
    before = input_gradient_norms(D, images)
    bound = gradient_bound(D, images) if spectral else None
    for _, param in D.named_parameters():
        if param.data.ndim > 1:                    # the weights (DCGAN's biases start at 0)
            param.data *= 10.0
    after = input_gradient_norms(D, images)
    results[spectral] = (before, after)
    print(f"spectral_norm={spectral}: largest |grad_x D| {before.max():.4f}, "
          f"after scaling the weights by 10: {after.max():.4f}")

print(f"the bound for the normalised D: {bound:.3f}")
assert results[True][0].max() <= bound
np.testing.assert_allclose(results[True][1], results[True][0], rtol=1e-9)      # scale-free
assert results[False][1].max() > bound > results[False][0].max()               # the plain D outgrows it

# %% [markdown]
# ## 7. Parity with PyTorch
#
# `torch.nn.utils.spectral_norm` does the same: a persistent $u$, one power-iteration step per
# training forward, $\sigma = u^\top W v$, and the same gradient. Starting both from the same $u$ and
# $v$, three training steps of a `Linear` layer agree to rounding (the cell is skipped without torch).

# %%
try:
    import torch
except ImportError:
    torch = None
    print("torch is not installed: parity skipped")

if torch is not None:
    ours = SpectralNorm(Linear(5, 3, rng=10), rng=11).to(np.float64)
    reference = torch.nn.Linear(5, 3).double()
    with torch.no_grad():
        reference.weight.copy_(torch.from_numpy(ours.weight_orig.data))
        reference.bias.copy_(torch.from_numpy(ours.module.bias.data))
    reference = torch.nn.utils.spectral_norm(reference)
    with torch.no_grad():
        reference.weight_u.copy_(torch.from_numpy(ours.u))
        reference.weight_v.copy_(torch.from_numpy(ours.v))
    for _ in range(3):
        x, dy = rng.standard_normal((4, 5)), rng.standard_normal((4, 3))
        x_t = torch.from_numpy(x).requires_grad_(True)
        y_t = reference(x_t)
        y_t.backward(torch.from_numpy(dy))
        np.testing.assert_allclose(ours(x), y_t.detach().numpy(), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(ours.backward(dy), x_t.grad.numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(ours.weight_orig.grad, reference.weight_orig.grad.numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(ours.u, reference.weight_u.numpy(), rtol=1e-12, atol=1e-14)
    print("outputs, input and weight gradients, and u match torch over three training steps")

# %% [markdown]
# ## Summary
#
# - A linear layer stretches its input by at most $\sigma(W)$, its largest singular value; a network
#   of such layers and 1-Lipschitz activations by at most the product.
# - Power iteration estimates $\sigma$ from below with two matrix-vector products per step; kept
#   across training steps, one step per forward tracks it.
# - `SpectralNorm` computes with $W / \sigma(W)$: the layer's scale is fixed, whatever the scale of
#   its trained weight. In eval mode $u$ and $v$ stay put.
# - For a convolution, $\sigma$ of the $(C_{out}, C_{in} k_h k_w)$ matrix bounds the operator norm by
#   $\sqrt{T}$ (overlapping windows), not by 1.
# - Backward: $\partial L / \partial W = (G - \langle G, W_{sn}\rangle u v^\top) / \sigma$, checked by
#   hand, by central differences and against PyTorch.
# - In nnbox: `SpectralNorm(layer)`, `build_gan(..., d_spectral_norm=True)`, `faces_gan.py
#   --spectral-norm`. WGAN-GP refuses a spectrally normalised critic: the gradient penalty already
#   constrains it (walkthrough 7).
