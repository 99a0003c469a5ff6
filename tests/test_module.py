"""Module, Parameter and Sequential: registration, traversal, modes, state dicts, device/dtype moves."""
import numpy as np
import pytest

from layers import Linear, ReLU
from nnbox import backend
from nnbox.module import Module, Parameter, Sequential


class Scale(Module):
    """y = x * w + b, with a float and an integer buffer (as BatchNorm's running stats and counter)."""

    def __init__(self, size, rng=None):
        super().__init__()
        rng = backend.as_rng(rng)
        self.w = Parameter(rng.standard_normal(size).astype(np.float32))
        self.b = Parameter(np.zeros(size, dtype=np.float32))
        self.register_buffer("running_mean", np.zeros(size, dtype=np.float32))
        self.register_buffer("num_batches", np.zeros((), dtype=np.int64))

    def forward(self, x):
        self.save_for_backward(x=x)
        return x * self.w.data + self.b.data

    def backward(self, dy):
        x = self.saved_for_backward().x
        if self.w.requires_grad:
            self.w.grad += (dy * x).sum(axis=0)
        if self.b.requires_grad:
            self.b.grad += dy.sum(axis=0)
        return dy * self.w.data


class Net(Module):
    def __init__(self, rng=None):
        super().__init__()
        self.first = Linear(3, 4, rng=rng)
        self.scale = Scale(4, rng=rng)
        self.head = Linear(4, 2, rng=rng)

    def forward(self, x):
        return self.head(self.scale(self.first(x)))

    def backward(self, dy):
        return self.first.backward(self.scale.backward(self.head.backward(dy)))


def test_registration_keeps_assignment_order(rng):
    net = Net(rng)
    assert [name for name, _ in net.named_children()] == ["first", "scale", "head"]
    assert [name for name, _ in net.named_parameters()] == [
        "first.weight", "first.bias", "scale.w", "scale.b", "head.weight", "head.bias"]
    assert [name for name, _ in net.named_buffers()] == ["scale.running_mean", "scale.num_batches"]
    assert net.parameters()[0] is net.first.weight
    assert list(net.modules()) == [net, net.first, net.scale, net.head]
    assert net.scale.running_mean is net.buffers()[0]


def test_reassigning_an_attribute_updates_the_registry(rng):
    net = Net(rng)
    net.head = Parameter(np.zeros(2))  # a child replaced by a parameter
    assert "head" not in dict(net.named_children()) and "head" in dict(net.named_parameters())
    net.head = None
    assert "head" not in dict(net.named_parameters())
    net.scale.running_mean = np.ones(4, dtype=np.float32)  # assigning a buffer keeps it a buffer
    np.testing.assert_array_equal(net.state_dict()["scale.running_mean"], np.ones(4))
    layer = Linear(2, 2, bias=False, rng=rng)
    assert [name for name, _ in layer.named_parameters()] == ["weight"]


def test_super_init_is_required():
    class Forgot(Module):
        def __init__(self):
            self.w = Parameter(np.zeros(1))

    with pytest.raises(RuntimeError, match=r"Forgot.__init__ must call super\(\).__init__\(\)"):
        Forgot()


def test_unknown_attribute_error_names_the_module():
    with pytest.raises(AttributeError, match="'Scale' object has no attribute 'nothing'"):
        Scale(2).nothing


def test_train_and_eval_propagate(rng):
    net = Sequential(Net(rng), Linear(2, 2, rng=rng))
    assert all(module.training for module in net.modules())
    assert net.eval() is net
    assert not any(module.training for module in net.modules())
    net.train()
    assert all(module.training for module in net.modules())
    net[0].train(False)
    assert net.training and not net[0].scale.training and net[1].training


