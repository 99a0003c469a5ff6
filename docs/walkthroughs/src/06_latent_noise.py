# %% [markdown]
# # 06 · Latent noise: uniform or normal, and how to walk between two points
#
# A generator $G$ turns a noise vector $z \in \mathbb{R}^d$ into an image. During training it only
# ever sees $z$ drawn from one law $p_z$, so that law decides which inputs $G$ learns to handle.
# Two laws are common: the **uniform** law on the cube, $z \sim U(-1, 1)^d$ (the original GAN and
# DCGAN papers), and the **normal** law, $z \sim \mathcal{N}(0, I_d)$ (most later work). Both are
# drawn by `gan.tricks.sample_latent(n, d, kind)`.
#
# This walkthrough shows:
#
# 1. what the two laws look like coordinate by coordinate, and what they look like in high
#    dimension, where intuition from 2-D pictures fails: **norms concentrate**, the cube's
#    **corners** are far away and its centre is empty;
# 2. why a straight line between two latent points (**linear interpolation**, lerp) passes
#    through a region that the generator never saw, and how **spherical interpolation** (slerp)
#    avoids it for Gaussian latents;
# 3. both on a small DCGAN trained on MNIST right here.
#
# `examples/mnist_latent_study.py` trains the same DCGAN with each law side by side; its results
# are on `docs/results/mnist_latent_noise.md`.

# %%
import math
import os
import shutil
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from gan.interpolation import interpolation_images, lerp, slerp
from gan.trainer import GANTrainer, TrainConfig, stream_rng
from gan.tricks import sample_latent
from gan.visualize import make_grid
from nnbox.data import DataLoader
from nnbox.datasets import load_mnist

# gan.visualize selects matplotlib's file backend ("Agg") on import; back to inline figures.
%matplotlib inline
plt.rcParams.update({"figure.dpi": 80, "savefig.dpi": 80, "font.size": 9})

FAST = os.environ.get("NNBOX_FAST") == "1"   # the test suite's quick run: fewer samples, a few steps
rng = np.random.default_rng(0)
print("fast mode" if FAST else "full mode")

# %% [markdown]
# ## 1. One coordinate at a time
#
# Each coordinate of $z$ is independent. For the uniform law on $[-1, 1]$ the density is flat,
# $p(z_i) = \tfrac12$, with mean 0 and variance $\int_{-1}^{1} \tfrac{z^2}{2}\,dz = \tfrac13$. For
# the normal law it is the bell $p(z_i) = e^{-z_i^2/2}/\sqrt{2\pi}$, variance 1, with tails: about
# 5% of the coordinates lie beyond $\pm 1.96$.

# %%
n = 20_000 if FAST else 100_000
u = sample_latent(n, 1, "uniform", rng)[:, 0]
g = sample_latent(n, 1, "normal", rng)[:, 0]
print(f"uniform: mean {u.mean():+.3f}, variance {u.var():.3f} (1/3 = {1/3:.3f}), range [{u.min():.3f}, {u.max():.3f}]")
print(f"normal:  mean {g.mean():+.3f}, variance {g.var():.3f}, beyond +-1.96: {np.mean(abs(g) > 1.96):.3f}")
assert abs(u.var() - 1 / 3) < 0.01 and u.min() >= -1 and u.max() <= 1
assert abs(g.var() - 1) < 0.03 and abs(np.mean(abs(g) > 1.96) - 0.05) < 0.01

bins = np.linspace(-4, 4, 81)
plt.figure(figsize=(6, 2.6))
plt.hist(u, bins=bins, density=True, alpha=0.5, label="uniform U(-1, 1)")
plt.hist(g, bins=bins, density=True, alpha=0.5, label="normal N(0, 1)")
plt.title("one coordinate $z_i$")
plt.legend()
plt.show()

