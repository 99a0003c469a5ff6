# %% [markdown]
# # 3. BatchNorm and Dropout
#
# Two layers that behave differently in training and in evaluation:
#
# - **Batch normalisation** standardises every channel with the statistics of the current batch
#   while training, and with running averages of them in evaluation. Its backward pass is the one
#   most often written wrong by hand; we derive it step by step and check it three ways.
# - **Dropout** zeroes random values while training and is the identity in evaluation. Its
#   randomness has to be replayable, or it cannot be gradient-checked.

# %%
import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

import layers
from nnbox.gradcheck import gradcheck
from nnbox.module import Sequential
from nnbox.synthetic_faces import synthetic_faces

FAST = os.environ.get("NNBOX_FAST") == "1"   # the test suite sets this: fewer steps and draws
plt.rcParams["figure.dpi"] = 80
np.set_printoptions(precision=4, suppress=True)
rng = np.random.default_rng(0)

# %% [markdown]
# ## 1. BatchNorm forward
#
# For one channel, over its $m$ values in the batch ($m = N$ for `BatchNorm1d` on (N, C); $m = NHW$
# for `BatchNorm2d` on (N, C, H, W)):
#
# $$ \mu = \frac1m \sum_i x_i, \qquad \sigma^2 = \frac1m \sum_i (x_i - \mu)^2, \qquad
#    \hat x_i = \frac{x_i - \mu}{\sqrt{\sigma^2 + \epsilon}}, \qquad y_i = \gamma \hat x_i + \beta . $$
#
# $\hat x$ has mean 0 and variance (almost) 1 in every channel; the learnt scale $\gamma$ (`weight`)
# and shift $\beta$ (`bias`) let the network choose another mean and spread, including undoing the
# normalisation. The variance is the *biased* one (divided by $m$): it normalises this batch.

# %%
x = rng.normal(loc=[5.0, -2.0, 0.0, 10.0], scale=[3.0, 0.5, 1.0, 4.0], size=(16, 4))
bn = layers.BatchNorm1d(4, dtype=np.float64)
bn.weight.data[...] = [1.0, 2.0, 0.5, -1.0]      # gamma
bn.bias.data[...] = [0.0, 1.0, -1.0, 3.0]        # beta
y = bn(x)

mu, var = x.mean(axis=0), x.var(axis=0)
xhat = (x - mu) / np.sqrt(var + bn.eps)
assert np.allclose(y, bn.weight.data * xhat + bn.bias.data)
assert np.allclose(xhat.mean(axis=0), 0)
assert np.allclose(xhat.std(axis=0), np.sqrt(var / (var + bn.eps)))   # 1, up to the epsilon
print("input channel means", x.mean(axis=0), "stds", x.std(axis=0))
print("output channel means", y.mean(axis=0), "(= beta) stds", y.std(axis=0), "(= |gamma|)")

# %% [markdown]
# ## 2. BatchNorm backward, step by step
#
# Given $dy_i = \partial L / \partial y_i$ we want $dx_i = \partial L / \partial x_i$. Every $x_i$
# reaches the loss through three paths: directly through $\hat x_i$, through the mean $\mu$, and
# through the variance $\sigma^2$. Follow the forward pass backwards, one node at a time; write
# $c_i = x_i - \mu$ (the centred values) and $s = \sqrt{\sigma^2 + \epsilon}$.
#
# 1. $y_i = \gamma \hat x_i + \beta$:
#    $\quad d\hat x_i = \gamma\, dy_i, \quad d\gamma = \sum_i dy_i\, \hat x_i, \quad d\beta = \sum_i dy_i$.
# 2. $\hat x_i = c_i / s$: $c_i$ directly gets $d\hat x_i / s$, and $s$ gets
#    $ds = -\sum_i d\hat x_i\, c_i / s^2$.
# 3. $s = \sqrt{\sigma^2 + \epsilon}$: $\quad d\sigma^2 = ds / (2s)$.
# 4. $\sigma^2 = \frac1m \sum_i c_i^2$: $\quad c_i$ gets a second term $d\sigma^2 \cdot 2 c_i / m$,
#    so $dc_i = d\hat x_i / s + 2 c_i\, d\sigma^2 / m$.
# 5. $c_i = x_i - \mu$: $\quad x_i$ gets $dc_i$ and $d\mu = -\sum_i dc_i$.
# 6. $\mu = \frac1m \sum_i x_i$: $\quad x_i$ gets a second term $d\mu / m$: $\; dx_i = dc_i + d\mu / m$.
#
# Now simplify. Steps 2-4 give $d\sigma^2 = -\frac{1}{2 s^3} \sum_j d\hat x_j c_j$, so
#
# $$ dc_i = \frac1s \Big( d\hat x_i - \hat x_i \cdot \frac1m \sum_j d\hat x_j \hat x_j \Big). $$
#
# Because $\sum_i \hat x_i = 0$, step 5 gives $d\mu = -\frac1s \sum_j d\hat x_j$ (the variance
# path adds nothing to the mean's gradient), and step 6 puts it together, with $d\hat x = \gamma\, dy$:
#
# $$ \boxed{\; dx_i = \frac{1}{m} \cdot \frac{\gamma}{s} \Big( m\, dy_i - \sum_j dy_j - \hat x_i \sum_j dy_j \hat x_j \Big) \;} $$
#
# Three terms: the gradient as if the statistics were constants ($m\,dy_i$), minus its mean (the
# mean's path), minus its projection on $\hat x$ (the variance's path). Below, the six steps
# literally, the boxed formula, the layer's `backward`, and central differences must all agree.

