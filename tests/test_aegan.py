"""AEGAN (gan/aegan.py): float64 gradient checks of every loss term through the composites G(E(x)) and
E(G(z)), the discriminators' loss, training that lowers the reconstruction error, exact resume, errors."""
import numpy as np
import pytest

from gan.aegan import (LOSSES, AEGANConfig, AEGANNetworks, AEGANTrainer, DiscriminatorLoss, Encoder,
                       GeneratorEncoderLoss, LossWeights, build_aegan, plot_aegan_losses, save_reconstruction_grid)
from gan.history import History
from gan.trainer import CHECKPOINT_NAME, NonFiniteLossError
from nnbox.data import DataLoader
from nnbox.gradcheck import gradcheck

LATENT = 3
# tiny instances: DCGAN at 32x32 (the real architecture) and an MLP at 8x8 (no convolutions)
TINY = {"dcgan": dict(arch="dcgan", image_size=32, channels=3, width=2),
        "mlp": dict(arch="mlp", image_size=8, channels=2, width=4, d_dropout=0.0),
        "faces": dict(arch="faces", image_size=16, channels=3, width=2, dropout=0.0)}
# which networks each term of L_GE reaches (D_x and D_z are left unfrozen in these checks)
TERMS = {"rec_image": {"generator", "encoder"},
         "rec_latent": {"generator", "encoder"},
         "adv_image": {"generator", "encoder", "image_discriminator"},
         "adv_latent": {"generator", "encoder", "latent_discriminator"}}   # D_z also judges E(G(z))


def tiny_networks(arch, seed=1):
    """A tiny AEGAN with random biases. DCGAN starts its biases at 0, and so narrow a G paints flat
    patches where ReLU zeroed a whole neighbourhood: D_x's and E's first convolution then output
    exactly 0, LeakyReLU's kink, and central differences across it mean nothing."""
    networks = build_aegan(latent_dim=LATENT, latent_hidden=4, rng=seed, **TINY[arch])
    rng = np.random.default_rng(100 + seed)
    for net in networks:
        for name, param in net.named_parameters():
            if name.endswith("bias"):
                param.data = rng.normal(0.0, 0.1, param.data.shape).astype(param.data.dtype)
    return networks


def batch(arch, n=3, seed=0):
    options = TINY[arch]
    rng = np.random.default_rng(seed)
    x = np.tanh(rng.standard_normal((n, options["channels"], options["image_size"], options["image_size"])))
    return x, rng.standard_normal((n, LATENT))


def only(term):
    return LossWeights(**{name: float(name == term) for name in TERMS})


def reached(networks):
    """The networks with a nonzero parameter gradient."""
    return {name for name, net in zip(AEGANNetworks._fields, networks)
            if any(p.grad is not None and np.abs(p.grad).max() > 0 for p in net.parameters())}


@pytest.mark.parametrize("term", sorted(TERMS))
def test_each_generator_encoder_term_gradient_through_the_composites(term):
    networks = tiny_networks("mlp")
    objective = GeneratorEncoderLoss(networks, weights=only(term))
    x, z = batch("mlp")
    report = gradcheck(objective, x, z, wrt=(0, 1), rng=2, max_entries=4)
    assert {"input 0", "input 1"} <= set(report.checked_entries)
    assert reached(networks) == TERMS[term]          # the check covered every network the term depends on


def test_weighted_total_gradient_through_the_faces_networks():
    """The faces encoder (3x3 convolutions and max pools, no dropout) and generator, end to end."""
    networks = tiny_networks("faces", seed=2)
    objective = GeneratorEncoderLoss(networks, weights=LossWeights(adv_image=0.5, adv_latent=0.5, rec_image=1.0,
                                                                   rec_latent=0.25))
    x, z = batch("faces", n=2, seed=5)
    report = gradcheck(objective, x, z, wrt=(0, 1), rng=6, max_entries=3)
    assert {f"parameter 'encoder.{name}'" for name, _ in networks.encoder.named_parameters()} \
        <= set(report.checked_entries)
    assert reached(networks) == set(AEGANNetworks._fields)


