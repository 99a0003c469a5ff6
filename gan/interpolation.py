"""Latent interpolation: walk between two noise vectors and look at what the generator draws on the way.

    path = slerp(z0, z1, steps=8)                     # (8, latent_dim), z0 first, z1 last (exactly)
    save_interpolation_grid(G, z0s, z1s, "interp.png", steps=8, method="slerp")   # one row per pair

Linear interpolation (lerp) cuts through the inside of the Gaussian ball, where a normal latent of
high dimension almost never lies (its norm concentrates near sqrt(latent_dim)); spherical
interpolation (slerp, Shoemake 1985; White 2016 for GANs) follows the great circle, so every point
has the norm of the end points when they share one. Opposite end points have no one great circle
between them: slerp then walks the straight line, through 0 (as for parallel ones, where it is the
same path).
"""
import numpy as np

from nnbox.backend import get_array_module

METHODS = ("linear", "slerp")


def _fractions(steps, xp, dtype):
    steps = int(steps)
    if steps < 2:
        raise ValueError(f"an interpolation needs at least 2 steps (the two end points), got {steps}")
    return xp.linspace(0.0, 1.0, steps).astype(dtype)


def _float_dtype(z0, z1):
    """The dtype of a path between z0 and z1: theirs if floating, float32 for integer vectors."""
    return np.result_type(z0, z1, np.float32)


def lerp(z0, z1, steps):
    """(steps, D): (1 - t) z0 + t z1 for t = 0, 1/(steps-1), ..., 1; the end points are z0 and z1 exactly."""
    xp = get_array_module(z0, z1)
    t = _fractions(steps, xp, _float_dtype(z0, z1))[:, None]
    return (1 - t) * z0[None] + t * z1[None]


def slerp(z0, z1, steps, eps=1e-7):
    """(steps, D): spherical interpolation sin((1-t) w)/sin(w) z0 + sin(t w)/sin(w) z1, w the angle
    between z0 and z1, computed in float64 as 2 atan2(|u0 - u1|, |u0 + u1|) for the unit vectors
    (accurate at every angle, where arccos of the cosine loses float32 pairs near pi). Falls back
    to lerp when they are parallel or opposite within `eps` (sin(w) ~ 0) or one is 0."""
    xp = get_array_module(z0, z1)
    dtype = _float_dtype(z0, z1)
    a, b = z0.astype(np.float64), z1.astype(np.float64)
    n0, n1 = float(xp.linalg.norm(a)), float(xp.linalg.norm(b))
    if n0 == 0 or n1 == 0:
        return lerp(z0, z1, steps)
    u0, u1 = a / n0, b / n1
    omega = 2.0 * np.arctan2(float(xp.linalg.norm(u0 - u1)), float(xp.linalg.norm(u0 + u1)))
    if np.sin(omega) < eps:
        return lerp(z0, z1, steps)
    t = _fractions(steps, xp, np.float64)[:, None]
    w0 = xp.sin((1 - t) * omega) / np.sin(omega)
    w1 = xp.sin(t * omega) / np.sin(omega)
    return (w0 * a[None] + w1 * b[None]).astype(dtype)


def interpolate(z0, z1, steps, method="slerp"):
    """Interpolate one pair (D,) -> (steps, D), or P pairs (P, D) -> (P, steps, D)."""
    if method not in METHODS:
        raise ValueError(f"interpolation method must be one of {METHODS}, got {method!r}")
    walk = slerp if method == "slerp" else lerp
    if z0.shape != z1.shape:
        raise ValueError(f"end points differ in shape: {tuple(z0.shape)} and {tuple(z1.shape)}")
    if z0.ndim == 1:
        return walk(z0, z1, steps)
    xp = get_array_module(z0, z1)
    return xp.stack([walk(a, b, steps) for a, b in zip(z0, z1)])


def interpolation_images(generator, z0, z1, steps=8, method="slerp", batch_size=256, train=False):
    """The generator's images along P interpolations: (P * steps, C, H, W), pair by pair (rows of a grid).

    The generator runs in eval mode (BatchNorm's running statistics, no Dropout), or with `train` in
    training mode (BatchNorm normalises each batch, as a GAN's sample grids do with sample_mode
    "train"); its state is left as it was either way (Module.without_side_effects).
    """
    latents = interpolate(z0, z1, steps, method).reshape(-1, z0.shape[-1]).astype(np.float32)
    with generator.without_side_effects(train=train):
        images = [generator(latents[i:i + batch_size]) for i in range(0, len(latents), batch_size)]
    xp = get_array_module(images[0])
    return xp.concatenate(images)


def save_interpolation_grid(generator, z0, z1, path, steps=8, method="slerp", train=False):
    """A PNG grid with one interpolation per row (z0 on the left, z1 on the right); returns the path."""
    from .visualize import save_image_grid

    images = interpolation_images(generator, z0, z1, steps, method, train=train)
    size = images.shape[-1]
    return save_image_grid(images, path, nrow=steps, scale=max(1, 64 // size))