# %%
def bn_backward_steps(x, gamma, dy, eps):
    """Steps 1-6 above, one line each (per channel: the sums run over axis 0)."""
    m = x.shape[0]
    mu = x.mean(axis=0)
    c = x - mu
    var = (c ** 2).mean(axis=0)
    s = np.sqrt(var + eps)
    xhat = c / s
    dxhat = gamma * dy                                        # 1
    ds = -(dxhat * c).sum(axis=0) / s ** 2                    # 2 (the path through s)
    dvar = ds / (2 * s)                                       # 3
    dc = dxhat / s + 2 * c * dvar / m                         # 2 (direct) + 4
    dmu = -dc.sum(axis=0)                                     # 5
    return dc + dmu / m                                       # 6


def bn_backward_boxed(xhat, gamma, s, dy):
    m = dy.shape[0]
    return gamma / (m * s) * (m * dy - dy.sum(axis=0) - xhat * (dy * xhat).sum(axis=0))


gamma, s = bn.weight.data, np.sqrt(var + bn.eps)
dy = rng.standard_normal(y.shape)
dx_steps = bn_backward_steps(x, gamma, dy, bn.eps)
dx_boxed = bn_backward_boxed(xhat, gamma, s, dy)
bn(x)
dx_layer = bn.backward(dy)
print("max |steps - boxed| =", np.abs(dx_steps - dx_boxed).max(), " max |boxed - layer| =",
      np.abs(dx_boxed - dx_layer).max())
assert np.allclose(dx_steps, dx_boxed, rtol=1e-10, atol=1e-12)
assert np.allclose(dx_boxed, dx_layer, rtol=1e-10, atol=1e-12)

# %% [markdown]
# And against central differences, with `nnbox.gradcheck` (walkthrough 4 explains it): the input,
# $\gamma$ and $\beta$, for `BatchNorm1d` and for `BatchNorm2d`, where the sums run over $N, H, W$.

# %%
for layer, inp in [(layers.BatchNorm1d(4), rng.normal(3.0, 2.0, (8, 4))),
                   (layers.BatchNorm2d(3), rng.normal(-1.0, 2.0, (2 if FAST else 4, 3, 3, 3)))]:
    layer.weight.data[...] = rng.uniform(0.5, 2.0, layer.num_features)
    layer.bias.data[...] = rng.standard_normal(layer.num_features)
    report = gradcheck(layer, inp, rng=0)
    print(type(layer).__name__, {name: f"{err:.1e}" for name, err in report.max_abs_error.items()})

# %% [markdown]
# Two consequences of the boxed formula, true for every $dy$: $\sum_i dx_i = 0$ and
# $\sum_i dx_i \hat x_i = 0$ (the second exactly only for $\epsilon = 0$: since
# $\sum_i \hat x_i^2 = m \sigma^2/(\sigma^2 + \epsilon)$, it is
# $\frac{\gamma}{s} \frac{\epsilon}{\sigma^2 + \epsilon} \sum_i dy_i \hat x_i$, tiny). Shifting a channel or
# scaling it about its mean does not change $\hat x$, so the gradient has no component in those
# directions. In particular an
# upstream gradient of all ones gives $dx = 0$: a gradient check with $dy = 1$ would "pass" a
# BatchNorm whose backward forgot a term. That is why `nnbox.gradcheck` always draws a random
# upstream gradient (walkthrough 4 plants exactly that bug).

