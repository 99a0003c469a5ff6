"""SpectralNorm: gradient checks (eval, and train at a converged power iteration), torch parity against
torch.nn.utils.spectral_norm with the same u, v and dim (outputs, sigma, gradients, buffers over several
steps), convergence to the largest singular value, the two-pass backward of GAN training, errors, GPU."""
import numpy as np
import pytest

from layers import Linear, SpectralNorm
from layers.conv import Conv2d, ConvTranspose2d
from nnbox.gradcheck import gradcheck


# (name, constructor of the nnbox layer, input shape, the torch class and its arguments)
def _linear(rng):
    return Linear(5, 3, rng=rng)


def _linear_no_bias(rng):
    return Linear(5, 3, bias=False, rng=rng)


def _conv(rng):
    return Conv2d(2, 3, 3, stride=1, padding=1, rng=rng)


def _conv_transpose(rng):
    return ConvTranspose2d(3, 2, 3, stride=2, padding=1, rng=rng)


CASES = {
    "linear": (_linear, (4, 5), "Linear", (5, 3)),
    "linear_batch1": (_linear, (1, 5), "Linear", (5, 3)),
    "linear_no_bias": (_linear_no_bias, (4, 5), "Linear", (5, 3, False)),
    "conv2d": (_conv, (2, 2, 5, 4), "Conv2d", (2, 3, 3, 1, 1)),
    "conv_transpose2d": (_conv_transpose, (1, 3, 3, 4), "ConvTranspose2d", (3, 2, 3, 2, 1)),
}


ALL_CASES = [pytest.param(name, id=name) for name in CASES]
# (case, dim): every case with its default dim (None), and each layer normalised along its other axis
# (dim 1 of a Linear or Conv2d weight, dim 0 of a ConvTranspose2d weight: in_channels)
WITH_DIMS = [pytest.param(name, None, id=name) for name in CASES] + [
    pytest.param(name, dim, id=f"{name}-dim{dim}") for name, dim in
    (("linear", 1), ("conv2d", 1), ("conv_transpose2d", 0))]


def make(name, seed=0, **kwargs):
    build, shape, _, _ = CASES[name]
    layer = build(np.random.default_rng(seed))
    return SpectralNorm(layer, rng=seed + 1, **kwargs).to(np.float64), shape


def converge(wrapped, steps=300):
    """Run the power iteration to its fixed point (training forwards of a dummy input are not needed)."""
    for _ in range(steps):
        wrapped._power_iteration()
    return wrapped


def torch_twin(torch, wrapped, name):
    """torch's layer with our weight, bias, u and v, wrapped by torch.nn.utils.spectral_norm with our
    dim, float64."""
    _, _, torch_name, args = CASES[name]
    twin = getattr(torch.nn, torch_name)(*args).double()
    with torch.no_grad():
        twin.weight.copy_(torch.tensor(wrapped.weight_orig.data))
        if wrapped.module.bias is not None:
            twin.bias.copy_(torch.tensor(wrapped.module.bias.data))
    twin = torch.nn.utils.spectral_norm(twin, n_power_iterations=wrapped.n_power_iterations, eps=wrapped.eps,
                                        dim=wrapped.dim)
    with torch.no_grad():
        twin.weight_u.copy_(torch.tensor(wrapped.u))
        twin.weight_v.copy_(torch.tensor(wrapped.v))
    return twin


# ---------------------------------------------------------------- gradient checks
@pytest.mark.parametrize("name, dim", WITH_DIMS)
def test_gradcheck_eval(name, dim, rng):
    wrapped, shape = make(name, dim=dim)
    wrapped.eval()
    u, v = wrapped.u.copy(), wrapped.v.copy()
    report = gradcheck(wrapped, rng.standard_normal(shape), rng=rng)
    bias = set() if wrapped.module.bias is None else {"parameter 'module.bias'"}
    assert set(report.checked_entries) == {"input 0", "parameter 'weight_orig'"} | bias
    np.testing.assert_array_equal(wrapped.u, u)     # eval never moves u, v
    np.testing.assert_array_equal(wrapped.v, v)


