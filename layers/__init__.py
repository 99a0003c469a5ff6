"""nnbox's hand-written layers, one file per family. Every class is importable from here:

    from layers import Conv2d, ConvTranspose2d, BatchNorm2d, LeakyReLU
"""
from .linear import Linear
from .conv import Conv2d, ConvTranspose2d
from .pooling import AvgPool2d, MaxPool2d, MaxUnpool2d, Unpool2d
from .activations import LeakyReLU, ReLU, Sigmoid, Tanh
from .shape import Flatten, Reshape
from .dropout import Dropout, Dropout2d
from .normalization import BatchNorm1d, BatchNorm2d
from .spectral_norm import SpectralNorm
from .sampling import GumbelSoftmax, Reparameterize
