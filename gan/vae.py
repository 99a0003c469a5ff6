"""Variational autoencoders on images: a Gaussian latent, a categorical (Gumbel-softmax) latent, or both.

The model maximises the evidence lower bound (ELBO) of log p(x), i.e. minimises

    loss = E_q[-log p(x | z, c)] + beta_g KL(q(z | x) || N(0, I)) + beta_c KL(q(c | x) || uniform)

with a Bernoulli decoder (the reconstruction term is the binary cross-entropy of the decoder's
logits against the pixels mapped to [0, 1], summed over pixels), a Gaussian code z = mu + s * eps
(`layers.sampling.Reparameterize`) and categorical codes c relaxed by the Gumbel-softmax
(`layers.sampling.GumbelSoftmax`). Every term is summed over its sample and averaged over the batch.

    vae = VAE("both", latent_dim=8, categories=10, image_size=28, channels=3, rng=0)
    parts = vae.step(images, optimizer)          # forward, loss, backward, optimizer.step
    images = vae.sample(16, rng=1)               # z ~ N(0, I), c uniform one-hot
    images = vae.sample(10, code=np.arange(10))  # steer: one image per category

Images are float NCHW in [-1, 1] (as the nnbox loaders give them); generated images too.
Architecture (s = image_size, w = width; s divisible by 4):
    encoder: Conv2d(C, w, 4, 2, 1) LeakyReLU(0.2) Conv2d(w, 2w, 4, 2, 1) BatchNorm2d LeakyReLU(0.2)
             Flatten Linear(2w (s/4)^2, 2D + L K)   -> mu (N, D), logvar (N, D), code logits (N, L, K)
    decoder: Linear(D + L K, 2w (s/4)^2) Reshape(2w, s/4, s/4) BatchNorm2d LeakyReLU(0.2)
             ConvTranspose2d(2w, w, 4, 2, 1) BatchNorm2d LeakyReLU(0.2) ConvTranspose2d(w, C, 4, 2, 1)
             -> pixel logits (N, C, s, s)
"""
from collections import namedtuple

import numpy as np

from layers import BatchNorm2d, Conv2d, ConvTranspose2d, Flatten, LeakyReLU, Linear, Reshape
from layers._checks import check_input
from layers.sampling import GumbelSoftmax, Reparameterize
from nnbox import backend
from nnbox.backend import get_array_module
from nnbox.losses import bce_with_logits, categorical_kl, gaussian_kl, sigmoid
from nnbox.module import Module, Sequential

from .trainer import CheckedWarnings

LATENTS = ("gaussian", "categorical", "both")
LEAKY_SLOPE = 0.2

VAEOutput = namedtuple("VAEOutput", "logits mu logvar code_logits z code")
VAEOutput.__doc__ = """What VAE.forward returns (None for a latent the model does not have).

    logits: (N, C, H, W) the decoder's pixel logits; mu, logvar: (N, D) the Gaussian posterior;
    code_logits: (N, L, K) the categorical posteriors' logits; z: (N, D) the sampled Gaussian code;
    code: (N, L, K) the relaxed (or, when hard, one-hot) categorical sample.
"""


def _positive_int(owner, name, value):
    if int(value) != value or value < 1:
        raise ValueError(f"{owner}: {name} must be a positive integer, got {value!r}")
    return int(value)


def one_hot(categories, num_categories, dtype=np.float32):
    """One-hot vectors (..., K) from integer categories (...); a clear error for out-of-range values."""
    xp = get_array_module(categories)
    categories = xp.asarray(categories)
    if not np.issubdtype(categories.dtype, np.integer):
        raise TypeError(f"one_hot: categories must be integers, got dtype {categories.dtype}")
    if categories.size and (int(categories.min()) < 0 or int(categories.max()) >= num_categories):
        raise ValueError(f"one_hot: categories must be in [0, {num_categories - 1}], got values in "
                         f"[{int(categories.min())}, {int(categories.max())}]")
    return (categories[..., None] == xp.arange(num_categories)).astype(dtype)


