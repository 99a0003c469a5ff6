"""What the example programs share on the command line: a mistake is one line on stderr, exit status 2.

    from _cli import CLI_ERRORS, MNIST_HINT, at_least, fail, load_dataset, positive

    def main(argv=None):
        args = build_parser().parse_args(argv)
        try:
            at_least(1, batch_size=args.batch_size, epochs=args.epochs)
            positive(lr=args.lr)
            images, labels = load_dataset(load_mnist, args.data, download=args.download, hint=MNIST_HINT)
            ...
        except CLI_ERRORS as error:
            return fail("my_program", error)
        return 0
"""
import pickle
import re
import sys
from pathlib import Path

from gan.cli import fail  # noqa: F401  (the examples import it from here, with the rest)
from gan.trainer import CHECKPOINT_NAME, EPOCH_GRID, SAMPLES_DIR, NonFiniteLossError
from nnbox import backend

# What a command line expects to go wrong, shown without a traceback: a bad option or bad data (ValueError:
# UsageError, nnbox.serialization.SerializationError, nnbox.datasets.ChecksumError), a missing file or no
# network (OSError: urllib's URLError), a refused pickle (nnbox.datasets.UnsafePickleError), a training run
# that diverged (NonFiniteLossError; FloatingPointError from gan.vae and vae_colored_mnist). TypeError,
# AttributeError, KeyError and the like keep their traceback; a programming error that raises a ValueError (a
# layer's shape check) shows as one line too, the price of showing every bad setting as one: set
# NNBOX_TRACEBACK=1 to see the traceback above that line.
CLI_ERRORS = (ValueError, OSError, pickle.UnpicklingError, NonFiniteLossError, FloatingPointError)

MNIST_HINT = "pass --data <the folder with MNIST's four IDX files>, e.g. --data ../shared/data/mnist"
CIFAR10_HINT = "pass --data <cifar-10-batches-bin, or the folder holding it>, e.g. --data ../shared/data/cifar-10-batches-bin"
LFW_HINT = "pass --data <LFW's folder>, e.g. --data ../shared/data/lfw-deepfunneled"


class UsageError(ValueError):
    """A command line that cannot work (shown as one line, without a traceback)."""


def check_new_run(out, overwrite, checkpoint_name=CHECKPOINT_NAME, resumable=True):
    """A UsageError, before any data is loaded, when `out` already holds a run and --overwrite was not
    given; `resumable`: the program has --resume (the message offers it)."""
    out = Path(out)
    if (out / checkpoint_name).exists() and not overwrite:
        fix = f"continue it with --resume {out}, or pass --overwrite" if resumable else \
            "pass --overwrite to replace it, or choose another --out"
        raise UsageError(f"{out} already holds a run: {fix}")


EPOCH_FIGURE = EPOCH_GRID   # the per-epoch figures' names, f"epoch_{epoch:03d}.png", as gan.trainer's grids
EVALUATION_FIGURES = ("nearest_l2", "nearest_ssim", "interp_linear", "interp_slerp")   # gan.evaluate's .png
GAN_RUN_GRIDS = {SAMPLES_DIR: EPOCH_FIGURE}


def gan_run_files():
    """What a GANTrainer run (gan.trainer, gan.report) and `python -m gan.evaluate` on it write into a run's
    folder, besides the epoch grids (GAN_RUN_GRIDS): --overwrite removes these, and only these. (A function:
    gan.report imports matplotlib, 0.25 s that a program which never plots should not pay at start.)"""
    from gan.evaluate import EVAL_DIR, METRICS_NAME, REAL_IMAGES_NAME
    from gan.report import GIF_NAME, PLOTS_DIR, REPORT_NAME
    from gan.visualize import PLOTS
    return (CHECKPOINT_NAME, "config.json", "history.csv", "history.json", "epochs.json", GIF_NAME, REPORT_NAME,
            METRICS_NAME, REAL_IMAGES_NAME, *(f"{PLOTS_DIR}/{name}.png" for name in PLOTS),
            *(f"{EVAL_DIR}/{name}.png" for name in EVALUATION_FIGURES))


