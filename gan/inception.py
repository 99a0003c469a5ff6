"""The Inception-v3 network that FID is defined with, built from nnbox layers, and its weights.

FID (Heusel et al. 2017) is the Frechet distance between the 2048-dim pool features of this exact
network, the TensorFlow "2015-12-05" Inception graph. pytorch-fid ported it to PyTorch, with blocks
that differ from torchvision's Inception3 where the TF graph differs (FIDInceptionA, C, E_1 average
pools ignore padded pixels, count_include_pad=False; FIDInceptionE_2 max-pools), and released the
weights as pt_inception-2015-12-05-6726825d.pth. This module rebuilds that network layer for layer
(BasicConv2d = Conv2d without bias + BatchNorm2d(eps=1e-3) + ReLU) and reads that file with the
restricted reader of gan.torch_weights (no torch needed, no code run).

    net = FIDInceptionV3.from_weights("pt_inception-2015-12-05-6726825d.pth")
    extractor = InceptionFeatures(net, batch_size=32)
    feats = extractor.features(images)          # images float NCHW in [-1, 1], 1 or 3 channels -> (N, 2048)

Input pipeline (pytorch-fid's InceptionV3(resize_input=True, normalize_input=True)): images are
resized to 299x299 bilinearly (align_corners=False) and scaled to [-1, 1]. nnbox images are already
in [-1, 1], and resizing commutes with that affine scaling, so only the resize is done here.
Single-channel images are repeated to 3 channels.
"""
import numpy as np

from layers import AvgPool2d, BatchNorm2d, Conv2d, Linear, MaxPool2d, ReLU
from nnbox.backend import get_array_module, to_numpy
from nnbox.module import Module

from .torch_weights import load_torch_state_dict

FID_WEIGHTS_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                   "pt_inception-2015-12-05-6726825d.pth")
FID_WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
FID_INPUT_SIZE = 299
FEATURE_DIM = 2048
NUM_CLASSES = 1008  # the TF graph's classifier: 1000 ImageNet classes + 8 unused


def _weights_hint():
    return (f"download the pytorch-fid Inception weights {FID_WEIGHTS_NAME} (about 92 MB) from {FID_WEIGHTS_URL} "
            f"and pass its path (--inception-weights PATH)")


# --------------------------------------------------------------------------- resizing
def resize_bilinear(images, size):
    """Bilinear resize of NCHW images to size = (H, W), as torch's interpolate(align_corners=False).

    Output pixel i samples the input at s = (i + 0.5) * in / out - 0.5 (clamped at 0), between
    pixels floor(s) and floor(s) + 1 (clamped at the last one). No antialiasing, like pytorch-fid.
    """
    xp = get_array_module(images)
    out_h, out_w = size
    n, c, in_h, in_w = images.shape
    if (in_h, in_w) == (out_h, out_w):
        return images

    def taps(n_in, n_out):
        source = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
        low = np.minimum(np.floor(source).astype(np.int64), n_in - 1)
        high = np.minimum(low + 1, n_in - 1)
        weight = (source - low).astype(images.dtype)
        return xp.asarray(low), xp.asarray(high), xp.asarray(weight)

    low, high, w = taps(in_h, out_h)
    rows = images[:, :, low, :] * (1 - w)[:, None] + images[:, :, high, :] * w[:, None]
    low, high, w = taps(in_w, out_w)
    return rows[:, :, :, low] * (1 - w) + rows[:, :, :, high] * w


