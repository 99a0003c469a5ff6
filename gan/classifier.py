"""A small MNIST classifier trained with nnbox, used as the feature network of digit FID / IS.

FID's Inception network was trained on ImageNet photographs; on 28x28 digits its features say
little. The usual digit measure uses a classifier of digits instead: its penultimate activations
as FID/KID features and its softmax for the Inception Score (at most 10 for ten classes).

    python examples/train_mnist_classifier.py --data ../shared/data/mnist --out mnist_classifier.npz
    extractor = ClassifierFeatures.from_file("mnist_classifier.npz")
    extractor.features(images)        # (N, 128), images (N, 1 or 3, H, W) in [-1, 1] (resized to 28x28)
    extractor.probabilities(images)   # (N, 10)
"""
import numpy as np

from layers import Conv2d, Linear, MaxPool2d, ReLU
from nnbox.backend import get_array_module, to_device, to_numpy
from nnbox.module import Module

MNIST_SIZE = 28
FEATURE_DIM = 128


class MNISTClassifier(Module):
    """conv 3x3 (32) -> ReLU -> max pool 2 -> conv 3x3 (64) -> ReLU -> max pool 2 -> linear 128 -> ReLU
    -> linear 10 (logits).

    Shape:
        x: (N, 1, 28, 28) in [-1, 1] -> logits (N, 10); `features(x)`: the 128 activations before the
        last layer. 28 -> 28 (conv, padding 1) -> 14 (pool) -> 14 -> 7: the flattened map is 64 * 7 * 7.

    Backward runs the layers in reverse; the flatten between the convolutions and the linear
    layers is a reshape, undone on the gradient.
    """

    def __init__(self, rng=0, dtype=np.float32):
        super().__init__()
        rng = np.random.default_rng(rng)
        self.conv1 = Conv2d(1, 32, 3, padding=1, rng=rng, dtype=dtype)
        self.relu1 = ReLU()
        self.pool1 = MaxPool2d(2)
        self.conv2 = Conv2d(32, 64, 3, padding=1, rng=rng, dtype=dtype)
        self.relu2 = ReLU()
        self.pool2 = MaxPool2d(2)
        self.fc1 = Linear(64 * 7 * 7, FEATURE_DIM, rng=rng, dtype=dtype)
        self.relu3 = ReLU()
        self.fc2 = Linear(FEATURE_DIM, 10, rng=rng, dtype=dtype)

    def features(self, x):
        if x.ndim != 4 or x.shape[1:] != (1, MNIST_SIZE, MNIST_SIZE):
            raise ValueError(f"MNISTClassifier expects (N, 1, 28, 28) images, got shape {tuple(x.shape)}")
        h = self.pool2(self.relu2(self.conv2(self.pool1(self.relu1(self.conv1(x))))))
        self._map_shape = h.shape
        return self.relu3(self.fc1(h.reshape(len(h), -1)))

    def forward(self, x):
        return self.fc2(self.features(x))

    def backward(self, dlogits):
        d = self.fc1.backward(self.relu3.backward(self.fc2.backward(dlogits)))
        d = d.reshape(self._map_shape)
        return self.conv1.backward(self.relu1.backward(self.pool1.backward(
            self.conv2.backward(self.relu2.backward(self.pool2.backward(d))))))


def to_mnist_input(images):
    """Images (N, C, H, W) in [-1, 1] -> (N, 1, 28, 28): channels averaged, bilinear resize when needed."""
    from .inception import resize_bilinear
    if images.ndim != 4:
        raise ValueError(f"expected images (N, C, H, W), got shape {tuple(images.shape)}")
    if images.shape[1] != 1:
        images = images.mean(axis=1, keepdims=True)
    if images.shape[2:] != (MNIST_SIZE, MNIST_SIZE):
        images = resize_bilinear(images, (MNIST_SIZE, MNIST_SIZE))
    return images.astype(np.float32, copy=False)


def softmax(logits):
    xp = get_array_module(logits)
    e = xp.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


class ClassifierFeatures:
    """FeatureExtractor (gan.metrics) from an MNISTClassifier: 128-dim features, 10-way probabilities."""

    name = "mnist"

    def __init__(self, model, batch_size=500, device="cpu"):
        self.model = model.to(device).eval()
        self.batch_size = int(batch_size)
        self.device = device

    @classmethod
    def from_file(cls, path, batch_size=500, device="cpu"):
        """Load weights saved by examples/train_mnist_classifier.py (nnbox.serialization.save_state)."""
        from pathlib import Path

        from nnbox.serialization import load_state
        if not Path(path).is_file():
            raise FileNotFoundError(f"no MNIST classifier weights at {path}: train them with "
                                    f"`python examples/train_mnist_classifier.py --data ../shared/data/mnist --out {path}`")
        model = MNISTClassifier()
        try:
            model.load_state_dict(load_state(path))
        except (KeyError, ValueError) as error:   # another network's weights (a GAN's checkpoint, ...)
            raise ValueError(f"{path} does not hold an MNIST classifier's weights ({error}); train them with "
                             f"`python examples/train_mnist_classifier.py --data ../shared/data/mnist --out "
                             f"{path}`") from error
        return cls(model, batch_size, device)

    def _batches(self, images, fn):
        out = []
        for i in range(0, len(images), self.batch_size):
            x = to_mnist_input(to_device(images[i:i + self.batch_size], self.device))
            out.append(to_numpy(fn(x)).astype(np.float64))
            self.model.clear_saved()
        return np.concatenate(out)

    def features(self, images):
        return self._batches(images, self.model.features)

    def probabilities_from_features(self, features):
        w = to_numpy(self.model.fc2.weight.data).astype(np.float64)
        b = to_numpy(self.model.fc2.bias.data).astype(np.float64)
        return softmax(np.asarray(features, dtype=np.float64) @ w.T + b)

    def probabilities(self, images):
        return self.probabilities_from_features(self.features(images))
