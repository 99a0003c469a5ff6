"""gan.vae: gradchecks of the whole VAE objective (each latent, fixed noise, float64), the loss's value,
training steps that lower it, shapes, steering, eval-mode generation, state round trip, errors, GPU."""
import numpy as np
import pytest

from gan.vae import VAE, VAEObjective, one_hot
from layers.sampling import gumbel_noise
from nnbox.gradcheck import gradcheck
from nnbox.optim import Adam
from nnbox.serialization import load_state, save_state

TINY = dict(latent_dim=2, categories=3, categorical_dims=2, image_size=8, channels=3, width=2)


def _images(rng, n=3, size=8):
    return np.tanh(rng.standard_normal((n, 3, size, size)) * 1.5)


def _fix_noise(vae, rng, n):
    if vae.reparameterize is not None:
        vae.reparameterize.fixed_noise = rng.standard_normal((n, vae.gaussian_dim))
    if vae.gumbel is not None:
        vae.gumbel.fixed_noise = gumbel_noise(rng.uniform(size=(n,) + vae.categorical_shape))


@pytest.mark.parametrize("latent, weights", [("gaussian", (1.0, 1.0)), ("categorical", (1.0, 1.0)),
                                             ("both", (0.5, 2.0))])
def test_gradcheck_of_the_whole_objective(rng, latent, weights):
    vae = VAE(latent, kl_weight=weights[0], categorical_kl_weight=weights[1], temperature=0.7, rng=0, **TINY)
    x = _images(rng)
    _fix_noise(vae, rng, len(x))
    # every tensor (input, each weight, bias and BatchNorm affine) is checked, at 16 random entries each
    report = gradcheck(VAEObjective(vae), x, x.copy(), rng=rng, max_entries=16)
    assert len(report.checked_entries) == 1 + len(vae.parameters())


def _plain_loss(vae, x, out):
    """The negative ELBO from the formulas, in NumPy, for the batch and the forward's outputs."""
    t = (x + 1) / 2
    p = 1 / (1 + np.exp(-out.logits))
    reconstruction = -(t * np.log(p) + (1 - t) * np.log(1 - p)).sum() / len(x)
    total = reconstruction
    if out.mu is not None:
        total += vae.kl_weight * (-0.5 * (1 + out.logvar - out.mu ** 2 - np.exp(out.logvar))).sum() / len(x)
    if out.code_logits is not None:
        q = np.exp(out.code_logits) / np.exp(out.code_logits).sum(axis=-1, keepdims=True)
        total += vae.categorical_kl_weight * (q * np.log(q * q.shape[-1])).sum() / len(x)
    return reconstruction, total


@pytest.mark.parametrize("latent", ["gaussian", "categorical", "both"])
def test_loss_value_is_the_negative_elbo(rng, latent):
    vae = VAE(latent, kl_weight=0.3, categorical_kl_weight=1.7, rng=1, **TINY).to(np.float64)
    x = _images(rng, n=4)
    out = vae(x)
    total, parts = vae.loss(out, x)
    reconstruction, expected = _plain_loss(vae, x, out)
    np.testing.assert_allclose(float(total), expected, rtol=1e-12)
    np.testing.assert_allclose(parts["reconstruction"], reconstruction, rtol=1e-12)
    assert parts["loss"] == float(total)
    assert ("kl_gaussian" in parts) == (latent != "categorical")
    assert ("kl_categorical" in parts) == (latent != "gaussian")


def _squares(n=16, size=8):
    """A tiny learnable set: black images with a 4x4 square in one of 4 places and 3 colours."""
    x = -np.ones((n, 3, size, size), np.float32)
    for i in range(n):
        top, left = 4 * (i % 2), 4 * (i // 2 % 2)
        x[i, i % 3, top:top + 4, left:left + 4] = 1
    return x


@pytest.mark.parametrize("latent", ["gaussian", "categorical", "both"])
def test_training_steps_lower_the_loss(latent):
    vae = VAE(latent, rng=2, **TINY)
    x = _squares()
    optimizer = Adam(vae.parameters(), lr=1e-2)
    losses = [vae.step(x, optimizer)["loss"] for _ in range(25)]
    assert np.isfinite(losses).all()
    assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:3]), losses


