"""Reparameterize and GumbelSoftmax: gradchecks with replayed noise, torch parity given the same noise,
the statistics of the draws, noise replay, eval mode, errors, GPU."""
import numpy as np
import pytest

from layers.sampling import GumbelSoftmax, Reparameterize, gumbel_noise, one_hot_argmax
from nnbox.gradcheck import gradcheck


# --------------------------------------------------------------------------- Reparameterize
@pytest.mark.parametrize("shape", [(3, 4), (2, 3, 2), (1, 1)])
def test_reparameterize_gradcheck_with_fixed_noise(rng, shape):
    layer = Reparameterize(rng=0)
    layer.fixed_noise = rng.standard_normal(shape)
    gradcheck(layer, rng.standard_normal(shape), rng.standard_normal(shape), wrt=(0, 1), rng=rng)


def test_reparameterize_gradcheck_in_eval_mode(rng):
    layer = Reparameterize(rng=0).eval()
    gradcheck(layer, rng.standard_normal((3, 2)), rng.standard_normal((3, 2)), wrt=(0, 1), rng=rng)


def test_reparameterize_matches_torch(torch, rng):
    mu, logvar, eps, dz = (rng.standard_normal((4, 3)) for _ in range(4))
    layer = Reparameterize()
    z = layer(mu, logvar, noise=eps)
    dmu, dlogvar = layer.backward(dz)
    t_mu, t_logvar = (torch.tensor(a, requires_grad=True) for a in (mu, logvar))
    t_z = t_mu + torch.exp(0.5 * t_logvar) * torch.tensor(eps)
    t_z.backward(torch.tensor(dz))
    np.testing.assert_allclose(z, t_z.detach().numpy(), rtol=1e-14)
    np.testing.assert_allclose(dmu, t_mu.grad.numpy(), rtol=1e-14)
    np.testing.assert_allclose(dlogvar, t_logvar.grad.numpy(), rtol=1e-13)


def test_reparameterize_draws_have_the_right_law(rng):
    mu = np.full((20000, 2), [1.5, -2.0])
    logvar = np.full((20000, 2), np.log([0.25, 4.0]))
    z = Reparameterize(rng=1)(mu, logvar)
    # standard errors: 0.5/141 and 2/141 for the means; the tolerances are ~4 of them
    np.testing.assert_allclose(z.mean(axis=0), [1.5, -2.0], atol=0.06)
    np.testing.assert_allclose(z.std(axis=0), [0.5, 2.0], rtol=0.03)


def test_reparameterize_noise_is_replayable_and_seeded(rng):
    mu, logvar = rng.standard_normal((2, 5, 3))
    layer = Reparameterize(rng=7)
    z1 = layer(mu, logvar)
    eps = layer.last_noise
    np.testing.assert_allclose(layer(mu, logvar, noise=eps), z1)              # this call only
    assert not np.allclose(layer(mu, logvar), z1)                            # fresh noise next
    layer.fixed_noise = eps
    np.testing.assert_allclose(layer(mu, logvar), z1)                        # every call
    np.testing.assert_allclose(Reparameterize(rng=7)(mu, logvar), z1)       # same seed, same draw
    np.testing.assert_allclose(z1, mu + np.exp(logvar / 2) * eps, rtol=1e-14)


def test_reparameterize_eval_returns_the_mean(rng):
    mu, logvar = rng.standard_normal((2, 4, 3))
    layer = Reparameterize(rng=0).eval()
    assert layer(mu, logvar) is mu
    dmu, dlogvar = layer.backward(np.ones_like(mu))
    np.testing.assert_array_equal(dmu, 1.0)
    np.testing.assert_array_equal(dlogvar, 0.0)


def test_reparameterize_float32_and_to_float64(rng):
    mu = rng.standard_normal((3, 2)).astype(np.float32)
    layer = Reparameterize(rng=0)
    assert layer(mu, mu).dtype == np.float32
    layer.fixed_noise = np.ones((3, 2), np.float32)
    layer.to(np.float64)
    assert layer.fixed_noise.dtype == np.float64 and layer.last_noise is None


