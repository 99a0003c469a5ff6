"""The GAN trainer: D and G turns decided by a balancing rule, every step recorded, exact resume.

    config = TrainConfig(arch="faces", image_size=32, loss="non_saturating", balance="skip")
    trainer = GANTrainer.from_config(config, "runs/faces")       # or GANTrainer(G, D, config, run_dir)
    trainer.fit(loader, epochs=5)                                 # loader: nnbox.data.DataLoader
    trainer = GANTrainer.resume("runs/faces"); trainer.fit(loader, epochs=10)   # continues at epoch 5

One turn (`step`), with the batch's real images x and fresh latents z:

1. The balancing rule decides, from the previous turn's statistics, whether D and G train (and why).
2. fake = G(z) (G in train mode). D sees the real batch and the fake batch in two separate forward
   passes, so each has its own BatchNorm statistics, as in DCGAN. The D loss and D's statistics
   are measured every turn, trained or not.
3. D's turn (when it trains): backward of both passes, one optimiser step; WGAN clips D's weights.
   WGAN-GP (loss="wgan_gp") instead adds the gradient penalty's exact gradient
   (gan/gradient_penalty.py, on points between the real and the fake batch D saw) before the step,
   and records the penalty ("gp"), the mean input-gradient norm ("grad_norm") and the Wasserstein
   estimate mean D(x) - mean D(G(z)) ("wasserstein").
4. G's turn (when it trains): D is frozen (D.requires_grad_(False): no weight gradients are
   computed), D(fake) is run again (D has changed), and the G loss is backpropagated through D
   into G; one optimiser step; D is unfrozen. When D did not train, its forward pass on the fakes
   from step 2 is still valid and is reused.
5. The per-step scalars are computed on the device and fetched to the host once, together.

Samples: the grid of each epoch, RUN_DIR/samples/epoch_XXX.png, is G applied to fixed latents in
train mode (DCGAN practice: BatchNorm uses the statistics of the 64 fixed vectors, which is what G
was trained with; eval mode's running averages lag behind early in training). G's buffers are
restored afterwards, so drawing samples does not change training. `sample_mode="eval"` switches.

Grids: samples/epoch_000.png is the untrained G, epoch_001.png the grid after the first epoch, ...

Checkpoint (RUN_DIR/checkpoint.npz, written atomically at the start and after every epoch): both
networks' weights and buffers, both optimisers, every NumPy generator (the trainer's, the layers'
dropout generators, the DataLoader's), the balancing rule, the fixed latents, the history and the
config. `GANTrainer.resume(RUN_DIR)` continues exactly: on the CPU a resumed run ends with the same
weights, bit for bit, as an uninterrupted one.

A non-finite loss stops training with NonFiniteLossError; the checkpoint on disk, from the last
completed epoch, is left as it was, and the history up to the failing step is written for diagnosis.
So do non-finite weights at the end of an epoch (the epoch's last update can make them so after its
losses were logged): they are checked before the epoch's grid and checkpoint are written.
"""
import json
import math
import re
import time
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Optional

import numpy as np

from nnbox import backend
from nnbox.backend import get_array_module, to_device, to_numpy
from nnbox.upload import PinnedUploader

from .balance import StepStats, get_balance_rule
from .gradient_penalty import gradient_penalty
from .history import History, atomic_write_text
from .losses import get_gan_loss, sigmoid
from .tricks import InstanceNoise, LabelPolicy, sample_latent

CHECKPOINT_NAME = "checkpoint.npz"
CHECKPOINT_FORMAT = 1
SAMPLES_DIR = "samples"
EPOCH_GRID = r"epoch_[0-9]{3,}\.png"   # the sample grids' names, f"epoch_{epoch:03d}.png" (a regular expression)
# Independent random streams derived from TrainConfig.seed: np.random.default_rng([seed, stream]).
RNG_STREAMS = {"model": 0, "latent": 1, "labels": 2, "noise": 3, "fixed_noise": 4, "data": 5, "penalty": 6}
PROBABILITY_LOSSES = ("minimax", "non_saturating")  # losses whose logits mean a probability via sigmoid
WGAN_GP = "wgan_gp"  # the Wasserstein loss with the gradient penalty (Gulrajani et al. 2017) instead of clipping


def epoch_grids(folder):
    """The sample grids in `folder` in epoch order: the files named as EPOCH_GRID, and no others (a user's
    epoch_001_copy.png is not one)."""
    grids = [path for path in Path(folder).glob("epoch_*.png") if re.fullmatch(EPOCH_GRID, path.name)]
    return sorted(grids, key=lambda path: int(path.stem[len("epoch_"):]))


def remove_epoch_grids(folder):
    """Delete the old run's sample grids in `folder` (overwrite=True), and no other file."""
    for old in epoch_grids(folder):
        old.unlink()


def stream_rng(seed, stream):
    """The NumPy generator of the named stream ("model", "latent", "data", ...) of a seed."""
    return np.random.default_rng([int(seed), RNG_STREAMS[stream]])


