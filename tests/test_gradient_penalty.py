"""WGAN-GP's gradient penalty (gan/gradient_penalty.py): exact weight gradients, torch parity, eps per
sample, errors; the trainer's loss="wgan_gp" (steps, history, exact resume)."""
import numpy as np
import pytest

from gan.gradient_penalty import gradient_penalty, interpolate, penalty_terms
from gan.models import DCGANDiscriminator, FacesDiscriminator, MLPDiscriminator
from gan.trainer import GANTrainer, TrainConfig, stream_rng
from layers import second_order
from layers.activations import LeakyReLU, ReLU, Tanh
from layers.conv import Conv2d
from layers.dropout import Dropout
from layers.linear import Linear
from layers.normalization import BatchNorm2d
from layers.pooling import MaxPool2d
from layers.shape import Flatten
from nnbox import backend
from nnbox.data import DataLoader
from nnbox.gradcheck import gradcheck
from nnbox.module import Module, Sequential
from nnbox.synthetic_faces import synthetic_faces

SEED = 7


class Penalty(Module):
    """P(real, fake; critic weights) as a Module, so nnbox.gradcheck checks its weight gradients.

    forward computes P alone (eps from a fresh generator seeded SEED: the same every call);
    backward(upstream) adds upstream * dP/dtheta into the critic's grads (P is linear in lam) and
    returns dP/d(real) = eps * dP/d(x_hat)."""

    def __init__(self, critic, lam=10.0):
        super().__init__()
        self.critic, self.lam = critic, lam

    def forward(self, real, fake):
        self.save_for_backward(real=real, fake=fake)
        return penalty_terms(self.critic, real, fake, self.lam, SEED)["value"]

    def backward(self, upstream):
        saved = self.saved_for_backward()
        terms = penalty_terms(self.critic, saved.real, saved.fake, self.lam * float(upstream), SEED)
        _, dx_hat = second_order.chain_double_backward(terms["layers"], terms["received"], terms["ddx"])
        return np.zeros_like(saved.real) if dx_hat is None else terms["eps"] * dx_hat


def fix_dropout_masks(critic, x):
    """Replay the masks of one forward in every later forward (gradcheck needs a deterministic critic)."""
    critic(x)
    for layer in critic.modules():
        if isinstance(layer, Dropout):
            layer.fixed_mask = layer.last_mask


def pair(rng, shape):
    return rng.uniform(-1, 1, shape), rng.uniform(-1, 1, shape)


def scaled_up(critic, factor):
    """Multiply the weights so that ||grad_x D|| is around 1 or more (both branches of the penalty)."""
    for param in critic.parameters():
        param.data *= factor
    return critic


CRITICS = {
    "dcgan_no_bn": lambda: scaled_up(DCGANDiscriminator(32, channels=1, width=2, batch_norm=False, rng=1), 8.0),
    "faces_dropout": lambda: FacesDiscriminator(16, channels=2, width=2, dropout=0.3, hidden=4, rng=2),
    "mlp_tanh": lambda: Sequential(Flatten(), Linear(18, 5, rng=3), Tanh(), Linear(5, 1, rng=3)),
}
SHAPES = {"dcgan_no_bn": (3, 1, 32, 32), "faces_dropout": (3, 2, 16, 16), "mlp_tanh": (4, 2, 3, 3)}


@pytest.mark.parametrize("name", sorted(CRITICS))
def test_gradcheck_of_the_penalty_with_respect_to_the_critic_weights(rng, name):
    critic = CRITICS[name]().to(np.float64)
    real, fake = pair(rng, SHAPES[name])
    fix_dropout_masks(critic, real)
    # the input gradient wrt `real` is checked too. It is nonzero only through Tanh's curvature: the
    # piecewise-linear critics have a zero Hessian in x, so there the check only confirms a zero.
    report = gradcheck(Penalty(critic), real, fake, rng=rng, max_entries=25, atol=1e-7, rtol=1e-5)
    assert report.checked_entries["input 0"] > 0
    penalty = Penalty(critic)
    penalty(real, fake)
    d_real = penalty.backward(1.0)
    assert (np.abs(d_real).max() > 1e-3) == (name == "mlp_tanh")
    assert all(key.startswith(("input", "parameter 'critic.")) for key in report.max_abs_error)


