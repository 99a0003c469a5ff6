"""Numerical gradient checking: does a module's `backward` agree with its `forward`?

For a module y = f(x; W) and a *random* upstream gradient g (never all ones:
with ones, BatchNorm's input gradient is nearly zero and a broken BatchNorm
passes), the scalar L = sum(g * y) has

    dL/dx = backward(g)        (the analytical gradient)
    dL/dx[i] ~ (L(x + eps e_i) - L(x - eps e_i)) / (2 eps)   (central difference)

Central differences have error O(eps^2); in float32 the rounding error of L
(about 1e-7 |L| / eps) swamps that, so the check runs in float64.

Usage::

    from nnbox.gradcheck import gradcheck
    gradcheck(MyLayer(3, 4), x)            # raises GradcheckError with a diagnosis
"""
from dataclasses import dataclass, field

import numpy as np

from . import backend


class GradcheckError(AssertionError):
    """Raised when an analytical gradient disagrees with the numerical one."""


@dataclass
class GradcheckReport:
    """The largest disagreement seen for each checked tensor ('input 0', 'weight', ...)."""

    max_abs_error: dict = field(default_factory=dict)
    checked_entries: dict = field(default_factory=dict)


def gradcheck(module, *inputs, wrt=(0,), eps=1e-6, atol=1e-6, rtol=1e-5, rng=None,
              check_params=True, max_entries=None, raise_on_failure=True):
    """Compare `module.backward` with central differences of `module.forward`, in float64.

    Args:
        module: any nnbox Module (layer, loss or model). It is cast to float64 in place.
        *inputs: the forward's arguments. Floating arrays are cast to float64;
            others (targets of integer class labels, pooling indices) pass unchanged.
        wrt: positions of the inputs whose gradient `backward` returns (a single
            array for one position, a tuple in this order for several).
        eps: the finite-difference step.
        atol, rtol: an entry fails when |analytical - numerical| > atol + rtol * |numerical|.
        rng: NumPy generator (or seed) for the upstream gradient and entry sampling.
        check_params: also check every parameter with requires_grad.
        max_entries: check at most this many randomly chosen entries per tensor
            (None: all). Large models use it to keep the check fast.
        raise_on_failure: raise GradcheckError (default) or return False.

    Returns:
        A GradcheckReport (truthy) when every checked entry agrees.

    The module's forward must be deterministic (checked first: two forwards must agree): give
    Dropout a fixed mask, and avoid max-pool inputs with ties (there the gradient is not defined).
    A NaN or infinite value, analytical or numerical, fails the check.
    """
    rng = backend.as_rng(rng)
    module.to(np.float64)
    xp = backend.get_array_module(*[x for x in inputs if hasattr(x, "dtype")])
    inputs = [xp.ascontiguousarray(backend.to_dtype(x, np.float64)) if hasattr(x, "dtype") else x
              for x in inputs]
    name = type(module).__name__

    output = _first(module(*inputs))
    upstream = xp.asarray(rng.standard_normal(np.shape(output)))
    if np.ndim(output) == 0:  # a loss: a random scalar, away from zero
        upstream = xp.asarray(rng.choice([-1.0, 1.0]) * rng.uniform(0.5, 2.0))

    def objective():
        return float(xp.sum(_first(module(*inputs)) * upstream))

    # a forward that changes from call to call (Dropout drawing new masks, SpectralNorm's power
    # iteration away from its fixed point) would make every difference quotient meaningless: say so.
    # A drift d between two calls moves each quotient by up to d / (2 eps); below atol / 2 it is harmless
    first, second = objective(), objective()
    same = first == second or (np.isnan(first) and np.isnan(second)) or abs(first - second) <= atol * eps
    if not same:   # (a NaN or infinite forward is not called random here: the entries report it)
        return _fail(raise_on_failure,
                     f"gradcheck of {name}: two forwards of the same input gave different results "
                     f"({first!r} and {second!r}); the forward must be deterministic: give Dropout a fixed "
                     f"mask, put SpectralNorm (which runs a power iteration per training forward) in eval "
                     f"mode, or replay whatever else draws or updates state in forward")

    # analytical gradients: forward once more (the objective above may have moved state), backward
    module.zero_grad()
    _first(module(*inputs))
    grads = module.backward(upstream)
    grads = grads if isinstance(grads, tuple) else (grads,)
    if len(grads) != len(wrt):
        raise ValueError(
            f"{name}.backward returned {len(grads)} gradient(s) but wrt={wrt} asks for {len(wrt)}; "
            f"pass wrt= with the positions of the inputs backward differentiates"
        )

    targets = [(f"input {position}", inputs[position], grad) for position, grad in zip(wrt, grads)]
    if check_params:   # a parameter shared by two layers (tied weights) is checked once, by its first name
        names = {id(param): pname for pname, param in reversed(list(module.named_parameters()))}
        targets += [(f"parameter {names[id(param)]!r}", param.data, param.grad)
                    for param in module.parameters() if param.requires_grad]

    report = GradcheckReport()
    for label, array, analytical in targets:
        if analytical is None or tuple(analytical.shape) != tuple(array.shape):
            got = None if analytical is None else tuple(analytical.shape)
            return _fail(raise_on_failure,
                         f"gradcheck of {name}: the gradient of {label} has shape {got}, "
                         f"but the {label} has shape {tuple(array.shape)}; backward must return "
                         f"(or add into .grad) an array shaped like what it differentiates")
        analytical = backend.to_numpy(analytical).copy()
        if not array.flags.c_contiguous:
            raise ValueError(f"gradcheck of {name}: {label} must be C-contiguous to be perturbed in place")
        flat = array.reshape(-1)  # a view of a contiguous array
        entries = np.arange(flat.size)
        if max_entries is not None and flat.size > max_entries:
            entries = rng.choice(flat.size, size=max_entries, replace=False)
        worst = 0.0
        for flat_index in entries:
            original = float(flat[flat_index])
            flat[flat_index] = original + eps
            plus = objective()
            flat[flat_index] = original - eps
            minus = objective()
            flat[flat_index] = original
            numerical = (plus - minus) / (2 * eps)
            index = np.unravel_index(int(flat_index), array.shape)
            expected = float(analytical[index])
            error = abs(expected - numerical)
            if not error <= atol + rtol * abs(numerical):   # also when either value is NaN or infinite
                return _fail(raise_on_failure, _explain(name, label, index, expected, numerical, atol, rtol))
            worst = max(worst, error)
        report.max_abs_error[label] = worst
        report.checked_entries[label] = len(entries)
    return report


