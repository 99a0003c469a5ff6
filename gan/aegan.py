"""AEGAN, the autoencoding GAN (Lazarou 2020): a generator, an encoder and two discriminators.

    G:   z (N, latent_dim)  -> images (N, C, s, s)     E:   images -> z
    D_x: images -> logits (N, 1): real images against G(z) and against reconstructions G(E(x))
    D_z: z -> logits (N, 1):      prior samples z ~ N(0, I) against encodings E(x) and E(G(z))

With x a batch of N real images and z a batch of N prior samples, G and E minimise together

    L_GE = w_adv_image  * L_G(D_x([G(z); G(E(x))]))    fakes and reconstructions should pass as real
         + w_adv_latent * L_G(D_z([E(x); E(G(z))]))     encodings should pass as prior samples
         + w_rec_image  * mean |G(E(x)) - x|            image reconstruction (L1, mean over every pixel)
         + w_rec_latent * mean (E(G(z)) - z)^2          latent reconstruction (L2, mean over every entry)

and the discriminators minimise L_Dx = L_D(D_x(x), D_x([G(z); G(E(x))])) and
L_Dz = L_D(D_z(z), D_z([E(x); E(G(z))])): G's outputs from both sources go to D_x and E's to D_z, as
in Lazarou's reference code. L_G and L_D are the generator and discriminator terms of a gan/losses.py
loss (non-saturating by default: L_G = mean softplus(-logit)). The default weights are those of Lazarou's reference code
(image reconstruction 1, latent reconstruction 0.5, image adversarial 0.005, latent adversarial 0.1):
mostly an autoencoder, with the adversarial terms sharpening the images and shaping E's outputs
into the prior so that G(z) for z ~ N(0, I) draws faces.

    networks = build_aegan("dcgan", image_size=32, latent_dim=32, rng=0)
    trainer = AEGANTrainer(networks, AEGANConfig(), "runs/aegan")
    trainer.fit(loader, epochs=5)                       # loader: nnbox.data.DataLoader of images
    trainer = AEGANTrainer.resume("runs/aegan"); trainer.fit(loader, epochs=10)

The losses are Modules (`GeneratorEncoderLoss`, `DiscriminatorLoss`) whose backward is written out
through the composites, so they are gradient-checked as a whole (tests/test_aegan.py).
"""
import json
import math
import time
from collections import namedtuple
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Optional

import numpy as np

from layers import Conv2d, Linear
from layers._checks import check_input
from nnbox import backend, init
from nnbox.backend import as_rng, get_array_module, to_device, to_numpy
from nnbox.losses import l1, mse
from nnbox.module import Module
from nnbox.optim import Adam
from nnbox.upload import PinnedUploader

from .history import History, atomic_write_text
from .losses import get_gan_loss
from .models import ARCHITECTURES, MLPDiscriminator, _Network, build_gan
from .trainer import (CHECKPOINT_NAME, CheckedWarnings, NonFiniteLossError, _restore_saved_state,
                      _saved_state, non_finite_weights, read_checkpoint_meta,
                      remove_epoch_grids, reset_device_generators, stream_rng)
from .tricks import sample_latent

LOSSES = ("non_saturating", "minimax", "least_squares", "hinge")  # wasserstein needs clipping: not offered
FIGURE_DIRS = ("samples", "reconstructions")


# --------------------------------------------------------------------------- the networks
class Encoder(_Network):
    """E: images (N, C, s, s) -> latent vectors (N, latent_dim): the discriminator of `arch`
    (gan/models.py) with its last layer giving latent_dim outputs instead of one logit.

    "dcgan": Conv2d(C, w, 4, 2, 1) ... halving the size, BatchNorm2d, LeakyReLU(0.2), then
    Conv2d(4w, latent_dim, 4, 1, 0) on the 4x4 map and Flatten (DCGAN's N(0, 0.02) weights);
    "faces": three [Conv2d 3x3, MaxPool2d, LeakyReLU] blocks, Linear(., hidden), Linear(hidden, latent_dim);
    "mlp": Flatten, Linear(C s s, 2h), Linear(2h, h), Linear(h, latent_dim). The output is linear
    (z's prior is N(0, I), unbounded); dropout inside is off (E should be deterministic).

    Args:
        arch, image_size, channels: as the matching discriminator. latent_dim: the size of z.
        width: the discriminator's width (None: gan.models.ARCHITECTURES' default).
        rng: NumPy Generator or seed.
    """

    def __init__(self, arch="dcgan", image_size=32, channels=3, latent_dim=100, width=None, rng=None):
        super().__init__()
        if arch not in ARCHITECTURES:
            raise ValueError(f"Encoder: unknown architecture {arch!r}: use one of {sorted(ARCHITECTURES)}")
        rng = as_rng(rng)
        options = {"dropout": 0.0} if arch in ("faces", "mlp") else {}
        body = build_gan(arch, image_size=image_size, channels=channels, width=width, rng=rng,
                         **{f"d_{k}": v for k, v in options.items()})[1]
        index, last = [(i, layer) for i, layer in enumerate(body.main) if isinstance(layer, (Conv2d, Linear))][-1]
        if isinstance(last, Conv2d):
            head = init.init_dcgan(Conv2d(last.in_channels, latent_dim, last.kernel_size, stride=last.stride,
                                          padding=last.padding, rng=rng), rng)
        else:
            head = Linear(last.in_features, latent_dim, rng=rng)
        body.main.add_module(str(index), head)  # same name: replaces the logit layer in place
        self.main = body.main
        self.arch, self.image_size, self.channels, self.latent_dim = arch, image_size, channels, latent_dim

    def forward(self, x):
        check_input(self, x, 4, self.channels, what="(N, C, H, W)")
        if x.shape[2:] != (self.image_size, self.image_size):
            raise ValueError(f"Encoder expects {self.image_size}x{self.image_size} images (N, {self.channels}, "
                             f"{self.image_size}, {self.image_size}), got shape {tuple(x.shape)}")
        return self.main(x)

    def extra_repr(self):
        return f"arch={self.arch}, image_size={self.image_size}, channels={self.channels}, latent_dim={self.latent_dim}"