def test_reparameterize_errors(rng):
    layer = Reparameterize()
    with pytest.raises(ValueError, match=r"mu has shape \(2, 3\) but logvar has shape \(2, 4\)"):
        layer(np.zeros((2, 3)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"noise must have shape \(2, 3\).*got shape \(3, 2\)"):
        layer(np.zeros((2, 3)), np.zeros((2, 3)), noise=np.zeros((3, 2)))
    with pytest.raises(TypeError, match="logvar must be a floating-point array"):
        layer(np.zeros((2, 3)), np.zeros((2, 3), dtype=np.int32))
    with pytest.raises(TypeError, match="expects arrays"):
        layer([0.0], np.zeros(1))
    with pytest.raises(RuntimeError, match="before forward"):
        Reparameterize().backward(np.zeros((2, 3)))
    for training in (True, False):
        layer.train(training)
        layer(np.zeros((2, 3)), np.zeros((2, 3)))
        with pytest.raises(ValueError, match=r"Reparameterize.backward expects dy shaped like the forward output "
                                             r"\(2, 3\), got shape \(3, 3\)"):
            layer.backward(np.zeros((3, 3)))


@pytest.mark.parametrize("make", [lambda: Reparameterize(rng=0), lambda: GumbelSoftmax(rng=0)])
def test_float16_inputs_get_float16_noise(make):
    # NumPy's generators draw no float16: the noise is drawn in float32 and cast
    layer = make()
    x = np.zeros((2, 3), np.float16)
    y = layer(x, x) if isinstance(layer, Reparameterize) else layer(x)
    assert y.dtype == np.float16 and layer.last_noise.dtype == np.float16 and np.isfinite(y).all()


# --------------------------------------------------------------------------- GumbelSoftmax
@pytest.mark.parametrize("shape", [(4, 5), (2, 3, 4), (3, 2)])
@pytest.mark.parametrize("temperature", [0.5, 1.0, 3.0])
def test_gumbel_softmax_gradcheck_with_fixed_noise(rng, shape, temperature):
    layer = GumbelSoftmax(temperature, rng=0)
    layer.fixed_noise = gumbel_noise(rng.uniform(size=shape))
    gradcheck(layer, rng.standard_normal(shape), rng=rng)


def test_gumbel_softmax_of_one_category_is_one_with_no_gradient(rng):
    layer = GumbelSoftmax(0.5, rng=0)
    y = layer(rng.standard_normal((3, 1)))
    np.testing.assert_array_equal(y, np.ones((3, 1)))
    np.testing.assert_array_equal(layer.backward(rng.standard_normal((3, 1))), np.zeros((3, 1)))


def test_gumbel_softmax_backward_uses_the_forwards_temperature(rng):
    # annealing between a loss and its backward must not change the gradient of what was computed
    logits, dy = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    layer = GumbelSoftmax(1.0, rng=0)
    layer.fixed_noise = gumbel_noise(rng.uniform(size=(3, 4)))
    layer(logits)
    expected = layer.backward(dy)
    layer.temperature = 0.5
    np.testing.assert_array_equal(layer.backward(dy), expected)


def test_gumbel_softmax_gradcheck_in_eval_mode(rng):
    gradcheck(GumbelSoftmax(0.7).eval(), rng.standard_normal((3, 4)), rng=rng)


def _torch_gumbel_softmax(torch, logits, g, tau, hard):
    """torch.nn.functional.gumbel_softmax's formula (its source), with our g in place of its own draw."""
    y = torch.nn.functional.softmax((logits + g) / tau, dim=-1)
    if not hard:
        return y
    index = y.max(-1, keepdim=True)[1]
    y_hard = torch.zeros_like(logits).scatter_(-1, index, 1.0)
    return y_hard - y.detach() + y


@pytest.mark.parametrize("hard", [False, True])
@pytest.mark.parametrize("temperature", [0.3, 1.0, 2.5])
@pytest.mark.parametrize("training", [True, False])
def test_gumbel_softmax_matches_torch_given_the_same_noise(torch, rng, hard, temperature, training):
    """In training with the same g; in eval mode, where the layer adds no noise, with g = 0."""
    logits, dy = rng.standard_normal((2, 6, 5))
    g = gumbel_noise(rng.uniform(size=(6, 5)))
    layer = GumbelSoftmax(temperature, hard=hard).train(training)
    y = layer(logits, noise=g)
    dlogits = layer.backward(dy)
    t_logits = torch.tensor(logits, requires_grad=True)
    t_y = _torch_gumbel_softmax(torch, t_logits, torch.tensor(g if training else np.zeros_like(g)), temperature, hard)
    t_y.backward(torch.tensor(dy))
    np.testing.assert_allclose(y, t_y.detach().numpy(), rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(dlogits, t_logits.grad.numpy(), rtol=1e-12, atol=1e-15)


def test_torch_gumbel_softmax_draws_noise_as_we_do(torch):
    """F.gumbel_softmax's g is -log(Exp(1)): with torch's generator replayed, our formula gives its output."""
    logits = torch.randn(4, 6, dtype=torch.float64)
    torch.manual_seed(3)
    expected = torch.nn.functional.gumbel_softmax(logits, tau=0.8)
    torch.manual_seed(3)
    g = -torch.empty_like(logits).exponential_().log()
    y = GumbelSoftmax(0.8)(logits.numpy(), noise=g.numpy())
    np.testing.assert_allclose(y, expected.numpy(), rtol=1e-13)


def test_gumbel_max_samples_the_categorical(rng):
    """argmax(logits + g) is distributed as softmax(logits): the trick the relaxation starts from."""
    probs = np.array([0.1, 0.2, 0.3, 0.4])
    layer = GumbelSoftmax(0.1, hard=True, rng=2)
    y = layer(np.tile(np.log(probs), (40000, 1)))
    # the standard error of each frequency is below 0.0025
    np.testing.assert_allclose(y.mean(axis=0), probs, atol=0.01)


def test_gumbel_noise_law(rng):
    g = GumbelSoftmax(rng=4)._draw(np, (200000,), np.float64)
    # Gumbel(0, 1): mean = Euler's gamma, variance = pi^2 / 6; standard errors 0.003 and 0.01
    np.testing.assert_allclose(g.mean(), np.euler_gamma, atol=0.012)
    np.testing.assert_allclose(g.var(), np.pi ** 2 / 6, atol=0.04)
    np.testing.assert_allclose(gumbel_noise(np.array([np.exp(-1.0)])), [0.0], atol=1e-15)


def test_temperature_moves_samples_between_one_hot_and_uniform(rng):
    logits = rng.standard_normal((500, 6))
    g = gumbel_noise(rng.uniform(size=(500, 6)))
    peak = {tau: GumbelSoftmax(tau)(logits, noise=g).max(axis=-1).mean() for tau in (0.05, 1.0, 100.0)}
    assert peak[0.05] > 0.97 and peak[100.0] < 1 / 6 + 0.01 and peak[0.05] > peak[1.0] > peak[100.0]


def test_gumbel_softmax_rows_sum_to_one_and_hard_is_one_hot(rng):
    logits = rng.standard_normal((7, 3, 4)) * 5
    soft = GumbelSoftmax(0.5, rng=1)(logits)
    np.testing.assert_allclose(soft.sum(axis=-1), 1.0, rtol=1e-12)
    hard_layer = GumbelSoftmax(0.5, hard=True, rng=1)
    hard = hard_layer(logits)
    np.testing.assert_array_equal(hard, one_hot_argmax(soft))
    np.testing.assert_array_equal(hard.sum(axis=-1), 1.0)
    # straight-through: the hard sample differentiates as the soft one
    dy = rng.standard_normal(logits.shape)
    soft_layer = GumbelSoftmax(0.5)
    soft_layer(logits, noise=hard_layer.last_noise)
    np.testing.assert_allclose(hard_layer.backward(dy), soft_layer.backward(dy), rtol=1e-14)


def test_gumbel_softmax_noise_replay_and_eval(rng):
    logits = rng.standard_normal((5, 4))
    layer = GumbelSoftmax(1.0, rng=9)
    y = layer(logits)
    g = layer.last_noise
    np.testing.assert_allclose(GumbelSoftmax(1.0, rng=9)(logits), y)
    layer.fixed_noise = g
    np.testing.assert_allclose(layer(logits), y)
    layer.fixed_noise = None
    assert not np.allclose(layer(logits), y)
    layer.eval()
    expected = np.exp(logits) / np.exp(logits).sum(axis=-1, keepdims=True)
    np.testing.assert_allclose(layer(logits), expected, rtol=1e-12)
    layer.hard = True
    np.testing.assert_array_equal(layer(logits).argmax(axis=-1), logits.argmax(axis=-1))


def test_gumbel_softmax_extreme_logits_are_finite():
    y = GumbelSoftmax(0.1, rng=0)(np.array([[1e30, -1e30, 0.0]]))
    np.testing.assert_allclose(y, [[1.0, 0.0, 0.0]])


def test_gumbel_softmax_float32(rng):
    layer = GumbelSoftmax(0.5, rng=0)
    y = layer(rng.standard_normal((3, 4)).astype(np.float32))
    assert y.dtype == np.float32 and layer.last_noise.dtype == np.float32
    assert layer.backward(np.ones((3, 4), np.float32)).dtype == np.float32


def test_gumbel_softmax_errors():
    with pytest.raises(ValueError, match="temperature must be positive, got 0.0"):
        GumbelSoftmax(0.0)
    layer = GumbelSoftmax()
    with pytest.raises(ValueError, match="temperature must be positive"):
        layer.temperature = -1
    with pytest.raises(ValueError, match=r"\(\.\.\., K\).*shape \(\)"):
        layer(np.float64(1.0) * np.ones(()))
    with pytest.raises(TypeError, match="floating-point"):
        layer(np.zeros((2, 3), dtype=np.int64))
    with pytest.raises(ValueError, match=r"noise must have shape \(2, 3\)"):
        layer(np.zeros((2, 3)), noise=np.zeros((2, 4)))
    layer(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"GumbelSoftmax.backward expects dy shaped like the forward output \(2, 3\), got shape \(3, 2\)"):
        layer.backward(np.zeros((3, 2)))
    assert "temperature=1.0, hard=False" in repr(layer)


# --------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.parametrize("layer_type", ["reparameterize", "gumbel"])
def test_gpu_draws_on_the_device_and_replays_cpu_noise(rng, layer_type):
    import cupy
    x = rng.standard_normal((4, 5)).astype(np.float32)
    layer = Reparameterize(rng=0) if layer_type == "reparameterize" else GumbelSoftmax(0.5, rng=0)
    inputs = (x, x) if layer_type == "reparameterize" else (x,)
    expected = layer(*inputs)
    noise = layer.last_noise
    dy = rng.standard_normal((4, 5)).astype(np.float32)
    expected_grads = layer.backward(dy)
    layer.to("gpu")
    gpu_inputs = tuple(cupy.asarray(a) for a in inputs)
    drawn = layer(*gpu_inputs)
    assert isinstance(drawn, cupy.ndarray) and isinstance(layer.last_noise, cupy.ndarray)
    assert drawn.dtype == np.float32
    y = layer(*gpu_inputs, noise=cupy.asarray(noise))
    np.testing.assert_allclose(cupy.asnumpy(y), expected, rtol=1e-5, atol=1e-6)
    grads = layer.backward(cupy.asarray(dy))
    for got, want in zip(grads if isinstance(grads, tuple) else (grads,),
                         expected_grads if isinstance(expected_grads, tuple) else (expected_grads,)):
        np.testing.assert_allclose(cupy.asnumpy(got), want, rtol=1e-5, atol=1e-6)
