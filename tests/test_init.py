"""Weight initialisation: fans, gains, and the statistics of each scheme on large draws."""
import math

import numpy as np
import pytest

from layers import Linear
from nnbox import init
from nnbox.module import Module, Parameter, Sequential

LARGE = (500, 400)  # 200,000 draws: the sample std is within ~0.2% of the true one (1 sigma)
STD_RTOL = 0.02     # 10 sigma


def uniform_std(bound):
    return bound / math.sqrt(3.0)


def check_uniform(w, bound):
    assert np.abs(w).max() <= bound
    assert np.abs(w).max() > 0.999 * bound  # fills the whole interval
    np.testing.assert_allclose(w.std(), uniform_std(bound), rtol=STD_RTOL)
    assert abs(w.mean()) < 0.01 * bound


def check_normal(w, std, mean=0.0):
    np.testing.assert_allclose(w.std(), std, rtol=STD_RTOL)
    assert abs(w.mean() - mean) < 0.01 * std
    # a normal, not a uniform, of that std: about 4.55% of draws beyond 2 std
    np.testing.assert_allclose(np.mean(np.abs(w - mean) > 2 * std), 0.0455, atol=0.003)


def test_fans_follow_torch(torch):
    for shape in [(5, 3), (8, 4, 3, 3), (4, 8, 5, 5), (2, 3, 4)]:
        expected = torch.nn.init._calculate_fan_in_and_fan_out(torch.empty(shape))
        assert init.fans(shape) == expected
    assert init.fans((8, 4, 3, 3)) == (36, 72)
    with pytest.raises(ValueError, match=r"at least 2 dimensions, got shape \(5,\)"):
        init.fans((5,))


def test_gains_follow_torch(torch):
    for name in ("linear", "sigmoid", "tanh", "relu"):
        assert init.gain(name) == pytest.approx(torch.nn.init.calculate_gain(name), rel=1e-15)
    for slope in (0.01, 0.2, 0.0, math.sqrt(5)):
        assert init.gain("leaky_relu", slope) == pytest.approx(torch.nn.init.calculate_gain("leaky_relu", slope), rel=1e-15)
    assert init.gain("leaky_relu") == pytest.approx(torch.nn.init.calculate_gain("leaky_relu"), rel=1e-15)
    with pytest.raises(ValueError, match="unknown nonlinearity 'swish'"):
        init.gain("swish")


def test_normal_uniform_zeros_ones():
    check_normal(init.normal(LARGE, mean=0.5, std=2.0, rng=0), 2.0, mean=0.5)
    w = init.uniform(LARGE, low=-1.0, high=3.0, rng=0)
    assert w.min() >= -1.0 and w.max() < 3.0
    np.testing.assert_allclose(w.mean(), 1.0, atol=0.01)
    np.testing.assert_allclose(w.std(), 4.0 / math.sqrt(12.0), rtol=STD_RTOL)
    assert np.all(init.zeros((2, 3)) == 0) and np.all(init.ones((2, 3)) == 1)


def test_xavier():
    fan_in, fan_out = init.fans(LARGE)
    bound = 1.5 * math.sqrt(6.0 / (fan_in + fan_out))
    check_uniform(init.xavier_uniform(LARGE, gain_=1.5, rng=0), bound)
    check_normal(init.xavier_normal(LARGE, gain_=1.5, rng=0), 1.5 * math.sqrt(2.0 / (fan_in + fan_out)))


@pytest.mark.parametrize("mode", ["fan_in", "fan_out"])
@pytest.mark.parametrize("nonlinearity, a", [("relu", 0.0), ("leaky_relu", 0.2), ("leaky_relu", math.sqrt(5)), ("tanh", 0.0)])
def test_kaiming(mode, nonlinearity, a):
    shape = (400, 50, 3, 3)  # fan_in 450, fan_out 3600: the mode matters
    fan = init.fans(shape)[0 if mode == "fan_in" else 1]
    gain = init.gain(nonlinearity, a)
    check_uniform(init.kaiming_uniform(shape, a=a, nonlinearity=nonlinearity, mode=mode, rng=0),
                  gain * math.sqrt(3.0 / fan))
    check_normal(init.kaiming_normal(shape, a=a, nonlinearity=nonlinearity, mode=mode, rng=0), gain / math.sqrt(fan))


