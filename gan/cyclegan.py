"""CycleGAN (Zhu et al. 2017): unpaired image-to-image translation between two domains A and B.

Two generators translate, G_AB: A -> B and G_BA: B -> A; two discriminators judge, D_A on A's
images and D_B on B's. With least-squares adversarial terms (as in the paper) and lambda = 10:

    L_G = MSE(D_B(G_AB(a)), 1) + MSE(D_A(G_BA(b)), 1)                        adversarial
        + lambda (|G_BA(G_AB(a)) - a|_1 + |G_AB(G_BA(b)) - b|_1)             cycle consistency
        + lambda_id lambda (|G_AB(b) - b|_1 + |G_BA(a) - a|_1)               identity (optional)
    L_D_B = 1/2 (MSE(D_B(b), 1) + MSE(D_B(G_AB(a)), 0))     (D_A alike, with b and a swapped)

MSE and |.|_1 are means over every entry; a discriminator's output is a map of patch logits
(`PatchDiscriminator`), and the MSE runs over all of it. One training step (`CycleGANTrainer.step`)
updates both generators on L_G (discriminators frozen), then both discriminators on their losses,
with the fakes of that generator step (the paper's 50-image history pool is not used); all the losses
are computed and checked before either update, so a non-finite one stops training with the networks unchanged.

There is no autograd: each network is called several times per step (G_AB on a, on G_BA(b), and on
b for the identity term) and a layer keeps only its last forward's saved arrays, so every call's
saved state is recorded (`ForwardRecord`) and put back before the backward of that call. The
backward of the whole objective is written out in `GeneratorObjective.backward`.

The generators normalise with BatchNorm by default (the paper's use instance normalisation, which
nnbox does not have): without any normalisation, on coloured MNIST the activations grew until the
output Tanh saturated at -1 and both generators drew black images whatever the input
(docs/results/cyclegan.md).

    trainer = CycleGANTrainer(CycleGANConfig(g_width=8, d_width=8, lambda_identity=0.5))
    record = trainer.step(a, b)                 # a, b: float32 (N, 3, H, W) in [-1, 1], unpaired
    fake_b = trainer.translate(a, "AB")
    trainer.save_checkpoint("run/checkpoint.npz"); trainer = CycleGANTrainer.load("run/checkpoint.npz")
"""
import contextlib
import time
from dataclasses import asdict, dataclass, fields

import numpy as np

from layers import BatchNorm2d, Conv2d, ConvTranspose2d, LeakyReLU, ReLU, Tanh
from layers._checks import check_input
from nnbox import backend
from nnbox.losses import l1
from nnbox.module import Module, Sequential
from nnbox.optim import Adam

from .history import History
from .losses import get_gan_loss
from .trainer import (CheckedWarnings, NonFiniteLossError, _restore_saved_state, _saved_state,
                      non_finite_weights, stream_rng)

NORMS = ("batch", "none")
LEAKY_SLOPE = 0.2             # the discriminator's LeakyReLU slope (the paper's PatchGAN)
CHECKPOINT_FORMAT = 1
DIRECTIONS = ("AB", "BA")


def _norm(kind, channels):
    """[BatchNorm2d(channels)], or [] for "none"."""
    if kind not in NORMS:
        raise ValueError(f"unknown norm {kind!r}: use one of {NORMS}")
    return [BatchNorm2d(channels)] if kind == "batch" else []


def _check_image(model, x, channels):
    check_input(model, x, 4, channels, what="(N, C, H, W)")
    if x.shape[2] % 4 or x.shape[3] % 4:
        raise ValueError(f"{type(model).__name__} halves the image twice (generator: once, then back), so its "
                         f"height and width must be multiples of 4; got shape {tuple(x.shape)}: pad or resize")


# --------------------------------------------------------------------------- networks
class _ImageNetwork(Module):
    """A network whose layers are the Sequential `main`, on (N, channels, H, W) images, H and W multiples of 4."""

    def forward(self, x):
        _check_image(self, x, self.channels)
        return self.main(x)

    def backward(self, dy):
        return self.main.backward(dy)


