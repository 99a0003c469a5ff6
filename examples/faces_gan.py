"""Train a GAN that draws faces, with nnbox (NumPy on the CPU, CuPy on the GPU).

With no arguments it trains the course's faces GAN at 32x32 on LFW: from the data cache
(`$NNBOX_CACHE`, default ~/.cache/nnbox), else it downloads LFW; if neither works it says so in one
line and uses procedurally drawn cartoon faces instead. A `--data` folder without LFW is an error.

    python examples/faces_gan.py                                       # the recipe: LFW (or synthetic), 32x32
    python examples/faces_gan.py --data ../shared/data/lfw-deepfunneled --image-size 32 --epochs 20 --out runs/lfw32
    python examples/faces_gan.py --data ../shared/data/lfw-deepfunneled --image-size 32 --epochs 1 \\
        --max-images 2048 --out /tmp/smoke                             # a quick end-to-end check
    python examples/faces_gan.py --dataset synthetic --epochs 1 --max-images 64 --out /tmp/tiny
    python examples/faces_gan.py --arch dcgan --image-size 64 --device gpu --out runs/dcgan64
    python examples/faces_gan.py --loss wasserstein --optimizer rmsprop --lr 5e-5 --balance ratio --n-d 5 \\
        --label-smoothing 0 --out runs/wgan
    python examples/faces_gan.py --loss wgan_gp --out runs/wgan_gp   # WGAN-GP: Adam 1e-4 (0, 0.9), 5 critic steps
    python examples/faces_gan.py --balance alternate --soft-labels --label-smoothing 0 --instance-noise 0.1 \\
        --instance-noise-decay 2000 --d-input-dropout 0.1 --noise uniform --out runs/tricks
    python examples/faces_gan.py --resume runs/lfw32 --epochs 30       # continue that run to 30 epochs
    python examples/faces_gan.py --resume runs/lfw32 --epochs 40 --lr 1e-4   # 10 more, lower learning rates
    python -m gan.report runs/lfw32                                    # rebuild a run's report.html

Each run folder (`--out`) receives samples/epoch_XXX.png (fixed noise, one grid per epoch),
checkpoint.npz (every epoch, atomic), history.csv/.json, epochs.json, config.json, plots/*.png,
samples.gif and report.html (open it in a browser); a run on part of LFW (--max-images) or on
synthetic faces also keeps its training images, real_images.npy, for `python -m gan.evaluate`, whose
command for the run is printed at the end. `--resume` rebuilds the data and the networks from the
saved settings and continues exactly where the run stopped.
"""
import argparse
import os
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Optional

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")  # before NumPy loads OpenBLAS: docs/performance.md
import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "examples"):  # run as a script from anywhere; _cli sits beside this file
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from _cli import (CLI_ERRORS, GAN_RUN_GRIDS, LFW_HINT, UsageError, at_least, check_device,  # noqa: E402
                  check_new_run, fail, gan_run_files, interrupted, load_dataset, remove_old_run)
from gan.trainer import GANTrainer, NonFiniteLossError, TrainConfig, stream_rng  # noqa: E402
from nnbox.data import ColorJitter, Compose, DataLoader, RandomHorizontalFlip, with_augmented_copies  # noqa: E402

SUBSET_SEED_OFFSET = 1000  # the --max-images subset is drawn with default_rng([seed, 1000])
AUGMENT_SEED_OFFSET = 1001  # the --augment-copies copies with default_rng([seed, 1001])


@dataclass
class FacesGANConfig:
    """The example's settings: the data and the run; the training itself is `train` (a TrainConfig)."""

    dataset: str = "auto"             # "auto" (LFW, else synthetic, saying so), "lfw" (LFW or an error), "synthetic"
    data: Optional[str] = None        # a folder holding LFW (else an error: no other faces); None: cache or download
    download: bool = True             # may LFW be downloaded (about 240 MB, checksummed) when it is not found
    max_images: Optional[int] = None  # use a random subset of this many images (quick runs); None: all
    synthetic_count: int = 13233      # how many synthetic faces to draw (as many as LFW has), before max_images
    flip: bool = True                 # mirror each real face left-right with probability 0.5, per batch
    jitter: float = 0.0               # per-batch colour jitter: brightness, contrast, saturation factors in [1-a, 1+a]
    augment_copies: int = 0           # enlarge a small set by this many flipped and jittered copies (made once)
    batch_size: int = 64              # images per batch (the last, smaller batch is dropped)
    epochs: int = 20                  # train until this many epochs are done (a resumed run counts the earlier ones)
    out: str = "runs/faces_gan"       # the run folder: samples, checkpoint, history, plots, report.html
    overwrite: bool = False           # start afresh in an --out folder that already holds a run
    train: TrainConfig = field(default_factory=TrainConfig)  # networks, loss, optimisers, balancing, tricks

    def data_settings(self):
        """The settings saved with the checkpoint, to rebuild the same data on --resume."""
        return {k: v for k, v in asdict(self).items() if k not in ("train", "epochs", "out", "overwrite")}