class LatentDiscriminator(Module):
    """D_z: latent vectors (N, latent_dim) -> logits (N, 1), an MLP.

    gan.models.MLPDiscriminator applied to z seen as a 1x1 image with latent_dim channels:
    Linear(latent_dim, 2h) -> LeakyReLU(0.2) -> Linear(2h, h) -> LeakyReLU(0.2) -> Linear(h, 1)
    (plus Dropout after each hidden layer when dropout > 0). Backward reshapes dz back to (N, latent_dim).
    """

    def __init__(self, latent_dim=100, hidden=256, activation="leaky_relu", dropout=0.0, spectral_norm=False,
                 rng=None):
        super().__init__()
        self.latent_dim = latent_dim
        self.mlp = MLPDiscriminator(image_size=1, channels=latent_dim, hidden=hidden, activation=activation,
                                    dropout=dropout, spectral_norm=spectral_norm, rng=rng)

    def forward(self, z):
        _check_latent(self, z, self.latent_dim)
        return self.mlp(z.reshape(z.shape[0], self.latent_dim, 1, 1))

    def backward(self, dlogits):
        dz = self.mlp.backward(dlogits)
        return dz.reshape(dz.shape[0], self.latent_dim)

    def extra_repr(self):
        return f"latent_dim={self.latent_dim}"


def _check_latent(owner, z, latent_dim):
    if getattr(z, "ndim", None) != 2 or z.shape[1] != latent_dim:
        raise ValueError(f"{type(owner).__name__} expects latent vectors z of shape (N, {latent_dim}), "
                         f"got shape {tuple(getattr(z, 'shape', ()))}")


AEGANNetworks = namedtuple("AEGANNetworks", "generator encoder image_discriminator latent_discriminator")


def build_aegan(arch="dcgan", image_size=32, latent_dim=32, channels=3, width=None, latent_hidden=256, rng=None,
                **options):
    """AEGANNetworks(G, E, D_x, D_z): G and D_x from gan.models.build_gan(arch, ..., **options) (its
    g_/d_ option routing), E the `Encoder` mirroring D_x, D_z a `LatentDiscriminator` of hidden size
    `latent_hidden`. One random stream (rng) draws every weight, in that order."""
    rng = as_rng(rng)
    generator, image_discriminator = build_gan(arch, image_size=image_size, latent_dim=latent_dim,
                                               channels=channels, width=width, rng=rng, **options)
    encoder = Encoder(arch, image_size=image_size, channels=channels, latent_dim=latent_dim, width=width, rng=rng)
    latent_discriminator = LatentDiscriminator(latent_dim, hidden=latent_hidden, rng=rng)
    return AEGANNetworks(generator, encoder, image_discriminator, latent_discriminator)


# --------------------------------------------------------------------------- the losses
@dataclass
class LossWeights:
    """The weights of L_GE's four terms (see the module docstring); Lazarou's reference values."""

    adv_image: float = 0.005      # D_x should call G(z) and G(E(x)) real
    adv_latent: float = 0.1       # D_z should call E(x) and E(G(z)) prior samples
    rec_image: float = 1.0        # mean |G(E(x)) - x|
    rec_latent: float = 0.5       # mean (E(G(z)) - z)^2

    def __post_init__(self):
        for name, value in asdict(self).items():
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"LossWeights: {name} must be a finite number >= 0, got {value}")


