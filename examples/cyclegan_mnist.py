"""Recolour MNIST digits between two colour domains with a CycleGAN (gan/cyclegan.py), unpaired.

Domain A holds digits tinted with a random hue from one band ("warm": red to orange by default),
domain B digits tinted from another ("cool": cyan to blue). The training digits are split in two
disjoint halves, one coloured as A and one as B, so no digit is ever seen in both colours: the
translation G_AB (A -> B) and its inverse G_BA are learned from the adversarial and the
cycle-consistency losses alone.

    python examples/cyclegan_mnist.py --data ../shared/data/mnist --out runs/cyclegan          # defaults
    python examples/cyclegan_mnist.py --data ../shared/data/mnist --image-size 16 --width 8 --batch-size 16 \\
        --max-images 3200 --test-images 500 --epochs 2 --lambda-identity 0.5 --lr 1e-3 \\
        --out runs/cyclegan16                        # docs/results/cyclegan.md (then --resume to --epochs 3)
    python examples/cyclegan_mnist.py --data ../shared/data/mnist --domain-a red --domain-b green \\
        --lambda-identity 0.5 --out runs/red_green
    python examples/cyclegan_mnist.py --device gpu --image-size 28 --epochs 20 --out runs/cyclegan_gpu
    python examples/cyclegan_mnist.py --resume runs/cyclegan --epochs 10   # continue that run to 10 epochs

Without --data it looks in the data cache ($NNBOX_CACHE, default ~/.cache/nnbox) and downloads MNIST
(SHA-256 checked) when it is missing.

The run folder (--out) receives checkpoint.npz (after every epoch), history.csv/.json (every step),
epochs.json (per epoch: seconds and the test-set measures), samples/epoch_XXX.png (test digits
translated both ways after each epoch), translations_A_to_B.png and translations_B_to_A.png (rows:
the input, its translation, the translation back), and losses.png. A folder that holds a run is refused
unless --overwrite is given, which deletes these files of the old run (and no others) before training.

Test-set measures (on --test-images digits of MNIST's test split, coloured as A and as B):
    cycle_l1_a = mean |G_BA(G_AB(a)) - a| (and cycle_l1_b), pixels in [-1, 1];
    hue_hit_ab = fraction of G_AB(a) whose mean stroke colour has B's hue, saturation >= 0.3 (hue_hit_ba alike);
    stroke_l1_ab = mean |v(G_AB(a)) - v(a)| with v = max over RGB in [0, 1], the digit's shape kept?
"""
import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")  # before NumPy loads OpenBLAS: docs/performance.md
import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "examples"):  # run as a script from anywhere; _cli sits beside this file
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from _cli import (CLI_ERRORS, EPOCH_FIGURE, MNIST_HINT, UsageError, at_least, check_device, check_new_run,  # noqa: E402
                  fail, interrupted, load_dataset, positive, remove_old_run)
from gan.cyclegan import CycleGANConfig, CycleGANTrainer  # noqa: E402
from gan.history import atomic_write_text  # noqa: E402
from gan.trainer import RNG_STREAMS, NonFiniteLossError, non_finite_weights  # noqa: E402
from nnbox.data import DataLoader  # noqa: E402
from nnbox.upload import PinnedUploader  # noqa: E402

# Hue bands [low, high) of the colour domains, hue in [0, 1) (0 red, 1/3 green, 2/3 blue); low may be
# negative, the band then wraps around red.
HUE_BANDS = {"warm": (0.0, 0.15), "cool": (0.5, 0.7), "red": (-0.04, 0.04), "yellow": (0.13, 0.19),
             "green": (0.28, 0.4), "cyan": (0.47, 0.53), "blue": (0.6, 0.7), "magenta": (0.78, 0.9)}