class ResidualBlock(Module):
    """y = x + f(x), f = Conv3x3, [BatchNorm2d], ReLU, Conv3x3, [BatchNorm2d] (channels kept).

    Shape: x (N, C, H, W) -> y (N, C, H, W).
    Backward: dx = dy + f.backward(dy) (the skip connection passes dy unchanged).
    """

    def __init__(self, channels, norm="none", rng=None):
        super().__init__()
        self.body = Sequential(Conv2d(channels, channels, 3, padding=1, bias=norm == "none", rng=rng),
                               *_norm(norm, channels), ReLU(),
                               Conv2d(channels, channels, 3, padding=1, bias=norm == "none", rng=rng),
                               *_norm(norm, channels))

    def forward(self, x):
        return x + self.body(x)

    def backward(self, dy):
        return dy + self.body.backward(dy)


class ImageTranslator(_ImageNetwork):
    """A small CycleGAN generator: encode (one stride-2 convolution), residual blocks, decode.

        Conv2d(C, w, 3, pad 1), [norm], ReLU                     H x W
        Conv2d(w, 2w, 4, stride 2, pad 1), [norm], ReLU          H/2 x W/2
        n_residual x ResidualBlock(2w)                           H/2 x W/2
        ConvTranspose2d(2w, w, 4, stride 2, pad 1), [norm], ReLU H x W
        Conv2d(w, C, 3, pad 1), Tanh                             H x W, in [-1, 1]

    Args:
        channels: C, the images' channels (3 for RGB).
        width: w above.
        n_residual: residual blocks at the bottleneck (0: none).
        norm: "batch" (BatchNorm2d after every inner convolution) or "none".
        rng: NumPy Generator or seed for the weights.

    Shape: x (N, C, H, W) with H, W multiples of 4 -> y (N, C, H, W).
    Backward: through the layers in reverse (`Sequential`); returns dx.
    """

    def __init__(self, channels=3, width=16, n_residual=1, norm="batch", rng=None):
        super().__init__()
        rng = backend.as_rng(rng)
        bias = norm == "none"  # a bias before BatchNorm is cancelled by its mean
        self.channels, self.width, self.n_residual, self.norm = channels, width, n_residual, norm
        self.main = Sequential(
            Conv2d(channels, width, 3, padding=1, bias=bias, rng=rng), *_norm(norm, width), ReLU(),
            Conv2d(width, 2 * width, 4, stride=2, padding=1, bias=bias, rng=rng), *_norm(norm, 2 * width), ReLU(),
            *[ResidualBlock(2 * width, norm, rng) for _ in range(n_residual)],
            ConvTranspose2d(2 * width, width, 4, stride=2, padding=1, bias=bias, rng=rng), *_norm(norm, width),
            ReLU(),
            Conv2d(width, channels, 3, padding=1, rng=rng), Tanh())

    def extra_repr(self):
        return f"channels={self.channels}, width={self.width}, n_residual={self.n_residual}, norm={self.norm!r}"


class PatchDiscriminator(_ImageNetwork):
    """A PatchGAN discriminator: a map of logits, each judging one overlapping patch of the image.

        Conv2d(C, w, 4, stride 2, pad 1), LeakyReLU(0.2)                 H/2 x W/2
        Conv2d(w, 2w, 4, stride 2, pad 1), [norm], LeakyReLU(0.2)        H/4 x W/4
        Conv2d(2w, 1, 3, pad 1)                                          H/4 x W/4 logits

    Each logit sees an 18 x 18 pixel patch (receptive field 4 + 3*2 + 2*4).

    Args: channels, width (w), norm ("batch" or "none"), rng: as `ImageTranslator`.
    Shape: x (N, C, H, W) with H, W multiples of 4 -> logits (N, 1, H/4, W/4).
    """

    def __init__(self, channels=3, width=16, norm="batch", rng=None):
        super().__init__()
        rng = backend.as_rng(rng)
        self.channels, self.width, self.norm = channels, width, norm
        self.main = Sequential(
            Conv2d(channels, width, 4, stride=2, padding=1, rng=rng), LeakyReLU(LEAKY_SLOPE),
            Conv2d(width, 2 * width, 4, stride=2, padding=1, bias=norm == "none", rng=rng), *_norm(norm, 2 * width),
            LeakyReLU(LEAKY_SLOPE),
            Conv2d(2 * width, 1, 3, padding=1, rng=rng))

    def extra_repr(self):
        return f"channels={self.channels}, width={self.width}, norm={self.norm!r}"