# %% [markdown]
# ## 2. In high dimension the norms concentrate
#
# The squared norm $\|z\|^2 = \sum_i z_i^2$ is a sum of $d$ independent terms, so its mean and
# variance grow like $d$ and its relative spread shrinks like $1/\sqrt d$: almost every sample has
# nearly the same norm.
#
# * normal: $\mathbb{E} z_i^2 = 1$, $\operatorname{Var} z_i^2 = \mathbb{E} z_i^4 - 1 = 2$, so
#   $\|z\|^2$ has mean $d$ and variance $2d$ (it is $\chi^2_d$), and
#   $\|z\| \approx \sqrt d \pm \tfrac{1}{\sqrt 2}$;
# * uniform: $\mathbb{E} z_i^2 = \tfrac13$, $\operatorname{Var} z_i^2 = \tfrac15 - \tfrac19 = \tfrac{4}{45}$,
#   so $\|z\| \approx \sqrt{d/3} \pm \tfrac{1}{\sqrt{15}}$
#
# (the spread of the norm follows from $\|z\| = \sqrt{\|z\|^2}$: its standard deviation is about
# $\operatorname{std}(\|z\|^2) / (2 \sqrt{\mathbb{E}\|z\|^2})$, which does not grow with $d$). So in
# $d = 100$ dimensions a Gaussian $z$ lies in a thin shell of radius 10 and width about 0.7, and
# its most likely point, the origin, is never drawn. Measure it:

# %%
dims = [1, 2, 10, 100, 1000]
m = 5_000 if FAST else 20_000
fig, axes = plt.subplots(1, 2, figsize=(9, 2.8), sharey=True)
for ax, kind, mean_sq, std_norm in ((axes[0], "uniform", 1 / 3, 1 / math.sqrt(15)),
                                     (axes[1], "normal", 1.0, 1 / math.sqrt(2))):
    for d in dims:
        norms = np.linalg.norm(sample_latent(m, d, kind, rng), axis=1)
        expected = math.sqrt(mean_sq * d)
        print(f"{kind:7s} d={d:4d}: ||z|| = {norms.mean():7.3f} +- {norms.std():.3f}  "
              f"(sqrt(E||z||^2) = {expected:7.3f}; large-d spread {std_norm:.3f})")
        if d >= 100:
            assert abs(norms.mean() / expected - 1) < 0.01 and abs(norms.std() / std_norm - 1) < 0.1
        ax.hist(norms / expected, bins=np.linspace(0, 2, 101), density=True, histtype="step",
                label=f"d = {d}")
    ax.set_title(f"{kind}: $\\|z\\| / \\sqrt{{E\\|z\\|^2}}$")
    ax.legend(fontsize=7)
plt.tight_layout()
plt.show()

# %% [markdown]
# ### The cube's corners and its empty centre
#
# The cube $[-1, 1]^d$ has $2^d$ corners at distance $\sqrt d$ from the centre, and its faces at
# distance 1. A uniform sample lies at about $\sqrt{d/3}$: far outside the inscribed ball of radius
# 1, yet nowhere near a corner. The inscribed ball, which holds $\pi/4 = 79\%$ of the square in 2-D,
# holds a vanishing share of the cube as $d$ grows:
#
# $$\frac{\text{vol(ball of radius 1)}}{\text{vol(cube)}} = \frac{\pi^{d/2}}{\Gamma(d/2 + 1)\, 2^d}.$$
#
# And almost every uniform sample is close to *some* face: the largest $|z_i|$ of $d$ coordinates
# is on average $d / (d + 1)$. In 2-D pictures the uniform law fills the square evenly; in 100-D
# it is a thin shell hugging the faces.

# %%
for d in (2, 3, 5, 10, 100):
    z = sample_latent(m, d, "uniform", rng)
    inside = np.mean(np.linalg.norm(z, axis=1) <= 1)
    exact = math.pi ** (d / 2) / math.gamma(d / 2 + 1) / 2 ** d
    biggest = np.abs(z).max(axis=1).mean()
    print(f"d={d:3d}: inside the unit ball {inside:.4f} (exact {exact:.2e}); corner distance {math.sqrt(d):5.2f}, "
          f"typical distance {math.sqrt(d / 3):5.2f}; mean max|z_i| {biggest:.3f} (d/(d+1) = {d / (d + 1):.3f})")
    assert abs(inside - exact) < 4 * math.sqrt(exact * (1 - exact) / m) + 1e-9
    assert abs(biggest - d / (d + 1)) < 0.02

# %% [markdown]
# ### Two random latents are almost orthogonal
#
# The cosine between two independent $z, z'$ is $\sum_i z_i z'_i / (\|z\| \|z'\|)$: a sum of $d$
# independent zero-mean terms over a product of norms that grows like $d$, so it is about
# $\pm 1/\sqrt d$. In high dimension two random latent points are (nearly) at right angles, for
# both laws. This matters for the next section.