def torch_critic(layers, torch):
    """The chain as a torch function with the same weights (float64 leaf tensors), and those tensors."""
    F = torch.nn.functional
    params, steps = [], []
    for layer in layers:
        tensors = {name: torch.tensor(p.data, requires_grad=True) for name, p in layer.named_parameters()}
        params += list(tensors.values())
        if isinstance(layer, Linear):
            steps.append(lambda x, t=tensors: F.linear(x, t["weight"], t["bias"]))
        elif isinstance(layer, Conv2d):
            steps.append(lambda x, t=tensors, l=layer: F.conv2d(x, t["weight"], t["bias"], l.stride, l.padding))
        elif isinstance(layer, MaxPool2d):
            steps.append(lambda x, l=layer: F.max_pool2d(x, l.kernel_size, l.stride, l.padding))
        elif isinstance(layer, LeakyReLU):
            steps.append(lambda x, l=layer: F.leaky_relu(x, l.negative_slope))
        elif isinstance(layer, Dropout):
            steps.append(lambda x, m=torch.tensor(layer.saved_for_backward().scaled_mask): x * m)
        elif isinstance(layer, Flatten):
            steps.append(lambda x: x.flatten(1))
        elif isinstance(layer, Tanh):
            steps.append(torch.tanh)
        else:
            raise AssertionError(type(layer).__name__)

    def forward(x):
        for step in steps:
            x = step(x)
        return x
    return forward, params


@pytest.mark.parametrize("name", sorted(CRITICS))
def test_torch_parity_of_the_penalty_and_its_weight_gradients(rng, torch, name):
    critic = CRITICS[name]().to(np.float64)
    real, fake = pair(rng, SHAPES[name])
    fix_dropout_masks(critic, real)                # the same masks for the torch copy
    critic.zero_grad()
    value, stats = gradient_penalty(critic, real, fake, lam=10.0, rng=SEED)
    x_hat, _ = interpolate(real, fake, SEED)
    critic(x_hat)
    forward, params = torch_critic(second_order.chain(critic), torch)

    x = torch.tensor(x_hat, requires_grad=True)
    (g,) = torch.autograd.grad(forward(x).sum(), x, create_graph=True)
    norms = g.flatten(1).norm(dim=1)
    penalty = 10.0 * ((norms - 1) ** 2).mean()
    penalty.backward()
    assert float(value) == pytest.approx(penalty.item(), rel=1e-12)
    np.testing.assert_allclose(float(stats["grad_norm"]), norms.mean().item(), rtol=1e-12)
    for param, tensor in zip(critic.parameters(), params):
        expected = np.zeros(param.shape) if tensor.grad is None else tensor.grad.numpy()
        np.testing.assert_allclose(param.grad, expected, rtol=1e-9, atol=1e-12)
    assert any(np.abs(p.grad).max() > 1e-6 for p in critic.parameters())


def test_a_linear_critic_matches_the_closed_form(rng):
    """D(x) = <w, x> + b has grad_x D = w for every sample: P = lam (||w|| - 1)^2, dP/dw = 2 lam (||w|| - 1) w / ||w||."""
    critic = Sequential(Flatten(), Linear(12, 1, rng=rng)).to(np.float64)
    w = critic[1].weight.data
    real, fake = pair(rng, (5, 3, 2, 2))
    value, _ = gradient_penalty(critic, real, fake, lam=3.0, rng=rng)
    norm = np.linalg.norm(w)
    assert float(value) == pytest.approx(3.0 * (norm - 1) ** 2, rel=1e-12)
    np.testing.assert_allclose(critic[1].weight.grad, 6.0 * (norm - 1) * w / norm, rtol=1e-12)
    assert not critic[1].bias.grad.any()
    critic.zero_grad()
    w /= norm                                      # a 1-Lipschitz linear critic: no penalty, no gradient
    value, _ = gradient_penalty(critic, real, fake, rng=rng)
    assert float(value) < 1e-20 and np.abs(critic[1].weight.grad).max() < 1e-12


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_sample_with_zero_input_gradient_adds_no_nan(dtype):
    # one of four samples has every ReLU input below 0, so its input gradient is exactly 0: its
    # penalty term is lam (0 - 1)^2 / n and its gradient 0. (2 lam / n) / tiny overflowed to inf,
    # and inf * 0 put NaN into every weight gradient for batches of 4 or fewer at lam = 10.
    critic = Sequential(Linear(2, 4, rng=0), ReLU(), Linear(4, 1, rng=1)).to(dtype)
    critic[0].weight.data[...] = np.abs(critic[0].weight.data)
    critic[0].bias.data[...] = 0
    real = np.array([[1, 1], [2, 1], [1, 3], [-5, -5]], dtype)
    fake = np.array([[0, 1], [1, 2], [2, 2], [-4, -6]], dtype)
    critic.zero_grad()
    value, stats = gradient_penalty(critic, real, fake, lam=10.0, rng=0)
    assert float(stats["grad_norm_min"]) == 0.0 and np.isfinite(float(value))
    assert all(np.isfinite(p.grad).all() for p in critic.parameters())
    # the dead sample contributes nothing: the same gradients as the three live samples alone,
    # with the mean over four instead of three
    alone = Sequential(Linear(2, 4, rng=0), ReLU(), Linear(4, 1, rng=1)).to(dtype)
    alone.load_state_dict(critic.state_dict())
    alone.zero_grad()
    eps = interpolate(real, fake, 0)[1]
    x_hat = eps * real + (1 - eps) * fake
    gradient_penalty(alone, x_hat[:3], x_hat[:3], lam=10.0 * 3 / 4, rng=0)
    for with_dead, live in zip(critic.parameters(), alone.parameters()):
        np.testing.assert_allclose(with_dead.grad, live.grad, rtol=1e-5, atol=1e-7)


