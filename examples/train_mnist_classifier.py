"""Train the small MNIST classifier whose features measure digit GANs (FID/KID/IS with --features mnist).

    python examples/train_mnist_classifier.py --data ../shared/data/mnist --out mnist_classifier.npz
    python -m gan.evaluate runs/mnist_gan --real ../shared/data/mnist --features mnist \
        --classifier-weights mnist_classifier.npz

Adam, cross-entropy, a few epochs; prints the test accuracy (about 99% after 2 epochs) and saves the
weights with nnbox.serialization.save_state (an .npz: no pickle).
"""
import argparse
import os
import time

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")  # before NumPy loads OpenBLAS: docs/performance.md
import numpy as np  # noqa: E402

from gan.classifier import MNISTClassifier
from nnbox.datasets import load_mnist
from nnbox.losses import CrossEntropyLoss
from nnbox.optim import Adam
from nnbox.serialization import save_state


def accuracy(model, images, labels, batch_size=1000):
    model.eval()
    correct = 0
    for i in range(0, len(images), batch_size):
        correct += int((model(images[i:i + batch_size]).argmax(axis=1) == labels[i:i + batch_size]).sum())
        model.clear_saved()
    model.train()
    return correct / len(images)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="folder with the four MNIST IDX files (default: cache/download)")
    parser.add_argument("--out", default="mnist_classifier.npz", help="where the weights go")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--max-images", type=int, default=None, help="train on a subset (quick runs)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    train_x, train_y = load_mnist(args.data, split="train")
    test_x, test_y = load_mnist(args.data, split="test")
    if args.max_images:
        train_x, train_y = train_x[:args.max_images], train_y[:args.max_images]
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
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
