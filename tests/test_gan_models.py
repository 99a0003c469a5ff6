"""GAN models: shapes, options, and end-to-end float64 gradient checks of every loss through D (and G)."""
import numpy as np
import pytest

from gan.losses import GAN_LOSSES, get_gan_loss
from gan.models import (DCGANDiscriminator, DCGANGenerator, FacesDiscriminator, FacesGenerator,
                        MLPDiscriminator, MLPGenerator, build_gan)
from gan.tricks import LabelPolicy
from layers import BatchNorm2d, Dropout, LeakyReLU, ReLU, SpectralNorm
from nnbox.gradcheck import gradcheck
from nnbox.module import Module

LOSS_NAMES = sorted(GAN_LOSSES)
# tiny models for the gradient checks: dropout off, every other option at its default. So narrow a
# faces G often lets ReLU zero a whole neighbourhood and paints a constant patch, where D's max-pool sees
# exact ties and the loss has no gradient: kink_free_inputs draws inputs away from ties and kinks.
TINY = {
    "faces": dict(arch="faces", image_size=32, latent_dim=3, channels=3, g_width=4, d_width=2, d_hidden=4,
                  dropout=0.0),
    "dcgan32": dict(arch="dcgan", image_size=32, latent_dim=3, channels=3, width=2),
    "mlp": dict(arch="mlp", image_size=8, latent_dim=3, channels=2, width=4, dropout=0.0),
}


