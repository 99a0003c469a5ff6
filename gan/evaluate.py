"""Evaluate a trained GAN run: measures, nearest training neighbours, latent interpolations.

    python -m gan.evaluate RUN_DIR --real DATA [--features mnist|inception|pixels]
                           [--inception-weights PATH] [--classifier-weights PATH] [--n 1000]

RUN_DIR is a folder written by gan.trainer (checkpoint.npz holds the generator and its config).
DATA is the training data to compare with: a folder of images (LFW's person folders, or any folder
of JPEG/PNG files), a folder with MNIST's IDX files, a .npy array (uint8 NHWC or float NCHW in
[-1, 1]), or the word "synthetic" (nnbox.synthetic_faces, as the faces example falls back to).

It generates N images (latents from --seed; G in the mode the trainer drew its samples with), and
computes:
  * SWD (always; no network), in gan.metrics;
  * FID and KID with the chosen features: "pixels" (raw pixels, a baseline), "inception" (FID's
    Inception-v3; needs --inception-weights pt_inception-2015-12-05-6726825d.pth), "mnist" (the
    nnbox MNIST classifier of gan.classifier; needs --classifier-weights, trained by
    examples/train_mnist_classifier.py);
  * the Inception Score when the feature network classifies (inception, mnist);
  * memorisation: the share of generated images whose nearest training image (pixel L2) is closer
    than --memorization-threshold (RMS difference on [-1, 1]).
It writes RUN_DIR/metrics.json, RUN_DIR/evaluation/{nearest_l2,nearest_ssim,interp_linear,interp_slerp}.png,
refreshes RUN_DIR/plots/ from the history, and adds an "Evaluation" section to RUN_DIR/report.html
(replacing the one of an earlier evaluation). A bad RUN_DIR, DATA or weights file, or --features
without its weights, is one line on stderr and exit status 2; --features is checked before anything
is loaded.
"""
import argparse
import html
import io
import json
import re
import sys
import time
from pathlib import Path

import numpy as np

from nnbox.backend import to_device, to_numpy
from nnbox.serialization import SerializationError, load_npy

from . import metrics
from .cli import fail
from .history import atomic_write_bytes, atomic_write_text

EVAL_DIR = "evaluation"
REAL_IMAGES_NAME = "real_images.npy"   # a run's training images (uint8 NHWC) when no data folder names them
METRICS_NAME = "metrics.json"
SECTION_START, SECTION_END = "<!-- gan.evaluate -->", "<!-- /gan.evaluate -->"


# --------------------------------------------------------------------------- the run
def load_generator(run_dir, device="cpu"):
    """(generator, TrainConfig) from RUN_DIR/checkpoint.npz; the generator is rebuilt from the saved config."""
    from nnbox.serialization import load_checkpoint

    from .trainer import CHECKPOINT_NAME, TrainConfig, build_models
    path = Path(run_dir) / CHECKPOINT_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: RUN_DIR must be a gan.trainer run folder with a saved epoch")
    state = load_checkpoint(path)
    config = TrainConfig.from_dict(state["trainer"]["config"])
    generator, _ = build_models(config)
    generator.load_state_dict(state["generator"])
    return generator.to(device), config


def generate(generator, config, n, seed=0, batch_size=64, device="cpu"):
    """n images (NumPy float32 NCHW in [-1, 1]) from latents drawn with `seed`.

    G runs in `config.sample_mode` ("train": BatchNorm normalises each batch of `batch_size`, as in
    the trainer's grids; its running averages are restored afterwards), batch by batch.
    """
    from .tricks import sample_latent
    z = sample_latent(n, generator.latent_dim, config.latent_kind, np.random.default_rng(seed))
    with generator.without_side_effects(train=config.sample_mode == "train"):
        images = [to_numpy(generator(to_device(z[i:i + batch_size], device))) for i in range(0, n, batch_size)]
    return np.concatenate(images).astype(np.float32), z