# --------------------------------------------------------------------------- command line
def build_parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], argument_default=argparse.SUPPRESS,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Defaults: the recipe (faces arch, 32x32, Adam 2e-4 beta1 0.5, batch 64, "
                                       "non-saturating loss, skip balancing, one-sided label smoothing 0.1).")
    d = FacesGANConfig()
    t = TrainConfig()
    data = p.add_argument_group("data")
    data.add_argument("--dataset", choices=("auto", "lfw", "synthetic"), help=f"where the faces come from ({d.dataset})")
    data.add_argument("--data", help="folder holding LFW (default: the data cache, else a download)")
    data.add_argument("--no-download", dest="download", action="store_false", help="never download LFW")
    data.add_argument("--max-images", type=int, help="train on a random subset of this many images")
    data.add_argument("--synthetic-count", type=int, help=f"synthetic faces to draw ({d.synthetic_count})")
    data.add_argument("--no-flip", dest="flip", action="store_false", help="no random horizontal flips")
    data.add_argument("--jitter", type=float, help="per-batch colour jitter amount, e.g. 0.1 (0: off)")
    data.add_argument("--augment-copies", type=int,
                      help="enlarge a small set by K flipped and colour-jittered copies of every image (0)")
    model = p.add_argument_group("networks")
    model.add_argument("--arch", choices=("faces", "dcgan", "mlp"), help=f"architecture ({t.arch})")
    model.add_argument("--image-size", type=int, choices=(32, 64), help=f"image side in pixels ({t.image_size})")
    model.add_argument("--latent-dim", type=int, help=f"size of z ({t.latent_dim})")
    model.add_argument("--width", type=int, help="width of both networks (default: the architecture's)")
    model.add_argument("--g-width", type=int, help="width of G only")
    model.add_argument("--d-width", type=int, help="width of D only")
    model.add_argument("--d-dropout", type=float, help="dropout inside D (faces, mlp)")
    model.add_argument("--g-dropout", type=float, help="dropout inside G (faces)")
    model.add_argument("--spectral-norm", action="store_true", help="spectral normalisation in D")
    training = p.add_argument_group("training")
    training.add_argument("--loss", choices=("minimax", "non_saturating", "least_squares", "hinge", "wasserstein",
                                              "wgan_gp"),
                          help=f"GAN loss ({t.loss}); wgan_gp: the Wasserstein loss with the gradient penalty and, "
                               f"unless given otherwise, Gulrajani et al.'s recipe: --optimizer adam --lr 1e-4 "
                               f"--beta1 0 --beta2 0.9 --balance ratio --n-d 5 --label-smoothing 0, and for "
                               f"--arch dcgan a critic without BatchNorm")
    training.add_argument("--clip-value", type=float, help=f"WGAN weight clipping ({t.clip_value})")
    training.add_argument("--gp-weight", type=float, help=f"WGAN-GP: the gradient penalty's weight lambda ({t.gp_weight})")
    training.add_argument("--optimizer", choices=("adam", "rmsprop", "sgd"), help=f"({t.optimizer})")
    training.add_argument("--lr", type=float, help=f"learning rate of both networks ({t.lr_g})")
    training.add_argument("--lr-g", type=float, help="G's learning rate")
    training.add_argument("--lr-d", type=float, help="D's learning rate")
    training.add_argument("--beta1", type=float, help=f"Adam's beta1 ({t.beta1})")
    training.add_argument("--beta2", type=float, help=f"Adam's beta2 ({t.beta2})")
    training.add_argument("--epochs", type=int, help=f"epochs in total ({d.epochs})")
    training.add_argument("--batch-size", type=int, help=f"({d.batch_size})")
    training.add_argument("--steps-per-epoch", type=int, help="cut every epoch after this many batches")
    training.add_argument("--noise", dest="latent_kind", choices=("normal", "uniform"), help=f"z's law ({t.latent_kind})")
    balance = p.add_argument_group("balancing D and G")
    balance.add_argument("--balance", choices=("alternate", "ratio", "skip"), help=f"the rule ({t.balance})")
    balance.add_argument("--d-threshold", type=float, help=f"skip: D skips above this accuracy ({t.d_threshold})")
    balance.add_argument("--g-threshold", type=float, help=f"skip: G skips above this success rate ({t.g_threshold})")
    balance.add_argument("--max-consecutive-skips", type=int, help=f"skip: stall guard ({t.max_consecutive_skips})")
    balance.add_argument("--n-d", type=int, help="ratio: D steps per cycle (1)")
    balance.add_argument("--n-g", type=int, help="ratio: G steps per cycle (1)")
    tricks = p.add_argument_group("tricks")
    tricks.add_argument("--label-smoothing", type=float, help=f"one-sided: real targets 1 - s ({t.label_smoothing})")
    tricks.add_argument("--soft-labels", action="store_true", help="random soft targets (needs --label-smoothing 0)")
    tricks.add_argument("--flip-labels", type=float, help="fraction of D's labels swapped per batch (0)")
    tricks.add_argument("--instance-noise", type=float, help="std of the noise added to D's inputs (0)")
    tricks.add_argument("--instance-noise-decay", type=int, help="steps to anneal that noise to 0 (0: constant)")
    tricks.add_argument("--d-input-dropout", type=float, help="dropout on D's input images (0)")
    run = p.add_argument_group("run")
    run.add_argument("--seed", type=int, help=f"({t.seed})")
    run.add_argument("--device", choices=("cpu", "gpu"), help=f"({t.device})")
    run.add_argument("--out", help=f"run folder ({d.out})")
    run.add_argument("--overwrite", action="store_true", help="start afresh in an --out that holds a run")
    run.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR (same data and settings)")
    run.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    run.add_argument("--no-report", dest="report", action="store_false", help="no plots/report at the end")
    return p