def test_zero_grad_and_requires_grad(rng):
    net = Net(rng)
    x = rng.standard_normal((5, 3)).astype(np.float32)
    net(x)
    net.backward(rng.standard_normal((5, 2)).astype(np.float32))
    assert all(np.any(param.grad != 0) for param in net.parameters())
    net.zero_grad()
    assert all(np.all(param.grad == 0) for param in net.parameters())

    assert net.requires_grad_(False) is net
    assert not any(param.requires_grad for param in net.parameters())
    net(x)
    dx = net.backward(np.ones((5, 2), dtype=np.float32))
    assert dx.shape == x.shape and np.any(dx != 0)  # the input gradient still flows
    assert all(np.all(param.grad == 0) for param in net.parameters())  # frozen: nothing accumulated
    net.scale.requires_grad_(True)
    assert [p.requires_grad for p in net.parameters()] == [False, False, True, True, False, False]


def test_gradients_accumulate_until_zeroed(rng):
    layer = Linear(3, 2, rng=rng)
    x = rng.standard_normal((4, 3)).astype(np.float32)
    dy = rng.standard_normal((4, 2)).astype(np.float32)
    layer(x)
    layer.backward(dy)
    once = layer.weight.grad.copy()
    layer(x)
    layer.backward(dy)
    np.testing.assert_allclose(layer.weight.grad, 2 * once, rtol=1e-6)


def test_backward_before_forward_is_a_clear_error(rng):
    layer = Linear(3, 2, rng=rng)
    with pytest.raises(RuntimeError, match=r"Linear.backward was called before forward"):
        layer.backward(np.ones((1, 2), dtype=np.float32))
    layer(np.ones((1, 3), dtype=np.float32))
    layer.clear_saved()
    with pytest.raises(RuntimeError, match="before forward"):
        layer.backward(np.ones((1, 2), dtype=np.float32))
    with pytest.raises(NotImplementedError, match="Module does not implement forward"):
        Module()(1)


def test_state_dict_round_trip(rng):
    net = Net(rng)
    net.scale.running_mean[:] = [1, 2, 3, 4]
    net.scale.num_batches[...] = 7
    state = net.state_dict()
    assert list(state) == [name for name, _ in net.named_parameters()] + ["scale.running_mean", "scale.num_batches"]
    assert state["first.weight"] is net.first.weight.data  # no copies

    other = Net(np.random.default_rng(99))
    other.load_state_dict(state)
    for name, array in other.state_dict().items():
        np.testing.assert_array_equal(array, state[name], err_msg=name)
        assert array.dtype == state[name].dtype
        assert array is not state[name]  # copied in, not shared
    assert other.scale.num_batches == 7
    # loading casts to the module's dtype
    other.load_state_dict({name: array.astype(np.float64) if array.dtype.kind == "f" else array
                           for name, array in state.items()})
    assert other.first.weight.data.dtype == np.float32


def test_load_state_dict_missing_and_unexpected_keys_are_named(rng):
    state = Net(rng).state_dict()
    missing = dict(state)
    del missing["head.bias"]
    with pytest.raises(KeyError, match=r"missing keys \['head.bias'\], unexpected keys \[\]"):
        Net(rng).load_state_dict(missing)
    extra = dict(state, **{"head.extra": np.zeros(2)})
    with pytest.raises(KeyError, match=r"missing keys \[\], unexpected keys \['head.extra'\]"):
        Net(rng).load_state_dict(extra)
    # strict=False loads what matches
    net = Net(np.random.default_rng(5))
    net.load_state_dict(missing, strict=False)
    np.testing.assert_array_equal(net.first.weight.data, state["first.weight"])


def test_load_state_dict_shape_mismatch_names_key_and_both_shapes(rng):
    state = dict(Net(rng).state_dict())
    state["head.weight"] = np.zeros((3, 4), dtype=np.float32)
    net = Net(rng)
    before = net.first.weight.data.copy()
    with pytest.raises(ValueError, match=r"'head.weight': the module has \(2, 4\), the state dict has \(3, 4\)"):
        net.load_state_dict(state)
    np.testing.assert_array_equal(net.first.weight.data, before)  # nothing was half-loaded


