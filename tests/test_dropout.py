"""Dropout and Dropout2d: fixed-mask gradient checks, torch parity on torch's own mask, statistics,
eval identity, reproducibility, p = 0 and p = 1, errors, GPU."""
import numpy as np
import pytest

from layers import Dropout, Dropout2d
from nnbox.gradcheck import gradcheck


def keep_mask(rng, shape, p):
    return rng.random(shape) >= p


# ---------------------------------------------------------------- gradient checks
@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (3, 5), (2, 3, 4, 5)], ids=str)
@pytest.mark.parametrize("p", [0.0, 0.3, 0.5, 1.0])
def test_dropout_gradcheck_fixed_mask(shape, p, rng):
    layer = Dropout(p, rng=0)
    layer.fixed_mask = keep_mask(rng, shape, p)
    report = gradcheck(layer, rng.standard_normal(shape), rng=rng)
    assert report.checked_entries["input 0"] == np.prod(shape)
    assert layer.last_mask is layer.fixed_mask


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (1, 3, 2, 5), (3, 4, 3, 3)], ids=str)
@pytest.mark.parametrize("p", [0.0, 0.4, 1.0])
def test_dropout2d_gradcheck_fixed_mask(shape, p, rng):
    layer = Dropout2d(p, rng=0)
    layer.fixed_mask = keep_mask(rng, shape[:2], p)
    report = gradcheck(layer, rng.standard_normal(shape), rng=rng)
    assert report.checked_entries["input 0"] == np.prod(shape)


@pytest.mark.parametrize("layer_class, shape", [(Dropout, (3, 5)), (Dropout2d, (2, 3, 4, 4))])
def test_gradcheck_eval(layer_class, shape, rng):
    layer = layer_class(0.5, rng=0).eval()
    report = gradcheck(layer, rng.standard_normal(shape), rng=rng)
    assert report.checked_entries["input 0"] == np.prod(shape)


def test_forward_mask_argument_replays_a_run(rng):
    x, dy = rng.standard_normal((4, 6)), rng.standard_normal((4, 6))
    layer = Dropout(0.5, rng=1)
    y = layer(x)
    dx = layer.backward(dy)
    replay = Dropout(0.5, rng=99)
    np.testing.assert_array_equal(replay(x, mask=layer.last_mask), y)
    np.testing.assert_array_equal(replay.backward(dy), dx)
    assert replay.fixed_mask is None  # the argument is for one call only


# ---------------------------------------------------------------- semantics
def test_worked_example():
    layer = Dropout(0.75)
    y = layer(np.array([[1.0, 2.0, 3.0, 4.0]]), mask=np.array([[1, 0, 0, 1]]))
    np.testing.assert_array_equal(y, [[4.0, 0.0, 0.0, 16.0]])      # kept values scaled by 1 / (1 - 0.75)
    np.testing.assert_array_equal(layer.backward(np.ones((1, 4))), [[4.0, 0.0, 0.0, 4.0]])


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_dropout_statistics(p):
    x = np.ones((400, 500))
    layer = Dropout(p, rng=0)
    y = layer(x)
    kept = np.count_nonzero(y) / y.size
    # 200,000 Bernoulli draws: the standard error of the fraction is below 0.0012
    assert abs(kept - (1 - p)) < 0.005
    assert abs(y.mean() - 1.0) < 0.02                     # inverted dropout keeps the mean
    np.testing.assert_allclose(y[y != 0], 1 / (1 - p))


def test_dropout2d_drops_whole_channels():
    x = np.ones((200, 50, 3, 4))
    y = Dropout2d(0.3, rng=0)(x)
    per_channel = y.reshape(200, 50, -1)
    assert np.all(per_channel.min(axis=2) == per_channel.max(axis=2))    # each channel all kept or all dropped
    kept = np.count_nonzero(per_channel[:, :, 0]) / (200 * 50)
    assert abs(kept - 0.7) < 0.02                                          # 10,000 draws: SE 0.0046
    assert abs(y.mean() - 1.0) < 0.05


