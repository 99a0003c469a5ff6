# %% [markdown]
# # 10. Encoders and cycles: AEGAN and CycleGAN
#
# A GAN's generator only goes one way: from a latent code $z$ to an image. This walkthrough is
# about two classic variants that add a way back, each with its own trick:
#
# 1. **AEGAN** (Lazarou, 2020) trains an encoder $E$ (image $\to z$) with the generator, and adds a
#    second discriminator that judges *codes*, so that $E$'s outputs look like the prior;
# 2. its four loss terms on tiny networks, and a gradient check of the whole objective;
# 3. an AEGAN on real faces: the reconstructions $G(E(x))$ improve as it trains;
# 4. **CycleGAN** (Zhu et al., 2017) translates between two image domains without paired examples;
#    the **cycle-consistency** loss makes a translation keep the content of its input;
# 5. an experiment whose right answer is known: faces to negated faces;
# 6. the gradient of CycleGAN's generator objective, checked.

# %%
import os
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from gan.aegan import AEGANConfig, AEGANTrainer, GeneratorEncoderLoss, LossWeights, build_aegan
from gan.cyclegan import CycleGANConfig, CycleGANTrainer, GeneratorObjective, ImageTranslator, PatchDiscriminator
from nnbox.datasets import load_olivetti
from nnbox.gradcheck import gradcheck
from nnbox.synthetic_faces import synthetic_faces

FAST = os.environ.get("NNBOX_FAST") == "1"   # the test suite sets this: fewer training steps
plt.rcParams["figure.dpi"] = 80
np.set_printoptions(precision=4, suppress=True)
rng = np.random.default_rng(0)

# 400 real faces (Olivetti, 64x64 grey) from ../shared/data beside the repository, halved to 32x32;
# without them, synthetic cartoon faces in grey
DATA = Path("../../../shared/data")
if (DATA / "olivetti" / "olivetti_faces.npy").is_file():
    faces, _ = load_olivetti(DATA)
    faces = faces.reshape(400, 1, 32, 2, 32, 2).mean(axis=(3, 5))
    source = "Olivetti faces"
else:
    faces = synthetic_faces(400, 32, rng=0).mean(axis=3)[:, None].astype(np.float32) / 127.5 - 1
    source = "synthetic faces (../shared/data not found)"
print(f"{len(faces)} {source}, {faces.shape[1:]} in [{faces.min():.2f}, {faces.max():.2f}]")


def show_rows(rows, titles, n=8):
    """One row of n greyscale images per array in `rows`."""
    fig, axes = plt.subplots(len(rows), n, figsize=(n * 0.9, len(rows) * 1.1))
    fig.subplots_adjust(wspace=0.05, hspace=0.35)
    for r, (images, title) in enumerate(zip(rows, titles)):
        for k in range(n):
            axes[r, k].imshow(np.clip(images[k, 0], -1, 1), cmap="gray", vmin=-1, vmax=1)
            axes[r, k].axis("off")
        axes[r, 0].text(0, 1.06, title, fontsize=8, transform=axes[r, 0].transAxes)   # above the row
    plt.show()

