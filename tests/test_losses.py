"""Losses: gradients against central differences, parity with torch, stability at extreme inputs, errors."""
import numpy as np
import pytest

from nnbox.gradcheck import gradcheck
from nnbox.losses import (BCELoss, BCEWithLogitsLoss, CrossEntropyLoss, GaussianKLLoss, L1Loss, MSELoss,
                          bce_with_logits, gaussian_kl)

REDUCTIONS = ["mean", "sum"]
SHAPE = (6, 3)


def away_from(values, kinks, margin=1e-3):
    """Move entries within `margin` of a kink (where the derivative jumps) away from it."""
    close = np.abs(values - kinks) < margin
    return np.where(close, kinks + 2 * margin, values)


def make_case(kind, rng, dtype=np.float64):
    """(loss module, inputs) with inputs valid for that loss."""
    if kind == "bce_logits":
        logits = np.concatenate([rng.standard_normal(SHAPE[0] * 2), rng.uniform(-50, 50, SHAPE[0])]).reshape(SHAPE)
        return BCEWithLogitsLoss, (logits, rng.uniform(0, 1, SHAPE))
    if kind == "bce":
        return BCELoss, (rng.uniform(0.05, 0.95, SHAPE), rng.uniform(0, 1, SHAPE))
    if kind == "mse":
        return MSELoss, (rng.standard_normal(SHAPE), rng.standard_normal(SHAPE))
    if kind == "l1":
        target = rng.standard_normal(SHAPE)
        return L1Loss, (away_from(rng.standard_normal(SHAPE), target), target)
    if kind == "cross_entropy":
        logits = rng.standard_normal((7, 5)) * 3
        return CrossEntropyLoss, (logits, rng.integers(0, 5, size=7))
    if kind == "kl":
        return GaussianKLLoss, (rng.standard_normal((5, 4)), rng.standard_normal((5, 4)))
    if kind == "kl_3d":   # latents (N, C, L): summed over every axis after the batch's
        return GaussianKLLoss, (rng.standard_normal((3, 2, 4)), rng.standard_normal((3, 2, 4)))
    raise ValueError(kind)


