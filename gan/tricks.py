"""GAN training tricks: label smoothing, soft and flipped labels, instance noise, latent sampling.

Each trick is an option of the trainer, off by default, and is tested on constructed cases in
tests/test_tricks.py. Dropout on the discriminator's input, the other trick, is a model option
(`input_dropout=` of the discriminators in gan/models.py).

Randomness comes from a NumPy Generator (or seed) given at construction, so a run is reproducible;
small arrays (labels, latents) are drawn on the host and moved to the device, so the same seed gives
the same values on the CPU and the GPU.
"""
import numpy as np

from nnbox.backend import as_rng, draw_dtype, get_array_module, random_generator

# Random soft labels (Salimans et al. 2016; "ganhacks"): real ~ U(0.7, 1.0), fake ~ U(0.0, 0.3).
SOFT_REAL_CENTRE, SOFT_FAKE_CENTRE, SOFT_HALF_WIDTH = 0.85, 0.15, 0.15


class _DeviceDraws:
    """For tricks that draw random numbers with a NumPy generator `self.rng`: on CuPy arrays they draw
    with a CuPy generator seeded once from it (`nnbox.backend.random_generator`), so no upload."""

    def _device_generator(self, xp):
        if xp not in self._device_rngs:
            self._device_rngs[xp] = random_generator(self.rng, xp)
        return self._device_rngs[xp]

    def reset_device_rngs(self):
        """Forget the CuPy generator; the next GPU draw seeds a new one from `rng` (after a restore)."""
        self._device_rngs.clear()


class LabelPolicy(_DeviceDraws):
    """The discriminator's targets for a batch: hard, smoothed, random soft, and partly flipped.

    Args:
        smoothing: one-sided label smoothing s in [0, 1): real targets are 1 - s, fake targets stay 0
            (smoothing the fake side too would reward the generator for samples D thinks are fake).
        soft_labels: draw every target at random instead of using constants:
            real = clip(0.85 + 0.15 u, 0, 1), fake = clip(0.15 + 0.15 u'), u, u' ~ U(-1, 1) i.i.d.,
            i.e. real ~ U(0.70, 1.00) with mean 0.85 and fake ~ U(0.00, 0.30) with mean 0.15 (the clip
            is only a guard: these ranges already lie in [0, 1]). Cannot be combined with smoothing.
        flip_fraction: in each batch, exactly round(flip_fraction * n) positions i, chosen at random,
            swap their targets: real sample i gets the fake target and fake sample i the real one
            (so the same fraction of D's 2n labels is wrong).
        rng: NumPy Generator or seed.

    `targets(n, xp)` returns (real_targets, fake_targets), float32 arrays (n, 1) of module `xp`,
    for the `real_targets`/`fake_targets` arguments of a GAN loss's `discriminator_loss`.
    """

    def __init__(self, smoothing=0.0, soft_labels=False, flip_fraction=0.0, rng=None):
        if not 0.0 <= smoothing < 1.0:
            raise ValueError(f"LabelPolicy: smoothing must be in [0, 1), got {smoothing}")
        if not 0.0 <= flip_fraction <= 1.0:
            raise ValueError(f"LabelPolicy: flip_fraction must be in [0, 1], got {flip_fraction}")
        if soft_labels and smoothing > 0:
            raise ValueError("LabelPolicy: use either smoothing or soft_labels, not both "
                             "(soft labels already keep real targets below 1)")
        self.smoothing = float(smoothing)
        self.soft_labels = bool(soft_labels)
        self.flip_fraction = float(flip_fraction)
        self.rng = as_rng(rng)
        self._device_rngs = {}  # array module -> its generator, made once from self.rng

    @property
    def is_default(self):
        """True when the targets are the plain 1 (real) and 0 (fake)."""
        return self.smoothing == 0 and not self.soft_labels and self.flip_fraction == 0

    def targets(self, n, xp=np):
        """(real_targets, fake_targets), each float32 (n, 1) on the array module `xp`.

        The random draws (soft labels, flipped positions) are made where the targets live: with the
        NumPy generator `rng` for NumPy, with a CuPy generator seeded from it for CuPy (no upload).
        """
        rng = self.rng if xp is np else self._device_generator(xp)
        if self.soft_labels:
            real = SOFT_REAL_CENTRE + SOFT_HALF_WIDTH * rng.uniform(-1.0, 1.0, size=(n, 1))
            fake = SOFT_FAKE_CENTRE + SOFT_HALF_WIDTH * rng.uniform(-1.0, 1.0, size=(n, 1))
            real, fake = xp.clip(real, 0.0, 1.0), xp.clip(fake, 0.0, 1.0)
        else:
            real = xp.full((n, 1), 1.0 - self.smoothing)
            fake = xp.zeros((n, 1))
        n_flip = self.flip_count(n)
        if n_flip:
            if xp is np:
                flipped = rng.choice(n, size=n_flip, replace=False)
            else:                          # n_flip distinct positions: the first of a random order
                flipped = xp.argsort(rng.random(n))[:n_flip]
            real[flipped], fake[flipped] = fake[flipped].copy(), real[flipped].copy()
        return real.astype(np.float32), fake.astype(np.float32)

    def flip_count(self, n):
        """How many of the n positions `targets` flips: round(flip_fraction * n)."""
        return int(round(self.flip_fraction * n))

    def __repr__(self):
        return (f"LabelPolicy(smoothing={self.smoothing}, soft_labels={self.soft_labels}, "
                f"flip_fraction={self.flip_fraction})")