def test_eps_is_drawn_per_sample_not_per_pixel():
    real, fake = np.ones((6, 3, 4, 4), np.float32), np.zeros((6, 3, 4, 4), np.float32)
    x_hat, eps = interpolate(real, fake, np.random.default_rng(5))
    assert eps.shape == (6, 1, 1, 1) and eps.dtype == np.float32
    np.testing.assert_allclose(eps.reshape(-1), np.random.default_rng(5).random(6).astype(np.float32))
    for i in range(6):                             # each sample is one constant image eps_i
        assert np.all(x_hat[i] == eps[i, 0, 0, 0])
    assert len(np.unique(eps)) == 6


def test_the_penalty_adds_to_existing_gradients_and_leaves_first_order_grads_out(rng):
    critic = CRITICS["mlp_tanh"]().to(np.float64)
    real, fake = pair(rng, SHAPES["mlp_tanh"])
    critic.zero_grad()
    gradient_penalty(critic, real, fake, rng=1)
    alone = [p.grad.copy() for p in critic.parameters()]
    for param in critic.parameters():
        param.grad[...] = 1.0
    gradient_penalty(critic, real, fake, rng=1)
    for param, grad in zip(critic.parameters(), alone):
        np.testing.assert_allclose(param.grad, grad + 1.0, rtol=1e-12)
    assert all(p.requires_grad for p in critic.parameters())


def test_errors_name_the_problem(rng):
    with pytest.raises(TypeError, match="BatchNorm2d has no double backward"):
        gradient_penalty(DCGANDiscriminator(32, channels=1, width=2, rng=0), *pair(rng, (2, 1, 32, 32)))
    with pytest.raises(TypeError, match="SpectralNorm has no double backward"):
        gradient_penalty(MLPDiscriminator(4, channels=1, hidden=2, spectral_norm=True, rng=0), *pair(rng, (2, 1, 4, 4)))
    with pytest.raises(ValueError, match="same shape"):
        gradient_penalty(CRITICS["mlp_tanh"](), rng.uniform(size=(2, 2, 3, 3)), rng.uniform(size=(3, 2, 3, 3)))


def test_a_dcgan_critic_without_batch_norm_has_none():
    critic = DCGANDiscriminator(32, width=4, batch_norm=False, rng=0)
    assert not any(isinstance(m, BatchNorm2d) for m in critic.modules())
    assert all(m.bias is not None for m in critic.modules() if isinstance(m, Conv2d))


# --------------------------------------------------------------------------- the trainer
SIZE, BATCH = 16, 8


def wgan_gp_config(**overrides):
    settings = dict(arch="faces", image_size=SIZE, latent_dim=8, width=4, n_samples=4, progress=False,
                    report=False, seed=3, loss="wgan_gp", balance="ratio", n_d=2, optimizer="adam",
                    lr_g=1e-4, lr_d=1e-4, beta1=0.0, beta2=0.9, label_smoothing=0.0, steps_per_epoch=2)
    settings.update(overrides)
    return TrainConfig(**settings)


def loader_of(images):
    return DataLoader(images, BATCH, shuffle=True, drop_last=True, rng=stream_rng(3, "data"))


def test_wgan_gp_training_records_the_penalty_and_resumes_exactly(tmp_path):
    faces = synthetic_faces(16, SIZE, rng=0)
    whole = GANTrainer.from_config(wgan_gp_config(), tmp_path / "whole")
    whole.fit(loader_of(faces), epochs=2)
    records = list(whole.history)
    assert [r["train_g"] for r in records] == [0, 1, 0, 1]
    assert all(r["gp"] > 0 and r["grad_norm"] > 0 for r in records)
    assert all(r["wasserstein"] == pytest.approx(r["d_real"] - r["d_fake"]) for r in records)

    first = GANTrainer.from_config(wgan_gp_config(), tmp_path / "split")
    first.fit(loader_of(faces), epochs=1)
    resumed = GANTrainer.resume(tmp_path / "split")
    resumed.fit(loader_of(faces), epochs=2)
    for (name, a), (_, b) in zip(whole.D.state_dict().items(), resumed.D.state_dict().items()):
        np.testing.assert_array_equal(a, b, err_msg=name)
    assert [r["gp"] for r in resumed.history] == [r["gp"] for r in records]


