"""Optimisers: SGD (with momentum and Nesterov), Adam and RMSprop, with PyTorch's exact update rules.

An optimiser holds a list of `Parameter`s and, after `backward` has filled their `grad`,
updates `param.data` in place::

    opt = Adam(model.parameters(), lr=2e-4, betas=(0.5, 0.999))
    model.zero_grad()                 # or opt.zero_grad()
    dx = model.backward(loss_grad)
    opt.step()

Parameters with `requires_grad = False` are skipped at each step (a GAN freezes D
during G's step). State (moments, momentum buffers, step counts) is created at
the first step with the parameter's own array module, dtype and device, and is
updated in place with `out=` arguments and one (RMSprop with weight decay: two)
reusable work arrays per parameter: after the first, a step allocates no arrays
the size of the parameters. Scalars are Python floats, so float32 parameters
are updated in float32.

`state_dict()` returns a flat dict of plain numbers and arrays (saveable with
`nnbox.serialization` without pickle); `load_state_dict` restores it so that a
resumed run continues exactly. Hyperparameters are part of the state, as in
PyTorch: loading overwrites `lr` etc. with the saved values.
"""
import math
from collections import OrderedDict

import numpy as np

from . import backend, gpu_kernels, parallel
from .module import Module, Parameter, _converter


