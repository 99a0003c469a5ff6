"""gan/cyclegan.py: gradient checks of the networks, the cycle loss and both objectives (float64, tiny
instances), the trainer step's G_AB gradient against central differences, training lowers the cycle
loss, checkpoint round trip, errors, GPU."""
import copy
import re

import numpy as np
import pytest

from gan.cyclegan import (CycleGANConfig, CycleGANTrainer, DiscriminatorObjective, GeneratorObjective,
                          ImageTranslator, PatchDiscriminator, cycle_consistency_loss)
from gan.losses import GAN_LOSSES
from gan.trainer import NonFiniteLossError
from nnbox.gradcheck import gradcheck
from nnbox.module import Module

TINY = dict(g_width=2, d_width=2, n_residual=1)


def _images(rng, n, size=4):
    """Images in (-1, 1), away from Tanh's saturation."""
    return np.tanh(rng.standard_normal((n, 3, size, size)))


def _networks(g_norm="none", d_norm="batch", width=2):
    return (ImageTranslator(3, width, 1, g_norm, rng=1), ImageTranslator(3, width, 1, g_norm, rng=2),
            PatchDiscriminator(3, width, d_norm, rng=3), PatchDiscriminator(3, width, d_norm, rng=4))


class _CycleLoss(Module):
    """cycle_consistency_loss as a Module, so gradcheck can drive it."""

    def forward(self, reconstructed, original):
        loss, d_rec, d_orig = cycle_consistency_loss(reconstructed, original)
        self.save_for_backward(d_rec=d_rec, d_orig=d_orig)
        return loss

    def backward(self, grad=1.0):
        saved = self.saved_for_backward()
        return saved.d_rec * grad, saved.d_orig * grad


def test_cycle_loss_value_and_gradcheck(rng):
    r, o = rng.standard_normal((2, 3, 4, 4)), rng.standard_normal((2, 3, 4, 4))
    loss, d_rec, d_orig = cycle_consistency_loss(r, o)
    assert float(loss) == pytest.approx(np.abs(r - o).mean())
    np.testing.assert_array_equal(d_orig, -d_rec)
    gradcheck(_CycleLoss(), r, o, wrt=(0, 1), rng=0)


@pytest.mark.parametrize("norm", ["none", "batch"])
def test_generator_gradcheck(rng, norm):
    g = ImageTranslator(3, 2, n_residual=1, norm=norm, rng=0)
    x = _images(rng, 2)
    assert g(x.astype(np.float32)).shape == x.shape
    gradcheck(g, x, rng=0, max_entries=10)


@pytest.mark.parametrize("norm", ["none", "batch"])
def test_discriminator_gradcheck_and_patch_map(rng, norm):
    d = PatchDiscriminator(3, 2, norm=norm, rng=0)
    x = _images(rng, 2, size=8)
    assert d(x.astype(np.float32)).shape == (2, 1, 2, 2)   # one logit per patch
    gradcheck(d, x, rng=0, max_entries=10)


def test_discriminator_objective_gradcheck(rng):
    d = PatchDiscriminator(3, 2, "batch", rng=0)
    gradcheck(DiscriminatorObjective(d), _images(rng, 2), _images(rng, 3), wrt=(0, 1), rng=0, max_entries=8)


@pytest.mark.parametrize("free", ["G_AB", "G_BA"])
def test_generator_objective_gradcheck_through_frozen_discriminators(rng, free):
    """The whole L_G (adversarial + cycle + identity) into one generator's weights and both inputs, with the
    discriminators frozen as in the trainer (the other generator is frozen to keep the check short)."""
    g_ab, g_ba, d_a, d_b = _networks()
    objective = GeneratorObjective(g_ab, g_ba, d_a, d_b, lambda_identity=0.5)
    for net in (d_a, d_b, g_ba if free == "G_AB" else g_ab):
        net.requires_grad_(False)
    report = gradcheck(objective, _images(rng, 2), _images(rng, 3), wrt=(0, 1), rng=0,
                       max_entries=3 if free == "G_AB" else 2)
    prefix = "g_ab." if free == "G_AB" else "g_ba."
    assert any(prefix in label for label in report.checked_entries)
    assert not any("d_a." in label or "d_b." in label for label in report.checked_entries)


def test_generator_objective_gradcheck_into_discriminators(rng):
    """Without freezing, L_G's gradient into the discriminators' weights is right too."""
    g_ab, g_ba, d_a, d_b = _networks()
    g_ab.requires_grad_(False)
    g_ba.requires_grad_(False)
    gradcheck(GeneratorObjective(g_ab, g_ba, d_a, d_b), _images(rng, 2), _images(rng, 2), wrt=(0, 1), rng=0,
              max_entries=2)