def test_weighted_total_gradient_through_dcgan_and_frozen_discriminators():
    networks = tiny_networks("dcgan", seed=3)
    weights = LossWeights(adv_image=0.3, adv_latent=0.7, rec_image=1.5, rec_latent=0.5)
    objective = GeneratorEncoderLoss(networks, weights=weights)
    x, z = batch("dcgan", n=2, seed=4)
    gradcheck(objective, x, z, wrt=(0, 1), rng=5, max_entries=2)
    assert reached(networks) == set(AEGANNetworks._fields)
    value = float(objective(x, z))
    assert value == pytest.approx(sum(getattr(weights, k) * v for k, v in objective.terms.items()), rel=1e-12)
    for net in networks[2:]:                         # as in the trainer's G/E turn
        net.requires_grad_(False)
    for net in networks:
        net.zero_grad()
    objective(x, z)
    objective.backward(1.0)
    assert reached(networks) == {"generator", "encoder"}


@pytest.mark.parametrize("arch", sorted(TINY))
def test_discriminator_loss_gradient(arch):
    networks = tiny_networks(arch, seed=5)
    loss = DiscriminatorLoss(networks.image_discriminator, networks.latent_discriminator)
    x, z = batch(arch, seed=6)
    images, latents = batch(arch, n=6, seed=7)[0], batch(arch, n=6, seed=8)[1]   # [G(z); G(E(x))], [E(x); E(G(z))]
    report = gradcheck(loss, x, z, images, latents, wrt=(0, 1, 2, 3), rng=9, max_entries=4)
    assert {f"parameter 'image_discriminator.{n}'" for n, _ in networks.image_discriminator.named_parameters()} \
        <= set(report.checked_entries)
    assert set(loss.terms) == {"d_image", "d_latent"}


@pytest.mark.parametrize("loss", [name for name in LOSSES if name != "non_saturating"])
def test_both_objectives_with_the_other_gan_losses(loss):
    """AEGANConfig.loss may be any of LOSSES; the tests above use the default, non-saturating."""
    networks = tiny_networks("mlp", seed=6)
    x, z = batch("mlp", seed=11)
    weights = LossWeights(adv_image=0.5, adv_latent=0.5, rec_image=1.0, rec_latent=0.5)
    report = gradcheck(GeneratorEncoderLoss(networks, loss=loss, weights=weights), x, z, wrt=(0, 1), rng=2,
                       max_entries=4)
    assert reached(networks) == set(AEGANNetworks._fields)
    assert {f"parameter 'generator.{n}'" for n, _ in networks.generator.named_parameters()} \
        <= set(report.checked_entries)
    images, latents = batch("mlp", n=6, seed=12)[0], batch("mlp", n=6, seed=13)[1]
    gradcheck(DiscriminatorLoss(networks.image_discriminator, networks.latent_discriminator, loss=loss),
              x, z, images, latents, wrt=(0, 1, 2, 3), rng=9, max_entries=4)


def test_networks_shapes_and_encoder_head():
    G, E, Dx, Dz = build_aegan("dcgan", image_size=64, latent_dim=5, width=4, rng=0)
    x = np.zeros((2, 3, 64, 64), np.float32)
    assert E(x).shape == (2, 5) and G(E(x)).shape == (2, 3, 64, 64)
    assert Dx(x).shape == (2, 1) and Dz(E(x)).shape == (2, 1)
    assert E.main[-2].out_channels == 5              # DCGAN D's logit convolution, widened to latent_dim
    faces_encoder = Encoder("faces", image_size=16, latent_dim=7, width=2, rng=0)
    assert faces_encoder(np.zeros((1, 3, 16, 16), np.float32)).shape == (1, 7)
    assert not any(type(m).__name__ == "Dropout" for m in faces_encoder.modules())


def smooth_images(n, size=8, seed=0):
    """A coloured blob on a coloured background, float32 (n, 3, size, size) in [-0.9, 0.9]: a stand-in
    for faces that an autoencoder learns in a few steps."""
    rng = np.random.default_rng(seed)
    grid = np.linspace(-1, 1, size)
    yy, xx = np.meshgrid(grid, grid, indexing="ij")
    centres = rng.uniform(-0.5, 0.5, (n, 2, 1, 1))
    blob = np.exp(-((xx - centres[:, 0]) ** 2 + (yy - centres[:, 1]) ** 2) / 0.2)[:, None]
    colours, background = rng.uniform(-0.9, 0.9, (2, n, 3, 1, 1))
    return (blob * colours + (1 - blob) * background).astype(np.float32)


def small_config(**changes):
    """An MLP AEGAN on 8x8 images (convolutions are checked above; here the training loop is tested)."""
    values = dict(arch="mlp", image_size=8, latent_dim=8, width=32, latent_hidden=16, lr=2e-3, lr_d=2e-3,
                  n_samples=4, n_reference=4, progress=False)
    return AEGANConfig(**{**values, **changes})