# %%
d = 100
for kind in ("uniform", "normal"):
    a, b = sample_latent(m, d, kind, rng), sample_latent(m, d, kind, rng)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    print(f"{kind}: cos(z, z') = {cos.mean():+.4f} +- {cos.std():.4f}  (1/sqrt(d) = {1 / math.sqrt(d):.4f})")
    assert abs(cos.mean()) < 0.01 and abs(cos.std() * math.sqrt(d) - 1) < 0.05

# %% [markdown]
# ## 3. Walking between two latent points
#
# To see what a generator has learnt, draw $G$ along a path from $z_0$ to $z_1$.
#
# **Linear interpolation** (lerp): $z(t) = (1 - t) z_0 + t z_1$. With $z_0 \perp z_1$ and equal norms
# $r$, the midpoint has norm $\|z_0 + z_1\| / 2 = r \sqrt 2 / 2 = r / \sqrt 2$: the path dips to
# 71% of the shell's radius, for a Gaussian in $d = 100$ to $\|z\| \approx 7.1$, where (section 2)
# essentially no training latent ever was: $\|z\| = 7.1$ is four standard deviations below 10.
#
# **Spherical interpolation** (slerp, Shoemake 1985; White 2016 for GANs) follows the great circle
# between them. With $\omega$ the angle between $z_0$ and $z_1$,
#
# $$ z(t) = \frac{\sin((1 - t)\,\omega)}{\sin \omega} z_0 + \frac{\sin(t\,\omega)}{\sin \omega} z_1 ,$$
#
# and when $\|z_0\| = \|z_1\| = r$, $\|z(t)\| = r$ for every $t$ (expand $\|z(t)\|^2$ with
# $z_0 \cdot z_1 = r^2 \cos\omega$ and use $\sin^2 a + \sin^2 b + 2 \sin a \sin b \cos(a + b) = \sin^2(a + b)$).
# For two Gaussian samples the norms differ a little, and slerp's norm moves smoothly between them.
# `gan.interpolation` has both (`lerp`, `slerp`).