@pytest.mark.parametrize("layer_class, shape", [(Dropout, (3, 5)), (Dropout2d, (2, 3, 4, 4))])
def test_eval_is_identity(layer_class, shape, rng):
    x = rng.standard_normal(shape)
    layer = layer_class(0.9, rng=0).eval()
    layer.fixed_mask = np.zeros(layer.mask_shape(x), bool)   # ignored in eval
    assert layer(x) is x
    dy = rng.standard_normal(shape)
    assert layer.backward(dy) is dy


@pytest.mark.parametrize("layer_class, shape", [(Dropout, (30, 40)), (Dropout2d, (8, 16, 3, 3))])
def test_same_seed_same_masks(layer_class, shape):
    x = np.ones(shape, np.float32)
    a, b, c = layer_class(0.5, rng=7), layer_class(0.5, rng=np.random.default_rng(7)), layer_class(0.5, rng=8)
    first = [a(x) for _ in range(3)]
    for y in first:
        np.testing.assert_array_equal(y, b(x))
    assert not np.array_equal(first[0], first[1])     # a new mask each forward
    assert not np.array_equal(first[0], c(x))          # another seed, another mask


def test_p_zero_is_identity_in_training(rng):
    x = rng.standard_normal((5, 7))
    layer = Dropout(0.0, rng=0)
    np.testing.assert_array_equal(layer(x), x)
    np.testing.assert_array_equal(layer.backward(np.ones_like(x)), np.ones_like(x))


@pytest.mark.parametrize("layer_class, shape", [(Dropout, (5, 7)), (Dropout2d, (2, 3, 4, 4))])
def test_p_one_zeroes_everything(layer_class, shape, rng):
    layer = layer_class(1.0, rng=0)
    with np.errstate(all="raise"):                    # no 1 / (1 - p) = inf, no 0 * inf = nan
        y = layer(rng.standard_normal(shape))
        dx = layer.backward(np.ones(shape))
    assert np.all(y == 0) and np.all(dx == 0)


def test_float32_stays_float32():
    layer = Dropout(0.5, rng=0)
    x = np.ones((4, 4), np.float32)
    assert layer(x).dtype == np.float32 and layer.backward(x).dtype == np.float32


def test_generator_is_an_attribute_the_trainer_can_checkpoint():
    layer = Dropout(0.5, rng=3)
    assert isinstance(layer.rng, np.random.Generator)
    state = layer.rng.bit_generator.state
    y = layer(np.ones((10, 10)))
    layer.rng.bit_generator.state = state
    np.testing.assert_array_equal(layer(np.ones((10, 10))), y)


# ---------------------------------------------------------------- torch parity
@pytest.mark.parametrize("layer_class, torch_name, shape", [
    (Dropout, "Dropout", (6, 7)), (Dropout, "Dropout", (2, 3, 4, 5)), (Dropout2d, "Dropout2d", (3, 4, 5, 2))])
@pytest.mark.parametrize("p", [0.2, 0.6])
def test_torch_parity_on_torchs_mask(layer_class, torch_name, shape, p, rng, torch):
    """Run torch's dropout, read its mask off the output (x has no zeros), replay it here."""
    torch.manual_seed(0)
    x = rng.uniform(0.5, 1.5, shape) * rng.choice([-1.0, 1.0], shape)
    dy = rng.standard_normal(shape)
    xt = torch.tensor(x, requires_grad=True)
    yt = getattr(torch.nn, torch_name)(p).train()(xt)
    yt.backward(torch.tensor(dy))
    kept = yt.detach().numpy() != 0
    layer = layer_class(p)
    mask = kept if layer_class is Dropout else kept[:, :, 0, 0]
    y = layer(x, mask=mask)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-15, atol=0)
    np.testing.assert_allclose(layer.backward(dy), xt.grad.numpy(), rtol=1e-15, atol=0)


# ---------------------------------------------------------------- errors
@pytest.mark.parametrize("p", [-0.1, 1.5])
def test_bad_probability(p):
    with pytest.raises(ValueError, match=r"Dropout: p is a probability and must be in \[0, 1\]"):
        Dropout(p)


