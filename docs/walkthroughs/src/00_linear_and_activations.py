# %% [markdown]
# # 0. Linear layers and activations
#
# The smallest pieces first. Every nnbox layer has a `forward` and a hand-written `backward`: given
# $\mathrm{d}y = \partial L / \partial y$ for its output, backward adds $\partial L / \partial \theta$
# into each parameter's `.grad` and returns $\mathrm{d}x = \partial L / \partial x$. This walkthrough
# derives them for `Linear` and the four activations, then looks at what the derivatives do to
# training:
#
# 1. `Linear`: $y = x W^\top + b$ and its three gradients, by hand and against the layer;
# 2. ReLU, LeakyReLU, Tanh and Sigmoid, and their derivatives from the saved output or mask;
# 3. vanishing gradients: why deep stacks of sigmoids barely learn;
# 4. dead ReLUs, and why GAN discriminators use LeakyReLU;
# 5. computing the sigmoid and the binary cross-entropy without overflow;
# 6. parity with PyTorch.

# %%
import matplotlib.pyplot as plt
import numpy as np

from layers import LeakyReLU, Linear, ReLU, Sigmoid, Tanh
from nnbox import init
from nnbox.gradcheck import gradcheck
from nnbox.losses import BCEWithLogitsLoss, sigmoid
from nnbox.module import Sequential

plt.rcParams["figure.dpi"] = 80
np.set_printoptions(precision=4, suppress=True)
rng = np.random.default_rng(0)

# %% [markdown]
# ## 1. `Linear`
#
# A batch $x$ of $N$ rows with $D_{in}$ features each, a weight $W$ $(D_{out}, D_{in})$ (PyTorch's
# layout) and a bias $b$ $(D_{out})$:
#
# $$ y = x W^\top + b, \qquad y_{nj} = \sum_i x_{ni} W_{ji} + b_j . $$
#
# Each output $y_{nj}$ depends on $W_{ji}$ with slope $x_{ni}$, on $b_j$ with slope 1, and on $x_{ni}$
# with slope $W_{ji}$. Summing over everything that depends on each quantity:
#
# $$ \frac{\partial L}{\partial W_{ji}} = \sum_n \mathrm{d}y_{nj}\, x_{ni}, \quad
#    \frac{\partial L}{\partial b_j} = \sum_n \mathrm{d}y_{nj}, \quad
#    \frac{\partial L}{\partial x_{ni}} = \sum_j \mathrm{d}y_{nj}\, W_{ji}, $$
#
# that is $\mathrm{d}W = \mathrm{d}y^\top x$, $\mathrm{d}b = $ the column sums of $\mathrm{d}y$, and
# $\mathrm{d}x = \mathrm{d}y\, W$. The gradients of the parameters **add** into `.grad` (a layer
# used on two batches before an optimiser step accumulates both), so `zero_grad()` comes first.

# %%
layer = Linear(4, 3, rng=1).to(np.float64)
x, dy = rng.standard_normal((5, 4)), rng.standard_normal((5, 3))
layer.zero_grad()
y = layer(x)
dx = layer.backward(dy)
W, b = layer.weight.data, layer.bias.data
np.testing.assert_allclose(y, x @ W.T + b, rtol=1e-14)
np.testing.assert_allclose(layer.weight.grad, dy.T @ x, rtol=1e-14)
np.testing.assert_allclose(layer.bias.grad, dy.sum(axis=0), rtol=1e-14)
np.testing.assert_allclose(dx, dy @ W, rtol=1e-14)
layer(x)
layer.backward(dy)                                 # a second backward adds to .grad
np.testing.assert_allclose(layer.weight.grad, 2 * dy.T @ x, rtol=1e-14)
report = gradcheck(layer, x, rng=rng)   # raises on any mismatch (walkthrough 4 explains the check)
print("by hand = the layer; entries compared with central differences:", dict(report.checked_entries))