# --------------------------------------------------------------------------- blocks
class BasicConv2d(Module):
    """Conv2d (no bias) -> BatchNorm2d(eps=1e-3) -> ReLU: the unit every Inception block is made of."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dtype=np.float32):
        super().__init__()
        self.conv = Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False,
                           rng=0, dtype=dtype)
        self.bn = BatchNorm2d(out_channels, eps=1e-3, dtype=dtype)
        self.relu = ReLU()

    def forward(self, x):
        return self.relu(self.bn(self.conv(x)))


def _concat(outputs):
    return get_array_module(outputs[0]).concatenate(outputs, axis=1)


class FIDInceptionA(Module):
    """Mixed_5b/c/d: 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avg pool (padding not counted)-1x1."""

    def __init__(self, in_channels, pool_features, dtype=np.float32):
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 64, 1, dtype=dtype)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, 1, dtype=dtype)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2, dtype=dtype)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, 1, dtype=dtype)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1, dtype=dtype)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1, dtype=dtype)
        self.pool = AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
        self.branch_pool = BasicConv2d(in_channels, pool_features, 1, dtype=dtype)

    def forward(self, x):
        return _concat([self.branch1x1(x),
                        self.branch5x5_2(self.branch5x5_1(x)),
                        self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                        self.branch_pool(self.pool(x))])


class InceptionB(Module):
    """Mixed_6a (35 -> 17): 3x3 stride 2 | 1x1-3x3-3x3 stride 2 | max pool 3 stride 2."""

    def __init__(self, in_channels, dtype=np.float32):
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, 3, stride=2, dtype=dtype)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, 1, dtype=dtype)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1, dtype=dtype)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2, dtype=dtype)
        self.pool = MaxPool2d(3, stride=2)

    def forward(self, x):
        return _concat([self.branch3x3(x),
                        self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                        self.pool(x)])


class FIDInceptionC(Module):
    """Mixed_6b-e: 1x1 | 1x1-1x7-7x1 | 1x1-7x1-1x7-7x1-1x7 | avg pool (padding not counted)-1x1."""

    def __init__(self, in_channels, channels_7x7, dtype=np.float32):
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_channels, 192, 1, dtype=dtype)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, 1, dtype=dtype)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3), dtype=dtype)
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0), dtype=dtype)
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, 1, dtype=dtype)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0), dtype=dtype)
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3), dtype=dtype)
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0), dtype=dtype)
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3), dtype=dtype)
        self.pool = AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
        self.branch_pool = BasicConv2d(in_channels, 192, 1, dtype=dtype)

    def forward(self, x):
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d7 = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                      self.branch7x7dbl_5):
            d7 = layer(d7)
        return _concat([self.branch1x1(x), b7, d7, self.branch_pool(self.pool(x))])


class InceptionD(Module):
    """Mixed_7a (17 -> 8): 1x1-3x3 stride 2 | 1x1-1x7-7x1-3x3 stride 2 | max pool 3 stride 2."""

    def __init__(self, in_channels, dtype=np.float32):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, 1, dtype=dtype)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2, dtype=dtype)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, 1, dtype=dtype)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3), dtype=dtype)
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0), dtype=dtype)
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2, dtype=dtype)
        self.pool = MaxPool2d(3, stride=2)

    def forward(self, x):
        b7 = x
        for layer in (self.branch7x7x3_1, self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            b7 = layer(b7)
        return _concat([self.branch3x3_2(self.branch3x3_1(x)), b7, self.pool(x)])


class FIDInceptionE(Module):
    """Mixed_7b (E_1: avg pool, padding not counted) and Mixed_7c (E_2: max pool):
    1x1 | 1x1-(1x3 & 3x1) | 1x1-3x3-(1x3 & 3x1) | pool 3 stride 1 -1x1."""

    def __init__(self, in_channels, pool="avg", dtype=np.float32):
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 320, 1, dtype=dtype)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, 1, dtype=dtype)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1), dtype=dtype)
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0), dtype=dtype)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, 1, dtype=dtype)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1, dtype=dtype)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1), dtype=dtype)
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0), dtype=dtype)
        if pool == "avg":
            self.pool = AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
        elif pool == "max":
            self.pool = MaxPool2d(3, stride=1, padding=1)
        else:
            raise ValueError(f"FIDInceptionE: pool must be 'avg' (E_1) or 'max' (E_2), got {pool!r}")
        self.branch_pool = BasicConv2d(in_channels, 192, 1, dtype=dtype)

    def forward(self, x):
        b3 = self.branch3x3_1(x)
        d3 = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        return _concat([self.branch1x1(x),
                        self.branch3x3_2a(b3), self.branch3x3_2b(b3),
                        self.branch3x3dbl_3a(d3), self.branch3x3dbl_3b(d3),
                        self.branch_pool(self.pool(x))])


# --------------------------------------------------------------------------- the network
class FIDInceptionV3(Module):
    """pytorch-fid's FID Inception-v3 up to the 2048-dim average pool (and the 1008-way classifier `fc`).

    Parameter and buffer names are torchvision's (Conv2d_1a_3x3.conv.weight, Mixed_5b.branch1x1.bn.running_mean,
    ..., fc.weight), so the pytorch-fid state dict loads directly. Forward only (no backward): it measures.

    Args:
        resize_input: resize the input to 299x299 (bilinear) first, as FID requires. Turning it off
            lets a test run the same network on a smaller input (>= 75x75).
        dtype: of the parameters (float32; float64 for exact comparisons).

    Shape:
        x: (N, 3, H, W) in [-1, 1] -> pool features (N, 2048) (`forward`), logits (N, 1008) (`logits`).
        Spatially: 299 -> 149 -> 147 -> 147 -> 73 (max pool) -> 73 -> 71 -> 35 (max pool) -> Mixed_5*: 35
        -> Mixed_6a: 17 -> Mixed_6*: 17 -> Mixed_7a: 8 -> Mixed_7*: 8 -> mean over 8x8.
    """

    def __init__(self, resize_input=True, dtype=np.float32):
        super().__init__()
        self.resize_input = resize_input
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2, dtype=dtype)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3, dtype=dtype)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1, dtype=dtype)
        self.maxpool1 = MaxPool2d(3, stride=2)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1, dtype=dtype)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3, dtype=dtype)
        self.maxpool2 = MaxPool2d(3, stride=2)
        self.Mixed_5b = FIDInceptionA(192, pool_features=32, dtype=dtype)
        self.Mixed_5c = FIDInceptionA(256, pool_features=64, dtype=dtype)
        self.Mixed_5d = FIDInceptionA(288, pool_features=64, dtype=dtype)
        self.Mixed_6a = InceptionB(288, dtype=dtype)
        self.Mixed_6b = FIDInceptionC(768, channels_7x7=128, dtype=dtype)
        self.Mixed_6c = FIDInceptionC(768, channels_7x7=160, dtype=dtype)
        self.Mixed_6d = FIDInceptionC(768, channels_7x7=160, dtype=dtype)
        self.Mixed_6e = FIDInceptionC(768, channels_7x7=192, dtype=dtype)
        self.Mixed_7a = InceptionD(768, dtype=dtype)
        self.Mixed_7b = FIDInceptionE(1280, pool="avg", dtype=dtype)
        self.Mixed_7c = FIDInceptionE(2048, pool="max", dtype=dtype)
        self.fc = Linear(FEATURE_DIM, NUM_CLASSES, rng=0, dtype=dtype)
        self.eval()

    def forward(self, x):
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"FIDInceptionV3 expects (N, 3, H, W) images in [-1, 1], got shape {tuple(x.shape)}")
        x = x.astype(self.fc.weight.data.dtype, copy=False)
        if self.resize_input:
            x = resize_bilinear(x, (FID_INPUT_SIZE, FID_INPUT_SIZE))
        for name in ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1",
                     "Conv2d_4a_3x3", "maxpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b",
                     "Mixed_6c", "Mixed_6d", "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c"):
            x = getattr(self, name)(x)
            self.clear_saved()  # evaluation only: drop what the layers kept for a backward
        return x.mean(axis=(2, 3))

    def logits(self, features):
        """The 1008 class logits of pool features (N, 2048)."""
        return self.fc(features)

    def backward(self, dy):
        raise NotImplementedError("FIDInceptionV3 is a fixed measuring network: it has no backward")

    @classmethod
    def from_weights(cls, path, resize_input=True, dtype=np.float32):
        """The network with pytorch-fid's weights read from `path` (pt_inception-2015-12-05-6726825d.pth)."""
        net = cls(resize_input=resize_input, dtype=dtype)
        net.load_torch_weights(path)
        return net

    def load_torch_weights(self, path):
        """Load a PyTorch state dict of this architecture (BatchNorm's num_batches_tracked is ignored)."""
        try:
            state = load_torch_state_dict(path)
        except FileNotFoundError as error:
            raise FileNotFoundError(f"{error}: {_weights_hint()}") from None
        except ValueError as error:
            raise ValueError(f"{path} is not a PyTorch weights file ({error}); {_weights_hint()}") from None
        state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
        own = self.state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        if missing or unexpected:
            raise ValueError(f"{path} does not hold the FID Inception-v3 weights: {len(missing)} missing keys "
                             f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]}); "
                             f"{_weights_hint()}")
        self.load_state_dict(state)
        return self