class GeneratorEncoderLoss(Module):
    """L_GE(x, z), the loss G and E minimise together, and its backward through the composites.

    forward(x, z) -> 0-d array L_GE; afterwards `terms` holds the four unweighted terms (0-d arrays on
    x's device: the trainer fetches every logged scalar of a step at once) and
    `images` (2N, C, s, s) = [G(z); G(E(x))], `latents` (2N, d) = [E(x); E(G(z))], the logits D_x and
    D_z gave them.
    backward(grad=1.0) -> (dL/dx, dL/dz), and adds dL/dtheta into every parameter with requires_grad
    (the trainer freezes D_x and D_z, so only G's and E's gradients are computed).

    Forward: z_hat = E(x) (E's first pass); G(z) and G(z_hat) (G's two passes, each with its own
    BatchNorm statistics, as DCGAN's D sees real and fake batches: prior samples and encodings are
    different distributions until D_z has matched them); z_tilde = E(G(z)) (E's second pass); D_x on
    images = [G(z); G(E(x))]; D_z on latents = [z_hat; z_tilde]. Backward, by the chain rule (n = N,
    m = N C s s, d = latent_dim; r = w_rl 2 (z_tilde - z) / (N d), the L2 term's gradient):
        [dfake; drecon] = w_ai D_x^T(dL_G/dlogits)  drecon += w_ri sign(G(E(x)) - x) / m
        [dz_hat; dz_tilde] = w_al D_z^T(dL_G/dlogits),  dz_tilde += r
        dfake += E^T(dz_tilde)                      (E's second pass)
        dz_hat += G^T(drecon)                       (G's second pass)
        dz = G^T(dfake) - r                         (G's first pass; z is also the L2 target)
        dx = E^T(dz_hat) - w_ri sign(G(E(x)) - x) / m   (E's first pass)
    where E^T(.) and G^T(.) are backward passes for the pass named (an earlier pass's saved state is
    put back first).
    """

    def __init__(self, networks, loss="non_saturating", weights=None):
        super().__init__()
        self.generator, self.encoder, self.image_discriminator, self.latent_discriminator = networks
        self.gan_loss = get_gan_loss(loss)
        self.weights = weights if weights is not None else LossWeights()
        self.terms, self.images, self.latents, self.image_logits, self.latent_logits = {}, None, None, None, None

    def forward(self, x, z):
        if z.shape[0] != x.shape[0]:
            raise ValueError(f"GeneratorEncoderLoss: x has {x.shape[0]} images but z has {z.shape[0]} rows; "
                             f"give one prior sample per image")
        xp, n, w = get_array_module(x), x.shape[0], self.weights
        z_hat = self.encoder(x)
        encoder_on_x = _saved_state(self.encoder)
        fake = self.generator(z)
        generator_on_z = _saved_state(self.generator)
        recon = self.generator(z_hat.astype(z.dtype, copy=False))
        z_tilde = self.encoder(fake)
        images = xp.concatenate([fake, recon])
        latents = xp.concatenate([z_hat, z_tilde])
        image_logits = self.image_discriminator(images)
        latent_logits = self.latent_discriminator(latents)
        adv_image, d_image_logits = self.gan_loss.generator_loss(image_logits)
        adv_latent, d_latent_logits = self.gan_loss.generator_loss(latent_logits)
        rec_image, d_recon = l1(recon, x, name="AEGAN image reconstruction")
        rec_latent, d_z_tilde = mse(z_tilde, z, name="AEGAN latent reconstruction")
        self.save_for_backward(n=n, encoder_on_x=encoder_on_x, generator_on_z=generator_on_z,
                               d_image_logits=d_image_logits, d_latent_logits=d_latent_logits, d_recon=d_recon,
                               d_z_tilde=d_z_tilde)
        self.terms = {"adv_image": adv_image, "adv_latent": adv_latent, "rec_image": rec_image,
                      "rec_latent": rec_latent}
        self.images, self.latents, self.image_logits, self.latent_logits = images, latents, image_logits, latent_logits
        total = (w.adv_image * adv_image + w.adv_latent * adv_latent + w.rec_image * rec_image
                 + w.rec_latent * rec_latent)
        return xp.asarray(total, dtype=x.dtype)

    def backward(self, grad=1.0):
        s, w = self.saved_for_backward(), self.weights
        n = s.n
        d_recon = s.d_recon * (grad * w.rec_image)
        d_rec_latent = s.d_z_tilde * (grad * w.rec_latent)
        d_images = self.image_discriminator.backward(s.d_image_logits * (grad * w.adv_image))
        d_latents = self.latent_discriminator.backward(s.d_latent_logits * (grad * w.adv_latent))
        d_fake = d_images[:n] + self.encoder.backward(d_latents[n:] + d_rec_latent)   # E's second pass: E(G(z))
        d_z_hat = self.generator.backward(d_images[n:] + d_recon) + d_latents[:n]    # G's second pass: G(E(x))
        _restore_saved_state(s.generator_on_z)                     # G's first pass: G(z)
        dz = self.generator.backward(d_fake) - d_rec_latent
        _restore_saved_state(s.encoder_on_x)                       # E's first pass: E(x)
        dx = self.encoder.backward(d_z_hat.astype(s.d_recon.dtype, copy=False)) - d_recon
        return dx, dz