# --------------------------------------------------------------------------- objectives
class ForwardRecord:
    """Calls modules and keeps each call's saved-for-backward state, so that a module called several
    times can be backpropagated through any of its calls (`backward(key, ...)` restores that call's
    state first)."""

    def __init__(self):
        self.calls = {}

    def forward(self, key, module, x):
        y = module(x)
        self.calls[key] = (module, _saved_state(module))
        return y

    def backward(self, key, dy):
        if key not in self.calls:
            raise RuntimeError(f"backward through {key!r} before its forward: run the objective's forward first")
        module, snapshot = self.calls[key]
        _restore_saved_state(snapshot)
        return module.backward(dy)


def cycle_consistency_loss(reconstructed, original):
    """|reconstructed - original|_1 as a mean over every entry, and its gradients.

    Returns (loss: 0-d array, d_reconstructed, d_original) with d_reconstructed = sign(r - o) / n and
    d_original = -d_reconstructed (the original is also an input: the gradient check uses it).
    """
    loss, grad = l1(reconstructed, original, name="cycle_consistency_loss")
    return loss, grad, -grad


class GeneratorObjective(Module):
    """L_G of the module docstring: `forward(a, b) -> 0-d loss`, `backward(grad=1.0) -> (da, db)`.

    backward adds dL_G/dtheta into both generators' parameter gradients (and into the
    discriminators', unless frozen with requires_grad_(False), as the trainer does). The chain, with
    fake_b = G_AB(a), rec_a = G_BA(fake_b), fake_a = G_BA(b), rec_b = G_AB(fake_a):

        d fake_b = D_B.backward(w dMSE/dlogits) + G_BA.backward(lambda d|rec_a - a|/d rec_a)   [call on fake_b]
        da       = G_AB.backward(d fake_b) - lambda d|rec_a - a|/d rec_a                      [call on a]
        (b, fake_a, G_BA, D_A, G_AB alike), and the identity terms through G_AB(b) and G_BA(a).

    Args:
        g_ab, g_ba, d_a, d_b: the networks.
        gan_loss: a gan.losses name ("least_squares" in the paper).
        lambda_cycle: the cycle-consistency weight (10 in the paper).
        lambda_identity: the identity weight relative to lambda_cycle (the paper: 0.5 for some tasks; 0: off).
        adversarial_weight: w, the factor of gan/losses' generator loss. gan/losses' least-squares G loss
            is 0.5 mean((x - 1)^2); the paper's is mean((x - 1)^2), hence 2.

    After forward, `parts` holds the terms (0-d arrays) and `fakes` = (fake_a, fake_b).
    """

    def __init__(self, g_ab, g_ba, d_a, d_b, gan_loss="least_squares", lambda_cycle=10.0, lambda_identity=0.0,
                 adversarial_weight=2.0):
        super().__init__()
        self.g_ab, self.g_ba, self.d_a, self.d_b = g_ab, g_ba, d_a, d_b
        self.loss = get_gan_loss(gan_loss)
        self.lambda_cycle, self.lambda_identity = float(lambda_cycle), float(lambda_identity)
        self.adversarial_weight = float(adversarial_weight)
        self.parts, self.fakes = {}, None

    def forward(self, a, b):
        if tuple(a.shape[1:]) != tuple(b.shape[1:]):
            raise ValueError(f"GeneratorObjective: images of A {tuple(a.shape)} and of B {tuple(b.shape)} must have "
                             f"the same channels and size (the batch sizes may differ)")
        xp = backend.get_array_module(a)
        record = ForwardRecord()
        fake_b = record.forward("G_AB(a)", self.g_ab, a)
        rec_a = record.forward("G_BA(fake_b)", self.g_ba, fake_b)
        fake_a = record.forward("G_BA(b)", self.g_ba, b)
        rec_b = record.forward("G_AB(fake_a)", self.g_ab, fake_a)
        logits_b = record.forward("D_B(fake_b)", self.d_b, fake_b)
        logits_a = record.forward("D_A(fake_a)", self.d_a, fake_a)
        adv_ab, d_logits_b = self.loss.generator_loss(logits_b)
        adv_ba, d_logits_a = self.loss.generator_loss(logits_a)
        cycle_a, d_rec_a, d_a_cycle = cycle_consistency_loss(rec_a, a)
        cycle_b, d_rec_b, d_b_cycle = cycle_consistency_loss(rec_b, b)
        w, lam, lam_id = self.adversarial_weight, self.lambda_cycle, self.lambda_identity * self.lambda_cycle
        parts = {"adv_ab": xp.asarray(w * adv_ab), "adv_ba": xp.asarray(w * adv_ba),
                 "cycle_a": cycle_a, "cycle_b": cycle_b}
        grads = {"logits_b": w * d_logits_b, "logits_a": w * d_logits_a, "rec_a": lam * d_rec_a,
                 "rec_b": lam * d_rec_b, "a": lam * d_a_cycle, "b": lam * d_b_cycle}
        total = parts["adv_ab"] + parts["adv_ba"] + lam * (cycle_a + cycle_b)
        if lam_id:
            idt_b = record.forward("G_AB(b)", self.g_ab, b)
            idt_a = record.forward("G_BA(a)", self.g_ba, a)
            parts["identity_b"], d_idt_b, d_b_idt = cycle_consistency_loss(idt_b, b)
            parts["identity_a"], d_idt_a, d_a_idt = cycle_consistency_loss(idt_a, a)
            grads.update(idt_b=lam_id * d_idt_b, idt_a=lam_id * d_idt_a)
            grads["a"] = grads["a"] + lam_id * d_a_idt
            grads["b"] = grads["b"] + lam_id * d_b_idt
            total = total + lam_id * (parts["identity_a"] + parts["identity_b"])
        self.parts, self.fakes = parts, (fake_a, fake_b)
        self.save_for_backward(record=record, grads=grads)
        return xp.asarray(total, dtype=a.dtype)

    def backward(self, grad=1.0):
        saved = self.saved_for_backward()
        record, g = saved.record, {k: v * grad for k, v in saved.grads.items()}
        d_fake_b = record.backward("D_B(fake_b)", g["logits_b"]) + record.backward("G_BA(fake_b)", g["rec_a"])
        d_fake_a = record.backward("D_A(fake_a)", g["logits_a"]) + record.backward("G_AB(fake_a)", g["rec_b"])
        da = record.backward("G_AB(a)", d_fake_b) + g["a"]
        db = record.backward("G_BA(b)", d_fake_a) + g["b"]
        if "idt_b" in g:
            db = db + record.backward("G_AB(b)", g["idt_b"])
            da = da + record.backward("G_BA(a)", g["idt_a"])
        return da, db


