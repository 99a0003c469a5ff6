"""Train GAN variants on the same images and put them side by side (shared by two examples).

examples/cifar_gan.py compares architectures (MLP vs DCGAN on CIFAR-10) and
examples/mnist_latent_study.py compares latent noise (uniform vs normal on MNIST); both train each
variant with gan.trainer.GANTrainer into its own run folder, evaluate it with gan.evaluate, and
draw the comparison figures with the functions here:

    remove_old_study(out, ["mlp", "dcgan"], COMPARISON_FILES)       # --overwrite: the old study's files only
    trainer = train_variant(config, images, out / "dcgan", epochs=5, batch_size=64)
    metrics = evaluate_variant(out / "dcgan", images, n=1000)      # SWD, FID, neighbours, interpolations
    plot_loss_comparison({"mlp": history_a, "dcgan": history_b}, out / "compare" / "losses.png")
    plot_epoch_grids({"mlp": run_a, "dcgan": run_b}, out / "compare" / "samples_per_epoch.png")
"""
import io
import json
import math
import os
import sys
from pathlib import Path

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")  # before NumPy loads OpenBLAS: docs/performance.md
import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:   # run as a script (to ask what it is): this checkout's gan and nnbox
    sys.path.insert(0, str(ROOT))

from _cli import GAN_RUN_GRIDS, UsageError, fail, gan_run_files, interrupted, remove_old_run  # noqa: E402
from gan.balance import BALANCE_RULES  # noqa: E402
from gan.evaluate import REAL_IMAGES_NAME, evaluate  # noqa: E402
from gan.evaluate import save_real_images as write_real_images  # noqa: E402
from gan.history import atomic_write_bytes, atomic_write_text  # noqa: E402
from gan.report import sample_frames  # noqa: E402
from gan.trainer import CHECKPOINT_NAME, GANTrainer, TrainConfig, stream_rng  # noqa: E402
from gan.visualize import D_COLOR, G_COLOR, moving_average  # noqa: E402
from nnbox.data import DataLoader  # noqa: E402

ABOUT = ("the helpers that examples/cifar_gan.py and examples/mnist_latent_study.py import to train GAN variants "
         "and compare them; it trains nothing itself: run one of those two (with --help for its options)")
FIGURE_DPI = 100
# What both examples write beside the variants' folders (the comparison figures only with two variants); into
# a variant's folder, train_variant and evaluate_variant write _cli.gan_run_files() and the epoch grids. --overwrite
# removes these (remove_old_study), and only these.
COMPARISON_FILES = ("summary.json", "compare/losses.png", "compare/samples_per_epoch.png", "compare/throughput.png")


def add_run_arguments(parser, default_out, variants):
    """The options both examples share: data size, epochs, evaluation, seed, device, output."""
    p = parser
    p.add_argument("--max-images", type=int, default=None, help="train on a random subset of this many images")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--eval-images", type=int, default=1000,
                   help="images generated for gan.evaluate after training (0: skip the evaluation)")
    p.add_argument("--balance", choices=sorted(BALANCE_RULES), default="alternate",
                   help="gan.balance rule, the same for every variant (default alternate: one D and one G step "
                        "per batch; skip: the network that is too far ahead sits its turn out)")
    p.add_argument("--label-smoothing", type=float, default=0.0,
                   help="one-sided label smoothing, the same for every variant: D's real targets are 1 - this "
                        "(default 0: plain 1/0 labels)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--out", default=default_out, help=f"folder for the runs (OUT/<{variants}>) and OUT/compare")
    p.add_argument("--overwrite", action="store_true", help="start afresh where a run already exists")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    p.add_argument("--no-report", dest="report", action="store_false",
                   help="no plots, GIF or report.html in the run folders (the comparison figures are still drawn)")
    return p


def recipe_config(args, **settings):
    """A TrainConfig of the DCGAN paper's recipe, the same in both examples: non-saturating loss,
    Adam(2e-4, beta1 0.5) for G and D; by default one D and one G step per batch and plain 1/0
    labels (`--balance`, `--label-smoothing` change both for every variant alike); `settings` name
    the networks (arch, image_size, channels, latent_dim, width, ...) and the latent law."""
    if not 0.0 <= args.label_smoothing < 1.0:
        raise UsageError(f"--label-smoothing must be in [0, 1), got {args.label_smoothing}")
    return TrainConfig(loss="non_saturating", optimizer="adam", lr_g=2e-4, lr_d=2e-4, beta1=0.5,
                       balance=args.balance, label_smoothing=args.label_smoothing, sample_scale=1, seed=args.seed,
                       device=args.device, progress=args.progress, report=args.report, **settings)


