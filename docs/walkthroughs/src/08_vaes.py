# %% [markdown]
# # 8. Variational autoencoders
#
# A GAN learns to *draw* but cannot say which code draws a given image. A **variational
# autoencoder** (VAE) learns both directions at once: an *encoder* maps an image $x$ to a
# distribution $q(z \mid x)$ over codes, a *decoder* maps a code $z$ back to a distribution
# $p(x \mid z)$ over images, and the codes are pushed towards a simple *prior* $p(z)$ from which new
# images can be drawn. This walkthrough covers:
#
# 1. the objective, the evidence lower bound (ELBO), checked on a model whose likelihood is known;
# 2. the reparameterisation trick: why its gradients have a low variance, measured;
# 3. discrete codes: the Gumbel-max trick, its Gumbel-softmax relaxation and the temperature;
# 4. training `gan.vae.VAE` on coloured MNIST with a Gaussian and a categorical code, and reading
#    what each code learnt.

# %%
import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import rgb_to_hsv

from gan.vae import VAE, VAEObjective, one_hot
from gan.visualize import make_grid
from layers.sampling import GumbelSoftmax, Reparameterize, gumbel_noise, one_hot_argmax
from nnbox.datasets import colorize_mnist, load_colored_mnist
from nnbox.gradcheck import gradcheck
from nnbox.losses import CategoricalKLLoss, gaussian_kl
from nnbox.optim import Adam

FAST = os.environ.get("NNBOX_FAST") == "1"   # the test suite sets this: less data, fewer steps
plt.rcParams["figure.dpi"] = 80
np.set_printoptions(precision=4, suppress=True)
rng = np.random.default_rng(0)

# %% [markdown]
# ## 1. The evidence lower bound
#
# We would like to maximise the likelihood $\log p(x) = \log \int p(x \mid z)\, p(z)\, dz$ of the
# data, but the integral over all codes is intractable for a neural decoder. For *any* distribution
# $q(z \mid x)$, Jensen's inequality gives a lower bound, the ELBO:
#
# $$ \log p(x) \;\ge\; \mathrm{ELBO}(q) = \underbrace{\mathbb E_{q(z \mid x)}\big[\log p(x \mid z)\big]}_{\text{reconstruction}}
#    \;-\; \underbrace{\mathrm{KL}\big(q(z \mid x)\,\|\,p(z)\big)}_{\text{stay near the prior}}, $$
#
# and the gap is exactly $\log p(x) - \mathrm{ELBO}(q) = \mathrm{KL}(q(z \mid x) \,\|\, p(z \mid x)) \ge 0$:
# the bound is tight when $q$ is the true posterior. A VAE maximises the ELBO over the decoder's
# and the encoder's weights together, so the encoder learns to approximate the posterior.
#
# With a Gaussian $q = \mathcal N(\mu, \mathrm{diag}\,\sigma^2)$ (the encoder outputs $\mu$ and
# $\log \sigma^2$) and the prior $\mathcal N(0, I)$, the KL has a closed form,
#
# $$ \mathrm{KL} = -\tfrac12 \sum_j \big(1 + \log\sigma_j^2 - \mu_j^2 - \sigma_j^2\big), $$
#
# and with a Bernoulli decoder ($p(x \mid z) = \prod_i \mathrm{sigmoid}(\ell_i)^{x_i} (1 - \mathrm{sigmoid}(\ell_i))^{1 - x_i}$
# for pixel logits $\ell$) the reconstruction term is minus the binary cross-entropy summed over pixels.
# nnbox maps pixels in $[-1, 1]$ to $(x + 1)/2$ and uses them as the targets: for grey or colour
# values (not just 0 and 1) that is the usual approximation, not a normalised likelihood (the
# continuous Bernoulli of Loaiza-Ganem and Cunningham, 2019, is the exact version), so the "negative
# ELBO" below is one up to a constant that depends on the data.
#
# **A check on a model where everything is known.** Take one scalar code and one scalar
# observation: $z \sim \mathcal N(0, 1)$, $x \mid z \sim \mathcal N(wz, s^2)$. Then
# $p(x) = \mathcal N(0, w^2 + s^2)$ and the posterior is $\mathcal N(m^*, v^*)$ with
# $v^* = 1 / (1 + w^2/s^2)$ and $m^* = v^* w x / s^2$. The ELBO of $q = \mathcal N(m, v)$ is exact too:
# $\mathbb E_q[\log p(x \mid z)] = -\tfrac12 \log(2\pi s^2) - \big((x - wm)^2 + w^2 v\big) / (2 s^2)$.
# We also estimate it by Monte Carlo, drawing $z$ with nnbox's `Reparameterize` layer.

