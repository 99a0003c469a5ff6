"""GAN losses: gradients against central differences, parity with torch, stability for any logit."""
import warnings

import numpy as np
import pytest

from gan.losses import GAN_LOSSES, get_gan_loss

LOSS_NAMES = sorted(GAN_LOSSES)
BCE_BASED = ["minimax", "non_saturating"]


def numerical_gradient(f, x, eps=1e-6):
    """Central differences of the scalar f at the float64 array x."""
    grad = np.zeros_like(x)
    for index in np.ndindex(x.shape):
        original = x[index]
        x[index] = original + eps
        plus = f(x)
        x[index] = original - eps
        minus = f(x)
        x[index] = original
        grad[index] = (plus - minus) / (2 * eps)
    return grad


# one logit per image (N, 1), and a PatchGAN's map of logits (N, 1, H, W), which CycleGAN's losses take
SHAPES = [(6, 1), (2, 1, 2, 3)]


def logits_away_from_kinks(rng, shape):
    """Logits in (-3, 3), kept 0.05 from the hinge's kinks at +-1."""
    x = rng.uniform(-3, 3, size=shape)
    return np.where(np.abs(np.abs(x) - 1) < 0.05, x + 0.1, x)


def soft_targets(loss_name, rng, shape):
    if not get_gan_loss(loss_name).uses_targets:
        return None, None
    return rng.uniform(0.7, 1.0, size=shape), rng.uniform(0.0, 0.3, size=shape)


@pytest.mark.parametrize("name", LOSS_NAMES)
@pytest.mark.parametrize("with_targets", [False, True])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_discriminator_loss_gradient(name, with_targets, shape, rng):
    loss = get_gan_loss(name)
    real, fake = logits_away_from_kinks(rng, shape), logits_away_from_kinks(rng, shape)
    real_t, fake_t = soft_targets(name, rng, shape) if with_targets else (None, None)
    value, d_real, d_fake = loss.discriminator_loss(real, fake, real_t, fake_t)
    assert np.ndim(value) == 0 and type(value).__module__ == "numpy"   # a 0-d value on the logits' device
    num_real = numerical_gradient(lambda r: loss.discriminator_loss(r, fake, real_t, fake_t)[0], real)
    num_fake = numerical_gradient(lambda f: loss.discriminator_loss(real, f, real_t, fake_t)[0], fake)
    np.testing.assert_allclose(d_real, num_real, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(d_fake, num_fake, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("name", LOSS_NAMES)
@pytest.mark.parametrize("shape", [(7, 1), (2, 1, 3, 2)], ids=str)
def test_generator_loss_gradient(name, shape, rng):
    loss = get_gan_loss(name)
    fake = logits_away_from_kinks(rng, shape)
    value, d_fake = loss.generator_loss(fake)
    assert np.ndim(value) == 0 and type(value).__module__ == "numpy" and d_fake.shape == fake.shape
    np.testing.assert_allclose(d_fake, numerical_gradient(lambda f: loss.generator_loss(f)[0], fake),
                               rtol=1e-5, atol=1e-8)


def torch_losses(torch, name, real, fake, real_t, fake_t):
    """(D loss, G loss) written directly in torch, on tensors that require grad."""
    F = torch.nn.functional
    if name in BCE_BASED:
        d = F.binary_cross_entropy_with_logits(real, real_t) + F.binary_cross_entropy_with_logits(fake, fake_t)
        if name == "minimax":  # mean log(1 - sigmoid(x)), the original game's G objective
            g = -F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake))
        else:
            g = F.binary_cross_entropy_with_logits(fake, torch.ones_like(fake))
    elif name == "least_squares":
        d = 0.5 * ((real - real_t) ** 2).mean() + 0.5 * ((fake - fake_t) ** 2).mean()
        g = 0.5 * ((fake - 1) ** 2).mean()
    elif name == "hinge":
        d = torch.relu(1 - real).mean() + torch.relu(1 + fake).mean()
        g = -fake.mean()
    else:
        d = fake.mean() - real.mean()
        g = -fake.mean()
    return d, g


