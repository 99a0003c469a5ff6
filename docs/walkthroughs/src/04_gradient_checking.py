# %% [markdown]
# # 4. Gradient checking
#
# nnbox has no autograd: every layer's `backward` is written by hand, and a wrong backward does not
# crash. It trains a little worse, or not at all, and nobody knows why. The defence is to compare
# every backward with the derivative measured from the forward pass alone, by finite differences.
# This walkthrough explains how `nnbox.gradcheck.gradcheck` does it and why it is built the way it is:
#
# 1. central differences and their $O(h^2)$ error, and why the check runs in float64;
# 2. why the upstream gradient is random and never all ones (a real bug that ones miss);
# 3. kinks (ReLU at 0, max-pool ties) and the spurious failures they cause;
# 4. checking a layer you wrote yourself, then planting bugs to read the error messages.

# %%
import os

import matplotlib.pyplot as plt
import numpy as np

import layers
from nnbox.gradcheck import GradcheckError, gradcheck
from nnbox.losses import sigmoid
from nnbox.module import Module, Parameter

FAST = os.environ.get("NNBOX_FAST") == "1"   # the test suite sets this: coarser sweeps
plt.rcParams["figure.dpi"] = 80
np.set_printoptions(precision=4, suppress=True)
rng = np.random.default_rng(0)

# %% [markdown]
# ## 1. Central differences
#
# Taylor's formula around $x$ gives
#
# $$ f(x \pm h) = f(x) \pm h f'(x) + \frac{h^2}{2} f''(x) \pm \frac{h^3}{6} f'''(x) + O(h^4), $$
#
# so the **forward difference** has an error proportional to $h$, while in the **central
# difference** the even terms cancel and the error is proportional to $h^2$:
#
# $$ \frac{f(x+h) - f(x)}{h} = f'(x) + \frac h2 f''(x) + O(h^2), \qquad
#    \frac{f(x+h) - f(x-h)}{2h} = f'(x) + \frac{h^2}{6} f'''(x) + O(h^4). $$
#
# So make $h$ tiny? No: the computer stores $f(x \pm h)$ with a relative rounding error of about
# $\varepsilon$ (machine epsilon: $1.2 \cdot 10^{-7}$ in float32, $2.2 \cdot 10^{-16}$ in float64),
# and dividing the difference of two nearly equal numbers by $2h$ magnifies it. The total error is
# about
#
# $$ \text{error}(h) \approx \frac{h^2}{6} |f'''| + \frac{\varepsilon |f|}{h}, \qquad
#    \text{smallest at } h^* = \Big(\frac{3 \varepsilon |f|}{|f'''|}\Big)^{1/3}, $$
#
# which is $h^* \approx 10^{-2}$ with an error of order $10^{-5}$ by this estimate in float32 (the
# rounding term is a bound: the measurement below does a little better), and $h^* \approx 10^{-5}$
# with an error near $10^{-11}$ or below in float64. Measure it on $f = \tanh$ at $x = 0.5$, whose derivative
# $1 - \tanh^2 x$ we know exactly:

# %%
x0 = 0.5
exact = 1 - np.tanh(x0) ** 2
hs = np.logspace(-12, 0, 25 if FAST else 97)


def central(f, x, h, dtype):
    x, h = dtype(x), dtype(h)
    return float((f(x + h) - f(x - h)) / (dtype(2) * h))


def forward_difference(f, x, h, dtype):
    x, h = dtype(x), dtype(h)
    return float((f(x + h) - f(x)) / h)


errors = {
    "central, float64": np.array([abs(central(np.tanh, x0, h, np.float64) - exact) for h in hs]),
    "central, float32": np.array([abs(central(np.tanh, x0, h, np.float32) - exact) for h in hs]),
    "forward, float64": np.array([abs(forward_difference(np.tanh, x0, h, np.float64) - exact) for h in hs]),
}
for name, err in errors.items():
    best = np.argmin(err)
    print(f"{name}: smallest error {err[best]:.1e} at h = {hs[best]:.0e}")

plt.figure(figsize=(7, 4))
for name, err in errors.items():
    plt.loglog(hs, np.maximum(err, 1e-14), ".-", label=name, ms=4)
plt.axvline(1e-6, color="grey", ls=":", label="nnbox.gradcheck's eps = 1e-6")
plt.xlabel("step h"), plt.ylabel("|numerical - exact|"), plt.ylim(1e-14, 10)
plt.title("finite-difference error for d tanh(x)/dx at x = 0.5")
plt.legend(fontsize=8)
plt.show()


def slope(err, low, high):
    """The power of h in the error, fitted on low <= h <= high (where truncation dominates)."""
    keep = (hs >= low) & (hs <= high)
    return np.polyfit(np.log(hs[keep]), np.log(err[keep]), 1)[0]