@pytest.mark.parametrize("gan_loss", sorted(set(GAN_LOSSES) - {"least_squares"}))
def test_both_objectives_with_the_other_gan_losses(rng, gan_loss):
    """CycleGANConfig.gan_loss may be any gan/losses name; the tests above use the paper's least squares.
    L_G into G_AB's weights and both inputs (the other networks frozen, as above), then D's loss."""
    g_ab, g_ba, d_a, d_b = _networks()
    objective = GeneratorObjective(g_ab, g_ba, d_a, d_b, gan_loss=gan_loss, lambda_identity=0.5)
    for net in (d_a, d_b, g_ba):
        net.requires_grad_(False)
    report = gradcheck(objective, _images(rng, 2), _images(rng, 3), wrt=(0, 1), rng=0, max_entries=3)
    assert any("g_ab." in label for label in report.checked_entries)
    d = PatchDiscriminator(3, 2, "batch", rng=0)
    gradcheck(DiscriminatorObjective(d, gan_loss), _images(rng, 2), _images(rng, 3), wrt=(0, 1), rng=0,
              max_entries=8)


def test_generator_objective_parts_add_up(rng):
    objective = GeneratorObjective(*_networks(), lambda_cycle=10.0, lambda_identity=0.5).to(np.float64)
    a, b = _images(rng, 2), _images(rng, 2)
    total = float(objective(a, b))
    p = {k: float(v) for k, v in objective.parts.items()}
    assert total == pytest.approx(p["adv_ab"] + p["adv_ba"] + 10 * (p["cycle_a"] + p["cycle_b"])
                                  + 5 * (p["identity_a"] + p["identity_b"]))
    # the adversarial term is the paper's MSE(D(fake), 1), twice gan/losses' 0.5 mean((x - 1)^2)
    fake_a, fake_b = objective.fakes
    assert p["adv_ab"] == pytest.approx(np.mean((objective.d_b(fake_b) - 1) ** 2))
    assert p["cycle_a"] == pytest.approx(np.abs(objective.g_ba(fake_b) - a).mean())


def _float64_trainer(**options):
    trainer = CycleGANTrainer(CycleGANConfig(**{**TINY, **options}))
    for net in trainer.networks.values():
        net.to(np.float64)
    return trainer


def test_the_training_step_gives_g_ab_the_numerical_gradient_of_l_g(rng):
    """The G_AB gradient the step hands to Adam equals central differences of L_G at the step's weights."""
    trainer = _float64_trainer(lambda_identity=0.5)
    a, b = _images(rng, 2), _images(rng, 2)
    captured, weights = {}, {}
    adam_step = trainer.opt_g.step

    def capture():  # Adam's G step: D has not moved yet, G has its gradient
        captured.update({name: p.grad.copy() for name, p in trainer.G_AB.named_parameters()})
        weights.update({name: {k: v.copy() for k, v in net.state_dict().items()}
                        for name, net in trainer.networks.items()})
        adam_step()

    trainer.opt_g.step = capture
    trainer.step(a, b)
    for name, net in trainer.networks.items():   # back to the weights the gradient was taken at
        net.load_state_dict(weights[name])
    params = dict(trainer.G_AB.named_parameters())
    objective, eps = trainer.g_objective, 1e-6
    checked = 0
    for name, grad in captured.items():
        flat = params[name].data.reshape(-1)
        for index in np.random.default_rng(0).choice(flat.size, size=1, replace=False):
            original = flat[index]
            flat[index] = original + eps
            plus = float(objective(a, b))
            flat[index] = original - eps
            minus = float(objective(a, b))
            flat[index] = original
            numerical = (plus - minus) / (2 * eps)
            assert grad.reshape(-1)[index] == pytest.approx(numerical, rel=1e-5, abs=1e-7), (name, index)
            checked += 1
    assert checked >= 12


def test_a_few_steps_reduce_the_cycle_loss():
    """A fixed tiny batch of red and blue blobs: 25 steps (Adam 2e-3) cut the cycle loss by more than a third."""
    rng = np.random.default_rng(0)
    shapes = (np.tanh(3 * rng.standard_normal((8, 1, 8, 8))) + 1) / 2
    a = (shapes * np.array([1.0, 0.1, 0.1])[None, :, None, None] * 2 - 1).astype(np.float32)
    b = (shapes[::-1] * np.array([0.1, 0.2, 1.0])[None, :, None, None] * 2 - 1).astype(np.float32)
    trainer = CycleGANTrainer(CycleGANConfig(g_width=4, d_width=4, n_residual=0, lr=2e-3))
    cycles = [(r["cycle_a"] + r["cycle_b"]) for r in (trainer.step(a, b) for _ in range(25))]
    assert np.mean(cycles[-3:]) < 0.65 * cycles[0], cycles
    assert len(trainer.history) == 25 and trainer.step_count == 25


