# %% [markdown]
# # 7. From GAN to WGAN and WGAN-GP
#
# The GAN discriminator is a classifier: it outputs the probability that an image is real. When
# real and generated images are easy to tell apart the classifier saturates and its gradient tells
# the generator nothing. The Wasserstein GAN (Arjovsky et al., 2017) replaces the classifier by a
# **critic** that estimates a distance between the two distributions, the Wasserstein-1 distance,
# which keeps giving useful gradients. That estimate is only valid if the critic is **1-Lipschitz**,
# and this walkthrough is about the two ways to keep it so:
#
# 1. why a critic: the Jensen-Shannon divergence saturates, the Wasserstein distance does not;
# 2. the Kantorovich-Rubinstein duality and the WGAN losses;
# 3. weight clipping, and what goes wrong with it;
# 4. the gradient penalty of WGAN-GP (Gulrajani et al., 2017), and its exact gradient with respect
#    to the critic's weights, which nnbox computes by a *double backward* and which we check
#    numerically;
# 5. clipping against the penalty on 2-D data where the true distance is known.

# %%
import os

import matplotlib.pyplot as plt
import numpy as np

from gan.gradient_penalty import gradient_penalty, interpolate, penalty_terms
from layers import second_order
from layers.activations import LeakyReLU, ReLU
from layers.linear import Linear
from nnbox.gradcheck import gradcheck
from nnbox.module import Module, Sequential
from nnbox.optim import Adam, RMSprop

FAST = os.environ.get("NNBOX_FAST") == "1"   # the test suite sets this: fewer training steps
plt.rcParams["figure.dpi"] = 80
np.set_printoptions(precision=4, suppress=True)
rng = np.random.default_rng(0)

# %% [markdown]
# ## 1. Why a critic
#
# Take the simplest possible case: the real distribution $P$ is a point mass at $0$ and the
# generator's distribution $Q_\theta$ a point mass at $\theta$. The best discriminator tells them
# apart perfectly for every $\theta \neq 0$, and the minimax GAN loss then measures the
# Jensen-Shannon divergence
#
# $$ \mathrm{JS}(P, Q_\theta) = \tfrac12 \mathrm{KL}(P \,\|\, M) + \tfrac12 \mathrm{KL}(Q_\theta \,\|\, M),
#    \quad M = \tfrac12 (P + Q_\theta), \qquad
#    \mathrm{JS}(P, Q_\theta) = \begin{cases} \log 2 & \theta \ne 0 \\ 0 & \theta = 0 \end{cases} $$
#
# which is **constant**: its gradient with respect to $\theta$ is zero, whatever the distance
# between the two points. Real images and early generated images are in this situation: they lie on
# thin, almost disjoint sets of the image space. The Wasserstein-1 ("earth mover's") distance is
# the cheapest way to move the mass of one distribution onto the other,
#
# $$ W_1(P, Q) = \inf_{\gamma \in \Pi(P, Q)} \mathbb{E}_{(x, y) \sim \gamma} \|x - y\|, $$
#
# ($\Pi(P, Q)$: the joint distributions whose marginals are $P$ and $Q$), here $W_1 = |\theta|$: it
# shrinks smoothly as the generator moves towards the data.

# %%
theta = np.linspace(-2, 2, 401)
js = np.where(theta == 0, 0.0, np.log(2))
w1 = np.abs(theta)
fig, ax = plt.subplots(figsize=(6, 3))
ax.plot(theta, js, label=r"JS$(P, Q_\theta)$")
ax.plot(theta, w1, label=r"$W_1(P, Q_\theta)$")
ax.set_xlabel(r"$\theta$")
ax.legend()
ax.set_title("two point masses: JS is flat, W1 is not")
plt.show()
assert np.all(np.diff(js[theta > 0]) == 0) and np.all(np.diff(w1[theta > 0]) > 0)

