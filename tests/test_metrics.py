"""gan.metrics: Frechet distance, KID, IS, SWD, SSIM, nearest neighbours, memorisation; gan.interpolation."""
import numpy as np
import pytest

from gan import metrics
from gan.interpolation import interpolate, lerp, slerp


# --------------------------------------------------------------------------- Frechet distance
def test_frechet_distance_matches_the_closed_form_on_gaussians(rng):
    # diagonal covariances: tr sqrt(S1 S2) = sum sqrt(s1_i s2_i) exactly
    mu1, mu2 = np.array([0.0, 1.0, -1.0]), np.array([0.5, 1.0, 0.0])
    s1, s2 = np.array([1.0, 2.0, 0.5]), np.array([0.25, 2.0, 3.0])
    closed = ((mu1 - mu2) ** 2).sum() + s1.sum() + s2.sum() - 2 * np.sqrt(s1 * s2).sum()
    n = 200_000
    a = mu1 + rng.standard_normal((n, 3)) * np.sqrt(s1)
    b = mu2 + rng.standard_normal((n, 3)) * np.sqrt(s2)
    value = metrics.frechet_distance(a, b)
    # the sample statistics of 200,000 draws are within ~1% of the true ones
    assert value == pytest.approx(closed, rel=0.02)
    assert closed == pytest.approx(1.25 + 8.75 - 2 * (0.5 + 2 + 1.5 ** 0.5))  # 2.5505: far from 0


def test_frechet_distance_of_identical_sets_is_zero(rng):
    a = rng.standard_normal((500, 8)) @ rng.standard_normal((8, 8))
    assert metrics.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)


def test_frechet_distance_equals_the_scipy_sqrtm_formula(rng):
    linalg = pytest.importorskip("scipy.linalg", reason="scipy is the oracle for the matrix square root")
    a = rng.standard_normal((400, 6)) @ rng.standard_normal((6, 6))
    b = rng.standard_normal((300, 6)) @ rng.standard_normal((6, 6)) + 0.3
    mu1, s1 = np.mean(a, axis=0), np.cov(a, rowvar=False)
    mu2, s2 = np.mean(b, axis=0), np.cov(b, rowvar=False)
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(linalg.sqrtm(s1 @ s2)).real
    assert metrics.frechet_distance(a, b) == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_with_fewer_samples_than_dimensions_warns_and_stays_finite(rng):
    a, b = rng.standard_normal((10, 32)), rng.standard_normal((12, 32)) + 1.0
    with pytest.warns(RuntimeWarning, match="biased"):
        value = metrics.frechet_distance(a, b)
    assert np.isfinite(value) and value > 0
    with pytest.warns(RuntimeWarning):
        assert metrics.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    # the mean term alone: 32 dimensions shifted by ~1 -> ~32 plus covariance differences
    assert value > 16


def test_frechet_distance_rejects_bad_shapes(rng):
    with pytest.raises(ValueError, match="at least 2"):
        metrics.frechet_distance(rng.standard_normal((1, 3)), rng.standard_normal((5, 3)))
    with pytest.raises(ValueError, match="do not match"):
        metrics.frechet_distance(rng.standard_normal((5, 3)), rng.standard_normal((5, 4)))


# --------------------------------------------------------------------------- KID
def test_kid_matches_the_closed_form_for_zero_mean_gaussians(rng):
    # zero-mean x ~ N(0, S1), y ~ N(0, S2): E (x.y/d + 1)^3 = 1 + 3 tr(S1 S2) / d^2 (odd moments vanish),
    # so MMD^2 = 3 ||S1 - S2||_F^2 / d^2; with S1 = I, S2 = 2.25 I in d = 8: 3 * 8 * 1.25^2 / 64 = 0.5859
    d = 8
    a = rng.standard_normal((10_000, d))
    b = 1.5 * rng.standard_normal((10_000, d))
    mean, std = metrics.kernel_inception_distance(a, b, num_subsets=10, subset_size=1000, rng=1)
    # over 8 seeds the mean of 20 such subsets stayed within 4% of the closed form (subset std ~6%);
    # 10% is about 3 standard errors of a 10-subset mean
    assert 0 < std < 0.1
    assert mean == pytest.approx(3 * d * 1.25 ** 2 / d ** 2, rel=0.10)


