# %% [markdown]
# # 05 · Training the faces GAN
#
# A GAN is two networks playing a game. The **generator** G turns a noise vector $z$ into an image;
# the **discriminator** D looks at an image and says how likely it is to be a real face. G wins
# when D cannot tell its faces from real ones. This walkthrough explains the game, the losses nnbox
# offers, how to read the plots the trainer draws, and the knobs that keep the game fair:
# balancing rules, soft labels, instance noise. It ends with the two classic failures,
# **mode collapse** and **a discriminator that wins**, and shows one of them being fixed.
#
# Everything here runs the real code: `gan.trainer.GANTrainer` with `gan.models.build_gan("faces")`,
# the way `examples/faces_gan.py` does. Every claim is checked with an `assert`.
#
# The runs are short (280 steps in all, under a minute on an idle 2-core machine), so the faces are
# not faces yet: the point is the *dynamics*. The recipe, `python examples/faces_gan.py`, trains for
# 20 epochs of LFW (over 4,000 steps of 64 faces) with wider networks.

# %%
import io
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from IPython.display import Image, display
from PIL import Image as PILImage

from gan.balance import Alternate, FixedRatio, SkipTooGood, StepStats
from gan.losses import GAN_LOSSES, bce_with_logits, get_gan_loss, sigmoid
from gan.trainer import GANTrainer, TrainConfig, stream_rng
from gan.tricks import InstanceNoise, LabelPolicy, sample_latent
from gan import visualize
from nnbox.data import DataLoader, RandomHorizontalFlip
from nnbox.datasets import load_lfw
from nnbox.synthetic_faces import synthetic_faces

# gan.visualize draws its PNGs with matplotlib's file backend ("Agg") and selects it on import;
# switch this notebook back to inline figures.
%matplotlib inline
plt.rcParams.update({"figure.dpi": 80, "savefig.dpi": 80, "font.size": 9})

FAST = os.environ.get("NNBOX_FAST") == "1"   # the test suite's quick run: tiny images, a few steps
RUNS = Path(tempfile.mkdtemp(prefix="nnbox_walkthrough05_"))  # run folders (samples, checkpoints)
print("fast mode" if FAST else "full mode", "| run folders in", RUNS)

# %% [markdown]
# ## 1. The game
#
# D outputs a probability $D(x) \in (0, 1)$ that $x$ is real. The two networks play the minimax game
#
# $$\min_G \max_D \; V(D, G) = \mathbb{E}_{x \sim p_\text{data}}\big[\log D(x)\big]
#   + \mathbb{E}_{z \sim p_z}\big[\log\big(1 - D(G(z))\big)\big].$$
#
# * **D's objective**: maximise $V$, i.e. say "real" ($D \to 1$) on real faces and "fake"
#   ($D \to 0$) on generated ones. Maximising $V$ is minimising the binary cross-entropy of a
#   classifier with target 1 on real and 0 on fake images; that is D's loss in nnbox:
#   $L_D = \text{BCE}(D(x), 1) + \text{BCE}(D(G(z)), 0) = -V$ on a batch.
# * **G's objective**: minimise $V$, i.e. make $D(G(z))$ large.
#
# For a fixed G, D's best answer at each image is found by maximising $a \log D + b \log(1-D)$ with
# $a = p_\text{data}(x)$, $b = p_g(x)$: the optimum is $D^*(x) = \frac{p_\text{data}(x)}{p_\text{data}(x) + p_g(x)}$.
# When G is perfect ($p_g = p_\text{data}$), $D^* = \tfrac12$ everywhere and
# $V = \log\tfrac12 + \log\tfrac12 = -\log 4$.
# So at the end of a perfect game D is a coin toss, and D's loss is $\log 4 \approx 1.386$ (with hard
# targets; with the recipe's one-sided smoothing 0.1, the real target is 0.9, $D^* = 0.45$ and the
# loss $\approx 1.38$).
#
# nnbox's D works on **logits** $\ell$ (D's output before the sigmoid, $D = \sigma(\ell)$), which is
# numerically safer; a logit of 0 is $D = \tfrac12$.

# %%
# D*(x) = a / (a + b): check it on a grid for a few (a, b) = (p_data(x), p_g(x)).
d = np.linspace(1e-4, 1 - 1e-4, 100001)
for a, b in [(0.7, 0.3), (0.2, 0.5), (1.0, 1.0)]:
    best = d[np.argmax(a * np.log(d) + b * np.log(1 - d))]
    assert abs(best - a / (a + b)) < 1e-4, (a, b, best)

# At the equilibrium D answers 1/2 (logit 0) for every image: D's loss is log 4.
loss = get_gan_loss("non_saturating")
logits_half = np.zeros((16, 1), np.float32)
d_loss, _, _ = loss.discriminator_loss(logits_half, logits_half)
print(f"D loss at the equilibrium: {d_loss:.4f}   log 4 = {math.log(4):.4f}")
assert abs(d_loss - math.log(4)) < 1e-6