# options allowed with --resume: where and how long to run, and the learning rates (lowered after a
# run diverged, say); everything else comes from the run's checkpoint
RESUME_OVERRIDES = ("epochs", "device", "progress", "report", "resume", "lr", "lr_g", "lr_d")
# what --loss wgan_gp sets when not given (Gulrajani et al. 2017, Algorithm 1)
WGAN_GP_RECIPE = {"optimizer": "adam", "lr": 1e-4, "beta1": 0.0, "beta2": 0.9, "balance": "ratio", "n_d": 5,
                  "label_smoothing": 0.0}
MODEL_OPTIONS = {"g_width": "g_width", "d_width": "d_width", "d_dropout": "d_dropout", "g_dropout": "g_dropout",
                 "spectral_norm": "d_spectral_norm", "d_input_dropout": "d_input_dropout"}


def config_from_args(given):
    """A FacesGANConfig from the options given on the command line (the rest: the defaults)."""
    at_least(1, epochs=given.get("epochs"), batch_size=given.get("batch_size"))
    given = dict(given)
    given.pop("resume", None)
    if given.get("loss") == "wgan_gp":
        for key, value in WGAN_GP_RECIPE.items():
            given.setdefault(key, value)
    cfg = FacesGANConfig()
    train = {}
    model_options = {}
    if "lr" in given:
        lr = given.pop("lr")
        train["lr_g"], train["lr_d"] = given.pop("lr_g", lr), given.pop("lr_d", lr)
    for key, option in MODEL_OPTIONS.items():
        if key in given:
            model_options[option] = given.pop(key)
    if given.get("loss") == "wgan_gp" and given.get("arch") == "dcgan":
        model_options["d_batch_norm"] = False     # the penalty is per sample: no BatchNorm in the critic
    example_fields = {f.name for f in fields(FacesGANConfig)} - {"train"}
    for key, value in given.items():
        if key in example_fields:
            setattr(cfg, key, value)
        else:
            train[key] = value
    if model_options:
        train["model_options"] = model_options
    if train.get("soft_labels") and "label_smoothing" not in train:
        train["label_smoothing"] = 0.0   # soft labels replace the default smoothing
    cfg.train = TrainConfig(**{**asdict(TrainConfig()), **train})
    return cfg