class Optimizer:
    """Base class: keeps the parameters, their per-parameter state and the hyperparameters.

    Subclasses set `hyperparameters` (the attribute names saved in the state dict),
    `state_arrays` (every per-parameter array name a state dict may hold; `_required_state()` lists
    those the current settings create, at the first update) and
    implement `_update(param, state, *scratch)` (scratch: `_scratch_count()` work arrays).
    """

    hyperparameters = ("lr",)

    def __init__(self, params):
        if isinstance(params, Module):
            params = params.parameters()
        self.params = list(params)
        if not self.params:
            raise ValueError(f"{type(self).__name__} got an empty parameter list")
        for index, param in enumerate(self.params):
            if not isinstance(param, Parameter):
                raise TypeError(
                    f"{type(self).__name__} takes nnbox Parameters (model.parameters()), "
                    f"got {type(param).__name__} at position {index}")
        if len({id(param) for param in self.params}) != len(self.params):
            raise ValueError(f"{type(self).__name__}: a parameter appears more than once in the list")
        # per parameter: {"step": int, name: array, ...}; empty until the first update
        self.state = [{} for _ in self.params]
        # per parameter: reusable work arrays (not part of the state dict)
        self._scratch = [None for _ in self.params]

    # ----------------------------------------------------------- the update
    def zero_grad(self):
        """Set the gradient of every parameter to zero (gradients accumulate until then)."""
        for param in self.params:
            param.zero_grad()

    def step(self):
        """Update every parameter that requires a gradient, from its current `grad`."""
        for index, param in enumerate(self.params):
            if not param.requires_grad:
                continue
            state = self.state[index]
            if not state:
                state["step"] = 0
                self._init_state(param, state)
            else:
                self._check_state_matches(index, param, state)
            state["step"] += 1
            self._update(param, state, *self._scratch_for(index, param))

    def _required_state(self):
        """The names of the arrays every updated parameter has, with the current settings."""
        return ()

    def _init_state(self, param, state):
        """Create the per-parameter arrays: `_required_state()`'s, zeros shaped like the parameter."""
        xp = backend.get_array_module(param.data)
        for entry in self._required_state():
            state[entry] = xp.zeros_like(param.data)

    def _update(self, param, state, *scratch):
        raise NotImplementedError(f"{type(self).__name__} does not implement _update")

    def _scratch_count(self):
        """How many work arrays shaped like a parameter `_update` needs."""
        return 1

    def _scratch_for(self, index, param):
        scratch = self._scratch[index]
        data = param.data
        xp = backend.get_array_module(data)
        if (scratch is None or len(scratch) != self._scratch_count() or scratch[0].shape != data.shape
                or scratch[0].dtype != data.dtype or backend.get_array_module(scratch[0]) is not xp):
            scratch = [xp.empty_like(data) for _ in range(self._scratch_count())]
            self._scratch[index] = scratch
        return scratch

    def _check_state_matches(self, index, param, state):
        for name, array in state.items():
            if not hasattr(array, "dtype"):
                continue
            if backend.device_of(array) != backend.device_of(param.data) or array.dtype != param.data.dtype:
                raise RuntimeError(
                    f"{type(self).__name__}: the state {name!r} of parameter {index} is a "
                    f"{array.dtype} array on {backend.device_of(array)}, but the parameter is "
                    f"{param.data.dtype} on {backend.device_of(param.data)}; after model.to(...), "
                    f"call optimizer.to(...) with the same target")
            if array.shape != param.data.shape:
                raise RuntimeError(
                    f"{type(self).__name__}: the state {name!r} of parameter {index} has shape "
                    f"{tuple(array.shape)}, the parameter {tuple(param.data.shape)}")

    @staticmethod
    def _weight_decayed_grad(data, grad, weight_decay, scratch):
        """grad + weight_decay * data (L2 regularisation, as torch), in `scratch`; or grad itself."""
        if not weight_decay:
            return grad
        xp = backend.get_array_module(data)
        xp.multiply(data, weight_decay, out=scratch)
        scratch += grad
        return scratch

    # ----------------------------------------------------------- device and dtype
    def to(self, target):
        """Move the state to a device ('cpu', 'gpu') or cast it to a float dtype, as Module.to."""
        convert = _converter(target)
        for state in self.state:
            for name, value in state.items():
                if hasattr(value, "dtype"):
                    state[name] = convert(value)
        self._scratch = [None for _ in self.params]
        return self

    # ----------------------------------------------------------- state
    def state_dict(self):
        """A flat dict of numbers and arrays: the hyperparameters, then 'param.<i>.<name>' per parameter.

        Arrays are the live state (no copies); save them before the next step changes them.
        """
        out = OrderedDict()
        out["num_params"] = len(self.params)
        for name in self.hyperparameters:
            value = getattr(self, name)
            out[name] = np.asarray(value, dtype=np.float64) if isinstance(value, tuple) else value
        for index, state in enumerate(self.state):
            for name, value in state.items():
                out[f"param.{index}.{name}"] = value
        return out

    def load_state_dict(self, state_dict):
        """Restore hyperparameters, step counts and state arrays (on each parameter's device and dtype).

        Numbers may come back as 0-d arrays (as from an .npz file). A state dict of another
        parameter list (a different count or shape) raises ValueError naming the key.
        """
        name = type(self).__name__
        if "num_params" not in state_dict:
            raise KeyError(f"{name}.load_state_dict: the state dict has no 'num_params': "
                           f"it is not an optimiser state dict")
        count = int(state_dict["num_params"])
        if count != len(self.params):
            raise ValueError(f"{name}.load_state_dict: the state dict is for {count} parameters, "
                             f"this optimiser has {len(self.params)}")
        missing = [key for key in self.hyperparameters if key not in state_dict]
        if missing:
            raise KeyError(f"{name}.load_state_dict: missing hyperparameters {missing}; "
                           f"was the state dict saved from another optimiser?")
        new_state = [{} for _ in self.params]
        for key, value in state_dict.items():
            if key == "num_params" or key in self.hyperparameters:
                continue
            parts = key.split(".")
            if len(parts) != 3 or parts[0] != "param" or not parts[1].isdigit() or int(parts[1]) >= count:
                raise KeyError(f"{name}.load_state_dict: unexpected key {key!r}")
            index, entry = int(parts[1]), parts[2]
            param = self.params[index]
            if entry == "step":
                new_state[index]["step"] = int(value)
                continue
            if entry not in self.state_arrays:
                raise KeyError(f"{name}.load_state_dict: unexpected key {key!r}; "
                               f"{name} keeps {list(self.state_arrays)}")
            if tuple(value.shape) != tuple(param.data.shape):
                raise ValueError(f"{name}.load_state_dict: shape mismatch for {key!r}: the parameter has "
                                 f"{tuple(param.data.shape)}, the state dict has {tuple(value.shape)}")
            xp = backend.get_array_module(param.data)
            value = backend.to_device(value, backend.device_of(param.data))
            new_state[index][entry] = xp.array(value, dtype=param.data.dtype, copy=True)
        previous = {key: getattr(self, key) for key in self.hyperparameters}
        for key in self.hyperparameters:
            current, value = previous[key], state_dict[key]
            if isinstance(current, tuple):
                value = tuple(float(v) for v in np.asarray(value).reshape(-1))
            elif isinstance(current, bool):
                value = bool(value)
            else:
                value = float(value)
            setattr(self, key, value)
        required = self._required_state()     # with the loaded settings (RMSprop's centered, ...)
        for index, state in enumerate(new_state):
            missing = ([] if "step" in state else ["step"]) + [entry for entry in required if entry not in state]
            if state and missing:
                for key, value in previous.items():      # leave the optimiser as it was
                    setattr(self, key, value)
                raise KeyError(f"{name}.load_state_dict: 'param.{index}.{missing[0]}' is missing ({name} with "
                               f"these settings keeps step and {list(required)} per updated parameter)")
        self.state = new_state
        self._scratch = [None for _ in self.params]

    def __repr__(self):
        options = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.hyperparameters)
        return f"{type(self).__name__}({len(self.params)} parameters, {options})"


