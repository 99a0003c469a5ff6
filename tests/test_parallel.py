"""nnbox.parallel: large array work split over threads, with results that do not depend on the split."""
import threading

import numpy as np
import pytest

from layers import conv_maths
from layers.activations import LeakyReLU, ReLU
from layers.conv import Conv2d, ConvTranspose2d
from layers.normalization import BatchNorm2d
from layers.pooling import MaxPool2d, Unpool2d
from nnbox import parallel


@pytest.fixture
def threaded(monkeypatch):
    """Four threads and a tiny MIN_SIZE, so that the small test arrays are split."""
    previous = parallel.set_threads(4)
    monkeypatch.setattr(parallel, "MIN_SIZE", 8)
    yield
    parallel.set_threads(previous)


@pytest.mark.parametrize("n, parts", [(10, 3), (3, 5), (1, 2), (8, 8), (7, 1)])
def test_split_covers_the_range_in_near_equal_pieces(n, parts):
    pieces = parallel.split(n, parts)
    assert pieces[0][0] == 0 and pieces[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(pieces, pieces[1:]))
    sizes = [stop - start for start, stop in pieces]
    assert len(pieces) == min(parts, n) and max(sizes) - min(sizes) <= 1 and min(sizes) >= 1


@pytest.mark.parametrize("axis, block", [(0, 3), (1, 1), (0, 100), (None, 2)])
def test_assign_in_slabs_copies_everything(threaded, axis, block):
    """Slabs of `block` along `axis`, the last one short, on several threads: dest = source exactly,
    for a transposing copy and into a strided destination."""
    source = np.arange(7 * 11 * 5, dtype=np.float32).reshape(7, 11, 5)
    dest = np.full((5, 11, 7), -1.0, np.float32)
    parallel.assign(dest, source.transpose(2, 1, 0), axis=axis, block=block)
    np.testing.assert_array_equal(dest, source.transpose(2, 1, 0))
    padded = np.zeros((9, 13, 5), np.float32)
    parallel.assign(padded[1:8, 1:12], source, axis=axis, block=block)
    np.testing.assert_array_equal(padded[1:8, 1:12], source)
    assert not padded[0].any() and not padded[8].any() and not padded[:, 0].any() and not padded[:, 12].any()


def test_run_returns_results_in_piece_order_from_several_threads(threaded):
    names = set()

    def work(start, stop):
        names.add(threading.current_thread().name)
        return list(range(start, stop))

    results = parallel.run(10, work, size=100)
    assert len(results) == 4 and sum(results, []) == list(range(10))
    assert len(names) > 1   # the caller took one piece, workers the others


def test_run_stays_in_the_calling_thread_when_small_nested_or_not_numpy(threaded, monkeypatch):
    caller = threading.current_thread().name
    seen = []

    def record(start, stop):
        seen.append((threading.current_thread().name, start, stop))
        return stop - start

    assert parallel.run(10, record, size=4) == [10]                   # below MIN_SIZE
    assert parallel.run(10, record, size=100, xp=object()) == [10]    # not NumPy (CuPy)
    assert seen == [(caller, 0, 10)] * 2

    def outer(start, stop):   # a nested call inside a worker runs in that worker, in one piece
        return parallel.run(stop - start, lambda a, b: (threading.current_thread().name, a, b), size=100)

    nested = parallel.run(8, outer, size=100)
    assert all(len(inner) == 1 for inner in nested[1:])


def test_run_raises_a_workers_error(threaded):
    def work(start, stop):
        if start > 0:
            raise ValueError(f"piece {start}")
        return start

    with pytest.raises(ValueError, match="piece"):
        parallel.run(8, work, size=100)