# %%
assert np.allclose(dx_layer.sum(axis=0), 0, atol=1e-10)
assert np.allclose((dx_layer * xhat).sum(axis=0), gamma / s * bn.eps / (var + bn.eps) * (dy * xhat).sum(axis=0))
print("sum of dx:", dx_layer.sum(axis=0), " sum of dx * xhat:", (dx_layer * xhat).sum(axis=0))
bn(x)
print("dx for dy = 1:", bn.backward(np.ones_like(y)).max(axis=0))
bn(x)
assert np.allclose(bn.backward(np.ones_like(y)), 0, atol=1e-12)

# %% [markdown]
# ## 3. Running statistics, train versus eval
#
# At test time there may be a single image, or a batch whose statistics should not change the
# answer for one of its images. So during training BatchNorm keeps exponential moving averages,
# with `momentum` $= 0.1$ by default (PyTorch's convention: the weight of the *new* value):
#
# $$ \mu_\text{run} \leftarrow (1 - 0.1)\,\mu_\text{run} + 0.1\,\mu_\text{batch}, \qquad
#    \sigma^2_\text{run} \leftarrow (1 - 0.1)\,\sigma^2_\text{run} + 0.1\,\frac{m}{m-1}\,\sigma^2_\text{batch} $$
#
# (the running variance uses the unbiased estimate). After `eval()` the layer uses them:
# $y = \gamma (x - \mu_\text{run}) / \sqrt{\sigma^2_\text{run} + \epsilon} + \beta$, a fixed
# per-channel affine map, whose backward is simply $dx = \gamma\, dy / \sqrt{\sigma^2_\text{run} + \epsilon}$.
#
# Feed batches of 32 from a distribution with known means and variances and watch the running
# statistics converge to them (they start at 0 and 1).

# %%
true_mean, true_std = np.array([2.0, -1.0, 0.5]), np.array([3.0, 0.5, 1.0])
bn = layers.BatchNorm1d(3, dtype=np.float64)
first = rng.normal(true_mean, true_std, size=(32, 3))
bn(first)                                          # one update, checked exactly: unbiased variance
assert np.allclose(bn.running_mean, 0.1 * first.mean(axis=0))
assert np.allclose(bn.running_var, 0.9 + 0.1 * first.var(axis=0, ddof=1))
assert not np.allclose(bn.running_var, 0.9 + 0.1 * first.var(axis=0))      # the biased one differs
bn.reset_running_stats()
steps = 60 if FAST else 200
history = []
for _ in range(steps):
    bn(rng.normal(true_mean, true_std, size=(32, 3)))
    history.append((bn.running_mean.copy(), bn.running_var.copy()))
means, variances = map(np.array, zip(*history))
print("running mean", bn.running_mean, "(true", true_mean, ")")
print("running var ", bn.running_var, "(true", true_std ** 2, ")")
# the averages forget their start like 0.9^t, then wobble by about 0.23 standard errors of a batch
assert np.all(np.abs(bn.running_mean - true_mean) < 5 * 0.23 * true_std / np.sqrt(32))
assert np.allclose(bn.running_var, true_std ** 2, rtol=0.3)

fig, axes = plt.subplots(1, 2, figsize=(10, 2.8))
for c in range(3):
    axes[0].plot(means[:, c], color=f"C{c}", label=f"channel {c}")
    axes[0].axhline(true_mean[c], color=f"C{c}", ls=":")
    axes[1].plot(variances[:, c], color=f"C{c}")
    axes[1].axhline(true_std[c] ** 2, color=f"C{c}", ls=":")
axes[0].set_title("running_mean (dotted: true mean)"), axes[1].set_title("running_var (dotted: true variance)")
axes[0].set_xlabel("training step"), axes[1].set_xlabel("training step")
axes[0].legend(fontsize=8, loc="center right")
plt.tight_layout()
plt.show()