def test_kid_is_unbiased_on_one_distribution(rng):
    a = rng.standard_normal((4000, 16))
    b = rng.standard_normal((4000, 16))
    mean, std = metrics.kernel_inception_distance(a, b, num_subsets=50, subset_size=500, rng=2)
    # the biased estimator would be ~ 2 E k(x,x) / m ~ 2 * (1 + 3 * 16/16^2 + ...) / 500 ~ 5e-3 here
    assert abs(mean) < 1e-3
    shifted_mean, _ = metrics.kernel_inception_distance(a, b + 0.5, num_subsets=20, subset_size=500, rng=2)
    assert shifted_mean > 10 * abs(mean) + 0.01


# --------------------------------------------------------------------------- IS
def test_inception_score_of_uniform_predictions_is_one():
    mean, std = metrics.inception_score(np.full((100, 10), 0.1), splits=5)
    assert mean == pytest.approx(1.0, abs=1e-12) and std == pytest.approx(0.0, abs=1e-12)


def test_inception_score_of_confident_distinct_classes_is_the_number_of_classes():
    probs = np.eye(10)[np.arange(200) % 10]
    mean, std = metrics.inception_score(probs, splits=4)
    assert mean == pytest.approx(10.0, rel=1e-12) and std == pytest.approx(0.0, abs=1e-9)
    # confident but always the same class: no diversity -> 1
    assert metrics.inception_score(np.eye(10)[np.zeros(50, int)], splits=1)[0] == pytest.approx(1.0)


def test_inception_score_checks_its_input():
    with pytest.raises(ValueError, match="softmax"):
        metrics.inception_score(np.ones((4, 3)), splits=1)


# --------------------------------------------------------------------------- SWD
def test_swd_is_zero_on_identical_sets_and_grows_with_a_shift(rng):
    images = np.tanh(rng.standard_normal((16, 3, 32, 32)))
    same = metrics.sliced_wasserstein_distance(images, images.copy(), patches_per_image=32, rng=0)
    assert same["swd"] == 0.0
    assert sorted(same["swd_levels"]) == [16, 32]
    # a brightness shift is removed by the per-channel normalisation; a change of structure is not
    smooth = metrics._filter5(images, metrics._BINOMIAL5)
    values = []
    for weight in (0.25, 0.5, 1.0):
        other = (1 - weight) * images + weight * smooth
        values.append(metrics.sliced_wasserstein_distance(images, other, patches_per_image=32, rng=0)["swd"])
    assert 0 < values[0] < values[1] < values[2]


def test_swd_levels_for_mnist_size_and_shape_errors(rng):
    images = rng.standard_normal((4, 1, 28, 28))
    assert list(metrics.sliced_wasserstein_distance(images, images, patches_per_image=8)["swd_levels"]) == [28]
    with pytest.raises(ValueError, match="subsample"):
        metrics.sliced_wasserstein_distance(images, images[:3])


def test_laplacian_pyramid_levels_sum_back_to_the_image(rng):
    images = rng.standard_normal((2, 3, 32, 32))
    bands = metrics.laplacian_pyramid(images, 3)
    assert [b.shape[-1] for b in bands] == [32, 16, 8]
    rebuilt = bands[-1]
    for band in reversed(bands[:-1]):
        rebuilt = band + metrics._pyr_up(rebuilt, band.shape[2:])
    np.testing.assert_allclose(rebuilt, images, atol=1e-12)


# --------------------------------------------------------------------------- SSIM
def _ssim_reference(x, y, low, high):
    """SSIM of one (C, H, W) pair straight from the definition: a 2-D window at every valid position."""
    x, y, data_range = x - low, y - low, high - low
    taps = metrics.gaussian_window()
    window = np.outer(taps, taps)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    values = []
    for ch in range(x.shape[0]):
        for i in range(x.shape[1] - 10):
            for j in range(x.shape[2] - 10):
                a, b = x[ch, i:i + 11, j:j + 11], y[ch, i:i + 11, j:j + 11]
                ma, mb = (window * a).sum(), (window * b).sum()
                va, vb = (window * (a - ma) ** 2).sum(), (window * (b - mb) ** 2).sum()
                cov = (window * (a - ma) * (b - mb)).sum()
                values.append((2 * ma * mb + c1) * (2 * cov + c2) / ((ma ** 2 + mb ** 2 + c1) * (va + vb + c2)))
    return np.mean(values)


