"""Train an AEGAN (autoencoding GAN: generator, encoder, image and latent discriminators) on faces or any image folder.

LFW by default: without `--data` LFW is looked up in the data cache (`$NNBOX_CACHE`, default
~/.cache/nnbox) or downloaded; `--data` may name LFW (a folder called lfw-deepfunneled, lfw_funneled,
lfw-funneled or lfw, or one holding it: LFW's 128-px central face crop is used). Any other folder of
JPEG/PNG images (searched recursively) works too: each image's largest central square is resized to
--image-size. `--dataset lfw|folder` overrides that guess. The resized images are cached as .npy.

    python examples/aegan.py --data ../shared/data/lfw-deepfunneled --image-size 32 --epochs 5 --out runs/aegan_lfw32
    python examples/aegan.py --data ../shared/data/lfw-deepfunneled --max-images 2048 --epochs 1 --out /tmp/aegan_smoke
    python examples/aegan.py --data ~/Pictures/cats --image-size 64 --epochs 20 --out runs/aegan_cats
    python examples/aegan.py --data ../shared/data/lfw-deepfunneled --device gpu --image-size 64 --out runs/aegan64
    python examples/aegan.py --resume runs/aegan_lfw32 --epochs 10          # continue that run to 10 epochs

The run folder (--out) receives samples/epoch_XXX.png (G(z) for fixed z ~ N(0, I)),
reconstructions/epoch_XXX.png (rows of real images x above their G(E(x))), plots/losses.png,
plots/interpolations_encoded.png (G along the path between the encodings of two real faces),
plots/interpolations_prior.png (between two prior samples), history.csv/.json, epochs.json,
config.json and checkpoint.npz (every epoch, atomic; --resume continues exactly).
"""
import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")  # before NumPy loads OpenBLAS: docs/performance.md
import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "examples"):  # run as a script from anywhere; _cli sits beside this file
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from _cli import (CLI_ERRORS, LFW_HINT, UsageError, at_least, check_device, check_new_run, fail,  # noqa: E402
                  interrupted, load_dataset, positive, probability)
from gan.aegan import AEGANConfig, AEGANTrainer, LossWeights  # noqa: E402
from gan.trainer import stream_rng  # noqa: E402
from nnbox.data import DataLoader, ImageFolder, RandomHorizontalFlip, Resize  # noqa: E402
from nnbox.datasets import LFW_FOLDER_NAMES, find_lfw, load_lfw  # noqa: E402

SUBSET_STREAM = 1000  # the --max-images subset is drawn with default_rng([seed, 1000])
DATA_KEYS = ("dataset", "data", "download", "max_images", "flip", "batch_size")  # saved with the run, reused on --resume
# options allowed with --resume: how long and where to run, and the learning rates (lowered after
# a run diverged, say); everything else comes from the run's checkpoint
RESUME_OVERRIDES = ("epochs", "device", "progress", "resume", "lr", "lr_d")


class CenterSquare:
    """Cut the largest central square out of a PIL image or an HWC array (deterministic: cached once)."""

    deterministic = True

    def __call__(self, image):
        height, width = (image.height, image.width) if hasattr(image, "height") else image.shape[:2]
        side = min(height, width)
        top, left = (height - side) // 2, (width - side) // 2
        if hasattr(image, "crop"):
            return image.crop((left, top, left + side, top + side))
        return image[top:top + side, left:left + side]

    def __repr__(self):
        return "CenterSquare()"


