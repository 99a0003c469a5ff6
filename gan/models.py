"""GAN generators and discriminators built from nnbox layers: the course's faces GAN, DCGAN, an MLP GAN.

Every model is a Module: `images = G(z)` with z (N, latent_dim) and images (N, C, H, W) in [-1, 1]
(Tanh); `logits = D(images)` with logits (N, 1); `G.backward(dimages) -> dz`,
`D.backward(dlogits) -> dimages`. The layers sit in a Sequential named `main`.

Discriminator options (every discriminator):
    activation: "leaky_relu" (slope 0.2) or "relu".
    input_dropout: Dropout on D's input (a GAN trick: D sees corrupted images, real and fake alike).
    spectral_norm: wrap every Conv2d and Linear of D in SpectralNorm (Miyato et al. 2018).

    G, D = build_gan("faces", image_size=32, rng=0)
"""
import inspect

from layers import (BatchNorm2d, Conv2d, ConvTranspose2d, Dropout, Flatten, LeakyReLU, Linear,
                    MaxPool2d, ReLU, Reshape, SpectralNorm, Tanh, Unpool2d)
from layers._checks import check_input
from nnbox import init
from nnbox.backend import as_rng
from nnbox.module import Module, Sequential

ACTIVATIONS = ("leaky_relu", "relu")
LEAKY_SLOPE = 0.2  # DCGAN's slope, used by every discriminator here


def _activation(name):
    if name == "leaky_relu":
        return LeakyReLU(LEAKY_SLOPE)
    if name == "relu":
        return ReLU()
    raise ValueError(f"unknown activation {name!r}: use one of {ACTIVATIONS}")


def _doublings(model, image_size, start):
    """k with image_size == start * 2**k, k >= 1; a clear error otherwise."""
    k, size = 0, start
    while size < image_size:
        size, k = size * 2, k + 1
    if size != image_size or k < 1:
        raise ValueError(f"{model}: image_size must be {start} times a power of two (>= {2 * start}), "
                         f"got {image_size}")
    return k


def _check_probability(model, name, p):
    if not 0.0 <= p < 1.0:
        raise ValueError(f"{model}: {name} must be in [0, 1), got {p}")


def _dropout(p, rng):
    """[Dropout(p)], or [] when p == 0 (no layer that does nothing)."""
    return [Dropout(p, rng=rng)] if p > 0 else []


class _Network(Module):
    """A model whose layers are the Sequential `main` (forward checks the input's shape)."""

    def backward(self, dy):
        return self.main.backward(dy)

    def backward_parameters(self, dy):
        return self.main.backward_parameters(dy)


class _Generator(_Network):
    def __init__(self, latent_dim, image_size, channels):
        super().__init__()
        self.latent_dim, self.image_size, self.channels = latent_dim, image_size, channels

    def forward(self, z):
        if getattr(z, "ndim", None) != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"{type(self).__name__} expects latent vectors z of shape (N, {self.latent_dim}), "
                             f"got shape {tuple(getattr(z, 'shape', ()))}")
        return self.main(z)

    def extra_repr(self):
        return f"latent_dim={self.latent_dim}, image_size={self.image_size}, channels={self.channels}"


class _Discriminator(_Network):
    def __init__(self, image_size, channels, activation, input_dropout, spectral_norm, rng):
        super().__init__()
        _check_probability(type(self).__name__, "input_dropout", input_dropout)
        _activation(activation)  # validate early
        self.image_size, self.channels = image_size, channels
        self.activation, self.spectral_norm = activation, spectral_norm
        self._input_dropout = input_dropout
        self._rng = rng

    def _weighted(self, layer):
        """Conv2d/Linear, wrapped in SpectralNorm when asked for."""
        return SpectralNorm(layer, rng=self._rng) if self.spectral_norm else layer

    def _input_layers(self):
        return _dropout(self._input_dropout, self._rng)

    def forward(self, x):
        check_input(self, x, 4, self.channels, what="(N, C, H, W)")
        if x.shape[2:] != (self.image_size, self.image_size):
            raise ValueError(f"{type(self).__name__} expects {self.image_size}x{self.image_size} images "
                             f"(N, {self.channels}, {self.image_size}, {self.image_size}), got shape {tuple(x.shape)}")
        return self.main(x)

    def extra_repr(self):
        return (f"image_size={self.image_size}, channels={self.channels}, activation={self.activation}, "
                f"spectral_norm={self.spectral_norm}")