# %%
w, s, x_obs = 2.0, 0.5, 1.3
log_px = -0.5 * np.log(2 * np.pi * (w**2 + s**2)) - x_obs**2 / (2 * (w**2 + s**2))
v_star = 1 / (1 + w**2 / s**2)
m_star = v_star * w * x_obs / s**2


def elbo_exact(m, v):
    expected_log_lik = -0.5 * np.log(2 * np.pi * s**2) - ((x_obs - w * m) ** 2 + w**2 * v) / (2 * s**2)
    kl, _, _ = gaussian_kl(np.array([[m]]), np.array([[np.log(v)]]))
    return expected_log_lik - float(kl)


def elbo_monte_carlo(m, v, draws):
    z = Reparameterize(rng=1)(np.full((draws, 1), m), np.full((draws, 1), np.log(v)))
    log_lik = -0.5 * np.log(2 * np.pi * s**2) - (x_obs - w * z) ** 2 / (2 * s**2)
    kl, _, _ = gaussian_kl(np.array([[m]]), np.array([[np.log(v)]]))
    return float(log_lik.mean()) - float(kl)


def kl_gauss(m1, v1, m2, v2):
    """KL(N(m1, v1) || N(m2, v2)) for scalars."""
    return 0.5 * (np.log(v2 / v1) + (v1 + (m1 - m2) ** 2) / v2 - 1)


draws = 20_000 if FAST else 200_000
print(f"log p(x) = {log_px:.5f}")
for name, (m, v) in {"true posterior": (m_star, v_star), "too wide": (m_star, 4 * v_star),
                     "shifted": (m_star + 0.3, v_star), "the prior": (0.0, 1.0)}.items():
    exact, estimate = elbo_exact(m, v), elbo_monte_carlo(m, v, draws)
    gap = kl_gauss(m, v, m_star, v_star)
    print(f"q = {name:15s} ELBO = {exact:9.5f} (Monte Carlo {estimate:9.5f}), "
          f"log p(x) - ELBO = {log_px - exact:.5f}, KL(q || posterior) = {gap:.5f}")
    assert abs(estimate - exact) < 0.05 * max(1.0, abs(exact))
    assert np.isclose(log_px - exact, gap, atol=1e-10)     # the gap is the KL to the true posterior
    assert exact <= log_px + 1e-12

# %% [markdown]
# The bound holds for every $q$, is tight at the true posterior, and the gap is the KL to the
# posterior, to ten decimals. A VAE cannot reach the exact posterior of a neural decoder, but the
# better its encoder approximates it, the closer the ELBO it optimises is to the likelihood.
#
# ## 2. The reparameterisation trick
#
# Training needs the gradient of $\mathbb E_{z \sim q_\phi}[f(z)]$ with respect to the encoder's
# output $\phi = (\mu, \log\sigma^2)$, but the expectation is over a distribution that depends on
# $\phi$: we cannot differentiate a sample. Two unbiased estimators exist:
#
# - the **score function** (REINFORCE): $\nabla_\phi \mathbb E[f] = \mathbb E\big[f(z)\, \nabla_\phi \log q_\phi(z)\big]$,
#   for $\mu$: $f(z)\,(z - \mu)/\sigma^2$. It only uses values of $f$.
# - the **pathwise** estimator: write $z = \mu + \sigma\varepsilon$ with $\varepsilon \sim \mathcal N(0, 1)$
#   drawn *outside* the network. Then $\mathbb E[f(z)] = \mathbb E_\varepsilon[f(\mu + \sigma\varepsilon)]$
#   and the gradient moves inside: $\partial/\partial\mu = \mathbb E[f'(z)]$,
#   $\partial/\partial \log\sigma^2 = \mathbb E[f'(z)\, \sigma\varepsilon / 2]$. This is the
#   *reparameterisation trick*; `Reparameterize.backward` computes exactly these per-sample terms.
#
# The pathwise estimator uses the *slope* of $f$ where it was sampled, the score function only
# whether $f$ was large or small there, multiplied by a zero-mean weight: all of $f$'s value,
# including a large constant part that carries no information, ends up as noise. Measure it with
# $f(z) = (z - 2)^2$, $\mu = 0.5$, $\sigma = 0.8$, for which $\partial \mathbb E f / \partial\mu = 2(\mu - 2) = -3$
# and $\partial \mathbb E f / \partial \log\sigma^2 = \sigma^2 = 0.64$.