def test_ssim_matches_a_direct_windowed_formula(rng):
    x = np.clip(rng.standard_normal((2, 3, 16, 14)) * 0.5, -1, 1)
    y = np.clip(x + 0.3 * rng.standard_normal(x.shape), -1, 1)
    values = metrics.ssim(x, y)
    expected = [_ssim_reference(x[i], y[i], -1.0, 1.0) for i in range(2)]
    np.testing.assert_allclose(values, expected, rtol=1e-10)
    assert 0.2 < values.min() < values.max() < 0.95


def test_ssim_known_values(rng):
    x = rng.uniform(-1, 1, (3, 1, 20, 20))
    np.testing.assert_allclose(metrics.ssim(x, x), 1.0, rtol=1e-12)
    # the same pictures as [-1, 1], [0, 1] or 0..255 values have the same SSIM
    y = np.clip(x + 0.2 * rng.standard_normal(x.shape), -1, 1)
    expected = metrics.ssim(x, y)
    np.testing.assert_allclose(metrics.ssim((x + 1) / 2, (y + 1) / 2, value_range=(0, 1)), expected, rtol=1e-10)
    np.testing.assert_allclose(metrics.ssim((x + 1) * 127.5, (y + 1) * 127.5, value_range=(0, 255)), expected,
                               rtol=1e-10)
    # flat images: no structure, only the luminance term (2 a b + C1) / (a^2 + b^2 + C1); mid-grey (0) and
    # white (1) are 1 and 2 above the bottom of the range, L = 2, C1 = (0.01 * 2)^2
    grey, white = np.zeros((1, 1, 12, 12)), np.ones((1, 1, 12, 12))
    c1 = 0.02 ** 2
    assert metrics.ssim(grey, white)[0] == pytest.approx((4 + c1) / (5 + c1), rel=1e-12)
    with pytest.raises(ValueError, match="at least 11x11"):
        metrics.ssim(x[:, :, :8, :8], x[:, :, :8, :8])


