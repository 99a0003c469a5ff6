"""Train a VAE on coloured MNIST with a Gaussian latent, a categorical (Gumbel-softmax) latent, or both.

    python examples/vae_colored_mnist.py --latent gaussian --data ../shared/data/mnist --epochs 2 --out runs/vae_gaussian
    python examples/vae_colored_mnist.py --latent categorical --data ../shared/data/mnist --out runs/vae_categorical
    python examples/vae_colored_mnist.py --latent both --data ../shared/data/mnist --max-images 30000 \\
        --epochs 1 --out runs/vae_both       # docs/results/vae.md's run: ~9 minutes on 2 loaded CPU cores
    python examples/vae_colored_mnist.py --latent categorical --categorical-dims 20 --data ../shared/data/mnist \\
        --out runs/vae_categorical20         # 20 codes: one 10-way code alone collapses (see the results page)
    python examples/vae_colored_mnist.py --latent both --colors class --device gpu --out runs/vae_class_colors
    python examples/vae_colored_mnist.py --latent gaussian --epochs 1 --max-images 256 --out /tmp/smoke

`--colors random` tints every digit with its own random bright colour; `--colors class` gives each digit
class its own fixed colour. Without `--data` MNIST comes from the data cache ($NNBOX_CACHE, default
~/.cache/nnbox) or is downloaded (SHA-256 checked).

The run folder (`--out`) receives the files below, all at the end of the run; a folder that already holds a run
(its checkpoint.npz) is refused unless `--overwrite` is given, which then deletes these files of the old run (and
no others) just before the new run writes its own:
    samples.png          images from the prior (z ~ N(0, I), uniform one-hot codes)
    reconstructions.png  test digits (odd rows) and their reconstructions (even rows)
    losses.png           the loss, its reconstruction and KL parts, and the temperature, per step
    latent_space.png     (Gaussian) the test set's posterior means, coloured by digit and by tint
    categories.png       (categorical) one row of samples per category of the first code
    category_digits.png  (categorical) which digits each category holds, on the test set
    steering.png         samples steered by chosen latent values: each Gaussian dimension traversed
                         (a grid over z for D = 2), the Gaussian traversed under each fixed category,
                         or codes blended between categories
    checkpoint.npz       the model, the optimiser, the settings and the history (nnbox.serialization)
    metrics.json         the test loss parts, the category purity, the wall time
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")  # before NumPy loads OpenBLAS: docs/performance.md
import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "examples"):  # run as a script from anywhere; _cli sits beside this file
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from _cli import (CLI_ERRORS, MNIST_HINT, UsageError, at_least, check_device, check_new_run, fail,  # noqa: E402
                  interrupted, load_dataset, positive, remove_old_run)
from gan.history import atomic_write_text  # noqa: E402
from gan.vae import LATENTS, VAE, one_hot  # noqa: E402
from gan.visualize import moving_average, save_image_grid  # noqa: E402
from nnbox import backend  # noqa: E402
from nnbox.datasets import load_colored_mnist  # noqa: E402
from nnbox.optim import Adam  # noqa: E402
from nnbox.serialization import save_checkpoint  # noqa: E402
from nnbox.upload import PinnedUploader  # noqa: E402

FIGURE_DPI = 90
TRAVERSAL = np.linspace(-2.5, 2.5, 9)  # z values of the traversals: most of N(0, 1)'s mass
EVAL_BATCH = 500
LOSS_PARTS = ("loss", "reconstruction", "kl_gaussian", "kl_categorical")
# what a run writes into its folder (the module docstring's list): --overwrite removes these, and only these
RUN_FILES = ("samples.png", "reconstructions.png", "losses.png", "latent_space.png", "categories.png",
             "category_digits.png", "steering.png", "checkpoint.npz", "metrics.json")


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--latent", choices=LATENTS, default="both", help="the latent code (default: both)")
    p.add_argument("--data", default=None, help="folder with the four MNIST IDX files (default: cache/download)")
    p.add_argument("--no-download", dest="download", action="store_false", help="never download MNIST")
    p.add_argument("--colors", choices=("random", "class"), default="random",
                   help="a random colour per digit, or a fixed colour per class (default: random)")
    p.add_argument("--max-images", type=int, default=None, help="train on a random subset of this many images")
    p.add_argument("--test-images", type=int, default=2000, help="test images for the figures and metrics (2000)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3, help="Adam's learning rate (1e-3)")
    p.add_argument("--latent-dim", type=int, default=2, help="D, the Gaussian code's size (2: plotted directly)")
    p.add_argument("--categories", type=int, default=10, help="K, categories per categorical code (10)")
    p.add_argument("--categorical-dims", type=int, default=1, help="L, how many categorical codes (1)")
    p.add_argument("--width", type=int, default=16, help="channels of the first convolution (16)")
    p.add_argument("--temperature", type=float, default=1.0, help="Gumbel-softmax temperature at the start (1.0)")
    p.add_argument("--min-temperature", type=float, default=0.5, help="the annealed temperature's floor (0.5)")
    p.add_argument("--anneal-rate", type=float, default=1e-3,
                   help="tau = max(min, tau0 exp(-rate * step)) (Jang et al.'s schedule; 0: constant)")
    p.add_argument("--hard", action="store_true", help="straight-through one-hot codes in training")
    p.add_argument("--kl-weight", type=float, default=1.0, help="weight of the Gaussian KL (beta, 1.0)")
    p.add_argument("--categorical-kl-weight", type=float, default=1.0, help="weight of the categorical KL (1.0)")
    p.add_argument("--log-every", type=int, default=50, help="print the loss every this many steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=backend.DEVICES, default="cpu")
    p.add_argument("--out", default="runs/vae_colored_mnist", help="the run folder")
    p.add_argument("--overwrite", action="store_true", help="start afresh in an --out that holds a run")
    return p


# --------------------------------------------------------------------------- data
def load_data(args, rng):
    """(train images, test images, test labels, test tints (N, 3) in [0, 1]) as float32 NCHW in [-1, 1]."""
    options = dict(mode=args.colors, rng=rng, download=args.download, hint=MNIST_HINT)
    train, _, _ = load_dataset(load_colored_mnist, args.data, "train", **options)
    test, test_labels, colors = load_dataset(load_colored_mnist, args.data, "test", **options)
    if args.max_images:
        train = train[rng.permutation(len(train))[:args.max_images]]
    keep = slice(0, args.test_images)
    tints = colors[test_labels] if args.colors == "class" else colors
    return train, test[keep], test_labels[keep], tints[keep]


# --------------------------------------------------------------------------- training
def temperature_at(args, step):
    return max(args.min_temperature, args.temperature * float(np.exp(-args.anneal_rate * step)))


def train(vae, optimizer, images, args, rng):
    """Epochs of shuffled batches (the last, smaller batch dropped); returns the per-step history."""
    history = {name: [] for name in ("step", "epoch", "temperature") + LOSS_PARTS}
    steps_per_epoch = len(images) // args.batch_size
    if steps_per_epoch == 0:
        raise UsageError(f"{len(images)} training images is less than one batch of {args.batch_size}; "
                         f"lower --batch-size or raise --max-images")
    step = 0
    upload = PinnedUploader() if args.device == "gpu" else None   # GPU: copies queued, not waited for
    for epoch in range(args.epochs):
        order = rng.permutation(len(images))
        for b in range(steps_per_epoch):
            batch = images[order[b * args.batch_size:(b + 1) * args.batch_size]]
            batch = batch if upload is None else upload(batch)
            if vae.gumbel is not None:
                vae.temperature = temperature_at(args, step)
            parts = vae.step(batch, optimizer)
            record = {"step": step, "epoch": epoch, "temperature": vae.temperature or np.nan}
            record.update({name: parts.get(name, np.nan) for name in LOSS_PARTS})
            for name, value in record.items():
                history[name].append(float(value))
            if step % args.log_every == 0 or b == steps_per_epoch - 1:
                shown = ", ".join(f"{k} {v:.2f}" for k, v in parts.items())
                print(f"epoch {epoch + 1} step {step}: {shown}", flush=True)
            step += 1
    return history


def evaluate(vae, images):
    """Test loss parts in eval mode (z = mu, c = softmax(logits / tau)), and the posteriors (NumPy)."""
    totals, means, code_probs = {}, [], []
    vae.eval()
    for start in range(0, len(images), EVAL_BATCH):
        x = backend.to_device(images[start:start + EVAL_BATCH], vae.device)
        output = vae(x)
        _, parts = vae.loss(output, x)
        for name, value in parts.items():
            totals[name] = totals.get(name, 0.0) + value * len(x)
        if output.mu is not None:
            means.append(backend.to_numpy(output.mu))
        if output.code_logits is not None:
            logits = backend.to_numpy(output.code_logits)
            probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
            code_probs.append(probs / probs.sum(axis=-1, keepdims=True))
    vae.train()
    vae.clear_saved()
    parts = {name: total / len(images) for name, total in totals.items()}
    return parts, (np.concatenate(means) if means else None), (np.concatenate(code_probs) if code_probs else None)


def category_table(code_probs, labels, categories):
    """counts[k, d]: test images of digit d whose first code's most likely category is k."""
    assigned = code_probs[:, 0].argmax(axis=1)
    counts = np.zeros((categories, 10), dtype=np.int64)
    np.add.at(counts, (assigned, labels), 1)
    return counts


