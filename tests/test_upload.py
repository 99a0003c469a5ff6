"""PinnedUploader: host batches to the GPU through pinned memory, without the host waiting."""
import numpy as np
import pytest

from nnbox.upload import PinnedUploader


def test_ring_must_hold_two_buffers():
    with pytest.raises(ValueError, match="ring must be >= 2"):
        PinnedUploader(ring=1)


@pytest.mark.gpu
def test_uploads_match_and_buffers_are_reused_safely(rng):
    import cupy

    upload = PinnedUploader(ring=2)
    batches = [rng.standard_normal((4, 3, 5, 5)).astype(np.float32) for _ in range(5)]
    batches.append(batches[0][:2].copy())                     # a smaller last batch reuses a buffer
    on_device = [upload(b) for b in batches]                  # several in flight before any is read
    for host, device in zip(batches, on_device):
        assert isinstance(device, cupy.ndarray) and device.dtype == np.float32
        np.testing.assert_array_equal(device.get(), host)
    assert upload(on_device[0]) is on_device[0]               # already on the device: no copy
    as_float64 = PinnedUploader(dtype=np.float64)(batches[1])
    assert as_float64.dtype == np.float64 and np.array_equal(as_float64.get(), batches[1].astype(np.float64))
    assert PinnedUploader()(np.arange(6, dtype=np.uint8).reshape(2, 3)).dtype == np.uint8