@pytest.mark.parametrize("bad, message", [
    (np.array(["a", "b"]), r"'head.bias' has dtype <U1; parameters and buffers take real numbers"),
    (np.ones(2, np.complex64), r"'head.bias' has dtype complex64"),     # would have lost its imaginary part
    ([1.0, 2.0], r"'head.bias' is a list, not an array"),
])
def test_load_state_dict_refuses_values_that_are_not_real_arrays_and_changes_nothing(rng, bad, message):
    # head.weight comes before head.bias: it was assigned before bias failed (a half-loaded module)
    state = dict(Net(np.random.default_rng(9)).state_dict(), **{"head.bias": bad})
    net = Net(rng)
    before = {key: value.copy() for key, value in net.state_dict().items()}
    with pytest.raises(TypeError, match=message):
        net.load_state_dict(state)
    for key, value in net.state_dict().items():
        np.testing.assert_array_equal(value, before[key])


def test_to_float64_casts_params_grads_and_float_buffers_only(rng):
    net = Net(rng)
    assert net.to(np.float64) is net
    for name, param in net.named_parameters():
        assert param.data.dtype == np.float64 and param.grad.dtype == np.float64, name
    assert net.scale.running_mean.dtype == np.float64
    assert net.scale.num_batches.dtype == np.int64
    net.to("float32")
    assert net.first.weight.data.dtype == np.float32


def test_to_drops_saved_forward_state(rng):
    layer = Linear(3, 2, rng=rng)
    layer(np.ones((1, 3), dtype=np.float32))
    layer.to(np.float64)
    with pytest.raises(RuntimeError, match="before forward"):
        layer.backward(np.ones((1, 2)))


def test_to_bad_targets():
    with pytest.raises(ValueError, match="floating point"):
        Scale(2).to(np.int32)
    with pytest.raises(ValueError, match=r"'cuda'.*not a device"):
        Scale(2).to("cuda")


def test_to_gpu_without_cupy_names_the_extras(monkeypatch, rng):
    monkeypatch.setattr(backend, "_cupy", None)
    net = Net(rng)
    with pytest.raises(RuntimeError, match=r"CuPy.*not installed.*cuda12.*cuda13"):
        net.to("gpu")
    assert net.device == "cpu"
    assert isinstance(net.first.weight.data, np.ndarray)


def test_parameter_basics():
    param = Parameter(np.arange(6.0).reshape(2, 3))
    assert param.shape == (2, 3) and param.grad.shape == (2, 3) and param.requires_grad
    param.grad += 1
    param.zero_grad()
    assert np.all(param.grad == 0)
    assert repr(param) == "Parameter(shape=(2, 3), dtype=float64, device=cpu)"
    assert Parameter(np.zeros(1), requires_grad=False).requires_grad is False


def test_sequential_chains_forward_and_backward(rng):
    first, second = Linear(3, 4, rng=rng), Linear(4, 2, rng=rng)
    model = Sequential(first, second)
    x = rng.standard_normal((5, 3)).astype(np.float32)
    dy = rng.standard_normal((5, 2)).astype(np.float32)
    y = model(x)
    np.testing.assert_allclose(y, second(first(x)), rtol=1e-6)
    model(x)
    dx = model.backward(dy)
    np.testing.assert_allclose(dx, dy @ second.weight.data @ first.weight.data, rtol=1e-5)
    assert len(model) == 2 and model[1] is second and list(model) == [first, second]
    assert [name for name, _ in model.named_parameters()] == ["0.weight", "0.bias", "1.weight", "1.bias"]


def test_sequential_rejects_non_modules():
    with pytest.raises(TypeError, match="Sequential takes Modules, got function at position 1"):
        Sequential(Linear(2, 2), lambda x: x)


def test_repr_nests_children():
    class Described(Module):
        def __init__(self):
            super().__init__()
            self.inner = Linear(2, 3, rng=0)

        def extra_repr(self):
            return "alpha=1"

    model = Sequential(Described(), Linear(3, 1, bias=False, rng=0))
    assert repr(model) == (
        "Sequential(\n"
        "  (0): Described(\n"
        "    alpha=1\n"
        "    (inner): Linear(in_features=2, out_features=3, bias=True)\n"
        "  )\n"
        "  (1): Linear(in_features=3, out_features=1, bias=False)\n"
        ")"
    )
    assert repr(Scale(2)) == "Scale()"


