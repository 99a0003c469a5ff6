"""How good is a generator? Distances between image sets, and the feature networks they use.

Images are float NCHW in [-1, 1] (NumPy or CuPy); features are (N, D) arrays. Everything is computed
in float64 and returned as Python floats (or NumPy arrays for per-image values).

Measures:
    frechet_distance(f1, f2)              FID when f are Inception pool features (Heusel et al. 2017)
    kernel_inception_distance(f1, f2)     KID: unbiased MMD^2 with the kernel (x.y/d + 1)^3, over subsets
    inception_score(probs)                IS = exp(E_x KL(p(y|x) || p(y))), over splits
    sliced_wasserstein_distance(a, b)     SWD on Laplacian-pyramid patches (Karras et al. 2018), no network
    ssim(x, y)                            structural similarity, Gaussian window 11, sigma 1.5
    nearest_neighbours(gen, train)        the closest training images in pixel space (L2), in batches
    nearest_neighbours_ssim(gen, train)   the most similar by SSIM, among an L2 shortlist
    memorization_fraction(gen, train)     share of generated images closer than a threshold to a training one

Feature networks follow the `FeatureExtractor` protocol (`features(images) -> (N, D)`, batched inside);
`PixelFeatures` here, `gan.inception.InceptionFeatures` and `gan.classifier.ClassifierFeatures`.
"""
import math
import warnings
from typing import Protocol, runtime_checkable

import numpy as np

from nnbox.backend import as_rng, get_array_module, to_numpy


# --------------------------------------------------------------------------- feature extractors
@runtime_checkable
class FeatureExtractor(Protocol):
    """Anything that maps images (N, C, H, W) in [-1, 1] to features (N, D), in batches.

    An extractor that is also a classifier adds `probabilities(images) -> (N, K)` (rows sum to 1);
    the Inception Score is computed only then. `name` labels it in metrics.json.
    """

    name: str

    def features(self, images):
        ...


class PixelFeatures:
    """The raw pixels as features (optionally average-pooled by `pool` first): FID/KID in pixel space.

    Cheap and needs no network, but pixel distances measure blur and shifts badly; use it as a baseline.
    """

    name = "pixels"

    def __init__(self, pool=1, batch_size=1000):
        self.pool = int(pool)
        self.batch_size = int(batch_size)

    def features(self, images):
        out = []
        for start in range(0, len(images), self.batch_size):
            x = images[start:start + self.batch_size]
            if self.pool > 1:
                n, c, h, w = x.shape
                p = self.pool
                x = x[:, :, :h - h % p, :w - w % p].reshape(n, c, h // p, p, w // p, p).mean(axis=(3, 5))
            out.append(to_numpy(x.reshape(len(x), -1)).astype(np.float64))
        return np.concatenate(out)


def has_probabilities(extractor):
    return callable(getattr(extractor, "probabilities", None))


# --------------------------------------------------------------------------- Frechet distance
def feature_statistics(features):
    """(mean (D,), covariance (D, D)) of features (N, D) in float64; covariance with N - 1, as np.cov.

    Warns when N <= D: the covariance is then rank-deficient (rank <= N - 1), which biases FID upwards;
    the distance is still well defined (the matrix square root below handles singular matrices).
    """
    xp = get_array_module(features)
    features = xp.asarray(features, dtype=xp.float64)
    if features.ndim != 2:
        raise ValueError(f"features must be (N, D), got shape {tuple(features.shape)}")
    n, d = features.shape
    if n < 2:
        raise ValueError(f"a covariance needs at least 2 feature vectors, got {n}")
    if n <= d:
        warnings.warn(f"only {n} samples for {d}-dimensional features: the covariance has rank < {d}, so the "
                      f"Frechet distance is biased (upwards); use more samples than feature dimensions "
                      f"(FID is usually reported on 10,000 or 50,000)", RuntimeWarning, stacklevel=3)
    mu = features.mean(axis=0)
    centred = features - mu
    return mu, centred.T @ centred / (n - 1)


def _psd_sqrt(matrix):
    """The symmetric square root of a symmetric positive semi-definite matrix, by eigendecomposition.

    Round-off makes tiny eigenvalues negative; they are clipped to 0 (they are 0 in exact arithmetic).
    """
    xp = get_array_module(matrix)
    values, vectors = xp.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * xp.sqrt(xp.clip(values, 0, None))) @ vectors.T