# %% [markdown]
# ## 2. Why G does not minimise $\log(1 - D(G(z)))$
#
# Early in training G's faces are bad and D rejects them easily: $D(G(z)) \approx 0$. Look at what
# each G loss does there, as a function of D's logit $\ell$ on a fake ($D = \sigma(\ell)$):
#
# | G loss | value | gradient $\partial L_G / \partial \ell$ |
# |---|---|---|
# | minimax (the game as written) | $\log(1 - \sigma(\ell))$ | $-\sigma(\ell) = -D$ |
# | non-saturating | $-\log \sigma(\ell)$ | $\sigma(\ell) - 1 = -(1 - D)$ |
#
# With the minimax loss the gradient is $-D$: it **vanishes** exactly when D wins ($D \to 0$), so G
# gets no signal when it needs it most; the loss *saturates*. The non-saturating loss pushes in
# the same direction (make $D(G(z))$ bigger) with a gradient near $-1$ there. Both have the same
# fixed point; the non-saturating one is what everyone trains with, and nnbox's default.
#
# Below: both losses and their gradients, from `gan.losses` (per-image gradients: the losses
# divide by the batch size $N$, so we multiply it back).

# %%
logits = np.linspace(-8, 8, 401, dtype=np.float64).reshape(-1, 1)
n = logits.shape[0]
p_fake = sigmoid(logits)                       # D(G(z))
curves = {}
for name in ("minimax", "non_saturating"):
    value, grad = get_gan_loss(name).generator_loss(logits)
    curves[name] = grad * n                     # dL_G / d logit, per image
value_mm = np.log1p(-p_fake)                   # log(1 - D)
value_ns = -np.log(p_fake)                     # -log D

fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
axes[0].plot(p_fake, value_mm, label=r"minimax: $\log(1-D(G(z)))$")
axes[0].plot(p_fake, value_ns, label=r"non-saturating: $-\log D(G(z))$")
axes[0].set_xlabel("D(G(z))"); axes[0].set_ylabel("G loss"); axes[0].set_ylim(-5, 5); axes[0].legend()
axes[1].plot(p_fake, np.abs(curves["minimax"]), label="minimax")
axes[1].plot(p_fake, np.abs(curves["non_saturating"]), label="non-saturating")
axes[1].axvspan(0, 0.1, color="0.9", zorder=0)
axes[1].text(0.02, 0.5, "D wins:\nG's faces\nrejected", fontsize=8)
axes[1].set_xlabel("D(G(z))"); axes[1].set_ylabel("|dL_G / d logit|"); axes[1].legend()
for ax in axes:
    ax.grid(alpha=0.3)
fig.tight_layout(); plt.show()

# the library's gradients are the formulas of the table
assert np.allclose(curves["minimax"], -p_fake) and np.allclose(curves["non_saturating"], p_fake - 1)
# where D rejects the fakes (D(G(z)) < 0.1) the non-saturating gradient is larger, by a factor (1-D)/D > 9
rejected = p_fake[:, 0] < 0.1
ratio = np.abs(curves["non_saturating"][rejected]) / np.abs(curves["minimax"][rejected])
assert rejected.any() and (ratio > 9).all()
print(f"at D(G(z)) = {p_fake[0, 0]:.1e}: minimax gradient {curves['minimax'][0, 0]:.1e}, "
      f"non-saturating {curves['non_saturating'][0, 0]:.3f}")

# %% [markdown]
# ## 3. The losses in `gan.losses`
#
# `get_gan_loss(name)` gives an object with `discriminator_loss(real_logits, fake_logits)` and
# `generator_loss(fake_logits)`; each returns the loss and its gradient with respect to the logits,
# which the trainer sends back through D (and on into G). With $r$, $f$ D's outputs on real and fake images:
#
# | name | D minimises | G minimises | note |
# |---|---|---|---|
# | `minimax` | $\text{BCE}(r, 1) + \text{BCE}(f, 0)$ | $\log(1 - \sigma(f))$ | the game as written; saturates |
# | `non_saturating` | same | $-\log \sigma(f)$ | the default |
# | `least_squares` | $\tfrac12 (r - 1)^2 + \tfrac12 f^2$ | $\tfrac12 (f - 1)^2$ | LSGAN: pull grows with distance |
# | `hinge` | $\max(0, 1 - r) + \max(0, 1 + f)$ | $-f$ | D stops pushing beyond a margin of 1 |
# | `wasserstein` | $f - r$ | $-f$ | a *critic* (walkthrough 07): must be kept Lipschitz (`wasserstein` clips D's weights, `wgan_gp` adds a gradient penalty instead) |
#
# G's gradient decides how G learns when D is confident. Plotted against D's raw output on a fake:

# %%
outputs = np.linspace(-6, 6, 241).reshape(-1, 1)
fig, ax = plt.subplots(figsize=(6.5, 3.2))
g_grads = {}
for name in GAN_LOSSES:
    _, grad = get_gan_loss(name).generator_loss(outputs)
    g_grads[name] = grad[:, 0] * len(outputs)
    ax.plot(outputs[:, 0], g_grads[name], label=name, linestyle="--" if name == "wasserstein" else "-")
ax.set_xlabel("D's output on a fake (logit, or raw score)"); ax.set_ylabel("dL_G / d output, per image")
ax.axvline(0, color="0.7", linewidth=0.8); ax.grid(alpha=0.3); ax.legend(fontsize=8)
fig.tight_layout(); plt.show()

x = outputs[:, 0]
assert np.allclose(g_grads["least_squares"], x - 1)       # grows with the distance from the target 1
assert np.allclose(g_grads["hinge"], -1) and np.allclose(g_grads["wasserstein"], -1)  # constant push
assert np.all(np.diff(np.abs(g_grads["minimax"])) > 0)    # minimax: weakest where D rejects (x << 0)

# D's side: the BCE losses agree, the hinge loss stops at the margin
real, fake = np.array([[3.0], [0.5]]), np.array([[-3.0], [-0.5]])
for name in GAN_LOSSES:
    d_loss, d_real, d_fake = get_gan_loss(name).discriminator_loss(real, fake)
    print(f"{name:15s} D loss {d_loss:+.4f}   dL/dr {np.round(d_real[:, 0], 3)}   dL/df {np.round(d_fake[:, 0], 3)}")
_, d_real, d_fake = get_gan_loss("hinge").discriminator_loss(real, fake)
assert d_real[0, 0] == 0 and d_fake[0, 0] == 0     # a real at +3 and a fake at -3 are past the margin: no push

# %% [markdown]
# ## 4. Data and a healthy run
#
# The faces come from LFW (Labeled Faces in the Wild, 13,233 photos) when the shared data folder is
# there, through `nnbox.datasets.load_lfw`, which crops the face, resizes it and caches the result;
# otherwise from `nnbox.synthetic_faces`, procedurally drawn cartoon faces. (The fast test run
# always uses small synthetic faces.) Images are uint8 here; the `DataLoader` turns each batch into
# float32 NCHW in $[-1, 1]$, and flips half of them left-right.
#
# The networks are the course's faces GAN (`build_gan("faces")`), made half as wide as the recipe's
# (here G width 32 and D width 16; the recipe's are 64 and 32) so that these runs take seconds
# rather than minutes.

# %%
DATA = Path("../../../shared/data/lfw-deepfunneled")
IMAGE_SIZE = 16 if FAST else 32
BATCH = 16 if FAST else 32
WIDTHS = dict(g_width=8, d_width=8) if FAST else dict(g_width=32, d_width=16)

if not FAST and DATA.is_dir():
    faces = load_lfw(DATA, image_size=IMAGE_SIZE, download=False, progress=False).images
    source = f"LFW ({DATA})"
else:
    faces = synthetic_faces(128 if FAST else 4096, IMAGE_SIZE, rng=0)
    source = "synthetic cartoon faces (nnbox.synthetic_faces)"
print(f"{len(faces)} faces of {IMAGE_SIZE}x{IMAGE_SIZE} from {source}; dtype {faces.dtype}")
assert faces.dtype == np.uint8 and faces.shape[1:] == (IMAGE_SIZE, IMAGE_SIZE, 3)


def make_loader():
    """Batches of float32 NCHW faces in [-1, 1], shuffled by the data stream of seed 0, flipped at random."""
    return DataLoader(faces, batch_size=BATCH, shuffle=True, drop_last=True, rng=stream_rng(0, "data"),
                      transform=RandomHorizontalFlip(0.5))


def train(name, epochs, steps_per_epoch, **settings):
    """A GANTrainer on the faces GAN; `settings` override TrainConfig's defaults (the recipe)."""
    config = TrainConfig(arch="faces", image_size=IMAGE_SIZE, model_options=dict(WIDTHS), seed=0,
                         steps_per_epoch=steps_per_epoch, n_samples=16, progress=False, report=False,
                         **settings)
    trainer = GANTrainer.from_config(config, RUNS / name)
    started = time.perf_counter()
    trainer.fit(make_loader(), epochs)
    print(f"{name}: {len(trainer.history)} steps in {time.perf_counter() - started:.0f} s")
    return trainer


def png(picture):
    """The PNG bytes of a PIL image."""
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def show_row(pictures, gap=8):
    """uint8 (H, W, 3) pictures side by side at their own pixels (no resampling: crisp, and few bytes)."""
    height = max(p.shape[0] for p in pictures)
    padded = [np.pad(p, ((0, height - p.shape[0]), (0, gap), (0, 0)), constant_values=255) for p in pictures]
    display(Image(data=png(PILImage.fromarray(np.concatenate(padded, axis=1)[:, :-gap]))))