def test_mask_shape_error():
    with pytest.raises(ValueError, match=r"Dropout: the mask must have shape \(2, 3\) for an input of shape \(2, 3\), "
                                         r"got shape \(3, 2\)"):
        Dropout(0.5)(np.ones((2, 3)), mask=np.ones((3, 2)))
    with pytest.raises(ValueError, match=r"Dropout2d: the mask must have shape \(2, 3\) .*got shape \(2, 3, 4, 4\)"):
        Dropout2d(0.5)(np.ones((2, 3, 4, 4)), mask=np.ones((2, 3, 4, 4)))


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("layer_class, shape, wrong", [(Dropout, (2, 3), (5, 2, 3)),
                                                       (Dropout2d, (2, 3, 4, 4), (2, 3, 5, 5))])
def test_backward_refuses_a_gradient_of_another_shape(layer_class, shape, wrong, training):
    # dy * mask would broadcast to a gradient of the wrong shape without a word
    layer = layer_class(0.5, rng=0)
    layer.train(training)
    layer(np.ones(shape))
    with pytest.raises(ValueError, match=rf"{layer_class.__name__}.backward expects dy shaped like the forward "
                                         rf"output \({shape[0]}, {shape[1]}"):
        layer.backward(np.ones(wrong))


@pytest.mark.parametrize("layer_class, shape", [(Dropout, (50, 40)), (Dropout2d, (20, 30, 2, 2))])
def test_float16_input_is_dropped_and_scaled(layer_class, shape):
    x = np.ones(shape, np.float16)
    y = layer_class(0.25, rng=0)(x)
    assert y.dtype == np.float16 and set(np.unique(y)) == {0.0, np.float16(1 / 0.75)}
    assert 0.2 < (y == 0).mean() < 0.3


def test_dropout2d_wrong_ndim():
    with pytest.raises(ValueError, match=r"Dropout2d expects a 4-D input \(N, C, H, W\), got shape \(2, 3\)"):
        Dropout2d(0.5)(np.ones((2, 3)))


@pytest.mark.parametrize("layer_class", [Dropout, Dropout2d])
def test_backward_before_forward(layer_class):
    with pytest.raises(RuntimeError, match=f"{layer_class.__name__}.backward was called before forward"):
        layer_class(0.5).backward(np.ones((2, 3, 4, 4)))


# ---------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.parametrize("layer_class, shape", [(Dropout, (3, 5)), (Dropout2d, (2, 3, 4, 4))])
def test_gpu_gradcheck_fixed_mask(layer_class, shape, rng):
    import cupy
    layer = layer_class(0.4, rng=0).to("gpu")
    layer.fixed_mask = cupy.asarray(keep_mask(rng, layer.mask_shape(np.empty(shape)), 0.4))
    gradcheck(layer, cupy.asarray(rng.standard_normal(shape)), rng=rng)


@pytest.mark.gpu
def test_gpu_masks_reproducible_and_statistics():
    import cupy
    x = cupy.ones((400, 500), cupy.float32)
    a, b = Dropout(0.3, rng=5).to("gpu"), Dropout(0.3, rng=5).to("gpu")
    ya = a(x)
    assert isinstance(ya, cupy.ndarray) and ya.dtype == cupy.float32
    cupy.testing.assert_array_equal(ya, b(x))
    assert abs(float(cupy.count_nonzero(ya)) / ya.size - 0.7) < 0.005
    a.to("cpu")
    assert a._device_rng is None       # the cached device generator is dropped on a move


@pytest.mark.gpu
def test_gpu_masks_replay_after_restoring_the_numpy_state():
    import cupy
    x = cupy.ones((20, 30), cupy.float32)
    layer = Dropout(0.5, rng=2).to("gpu")
    state = layer.rng.bit_generator.state
    first = layer(x)
    layer.rng.bit_generator.state = state
    layer.reset_device_rng()
    cupy.testing.assert_array_equal(layer(x), first)