class InstanceNoise(_DeviceDraws):
    """Add Gaussian noise to every image D sees, its std annealed linearly to 0 (Sønderby et al. 2016).

    Args:
        std: the noise std at step 0 (images are in [-1, 1]; 0.1 is a typical start). 0 turns it off.
        decay_steps: the std falls linearly from `std` at step 0 to 0 at step `decay_steps` and stays
            0 after; 0 keeps it constant.
        rng: NumPy Generator or seed.

    `noise(images, step)` returns images + std(step) * N(0, 1), a new array (the input is untouched);
    std(step) = std * max(0, 1 - step / decay_steps). The noise is additive, so gradients with respect
    to the noisy images are gradients with respect to the images: nothing changes in backward.
    """

    def __init__(self, std=0.0, decay_steps=0, rng=None):
        if std < 0:
            raise ValueError(f"InstanceNoise: std must be >= 0, got {std}")
        if decay_steps < 0:
            raise ValueError(f"InstanceNoise: decay_steps must be >= 0, got {decay_steps}")
        self.std = float(std)
        self.decay_steps = int(decay_steps)
        self.rng = as_rng(rng)
        self._device_rngs = {}  # array module -> its generator, made once from self.rng

    def current_std(self, step):
        if self.std == 0 or self.decay_steps == 0:
            return self.std
        return self.std * max(0.0, 1.0 - step / self.decay_steps)

    def __call__(self, images, step):
        std = self.current_std(step)
        if std == 0:
            return images
        xp = get_array_module(images)
        noise = self._device_generator(xp).standard_normal(images.shape, dtype=draw_dtype(images.dtype))
        return images + (images.dtype.type(std) * noise).astype(images.dtype, copy=False)

    def __repr__(self):
        return f"InstanceNoise(std={self.std}, decay_steps={self.decay_steps})"


LATENT_KINDS = ("normal", "uniform")


def sample_latent(n, latent_dim, kind="normal", rng=None, xp=np):
    """Latent vectors z, float32 (n, latent_dim) on module `xp`: "normal" N(0, 1) or "uniform" U(-1, 1).

    Drawn on the host from the NumPy Generator (or seed) `rng`, so a seed gives the same z on any device.
    """
    rng = as_rng(rng)
    if kind == "normal":
        z = rng.standard_normal((n, latent_dim), dtype=np.float32)
    elif kind == "uniform":
        z = rng.uniform(-1.0, 1.0, size=(n, latent_dim)).astype(np.float32)
    else:
        raise ValueError(f"sample_latent: unknown kind {kind!r}: use one of {LATENT_KINDS}")
    return xp.asarray(z)