def show_plot(path):
    """A plot gan.visualize saved, re-encoded with a 64-colour palette (a third of the bytes)."""
    with PILImage.open(path) as picture:
        display(Image(data=png(picture.convert("RGB").quantize(64, method=PILImage.Quantize.MEDIANCUT)),
                      width=620))


def sample_grids(trainer):
    """The sample grids the trainer saved after each epoch (the same fixed z each time), as arrays."""
    grids = []
    for path in sorted((trainer.run_dir / "samples").glob("epoch_*.png")):
        with PILImage.open(path) as picture:
            grids.append(np.asarray(picture.convert("RGB")))
    return grids

# %% [markdown]
# The first run has the recipe's settings as `examples/faces_gan.py` runs it, except the narrower
# networks and batches of 32 instead of 64: non-saturating loss, Adam
# (learning rate $2 \cdot 10^{-4}$, $\beta_1 = 0.5$) for both networks, the skip balancing rule,
# one-sided label smoothing 0.1. Each turn the trainer does a D step on a real and a fake batch,
# then a G step through the frozen D, and records a row of numbers.

# %%
EPOCHS, STEPS = (2, 4) if FAST else (4, 40)
recipe = train("recipe", EPOCHS, STEPS)
print(f"G's samples for the same fixed z before training and after each epoch of {STEPS} steps:")
show_row(sample_grids(recipe))
print("recorded per step:", ", ".join(recipe.history.fields))
assert len(recipe.history) == EPOCHS * STEPS

# %% [markdown]
# ## 5. Reading the monitoring plots
#
# The trainer records, per step: both losses; $D(x)$ and $D(G(z))$ (D's mean probability on the
# real and the fake batch); **D's accuracy on real** (the fraction of real faces it calls real,
# logit > 0) and **on fake** (fakes it calls fake); **G's success** (fakes D calls real, measured
# in G's turn); whether each network trained and why. `gan.visualize` draws them from the history
# (and `report.html` shows them at the end of a run).
#
# What healthy looks like:
# * neither loss goes to 0; D's loss stays near $\log 4 \approx 1.39$ or somewhat below, G's wobbles;
# * $D(x)$ stays above $D(G(z))$ but neither sticks to 1 or 0;
# * D's accuracies hover between about 0.5 and 0.9 and G succeeds some of the time.
#
# What trouble looks like:
# * **D wins**: D's accuracy on real *and* fake goes to 1, $D(G(z)) \to 0$, G's loss climbs and G's
#   success is 0: G gets no useful signal (section 8).
# * **Mode collapse**: G's loss can look fine, but the samples all look alike; D's accuracy on fakes
#   swings as D learns to spot the few faces G makes, and G hops to others (section 10).
# * **G wins**: rarer; G's success near 1 with bad samples usually means D stopped learning.

# %%
plots = {name: plot(recipe.history, RUNS / "recipe" / "plots" / f"{name}.png")
         for name, plot in (("losses", visualize.plot_losses), ("accuracy", visualize.plot_accuracy))}
for path in plots.values():
    show_plot(path)

h = recipe.history
for column in ("d_real", "d_fake", "d_acc_real", "d_acc_fake", "g_success"):
    values = h.column(column)
    assert np.all((values >= 0) & (values <= 1)), column     # probabilities and fractions
assert np.all(np.isfinite(h.column("d_loss"))) and np.all(np.isfinite(h.column("g_loss")))
summary = h.epoch_summary()
for row in summary:
    print(f"epoch {row['epoch']}: D loss {row['d_loss']:.3f}  G loss {row['g_loss']:.3f}  "
          f"D(x) {row['d_real']:.2f}  D(G(z)) {row['d_fake']:.2f}  acc real/fake {row['d_acc_real']:.2f}/"
          f"{row['d_acc_fake']:.2f}  G success {row['g_success']:.2f}  D trained {row['train_d']:.0%}")

# %% [markdown]
# Read this run with the table: after the first epoch D gets ahead (accuracy on fakes near 1, G's
# success near 0), so the skip rule benches D for most turns; G catches up, and in the last epoch the
# game is balanced again: D right on roughly 70% of real and of fake faces, G fooling D about a
# quarter of the time, D training almost every turn. The faces themselves: after these few hundred
# steps G has learned the skin tones and the dark patches where hair and background go, not yet eyes
# and mouths; that takes thousands of steps (the recipe's 20 epochs).

# %%
if not FAST:  # the claims above, on this run (the fast test run is too short for them)
    assert min(row["train_d"] for row in summary) < 0.5          # the skip rule benched D in some epoch
    last = summary[-1]
    assert last["train_d"] > 0.8 and last["g_success"] > 0.1 and 0.5 < last["d_acc_fake"] < 0.9