@pytest.mark.parametrize("name, dim", WITH_DIMS)
def test_gradcheck_train_at_converged_power_iteration(name, dim, rng):
    """In training every forward takes a power step. At its fixed point (u, v the top singular vectors)
    a step moves them by O(perturbation) only, and sigma is stationary in u and v, so the function the
    finite differences see is W / ||W||_2 and its derivative is the formula that treats u, v as constants."""
    wrapped, shape = make(name, dim=dim)
    converge(wrapped.train())
    report = gradcheck(wrapped, rng.standard_normal(shape), rng=rng)
    assert report.checked_entries["parameter 'weight_orig'"] == wrapped.weight_orig.data.size


def test_gradient_formula_worked_example():
    """dL/dW = (G - sum(G * W_sn) u v^T) / sigma, written out for a 2x2 weight."""
    layer = Linear(2, 2, bias=False)
    layer.weight.data = np.array([[3.0, 0.0], [0.0, 1.0]])
    wrapped = SpectralNorm(layer).eval()
    wrapped.u[...] = [1.0, 0.0]
    wrapped.v[...] = [1.0, 0.0]
    assert wrapped.sigma == 3.0
    x = np.array([[1.0, 2.0]])
    np.testing.assert_allclose(wrapped(x), [[1.0, 2.0 / 3.0]])       # W_sn = diag(1, 1/3)
    wrapped.backward(np.array([[1.0, 1.0]]))
    grad_sn = np.array([[1.0, 2.0], [1.0, 2.0]])                        # dy^T x
    projection = (grad_sn * np.diag([1.0, 1.0 / 3.0])).sum()            # 1 + 2/3
    expected = (grad_sn - projection * np.outer([1.0, 0.0], [1.0, 0.0])) / 3.0
    np.testing.assert_allclose(wrapped.weight_orig.grad, expected, rtol=1e-15)