def build_parser():
    c, w = AEGANConfig(), LossWeights()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], argument_default=argparse.SUPPRESS,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    data = p.add_argument_group("data")
    data.add_argument("--data", help="an image folder, or LFW (default: LFW from the data cache, else a download)")
    data.add_argument("--dataset", choices=("auto", "lfw", "folder"),
                      help="read --data as LFW or as any image folder (auto: LFW when it is named like LFW)")
    data.add_argument("--no-download", dest="download", action="store_false", help="never download LFW")
    data.add_argument("--max-images", type=int, help="train on a random subset of this many images")
    data.add_argument("--no-flip", dest="flip", action="store_false", help="no random horizontal flips")
    data.add_argument("--batch-size", type=int, help="images per batch (64)")
    nets = p.add_argument_group("networks")
    nets.add_argument("--arch", choices=("dcgan", "faces", "mlp"), help=f"G, D_x and E's architecture ({c.arch})")
    nets.add_argument("--image-size", type=int, choices=(32, 64), help=f"image side in pixels ({c.image_size})")
    nets.add_argument("--latent-dim", type=int, help=f"size of z ({c.latent_dim})")
    nets.add_argument("--width", type=int, help="width of G, D_x and E (default: the architecture's, dcgan 64)")
    nets.add_argument("--latent-hidden", type=int, help=f"D_z's hidden size ({c.latent_hidden})")
    train = p.add_argument_group("training")
    train.add_argument("--epochs", type=int, help="epochs in total (5)")
    train.add_argument("--steps-per-epoch", type=int, help="cut every epoch after this many batches")
    train.add_argument("--loss", choices=("non_saturating", "minimax", "least_squares", "hinge"), help=f"({c.loss})")
    train.add_argument("--lr", type=float, help=f"G's and E's Adam learning rate ({c.lr})")
    train.add_argument("--lr-d", type=float, help=f"D_x's and D_z's learning rate ({c.lr_d})")
    train.add_argument("--beta1", type=float, help=f"Adam's beta1 ({c.beta1})")
    for name, value in vars(w).items():
        train.add_argument(f"--w-{name.replace('_', '-')}", dest=f"w_{name}", type=float,
                           help=f"weight of the {name} term of L_GE ({value})")
    run = p.add_argument_group("run")
    run.add_argument("--seed", type=int, help=f"({c.seed})")
    run.add_argument("--device", choices=("cpu", "gpu"), help=f"({c.device})")
    run.add_argument("--out", help="run folder (runs/aegan)")
    run.add_argument("--overwrite", action="store_true", help="start afresh in an --out that holds a run")
    run.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR (same data and settings)")
    run.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    return p


def settings_from_args(given):
    """(AEGANConfig, data settings dict, epochs, out, overwrite) from the options given."""
    given = dict(given)
    data = {"dataset": "auto", "data": None, "download": True, "max_images": None, "flip": True, "batch_size": 64}
    data.update({k: given.pop(k) for k in DATA_KEYS if k in given})
    epochs, out, overwrite = given.pop("epochs", 5), given.pop("out", "runs/aegan"), given.pop("overwrite", False)
    weights = {k[2:]: given.pop(k) for k in list(given) if k.startswith("w_")}
    config = AEGANConfig(**given, weights={**vars(LossWeights()), **weights})
    return config, data, epochs, out, overwrite


def is_lfw(folder):
    """True when `folder` is, or holds, a folder named like LFW's (LFW_FOLDER_NAMES) with person folders."""
    found = find_lfw(folder)
    return found is not None and found.name in LFW_FOLDER_NAMES


def load_images(data, image_size, seed, progress=True):
    """uint8 NHWC images and a line saying what they are: LFW (load_lfw) or every image under the
    folder, its central square resized (nnbox.data.ImageFolder); see the module docstring. `progress`:
    bars while downloading or building the image cache."""
    if data["max_images"] is not None and data["max_images"] < 1:
        raise UsageError(f"--max-images must be >= 1, got {data['max_images']}")
    folder, kind = data["data"], data["dataset"]
    if kind == "folder" and folder is None:
        raise UsageError("--dataset folder needs --data DIR")
    if kind == "lfw" or (kind == "auto" and (folder is None or is_lfw(folder))):
        source = load_dataset(load_lfw, folder, image_size=image_size, download=data["download"], hint=LFW_HINT,
                              progress=progress)
        what = f"LFW from {source.root}"
    else:
        source = ImageFolder(folder, [CenterSquare(), Resize(image_size)], progress=progress)
        what = f"the images under {source.root}"
    images = source.images
    if data["max_images"] is not None and data["max_images"] < len(images):
        pick = np.random.default_rng([seed, SUBSET_STREAM]).permutation(len(images))[:data["max_images"]]
        images = images[np.sort(pick)]
    return images, f"{len(images)} images of {image_size}x{image_size}: {what}"