def test_training_lowers_the_reconstruction_error(tmp_path):
    trainer = AEGANTrainer.from_config(small_config(), tmp_path)
    x = smooth_images(16)
    records = [trainer.step(x) for _ in range(25)]
    first = np.mean([r["rec_image"] for r in records[:3]])
    last = np.mean([r["rec_image"] for r in records[-3:]])
    assert last < 0.7 * first
    for key in ("ge_loss", "d_loss", "adv_image", "adv_latent", "rec_latent", "d_image", "d_latent",
                "dx_acc_real", "dx_acc_fake", "dx_acc_recon", "dz_acc_prior", "dz_acc_encoded", "dz_acc_generated",
                "images_per_sec"):
        assert np.isfinite(records[-1][key])
    assert 0.0 <= records[-1]["dz_acc_encoded"] <= 1.0 and 0.0 <= records[-1]["dz_acc_generated"] <= 1.0


def test_overwrite_deletes_the_old_epoch_figures_and_no_other_file(tmp_path):
    # the old glob epoch_*.png also deleted a user's epoch_001_copy.png
    for folder in ("samples", "reconstructions"):
        (tmp_path / folder).mkdir()
        for name in ("epoch_000.png", "epoch_001_copy.png"):
            (tmp_path / folder / name).write_text("a picture")
    AEGANTrainer.from_config(small_config(), tmp_path, overwrite=True)
    assert sorted(path.relative_to(tmp_path).as_posix() for path in tmp_path.rglob("*.png")) == [
        "reconstructions/epoch_001_copy.png", "samples/epoch_001_copy.png"]


def loader(images, seed=0):
    return DataLoader(images, batch_size=4, shuffle=True, drop_last=True, rng=seed, prefetch=False)


def test_resume_continues_exactly_and_writes_the_epoch_figures(tmp_path):
    images = smooth_images(8)
    config = small_config(steps_per_epoch=2, seed=3)
    straight = AEGANTrainer.from_config(config, tmp_path / "straight")
    straight.fit(loader(images), epochs=2)

    first = AEGANTrainer.from_config(config, tmp_path / "split")
    first.fit(loader(images), epochs=1)
    resumed = AEGANTrainer.resume(tmp_path / "split")
    assert resumed.epoch == 1 and resumed.global_step == 2
    resumed.fit(loader(images), epochs=2)
    for a, b in zip(straight.networks, resumed.networks):
        for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
            np.testing.assert_array_equal(x, y, err_msg=name)
    assert [r["ge_loss"] for r in straight.history] == [r["ge_loss"] for r in resumed.history]

    run = tmp_path / "split"
    for name in ("samples/epoch_000.png", "samples/epoch_002.png", "reconstructions/epoch_002.png",
                 "history.csv", "config.json", CHECKPOINT_NAME):
        assert (run / name).is_file(), name
    # write_figures (plots, interpolations) runs in tests/test_aegan_example.py


def test_a_diverging_step_shows_the_trainers_error_and_no_numpy_warning(tmp_path, raises_quietly):
    # NumPy's "overflow encountered in matmul" and "invalid value encountered in matmul" came ahead of it.
    # The first step's updates make the weights huge: the second step's losses are NaN.
    trainer = AEGANTrainer.from_config(small_config(lr=1e20, lr_d=1e20), tmp_path)
    x = smooth_images(8)
    trainer.step(x)
    with raises_quietly(NonFiniteLossError, match=r"step 1: a non-finite loss \(L_GE nan"):
        trainer.step(x)


def test_weights_broken_by_an_epochs_last_update_are_not_checkpointed(tmp_path):
    images = smooth_images(8)
    trainer = AEGANTrainer.from_config(small_config(steps_per_epoch=2, seed=3), tmp_path)
    trainer.fit(loader(images), epochs=1)
    saved = (tmp_path / CHECKPOINT_NAME).read_bytes()
    optimizer = trainer.optimizers["latent_discriminator"]
    real_step = optimizer.step

    def step_that_blows_up():                    # after the step's losses were computed and logged
        real_step()
        if trainer.global_step == 3:
            optimizer.params[0].data[...] = np.nan

    optimizer.step = step_that_blows_up
    with pytest.raises(NonFiniteLossError, match=r"end of epoch 2: non-finite weights in 1 arrays "
                                                 r"\(latent_discriminator "):
        trainer.fit(loader(images), epochs=2)
    assert (tmp_path / CHECKPOINT_NAME).read_bytes() == saved
    assert not (tmp_path / "samples" / "epoch_002.png").exists()
    with pytest.raises(NonFiniteLossError, match="not writing .*latent_discriminator"):
        trainer.save_checkpoint()                # nor by a direct call
    assert (tmp_path / CHECKPOINT_NAME).read_bytes() == saved