# --------------------------------------------------------------------------- figures
def _save(fig, path):
    fig.savefig(path, dpi=FIGURE_DPI)
    plt.close(fig)


def plot_losses(history, path):
    names = [n for n in LOSS_PARTS if np.isfinite(history[n]).any()]
    show_temperature = np.isfinite(history["temperature"]).any()
    panels = len(names) + show_temperature
    fig, axes = plt.subplots(1, panels, figsize=(3.2 * panels, 2.8), squeeze=False)
    window = max(1, len(history["step"]) // 40)
    for ax, name in zip(axes[0], names):
        ax.plot(history["step"], history[name], color="0.75", linewidth=0.7)
        ax.plot(history["step"], moving_average(history[name], window), color="tab:blue", linewidth=1.5)
        ax.set_title(name.replace("_", " "), fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    if show_temperature:
        axes[0, -1].plot(history["step"], history["temperature"], color="tab:red")
        axes[0, -1].set_title("Gumbel-softmax temperature", fontsize=10)
        axes[0, -1].set_xlabel("step")
        axes[0, -1].grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, path)


def _two_dims(means):
    """The posterior means in 2-D: themselves for D <= 2, else their two principal components."""
    if means.shape[1] <= 2:
        return means if means.shape[1] == 2 else np.column_stack([means[:, 0], np.zeros(len(means))]), ("z1", "z2")
    centred = means - means.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return centred @ vt[:2].T, ("principal component 1", "principal component 2")


def plot_latent_space(means, labels, tints, path):
    points, axis_names = _two_dims(means)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6))
    scatter = axes[0].scatter(points[:, 0], points[:, 1], c=labels, cmap="tab10", vmin=-0.5, vmax=9.5, s=5)
    fig.colorbar(scatter, ax=axes[0], ticks=range(10), label="digit")
    axes[0].set_title("posterior means, coloured by digit")
    axes[1].set_facecolor("black")
    axes[1].scatter(points[:, 0], points[:, 1], c=np.clip(tints, 0, 1), s=5)
    axes[1].set_title("the same points, in each digit's tint")
    for ax in axes:
        ax.set_xlabel(axis_names[0])
        ax.set_ylabel(axis_names[1])
    fig.tight_layout()
    _save(fig, path)