def make_loader(images, data, seed):
    batch_size = min(data["batch_size"], len(images))
    if batch_size < data["batch_size"]:
        print(f"only {len(images)} images: the batch size is lowered to {batch_size}", flush=True)
    return DataLoader(images, batch_size=batch_size, shuffle=True, drop_last=True, rng=stream_rng(seed, "data"),
                      transform=RandomHorizontalFlip(0.5) if data["flip"] else None)


def check_options(given):
    """One-line usage errors for numbers that cannot work, before anything is built or read."""
    at_least(1, **{key: given.get(key) for key in ("batch_size", "epochs", "steps_per_epoch", "latent_dim", "width",
                                                    "latent_hidden")})
    positive(lr=given.get("lr"), lr_d=given.get("lr_d"))
    probability(beta1=given.get("beta1"))
    check_device(given.get("device"))   # --device gpu without CuPy: nnbox.backend's message, before any work


def main(argv=None):
    given = vars(build_parser().parse_args(argv))
    trainer = epochs = None
    try:
        check_options(given)
        if "resume" in given:
            trainer, data, epochs = _resume(given)
            if trainer.epoch >= epochs:          # said in one line by _resume: no data to load, nothing to write
                return 0
            config = trainer.config
        else:
            config, data, epochs, out, overwrite = settings_from_args(given)
            check_new_run(out, overwrite)
        images, description = load_images(data, config.image_size, config.seed, progress=config.progress)
        print(f"data: {description}", flush=True)
        loader = make_loader(images, data, config.seed)
        if trainer is None:
            trainer = AEGANTrainer.from_config(config, out, overwrite=overwrite,
                                               extra_config={"example": data, "epochs": epochs})
        print(f"run folder: {trainer.run_dir}; AEGAN ({config.arch}, latent {config.latent_dim}), "
              f"{len(loader)} batches of {loader.batch_size} per epoch, device {config.device}", flush=True)
        trainer.fit(loader, epochs)
        trainer.write_figures()
    except CLI_ERRORS as error:
        return fail("aegan", error)
    except KeyboardInterrupt:
        return interrupted("aegan", trainer and trainer.run_dir, epochs)
    print(f"figures: {trainer.run_dir / 'samples'}, {trainer.run_dir / 'reconstructions'}, {trainer.run_dir / 'plots'}")
    return 0


def _resume(given):
    changed = sorted(k for k in given if k not in RESUME_OVERRIDES)
    if changed:
        raise UsageError(f"--resume continues a run with its saved settings; only --epochs, --device, "
                         f"--no-progress, --lr and --lr-d may be given with it, not --{changed[0].replace('_', '-')}")
    run_dir = Path(given["resume"])
    saved, extra = AEGANTrainer.read_checkpoint_configs(run_dir)
    check_device(given.get("device", saved.device))   # a GPU run, resumed without CuPy (or give --device cpu)
    trainer = AEGANTrainer.resume(run_dir, device=given.get("device"))
    if "progress" in given:
        trainer.config.progress = given["progress"]
    epochs = given.get("epochs", extra.get("epochs", trainer.epoch))
    if "epochs" in given:    # the new target, so that a later --resume without --epochs continues to it
        trainer.extra_config["epochs"] = epochs
    if ("lr" in given or "lr_d" in given) and trainer.epoch >= epochs:
        raise UsageError(f"the run in {run_dir} has already done {trainer.epoch} of {epochs} epochs: new "
                         f"learning rates need epochs to train; give --epochs N (N > {trainer.epoch}) too")
    if "lr" in given or "lr_d" in given:
        trainer.set_learning_rates(given.get("lr"), given.get("lr_d"))
        print(f"learning rates from now on: G and E {trainer.config.lr:g}, D_x and D_z {trainer.config.lr_d:g}",
              flush=True)
    if trainer.epoch >= epochs:
        print(f"nothing trained: the run in {run_dir} has already done {trainer.epoch} of {epochs} epochs; "
              f"give --epochs N (N > {trainer.epoch}) to train further", flush=True)
    return trainer, extra["example"], epochs


if __name__ == "__main__":
    sys.exit(main())