# --------------------------------------------------------------------------- data
def load_faces(cfg):
    """(uint8 NHWC faces for cfg (a random subset of cfg.max_images), a line saying what they are,
    LFW's folder or None for synthetic faces). The originals come first, then any augmented copies."""
    from nnbox.datasets import load_lfw
    from nnbox.synthetic_faces import synthetic_faces
    if cfg.max_images is not None and cfg.max_images < 1:
        raise UsageError(f"--max-images must be >= 1, got {cfg.max_images}")
    if cfg.synthetic_count < 1:
        raise UsageError(f"--synthetic-count must be >= 1, got {cfg.synthetic_count}")
    size = cfg.train.image_size
    images, source, lfw_root = None, None, None
    if cfg.dataset in ("auto", "lfw"):
        try:
            folder = load_dataset(load_lfw, cfg.data, image_size=size, download=cfg.download, hint=LFW_HINT,
                                  progress=cfg.train.progress)
            images, source, lfw_root = folder.images, f"LFW from {folder.root}", folder.root
        except (OSError, ValueError) as error:     # not found, no network, bad checksum
            if cfg.dataset == "lfw" or cfg.data is not None:    # asked for LFW, or named a folder without it
                raise
            print(f"LFW is not available ({error}); training on synthetic cartoon faces instead.", flush=True)
    if images is None:
        count = cfg.synthetic_count if cfg.max_images is None else min(cfg.synthetic_count, cfg.max_images)
        images = synthetic_faces(count, size, rng=cfg.train.seed)
        source = "synthetic cartoon faces (nnbox.synthetic_faces)"
    if cfg.max_images is not None and cfg.max_images < len(images):
        pick = np.random.default_rng([cfg.train.seed, SUBSET_SEED_OFFSET]).permutation(len(images))[:cfg.max_images]
        images = images[np.sort(pick)]
    if cfg.augment_copies:
        if cfg.augment_copies < 0:
            raise UsageError(f"--augment-copies must be >= 0, got {cfg.augment_copies}")
        images, _ = with_augmented_copies(images, np.zeros(len(images), np.int64), cfg.augment_copies,
                                   np.random.default_rng([cfg.train.seed, AUGMENT_SEED_OFFSET]))
        source += f", enlarged {cfg.augment_copies + 1}x by flipped and jittered copies"
    return images, f"{len(images)} images of {size}x{size}: {source}", lfw_root


