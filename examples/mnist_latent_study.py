"""MNIST latent-noise study: the same DCGAN trained with uniform and with normal latent noise, side by side.

The DCGAN of gan.models at 32x32 (MNIST's 28x28 digits padded by 2 pixels of background on every
side): 4x4 kernels, stride 2, padding 1, one channel, dropout on D's input (`--input-dropout`, D's
`input_dropout` option). Non-saturating loss, Adam(2e-4, beta1 0.5), batches of 64; by default no
balancing tricks (`--balance skip --label-smoothing 0.1` is walkthrough 6's recipe, which keeps D
from winning at once; both runs get the same). The only difference between the runs is the law of
z (gan.tricks.sample_latent): "uniform" U(-1, 1)^d or "normal" N(0, 1)^d.

    python examples/mnist_latent_study.py --data ../shared/data/mnist --epochs 5 --max-images 10000 \\
        --classifier-weights mnist_classifier.npz --out runs/mnist_latent
    python examples/mnist_latent_study.py --data ../shared/data/mnist --epochs 1 --max-images 64 --width 8 \\
        --eval-images 0 --out /tmp/smoke                     # a quick end-to-end check (seconds)

Each kind trains into OUT/<kind>/ (gan.trainer's run folder) and is evaluated by gan.evaluate
against the images it trained on (SWD; FID/KID on pixel features, or on the digit classifier's
features with `--classifier-weights`, trained by examples/train_mnist_classifier.py; nearest
neighbours; linear and slerp interpolations in OUT/<kind>/evaluation/). OUT/compare/ holds the
figures side by side: losses.png, samples_per_epoch.png, throughput.png, noise.png (histograms of
the two laws: one coordinate, and the norm ||z||) and, with a classifier, classes.png (which digits
each generator draws). A folder OUT/<kind>/ that holds a run is refused unless --overwrite is given,
which deletes these files of the old run (and no others) once the data is read.
"""
import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")  # before NumPy loads OpenBLAS: docs/performance.md
import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "examples"):  # run as a script from anywhere; compare_runs and _cli sit beside this file
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from _cli import (CLI_ERRORS, MNIST_HINT, at_least, check_device, check_new_run, fail, load_dataset,  # noqa: E402
                  probability)
from compare_runs import (COMPARISON_FILES, add_run_arguments, evaluate_variant, grouped_bars,  # noqa: E402
                          interrupted_study, plot_epoch_grids, plot_loss_comparison, plot_throughput_comparison,
                          pyplot, recipe_config, remove_old_study, save_figure, subset, summarize, train_variant)
from gan.tricks import LATENT_KINDS, sample_latent  # noqa: E402

PAD = 2           # 28 + 2 * 2 = 32, the DCGAN's smallest size
IMAGE_SIZE = 32
# what the study writes beside the variants' folders: --overwrite removes these (and the variants' files)
STUDY_FILES = COMPARISON_FILES + ("compare/noise.png", "compare/classes.png")


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--noise", nargs="+", choices=LATENT_KINDS, default=list(reversed(LATENT_KINDS)),
                   help="latent law(s) to train with, one run each (default: uniform normal)")
    p.add_argument("--data", default=None, help="folder with MNIST's IDX files (default: the cache, else a download)")
    p.add_argument("--no-download", dest="download", action="store_false", help="never download MNIST")
    p.add_argument("--latent-dim", type=int, default=100, help="size of z (default 100, as in DCGAN)")
    p.add_argument("--width", type=int, default=None, help="DCGAN width w (default: gan.models' 64)")
    p.add_argument("--input-dropout", type=float, default=0.2, help="dropout on D's input images (default 0.2)")
    p.add_argument("--classifier-weights", default=None,
                   help="MNIST classifier .npz (examples/train_mnist_classifier.py): digit FID/KID/IS and classes.png")
    return add_run_arguments(p, "runs/mnist_latent", "kind")


def train_config(args, kind):
    """The DCGAN recipe on one-channel 32x32 digits with latents of law `kind`."""
    return recipe_config(args, arch="dcgan", image_size=IMAGE_SIZE, channels=1, latent_dim=args.latent_dim,
                         width=args.width, model_options={"d_input_dropout": args.input_dropout}, latent_kind=kind)


def pad_digits(images):
    """(N, 1, 28, 28) -> (N, 1, 32, 32), PAD pixels of background (-1) on every side."""
    return np.pad(images, ((0, 0), (0, 0), (PAD, PAD), (PAD, PAD)), constant_values=-1.0)


def crop_digits(images):
    """The inverse of pad_digits: the classifier sees 28x28 digits of the size it was trained on."""
    return images[:, :, PAD:-PAD, PAD:-PAD]


# --------------------------------------------------------------------------- study figures
def plot_noise_histograms(latent_dim, path, n=20000, seed=0):
    """The two laws: a histogram of one coordinate z_i, and of the norm ||z|| of d-dimensional z.

    A coordinate: U(-1, 1) is flat, N(0, 1) is a bell with tails. The norm: for uniform z,
    E||z||^2 = d/3; for normal z, E||z||^2 = d; both concentrate (relative spread ~ 1/sqrt(d)), so
    in high dimension nearly all samples lie in a thin shell, the uniform one well inside the cube.
    """
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    bins = np.linspace(-4.0, 4.0, 81)
    for kind, color in (("uniform", "tab:green"), ("normal", "tab:purple")):
        z = sample_latent(n, latent_dim, kind, np.random.default_rng(seed))
        axes[0].hist(z[:, 0], bins=bins, density=True, alpha=0.5, color=color, label=kind)
        norms = np.linalg.norm(z, axis=1)
        expected = np.sqrt(latent_dim / 3 if kind == "uniform" else latent_dim)
        axes[1].hist(norms, bins=80, density=True, alpha=0.5, color=color,
                     label=f"{kind}: mean {norms.mean():.2f} (sqrt(E||z||^2) = {expected:.2f})")
    axes[0].set_title("one coordinate z_i")
    axes[1].set_title(f"the norm ||z|| of z in {latent_dim} dimensions")
    for ax in axes:
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