def trace_sqrt_product(sigma1, sigma2):
    """tr sqrt(S1 S2) for covariances S1, S2, computed stably.

    S1 S2 is not symmetric, but it is similar to M = sqrt(S1) S2 sqrt(S1) (conjugate by sqrt(S1)),
    which is symmetric positive semi-definite, so tr sqrt(S1 S2) = sum_i sqrt(max(eig_i(M), 0)).
    Only symmetric eigendecompositions are used: no complex numbers, correct for singular S1 or S2.
    """
    xp = get_array_module(sigma1)
    root1 = _psd_sqrt(sigma1)
    middle = root1 @ sigma2 @ root1
    values = xp.linalg.eigvalsh((middle + middle.T) / 2)
    return float(xp.sqrt(xp.clip(values, 0, None)).sum())


def frechet_distance_from_statistics(mu1, sigma1, mu2, sigma2):
    """d^2 = ||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr sqrt(S1 S2): the squared Frechet (2-Wasserstein)
    distance between the Gaussians N(mu1, S1) and N(mu2, S2)."""
    xp = get_array_module(mu1, sigma1, mu2, sigma2)
    mu1, mu2 = xp.asarray(mu1, dtype=xp.float64), xp.asarray(mu2, dtype=xp.float64)
    sigma1, sigma2 = xp.asarray(sigma1, dtype=xp.float64), xp.asarray(sigma2, dtype=xp.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise ValueError(f"statistics do not match: means {tuple(mu1.shape)}, {tuple(mu2.shape)}; "
                         f"covariances {tuple(sigma1.shape)}, {tuple(sigma2.shape)}")
    diff = mu1 - mu2
    value = float(diff @ diff) + float(xp.trace(sigma1) + xp.trace(sigma2)) - 2 * trace_sqrt_product(sigma1, sigma2)
    return max(value, 0.0)  # round-off can leave -1e-12 for identical sets


def frechet_distance(features1, features2):
    """The Frechet distance between Gaussians fitted to two feature sets (N1, D) and (N2, D).

    With Inception-v3 pool features (gan.inception) this is FID.
    """
    return frechet_distance_from_statistics(*feature_statistics(features1), *feature_statistics(features2))


# --------------------------------------------------------------------------- KID
def polynomial_kernel(x, y):
    """k(x, y) = (x.y / d + 1)^3, the kernel of KID (Binkowski et al. 2018); x (N, d), y (M, d) -> (N, M)."""
    k = x @ y.T / x.shape[1] + 1.0
    return k * k * k  # three times faster than k ** 3


def mmd2_unbiased(x, y, kernel=polynomial_kernel):
    """The unbiased estimate of MMD^2 between samples x (m, d) and y (n, d):
    sum_{i!=j} k(x_i, x_j) / (m(m-1)) + sum_{i!=j} k(y_i, y_j) / (n(n-1)) - 2 mean_{i,j} k(x_i, y_j)."""
    xp = get_array_module(x, y)
    m, n = len(x), len(y)
    if m < 2 or n < 2:
        raise ValueError(f"the unbiased MMD needs at least 2 samples on each side, got {m} and {n}")
    kxx, kyy, kxy = kernel(x, x), kernel(y, y), kernel(x, y)
    return float((kxx.sum() - xp.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - xp.trace(kyy)) / (n * (n - 1))
                 - 2 * kxy.mean())


def kernel_inception_distance(features1, features2, num_subsets=100, subset_size=1000, rng=0):
    """KID: the unbiased MMD^2 with the polynomial kernel, averaged over random subsets.

    Each of `num_subsets` draws takes min(subset_size, N1, N2) rows of each set without replacement;
    when that would take all of both sets (every subset the same, std 0), it takes half of the
    smaller set instead, so the std still says how much the estimate varies. Returns (mean, std) over the subsets. Unbiased: its expectation is 0 when both sets come from the
    same distribution (single values may be negative).
    """
    xp = get_array_module(features1, features2)
    f1 = xp.asarray(features1, dtype=xp.float64)
    f2 = xp.asarray(features2, dtype=xp.float64)
    if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1]:
        raise ValueError(f"KID needs two (N, D) feature sets of the same D, got {tuple(f1.shape)} and {tuple(f2.shape)}")
    rng = as_rng(rng)
    m = min(subset_size, len(f1), len(f2))
    if m == len(f1) == len(f2) and num_subsets > 1:
        m = max(2, m // 2)
    values = []
    for _ in range(num_subsets):  # a loop over subsets; each one is three matrix products
        i = xp.asarray(rng.choice(len(f1), m, replace=False))
        j = xp.asarray(rng.choice(len(f2), m, replace=False))
        values.append(mmd2_unbiased(f1[i], f2[j]))
    values = np.array(values)
    return float(values.mean()), float(values.std())


# --------------------------------------------------------------------------- Inception Score
def inception_score(probabilities, splits=10):
    """IS = exp(mean_x KL(p(y|x) || p(y))), p(y) the mean of p(y|x) over the split; (mean, std) over splits.

    Args:
        probabilities: (N, K) class probabilities (rows sum to 1), e.g. a classifier's softmax.
        splits: the images are cut into this many consecutive parts of near-equal size
            (np.array_split: the first N mod splits parts hold one image more).

    It is 1 when every image gets the same distribution, K when every image is confidently one class
    and the classes are used equally. 0 log 0 is taken as 0.
    """
    p = np.asarray(to_numpy(probabilities), dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"probabilities must be (N, K), got shape {p.shape}")
    if np.any(p < 0) or not np.allclose(p.sum(axis=1), 1.0, atol=1e-4):
        raise ValueError("probabilities must be non-negative rows that sum to 1 (apply a softmax to logits first)")
    splits = int(splits)
    if not 1 <= splits <= len(p):
        raise ValueError(f"splits must be between 1 and the number of images {len(p)}, got {splits}")
    scores = []
    for part in np.array_split(p, splits):
        marginal = part.mean(axis=0, keepdims=True)
        positive = part > 0
        # where p > 0 the marginal is > 0 too, so the log is finite
        terms = np.where(positive, part * (np.log(np.where(positive, part, 1.0)) - np.log(np.where(positive, marginal, 1.0))), 0.0)
        scores.append(math.exp(terms.sum(axis=1).mean()))
    return float(np.mean(scores)), float(np.std(scores))


# --------------------------------------------------------------------------- sliced Wasserstein distance
_BINOMIAL5 = np.array([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0  # the separable 5x5 Gaussian of the pyramids


def _filter5(x, taps):
    """Separable 5-tap filter of the last two axes with mirror padding (d c b | a b c d | c b a)."""
    xp = get_array_module(x)
    padded = xp.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2)), mode="reflect")
    h, w = x.shape[2:]
    rows = sum(float(t) * padded[:, :, k:k + h, :] for k, t in enumerate(taps))
    return sum(float(t) * rows[:, :, :, k:k + w] for k, t in enumerate(taps))