@dataclass
class TrainConfig:
    """Everything that defines a GAN training run except the data (a DataLoader is given to fit)."""

    # --- the networks (GANTrainer.from_config and resume build them with gan.models.build_gan)
    arch: str = "faces"               # "faces" (the course's), "dcgan" or "mlp"
    image_size: int = 32              # side of the square images (faces: 8 * 2**k; dcgan: 32 or 64)
    channels: int = 3                 # image channels (3 for RGB faces)
    latent_dim: int = 100             # size of z
    width: Optional[int] = None       # network width; None: build_gan's defaults (faces G 64, D 32)
    model_options: dict = field(default_factory=dict)  # more build_gan options, e.g. {"d_dropout": 0.3}
    # --- the objective
    loss: str = "non_saturating"      # "minimax", "non_saturating", "least_squares", "hinge", "wasserstein", "wgan_gp"
    clip_value: float = 0.01          # WGAN: D's weights are clipped to [-clip_value, clip_value] (wasserstein only)
    gp_weight: float = 10.0           # WGAN-GP: lambda, the gradient penalty's weight (wgan_gp only; no clipping)
    # --- the optimisers (one for D, one for G)
    optimizer: str = "adam"           # "adam", "rmsprop" (the WGAN recipe) or "sgd"
    lr_g: float = 2e-4                # G's learning rate (DCGAN: 2e-4)
    lr_d: float = 2e-4                # D's learning rate
    beta1: float = 0.5                # Adam's first-moment decay (DCGAN: 0.5; SGD: the momentum)
    beta2: float = 0.999              # Adam's second-moment decay
    # --- the balancing rule (gan/balance.py)
    balance: str = "skip"             # "alternate" (both every turn), "ratio" (n_d:n_g) or "skip" (skip the too good)
    d_threshold: float = 0.9          # skip: D skips its turn when its accuracy is above this
    g_threshold: float = 0.9          # skip: G skips its turn when its success rate is above this
    max_consecutive_skips: int = 5    # skip: a network skipped this many turns in a row trains anyway
    n_d: int = 1                      # ratio: D steps per cycle
    n_g: int = 1                      # ratio: G steps per cycle
    # --- the tricks (gan/tricks.py); dropout on D's input is model_options["input_dropout"]
    label_smoothing: float = 0.1      # one-sided: D's real targets are 1 - label_smoothing
    soft_labels: bool = False         # random soft targets: real ~ U(0.7, 1), fake ~ U(0, 0.3)
    flip_labels: float = 0.0          # fraction of D's labels swapped in each batch
    instance_noise: float = 0.0       # std of Gaussian noise added to every image D sees (0: off)
    instance_noise_decay: int = 0     # steps over which that std falls linearly to 0 (0: constant)
    latent_kind: str = "normal"       # z ~ "normal" N(0, 1) or "uniform" U(-1, 1)
    # --- samples and the run
    n_samples: int = 64               # fixed latents drawn once, for the per-epoch sample grids
    sample_mode: str = "train"        # G's mode for the grids: "train" (DCGAN practice) or "eval"
    sample_scale: int = 2             # integer upscaling of the grid images (32 px faces are small)
    seed: int = 0                     # seeds every random stream of the trainer (see RNG_STREAMS)
    device: str = "cpu"               # "cpu" (NumPy) or "gpu" (CuPy)
    steps_per_epoch: Optional[int] = None  # end each epoch after this many batches (None: the whole loader)
    progress: bool = True             # a tqdm bar per epoch with the live figures
    report: bool = True               # at the end of fit: plots, GIF, history files and report.html

    def __post_init__(self):
        backend.check_device(self.device)
        for name in ("image_size", "channels", "latent_dim"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"TrainConfig: {name} must be >= 1, got {getattr(self, name)}")
        if self.width is not None and int(self.width) < 1:
            raise ValueError(f"TrainConfig: width must be >= 1 (or None for the defaults), got {self.width}")
        if not (self.lr_g >= 0 and self.lr_d >= 0):
            raise ValueError(f"TrainConfig: learning rates must be >= 0, got lr_g={self.lr_g}, lr_d={self.lr_d}")
        if self.sample_mode not in ("train", "eval"):
            raise ValueError(f"TrainConfig: sample_mode must be 'train' or 'eval', got {self.sample_mode!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"TrainConfig: unknown optimizer {self.optimizer!r}: use one of {sorted(OPTIMIZERS)}")
        if self.steps_per_epoch is not None and int(self.steps_per_epoch) < 1:
            raise ValueError(f"TrainConfig: steps_per_epoch must be >= 1 or None, got {self.steps_per_epoch}")
        if self.n_samples < 1:
            raise ValueError(f"TrainConfig: n_samples must be >= 1, got {self.n_samples}")
        if not self.gp_weight >= 0:
            raise ValueError(f"TrainConfig: gp_weight (WGAN-GP's lambda) must be >= 0, got {self.gp_weight}")
        if not self.clip_value > 0:   # clip(w, -c, c) with c <= 0 would set every critic weight to c
            raise ValueError(f"TrainConfig: clip_value (WGAN's weight clipping) must be > 0, got {self.clip_value}")

    @property
    def uses_gradient_penalty(self):
        """WGAN-GP: the Wasserstein loss, D's weights unclipped, the gradient penalty in D's step."""
        return self.loss == WGAN_GP

    def balance_kwargs(self):
        """The arguments of get_balance_rule(self.balance, ...)."""
        if self.balance == "skip":
            return {"d_threshold": self.d_threshold, "g_threshold": self.g_threshold,
                    "max_consecutive_skips": self.max_consecutive_skips}
        if self.balance == "ratio":
            return {"n_d": self.n_d, "n_g": self.n_g}
        return {}

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, values):
        """A config from a dict (as saved); unknown keys are a clear error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"TrainConfig: unknown settings {unknown} (saved by a newer nnbox?)")
        return cls(**values)


def _adam(params, config, lr):
    from nnbox.optim import Adam
    return Adam(params, lr=lr, betas=(config.beta1, config.beta2))


def _rmsprop(params, config, lr):
    from nnbox.optim import RMSprop
    return RMSprop(params, lr=lr)


def _sgd(params, config, lr):
    from nnbox.optim import SGD
    return SGD(params, lr=lr, momentum=config.beta1)


OPTIMIZERS = {"adam": _adam, "rmsprop": _rmsprop, "sgd": _sgd}


class NonFiniteLossError(RuntimeError):
    """A loss, a statistic or a weight became NaN or infinite; training stopped, the last checkpoint is kept."""


def non_finite_weights(networks):
    """"" when every parameter and buffer of `networks` ({label: Module}) is finite, else which are
    not, e.g. "2 arrays (G main.0.weight, G main.1.bias)"; one device-to-host copy for all of them."""
    names, finite = [], []
    for label, network in networks.items():
        for name, array in network.state_dict().items():
            if array.dtype.kind == "f":
                names.append(f"{label} {name}")
                finite.append(get_array_module(array).isfinite(array).all())
    broken = [name for name, ok in zip(names, backend.fetch_scalars(finite)) if not ok]
    if not broken:
        return ""
    return f"{len(broken)} arrays ({', '.join(broken[:3])}{', ...' if len(broken) > 3 else ''})"


class CheckedWarnings:
    """NumPy's overflow and invalid-value warnings of a step's forward passes, held until the step's check.

        caught = CheckedWarnings()
        with caught.held():          # the forward passes and losses
            ...
        if not finite: raise NonFiniteLossError(...)   # the error says it all: the warnings are dropped
        caught.release("the forward passes")           # finite: each kind of warning, once

    An overflow or a NaN in a forward pass usually ends in a non-finite loss, which the trainer reports in one
    clear error (NonFiniteLossError; the VAE's FloatingPointError) instead of RuntimeWarnings printed ahead of
    it. But not always (a Tanh turns an overflow into +-1, and the losses stay finite): then the warning is the
    only sign, so it is given after the check. Backward passes and updates are not held. np.errstate is
    context-local in NumPy 2, and nnbox.parallel's workers run in their caller's context.
    """

    def __init__(self):
        self.counts = {}

    def _count(self, kind, flag):
        self.counts[kind] = self.counts.get(kind, 0) + 1

    def held(self):
        return np.errstate(over="call", invalid="call", call=self._count)

    def release(self, where):
        """One RuntimeWarning per kind held (overflow, invalid value), naming `where`; then nothing is held."""
        for kind, count in self.counts.items():
            warnings.warn(f"{kind} encountered in {where} ({count} operation{'s' * (count > 1)}); the step's "
                          f"losses stayed finite", RuntimeWarning, stacklevel=3)
        self.counts.clear()


def _check_critic(discriminator):
    """ValueError unless the gradient penalty can go through every layer of the critic (a BatchNorm
    or a SpectralNorm cannot: layers.second_order), said before any training or file is made."""
    from layers import second_order
    try:
        second_order.chain(discriminator)
    except TypeError as error:
        hint = {"BatchNorm": " (the DCGAN critic: model_options d_batch_norm=False)",
                "SpectralNorm": " (leave out d_spectral_norm: the penalty constrains the critic instead)"}
        raise ValueError(f"loss 'wgan_gp': {error}" + next((text for layer, text in hint.items()
                                                          if str(error).startswith(layer)), "")) from error


def build_models(config):
    """(G, D) from a TrainConfig, on the CPU, weights from the config's "model" random stream."""
    from .models import build_gan
    return build_gan(config.arch, image_size=config.image_size, latent_dim=config.latent_dim,
                     channels=config.channels, width=config.width, rng=stream_rng(config.seed, "model"),
                     **config.model_options)


class GANTrainer:
    """Trains a generator and a discriminator; records, samples, checkpoints, reports.

    Args:
        generator, discriminator: gan.models networks (or any Modules with the same interface;
            the generator needs `latent_dim`). They are moved to `config.device`.
        config: a TrainConfig.
        run_dir: the folder for samples, checkpoint, history, plots and report.html.
        overwrite: allow starting a new run in a folder that already holds a checkpoint
            (its old sample grids are deleted). Without it that is an error: resume instead.
        extra_config: a JSON-friendly dict saved with the checkpoint and in config.json (the
            example script keeps its data settings there, to rebuild the loader on resume).
    """

    def __init__(self, generator, discriminator, config, run_dir, overwrite=False, extra_config=None,
                 _resuming=False):
        self.config = config
        self.run_dir = Path(run_dir)
        self.extra_config = dict(extra_config or {})
        self.checkpoint_path = self.run_dir / CHECKPOINT_NAME
        if self.checkpoint_path.exists() and not (_resuming or overwrite):
            raise FileExistsError(
                f"{self.run_dir} already holds a run ({CHECKPOINT_NAME}); continue it with "
                f"GANTrainer.resume({str(self.run_dir)!r}), or start over with overwrite=True, or choose "
                f"another folder")
        # everything that can refuse the config comes before the run folder is touched
        self.latent_dim = getattr(generator, "latent_dim", config.latent_dim)
        if self.latent_dim != config.latent_dim:
            raise ValueError(f"GANTrainer: the generator takes latent_dim={self.latent_dim}, "
                             f"the config says {config.latent_dim}")
        self.G = generator.to(config.device)
        self.D = discriminator.to(config.device)
        self.loss = get_gan_loss("wasserstein" if config.uses_gradient_penalty else config.loss)
        if config.uses_gradient_penalty:
            _check_critic(self.D)
        # eps of the penalty's interpolation; only WGAN-GP runs have (and checkpoint) this stream
        self.penalty_rng = stream_rng(config.seed, "penalty") if config.uses_gradient_penalty else None
        self.opt_g = OPTIMIZERS[config.optimizer](self.G.parameters(), config, config.lr_g)
        self.opt_d = OPTIMIZERS[config.optimizer](self.D.parameters(), config, config.lr_d)
        self.rule = get_balance_rule(config.balance, **config.balance_kwargs())
        self.label_policy = LabelPolicy(config.label_smoothing, config.soft_labels, config.flip_labels,
                                        rng=stream_rng(config.seed, "labels"))
        self.instance_noise = InstanceNoise(config.instance_noise, config.instance_noise_decay,
                                            rng=stream_rng(config.seed, "noise"))
        self.xp = backend.require_cupy() if config.device == "gpu" else np
        self._uploader = PinnedUploader() if config.device == "gpu" else None
        self.latent_rng = stream_rng(config.seed, "latent")
        self._device_latent_rng = None  # GPU only: a CuPy generator derived from latent_rng (see _latent)
        self._device_penalty_rng = None  # GPU and WGAN-GP only: one derived from penalty_rng
        self.fixed_z = sample_latent(config.n_samples, self.latent_dim, config.latent_kind,
                                     stream_rng(config.seed, "fixed_noise"))  # NumPy; moved when used
        self.threshold = 0.5 if config.loss == "least_squares" else 0.0  # D calls x real when output > it
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if overwrite and not _resuming:
            remove_epoch_grids(self.run_dir / SAMPLES_DIR)
            self.checkpoint_path.unlink(missing_ok=True)
        self.history = History()
        self.epoch_log = []          # per epoch: {"epoch", "seconds", "images", "images_per_sec"}
        self.epoch = 0               # completed epochs
        self.global_step = 0         # completed turns
        self.last_stats = None       # StepStats of the last turn: the balancing rule's next input
        self._pending_loader_state = None
        self._constant_targets = {}  # (n, xp) -> (real, fake) when the label policy is not random

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, config, run_dir, overwrite=False, extra_config=None):
        """A trainer with networks built from the config (gan.models.build_gan)."""
        generator, discriminator = build_models(config)
        return cls(generator, discriminator, config, run_dir, overwrite=overwrite, extra_config=extra_config)

    @classmethod
    def resume(cls, run_dir, generator=None, discriminator=None, device=None):
        """The trainer of RUN_DIR/checkpoint.npz, exactly as it was at the end of its last epoch.

        The networks are rebuilt from the saved config unless given; `device` overrides the saved one.
        The next `fit(loader, epochs)` restores the loader's generator state too: build the loader
        the same way as the first time (same data, batch size, options).
        """
        from nnbox.serialization import load_checkpoint
        run_dir = Path(run_dir)
        path = run_dir / CHECKPOINT_NAME
        if not path.is_file():
            raise FileNotFoundError(f"cannot resume: {path} does not exist (no epoch of that run was saved, "
                                    f"or {run_dir} is not a run folder)")
        state = load_checkpoint(path)
        meta = state["trainer"]
        if int(meta["format"]) != CHECKPOINT_FORMAT:
            raise ValueError(f"{path} has checkpoint format {int(meta['format'])}, this trainer reads "
                             f"{CHECKPOINT_FORMAT}")
        config = TrainConfig.from_dict(meta["config"])
        if device is not None:
            config.device = backend.check_device(device)
        if generator is None or discriminator is None:
            generator, discriminator = build_models(config)
        trainer = cls(generator, discriminator, config, run_dir, _resuming=True,
                      extra_config=meta["extra"])
        trainer._load_state(state)
        return trainer

    def set_learning_rates(self, lr_g=None, lr_d=None):
        """Change G's and/or D's learning rate from the next step on (e.g. on resuming a run that
        diverged); the config, hence the next checkpoint, records the new values."""
        for network, value in (("g", lr_g), ("d", lr_d)):
            if value is None:
                continue
            if not value >= 0:
                raise ValueError(f"set_learning_rates: lr_{network} must be >= 0, got {value}")
            setattr(self.config, f"lr_{network}", float(value))
            getattr(self, f"opt_{network}").lr = float(value)

    @staticmethod
    def read_checkpoint_configs(run_dir):
        """(TrainConfig, extra_config dict) saved in RUN_DIR/checkpoint.npz (the example rebuilds its data)."""
        meta = read_checkpoint_meta(run_dir)
        return TrainConfig.from_dict(meta["config"]), meta["extra"]

    # ------------------------------------------------------------------ one turn
    def step(self, real_batch):
        """One turn on a batch of real images (float NCHW in [-1, 1]); returns the step's record.

        On the GPU, pass the batch already on the device (`fit` does, through a PinnedUploader): then
        the step copies nothing between host and device but its logged scalars, fetched once at the end.
        A NumPy batch still works; it is uploaded here, and the host waits for that copy.
        Raises NonFiniteLossError when a loss or a statistic is NaN or infinite; NumPy's overflow and
        invalid-value warnings of the forward passes are held until then (CheckedWarnings): dropped when the
        step raises, given after the check when it does not. Those of the backward passes and updates are not held.
        """
        xp = self.xp
        started = time.perf_counter()
        decision = self.rule.decide(self.last_stats)
        real = to_device(real_batch, self.config.device)
        n = real.shape[0]
        noise_std = self.instance_noise.current_std(self.global_step)
        self.G.train()
        self.D.train()
        caught = CheckedWarnings()

        # D on the real and the fake batch, in separate passes (separate BatchNorm statistics). The losses and
        # D's outputs are checked at the end of the step: NumPy's warnings of their arithmetic are left to that.
        with caught.held():
            z = self._latent(n)
            fake = self.G(z)
            d_real_input = self.instance_noise(real, self.global_step)
            real_logits = self.D(d_real_input)
            real_pass = _saved_state(self.D)
            d_fake_input = self.instance_noise(fake, self.global_step)
            fake_logits = self.D(d_fake_input)
            real_targets, fake_targets = self._targets(n, xp)
            d_loss, d_real_grad, d_fake_grad = self.loss.discriminator_loss(real_logits, fake_logits,
                                                                           real_targets, fake_targets)
        if decision.train_d:
            self.D.zero_grad()                   # D's inputs are data here: no input gradients
            self.D.backward_parameters(d_fake_grad)   # D still holds the fake pass
            _restore_saved_state(real_pass)
            self.D.backward_parameters(d_real_grad)
            penalty = None
            if self.penalty_rng is not None:   # WGAN-GP: on the images D just saw
                _, penalty = gradient_penalty(self.D, d_real_input, d_fake_input, self.config.gp_weight,
                                              self._penalty_generator())
            self.opt_d.step()
            if self.loss.wants_weight_clipping and self.penalty_rng is None:
                self._clip_discriminator()

        # G's turn: through a frozen D into G.
        if decision.train_g:
            frozen = [p.requires_grad for p in self.D.parameters()]
            self.D.requires_grad_(False)
            try:
                with caught.held():
                    if decision.train_d:         # D changed: look at the fakes again
                        g_logits = self.D(self.instance_noise(fake, self.global_step))
                    else:                        # D unchanged and still holds its pass on the fakes
                        g_logits = fake_logits
                    g_loss, g_logits_grad = self.loss.generator_loss(g_logits)
                self.G.zero_grad()
                self.G.backward(self.D.backward(g_logits_grad))
                self.opt_g.step()
            finally:
                for param, flag in zip(self.D.parameters(), frozen):
                    param.requires_grad = flag
        else:
            with caught.held():
                if decision.train_d:   # D changed: measure G against it as a G turn would, leaving no trace
                    with self.D.without_side_effects(train=True):
                        g_logits = self.D(d_fake_input)
                else:
                    g_logits = fake_logits
                g_loss, _ = self.loss.generator_loss(g_logits)

        # Every logged scalar in one array, fetched once.
        thr = real_logits.dtype.type(self.threshold)
        with caught.held():
            if self.config.loss in PROBABILITY_LOSSES:
                d_real, d_fake = sigmoid(real_logits).mean(), sigmoid(fake_logits).mean()
            else:
                d_real, d_fake = real_logits.mean(), fake_logits.mean()
        scalars = [d_real, d_fake, (real_logits > thr).mean(), (fake_logits < thr).mean(), (g_logits > thr).mean(),
                   d_loss, g_loss]           # the losses: Python floats or 0-d arrays, whichever the loss returns
        if self.penalty_rng is not None:     # NaN on turns where D did not train (no penalty computed)
            scalars += [penalty["gp"], penalty["grad_norm"]] if decision.train_d else [math.nan, math.nan]
        scalars = backend.fetch_scalars(scalars)   # one device-to-host copy for all of them
        d_real, d_fake, acc_real, acc_fake, g_success, d_loss, g_loss = scalars[:7]
        seconds = time.perf_counter() - started

        record = {"step": self.global_step, "epoch": self.epoch, "d_loss": d_loss, "g_loss": g_loss,
                  "d_real": d_real, "d_fake": d_fake, "d_acc_real": acc_real, "d_acc_fake": acc_fake,
                  "g_success": g_success, "train_d": int(decision.train_d), "train_g": int(decision.train_g),
                  "reason": decision.reason, "noise_std": noise_std,
                  "images_per_sec": n / seconds if seconds > 0 else float("nan"), "step_seconds": seconds}
        if self.penalty_rng is not None:
            record.update(gp=scalars[7], grad_norm=scalars[8], wasserstein=d_real - d_fake)
        self.history.append(record)
        if not all(math.isfinite(v) for v in (d_loss, g_loss, d_real, d_fake)):
            raise NonFiniteLossError(self._non_finite_message(record))
        caught.release(f"the forward passes of step {record['step']}")
        self.last_stats = StepStats(d_acc_real=acc_real, d_acc_fake=acc_fake, g_success=g_success)
        self.global_step += 1
        return record

    def _latent(self, n):
        """z for a batch. On the CPU: gan.tricks.sample_latent from the latent generator. On the GPU,
        drawn on the device (an upload would wait for the GPU's queue every step) by a CuPy generator
        seeded from the latent generator at the first step of each epoch, so a resumed run draws the same."""
        if self.xp is np:
            return sample_latent(n, self.latent_dim, self.config.latent_kind, self.latent_rng, np)
        if self._device_latent_rng is None:
            self._device_latent_rng = backend.random_generator(self.latent_rng, self.xp)
        rng, shape = self._device_latent_rng, (n, self.latent_dim)
        if self.config.latent_kind == "normal":
            return rng.standard_normal(shape, dtype=self.xp.float32)
        if self.config.latent_kind == "uniform":
            return rng.uniform(-1.0, 1.0, shape).astype(self.xp.float32)
        raise ValueError(f"unknown latent_kind {self.config.latent_kind!r}: use 'normal' or 'uniform'")

    def _penalty_generator(self):
        """WGAN-GP's eps: the NumPy "penalty" generator on the CPU; on the GPU a CuPy generator derived
        from it at the first step of each epoch (like `_latent`'s), so nothing is uploaded per step."""
        if self.xp is np:
            return self.penalty_rng
        if self._device_penalty_rng is None:
            self._device_penalty_rng = backend.random_generator(self.penalty_rng, self.xp)
        return self._device_penalty_rng

    def _begin_epoch(self):
        """Forget device generators derived from NumPy ones: each epoch re-derives them from the NumPy
        generators' states, which the checkpoint holds, so resuming on the GPU draws the same numbers."""
        self._device_latent_rng = self._device_penalty_rng = None
        self.instance_noise.reset_device_rngs()
        self.label_policy.reset_device_rngs()
        reset_device_generators(self.G, self.D)

    def _targets(self, n, xp):
        """D's targets from the label policy; None (the loss's own 1/0) when they are the defaults.

        Constant targets (plain one-sided smoothing) are made once per batch size and reused.
        """
        policy = self.label_policy
        if policy.is_default or not self.loss.uses_targets:
            return None, None
        if policy.soft_labels or policy.flip_count(n):
            return policy.targets(n, xp)
        key = (n, xp.__name__)
        if key not in self._constant_targets:
            self._constant_targets[key] = policy.targets(n, xp)
        return self._constant_targets[key]

    def _clip_discriminator(self):
        c = self.config.clip_value
        for param in self.D.parameters():
            get_array_module(param.data).clip(param.data, -c, c, out=param.data)

    def _non_finite_message(self, record):
        return self._stopped_message(
            f"at step {record['step']} (epoch {record['epoch'] + 1}): a non-finite value, D loss "
            f"{record['d_loss']}, G loss {record['g_loss']}, D(x) {record['d_real']}, D(G(z)) {record['d_fake']}")

    def _stopped_message(self, what):
        if self._saved_epoch is not None:
            kept = f"the last good checkpoint, {self.checkpoint_path} (after epoch {self._saved_epoch}), is kept"
            then = "then resume from the checkpoint"
        else:
            kept, then = "no checkpoint had been written yet", "then start again"
        return (f"training stopped {what}; {kept}. The history up to then is in {self.run_dir / 'history.csv'}. "
                f"Lower the learning rates, or try another loss or balancing rule, {then}.")

    def _check_weights_finite(self):
        """NonFiniteLossError, before anything of this epoch is written, if a weight is NaN or infinite."""
        broken = non_finite_weights({"G": self.G, "D": self.D})
        if broken:
            raise NonFiniteLossError(self._stopped_message(
                f"at the end of epoch {self.epoch + 1}: its last updates left non-finite weights in {broken}"))

    # ------------------------------------------------------------------ epochs
    _saved_epoch = None  # the epoch count of the checkpoint on disk (None: none written by this trainer)

    def fit(self, loader, epochs):
        """Train until `epochs` epochs are complete in total (a resumed trainer continues from its count).

        After every epoch: the sample grid, the history files and the checkpoint. At the end (when
        config.report): plots, GIF and report.html. Returns the History.
        """
        from tqdm import tqdm
        if self._pending_loader_state is not None:
            if not hasattr(loader, "load_state_dict"):
                raise TypeError("GANTrainer.fit: resuming needs a loader with load_state_dict "
                                "(nnbox.data.DataLoader) to continue its random order exactly")
            loader.load_state_dict(self._pending_loader_state)
            self._pending_loader_state = None
        self._write_config()
        if not self.checkpoint_path.exists():  # a fresh run: the untrained G's grid, and a first checkpoint
            self.save_samples()
            self.save_checkpoint(loader)
        try:
            while self.epoch < epochs:
                started = time.perf_counter()
                images = self._run_epoch(loader, epochs, tqdm)
                seconds = time.perf_counter() - started
                self._check_weights_finite()
                self.epoch_log.append({"epoch": self.epoch, "seconds": seconds, "images": images,
                                       "images_per_sec": images / seconds if seconds > 0 else float("nan")})
                self.epoch += 1
                self.save_samples()
                self._write_history()
                self.save_checkpoint(loader)
                tqdm.write(self._epoch_line(epochs))
        except NonFiniteLossError:
            self._write_history()
            raise
        if self.config.report and len(self.history):
            self.write_report()
        return self.history

    def _run_epoch(self, loader, epochs, tqdm):
        self._begin_epoch()
        total = len(loader)
        if self.config.steps_per_epoch is not None:
            total = min(total, int(self.config.steps_per_epoch))
        batches = iter(loader)
        images = 0
        bar = tqdm(total=total, desc=f"epoch {self.epoch + 1}/{epochs}", unit="step", leave=False,
                   disable=not self.config.progress, dynamic_ncols=True)
        try:
            for _ in range(total):
                batch = next(batches)
                if isinstance(batch, tuple):  # (images, labels) from a labelled data set
                    batch = batch[0]
                if self._uploader is not None:   # GPU: queue the copy here, so step() makes none
                    batch = self._uploader(batch)
                record = self.step(batch)
                images += int(batch.shape[0])
                bar.set_postfix_str(
                    f"D {record['d_loss']:.3f} G {record['g_loss']:.3f} D(x) {record['d_real']:.2f} "
                    f"D(G(z)) {record['d_fake']:.2f} acc {record['d_acc_real']:.2f}/{record['d_acc_fake']:.2f} "
                    f"{'D' if record['train_d'] else '-'}{'G' if record['train_g'] else '-'} "
                    f"{record['images_per_sec']:.0f} img/s", refresh=False)
                bar.update(1)
        finally:
            bar.close()
            if hasattr(batches, "close"):
                batches.close()              # stops a prefetching loader's thread
        return images

    def _epoch_line(self, epochs):
        rows = [r for r in self.history if r["epoch"] == self.epoch - 1]
        log = self.epoch_log[-1]
        if not rows:
            return f"epoch {self.epoch}/{epochs}: no steps"
        mean = {k: float(np.mean([r[k] for r in rows])) for k in
                ("d_loss", "g_loss", "d_real", "d_fake", "d_acc_real", "d_acc_fake", "g_success")}
        penalty = ""
        if self.penalty_rng is not None:
            gp, w = (float(np.nanmean([r[k] for r in rows])) for k in ("gp", "wasserstein"))
            penalty = f", GP {gp:.3f}, W estimate {w:.3f}"
        return (f"epoch {self.epoch}/{epochs}: D loss {mean['d_loss']:.3f}{penalty}, G loss {mean['g_loss']:.3f}, "
                f"D(x) {mean['d_real']:.3f}, D(G(z)) {mean['d_fake']:.3f}, D acc real/fake "
                f"{mean['d_acc_real']:.2f}/{mean['d_acc_fake']:.2f}, G success {mean['g_success']:.2f}, "
                f"D trained {sum(r['train_d'] for r in rows)}/{len(rows)}, G {sum(r['train_g'] for r in rows)}/"
                f"{len(rows)}; {log['seconds']:.1f} s, {log['images_per_sec']:.0f} images/s")

    # ------------------------------------------------------------------ samples, files
    def sample(self, z=None):
        """G(z) for the fixed latents (or `z`), NumPy float NCHW; G's state is left as it was, and so
        are the random streams training draws from (a dropout in G draws from copies)."""
        z = self.fixed_z if z is None else z
        with self.G.without_side_effects(train=self.config.sample_mode == "train"):
            return to_numpy(self.G(to_device(z, self.config.device)))

    def save_samples(self):
        """RUN_DIR/samples/epoch_XXX.png for the epochs completed so far; returns the path."""
        from .visualize import save_image_grid
        nrow = int(math.ceil(math.sqrt(self.config.n_samples)))
        return save_image_grid(self.sample(), self.run_dir / SAMPLES_DIR / f"epoch_{self.epoch:03d}.png",
                               nrow=nrow, scale=self.config.sample_scale)

    def _write_config(self):
        atomic_write_text(self.run_dir / "config.json",
                          json.dumps({"train": self.config.to_dict(), **self.extra_config}, indent=2))

    def _write_history(self):
        self.history.to_csv(self.run_dir / "history.csv")
        self.history.to_json(self.run_dir / "history.json")
        atomic_write_text(self.run_dir / "epochs.json", json.dumps(self.epoch_log, indent=1))

    def write_report(self):
        """Plots, the GIF, history files and RUN_DIR/report.html; returns {name: path}."""
        from .report import build_report
        return build_report(self.run_dir, history=self.history,
                            config={"train": self.config.to_dict(), **self.extra_config})

    # ------------------------------------------------------------------ checkpoints
    def rng_states(self):
        """{name: bit_generator.state} of every NumPy generator the run draws from (the loader's excepted)."""
        states = {"latent": self.latent_rng.bit_generator.state,
                  "labels": self.label_policy.rng.bit_generator.state,
                  "noise": self.instance_noise.rng.bit_generator.state}
        if self.penalty_rng is not None:
            states["penalty"] = self.penalty_rng.bit_generator.state
        for prefix, module in (("G", self.G), ("D", self.D)):
            for name, rng in module.named_generators(prefix + "."):
                states[name] = rng.bit_generator.state
        return states

    def _set_rng_states(self, states):
        own = {"latent": self.latent_rng, "labels": self.label_policy.rng, "noise": self.instance_noise.rng}
        if self.penalty_rng is not None:
            own["penalty"] = self.penalty_rng
        for prefix, module in (("G", self.G), ("D", self.D)):
            own.update(module.named_generators(prefix + "."))
        missing, unexpected = sorted(set(own) - set(states)), sorted(set(states) - set(own))
        if missing or unexpected:
            raise ValueError(f"the checkpoint's random generators do not match the networks: missing {missing}, "
                             f"unexpected {unexpected}")
        for name, rng in own.items():
            rng.bit_generator.state = states[name]
        self._device_latent_rng = self._device_penalty_rng = None   # CuPy generators are re-derived from
        self.instance_noise.reset_device_rngs()                      # the restored ones
        self.label_policy.reset_device_rngs()
        reset_device_generators(self.G, self.D)

    def save_checkpoint(self, loader=None):
        """Write RUN_DIR/checkpoint.npz atomically (everything needed to continue exactly); never with a
        NaN or infinite weight (NonFiniteLossError, the file on disk kept)."""
        from nnbox.serialization import save_checkpoint
        if broken := non_finite_weights({"G": self.G, "D": self.D}):
            raise NonFiniteLossError(f"not writing {self.checkpoint_path}: non-finite weights in {broken}; the "
                                     f"checkpoint already there is kept")
        loader_state = None
        if loader is not None and hasattr(loader, "state_dict"):
            loader_state = loader.state_dict()
            if loader_state.get("batches_done", 0) and hasattr(loader, "rng"):
                # an epoch cut short by steps_per_epoch: the next epoch starts a new order, from here
                loader_state = {"rng_state": loader.rng.bit_generator.state, "batches_done": 0}
        meta = {
            "format": CHECKPOINT_FORMAT, "epoch": self.epoch, "global_step": self.global_step,
            "fixed_z": np.asarray(self.fixed_z),
            "config": self.config.to_dict(),
            "extra": self.extra_config,
            "rng": self.rng_states(),
            "loader": loader_state,
            "balance": self.rule.state_dict(),
            "last_stats": None if self.last_stats is None else asdict(self.last_stats),
            "history": self.history.records,
            "epoch_log": self.epoch_log,
        }
        save_checkpoint(self.checkpoint_path,
                        generator=self.G.state_dict(), discriminator=self.D.state_dict(),
                        optimizer_g=self.opt_g.state_dict(), optimizer_d=self.opt_d.state_dict(),
                        trainer=meta)
        self._saved_epoch = self.epoch
        return self.checkpoint_path

    def _load_state(self, state):
        meta = state["trainer"]
        self.G.load_state_dict(state["generator"])
        self.D.load_state_dict(state["discriminator"])
        self.opt_g.load_state_dict(state["optimizer_g"])
        self.opt_d.load_state_dict(state["optimizer_d"])
        self.epoch, self.global_step = int(meta["epoch"]), int(meta["global_step"])
        self.fixed_z = np.asarray(meta["fixed_z"], dtype=np.float32)
        self._set_rng_states(meta["rng"])
        self._pending_loader_state = meta["loader"]
        self.rule.load_state_dict(meta["balance"])
        self.last_stats = None if meta["last_stats"] is None else StepStats(**meta["last_stats"])
        self.history = History(meta["history"])
        self.epoch_log = list(meta["epoch_log"])
        self._saved_epoch = self.epoch