# %% [markdown]
# ## 6. Labels: one-sided smoothing, soft labels, flipped labels
#
# D is trained as a classifier against **targets**: 1 for real, 0 for fake. Hard targets push D's
# logits on real faces towards $+\infty$: they reward an overconfident D, the first step towards a D
# that wins (section 8). `gan.tricks.LabelPolicy` changes the targets:
#
# * **one-sided label smoothing** $s$: real targets $1 - s$, fake targets stay 0 (smoothing the fake
#   side would reward D for calling G's faces slightly real, which keeps bad samples alive);
# * **soft labels**: every target drawn at random, real $\sim U(0.7, 1.0)$, fake $\sim U(0, 0.3)$;
# * **flipped labels**: a fraction of positions swap their real and fake targets: a little label noise.
#
# With a real target $t$, D's loss on that image, $\text{BCE}(\ell, t)$, has its minimum where
# $\sigma(\ell) = t$, i.e. at the logit $\ell^* = \log\frac{t}{1 - t}$: with $t = 0.9$, D is no
# longer pushed towards infinite confidence but to $\ell^* = \log 9 \approx 2.2$.

# %%
smooth = LabelPolicy(smoothing=0.1)
real_t, fake_t = smooth.targets(8)
print("smoothing 0.1: real", real_t[:, 0], " fake", fake_t[:, 0])
assert np.allclose(real_t, 0.9) and np.all(fake_t == 0)

soft_real, soft_fake = LabelPolicy(soft_labels=True, rng=0).targets(20000)
assert soft_real.min() >= 0.7 and soft_real.max() <= 1.0 and soft_fake.min() >= 0.0 and soft_fake.max() <= 0.3
assert abs(soft_real.mean() - 0.85) < 0.005 and abs(soft_fake.mean() - 0.15) < 0.005
print(f"soft labels:   real in [{soft_real.min():.3f}, {soft_real.max():.3f}], "
      f"fake in [{soft_fake.min():.3f}, {soft_fake.max():.3f}]")

flip = LabelPolicy(flip_fraction=0.25, rng=0)
real_t, fake_t = flip.targets(8)
print("flip 25%:      real", real_t[:, 0], " fake", fake_t[:, 0])
assert (real_t == 0).sum() == 2 and np.array_equal(real_t + fake_t, np.ones_like(real_t))  # 2 of 8 swapped

# the optimum logit under a smoothed target: BCE's gradient sigma(l) - t vanishes at l* = log(t / (1 - t))
t = 0.9
l_star = np.array([[math.log(t / (1 - t))]])
_, grad = bce_with_logits(l_star, np.array([[t]]))
assert abs(grad[0, 0]) < 1e-12

fig, axes = plt.subplots(1, 2, figsize=(9, 2.8))
axes[0].hist(soft_real[:, 0], bins=40, color="tab:green", alpha=0.7, label="real")
axes[0].hist(soft_fake[:, 0], bins=40, color="tab:red", alpha=0.7, label="fake")
axes[0].axvline(0.9, color="k", linestyle=":", label="one-sided smoothing 0.1")
axes[0].set_title("soft labels: D's targets"); axes[0].set_xlabel("target"); axes[0].legend(fontsize=8)
ls = np.linspace(-1, 7, 200).reshape(-1, 1)
for target, style in ((1.0, "-"), (0.9, "--")):
    value = np.array([bce_with_logits(l.reshape(1, 1), np.array([[target]]))[0] for l in ls])
    axes[1].plot(ls[:, 0], value, style, label=f"real target {target}")
axes[1].axvline(l_star[0, 0], color="0.6", linestyle=":")
axes[1].set_title("D's loss on a real image"); axes[1].set_xlabel("D's logit"); axes[1].legend(fontsize=8)
fig.tight_layout(); plt.show()

# %% [markdown]
# ## 7. Instance noise
#
# Early on, real and generated images lie on different thin "surfaces" of image space that do
# not overlap, and a D that separates them perfectly is easy to find and useless to G. **Instance
# noise** adds Gaussian noise of standard deviation $\sigma_t$ to *every* image D sees, real and fake,
# which blurs both distributions until they overlap; $\sigma_t$ falls linearly to 0 over
# `decay_steps` steps, $\sigma_t = \sigma_0 \max(0, 1 - t / T)$. The noise is added, so backward is
# unchanged. In the trainer: `TrainConfig(instance_noise=0.1, instance_noise_decay=2000)`; each
# step records the $\sigma_t$ it used (`noise_std`). Here on a synthetic face:

# %%
noise = InstanceNoise(std=0.5, decay_steps=100, rng=0)
face = synthetic_faces(8, 32, rng=3).transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1  # NCHW in [-1, 1]
fig, axes = plt.subplots(1, 4, figsize=(7, 2.1))
for ax, step in zip(axes, (0, 50, 90, 100)):
    noisy = noise(face, step)
    expected = 0.5 * max(0.0, 1 - step / 100)
    measured = float((noisy - face).std())
    assert noise.current_std(step) == expected and abs(measured - expected) <= 0.02 * expected + 1e-12
    ax.imshow(visualize.to_uint8_images(noisy[:1])[0]); ax.axis("off")
    ax.set_title(f"step {step}: std {expected:.2f}", fontsize=8)