def test_a_checkpoint_of_broken_weights_is_not_written(tmp_path, rng):
    trainer = CycleGANTrainer(CycleGANConfig(**TINY, seed=3))
    path = trainer.save_checkpoint(tmp_path / "checkpoint.npz")
    saved = path.read_bytes()
    trainer.networks["G_BA"].parameters()[0].data[...] = np.nan
    with pytest.raises(NonFiniteLossError, match=r"not writing .*non-finite weights in 1 arrays \(G_BA "):
        trainer.save_checkpoint(path)
    assert path.read_bytes() == saved


def _training_state(trainer):
    """Copies of every network's weights and buffers and of both optimisers' states."""
    return copy.deepcopy({**{name: net.state_dict() for name, net in trainer.networks.items()},
                          "opt_g": trainer.opt_g.state_dict(), "opt_d": trainer.opt_d.state_dict()})


def _overflowing_trainer(rng):
    """(trainer, a, b) after one step, with a G_AB weight that is finite but whose products overflow: the next
    step's losses are NaN."""
    a, b = _images(rng, 4).astype(np.float32), _images(rng, 4).astype(np.float32)
    trainer = CycleGANTrainer(CycleGANConfig(**TINY, seed=3))
    trainer.step(a, b)                                  # Adam has moments; BatchNorm's statistics have moved
    trainer.G_AB.parameters()[0].data[...] = 3e38
    return trainer, a, b


def test_a_non_finite_loss_before_any_checkpoint_says_to_start_again(rng):
    # there is nothing to resume from before the first checkpoint (cyclegan_mnist writes none before epoch 1)
    trainer, a, b = _overflowing_trainer(rng)
    with pytest.raises(NonFiniteLossError, match=r"no checkpoint had been written yet\. Lower the learning rate, "
                                                 r"then start again\.$"):
        trainer.step(a, b)


def test_a_non_finite_loss_stops_the_step_before_any_update(tmp_path, rng):
    # the losses were checked after both optimiser steps: the step that raised had already changed the weights
    trainer, a, b = _overflowing_trainer(rng)
    path = trainer.save_checkpoint(tmp_path / "checkpoint.npz")
    before = _training_state(trainer)
    with pytest.raises(NonFiniteLossError, match=r"step 1 \(epoch 1\), before its updates: a non-finite value, "
                                                 r"g_loss nan, .*the last good checkpoint, "
                                                 + re.escape(f"{path} (after epoch 0), is kept. Lower the learning "
                                                             f"rate, then resume from it.")):
        trainer.step(a, b)
    after = _training_state(trainer)
    for part, arrays in before.items():
        for name, value in arrays.items():
            np.testing.assert_array_equal(after[part][name], value, err_msg=f"{part} {name}")
    assert trainer.step_count == 1 and len(trainer.history) == 1


def test_a_non_finite_step_shows_the_trainers_error_and_no_numpy_warning(rng, raises_quietly):
    # NumPy's "overflow encountered in matmul" and "invalid value encountered in reduce" came ahead of it
    trainer, a, b = _overflowing_trainer(rng)
    with raises_quietly(NonFiniteLossError, match="a non-finite value"):
        trainer.step(a, b)
    with pytest.warns(RuntimeWarning, match="overflow"):   # outside the step NumPy warns as before
        np.float32(3e38) * np.float32(10)


def test_checkpoint_round_trip_continues_identically(tmp_path, rng):
    a, b = _images(rng, 4).astype(np.float32), _images(rng, 4).astype(np.float32)
    trainer = CycleGANTrainer(CycleGANConfig(**TINY, d_norm="batch", lambda_identity=0.5, seed=3))
    trainer.step(a, b)
    trainer.epoch = 1
    path = trainer.save_checkpoint(tmp_path / "checkpoint.npz", loader={"batches_done": 0})
    loaded, sections = CycleGANTrainer.load(path)
    assert sections["loader"] == {"batches_done": 0}
    assert loaded.config == trainer.config and (loaded.step_count, loaded.epoch) == (1, 1)
    assert loaded.history.records == trainer.history.records
    for name, net in trainer.networks.items():
        for key, value in net.state_dict().items():
            np.testing.assert_array_equal(loaded.networks[name].state_dict()[key], value, err_msg=f"{name}.{key}")
    # both continue the same: Adam's moments and BatchNorm's running statistics came back too
    first, second = trainer.step(a, b), loaded.step(a, b)
    assert {k: v for k, v in first.items() if k != "step_seconds"} == \
        {k: v for k, v in second.items() if k != "step_seconds"}
    np.testing.assert_array_equal(trainer.translate(a, "BA"), loaded.translate(a, "BA"))


