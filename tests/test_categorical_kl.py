"""CategoricalKLLoss / categorical_kl: KL(softmax(logits) || uniform), a discrete VAE latent's regulariser."""
import numpy as np
import pytest

from nnbox.gradcheck import gradcheck
from nnbox.losses import CategoricalKLLoss, categorical_kl


def _plain_kl(logits):
    """The definition, computed directly in float64: sum_k q log(q / (1/K)), per sample, summed over latents."""
    q = np.exp(logits - logits.max(axis=-1, keepdims=True))
    q /= q.sum(axis=-1, keepdims=True)
    per_row = (q * np.log(q * logits.shape[-1])).sum(axis=-1)
    return per_row.reshape(len(logits), -1).sum(axis=1)


@pytest.mark.parametrize("shape", [(4, 5), (3, 2, 4), (1, 1, 3), (2, 3, 2, 2)])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_gradcheck(rng, shape, reduction):
    gradcheck(CategoricalKLLoss(reduction), rng.standard_normal(shape) * 2, rng=rng)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_value_matches_the_definition(rng, reduction):
    logits = rng.standard_normal((6, 3, 7)) * 3
    per_sample = _plain_kl(logits)
    expected = per_sample.mean() if reduction == "mean" else per_sample.sum()
    np.testing.assert_allclose(float(CategoricalKLLoss(reduction)(logits)), expected, rtol=1e-12)


def test_zero_for_uniform_and_log_k_for_one_hot():
    value, grad = categorical_kl(np.zeros((2, 5)))
    np.testing.assert_allclose(float(value), 0.0, atol=1e-15)
    np.testing.assert_allclose(grad, 0.0, atol=1e-15)
    # a (near) one-hot code has no entropy: KL = log K
    value, _ = categorical_kl(np.array([[60.0, 0, 0, 0]]))
    np.testing.assert_allclose(float(value), np.log(4), rtol=1e-12)


def test_extreme_logits_stay_finite():
    value, grad = categorical_kl(np.array([[1e4, -1e4, 0.0], [-1e30, 1e30, 5.0]]))
    assert np.isfinite(float(value)) and np.isfinite(grad).all()
    np.testing.assert_allclose(float(value), np.log(3), rtol=1e-12)


def test_nonnegative_and_shift_invariant(rng):
    logits = rng.standard_normal((50, 6)) * 4
    value, grad = categorical_kl(logits, "sum")
    shifted_value, shifted_grad = categorical_kl(logits + rng.standard_normal((50, 1)) * 10, "sum")
    assert min(float(categorical_kl(row[None], "sum")[0]) for row in logits) > 0
    np.testing.assert_allclose(float(value), float(shifted_value), rtol=1e-10)
    np.testing.assert_allclose(grad, shifted_grad, atol=1e-12)
    np.testing.assert_allclose(grad.sum(axis=-1), 0, atol=1e-12)   # softmax is shift invariant


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_matches_torch_kl_div(torch, rng, reduction):
    logits = rng.standard_normal((5, 2, 4)) * 2
    t = torch.tensor(logits, requires_grad=True)
    log_q = torch.log_softmax(t, dim=-1)
    uniform = torch.full_like(log_q, 1 / 4)
    # KL(q || U) = sum q (log q - log U): kl_div(input=log U, target=log q, log_target=True) summed,
    # then divided by the batch size for the mean
    expected = torch.nn.functional.kl_div(uniform.log(), log_q, reduction="sum", log_target=True)
    expected = expected / 5 if reduction == "mean" else expected
    expected.backward()
    loss = CategoricalKLLoss(reduction)
    np.testing.assert_allclose(float(loss(logits)), expected.item(), rtol=1e-12)
    np.testing.assert_allclose(loss.backward(), t.grad.numpy(), rtol=1e-10, atol=1e-14)


def test_float32_keeps_its_dtype_and_upstream_gradient_scales(rng):
    logits = rng.standard_normal((4, 3)).astype(np.float32)
    loss = CategoricalKLLoss()
    value = loss(logits)
    grad = loss.backward()
    assert grad.dtype == np.float32 and value.shape == ()
    np.testing.assert_allclose(loss.backward(2.5), 2.5 * grad, rtol=1e-6)


def test_errors():
    loss = CategoricalKLLoss()
    with pytest.raises(ValueError, match=r"\(N, \.\.\., K\).*shape \(5,\)"):
        loss(np.zeros(5))
    with pytest.raises(TypeError, match="floating-point"):
        loss(np.zeros((2, 3), dtype=np.int64))
    with pytest.raises(TypeError, match="array of logits"):
        loss([[0.0, 1.0]])
    with pytest.raises(ValueError, match="reduction"):
        CategoricalKLLoss("none")
    with pytest.raises(RuntimeError, match="before forward"):
        CategoricalKLLoss().backward()


@pytest.mark.gpu
def test_gpu_matches_cpu(rng):
    import cupy
    logits = rng.standard_normal((4, 2, 5))
    value, grad = categorical_kl(logits)
    gpu_value, gpu_grad = categorical_kl(cupy.asarray(logits))
    np.testing.assert_allclose(float(gpu_value), float(value), rtol=1e-12)
    np.testing.assert_allclose(cupy.asnumpy(gpu_grad), grad, rtol=1e-10, atol=1e-14)