STROKE = 0.5           # a pixel whose value (max of R, G, B in [0, 1]) exceeds this belongs to the digit
MIN_SATURATION = 0.3   # a stroke less saturated than this counts as grey (in no colour band)
FIGURE_DIGITS = 10     # test digits shown per figure
CHECKPOINT_NAME = "checkpoint.npz"
# what a run writes into its folder (the module docstring's list): --overwrite removes these, and only these
RUN_FILES = (CHECKPOINT_NAME, "history.csv", "history.json", "epochs.json", "losses.png", "translations_A_to_B.png",
             "translations_B_to_A.png")
EPOCH_GRIDS = {"samples": EPOCH_FIGURE}
RESUME_OVERRIDES = ("resume", "epochs", "device", "progress", "download", "lr")   # lr: lowered after a run diverged


@dataclass
class ExampleSettings:
    """The data and the run; the networks and the optimisation are a CycleGANConfig."""

    data: Optional[str] = None     # folder with MNIST's IDX files; None: the cache, else a download
    max_images: int = 12000        # training digits used (split in two halves: A and B); 0: all 60000
    test_images: int = 1000        # test digits for the measures (the first of MNIST's test split)
    image_size: int = 28           # 28 (MNIST's), 32 (padded) or 16 (padded to 32, then 2x2 means)
    domain_a: str = "warm"         # hue band of domain A (HUE_BANDS)
    domain_b: str = "cool"         # hue band of domain B
    batch_size: int = 32           # images per batch, in each domain
    epochs: int = 5                # train until this many epochs are done in total
    out: str = "runs/cyclegan_mnist"


# --------------------------------------------------------------------------- data
def resize_digits(images, size):
    """(N, 1, 28, 28) digits in [-1, 1] -> (N, 1, size, size): 28 as is, 32 padded with the background
    (-1), 16 padded to 32 and averaged over 2x2 blocks."""
    if size == 28:
        return images
    if size not in (16, 32):
        raise UsageError(f"--image-size must be 16, 28 or 32, got {size}")
    padded = np.pad(images, ((0, 0), (0, 0), (2, 2), (2, 2)), constant_values=-1.0)
    if size == 32:
        return padded
    n = len(padded)
    return padded.reshape(n, 1, 16, 2, 16, 2).mean(axis=(3, 5))


def tint(images, band, rng):
    """Colour greyscale digits (N, 1, H, W) in [-1, 1] with a random hue from `band` each: (N, 3, H, W).

    The stroke of value v in [0, 1] becomes v * rgb, rgb from hue ~ U(band), saturation ~ U(0.6, 1),
    value 1 (as nnbox.datasets.colorize_mnist's random mode, on a hue band); the background stays black.
    """
    from matplotlib.colors import hsv_to_rgb
    low, high = HUE_BANDS[band]
    n = len(images)
    hsv = np.stack([rng.uniform(low, high, n) % 1.0, rng.uniform(0.6, 1.0, n), np.ones(n)], axis=1)
    rgb = hsv_to_rgb(hsv).astype(np.float32)
    return ((images + 1) * rgb[:, :, None, None] - 1).astype(np.float32)


def load_domains(settings, seed, download=True):
    """(train A, train B, test A, test B): unpaired halves of the training digits, and the same test digits
    in both colours (A's and B's). MNIST is downloaded when it is not found and `download`."""
    from nnbox.datasets import load_mnist
    for band in (settings.domain_a, settings.domain_b):
        if band not in HUE_BANDS:
            raise UsageError(f"unknown colour domain {band!r}: use one of {sorted(HUE_BANDS)}")
    train, _ = load_dataset(load_mnist, settings.data, "train", download=download, hint=MNIST_HINT)
    test, _ = load_dataset(load_mnist, settings.data, "test", download=download, hint=MNIST_HINT)
    order = np.random.default_rng([seed, 1000]).permutation(len(train))
    if settings.max_images:
        if settings.max_images < 2 * settings.batch_size:
            raise UsageError(f"--max-images must be at least twice the batch size ({2 * settings.batch_size}), "
                             f"got {settings.max_images}")
        order = order[:settings.max_images]
    half = len(order) // 2
    train = resize_digits(train, settings.image_size)
    test = resize_digits(test[:settings.test_images], settings.image_size)
    colours = np.random.default_rng([seed, 1001])
    return (tint(train[order[:half]], settings.domain_a, colours), tint(train[order[half:2 * half]],
                                                                         settings.domain_b, colours),
            tint(test, settings.domain_a, colours), tint(test, settings.domain_b, colours))