def _first(output):
    """Modules such as MaxPool2d(return_indices=True) return (y, indices): check y."""
    return output[0] if isinstance(output, tuple) else output


def _fail(raise_on_failure, message):
    if raise_on_failure:
        raise GradcheckError(message)
    return False


def _explain(name, label, index, analytical, numerical, atol, rtol):
    """A failure message that teaches: where, both values, and what usually causes it."""
    hints = []
    if not (np.isfinite(analytical) and np.isfinite(numerical)):
        hints.append("a value is NaN or infinite: a division by zero, the log or square root of a value "
                     "<= 0, or an overflow (exp of a large number) in backward or forward")
    elif analytical == 0.0 and numerical != 0.0:
        hints.append("the analytical gradient is exactly 0: does backward add into .grad "
                     "(param.grad += ...) and return dx for every input entry?")
    elif numerical != 0.0 and abs(analytical + numerical) < 1e-3 * abs(numerical):
        # checked before the ratio below, which would otherwise call this "-1x"
        hints.append("the sign is flipped: check the sign of each term in backward")
    elif numerical != 0.0 and np.isfinite(ratio := analytical / numerical) \
            and abs(ratio - round(ratio)) < 1e-3 and round(ratio) not in (0, 1):
        hints.append(f"the analytical value is {round(ratio)}x the numerical one: "
                     f"a gradient added several times, or a missing division (a mean's 1/N)?")
    hints.append("a kink (ReLU at 0, a max-pool tie, clipping) makes the numerical value meaningless "
                 "when an input sits within eps of it; move the input away from it")
    hints.append("randomness in forward (Dropout) must be replayed with a fixed mask")
    return (
        f"gradcheck of {name} failed for {label} at index {tuple(int(i) for i in index)}:\n"
        f"  analytical (from backward)        = {analytical:.10g}\n"
        f"  numerical (central differences)   = {numerical:.10g}\n"
        f"  |difference| = {abs(analytical - numerical):.3g} > allowed {atol + rtol * abs(numerical):.3g} "
        f"(atol={atol:g} + rtol={rtol:g} * |numerical|)\n"
        "Hints:\n" + "\n".join(f"  - {hint}" for hint in hints)
    )