# %% [markdown]
# ## 2. Activations and their derivatives
#
# | activation | $y = f(x)$ | $f'(x)$, written with the output $y$ where it can be |
# |---|---|---|
# | ReLU | $\max(x, 0)$ | $1$ where $x > 0$, else $0$ |
# | LeakyReLU | $x$ where $x > 0$, else $a x$ | $1$ where $x > 0$, else $a$ (nnbox's default $a$: 0.01, PyTorch's; GANs use 0.2) |
# | Tanh | $\tanh x$ | $1 - y^2$ |
# | Sigmoid | $1 / (1 + e^{-x})$ | $y (1 - y)$ |
#
# Backward multiplies $\mathrm{d}y$ by $f'$ element by element. Tanh and Sigmoid save their output
# and compute $f'$ from it (no second exponential); ReLU and LeakyReLU save only where $x > 0$. At
# $x = 0$ ReLU has no derivative; nnbox, like PyTorch, uses 0 there.

# %%
grid = np.linspace(-4, 4, 401)
activations = {"ReLU": ReLU(), "LeakyReLU(0.2)": LeakyReLU(0.2), "Tanh": Tanh(), "Sigmoid": Sigmoid()}
fig, axes = plt.subplots(1, 2, figsize=(9, 3))
for name, act in activations.items():
    y = act(grid)
    slope = act.backward(np.ones_like(grid))       # dy = 1: backward returns f'(x)
    style = "--" if name == "ReLU" else "-"         # ReLU lies under LeakyReLU for x > 0
    axes[0].plot(grid, y, style, label=name)
    axes[1].plot(grid, slope, style, label=name)
    # the derivative from the saved output equals a central difference of f
    h = 1e-6
    numerical = (act(grid + h) - act(grid - h)) / (2 * h)
    away_from_kink = np.abs(grid) > 1e-3
    np.testing.assert_allclose(slope[away_from_kink], numerical[away_from_kink], rtol=1e-6, atol=1e-9)
relu, leaky = ReLU(), LeakyReLU(0.2)
relu(np.zeros(1))
leaky(np.zeros(1))
assert relu.backward(np.ones(1))[0] == 0 and leaky.backward(np.ones(1))[0] == 0.2   # at the kink, as PyTorch
axes[0].set_title("f(x)")
axes[0].legend(fontsize=8)
axes[1].set_title("f'(x), from backward")
axes[1].legend(fontsize=8)
plt.show()
sig = Sigmoid()
sig(grid)
sigmoid_slope = sig.backward(np.ones_like(grid))
print(f"the sigmoid's largest slope: {sigmoid_slope.max():.4f}, at x = {grid[sigmoid_slope.argmax()]:.2f}")
assert np.isclose(sigmoid_slope.max(), 0.25) and grid[sigmoid_slope.argmax()] == 0

# %% [markdown]
# ## 3. Vanishing gradients
#
# Backward through a stack multiplies the derivatives of every layer. The sigmoid's derivative is at
# most $1/4$ (at $x = 0$), so $L$ sigmoid layers multiply the gradient by at most $4^{-L}$ on top of
# what the weights do: the first layers of a deep sigmoid network hardly learn. ReLU's
# derivative is 1 wherever a unit is active (half of them, for a centred input), so with He's
# initialisation, weights of variance $2 / D_{in}$ that make up for the inactive half
# (`nnbox.init.kaiming_normal`), the gradient reaching the input stays of the same order. We push a
# batch through ten layers of each kind, all with the same He-initialised weights, and compare the
# size of the gradient at the input with the one at the output.

# %%
def stack(activation, depth=10, width=64, seed=2):
    """depth x (Linear(width, width) -> activation), He-initialised weights, zero biases."""
    layers = []
    for k in range(depth):
        linear = Linear(width, width, rng=seed + k)
        linear.weight.data = init.kaiming_normal((width, width), nonlinearity="relu", rng=seed + k)
        linear.bias.data[...] = 0
        layers += [linear, activation()]
    return Sequential(*layers).to(np.float64)


x = rng.standard_normal((32, 64))
ratios = {}
for name, activation in (("Sigmoid", Sigmoid), ("Tanh", Tanh), ("ReLU", ReLU)):
    net = stack(activation)
    out = net(x)
    dy = rng.standard_normal(out.shape)
    dx = net.backward(dy)
    ratios[name] = np.linalg.norm(dx) / np.linalg.norm(dy)
    print(f"{name:8s} |dx| / |dy| through 10 layers: {ratios[name]:.2e}")