def test_a_diverging_step_raises_before_its_update_and_shows_no_numpy_warning(raises_quietly):
    # NumPy's "overflow encountered in matmul" and "invalid value encountered in reduce" came ahead of the error
    vae = VAE("both", rng=2, **TINY)
    x = _squares()
    optimizer = Adam(vae.parameters(), lr=1e20)
    vae.step(x, optimizer)                   # the update makes the weights huge: the next loss is not finite
    weights = {name: value.copy() for name, value in vae.state_dict().items()}
    with raises_quietly(FloatingPointError, match="VAE.step: the loss is"):
        vae.step(x, optimizer)
    for name, parameter in vae.named_parameters():
        np.testing.assert_array_equal(parameter.data, weights[name], err_msg=name)


def test_shapes_and_straight_through_codes(rng):
    vae = VAE("both", hard=True, rng=3, **TINY)
    x = _images(rng, n=5).astype(np.float32)
    out = vae(x)
    assert out.logits.shape == (5, 3, 8, 8) and out.logits.dtype == np.float32
    assert out.mu.shape == out.logvar.shape == out.z.shape == (5, 2)
    assert out.code_logits.shape == out.code.shape == (5, 2, 3)
    np.testing.assert_array_equal(out.code.sum(axis=-1), 1)
    assert set(np.unique(out.code)) == {0.0, 1.0}
    vae.loss(out, x)
    assert vae.backward().shape == x.shape


def test_sampling_and_steering(rng):
    vae = VAE("both", rng=4, **TINY)
    images = vae.sample(6, rng=0)
    assert images.shape == (6, 3, 8, 8) and images.min() >= -1 and images.max() <= 1
    np.testing.assert_array_equal(vae.sample(6, rng=0), images)        # the rng decides everything
    z = np.zeros((3, 2), np.float32)
    by_category = vae.sample(3, z=z, code=np.array([[0, 0], [1, 1], [2, 2]]))
    np.testing.assert_array_equal(by_category, vae.decode(z, one_hot(np.array([[0, 0], [1, 1], [2, 2]]), 3)))
    assert not np.allclose(by_category[0], by_category[1])
    assert vae.training                                                # generation leaves the mode alone
    single = VAE("categorical", categories=4, image_size=8, width=2, rng=5)
    assert single.sample(4, code=np.arange(4)).shape == (4, 3, 8, 8)   # (n,) categories when L = 1


GENERATE = {"sample": lambda vae, x: vae.sample(4, rng=3),
            "reconstruct": lambda vae, x: vae.reconstruct(x),
            "decode": lambda vae, x: vae.decode(np.zeros((2, 2), np.float32), one_hot(np.zeros((2, 2), int), 3))}


@pytest.mark.parametrize("generate", GENERATE.values(), ids=GENERATE.keys())
def test_generating_between_loss_and_backward_leaves_the_gradients_alone(generate):
    import copy
    vae = VAE("both", rng=7, **TINY)
    x = _squares()
    vae.zero_grad()
    vae.loss(vae(x), x)
    twin = copy.deepcopy(vae)                       # the same saved state, the same pending loss
    vae.backward()
    generate(twin, x)                               # an eval-mode forward before the backward
    twin.backward()
    for (name, param), (_, other) in zip(vae.named_parameters(), twin.named_parameters()):
        np.testing.assert_array_equal(other.grad, param.grad, err_msg=name)


def test_reconstruct_uses_the_posterior_mode(rng):
    vae = VAE("both", rng=6, **TINY)
    x = _images(rng, n=4).astype(np.float32)
    for _ in range(2):
        vae.step(x, Adam(vae.parameters(), lr=1e-3))   # running statistics move away from their start
    first = vae.reconstruct(x)
    np.testing.assert_array_equal(vae.reconstruct(x), first)           # no noise in eval mode
    vae.eval()
    mu, _, code_logits = vae.encode(x)
    code = np.exp(code_logits / vae.temperature)
    expected = vae.decode(mu, code / code.sum(axis=-1, keepdims=True))
    np.testing.assert_allclose(first, expected, rtol=1e-5, atol=1e-6)