def subset(images, max_images, seed, *arrays):
    """A random subset of `max_images` images (in their original order) and the same rows of `arrays`.

    The subset is drawn with default_rng([seed, 1000]), as examples/faces_gan.py draws its own.
    """
    if max_images is None or max_images >= len(images):
        return (images, *arrays)
    if max_images < 1:
        raise UsageError(f"--max-images must be >= 1, got {max_images}")
    pick = np.sort(np.random.default_rng([seed, 1000]).permutation(len(images))[:max_images])
    return (images[pick], *(a[pick] for a in arrays))


def make_loader(images, batch_size, seed):
    """Shuffled batches of float NCHW images; the order comes from the trainer's "data" stream of `seed`."""
    batch_size = min(int(batch_size), len(images))
    return DataLoader(images, batch_size=batch_size, shuffle=True, drop_last=True, rng=stream_rng(seed, "data"))


def train_variant(config, images, run_dir, epochs, batch_size, overwrite=False, extra_config=None):
    """Train one variant (a TrainConfig) on `images` (float32 NCHW in [-1, 1]) into `run_dir`.

    Returns the GANTrainer after `fit` (its history, epoch_log and networks).
    """
    loader = make_loader(images, batch_size, config.seed)
    trainer = GANTrainer.from_config(config, run_dir, overwrite=overwrite, extra_config=extra_config)
    print(f"{run_dir}: {config.arch} GAN, latent {config.latent_kind} {config.latent_dim}, "
          f"{len(loader)} batches of {loader.batch_size} per epoch, device {config.device}", flush=True)
    trainer.fit(loader, epochs)
    return trainer


def remove_old_study(out, variants, names):
    """--overwrite: delete what an earlier run of the study wrote: `names` (paths relative to `out`, e.g.
    COMPARISON_FILES) and, in each folder OUT/<variant> of `variants`, gan_run_files() and the epoch grids.
    A user's own files stay, and so do the folders of variants not named. Returns the files removed.

    Called once the data is read, before the first variant trains: a run refused or failing before
    that keeps the old one; a study of fewer variants or without evaluation leaves none of its figures."""
    removed = remove_old_run(out, names)
    for variant in variants:
        removed += remove_old_run(Path(out) / variant, gan_run_files(), GAN_RUN_GRIDS)
    return removed


def interrupted_study(program, run_dirs, epochs):
    """Ctrl-C (the studies have no --resume): one line naming the folder of the last variant that holds a
    checkpoint (the one being trained; those before it are complete), or saying that nothing was written;
    returns 130. `run_dirs`: the folders of the variants whose training began, in order."""
    saved = [run_dir for run_dir in run_dirs if (Path(run_dir) / CHECKPOINT_NAME).exists()]
    return interrupted(program, saved[-1] if saved else None, epochs, resumable=False)


def save_real_images(images, run_dir):
    """Write the training images as uint8 NHWC RUN_DIR/real_images.npy (gan.evaluate reads .npy); returns the path."""
    return write_real_images(images, Path(run_dir) / REAL_IMAGES_NAME)


def evaluate_variant(run_dir, images, n=1000, seed=0, features="pixels", classifier_weights=None, device="cpu",
                     report=True):
    """gan.evaluate.evaluate on a run, against its training images: SWD, FID/KID on `features`,
    memorisation, nearest neighbours and linear/slerp interpolation figures (RUN_DIR/evaluation/);
    with `report`, an Evaluation section in RUN_DIR/report.html.

    Returns the metrics dict (also RUN_DIR/metrics.json).
    """
    real = save_real_images(images, run_dir)
    name = Path(run_dir).name
    return evaluate(run_dir, str(real), features=features, n=n, classifier_weights=classifier_weights, seed=seed,
                    device=device, report=report, progress=lambda line: print(f"{name}: {line}", flush=True))


# --------------------------------------------------------------------------- comparison figures
def pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, path):
    plt = pyplot()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=FIGURE_DPI)
    plt.close(fig)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)


def _epoch_axis(history):
    """Each step's position in epochs (step / steps per epoch), so runs of different lengths line up."""
    epochs = history.column("epoch")
    if len(epochs) == 0:
        return epochs
    steps_in_epoch = np.bincount(epochs.astype(int))
    within = np.concatenate([np.arange(n) for n in steps_in_epoch])
    return epochs + within / steps_in_epoch[epochs.astype(int)]