assert ratios["Sigmoid"] < 1e-4 * ratios["ReLU"] and 0.1 < ratios["ReLU"] < 10 and 0.1 < ratios["Tanh"] < 10

# %% [markdown]
# Through ten ReLU layers the gradient keeps its size; through ten sigmoid layers it shrinks by about
# five orders of magnitude. Tanh keeps it too here, for the same reason as ReLU: the mean of
# $\tanh'^2$ over its inputs is about 1/2, and He's factor 2 makes up for it (the sigmoid's is at most
# 1/16). This is why the hidden layers of GANs use ReLU-like activations, and Tanh and Sigmoid
# appear only at the ends: Tanh maps the generator's output into $[-1, 1]$, the pixel range, and the
# discriminator's sigmoid is folded into its loss (section 5).
#
# ## 4. Dead ReLUs, and LeakyReLU
#
# A ReLU unit whose input is negative for every example outputs 0 and passes back a zero gradient:
# its weights and bias receive no gradient, and it stays "dead" unless earlier layers shift its
# inputs. LeakyReLU passes back $a\,\mathrm{d}y$
# instead, so a unit pushed into the negative side can come back. In a GAN the discriminator's
# gradient with respect to its **input** is all the generator learns from: LeakyReLU (slope 0.2, as
# in DCGAN) keeps that gradient flowing through units that happen to be inactive for a fake image.

# %%
unit = Linear(3, 1, rng=3).to(np.float64)
unit.bias.data[...] = -10.0                        # far below any input's contribution: always inactive
batch = rng.standard_normal((16, 3))
for act in (ReLU(), LeakyReLU(0.2)):
    unit.zero_grad()
    y = act(unit(batch))
    dx = unit.backward(act.backward(np.ones_like(y)))
    print(f"{type(act).__name__:9s} weight gradient {unit.weight.grad.ravel()}, |input gradient| "
          f"{np.linalg.norm(dx):.3f}")
    if isinstance(act, ReLU):
        assert not unit.weight.grad.any() and not dx.any()      # dead: nothing flows back
    else:
        assert np.abs(unit.weight.grad).min() > 0 and np.linalg.norm(dx) > 0

# %% [markdown]
# ## 5. The sigmoid and the binary cross-entropy, without overflow
#
# $1 / (1 + e^{-x})$ computes $e^{-x}$, which overflows to infinity for $x < -709.78$ in float64 (and
# $x < -88.72$ in float32): NumPy warns, and the division by infinity then gives 0, which happens to be
# the right limit. nnbox's `sigmoid` uses only $e^{-|x|} \le 1$, so nothing overflows:
#
# $$ \sigma(x) = \frac{1}{1 + e^{-|x|}} \text{ for } x \ge 0, \qquad
#    \sigma(x) = \frac{e^{-|x|}}{1 + e^{-|x|}} \text{ for } x < 0 . $$
#
# The real trouble is the logarithm that follows. The discriminator's loss is the binary
# cross-entropy of $\sigma(x)$ with a target $t$: $-t \log \sigma(x) - (1 - t) \log(1 - \sigma(x))$.
# Computed that way, a confident wrong logit ($x = -1000$ for a real image) gives
# $-\log 0 = \infty$, and a confident right one rounds $\sigma(x)$ to 1 and loses the small loss.
# Rewritten on the logit,
#
# $$ \ell(x, t) = \max(x, 0) - x t + \log\left(1 + e^{-|x|}\right), \qquad
#    \frac{\partial \ell}{\partial x} = \sigma(x) - t , $$
#
# is finite for every $x$, and its gradient is as simple as a gradient gets. The last term is
# computed with `log1p` ($\log(1 + u)$ accurate for tiny $u$): written as `log(1 + exp(-40))` it
# would round to 0 too. That is
# `BCEWithLogitsLoss`, and why nnbox's discriminators output logits, not probabilities.

# %%
logits = np.array([-1000.0, -100.0, -40.0, 0.0, 40.0, 100.0, 1000.0])
with np.errstate(over="ignore"):                   # e^1000 overflows (a warning), 1/inf = 0
    naive = 1 / (1 + np.exp(-logits))
with np.errstate(over="raise"):                    # nnbox's sigmoid: nothing may overflow
    stable = sigmoid(logits)


