"""Flatten and Reshape: gradient checks, torch parity, -1 inference, errors naming shapes, GPU."""
import numpy as np
import pytest

from layers import Flatten, Reshape
from nnbox.gradcheck import gradcheck

FLATTEN_CASES = [  # (start_dim, end_dim, input shape, output shape)
    (1, -1, (2, 3, 4, 5), (2, 60)),
    (1, -1, (1, 7), (1, 7)),
    (0, -1, (3, 5), (15,)),
    (1, 2, (2, 3, 4, 5), (2, 12, 5)),
    (-2, -1, (1, 3, 5), (1, 15)),
]
RESHAPE_CASES = [  # (shape argument, input shape, output shape)
    ((4, 2, 3), (2, 24), (2, 4, 2, 3)),
    (((4, 2, 3),), (1, 24), (1, 4, 2, 3)),      # one tuple
    ((-1, 3), (3, 2, 3, 1), (3, 2, 3)),         # -1 inferred
    ((5, -1, 1), (1, 35), (1, 5, 7, 1)),
    ((-1,), (2, 3, 5), (2, 15)),
]


@pytest.mark.parametrize("case", FLATTEN_CASES, ids=str)
@pytest.mark.parametrize("training", [True, False])
def test_flatten_gradcheck(case, training, rng):
    start, end, shape, out_shape = case
    layer = Flatten(start, end).train(training)
    assert layer(np.zeros(shape)).shape == out_shape
    report = gradcheck(layer, rng.standard_normal(shape), rng=rng)
    assert report.checked_entries["input 0"] == np.prod(shape)


@pytest.mark.parametrize("case", RESHAPE_CASES, ids=str)
@pytest.mark.parametrize("training", [True, False])
def test_reshape_gradcheck(case, training, rng):
    args, shape, out_shape = case
    layer = Reshape(*args).train(training)
    assert layer(np.zeros(shape)).shape == out_shape
    report = gradcheck(layer, rng.standard_normal(shape), rng=rng)
    assert report.checked_entries["input 0"] == np.prod(shape)


@pytest.mark.parametrize("case", FLATTEN_CASES, ids=str)
def test_flatten_torch_parity(case, rng, torch):
    start, end, shape, _ = case
    x, layer = rng.standard_normal(shape), Flatten(start, end)
    y = layer(x)
    dy = rng.standard_normal(y.shape)
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.nn.Flatten(start, end)(xt)
    yt.backward(torch.tensor(dy))
    np.testing.assert_array_equal(y, yt.detach().numpy())
    np.testing.assert_array_equal(layer.backward(dy), xt.grad.numpy())


@pytest.mark.parametrize("case", RESHAPE_CASES, ids=str)
def test_reshape_torch_parity(case, rng, torch):
    args, shape, _ = case
    x, layer = rng.standard_normal(shape), Reshape(*args)
    y = layer(x)
    dy = rng.standard_normal(y.shape)
    xt = torch.tensor(x, requires_grad=True)
    per_sample = args[0] if isinstance(args[0], tuple) else args
    yt = xt.reshape(shape[0], *per_sample)
    yt.backward(torch.tensor(dy))
    np.testing.assert_array_equal(y, yt.detach().numpy())
    np.testing.assert_array_equal(layer.backward(dy), xt.grad.numpy())


def test_views_not_copies():
    x = np.arange(24.0).reshape(2, 3, 4)
    assert np.shares_memory(Flatten()(x), x)
    assert np.shares_memory(Reshape(4, 3)(x), x)


def test_backward_restores_last_input_shape():
    layer = Flatten()
    layer(np.zeros((2, 3, 4)))
    layer(np.zeros((5, 2)))
    assert layer.backward(np.ones((5, 2))).shape == (5, 2)


def test_reshape_error_names_shapes():
    with pytest.raises(ValueError, match=r"Reshape to \(N, 8, 4, 4\) expects inputs with 128 values per sample.*"
                                         r"got shape \(2, 100\)"):
        Reshape(8, 4, 4)(np.zeros((2, 100)))
    with pytest.raises(ValueError, match=r"Reshape to \(N, -1, 3\) needs a sample size divisible by 3, got shape \(2, 7\)"):
        Reshape(-1, 3)(np.zeros((2, 7)))


@pytest.mark.parametrize("bad", [(), (-1, -1), (0, 3), (-2, 4)], ids=str)
def test_reshape_rejects_bad_target(bad):
    with pytest.raises(ValueError, match="Reshape"):
        Reshape(*bad)


def test_flatten_error_names_shape():
    with pytest.raises(ValueError, match=r"Flatten\(start_dim=1, end_dim=-1\).*1-D input.*got shape \(3,\)"):
        Flatten()(np.zeros(3))
    with pytest.raises(ValueError, match=r"start_dim before end_dim, got shape \(2, 3, 4\)"):
        Flatten(2, 1)(np.zeros((2, 3, 4)))


@pytest.mark.parametrize("layer", [Flatten(), Reshape(3, 2)], ids=lambda layer: type(layer).__name__)
def test_backward_errors(layer):
    with pytest.raises(RuntimeError, match="backward was called before forward"):
        layer.backward(np.zeros((2, 6)))
    layer(np.zeros((2, 6)))
    with pytest.raises(ValueError, match=rf"{type(layer).__name__}.backward expects dy .*got shape \(6, 2\)"):
        layer.backward(np.zeros((6, 2)))


def test_repr():
    assert repr(Reshape(64, 4, 4)) == "Reshape(64, 4, 4)"
    assert repr(Flatten()) == "Flatten(start_dim=1, end_dim=-1)"


@pytest.mark.gpu
def test_gpu_gradcheck(rng):
    import cupy
    x = cupy.asarray(rng.standard_normal((2, 3, 4)))
    gradcheck(Flatten(), x, rng=rng)
    gradcheck(Reshape(-1, 2), x, rng=rng)
    assert isinstance(Reshape(4, 3)(x), cupy.ndarray)