@pytest.mark.parametrize("name", LOSS_NAMES)
@pytest.mark.parametrize("with_targets", [False, True])
@pytest.mark.parametrize("shape", [(8, 1), (2, 1, 2, 3)], ids=str)
def test_torch_parity(name, with_targets, shape, torch, rng):
    loss = get_gan_loss(name)
    real, fake = logits_away_from_kinks(rng, shape) * 3, logits_away_from_kinks(rng, shape) * 3
    real_t, fake_t = soft_targets(name, rng, shape) if with_targets else (None, None)
    d_value, d_real, d_fake = loss.discriminator_loss(real, fake, real_t, fake_t)
    g_value, g_fake = loss.generator_loss(fake)

    t_real = torch.tensor(real, requires_grad=True)
    t_fake = torch.tensor(fake, requires_grad=True)
    t_real_t = torch.ones(shape, dtype=torch.float64) if real_t is None else torch.tensor(real_t)
    t_fake_t = torch.zeros(shape, dtype=torch.float64) if fake_t is None else torch.tensor(fake_t)
    d_torch, g_torch = torch_losses(torch, name, t_real, t_fake, t_real_t, t_fake_t)
    d_torch.backward()
    np.testing.assert_allclose(d_value, d_torch.item(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(d_real, t_real.grad.numpy(), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(d_fake, t_fake.grad.numpy(), rtol=1e-12, atol=1e-15)
    t_fake.grad = None
    g_torch.backward()
    np.testing.assert_allclose(g_value, g_torch.item(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(g_fake, t_fake.grad.numpy(), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("name", LOSS_NAMES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_stable_for_extreme_logits(name, dtype):
    loss = get_gan_loss(name)
    extreme = np.array([[-100.0], [-40.0], [-1e-3], [0.0], [1e-3], [40.0], [100.0]], dtype=dtype)
    targets = np.full(extreme.shape, 0.9, dtype=dtype)
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # underflow to 0 is harmless
        d_value, d_real, d_fake = loss.discriminator_loss(extreme, extreme[::-1].copy(), targets, 1 - targets)
        g_value, g_fake = loss.generator_loss(extreme)
    for value in (d_value, g_value):
        assert np.isfinite(value)
    for grad in (d_real, d_fake, g_fake):
        assert grad.dtype == dtype and grad.shape == extreme.shape and np.all(np.isfinite(grad))
    # the values too: torch's formulas in float64 on the same logits (its BCE is stable there as well)
    torch = pytest.importorskip("torch", reason="torch is not installed: `pip install -e .[parity]`")
    t_real = torch.tensor(extreme.astype(np.float64), requires_grad=True)
    t_fake = torch.tensor(extreme[::-1].astype(np.float64), requires_grad=True)
    t_targets = torch.tensor(targets.astype(np.float64))
    d_torch, _ = torch_losses(torch, name, t_real, t_fake, t_targets, 1 - t_targets)
    d_torch.backward()
    g_fake_t = torch.tensor(extreme.astype(np.float64), requires_grad=True)
    _, g_torch = torch_losses(torch, name, t_real.detach(), g_fake_t, t_targets, 1 - t_targets)
    g_torch.backward()
    tolerance = dict(rtol=1e-6, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(d_value, d_torch.item(), **tolerance)
    np.testing.assert_allclose(g_value, g_torch.item(), **tolerance)
    np.testing.assert_allclose(d_real, t_real.grad.numpy(), **tolerance)
    np.testing.assert_allclose(d_fake, t_fake.grad.numpy(), **tolerance)
    np.testing.assert_allclose(g_fake, g_fake_t.grad.numpy(), **tolerance)


def test_bce_with_logits_of_65536_float16_logits():
    # N = 65536 does not fit a float16 (max 65504): dividing by it gave a zero gradient, and the
    # float16 sum of the terms could overflow; both are computed as the float32 version rounded
    from gan.losses import bce_with_logits
    logits = np.random.default_rng(0).standard_normal((64, 1, 32, 32)).astype(np.float16)
    targets = np.ones_like(logits)
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # comparing N with float16's max cast N to float16: "overflow in cast"
        loss, grad = bce_with_logits(logits, targets)
    want_loss, want_grad = bce_with_logits(logits.astype(np.float32), targets.astype(np.float32))
    assert loss.dtype == grad.dtype == np.float16 and np.abs(grad).max() > 0
    np.testing.assert_allclose(float(loss), float(want_loss), rtol=1e-3)
    # grad values ~1e-5 are float16 subnormals: compare at their spacing
    np.testing.assert_allclose(grad.astype(np.float32), want_grad, rtol=0, atol=2 * 2.0**-24)


@pytest.mark.gpu
def test_bce_with_logits_of_65536_float16_logits_on_the_gpu():
    import cupy
    from gan.losses import bce_with_logits
    logits = np.random.default_rng(0).standard_normal((64, 1, 32, 32)).astype(np.float16)
    targets = np.ones_like(logits)
    loss, grad = bce_with_logits(cupy.asarray(logits), cupy.asarray(targets))
    want_loss, want_grad = bce_with_logits(logits, targets)
    np.testing.assert_allclose(float(loss), float(want_loss), rtol=1e-3)
    np.testing.assert_allclose(cupy.asnumpy(grad).astype(np.float32), want_grad.astype(np.float32), rtol=0,
                               atol=2 * 2.0**-24)


def test_bce_losses_at_extremes_have_the_right_values():
    x = np.array([[-100.0], [100.0]])
    # D certain and right: a real at +100 and a fake at -100 cost ~0; certain and wrong: ~100 each
    value, d_real, d_fake = get_gan_loss("minimax").discriminator_loss(x[1:], x[:1])
    assert value == pytest.approx(0.0, abs=1e-40) and d_real[0, 0] == pytest.approx(0.0, abs=1e-40)
    value, _, _ = get_gan_loss("minimax").discriminator_loss(x[:1], x[1:])
    assert value == pytest.approx(200.0)
    # minimax G saturates where D rejects the fakes; the non-saturating G does not
    _, grad = get_gan_loss("minimax").generator_loss(x[:1])
    assert abs(grad[0, 0]) < 1e-40
    value, grad = get_gan_loss("non_saturating").generator_loss(x[:1])
    assert value == pytest.approx(100.0) and grad[0, 0] == pytest.approx(-1.0)
    value, _ = get_gan_loss("minimax").generator_loss(x[1:])
    assert value == pytest.approx(-100.0)


def test_default_targets_equal_explicit_ones(rng):
    real, fake = rng.normal(size=(5, 1)), rng.normal(size=(5, 1))
    for name in ("minimax", "non_saturating", "least_squares"):
        loss = get_gan_loss(name)
        implicit = loss.discriminator_loss(real, fake)
        explicit = loss.discriminator_loss(real, fake, np.ones((5, 1)), np.zeros((5, 1)))
        assert implicit[0] == explicit[0]
        np.testing.assert_array_equal(implicit[1], explicit[1])


@pytest.mark.parametrize("name", ["hinge", "wasserstein"])
def test_hinge_and_wasserstein_ignore_targets(name, rng):
    loss = get_gan_loss(name)
    real, fake = rng.normal(size=(4, 1)), rng.normal(size=(4, 1))
    assert loss.discriminator_loss(real, fake)[0] == loss.discriminator_loss(real, fake, 0.9 * np.ones((4, 1)),
                                                                           0.1 * np.ones((4, 1)))[0]


def test_soft_targets_change_bce_loss(rng):
    real, fake = rng.normal(size=(4, 1)), rng.normal(size=(4, 1))
    loss = get_gan_loss("non_saturating")
    hard, _, _ = loss.discriminator_loss(real, fake)
    soft, d_real, _ = loss.discriminator_loss(real, fake, np.full((4, 1), 0.9), np.full((4, 1), 0.1))
    assert soft != hard
    np.testing.assert_allclose(d_real, (1 / (1 + np.exp(-real)) - 0.9) / 4, rtol=1e-12)


def test_wants_weight_clipping_only_for_wasserstein():
    assert [name for name in LOSS_NAMES if get_gan_loss(name).wants_weight_clipping] == ["wasserstein"]


def test_errors():
    with pytest.raises(ValueError, match="unknown GAN loss 'bce'"):
        get_gan_loss("bce")
    with pytest.raises(ValueError, match=r"real_targets must have the logits' shape \(3, 1\), got \(3,\)"):
        get_gan_loss("minimax").discriminator_loss(np.zeros((3, 1)), np.zeros((3, 1)), np.ones(3))


@pytest.mark.gpu
@pytest.mark.parametrize("name", LOSS_NAMES)
def test_losses_on_gpu_match_cpu(name, rng):
    import cupy

    loss = get_gan_loss(name)
    real, fake = rng.normal(size=(6, 1)).astype(np.float32), rng.normal(size=(6, 1)).astype(np.float32)
    cpu = loss.discriminator_loss(real, fake) + loss.generator_loss(fake)
    gpu = loss.discriminator_loss(cupy.asarray(real), cupy.asarray(fake)) + loss.generator_loss(cupy.asarray(fake))
    assert isinstance(gpu[0], cupy.ndarray) and isinstance(gpu[3], cupy.ndarray)   # the values stay on the device
    for a, b in zip(cpu, gpu):
        np.testing.assert_allclose(cupy.asnumpy(b) if isinstance(b, cupy.ndarray) else b, a, rtol=1e-5, atol=1e-7)