class DiscriminatorObjective(Module):
    """One discriminator's loss: `forward(real, fake) -> 0-d loss`, `backward(grad=1.0) -> (dreal, dfake)`.

    D sees the real and the fake batch in two forward passes (each with its own BatchNorm statistics);
    the loss is gan/losses' discriminator loss, for least squares
    1/2 mean((D(real) - 1)^2) + 1/2 mean(D(fake)^2). backward adds into D's parameter gradients.
    After forward, `outputs` = (mean D(real), mean D(fake)) as 0-d arrays.
    """

    def __init__(self, discriminator, gan_loss="least_squares"):
        super().__init__()
        self.d = discriminator
        self.loss = get_gan_loss(gan_loss)
        self.outputs = None

    def forward(self, real, fake):
        xp = backend.get_array_module(real)
        record = ForwardRecord()
        real_logits = record.forward("real", self.d, real)
        fake_logits = record.forward("fake", self.d, fake)
        loss, d_real, d_fake = self.loss.discriminator_loss(real_logits, fake_logits)
        self.outputs = (real_logits.mean(), fake_logits.mean())
        self.save_for_backward(record=record, d_real=d_real, d_fake=d_fake)
        return xp.asarray(loss, dtype=real.dtype)

    def backward(self, grad=1.0):
        saved = self.saved_for_backward()
        return saved.record.backward("real", saved.d_real * grad), saved.record.backward("fake", saved.d_fake * grad)