# %%
mu0, sigma0, n_draws = 0.5, 0.8, (20_000 if FAST else 200_000)
layer = Reparameterize(rng=2)
mu = np.full((n_draws, 1), mu0)
logvar = np.full((n_draws, 1), np.log(sigma0**2))
z = layer(mu, logvar)
pathwise_mu, pathwise_logvar = layer.backward(2 * (z - 2))            # f'(z) = 2 (z - 2), per draw
score_mu = (z - 2) ** 2 * (z - mu0) / sigma0**2                       # f(z) d log q / d mu, per draw

for name, estimates in (("pathwise", pathwise_mu), ("score function", score_mu)):
    print(f"d/dmu, {name:15s}: mean {estimates.mean():+.4f}  variance per draw {estimates.var():8.3f}")
print(f"d/dlogvar, pathwise:       mean {pathwise_logvar.mean():+.4f} (exact {sigma0**2})")
ratio = score_mu.var() / pathwise_mu.var()
print(f"the score function needs {ratio:.1f}x as many draws for the same precision")
assert abs(pathwise_mu.mean() + 3) < 0.05 and abs(score_mu.mean() + 3) < 0.25       # both unbiased
assert abs(pathwise_logvar.mean() - sigma0**2) < 0.03
assert ratio > 5

fig, ax = plt.subplots(figsize=(7, 3))
bins = np.linspace(-25, 20, 120)
ax.hist(score_mu.ravel(), bins=bins, alpha=0.6, label="score function", density=True)
ax.hist(pathwise_mu.ravel(), bins=bins, alpha=0.6, label="pathwise (reparameterised)", density=True)
ax.axvline(-3, color="k", linestyle=":", label="true gradient -3")
ax.set_xlabel("one draw's estimate of dE[f]/dmu")
ax.legend()
plt.show()

# %% [markdown]
# The layer itself is checked like every nnbox layer: with its noise replayed (`fixed_noise`),
# `forward` is a deterministic function of $(\mu, \log\sigma^2)$ and `gradcheck` compares its
# backward with central differences.

# %%
layer = Reparameterize(rng=3)
layer.fixed_noise = rng.standard_normal((4, 3))
report = gradcheck(layer, rng.standard_normal((4, 3)), rng.standard_normal((4, 3)), wrt=(0, 1))
print("Reparameterize gradcheck, largest errors:", report.max_abs_error)

# %% [markdown]
# ## 3. Discrete codes: Gumbel-max and Gumbel-softmax
#
# A categorical code $c \in \{1, \dots, K\}$ with probabilities $\pi = \mathrm{softmax}(\ell)$ has no
# reparameterisation in the sense above: $c$ jumps from one category to another, and its
# derivative is zero almost everywhere. Two steps fix that.
#
# **Gumbel-max.** With $g_k = -\log(-\log U_k)$, $U_k \sim \mathcal U(0, 1)$ independent (standard
# Gumbel noise), $\arg\max_k (\ell_k + g_k)$ is an exact sample of the categorical: the noise sits
# outside again. Check it on $\pi = (0.5, 0.25, 0.15, 0.1)$:

# %%
pi = np.array([0.5, 0.25, 0.15, 0.1])
logits = np.log(pi)
n_draws = 20_000 if FAST else 200_000
u = rng.uniform(size=(n_draws, 4))
samples = one_hot_argmax(logits + gumbel_noise(u))
print("frequencies of argmax(logits + g):", samples.mean(axis=0), " target:", pi)
assert np.allclose(samples.mean(axis=0), pi, atol=0.015)

# %% [markdown]
# **Gumbel-softmax.** The argmax still has no useful derivative, so replace it by a softmax at a
# temperature $\tau$:
#
# $$ y = \mathrm{softmax}\big((\ell + g) / \tau\big), \qquad
#    \frac{\partial L}{\partial \ell} = \frac1\tau\, y \odot \Big(\frac{\partial L}{\partial y} - \sum_k \frac{\partial L}{\partial y_k} y_k\Big). $$
#
# $y$ is a point of the simplex (a "relaxed one-hot" vector). As $\tau \to 0$ it approaches the
# one-hot Gumbel-max sample; as $\tau$ grows it approaches the uniform vector $1/K$. The same four
# logits and the same noise, at five temperatures (each row one sample, each column a category):

# %%
taus = [0.1, 0.5, 1.0, 2.0, 10.0]
g = gumbel_noise(rng.uniform(size=(8, 4)))
fig, axes = plt.subplots(1, len(taus), figsize=(11, 2.8), sharey=True)
for ax, tau in zip(axes, taus):
    y = GumbelSoftmax(tau)(np.tile(logits, (8, 1)), noise=g)
    ax.imshow(y, cmap="magma", vmin=0, vmax=1)
    ax.set_title(f"tau = {tau}")
    ax.set_xticks(range(4))
    ax.set_xlabel("category")
axes[0].set_ylabel("sample")
plt.show()

# %% [markdown]
# The temperature trades **bias for variance**. Take $L = \langle y, v\rangle$ for a fixed $v$, whose
# expectation under the true (one-hot) categorical is $\langle \pi, v\rangle$ with gradient
# $\partial/\partial \ell_j = \pi_j (v_j - \langle\pi, v\rangle)$. The relaxed samples' gradients
# (from `GumbelSoftmax.backward`) are close to that on average only at low $\tau$, and there they are
# noisy; at high $\tau$ they are smooth and wrong:

# %%
v = np.array([1.0, -1.0, 2.0, 0.0])
exact_grad = pi * (v - pi @ v)
n_draws = 5_000 if FAST else 50_000
sweep = [0.1, 0.3, 1.0, 3.0]
bias, variance = [], []
for tau in sweep:
    layer = GumbelSoftmax(tau, rng=4)
    y = layer(np.tile(logits, (n_draws, 1)))
    per_draw = layer.backward(np.tile(v, (n_draws, 1)))
    bias.append(np.abs(per_draw.mean(axis=0) - exact_grad).sum())
    variance.append(per_draw.var(axis=0).sum())
    print(f"tau = {tau:4}: mean largest entry {y.max(axis=1).mean():.3f}, "
          f"|E[grad] - exact grad|_1 = {bias[-1]:.4f}, total variance per draw = {variance[-1]:.4f}")
# the variance falls with tau at every step; the bias (up to Monte Carlo noise at low tau) grows
assert all(np.diff(variance) < 0) and bias[-1] > bias[-2] > max(bias[:2])

# %% [markdown]
# A common schedule (Jang et al., 2017) starts at $\tau = 1$ and anneals towards about $0.5$ while
# training. The **straight-through** variant (`hard=True`) returns the one-hot $\arg\max$ in the
# forward pass, so the decoder sees real discrete codes, and differentiates as if the soft $y$ had
# been returned (a biased gradient, the same as torch's `F.gumbel_softmax(hard=True)`):