# --------------------------------------------------------------------------- measures and figures
def stroke_colour(images):
    """(hue, saturation) in [0, 1] of each image's mean stroke colour (pixels whose value exceeds STROKE);
    saturation 0 for an image without stroke."""
    from matplotlib.colors import rgb_to_hsv
    unit = (np.asarray(images, dtype=np.float64) + 1) / 2
    stroke = (unit.max(axis=1, keepdims=True) > STROKE)
    count = stroke.sum(axis=(1, 2, 3))
    mean = (unit * stroke).sum(axis=(2, 3)) / np.maximum(count, 1)[:, None]
    hsv = rgb_to_hsv(np.clip(mean, 0, 1))
    return hsv[:, 0], np.where(count > 0, hsv[:, 1], 0.0)


def in_band(images, band):
    """Which images have a stroke coloured from `band`: hue in the band and saturation >= MIN_SATURATION
    (the domains' saturations are >= 0.6; a grey stroke has no meaningful hue)."""
    hue, saturation = stroke_colour(images)
    low, high = HUE_BANDS[band]
    return ((hue - low) % 1.0 < high - low) & (saturation >= MIN_SATURATION)


def measure_translations(trainer, test_a, test_b, settings):
    """The module docstring's measures on the test digits, and the translations they came from."""
    fake_b, fake_a = trainer.translate(test_a, "AB"), trainer.translate(test_b, "BA")
    rec_a, rec_b = trainer.translate(fake_b, "BA"), trainer.translate(fake_a, "AB")

    def value(x):
        return (x + 1).max(axis=1) / 2

    measures = {
        "cycle_l1_a": float(np.abs(rec_a - test_a).mean()), "cycle_l1_b": float(np.abs(rec_b - test_b).mean()),
        "hue_hit_ab": float(np.mean(in_band(fake_b, settings.domain_b))),
        "hue_hit_ba": float(np.mean(in_band(fake_a, settings.domain_a))),
        "stroke_l1_ab": float(np.abs(value(fake_b) - value(test_a)).mean()),
        "stroke_l1_ba": float(np.abs(value(fake_a) - value(test_b)).mean())}
    return measures, {"AB": (test_a, fake_b, rec_a), "BA": (test_b, fake_a, rec_b)}


def translation_rows(triple, n=FIGURE_DIGITS):
    """Rows input, translation, translation back, of the first n digits: (3n, C, H, W) for make_grid."""
    return np.concatenate([x[:n] for x in triple])


def save_figures(out, translations, epoch, scale):
    from gan.visualize import save_image_grid
    both = np.concatenate([translation_rows(translations["AB"]), translation_rows(translations["BA"])])
    save_image_grid(both, out / "samples" / f"epoch_{epoch:03d}.png", nrow=FIGURE_DIGITS, scale=scale)
    save_image_grid(translation_rows(translations["AB"]), out / "translations_A_to_B.png", nrow=FIGURE_DIGITS,
                    scale=scale)
    save_image_grid(translation_rows(translations["BA"]), out / "translations_B_to_A.png", nrow=FIGURE_DIGITS,
                    scale=scale)