def kink_margin(model, x):
    """How far `model`'s forward on x stays from its kinks, relative to the scale of the values there:
    the smallest |input| of a ReLU/LeakyReLU, and the smallest margin, over the 2x2 windows of a
    max-pool, between the largest value and the next, each divided by the largest |input| of that layer
    (DCGAN's N(0, 0.02) weights make every activation small, and the steps of eps with them)."""
    margin = np.inf
    for layer in model.main:
        kind = type(layer).__name__
        if kind in ("ReLU", "LeakyReLU"):
            margin = min(margin, float(np.abs(x).min() / np.abs(x).max()))
        elif kind == "MaxPool2d":
            n, c, h, w = x.shape
            windows = np.sort(x.reshape(n, c, h // 2, 2, w // 2, 2).transpose(0, 1, 2, 4, 3, 5)
                              .reshape(n, c, h // 2, w // 2, 4), axis=-1)
            margin = min(margin, float((windows[..., 3] - windows[..., 2]).min() / np.abs(x).max()))
        x = layer(x)
    return margin


def kink_free_inputs(make_inputs, margins, min_margin=1e-5):
    """make_inputs(seed) for the first seed whose forward stays min_margin (10 eps, relative) from every kink.

    ReLU has no derivative at 0 and max-pool none at a tie; a step of eps across one makes central
    differences disagree with backward for a reason that is not a bug. With thousands of activations
    some draws come within eps of one, so the check picks a draw away from them.
    """
    for seed in range(20):
        inputs = make_inputs(seed)
        if min(margins(inputs)) > min_margin:
            return inputs
    raise AssertionError(f"20 draws all came within {min_margin} (relative) of a ReLU or max-pool kink")


class GeneratorObjective(Module):
    """z -> G -> D -> logits -> the G loss: a scalar Module, so gradcheck can check G's parameters.

    backward is what the trainer does: G.backward(D.backward(dlogits)). D is frozen, as in G's step.
    """

    def __init__(self, generator, discriminator, loss):
        super().__init__()
        self.generator, self.discriminator, self.loss = generator, discriminator, loss
        discriminator.requires_grad_(False)

    def forward(self, z):
        value, d_logits = self.loss.generator_loss(self.discriminator(self.generator(z)))
        self.save_for_backward(d_logits=d_logits)
        return np.asarray(value)

    def backward(self, grad):
        d_logits = self.saved_for_backward().d_logits * grad
        return self.generator.backward(self.discriminator.backward(d_logits))


class DiscriminatorObjective(Module):
    """(real, fake) -> D twice -> the D loss. backward replays each half's forward before its
    backward, as a trainer that runs D on the real and the fake batch one after the other."""

    def __init__(self, discriminator, loss, real_targets=None, fake_targets=None):
        super().__init__()
        self.discriminator, self.loss = discriminator, loss
        self.real_targets, self.fake_targets = real_targets, fake_targets

    def forward(self, real, fake):
        value, d_real, d_fake = self.loss.discriminator_loss(
            self.discriminator(real), self.discriminator(fake), self.real_targets, self.fake_targets)
        self.save_for_backward(real=real, fake=fake, d_real=d_real, d_fake=d_fake)
        return np.asarray(value)

    def backward(self, grad):
        saved = self.saved_for_backward()
        self.discriminator(saved.real)
        d_real_images = self.discriminator.backward(saved.d_real * grad)
        self.discriminator(saved.fake)
        d_fake_images = self.discriminator.backward(saved.d_fake * grad)
        return d_real_images, d_fake_images


@pytest.mark.parametrize("arch", sorted(TINY))
@pytest.mark.parametrize("loss_name", LOSS_NAMES)
def test_generator_loss_gradient_through_d_into_g(arch, loss_name):
    generator, discriminator = build_gan(rng=1, **TINY[arch])
    objective = GeneratorObjective(generator, discriminator, get_gan_loss(loss_name))
    objective.to(np.float64)
    z = kink_free_inputs(lambda seed: np.random.default_rng(seed).standard_normal((3, 3)),
                         lambda z: [kink_margin(generator, z), kink_margin(discriminator, generator(z))])
    report = gradcheck(objective, z, rng=3, max_entries=6)
    checked = {label for label in report.checked_entries}
    # every parameter of G was checked, none of D's (frozen)
    assert checked == {"input 0"} | {f"parameter 'generator.{name}'" for name, _ in generator.named_parameters()}


@pytest.mark.parametrize("arch", sorted(TINY))
@pytest.mark.parametrize("loss_name", LOSS_NAMES)
def test_discriminator_loss_gradient_into_d(arch, loss_name):
    options = TINY[arch]
    generator, discriminator = build_gan(rng=4, **options)
    size, channels = options["image_size"], options["channels"]

    def draw(seed):
        data = np.random.default_rng(seed)
        real = np.tanh(data.standard_normal((3, channels, size, size)))
        return real, generator(data.standard_normal((3, 3)).astype(np.float32)).astype(np.float64)

    discriminator.to(np.float64)
    real, fake = kink_free_inputs(draw, lambda images: [kink_margin(discriminator, x) for x in images])
    targets = LabelPolicy(soft_labels=True, flip_fraction=0.34, rng=6).targets(3)
    targets = [t.astype(np.float64) for t in targets] if get_gan_loss(loss_name).uses_targets else [None, None]
    objective = DiscriminatorObjective(discriminator, get_gan_loss(loss_name), *targets)
    report = gradcheck(objective, real, fake, wrt=(0, 1), rng=7, max_entries=6)
    assert {f"parameter 'discriminator.{name}'" for name, _ in discriminator.named_parameters()} \
        <= set(report.checked_entries)


# the models' other options, each checked end to end once: G through D with the non-saturating loss,
# D with the loss the option goes with (a critic without BatchNorm: the Wasserstein loss of WGAN-GP).
# A spectrally normalised D is checked in eval mode, where its power iteration does not move (a
# training forward updates u, so two forwards would differ).
VARIANTS = [
    ("faces", dict(unpool_mode="zeros"), "non_saturating"),
    ("faces", dict(g_kernel_size=5), "non_saturating"),
    ("faces", dict(activation="relu"), "non_saturating"),
    ("faces", dict(d_spectral_norm=True), "hinge"),
    ("dcgan32", dict(d_batch_norm=False), "wasserstein"),
    ("dcgan32", dict(d_spectral_norm=True), "hinge"),
    ("mlp", dict(d_spectral_norm=True), "non_saturating"),
    # dropout in both faces networks (FacesDiscriminator's default is 0.3) and on D's input, with fixed masks
    ("faces", dict(dropout=0.3, d_input_dropout=0.2), "non_saturating"),
    ("mlp", dict(dropout=0.3, d_input_dropout=0.1), "least_squares"),
    # the 64x64 networks: one more block in each faces network, one more stride-2 layer in each DCGAN one
    ("faces", dict(image_size=64), "non_saturating"),
    ("dcgan32", dict(image_size=64), "minimax"),
]


def fix_dropout_masks(model, shape):
    """Draw every Dropout's mask once, for inputs of `shape`, and replay it in every later training
    forward: gradcheck needs a deterministic model. Returns how many masks it fixed."""
    model(np.random.default_rng(0).standard_normal(shape))
    dropouts = [layer for layer in model.modules() if isinstance(layer, Dropout)]
    for layer in dropouts:
        layer.fixed_mask = layer.last_mask
    return len(dropouts)


@pytest.mark.parametrize("arch, options, loss_name", VARIANTS, ids=[f"{a}-{'-'.join(o)}" for a, o, _ in VARIANTS])
def test_model_options_gradient_checks(arch, options, loss_name):
    settings = dict(TINY[arch], **options)
    generator, discriminator = build_gan(rng=1, **settings)
    if settings.get("d_spectral_norm"):
        discriminator.eval()
    size, channels = settings["image_size"], settings["channels"]
    fixed = fix_dropout_masks(generator, (3, 3)) + fix_dropout_masks(discriminator, (3, channels, size, size))
    assert (fixed > 0) == ("dropout" in options)
    objective = GeneratorObjective(generator, discriminator, get_gan_loss("non_saturating"))
    objective.to(np.float64)
    z = kink_free_inputs(lambda seed: np.random.default_rng(seed).standard_normal((3, 3)),
                         lambda z: [kink_margin(generator, z), kink_margin(discriminator, generator(z))])
    report = gradcheck(objective, z, rng=3, max_entries=6)
    assert {f"parameter 'generator.{name}'" for name, _ in generator.named_parameters()} <= set(report.checked_entries)

    discriminator.requires_grad_(True)

    def draw(seed):
        data = np.random.default_rng(seed)
        return np.tanh(data.standard_normal((3, channels, size, size))), generator(data.standard_normal((3, 3)))

    if settings.get("d_batch_norm") is False or (arch == "dcgan32" and size == 64):
        # Without BatchNorm D's convolutions have biases: a step of eps in one moves every pre-activation
        # of its channel by eps, so the margin to a kink must exceed eps in absolute terms. DCGAN's
        # N(0, 0.02) weights shrink the activations layer by layer (to ~1e-3, against eps 1e-6): the
        # weights are redrawn at unit gain, which keeps them O(1), as the relative margin assumes.
        # With BatchNorm only D's first convolution has a bias, but at 64x64 it makes 3 x 32 x 32
        # pre-activations per channel of the fakes, which so narrow a G draws nearly flat (all below
        # 0.035 in size): one was 4e-7 from LeakyReLU's kink, and the bias's central difference at eps
        # 1e-6 was 4% off (it agreed with backward to 1e-9 at eps 1e-7 and 1e-8).
        weights = np.random.default_rng(8)
        for _, param in discriminator.named_parameters():
            if param.data.ndim > 1:
                param.data[...] = weights.standard_normal(param.data.shape) / np.sqrt(param.data[0].size)
    real, fake = kink_free_inputs(draw, lambda images: [kink_margin(discriminator, x) for x in images])
    objective = DiscriminatorObjective(discriminator, get_gan_loss(loss_name))
    report = gradcheck(objective, real, fake, wrt=(0, 1), rng=7, max_entries=6)
    assert {f"parameter 'discriminator.{name}'" for name, _ in discriminator.named_parameters()} \
        <= set(report.checked_entries)


@pytest.mark.parametrize("arch", ["faces", "dcgan", "mlp"])
@pytest.mark.parametrize("image_size", [32, 64])
def test_output_shapes(arch, image_size):
    generator, discriminator = build_gan(arch, image_size=image_size, latent_dim=16, channels=3, width=4, rng=0)
    z = np.random.default_rng(0).standard_normal((2, 16)).astype(np.float32)
    images = generator(z)
    assert images.shape == (2, 3, image_size, image_size) and images.dtype == np.float32
    assert np.all(np.abs(images) <= 1.0)  # Tanh
    logits = discriminator(images)
    assert logits.shape == (2, 1) and logits.dtype == np.float32
    d_images = discriminator.backward(np.ones((2, 1), np.float32))
    assert d_images.shape == images.shape
    assert generator.backward(d_images).shape == z.shape


@pytest.mark.parametrize("arch, image_size", [("faces", 32), ("faces", 64), ("dcgan", 32), ("dcgan", 64)])
def test_default_widths_shapes_and_sizes(arch, image_size):
    generator, discriminator = build_gan(arch, image_size=image_size, rng=0)
    z = np.random.default_rng(0).standard_normal((2, 100)).astype(np.float32)
    images = generator(z)
    assert images.shape == (2, 3, image_size, image_size)
    assert discriminator(images).shape == (2, 1)
    if arch == "faces" and image_size == 32:  # modest enough to train on a 2-core CPU
        count = lambda model: sum(p.data.size for p in model.parameters())  # noqa: E731
        assert count(generator) < 1_000_000 and count(discriminator) < 500_000


def test_faces_generator_layout():
    generator = FacesGenerator(latent_dim=8, image_size=32, width=4, dropout=0.2, rng=0)
    names = [type(layer).__name__ for layer in generator.main]
    assert names == ["Linear", "Reshape", "ReLU", "BatchNorm2d",
                     "Unpool2d", "ConvTranspose2d", "ReLU", "Dropout", "BatchNorm2d",
                     "Unpool2d", "ConvTranspose2d", "ReLU", "Dropout", "BatchNorm2d",
                     "Unpool2d", "ConvTranspose2d", "Tanh"]
    assert generator.main[0].weight.shape == (16 * 4 * 4, 8)


def test_faces_discriminator_layout_and_options():
    discriminator = FacesDiscriminator(image_size=32, width=4, dropout=0.3, input_dropout=0.1, rng=0)
    names = [type(layer).__name__ for layer in discriminator.main]
    assert names == ["Dropout"] + ["Conv2d", "MaxPool2d", "LeakyReLU", "Dropout"] * 3 + \
        ["Flatten", "Linear", "LeakyReLU", "Dropout", "Linear"]
    assert discriminator.main[0].p == pytest.approx(0.1)
    relu = FacesDiscriminator(image_size=32, width=4, activation="relu", dropout=0.0, rng=0)
    assert not any(isinstance(layer, (Dropout, LeakyReLU)) for layer in relu.main)
    assert sum(isinstance(layer, ReLU) for layer in relu.main) == 4


@pytest.mark.parametrize("arch", ["faces", "dcgan", "mlp"])
def test_spectral_norm_wraps_every_weighted_layer_of_d(arch):
    _, discriminator = build_gan(arch, image_size=32, latent_dim=4, width=4, spectral_norm=True, rng=0)
    wrapped = [layer for layer in discriminator.main if isinstance(layer, SpectralNorm)]
    weighted = [layer for layer in discriminator.main if type(layer).__name__ in ("Conv2d", "Linear")]
    assert wrapped and not weighted
    if arch == "dcgan":  # spectral normalisation replaces BatchNorm in D
        assert not any(isinstance(layer, BatchNorm2d) for layer in discriminator.main)
    images = np.zeros((2, 3, 32, 32), np.float32)
    assert discriminator(images).shape == (2, 1)
    assert discriminator.backward(np.ones((2, 1), np.float32)).shape == images.shape


def test_dcgan_layout_and_init():
    generator = DCGANGenerator(image_size=64, latent_dim=100, width=32, rng=0)
    discriminator = DCGANDiscriminator(image_size=64, width=32, rng=0)
    g_convs = [layer for layer in generator.main if type(layer).__name__ == "ConvTranspose2d"]
    assert [conv.weight.shape for conv in g_convs] == [(100, 256, 4, 4), (256, 128, 4, 4), (128, 64, 4, 4),
                                                       (64, 32, 4, 4), (32, 3, 4, 4)]
    d_names = [type(layer).__name__ for layer in discriminator.main]
    assert d_names == ["Conv2d", "LeakyReLU"] + ["Conv2d", "BatchNorm2d", "LeakyReLU"] * 3 + ["Conv2d", "Flatten"]
    assert discriminator.main[1].negative_slope == pytest.approx(0.2)
    weights = np.concatenate([conv.weight.data.ravel() for conv in g_convs])
    assert abs(weights.std() - 0.02) < 0.001 and abs(weights.mean()) < 0.001
    bn = [layer for layer in discriminator.main if isinstance(layer, BatchNorm2d)]
    gammas = np.concatenate([layer.weight.data for layer in bn])
    assert abs(gammas.mean() - 1.0) < 0.01 and 0.01 < gammas.std() < 0.03


def test_mlp_models():
    generator = MLPGenerator(image_size=28, channels=1, latent_dim=10, hidden=8, rng=0)
    discriminator = MLPDiscriminator(image_size=28, channels=1, hidden=8, rng=0)
    images = generator(np.zeros((4, 10), np.float32))
    assert images.shape == (4, 1, 28, 28) and discriminator(images).shape == (4, 1)


def test_build_gan_routes_options():
    generator, discriminator = build_gan("faces", latent_dim=10, width=8, dropout=0.25, d_input_dropout=0.1,
                                         g_kernel_size=5, d_activation="relu", rng=0)
    assert isinstance(generator, FacesGenerator) and isinstance(discriminator, FacesDiscriminator)
    assert [layer.p for layer in generator.main if isinstance(layer, Dropout)] == [0.25, 0.25]
    d_dropouts = [layer.p for layer in discriminator.main if isinstance(layer, Dropout)]
    assert d_dropouts[0] == pytest.approx(0.1) and d_dropouts[1:] == [0.25] * 4
    assert discriminator.activation == "relu"
    assert generator.main[5].weight.shape[2:] == (5, 5)
    g_default, d_default = build_gan("faces", rng=0)
    assert g_default.main[0].weight.shape == (4 * 64 * 16, 100)  # G width 64
    assert d_default.main[0].weight.shape == (32, 3, 3, 3)  # D width 32
    g_wide, _ = build_gan("faces", g_width=128, rng=0)
    assert g_wide.main[0].weight.shape == (4 * 128 * 16, 100)


def test_build_gan_is_seeded():
    first = build_gan("dcgan", width=4, rng=3)[1].main[0].weight.data
    again = build_gan("dcgan", width=4, rng=3)[1].main[0].weight.data
    np.testing.assert_array_equal(first, again)


def test_errors_are_clear():
    with pytest.raises(ValueError, match="unknown GAN architecture 'resnet'"):
        build_gan("resnet")
    with pytest.raises(TypeError, match="unknown option 'depth'"):
        build_gan("faces", depth=3)
    with pytest.raises(ValueError, match="image_size must be one of"):
        DCGANGenerator(image_size=48)
    with pytest.raises(ValueError, match="image_size must be 4 times a power of two"):
        FacesGenerator(image_size=48)
    with pytest.raises(ValueError, match="unknown activation 'elu'"):
        FacesDiscriminator(activation="elu")
    with pytest.raises(ValueError, match="input_dropout must be in"):
        DCGANDiscriminator(input_dropout=1.0)
    discriminator = FacesDiscriminator(image_size=32, width=2, rng=0)
    with pytest.raises(ValueError, match="expects 32x32 images"):
        discriminator(np.zeros((1, 3, 64, 64), np.float32))
    with pytest.raises(ValueError, match="FacesDiscriminator expects 3 channels"):
        discriminator(np.zeros((1, 1, 32, 32), np.float32))
    with pytest.raises(ValueError, match=r"FacesGenerator expects latent vectors z of shape \(N, 100\), got shape \(2, 10\)"):
        FacesGenerator(width=2, rng=0)(np.zeros((2, 10), np.float32))


@pytest.mark.gpu
@pytest.mark.parametrize("arch", ["faces", "dcgan", "mlp"])
def test_models_on_gpu_match_cpu(arch):
    import cupy

    options = {} if arch == "dcgan" else {"dropout": 0.0}  # DCGAN has no dropout
    cpu = build_gan(arch, latent_dim=8, width=4, rng=0, **options)
    gpu = build_gan(arch, latent_dim=8, width=4, rng=0, **options)
    for model in gpu:
        model.to("gpu")
    z = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
    images = cpu[0](z)
    images_gpu = gpu[0](cupy.asarray(z))
    np.testing.assert_allclose(images_gpu.get(), images, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(gpu[1](images_gpu).get(), cpu[1](images), rtol=1e-4, atol=1e-4)
    d_logits = np.ones((4, 1), np.float32)
    dz = cpu[0].backward(cpu[1].backward(d_logits))
    dz_gpu = gpu[0].backward(gpu[1].backward(cupy.asarray(d_logits)))
    np.testing.assert_allclose(dz_gpu.get(), dz, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("cls", [FacesGenerator, FacesDiscriminator, DCGANGenerator, DCGANDiscriminator, MLPGenerator,
                                 MLPDiscriminator])
def test_only_the_first_argument_is_positional(cls):
    # their orders differ (FacesGenerator starts with latent_dim, MLPGenerator with image_size,
    # channels): MLPGenerator(28, 100) built a 100-channel generator
    with pytest.raises(TypeError, match="positional argument"):
        cls(32, 3)