# --------------------------------------------------------------------------- the real data
def _to_float_nchw(images):
    images = np.asarray(images)
    if images.dtype == np.uint8 and images.ndim in (3, 4):
        if images.ndim == 3:
            images = images[..., None]
        return (images.transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1.0)
    if images.ndim != 4 or not np.issubdtype(images.dtype, np.floating):
        raise ValueError(f"real images must be uint8 (N, H, W[, C]) or float (N, C, H, W) in [-1, 1], "
                         f"got {images.dtype} {images.shape}")
    return images.astype(np.float32)


def _fit(images, size, channels):
    """Resize to size x size (averaging blocks when both sides shrink by one integer factor, else
    bilinear; a non-square image is stretched to the square) and match channels."""
    from .inception import resize_bilinear
    h, w = images.shape[2:]
    if (h, w) != (size, size):
        if h == w and h % size == 0:
            f = h // size
            images = images.reshape(len(images), images.shape[1], size, f, size, f).mean(axis=(3, 5))
        else:
            images = resize_bilinear(images, (size, size))
    if images.shape[1] != channels:
        if images.shape[1] == 1:
            images = np.repeat(images, channels, axis=1)
        elif channels == 1:
            images = images.mean(axis=1, keepdims=True)
        else:
            raise ValueError(f"cannot turn {images.shape[1]}-channel real images into {channels} channels")
    return np.ascontiguousarray(images, dtype=np.float32)


def save_real_images(images, path):
    """Write training images as uint8 NHWC .npy (atomically), for a later `--real path`: float NCHW
    in [-1, 1] are converted, uint8 NHWC written as they are. Returns the path."""
    from .visualize import to_uint8_images
    images = np.asarray(images)
    if images.dtype != np.uint8:
        images = to_uint8_images(images)[..., :images.shape[1]]
    buffer = io.BytesIO()
    np.save(buffer, images, allow_pickle=False)
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)


def load_real_images(spec, image_size, channels, seed=0):
    """The training images named by `spec` as float32 NCHW in [-1, 1], at the generator's size and channels.

    Returns (images, description).
    """
    from nnbox import datasets
    if spec == "synthetic":
        from nnbox.synthetic_faces import synthetic_faces
        raw, what = synthetic_faces(13233, image_size, rng=seed), "synthetic cartoon faces"
    else:
        path = Path(spec).expanduser()
        if path.is_file() and path.suffix == ".npy":
            raw, what = _read_real_npy(path), f"the array {path}"
        elif not path.is_dir():
            raise FileNotFoundError(f"--real {spec}: not a folder, a .npy file or 'synthetic'")
        elif any(path.glob("train-images-idx3-ubyte*")) or any(path.glob("mnist/train-images-idx3-ubyte*")):
            try:
                raw, _ = datasets.load_mnist(path, split="train", download=False, progress=False)
            except FileNotFoundError:   # load_mnist's advice is for Python callers (data_dir=...)
                raise FileNotFoundError(f"--real {spec}: MNIST's training images are there, but not its training "
                                        f"labels (train-labels-idx1-ubyte[.gz]), which the MNIST reader needs "
                                        f"too: copy that file beside them") from None
            what = f"MNIST train from {path}"
        else:
            try:
                folder = datasets.load_lfw(path, image_size=image_size, download=False, progress=False)
                what = f"LFW from {folder.root}"
            except (OSError, ValueError):
                from nnbox.data import ImageFolder, Resize
                folder = ImageFolder(path, transform=[Resize(image_size)], progress=False)
                what = f"the images under {path}"
            raw = folder.images
    try:
        images = _fit(_to_float_nchw(raw), image_size, channels)
    except ValueError as error:
        raise ValueError(f"--real {spec}: {error}") from None
    return images, f"{len(images)} images: {what}"


