"""BatchNorm1d and BatchNorm2d: gradient checks (train and eval, every layout, affine off, no running
statistics), torch parity of outputs, gradients and running statistics, float32 precision, errors, GPU."""
import numpy as np
import pytest

from layers import BatchNorm1d, BatchNorm2d
from layers.normalization import _BatchNorm
from nnbox.gradcheck import gradcheck

# (layer class, input shape); batch 1 only where a channel still has several values
TRAIN_CASES = [
    (BatchNorm1d, (2, 3)), (BatchNorm1d, (7, 5)), (BatchNorm1d, (1, 3, 4)), (BatchNorm1d, (3, 2, 5)),
    (BatchNorm2d, (1, 2, 3, 3)), (BatchNorm2d, (2, 3, 4, 5)), (BatchNorm2d, (3, 1, 3, 1)),
]
EVAL_CASES = [(BatchNorm1d, (1, 3)), (BatchNorm1d, (4, 3)), (BatchNorm1d, (1, 2, 5)), (BatchNorm2d, (1, 2, 3, 3)),
              (BatchNorm2d, (2, 3, 4, 5))]


def randomised(layer, rng):
    """Weights, biases and running statistics away from the identity (ones/zeros), so a mistake shows."""
    c = layer.num_features
    if layer.affine:
        layer.weight.data = (0.5 + rng.random(c)).astype(layer.weight.data.dtype)
        layer.bias.data = rng.standard_normal(c).astype(layer.bias.data.dtype)
    if layer.track_running_stats:
        layer.running_mean[...] = rng.standard_normal(c)
        layer.running_var[...] = 0.5 + rng.random(c)
    return layer


def data(rng, shape):
    """A batch with a per-channel offset and scale, as real activations have."""
    stat_shape = (1, shape[1]) + (1,) * (len(shape) - 2)
    return rng.standard_normal(shape) * (0.5 + rng.random(stat_shape)) * 2 + rng.standard_normal(stat_shape)


def torch_twin(torch, layer):
    """The torch layer with the same settings, parameters and running statistics, in float64."""
    twin = getattr(torch.nn, type(layer).__name__)(
        layer.num_features, eps=layer.eps, momentum=layer.momentum, affine=layer.affine,
        track_running_stats=layer.track_running_stats).double()
    with torch.no_grad():
        if layer.affine:
            twin.weight.copy_(torch.tensor(layer.weight.data))
            twin.bias.copy_(torch.tensor(layer.bias.data))
        if layer.track_running_stats:
            twin.running_mean.copy_(torch.tensor(layer.running_mean))
            twin.running_var.copy_(torch.tensor(layer.running_var))
    return twin