# %% [markdown]
# In training an image's output depends on the rest of its batch; in evaluation it does not, and a
# batch of one works. Training with a single value per channel is an error (one value has no
# variance: a batch of one for BatchNorm1d on (N, C), or for BatchNorm2d on 1x1 maps), with a message
# that says what to do.

# %%
batch = rng.normal(true_mean, true_std, size=(8, 3))
other = batch.copy()
other[1:] = rng.normal(true_mean, true_std, size=(7, 3))   # the same first row, other companions
bn.train()
assert not np.allclose(bn(batch)[0], bn(other)[0])          # depends on the companions
bn.eval()
alone = bn(batch[:1])
assert np.allclose(bn(batch)[0], alone[0]) and np.allclose(bn(other)[0], alone[0])
expected = bn.weight.data * (batch[:1] - bn.running_mean) / np.sqrt(bn.running_var + bn.eps) + bn.bias.data
assert np.allclose(alone, expected)

dy = rng.standard_normal(batch.shape)
bn(batch)
assert np.allclose(bn.backward(dy), bn.weight.data * dy / np.sqrt(bn.running_var + bn.eps))
gradcheck(bn, batch, rng=0)                                  # the eval-mode backward, numerically
print("eval: per-sample outputs, dx = gamma * dy / sqrt(running_var + eps)")

bn.train()
try:
    bn(batch[:1])
except ValueError as error:
    print("training on one sample:", error)

# %% [markdown]
# ## 4. Dropout
#
# In training, **inverted dropout** keeps each value with probability $1 - p$ and scales the kept
# ones by $1/(1-p)$:
#
# $$ y_i = \frac{m_i\, x_i}{1 - p}, \qquad m_i \sim \text{Bernoulli}(1 - p), \qquad
#    \mathbb E[y_i] = \frac{(1-p)\, x_i}{1 - p} = x_i . $$
#
# The expectation is preserved, so in evaluation the layer is simply the identity (the original
# dropout scaled by $1-p$ at test time instead; "inverted" moves that into training). The mask is
# a constant of the forward pass, so the backward is $dx_i = m_i\, dy_i / (1 - p)$.

# %%
p = 0.3
drop = layers.Dropout(p, rng=0)
n = 100_000 if FAST else 1_000_000
ones = np.ones(n)
out = drop(ones)
kept = drop.last_mask.mean()
print(f"p = {p}: kept fraction {kept:.4f} (expected {1 - p}), output mean {out.mean():.4f} (expected 1)")
# within 5 standard deviations of a binomial proportion and of the mean of the scaled mask
assert abs(kept - (1 - p)) < 5 * np.sqrt(p * (1 - p) / n)
assert abs(out.mean() - 1) < 5 * np.sqrt(p / (1 - p) / n)
assert set(np.unique(out)) == {0.0, 1 / (1 - p)}

x = rng.standard_normal((4, 6))
y = drop(x)
mask = drop.last_mask
assert np.allclose(y, x * mask / (1 - p))
dy = rng.standard_normal(y.shape)
assert np.allclose(drop.backward(dy), dy * mask / (1 - p))
drop.eval()
assert drop(x) is x                                         # eval: the identity, not even a copy

# %% [markdown]
# On an image: one training draw with $p = 0.5$ (the kept pixels are doubled), the average of
# many draws (back to the image: the expectation is preserved), and the eval output.

# %%
olivetti = Path("../../../shared/data/olivetti/olivetti_faces.npy")
if olivetti.is_file():
    face = np.load(olivetti, allow_pickle=False)[10] / 255.0
else:
    face = synthetic_faces(1, 64, rng=0)[0].mean(axis=2) / 255.0
half = layers.Dropout(0.5, rng=1)
draws = 50 if FAST else 400
average = np.mean([half(face) for _ in range(draws)], axis=0)
one_draw = half(face)
half.eval()
panels = {"image": face, "one training draw, p = 0.5\n(kept pixels doubled; grey scale 0-2)": one_draw,
          f"mean of {draws} draws": average, "eval (identity)": half(face)}
fig, axes = plt.subplots(1, 4, figsize=(10, 3.1))
for ax, (title, picture) in zip(axes, panels.items()):
    ax.imshow(picture, cmap="gray", vmin=0, vmax=2 if picture is one_draw else 1)
    ax.set_title(title, fontsize=9)
    ax.axis("off")