def plot_loss_comparison(histories, path):
    """One panel per variant: D's and G's loss per step (faint) and their moving average, x in epochs."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(histories), figsize=(4.5 * len(histories), 3.4), sharey=True, squeeze=False)
    for ax, (label, history) in zip(axes[0], histories.items()):
        ax.set_title(label)
        ax.set_xlabel("epoch")
        if len(history) == 0:   # a run stopped before its first step: say so, plot nothing
            ax.text(0.5, 0.5, "no steps logged", ha="center", va="center", transform=ax.transAxes)
            continue
        x = _epoch_axis(history)
        window = max(1, len(history) // 40)
        for name, color in (("d_loss", D_COLOR), ("g_loss", G_COLOR)):
            values = history.column(name)
            ax.plot(x, values, color=color, alpha=0.2, linewidth=0.6)
            ax.plot(x, moving_average(values, window), color=color, linewidth=1.6,
                    label=f"{name[0].upper()} loss (mean of {window})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper right")
    axes[0, 0].set_ylabel("loss")
    fig.tight_layout()
    return save_figure(fig, path)


def _grid_rows(png, rows, per_row):
    """The top `rows` rows of images of a saved sample grid of `per_row` images a row (uint8 HWC)."""
    from PIL import Image
    with Image.open(png) as image:
        picture = np.asarray(image.convert("RGB"))
    cell = (picture.shape[1] - 2) // per_row      # the grids have padding 2 around each image
    return picture[:2 + rows * cell]


def _grid_columns(run_dir):
    """Images per row of a run's sample grids: ceil(sqrt(n_samples)), as GANTrainer.save_samples draws them."""
    config = json.loads((Path(run_dir) / "config.json").read_text())
    return int(math.ceil(math.sqrt(config["train"]["n_samples"])))


def plot_epoch_grids(run_dirs, path, epochs=None, rows=2):
    """The fixed-latent sample grids of every epoch: one row per epoch, one column per variant.

    Shows the top `rows` rows (16 samples at rows=2 of the default 8-wide grids) of each
    RUN_DIR/samples/epoch_XXX.png; the same fixed latents in every epoch, so a column shows the same
    samples improving.
    """
    plt = pyplot()
    frames = {label: sample_frames(d) for label, d in run_dirs.items()}
    count = min(len(f) for f in frames.values())
    chosen = list(range(count)) if epochs is None else [e for e in epochs if e < count]
    pictures = {label: [_grid_rows(f[e], rows, _grid_columns(run_dirs[label])) for e in chosen]
                for label, f in frames.items()}
    h, w = next(iter(pictures.values()))[0].shape[:2]
    fig, axes = plt.subplots(len(chosen), len(run_dirs), squeeze=False,
                             figsize=(len(run_dirs) * (w + 40) / FIGURE_DPI, len(chosen) * (h + 14) / FIGURE_DPI))
    for c, (label, column) in enumerate(pictures.items()):
        for r, picture in enumerate(column):
            ax = axes[r, c]
            ax.imshow(picture, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(label, fontsize=9)
            if c == 0:
                ax.set_ylabel(f"epoch {chosen[r]}", fontsize=8)
    fig.subplots_adjust(left=0.06, right=0.99, top=1 - 20 / fig.bbox.height, bottom=0.0, wspace=0.05, hspace=0.05)
    return save_figure(fig, path)


def plot_throughput_comparison(epoch_logs, path):
    """Images per second of every epoch (training steps only, data loading included), per variant."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.0))
    longest = max(epoch_logs.values(), key=len)
    grouped_bars(ax, [e["epoch"] + 1 for e in longest],
                 {label: [e["images_per_sec"] for e in log] for label, log in epoch_logs.items()}, value_format="%.0f")
    ax.set_xlabel("epoch")
    ax.set_ylabel("images / second")
    ax.set_title("training throughput (2-core CPU, shared)")
    fig.tight_layout()
    return save_figure(fig, path)


def grouped_bars(ax, positions, series, value_format=None):
    """Bars of several series side by side at each position ({label: values}, each at most as long
    as `positions`: a shorter one fills the first positions), with a legend."""
    width = 0.8 / len(series)
    for i, (label, values) in enumerate(series.items()):
        x = np.asarray(positions, dtype=float) + (i - (len(series) - 1) / 2) * width
        bars = ax.bar(x[:len(values)], values, width, label=label)
        if value_format:
            ax.bar_label(bars, fmt=value_format, fontsize=7)
    ax.set_xticks(positions)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")


def summarize(trainers, metrics, path):
    """A JSON summary of the variants (per-epoch seconds and throughput, last-epoch means, measures)."""
    summary = {}
    for label, trainer in trainers.items():
        last = [r for r in trainer.history if r["epoch"] == trainer.epoch - 1]
        summary[label] = {
            "epochs": trainer.epoch_log,
            # null, not NaN (which is not JSON), for a run without a completed epoch
            "last_epoch_means": {k: float(np.mean([r[k] for r in last])) if last else None for k in
                                 ("d_loss", "g_loss", "d_real", "d_fake", "d_acc_real", "d_acc_fake", "g_success")},
            "parameters": {"G": _count(trainer.G), "D": _count(trainer.D)},
            "metrics": {k: v for k, v in metrics.get(label, {}).items() if k != "figures"},
        }
    atomic_write_text(path, json.dumps(summary, indent=1))
    return summary


def _count(module):
    return int(sum(p.data.size for p in module.parameters()))


def main(argv=None):
    """`python examples/compare_runs.py [--help]`: what this module is, in one line (it has no command line)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv not in ([], ["-h"], ["--help"]):
        return fail("compare_runs.py", f"takes no options: {ABOUT}")
    print(f"compare_runs.py: {ABOUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