def test_ssim_against_skimage_if_installed(rng):
    skimage_metrics = pytest.importorskip("skimage.metrics", reason="scikit-image is an optional oracle")
    x = rng.uniform(0, 1, (1, 3, 24, 24))
    y = np.clip(x + 0.15 * rng.standard_normal(x.shape), 0, 1)
    expected = skimage_metrics.structural_similarity(
        x[0], y[0], channel_axis=0, data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    # skimage filters the whole (padded) map then averages after cropping (win-1)/2: the valid positions
    assert metrics.ssim(x, y, value_range=(0, 1))[0] == pytest.approx(expected, rel=1e-6)


# --------------------------------------------------------------------------- nearest neighbours
def test_nearest_neighbours_match_brute_force_across_batches(rng):
    train = rng.uniform(-1, 1, (301, 3, 8, 8)).astype(np.float32)
    gen = rng.uniform(-1, 1, (7, 3, 8, 8)).astype(np.float32)
    gen[2] = train[123]  # an exact copy
    idx, dist = metrics.nearest_neighbours(gen, train, k=3, batch_size=64)
    brute = np.sqrt(((gen.reshape(7, 1, -1).astype(np.float64) - train.reshape(1, 301, -1)) ** 2).sum(-1))
    order = np.argsort(brute, axis=1)[:, :3]
    np.testing.assert_array_equal(idx, order)
    np.testing.assert_allclose(dist, np.take_along_axis(brute, order, 1), rtol=1e-6)
    assert idx[2, 0] == 123 and dist[2, 0] == 0.0  # the recomputed distance of a copy is exact


def test_nearest_neighbours_pick_the_nearer_of_two_near_copies(rng):
    # true distances 0.011 and 0.022: the float32 expansion |a|^2 - 2 a.b + |b|^2 alone picked the
    # farther one in about a third of the draws; the exact recomputation now decides the order
    wrong = 0
    for _ in range(50):
        base = rng.uniform(-1, 1, (1, 3, 32, 32)).astype(np.float32)
        nearer = base + 2e-4 * rng.standard_normal(base.shape).astype(np.float32)
        farther = base + 4e-4 * rng.standard_normal(base.shape).astype(np.float32)
        idx, dist = metrics.nearest_neighbours(base, np.concatenate([farther, nearer]), k=1)
        wrong += idx[0, 0] != 1
    assert wrong == 0


def test_nearest_neighbours_refuse_another_layout_or_uint8(rng):
    # channel-last or uint8 [0, 255] training images of the same size were compared pixel-scrambled
    gen = rng.uniform(-1, 1, (4, 3, 8, 8)).astype(np.float32)
    with pytest.raises(ValueError, match=r"generated images are \(3, 8, 8\) and training images \(8, 8, 3\)"):
        metrics.nearest_neighbours(gen, gen.transpose(0, 2, 3, 1))
    with pytest.raises(ValueError, match=r"the training images are uint8; .*ToFloat"):
        metrics.memorization_fraction(gen, np.zeros((5, 3, 8, 8), np.uint8))


def test_nearest_neighbours_by_ssim_and_memorization(rng):
    train = np.tanh(rng.standard_normal((50, 1, 16, 16)))
    gen = np.tanh(rng.standard_normal((6, 1, 16, 16)))
    gen[:2] = np.clip(train[[10, 20]] + 0.01 * rng.standard_normal((2, 1, 16, 16)), -1, 1)
    idx, values = metrics.nearest_neighbours_ssim(gen, train, shortlist=5)
    assert list(idx[:2]) == [10, 20] and values[:2].min() > 0.95
    full = metrics.ssim(np.repeat(gen, len(train), axis=0), np.tile(train, (len(gen), 1, 1, 1))).reshape(6, 50)
    # a shortlist as long as the training set is the exhaustive search; a short one can only miss
    idx_all, values_all = metrics.nearest_neighbours_ssim(gen, train, shortlist=50)
    np.testing.assert_allclose(values_all, full.max(axis=1), rtol=1e-12)
    np.testing.assert_array_equal(idx_all, full.argmax(axis=1))
    assert np.all(values <= values_all + 1e-15)
    fraction, rms = metrics.memorization_fraction(gen, train, threshold=0.05)
    assert fraction == pytest.approx(2 / 6) and rms[:2].max() < 0.05 < rms[2:].min()


def test_nearest_neighbours_figure_is_written(rng, tmp_path):
    train = rng.uniform(-1, 1, (20, 3, 8, 8)).astype(np.float32)
    gen = train[:5] + 0.1
    idx, dist = metrics.nearest_neighbours(gen, train)
    path = metrics.save_nearest_neighbours_figure(gen, train, idx[:, 0], tmp_path / "nn.png", dist[:, 0])
    assert path.stat().st_size > 1000 and path.read_bytes()[:4] == b"\x89PNG"


def test_pixel_features_are_a_feature_extractor(rng):
    images = rng.uniform(-1, 1, (5, 3, 8, 8)).astype(np.float32)
    extractor = metrics.PixelFeatures(pool=2, batch_size=2)
    assert isinstance(extractor, metrics.FeatureExtractor) and not metrics.has_probabilities(extractor)
    feats = extractor.features(images)
    assert feats.shape == (5, 3 * 4 * 4)
    np.testing.assert_allclose(feats[0, 0], images[0, 0, :2, :2].mean(), rtol=1e-6)


# --------------------------------------------------------------------------- interpolation
def test_interpolation_end_points_are_exact_and_slerp_keeps_the_norm(rng):
    z0, z1 = rng.standard_normal(64), rng.standard_normal(64)
    z1 *= np.linalg.norm(z0) / np.linalg.norm(z1)
    for path in (lerp(z0, z1, 9), slerp(z0, z1, 9)):
        assert path.shape == (9, 64)
        np.testing.assert_array_equal(path[0], z0)
        np.testing.assert_array_equal(path[-1], z1)
    norms = np.linalg.norm(slerp(z0, z1, 9), axis=1)
    np.testing.assert_allclose(norms, np.linalg.norm(z0), rtol=1e-12)
    # lerp cuts through the ball: its midpoint is shorter
    assert np.linalg.norm(lerp(z0, z1, 3)[1]) < 0.9 * np.linalg.norm(z0)
    # the slerp midpoint is at equal angles from both ends
    mid = slerp(z0, z1, 3)[1]
    cos = [mid @ z / (np.linalg.norm(mid) * np.linalg.norm(z)) for z in (z0, z1)]
    assert cos[0] == pytest.approx(cos[1], rel=1e-12)


def test_slerp_keeps_the_norm_near_opposite_float32_ends(rng):
    # the cosine of an angle near pi rounds to -1 in float32; the angle is taken another way, in float64
    z0 = rng.standard_normal(64).astype(np.float32)
    side = rng.standard_normal(64)
    side -= side @ z0 / (z0 @ z0) * z0
    u, v = z0 / np.linalg.norm(z0), side / np.linalg.norm(side)
    for angle in (np.pi - 1e-3, np.pi - 1e-5):
        z1 = (np.linalg.norm(z0) * (np.cos(angle) * u + np.sin(angle) * v)).astype(np.float32)
        path = slerp(z0, z1, 3)
        assert path.dtype == np.float32
        assert np.linalg.norm(path[1]) == pytest.approx(np.linalg.norm(z0), rel=1e-5)


def test_integer_end_points_give_a_float_path():
    np.testing.assert_array_equal(lerp(np.array([0, 0]), np.array([4, 4]), 5)[:, 0], [0, 1, 2, 3, 4])
    np.testing.assert_allclose(slerp(np.array([2, 0]), np.array([0, 2]), 3)[1], [np.sqrt(2), np.sqrt(2)])


def test_slerp_of_parallel_vectors_falls_back_to_lerp(rng):
    z = rng.standard_normal(8)
    np.testing.assert_allclose(slerp(z, 2 * z, 5), lerp(z, 2 * z, 5), rtol=1e-12)
    batch = interpolate(rng.standard_normal((3, 8)), rng.standard_normal((3, 8)), 4, method="slerp")
    assert batch.shape == (3, 4, 8)
    with pytest.raises(ValueError, match="method"):
        interpolate(z, z, 3, method="cubic")


@pytest.mark.parametrize("train", [False, True])
def test_interpolation_images_in_either_mode_leave_the_generator_alone(train, rng):
    from gan.interpolation import interpolation_images
    from gan.models import build_gan
    G, _ = build_gan("dcgan", image_size=32, latent_dim=4, width=2, rng=0)   # BatchNorm in G
    G.train()
    z0, z1 = rng.standard_normal((2, 4)).astype(np.float32), rng.standard_normal((2, 4)).astype(np.float32)
    running = {k: v.copy() for k, v in G.state_dict().items()}
    images = interpolation_images(G, z0, z1, steps=3, train=train)
    assert images.shape == (6, 3, 32, 32) and G.training
    for key, value in G.state_dict().items():
        np.testing.assert_array_equal(value, running[key], err_msg=key)
    latents = interpolate(z0, z1, 3).reshape(-1, 4).astype(np.float32)
    with G.without_side_effects(train=train):          # the same G: batch statistics or running ones
        np.testing.assert_allclose(images, G(latents), rtol=1e-6, atol=1e-6)


@pytest.mark.gpu
def test_measures_on_cupy_arrays_match_numpy(rng):
    import cupy
    a, b = rng.standard_normal((300, 16)), rng.standard_normal((300, 16)) + 0.2
    assert metrics.frechet_distance(cupy.asarray(a), cupy.asarray(b)) == pytest.approx(
        metrics.frechet_distance(a, b), rel=1e-9)
    images = np.tanh(rng.standard_normal((8, 3, 32, 32)))
    other = np.tanh(rng.standard_normal((8, 3, 32, 32)))
    np.testing.assert_allclose(metrics.ssim(cupy.asarray(images), cupy.asarray(other)), metrics.ssim(images, other),
                               rtol=1e-9)
    swd_gpu = metrics.sliced_wasserstein_distance(cupy.asarray(images), cupy.asarray(other), patches_per_image=16)
    swd_cpu = metrics.sliced_wasserstein_distance(images, other, patches_per_image=16)
    assert swd_gpu["swd"] == pytest.approx(swd_cpu["swd"], rel=1e-9)
    idx, dist = metrics.nearest_neighbours(cupy.asarray(images[:3]), cupy.asarray(other))
    np.testing.assert_array_equal(idx, metrics.nearest_neighbours(images[:3], other)[0])


def test_kid_of_two_small_sets_still_varies_over_subsets(rng):
    a = rng.standard_normal((64, 8))
    b = rng.standard_normal((64, 8)) + 1.0
    mean, std = metrics.kernel_inception_distance(a, b, num_subsets=10, subset_size=1000, rng=0)
    assert mean > 0 and std > 0   # subsets of 32 of the 64 rows differ; all 64 would give std 0
