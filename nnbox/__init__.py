"""nnbox: a from-scratch deep-learning toolbox on NumPy (CPU) and CuPy (GPU).

The engine: array backends, Module/Parameter, optimisers, losses, weight
initialisation, gradient checking, data loading and serialisation. Layers live
in the sibling package `layers`, GAN models and training in `gan`.
"""
import os
import sys

# OpenBLAS's threads spin for ~0.1 s after every matrix product (2^28 cycles by default), holding a
# core that nnbox's own threads (nnbox.parallel) and the main thread need next; with a short
# timeout they sleep at once (measured: a 64x64 DCGAN step 1265 -> 1055 ms on 2 cores). OpenBLAS
# reads the variable when NumPy loads it; a value set by the user is kept. When NumPy was imported
# before nnbox, OpenBLAS is told to read it again (nnbox.blas.reread_environment).
_numpy_came_first = "numpy" in sys.modules
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

from . import blas, workspace  # noqa: E402

if _numpy_came_first:
    blas.reread_environment()

workspace.tune_malloc()   # reuse the heap pages of a step's temporaries (nnbox.workspace); NNBOX_MALLOC_TUNING=0: off

from .backend import get_array_module, to_device, cupy_available  # noqa: E402
from .module import Module, Parameter, Sequential  # noqa: E402
from .gradcheck import gradcheck, GradcheckError  # noqa: E402
from . import data, init, losses, optim, serialization  # noqa: E402
from .serialization import load_checkpoint, load_state, save_checkpoint, save_state  # noqa: E402

__version__ = "0.1.0"