def test_translate_uses_batch_statistics_and_keeps_the_training_state(rng):
    trainer = CycleGANTrainer(CycleGANConfig(**TINY, g_norm="batch"))
    a = _images(rng, 4).astype(np.float32)
    before = {k: v.copy() for k, v in trainer.G_AB.state_dict().items()}
    out = trainer.translate(a, "AB", batch_size=2)
    assert out.shape == a.shape and out.dtype == np.float32 and np.all(np.abs(out) <= 1)
    np.testing.assert_allclose(out[:2], trainer.translate(a[:2], "AB"), atol=1e-6)  # per batch, as in training
    assert trainer.G_AB.training
    for key, value in trainer.G_AB.state_dict().items():   # the running averages were not touched
        np.testing.assert_array_equal(value, before[key])
    trainer.G_AB.eval()
    np.testing.assert_allclose(trainer.translate(a, "AB", batch_statistics=False), trainer.G_AB(a), atol=1e-6)
    assert not trainer.G_AB.training


def test_errors_name_the_problem(rng, tmp_path):
    with pytest.raises(ValueError, match="multiples of 4"):
        ImageTranslator(3, 2)(np.zeros((1, 3, 6, 6), np.float32))
    with pytest.raises(ValueError, match="3 channels"):
        PatchDiscriminator(3, 2)(np.zeros((1, 1, 8, 8), np.float32))
    with pytest.raises(ValueError, match="norm"):
        CycleGANConfig(g_norm="instance")
    with pytest.raises(ValueError, match="unknown GAN loss"):
        CycleGANConfig(gan_loss="l2")
    trainer = CycleGANTrainer(CycleGANConfig(**TINY))
    with pytest.raises(ValueError, match="direction"):
        trainer.translate(np.zeros((1, 3, 4, 4), np.float32), "AA")
    with pytest.raises(ValueError, match="same channels and size"):
        trainer.step(np.zeros((2, 3, 4, 4), np.float32), np.zeros((2, 3, 8, 8), np.float32))
    with pytest.raises(RuntimeError, match="before its forward|before forward"):
        GeneratorObjective(*_networks()).backward()
    from nnbox.serialization import save_checkpoint
    save_checkpoint(tmp_path / "other.npz", trainer={"format": 99})
    with pytest.raises(ValueError, match="not a CycleGAN checkpoint"):
        CycleGANTrainer.load(tmp_path / "other.npz")


@pytest.mark.gpu
def test_gpu_step_matches_cpu(rng):
    a, b = _images(rng, 4).astype(np.float32), _images(rng, 4).astype(np.float32)
    cpu = CycleGANTrainer(CycleGANConfig(**TINY))
    gpu = CycleGANTrainer(CycleGANConfig(**TINY, device="gpu"))
    for _ in range(2):
        want, got = cpu.step(a, b), gpu.step(a, b)
    for key in ("g_loss", "cycle_a", "cycle_b", "d_a_loss", "d_b_loss"):
        assert got[key] == pytest.approx(want[key], rel=1e-3, abs=1e-5), key
    np.testing.assert_allclose(gpu.translate(a, "AB"), cpu.translate(a, "AB"), atol=1e-4)


@pytest.mark.gpu
def test_a_gpu_step_copies_nothing_but_its_logged_scalars(rng, device_copies):
    """Issue 6, as for GANTrainer: with both batches on the device (the example uploads them before the
    step), a step uploads nothing and fetches its logged scalars in one copy; any other wait raises."""
    import cupy

    from nnbox import backend
    trainer = CycleGANTrainer(CycleGANConfig(**TINY, device="gpu"))
    a, b = (cupy.asarray(_images(rng, 4).astype(np.float32)) for _ in range(2))
    trainer.step(a, b)                           # the first step builds what later ones reuse
    with device_copies(backend) as (uploads, fetches):
        record = trainer.step(a, b)
    assert uploads == [] and len(fetches) == 1 and len(fetches[0]) == 1
    assert np.isfinite(record["g_loss"]) and np.isfinite(record["d_a_loss"])
