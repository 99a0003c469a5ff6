"""Train the small MNIST classifier whose features measure digit GANs (FID/KID/IS with --features mnist).

    python examples/train_mnist_classifier.py --data ../shared/data/mnist --out mnist_classifier.npz
    python -m gan.evaluate runs/mnist_latent/normal --real ../shared/data/mnist --features mnist \\
        --classifier-weights mnist_classifier.npz            # a run of examples/mnist_latent_study.py

Adam, cross-entropy, a few epochs; prints the test accuracy (about 99% after 2 epochs) and saves the
weights with nnbox.serialization.save_state (an .npz: no pickle).
"""
import argparse
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

from _cli import (CLI_ERRORS, MNIST_HINT, UsageError, at_least, fail, interrupted, load_dataset,  # noqa: E402
                  positive)
from gan.classifier import MNISTClassifier  # noqa: E402
from nnbox.datasets import load_mnist  # noqa: E402
from nnbox.losses import CrossEntropyLoss  # noqa: E402
from nnbox.optim import Adam  # noqa: E402
from nnbox.serialization import save_state  # noqa: E402


def accuracy(model, images, labels, batch_size=1000):
    model.eval()
    correct = 0
    for i in range(0, len(images), batch_size):
        correct += int((model(images[i:i + batch_size]).argmax(axis=1) == labels[i:i + batch_size]).sum())
        model.clear_saved()
    model.train()
    return correct / len(images)


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="folder with the four MNIST IDX files (default: cache/download)")
    parser.add_argument("--no-download", dest="download", action="store_false", help="never download MNIST")
    parser.add_argument("--out", default="mnist_classifier.npz", help="where the weights go")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--max-images", type=int, default=None, help="train on a subset (quick runs)")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def train(args, train_x, train_y, test_x, test_y):
    """Adam on the cross-entropy, printing the test accuracy after each epoch; saves the weights to args.out."""
    rng = np.random.default_rng(args.seed)
    model = MNISTClassifier(rng=rng)
    loss_fn = CrossEntropyLoss()
    optimizer = Adam(model.parameters(), lr=args.lr)
    for epoch in range(1, args.epochs + 1):
        start, order, losses = time.perf_counter(), rng.permutation(len(train_x)), []
        for i in range(0, len(order) - args.batch_size + 1, args.batch_size):
            batch = order[i:i + args.batch_size]
            model.zero_grad()
            losses.append(float(loss_fn(model(train_x[batch]), train_y[batch])))
            model.backward(loss_fn.backward())
            optimizer.step()
        print(f"epoch {epoch}: loss {np.mean(losses):.4f}, test accuracy {accuracy(model, test_x, test_y):.4f} "
              f"({time.perf_counter() - start:.0f} s)", flush=True)
    save_state(args.out, model.state_dict())


def check_out_file(out):
    """A UsageError before training when --out cannot be written: a folder, or in a missing folder."""
    out = Path(out)
    if out.is_dir():
        raise UsageError(f"--out {out} is a folder; give the file to write, e.g. --out {out / 'mnist_classifier.npz'}")
    if not out.parent.is_dir():
        raise UsageError(f"--out {out}: the folder {out.parent} does not exist; create it or choose another path")


def main(argv=None):
    """The command line: trains and writes --out; 0, 2 after a one-line error, or 130 after Ctrl-C."""
    args = build_parser().parse_args(argv)
    try:
        at_least(1, epochs=args.epochs, batch_size=args.batch_size, max_images=args.max_images)
        positive(lr=args.lr)
        check_out_file(args.out)
        train_x, train_y = load_dataset(load_mnist, args.data, split="train", download=args.download, hint=MNIST_HINT)
        test_x, test_y = load_dataset(load_mnist, args.data, split="test", download=args.download, hint=MNIST_HINT)
        if args.max_images:
            train_x, train_y = train_x[:args.max_images], train_y[:args.max_images]
        if len(train_x) < args.batch_size:
            raise UsageError(f"{len(train_x)} training images is less than one batch of {args.batch_size}; "
                             f"lower --batch-size or raise --max-images")
        train(args, train_x, train_y, test_x, test_y)
    except CLI_ERRORS as error:
        return fail("train_mnist_classifier", error)
    except KeyboardInterrupt:   # the weights are written (atomically) only after the last epoch
        return interrupted("train_mnist_classifier", None, args.epochs, resumable=False)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