# %% [markdown]
# ## 2. The critic: Kantorovich-Rubinstein
#
# The infimum over couplings cannot be computed for images, but it has a dual form
# (Kantorovich-Rubinstein):
#
# $$ W_1(P, Q) = \sup_{\|f\|_L \le 1} \; \mathbb{E}_{x \sim P} f(x) - \mathbb{E}_{x \sim Q} f(x), $$
#
# a supremum over the **1-Lipschitz** functions $f$, those with $|f(x) - f(y)| \le \|x - y\|$
# (for a differentiable $f$: $\|\nabla_x f\| \le 1$ everywhere). A network $f$, the critic, is
# trained to maximise $\mathbb{E} f(\text{real}) - \mathbb{E} f(\text{fake})$; the generator then
# minimises the same difference, i.e. maximises $\mathbb{E} f(G(z))$. In nnbox this is
# `gan.losses.get_gan_loss("wasserstein")`:
#
# $$ L_D = \operatorname{mean} f(x_{\text{fake}}) - \operatorname{mean} f(x_{\text{real}}), \qquad
#    L_G = -\operatorname{mean} f(x_{\text{fake}}). $$
#
# The critic outputs any real number (no sigmoid), and $-L_D$ is an estimate of $W_1$ **only if**
# $f$ is 1-Lipschitz: without the constraint the supremum is infinite (scale $f$ up). For a critic
# with a Lipschitz constant $K$ the estimate is $K \cdot W_1$ at best.
#
# A check of the duality on a case we can compute: $Q$ is $P$ moved by a vector $d$. Then
# $W_1 = \|d\|$ (move every point by $d$), and the linear function $f(x) = -\langle d, x\rangle / \|d\|$
# (high on $P$, low on the shifted $Q$), which is 1-Lipschitz, reaches it.

# %%
def eight_gaussians(n, rng, radius=2.0, std=0.05):
    """The classic 2-D test distribution: 8 small Gaussians on a circle."""
    angles = rng.integers(0, 8, n) * (np.pi / 4)
    centres = radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    return centres + std * rng.standard_normal((n, 2))


shift = np.array([1.2, 0.9])
true_w1 = float(np.linalg.norm(shift))                    # W1(P, P + shift) = ||shift||
real = eight_gaussians(4096, rng)
fake = eight_gaussians(4096, rng) + shift
unit = shift / true_w1
estimate = float((real @ -unit).mean() - (fake @ -unit).mean())   # f(x) = <-d, x> / ||d||
print(f"true W1 = {true_w1:.4f}; the linear critic's estimate = {estimate:.4f}")
assert abs(estimate - true_w1) < 0.05

# %% [markdown]
# ## 3. Weight clipping
#
# The first WGAN kept the critic Lipschitz by **clipping** every weight to $[-c, c]$ after each
# critic step ($c = 0.01$, with RMSprop): a network with bounded weights has a bounded Lipschitz
# constant. In nnbox: `TrainConfig(loss="wasserstein", clip_value=0.01, optimizer="rmsprop")`.
# It is crude:
#
# - the bound is some unknown $K(c)$, not 1, so the estimate is only proportional to $W_1$;
# - most weights end **at the clip value** $\pm c$: the critic uses its capacity badly and tends to
#   very simple functions;
# - in a deep critic the gradients vanish (small $c$) or explode (large $c$) from layer to layer,
#   so the result hinges on $c$.
#
# We train the same small critic (an MLP 2 -> 64 -> 64 -> 64 -> 1 with ReLU) on the shifted
# eight Gaussians, the real batch against the fake batch, with clipping at $c = 0.01$ and $c = 0.1$,
# and below with the gradient penalty. The critic is trained alone (the distributions are fixed),
# which is exactly what the critic's inner loop does between two generator steps.

# %%
STEPS = 150 if FAST else 800
BATCH = 128


def make_critic(seed, width=64, depth=3, activation=ReLU):
    layers, size = [], 2
    for _ in range(depth):
        layers += [Linear(size, width, rng=seed), activation()]
        size = width
    return Sequential(*layers, Linear(size, 1, rng=seed)).to(np.float64)


def wasserstein_backward(critic, real, fake):
    """Add the gradient of L_D = mean f(fake) - mean f(real) into the critic's grads; return -L_D.

    Both batches go through the critic as one (no BatchNorm: the samples do not interact)."""
    out = critic(np.concatenate([real, fake]))
    n = len(real)
    critic.backward(np.concatenate([np.full((n, 1), -1.0 / n), np.full((n, 1), 1.0 / n)]))
    return float(out[:n].mean() - out[n:].mean())