def plot_category_digits(counts, path):
    fractions = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(5.5, 0.35 * len(counts) + 1.5))
    ax.imshow(fractions, cmap="Blues", vmin=0, vmax=1, aspect="auto")
    for k, d in zip(*np.nonzero(counts)):
        ax.text(d, k, counts[k, d], ha="center", va="center", fontsize=6,
                color="white" if fractions[k, d] > 0.5 else "black")
    ax.set_xticks(range(10))
    ax.set_yticks(range(len(counts)))
    ax.set_xlabel("digit")
    ax.set_ylabel("category (most likely)")
    ax.set_title("test digits per category of the first code", fontsize=10)
    fig.tight_layout()
    _save(fig, path)


def category_samples(vae, rng, per_row=10):
    """Row k: samples whose first code is category k; the Gaussian and the other codes random."""
    codes, categories = vae.categorical_shape
    first = np.repeat(np.arange(categories), per_row)
    others = rng.integers(0, categories, (len(first), codes - 1))
    code = np.column_stack([first, others])
    z = rng.standard_normal((len(first), vae.gaussian_dim)) if vae.gaussian_dim else None
    return vae.sample(len(first), z=z, code=code), per_row


def steering_images(vae, rng):
    """(images, images per row): latent values chosen by hand.

    Gaussian, D = 2: a grid over (z1, z2). Gaussian, D > 2: row j traverses z_j, the others 0.
    Both: row k fixes the first code at category k and traverses z1 (the other dims 0).
    Categorical: row k blends the first code from category k to k + 1 (relaxed codes).
    """
    d = vae.gaussian_dim
    codes, categories = vae.categorical_shape
    steps = len(TRAVERSAL)
    if vae.gumbel is None:
        if d == 2:
            z = np.stack(np.meshgrid(TRAVERSAL, TRAVERSAL[::-1]), axis=-1).reshape(-1, 2)
        else:
            z = np.zeros((d * steps, d))
            z[np.arange(d * steps), np.repeat(np.arange(d), steps)] = np.tile(TRAVERSAL, d)
        return vae.sample(len(z), z=z), steps
    rest = rng.integers(0, categories, (1, codes - 1))
    if d:
        z = np.zeros((categories * steps, d))
        z[:, 0] = np.tile(TRAVERSAL, categories)
        code = np.column_stack([np.repeat(np.arange(categories), steps), np.repeat(rest, categories * steps, 0)])
        return vae.sample(len(z), z=z, code=code), steps
    blend = np.linspace(0, 1, steps)[None, :, None]
    start = one_hot(np.arange(categories), categories)[:, None]
    end = one_hot((np.arange(categories) + 1) % categories, categories)[:, None]
    first = ((1 - blend) * start + blend * end).reshape(-1, 1, categories)
    others = np.repeat(one_hot(rest, categories), len(first), axis=0)
    return vae.sample(len(first), code=np.concatenate([first, others], axis=1)), steps