def test_kaiming_rejects_an_unknown_mode():
    with pytest.raises(ValueError, match="'fan_in' or 'fan_out', got 'fanin'"):
        init.kaiming_uniform((3, 4), mode="fanin")
    with pytest.raises(ValueError, match="'fan_in' or 'fan_out'"):
        init.kaiming_normal((3, 4), mode="in")


def test_dcgan_normal():
    check_normal(init.dcgan_normal(LARGE, rng=0), 0.02)


def test_default_weight_and_bias_is_torchs_linear_default(torch):
    weight, bias = init.default_weight_and_bias(LARGE, LARGE[1], LARGE[0], rng=0)
    bound = 1.0 / math.sqrt(LARGE[1])
    check_uniform(weight, bound)
    assert bias.shape == (LARGE[0],) and np.abs(bias).max() <= bound
    # torch's kaiming_uniform_(a=sqrt(5)) bound, which this reproduces
    reference = torch.empty(LARGE, dtype=torch.float64)
    torch.nn.init.kaiming_uniform_(reference, a=math.sqrt(5))
    np.testing.assert_allclose(np.abs(reference.numpy()).max(), bound, rtol=1e-3)
    assert init.default_weight_and_bias((3, 4), 4, None, rng=0)[1] is None


def test_dtype_and_reproducibility():
    assert init.normal((2, 2), rng=0).dtype == np.float32
    assert init.kaiming_normal((4, 3), rng=0, dtype=np.float64).dtype == np.float64
    np.testing.assert_array_equal(init.xavier_uniform((4, 3), rng=7), init.xavier_uniform((4, 3), rng=7))
    assert not np.array_equal(init.xavier_uniform((4, 3), rng=7), init.xavier_uniform((4, 3), rng=8))


class Conv2d(Module):
    """A stand-in: init_dcgan recognises convolutions and batch norms by their class names."""

    def __init__(self, shape):
        super().__init__()
        self.weight = Parameter(np.ones(shape, dtype=np.float32))
        self.bias = Parameter(np.ones(shape[0], dtype=np.float32))


class ConvTranspose2d(Conv2d):
    pass


class BatchNorm2d(Module):
    def __init__(self, channels):
        super().__init__()
        self.weight = Parameter(np.zeros(channels, dtype=np.float32))
        self.bias = Parameter(np.ones(channels, dtype=np.float32))
        self.register_buffer("running_var", np.full(channels, 7.0, dtype=np.float32))


class Model(Module):
    def __init__(self):
        super().__init__()
        self.conv = Conv2d((256, 128, 4, 4))
        self.deconv = ConvTranspose2d((128, 64, 4, 4))
        self.norm = BatchNorm2d(100_000)
        self.fc = Linear(3, 2, rng=0)


def test_init_dcgan():
    model = Model()
    linear_weight = model.fc.weight.data.copy()
    assert init.init_dcgan(model, rng=0) is model
    check_normal(model.conv.weight.data, 0.02)
    check_normal(model.deconv.weight.data, 0.02)
    check_normal(model.norm.weight.data, 0.02, mean=1.0)
    for module in (model.conv, model.deconv, model.norm, model.fc):
        assert np.all(module.bias.data == 0)
        assert module.weight.data.dtype == np.float32
        assert module.weight.grad.shape == module.weight.data.shape
    np.testing.assert_array_equal(model.fc.weight.data, linear_weight)  # not a convolution: untouched
    assert np.all(model.norm.running_var == 7.0)  # buffers untouched


def test_init_dcgan_is_reproducible_and_keeps_dtype():
    a, b = Model().to(np.float64), Model().to(np.float64)
    init.init_dcgan(a, rng=3)
    init.init_dcgan(b, rng=3)
    assert a.conv.weight.data.dtype == np.float64
    np.testing.assert_array_equal(a.conv.weight.data, b.conv.weight.data)


def test_init_dcgan_reaches_the_weight_a_spectral_norm_wraps():
    from layers import Conv2d, SpectralNorm
    wrapped = SpectralNorm(Conv2d(3, 64, 4, rng=0))
    model = Sequential(wrapped)
    init.init_dcgan(model, rng=1)
    check_normal(wrapped.weight_orig.data, 0.02)   # the trainable weight, not the scratch copy
    assert np.all(wrapped.module.bias.data == 0)