def _pyr_down(x):
    return _filter5(x, _BINOMIAL5)[:, :, ::2, ::2]


def _pyr_up(x, size):
    xp = get_array_module(x)
    n, c = x.shape[:2]
    up = xp.zeros((n, c) + tuple(size), dtype=x.dtype)
    up[:, :, ::2, ::2] = x
    return _filter5(up, _BINOMIAL5 * 2.0)  # x4 in 2-D: the zeros between samples carry no energy


def laplacian_pyramid(images, levels):
    """[band-pass level at full size, at half size, ..., the low-pass residual]: `levels` arrays."""
    pyramid = [images]
    for _ in range(levels - 1):
        pyramid.append(_pyr_down(pyramid[-1]))
    for i in range(levels - 1):
        pyramid[i] = pyramid[i] - _pyr_up(pyramid[i + 1], pyramid[i].shape[2:])
    return pyramid


def _patch_index(shape, per_image, size, rng):
    """Flat indices of `per_image` random size x size patches in every image of an (N, C, H, W) array:
    (N * per_image, C * size * size); level.reshape(-1)[index] gathers the patches in one go."""
    n, c, h, w = shape
    half = size // 2
    count = n * per_image
    image = np.repeat(np.arange(n), per_image)[:, None, None, None]
    channel = np.arange(c)[None, :, None, None]
    y = rng.integers(half, h - half, size=(count, 1, 1, 1)) + np.arange(-half, half + 1)[None, None, :, None]
    x = rng.integers(half, w - half, size=(count, 1, 1, 1)) + np.arange(-half, half + 1)[None, None, None, :]
    return (((image * c + channel) * h + y) * w + x).reshape(count, -1)