@pytest.mark.gpu
def test_to_gpu_and_back(rng):
    import cupy

    net = Net(rng)
    state = {name: array.copy() for name, array in net.state_dict().items()}
    net.to("gpu")
    assert net.device == "gpu"
    assert all(isinstance(p.data, cupy.ndarray) and isinstance(p.grad, cupy.ndarray) for p in net.parameters())
    assert all(isinstance(b, cupy.ndarray) for b in net.buffers())
    y = net(cupy.asarray(rng.standard_normal((2, 3)).astype(np.float32)))
    assert isinstance(y, cupy.ndarray)
    net.to("cpu")
    for name, array in net.state_dict().items():
        np.testing.assert_array_equal(array, state[name])


def test_importing_nnbox_first_shortens_openblas_spinning():
    """nnbox sets OPENBLAS_THREAD_TIMEOUT before NumPy loads OpenBLAS (docs/performance.md); a value
    the user set is kept."""
    import os
    import subprocess
    import sys
    code = "import os, nnbox; print(os.environ['OPENBLAS_THREAD_TIMEOUT'])"
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    assert subprocess.run([sys.executable, "-c", code], env=env, cwd=root, capture_output=True,
                          text=True, check=True).stdout.strip() == "4"
    env["OPENBLAS_THREAD_TIMEOUT"] = "12"
    assert subprocess.run([sys.executable, "-c", code], env=env, cwd=root, capture_output=True,
                          text=True, check=True).stdout.strip() == "12"


def test_sequential_refuses_one_module_object_at_two_positions(rng):
    act = ReLU()
    with pytest.raises(ValueError, match=r"the same ReLU object is used at positions 1 and 3.*its own instance"):
        Sequential(Linear(3, 4, rng=rng), act, Linear(4, 4, rng=rng), act)
    inner = Linear(4, 4, rng=rng)
    with pytest.raises(ValueError, match=r"the same Linear object is used at positions 0 and 1"):
        Sequential(Sequential(inner, ReLU()), inner)
    Sequential(Linear(3, 4, rng=rng), ReLU(), Linear(4, 4, rng=rng), ReLU())    # instances of one kind: fine


def test_a_shared_parameter_is_one_parameter(rng):
    first, second = Linear(3, 3, rng=rng), Linear(3, 3, rng=rng)
    second.weight = first.weight                        # tied weights
    model = Sequential(first, ReLU(), second)
    assert len(model.parameters()) == 3 and model.parameters()[0] is first.weight
    assert list(model.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"]   # every name kept
    from nnbox.optim import Adam
    Adam(model.parameters())                            # no "appears more than once"


def test_without_side_effects_puts_everything_back(rng):
    from layers import BatchNorm1d, Dropout
    shared = np.random.default_rng(5)
    model = Sequential(Linear(3, 4, rng=rng), BatchNorm1d(4), Dropout(0.5, rng=shared), Dropout(0.5, rng=shared))
    model.eval()
    model[2].train()                                   # modes differ per module
    x = rng.standard_normal((6, 3)).astype(np.float32)
    model(x)
    saved = [m._saved for m in model.modules()]
    running = model[1].running_mean.copy()
    state = shared.bit_generator.state
    with model.without_side_effects(train=True):
        assert all(m.training for m in model.modules())
        model(x + 1)
        masks = model[2].last_mask, model[3].last_mask
        assert not np.array_equal(*masks)              # layers sharing a generator share its copy: two draws
    assert [m.training for m in model.modules()] == [False, False, False, True, False]
    assert [m._saved for m in model.modules()] == saved
    np.testing.assert_array_equal(model[1].running_mean, running)
    assert model[2].rng is shared and model[3].rng is shared and shared.bit_generator.state == state


def test_without_side_effects_writes_buffers_back_in_place(rng):
    from layers import BatchNorm1d
    norm = BatchNorm1d(4)
    running = norm.running_mean                        # a reference taken before
    with norm.without_side_effects(train=True):
        norm(rng.standard_normal((8, 4)).astype(np.float32) + 3)
    assert norm.running_mean is running and not running.any()