def remove_old_run(out, names, numbered=None):
    """--overwrite: delete the files an earlier run of the program wrote in `out`, so that none of them outlives
    the new run (a shorter run would show the old run's later epoch grids): `names`, paths relative to `out`,
    and in each folder of `numbered` ({folder: regular expression}) the files whose whole name matches; then
    the folders below `out` that this left empty. Nothing else is touched: a user's own files in `out` stay.
    Returns the files removed."""
    out = Path(out)
    old = [out / name for name in names]
    for folder, pattern in (numbered or {}).items():
        if (out / folder).is_dir():
            old += [path for path in (out / folder).iterdir() if re.fullmatch(pattern, path.name)]
    old = [path for path in old if path.is_file()]
    for path in old:
        path.unlink()
    for folder in {path.parent for path in old} - {out}:   # an old run's evaluation/ must not stay, even empty
        if not any(folder.iterdir()):
            folder.rmdir()
    return old


def interrupted(program, run_dir, epochs, checkpoint_name=CHECKPOINT_NAME, resumable=True):
    """Ctrl-C: one line on stderr saying what is kept and how to continue, instead of a traceback;
    returns the exit status, 130 (128 + SIGINT, as shells report it). `run_dir`: the run's folder, or
    None when there is nothing to continue from (training had not started, or the program has no --resume).
    `resumable` False, for a program without --resume: the line says which folder keeps the checkpoint
    instead, or, with none there, that nothing was written."""
    kept = "" if resumable else "; nothing was written"
    if run_dir is not None and (Path(run_dir) / checkpoint_name).exists():   # written atomically: never half a file
        kept = "; the checkpoint of the last complete epoch is kept" + (
            f": continue with python examples/{program}.py --resume {run_dir} --epochs {epochs}" if resumable
            else f" in {run_dir}")
    print(f"{program}: interrupted{kept}", file=sys.stderr)
    return 130


def at_least(minimum, **options):
    """A UsageError unless every option given (name=value; None: not given) is >= minimum."""
    for name, value in options.items():
        if value is not None and not value >= minimum:   # `not >=` also refuses NaN
            raise UsageError(f"--{name.replace('_', '-')} must be >= {minimum}, got {value}")


def positive(**options):
    """A UsageError unless every option given (name=value; None: not given) is > 0."""
    for name, value in options.items():
        if value is not None and not value > 0:
            raise UsageError(f"--{name.replace('_', '-')} must be > 0, got {value}")


def probability(**options):
    """A UsageError unless every option given (name=value; None: not given) is in [0, 1)."""
    for name, value in options.items():
        if value is not None and not 0 <= value < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be in [0, 1), got {value}")


def check_device(device):
    """--device gpu without a usable CuPy: nnbox.backend's message as a UsageError, before any work."""
    if device == "gpu":
        try:
            backend.require_cupy()
        except RuntimeError as error:
            raise UsageError(str(error)) from error


def load_dataset(load, *args, download, hint, **kwargs):
    """`load(*args, download=download, **kwargs)`, where data that is missing (with --no-download, or in a
    folder given with --data, where the loaders never download) or that cannot be downloaded is a
    UsageError saying where the loader looked and `hint`, how to fix it, with the loader's other way out
    in flags: leave out --no-download, or leave out --data to use the cache (or a download)."""
    try:
        return load(*args, download=download, **kwargs)
    except FileNotFoundError as missing:
        advice, fix = str(missing), hint      # the loader's advice to Python callers, to say in flags
        if "download=True" in advice:         # not in the cache: a download would fetch it
            fix += ", or leave out --no-download"
        elif "data_dir=None" in advice:       # not in the --data folder: the cache would be tried
            fix += ", or leave out --data to use the cache" + (" (or a download)" if download else "")
        raise UsageError(f"{_looked(missing)}; {fix}") from missing
    except OSError as error:          # the download failed: no network (URLError), refused, timed out
        try:
            load(*args, download=False, **kwargs)   # a FileNotFoundError: it says where the loader looked
        except FileNotFoundError as missing:
            raise UsageError(f"{_looked(missing)}, and downloading it failed ({error}); {hint}") from error
        raise


def _looked(missing):
    """The loader's message without its advice to Python callers ("pass data_dir=..., or download=True")."""
    return str(missing).split("; pass data_dir=")[0]