def _read_real_npy(path):
    """The array in the --real .npy file; a ValueError that says what it holds instead, and what to do."""
    try:
        return load_npy(path)
    except SerializationError as error:
        raise ValueError(f"--real: {error}; a run's {REAL_IMAGES_NAME} is written by examples/faces_gan.py, "
                         f"cifar_gan.py or mnist_latent_study.py: delete it and run that program again; your own "
                         f"images: save them as one uint8 (N, H, W[, C]) array with np.save; or give --real the "
                         f"training data's folder") from None


# --------------------------------------------------------------------------- features
def build_extractor(kind, inception_weights=None, classifier_weights=None, device="cpu", batch_size=None,
                    image_size=32):
    """The FeatureExtractor named by --features.

    "pixels" average-pools the images by image_size // 16 first (to 16 x 16 for 32, 48 and 64 px:
    768 features for RGB, 256 for grey; 28 px MNIST is not pooled: 784), so that 1,000 images are more
    than the feature dimensions and the covariances stay cheap.
    """
    check_features(kind, inception_weights, classifier_weights)
    if kind == "pixels":
        return metrics.PixelFeatures(pool=max(1, image_size // 16))
    if kind == "inception":
        from .inception import InceptionFeatures
        return InceptionFeatures(inception_weights, batch_size=batch_size or 32, device=device)
    from .classifier import ClassifierFeatures
    return ClassifierFeatures.from_file(classifier_weights, batch_size=batch_size or 500, device=device)


def check_features(kind, inception_weights=None, classifier_weights=None):
    """A ValueError for --features that cannot work: an unknown kind, or a feature network without its weights."""
    if kind == "inception" and inception_weights is None:
        from .inception import FID_WEIGHTS_URL
        raise ValueError(f"--features inception needs --inception-weights PATH: download "
                         f"pt_inception-2015-12-05-6726825d.pth from {FID_WEIGHTS_URL}")
    if kind == "mnist" and classifier_weights is None:
        raise ValueError("--features mnist needs --classifier-weights PATH (train one with "
                         "`python examples/train_mnist_classifier.py --data ../shared/data/mnist`)")
    if kind not in ("pixels", "inception", "mnist"):
        raise ValueError(f"unknown --features {kind!r}: use mnist, inception or pixels")


# --------------------------------------------------------------------------- the evaluation
def evaluate(run_dir, real, features="pixels", n=1000, inception_weights=None, classifier_weights=None,
             seed=0, device="cpu", memorization_threshold=0.1, n_neighbours=16, interp_pairs=4, interp_steps=8,
             kid_subsets=100, is_splits=10, report=True, progress=print):
    """Run every measure and figure for RUN_DIR; returns the metrics dict (also written to metrics.json).
    Features that cannot work (no weights, a missing weights file) fail before the data is read."""
    from .interpolation import save_interpolation_grid
    from .tricks import sample_latent
    check_features(features, inception_weights, classifier_weights)
    run_dir = Path(run_dir)
    started = time.perf_counter()
    generator, config = load_generator(run_dir, device)
    extractor = build_extractor(features, inception_weights, classifier_weights, device, image_size=config.image_size)
    real_images, real_what = load_real_images(real, config.image_size, config.channels, seed=config.seed)
    progress(f"real data: {real_what}")
    fake, _ = generate(generator, config, n, seed=seed, device=device)
    rng = np.random.default_rng([seed, 1])
    m = min(n, len(real_images))
    real_subset = real_images[np.sort(rng.choice(len(real_images), m, replace=False))]
    result = {"run_dir": str(run_dir), "real": real_what, "n_generated": n, "n_real": m, "seed": seed,
              "features": features, "image_size": config.image_size, "channels": config.channels}

    t = time.perf_counter()
    swd = metrics.sliced_wasserstein_distance(real_subset, fake[:m], rng=seed)
    result["swd"] = swd["swd"]
    result["swd_levels"] = {str(k): v for k, v in swd["swd_levels"].items()}
    progress(f"SWD x1e3 {swd['swd']:.2f} ({time.perf_counter() - t:.1f} s)")

    t = time.perf_counter()
    f_real = extractor.features(real_subset)
    f_fake = extractor.features(fake)
    result["fid"] = metrics.frechet_distance(f_real, f_fake)
    result["kid"], result["kid_std"] = metrics.kernel_inception_distance(
        f_real, f_fake, num_subsets=kid_subsets, subset_size=min(1000, m, n), rng=seed)
    if metrics.has_probabilities(extractor):
        from_features = getattr(extractor, "probabilities_from_features", None)
        probs = from_features(f_fake) if from_features else extractor.probabilities(fake)
        result["inception_score"], result["inception_score_std"] = metrics.inception_score(
            probs, splits=min(is_splits, n))
    progress(f"FID ({features}) {result['fid']:.3f}, KID {result['kid']:.5f} +- {result['kid_std']:.5f}"
             + (f", IS {result['inception_score']:.3f}" if "inception_score" in result else "")
             + f" ({time.perf_counter() - t:.1f} s)")

    t = time.perf_counter()
    fraction, rms = metrics.memorization_fraction(fake, real_images, threshold=memorization_threshold)
    result["memorization"] = {"threshold_rms": memorization_threshold, "fraction": fraction,
                              "nearest_rms_min": float(rms.min()), "nearest_rms_median": float(np.median(rms))}
    out = run_dir / EVAL_DIR
    out.mkdir(parents=True, exist_ok=True)
    shown = fake[:n_neighbours]
    idx, dist = metrics.nearest_neighbours(shown, real_images)
    figures = {"nearest_l2": metrics.save_nearest_neighbours_figure(
        shown, real_images, idx[:, 0], out / "nearest_l2.png", metrics.rms_distance(dist[:, 0], shown.shape[1:]),
        label="RMS")}
    if min(config.image_size, config.image_size) >= metrics.SSIM_WINDOW:
        sidx, svalues = metrics.nearest_neighbours_ssim(shown, real_images)
        figures["nearest_ssim"] = metrics.save_nearest_neighbours_figure(
            shown, real_images, sidx, out / "nearest_ssim.png", svalues, label="SSIM")
        result["nearest_ssim_mean"] = float(np.mean(svalues))
    progress(f"memorised (RMS < {memorization_threshold}): {fraction:.1%}; median nearest RMS {np.median(rms):.3f} "
             f"({time.perf_counter() - t:.1f} s)")

    z = sample_latent(2 * interp_pairs, generator.latent_dim, config.latent_kind, np.random.default_rng([seed, 2]))
    z = to_device(z, device)
    for method in ("linear", "slerp"):
        figures[f"interp_{method}"] = save_interpolation_grid(
            generator, z[:interp_pairs], z[interp_pairs:], out / f"interp_{method}.png", interp_steps, method,
            train=config.sample_mode == "train")    # the G that `generate` measured
    if report:   # (plots are part of the report: --no-report writes none)
        figures.update(_refresh_plots(run_dir))
    result["figures"] = {k: str(Path(v).relative_to(run_dir)) for k, v in figures.items()}
    result["seconds"] = time.perf_counter() - started
    atomic_write_text(run_dir / METRICS_NAME, json.dumps(result, indent=2))
    if report:
        add_report_section(run_dir, result)
    return result


def _refresh_plots(run_dir):
    """Loss/accuracy/balance/throughput plots from the run's history (gan.visualize), when it has one."""
    from .report import PLOTS_DIR, load_history
    from .visualize import plot_all
    try:
        history = load_history(run_dir)
    except FileNotFoundError:
        return {}
    return {f"plot_{k}": v for k, v in plot_all(history, Path(run_dir) / PLOTS_DIR).items()} if len(history) else {}


# --------------------------------------------------------------------------- the report
def render_section(run_dir, result):
    from .report import _img, _table
    rows = [{"measure": k, "value": result[k]} for k in
            ("fid", "kid", "kid_std", "inception_score", "inception_score_std", "swd", "nearest_ssim_mean")
            if k in result]
    rows += [{"measure": f"swd at {k} px", "value": v} for k, v in result["swd_levels"].items()]
    mem = result["memorization"]
    rows.append({"measure": f"memorised (nearest RMS < {mem['threshold_rms']})", "value": mem["fraction"]})
    parts = [SECTION_START, "<h2>Evaluation</h2>",
             f"<p>{result['n_generated']} generated images against {result['n_real']} real ones "
             f"({html.escape(result['real'])}); FID/KID features: {html.escape(result['features'])}. "
             f"SWD is x1e3 (Karras et al. 2018). Written by <code>python -m gan.evaluate</code>; "
             f"numbers in metrics.json.</p>",
             _table(rows, ["measure", "value"], ("measure",))]
    captions = {"nearest_l2": "Nearest training image in pixel space (left: generated)",
                "nearest_ssim": "Most similar training image by SSIM (among the 20 nearest by L2)",
                "interp_linear": "Linear latent interpolation (one pair per row)",
                "interp_slerp": "Spherical latent interpolation (one pair per row)"}
    for key, caption in captions.items():
        if key in result["figures"]:
            parts.append(f"<h3>{html.escape(caption)}</h3>{_img(Path(run_dir) / result['figures'][key], key)}")
    parts.append(SECTION_END)
    return "\n".join(parts)


def add_report_section(run_dir, result):
    """Insert (or replace) the evaluation section of RUN_DIR/report.html; builds the report first if missing."""
    run_dir = Path(run_dir)
    path = run_dir / "report.html"
    if not path.is_file():
        from .report import build_report
        try:
            build_report(run_dir)
        except FileNotFoundError:  # no history: a page with the evaluation alone
            atomic_write_text(path, "<!DOCTYPE html><html><head><meta charset='utf-8'></head><body></body></html>")
    page = path.read_text()
    section = render_section(run_dir, result)
    pattern = re.compile(re.escape(SECTION_START) + ".*?" + re.escape(SECTION_END), re.S)
    if pattern.search(page):
        page = pattern.sub(lambda _: section, page)
    elif "</body>" in page:
        page = page.replace("</body>", section + "\n</body>", 1)
    else:
        page += section
    atomic_write_text(path, page)
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m gan.evaluate", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("run_dir", help="a gan.trainer run folder (holds checkpoint.npz)")
    parser.add_argument("--real", required=True, help="training data: an image folder, an MNIST folder, a .npy, or 'synthetic'")
    parser.add_argument("--features", default="pixels", choices=("mnist", "inception", "pixels"),
                        help="the feature network of FID/KID (default pixels)")
    parser.add_argument("--inception-weights", default=None, help="pt_inception-2015-12-05-6726825d.pth")
    parser.add_argument("--classifier-weights", default=None, help="the .npz of examples/train_mnist_classifier.py")
    parser.add_argument("--n", type=int, default=1000, help="images to generate (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the latents and the random subsets")
    parser.add_argument("--device", default="cpu", choices=("cpu", "gpu"))
    parser.add_argument("--memorization-threshold", type=float, default=0.1,
                        help="RMS pixel difference on [-1, 1] below which an image counts as a copy (default 0.1)")
    parser.add_argument("--no-report", action="store_true", help="do not touch report.html")
    args = parser.parse_args(argv)
    if args.n < 2:
        parser.error("--n must be at least 2")
    try:
        result = evaluate(args.run_dir, args.real, features=args.features, n=args.n,
                          inception_weights=args.inception_weights, classifier_weights=args.classifier_weights,
                          seed=args.seed, device=args.device, memorization_threshold=args.memorization_threshold,
                          report=not args.no_report)
    except (OSError, ValueError) as error:     # a bad run folder, --real or weights file
        return fail("gan.evaluate", error)
    print(f"wrote {Path(args.run_dir) / METRICS_NAME} ({result['seconds']:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