# %%
g = gumbel_noise(rng.uniform(size=(3, 4)))
hard, soft = GumbelSoftmax(0.5, hard=True), GumbelSoftmax(0.5)
print("hard forward:\n", hard(np.tile(logits, (3, 1)), noise=g))
dy = rng.standard_normal((3, 4))
soft(np.tile(logits, (3, 1)), noise=g)
assert np.allclose(hard.backward(dy), soft.backward(dy))
layer = GumbelSoftmax(0.7)
layer.fixed_noise = gumbel_noise(rng.uniform(size=(5, 4)))
print("GumbelSoftmax gradcheck, largest error:", gradcheck(layer, rng.standard_normal((5, 4))).max_abs_error)

# %% [markdown]
# The categorical code's prior is uniform, and its KL term is
#
# $$ \mathrm{KL}\big(q \,\|\, \mathcal U_K\big) = \sum_k q_k \log q_k + \log K, \qquad
#    \frac{\partial\, \mathrm{KL}}{\partial \ell_j} = q_j \Big(\log q_j - \sum_k q_k \log q_k\Big), $$
#
# zero for a uniform $q$ and $\log K$ for a certain one: it rewards codes that stay uncertain, and
# the reconstruction term pushes the other way. `nnbox.losses.CategoricalKLLoss` computes it from
# the logits with a stable log-softmax.

# %%
kl = CategoricalKLLoss()
print("uniform:", float(kl(np.zeros((1, 10)))), " nearly certain:", float(kl(np.array([[50.0] + [0.0] * 9]))),
      " log 10 =", np.log(10))
assert np.isclose(float(kl(np.array([[50.0] + [0.0] * 9]))), np.log(10))
gradcheck(CategoricalKLLoss(), rng.standard_normal((4, 2, 5)))

# %% [markdown]
# ## 4. A VAE on coloured MNIST
#
# `gan.vae.VAE` puts the pieces together: a convolutional encoder gives $\mu$, $\log\sigma^2$ and
# category logits; `Reparameterize` and `GumbelSoftmax` draw $z$ and $c$; a transposed-convolution
# decoder gives pixel logits; `loss` is the negative ELBO (pixel BCE summed per image, plus the two
# KL terms); `backward` runs through all of it. The whole objective is gradient-checked first, on a
# tiny instance with replayed noise:

# %%
tiny = VAE("both", latent_dim=2, categories=3, categorical_dims=2, image_size=8, channels=3, width=2, rng=0)
x_tiny = np.tanh(rng.standard_normal((3, 3, 8, 8)))
tiny.reparameterize.fixed_noise = rng.standard_normal((3, 2))
tiny.gumbel.fixed_noise = gumbel_noise(rng.uniform(size=(3, 2, 3)))
report = gradcheck(VAEObjective(tiny), x_tiny, x_tiny.copy(), max_entries=8 if FAST else 40)
print(f"whole-VAE gradcheck: {len(report.checked_entries)} tensors, "
      f"largest error {max(report.max_abs_error.values()):.1e}")

# %% [markdown]
# The data: MNIST digits, each tinted with its own random bright colour (`load_colored_mnist`), so an
# image has two main factors of variation, a discrete one (the digit) and a continuous one (the hue).
# We give the model both kinds of code, a 2-D Gaussian $z$ and one 10-way categorical $c$, and look at
# which factor each one picks up. (Without the MNIST files beside the repository, a stand-in of
# coloured bars replaces the digits.)

# %%
mnist = Path("../../../shared/data/mnist")
n_train, n_test = (512, 300) if FAST else (6000, 2000)
real_digits = (mnist / "train-images-idx3-ubyte.gz").is_file()
if real_digits:
    train_x, _, _ = load_colored_mnist(mnist, "train", rng=0, download=False)
    test_x, test_y, test_tints = load_colored_mnist(mnist, "test", rng=1, download=False)
    train_x, test_x, test_y, test_tints = train_x[:n_train], test_x[:n_test], test_y[:n_test], test_tints[:n_test]