def test_state_round_trip(tmp_path, rng):
    vae = VAE("both", rng=7, **TINY)
    x = _images(rng, n=4).astype(np.float32)
    vae.step(x, Adam(vae.parameters(), lr=1e-2))
    save_state(tmp_path / "vae.npz", vae.state_dict())
    other = VAE("both", rng=8, **TINY)
    other.load_state_dict(load_state(tmp_path / "vae.npz"))
    np.testing.assert_array_equal(other.reconstruct(x), vae.reconstruct(x))


def test_temperature_is_the_gumbel_layers():
    vae = VAE("categorical", temperature=2.0, image_size=8, width=2)
    vae.temperature = 0.5
    assert vae.gumbel.temperature == 0.5 and vae.temperature == 0.5
    assert VAE("gaussian", image_size=8, width=2).temperature is None


def test_errors(rng):
    with pytest.raises(ValueError, match="latent must be one of"):
        VAE("discrete")
    with pytest.raises(ValueError, match="divisible by 4.*30"):
        VAE(image_size=30)
    with pytest.raises(ValueError, match="latent_dim must be a positive integer"):
        VAE(latent_dim=0)
    with pytest.raises(ValueError, match="kl_weight must be >= 0"):
        VAE(kl_weight=-1)
    vae = VAE("both", rng=0, **TINY)
    with pytest.raises(ValueError, match=r"8x8 images \(N, 3, 8, 8\), got shape \(2, 3, 16, 16\)"):
        vae(np.zeros((2, 3, 16, 16), np.float32))
    with pytest.raises(ValueError, match="expects 3 channels"):
        vae(np.zeros((2, 1, 8, 8), np.float32))
    with pytest.raises(RuntimeError, match="backward needs a loss"):
        vae.backward()
    out = vae(_images(rng).astype(np.float32))
    with pytest.raises(TypeError, match="VAEOutput"):
        vae.loss(out.logits, out.logits)
    with pytest.raises(ValueError, match="target images have shape"):
        vae.loss(out, np.zeros((2, 3, 8, 8), np.float32))
    with pytest.raises(ValueError, match=r"z must have shape \(N, 2\)"):
        vae.decode(np.zeros((2, 5)), one_hot(np.zeros((2, 2), int), 3))
    with pytest.raises(ValueError, match=r"code must have shape \(N, 2, 3\)"):
        vae.decode(np.zeros((2, 2)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"categories must be in \[0, 2\]"):
        vae.sample(2, code=np.array([[0, 3], [1, 1]]))
    with pytest.raises(ValueError, match="no categorical latent"):
        VAE("gaussian", image_size=8, width=2).temperature = 1.0


@pytest.mark.gpu
def test_gpu_step_and_sample(rng):
    import cupy
    vae = VAE("both", rng=9, **TINY).to("gpu")
    x = cupy.asarray(_images(rng, n=8).astype(np.float32))
    parts = vae.step(x, Adam(vae.parameters(), lr=1e-3))
    assert np.isfinite(parts["loss"])
    assert isinstance(vae.sample(4, rng=0), cupy.ndarray)
    assert isinstance(vae.reconstruct(x), cupy.ndarray)


@pytest.mark.gpu
def test_a_gpu_step_copies_nothing_but_its_logged_scalars(rng, device_copies):
    """Issue 6, as for GANTrainer: with the batch on the device, a step draws its noise on the device,
    uploads nothing, and fetches the loss's four parts in one copy (before the update, which a
    non-finite loss must stop); any other wait for the GPU raises."""
    import cupy

    from nnbox import backend
    vae = VAE("both", rng=9, **TINY).to("gpu")
    optimizer = Adam(vae.parameters(), lr=1e-3)
    x = cupy.asarray(_images(rng, n=8).astype(np.float32))
    vae.step(x, optimizer)                       # the first step builds what later ones reuse
    with device_copies(backend) as (uploads, fetches):
        parts = vae.step(x, optimizer)
    assert uploads == [] and fetches == [(4,)]
    assert set(parts) == {"reconstruction", "kl_gaussian", "kl_categorical", "loss"} and np.isfinite(parts["loss"])
