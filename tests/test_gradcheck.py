"""gradcheck itself: it passes correct layers and fails broken ones with a diagnosis."""
import numpy as np
import pytest

from layers import Linear
from nnbox.gradcheck import GradcheckError, GradcheckReport, gradcheck
from nnbox.module import Module, Parameter


class ForgetsBias(Linear):
    def backward(self, dy):
        x = self.saved_for_backward().x
        self.weight.grad += dy.T @ x
        return dy @ self.weight.data


class DoublesWeight(Linear):
    def backward(self, dy):
        dx = super().backward(dy)
        self.weight.grad *= 2
        return dx


class FlipsInputSign(Linear):
    def backward(self, dy):
        return -super().backward(dy)


class RecordsUpstream(Linear):
    def backward(self, dy):
        self.seen = dy.copy()
        return super().backward(dy)


class WrongShape(Linear):
    def backward(self, dy):
        super().backward(dy)
        return dy  # the gradient with respect to the output, not the input


class Gather(Module):
    """y = x[indices] * w: integer inputs must pass through unchanged."""

    def __init__(self):
        super().__init__()
        self.w = Parameter(np.array([1.5, -0.5], dtype=np.float32))

    def forward(self, x, indices):
        self.save_for_backward(x=x, indices=indices)
        return x[indices] * self.w.data

    def backward(self, dy):
        x, indices = self.saved_for_backward().x, self.saved_for_backward().indices
        self.w.grad += dy * x[indices]
        dx = np.zeros_like(x)
        np.add.at(dx, indices, dy * self.w.data)
        return dx


@pytest.fixture
def x(rng):
    return rng.standard_normal((4, 3)).astype(np.float32)


def test_passes_on_a_correct_layer_in_float64(x):
    layer = Linear(3, 2, rng=0)
    report = gradcheck(layer, x, rng=1)
    assert isinstance(report, GradcheckReport)
    assert report.checked_entries == {"input 0": 12, "parameter 'weight'": 6, "parameter 'bias'": 2}
    assert max(report.max_abs_error.values()) < 1e-8
    assert layer.weight.data.dtype == np.float64  # the module is cast in place


def test_forgotten_bias_gradient_names_the_parameter_index_and_both_values(x):
    with pytest.raises(GradcheckError) as failure:
        gradcheck(ForgetsBias(3, 2, rng=0), x, rng=1)
    message = str(failure.value)
    assert "gradcheck of ForgetsBias failed for parameter 'bias' at index (0,)" in message
    assert "analytical (from backward)        = 0\n" in message
    numerical = float(message.split("numerical (central differences)   = ")[1].split("\n")[0])
    assert numerical != 0.0
    assert "exactly 0" in message


def test_doubled_weight_gradient_is_diagnosed(x):
    with pytest.raises(GradcheckError, match=r"parameter 'weight' at index \(0, 0\)(.|\n)*2x the numerical one"):
        gradcheck(DoublesWeight(3, 2, rng=0), x, rng=1)


def test_flipped_sign_is_diagnosed(x):
    with pytest.raises(GradcheckError, match=r"input 0 at index \(0, 0\)(.|\n)*sign is flipped"):
        gradcheck(FlipsInputSign(3, 2, rng=0), x, rng=1)


def test_raise_on_failure_false_returns_false(x):
    assert gradcheck(DoublesWeight(3, 2, rng=0), x, rng=1, raise_on_failure=False) is False


def test_upstream_gradient_is_random_not_ones(x):
    layer = RecordsUpstream(3, 2, rng=0)
    gradcheck(layer, x, rng=1)
    assert layer.seen.shape == (4, 2) and layer.seen.dtype == np.float64
    assert not np.allclose(layer.seen, 1.0)
    assert len(np.unique(layer.seen)) == layer.seen.size
    other = RecordsUpstream(3, 2, rng=0)
    gradcheck(other, x, rng=2)
    assert not np.array_equal(layer.seen, other.seen)


def test_max_entries_samples_a_subset(rng):
    layer = Linear(20, 10, rng=0)
    report = gradcheck(layer, rng.standard_normal((3, 20)), max_entries=7, rng=1)
    assert report.checked_entries == {"input 0": 7, "parameter 'weight'": 7, "parameter 'bias'": 7}


def test_frozen_parameters_and_check_params_false(x):
    layer = Linear(3, 2, rng=0)
    layer.bias.requires_grad = False
    assert set(gradcheck(layer, x, rng=1).checked_entries) == {"input 0", "parameter 'weight'"}
    assert set(gradcheck(ForgetsBias(3, 2, rng=0), x, rng=1, check_params=False).checked_entries) == {"input 0"}