def write_figures(vae, history, test, labels, tints, means, code_probs, out, rng):
    plot_losses(history, out / "losses.png")
    save_image_grid(vae.sample(64, rng=rng), out / "samples.png", nrow=8, scale=2)
    shown = backend.to_device(test[:16], vae.device)
    pairs = np.stack([backend.to_numpy(shown), backend.to_numpy(vae.reconstruct(shown))])
    rows = pairs.reshape(2, 2, 8, *pairs.shape[2:]).transpose(1, 0, 2, 3, 4, 5).reshape(-1, *pairs.shape[2:])
    save_image_grid(rows, out / "reconstructions.png", nrow=8, scale=2)
    if means is not None:
        plot_latent_space(means, labels, tints, out / "latent_space.png")
    if code_probs is not None:
        images, per_row = category_samples(vae, rng)
        save_image_grid(images, out / "categories.png", nrow=per_row, scale=2)
        plot_category_digits(category_table(code_probs, labels, vae.categorical_shape[1]),
                             out / "category_digits.png")
    images, per_row = steering_images(vae, rng)
    save_image_grid(images, out / "steering.png", nrow=per_row, scale=2)


# --------------------------------------------------------------------------- main
def check_options(args):
    """One-line usage errors for numbers that cannot work, before any data is read."""
    at_least(1, epochs=args.epochs, batch_size=args.batch_size, max_images=args.max_images, latent_dim=args.latent_dim,
             categorical_dims=args.categorical_dims, width=args.width, log_every=args.log_every)
    at_least(2, categories=args.categories)
    at_least(16, test_images=args.test_images)   # reconstructions.png shows 16 test digits
    positive(lr=args.lr, temperature=args.temperature, min_temperature=args.min_temperature)
    if args.temperature < args.min_temperature:   # max(floor, ...) would train at the floor throughout
        raise UsageError(f"--temperature {args.temperature:g} is below --min-temperature {args.min_temperature:g}, "
                         f"which the annealed temperature never goes under; lower --min-temperature too")
    at_least(0, anneal_rate=args.anneal_rate, kl_weight=args.kl_weight,
             categorical_kl_weight=args.categorical_kl_weight)