# --------------------------------------------------------------------------- the course's faces GAN
class FacesGenerator(_Generator):
    """The course's faces generator: Linear, Reshape, then upsampling blocks, Tanh out.

    z -> Linear(latent_dim, 4w * 4 * 4) -> Reshape(4w, 4, 4) -> ReLU -> BatchNorm2d
      -> blocks [Unpool2d(2), ConvTranspose2d(c, c', k, padding=k//2), ReLU, Dropout, BatchNorm2d]
      -> final  [Unpool2d(2), ConvTranspose2d(c, channels, k, padding=k//2), Tanh]
    Each block doubles the size (the stride-1 transposed convolution keeps it); the channels halve
    from 4w, never below w. 32x32: 4w -> 2w -> w -> channels (4 -> 8 -> 16 -> 32); 64x64 adds a
    block of w channels.

    Args:
        latent_dim, image_size (4 * 2**k, k >= 1), channels: z's size, the images' size and channels.
        width: w above.
        dropout: probability of the Dropout in each block (0: no Dropout layer).
        kernel_size: of the transposed convolutions, odd (3 or 5).
        unpool_mode: Unpool2d's "nearest" (copy each pixel to its 2x2 block) or "zeros" (top-left).
        rng: NumPy Generator or seed for the weights and the dropout masks.
    """

    def __init__(self, latent_dim=100, *, image_size=32, channels=3, width=64, dropout=0.0, kernel_size=3,
                 unpool_mode="nearest", rng=None):
        super().__init__(latent_dim, image_size, channels)
        n_blocks = _doublings("FacesGenerator", image_size, 4)
        _check_probability("FacesGenerator", "dropout", dropout)
        if kernel_size % 2 != 1:
            raise ValueError(f"FacesGenerator: kernel_size must be odd to keep the size, got {kernel_size}")
        rng = as_rng(rng)
        widths = [max(4 * width // 2**i, width) for i in range(n_blocks)]
        layers = [Linear(latent_dim, widths[0] * 16, rng=rng), Reshape(widths[0], 4, 4), ReLU(),
                  BatchNorm2d(widths[0])]
        pad = kernel_size // 2
        for c_in, c_out in zip(widths[:-1], widths[1:]):
            layers += [Unpool2d(2, mode=unpool_mode), ConvTranspose2d(c_in, c_out, kernel_size, padding=pad, rng=rng),
                       ReLU(), *_dropout(dropout, rng), BatchNorm2d(c_out)]
        layers += [Unpool2d(2, mode=unpool_mode), ConvTranspose2d(widths[-1], channels, kernel_size, padding=pad, rng=rng),
                   Tanh()]
        self.main = Sequential(*layers)


class FacesDiscriminator(_Discriminator):
    """The course's faces discriminator: three blocks of [Conv2d, MaxPool2d, activation, Dropout], then
    Flatten -> Linear(4w * (s/8)^2, hidden) -> activation -> Dropout -> Linear(hidden, 1).

    Channels channels -> w -> 2w -> 4w; 3x3 convolutions with padding 1 keep the size and each
    MaxPool2d(2) halves it, so s x s images end at 4w x s/8 x s/8.

    Args:
        image_size: s, a multiple of 8. channels: the images' channels. width: w.
        activation, input_dropout, spectral_norm: see the module docstring.
        dropout: probability of the Dropout after each block and the hidden Linear.
        hidden: the hidden Linear's size (default 4w).
        rng: NumPy Generator or seed.
    """

    def __init__(self, image_size=32, *, channels=3, width=32, activation="leaky_relu", dropout=0.3,
                 input_dropout=0.0, spectral_norm=False, hidden=None, rng=None):
        rng = as_rng(rng)
        super().__init__(image_size, channels, activation, input_dropout, spectral_norm, rng)
        if image_size % 8 or image_size < 8:
            raise ValueError(f"FacesDiscriminator: image_size must be a multiple of 8, got {image_size}")
        _check_probability("FacesDiscriminator", "dropout", dropout)
        hidden = 4 * width if hidden is None else hidden
        widths = [channels, width, 2 * width, 4 * width]
        layers = self._input_layers()
        for c_in, c_out in zip(widths[:-1], widths[1:]):
            layers += [self._weighted(Conv2d(c_in, c_out, 3, padding=1, rng=rng)), MaxPool2d(2),
                       _activation(activation), *_dropout(dropout, rng)]
        features = widths[-1] * (image_size // 8) ** 2
        layers += [Flatten(), self._weighted(Linear(features, hidden, rng=rng)), _activation(activation),
                   *_dropout(dropout, rng), self._weighted(Linear(hidden, 1, rng=rng))]
        self.main = Sequential(*layers)


# --------------------------------------------------------------------------- DCGAN
DCGAN_SIZES = (32, 64)


def _dcgan_size(model, image_size):
    if image_size not in DCGAN_SIZES:
        raise ValueError(f"{model}: image_size must be one of {DCGAN_SIZES}, got {image_size}")
    return DCGAN_SIZES.index(image_size) + 3  # the number of stride-2 layers: 32 -> 3, 64 -> 4


class DCGANGenerator(_Generator):
    """DCGAN's generator (Radford et al. 2015): z as a 1x1 image, then transposed convolutions.

    ConvTranspose2d(latent_dim, c, 4, 1, 0) -> 4x4, then ConvTranspose2d(c, c/2, 4, stride 2, padding 1)
    doubling the size, each followed by BatchNorm2d and ReLU (the convolutions have no bias: BatchNorm
    removes it), and a last ConvTranspose2d(w, channels, 4, 2, 1) with Tanh. Channels 4w -> 2w -> w
    (32x32) or 8w -> 4w -> 2w -> w (64x64). Weights: DCGAN's N(0, 0.02) (nnbox.init.init_dcgan).
    """

    def __init__(self, image_size=32, *, latent_dim=100, channels=3, width=64, rng=None):
        super().__init__(latent_dim, image_size, channels)
        n_layers = _dcgan_size("DCGANGenerator", image_size)
        rng = as_rng(rng)
        widths = [width * 2**i for i in reversed(range(n_layers))]
        layers = [Reshape(latent_dim, 1, 1),
                  ConvTranspose2d(latent_dim, widths[0], 4, stride=1, padding=0, bias=False, rng=rng),
                  BatchNorm2d(widths[0]), ReLU()]
        for c_in, c_out in zip(widths[:-1], widths[1:]):
            layers += [ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1, bias=False, rng=rng),
                       BatchNorm2d(c_out), ReLU()]
        layers += [ConvTranspose2d(widths[-1], channels, 4, stride=2, padding=1, bias=False, rng=rng), Tanh()]
        self.main = Sequential(*layers)
        init.init_dcgan(self, rng)


class DCGANDiscriminator(_Discriminator):
    """DCGAN's discriminator: Conv2d(c, c', 4, stride 2, padding 1) halving the size, LeakyReLU(0.2),
    BatchNorm2d on every layer but the first; a final Conv2d(c, 1, 4, 1, 0) on the 4x4 map gives one
    logit, flattened to (N, 1). Channels w -> 2w -> 4w (32x32) or up to 8w (64x64).

    With spectral_norm the BatchNorms are left out (spectral normalisation replaces them, as in
    SN-GAN's discriminator); batch_norm=False leaves them out too (a WGAN-GP critic: its gradient
    penalty is per sample, and BatchNorm mixes the samples), and the convolutions keep their bias.
    Weights: N(0, 0.02).
    """

    def __init__(self, image_size=32, *, channels=3, width=64, activation="leaky_relu", input_dropout=0.0,
                 spectral_norm=False, batch_norm=True, rng=None):
        rng = as_rng(rng)
        super().__init__(image_size, channels, activation, input_dropout, spectral_norm, rng)
        n_layers = _dcgan_size("DCGANDiscriminator", image_size)
        widths = [channels] + [width * 2**i for i in range(n_layers)]
        layers = self._input_layers()
        for index, (c_in, c_out) in enumerate(zip(widths[:-1], widths[1:])):
            norm = index > 0 and batch_norm and not spectral_norm
            layers += [self._weighted(Conv2d(c_in, c_out, 4, stride=2, padding=1, bias=not norm, rng=rng))]
            layers += [BatchNorm2d(c_out)] if norm else []
            layers += [_activation(activation)]
        layers += [self._weighted(Conv2d(widths[-1], 1, 4, stride=1, padding=0, rng=rng)), Flatten()]
        self.main = Sequential(*layers)
        init.init_dcgan(self, rng)


# --------------------------------------------------------------------------- MLP GAN
class MLPGenerator(_Generator):
    """A fully connected generator: Linear(latent_dim, h) -> ReLU -> Linear(h, 2h) -> ReLU
    -> Linear(2h, C*s*s) -> Tanh -> Reshape(C, s, s)."""

    def __init__(self, image_size=28, *, channels=1, latent_dim=100, hidden=256, rng=None):
        super().__init__(latent_dim, image_size, channels)
        rng = as_rng(rng)
        self.main = Sequential(
            Linear(latent_dim, hidden, rng=rng), ReLU(),
            Linear(hidden, 2 * hidden, rng=rng), ReLU(),
            Linear(2 * hidden, channels * image_size**2, rng=rng), Tanh(),
            Reshape(channels, image_size, image_size))


class MLPDiscriminator(_Discriminator):
    """A fully connected discriminator: Flatten -> Linear(C*s*s, 2h) -> activation -> Dropout
    -> Linear(2h, h) -> activation -> Dropout -> Linear(h, 1)."""

    def __init__(self, image_size=28, *, channels=1, hidden=256, activation="leaky_relu", dropout=0.3,
                 input_dropout=0.0, spectral_norm=False, rng=None):
        rng = as_rng(rng)
        super().__init__(image_size, channels, activation, input_dropout, spectral_norm, rng)
        _check_probability("MLPDiscriminator", "dropout", dropout)
        self.main = Sequential(
            *self._input_layers(), Flatten(),
            self._weighted(Linear(channels * image_size**2, 2 * hidden, rng=rng)), _activation(activation),
            *_dropout(dropout, rng),
            self._weighted(Linear(2 * hidden, hidden, rng=rng)), _activation(activation), *_dropout(dropout, rng),
            self._weighted(Linear(hidden, 1, rng=rng)))


# --------------------------------------------------------------------------- build_gan
ARCHITECTURES = {
    # arch: (generator, discriminator, default generator width, default discriminator width)
    "faces": (FacesGenerator, FacesDiscriminator, 64, 32),
    "dcgan": (DCGANGenerator, DCGANDiscriminator, 64, 64),
    "mlp": (MLPGenerator, MLPDiscriminator, 256, 256),
}


def build_gan(arch="faces", image_size=32, latent_dim=100, channels=3, width=None, rng=None, **options):
    """A (generator, discriminator) pair of architecture "faces", "dcgan" or "mlp".

    width: both networks' width (the MLPs' hidden size); None: the defaults of ARCHITECTURES
    (faces: G 64, D 32; dcgan: 64; mlp: 256). `options` are the models' other keyword arguments: a
    name goes to every model that takes it (`dropout=` sets both faces networks' dropout); prefix it
    with `g_` or `d_` for one network only (`g_width=128`, `d_dropout=0.4`, `d_spectral_norm=True`).
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown GAN architecture {arch!r}: use one of {sorted(ARCHITECTURES)}")
    g_class, d_class, g_width, d_width = ARCHITECTURES[arch]
    width_name = "hidden" if arch == "mlp" else "width"
    g_kwargs = {"image_size": image_size, "latent_dim": latent_dim, "channels": channels,
                width_name: g_width if width is None else width}
    d_kwargs = {"image_size": image_size, "channels": channels, width_name: d_width if width is None else width}
    g_names = set(inspect.signature(g_class).parameters) - {"rng"}
    d_names = set(inspect.signature(d_class).parameters) - {"rng"}
    for key, value in options.items():
        g_key = key[2:] if key.startswith("g_") else None if key.startswith("d_") else key
        d_key = key[2:] if key.startswith("d_") else None if key.startswith("g_") else key
        if key in ("g_width", "d_width"):  # the MLPs call it hidden
            g_key, d_key = (width_name if g_key else None), (width_name if d_key else None)
        taken = False
        if g_key in g_names:
            g_kwargs[g_key], taken = value, True
        if d_key in d_names:
            d_kwargs[d_key], taken = value, True
        if not taken:
            raise TypeError(f"build_gan({arch!r}): unknown option {key!r}; the generator takes "
                            f"{sorted(g_names)}, the discriminator {sorted(d_names)} (prefix g_ or d_ for one only)")
    rng = as_rng(rng)
    return g_class(**g_kwargs, rng=rng), d_class(**d_kwargs, rng=rng)