class VAE(Module):
    """A convolutional VAE with a Gaussian latent, a categorical latent, or both.

    Args:
        latent: "gaussian" (z in R^D), "categorical" (L codes of K categories) or "both".
        latent_dim: D, the size of the Gaussian code.
        categories: K, the number of categories of each categorical code.
        categorical_dims: L, how many independent categorical codes.
        image_size: side s of the square images (divisible by 4: 28 for MNIST).
        channels: C (3 for coloured MNIST).
        width: w, the channels of the first convolution (the second has 2w).
        temperature: the Gumbel-softmax temperature tau (anneal it with `vae.temperature = ...`).
        hard: straight-through one-hot categorical samples in training.
        kl_weight, categorical_kl_weight: beta_g and beta_c, the weights of the two KL terms.
        rng: NumPy generator or seed: the initial weights, then the sampling layers' noise.

    Shape:
        x: (N, C, s, s) in [-1, 1] -> VAEOutput (see there).

    Backward: `loss(output, x)` computes the loss and its gradients with respect to the pixel
    logits, mu, logvar and the code logits; `backward(grad=1.0)` takes them through the decoder,
    the sampling layers (the reparameterisation and Gumbel-softmax backwards), adds the KL
    gradients and goes through the encoder; it fills every parameter's grad and returns dL/dx
    through the encoder (x as the reconstruction target is a constant).
    """

    def __init__(self, latent="gaussian", latent_dim=2, categories=10, categorical_dims=1, image_size=28,
                 channels=3, width=32, temperature=1.0, hard=False, kl_weight=1.0, categorical_kl_weight=1.0,
                 rng=None):
        super().__init__()
        if latent not in LATENTS:
            raise ValueError(f"VAE: latent must be one of {LATENTS}, got {latent!r}")
        name = "VAE"
        latent_dim, categories, categorical_dims, image_size, channels, width = (
            _positive_int(name, key, value) for key, value in (
                ("latent_dim", latent_dim), ("categories", categories), ("categorical_dims", categorical_dims),
                ("image_size", image_size), ("channels", channels), ("width", width)))
        if image_size % 4:
            raise ValueError(f"VAE: image_size must be divisible by 4 (two stride-2 convolutions), got {image_size}")
        for key, value in (("kl_weight", kl_weight), ("categorical_kl_weight", categorical_kl_weight)):
            if not value >= 0:
                raise ValueError(f"VAE: {key} must be >= 0, got {value!r}")
        rng = backend.as_rng(rng)
        self.latent = latent
        self.gaussian_dim = latent_dim if latent in ("gaussian", "both") else 0
        self.categorical_shape = (categorical_dims, categories) if latent in ("categorical", "both") else (0, 0)
        self.image_size, self.channels, self.width = image_size, channels, width
        self.kl_weight, self.categorical_kl_weight = float(kl_weight), float(categorical_kl_weight)
        code_size = categorical_dims * categories if self.categorical_shape[0] else 0
        feature_shape = (2 * width, image_size // 4, image_size // 4)
        features = int(np.prod(feature_shape))
        self.encoder = Sequential(
            Conv2d(channels, width, 4, 2, 1, rng=rng), LeakyReLU(LEAKY_SLOPE),
            Conv2d(width, 2 * width, 4, 2, 1, rng=rng), BatchNorm2d(2 * width), LeakyReLU(LEAKY_SLOPE),
            Flatten(), Linear(features, 2 * self.gaussian_dim + code_size, rng=rng))
        self.decoder = Sequential(
            Linear(self.gaussian_dim + code_size, features, rng=rng), Reshape(feature_shape),
            BatchNorm2d(2 * width), LeakyReLU(LEAKY_SLOPE),
            ConvTranspose2d(2 * width, width, 4, 2, 1, rng=rng), BatchNorm2d(width), LeakyReLU(LEAKY_SLOPE),
            ConvTranspose2d(width, channels, 4, 2, 1, rng=rng))
        self.reparameterize = Reparameterize(rng=rng) if self.gaussian_dim else None
        self.gumbel = GumbelSoftmax(temperature, hard=hard, rng=rng) if code_size else None
        self._loss_grads = None

    # ------------------------------------------------------------------ properties
    @property
    def temperature(self):
        """The Gumbel-softmax temperature (None without a categorical latent)."""
        return self.gumbel.temperature if self.gumbel is not None else None

    @temperature.setter
    def temperature(self, value):
        if self.gumbel is None:
            raise ValueError(f"VAE(latent={self.latent!r}) has no categorical latent, hence no temperature")
        self.gumbel.temperature = value

    # ------------------------------------------------------------------ encoder and decoder
    def _check_images(self, x):
        check_input(self, x, 4, self.channels, what="(N, C, H, W)")
        if x.shape[2:] != (self.image_size, self.image_size):
            raise ValueError(f"VAE expects {self.image_size}x{self.image_size} images (N, {self.channels}, "
                             f"{self.image_size}, {self.image_size}), got shape {tuple(x.shape)}")

    def encode(self, x):
        """(mu, logvar, code_logits) of the posterior q(z, c | x): (N, D), (N, D), (N, L, K); None where absent."""
        self._check_images(x)
        h = self.encoder(x)
        d = self.gaussian_dim
        mu, logvar = (h[:, :d], h[:, d:2 * d]) if d else (None, None)
        code_logits = h[:, 2 * d:].reshape((len(h),) + self.categorical_shape) if self.gumbel is not None else None
        return mu, logvar, code_logits

    def decode_logits(self, z=None, code=None):
        """The decoder's pixel logits (N, C, s, s) from z (N, D) and the codes (N, L, K)."""
        parts = []
        if self.gaussian_dim:
            if getattr(z, "shape", None) is None or z.ndim != 2 or z.shape[1] != self.gaussian_dim:
                raise ValueError(f"VAE.decode: z must have shape (N, {self.gaussian_dim}), got "
                                 f"{tuple(getattr(z, 'shape', ())) or z!r}")
            parts.append(z)
        if self.gumbel is not None:
            shape = self.categorical_shape
            if getattr(code, "shape", None) is None or tuple(code.shape[1:]) != shape:
                raise ValueError(f"VAE.decode: the code must have shape (N, {shape[0]}, {shape[1]}) (one-hot or "
                                 f"relaxed), got {tuple(getattr(code, 'shape', ())) or code!r}")
            parts.append(code.reshape(len(code), -1))
        if len(parts) == 2 and len(parts[0]) != len(parts[1]):
            raise ValueError(f"VAE.decode: z has {len(parts[0])} rows but the code has {len(parts[1])}")
        xp = get_array_module(parts[0])
        return self.decoder(parts[0] if len(parts) == 1 else xp.concatenate(parts, axis=1))

    def forward(self, x):
        mu, logvar, code_logits = self.encode(x)
        z = self.reparameterize(mu, logvar) if self.gaussian_dim else None
        code = self.gumbel(code_logits) if self.gumbel is not None else None
        return VAEOutput(self.decode_logits(z, code), mu, logvar, code_logits, z, code)

    # ------------------------------------------------------------------ objective
    def loss(self, output, x):
        """The negative ELBO of the batch and its parts: (0-d array, dict of floats).

        reconstruction = sum over pixels of BCE(logits, (x + 1) / 2), averaged over the batch;
        kl_gaussian = KL(N(mu, exp(logvar)) || N(0, I)), kl_categorical = KL(softmax(code_logits) || U),
        each summed over its latent and averaged over the batch;
        loss = reconstruction + kl_weight * kl_gaussian + categorical_kl_weight * kl_categorical.
        Keeps the gradients for `backward`.
        """
        if not isinstance(output, VAEOutput):
            raise TypeError(f"VAE.loss expects the VAEOutput that forward returned, got {type(output).__name__}")
        if tuple(x.shape) != tuple(output.logits.shape):
            raise ValueError(f"VAE.loss: the target images have shape {tuple(x.shape)} but the reconstruction has "
                             f"shape {tuple(output.logits.shape)}; pass the batch that went through forward")
        n = len(x)
        reconstruction, dlogits = bce_with_logits(output.logits, (x + 1) * 0.5, reduction="sum")
        dlogits *= 1.0 / n
        total = reconstruction / n
        parts = {"reconstruction": total}
        grads = {"logits": dlogits, "mu": None, "logvar": None, "code_logits": None}
        if self.gaussian_dim:
            kl, grads["mu"], grads["logvar"] = gaussian_kl(output.mu, output.logvar)
            total = total + self.kl_weight * kl
            parts["kl_gaussian"] = kl
        if self.gumbel is not None:
            kl, grads["code_logits"] = categorical_kl(output.code_logits)
            total = total + self.categorical_kl_weight * kl
            parts["kl_categorical"] = kl
        parts["loss"] = total
        self._loss_grads = grads
        return total, dict(zip(parts, backend.fetch_scalars(parts.values())))   # one copy from the device

    def backward(self, grad=1.0):
        """Backpropagate the last `loss` (times `grad`) into every parameter's grad; returns dL/dx."""
        if self._loss_grads is None:
            raise RuntimeError("VAE.backward needs a loss: call output = vae(x), vae.loss(output, x), then backward")
        grads = self._loss_grads
        dinput = self.decoder.backward(grads["logits"] * grad)
        d = self.gaussian_dim
        head_grads = []
        if d:
            dmu, dlogvar = self.reparameterize.backward(dinput[:, :d])
            head_grads += [dmu + (self.kl_weight * grad) * grads["mu"],
                           dlogvar + (self.kl_weight * grad) * grads["logvar"]]
        if self.gumbel is not None:
            dcode = dinput[:, d:].reshape(grads["code_logits"].shape)
            dcode_logits = self.gumbel.backward(dcode) + (self.categorical_kl_weight * grad) * grads["code_logits"]
            head_grads.append(dcode_logits.reshape(len(dcode_logits), -1))
        xp = get_array_module(dinput)
        return self.encoder.backward(head_grads[0] if len(head_grads) == 1 else xp.concatenate(head_grads, axis=1))

    def step(self, x, optimizer):
        """One training step on the batch x: zero_grad, forward, loss, backward, optimizer.step.

        Returns the loss's parts (floats); a non-finite loss raises FloatingPointError before the update.
        """
        self.train()
        self.zero_grad()
        caught = CheckedWarnings()
        with caught.held():
            total, parts = self.loss(self(x), x)
        if not np.isfinite(parts["loss"]):
            raise FloatingPointError(f"VAE.step: the loss is {parts['loss']} ({parts}); lower the learning rate")
        caught.release("VAE.step's forward pass")
        self.backward()
        optimizer.step()
        return parts

    # ------------------------------------------------------------------ generation
    def _in_eval(self, function, *args):
        """function(*args) in eval mode; the mode and what the layers saved for backward are put back,
        so a sample between `loss` and `backward` does not change the gradients."""
        with self.without_side_effects(train=False):
            return function(*args)

    def decode(self, z=None, code=None):
        """Images (N, C, s, s) in [-1, 1] from z (N, D) and codes (N, L, K), in eval mode (running statistics)."""
        logits = self._in_eval(self.decode_logits, z, code)
        return 2 * sigmoid(logits) - 1

    def reconstruct(self, x):
        """x through the posterior's most likely code (z = mu, c = softmax(logits / tau)) and back, in eval mode."""
        return 2 * sigmoid(self._in_eval(self.forward, x).logits) - 1

    def sample(self, n, rng=None, z=None, code=None):
        """n images from the prior: z ~ N(0, I) and uniform one-hot codes, unless given.

        Steer the samples by fixing a part: `z` (n, D) floats, `code` either one-hot/relaxed (n, L, K)
        or integer categories (n, L) (or (n,) when L = 1).
        """
        n = _positive_int("VAE.sample", "n", n)
        rng = backend.as_rng(rng)
        device, dtype = self.device, self.parameters()[0].data.dtype
        if self.gaussian_dim and z is None:
            z = rng.standard_normal((n, self.gaussian_dim))
        if self.gumbel is not None:
            codes, categories = self.categorical_shape
            if code is None:
                code = rng.integers(0, categories, (n, codes))
            code = backend.to_numpy(code) if backend.is_gpu_array(code) else np.asarray(code)
            if np.issubdtype(code.dtype, np.integer):
                code = one_hot(code.reshape(len(code), codes), categories)
            code = backend.to_device(code.astype(dtype), device)
        if z is not None:
            z = backend.to_device(backend.to_numpy(z).astype(dtype), device)
        return self.decode(z, code)

    def extra_repr(self):
        codes, categories = self.categorical_shape
        return (f"latent={self.latent!r}, latent_dim={self.gaussian_dim}, categorical={codes}x{categories}, "
                f"image_size={self.image_size}, channels={self.channels}, width={self.width}, "
                f"kl_weight={self.kl_weight}, categorical_kl_weight={self.categorical_kl_weight}")


class VAEObjective(Module):
    """The VAE's loss as one Module, for gradient checks: forward(x, target) -> the 0-d loss.

    backward(grad) -> dL/dx through the encoder (the target is a constant), filling the VAE's
    parameter gradients. With fixed noise in the sampling layers it is deterministic:

        vae.reparameterize.fixed_noise = eps; vae.gumbel.fixed_noise = g
        gradcheck(VAEObjective(vae), x, x.copy())
    """

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, x, target):
        return self.vae.loss(self.vae(x), target)[0]

    def backward(self, grad=1.0):
        return self.vae.backward(grad)