def test_wrong_gradient_shape_is_reported(x):
    with pytest.raises(GradcheckError, match=r"gradient of input 0 has shape \(4, 2\).*has shape \(4, 3\)"):
        gradcheck(WrongShape(3, 2, rng=0), x, rng=1)


def test_wrt_count_must_match_what_backward_returns(x):
    with pytest.raises(ValueError, match=r"returned 1 gradient\(s\) but wrt=\(0, 1\) asks for 2"):
        gradcheck(Linear(3, 2, rng=0), x, wrt=(0, 1))


def test_integer_inputs_pass_unchanged(rng):
    indices = np.array([0, 2])
    report = gradcheck(Gather(), rng.standard_normal(3), indices, rng=1)
    assert report.checked_entries == {"input 0": 3, "parameter 'w'": 2}


def test_non_contiguous_inputs_are_made_contiguous(rng):
    x = rng.standard_normal((3, 4)).T  # (4, 3), Fortran order
    assert not x.flags.c_contiguous
    assert gradcheck(Linear(3, 2, rng=0), x, rng=1)


def test_a_small_error_is_within_tolerance_a_large_one_is_not(x):
    class Nudged(Linear):
        scale = 1.0

        def backward(self, dy):
            dx = super().backward(dy)
            return dx * self.scale

    Nudged.scale = 1 + 1e-9
    assert gradcheck(Nudged(3, 2, rng=0), x, rng=1)
    Nudged.scale = 1 + 1e-3
    with pytest.raises(GradcheckError, match="input 0"):
        gradcheck(Nudged(3, 2, rng=0), x, rng=1)


class ScalesInputGradient(Linear):
    """A backward that multiplies dx by `factor` (NaN or inf: a broken backward)."""

    factor = 1.0

    def backward(self, dy):
        return super().backward(dy) * self.factor


@pytest.mark.parametrize("factor", [np.nan, np.inf])
def test_a_nan_or_infinite_gradient_fails_with_a_hint(factor, x):
    layer = ScalesInputGradient(3, 2, rng=0)
    layer.factor = factor
    with pytest.raises(GradcheckError, match=r"input 0(.|\n)*NaN or infinite"):
        gradcheck(layer, x)
    assert gradcheck(layer, x, raise_on_failure=False) is False


def test_a_forward_that_changes_between_calls_is_named_not_blamed_on_backward(x):
    from layers import Dropout, SpectralNorm
    from nnbox.module import Sequential
    with pytest.raises(GradcheckError, match="two forwards of the same input gave different results"):
        gradcheck(Sequential(Linear(3, 4, rng=0), Dropout(0.5, rng=0)), x)
    # SpectralNorm in training mode takes a power step per forward: far from its fixed point (u put
    # back to a random vector; construction converges it) that moves
    wrapped = SpectralNorm(Linear(3, 4, rng=0), rng=0)
    wrapped.u[...] = np.array([0.5, -0.5, 0.5, 0.5])
    with pytest.raises(GradcheckError, match="SpectralNorm"):
        gradcheck(wrapped, x)
    assert gradcheck(wrapped.eval(), x)


class Log(Module):
    """y = log(x): correct, but infinite at x = 0."""

    def forward(self, x):
        self.save_for_backward(x=x)
        return np.log(x)

    def backward(self, dy):
        return dy / self.saved_for_backward().x


def test_an_infinite_forward_is_reported_as_such_not_as_randomness():
    x = np.array([[0.0, 1.0, 2.0]])
    with np.errstate(divide="ignore", invalid="ignore"), \
            pytest.raises(GradcheckError, match=r"(?s)input 0.*NaN or infinite") as failure:
        gradcheck(Log(), x)
    assert "two forwards" not in str(failure.value)


class HugeBackward(Linear):
    """A backward 1e300 times too large: the ratio to the numerical value overflows."""

    def backward(self, dy):
        return super().backward(dy) * 1e300


def test_an_overflowing_ratio_still_returns_false(x):
    assert gradcheck(HugeBackward(3, 2, rng=0), x, raise_on_failure=False) is False


def test_a_tied_weight_is_checked_once_with_both_uses_summed(x):
    from layers import Tanh
    from nnbox.module import Sequential
    first, second = Linear(3, 3, rng=0), Linear(3, 3, rng=1)
    second.weight = first.weight
    report = gradcheck(Sequential(first, Tanh(), second), x)
    assert "parameter '0.weight'" in report.checked_entries and "parameter '2.weight'" not in report.checked_entries