def show(values):
    return "[" + ", ".join(f"{v:.3g}" for v in values) + "]"


print("logits:        ", show(logits))
print("sigmoid, naive:", show(naive))
print("sigmoid, nnbox:", show(stable), " (the same values, without the overflow)")
assert np.isclose(stable[2], 4.248354255291589e-18, rtol=1e-12) and np.isfinite(stable).all()

with np.errstate(divide="ignore"):
    naive_bce = -np.log(naive)                     # target 1 (a real image), through the probability
loss = BCEWithLogitsLoss(reduction="sum")          # one logit at a time: each one's loss
exact = [float(loss(np.array([logit]), np.ones(1))) for logit in logits]
print("BCE for target 1, naive:", show(naive_bce))
print("BCE for target 1, nnbox:", show(exact))
assert np.isinf(naive_bce[0]) and np.isfinite(exact).all() and np.isclose(exact[0], 1000.0)
assert np.isclose(exact[4], 4.248354255291589e-18, rtol=1e-12)          # log1p keeps the small loss
for logit in (-3.0, 0.0, 3.0):                     # the gradient against central differences
    value = lambda v: float(loss(np.array([v]), np.ones(1)))   # noqa: E731
    loss(np.array([logit]), np.ones(1))
    analytic = float(loss.backward(1.0)[0])
    assert np.isclose(analytic, (value(logit + 1e-6) - value(logit - 1e-6)) / 2e-6, rtol=1e-7, atol=1e-10)

# %% [markdown]
# ## 6. Parity with PyTorch
#
# nnbox keeps PyTorch's names and layouts, so a torch model's weights drop in. With the same
# weights, a `Linear` followed by each activation gives the same output and gradients as
# `torch.nn` to rounding (skipped without torch).

# %%
try:
    import torch
except ImportError:
    torch = None
    print("torch is not installed: parity skipped")

if torch is not None:
    for ours, theirs in ((ReLU(), torch.nn.ReLU()), (LeakyReLU(0.2), torch.nn.LeakyReLU(0.2)),
                         (Tanh(), torch.nn.Tanh()), (Sigmoid(), torch.nn.Sigmoid())):
        linear = Linear(6, 4, rng=4).to(np.float64)
        reference = torch.nn.Linear(6, 4).double()
        with torch.no_grad():
            reference.weight.copy_(torch.from_numpy(linear.weight.data))
            reference.bias.copy_(torch.from_numpy(linear.bias.data))
        x, dy = rng.standard_normal((5, 6)), rng.standard_normal((5, 4))
        x_t = torch.from_numpy(x).requires_grad_(True)
        y_t = theirs(reference(x_t))
        y_t.backward(torch.from_numpy(dy))
        y = ours(linear(x))
        dx = linear.backward(ours.backward(dy))
        np.testing.assert_allclose(y, y_t.detach().numpy(), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(dx, x_t.grad.numpy(), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(linear.weight.grad, reference.weight.grad.numpy(), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(linear.bias.grad, reference.bias.grad.numpy(), rtol=1e-12, atol=1e-14)
    print("Linear + ReLU, LeakyReLU, Tanh, Sigmoid: outputs and gradients match torch")

# %% [markdown]
# ## Summary
#
# - `Linear`: $\mathrm{d}W \mathrel{+}= \mathrm{d}y^\top x$, $\mathrm{d}b \mathrel{+}= \sum_n \mathrm{d}y$,
#   $\mathrm{d}x = \mathrm{d}y\, W$; gradients accumulate until `zero_grad()`.
# - Activations multiply the gradient by their derivative; Tanh and Sigmoid compute it from their
#   saved output ($1 - y^2$, $y(1 - y)$), ReLU and LeakyReLU from a saved mask.
# - A sigmoid's derivative is at most 1/4: stacks of them starve their first layers of gradient.
# - ReLU units that are never active stop learning; LeakyReLU always passes some gradient back,
#   which is why GAN discriminators use it.
# - The sigmoid from $e^{-|x|}$ and the cross-entropy on logits are finite for every input: nnbox's
#   discriminators output logits and use `BCEWithLogitsLoss`.
# - Next: convolutions (walkthrough 1), which are `Linear` layers applied to every image window.
