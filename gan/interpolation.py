"""Latent interpolation: walk between two noise vectors and look at what the generator draws on the way.

    path = slerp(z0, z1, steps=8)                     # (8, latent_dim), z0 first, z1 last (exactly)
    save_interpolation_grid(G, z0s, z1s, "interp.png", steps=8, method="slerp")   # one row per pair

Linear interpolation (lerp) cuts through the inside of the Gaussian ball, where a normal latent of
high dimension almost never lies (its norm concentrates near sqrt(latent_dim)); spherical
interpolation (slerp, Shoemake 1985; White 2016 for GANs) follows the great circle, so every point
has the norm of the end points when they share one.
"""
import numpy as np

from nnbox.backend import get_array_module

METHODS = ("linear", "slerp")


def _fractions(steps, xp, dtype):
    steps = int(steps)
    if steps < 2:
        raise ValueError(f"an interpolation needs at least 2 steps (the two end points), got {steps}")
    return xp.linspace(0.0, 1.0, steps).astype(dtype)


def lerp(z0, z1, steps):
    """(steps, D): (1 - t) z0 + t z1 for t = 0, 1/(steps-1), ..., 1; the end points are z0 and z1 exactly."""
    xp = get_array_module(z0, z1)
    t = _fractions(steps, xp, np.result_type(z0, z1))[:, None]
    return (1 - t) * z0[None] + t * z1[None]


def slerp(z0, z1, steps, eps=1e-7):
    """(steps, D): spherical interpolation sin((1-t) w)/sin(w) z0 + sin(t w)/sin(w) z1, w the angle
    between z0 and z1. Falls back to lerp when they are (anti-)parallel within `eps` (sin(w) ~ 0)."""
    xp = get_array_module(z0, z1)
    dtype = np.result_type(z0, z1)
    n0, n1 = xp.linalg.norm(z0), xp.linalg.norm(z1)
    cos = float(xp.clip((z0 @ z1) / (n0 * n1), -1.0, 1.0)) if n0 > 0 and n1 > 0 else 1.0
    omega = np.arccos(cos)
    if abs(np.sin(omega)) < eps:
        return lerp(z0, z1, steps)
    t = _fractions(steps, xp, dtype)[:, None]
    w0 = xp.sin((1 - t) * omega) / np.sin(omega)
    w1 = xp.sin(t * omega) / np.sin(omega)
    return (w0 * z0[None] + w1 * z1[None]).astype(dtype)


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


def interpolation_images(generator, z0, z1, steps=8, method="slerp", batch_size=256):
    """The generator's images along P interpolations: (P * steps, C, H, W), pair by pair (rows of a grid).

    The generator is put in eval mode (BatchNorm uses running statistics, Dropout is off) and restored.
    """
    latents = interpolate(z0, z1, steps, method).reshape(-1, z0.shape[-1]).astype(np.float32)
    was_training = generator.training
    generator.eval()
    try:
        images = [generator(latents[i:i + batch_size]) for i in range(0, len(latents), batch_size)]
    finally:
        generator.train(was_training)
    xp = get_array_module(images[0])
    return xp.concatenate(images)


def save_interpolation_grid(generator, z0, z1, path, steps=8, method="slerp"):
    """A PNG grid with one interpolation per row (z0 on the left, z1 on the right); returns the path."""
    from .visualize import save_image_grid

    images = interpolation_images(generator, z0, z1, steps, method)
    size = images.shape[-1]
    return save_image_grid(images, path, nrow=steps, scale=max(1, 64 // size))
