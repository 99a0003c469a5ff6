"""Host-to-GPU copies of input batches that do not make the host wait.

    upload = PinnedUploader()
    for batch in loader:                 # NumPy batches
        real = upload(batch)             # a CuPy array; the copy is queued, not waited for
        trainer.step(real)

`cupy.asarray(numpy_batch)` copies from pageable host memory: the driver stages the bytes and the
host blocks until the copy is done, and the copy itself waits behind every kernel already queued
on the stream. So a training loop that uploads each batch waits once per step for the GPU to drain.

`PinnedUploader` copies the batch into page-locked ("pinned") host memory first; from there
`cudaMemcpyAsync` returns at once and the GPU does the copy in stream order, before the kernels
that read it. The copy goes on the current stream, so nothing can read the device array early and
no other stream can reuse its memory while it is in use.

Pinned buffers are kept in a small ring and reused. A buffer is overwritten only after the copy out
of it has finished (a CUDA event recorded after each copy says so); with a ring of two and a step
that fetches its logged scalars at the end, that copy is always long done and nothing waits.
The device array keeps the batch's dtype unless `dtype` asks for another.
"""
import numpy as np

from . import backend


class PinnedUploader:
    """Callable: NumPy array (any shape) -> CuPy array, copied asynchronously.

    Args:
        dtype: the device array's dtype (None, the default: the batch's own).
        ring: how many pinned buffers to rotate through (>= 2).

    A CuPy array passed in is returned as it is (already on the device).
    """

    def __init__(self, dtype=None, ring=2):
        if ring < 2:
            raise ValueError(f"PinnedUploader: ring must be >= 2 (a buffer is refilled while the last copy "
                             f"may still be reading the other), got {ring}")
        self.dtype = None if dtype is None else np.dtype(dtype)
        self._slots = [[None, None] for _ in range(ring)]   # [pinned flat buffer, event after its copy]
        self._next = 0

    def __call__(self, batch):
        if backend.is_gpu_array(batch):
            return batch if self.dtype is None else batch.astype(self.dtype, copy=False)
        cupy = backend.require_cupy()
        batch = np.asarray(batch)
        dtype = batch.dtype if self.dtype is None else self.dtype
        slot = self._slots[self._next]
        self._next = (self._next + 1) % len(self._slots)
        buffer, copied = slot
        if copied is not None:
            copied.synchronize()             # the copy out of this buffer has finished
        if buffer is None or buffer.size < batch.size or buffer.dtype != dtype:
            import cupyx
            buffer = slot[0] = cupyx.empty_pinned(batch.size, dtype=dtype)
        staged = buffer[:batch.size].reshape(batch.shape)
        np.copyto(staged, batch, casting="same_kind")
        device = cupy.empty(batch.shape, dtype=dtype)
        stream = cupy.cuda.get_current_stream()
        device.set(staged, stream=stream)
        slot[1] = stream.record()
        return device