# %% [markdown]
# ## 1. AEGAN: a generator, an encoder and two discriminators
#
# With real images $x$ and prior samples $z \sim \mathcal N(0, I)$, the generator $G$ and the
# encoder $E$ minimise together
#
# $$ L_{GE} = w_1\, L_G\big(D_x([G(z);\, G(E(x))])\big) + w_2\, L_G\big(D_z([E(x);\, E(G(z))])\big)
#           + w_3\, \overline{|G(E(x)) - x|} + w_4\, \overline{(E(G(z)) - z)^2} . $$
#
# - $D_x$ judges images: real ones against both generated images $G(z)$ and reconstructions
#   $G(E(x))$, so reconstructions must look real, not just be close in $L_1$ (blurry).
# - $D_z$ judges codes: prior samples $z$ against encodings of real images $E(x)$ and of generated
#   ones $E(G(z))$. It is the AEGAN's own trick: it pushes $E$'s outputs into the shape of the prior,
#   so that codes drawn from $\mathcal N(0, I)$ fall where $G$ learned to draw faces.
# - The two reconstruction terms make $G$ and $E$ inverses: image $\to$ code $\to$ image, and
#   code $\to$ image $\to$ code.
#
# $L_G$ is a GAN loss's generator term (non-saturating by default). The default weights
# $(w_1, w_2, w_3, w_4) = (0.005, 0.1, 1, 0.5)$ come from Lazarou's code: mostly an autoencoder,
# sharpened by the adversarial terms. The discriminators minimise their usual losses: $D_x$ on $x$
# (real) against $[G(z);\, G(E(x))]$ (fake), $D_z$ on $z$ (real) against $[E(x);\, E(G(z))]$ (fake), as
# in Lazarou's code.
#
# ## 2. The four terms, and the gradient of the whole
#
# `GeneratorEncoderLoss` computes $L_{GE}$ and its backward through all four networks (with $D_x$
# and $D_z$ frozen, as in training). On tiny networks we print the terms and check the gradient of
# the total, into $x$, $z$ and every parameter tensor of $G$ and $E$ (four random entries of each),
# against central differences.

# %%
networks = build_aegan("mlp", image_size=8, channels=1, width=4, latent_dim=3, latent_hidden=4, rng=1,
                       d_dropout=0.0)
bias_rng = np.random.default_rng(2)
for net in networks:                  # random biases: zero ones put ReLU inputs exactly on the kink
    for name, param in net.named_parameters():
        if name.endswith("bias"):
            param.data = bias_rng.normal(0.0, 0.1, param.data.shape).astype(param.data.dtype)
weights = LossWeights(adv_image=0.5, adv_latent=0.5, rec_image=1.0, rec_latent=0.5)
objective = GeneratorEncoderLoss(networks, weights=weights)
for net in (networks.image_discriminator, networks.latent_discriminator):
    net.requires_grad_(False)
x_small, z_small = np.tanh(rng.standard_normal((3, 1, 8, 8))), rng.standard_normal((3, 3))
objective.to(np.float64)
total = float(objective(x_small, z_small))
terms = {name: float(value) for name, value in objective.terms.items()}
print("terms:", {name: round(value, 4) for name, value in terms.items()}, f"weighted total {total:.4f}")
report = gradcheck(objective, x_small, z_small, wrt=(0, 1), rng=3, max_entries=4)
checked = sorted({label.split("'")[1].split(".")[0] for label in report.checked_entries if "parameter" in label})
print("gradient checked into the inputs and the parameters of", checked)
assert checked == ["encoder", "generator"]

# %% [markdown]
# ## 3. An AEGAN on faces
#
# A small DCGAN-style AEGAN (width 8, a 16-dimensional code) on the faces. We follow the image
# reconstruction error $\overline{|G(E(x)) - x|}$ on eight faces of eight different people (training
# faces: this measures how well $G$ and $E$ invert each other, not generalisation), and show them,
# their reconstructions and samples $G(z)$. The baseline to beat is a $G$ that ignores $E$ and draws
# the mean face: its error on these faces is printed first.

# %%
config = AEGANConfig(arch="dcgan", image_size=32, channels=1, latent_dim=16, width=8, lr=1e-3, lr_d=1e-3,
                     progress=False)
trainer = AEGANTrainer.from_config(config, tempfile.mkdtemp(), overwrite=True)
held = faces[::50][:8]                  # Olivetti is ordered by person, 10 photos each
mean_face_error = float(np.abs(faces.mean(axis=0, keepdims=True) - held).mean())
print(f"the mean face's error on them: {mean_face_error:.3f}")
steps = 300 if FAST else 600
errors = []
for step in range(steps + 1):
    if step % 25 == 0:
        errors.append(float(np.abs(trainer.reconstruct(held) - held).mean()))
    if step < steps:
        trainer.step(faces[rng.choice(len(faces), 32, replace=False)])
