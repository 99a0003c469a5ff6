"""GAN tricks on constructed cases: label smoothing, soft and flipped labels, instance noise, latents."""
import numpy as np
import pytest

from gan.tricks import InstanceNoise, LabelPolicy, sample_latent


def test_default_labels_are_one_and_zero():
    policy = LabelPolicy()
    real, fake = policy.targets(7)
    assert policy.is_default
    assert real.shape == (7, 1) and fake.shape == (7, 1)
    assert real.dtype == np.float32 and fake.dtype == np.float32
    np.testing.assert_array_equal(real, 1.0)
    np.testing.assert_array_equal(fake, 0.0)


def test_one_sided_smoothing_moves_only_real_targets():
    real, fake = LabelPolicy(smoothing=0.1).targets(5)
    np.testing.assert_allclose(real, 0.9, rtol=0, atol=1e-7)
    np.testing.assert_array_equal(fake, 0.0)


def test_soft_labels_ranges_and_means():
    real, fake = LabelPolicy(soft_labels=True, rng=0).targets(20000)
    assert real.min() >= 0.7 and real.max() <= 1.0
    assert fake.min() >= 0.0 and fake.max() <= 0.3
    # U(0.7, 1.0) and U(0, 0.3): means 0.85 and 0.15, std 0.3/sqrt(12) ~ 0.087 (4 standard errors: 0.0025)
    assert abs(real.mean() - 0.85) < 0.0025
    assert abs(fake.mean() - 0.15) < 0.0025
    assert abs(real.std() - 0.3 / np.sqrt(12)) < 0.002
    assert len(np.unique(real)) > 19000  # random, not constant


def test_soft_labels_and_smoothing_together_is_an_error():
    with pytest.raises(ValueError, match="either smoothing or soft_labels"):
        LabelPolicy(smoothing=0.1, soft_labels=True)


@pytest.mark.parametrize("fraction, n, expected", [(0.1, 50, 5), (0.25, 8, 2), (0.05, 64, 3), (1.0, 4, 4)])
def test_flip_fraction_flips_exactly_that_many(fraction, n, expected):
    policy = LabelPolicy(smoothing=0.1, flip_fraction=fraction, rng=np.random.default_rng(3))
    real, fake = policy.targets(n)
    assert policy.flip_count(n) == expected
    flipped_real = np.isclose(real[:, 0], 0.0)
    flipped_fake = np.isclose(fake[:, 0], 0.9)
    assert flipped_real.sum() == expected
    # the same positions swap: the real sample gets the fake label and vice versa
    np.testing.assert_array_equal(flipped_real, flipped_fake)
    np.testing.assert_allclose(real[~flipped_real], 0.9, atol=1e-7)
    np.testing.assert_array_equal(fake[~flipped_fake], 0.0)


def test_flip_positions_are_random_and_seeded():
    first = LabelPolicy(flip_fraction=0.5, rng=1).targets(40)[0]
    again = LabelPolicy(flip_fraction=0.5, rng=1).targets(40)[0]
    other = LabelPolicy(flip_fraction=0.5, rng=2).targets(40)[0]
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_flip_with_soft_labels_swaps_values():
    policy = LabelPolicy(soft_labels=True, flip_fraction=0.5, rng=4)
    real, fake = policy.targets(10)
    assert (real < 0.5).sum() == 5 and (fake > 0.5).sum() == 5


@pytest.mark.parametrize("kwargs", [{"smoothing": 1.0}, {"smoothing": -0.1}, {"flip_fraction": 1.5}])
def test_label_policy_rejects_bad_values(kwargs):
    with pytest.raises(ValueError, match="LabelPolicy"):
        LabelPolicy(**kwargs)


def test_instance_noise_std_and_annealing():
    noise = InstanceNoise(std=0.2, decay_steps=100, rng=0)
    assert noise.current_std(0) == pytest.approx(0.2)
    assert noise.current_std(50) == pytest.approx(0.1)
    assert noise.current_std(100) == 0.0
    assert noise.current_std(1000) == 0.0
    images = np.zeros((64, 3, 16, 16), np.float32)
    noisy = noise(images, step=0)
    assert noisy.dtype == np.float32 and noisy.shape == images.shape
    assert abs(noisy.std() - 0.2) < 0.003 and abs(noisy.mean()) < 0.003
    assert abs(noise(images, step=75).std() - 0.05) < 0.001
    assert noise(images, step=100) is images  # annealed to zero: identity
    np.testing.assert_array_equal(images, 0.0)  # the input is untouched


def test_instance_noise_off_and_constant():
    images = np.ones((2, 3, 4, 4), np.float32)
    assert InstanceNoise()(images, step=0) is images
    half = InstanceNoise(std=0.5, rng=0)(np.zeros((8, 3, 4, 4), np.float16), step=0)   # drawn in float32, cast
    assert half.dtype == np.float16 and 0.3 < float(half.astype(np.float32).std()) < 0.7
    constant = InstanceNoise(std=0.1, decay_steps=0, rng=0)
    assert constant.current_std(10**6) == pytest.approx(0.1)
    assert not np.array_equal(constant(images, step=10**6), images)


def test_uniform_latent_in_range():
    z = sample_latent(5000, 8, kind="uniform", rng=0)
    assert z.shape == (5000, 8) and z.dtype == np.float32
    assert z.min() >= -1.0 and z.max() <= 1.0
    assert z.min() < -0.99 and z.max() > 0.99
    assert abs(z.mean()) < 0.01 and abs(z.var() - 1 / 3) < 0.01


def test_normal_latent_moments():
    z = sample_latent(20000, 10, kind="normal", rng=np.random.default_rng(1))
    assert z.shape == (20000, 10) and z.dtype == np.float32
    assert abs(z.mean()) < 0.005 and abs(z.std() - 1.0) < 0.005
    np.testing.assert_array_equal(z, sample_latent(20000, 10, rng=np.random.default_rng(1)))


def test_unknown_latent_kind():
    with pytest.raises(ValueError, match="unknown kind 'gaussian'"):
        sample_latent(2, 3, kind="gaussian")


@pytest.mark.gpu
def test_tricks_on_gpu():
    import cupy

    real, fake = LabelPolicy(soft_labels=True, rng=0).targets(4, cupy)
    assert isinstance(real, cupy.ndarray) and real.shape == (4, 1) and real.dtype == np.float32
    real, fake = LabelPolicy(soft_labels=True, flip_fraction=0.25, rng=0).targets(1000, cupy)
    real, fake = real.get().ravel(), fake.get().ravel()       # drawn on the device: soft ranges, 250 swapped
    assert np.sum(real < 0.5) == 250 and np.sum(fake > 0.5) == 250
    assert np.all((real >= 0) & (real <= 1)) and np.all((fake >= 0) & (fake <= 1))
    assert set(np.flatnonzero(real < 0.5)) == set(np.flatnonzero(fake > 0.5))
    z = sample_latent(3, 5, rng=0, xp=cupy)
    np.testing.assert_array_equal(z.get(), sample_latent(3, 5, rng=0))
    images = cupy.zeros((8, 3, 4, 4), cupy.float32)
    noisy = InstanceNoise(std=0.5, rng=0)(images, step=0)
    assert isinstance(noisy, cupy.ndarray) and float(noisy.std()) > 0.3