def train_critic(critic, method, steps=STEPS, clip=0.01, lam=10.0, seed=1):
    """Critic-only training; method "clip" (RMSprop(5e-4), weights clipped to [-clip, clip]) or "gp"
    (Adam(1e-3, betas (0, 0.9)), penalty weight lam). The learning rates are ten times the papers'
    so that the demonstration converges in a few hundred steps. Returns the W estimate per step."""
    data_rng = np.random.default_rng(seed)
    if method == "clip":
        optimizer = RMSprop(critic.parameters(), lr=5e-4)
        for p in critic.parameters():
            np.clip(p.data, -clip, clip, out=p.data)
    else:
        optimizer = Adam(critic.parameters(), lr=1e-3, betas=(0.0, 0.9))
    history = []
    for _ in range(steps):
        real_batch = eight_gaussians(BATCH, data_rng)
        fake_batch = eight_gaussians(BATCH, data_rng) + shift
        critic.zero_grad()
        history.append(wasserstein_backward(critic, real_batch, fake_batch))
        if method == "gp":
            gradient_penalty(critic, real_batch, fake_batch, lam=lam, rng=data_rng)
        optimizer.step()
        if method == "clip":
            for p in critic.parameters():
                np.clip(p.data, -clip, clip, out=p.data)
    return np.array(history)


critics, curves = {}, {}
for name, method, clip in (("clip c=0.01", "clip", 0.01), ("clip c=0.1", "clip", 0.1), ("gradient penalty", "gp", None)):
    critics[name] = make_critic(seed=3)
    curves[name] = train_critic(critics[name], method, clip=clip)


def input_gradient_norms(critic, x):
    """||grad_x f(x)|| for each row of x (one backward with dy = 1 per sample)."""
    critic(x)
    critic.requires_grad_(False)                   # no weight gradients for this backward
    g = critic.backward(np.ones((len(x), 1)))
    critic.requires_grad_(True)
    return np.linalg.norm(g.reshape(len(x), -1), axis=1)


test_real, test_fake = eight_gaussians(4096, rng), eight_gaussians(4096, rng) + shift
between, _ = interpolate(test_real, test_fake, rng)
summary = {}
for name, critic in critics.items():
    estimate = float(critic(test_real).mean() - critic(test_fake).mean())
    norms = input_gradient_norms(critic, between)
    summary[name] = (estimate, norms)
    print(f"{name:17s}: W estimate {estimate:7.4f} (true {true_w1:.4f}); ||grad f|| between the "
          f"distributions: median {np.median(norms):.4f}, 5-95% [{np.quantile(norms, 0.05):.4f}, "
          f"{np.quantile(norms, 0.95):.4f}]")

# %%
fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
for name, curve in curves.items():
    axes[0].plot(curve, label=name, lw=1)
axes[0].axhline(true_w1, color="k", ls="--", lw=1, label="true $W_1$")
axes[0].set_yscale("symlog", linthresh=1e-3)
axes[0].set_xlabel("critic step")
axes[0].set_title("W estimate during training (batch)")
axes[0].legend(fontsize=8)
for name, (_, norms) in summary.items():
    axes[1].hist(norms, bins=np.geomspace(1e-5, 30, 90), alpha=0.6, label=name)
axes[1].set_xscale("log")
axes[1].set_title(r"$\|\nabla_x f\|$ on interpolates")
axes[1].legend(fontsize=8)
weights = np.concatenate([p.data.ravel() for p in critics["clip c=0.1"].parameters() if p.data.ndim == 2])
axes[2].hist(weights, bins=50, color="C1")
axes[2].set_title("weights of the critic clipped at c=0.1")
plt.tight_layout()
plt.show()

at_clip = float(np.mean(np.abs(weights) > 0.1 * 0.99))
print(f"{100 * at_clip:.0f}% of the clipped critic's weights sit at the clip value +-0.1")
gp_estimate, gp_norms = summary["gradient penalty"]
clip_estimate, clip_norms = summary["clip c=0.01"]
assert clip_estimate < 0.1 * true_w1 and np.median(clip_norms) < 0.1      # clipping: K(c) << 1
assert abs(gp_estimate - true_w1) < (0.25 if FAST else 0.1) * true_w1      # the penalty: close to W1
assert abs(np.median(gp_norms) - 1) < (0.3 if FAST else 0.1)