def compare_step(torch, layer, twin, x, dy, dx_rtol=1e-10):
    """One forward and backward of the layer and of its torch twin: the same output and dx."""
    xt = torch.tensor(x, requires_grad=True)
    yt = twin(xt)
    yt.backward(torch.tensor(dy))
    np.testing.assert_allclose(layer(x), yt.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(layer.backward(dy), xt.grad.numpy(), rtol=dx_rtol, atol=1e-12)


def compare_state(layer, twin):
    """The accumulated parameter gradients and the running statistics, those the layer has."""
    if layer.affine:
        np.testing.assert_allclose(layer.weight.grad, twin.weight.grad.numpy(), rtol=1e-11, atol=1e-12)
        np.testing.assert_allclose(layer.bias.grad, twin.bias.grad.numpy(), rtol=1e-11, atol=1e-12)
    if layer.track_running_stats:
        np.testing.assert_allclose(layer.running_mean, twin.running_mean.numpy(), rtol=1e-13, atol=1e-15)
        np.testing.assert_allclose(layer.running_var, twin.running_var.numpy(), rtol=1e-13)


# ---------------------------------------------------------------- gradient checks
@pytest.mark.parametrize("layer_class, shape", TRAIN_CASES, ids=str)
@pytest.mark.parametrize("affine", [True, False])
def test_gradcheck_train(layer_class, shape, affine, rng):
    layer = randomised(layer_class(shape[1], affine=affine), rng)
    report = gradcheck(layer, data(rng, shape), rng=rng)
    assert report.checked_entries["input 0"] == np.prod(shape)
    if affine:
        assert report.checked_entries["parameter 'weight'"] == shape[1]


@pytest.mark.parametrize("layer_class, shape", EVAL_CASES, ids=str)
@pytest.mark.parametrize("affine", [True, False])
def test_gradcheck_eval(layer_class, shape, affine, rng):
    layer = randomised(layer_class(shape[1], affine=affine), rng).eval()
    report = gradcheck(layer, data(rng, shape), rng=rng)
    assert report.checked_entries["input 0"] == np.prod(shape)


@pytest.mark.parametrize("layer_class, shape", [(BatchNorm1d, (4, 3)), (BatchNorm2d, (2, 3, 2, 3))], ids=str)
def test_gradcheck_without_running_stats_in_eval(layer_class, shape, rng):
    # no running statistics: eval normalises by the batch, so the full batch backward applies
    layer = randomised(layer_class(shape[1], track_running_stats=False), rng).eval()
    assert layer.running_mean is None and layer.running_var is None
    report = gradcheck(layer, data(rng, shape), rng=rng)
    assert report.checked_entries["input 0"] == np.prod(shape)


def test_gradcheck_frozen_parameters(rng):
    layer = randomised(BatchNorm2d(3), rng)
    layer.requires_grad_(False)
    report = gradcheck(layer, data(rng, (2, 3, 2, 2)), rng=rng)
    assert list(report.checked_entries) == ["input 0"]
    assert np.all(layer.weight.grad == 0) and np.all(layer.bias.grad == 0)


# ---------------------------------------------------------------- torch parity
@pytest.mark.parametrize("layer_class, shape", TRAIN_CASES + [(BatchNorm2d, (4, 3, 5, 6))], ids=str)
@pytest.mark.parametrize("affine", [True, False])
def test_torch_parity_training_steps_then_eval(layer_class, shape, affine, rng, torch):
    layer = randomised(layer_class(shape[1], momentum=0.3, affine=affine), rng).to(np.float64)
    twin = torch_twin(torch, layer).train()
    for _ in range(4):     # several steps: running statistics must follow PyTorch's update exactly
        compare_step(torch, layer, twin, data(rng, shape), rng.standard_normal(shape))
    compare_state(layer, twin)   # gradients accumulated over the four steps

    layer.eval(), twin.eval()
    eval_shape = (1,) + shape[1:]
    compare_step(torch, layer, twin, data(rng, eval_shape), rng.standard_normal(eval_shape), dx_rtol=1e-12)


SETTINGS = [dict(), dict(affine=False), dict(track_running_stats=False), dict(eps=1e-2, momentum=None),
            dict(eps=1e-3, affine=False, track_running_stats=False)]


@pytest.mark.parametrize("layer_class, shape", [(BatchNorm1d, (5, 3)), (BatchNorm1d, (3, 2, 4)),
                                                (BatchNorm2d, (2, 3, 4, 5))], ids=str)
@pytest.mark.parametrize("settings", SETTINGS, ids=str)
@pytest.mark.parametrize("training", [True, False])
def test_torch_parity_of_every_gradient_in_either_mode(layer_class, shape, settings, training, rng, torch):
    """One forward and backward in training or eval mode, for the settings a user may change: the output,
    dx, dweight and dbias (the latter in eval mode too, where the statistics are constants) and the
    running statistics, as torch's."""
    layer = randomised(layer_class(shape[1], **settings), rng).to(np.float64).train(training)
    twin = torch_twin(torch, layer).train(training)
    compare_step(torch, layer, twin, data(rng, shape), rng.standard_normal(shape))
    compare_state(layer, twin)


def test_torch_parity_without_running_stats(rng, torch):
    layer = randomised(BatchNorm1d(4, track_running_stats=False), rng).to(np.float64).eval()
    twin = torch_twin(torch, layer).eval()
    compare_step(torch, layer, twin, data(rng, (5, 4, 3)), rng.standard_normal((5, 4, 3)))


def test_state_dict_matches_torch_keys(torch):
    ours = set(BatchNorm2d(3).state_dict())
    theirs = set(torch.nn.BatchNorm2d(3).state_dict()) - {"num_batches_tracked"}
    assert ours == theirs == {"weight", "bias", "running_mean", "running_var"}


# ---------------------------------------------------------------- semantics and precision
def test_training_output_is_normalised(rng):
    layer = BatchNorm2d(3).to(np.float64)
    x = data(rng, (8, 3, 5, 5))
    y = layer(x)
    np.testing.assert_allclose(y.mean(axis=(0, 2, 3)), 0, atol=1e-12)
    var = x.var(axis=(0, 2, 3))
    np.testing.assert_allclose(y.var(axis=(0, 2, 3)), var / (var + 1e-5), rtol=1e-12)   # eps shrinks it a little


def test_running_statistics_worked_example():
    layer = BatchNorm1d(1, momentum=0.5).to(np.float64)
    layer(np.array([[1.0], [3.0]]))         # mean 2, biased var 1, unbiased var 2
    np.testing.assert_allclose(layer.running_mean, [1.0])      # 0.5 * 0 + 0.5 * 2
    np.testing.assert_allclose(layer.running_var, [1.5])       # 0.5 * 1 + 0.5 * 2
    np.testing.assert_allclose(layer.eval()(np.array([[1.0]])), [[0.0]], atol=1e-12)


@pytest.mark.parametrize("layer_class, shape", [(BatchNorm1d, (0, 3)), (BatchNorm1d, (0, 3, 5)), (BatchNorm2d, (0, 3, 2, 2))])
def test_an_empty_batch_in_eval_gives_empty_results(layer_class, shape):
    layer = layer_class(3).eval()
    y = layer(np.zeros(shape, np.float32))
    assert y.shape == shape and layer.backward(np.zeros(shape, np.float32)).shape == shape


def test_eval_does_not_touch_running_statistics(rng):
    layer = randomised(BatchNorm2d(2), rng).eval()
    before = {name: array.copy() for name, array in layer.state_dict().items()}
    layer(data(rng, (3, 2, 2, 2)).astype(np.float32))
    for name, array in layer.state_dict().items():
        np.testing.assert_array_equal(array, before[name])


def test_running_buffers_updated_in_place(rng):
    layer = BatchNorm1d(3)
    running_mean = layer.running_mean
    layer(data(rng, (4, 3)).astype(np.float32))
    assert layer.running_mean is running_mean and running_mean.any()


def test_float32_statistics_accumulated_in_float64(rng):
    """A large offset: float32 statistics would lose the variance; the output stays float32."""
    x = (1000.0 + 0.01 * rng.standard_normal((64, 4, 16, 16))).astype(np.float32)
    layer = BatchNorm2d(4, momentum=1.0)
    y = layer(x)
    assert y.dtype == np.float32 and layer.running_var.dtype == np.float32
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(layer.running_mean, x64.mean(axis=(0, 2, 3)), rtol=1e-7)
    np.testing.assert_allclose(layer.running_var, x64.var(axis=(0, 2, 3), ddof=1), rtol=1e-6)
    reference = (x64 - x64.mean(axis=(0, 2, 3), keepdims=True)) / np.sqrt(
        x64.var(axis=(0, 2, 3), keepdims=True) + 1e-5)
    np.testing.assert_allclose(y, reference, rtol=0, atol=1e-5)
    dx = layer.backward(rng.standard_normal(x.shape).astype(np.float32))
    assert dx.dtype == np.float32 and layer.weight.grad.dtype == np.float32


def test_float16_sums_do_not_overflow(rng):
    """65,536 values per channel, offset by 10: float16 sums would pass 65504 (inf, then NaN
    outputs and running statistics). The statistics and gradients are float16's rounding of the
    float32 layer's; only a parameter gradient whose true value passes 65504 may be inf."""
    x16 = (10.0 + rng.standard_normal((64, 2, 32, 32))).astype(np.float16)
    dy16 = rng.standard_normal(x16.shape).astype(np.float16)
    x32, dy32 = x16.astype(np.float32), dy16.astype(np.float32)      # the same values
    half, single = BatchNorm2d(2).to(np.float16), BatchNorm2d(2)
    y = half(x16)
    want = single(x32)
    assert y.dtype == np.float16 and np.isfinite(half.running_mean).all() and np.isfinite(half.running_var).all()
    few_ulps = 4 * np.finfo(np.float16).eps   # a few roundings to float16 of the largest value
    np.testing.assert_allclose(y, want, rtol=0, atol=few_ulps * np.abs(want).max())
    np.testing.assert_allclose(half.running_mean, single.running_mean, rtol=1e-3)
    np.testing.assert_allclose(half.running_var, single.running_var, rtol=1e-2)
    dx = half.backward(dy16)
    want_dx = single.backward(dy32)
    assert dx.dtype == np.float16
    np.testing.assert_allclose(dx, want_dx, rtol=0, atol=few_ulps * np.abs(want_dx).max())
    np.testing.assert_allclose(half.weight.grad, single.weight.grad, rtol=1e-2, atol=1.0)


@pytest.mark.gpu
def test_gpu_float16_sums_do_not_overflow(rng):
    # the CuPy kernels sum in float64, but returned the per-channel sums in float16: past 65504
    # they were inf, and so was dx
    import cupy
    x16 = (10.0 + rng.standard_normal((64, 2, 32, 32))).astype(np.float16)
    dy16 = (1.5 + rng.standard_normal(x16.shape)).astype(np.float16)
    cpu, gpu = BatchNorm2d(2).to(np.float16), BatchNorm2d(2).to(np.float16).to("gpu")
    cpu(x16)
    gpu(cupy.asarray(x16))
    want, got = cpu.backward(dy16), cupy.asnumpy(gpu.backward(cupy.asarray(dy16)))
    assert np.isfinite(got).all() and np.isfinite(want).all()
    np.testing.assert_allclose(got, want, rtol=0, atol=4 * np.finfo(np.float16).eps * np.abs(want).max())


def test_one_shared_implementation():
    assert BatchNorm1d.__mro__[1] is _BatchNorm and BatchNorm2d.__mro__[1] is _BatchNorm
    assert "forward" not in vars(BatchNorm1d) and "forward" not in vars(BatchNorm2d)


def test_options_and_repr():
    layer = BatchNorm2d(8, eps=1e-3, dtype=np.float64)
    assert layer.weight.data.dtype == np.float64 and layer.eps == 1e-3
    assert repr(layer) == "BatchNorm2d(8, eps=0.001, momentum=0.1, affine=True, track_running_stats=True)"
    bare = BatchNorm1d(3, affine=False)
    assert bare.parameters() == [] and bare.weight is None


# ---------------------------------------------------------------- errors
@pytest.mark.parametrize("layer_class, shape", [(BatchNorm1d, (1, 3)), (BatchNorm1d, (1, 3, 1)),
                                                (BatchNorm2d, (1, 3, 1, 1))], ids=str)
def test_single_value_per_channel_in_training(layer_class, shape):
    with pytest.raises(ValueError, match=rf"{layer_class.__name__}: expected more than 1 value per channel when "
                                         rf"training, got input shape {re_shape(shape)}"):
        layer_class(3)(np.zeros(shape))
    assert layer_class(3).eval()(np.zeros(shape)).shape == shape   # eval is fine


def re_shape(shape):
    return str(tuple(shape)).replace("(", r"\(").replace(")", r"\)")


def test_wrong_ndim_named():
    with pytest.raises(ValueError, match=r"BatchNorm1d expects a 2-D input \(N, C\) or a 3-D input \(N, C, L\) "
                                         r"with C = 3, got shape \(2, 3, 4, 5\)"):
        BatchNorm1d(3)(np.zeros((2, 3, 4, 5)))
    with pytest.raises(ValueError, match=r"BatchNorm2d expects a 4-D input \(N, C, H, W\) with C = 3, got shape \(2, 3\)"):
        BatchNorm2d(3)(np.zeros((2, 3)))


def test_wrong_channels_named():
    with pytest.raises(ValueError, match=r"BatchNorm2d expects 3 channels at axis 1: input shape \(2, 3, 4, 4\).*"
                                         r"got shape \(2, 5, 4, 4\)"):
        BatchNorm2d(3)(np.zeros((2, 5, 4, 4)))
    with pytest.raises(ValueError, match=r"BatchNorm1d expects 3 channels.*got shape \(4, 2\)"):
        BatchNorm1d(3)(np.zeros((4, 2)))


@pytest.mark.parametrize("kwargs", [dict(num_features=0), dict(num_features=3, momentum=1.5),
                                    dict(num_features=3, eps=0.0), dict(num_features="3")], ids=str)
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError, match="BatchNorm1d"):
        BatchNorm1d(**kwargs)