plt.tight_layout()
plt.show()
print(f"mean |average - image| = {np.abs(average - face).mean():.3f}")
# each pixel's average has standard deviation x / sqrt(draws): it shrinks as the draws grow
assert np.abs(average - face).mean() < 2 * face.mean() / np.sqrt(draws)
assert abs(average.mean() - face.mean()) < 0.01

# %% [markdown]
# `Dropout2d` draws one decision per (image, channel) and drops whole feature maps: neighbouring
# pixels of a map are so correlated that dropping single ones hardly regularises a convolution.

# %%
drop2d = layers.Dropout2d(0.5, rng=2)
maps = rng.uniform(1, 2, (4, 8, 5, 5))
out = drop2d(maps)
print("Dropout2d mask (N, C):\n", drop2d.last_mask.astype(int))
assert drop2d.last_mask.shape == (4, 8)
plane_zero = (out == 0).all(axis=(2, 3))
assert np.array_equal(plane_zero, ~drop2d.last_mask)         # a map is all dropped or all kept
assert np.allclose(out[~plane_zero], 2 * maps[~plane_zero])

# %% [markdown]
# ### Replaying a fixed mask for gradient checks
#
# A gradient check evaluates the forward pass many times and compares differences of outputs. With
# a new mask at every call, those differences are mostly the change of mask, so the check fails
# whatever the backward does. Chainer's and nnbox's answer: let the caller fix the mask.
# `layer.fixed_mask = mask` replays it on every training forward (`forward(x, mask=mask)` for one
# call), and the backward can then be checked exactly.

# %%
drop = layers.Dropout(0.5, rng=3)
x = rng.standard_normal((3, 5))
random_forward = gradcheck(drop, x, rng=0, raise_on_failure=False)
print("gradcheck with a new mask at every forward passes?", bool(random_forward))
assert not random_forward

drop.fixed_mask = rng.uniform(size=x.shape) >= 0.5
report = gradcheck(drop, x, rng=0)
print("with a fixed mask:", {k: f"{v:.1e}" for k, v in report.max_abs_error.items()})
assert np.array_equal(drop(x), drop(x))                       # deterministic now

drop2d = layers.Dropout2d(0.5, rng=4)
drop2d.fixed_mask = np.array([[True, False, True]])
gradcheck(drop2d, rng.standard_normal((1, 3, 4, 4)), rng=0)
drop.fixed_mask = None                                        # back to fresh random masks

# %% [markdown]
# ## 5. Train and eval for a whole model
#
# `model.train()` and `model.eval()` set the flag on every layer inside, so a model with both
# layers is random and batch-dependent in training, deterministic and per-sample in evaluation.

# %%
model = Sequential(layers.Linear(5, 8, rng=0), layers.BatchNorm1d(8), layers.ReLU(), layers.Dropout(0.5, rng=5))
inputs = rng.standard_normal((16, 5)).astype(np.float32)
for _ in range(3):
    model(inputs)                                             # training: updates running statistics
assert not np.array_equal(model(inputs), model(inputs))       # a new dropout mask each time
model.eval()
assert np.array_equal(model(inputs), model(inputs))
assert np.allclose(model(inputs[:1]), model(inputs)[:1], atol=1e-6)
print("train: random and batch-dependent; eval: deterministic and per-sample")

# %% [markdown]
# ## Summary
#
# - BatchNorm: $\hat x = (x - \mu)/\sqrt{\sigma^2 + \epsilon}$, $y = \gamma \hat x + \beta$ with batch
#   statistics in training; running averages (momentum 0.1, unbiased variance) in evaluation.
# - Backward: $dx = \frac{\gamma}{m s}\,(m\,dy - \sum dy - \hat x \sum dy\,\hat x)$; it sums to zero
#   and is orthogonal to $\hat x$ (exactly for $\epsilon = 0$), so an all-ones upstream gradient tests
#   nothing.
# - Inverted dropout: $y = m x / (1-p)$ keeps the expectation, so evaluation is the identity;
#   $dx = m\, dy / (1-p)$; fix the mask to check it.
#
# Previous: [2. Pooling](02_pooling.ipynb). Next: [4. Gradient checking](04_gradient_checking.ipynb).