def plot_losses(history, path):
    """Three panels against the step: adversarial terms, cycle (and identity) terms, discriminator losses."""
    from gan.visualize import moving_average, new_figure, save_figure
    steps = history.column("step")
    panels = (("generators' adversarial terms (MSE(D(fake), 1))", ("adv_ab", "adv_ba")),
              ("cycle consistency |G(G(x)) - x|_1 (and identity)", ("cycle_a", "cycle_b", "identity_a", "identity_b")),
              ("discriminators (1/2 MSE real + 1/2 MSE fake)", ("d_a_loss", "d_b_loss")))
    fig, axes = new_figure(3, 1, figsize=(8, 8), sharex=True)
    window = max(1, len(steps) // 50)
    for ax, (title, names) in zip(axes, panels):
        for name in names:
            if name not in history.fields:
                continue
            values = history.column(name)
            line, = ax.plot(steps, moving_average(values, window), linewidth=1.4, label=f"{name} (mean of {window})",
                            linestyle="--" if name.startswith("identity") else "-")
            ax.plot(steps, values, color=line.get_color(), alpha=0.2, linewidth=0.6)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper right")
    axes[-1].set_xlabel("step")
    fig.tight_layout()
    return save_figure(fig, path)


# --------------------------------------------------------------------------- command line
def build_parser():
    d, c = ExampleSettings(), CycleGANConfig()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], argument_default=argparse.SUPPRESS,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="folder with MNIST's four IDX files (default: the cache, else a download)")
    p.add_argument("--no-download", dest="download", action="store_false", help="never download MNIST")
    p.add_argument("--max-images", type=int, help=f"training digits used, split into A and B; 0: all ({d.max_images})")
    p.add_argument("--test-images", type=int, help=f"test digits for the measures ({d.test_images})")
    p.add_argument("--image-size", type=int, choices=(16, 28, 32), help=f"({d.image_size})")
    p.add_argument("--domain-a", choices=sorted(HUE_BANDS), help=f"hue band of A ({d.domain_a})")
    p.add_argument("--domain-b", choices=sorted(HUE_BANDS), help=f"hue band of B ({d.domain_b})")
    p.add_argument("--epochs", type=int, help=f"epochs in total ({d.epochs})")
    p.add_argument("--batch-size", type=int, help=f"({d.batch_size})")
    p.add_argument("--width", type=int, help=f"width of all four networks ({c.g_width})")
    p.add_argument("--n-residual", type=int, help=f"residual blocks per generator ({c.n_residual})")
    p.add_argument("--g-norm", choices=("none", "batch"), help=f"({c.g_norm})")
    p.add_argument("--d-norm", choices=("none", "batch"), help=f"({c.d_norm})")
    p.add_argument("--lambda-cycle", type=float, help=f"({c.lambda_cycle})")
    p.add_argument("--lambda-identity", type=float, help=f"relative to lambda-cycle ({c.lambda_identity})")
    p.add_argument("--lr", type=float, help=f"Adam's learning rate, G and D ({c.lr}; beta1 {c.beta1})")
    p.add_argument("--seed", type=int, help=f"({c.seed})")
    p.add_argument("--device", choices=("cpu", "gpu"), help=f"({c.device})")
    p.add_argument("--out", help=f"run folder ({d.out})")
    p.add_argument("--overwrite", action="store_true", help="start afresh in an --out that holds a run")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR with its saved settings")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    return p


def settings_from_args(given):
    """(ExampleSettings, CycleGANConfig) from the options given (the rest: the defaults)."""
    given = dict(given)
    for key in ("resume", "progress", "overwrite", "download"):
        given.pop(key, None)
    if "width" in given:
        given["g_width"] = given["d_width"] = given.pop("width")
    example_keys = set(asdict(ExampleSettings()))
    settings = ExampleSettings(**{k: v for k, v in given.items() if k in example_keys})
    config = CycleGANConfig(**{k: v for k, v in given.items() if k not in example_keys})
    return settings, config


