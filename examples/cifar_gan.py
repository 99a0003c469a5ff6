"""A GAN on CIFAR-10 with a selectable architecture: fully connected (MLP) or convolutional (DCGAN).

Both use the non-saturating loss, Adam(2e-4, beta1 0.5) for G and D, latents of 128 drawn from
N(0, 1), batches of 64, and by default no balancing tricks (D and G each take one step per batch,
plain labels; `--balance` and `--label-smoothing` change that for both alike): the DCGAN paper's
recipe, so the architecture is the only difference.

    python examples/cifar_gan.py --data ../shared/data/cifar-10-batches-bin --arch dcgan --epochs 5 --out runs/cifar
    python examples/cifar_gan.py --data ../shared/data/cifar-10-batches-bin --arch mlp dcgan --epochs 4 \\
        --max-images 10000 --out runs/cifar_compare          # both, then the comparison figures
    python examples/cifar_gan.py --data ../shared/data/cifar-10-batches-bin --arch mlp --epochs 1 \\
        --max-images 64 --eval-images 0 --out /tmp/smoke     # a quick end-to-end check (seconds)

Data: `--data` is a folder holding `cifar-10-batches-bin` (or the batches themselves), read by
nnbox.datasets.load_cifar10. `--split auto` (the default) trains on the 50,000 training images and,
when the folder holds only `test_batch.bin` (as ../shared/data does), says so and trains on the
10,000 test images instead.

Each architecture trains into OUT/<arch>/ (gan.trainer's run folder: samples/epoch_XXX.png,
checkpoint.npz, history, plots, report.html) and is then evaluated by gan.evaluate against the
images it trained on (OUT/<arch>/metrics.json, evaluation/: nearest neighbours, linear and slerp
interpolations; SWD and FID on pixel features). With two architectures, OUT/compare/ holds the
figures side by side (losses.png, samples_per_epoch.png, throughput.png); OUT/summary.json sums up
every architecture's run and measures. A folder OUT/<arch>/ that holds a run is refused unless --overwrite is
given, which deletes these files of the old run (and no others) once the data is read.
"""
import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")  # before NumPy loads OpenBLAS: docs/performance.md

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "examples"):  # run as a script from anywhere; compare_runs and _cli sit beside this file
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from _cli import (CIFAR10_HINT, CLI_ERRORS, UsageError, at_least, check_device, check_new_run, fail,  # noqa: E402
                  load_dataset, probability)
from compare_runs import (COMPARISON_FILES, add_run_arguments, evaluate_variant, interrupted_study,  # noqa: E402
                          plot_epoch_grids, plot_loss_comparison, plot_throughput_comparison, recipe_config,
                          remove_old_study, subset, summarize, train_variant)

ARCHS = ("mlp", "dcgan")
LATENT_DIM = 128


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", nargs="+", choices=ARCHS, default=["dcgan"],
                   help="architecture(s) to train, one run each (default dcgan)")
    p.add_argument("--data", default=None,
                   help="cifar-10-batches-bin, or the folder holding it (default: the cache, else a download)")
    p.add_argument("--split", choices=("auto", "train", "test"), default="auto",
                   help="which CIFAR-10 images to train on; auto: train, or test when only test_batch.bin is there")
    p.add_argument("--no-download", dest="download", action="store_false", help="never download CIFAR-10")
    p.add_argument("--dcgan-width", type=int, default=None, help="DCGAN's width w (default: gan.models' 64)")
    p.add_argument("--mlp-hidden", type=int, default=None, help="the MLPs' hidden size h (default: gan.models' 256)")
    return add_run_arguments(p, "runs/cifar_gan", "arch")


def train_config(args, arch):
    """The recipe for one architecture: non-saturating loss, Adam(2e-4, 0.5), latent 128, no tricks."""
    width = args.dcgan_width if arch == "dcgan" else args.mlp_hidden
    return recipe_config(args, arch=arch, image_size=32, channels=3, latent_dim=LATENT_DIM, width=width,
                         latent_kind="normal")


def load_cifar(data, split, download):
    """(images float32 (N, 3, 32, 32), labels, a line saying what they are) for --split."""
    from nnbox.datasets import load_cifar10
    if split == "test":
        images, labels, _ = load_cifar10(data, split="test", download=download)
        return images, labels, "CIFAR-10 test split"
    try:
        images, labels, _ = load_cifar10(data, split="train", download=download)
        return images, labels, "CIFAR-10 train split"
    except FileNotFoundError as error:
        try:
            images, labels, _ = load_cifar10(data, split="test", download=False)
        except FileNotFoundError:
            raise error from None
        if split == "train":
            raise UsageError(f"{error}; give --split test (or auto) to train on its test images") from None
        print(f"no CIFAR-10 training batches ({error}); training on the test split instead, "
              f"{len(images)} images (give --split test to say so, or --data a folder with data_batch_1..5.bin)",
              flush=True)
        return images, labels, "CIFAR-10 test split (the folder holds no training batches)"


def check_options(args):
    """One-line usage errors for numbers that cannot work, before any data is read."""
    at_least(1, epochs=args.epochs, batch_size=args.batch_size, max_images=args.max_images,
             dcgan_width=args.dcgan_width, mlp_hidden=args.mlp_hidden)
    at_least(0, eval_images=args.eval_images)
    probability(label_smoothing=args.label_smoothing)


def main(argv=None):
    """The command line: trains and evaluates each architecture, then compares them; 0, 2 after a one-line
    error, or 130 after Ctrl-C."""
    args = build_parser().parse_args(argv)
    archs, out = list(dict.fromkeys(args.arch)), Path(args.out)
    begun = []   # the folders of the architectures whose training began (Ctrl-C's line names what is kept)
    try:
        check_options(args)
        check_device(args.device)
        for arch in archs:   # every variant's folder, before any data is read or variant trained
            check_new_run(out / arch, args.overwrite, resumable=False)
        images, labels, what = load_dataset(load_cifar, args.data, args.split, download=args.download,
                                            hint=CIFAR10_HINT)
        images, labels = subset(images, args.max_images, args.seed, labels)
        print(f"data: {len(images)} images of 32x32 from the {what}", flush=True)
        if args.overwrite:   # only now, with the data read: a run refused before keeps the old one
            remove_old_study(out, archs, COMPARISON_FILES)
        trainers, metrics = {}, {}
        for arch in archs:
            begun.append(out / arch)
            started = time.perf_counter()
            trainers[arch] = train_variant(train_config(args, arch), images, out / arch, args.epochs,
                                           args.batch_size, overwrite=args.overwrite,
                                           extra_config={"example": "cifar_gan", "data": what,
                                                         "images": len(images), "epochs": args.epochs})
            print(f"{arch}: trained in {time.perf_counter() - started:.0f} s", flush=True)
            if args.eval_images > 0:
                metrics[arch] = evaluate_variant(out / arch, images, n=args.eval_images, seed=args.seed,
                                                 device=args.device, report=args.report)
        if len(archs) > 1:
            compare = out / "compare"
            plot_loss_comparison({a: t.history for a, t in trainers.items()}, compare / "losses.png")
            plot_epoch_grids({a: out / a for a in archs}, compare / "samples_per_epoch.png")
            plot_throughput_comparison({a: t.epoch_log for a, t in trainers.items()}, compare / "throughput.png")
            print(f"comparison: {compare}", flush=True)
        summarize(trainers, metrics, out / "summary.json")
    except CLI_ERRORS as error:
        return fail("cifar_gan", error)
    except KeyboardInterrupt:
        return interrupted_study("cifar_gan", begun, args.epochs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