# %% [markdown]
# With $c = 0.01$ the critic's Lipschitz constant is tiny: its estimate is a small fraction of the
# true distance, and its gradients are as small. A larger $c$ gives a larger (unknown) constant and
# pushes the weights to the edges of the box (right panel). The critic trained with the gradient
# penalty is close to 1-Lipschitz where it matters, and its estimate is close to $W_1$.
#
# The third problem, vanishing and exploding gradients, shows in a deeper critic. Below, a critic
# of 8 hidden layers is trained with each method, then we send $dy = 1$ back through it and record
# the norm of the gradient arriving at each layer (`second_order.backward_recording` keeps them).
# With clipping every layer multiplies the gradient by a factor set by $c$: at $c = 0.001$ and
# $c = 0.01$ the gradient that reaches the first layer is many orders of magnitude smaller than at
# the last one (it vanishes); at $c = 0.1$ it no longer vanishes. Not shown here (one training length,
# $c \le 0.1$), but reported in Figure 1 of the WGAN-GP paper: as the critic trains longer its weights
# pile up at $\pm c$ and the gradient grows towards the input, and a larger $c$ or wider layers make
# it explode. The penalised critic needs no such tuning.

# %%
DEEP_STEPS = 60 if FAST else 300
deep = {}
for name, method, clip in (("clip c=0.001", "clip", 0.001), ("clip c=0.01", "clip", 0.01),
                           ("clip c=0.1", "clip", 0.1), ("gradient penalty", "gp", None)):
    critic = make_critic(seed=5, width=32, depth=8)
    train_critic(critic, method, steps=DEEP_STEPS, clip=clip)
    chain = second_order.chain(critic)
    critic(between[:512])
    critic.requires_grad_(False)
    _, received = second_order.backward_recording(chain, np.ones((512, 1)))
    critic.requires_grad_(True)
    deep[name] = [np.linalg.norm(dy) / np.sqrt(512) for layer, dy in zip(chain, received) if isinstance(layer, Linear)]

fig, ax = plt.subplots(figsize=(6, 3.4))
for name, norms in deep.items():
    ax.plot(range(len(norms), 0, -1), norms, marker="o", label=name)
ax.set_yscale("log")
ax.set_xlabel("Linear layers from the output (1 = the last)")
ax.set_ylabel("gradient norm arriving at it")
ax.legend(fontsize=8)
plt.show()
ratios = {name: norms[0] / norms[-1] for name, norms in deep.items()}   # first layer / last layer
print({name: f"{r:.2e}" for name, r in ratios.items()})
assert ratios["clip c=0.001"] < 1e-6 and ratios["clip c=0.1"] > ratios["clip c=0.01"] > ratios["clip c=0.001"]

# %% [markdown]
# ## 4. The gradient penalty
#
# A differentiable $f$ is 1-Lipschitz exactly when $\|\nabla_x f\| \le 1$ everywhere. Gulrajani et
# al. also show that the *optimal* critic has gradient norm exactly 1 on the straight lines between
# the points that the optimal coupling pairs. So WGAN-GP adds to the critic's loss a penalty on the
# input gradient's norm, on random points of those lines:
#
# $$ \hat x_i = \varepsilon_i\, x^{\text{real}}_i + (1 - \varepsilon_i)\, x^{\text{fake}}_i, \quad
#    \varepsilon_i \sim U[0, 1], \qquad
#    P = \lambda \frac1N \sum_i \big( \|\nabla_x f(\hat x_i)\|_2 - 1 \big)^2, \quad \lambda = 10. $$
#
# One $\varepsilon_i$ **per sample** (shape $(N, 1, 1, 1)$ for images): $\hat x_i$ is a point on the
# segment between two images. A different $\varepsilon$ per pixel would give a pixel-wise mixture
# that lies on no such line. And no BatchNorm in the critic: it would mix the samples, and
# $\nabla_x f(\hat x_i)$ would no longer be the gradient of sample $i$'s own output.