# --------------------------------------------------------------------------- training
@dataclass
class CycleGANConfig:
    """Everything that defines a CycleGAN run except the data."""

    channels: int = 3                 # image channels (3: RGB)
    g_width: int = 16                 # generator width w (ImageTranslator)
    d_width: int = 16                 # discriminator width w (PatchDiscriminator)
    n_residual: int = 1               # residual blocks in each generator
    g_norm: str = "batch"             # generators' normalisation: "batch" (see translate) or "none"
    d_norm: str = "batch"             # discriminators' normalisation: "batch" or "none"
    gan_loss: str = "least_squares"   # the adversarial loss (gan/losses name; the paper: least squares)
    adversarial_weight: float = 2.0   # factor of gan/losses' G loss (2: the paper's MSE for least squares)
    lambda_cycle: float = 10.0        # cycle-consistency weight (the paper: 10)
    lambda_identity: float = 0.0      # identity weight, relative to lambda_cycle (the paper: 0.5 or 0)
    lr: float = 2e-4                  # Adam's learning rate, for G and D (the paper: 2e-4)
    beta1: float = 0.5                # Adam's first-moment decay (the paper: 0.5)
    beta2: float = 0.999              # Adam's second-moment decay
    seed: int = 0                     # the weights come from gan.trainer.stream_rng(seed, "model")
    device: str = "cpu"               # "cpu" (NumPy) or "gpu" (CuPy)

    def __post_init__(self):
        backend.check_device(self.device)
        for name in ("g_norm", "d_norm"):
            if getattr(self, name) not in NORMS:
                raise ValueError(f"CycleGANConfig: {name} must be one of {NORMS}, got {getattr(self, name)!r}")
        get_gan_loss(self.gan_loss)

    @classmethod
    def from_dict(cls, values):
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"CycleGANConfig: unknown settings {unknown}")
        return cls(**values)