def softmax(logits):
    xp = get_array_module(logits)
    shifted = logits - logits.max(axis=1, keepdims=True)
    e = xp.exp(shifted)
    return e / e.sum(axis=1, keepdims=True)


class InceptionFeatures:
    """FeatureExtractor of gan.metrics: FID's 2048-dim features and the 1008-way class probabilities (for IS).

    Args:
        network: a FIDInceptionV3 with weights, or the path of pt_inception-2015-12-05-6726825d.pth.
        batch_size: images per forward pass (memory: ~60 MB per 299x299 image in float32 on the CPU).
        device: "cpu" or "gpu" (the network is moved there).
    """

    name = "inception"

    def __init__(self, network, batch_size=32, device="cpu"):
        if not isinstance(network, FIDInceptionV3):
            network = FIDInceptionV3.from_weights(network)
        self.network = network.to(device)
        self.device = device
        self.batch_size = int(batch_size)

    def _prepare(self, x):
        from nnbox.backend import to_device
        x = to_device(x, self.device)
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"InceptionFeatures expects (N, 1 or 3, H, W) images, got shape {tuple(x.shape)}")
        if x.dtype.kind != "f":   # uint8 [0, 255] would run through the network as if in [-1, 1]
            raise ValueError(f"InceptionFeatures expects float images in [-1, 1], got dtype {x.dtype} "
                             f"(nnbox.data.ToFloat converts uint8 images)")
        if x.shape[1] == 1:
            xp = get_array_module(x)
            x = xp.repeat(x, 3, axis=1)
        return x

    def features(self, images):
        """(N, 2048) float64 NumPy pool features of images (N, C, H, W) in [-1, 1]."""
        out = [to_numpy(self.network(self._prepare(images[i:i + self.batch_size]))).astype(np.float64)
               for i in range(0, len(images), self.batch_size)]
        return np.concatenate(out)

    def probabilities_from_features(self, features):
        """(N, 1008) class probabilities (softmax of the classifier `fc`) of pool features (N, 2048)."""
        w = to_numpy(self.network.fc.weight.data).astype(np.float64)
        b = to_numpy(self.network.fc.bias.data).astype(np.float64)
        return softmax(np.asarray(features, dtype=np.float64) @ w.T + b)

    def probabilities(self, images):
        """(N, 1008) class probabilities, for the Inception Score."""
        return self.probabilities_from_features(self.features(images))
