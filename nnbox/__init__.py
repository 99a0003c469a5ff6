"""nnbox: a from-scratch deep-learning toolbox on NumPy (CPU) and CuPy (GPU).

The engine: array backends, Module/Parameter, optimisers, losses, weight
initialisation, gradient checking, data loading and serialisation. Layers live
in the sibling package `layers`, GAN models and training in `gan`.
"""
from .backend import get_array_module, to_device, cupy_available
from .module import Module, Parameter, Sequential
from .gradcheck import gradcheck, GradcheckError
from . import data, init, losses, optim, serialization
from .serialization import load_checkpoint, load_state, save_checkpoint, save_state

__version__ = "0.1.0"