def check_options(given):
    """One-line usage errors for numbers that cannot work, before anything is built or read."""
    at_least(1, epochs=given.get("epochs"), batch_size=given.get("batch_size"), test_images=given.get("test_images"),
             width=given.get("width"))
    at_least(0, max_images=given.get("max_images"), n_residual=given.get("n_residual"),
             lambda_cycle=given.get("lambda_cycle"), lambda_identity=given.get("lambda_identity"))
    positive(lr=given.get("lr"))
    check_device(given.get("device"))   # --device gpu without CuPy: nnbox.backend's message, before any work


def _start(given):
    """(trainer, settings, loader states or None, out folder) for a new run or a resumed one."""
    if "resume" not in given:
        settings, config = settings_from_args(given)
        out = Path(settings.out)
        check_new_run(out, given.get("overwrite"), CHECKPOINT_NAME)
        return CycleGANTrainer(config), settings, None, out
    changed = sorted(k for k in given if k not in RESUME_OVERRIDES)
    if changed:
        raise UsageError(f"--resume continues a run with its saved settings; only --epochs, --device, --no-download, "
                         f"--no-progress and --lr may be given with it, not --{changed[0].replace('_', '-')}")
    out = Path(given["resume"])
    if not (out / CHECKPOINT_NAME).is_file():
        raise UsageError(f"cannot resume: {out / CHECKPOINT_NAME} does not exist")
    try:
        trainer, state = CycleGANTrainer.load(out / CHECKPOINT_NAME, device=given.get("device"))
    except RuntimeError as error:   # a GPU run, resumed without CuPy: nnbox.backend.require_cupy
        raise UsageError(f"{error}; or give --device cpu to continue the run on the CPU") from error
    settings = ExampleSettings(**state["example"])
    settings.epochs, settings.out = given.get("epochs", settings.epochs), str(out)
    if "lr" in given:
        if trainer.epoch >= settings.epochs:
            raise UsageError(f"the run in {out} has already done {trainer.epoch} of {settings.epochs} epochs: a new "
                             f"learning rate needs epochs to train; give --epochs N (N > {trainer.epoch}) too")
        trainer.set_learning_rate(given["lr"])
        print(f"learning rate from now on: {trainer.config.lr:g}", flush=True)
    return trainer, settings, state["loaders"], out


def _loaders(train_a, train_b, settings, seed, states):
    loaders = [DataLoader(images, batch_size=settings.batch_size, shuffle=True, drop_last=True,
                          rng=np.random.default_rng([seed, RNG_STREAMS["data"], k]))
               for k, images in enumerate((train_a, train_b))]
    if states is not None:
        for loader, state in zip(loaders, states):
            loader.load_state_dict(state)
    return loaders


