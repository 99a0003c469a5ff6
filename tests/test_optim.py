"""Optimisers: parity with torch.optim for every option, exact resume from a state dict, frozen parameters."""
import itertools

import numpy as np
import pytest

from nnbox import backend
from nnbox.module import Parameter
from nnbox.optim import SGD, Adam, RMSprop
from nnbox.serialization import load_state, save_state

SHAPES = [(3, 4), (4,), (2, 3, 2)]

SGD_OPTIONS = [
    dict(lr=0.1, momentum=momentum, dampening=dampening, nesterov=nesterov, weight_decay=weight_decay)
    for momentum, dampening, nesterov, weight_decay in itertools.product((0.0, 0.9), (0.0, 0.3), (False, True), (0.0, 0.1))
    if not (nesterov and (momentum == 0 or dampening != 0))
]
ADAM_OPTIONS = [
    dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    for lr, betas, eps, weight_decay in itertools.product((1e-3, 0.05), ((0.9, 0.999), (0.5, 0.99)), (1e-8, 1e-3), (0.0, 0.1))
]
RMSPROP_OPTIONS = [
    dict(lr=0.01, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum, centered=centered)
    for alpha, eps, weight_decay, momentum, centered in itertools.product((0.99, 0.9), (1e-8, 1e-2), (0.0, 0.1), (0.0, 0.9), (False, True))
]
CASES = ([("SGD", SGD, options) for options in SGD_OPTIONS]
         + [("Adam", Adam, options) for options in ADAM_OPTIONS]
         + [("RMSprop", RMSprop, options) for options in RMSPROP_OPTIONS])
CASE_IDS = [f"{name}-" + "-".join(f"{k}={v}" for k, v in options.items()) for name, _, options in CASES]


def make_params(rng, dtype=np.float64):
    return [Parameter(rng.standard_normal(shape).astype(dtype)) for shape in SHAPES]


def gradient_sequence(rng, steps):
    """A fixed random gradient for every parameter at every step."""
    return [[rng.standard_normal(shape) for shape in SHAPES] for _ in range(steps)]


def run_steps(optimizer, params, grads):
    for step_grads in grads:
        optimizer.zero_grad()
        for param, grad in zip(params, step_grads):
            param.grad += grad
        optimizer.step()


@pytest.mark.parametrize("name, cls, options", CASES, ids=CASE_IDS)
def test_five_steps_match_torch(torch, name, cls, options, rng):
    params = make_params(rng)
    grads = gradient_sequence(rng, 5)
    tensors = [torch.tensor(p.data.copy(), requires_grad=True) for p in params]
    torch_opt = getattr(torch.optim, name)(tensors, **options)
    opt = cls(params, **options)
    for step_grads in grads:
        for tensor, grad in zip(tensors, step_grads):
            tensor.grad = torch.tensor(grad)
        torch_opt.step()
        run_steps(opt, params, [step_grads])
        for param, tensor in zip(params, tensors):
            np.testing.assert_allclose(param.data, tensor.detach().numpy(), rtol=1e-12, atol=1e-14)


def test_optimiser_state_matches_torch_state(torch, rng):
    """The moments themselves, not only the parameters, are torch's."""
    params = make_params(rng)
    grads = gradient_sequence(rng, 3)
    tensors = [torch.tensor(p.data.copy(), requires_grad=True) for p in params]
    torch_opt = torch.optim.Adam(tensors, lr=0.01, weight_decay=0.1)
    opt = Adam(params, lr=0.01, weight_decay=0.1)
    for step_grads in grads:
        for tensor, grad in zip(tensors, step_grads):
            tensor.grad = torch.tensor(grad)
        torch_opt.step()
    run_steps(opt, params, grads)
    for index, tensor in enumerate(tensors):
        torch_state = torch_opt.state[tensor]
        assert opt.state[index]["step"] == int(torch_state["step"]) == 3
        np.testing.assert_allclose(opt.state[index]["exp_avg"], torch_state["exp_avg"].numpy(), rtol=1e-13)
        np.testing.assert_allclose(opt.state[index]["exp_avg_sq"], torch_state["exp_avg_sq"].numpy(), rtol=1e-13)


@pytest.mark.parametrize("name, cls, options", CASES[::3], ids=CASE_IDS[::3])
@pytest.mark.parametrize("through_file", [False, True])
def test_resume_from_state_dict_is_exact(name, cls, options, through_file, rng, tmp_path):
    params_straight = make_params(rng)
    params_resumed = [Parameter(p.data.copy()) for p in params_straight]
    grads = gradient_sequence(rng, 5)

    run_steps(cls(params_straight, **options), params_straight, grads)

    first = cls(params_resumed, **options)
    run_steps(first, params_resumed, grads[:3])
    state = first.state_dict()
    if through_file:
        save_state(tmp_path / "opt.npz", state)
        state = load_state(tmp_path / "opt.npz")
    else:
        state = {key: value.copy() if hasattr(value, "copy") else value for key, value in state.items()}
    del first
    # a fresh optimiser, built with different hyperparameters: load_state_dict restores the saved ones
    second = cls(params_resumed, lr=123.0)
    second.load_state_dict(state)
    assert second.lr == options["lr"]
    run_steps(second, params_resumed, grads[3:])
    for straight, resumed in zip(params_straight, params_resumed):
        np.testing.assert_array_equal(straight.data, resumed.data)