KINDS = ["bce_logits", "bce", "mse", "l1", "cross_entropy", "kl", "kl_3d"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gradcheck(kind, reduction, rng):
    cls, inputs = make_case(kind, rng)
    wrt = (0, 1) if kind.startswith("kl") else (0,)
    report = gradcheck(cls(reduction=reduction), *inputs, wrt=wrt, rng=rng)
    assert report.checked_entries["input 0"] == inputs[0].size
    if kind.startswith("kl"):
        assert report.checked_entries["input 1"] == inputs[1].size


def torch_reference(torch, kind, inputs, reduction):
    """(value, gradient(s)) computed by torch autograd."""
    F = torch.nn.functional
    x = torch.tensor(inputs[0], requires_grad=True)
    if kind.startswith("kl"):
        logvar = torch.tensor(inputs[1], requires_grad=True)
        per_sample = -0.5 * (1 + logvar - x**2 - logvar.exp()).flatten(1).sum(dim=1)
        value = per_sample.mean() if reduction == "mean" else per_sample.sum()
        value.backward()
        return value.item(), (x.grad.numpy(), logvar.grad.numpy())
    t = torch.tensor(inputs[1])
    function = {"bce_logits": F.binary_cross_entropy_with_logits, "bce": F.binary_cross_entropy,
                "mse": F.mse_loss, "l1": F.l1_loss, "cross_entropy": F.cross_entropy}[kind]
    value = function(x, t, reduction=reduction)
    value.backward()
    return value.item(), (x.grad.numpy(),)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_matches_torch(torch, kind, reduction, rng):
    cls, inputs = make_case(kind, rng)
    loss = cls(reduction=reduction)
    value = loss(*inputs)
    grads = loss.backward()
    grads = grads if isinstance(grads, tuple) else (grads,)
    expected_value, expected_grads = torch_reference(torch, kind, inputs, reduction)
    assert isinstance(value, np.ndarray) and value.shape == ()
    np.testing.assert_allclose(float(value), expected_value, rtol=1e-12)
    assert len(grads) == len(expected_grads)
    for grad, expected in zip(grads, expected_grads):
        np.testing.assert_allclose(grad, expected, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_bce_with_logits_is_finite_and_exact_at_extreme_logits(torch, reduction):
    logits = np.array([-1e4, -800.0, -50.0, -30.0, -1e-8, 0.0, 1e-8, 30.0, 50.0, 800.0, 1e4]).reshape(-1, 1)
    for target_value in (0.0, 0.3, 1.0):
        target = np.full_like(logits, target_value)
        loss = BCEWithLogitsLoss(reduction=reduction)
        with np.errstate(over="raise", invalid="raise", divide="raise"):  # not even an intermediate overflow
            value = loss(logits, target)
            grad = loss.backward()
        assert np.isfinite(value) and np.all(np.isfinite(grad))
        expected_value, (expected_grad,) = torch_reference(torch, "bce_logits", (logits, target), reduction)
        np.testing.assert_allclose(float(value), expected_value, rtol=1e-12)
        np.testing.assert_allclose(grad, expected_grad, rtol=1e-12, atol=1e-15)


def test_bce_with_logits_values_at_extremes():
    logits = np.array([50.0, -50.0, 50.0, -50.0])
    target = np.array([1.0, 0.0, 0.0, 1.0])
    value, grad = bce_with_logits(logits, target, reduction="sum")
    # right answers cost e^-50 ~ 2e-22 each; wrong ones 50 each
    np.testing.assert_allclose(float(value), 100.0, rtol=1e-15)
    np.testing.assert_allclose(grad, [-0.0, 0.0, 1.0, -1.0], atol=1e-21)


def test_bce_on_saturated_probabilities_matches_torch_clamping(torch):
    p = np.array([0.0, 1.0, 0.0, 1.0, 0.5])
    t = np.array([1.0, 0.0, 0.0, 1.0, 1.0])
    loss = BCELoss(reduction="sum")
    value = loss(p, t)
    grad = loss.backward()
    expected_value, (expected_grad,) = torch_reference(torch, "bce", (p, t), "sum")
    np.testing.assert_allclose(float(value), expected_value, rtol=1e-12)
    np.testing.assert_allclose(float(value), 200.0 + np.log(2), rtol=1e-12)  # two logs clamped at -100
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-12)
    assert np.all(np.isfinite(grad))


def test_bce_refuses_values_outside_unit_interval():
    with pytest.raises(ValueError, match=r"BCELoss.*probabilities.*1\.5"):
        BCELoss()(np.array([0.2, 1.5]), np.array([0.0, 1.0]))


def test_cross_entropy_is_stable_for_huge_logits(torch):
    logits = np.array([[1e4, 0.0, -1e4], [-800.0, 800.0, 0.0]])
    target = np.array([2, 1])
    loss = CrossEntropyLoss(reduction="sum")
    with np.errstate(over="raise", invalid="raise"):
        value = loss(logits, target)
        grad = loss.backward()
    expected_value, (expected_grad,) = torch_reference(torch, "cross_entropy", (logits, target), "sum")
    np.testing.assert_allclose(float(value), expected_value, rtol=1e-12)
    np.testing.assert_allclose(grad, expected_grad, atol=1e-15)


def test_gaussian_kl_reduction_sums_latents_then_averages_batch(rng):
    mu, logvar = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    per_sample = -0.5 * (1 + logvar - mu**2 - np.exp(logvar)).sum(axis=1)
    value_mean, _, _ = gaussian_kl(mu, logvar, "mean")
    value_sum, _, _ = gaussian_kl(mu, logvar, "sum")
    np.testing.assert_allclose(float(value_mean), per_sample.mean(), rtol=1e-14)
    np.testing.assert_allclose(float(value_sum), per_sample.sum(), rtol=1e-14)
    # zero exactly at the prior
    assert float(gaussian_kl(np.zeros((2, 3)), np.zeros((2, 3)))[0]) == 0.0


@pytest.mark.parametrize("kind", KINDS)
def test_upstream_gradient_scales_the_result(kind, rng):
    cls, inputs = make_case(kind, rng)
    loss = cls()
    loss(*inputs)
    ones = loss.backward()
    scaled = loss.backward(np.array(-2.5))
    ones, scaled = (ones, scaled) if isinstance(ones, tuple) else ((ones,), (scaled,))
    for one, three in zip(ones, scaled):
        np.testing.assert_allclose(three, -2.5 * one, rtol=1e-15)
    with pytest.raises(ValueError, match="one number"):
        loss.backward(np.ones(3))


@pytest.mark.parametrize("kind", KINDS)
def test_float32_in_float32_out(kind, rng):
    cls, inputs = make_case(kind, rng)
    inputs = tuple(x.astype(np.float32) if x.dtype.kind == "f" else x for x in inputs)
    loss = cls()
    value = loss(*inputs)
    grads = loss.backward()
    grads = grads if isinstance(grads, tuple) else (grads,)
    assert value.shape == () and value.dtype == np.float32
    assert all(grad.dtype == np.float32 for grad in grads)


@pytest.mark.parametrize("kind", ["bce_logits", "bce", "mse", "l1"])
def test_float64_targets_keep_a_float32_loss(kind, rng):
    # targets like np.ones(n) are float64: they made the loss float64 while the gradient was float32
    cls, (input, target) = make_case(kind, rng)
    loss = cls()
    value = loss(input.astype(np.float32), target)
    assert value.dtype == np.float32 and loss.backward().dtype == np.float32
    np.testing.assert_allclose(value, cls()(input, target), rtol=1e-5)


@pytest.mark.parametrize("reduction, expected", [("mean", 1.0), ("sum", np.inf)])
def test_float16_losses_are_summed_without_overflow(reduction, expected):
    # 70,000 squared errors of 1: a float16 sum passes 65504 (inf, and the mean inf or NaN); the
    # mean is 1, the sum itself does not fit in float16
    value = MSELoss(reduction=reduction)(np.ones(70_000, np.float16), np.zeros(70_000, np.float16))
    assert value.dtype == np.float16 and value == expected


def test_bce_refuses_nan_probabilities():
    with pytest.raises(ValueError, match=r"BCELoss.*probabilities in \[0, 1\], got values in \[nan, nan\]"):
        BCELoss()(np.array([0.2, np.nan]), np.array([0.0, 1.0]))


@pytest.mark.parametrize("cls", [BCEWithLogitsLoss, BCELoss, MSELoss, L1Loss, GaussianKLLoss])
def test_shape_mismatch_names_both_shapes(cls):
    with pytest.raises(ValueError, match=rf"{cls.__name__}.*\(4, 1\).*\(4,\)"):
        cls()(np.full((4, 1), 0.5), np.full((4,), 0.5))


def test_cross_entropy_input_errors():
    loss = CrossEntropyLoss()
    with pytest.raises(ValueError, match=r"\(N, C\).*\(4, 3\).*\(4, 1\)"):
        loss(np.zeros((4, 3)), np.zeros((4, 1), dtype=np.int64))
    with pytest.raises(TypeError, match="integer class indices"):
        loss(np.zeros((4, 3)), np.zeros(4))
    with pytest.raises(ValueError, match=r"\[0, 2\].*\[0, 3\]"):
        loss(np.zeros((4, 3)), np.array([0, 1, 2, 3]))


def test_backward_before_forward_and_bad_reduction():
    with pytest.raises(RuntimeError, match="before forward"):
        MSELoss().backward()
    with pytest.raises(ValueError, match=r"reduction must be one of.*'none'"):
        MSELoss(reduction="none")


@pytest.mark.gpu
@pytest.mark.parametrize("kind", KINDS)
def test_gpu_matches_cpu(kind, rng):
    import cupy

    cls, inputs = make_case(kind, rng)
    cpu = cls()
    value = cpu(*inputs)
    grads = cpu.backward()
    gpu = cls()
    value_gpu = gpu(*[cupy.asarray(x) for x in inputs])
    grads_gpu = gpu.backward()
    assert isinstance(value_gpu, cupy.ndarray) and value_gpu.shape == ()
    np.testing.assert_allclose(float(value_gpu), float(value), rtol=1e-12)
    grads, grads_gpu = (grads, grads_gpu) if isinstance(grads, tuple) else ((grads,), (grads_gpu,))
    for grad, grad_gpu in zip(grads, grads_gpu):
        np.testing.assert_allclose(cupy.asnumpy(grad_gpu), grad, rtol=1e-12, atol=1e-15)


@pytest.mark.gpu
def test_gpu_range_checks():
    # checked on the device too (one transfer each): CuPy's indexing would wrap a class index of 3
    import cupy
    with pytest.raises(ValueError, match=r"\[0, 2\].*\[0, 3\]"):
        CrossEntropyLoss()(cupy.zeros((4, 3)), cupy.asarray([0, 1, 2, 3]))
    with pytest.raises(ValueError, match=r"probabilities.*\[0.2, 1.5\]"):
        BCELoss()(cupy.asarray([0.2, 1.5]), cupy.asarray([0.0, 1.0]))