class DiscriminatorLoss(Module):
    """L_Dx + L_Dz: D_x on real images against generated ones, D_z on prior samples against encodings.

    forward(x, z, images, latents) -> 0-d array L_Dx + L_Dz, with images = [G(z); G(E(x))] and
    latents = [E(x); E(G(z))] taken as constants (the GeneratorEncoderLoss's outputs); afterwards `terms` holds
    "d_image" = L_Dx and "d_latent" = L_Dz (0-d arrays) and `logits` the four logit arrays.
    backward(grad=1.0) -> (dx, dz, dimages, dlatents); adds into D_x's and D_z's parameters.
    Each discriminator sees its real and its fake batch in two passes (separate BatchNorm statistics,
    as in DCGAN); backward runs the fake pass's backward, puts the real pass's saved state back, then
    runs the real pass's backward.
    """

    def __init__(self, image_discriminator, latent_discriminator, loss="non_saturating"):
        super().__init__()
        self.image_discriminator, self.latent_discriminator = image_discriminator, latent_discriminator
        self.gan_loss = get_gan_loss(loss)
        self.terms, self.logits = {}, {}

    def forward(self, x, z, images, latents):
        image_loss, image_grads, image_logits = self._pair(self.image_discriminator, x, images)
        latent_loss, latent_grads, latent_logits = self._pair(self.latent_discriminator, z, latents)
        self.save_for_backward(image_grads=image_grads, latent_grads=latent_grads)
        self.terms = {"d_image": image_loss, "d_latent": latent_loss}
        self.logits = {"real": image_logits[0], "generated": image_logits[1],
                       "prior": latent_logits[0], "encoded": latent_logits[1]}
        return get_array_module(x).asarray(image_loss + latent_loss, dtype=x.dtype)

    def _pair(self, discriminator, real, fake):
        """(L_D, (real pass state, dL/dreal_logits, dL/dfake_logits), (real logits, fake logits))."""
        real_logits = discriminator(real)
        real_pass = _saved_state(discriminator)
        fake_logits = discriminator(fake)
        loss, d_real, d_fake = self.gan_loss.discriminator_loss(real_logits, fake_logits)
        return loss, (real_pass, d_real, d_fake), (real_logits, fake_logits)

    def backward(self, grad=1.0):
        s = self.saved_for_backward()
        dx, d_images = _backward_pair(self.image_discriminator, s.image_grads, grad)
        dz, d_latents = _backward_pair(self.latent_discriminator, s.latent_grads, grad)
        return dx, dz, d_images, d_latents


def _backward_pair(discriminator, grads, grad):
    """(d real, d fake) of a discriminator that ran on the real batch, then on the fake batch."""
    real_pass, d_real, d_fake = grads
    d_fake_input = discriminator.backward(d_fake * grad)
    _restore_saved_state(real_pass)
    return discriminator.backward(d_real * grad), d_fake_input


# --------------------------------------------------------------------------- training
@dataclass
class AEGANConfig:
    """Everything that defines an AEGAN training run except the data (a DataLoader is given to fit)."""

    # --- the networks (build_aegan)
    arch: str = "dcgan"               # G, D_x and E's body: "dcgan" (32 or 64), "faces" or "mlp"
    image_size: int = 32              # side of the square images
    channels: int = 3                 # image channels
    latent_dim: int = 32              # size of z (small: D_z has to match E's outputs to N(0, I) in it)
    width: Optional[int] = None       # width of G, D_x and E (None: gan.models' defaults, dcgan 64)
    latent_hidden: int = 256          # D_z's hidden size h (Linear d -> 2h -> h -> 1)
    model_options: dict = field(default_factory=dict)  # more build_gan options for G and D_x
    # --- the objective
    loss: str = "non_saturating"      # the GAN loss of both discriminators and of L_GE's adversarial terms
    weights: dict = field(default_factory=lambda: asdict(LossWeights()))  # L_GE's weights (LossWeights)
    # --- the optimisers: Adam for each network
    lr: float = 2e-4                  # G's and E's learning rate
    lr_d: float = 2e-4                # D_x's and D_z's learning rate
    beta1: float = 0.5                # Adam's first-moment decay (DCGAN: 0.5)
    beta2: float = 0.999              # Adam's second-moment decay
    # --- figures and the run
    n_samples: int = 64               # fixed latents for the per-epoch sample grids
    n_reference: int = 16             # real images kept for the per-epoch reconstruction grids
    seed: int = 0                     # seeds the weights ("model"), z ("latent"), the fixed z ("fixed_noise")
    device: str = "cpu"               # "cpu" (NumPy) or "gpu" (CuPy)
    steps_per_epoch: Optional[int] = None  # end each epoch after this many batches (None: the whole loader)
    progress: bool = True             # a tqdm bar per epoch

    def __post_init__(self):
        backend.check_device(self.device)
        if self.loss not in LOSSES:
            raise ValueError(f"AEGANConfig: loss must be one of {LOSSES}, got {self.loss!r}")
        LossWeights(**self.weights)   # validates the names and values
        if self.steps_per_epoch is not None and int(self.steps_per_epoch) < 1:
            raise ValueError(f"AEGANConfig: steps_per_epoch must be >= 1 or None, got {self.steps_per_epoch}")
        if self.n_samples < 1 or self.n_reference < 2:
            raise ValueError(f"AEGANConfig: n_samples must be >= 1 and n_reference >= 2, got "
                             f"{self.n_samples} and {self.n_reference}")

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, values):
        """A config from a dict (as saved); unknown keys are a clear error."""
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"AEGANConfig: unknown settings {unknown} (saved by a newer nnbox?)")
        return cls(**values)

    def build(self):
        """The AEGANNetworks of this config, on the CPU, weights from the seed's "model" stream."""
        return build_aegan(self.arch, image_size=self.image_size, latent_dim=self.latent_dim, channels=self.channels,
                           width=self.width, latent_hidden=self.latent_hidden, rng=stream_rng(self.seed, "model"),
                           **self.model_options)