def _normalise_descriptors(desc, channels):
    """Per-channel zero mean, unit variance over all the set's patches (Karras et al.'s finalize_descriptors)."""
    xp = get_array_module(desc)
    d = desc.reshape(len(desc), channels, -1)
    d = (d - d.mean(axis=(0, 2), keepdims=True)) / xp.maximum(d.std(axis=(0, 2), keepdims=True), 1e-8)
    return d.reshape(len(desc), -1)


def _sliced_wasserstein(a, b, repeats, directions, rng):
    xp = get_array_module(a)
    results = []
    for _ in range(repeats):
        dirs = xp.asarray(rng.standard_normal((a.shape[1], directions)))
        dirs /= xp.sqrt((dirs ** 2).sum(axis=0, keepdims=True))
        # (directions, patches): each projection is a contiguous row, which sorts several times faster
        pa = xp.sort(dirs.T @ a.T, axis=1)
        pb = xp.sort(dirs.T @ b.T, axis=1)
        results.append(float(xp.abs(pa - pb).mean()))
    return float(np.mean(results))


def sliced_wasserstein_distance(images1, images2, patches_per_image=128, patch_size=7, min_resolution=16,
                                repeats=4, directions=128, rng=0):
    """SWD between two image sets on Laplacian-pyramid patches, as Karras et al. (2018) measure it.

    Each image is split into a Laplacian pyramid, from its own size down to the last size >=
    `min_resolution` (28 px MNIST: one level; 32 px: 32 and 16; 64 px: 64, 32, 16). From every level,
    `patches_per_image` random `patch_size` x `patch_size` patches are taken from every image and, per
    set and per level, normalised to zero mean and unit variance per colour channel. The distance
    between the two sets of patch descriptors is the sliced Wasserstein distance: the mean over
    `repeats` x `directions` random unit directions of the 1-D Wasserstein-1 distance between the
    projections (sorted projections, matched in order). Patches are taken at the same random
    positions in both sets (Karras et al. draw them independently; sharing them removes that noise,
    and makes the distance of a set to itself exactly 0).

    Both sets must hold the same number of images (the 1-D matching pairs sorted values). Values are
    reported x 1e3, like the paper's tables.

    Returns:
        {"swd": mean over levels, "swd_levels": {resolution: value}} (values x 1e3).
    """
    xp = get_array_module(images1, images2)
    if images1.shape != images2.shape:
        raise ValueError(f"SWD compares sets of equally many images of one shape, got {tuple(images1.shape)} "
                         f"and {tuple(images2.shape)}: subsample the larger set")
    n, c, h, w = images1.shape
    if min(h, w) < patch_size:
        raise ValueError(f"images of {h}x{w} are smaller than a {patch_size}x{patch_size} patch")
    resolutions = []
    size = min(h, w)
    while size >= min_resolution or not resolutions:
        resolutions.append(size)
        size //= 2
        if size < patch_size:
            break
    rng = as_rng(rng)
    pyramids = [laplacian_pyramid(xp.asarray(images, dtype=xp.float64), len(resolutions))
                for images in (images1, images2)]
    levels = {}
    for res, level1, level2 in zip(resolutions, *pyramids):
        # the same patch positions in both sets: identical sets are exactly 0 apart, and the
        # sampling of positions adds no noise to the comparison
        index = xp.asarray(_patch_index(level1.shape, patches_per_image, patch_size, rng))
        a, b = (_normalise_descriptors(level.reshape(-1)[index], c) for level in (level1, level2))
        levels[res] = 1e3 * _sliced_wasserstein(a, b, repeats, directions, rng)
    return {"swd": float(np.mean(list(levels.values()))), "swd_levels": levels}


# --------------------------------------------------------------------------- SSIM
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03


def gaussian_window(size=SSIM_WINDOW, sigma=SSIM_SIGMA):
    """The 1-D normalised Gaussian taps of SSIM's window (the 2-D window is their outer product)."""
    offsets = np.arange(size) - (size - 1) / 2
    taps = np.exp(-offsets ** 2 / (2 * sigma ** 2))
    return taps / taps.sum()


def _gaussian_valid(x, taps):
    """Separable 'valid' filtering of the last two axes (no padding: output shrinks by len(taps) - 1)."""
    k = len(taps)
    h, w = x.shape[-2:]
    rows = sum(float(t) * x[..., i:i + h - k + 1, :] for i, t in enumerate(taps))
    return sum(float(t) * rows[..., i:i + w - k + 1] for i, t in enumerate(taps))