def train(trainer, settings, loaders, test_a, test_b, out, progress=True):
    """Epochs until settings.epochs: steps on zipped A/B batches, then measures, figures, checkpoint."""
    from tqdm import tqdm
    scale = max(1, 64 // settings.image_size)
    epochs_path = out / "epochs.json"
    # on resume, the epochs the checkpoint has: an epoch interrupted after writing epochs.json but
    # before its checkpoint is trained again, and must not be listed twice
    log = ([entry for entry in json.loads(epochs_path.read_text()) if entry["epoch"] <= trainer.epoch]
           if epochs_path.is_file() and trainer.epoch else [])
    uploads = (PinnedUploader(), PinnedUploader()) if trainer.config.device == "gpu" else None
    while trainer.epoch < settings.epochs:
        started = time.perf_counter()
        steps = min(len(loader) for loader in loaders)
        bar = tqdm(zip(*loaders), total=steps, desc=f"epoch {trainer.epoch + 1}/{settings.epochs}", leave=False,
                   disable=not progress, dynamic_ncols=True)
        for a, b in bar:
            if uploads is not None:   # GPU: queue the copies here, so the step makes none (nnbox.upload)
                a, b = uploads[0](a), uploads[1](b)
            r = trainer.step(a, b)
            bar.set_postfix_str(f"cycle {r['cycle_a']:.3f}/{r['cycle_b']:.3f} adv {r['adv_ab']:.3f}/{r['adv_ba']:.3f} "
                                f"D {r['d_a_loss']:.3f}/{r['d_b_loss']:.3f}", refresh=False)
        bar.close()
        seconds = time.perf_counter() - started
        broken = non_finite_weights(trainer.networks)   # the epoch's last update, after its losses were checked
        if broken:
            raise NonFiniteLossError(f"CycleGAN training stopped at the end of epoch {trainer.epoch + 1}: non-finite "
                                     f"weights in {broken}; nothing of this epoch is written and "
                                     f"{out / CHECKPOINT_NAME} is kept. Resume with --resume {out} --epochs "
                                     f"{settings.epochs} --lr <lower>")
        trainer.epoch += 1
        measures, translations = measure_translations(trainer, test_a, test_b, settings)
        log.append({"epoch": trainer.epoch, "seconds": seconds, "steps": steps, **measures})
        save_figures(out, translations, trainer.epoch, scale)
        trainer.history.to_csv(out / "history.csv")
        trainer.history.to_json(out / "history.json")
        atomic_write_text(epochs_path, json.dumps(log, indent=1))
        plot_losses(trainer.history, out / "losses.png")
        trainer.save_checkpoint(out / CHECKPOINT_NAME, example=asdict(settings),
                                loaders=[loader.state_dict() for loader in loaders])
        print(f"epoch {trainer.epoch}/{settings.epochs}: {steps} steps in {seconds:.1f} s; test cycle L1 "
              f"{measures['cycle_l1_a']:.3f} (A) {measures['cycle_l1_b']:.3f} (B), hue in the target band "
              f"{measures['hue_hit_ab']:.2f} (A->B) {measures['hue_hit_ba']:.2f} (B->A), stroke L1 "
              f"{measures['stroke_l1_ab']:.3f}/{measures['stroke_l1_ba']:.3f}", flush=True)
    return log


def main(argv=None):
    given = vars(build_parser().parse_args(argv))
    settings = out = None
    try:
        check_options(given)
        trainer, settings, loader_states, out = _start(given)
        if trainer.epoch >= settings.epochs:     # a finished run: say so, before loading any data
            print(f"nothing trained: the run in {out} has already done {trainer.epoch} of {settings.epochs} epochs; "
                  f"give --epochs N (N > {trainer.epoch}) to train further", flush=True)
            return 0
        seed = trainer.config.seed
        train_a, train_b, test_a, test_b = load_domains(settings, seed, given.get("download", True))
        loaders = _loaders(train_a, train_b, settings, seed, loader_states)
        if given.get("overwrite"):   # a new run (--resume refuses it): none of the old run's files may stay
            remove_old_run(out, RUN_FILES, EPOCH_GRIDS)
        out.mkdir(parents=True, exist_ok=True)
        print(f"data: {len(train_a)} digits as A ({settings.domain_a}), {len(train_b)} other digits as B "
              f"({settings.domain_b}), {settings.image_size}x{settings.image_size}; {len(test_a)} test digits; "
              f"{len(loaders[0])} steps of {settings.batch_size} + {settings.batch_size} images per epoch; "
              f"device {trainer.config.device}; run folder {out}", flush=True)
        if trainer.epoch == 0:   # the untrained networks' translations, for comparison
            _, translations = measure_translations(trainer, test_a, test_b, settings)
            save_figures(out, translations, 0, max(1, 64 // settings.image_size))
        train(trainer, settings, loaders, test_a, test_b, out, given.get("progress", True))
    except CLI_ERRORS as error:
        return fail("cyclegan_mnist", error)
    except KeyboardInterrupt:
        return interrupted("cyclegan_mnist", out, settings.epochs if settings is not None else None, CHECKPOINT_NAME)
    return 0


if __name__ == "__main__":
    sys.exit(main())
