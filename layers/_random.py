"""What the layers that draw random numbers share (Dropout's masks, the sampling layers' noise)."""
import numpy as np

from nnbox import backend
from nnbox.module import Module


class RandomLayer(Module):
    """A layer with a NumPy generator `rng` (given at construction) and, for CuPy arrays, a CuPy
    generator derived from it on first use (`generator(xp)`), so one seed reproduces a run on either
    device. `reset_device_rng` forgets the CuPy one: a trainer that restores `rng`'s state from a
    checkpoint calls it so that the next GPU forward draws what an uninterrupted run would."""

    def __init__(self, rng=None):
        super().__init__()
        self.rng = backend.as_rng(rng)
        self._device_rng = None  # the generator for CuPy arrays, made from self.rng on first use

    def reset_device_rng(self):
        """Forget the CuPy generator; the next GPU forward derives a new one from `self.rng`."""
        self._device_rng = None

    def generator(self, xp):
        """The generator that draws arrays of module `xp`."""
        if xp is np:
            return self.rng
        if self._device_rng is None:
            self._device_rng = backend.random_generator(self.rng, xp)
        return self._device_rng