class CycleGANTrainer:
    """The four networks, their two Adam optimisers (one for both G, one for both D), the history.

    `step(a, b)`: one generator update on L_G (discriminators frozen), then one update of both
    discriminators on the fakes of that step. Returns the step's record (floats, fetched once).
    A non-finite loss raises NonFiniteLossError before any update.
    """

    def __init__(self, config):
        self.config = config
        rng = stream_rng(config.seed, "model")
        c = config
        self.G_AB = ImageTranslator(c.channels, c.g_width, c.n_residual, c.g_norm, rng).to(c.device)
        self.G_BA = ImageTranslator(c.channels, c.g_width, c.n_residual, c.g_norm, rng).to(c.device)
        self.D_A = PatchDiscriminator(c.channels, c.d_width, c.d_norm, rng).to(c.device)
        self.D_B = PatchDiscriminator(c.channels, c.d_width, c.d_norm, rng).to(c.device)
        self.g_objective = GeneratorObjective(self.G_AB, self.G_BA, self.D_A, self.D_B, c.gan_loss, c.lambda_cycle,
                                              c.lambda_identity, c.adversarial_weight)
        self.d_a_objective = DiscriminatorObjective(self.D_A, c.gan_loss)
        self.d_b_objective = DiscriminatorObjective(self.D_B, c.gan_loss)
        betas = (c.beta1, c.beta2)
        self.opt_g = Adam(self.G_AB.parameters() + self.G_BA.parameters(), lr=c.lr, betas=betas)
        self.opt_d = Adam(self.D_A.parameters() + self.D_B.parameters(), lr=c.lr, betas=betas)
        self.history = History()
        self.step_count = 0
        self.epoch = 0

    @property
    def networks(self):
        return {"G_AB": self.G_AB, "G_BA": self.G_BA, "D_A": self.D_A, "D_B": self.D_B}

    def step(self, a, b):
        """One training step on a batch of A images and a batch of B images (unpaired); returns the record.

        Every loss is computed, fetched (once) and checked before any network changes: a NaN or infinite one
        raises NonFiniteLossError with the weights, the optimisers and BatchNorm's running statistics as the
        previous step left them. The discriminators' losses do not depend on the generators' update (their
        fakes are constants made before it), so computing them first changes no number.
        """
        started = time.perf_counter()
        a, b = (backend.to_device(x, self.config.device) for x in (a, b))
        for net in self.networks.values():
            net.train()
        buffers = [(array, array.copy()) for net in self.networks.values() for array in net.buffers()
                   if array is not None]   # a training forward moves BatchNorm's running statistics
        # the losses: L_G through frozen discriminators, then each discriminator's on this step's fakes
        caught = CheckedWarnings()
        with caught.held():   # NumPy's warnings of a step going non-finite: the check below says it
            with self._discriminators_frozen():
                g_loss = self.g_objective(a, b)
            fake_a, fake_b = self.g_objective.fakes
            d_a_loss = self.d_a_objective(a, fake_a)
            d_b_loss = self.d_b_objective(b, fake_b)
        names = ["g_loss", *self.g_objective.parts, "d_a_loss", "d_b_loss",
                 "d_a_real", "d_a_fake", "d_b_real", "d_b_fake"]
        values = [g_loss, *self.g_objective.parts.values(), d_a_loss, d_b_loss,
                  *self.d_a_objective.outputs, *self.d_b_objective.outputs]
        fetched = backend.fetch_scalars(values)   # one transfer
        record = {"step": self.step_count, "epoch": self.epoch, **dict(zip(names, fetched))}
        if not np.all(np.isfinite(fetched)):
            for array, before in buffers:
                array[...] = before
            self._clear_saved()
            raise NonFiniteLossError(self._non_finite_message(record, names))
        caught.release(f"the forward passes of step {self.step_count}")
        # the gradients (no weight gradients for D from L_G), then the updates
        self.opt_g.zero_grad()
        with self._discriminators_frozen():
            self.g_objective.backward()
        self.opt_d.zero_grad()
        self.d_a_objective.backward()
        self.d_b_objective.backward()
        self.opt_g.step()
        self.opt_d.step()
        self._clear_saved()
        record["step_seconds"] = time.perf_counter() - started   # GPU: the backward and updates may still be queued
        self.history.append(record)
        self.step_count += 1
        return record

    @contextlib.contextmanager
    def _discriminators_frozen(self):
        """D_A and D_B frozen inside: their layers neither keep nor compute weight gradients."""
        for net in (self.D_A, self.D_B):
            net.requires_grad_(False)
        try:
            yield
        finally:
            for net in (self.D_A, self.D_B):
                net.requires_grad_(True)

    def _clear_saved(self):
        for objective in (self.g_objective, self.d_a_objective, self.d_b_objective):
            objective.clear_saved()

    def _non_finite_message(self, record, names):
        kept, then = "no checkpoint had been written yet", "start again"
        if self._last_checkpoint is not None:
            path, epoch = self._last_checkpoint
            kept, then = f"the last good checkpoint, {path} (after epoch {epoch}), is kept", "resume from it"
        values = ", ".join(f"{name} {record[name]}" for name in names)
        return (f"CycleGAN training stopped at step {record['step']} (epoch {record['epoch'] + 1}), before its "
                f"updates: a non-finite value, {values}; the networks and optimisers are as the previous step left "
                f"them, and {kept}. Lower the learning rate, then {then}.")

    def translate(self, images, direction="AB", batch_size=256, batch_statistics=True):
        """G_AB(images) ("AB") or G_BA(images) ("BA"), as a NumPy float32 array, batch by batch.

        With `batch_statistics` (the default) a BatchNorm in the generator normalises each batch by its own
        statistics, as in training (the paper's generators use instance normalisation, statistics of the
        input itself); the running averages, which mix the domains a generator sees in training (a, G_BA(b)
        and, for the identity term, b), are left as they were. Without it the generator runs in eval mode.
        """
        if direction not in DIRECTIONS:
            raise ValueError(f"translate: direction must be one of {DIRECTIONS}, got {direction!r}")
        net = self.G_AB if direction == "AB" else self.G_BA
        with net.without_side_effects(train=batch_statistics):
            out = [backend.to_numpy(net(backend.to_device(np.ascontiguousarray(images[i:i + batch_size],
                                                                                dtype=np.float32),
                                                           self.config.device)))
                   for i in range(0, len(images), batch_size)]
        return np.concatenate(out)

    def set_learning_rate(self, lr):
        """Change both optimisers' learning rate from the next step on (e.g. on resuming a run that
        diverged); the config, hence the next checkpoint, records it."""
        if not lr > 0:
            raise ValueError(f"set_learning_rate: lr must be > 0, got {lr}")
        self.config.lr = self.opt_g.lr = self.opt_d.lr = float(lr)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self):
        """Everything `load_state_dict` needs to continue exactly (nested dicts for save_checkpoint)."""
        return {"networks": {name: net.state_dict() for name, net in self.networks.items()},
                "optimizer_g": self.opt_g.state_dict(), "optimizer_d": self.opt_d.state_dict(),
                "trainer": {"format": CHECKPOINT_FORMAT, "config": asdict(self.config), "step": self.step_count,
                            "epoch": self.epoch, "history": self.history.records}}

    def load_state_dict(self, state):
        for name, net in self.networks.items():
            net.load_state_dict(state["networks"][name])
        self.opt_g.load_state_dict(state["optimizer_g"])
        self.opt_d.load_state_dict(state["optimizer_d"])
        meta = state["trainer"]
        self.step_count, self.epoch = int(meta["step"]), int(meta["epoch"])
        self.history = History(meta["history"])

    _last_checkpoint = None   # (path, epoch) of the checkpoint this trainer last wrote or was loaded from

    def save_checkpoint(self, path, **extra):
        """Write the trainer's state (and `extra` sections, e.g. the data loaders' states) to `path`.

        NonFiniteLossError, writing nothing, when a weight is NaN or infinite: a step checks its losses
        before its updates, not its gradients, so an update can still break a weight, and a checkpoint
        of broken weights would replace the last good one."""
        from nnbox.serialization import save_checkpoint
        broken = non_finite_weights(self.networks)
        if broken:
            raise NonFiniteLossError(f"CycleGAN: not writing {path}: non-finite weights in {broken}; the file "
                                     f"already there is kept. Lower the learning rate and restart from it")
        save_checkpoint(path, **self.state_dict(), **extra)
        self._last_checkpoint = (path, self.epoch)
        return path

    @classmethod
    def load(cls, path, device=None):
        """(trainer, the checkpoint's sections) from a file written by `save_checkpoint`."""
        from nnbox.serialization import load_checkpoint
        state = load_checkpoint(path)
        meta = state.get("trainer", {})
        if int(meta.get("format", -1)) != CHECKPOINT_FORMAT:
            raise ValueError(f"{path} is not a CycleGAN checkpoint of format {CHECKPOINT_FORMAT} "
                             f"(got {meta.get('format')!r})")
        config = CycleGANConfig.from_dict(meta["config"])
        if device is not None:
            config.device = backend.check_device(device)
        trainer = cls(config)
        trainer.load_state_dict(state)
        trainer._last_checkpoint = (path, trainer.epoch)
        return trainer, state