print("reconstruction error every 25 steps:", np.round(errors, 3))
assert errors[-1] < 0.9 * mean_face_error and errors[-1] < 0.7 * errors[0]
show_rows([held, trainer.reconstruct(held), trainer.generate(rng.standard_normal((8, 16)).astype(np.float32))],
          ["faces x", "G(E(x))", "G(z), z ~ N(0, I)"])

# %% [markdown]
# After 600 steps (300 in the test suite's fast mode) the reconstructions beat the mean face, but they
# still look like an average face with some of each face's lighting, and the samples $G(z)$ are
# noisy: the full example trains for epochs (`examples/aegan.py`, results in `docs/results/aegan.md`).
#
# ## 4. CycleGAN: translation without pairs
#
# Given images of domain $A$ and images of domain $B$ but no pairs, CycleGAN trains two translators,
# $G_{AB}: A \to B$ and $G_{BA}: B \to A$, and a discriminator per domain. The adversarial terms
# alone only ask that $G_{AB}(a)$ *look like* some image of $B$: any $b$ would do, whatever $a$ was.
# The **cycle-consistency** loss ties each translation to its input: going there and back must
# return the original,
#
# $$ L_G = L_{adv}(D_B(G_{AB}(a))) + L_{adv}(D_A(G_{BA}(b)))
#        + \lambda \left( \overline{|G_{BA}(G_{AB}(a)) - a|} + \overline{|G_{AB}(G_{BA}(b)) - b|} \right), $$
#
# with the least-squares adversarial term $L_{adv}(D) = \overline{(D - 1)^2}$ and $\lambda = 10$, as
# in the paper. nnbox's discriminators output a map of logits, one per image patch
# (`PatchDiscriminator`), and the mean runs over the map. An optional identity term,
# $\overline{|G_{AB}(b) - b|} + \overline{|G_{BA}(a) - a|}$, is off by default (`lambda_identity`).
#
# ## 5. An experiment with a known answer
#
# Domain $A$: faces. Domain $B$: *negated* faces $-x$ (bright and dark swapped), drawn independently
# of the $A$ batch, so that no pair is ever shown. The intended translation is $G_{AB}(a) = -a$, so
# we can measure how close the trained translator gets to it, on faces it sees in $A$ but never as
# pairs. It is not the only translation the objective allows: $G_{AB}(a) = -\text{mirror}(a)$, with
# $G_{BA}$ mirroring back, satisfies the adversarial and the cycle terms just as well (a mirrored
# face is as good a face). To see what the cycle term does, the same training runs a second time
# with $\lambda = 0$: adversarial terms only.

# %%
test = faces[5::25][:16]                # 16 people
steps = 80 if FAST else 300
runs, final_error = {}, {}
for lambda_cycle in (10.0, 0.0):
    cycle = CycleGANTrainer(CycleGANConfig(channels=1, g_width=8, d_width=8, lr=1e-3, lambda_cycle=lambda_cycle))
    draws = np.random.default_rng(1)        # the same batches in both runs
    to_truth, cycle_loss = [], []
    for step in range(steps + 1):
        if step % 20 == 0:
            to_truth.append(float(np.abs(cycle.translate(test, "AB") - (-test)).mean()))
        if step < steps:
            a = faces[draws.choice(len(faces), 16, replace=False)]
            b = -faces[draws.choice(len(faces), 16, replace=False)]
            record = cycle.step(a, b)
            cycle_loss.append(record["cycle_a"] + record["cycle_b"])
    runs[lambda_cycle], final_error[lambda_cycle] = cycle, to_truth[-1]
    print(f"lambda {lambda_cycle:g}: mean |G_AB(a) - (-a)| every 20 steps {np.round(to_truth, 3)}; cycle loss "
          f"first 10 steps {np.mean(cycle_loss[:10]):.3f}, last 10 {np.mean(cycle_loss[-10:]):.3f}")
    if lambda_cycle:
        assert np.mean(cycle_loss[-10:]) < 0.5 * np.mean(cycle_loss[:10])