# --------------------------------------------------------------------------- helpers
def read_checkpoint_meta(run_dir):
    """The "trainer" section of RUN_DIR/checkpoint.npz: {"config": ..., "extra": ...} (for --resume)."""
    from nnbox.serialization import load_checkpoint
    path = Path(run_dir) / CHECKPOINT_NAME
    if not path.is_file():
        raise FileNotFoundError(f"cannot resume: {path} does not exist")
    return load_checkpoint(path)["trainer"]


def _saved_state(module):
    """What every layer of `module` saved for backward: a snapshot to restore after another forward.

    D runs forward on the real batch, then on the fake batch; each layer keeps only its last
    forward's `save_for_backward` namespace, so the real pass's namespaces are kept aside here and
    put back (`_restore_saved_state`) before backpropagating the real half of D's loss.
    """
    return [(m, m._saved) for m in module.modules()]


def _restore_saved_state(snapshot):
    for module, saved in snapshot:
        object.__setattr__(module, "_saved", saved)


def reset_device_generators(*networks):
    """Make every layer of `networks` that draws on the GPU (dropout masks, noise) derive its CuPy
    generator afresh from its NumPy one at its next use. Trainers call it at each epoch start and
    after restoring the NumPy generators, so a resumed GPU run draws what an uninterrupted one does."""
    for network in networks:
        for layer in network.modules():
            if hasattr(layer, "reset_device_rng"):
                layer.reset_device_rng()