# %%
steps = 21
t = np.linspace(0, 1, steps)
z0, z1 = sample_latent(2, d, "normal", rng)
norm_lerp = np.linalg.norm(lerp(z0, z1, steps), axis=1)
norm_slerp = np.linalg.norm(slerp(z0, z1, steps), axis=1)
print(f"||z0|| = {norm_lerp[0]:.2f}, ||z1|| = {norm_lerp[-1]:.2f}, cos = {z0 @ z1 / norm_lerp[0] / norm_lerp[-1]:+.3f}")
print(f"midpoint norm: lerp {norm_lerp[steps // 2]:.2f}, slerp {norm_slerp[steps // 2]:.2f}")
np.testing.assert_allclose(slerp(z0, z1, steps)[[0, -1]], np.stack([z0, z1]), atol=1e-5)
assert norm_lerp[steps // 2] < 0.8 * min(norm_lerp[0], norm_lerp[-1])          # the dip, about 1/sqrt(2)
assert np.all(norm_slerp >= 0.99 * min(norm_lerp[0], norm_lerp[-1]) - 1e-6)     # slerp stays on the shell

# with exactly equal norms slerp keeps the norm exactly
z1_same = z1 / np.linalg.norm(z1) * np.linalg.norm(z0)
np.testing.assert_allclose(np.linalg.norm(slerp(z0, z1_same, steps), axis=1), np.linalg.norm(z0), rtol=1e-5)

shell = np.linalg.norm(sample_latent(m, d, "normal", rng), axis=1)
plt.figure(figsize=(6.5, 3))
plt.fill_between(t, np.percentile(shell, 0.5), np.percentile(shell, 99.5), color="0.9",
                 label="99% of training latents' norms")
plt.plot(t, norm_lerp, "o-", ms=3, label="linear")
plt.plot(t, norm_slerp, "s-", ms=3, label="slerp")
plt.xlabel("t")
plt.ylabel("$\\|z(t)\\|$")
plt.title(f"norm along the path between two N(0, I) latents, d = {d}")
plt.legend(fontsize=8)
plt.show()

# %% [markdown]
# ### And for uniform latents?
#
# The same dip happens for the uniform law (its shell has radius $\sqrt{d/3}$). But slerp is no
# cure there: the cube is not a ball. The midpoint of a slerp between two orthogonal points is
# $(z_0 + z_1)/\sqrt 2$, whose coordinates can reach $\sqrt 2 > 1$: the path **leaves the cube**,
# and $G$ never saw a coordinate outside $[-1, 1]$. Lerp stays inside (the cube is convex) but
# heads for its empty centre. Neither path stays where uniform training latents are; this is one
# argument for the normal law, whose typical set is a sphere.

# %%
zu0, zu1 = sample_latent(2, d, "uniform", rng)
path_slerp, path_lerp = slerp(zu0, zu1, steps), lerp(zu0, zu1, steps)
outside = (np.abs(path_slerp) > 1).mean(axis=1)
print(f"slerp midpoint: {outside[steps // 2]:.0%} of its coordinates outside [-1, 1], "
      f"max |z_i| {np.abs(path_slerp[steps // 2]).max():.2f}")
print(f"lerp: max |z_i| on the path {np.abs(path_lerp).max():.2f}; midpoint norm "
      f"{np.linalg.norm(path_lerp[steps // 2]):.2f} vs shell {math.sqrt(d / 3):.2f}")
assert outside[steps // 2] > 0.05 and np.abs(path_lerp).max() <= 1

# %% [markdown]
# ## 4. A small generator, trained here
#
# Now train the DCGAN of `gan.models` (4x4 kernels, stride 2, padding 1; MNIST's 28x28 digits
# padded to 32x32, one channel, dropout on D's input; G of width 32, D of width 16) on MNIST with
# Gaussian latents, through
# `gan.trainer.GANTrainer`, as `examples/mnist_latent_study.py` does, only narrower and shorter
# (full mode: 3 epochs of 10,000 digits, 468 steps of 64, about a minute of CPU; fast mode: 15
# steps on 1,024 digits). Such a small, short run with plain labels lets D win and G collapse onto
# one shape (`docs/results/mnist_latent_noise.md` shows it), so this one uses the faces recipe's
# two helpers: one-sided label smoothing 0.1 and the "skip" balancing rule (D sits out turns while
# its accuracy is above 90%; walkthrough 5).
# MNIST comes from `../../../shared/data/mnist` when it is there; without it, a synthetic set of
# strokes stands in.

# %%
DATA = Path("../../../shared/data/mnist")
try:
    digits, _ = load_mnist(DATA, split="test", download=False, progress=False)
    source = f"MNIST test digits from {DATA}"
except (OSError, ValueError):
    yy, xx = np.mgrid[:28, :28] / 27.0
    angle = rng.uniform(0, np.pi, size=(2000, 1, 1))
    line = np.abs((yy - 0.5) * np.cos(angle) - (xx - 0.5) * np.sin(angle))
    digits = np.where(line < 0.06, 1.0, -1.0).astype(np.float32)[:, None]
    source = "synthetic strokes (MNIST not found)"
images = np.pad(digits, ((0, 0), (0, 0), (2, 2), (2, 2)), constant_values=-1.0)[: 1024 if FAST else 10_000]
print(f"{len(images)} images {images.shape[1:]}: {source}")

LATENT = 64
config = TrainConfig(arch="dcgan", image_size=32, channels=1, latent_dim=LATENT, width=8 if FAST else 16,
                     model_options={"d_input_dropout": 0.2, "g_width": 8 if FAST else 32}, loss="non_saturating", lr_g=2e-4, lr_d=2e-4,
                     beta1=0.5, balance="skip", label_smoothing=0.1, latent_kind="normal",
                     steps_per_epoch=15 if FAST else None, n_samples=32, progress=False, report=False, seed=0)
EPOCHS = 1 if FAST else 3
RUN = Path(tempfile.mkdtemp(prefix="nnbox_walkthrough06_"))
trainer = GANTrainer.from_config(config, RUN)
loader = DataLoader(images, batch_size=64, shuffle=True, drop_last=True, rng=stream_rng(0, "data"))
history = trainer.fit(loader, EPOCHS)
G = trainer.G
losses = np.array([[r["d_loss"], r["g_loss"]] for r in history])
print(f"{len(history)} steps; last 20 steps: D loss {losses[-20:, 0].mean():.3f}, G loss {losses[-20:, 1].mean():.3f}")
assert np.isfinite(losses).all()


def show(images, nrow, title, scale=2):
    plt.figure(figsize=(nrow * 0.45 * scale + 0.5, len(images) / nrow * 0.45 * scale + 0.4))
    plt.imshow(make_grid(images, nrow=nrow))
    plt.axis("off")
    plt.title(title)
    plt.show()


show(trainer.sample()[:32], 8, "G(z) for 32 fixed Gaussian latents after training")

# %% [markdown]
# After so short a run G draws blurry, digit-like shapes. Runs this small can also collapse onto a
# few shapes, or a single one (mode collapse, walkthrough 5; the results page shows two that did).
# That does not matter for what follows: how G answers to the *norm* of its input shows anyway.

# %% [markdown]
# ### The same generator along lerp and slerp paths
#
# Each row below walks from one latent $z_0$ to another $z_1$ (the same pairs for both methods).
# The end points are identical; in the middle, lerp feeds $G$ latents of norm about
# $\sqrt{64}/\sqrt 2 \approx 5.7$ instead of 8. What $G$ draws there depends on the run: often
# fainter or thinner strokes, or an in-between blob, because $G$ was never trained on such $z$.
# Look also at what $G$ draws at the very centre, $z = 0$, and along the ray $s \cdot z$.

# %%
pairs = 4
za, zb = sample_latent(pairs, LATENT, "normal", np.random.default_rng(7)), \
    sample_latent(pairs, LATENT, "normal", np.random.default_rng(8))
rows = {method: interpolation_images(G, za, zb, steps=9, method=method) for method in ("linear", "slerp")}
ends = [row * 9 + k for row in range(pairs) for k in (0, 8)]
np.testing.assert_allclose(rows["linear"][ends], rows["slerp"][ends], atol=1e-5)   # the same end points
show(rows["linear"], 9, "linear interpolation (one pair per row)")
show(rows["slerp"], 9, "spherical interpolation (the same pairs)")

scales = np.array([0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0], dtype=np.float32)
ray = (scales[:, None, None] * za[None]).reshape(-1, LATENT)            # s * z for each of the pairs' z0
G.eval()
drawn = G(ray)
G.train()
by_scale = drawn.reshape(len(scales), pairs, *drawn.shape[1:]).transpose(1, 0, 2, 3, 4).reshape(-1, *drawn.shape[1:])
show(by_scale, len(scales), "G(s z) for s = " + ", ".join(f"{s:g}" for s in scales) + " (one z per row)")

# the contrast (pixel standard deviation) of G's images along the paths, mean over the pairs
contrast = {method: rows[method].reshape(pairs, 9, -1).std(axis=2).mean(axis=0) for method in rows}
for method, values in contrast.items():
    print(f"{method:6s} contrast along the path: {[round(float(v), 3) for v in values]}")
if not FAST:  # a trained G (the fast mode's 15 steps teach it nothing about norms)
    assert contrast["linear"][4] < contrast["slerp"][4]

# %% [markdown]
# How far from the training shell are these inputs? The middle of the lerp path and the ray's small
# $s$ are far below the norms $G$ was trained on (the band of section 3), and $s = 2$ far above.
# Both laws have this property; only the shape of the typical set differs (a sphere for the
# normal law, a shell hugging the faces of the cube for the uniform one). The practical rules:
#
# * sample $z$ from the law $G$ was trained with: a generator trained on $U(-1, 1)$ has never
#   seen a coordinate beyond 1, one trained on $\mathcal{N}(0, I)$ has never seen $\|z\|$ far from
#   $\sqrt d$;
# * interpolate Gaussian latents with slerp, so that every point of the path is a typical latent;
# * the "truncation trick" (BigGAN: redraw the coordinates of $z$ whose magnitude exceeds a
#   threshold) also moves $z$ off the shell, towards the centre. In large, well-trained generators
#   (BigGAN adds orthogonal regularisation so that $G$ tolerates it) this trades variety for
#   fidelity; in this small $G$, shrinking $z$ mostly fades the image (the ray above). What $G$
#   does off the shell is untrained behaviour: only measurement tells whether it is better or worse.

# %%
mid_norm = np.linalg.norm(lerp(za[0], zb[0], 9)[4])
print(f"training shell for d = {LATENT}: {math.sqrt(LATENT):.2f} +- {1 / math.sqrt(2):.2f}; "
      f"lerp midpoint norm {mid_norm:.2f}; ray norms {[round(float(s * np.linalg.norm(za[0])), 1) for s in scales]}")
assert mid_norm < math.sqrt(LATENT) - 2
shutil.rmtree(RUN, ignore_errors=True)