def _check_non_negative(owner, **values):
    for name, value in values.items():
        if value < 0:
            raise ValueError(f"{owner}: {name} must be >= 0, got {value}")


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum, Nesterov momentum and L2 weight decay.

    Args:
        params: the parameters (a list, or a Module).
        lr: the learning rate.
        momentum: the momentum factor (0: plain SGD).
        dampening: scales the new gradient in the momentum buffer.
        nesterov: use Nesterov momentum (needs momentum > 0 and dampening = 0).
        weight_decay: L2 penalty, added to the gradient.

    Update, exactly as torch.optim.SGD, with g = grad + weight_decay * p:
        b = g at the first step, else b = momentum * b + (1 - dampening) * g
        d = g + momentum * b (nesterov) or b (momentum > 0) or g
        p = p - lr * d
    """

    hyperparameters = ("lr", "momentum", "dampening", "nesterov", "weight_decay")
    state_arrays = ("momentum_buffer",)

    def __init__(self, params, lr, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0):
        super().__init__(params)
        _check_non_negative("SGD", lr=lr, momentum=momentum, weight_decay=weight_decay)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("SGD: Nesterov momentum needs momentum > 0 and dampening = 0")
        self.lr, self.momentum, self.dampening = float(lr), float(momentum), float(dampening)
        self.nesterov, self.weight_decay = bool(nesterov), float(weight_decay)

    def _required_state(self):
        return ("momentum_buffer",) if self.momentum else ()

    def _init_state(self, param, state):
        """Nothing yet: torch starts the momentum buffer at the first gradient (see `_update`)."""

    def _update(self, param, state, scratch):
        xp = backend.get_array_module(param.data)
        g = self._weight_decayed_grad(param.data, param.grad, self.weight_decay, scratch)
        if not self.momentum:
            xp.multiply(g, -self.lr, out=scratch)
            param.data += scratch
            return
        buf = state.get("momentum_buffer")
        if buf is None:  # torch starts the buffer at the first gradient, undamped
            state["momentum_buffer"] = buf = g.copy()
        else:
            buf *= self.momentum
            if self.dampening:
                xp.multiply(g, 1.0 - self.dampening, out=scratch)
                buf += scratch
            else:
                buf += g
        if self.nesterov:  # p -= lr * (g + momentum * buf), as two in-place steps
            xp.multiply(g, -self.lr, out=scratch)
            param.data += scratch
            xp.multiply(buf, -self.lr * self.momentum, out=scratch)
        else:
            xp.multiply(buf, -self.lr, out=scratch)
        param.data += scratch


class Adam(Optimizer):
    """Adam (Kingma and Ba, 2015) with L2 weight decay added to the gradient, as torch.optim.Adam.

    Args:
        params: the parameters (a list, or a Module).
        lr: the learning rate.
        betas: decay rates (beta1, beta2) of the first and second moment estimates.
        eps: added to the denominator for numerical stability.
        weight_decay: L2 penalty, added to the gradient (not decoupled as in AdamW).

    Update at step t, exactly as torch.optim.Adam, with g = grad + weight_decay * p:
        m = beta1 m + (1 - beta1) g,   v = beta2 v + (1 - beta2) g^2
        p = p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
    """

    hyperparameters = ("lr", "betas", "eps", "weight_decay")
    state_arrays = ("exp_avg", "exp_avg_sq")

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params)
        _check_non_negative("Adam", lr=lr, eps=eps, weight_decay=weight_decay)
        if len(betas) != 2 or not all(0.0 <= beta < 1.0 for beta in betas):
            raise ValueError(f"Adam: betas must be two numbers in [0, 1), got {betas}")
        self.lr, self.betas = float(lr), (float(betas[0]), float(betas[1]))
        self.eps, self.weight_decay = float(eps), float(weight_decay)

    def _required_state(self):
        return self.state_arrays

    def _scratch_for(self, index, param):
        if backend.get_array_module(param.data) is not np:
            return [None]   # the fused CuPy kernel needs no work array: none is kept (a third of the state)
        return super()._scratch_for(index, param)

    def _update(self, param, state, scratch):
        xp = backend.get_array_module(param.data)
        beta1, beta2 = self.betas
        step = state["step"]
        m, v = state["exp_avg"], state["exp_avg_sq"]
        root_bc2 = math.sqrt(1.0 - beta2**step)
        step_size = -self.lr * root_bc2 / (1.0 - beta1**step)
        if xp is not np:   # CuPy: the same update as below, fused into one kernel launch
            gpu_kernels.adam_update(param.data, param.grad, m, v, beta1, beta2, self.eps * root_bc2, step_size,
                                    self.weight_decay)
            return
        arrays = (param.data, param.grad, m, v, scratch)
        if not all(array.flags.c_contiguous for array in arrays):   # (pieces of flat views need these)
            self._update_numpy(*arrays, root_bc2, step_size)
            return
        # the passes below are element-wise: split the flat arrays over the cores (nnbox.parallel);
        # both networks of the 64x64 DCGAN (6.3M parameters): 25.5 -> 13.9 ms per step on 2 cores
        flat = [array.reshape(-1) for array in arrays]
        parallel.run(flat[0].size, lambda a, b: self._update_numpy(*(f[a:b] for f in flat), root_bc2, step_size),
                     size=flat[0].size, xp=np)

    def _update_numpy(self, p, grad, m, v, scratch, root_bc2, step_size):
        """The update of the class docstring on NumPy arrays (or matching pieces of them), in place."""
        beta1, beta2 = self.betas
        g = self._weight_decayed_grad(p, grad, self.weight_decay, scratch)
        # m = beta1 m + (1 - beta1) g  ==  beta1 (m - g) + g: in place, no work array
        m -= g
        m *= beta1
        m += g
        v *= beta2
        np.multiply(g, g, out=scratch)  # g is not needed after this (it may live in scratch)
        scratch *= 1.0 - beta2
        v += scratch
        # lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps) == (lr sqrt(bc2)/bc1) * m / (sqrt(v) + eps sqrt(bc2)):
        # the same update with one pass fewer
        np.sqrt(v, out=scratch)
        scratch += self.eps * root_bc2
        np.divide(m, scratch, out=scratch)
        scratch *= step_size
        p += scratch


class RMSprop(Optimizer):
    """RMSprop (Hinton), optionally centred and with momentum, as torch.optim.RMSprop.

    Args:
        params: the parameters (a list, or a Module).
        lr: the learning rate.
        alpha: the smoothing constant of the running mean of squared gradients.
        eps: added to the denominator for numerical stability.
        weight_decay: L2 penalty, added to the gradient.
        momentum: the momentum factor (0: none).
        centered: divide by an estimate of the gradient's standard deviation instead of its RMS.

    Update, with g = grad + weight_decay * p (all buffers start at zero):
        s = alpha s + (1 - alpha) g^2
        centred: a = alpha a + (1 - alpha) g,  d = sqrt(s - a^2) + eps;  else d = sqrt(s) + eps
        momentum: b = momentum b + g / d,  p = p - lr b;   else p = p - lr g / d
    """

    hyperparameters = ("lr", "alpha", "eps", "weight_decay", "momentum", "centered")
    state_arrays = ("square_avg", "grad_avg", "momentum_buffer")

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False):
        super().__init__(params)
        _check_non_negative("RMSprop", lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum)
        self.lr, self.alpha, self.eps = float(lr), float(alpha), float(eps)
        self.weight_decay, self.momentum, self.centered = float(weight_decay), float(momentum), bool(centered)

    def _scratch_count(self):
        # with weight decay the decayed gradient occupies the first work array
        return 2 if self.weight_decay else 1

    def _required_state(self):
        return ("square_avg",) + ("grad_avg",) * self.centered + ("momentum_buffer",) * bool(self.momentum)

    def _update(self, param, state, *scratch):
        xp = backend.get_array_module(param.data)
        g = self._weight_decayed_grad(param.data, param.grad, self.weight_decay, scratch[0])
        work = scratch[-1]
        square_avg = state["square_avg"]
        square_avg *= self.alpha
        xp.multiply(g, g, out=work)
        work *= 1.0 - self.alpha
        square_avg += work
        if self.centered:
            grad_avg = self._state_array(param, state, "grad_avg")
            grad_avg -= g  # a = alpha (a - g) + g, in place
            grad_avg *= self.alpha
            grad_avg += g
            xp.multiply(grad_avg, grad_avg, out=work)
            xp.subtract(square_avg, work, out=work)
            xp.sqrt(work, out=work)
        else:
            xp.sqrt(square_avg, out=work)
        work += self.eps
        xp.divide(g, work, out=work)
        if self.momentum:
            buf = self._state_array(param, state, "momentum_buffer")
            buf *= self.momentum
            buf += work
            xp.multiply(buf, -self.lr, out=work)
        else:
            work *= -self.lr
        param.data += work

    @staticmethod
    def _state_array(param, state, name):
        """A buffer that may be missing when `centered`/`momentum` were switched on after step 1."""
        if name not in state:
            state[name] = backend.get_array_module(param.data).zeros_like(param.data)
        return state[name]