def main(argv=None):
    """The command line: trains and writes the run folder (see run); 0, 2 after a one-line error, or 130 after
    Ctrl-C."""
    args = build_parser().parse_args(argv)
    try:
        check_options(args)
        check_device(args.device)
        check_new_run(args.out, args.overwrite, resumable=False)
        run(args)
    except CLI_ERRORS as error:
        return fail("vae_colored_mnist", error)
    except KeyboardInterrupt:   # nothing to continue from: the run folder is written only at the end
        return interrupted("vae_colored_mnist", None, args.epochs)
    return 0


def run(args):
    """Train, evaluate, write the figures, the checkpoint and metrics.json into args.out; returns the metrics."""
    rng = np.random.default_rng(args.seed)
    train_images, test, labels, tints = load_data(args, rng)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"coloured MNIST ({args.colors} colours): {len(train_images)} training and {len(test)} test images",
          flush=True)
    vae = VAE(args.latent, latent_dim=args.latent_dim, categories=args.categories,
              categorical_dims=args.categorical_dims, image_size=28, channels=3, width=args.width,
              temperature=args.temperature, hard=args.hard, kl_weight=args.kl_weight,
              categorical_kl_weight=args.categorical_kl_weight, rng=rng).to(args.device)
    optimizer = Adam(vae.parameters(), lr=args.lr)
    start = time.perf_counter()
    history = train(vae, optimizer, train_images, args, rng)
    train_seconds = time.perf_counter() - start
    test_parts, means, code_probs = evaluate(vae, test)
    if not all(np.isfinite(value) for value in test_parts.values()):   # the last updates broke the weights
        raise FloatingPointError(f"training ended with a non-finite test loss {test_parts}; nothing was written to "
                                 f"{out}; lower --lr")
    metrics = {"latent": args.latent, "steps": len(history["step"]), "train_seconds": round(train_seconds, 1),
               "images_per_second": round(len(history["step"]) * args.batch_size / train_seconds, 1),
               "test": {name: round(value, 3) for name, value in test_parts.items()},
               "final_temperature": vae.temperature}
    if code_probs is not None:
        counts = category_table(code_probs, labels, args.categories)
        # purity: the share of test digits that are their category's most common digit
        metrics["category_purity"] = round(float(counts.max(axis=1).sum() / counts.sum()), 4)
        metrics["categories_used"] = int((counts.sum(axis=1) > 0).sum())
    if args.overwrite:   # the old run's files go only now, so a run that fails keeps them; some figures are
        remove_old_run(out, RUN_FILES)   # written for one --latent only and would otherwise stay from the old run
    write_figures(vae, history, test, labels, tints, means, code_probs, out, rng)
    save_checkpoint(out / "checkpoint.npz", model=vae.state_dict(), optimizer=optimizer.state_dict(),
                    config=vars(args), history=history, metrics=metrics)
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    print(f"test (eval mode): {metrics['test']}; {metrics['train_seconds']} s of training; wrote {out}")
    return metrics


if __name__ == "__main__":
    sys.exit(main())