print(f"slope of the central error: {slope(errors['central, float64'], 1e-3, 1e-1):.2f} (h^2), "
      f"forward: {slope(errors['forward, float64'], 1e-6, 1e-2):.2f} (h^1)")
assert abs(slope(errors["central, float64"], 1e-3, 1e-1) - 2) < 0.1
assert abs(slope(errors["forward, float64"], 1e-6, 1e-2) - 1) < 0.1
assert errors["central, float64"].min() < 1e-9          # float64 gets 9+ correct digits ...
assert errors["central, float32"].min() > 1e-7          # ... float32 never gets 7
assert errors["central, float64"][np.argmin(abs(hs - 1e-6))] < 1e-9   # and eps = 1e-6 is near the optimum

# %% [markdown]
# Read the plot from the right: the error falls like $h^2$ (central) or $h$ (forward) until the
# rounding term takes over and it rises again like $1/h$. In float32 the best we can get is a few
# $10^{-6}$, and only with a lucky $h$: no better than the difference a subtle bug makes.
# In float64 there are six orders of magnitude to spare. That is why `gradcheck` casts the module
# and its inputs to float64 and uses $h = 10^{-6}$ (`eps`), and compares with
# $|\text{analytical} - \text{numerical}| \le \text{atol} + \text{rtol}\,|\text{numerical}|$
# (atol $10^{-6}$, rtol $10^{-5}$).
#
# The same on a layer. `numerical_gradient` below is the heart of `gradcheck`: nudge one input
# entry at a time, both ways, and difference the scalar $L = \sum g \odot y$. In float32 the
# `Tanh` layer's backward (correct!) disagrees with the numerical gradient by some $10^{-5}$, as
# much as a small bug would; in float64 by some $10^{-10}$.

# %%
def numerical_gradient(loss, x, eps):
    """dL/dx by central differences, one entry at a time (x is nudged in place and restored)."""
    grad = np.zeros_like(x)
    for index in np.ndindex(x.shape):
        original = x[index]
        x[index] = original + eps
        plus = loss()
        x[index] = original - eps
        minus = loss()
        x[index] = original
        grad[index] = (plus - minus) / (2 * eps)
    return grad


def backward_error(layer, x, upstream, eps):
    """The largest |backward(upstream) - numerical gradient of sum(upstream * layer(x))|."""
    layer(x)
    analytical = layer.backward(upstream)
    numerical = numerical_gradient(lambda: np.sum(layer(x) * upstream, dtype=x.dtype), x, eps)
    return float(np.max(np.abs(analytical - numerical)))


x64 = rng.standard_normal((4, 5))
g64 = rng.standard_normal((4, 5))
err32 = backward_error(layers.Tanh(), x64.astype(np.float32), g64.astype(np.float32), np.float32(1e-2))
err64 = backward_error(layers.Tanh(), x64, g64, 1e-6)
print(f"Tanh, largest error: float32 (eps 1e-2) {err32:.1e}, float64 (eps 1e-6) {err64:.1e}")
assert err32 > 1e-5 and err64 < 1e-8

# %% [markdown]
# ## 2. Random upstream gradients
#
# A layer with many outputs has a Jacobian, not a gradient. The check multiplies it by an upstream
# gradient $g$ ("what the layers above would send back") and compares the vector-Jacobian product
# that `backward(g)` returns with the numerical gradient of the scalar $L = \sum_i g_i y_i$.
#
# The tempting choice $g = 1$ (check the gradient of `y.sum()`) tests only one direction, and some
# bugs are invisible in it. BatchNorm is the classic: its true input gradient
#
# $$ dx = \frac{\gamma}{m s}\Big(m\, dy - \sum dy - \hat x \sum dy\, \hat x\Big) $$
#
# has a last term $\hat x \sum dy\,\hat x$, which for $dy = 1$ is $\hat x \sum \hat x = 0$. A
# backward that forgets it is exactly right whenever $\sum g\, \hat x = 0$ in every channel ($g = 1$
# in particular, or any $g$ constant within a channel) and wrong for almost every other $g$
# (walkthrough 3 derives the formula). Here is that bug:

# %%
class BatchNormForgotVariancePath(layers.BatchNorm1d):
    """BatchNorm1d with a planted bug: the backward drops the variance's term -xhat * sum(dy * xhat)."""

    def backward(self, dy):
        saved = self.saved_for_backward()
        self.weight.grad += (dy * saved.xhat).sum(axis=0)
        self.bias.grad += dy.sum(axis=0)
        m = dy.shape[0]
        return self.weight.data * saved.inv_std / m * (m * dy - dy.sum(axis=0))