def evaluation_data(cfg, images, lfw_root, run_dir, resuming):
    """What `python -m gan.evaluate RUN --real ...` should compare this run's faces with: LFW's folder
    when all of it trained, else the training images themselves (a subset, or synthetic faces, before
    any augmented copies), written as RUN_DIR/real_images.npy by a new run (--overwrite has removed
    the old run's) and kept by --resume. Returns that --real argument."""
    from gan.evaluate import REAL_IMAGES_NAME, save_real_images
    if lfw_root is not None and cfg.max_images is None:
        return str(lfw_root)
    path = Path(run_dir) / REAL_IMAGES_NAME
    if not (resuming and path.exists()):    # on --resume the same images: the data settings cannot change
        save_real_images(images[:len(images) // (cfg.augment_copies + 1)], path)
    return str(path)


def make_loader(cfg, images):
    batch_size = cfg.batch_size
    if len(images) < batch_size:
        print(f"only {len(images)} images: the batch size is lowered from {batch_size} to {len(images)}", flush=True)
        batch_size = len(images)
    return DataLoader(images, batch_size=batch_size, shuffle=True, drop_last=True,
                      rng=stream_rng(cfg.train.seed, "data"),
                      transform=batch_transform(cfg))


def batch_transform(cfg):
    """The per-batch augmentation of the real faces: flips and colour jitter, as chosen (None: none)."""
    if cfg.jitter < 0:
        raise UsageError(f"--jitter must be >= 0, got {cfg.jitter}")
    steps = ([RandomHorizontalFlip(0.5)] if cfg.flip else []) + \
            ([ColorJitter(cfg.jitter, cfg.jitter, cfg.jitter)] if cfg.jitter else [])
    return Compose(steps) if steps else None


# --------------------------------------------------------------------------- main
def main(argv=None):
    given = vars(build_parser().parse_args(argv))
    trainer = cfg = None
    try:
        if "resume" in given:
            trainer, cfg = _resume(given)
            if trainer.epoch >= cfg.epochs:      # said in one line by _resume: no data to load, nothing to write
                return 0
        else:
            cfg = config_from_args(given)
            check_device(cfg.train.device)
            check_new_run(cfg.out, cfg.overwrite)
        images, description, lfw_root = load_faces(cfg)
        print(f"data: {description}", flush=True)
        loader = make_loader(cfg, images)
        if trainer is None:
            trainer = GANTrainer.from_config(cfg.train, cfg.out, overwrite=cfg.overwrite,
                                             extra_config={"example": cfg.data_settings(), "epochs": cfg.epochs})
            if cfg.overwrite:   # the data read and the settings accepted: the old run's files go, a user's stay
                remove_old_run(cfg.out, gan_run_files(), GAN_RUN_GRIDS)
        real = evaluation_data(cfg, images, lfw_root, trainer.run_dir, resuming="resume" in given)
        print(f"run folder: {trainer.run_dir}; {cfg.train.arch} GAN, {cfg.train.loss} loss, "
              f"{cfg.train.balance} balancing, {len(loader)} batches of {loader.batch_size} per epoch, "
              f"device {cfg.train.device}", flush=True)
        trainer.fit(loader, cfg.epochs)
    except NonFiniteLossError as error:
        return fail("faces_gan", error,
                    hint=f"here: python examples/faces_gan.py --resume {cfg.out} --epochs N --lr ...")
    except CLI_ERRORS as error:   # usage, settings, data, a corrupt or foreign checkpoint
        return fail("faces_gan", error)
    except KeyboardInterrupt:
        return interrupted("faces_gan", trainer and trainer.run_dir, cfg.epochs if cfg is not None else None)
    if trainer.config.report:
        print(f"report: {trainer.run_dir / 'report.html'}")
    print(f"measures (FID, memorisation, nearest neighbours): python -m gan.evaluate {trainer.run_dir} --real {real}")
    return 0


def _resume(given):
    changed = sorted(k for k in given if k not in RESUME_OVERRIDES)
    if changed:
        raise UsageError(f"--resume continues a run with its saved settings; only --epochs, --device, "
                         f"--no-progress, --no-report and the learning rates (--lr, --lr-g, --lr-d) may be "
                         f"given with it, not --{changed[0].replace('_', '-')}")
    at_least(1, epochs=given.get("epochs"))
    run_dir = Path(given["resume"])
    train, extra = GANTrainer.read_checkpoint_configs(run_dir)
    cfg = FacesGANConfig(**{k: v for k, v in extra.get("example", {}).items()}, out=str(run_dir), train=train)
    cfg.epochs = given.get("epochs", extra.get("epochs", cfg.epochs))
    for key in ("device", "progress", "report"):
        if key in given:
            setattr(cfg.train, key, given[key])
    check_device(cfg.train.device)
    trainer = GANTrainer.resume(run_dir, device=cfg.train.device)
    trainer.config.progress, trainer.config.report = cfg.train.progress, cfg.train.report
    if "epochs" in given:   # the new target, so that a later --resume without --epochs continues to it
        trainer.extra_config["epochs"] = cfg.epochs
    lr_g, lr_d = given.get("lr_g", given.get("lr")), given.get("lr_d", given.get("lr"))
    if (lr_g is not None or lr_d is not None) and trainer.epoch >= cfg.epochs:
        raise UsageError(f"the run in {run_dir} has already done {trainer.epoch} of {cfg.epochs} epochs: new "
                         f"learning rates need epochs to train; give --epochs N (N > {trainer.epoch}) too")
    if lr_g is not None or lr_d is not None:
        before = (trainer.config.lr_g, trainer.config.lr_d)
        trainer.set_learning_rates(lr_g, lr_d)
        print(f"learning rates from now on: G {before[0]:g} -> {trainer.config.lr_g:g}, "
              f"D {before[1]:g} -> {trainer.config.lr_d:g}", flush=True)
    if trainer.epoch >= cfg.epochs:
        print(f"nothing trained: the run in {run_dir} has already done {trainer.epoch} of {cfg.epochs} epochs; "
              f"give --epochs N (N > {trainer.epoch}) to train further", flush=True)
    return trainer, cfg


if __name__ == "__main__":
    sys.exit(main())