else:
    def bars(n, seed):
        labels = np.arange(n) % 10
        digits = -np.ones((n, 1, 28, 28), np.float32)
        for i, label in enumerate(labels):
            digits[i, 0, 4:24, 2 + 2 * label:6 + 2 * label] = 1
        return colorize_mnist(digits, labels, rng=seed)
    train_x = bars(n_train, 0)[0]
    test_x, test_y, test_tints = bars(n_test, 1)
print(f"{len(train_x)} training and {len(test_x)} test images of shape {train_x.shape[1:]}")
plt.figure(figsize=(6, 1.6))
plt.imshow(make_grid(test_x[:16], nrow=16, padding=1))
plt.axis("off")
plt.show()

# %%
vae = VAE("both", latent_dim=2, categories=10, image_size=28, channels=3, width=4 if FAST else 8,
          temperature=1.0, rng=0)
optimizer = Adam(vae.parameters(), lr=1e-3)
batch_size, epochs = (32, 1) if FAST else (64, 2)
train_rng = np.random.default_rng(1)
history, step = [], 0
for epoch in range(epochs):
    order = train_rng.permutation(len(train_x))
    for start in range(0, len(order) - batch_size + 1, batch_size):
        vae.temperature = max(0.5, np.exp(-1e-3 * step))        # anneal tau from 1 (floor 0.5)
        history.append(vae.step(train_x[order[start:start + batch_size]], optimizer))
        step += 1
first, last = np.mean([h["loss"] for h in history[:5]]), np.mean([h["loss"] for h in history[-5:]])
print(f"{step} steps: loss (mean of 5 steps) {first:.1f} -> {last:.1f}; last step: loss {history[-1]['loss']:.1f}, "
      f"reconstruction {history[-1]['reconstruction']:.1f}, KL Gaussian {history[-1]['kl_gaussian']:.2f}, "
      f"KL categorical {history[-1]['kl_categorical']:.2f}; temperature now {vae.temperature:.2f}")
assert last < first
assert all(h["kl_gaussian"] >= 0 and h["kl_categorical"] >= -1e-6 for h in history)

fig, axes = plt.subplots(1, 3, figsize=(11, 2.6))
for ax, name in zip(axes, ("reconstruction", "kl_gaussian", "kl_categorical")):
    ax.plot([h[name] for h in history])
    ax.set_title(name.replace("_", " "))
    ax.set_xlabel("step")
plt.tight_layout()
plt.show()

# %% [markdown]
# Reconstructions (in eval mode: $z = \mu$, $c = \mathrm{softmax}(\ell/\tau)$): originals on the top
# row, the model's version below.

# %%
shown = test_x[:12]
recon = vae.reconstruct(shown)
assert recon.shape == shown.shape and recon.min() >= -1 and recon.max() <= 1
plt.figure(figsize=(8, 1.6))
plt.imshow(make_grid(np.concatenate([shown, recon]), nrow=12, padding=1))
plt.axis("off")
plt.show()

# %% [markdown]
# ### What the latent space learns
#
# Encode the test set and ask two questions. **Which digits does each category hold?** The
# *purity* is the share of test digits that are their category's most common digit (0.1 for a
# code that ignores the digit, 1 for a perfect clustering). **Does the Gaussian code hold the
# colour?** Regress the hue, as the point $(\cos h, \sin h)$ on the colour wheel, linearly on $z$
# and report $R^2$ (0: no linear trace of the hue in $z$; 1: the hue is a linear function of $z$).

# %%
vae.eval()
mu_test, _, code_logits = vae.encode(test_x)
vae.train()
category = code_logits[:, 0].argmax(axis=1)
counts = np.zeros((10, 10), int)
np.add.at(counts, (category, test_y), 1)
purity = counts.max(axis=1).sum() / counts.sum()
hue = rgb_to_hsv(np.clip(test_tints, 0, 1))[:, 0] * 2 * np.pi
target = np.column_stack([np.cos(hue), np.sin(hue)])
design = np.column_stack([mu_test, np.ones(len(mu_test))])
fitted = design @ np.linalg.lstsq(design, target, rcond=None)[0]
r2 = 1 - ((target - fitted) ** 2).sum() / ((target - target.mean(axis=0)) ** 2).sum()
print(f"categories used: {(counts.sum(axis=1) > 0).sum()} of 10; purity {purity:.2f}; "
      f"R^2 of the hue from z: {r2:.2f}")