x = rng.normal(2.0, 3.0, (8, 3))
buggy = BatchNormForgotVariancePath(3, dtype=np.float64)
with_ones = backward_error(buggy, x.copy(), np.ones((8, 3)), 1e-6)
with_random = backward_error(buggy, x.copy(), rng.standard_normal((8, 3)), 1e-6)
print(f"buggy BatchNorm, largest error with g = 1: {with_ones:.1e};  with a random g: {with_random:.1e}")
assert with_random > 0.01                    # the bug is large ...
assert with_ones < 1e-8                      # ... and invisible with ones

# %% [markdown]
# With $g = 1$ even the *numerical* gradient is zero up to rounding (the sum of a normalised
# channel does not depend on $x$ at all), so such a check compares two zeros. `gradcheck` draws $g$
# from a standard normal distribution, and finds the bug at once; its message says where and by how
# much:

# %%
def failure_message(module, *inputs):
    """Run a gradcheck that must fail; print its message and return it."""
    try:
        gradcheck(module, *inputs, rng=0)
    except GradcheckError as error:
        print(error, "\n")
        return str(error)
    raise AssertionError(f"gradcheck of {type(module).__name__} passed, but it should have failed")


assert "input 0" in failure_message(buggy, x)
gradcheck(layers.BatchNorm1d(3), x, rng=0)
print("the real BatchNorm1d passes the same check")

# %% [markdown]
# ## 3. Kinks: when the numerical gradient is the wrong one
#
# Central differences assume $f$ is smooth within $\pm h$ of the point. Some layers have kinks:
#
# - **ReLU** $\max(x, 0)$ at $x = 0$: the slope is 0 on the left and 1 on the right. The central
#   difference straddles the kink and measures $(h - 0)/2h = 0.5$, while the backward must pick one
#   side (nnbox, like PyTorch, says 0). Any $|x| < h$ is just as bad.
# - **Max-pooling with a tie**: two equal maxima in a window. Nudging either one up raises the
#   output, nudging it down does not, so each gets $0.5\,dy$ numerically, while the backward sends
#   all of $dy$ to one of them (the first).
#
# Neither backward is wrong: the derivative does not exist there. But the check fails:

# %%
relu_input = rng.standard_normal((2, 4))
relu_input[0, 1] = 0.0                           # exactly on the kink
relu_input[1, 2] = 3e-7                          # within eps = 1e-6 of it
assert "kink" in failure_message(layers.ReLU(), relu_input)

tie = np.array([[[[1.0, 1.0], [0.2, 0.5]]]])      # two equal maxima in one 2x2 window
assert "kink" in failure_message(layers.MaxPool2d(2), tie)

# %% [markdown]
# Read the hints as candidates and look at the input. For ReLU the first hint notes that the
# analytical value is exactly 0 (true, and right here); at the tie the analytical value is exactly
# twice the numerical one, so the message offers "a gradient added several times". In both cases the
# cause is the kink.
#
# The remedy is to test away from kinks, not to loosen the tolerance: draw continuous random inputs
# (the chance that a standard normal lands within $10^{-6}$ of 0 is about $10^{-6}$ per entry), or
# push them away explicitly. Beware of real data: images are stored as integers /255, so windows of
# a photograph are full of ties.

# %%
away = rng.standard_normal((2, 4))
away = np.where(np.abs(away) < 0.01, 0.5, away)   # nothing within 0.01 of the kink
gradcheck(layers.ReLU(), away, rng=0)

ties_everywhere = rng.integers(0, 4, (1, 2, 6, 6)) / 3.0      # quantised like pixel values
assert not gradcheck(layers.MaxPool2d(2), ties_everywhere, rng=0, raise_on_failure=False)
jittered = ties_everywhere + rng.uniform(0, 1e-3, ties_everywhere.shape)   # breaks every tie
gradcheck(layers.MaxPool2d(2), jittered, rng=0)
print("ReLU away from 0 and max-pooling without ties: both pass")

# %% [markdown]
# ## 4. Checking a layer you wrote yourself
#
# Say you want **Swish** with a learnable $\beta$ (Ramachandran et al., 2017; $\beta = 1$ is SiLU):
#
# $$ y = x\, \sigma(\beta x), \qquad \sigma(t) = \frac{1}{1 + e^{-t}}, \qquad \sigma' = \sigma (1 - \sigma). $$
#
# With $s = \sigma(\beta x)$, the product and chain rules give
#
# $$ \frac{\partial y}{\partial x} = s + \beta x\, s (1 - s), \qquad
#    \frac{\partial y}{\partial \beta} = x^2 s (1 - s), $$
#
# so $dx = dy \odot (s + \beta x s (1 - s))$ and, since $\beta$ is shared by every entry,
# $d\beta = \sum dy \odot x^2 s (1-s)$. Following nnbox's conventions (see `layers/linear.py`):
# parameters are `Parameter`s, `forward` saves only what `backward` needs, `backward` **adds** into
# `.grad` and returns $dx$, and the array module comes from the data. And $\sigma$ comes from
# `nnbox.losses.sigmoid`, not from `1 / (1 + exp(-t))`, which overflows for $t < -88.7$ in float32
# (walkthrough 0).