def ssim(x, y, value_range=(-1.0, 1.0), window_size=SSIM_WINDOW, sigma=SSIM_SIGMA):
    """Structural similarity of image pairs (Wang et al. 2004): (N,) values, 1 for identical images.

    SSIM = (2 mu_x mu_y + C1)(2 s_xy + C2) / ((mu_x^2 + mu_y^2 + C1)(s_x^2 + s_y^2 + C2)) with local
    means and (biased) variances under a Gaussian window (11 taps, sigma 1.5), C1 = (0.01 L)^2,
    C2 = (0.03 L)^2. The map covers the 'valid' positions (no padding) and is averaged over positions
    and channels.

    The luminance term compares means as intensities, so it is not invariant to a shift of the values:
    images are first shifted so that `value_range = (low, high)` starts at 0, and L = high - low. The
    default (-1, 1) is nnbox's image range; SSIM on [-1, 1] images then equals SSIM on the same images
    as [0, 1] (value_range=(0, 1)) or as 0..255 (value_range=(0, 255)), the usual definitions.

    Args:
        x, y: (N, C, H, W) or (C, H, W) arrays of the same shape, H and W >= window_size.
    """
    xp = get_array_module(x, y)
    low, high = (float(v) for v in value_range)
    if not high > low:
        raise ValueError(f"value_range must be (low, high) with high > low, got {value_range}")
    x = xp.asarray(x, dtype=xp.float64) - low
    y = xp.asarray(y, dtype=xp.float64) - low
    data_range = high - low
    if x.shape != y.shape:
        raise ValueError(f"ssim compares images of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.ndim == 3:
        x, y = x[None], y[None]
    if x.ndim != 4 or min(x.shape[2:]) < window_size:
        raise ValueError(f"ssim expects (N, C, H, W) images of at least {window_size}x{window_size}, got {tuple(x.shape)}")
    taps = gaussian_window(window_size, sigma)
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    mx, my = _gaussian_valid(x, taps), _gaussian_valid(y, taps)
    sxx = _gaussian_valid(x * x, taps) - mx * mx
    syy = _gaussian_valid(y * y, taps) - my * my
    sxy = _gaussian_valid(x * y, taps) - mx * my
    value = (2 * mx * my + c1) * (2 * sxy + c2) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return to_numpy(value.mean(axis=(1, 2, 3)))


# --------------------------------------------------------------------------- nearest neighbours
def nearest_neighbours(generated, training, k=1, batch_size=2048):
    """The k closest training images to each generated image in pixel space (Euclidean distance).

    Distances come from ||a - b||^2 = ||a||^2 - 2 a.b + ||b||^2, one matrix product per batch of
    `batch_size` training images (13,000 LFW images at 32x32x3 take well under a second); the best
    k + 16 per batch are merged as the batches go. Their distances are then recomputed directly in
    float64 and the k nearest kept, because the float32 expansion loses precision when a and b are
    nearly equal (exactly where memorisation is judged): it alone would pick the wrong one of two
    near-copies (distances 0.011 and 0.022 apart) about one time in three.

    Returns:
        (indices (N, k) int64, distances (N, k) float64), nearest first, both NumPy.
    """
    xp = get_array_module(generated, training)
    if len(training) == 0:
        raise ValueError("nearest_neighbours: the training set is empty")
    if tuple(training.shape[1:]) != tuple(generated.shape[1:]):   # same size in another layout would pass a size check
        raise ValueError(f"nearest_neighbours: generated images are {tuple(generated.shape[1:])} and training "
                         f"images {tuple(training.shape[1:])}; both must be (C, H, W) of the same size")
    for name, images in (("generated", generated), ("training", training)):
        if images.dtype.kind != "f":
            raise ValueError(f"nearest_neighbours: the {name} images are {images.dtype}; both must be floats in "
                             f"one range (nnbox.data.ToFloat turns uint8 images into [-1, 1])")
    gen = xp.asarray(generated, dtype=xp.float32).reshape(len(generated), -1)
    k = min(int(k), len(training))
    shortlist = min(k + 16, len(training))
    gen_sq = (gen * gen).sum(axis=1, keepdims=True)
    best_d = xp.full((len(gen), 0), xp.inf, dtype=xp.float32)
    best_i = xp.zeros((len(gen), 0), dtype=xp.int64)
    for start in range(0, len(training), batch_size):
        block = xp.asarray(training[start:start + batch_size], dtype=xp.float32).reshape(-1, gen.shape[1])
        d2 = gen_sq - 2 * gen @ block.T + (block * block).sum(axis=1)[None, :]
        cand_d = xp.concatenate([best_d, d2], axis=1)
        cand_i = xp.concatenate([best_i, xp.broadcast_to(xp.arange(start, start + len(block)), d2.shape)], axis=1)
        keep = (xp.argpartition(cand_d, shortlist - 1, axis=1)[:, :shortlist] if cand_d.shape[1] > shortlist
                else xp.argsort(cand_d, axis=1))
        best_d = xp.take_along_axis(cand_d, keep, axis=1)
        best_i = xp.take_along_axis(cand_i, keep, axis=1)
    # exact distances of the shortlist, 64 generated images at a time (their float64 differences
    # are 64 x shortlist x C H W), then the k nearest in order
    flat_training = xp.asarray(training, dtype=xp.float32).reshape(len(training), -1)
    dist = xp.empty(best_i.shape, dtype=xp.float64)
    for start in range(0, len(gen), 64):
        rows = slice(start, start + 64)
        diff = flat_training[best_i[rows]].astype(xp.float64) - gen[rows, None, :].astype(xp.float64)
        dist[rows] = xp.sqrt((diff * diff).sum(axis=2))
    order = xp.argsort(dist, axis=1)[:, :k]
    return to_numpy(xp.take_along_axis(best_i, order, axis=1)), to_numpy(xp.take_along_axis(dist, order, axis=1))


def nearest_neighbours_ssim(generated, training, shortlist=20, value_range=(-1.0, 1.0), batch_size=2048):
    """The most similar training image to each generated one by SSIM, searched among its L2 shortlist.

    SSIM over all pairs would cost N x M windowed filterings; instead the `shortlist` nearest images in
    pixel space (`nearest_neighbours`) are ranked by SSIM. An image very similar in structure but far in
    L2 (e.g. a global brightness change) can therefore be missed; a larger shortlist narrows that.

    Returns:
        (indices (N,) int64, ssim values (N,) float64), NumPy.
    """
    idx, _ = nearest_neighbours(generated, training, k=shortlist, batch_size=batch_size)
    xp = get_array_module(generated)
    n, k = idx.shape
    candidates = xp.asarray(training)[xp.asarray(idx.reshape(-1))]
    repeated = xp.repeat(xp.asarray(generated), k, axis=0)
    values = ssim(repeated, candidates, value_range=value_range).reshape(n, k)
    best = values.argmax(axis=1)
    return idx[np.arange(n), best], values[np.arange(n), best]


def rms_distance(distances, image_shape):
    """L2 distances -> root-mean-square per-value differences (independent of the image size)."""
    return np.asarray(distances) / math.sqrt(int(np.prod(image_shape)))


def memorization_fraction(generated, training, threshold=0.1, batch_size=2048):
    """The fraction of generated images whose nearest training image is closer than `threshold`.

    The distance is the root-mean-square pixel difference on [-1, 1] images (L2 / sqrt(C H W)), so
    0.1 means the images differ by 5% of the value range on average. Returns (fraction, rms distances (N,)).
    """
    _, dist = nearest_neighbours(generated, training, k=1, batch_size=batch_size)
    rms = rms_distance(dist[:, 0], generated.shape[1:])
    return float((rms < threshold).mean()), rms


# --------------------------------------------------------------------------- figures
def save_nearest_neighbours_figure(generated, training, indices, path, values=None, label="L2"):
    """A PNG of pairs: each generated image (left) beside its nearest training image (right).

    Args:
        indices: (N,) training indices, one per generated image.
        values: optional (N,) distances or similarities printed under the pairs.
    """
    from .visualize import new_figure, save_figure, to_uint8_images

    gen = to_uint8_images(generated)
    near = to_uint8_images(to_numpy(training)[np.asarray(indices)])
    n = len(gen)
    columns = min(n, 8)
    rows = math.ceil(n / columns)
    fig, axes = new_figure(rows, 2 * columns, figsize=(2 * columns * 0.9, rows * 1.1), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for i in range(n):
        r, c = divmod(i, columns)
        axes[r, 2 * c].imshow(gen[i], interpolation="nearest")
        axes[r, 2 * c + 1].imshow(near[i], interpolation="nearest")
        if values is not None:
            axes[r, 2 * c + 1].set_title(f"{label} {float(values[i]):.3g}", fontsize=6)
    fig.suptitle(f"generated (left) and its nearest training image by {label} (right)", fontsize=8)
    save_figure(fig, path)
    return path