def test_backward_errors():
    layer = BatchNorm1d(3)
    with pytest.raises(RuntimeError, match="BatchNorm1d.backward was called before forward"):
        layer.backward(np.zeros((2, 3)))
    layer(np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"BatchNorm1d.backward expects dy .*\(2, 3\), got shape \(3, 2\)"):
        layer.backward(np.zeros((3, 2)))


# ---------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.parametrize("layer_class, shape", [(BatchNorm1d, (4, 3)), (BatchNorm1d, (2, 3, 5)),
                                                (BatchNorm2d, (2, 3, 4, 5))], ids=str)
@pytest.mark.parametrize("training", [True, False])
def test_gpu_gradcheck(layer_class, shape, training, rng):
    import cupy
    layer = randomised(layer_class(shape[1]), rng).train(training).to("gpu")
    gradcheck(layer, cupy.asarray(data(rng, shape)), rng=rng)


@pytest.mark.gpu
def test_gpu_matches_cpu_float32(rng):
    import cupy
    x = data(rng, (8, 3, 6, 6)).astype(np.float32)
    cpu, gpu = BatchNorm2d(3), BatchNorm2d(3).to("gpu")
    y_gpu = gpu(cupy.asarray(x))
    assert y_gpu.dtype == cupy.float32
    np.testing.assert_allclose(cupy.asnumpy(y_gpu), cpu(x), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(cupy.asnumpy(gpu.running_var), cpu.running_var, rtol=1e-6)
    np.testing.assert_allclose(cupy.asnumpy(gpu.running_mean), cpu.running_mean, rtol=1e-6, atol=1e-7)
    dy = data(rng, x.shape).astype(np.float32)
    np.testing.assert_allclose(cupy.asnumpy(gpu.backward(cupy.asarray(dy))), cpu.backward(dy), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(cupy.asnumpy(gpu.weight.grad), cpu.weight.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
def test_gpu_cumulative_average_matches_cpu(rng):
    import cupy
    cpu, gpu = BatchNorm2d(3, momentum=None), BatchNorm2d(3, momentum=None).to("gpu")
    for _ in range(3):
        x = data(rng, (4, 3, 5, 5)).astype(np.float32)
        cpu(x), gpu(cupy.asarray(x))
    np.testing.assert_allclose(cupy.asnumpy(gpu.running_mean), cpu.running_mean, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(cupy.asnumpy(gpu.running_var), cpu.running_var, rtol=1e-6)


def test_momentum_none_is_the_cumulative_average_as_in_torch(rng, torch):
    layer = BatchNorm2d(3, momentum=None).to(np.float64)
    twin = torch_twin(torch, layer).train()
    batches = [data(rng, (4, 3, 5, 5)) for _ in range(4)]
    for x in batches:
        layer(x)
        twin(torch.tensor(x))
    np.testing.assert_allclose(layer.running_mean, twin.running_mean.numpy(), rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(layer.running_var, twin.running_var.numpy(), rtol=1e-13)
    # the cumulative average of the batch means, by its definition
    np.testing.assert_allclose(layer.running_mean, np.mean([x.mean(axis=(0, 2, 3)) for x in batches], axis=0),
                               rtol=1e-12)
    assert int(layer.num_batches_tracked) == 4 == int(twin.num_batches_tracked)
    state = layer.state_dict()
    assert int(state["num_batches_tracked"]) == 4
    fresh = BatchNorm2d(3, momentum=None).to(np.float64)
    fresh.load_state_dict(state)
    assert int(fresh.num_batches_tracked) == 4
    fresh.reset_running_stats()
    assert int(fresh.num_batches_tracked) == 0
    assert "num_batches_tracked" not in BatchNorm2d(3).state_dict()   # default: keys unchanged


def test_a_single_value_per_channel_without_running_statistics_names_the_setting():
    layer = BatchNorm1d(3, track_running_stats=False).eval()
    with pytest.raises(ValueError, match=r"more than 1 value per channel with track_running_stats=False.*2 or more\)?$"):
        layer(np.ones((1, 3), np.float32))
    with pytest.raises(ValueError, match="when training.*or eval\\(\\)"):
        BatchNorm1d(3)(np.ones((1, 3), np.float32))