fig.tight_layout(); plt.show()

# %% [markdown]
# ## 8. A discriminator that wins
#
# Make the game unfair on purpose: D's learning rate 10 times G's, and the `Alternate` rule (both
# networks train every turn, no skipping). Everything else is the recipe.

# %%
LR = 2e-4
UNFAIR_EPOCHS, UNFAIR_STEPS = (1, 8) if FAST else (2, 30)
d_wins = train("d_wins", UNFAIR_EPOCHS, UNFAIR_STEPS, balance="alternate", lr_g=LR, lr_d=10 * LR)
show_plot(visualize.plot_accuracy(d_wins.history, RUNS / "d_wins" / "accuracy.png"))

# %% [markdown]
# D wins fast: its accuracy on real and fake goes to 1, $D(G(z))$ falls to almost 0, G's success is 0
# and G's loss climbs: with the non-saturating loss G's loss is $-\log D(G(z))$, so $D(G(z)) = 10^{-4}$
# is a loss of about 9. G still gets a gradient (that is the point of the non-saturating loss), but
# it comes from a D that has learned to reject everything G makes, and G's faces stop improving.
# (D's output on real faces stops near 0.9, not 1: that is the recipe's one-sided label smoothing, section 6.)

# %%
def quarter(history, column, last=True):
    """Mean of a recorded column over the last (or the first) quarter of a run."""
    values = history.column(column)
    k = max(1, len(values) // 4)
    return float((values[-k:] if last else values[:k]).mean())


def late(history, column):
    return quarter(history, column, last=True)


def early(history, column):
    return quarter(history, column, last=False)


h = d_wins.history
print(f"last quarter: D acc real {late(h, 'd_acc_real'):.2f}, fake {late(h, 'd_acc_fake'):.2f}, "
      f"D(G(z)) {late(h, 'd_fake'):.4f}, G success {late(h, 'g_success'):.2f}, "
      f"G loss {early(h, 'g_loss'):.2f} (first quarter) -> {late(h, 'g_loss'):.2f}")
assert h.column("train_d").all() and h.column("train_g").all()   # Alternate: both train, always
if not FAST:  # the fast test run is too short for D to win; the full run shows it
    assert late(h, "d_acc_real") > 0.95 and late(h, "d_acc_fake") > 0.95
    assert late(h, "d_fake") < 0.02 and late(h, "g_success") < 0.02
    assert late(h, "g_loss") > early(h, "g_loss")
    assert abs(late(h, "d_real") - 0.9) < 0.05   # D(x) -> 0.9: the smoothed real target

# %% [markdown]
# ## 9. Balancing rules
#
# A **balancing rule** (`gan.balance`) decides before each turn, from the statistics of the previous
# turn, whether D and G train. The trainer records every decision and its reason.
#
# * `Alternate()`: both train every turn (1:1).
# * `FixedRatio(n_d, n_g)`: a cycle of $\max(n_d, n_g)$ turns, D's steps first: $5{:}1$ (the WGAN
#   recipe) is D, D, D, D, D+G.
# * `SkipTooGood(d_threshold=0.9, g_threshold=0.9, max_consecutive_skips=5)`, the course's rule
#   *"if one network is too good, skip its turn"*: skip D when its accuracy on the last batch
#   (the mean of its accuracy on real and on fake) is above `d_threshold`; skip G when its success
#   rate is above `g_threshold`; never both; and a network skipped `max_consecutive_skips` turns in a
#   row trains anyway, so training cannot stall.
#
# A rule only needs the numbers of the previous turn, so we can replay any rule on the recorded
# history of the unfair run and see what it *would* have decided:

# %%
def stats_of(record):
    """The StepStats the trainer gives the rule after a turn (D's accuracy is the mean of real and fake)."""
    return StepStats(d_acc_real=record["d_acc_real"], d_acc_fake=record["d_acc_fake"], g_success=record["g_success"])


def replay(rule, history):
    """The decisions `rule` makes, turn after turn, fed the statistics recorded in `history`."""
    decisions, previous = [], None
    for record in history:
        decisions.append(rule.decide(previous))
        previous = stats_of(record)
    return decisions


rules = {"Alternate()": Alternate(), "FixedRatio(5, 1)": FixedRatio(5, 1), "SkipTooGood(0.9)": SkipTooGood(0.9, 0.9, 5)}
replayed = {name: replay(rule, d_wins.history) for name, rule in rules.items()}
turns = len(d_wins.history)
for name, decisions in replayed.items():
    print(f"{name:17s} D trains {sum(d.train_d for d in decisions):3d} of {turns} turns, "
          f"G {sum(d.train_g for d in decisions):3d}")
skip = replayed["SkipTooGood(0.9)"]
for i in range(1, min(turns, 9)):
    print(f"  turn {i}: {skip[i].reason}")

assert all(d.train_d and d.train_g for d in replayed["Alternate()"])
five_to_one = replayed["FixedRatio(5, 1)"]
assert [d.train_g for d in five_to_one[:5]] == [False] * 4 + [True] and all(d.train_d for d in five_to_one)
# the skip rule, in words: skip a network whose last score is above 0.9 (D: accuracy, G: success),
# unless both are, or it was already skipped 5 turns in a row
d_run = g_run = 0
for i in range(1, turns):
    stats = stats_of(d_wins.history[i - 1])
    d_good, g_good = stats.d_acc > 0.9, stats.g_success > 0.9
    assert skip[i].train_d == (not (d_good and not g_good) or d_run >= 5), i
    assert skip[i].train_g == (not (g_good and not d_good) or g_run >= 5), i
    d_run = 0 if skip[i].train_d else d_run + 1
    g_run = 0 if skip[i].train_g else g_run + 1

# %% [markdown]
# Now the same unfair run, trained with the skip rule: D's learning rate is still 10 times G's, but
# whenever D is too good it sits out and G trains alone.

# %%
rescued = train("skip_rescue", UNFAIR_EPOCHS, UNFAIR_STEPS, balance="skip", d_threshold=0.9, g_threshold=0.9,
                max_consecutive_skips=5, lr_g=LR, lr_d=10 * LR)
show_plot(visualize.plot_balance(rescued.history, RUNS / "skip_rescue" / "balance.png"))

# What the trainer did is what the rule decides on the recorded statistics: replay it and compare.
recorded = [(r["train_d"], r["train_g"], r["reason"]) for r in rescued.history]
again = [(int(d.train_d), int(d.train_g), d.reason) for d in replay(SkipTooGood(0.9, 0.9, 5), rescued.history)]
assert recorded == again
d_trained = rescued.history.column("train_d")
print(f"skip rule: D trained {int(d_trained.sum())} of {len(d_trained)} turns, "
      f"G {int(rescued.history.column('train_g').sum())}")

# %%
fig, axes = plt.subplots(2, 2, figsize=(9, 5), sharex=True)
window = 5
for trainer, label, color in ((d_wins, "Alternate", "tab:red"), (rescued, "SkipTooGood", "tab:blue")):
    history = trainer.history
    steps = history.column("step")
    for ax, column, title in ((axes[0, 0], "d_fake", "D(G(z))"), (axes[0, 1], "g_loss", "G loss"),
                              (axes[1, 0], "d_acc_fake", "D accuracy on fake"), (axes[1, 1], "g_success", "G success")):
        ax.plot(steps, visualize.moving_average(history.column(column), window), color=color, label=label)
        ax.set_title(f"{title} (mean of {window} steps)", fontsize=9)
for ax in axes.flat:
    ax.grid(alpha=0.3)
axes[0, 0].legend(fontsize=8)
axes[1, 0].set_xlabel("step"); axes[1, 1].set_xlabel("step")
fig.suptitle("D's learning rate 10x G's: both networks every turn vs the skip rule", fontsize=10)
fig.tight_layout(); plt.show()

for trainer in (d_wins, rescued):
    h = trainer.history
    print(f"{trainer.run_dir.name:12s} last quarter: D(G(z)) {late(h, 'd_fake'):.4f}  G loss {late(h, 'g_loss'):.2f}  "
          f"D acc fake {late(h, 'd_acc_fake'):.2f}  G success {late(h, 'g_success'):.2f}  "
          f"D trained {late(h, 'train_d'):.0%}")
print("samples at the end: Alternate (left), SkipTooGood (right)")
show_row([sample_grids(d_wins)[-1], sample_grids(rescued)[-1]])
if not FAST:
    assert late(rescued.history, "train_d") < 0.5                               # D sat out most turns
    assert late(rescued.history, "d_fake") > 2 * late(d_wins.history, "d_fake")  # D rejects G's faces less
    assert late(rescued.history, "g_loss") < late(d_wins.history, "g_loss")

# %% [markdown]
# The skip rule does not make D weaker, it makes D train less often: once D's accuracy passes 0.9 it
# waits, at most 5 turns, while G trains alone. $D(G(z))$ stays several times higher and G's loss
# lower than with both networks training every turn. It is a blunt tool: with a learning rate this unfair
# the guard lets D train every sixth turn, and that is enough to keep D ahead; lowering D's learning
# rate is the real fix. Skipping is a safety net for the ordinary swings of a run, like those of the
# recipe run in section 5. Neither G learned to draw faces in these 60 steps (the sample grids): the
# skip rule limits the damage, it does not undo it.

# %% [markdown]
# ## 10. Spotting mode collapse
#
# In **mode collapse** G maps many different $z$ to the same few faces. The plots can look normal,
# so measure the samples themselves. Two simple measures on $M$ images flattened to vectors:
#
# * **diversity**: the mean distance between two different images, as a root-mean-square per pixel,
#   $\frac{2}{M(M-1)} \sum_{i<j} \lVert x_i - x_j \rVert / \sqrt{P}$ with $P$ values per image;
#   compare it with the same number for real faces;
# * **near duplicates**: the fraction of images whose nearest *other* image is closer than a small
#   threshold (here an RMS difference of 0.05 on the $[-1, 1]$ scale, invisible to the eye).
#
# To see what collapse looks like to these measures we also build two collapsed "generators" from
# the recipe's samples: one that draws a single face, one that knows only 8 faces, each copy with a
# faint pixel noise (std 0.01) so that no two images are exactly equal.

# %%
def pairwise_rms(images):
    """(M, M) RMS-per-value distances between images (M, C, H, W), diagonal set to infinity."""
    x = images.reshape(len(images), -1).astype(np.float64)
    squared = (x * x).sum(1)
    d2 = np.maximum(squared[:, None] + squared[None, :] - 2 * x @ x.T, 0) / x.shape[1]
    distances = np.sqrt(d2)
    np.fill_diagonal(distances, np.inf)
    return distances


def diversity(images, duplicate_rms=0.05):
    """(mean pairwise RMS distance, fraction of images with a near duplicate among the others)."""
    distances = pairwise_rms(images)
    mean = float(distances[np.isfinite(distances)].mean())
    return mean, float((distances.min(1) < duplicate_rms).mean())


def collapsed(images, modes, rng):
    """M images drawn from only the first `modes` of `images`, each with faint noise (std 0.01)."""
    copies = images[rng.integers(0, modes, len(images))]
    return np.clip(copies + 0.01 * rng.standard_normal(copies.shape, dtype=np.float32), -1, 1)


M = 64 if FAST else 256
z = sample_latent(M, recipe.latent_dim, "normal", rng=7)
pick = np.random.default_rng(0).choice(len(faces), M, replace=False)
rng = np.random.default_rng(1)
sets = {"real faces": faces[pick].transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1,
        "recipe G": recipe.sample(z), "D-wins G": d_wins.sample(z), "skip-rule G": rescued.sample(z)}
sets["one face (built)"] = collapsed(sets["recipe G"], 1, rng)
sets["8 faces (built)"] = collapsed(sets["recipe G"], 8, rng)
scores = {name: diversity(images) for name, images in sets.items()}
for name, (mean, dup) in scores.items():
    share = mean / scores["real faces"][0]
    print(f"{name:17s} diversity {mean:.3f} ({share:4.0%} of real)   near duplicates {dup:4.0%}")

shown = ("recipe G", "D-wins G", "8 faces (built)")
print("16 samples each, left to right:", ", ".join(shown))
show_row([visualize.make_grid(sets[name][:16], nrow=4, scale=2) for name in shown])

assert scores["one face (built)"][0] < 0.1 * scores["real faces"][0]    # total collapse: all alike
assert scores["one face (built)"][1] == 1 and scores["8 faces (built)"][1] == 1  # every image has a twin
assert scores["real faces"][1] < 0.05                                     # real faces have none
# a partial collapse hides from the mean distance (8 different faces are still far apart on average)
assert scores["8 faces (built)"][0] > 0.5 * scores["recipe G"][0]

# %% [markdown]
# A total collapse drags the mean distance towards 0; a partial one (a handful of faces) hardly moves
# it, but every image then has a near twin, which the duplicate count catches. A healthy G has a
# diversity near the real faces' and no near duplicates. A diversity *above* the real faces' is no
# virtue: an undertrained G's samples are noisy, and noise is far from everything. Look at the sample
# grids too: with fixed $z$, a collapsing run shows the same face in many tiles, and from one epoch to
# the next they all change together. `gan.metrics.nearest_neighbours` does the same search against
# the *training* set, to spot a G that copies training images instead.
#
# ## Summary
#
# * The game: D maximises $V$, G minimises it; at the equilibrium $D = \tfrac12$ and D's loss is $\log 4$
#   (with hard targets; 0.45 and about 1.38 with one-sided smoothing 0.1).
# * Train G with the non-saturating loss: its gradient is largest when D rejects G's faces.
# * Read the plots: D's accuracy on real and fake, G's success, $D(x)$ and $D(G(z))$. Accuracies at 1,
#   $D(G(z)) \to 0$ and a climbing G loss mean D has won.
# * Keep the game fair with a balancing rule (skip the too-good network), one-sided label smoothing or
#   soft labels, instance noise, and, first of all, sensible learning rates.
# * Check diversity of the samples, not only the losses, to catch mode collapse.

# %%
shutil.rmtree(RUNS)   # the run folders (checkpoints, sample grids) were only for this notebook
