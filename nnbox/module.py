"""Module, Parameter and Sequential: the containers every layer and model is built from.

A module computes `y = forward(x)` and, given the upstream gradient `dy = dL/dy`,
`dx = backward(dy)`; `backward` *adds* each parameter's gradient into `param.grad`
(gradients accumulate until `zero_grad()`, as in micrograd and PyTorch).

There is no autograd tape: `forward` saves what `backward` needs with
`save_for_backward(name=array, ...)`, and `backward` reads it back with
`saved_for_backward()`. A module therefore holds one forward's state: to apply the same kind of
layer at two places of a network, make two instances (`Sequential` refuses one object twice).
"""
import contextlib
import copy
from collections import OrderedDict
from types import SimpleNamespace

import numpy as np

from . import backend


class Parameter:
    """A trainable array: `data`, and `grad` of the same shape (accumulated by backward).

    `requires_grad = False` freezes it: layers then skip computing its gradient,
    which is how a GAN's generator step avoids the discriminator's weight gradients.
    """

    def __init__(self, data, requires_grad=True):
        self.data = data
        self.grad = backend.get_array_module(data).zeros_like(data)
        self.requires_grad = requires_grad

    @property
    def shape(self):
        return self.data.shape

    def zero_grad(self):
        self.grad.fill(0)

    def __repr__(self):
        return f"Parameter(shape={tuple(self.data.shape)}, dtype={self.data.dtype}, device={backend.device_of(self.data)})"


