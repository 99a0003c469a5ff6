"""Linear's input and gradient checks (its maths is gradient-checked in test_gradcheck.py and
against torch in test_backward_parameters.py and test_spectral_norm.py)."""
import numpy as np
import pytest

from layers import Linear


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


@pytest.mark.parametrize("sizes, label", [((-1, 3), "in_features"), ((3, 0), "out_features"), ((2.5, 3), "in_features")])
def test_sizes_are_checked(sizes, label):
    with pytest.raises(ValueError, match=rf"Linear: {label} must be an integer >= 1"):
        Linear(*sizes)