class AEGANTrainer:
    """Trains G, E, D_x and D_z; records every step, draws figures, checkpoints, resumes exactly.

    One step (`step(x)`), with fresh z ~ N(0, I):
    1. G and E: L_GE forward and backward through the frozen D_x and D_z (GeneratorEncoderLoss);
       one Adam step each.
    2. D_x and D_z: L_Dx + L_Dz on x, z and the images and encodings of step 1 (made before G and E
       moved; DiscriminatorLoss); one Adam step each.
    The record holds every loss term, both discriminators' accuracies (a logit above the loss's
    threshold means "real") and the throughput.

    Files in run_dir: samples/epoch_XXX.png (G(fixed z), eval mode), reconstructions/epoch_XXX.png
    (rows of reference images x above their G(E(x))), history.csv/.json, epochs.json, config.json and
    checkpoint.npz (atomic, written at the start and after every epoch: the four networks, the four
    optimisers, the random generators, the loader's position, the fixed z and reference images, the
    history). On the CPU a resumed run ends with the same weights as an uninterrupted one.

    Args:
        networks: AEGANNetworks (build_aegan); moved to config.device.
        config: an AEGANConfig.
        run_dir: the run folder. overwrite: start afresh in a folder holding a checkpoint.
        extra_config: JSON-friendly dict saved with the checkpoint (the example's data settings).
    """

    def __init__(self, networks, config, run_dir, overwrite=False, extra_config=None, _resuming=False):
        self.config, self.run_dir = config, Path(run_dir)
        self.extra_config = dict(extra_config or {})
        self.checkpoint_path = self.run_dir / CHECKPOINT_NAME
        if self.checkpoint_path.exists() and not (_resuming or overwrite):
            raise FileExistsError(f"{self.run_dir} already holds a run ({CHECKPOINT_NAME}); continue it with "
                                  f"AEGANTrainer.resume({str(self.run_dir)!r}) (--resume), start over with "
                                  f"overwrite=True (--overwrite), or choose another folder")
        if getattr(networks.generator, "latent_dim", config.latent_dim) != config.latent_dim:
            raise ValueError(f"AEGANTrainer: the generator takes latent_dim={networks.generator.latent_dim}, "
                             f"the config says {config.latent_dim}")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if overwrite and not _resuming:
            for folder in FIGURE_DIRS:
                remove_epoch_grids(self.run_dir / folder)
            self.checkpoint_path.unlink(missing_ok=True)
        self.networks = AEGANNetworks(*(net.to(config.device) for net in networks))
        self.ge_loss = GeneratorEncoderLoss(self.networks, config.loss, LossWeights(**config.weights))
        self.d_loss = DiscriminatorLoss(self.networks.image_discriminator, self.networks.latent_discriminator,
                                        config.loss)
        self.optimizers = {name: Adam(getattr(self.networks, name).parameters(),
                                      lr=config.lr if name in ("generator", "encoder") else config.lr_d,
                                      betas=(config.beta1, config.beta2))
                           for name in AEGANNetworks._fields}
        self.xp = backend.require_cupy() if config.device == "gpu" else np
        self.threshold = 0.5 if config.loss == "least_squares" else 0.0  # D says "real" above it
        self.latent_rng = stream_rng(config.seed, "latent")
        self.fixed_z = sample_latent(config.n_samples, config.latent_dim, "normal",
                                     stream_rng(config.seed, "fixed_noise"))
        self.reference = None        # real images (n_reference, C, s, s) for the reconstruction grids
        self.history = History()
        self.epoch_log = []
        self.epoch, self.global_step = 0, 0
        self._pending_loader_state = None

    @classmethod
    def from_config(cls, config, run_dir, overwrite=False, extra_config=None):
        return cls(config.build(), config, run_dir, overwrite=overwrite, extra_config=extra_config)

    @staticmethod
    def read_checkpoint_configs(run_dir):
        """(AEGANConfig, extra_config dict) saved in RUN_DIR/checkpoint.npz."""
        meta = read_checkpoint_meta(run_dir)
        return AEGANConfig.from_dict(meta["config"]), meta["extra"]

    @classmethod
    def resume(cls, run_dir, device=None):
        """The trainer of RUN_DIR/checkpoint.npz as it was after its last epoch (networks rebuilt from
        the saved config; `device` overrides the saved one). Build the loader as the first time."""
        from nnbox.serialization import load_checkpoint
        config, extra = cls.read_checkpoint_configs(run_dir)
        if device is not None:
            config.device = backend.check_device(device)
        trainer = cls(config.build(), config, run_dir, extra_config=extra, _resuming=True)
        trainer._load_state(load_checkpoint(Path(run_dir) / CHECKPOINT_NAME))
        return trainer

    def set_learning_rates(self, lr=None, lr_d=None):
        """Change G's and E's (`lr`) and/or the discriminators' (`lr_d`) learning rate from the next
        step on (e.g. on resuming a run that diverged); the config, hence the next checkpoint, records them."""
        for key, value, names in (("lr", lr, ("generator", "encoder")),
                                  ("lr_d", lr_d, ("image_discriminator", "latent_discriminator"))):
            if value is None:
                continue
            if not value > 0:
                raise ValueError(f"set_learning_rates: {key} must be > 0, got {value}")
            setattr(self.config, key, float(value))
            for name in names:
                self.optimizers[name].lr = float(value)

    # ------------------------------------------------------------------ one step
    def step(self, real_batch, z=None):
        """One step on real images (float NCHW in [-1, 1]) and prior samples z (N, latent_dim), by default
        drawn here (`draw_latent`); returns the record. NonFiniteLossError when a loss is NaN or infinite.

        On the GPU, pass both already on the device (`fit` does, through PinnedUploaders): then the step
        copies nothing between host and device but its logged scalars, fetched once at the end."""
        started = time.perf_counter()
        G, E, Dx, Dz = self.networks
        for net in self.networks:
            net.train()
        x = to_device(real_batch, self.config.device)
        n = x.shape[0]
        z = to_device(self.draw_latent(n) if z is None else z, self.config.device)

        # 1. G and E, through the frozen discriminators
        for net in (Dx, Dz):
            net.requires_grad_(False)
        caught = CheckedWarnings()
        try:
            with caught.held():   # the losses are checked at the end of the step
                ge_total = self.ge_loss(x, z)
            G.zero_grad()
            E.zero_grad()
            self.ge_loss.backward(1.0)
        finally:
            for net in (Dx, Dz):
                net.requires_grad_(True)
        self.optimizers["generator"].step()
        self.optimizers["encoder"].step()

        # 2. D_x and D_z on what G and E made before their update
        with caught.held():
            d_total = self.d_loss(x, z, self.ge_loss.images, self.ge_loss.latents)
        Dx.zero_grad()
        Dz.zero_grad()
        self.d_loss.backward(1.0)
        self.optimizers["image_discriminator"].step()
        self.optimizers["latent_discriminator"].step()

        logits, thr = self.d_loss.logits, self.threshold
        scalars = {"ge_loss": ge_total, "d_loss": d_total, **self.ge_loss.terms, **self.d_loss.terms,
                   "dx_acc_real": (logits["real"] > thr).mean(),
                   "dx_acc_fake": (logits["generated"][:n] <= thr).mean(),
                   "dx_acc_recon": (logits["generated"][n:] <= thr).mean(),
                   "dz_acc_prior": (logits["prior"] > thr).mean(),
                   "dz_acc_encoded": (logits["encoded"][:n] <= thr).mean(),
                   "dz_acc_generated": (logits["encoded"][n:] <= thr).mean()}
        scalars = dict(zip(scalars, backend.fetch_scalars(scalars.values())))   # one copy from the device
        ge_total, d_total = scalars["ge_loss"], scalars["d_loss"]
        seconds = time.perf_counter() - started
        record = {"step": self.global_step, "epoch": self.epoch, **scalars,
                  "images_per_sec": n / seconds if seconds > 0 else float("nan"), "step_seconds": seconds}
        self.history.append(record)
        if not all(math.isfinite(record[k]) for k in ("ge_loss", "d_loss")):
            raise NonFiniteLossError(f"AEGAN training stopped at step {self.global_step}: a non-finite loss "
                                     f"(L_GE {ge_total}, L_D {d_total}); the checkpoint of the last completed "
                                     f"epoch is kept. Lower the learning rates and resume.")
        caught.release(f"the forward passes of step {self.global_step}")
        self.global_step += 1
        return record

    def draw_latent(self, n):
        """n prior samples z ~ N(0, I), float32 (n, latent_dim), drawn on the host from the latent
        generator (the same numbers on any device for one seed)."""
        return sample_latent(n, self.config.latent_dim, "normal", self.latent_rng)

    # ------------------------------------------------------------------ epochs
    def fit(self, loader, epochs):
        """Train until `epochs` epochs are done in total; figures, history and checkpoint after each.
        The reference images for the reconstruction grids are the loader's data set's first images."""
        from tqdm import tqdm
        if self._pending_loader_state is not None:
            loader.load_state_dict(self._pending_loader_state)
            self._pending_loader_state = None
        if self.reference is None:
            self.reference = _first_images(loader, self.config.n_reference)
        atomic_write_text(self.run_dir / "config.json",
                          json.dumps({"aegan": self.config.to_dict(), **self.extra_config}, indent=2))
        if not self.checkpoint_path.exists():
            self.save_epoch_figures()
            self.save_checkpoint(loader)
        uploads = (PinnedUploader(), PinnedUploader()) if self.xp is not np else None
        while self.epoch < epochs:
            reset_device_generators(*self.networks)   # GPU: re-derived from the checkpointed NumPy ones
            started, images = time.perf_counter(), 0
            total = len(loader) if self.config.steps_per_epoch is None else min(len(loader), self.config.steps_per_epoch)
            batches = iter(loader)
            bar = tqdm(total=total, desc=f"epoch {self.epoch + 1}/{epochs}", leave=False,
                       disable=not self.config.progress, dynamic_ncols=True)
            try:
                for _ in range(total):
                    batch = next(batches)
                    batch = batch[0] if isinstance(batch, tuple) else batch
                    z = self.draw_latent(len(batch))
                    if uploads is not None:   # GPU: queue both copies here, so step() makes none
                        batch, z = uploads[0](batch), uploads[1](z)
                    record = self.step(batch, z)
                    images += int(batch.shape[0])
                    bar.set_postfix_str(f"rec {record['rec_image']:.3f} Dx {record['d_image']:.2f} "
                                        f"Dz {record['d_latent']:.2f}", refresh=False)
                    bar.update(1)
                # the epoch's last updates may have broken the weights after its losses were logged
                broken = non_finite_weights(dict(zip(self.networks._fields, self.networks)))
                if broken:
                    raise NonFiniteLossError(
                        f"AEGAN training stopped at the end of epoch {self.epoch + 1}: non-finite weights in "
                        f"{broken}; the checkpoint of the last completed epoch is kept. Lower the learning rates "
                        f"(set_learning_rates; examples/aegan.py --resume RUN --epochs N --lr ...) and resume.")
            except NonFiniteLossError:
                self.write_history()
                raise
            finally:
                bar.close()
                if hasattr(batches, "close"):
                    batches.close()
            seconds = time.perf_counter() - started
            self.epoch_log.append({"epoch": self.epoch, "seconds": seconds, "images": images,
                                   "images_per_sec": images / seconds if seconds > 0 else float("nan")})
            self.epoch += 1
            self.save_epoch_figures()
            self.write_history()
            self.save_checkpoint(loader)
            tqdm.write(self._epoch_line(epochs))
        return self.history

    def _epoch_line(self, epochs):
        rows = [r for r in self.history if r["epoch"] == self.epoch - 1]
        if not rows:
            return f"epoch {self.epoch}/{epochs}: no steps"
        mean = {k: float(np.mean([r[k] for r in rows])) for k in EPOCH_SUMMARY}
        return (f"epoch {self.epoch}/{epochs}: " + ", ".join(f"{k} {v:.4f}" for k, v in mean.items())
                + f"; {self.epoch_log[-1]['seconds']:.1f} s")

    # ------------------------------------------------------------------ figures
    def generate(self, z=None):
        """G(z) (default: the fixed latents) in eval mode, NumPy NCHW."""
        z = self.fixed_z if z is None else z
        with self.networks.generator.without_side_effects(train=False) as G:
            return to_numpy(G(to_device(z, self.config.device)))

    def encode(self, x):
        """E(x) in eval mode, NumPy (N, latent_dim)."""
        with self.networks.encoder.without_side_effects(train=False) as E:
            return to_numpy(E(to_device(x, self.config.device)))

    def reconstruct(self, x=None):
        """G(E(x)) (default: the reference images) in eval mode, NumPy NCHW."""
        x = self.reference if x is None else x
        return self.generate(self.encode(x))

    def save_epoch_figures(self):
        """samples/epoch_XXX.png and (with reference images) reconstructions/epoch_XXX.png."""
        from .visualize import save_image_grid
        name = f"epoch_{self.epoch:03d}.png"
        scale = max(1, 64 // self.config.image_size)
        save_image_grid(self.generate(), self.run_dir / "samples" / name, scale=scale)
        if self.reference is not None:
            save_reconstruction_grid(self.reference, self.reconstruct(), self.run_dir / "reconstructions" / name,
                                     scale=scale)

    def write_figures(self, steps=8):
        """The end-of-run figures in RUN_DIR/plots: losses.png (plot_aegan_losses), and one
        interpolation per row, G along the slerp between E(x) of two reference images
        (interpolations_encoded.png) and between two fixed prior samples (interpolations_prior.png).
        Returns {name: path}."""
        from .interpolation import save_interpolation_grid
        folder = self.run_dir / "plots"
        paths = {"losses": plot_aegan_losses(self.history, folder / "losses.png")}
        G = self.networks.generator
        if self.reference is not None:
            encoded = to_device(self.encode(self.reference), self.config.device)
            half = len(encoded) // 2
            paths["interpolations_encoded"] = save_interpolation_grid(
                G, encoded[:half], encoded[half:2 * half], folder / "interpolations_encoded.png", steps=steps)
        prior = to_device(self.fixed_z[:16], self.config.device)
        half = len(prior) // 2
        paths["interpolations_prior"] = save_interpolation_grid(G, prior[:half], prior[half:2 * half],
                                                                folder / "interpolations_prior.png", steps=steps)
        return paths

    def write_history(self):
        self.history.to_csv(self.run_dir / "history.csv")
        self.history.to_json(self.run_dir / "history.json")
        atomic_write_text(self.run_dir / "epochs.json", json.dumps(self.epoch_log, indent=1))

    # ------------------------------------------------------------------ checkpoints
    def _generators(self):
        """{name: NumPy Generator} of every random stream the run draws from (the loader's excepted)."""
        found = {"latent": self.latent_rng}
        for name, net in zip(AEGANNetworks._fields, self.networks):
            found.update(net.named_generators(name + "."))
        return found

    def save_checkpoint(self, loader=None):
        """Write RUN_DIR/checkpoint.npz atomically (nnbox.serialization.save_checkpoint); never with a NaN
        or infinite weight (NonFiniteLossError, the file on disk kept)."""
        from nnbox.serialization import save_checkpoint
        if broken := non_finite_weights(dict(zip(self.networks._fields, self.networks))):
            raise NonFiniteLossError(f"not writing {self.checkpoint_path}: non-finite weights in {broken}; the "
                                     f"checkpoint already there is kept")
        loader_state = loader.state_dict() if loader is not None and hasattr(loader, "state_dict") else None
        if loader_state and loader_state.get("batches_done", 0):
            # an epoch cut short by steps_per_epoch: the next epoch starts a new order, from here
            loader_state = {"rng_state": loader.rng.bit_generator.state, "batches_done": 0}
        meta = {"epoch": self.epoch, "global_step": self.global_step, "config": self.config.to_dict(),
                "extra": self.extra_config, "fixed_z": np.asarray(self.fixed_z),
                "reference": None if self.reference is None else to_numpy(self.reference),
                "rng": {name: rng.bit_generator.state for name, rng in self._generators().items()},
                "loader": loader_state, "history": self.history.records, "epoch_log": self.epoch_log}
        save_checkpoint(self.checkpoint_path, trainer=meta,
                        **{name: net.state_dict() for name, net in zip(AEGANNetworks._fields, self.networks)},
                        **{f"optimizer_{name}": opt.state_dict() for name, opt in self.optimizers.items()})
        return self.checkpoint_path

    def _load_state(self, state):
        meta = state["trainer"]
        for name, net in zip(AEGANNetworks._fields, self.networks):
            net.load_state_dict(state[name])
            self.optimizers[name].load_state_dict(state[f"optimizer_{name}"])
        own = self._generators()
        if set(own) != set(meta["rng"]):
            raise ValueError(f"the checkpoint's random generators {sorted(meta['rng'])} do not match the "
                             f"networks' {sorted(own)}")
        for name, rng in own.items():
            rng.bit_generator.state = meta["rng"][name]
        reset_device_generators(*self.networks)
        self.epoch, self.global_step = int(meta["epoch"]), int(meta["global_step"])
        self.fixed_z = np.asarray(meta["fixed_z"], dtype=np.float32)
        self.reference = None if meta["reference"] is None else np.asarray(meta["reference"], dtype=np.float32)
        self._pending_loader_state = meta["loader"]
        self.history = History(meta["history"])
        self.epoch_log = list(meta["epoch_log"])


EPOCH_SUMMARY = ("rec_image", "rec_latent", "adv_image", "adv_latent", "d_image", "d_latent", "dx_acc_real",
                 "dx_acc_fake", "dz_acc_encoded", "dz_acc_generated")


def _first_images(loader, count):
    """The first `count` images of a DataLoader's data set as float32 NCHW in [-1, 1] (no random transform)."""
    from nnbox.data import ToFloat
    source = loader.dataset
    batch = source.get_batch(np.arange(min(count, len(source))))
    batch = batch[0] if isinstance(batch, tuple) else batch
    return ToFloat()(batch) if batch.dtype == np.uint8 else np.asarray(batch, dtype=np.float32)


# --------------------------------------------------------------------------- pictures
def save_reconstruction_grid(originals, reconstructions, path, per_row=8, scale=1):
    """A PNG of `per_row` originals per row, each row of originals above the row of their
    reconstructions (x above G(E(x))), both float NCHW in [-1, 1]; returns the path."""
    from .visualize import save_image_grid
    originals, reconstructions = to_numpy(originals), to_numpy(reconstructions)
    if originals.shape != reconstructions.shape:
        raise ValueError(f"save_reconstruction_grid: originals {originals.shape} and reconstructions "
                         f"{reconstructions.shape} differ in shape")
    short = -len(originals) % per_row      # blank (white) tiles complete the last pair of rows
    if short:
        blank = np.ones((short,) + originals.shape[1:], originals.dtype)
        originals, reconstructions = np.concatenate([originals, blank]), np.concatenate([reconstructions, blank])
    rows = []
    for start in range(0, len(originals), per_row):
        rows += [originals[start:start + per_row], reconstructions[start:start + per_row]]
    return save_image_grid(np.concatenate(rows), path, nrow=min(per_row, len(originals)), scale=scale)


LOSS_PANELS = (  # title, [(record field, label)], log scale
    ("reconstruction (G and E)", [("rec_image", "image L1 |G(E(x)) - x|"),
                                  ("rec_latent", "latent L2 (E(G(z)) - z)^2")], True),
    ("adversarial terms of G and E", [("adv_image", "D_x on G(z), G(E(x))"),
                                      ("adv_latent", "D_z on E(x), E(G(z))")], False),
    ("discriminator losses", [("d_image", "D_x"), ("d_latent", "D_z")], False),
    ("discriminator accuracy", [("dx_acc_real", "D_x on real x"), ("dx_acc_fake", "D_x on G(z)"),
                                ("dx_acc_recon", "D_x on G(E(x))"), ("dz_acc_prior", "D_z on prior z"),
                                ("dz_acc_encoded", "D_z on E(x)"), ("dz_acc_generated", "D_z on E(G(z))")], False),
)


def plot_aegan_losses(history, path):
    """Four panels against the step: the reconstruction terms (log scale), G and E's adversarial
    terms, the discriminators' losses, and their accuracies (moving averages); returns the path."""
    from .visualize import _epoch_lines, _raw_and_smooth, _steps, new_figure, save_figure
    if not len(history):
        raise ValueError("plot_aegan_losses: the history is empty (no step has run)")
    fig, axes = new_figure(2, 2, figsize=(11, 7), sharex=True)
    steps = _steps(history)
    colors = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown")
    for ax, (title, series, log) in zip(axes.flat, LOSS_PANELS):
        for (name, label), color in zip(series, colors):
            _raw_and_smooth(ax, steps, history.column(name), color, label)
        _epoch_lines(ax, history)
        if log:
            ax.set_yscale("log")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=7)
    axes[1, 1].set_ylim(-0.03, 1.03)
    for ax in axes[1]:
        ax.set_xlabel("step")
    fig.tight_layout()
    return save_figure(fig, path)