# ---------------------------------------------------------------- torch parity
@pytest.mark.parametrize("name, dim", WITH_DIMS)
@pytest.mark.parametrize("n_power_iterations", [1, 3])
def test_torch_parity(name, dim, n_power_iterations, rng, torch):
    wrapped, shape = make(name, n_power_iterations=n_power_iterations, dim=dim)
    twin = torch_twin(torch, wrapped, name).train()
    for step in range(3):          # u, v carried from step to step; gradients accumulate
        x = rng.standard_normal(shape)
        xt = torch.tensor(x, requires_grad=True)
        yt = twin(xt)
        y = wrapped(x)
        dy = rng.standard_normal(y.shape)
        yt.backward(torch.tensor(dy))
        dx = wrapped.backward(dy)
        np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(wrapped.u, twin.weight_u.numpy(), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(wrapped.v, twin.weight_v.numpy(), rtol=1e-12, atol=1e-14)
        weight_mat = twin.weight_orig.detach().movedim(wrapped.dim, 0)
        sigma = twin.weight_u @ weight_mat.reshape(weight_mat.shape[0], -1) @ twin.weight_v
        np.testing.assert_allclose(wrapped.sigma, sigma.item(), rtol=1e-13)
    np.testing.assert_allclose(wrapped.weight_orig.grad, twin.weight_orig.grad.numpy(), rtol=1e-11, atol=1e-13)
    if wrapped.module.bias is not None:
        np.testing.assert_allclose(wrapped.module.bias.grad, twin.bias.grad.numpy(), rtol=1e-12, atol=1e-13)

    wrapped.eval(), twin.eval()
    x = rng.standard_normal(shape)
    np.testing.assert_allclose(wrapped(x), twin(torch.tensor(x)).detach().numpy(), rtol=1e-12, atol=1e-13)


def test_dim_follows_torch():
    assert SpectralNorm(Linear(3, 2)).dim == 0
    assert SpectralNorm(Conv2d(2, 3, 3)).dim == 0
    wrapped = SpectralNorm(ConvTranspose2d(2, 3, 3))
    assert wrapped.dim == 1 and wrapped.u.shape == (3,) and wrapped.v.shape == (2 * 9,)


# ---------------------------------------------------------------- behaviour
@pytest.mark.parametrize("name", ALL_CASES)
def test_sigma_converges_to_largest_singular_value(name):
    wrapped, shape = make(name)
    converge(wrapped)
    matrix = wrapped._matrix(wrapped.weight_orig.data)
    top = np.linalg.svd(matrix, compute_uv=False)[0]
    np.testing.assert_allclose(wrapped.sigma, top, rtol=1e-10)
    weight_sn = wrapped._normalized()[0]
    np.testing.assert_allclose(np.linalg.svd(wrapped._matrix(weight_sn), compute_uv=False)[0], 1.0, rtol=1e-10)


def test_training_forwards_move_u_eval_does_not(rng):
    wrapped, shape = make("linear")
    wrapped.u[...] = rng.standard_normal(wrapped.u.shape)   # away from the estimate made at construction
    wrapped.u /= np.linalg.norm(wrapped.u)
    u0 = wrapped.u.copy()
    wrapped.eval()(rng.standard_normal(shape))
    np.testing.assert_array_equal(wrapped.u, u0)
    wrapped.train()(rng.standard_normal(shape))
    assert not np.allclose(wrapped.u, u0)
    np.testing.assert_allclose(np.linalg.norm(wrapped.u), 1.0, rtol=1e-14)


@pytest.mark.parametrize("name", ["linear", "conv2d", "conv_transpose2d"])
def test_sigma_is_estimated_before_any_training_forward(name, rng):
    # u and v were random unit vectors until the first training forward: an eval forward of a fresh
    # layer divided W by u^T W v ~ 0.007 where its norm was 0.18 (and flipped signs). 15 power steps
    # at construction, and again after init_dcgan redraws the weight, as torch's parametrizations do
    from nnbox.init import init_dcgan
    wrapped, shape = make(name)
    for _ in range(2):
        true_sigma = np.linalg.svd(wrapped._matrix(wrapped.weight_orig.data), compute_uv=False)[0]
        assert float(wrapped.sigma) == pytest.approx(true_sigma, rel=0.05)
        wrapped.eval()(rng.standard_normal(shape))
        np.testing.assert_allclose(wrapped.module.weight.data, wrapped.weight_orig.data / wrapped.sigma)
        init_dcgan(wrapped, rng=1)


def test_parameters_state_dict_and_inner_weight(rng):
    wrapped, shape = make("linear")
    assert [name for name, _ in wrapped.named_parameters()] == ["weight_orig", "module.bias"]
    assert list(wrapped.state_dict()) == ["weight_orig", "module.bias", "u", "v"]
    wrapped(rng.standard_normal(shape))
    # the wrapped layer computes with W_sn, kept out of the parameters the optimiser sees
    np.testing.assert_allclose(wrapped.module.weight.data, wrapped.weight_orig.data / wrapped.sigma, rtol=1e-15)
    restored = SpectralNorm(Linear(5, 3), rng=9).to(np.float64)
    restored.load_state_dict(wrapped.state_dict())
    x = rng.standard_normal(shape)
    np.testing.assert_array_equal(restored.eval()(x), wrapped.eval()(x))


def test_two_forwards_then_two_backwards_as_in_gan_training(rng):
    """D(real), D(fake), then backward of each: each backward uses its own forward's W_sn, u, v."""
    wrapped, shape = make("linear")
    reference, _ = make("linear")
    real, fake = rng.standard_normal(shape), rng.standard_normal(shape)
    dy_real, dy_fake = rng.standard_normal((shape[0], 3)), rng.standard_normal((shape[0], 3))

    reference(real)
    dx_real = reference.backward(dy_real)
    reference(fake)
    dx_fake = reference.backward(dy_fake)

    wrapped(real)
    saved_real = [(module, module._saved) for module in wrapped.modules()]
    wrapped(fake)
    np.testing.assert_array_equal(wrapped.backward(dy_fake), dx_fake)
    for module, saved in saved_real:
        object.__setattr__(module, "_saved", saved)
    np.testing.assert_array_equal(wrapped.backward(dy_real), dx_real)
    np.testing.assert_allclose(wrapped.weight_orig.grad, reference.weight_orig.grad, rtol=1e-14)


def test_frozen_weight(rng):
    wrapped, shape = make("linear")
    wrapped.requires_grad_(False)
    x, dy = rng.standard_normal(shape), rng.standard_normal((shape[0], 3))
    y = wrapped(x)
    dx = wrapped.backward(dy)
    assert np.all(wrapped.weight_orig.grad == 0) and np.all(wrapped.module.bias.grad == 0)
    np.testing.assert_allclose(y, x @ wrapped.module.weight.data.T + wrapped.module.bias.data, rtol=1e-14)
    np.testing.assert_allclose(dx, dy @ wrapped.module.weight.data, rtol=1e-14)


def test_float32_default(rng):
    wrapped = SpectralNorm(Linear(4, 3, rng=0), rng=0)
    assert wrapped.u.dtype == np.float32 and wrapped.weight_orig.data.dtype == np.float32
    y = wrapped(rng.standard_normal((2, 4)).astype(np.float32))
    assert y.dtype == np.float32
    assert wrapped.backward(np.ones((2, 3), np.float32)).dtype == np.float32
    assert wrapped.weight_orig.grad.dtype == np.float32


def test_repr():
    assert repr(SpectralNorm(Linear(4, 3))).splitlines() == [
        "SpectralNorm(", "  n_power_iterations=1, eps=1e-12, dim=0",
        "  (module): Linear(in_features=4, out_features=3, bias=True)", ")"]


# ---------------------------------------------------------------- errors
def test_wrapping_a_layer_without_weight():
    from layers import ReLU
    with pytest.raises(TypeError, match="SpectralNorm wraps a layer with a `weight` Parameter.*got ReLU"):
        SpectralNorm(ReLU())


def test_bad_arguments():
    with pytest.raises(ValueError, match="n_power_iterations must be >= 1, got 0"):
        SpectralNorm(Linear(3, 2), n_power_iterations=0)
    with pytest.raises(ValueError, match=r"dim=2 is not an axis of the weight of shape \(2, 3\)"):
        SpectralNorm(Linear(3, 2), dim=2)


def test_backward_before_forward():
    with pytest.raises(RuntimeError, match="SpectralNorm.backward was called before forward"):
        SpectralNorm(Linear(3, 2)).backward(np.ones((1, 2)))


def test_input_errors_name_the_wrapped_layer():
    with pytest.raises(ValueError, match=r"Linear expects 3 features at axis 1.*got shape \(2, 4\)"):
        SpectralNorm(Linear(3, 2))(np.ones((2, 4), np.float32))


# ---------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.parametrize("name", ALL_CASES)
@pytest.mark.parametrize("training", [False, True])
def test_gpu_gradcheck(name, training, rng):
    import cupy
    wrapped, shape = make(name)
    converge(wrapped).train(training).to("gpu")
    assert isinstance(wrapped.u, cupy.ndarray)
    gradcheck(wrapped, cupy.asarray(rng.standard_normal(shape)), rng=rng)


@pytest.mark.gpu
def test_gpu_matches_cpu(rng):
    import cupy
    cpu, shape = make("linear")
    gpu, _ = make("linear")
    gpu.to("gpu")
    x, dy = rng.standard_normal(shape), rng.standard_normal((shape[0], 3))
    np.testing.assert_allclose(cupy.asnumpy(gpu(cupy.asarray(x))), cpu(x), rtol=1e-12)
    np.testing.assert_allclose(cupy.asnumpy(gpu.backward(cupy.asarray(dy))), cpu.backward(dy), rtol=1e-12)
    np.testing.assert_allclose(cupy.asnumpy(gpu.weight_orig.grad), cpu.weight_orig.grad, rtol=1e-12)