class Module:
    """Base class of layers, losses and models.

    Subclasses assign `Parameter`s and child `Module`s as attributes (they are
    registered by name, in order), register non-trainable state with
    `register_buffer`, and implement `forward` and `backward`.
    """

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_children", OrderedDict())
        object.__setattr__(self, "_saved", None)
        object.__setattr__(self, "training", True)

    # ----------------------------------------------------------- registration
    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise RuntimeError(f"{type(self).__name__}.__init__ must call super().__init__() before assigning attributes")
        if isinstance(value, Parameter):
            self._children.pop(name, None)
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._parameters.pop(name, None)
            self._children[name] = value
        elif name in self._buffers:
            self._buffers[name] = value
            return
        else:
            self._parameters.pop(name, None)
            self._children.pop(name, None)
        object.__setattr__(self, name, value)

    def __getattr__(self, name):
        # Only called when normal lookup fails: buffers live in self._buffers.
        buffers = self.__dict__.get("_buffers")
        if buffers is not None and name in buffers:
            return buffers[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def register_buffer(self, name, array):
        """Register non-trainable state (e.g. BatchNorm's running_mean), saved in state_dict."""
        self._buffers[name] = array

    def add_module(self, name, module):
        setattr(self, name, module)

    # ----------------------------------------------------------- traversal
    def named_parameters(self, prefix=""):
        """Yield (dotted name, Parameter) for this module and its descendants; a Parameter shared by
        two modules (tied weights) comes once per name, as state_dict needs."""
        for name, param in self._parameters.items():
            yield prefix + name, param
        for child_name, child in self._children.items():
            yield from child.named_parameters(prefix + child_name + ".")

    def parameters(self):
        """All the parameters of this module and its descendants, each once (a Parameter shared by two
        modules, tied weights, is one parameter: an optimiser must update it once), in order."""
        unique = {}
        for _, param in self.named_parameters():
            unique.setdefault(id(param), param)
        return list(unique.values())

    def named_generators(self, prefix=""):
        """Yield (dotted name, NumPy Generator) for every random generator this module and its
        descendants hold (Dropout's and the sampling layers' `rng`, ...), in order; a generator
        shared by several layers comes once per layer. What a checkpoint must save to replay them."""
        for name, _, _, value in self._random_state(prefix):
            if isinstance(value, np.random.Generator):
                yield name, value

    def _random_state(self, prefix=""):
        """(dotted name, owning module, attribute, value) of every random generator of this module and
        its descendants: NumPy Generators, and the CuPy generator a layer keeps in `_device_rng`."""
        for name, value in vars(self).items():
            if isinstance(value, np.random.Generator) or name == "_device_rng":
                yield prefix + name, self, name, value
        for child_name, child in self._children.items():
            yield from child._random_state(prefix + child_name + ".")

    def named_buffers(self, prefix=""):
        for name, array in self._buffers.items():
            yield prefix + name, array
        for child_name, child in self._children.items():
            yield from child.named_buffers(prefix + child_name + ".")

    def buffers(self):
        return [array for _, array in self.named_buffers()]

    def named_children(self):
        return iter(self._children.items())

    def children(self):
        return list(self._children.values())

    def modules(self):
        """This module and all its descendants, depth first."""
        yield self
        for child in self._children.values():
            yield from child.modules()

    # ----------------------------------------------------------- modes
    def train(self, mode=True):
        """Set the `training` flag here and in every descendant (Dropout, BatchNorm read it)."""
        for module in self.modules():
            object.__setattr__(module, "training", mode)
        return self

    def eval(self):
        return self.train(False)

    def zero_grad(self):
        for param in self.parameters():
            param.zero_grad()

    def requires_grad_(self, requires_grad=True):
        """Freeze (False) or unfreeze (True) every parameter."""
        for param in self.parameters():
            param.requires_grad = requires_grad
        return self

    # ----------------------------------------------------------- forward/backward
    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} does not implement forward")

    def backward(self, dy):
        raise NotImplementedError(f"{type(self).__name__} does not implement backward")

    def backward_parameters(self, dy):
        """Accumulate the parameters' gradients of this backward pass, skipping the gradient with
        respect to the input; returns None.

        For inputs that are data (a discriminator's images in its own step): their gradient would be
        thrown away, and for a first convolution it is a matrix product and a col2im (PyTorch skips
        it for inputs that do not require grad). This default runs the whole `backward`; layers
        whose input gradient costs work (Conv2d, ConvTranspose2d, Linear) and Sequential override it.
        """
        self.backward(dy)
        return None

    def save_for_backward(self, **arrays):
        """Keep what `backward` needs, by name (never more: memory is the cost)."""
        object.__setattr__(self, "_saved", SimpleNamespace(**arrays))

    def saved_for_backward(self):
        """What the last `forward` saved; a clear error when there was none."""
        if self._saved is None:
            raise RuntimeError(
                f"{type(self).__name__}.backward was called before forward: call the module on an "
                f"input first (y = layer(x)), then layer.backward(dy)"
            )
        return self._saved

    def clear_saved(self):
        for module in self.modules():
            object.__setattr__(module, "_saved", None)

    @contextlib.contextmanager
    def without_side_effects(self, train=False):
        """Forwards that leave no trace: inside, the module is in train(`train`) mode; afterwards
        each module's mode, the buffers' values (a training forward updates BatchNorm's running
        statistics; they are written back in place, so references to them stay valid), what the
        layers saved for backward, and their random generators are as before (draws inside come
        from copies, one per shared generator; a layer's CuPy generator, `_device_rng`, is derived
        afresh inside and put back after). Records of the latest draw (Dropout's `last_mask`, the
        sampling layers' `last_noise`) keep what was drawn inside.

            with G.without_side_effects(train=True):   # a sample grid, as the GAN trainer draws it
                images = G(z)
        """
        modules = list(self.modules())
        modes, saved = [m.training for m in modules], [m._saved for m in modules]
        buffers = [(name, array.copy()) for name, array in self.named_buffers() if array is not None]
        generators = [(owner, attribute, value) for _, owner, attribute, value in self._random_state()]
        copies = {}   # one memo: layers sharing a generator share its copy
        self.train(train)
        try:
            for module, name, value in generators:
                object.__setattr__(module, name, None if name == "_device_rng" else copy.deepcopy(value, copies))
            yield self
        finally:
            for module, name, value in generators:
                object.__setattr__(module, name, value)
            current = dict(self.named_buffers())
            for name, array in buffers:
                if current.get(name) is not None and current[name].shape == array.shape:
                    current[name][...] = array
                else:
                    self._set_buffer(name, array)
            for module, mode, state in zip(modules, modes, saved):
                object.__setattr__(module, "training", mode)
                object.__setattr__(module, "_saved", state)

    # ----------------------------------------------------------- state
    def state_dict(self):
        """An ordered dict {dotted name: array} of every parameter and buffer (no copies)."""
        state = OrderedDict((name, param.data) for name, param in self.named_parameters())
        state.update((name, array) for name, array in self.named_buffers() if array is not None)
        return state

    def load_state_dict(self, state, strict=True):
        """Copy arrays from `state` into parameters and buffers, on this module's device and dtype.

        With `strict`, a missing or unexpected key raises KeyError naming it; a shape
        mismatch always raises ValueError naming the key and both shapes, and a value that is not
        an array of real numbers TypeError naming the key. Every value is checked and converted
        before any is assigned: a failed load changes nothing.
        """
        own = self.state_dict()
        missing = [key for key in own if key not in state]
        unexpected = [key for key in state if key not in own]
        if strict and (missing or unexpected):
            raise KeyError(
                f"{type(self).__name__}.load_state_dict: missing keys {missing}, unexpected keys {unexpected}; "
                f"the state dict was saved from a different architecture"
            )
        converted = {}
        for key, current in own.items():
            if key not in state:
                continue
            value = state[key]
            if not (hasattr(value, "shape") and hasattr(value, "dtype")):
                raise TypeError(f"{type(self).__name__}.load_state_dict: {key!r} is a {type(value).__name__}, "
                                f"not an array")
            if tuple(value.shape) != tuple(current.shape):
                raise ValueError(
                    f"{type(self).__name__}.load_state_dict: shape mismatch for {key!r}: "
                    f"the module has {tuple(current.shape)}, the state dict has {tuple(value.shape)}"
                )
            if np.dtype(value.dtype).kind not in "biuf":   # complex would lose its imaginary part, text fail
                raise TypeError(f"{type(self).__name__}.load_state_dict: {key!r} has dtype {value.dtype}; "
                                f"parameters and buffers take real numbers (bool, integer or float)")
            xp = backend.get_array_module(current)
            value = backend.to_device(value, backend.device_of(current)).astype(current.dtype, copy=False)
            converted[key] = xp.array(value, copy=True)
        params = dict(self.named_parameters())
        for key, value in converted.items():
            if key in params:
                params[key].data = value
            else:
                self._set_buffer(key, value)

    def _set_buffer(self, dotted_name, value):
        *path, name = dotted_name.split(".")
        module = self
        for part in path:
            module = module._children[part]
        module._buffers[name] = value

    # ----------------------------------------------------------- device and dtype
    def to(self, target):
        """Move to a device ('cpu', 'gpu') or cast floating-point state to a dtype (np.float64, ...).

        Parameters, their gradients and buffers move; integer buffers keep their dtype.
        Saved forward state is dropped (it belongs to the old device/dtype).
        """
        convert = _converter(target)
        for module in self.modules():
            for param in module._parameters.values():
                param.data = convert(param.data)
                param.grad = convert(param.grad)
            for name, array in module._buffers.items():
                module._buffers[name] = convert(array)
            object.__setattr__(module, "_saved", None)
            module._on_to(target)
        return self

    def _on_to(self, target):
        """Hook for modules that hold other device state (e.g. a cached random generator)."""

    @property
    def device(self):
        params = self.parameters()
        return backend.device_of(params[0].data) if params else "cpu"

    # ----------------------------------------------------------- printing
    def extra_repr(self):
        return ""

    def __repr__(self):
        extra = self.extra_repr()
        if not self._children:
            return f"{type(self).__name__}({extra})"
        # as torch: the extra description on its own line, then one line per child
        lines = [f"{type(self).__name__}("]
        lines.extend("  " + line for line in extra.splitlines())
        for name, child in self._children.items():
            child_lines = repr(child).splitlines()
            lines.append(f"  ({name}): " + child_lines[0])
            lines.extend("  " + line for line in child_lines[1:])
        lines.append(")")
        return "\n".join(lines)


