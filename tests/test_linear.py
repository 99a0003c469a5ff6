"""Linear: float64 gradient checks with and without bias, torch parity (forward, dx, dW, db, with
accumulation over two backwards), and its input and gradient checks."""
import numpy as np
import pytest

from layers import Linear
from nnbox.gradcheck import gradcheck


@pytest.mark.parametrize("bias", [True, False])
def test_gradcheck(bias, rng):
    layer = Linear(5, 3, bias=bias, rng=rng).to(np.float64)
    report = gradcheck(layer, rng.standard_normal((4, 5)), rng=rng)
    assert report.checked_entries["parameter 'weight'"] == 15 and report.checked_entries["input 0"] == 20
    assert ("parameter 'bias'" in report.checked_entries) == bias


@pytest.mark.parametrize("bias", [True, False])
def test_matches_torch_including_accumulated_gradients(bias, rng, torch):
    layer = Linear(6, 4, bias=bias, rng=rng).to(np.float64)
    reference = torch.nn.Linear(6, 4, bias=bias).double()
    with torch.no_grad():
        reference.weight.copy_(torch.from_numpy(layer.weight.data))
        if bias:
            reference.bias.copy_(torch.from_numpy(layer.bias.data))
    for _ in range(2):                     # gradients add up over backwards, as torch's .grad
        x, dy = rng.standard_normal((5, 6)), rng.standard_normal((5, 4))
        x_t = torch.from_numpy(x).requires_grad_(True)
        y_t = reference(x_t)
        y_t.backward(torch.from_numpy(dy))
        np.testing.assert_allclose(layer(x), y_t.detach().numpy(), rtol=1e-13, atol=1e-13)
        np.testing.assert_allclose(layer.backward(dy), x_t.grad.numpy(), rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(layer.weight.grad, reference.weight.grad.numpy(), rtol=1e-13, atol=1e-13)
    if bias:
        np.testing.assert_allclose(layer.bias.grad, reference.bias.grad.numpy(), rtol=1e-13, atol=1e-13)


def test_input_of_the_wrong_width_names_the_features():
    with pytest.raises(ValueError, match=r"Linear expects 3 features at axis 1: input shape \(2, 3\) .*got shape \(2, 4\)"):
        Linear(3, 5, rng=0)(np.ones((2, 4), np.float32))


@pytest.mark.parametrize("method", ["backward", "backward_parameters"])
@pytest.mark.parametrize("wrong", [(3, 5), (2, 4), (2, 5, 1)])
def test_a_gradient_of_another_shape_is_refused(method, wrong):
    layer = Linear(3, 5, rng=0)
    layer(np.ones((2, 3), np.float32))
    with pytest.raises(ValueError, match=r"Linear.backward expects dy shaped like the forward output \(2, 5\)"):
        getattr(layer, method)(np.ones(wrong, np.float32))
    assert not layer.weight.grad.any()          # nothing accumulated before the error


@pytest.mark.parametrize("sizes, label", [((-1, 3), "in_features"), ((3, 0), "out_features"), ((2.5, 3), "in_features"),
                                         ((3, "4"), "out_features")])
def test_sizes_are_checked(sizes, label):
    with pytest.raises(ValueError, match=rf"Linear: {label} must be an integer >= 1"):
        Linear(*sizes)