# %%
images_real, images_fake = np.ones((5, 3, 4, 4)), np.zeros((5, 3, 4, 4))
x_hat, eps = interpolate(images_real, images_fake, np.random.default_rng(1))
print("eps:", eps.ravel(), "shape", eps.shape)
assert eps.shape == (5, 1, 1, 1)
assert all(np.ptp(x_hat[i]) == 0 for i in range(5))   # every interpolated image is one constant

# %% [markdown]
# ### Its exact gradient: a double backward
#
# The critic's optimiser needs $\partial P / \partial \theta$. But $P$ depends on the weights
# through $g = \nabla_x f$, which nnbox computes by the critic's **backward** pass: the penalty's
# gradient is the gradient of a backward pass. Autograd libraries get it by differentiating their
# recorded backward graph (`torch.autograd.grad(..., create_graph=True)`). nnbox has no graph;
# instead every layer the critic uses has a hand-written **double backward** in
# `layers/second_order.py`.
#
# A layer's backward is $dx = B(dy;\, \theta, x)$, linear in $dy$. Given the cotangent
# $\overline{dx} = \partial P / \partial (dx)$ it returns
#
# - $\overline{dy} = (\partial B/\partial dy)^\top\, \overline{dx}$, which is the layer's forward
#   derivative applied to $\overline{dx}$ (passed on to the layer before in the backward, i.e. the
#   next layer in forward order);
# - the weight gradient $(\partial B / \partial \theta)^\top\, \overline{dx}$, added into `param.grad`;
# - the term through the saved input $(\partial B/\partial x)^\top\, \overline{dx}$, zero for
#   Linear and convolution layers and, almost everywhere, for the piecewise-linear ReLU, LeakyReLU and
#   max-pooling; non-zero for Tanh and Sigmoid (it is then sent back through the forward pass).
#
# For a Linear layer, $dx = dy\, W$, so $\overline{dy} = \overline{dx}\, W^\top$ and
# $\partial P/\partial W \mathrel{+}= dy^\top\, \overline{dx}$. For a convolution,
# $dx = \mathrm{col2im}(W_2^\top\, dY)$, so $\overline{dy}$ is the convolution of $\overline{dx}$
# with the same kernel (no bias), and $\partial P/\partial W_2 \mathrel{+}= dY\, \mathrm{im2col}(\overline{dx})^\top$.
# For (Leaky)ReLU the mask multiplies $\overline{dx}$; max-pooling gathers $\overline{dx}$ at its switches.
# The chain starts from
#
# $$ \overline{g_i} = \frac{\partial P}{\partial g_i} = \frac{2\lambda}{N}\,
#    \frac{\|g_i\| - 1}{\|g_i\|}\; g_i $$
#
# and runs through the layers in **forward** order (the reverse of the backward's). `gan.gradient_penalty.gradient_penalty`
# does all of it. We check it in float64 against central differences of the penalty's **value**,
# perturbing every weight of a small LeakyReLU critic: `nnbox.gradcheck` needs a Module, so we wrap
# the penalty in one (forward: $P$; backward: adds $\partial P/\partial\theta$; the same $\varepsilon$
# every call).

# %%
class Penalty(Module):
    """P(real, fake) as a function of the critic's weights, for nnbox.gradcheck."""

    def __init__(self, critic, seed):
        super().__init__()
        self.critic, self.seed = critic, seed

    def forward(self, real, fake):
        self.save_for_backward(real=real, fake=fake)
        return penalty_terms(self.critic, real, fake, 10.0, self.seed)["value"]

    def backward(self, upstream):
        saved = self.saved_for_backward()
        # P is linear in lambda: lambda * upstream gives upstream * dP/dtheta
        gradient_penalty(self.critic, saved.real, saved.fake, lam=10.0 * float(upstream), rng=self.seed)
        return np.zeros_like(saved.real)           # (this critic has no term through its input)


small = make_critic(seed=11, width=6, depth=2, activation=lambda: LeakyReLU(0.2))
for p in small.parameters():
    p.data *= 3.0                                  # gradient norms above and below 1
report = gradcheck(Penalty(small, seed=4), rng.uniform(-1, 1, (8, 2)), rng.uniform(-1, 1, (8, 2)),
                   rng=0, atol=1e-7, rtol=1e-5)