def _converter(target):
    """A function that moves/casts one array for Module.to and optimiser.to."""
    if isinstance(target, str) and target in backend.DEVICES:
        return lambda array: backend.to_device(array, target)
    try:
        dtype = backend.as_dtype(target)
    except TypeError:
        raise ValueError(f"to({target!r}): not a device {backend.DEVICES} nor a floating-point dtype") from None
    return lambda array: backend.to_dtype(array, dtype)


class Sequential(Module):
    """Chain modules: forward runs them in order, backward in reverse.

    Two neighbours that compute faster together run as one step with the same result up to
    rounding, when the first offers it (`fused_with(next)`, see `_steps`): nearest `Unpool2d`
    followed by a "same" convolution (layers/resize_conv.py). The children and their parameters
    stay as they are; only how the chain is computed changes.

    Example::

        model = Sequential(Linear(784, 128), ReLU(), Linear(128, 10))
        logits = model(x)
        dx = model.backward(dlogits)
    """

    def __init__(self, *modules):
        super().__init__()
        seen = {}
        for index, module in enumerate(modules):
            if not isinstance(module, Module):
                raise TypeError(f"Sequential takes Modules, got {type(module).__name__} at position {index}")
            for part in module.modules():
                if id(part) in seen:
                    # its second forward would overwrite what the first saved for backward
                    raise ValueError(
                        f"Sequential: the same {type(part).__name__} object is used at positions {seen[id(part)]} "
                        f"and {index}; a module keeps the state of one forward for its backward, so give "
                        f"each position its own instance (e.g. LeakyReLU(0.2) twice, not one object reused)")
                seen[id(part)] = index
            self.add_module(str(index), module)

    def __len__(self):
        return len(self._children)

    def __getitem__(self, index):
        return list(self._children.values())[index]

    def __iter__(self):
        return iter(self._children.values())

    def forward(self, x):
        steps = self._steps()
        for step in steps:
            x = step(x)
        self.save_for_backward(steps=steps)
        return x

    def _steps(self):
        """The children in order, where a child offers (`fused_with(next_child)`, returning a step
        with forward, backward, backward_parameters and parameters, or None) to run together with
        the next one: the same result, computed faster (e.g. layers/resize_conv.py)."""
        children, steps, index = list(self._children.values()), [], 0
        while index < len(children):
            fuse = getattr(children[index], "fused_with", None)
            fused = fuse(children[index + 1]) if fuse is not None and index + 1 < len(children) else None
            steps.append(children[index] if fused is None else fused)
            index += 1 if fused is None else 2
        return steps

    def _last_steps(self):
        """The steps of the last forward (the children, before any forward)."""
        return list(self._children.values()) if self._saved is None else self._saved.steps

    def backward(self, dy):
        for step in reversed(self._last_steps()):
            dy = step.backward(dy)
        return dy

    def backward_parameters(self, dy):
        """Backward down to the first step with a trainable parameter, which skips its input gradient;
        the steps before it (parameter-free) are not visited at all."""
        steps = self._last_steps()
        trainable = [i for i, step in enumerate(steps) if any(p.requires_grad for p in step.parameters())]
        if trainable:
            for step in reversed(steps[trainable[0] + 1:]):
                dy = step.backward(dy)
            steps[trainable[0]].backward_parameters(dy)
        return None