assert final_error[10.0] < 0.12 and final_error[10.0] < 0.5 * final_error[0.0]
# two yardsticks: a perfect CycleGAN solution other than the intended one, and an output that ignores its input
mirrored = np.abs(-test[..., ::-1] - (-test)).mean()
constant = np.abs(-faces.mean(axis=0) - (-test)).mean()
print(f"mean |. - (-a)| of -mirror(a): {mirrored:.3f}; of the mean negated face, whatever a: {constant:.3f}")
fake_b = runs[10.0].translate(test, "AB")
show_rows([test, fake_b, -test, runs[10.0].translate(fake_b, "BA"), runs[0.0].translate(test, "AB")],
          ["a", "G_AB(a)", "the right answer -a", "G_BA(G_AB(a))", "G_AB(a) trained without the cycle term"])

# %% [markdown]
# The translator found the negation from unpaired examples: nothing told it which $b$ belonged to
# which $a$. Without the cycle term, after these steps the outputs are dark, face-like blobs with
# grid artefacts, much further from each input's own negation (compare the two runs' last errors
# with the yardsticks: an output that ignored its input, the mean negated face, scores about 0.22,
# so the $\lambda = 0$ run keeps part of its input, but much less). The cycle term rules out
# translations that forget their input, since those could not be undone. It does not single out
# the intended one: $-\text{mirror}(a)$ is as invertible, yet about as far from $-a$ on this measure
# as the $\lambda = 0$ run. Among the invertible translations, the convolutional translator's bias towards
# local, pixel-by-pixel maps is what picks the negation.
#
# ## 6. The gradient of $L_G$
#
# As in the AEGAN, the whole objective's backward is written out: each network runs several times
# per step ($G_{AB}$ on $a$ and on $G_{BA}(b)$), so every call's saved state is recorded and put back
# before that call's backward (`ForwardRecord`). Central differences confirm it on tiny networks,
# with the discriminators frozen as in training, and $G_{BA}$ frozen too to keep the check short
# (the tests check $G_{BA}$'s side the same way).

# %%
g_ab, g_ba = ImageTranslator(1, 2, 1, "none", rng=1), ImageTranslator(1, 2, 1, "none", rng=2)
d_a, d_b = PatchDiscriminator(1, 2, "batch", rng=3), PatchDiscriminator(1, 2, "batch", rng=4)
l_g = GeneratorObjective(g_ab, g_ba, d_a, d_b)
for net in (d_a, d_b, g_ba):          # G_AB's parameters and both inputs (G_BA's alike, left out for time)
    net.requires_grad_(False)
a_small, b_small = np.tanh(rng.standard_normal((2, 1, 4, 4))), np.tanh(rng.standard_normal((3, 1, 4, 4)))
report = gradcheck(l_g, a_small, b_small, wrt=(0, 1), rng=0, max_entries=3)
print("checked:", sorted(report.checked_entries))
assert any(label.startswith("parameter 'g_ab.") for label in report.checked_entries)

# %% [markdown]
# ## Summary
#
# - A GAN has no way from an image back to its code. AEGAN learns one, $E$, with four terms:
#   adversarial on images (fakes and reconstructions), adversarial on codes (the latent
#   discriminator shapes $E(x)$ and $E(G(z))$ into the prior), and two reconstructions. `GeneratorEncoderLoss`
#   writes out its backward; checked against central differences.
# - CycleGAN translates between two domains without pairs; the cycle-consistency term makes the
#   translation keep its input's content. On faces against negated faces it found the negation.
# - In nnbox: `gan.aegan` (`examples/aegan.py`, `docs/results/aegan.md`) and `gan.cyclegan`
#   (`examples/cyclegan_mnist.py`, coloured-MNIST domains, `docs/results/cyclegan.md`).