def class_histogram(run_dir, classifier_weights, n, seed, device="cpu"):
    """Fraction of each digit 0..9 among n generated images (the classifier's argmax on cropped digits),
    and the classifier's mean confidence (max probability)."""
    from gan.classifier import ClassifierFeatures
    from gan.evaluate import generate, load_generator
    generator, config = load_generator(run_dir, device)
    images, _ = generate(generator, config, n, seed=seed, device=device)
    probabilities = ClassifierFeatures.from_file(classifier_weights, device=device).probabilities(crop_digits(images))
    counts = np.bincount(probabilities.argmax(axis=1), minlength=10)
    return counts / n, float(probabilities.max(axis=1).mean())


def plot_class_histograms(fractions, path):
    """Bars of the digit frequencies per generator (MNIST's own are about 0.1 each)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3))
    grouped_bars(ax, list(range(10)), fractions)
    ax.axhline(0.1, color="0.5", linestyle=":", linewidth=1)
    ax.set_xlabel("digit (classifier's argmax)")
    ax.set_ylabel("fraction of samples")
    ax.set_title("which digits each generator draws")
    fig.tight_layout()
    return save_figure(fig, path)


# --------------------------------------------------------------------------- main
def check_options(args):
    """One-line usage errors for numbers that cannot work, before any data is read."""
    at_least(1, epochs=args.epochs, batch_size=args.batch_size, max_images=args.max_images,
             latent_dim=args.latent_dim, width=args.width)
    at_least(0, eval_images=args.eval_images)
    probability(input_dropout=args.input_dropout, label_smoothing=args.label_smoothing)


def main(argv=None):
    """The command line: trains and evaluates each latent law, then compares them; 0, 2 after a one-line
    error, or 130 after Ctrl-C."""
    args = build_parser().parse_args(argv)
    from gan.classifier import ClassifierFeatures
    from nnbox.datasets import load_mnist
    kinds, out = list(dict.fromkeys(args.noise)), Path(args.out)
    begun = []   # the folders of the laws whose training began (Ctrl-C's line names what is kept)
    try:
        check_options(args)
        check_device(args.device)
        for kind in kinds:   # every variant's folder, before any data is read or variant trained
            check_new_run(out / kind, args.overwrite, resumable=False)
        if args.classifier_weights:     # a missing or unreadable file: said now, not after training a variant
            ClassifierFeatures.from_file(args.classifier_weights)
        images, labels = load_dataset(load_mnist, args.data, split="train", download=args.download, hint=MNIST_HINT)
        images, labels = subset(pad_digits(images), args.max_images, args.seed, labels)
        print(f"data: {len(images)} MNIST training digits padded to {IMAGE_SIZE}x{IMAGE_SIZE}", flush=True)
        if args.overwrite:   # only now, with the data read: a run refused before keeps the old one
            remove_old_study(out, kinds, STUDY_FILES)
        features = "mnist" if args.classifier_weights else "pixels"
        trainers, metrics, fractions = {}, {}, {}
        for kind in kinds:
            begun.append(out / kind)
            started = time.perf_counter()
            trainers[kind] = train_variant(train_config(args, kind), images, out / kind, args.epochs, args.batch_size,
                                           overwrite=args.overwrite,
                                           extra_config={"example": "mnist_latent_study", "images": len(images),
                                                         "epochs": args.epochs})
            print(f"{kind}: trained in {time.perf_counter() - started:.0f} s", flush=True)
            if args.eval_images > 0:
                metrics[kind] = evaluate_variant(out / kind, images, n=args.eval_images, seed=args.seed,
                                                 features=features, classifier_weights=args.classifier_weights,
                                                 device=args.device, report=args.report)
            if args.classifier_weights:
                fractions[kind], confidence = class_histogram(out / kind, args.classifier_weights,
                                                              max(args.eval_images, 100), args.seed, args.device)
                metrics.setdefault(kind, {}).update(digit_fractions=fractions[kind].tolist(),
                                                    classifier_confidence=confidence)
                print(f"{kind}: digits drawn {np.round(fractions[kind], 3).tolist()}, "
                      f"mean classifier confidence {confidence:.3f}", flush=True)
        compare = out / "compare"
        plot_noise_histograms(args.latent_dim, compare / "noise.png", seed=args.seed)
        if len(kinds) > 1:
            plot_loss_comparison({k: t.history for k, t in trainers.items()}, compare / "losses.png")
            plot_epoch_grids({k: out / k for k in kinds}, compare / "samples_per_epoch.png")
            plot_throughput_comparison({k: t.epoch_log for k, t in trainers.items()}, compare / "throughput.png")
        if fractions:
            plot_class_histograms(fractions, compare / "classes.png")
        summarize(trainers, metrics, out / "summary.json")
        print(f"comparison: {compare}", flush=True)
    except CLI_ERRORS as error:
        return fail("mnist_latent_study", error)
    except KeyboardInterrupt:
        return interrupted_study("mnist_latent_study", begun, args.epochs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