def test_wgan_gp_adds_the_penalty_gradient_to_the_critic_step(tmp_path):
    """With plain SGD, D's step with the penalty minus D's step without it is -lr * dP/dtheta, P computed
    directly on the batch and G's first fakes with the trainer's eps stream (D without dropout, whose
    masks would differ)."""
    from gan.trainer import build_models
    from gan.tricks import sample_latent
    lr = 1e-2
    settings = dict(n_d=1, optimizer="sgd", beta1=0.0, lr_d=lr, model_options={"d_dropout": 0.0})
    batch = next(iter(loader_of(synthetic_faces(8, SIZE, rng=0))))
    steps = {}
    for weight in (5.0, 0.0):
        trainer = GANTrainer.from_config(wgan_gp_config(gp_weight=weight, **settings), tmp_path / str(weight))
        trainer.step(batch)
        steps[weight] = [p.data.copy() for p in trainer.D.parameters()]
        assert (trainer.history[-1]["gp"] > 0) == (weight > 0)
    config = wgan_gp_config(gp_weight=5.0, **settings)
    generator, critic = build_models(config)
    fake = generator(sample_latent(BATCH, config.latent_dim, "normal", stream_rng(config.seed, "latent")))
    gradient_penalty(critic, batch, fake, 5.0, stream_rng(config.seed, "penalty"))
    for with_gp, without, param in zip(steps[5.0], steps[0.0], critic.parameters()):
        np.testing.assert_allclose((without - with_gp) / lr, param.grad, rtol=1e-3, atol=1e-4)
    assert max(np.abs(p.grad).max() for p in critic.parameters()) > 1e-2


def test_wgan_gp_config_errors():
    with pytest.raises(ValueError, match="gp_weight"):
        wgan_gp_config(gp_weight=-1.0)


@pytest.mark.gpu
def test_the_penalty_on_the_gpu_matches_the_cpu(rng):
    import cupy
    results = []
    real, fake = pair(rng, SHAPES["faces_dropout"])
    for device in ("cpu", "gpu"):
        critic = FacesDiscriminator(16, channels=2, width=2, dropout=0.0, hidden=4, rng=2).to(np.float64).to(device)
        value, _ = gradient_penalty(critic, backend.to_device(real, device), backend.to_device(fake, device), rng=SEED)
        results.append((float(value), [backend.to_numpy(p.grad) for p in critic.parameters()]))
        assert device == "cpu" or isinstance(critic.parameters()[0].grad, cupy.ndarray)
    assert results[1][0] == pytest.approx(results[0][0], rel=1e-10)
    for cpu, gpu in zip(results[0][1], results[1][1]):
        np.testing.assert_allclose(gpu, cpu, rtol=1e-9, atol=1e-12)


# --------------------------------------------------------------------------- the example
@pytest.fixture(scope="module")
def faces_gan():
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "examples" / "faces_gan.py"
    spec = importlib.util.spec_from_file_location("faces_gan_example_wgan_gp", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_example_sets_the_wgan_gp_recipe_unless_told_otherwise(faces_gan):
    t = faces_gan.config_from_args(vars(faces_gan.build_parser().parse_args(["--loss", "wgan_gp"]))).train
    assert (t.loss, t.optimizer, t.lr_g, t.lr_d, t.beta1, t.beta2) == ("wgan_gp", "adam", 1e-4, 1e-4, 0.0, 0.9)
    assert (t.balance, t.n_d, t.label_smoothing, t.gp_weight) == ("ratio", 5, 0.0, 10.0)
    t = faces_gan.config_from_args(vars(faces_gan.build_parser().parse_args(
        ["--loss", "wgan_gp", "--gp-weight", "5", "--lr-d", "3e-4", "--n-d", "3"]))).train
    assert (t.gp_weight, t.lr_g, t.lr_d, t.n_d) == (5.0, 1e-4, 3e-4, 3)


def test_the_example_runs_wgan_gp(faces_gan, tmp_path, capsys):
    import json
    out = tmp_path / "run"
    assert faces_gan.main(["--dataset", "synthetic", "--max-images", "64", "--batch-size", "32", "--width", "4",
                           "--latent-dim", "8", "--no-progress", "--no-report", "--loss", "wgan_gp", "--epochs", "1",
                           "--out", str(out)]) == 0
    assert "wgan_gp loss, ratio balancing" in capsys.readouterr().out
    history = json.loads((out / "history.json").read_text())
    assert len(history) == 2 and all(r["gp"] > 0 and r["train_d"] == 1 for r in history)