# %%
class Swish(Module):
    """Applies y = x * sigmoid(beta * x) with a learnable scalar beta (beta = 1: SiLU).

    Shape:
        x: any shape -> y: the same shape. beta: (1,).

    Backward, with s = sigmoid(beta * x):
        dx = dy * (s + beta * x * s * (1 - s)),  dbeta += sum(dy * x^2 * s * (1 - s))
    """

    def __init__(self, beta=1.0, dtype=np.float32):
        super().__init__()
        self.beta = Parameter(np.full((1,), beta, dtype=dtype))

    def forward(self, x):
        s = sigmoid(self.beta.data * x)      # NumPy or CuPy, from the data; never overflows
        self.save_for_backward(x=x, s=s)
        return x * s

    def backward(self, dy):
        saved = self.saved_for_backward()
        if self.beta.requires_grad:
            self.beta.grad += self.grad_beta(dy, saved.x, saved.s)
        return self.grad_x(dy, saved.x, saved.s)

    def grad_x(self, dy, x, s):
        return dy * (s + self.beta.data * x * s * (1 - s))

    def grad_beta(self, dy, x, s):
        return (dy * x * x * s * (1 - s)).sum().reshape(1)


swish = Swish(beta=1.5)
x = rng.standard_normal((4, 6)).astype(np.float32)
report = gradcheck(swish, x, rng=0)
print("Swish passes:", {name: f"{err:.1e}" for name, err in report.max_abs_error.items()},
      "entries checked:", report.checked_entries)

# %% [markdown]
# `gradcheck(module, *inputs)` casts the module and the inputs to float64 (in place: the module is
# float64 afterwards), draws a random upstream gradient, checks every input entry and every
# parameter with `requires_grad`, and returns a report (or raises `GradcheckError`). Useful options:
# `wrt=(0, 1)` for a backward that returns gradients for several inputs, `max_entries=200` to check
# a random sample of entries of a big tensor, `check_params=False`, and `rng=` for a reproducible
# upstream gradient. In a test file:
#
# ```python
# from nnbox.gradcheck import gradcheck
#
# def test_swish_gradients():
#     rng = np.random.default_rng(0)
#     gradcheck(Swish(beta=1.5), rng.standard_normal((4, 6)), rng=0)
# ```
#
# ### Planting bugs
#
# Now break the backward in two typical ways and read what `gradcheck` says. First, forget the
# chain-rule term through $\beta x$ in $dx$ (as if $s$ did not depend on $x$):

# %%
class SwishForgotChainTerm(Swish):
    def grad_x(self, dy, x, s):
        return dy * s                      # missing: + beta * x * s * (1 - s)


assert "input 0" in failure_message(SwishForgotChainTerm(beta=1.5), x)

# %% [markdown]
# It names the tensor ("input 0"), the first entry that disagrees, both values and the tolerance,
# and lists what usually causes a mismatch. Second bug: a sign error in $d\beta$, as happens when
# $\sigma'$ is written $\sigma(\sigma - 1)$. The input gradient is right now, so the check gets to
# the parameter, and the message recognises the pattern:

# %%
class SwishSignFlip(Swish):
    def grad_beta(self, dy, x, s):
        return (dy * x * x * s * (s - 1)).sum().reshape(1)     # s * (s - 1) instead of s * (1 - s)


message = failure_message(SwishSignFlip(beta=1.5), x)
assert "parameter 'beta'" in message and "sign is flipped" in message

# %% [markdown]
# ## Summary
#
# - Central differences have error $O(h^2)$ plus rounding $\varepsilon |f| / h$; only float64
#   leaves room to tell a bug from noise, so `gradcheck` works in float64 with $h = 10^{-6}$.
# - Check $\sum g \odot y$ with a **random** $g$: with $g = 1$ BatchNorm's variance term (and any
#   bug in it) disappears.
# - At kinks (ReLU at 0, max-pool ties) the numerical gradient is meaningless: test on continuous
#   random inputs, never by loosening tolerances.
# - For your own layer: derive $dx$ and each parameter's gradient, write `backward` to add into
#   `.grad`, and call `nnbox.gradcheck.gradcheck(layer, x)` in a test.
#
# Previous: [3. BatchNorm and Dropout](03_batchnorm_dropout.ipynb). Next:
# [5. Training the faces GAN](05_faces_gan.ipynb).