@pytest.mark.parametrize("cls, options", [(SGD, dict(lr=0.1, momentum=0.9)), (Adam, {}), (RMSprop, dict(momentum=0.5, centered=True))])
def test_state_dict_values_are_plain_numbers_and_arrays(cls, options, rng):
    params = make_params(rng)
    opt = cls(params, **options)
    run_steps(opt, params, gradient_sequence(rng, 2))
    state = opt.state_dict()
    for key, value in state.items():
        assert isinstance(key, str)
        assert isinstance(value, (int, float, bool, np.ndarray)), (key, type(value))
        if isinstance(value, np.ndarray):
            assert value.dtype != object
    assert state["param.0.step"] == 2


def test_frozen_parameters_are_skipped(rng):
    params = make_params(rng)
    params[1].requires_grad = False
    frozen_before = params[1].data.copy()
    opt = Adam(params, lr=0.1)
    for param in params:
        param.grad += 1.0
    opt.step()
    np.testing.assert_array_equal(params[1].data, frozen_before)
    assert opt.state[1] == {}
    assert opt.state[0]["step"] == 1
    # unfrozen later, it starts its own step count at 1 (as torch, whose state is per parameter)
    params[1].requires_grad = True
    opt.step()
    assert opt.state[0]["step"] == 2 and opt.state[1]["step"] == 1
    assert not np.array_equal(params[1].data, frozen_before)


def test_step_updates_in_place_without_new_arrays(rng):
    params = make_params(rng, np.float32)
    opt = Adam(params, lr=0.1, weight_decay=0.01)
    run_steps(opt, params, gradient_sequence(rng, 1))
    data_ids = [id(p.data) for p in params]
    state_ids = [(id(s["exp_avg"]), id(s["exp_avg_sq"])) for s in opt.state]
    scratch_ids = [id(s[0]) for s in opt._scratch]
    run_steps(opt, params, gradient_sequence(rng, 2))
    assert [id(p.data) for p in params] == data_ids
    assert [(id(s["exp_avg"]), id(s["exp_avg_sq"])) for s in opt.state] == state_ids
    assert [id(s[0]) for s in opt._scratch] == scratch_ids
    assert all(p.data.dtype == np.float32 for p in params)
    assert all(s["exp_avg"].dtype == np.float32 for s in opt.state)