def test_reconstruction_grid_interleaves_rows(tmp_path):
    from PIL import Image
    originals, reconstructions = -np.ones((3, 3, 4, 4), np.float32), np.ones((3, 3, 4, 4), np.float32)
    path = save_reconstruction_grid(originals, reconstructions, tmp_path / "r.png", per_row=2)
    picture = np.asarray(Image.open(path))
    # rows: originals (black) 0, reconstructions (white) 1, originals 2, reconstructions 3; padding 2 px
    centres = [2 + r * 6 + 2 for r in range(4)]
    assert [int(picture[c, 4, 0]) for c in centres] == [0, 255, 0, 255]


def test_errors_are_clear(tmp_path):
    networks = tiny_networks("mlp")
    objective = GeneratorEncoderLoss(networks)
    x, z = batch("mlp")
    with pytest.raises(ValueError, match="one prior sample per image"):
        objective(x, z[:2])
    with pytest.raises(ValueError, match=r"Encoder expects 8x8 images"):
        networks.encoder(np.zeros((1, 2, 16, 16)))
    with pytest.raises(ValueError, match=r"LatentDiscriminator expects latent vectors z of shape \(N, 3\)"):
        networks.latent_discriminator(np.zeros((2, 4)))
    with pytest.raises(RuntimeError, match="before forward"):
        GeneratorEncoderLoss(tiny_networks("mlp")).backward(1.0)
    with pytest.raises(ValueError, match="loss must be one of"):
        AEGANConfig(loss="wasserstein")
    with pytest.raises(ValueError, match="rec_image must be a finite number >= 0"):
        LossWeights(rec_image=-1.0)
    with pytest.raises(TypeError, match="unexpected keyword argument 'rec_imag'"):
        AEGANConfig(weights={"rec_imag": 1.0})
    with pytest.raises(ValueError, match="unknown architecture"):
        Encoder("resnet")
    with pytest.raises(FileNotFoundError, match="cannot resume"):
        AEGANTrainer.resume(tmp_path / "nothing")
    AEGANTrainer.from_config(small_config(), tmp_path / "run").save_checkpoint()
    with pytest.raises(FileExistsError, match="already holds a run"):
        AEGANTrainer.from_config(small_config(), tmp_path / "run")
    with pytest.raises(ValueError, match="latent_dim"):
        AEGANTrainer(build_aegan("mlp", image_size=8, latent_dim=4, width=2, rng=0), small_config(), tmp_path / "other")
    with pytest.raises(ValueError, match="history is empty"):
        plot_aegan_losses(History(), tmp_path / "p.png")


@pytest.mark.gpu
def test_a_step_on_the_gpu_matches_the_cpu(tmp_path):
    images = smooth_images(4)
    no_dropout = {"d_dropout": 0.0}   # the GPU draws masks from its own generator: the streams differ
    cpu = AEGANTrainer.from_config(small_config(model_options=no_dropout), tmp_path / "cpu").step(images)
    gpu = AEGANTrainer.from_config(small_config(model_options=no_dropout, device="gpu"), tmp_path / "gpu").step(images)
    for key in ("ge_loss", "d_loss", "rec_image", "rec_latent", "adv_image", "adv_latent"):
        assert gpu[key] == pytest.approx(cpu[key], rel=1e-3, abs=1e-5), key


@pytest.mark.gpu
def test_a_gpu_step_copies_nothing_but_its_logged_scalars(tmp_path, device_copies):
    """Issue 6, as for GANTrainer: given the batch and z on the device (as fit passes them), a step
    uploads nothing and fetches its 14 logged scalars in one copy; any other wait for the GPU raises."""
    import cupy

    from nnbox import backend
    trainer = AEGANTrainer.from_config(small_config(device="gpu"), tmp_path / "run")
    images = cupy.asarray(smooth_images(4))
    trainer.step(images, cupy.asarray(trainer.draw_latent(4)))      # the first step builds what later ones reuse
    z = cupy.asarray(trainer.draw_latent(4))
    with device_copies(backend) as (uploads, fetches):
        record = trainer.step(images, z)
    assert uploads == [] and fetches == [(14,)]
    assert np.isfinite(record["ge_loss"]) and np.isfinite(record["d_loss"]) and 0 <= record["dz_acc_prior"] <= 1