print("largest |analytical - numerical| per weight tensor:")
for name, error in report.max_abs_error.items():
    print(f"  {name}: {error:.2e} over {report.checked_entries[name]} entries")
assert max(report.max_abs_error.values()) < 1e-7

# %% [markdown]
# Every weight agrees with the finite differences to about $10^{-9}$: the double backward is
# exact. When PyTorch is installed we also compare with its double backward (`create_graph=True`)
# on the same weights.

# %%
try:
    import torch
except ImportError:
    torch = None
    print("torch is not installed: parity cell skipped")
if torch is not None:
    real_b, fake_b = rng.uniform(-1, 1, (8, 2)), rng.uniform(-1, 1, (8, 2))
    small.zero_grad()
    value, _ = gradient_penalty(small, real_b, fake_b, rng=4)
    x_hat, _ = interpolate(real_b, fake_b, 4)
    linears = [layer for layer in small if isinstance(layer, Linear)]
    weights = [(torch.tensor(l.weight.data, requires_grad=True), torch.tensor(l.bias.data, requires_grad=True))
               for l in linears]
    x = torch.tensor(x_hat, requires_grad=True)
    h = x
    for index, (w, b) in enumerate(weights):
        h = torch.nn.functional.linear(h, w, b)
        if index < len(weights) - 1:
            h = torch.nn.functional.leaky_relu(h, 0.2)
    (g,) = torch.autograd.grad(h.sum(), x, create_graph=True)
    penalty = 10 * ((g.norm(dim=1) - 1) ** 2).mean()
    penalty.backward()
    worst = max(np.abs(l.weight.grad - w.grad.numpy()).max() for l, (w, _) in zip(linears, weights))
    print(f"P: nnbox {float(value):.12f}, torch {penalty.item():.12f}; largest weight-gradient difference {worst:.1e}")
    assert abs(float(value) - penalty.item()) < 1e-12 and worst < 1e-12

# %% [markdown]
# ## 5. What the critics look like
#
# The same three critics as in section 3, drawn over the plane: colour is $f(x)$, the dots are the
# real (black) and the shifted fake (white) samples. The penalised critic is close to the optimal
# one, a plane sloping along $-d$ with slope 1; the critic clipped at $c=0.01$ is almost flat (its
# slope is thousands of times too small), and the one clipped at $c = 0.1$ points the right way
# but is several times too steep.

# %%
grid = np.linspace(-3.5, 4.5, 81)
xx, yy = np.meshgrid(grid, grid)
points = np.stack([xx.ravel(), yy.ravel()], axis=1)
fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
for ax, (name, critic) in zip(axes, critics.items()):
    values = critic(points).reshape(xx.shape)
    image = ax.contourf(xx, yy, values, levels=20, cmap="viridis")
    fig.colorbar(image, ax=ax)
    ax.scatter(*test_real[:300].T, s=2, c="k")
    ax.scatter(*test_fake[:300].T, s=2, c="w")
    ax.set_title(name)
    ax.set_aspect("equal")
plt.tight_layout()
plt.show()
gp_values = critics["gradient penalty"](points)
slope, *_ = np.linalg.lstsq(np.c_[points, np.ones(len(points))], gp_values, rcond=None)
print(f"least-squares plane of the penalised critic: gradient {slope[:2].ravel()}, the ideal -d/||d|| = {-unit}")
assert np.dot(slope[:2].ravel(), -unit) > 0.8

# %% [markdown]
# ## In the trainer
#
# `TrainConfig(loss="wgan_gp", gp_weight=10)` trains with the Wasserstein loss and this penalty (no
# clipping); the recipe of Gulrajani et al. is Adam with learning rate $10^{-4}$ and
# $\beta = (0, 0.9)$, and 5 critic steps per generator step (`balance="ratio", n_d=5`). The example
# script sets it all with one option:
#
# ```bash
# python examples/faces_gan.py --loss wgan_gp --out runs/wgan_gp
# ```
#
# Each step records the penalty (`gp`), the mean input-gradient norm (`grad_norm`) and the
# Wasserstein estimate $\operatorname{mean} f(\text{real}) - \operatorname{mean} f(\text{fake})$
# (`wasserstein`). A run on LFW faces, with its curves and samples, is in
# [docs/results/wgan_gp.md](../results/wgan_gp.md).