if real_digits and not FAST:   # what the text below reads from these numbers (the fast run trains too little)
    assert (counts.sum(axis=1) > 0).sum() <= 5 and purity < 0.35 and r2 < 0.05

fig, axes = plt.subplots(1, 2, figsize=(10, 4))
points = axes[0].scatter(mu_test[:, 0], mu_test[:, 1], c=test_y, cmap="tab10", s=6, vmin=-0.5, vmax=9.5)
fig.colorbar(points, ax=axes[0], ticks=range(10), label="digit")
axes[0].set_title("posterior means of z, by digit")
axes[1].set_facecolor("black")
axes[1].scatter(mu_test[:, 0], mu_test[:, 1], c=np.clip(test_tints, 0, 1), s=6)
axes[1].set_title("the same points, in each digit's tint")
for ax in axes:
    ax.set_xlabel("z1")
    ax.set_ylabel("z2")
plt.tight_layout()
plt.show()

# %% [markdown]
# **Steering.** Because both codes are inputs of the decoder, we can choose them. Each row below
# fixes the category $c$; along the row, $z_1$ goes from $-2.5$ to $2.5$ ($z_2 = 0$). If the
# categorical code learnt the digit and $z$ the colour, each row is one digit changing colour;
# if not, the rows show which factor each code really took.

# %%
steps = np.linspace(-2.5, 2.5, 9)
z = np.column_stack([np.tile(steps, 10), np.zeros(90)])
code = one_hot(np.repeat(np.arange(10), 9)[:, None], 10)
steered = vae.decode(z.astype(np.float32), code)
plt.figure(figsize=(6, 6.6))
plt.imshow(make_grid(steered, nrow=9, padding=1))
plt.axis("off")
plt.title("row: category c; column: z1 from -2.5 to 2.5")
plt.show()

# %% [markdown]
# Reading the figures: the loss falls quickly at first, mostly through the reconstruction term,
# while the KL terms *rise* from zero: the encoder starts to put information into the codes, and the
# KL is the price in nats. In the printed numbers above, the category purity says how much of the digit
# the 10-way code took, and $R^2$ how much of the hue the 2-D Gaussian took. The saved full run (two
# epochs over 6000 images with a narrow network, a few minutes) gives weak answers: only a few
# categories in use, a purity around 0.2, and no linear trace of the hue in $z$ ($R^2 \approx 0$).
# The results page `docs/results/vae.md` trains wider models on 30,000 images: there the combined
# model's category learns the digit (all 10 categories used, purity 0.60) and $z$ the stroke weight,
# while no small code takes the colour: the shape of a digit decides many more pixel values than its
# hue, and the ELBO spends a small code on what costs most. In fast mode (the test suite) the numbers
# mean nothing beyond "it runs".
#
# **A failure worth knowing.** Trained *alone*, a single 10-way categorical code collapsed in the
# results page's run: within 50 steps every image got the same category, with certainty, the
# decoder learnt to ignore the code and drew the average digit, and the KL sat at its maximum,
# $\log 10 = 2.30$ nats per image. A plausible reading (not proven here): the Gumbel noise makes the
# decoder's input random, which costs reconstruction; a certain code removes that noise, and the
# categorical KL charges at most $\log K$ for it, whereas a Gaussian code can only become noiseless
# at an unbounded price ($-\tfrac12 \log \sigma^2 \to \infty$ in its KL). With a Gaussian code beside
# it (the results page's combined run) or with 20 categorical codes instead of one, the codes stayed
# in use.
#
# Things to try: `kl_weight` above 1 (a $\beta$-VAE) for smoother, more disentangled codes;
# `hard=True`; a longer run, so that the temperature reaches its floor of 0.5 (this one ends near
# 0.83) or a lower floor; `load_colored_mnist(..., mode="class")`, where colour and
# digit are the same factor.