def test_float32_step_is_close_to_float64(rng):
    params64 = make_params(rng)
    params32 = [Parameter(p.data.astype(np.float32)) for p in params64]
    grads = gradient_sequence(rng, 5)
    run_steps(RMSprop(params64, momentum=0.9, centered=True, weight_decay=0.1), params64, grads)
    run_steps(RMSprop(params32, momentum=0.9, centered=True, weight_decay=0.1), params32, grads)
    for p64, p32 in zip(params64, params32):
        assert p32.data.dtype == np.float32
        np.testing.assert_allclose(p32.data, p64.data, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_adam_on_large_parameters_is_split_over_threads_without_changing_the_result(weight_decay, rng):
    """Large parameters are updated in pieces on several threads (nnbox.parallel): the pieces' results
    equal the one-thread update bit for bit, and that follows the docstring's formula."""
    from nnbox import parallel
    size = 4 * parallel.MIN_SIZE + 3                 # enough for every thread to get a piece
    start = rng.standard_normal(size).astype(np.float32)
    grads = [rng.standard_normal(size).astype(np.float32) for _ in range(3)]
    results = {}
    for threads in (1, 4):
        previous = parallel.set_threads(threads)
        try:
            param = Parameter(start.copy())
            opt = Adam([param], lr=0.01, betas=(0.5, 0.999), weight_decay=weight_decay)
            for grad in grads:
                param.grad[...] = grad
                opt.step()
            results[threads] = param.data
        finally:
            parallel.set_threads(previous)
    np.testing.assert_array_equal(results[4], results[1])
    p, m, v = start.astype(np.float64), 0.0, 0.0
    for t, grad in enumerate(grads, start=1):
        g = grad + weight_decay * p
        m, v = 0.5 * m + 0.5 * g, 0.999 * v + 0.001 * g * g
        p = p - 0.01 / (1 - 0.5**t) * m / (np.sqrt(v) / np.sqrt(1 - 0.999**t) + 1e-8)
    np.testing.assert_allclose(results[1], p, rtol=1e-5, atol=1e-5)


def test_gradients_are_not_modified_by_weight_decay(rng):
    params = make_params(rng)
    grads = gradient_sequence(rng, 1)
    for cls in (SGD, Adam, RMSprop):
        opt = cls(params, lr=0.1, weight_decay=0.5)
        run_steps(opt, params, grads)
        for param, grad in zip(params, grads[0]):
            np.testing.assert_array_equal(param.grad, grad)


def test_to_dtype_moves_the_state(rng):
    params = make_params(rng)
    opt = Adam(params)
    run_steps(opt, params, gradient_sequence(rng, 1))
    for param in params:
        param.data = param.data.astype(np.float32)
        param.grad = param.grad.astype(np.float32)
    with pytest.raises(RuntimeError, match=r"optimizer\.to"):
        opt.step()
    opt.to(np.float32)
    assert all(s["exp_avg"].dtype == np.float32 for s in opt.state)
    opt.step()
    assert all(p.data.dtype == np.float32 for p in params)


def test_to_gpu_without_cupy_names_the_extras(monkeypatch, rng):
    params = make_params(rng)
    opt = SGD(params, lr=0.1, momentum=0.9)
    run_steps(opt, params, gradient_sequence(rng, 1))
    monkeypatch.setattr(backend, "_cupy", None)
    with pytest.raises(RuntimeError, match=r"cuda12.*cuda13"):
        opt.to("gpu")


def test_load_state_dict_errors(rng):
    params = make_params(rng)
    opt = Adam(params)
    run_steps(opt, params, gradient_sequence(rng, 1))
    state = opt.state_dict()
    with pytest.raises(ValueError, match="3 parameters, this optimiser has 2"):
        Adam(params[:2]).load_state_dict(state)
    other = [Parameter(np.zeros((4, 3))), params[1], params[2]]
    with pytest.raises(ValueError, match=r"'param\.0\.exp_avg'.*\(4, 3\).*\(3, 4\)"):
        Adam(other).load_state_dict(state)
    with pytest.raises(KeyError, match="missing hyperparameters"):
        SGD(params, lr=0.1).load_state_dict(state)


@pytest.mark.parametrize("cls, options, dropped", [
    (Adam, {}, "exp_avg_sq"),
    (SGD, dict(lr=0.1, momentum=0.9), "momentum_buffer"),
    (RMSprop, dict(centered=True), "grad_avg"),
    (RMSprop, {}, "step"),
])
def test_an_incomplete_state_dict_is_refused_at_load_not_at_the_next_step(cls, options, dropped, rng):
    params = make_params(rng)
    opt = cls(params, **options)
    run_steps(opt, params, gradient_sequence(rng, 1))
    state = opt.state_dict()
    del state[f"param.1.{dropped}"]
    fresh = cls(params, **{**options, "lr": 0.5})
    with pytest.raises(KeyError, match=rf"'param\.1\.{dropped}' is missing"):
        fresh.load_state_dict(state)
    assert fresh.lr == 0.5 and all(not entry for entry in fresh.state)     # left as it was


def test_invalid_options_raise():
    params = [Parameter(np.zeros(3))]
    with pytest.raises(ValueError, match="Nesterov"):
        SGD(params, lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="betas"):
        Adam(params, betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="lr must be >= 0"):
        RMSprop(params, lr=-1.0)
    with pytest.raises(ValueError, match="empty"):
        Adam([])
    with pytest.raises(TypeError, match="Parameters"):
        Adam([np.zeros(3)])


def test_accepts_a_module():
    from layers import Linear

    layer = Linear(3, 2, rng=0)
    opt = SGD(layer, lr=0.1)
    assert opt.params == layer.parameters()


@pytest.mark.gpu
@pytest.mark.parametrize("cls, options", [(SGD, dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.1)),
                                          (Adam, dict(weight_decay=0.1)),
                                          (RMSprop, dict(momentum=0.9, centered=True, weight_decay=0.1))])
def test_gpu_matches_cpu(cls, options, rng):
    import cupy

    params_cpu = make_params(rng)
    params_gpu = [Parameter(cupy.asarray(p.data)) for p in params_cpu]
    grads = gradient_sequence(rng, 3)
    run_steps(cls(params_cpu, **options), params_cpu, grads)
    opt = cls(params_gpu, **options)
    run_steps(opt, params_gpu, [[cupy.asarray(g) for g in step] for step in grads])
    assert all(isinstance(value, cupy.ndarray) for state in opt.state for value in state.values() if hasattr(value, "dtype"))
    for cpu, gpu in zip(params_cpu, params_gpu):
        np.testing.assert_allclose(cupy.asnumpy(gpu.data), cpu.data, rtol=1e-12, atol=1e-14)