def test_run_raises_only_after_every_piece_has_finished(threaded):
    # the caller's arrays must not change after run raised: a slow piece is waited for, and the
    # calling thread's own error (piece 0) is the one raised
    finished = np.zeros(4, bool)

    def work(start, stop):
        if start == 0:
            raise KeyError("calling thread")
        if start == 2:
            raise ValueError("worker")
        threading.Event().wait(0.2)
        finished[start // 2] = True

    with pytest.raises(KeyError, match="calling thread"):
        parallel.run(8, work, size=100)
    assert finished[[2, 3]].all()   # pieces (4, 6) and (6, 8)


def test_the_callers_errstate_applies_to_every_piece(threaded):
    # np.errstate is context-local: pieces on the pool's threads ignored the caller's settings
    values = np.full(8, 1e300)

    def overflow_on_the_pool(start, stop):
        if start > 0:                             # pieces after the first run on the pool's threads
            return values[start:stop] * 1e300

    with np.errstate(over="raise"), pytest.raises(FloatingPointError):
        parallel.run(8, overflow_on_the_pool, size=100)


def test_assign_matches_plain_assignment(threaded, rng):
    source = rng.standard_normal((3, 5, 4, 6))
    cases = [(source.transpose(1, 2, 3, 0), (5, 4, 6, 3)),     # a transposing copy
             (source[:, 1:4, ::2], (3, 3, 2, 6)),              # a strided view
             (np.float64(2.5), (5, 4, 6, 3)),                   # a broadcast scalar
             (source[0, 0, 0], (2, 4, 6)),                      # a broadcast row
             (source[:1, :1], (1, 1, 4, 6)),                   # no axis long enough: split along axis 0
             (np.float64(1.5), ())]                            # a 0-d destination
    for value, shape in cases:
        dest = np.empty(shape)
        assert parallel.assign(dest, value) is dest
        np.testing.assert_array_equal(dest, np.broadcast_to(value, shape))


def test_set_threads_and_environment_checked(monkeypatch):
    with pytest.raises(ValueError, match="positive integer"):
        parallel.set_threads(0)
    monkeypatch.setenv("NNBOX_THREADS", "two")
    with pytest.raises(ValueError, match="NNBOX_THREADS"):
        parallel._default_threads()
    monkeypatch.setenv("NNBOX_THREADS", "3")
    assert parallel._default_threads() == 3


def _same_with_threads(run, monkeypatch, threads=3):
    """run() once single-threaded and once split over `threads` threads (tiny MIN_SIZE); every array
    it returns must be bitwise the same. Returns the single-threaded results."""
    results = []
    for count in (1, threads):
        previous = parallel.set_threads(count)
        monkeypatch.setattr(parallel, "MIN_SIZE", 8)
        try:
            results.append([np.array(value, copy=True) for value in run()])
        finally:
            parallel.set_threads(previous)
    for single, split in zip(*results):
        np.testing.assert_array_equal(single, split)
    return results[0]


@pytest.mark.parametrize("batch_last", [False, True])
def test_im2col_col2im_identical_with_and_without_threads(batch_last, rng, monkeypatch):
    geometry, x = ((4, 4), (2, 2), (1, 1), (1, 1)), rng.standard_normal((3, 5, 8, 8)).astype(np.float32)
    other = rng.standard_normal((5 * 16, 3 * 16)).astype(np.float32)
    _same_with_threads(lambda: (
        conv_maths.im2col(x, *geometry, (4, 4), batch_last=batch_last),
        conv_maths.col2im(other, x.shape, *geometry, (4, 4), batch_last=batch_last),
        conv_maths.to_channel_major(x, batch_last),
        conv_maths.from_channel_major(other[:5], (3, 5, 4, 4), np.arange(5.0), batch_last)), monkeypatch)


@pytest.mark.parametrize("cls", [Conv2d, ConvTranspose2d])
def test_conv_layers_identical_with_and_without_threads(cls, rng, monkeypatch):
    x = rng.standard_normal((4, 6, 9, 9)).astype(np.float32)

    def run():
        layer = cls(6, 5, 3, stride=2, padding=1, rng=0)
        y = layer(x)
        return y, layer.backward(np.ones_like(y)), layer.weight.grad, layer.bias.grad

    _same_with_threads(run, monkeypatch, threads=2)


@pytest.mark.parametrize("training", [True, False])
def test_batchnorm_identical_with_and_without_threads(training, rng, monkeypatch):
    x = (3.0 + rng.standard_normal((6, 4, 5, 5))).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)

    def run():
        layer = BatchNorm2d(4).train(training)
        layer.weight.data[:] = [0.5, 1.5, -1.0, 2.0]
        y = layer(x)
        return y, layer.backward(dy), layer.weight.grad, layer.bias.grad, layer.running_mean, layer.running_var

    _same_with_threads(run, monkeypatch)


@pytest.mark.parametrize("layer", [ReLU(), LeakyReLU(0.2)])
def test_activations_identical_with_and_without_threads(layer, rng, monkeypatch):
    x = rng.standard_normal((5, 3, 7)).astype(np.float32)[:, :, ::2]   # a non-contiguous input
    dy = rng.standard_normal(x.shape).astype(np.float32)
    y, dx = _same_with_threads(lambda: (layer(x), layer.backward(dy)), monkeypatch)
    slope = np.float32(getattr(layer, "negative_slope", 0.0))
    np.testing.assert_array_equal(y, np.where(x > 0, x, x * slope))
    np.testing.assert_array_equal(dx, np.where(x > 0, dy, dy * slope))


def test_nearest_unpool_identical_with_and_without_threads(rng, monkeypatch):
    x = rng.standard_normal((5, 3, 4, 6)).astype(np.float32)
    layer = Unpool2d(2, mode="nearest")
    dy = rng.standard_normal((5, 3, 8, 12)).astype(np.float32)
    y, dx = _same_with_threads(lambda: (layer(x), layer.backward(dy)), monkeypatch)
    np.testing.assert_array_equal(y, x.repeat(2, axis=2).repeat(2, axis=3))
    np.testing.assert_allclose(dx, dy.reshape(5, 3, 4, 2, 6, 2).sum(axis=(3, 5)), rtol=1e-6)


def test_max_pool_backward_identical_with_and_without_threads(rng, monkeypatch):
    x = rng.standard_normal((5, 3, 6, 8)).astype(np.float32)
    dy = rng.standard_normal((5, 3, 3, 4)).astype(np.float32)
    layer = MaxPool2d(2)
    y, dx = _same_with_threads(lambda: (layer(x), layer.backward(dy)), monkeypatch)
    windows = x.reshape(5, 3, 3, 2, 4, 2)
    is_max = windows == windows.max(axis=(3, 5), keepdims=True)        # random floats: one maximum each
    np.testing.assert_array_equal(dx.reshape(windows.shape), np.where(is_max, dy[:, :, :, None, :, None], 0))
