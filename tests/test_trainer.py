"""The GAN trainer on tiny synthetic faces: files written, exact resume, NaN stop, decisions, D/G turns."""
import json

import numpy as np
import pytest
from PIL import Image

from gan.balance import StepStats, get_balance_rule
from gan.history import FIELDS, History
from gan.trainer import (CHECKPOINT_NAME, GANTrainer, NonFiniteLossError, TrainConfig, _restore_saved_state,
                         _saved_state, stream_rng)
from nnbox.data import DataLoader, RandomHorizontalFlip, ToFloat
from nnbox.serialization import load_checkpoint
from nnbox.synthetic_faces import synthetic_faces

SIZE, BATCH = 16, 8
TIMING = ("images_per_sec", "step_seconds")


@pytest.fixture(scope="module")
def faces():
    return synthetic_faces(32, SIZE, rng=0)


def tiny_config(**overrides):
    settings = dict(arch="faces", image_size=SIZE, latent_dim=8, width=4, n_samples=4, progress=False,
                    report=False, seed=3)
    settings.update(overrides)
    return TrainConfig(**settings)


def make_loader(images, seed=3):
    return DataLoader(images, BATCH, shuffle=True, drop_last=True, rng=stream_rng(seed, "data"),
                      transform=RandomHorizontalFlip(0.5))


def without_timing(history):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in history]


def test_fit_writes_samples_checkpoint_history_plots_gif_and_report(tmp_path, faces):
    run = tmp_path / "run"
    trainer = GANTrainer.from_config(tiny_config(report=True), run)
    history = trainer.fit(make_loader(faces), epochs=2)

    steps = 2 * (len(faces) // BATCH)
    assert len(history) == steps and trainer.global_step == steps and trainer.epoch == 2
    for k in range(3):   # epoch_000: the untrained G; then one grid per epoch
        with Image.open(run / "samples" / f"epoch_{k:03d}.png") as grid:
            assert grid.format == "PNG" and grid.size == (2 * (SIZE * 2 + 2) + 2,) * 2   # 2x2 grid, scale 2
    with Image.open(run / "samples.gif") as gif:
        assert gif.n_frames == 3
    for name in ("losses", "accuracy", "balance", "throughput"):
        with Image.open(run / "plots" / f"{name}.png") as plot:
            assert plot.format == "PNG"
    csv_rows = (run / "history.csv").read_text().splitlines()
    assert csv_rows[0].split(",") == list(FIELDS) and len(csv_rows) == steps + 1
    records = json.loads((run / "history.json").read_text())
    assert [r["step"] for r in records] == list(range(steps))
    for record in records:
        assert np.isfinite([record[k] for k in ("d_loss", "g_loss", "d_real", "d_fake")]).all()
        assert 0 <= record["d_acc_real"] <= 1 and 0 <= record["g_success"] <= 1 and record["images_per_sec"] > 0
    page = (run / "report.html").read_text()
    assert "data:image/gif;base64," in page and page.count("data:image/png;base64,") >= 4 + 3
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["arch"] == "faces" and config["train"]["loss"] == "non_saturating"
    checkpoint = load_checkpoint(run / CHECKPOINT_NAME)
    assert checkpoint["trainer"]["epoch"] == 2 and len(checkpoint["trainer"]["history"]) == steps
    assert set(checkpoint) == {"generator", "discriminator", "optimizer_g", "optimizer_d", "trainer"}
    assert not list(run.glob(".*tmp"))


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path, faces):
    # tricks that draw random numbers: dropout in D, instance noise, flipped labels, uniform z
    config = dict(instance_noise=0.1, instance_noise_decay=6, flip_labels=0.25, latent_kind="uniform",
                  d_threshold=0.6, g_threshold=0.6, model_options={"d_input_dropout": 0.1})
    straight = GANTrainer.from_config(tiny_config(**config), tmp_path / "straight")
    straight.fit(make_loader(faces), epochs=2)

    first = GANTrainer.from_config(tiny_config(**config), tmp_path / "resumed")
    first.fit(make_loader(faces), epochs=1)
    del first
    resumed = GANTrainer.resume(tmp_path / "resumed")
    assert resumed.epoch == 1
    resumed.fit(make_loader(faces), epochs=2)   # a new loader, built the same way

    for a, b in ((straight.G, resumed.G), (straight.D, resumed.D)):
        sa, sb = a.state_dict(), b.state_dict()
        assert list(sa) == list(sb)
        for key in sa:
            np.testing.assert_array_equal(sa[key], sb[key], err_msg=key)
    for a, b in ((straight.opt_g, resumed.opt_g), (straight.opt_d, resumed.opt_d)):
        sa, sb = a.state_dict(), b.state_dict()
        for key in sa:
            np.testing.assert_array_equal(np.asarray(sa[key]), np.asarray(sb[key]), err_msg=key)
    assert without_timing(straight.history) == without_timing(resumed.history)
    assert straight.rule.state_dict() == resumed.rule.state_dict()
    assert straight.rng_states() == resumed.rng_states()
    with Image.open(tmp_path / "straight" / "samples" / "epoch_002.png") as a, \
            Image.open(tmp_path / "resumed" / "samples" / "epoch_002.png") as b:
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_nan_stops_training_and_keeps_the_last_good_checkpoint(tmp_path, faces):
    run = tmp_path / "run"
    trainer = GANTrainer.from_config(tiny_config(), run)
    trainer.fit(make_loader(faces), epochs=1)
    saved = (run / CHECKPOINT_NAME).read_bytes()
    good_weights = {k: v.copy() for k, v in trainer.G.state_dict().items()}

    first = trainer.G.parameters()[0]
    first.data[...] = np.nan                    # the generator blows up
    with pytest.raises(NonFiniteLossError, match=r"step 4 \(epoch 2\).*last good checkpoint.*after epoch 1"):
        trainer.fit(make_loader(faces), epochs=3)

    assert (run / CHECKPOINT_NAME).read_bytes() == saved
    rows = History.from_csv(run / "history.csv")
    assert len(rows) == 5 and np.isnan(rows[-1]["g_loss"])     # the failing step is recorded
    restored = GANTrainer.resume(run)
    assert restored.epoch == 1
    for key, value in restored.G.state_dict().items():
        np.testing.assert_array_equal(value, good_weights[key])


def test_a_diverging_step_shows_the_trainers_error_and_no_numpy_warning(tmp_path, faces, raises_quietly):
    # NumPy's "overflow encountered in matmul" and "invalid value encountered in matmul" came ahead of it.
    # D's first update makes its weights huge, and G's turn, which looks at the fakes through the new D, is NaN.
    trainer = GANTrainer.from_config(tiny_config(arch="mlp", balance="alternate", lr_d=1e20), tmp_path / "run")
    with raises_quietly(NonFiniteLossError, match=r"step 0 \(epoch 1\): a non-finite value, D loss [0-9.]+, G loss nan"
                                                  r".*no checkpoint had been written yet.*, then start again\.$"):
        trainer.step(ToFloat()(faces[:BATCH]))


def test_an_overflow_that_leaves_the_step_finite_is_still_warned_after_the_step(tmp_path, faces):
    # G's output Tanh turns an overflow into +-1: the losses stay finite, so the held warning is the only sign
    trainer = GANTrainer.from_config(tiny_config(arch="mlp"), tmp_path / "run")
    last_linear = [p for name, p in trainer.G.named_parameters() if name.endswith("weight")][-1]
    last_linear.data[...] = 3e38
    with pytest.warns(RuntimeWarning, match=r"overflow encountered in the forward passes of step 0 \(\d+ "
                                            r"operations?\); the step's losses stayed finite"):
        record = trainer.step(ToFloat()(faces[:BATCH]))
    assert np.isfinite(record["d_loss"]) and np.isfinite(record["g_loss"])


def test_weights_broken_by_an_epochs_last_update_are_not_checkpointed(tmp_path, faces):
    # the last step's losses are finite (computed before its update), but the update breaks G
    run = tmp_path / "run"
    trainer = GANTrainer.from_config(tiny_config(balance="alternate"), run)
    trainer.fit(make_loader(faces), epochs=1)
    saved = (run / CHECKPOINT_NAME).read_bytes()
    real_step = trainer.opt_g.step

    def step_that_blows_up():
        real_step()
        if trainer.global_step == 7:             # epoch 2's last step (4 batches per epoch)
            trainer.G.parameters()[0].data[...] = np.inf

    trainer.opt_g.step = step_that_blows_up
    with pytest.raises(NonFiniteLossError, match=r"end of epoch 2: .*non-finite weights in 1 arrays \(G main\.0\.weight\)"
                                                 r".*last good checkpoint.*after epoch 1"):
        trainer.fit(make_loader(faces), epochs=2)
    assert (run / CHECKPOINT_NAME).read_bytes() == saved
    assert not (run / "samples" / "epoch_002.png").exists()
    assert len(History.from_csv(run / "history.csv")) == 8      # every step of the epoch is recorded


def test_save_checkpoint_refuses_non_finite_weights(tmp_path):
    trainer = GANTrainer.from_config(tiny_config(), tmp_path / "run")
    path = trainer.save_checkpoint()
    saved = path.read_bytes()
    trainer.D.parameters()[-1].data[...] = np.nan
    with pytest.raises(NonFiniteLossError, match=r"not writing .*non-finite weights in 1 arrays \(D "):
        trainer.save_checkpoint()
    assert path.read_bytes() == saved


def test_sampling_with_a_dropout_in_g_leaves_training_unchanged(tmp_path, faces):
    # the models share one generator among G's and D's dropout layers: a draw while sampling
    # would change D's next masks
    def two_steps(run, sample_between):
        trainer = GANTrainer.from_config(tiny_config(model_options={"g_dropout": 0.3}, balance="alternate"), run)
        batches = iter(make_loader(faces))
        trainer.step(next(batches))
        if sample_between:
            assert np.isfinite(trainer.sample()).all()
        trainer.step(next(batches))
        return trainer.G.state_dict() | {"D." + k: v for k, v in trainer.D.state_dict().items()}

    plain, sampled = two_steps(tmp_path / "plain", False), two_steps(tmp_path / "sampled", True)
    for key, value in plain.items():
        np.testing.assert_array_equal(sampled[key], value, err_msg=key)


def test_every_balancing_decision_is_recorded_and_replays(tmp_path, faces):
    # low thresholds make the skip rule skip often; the stall guard forces training after 2 skips
    config = tiny_config(balance="skip", d_threshold=0.3, g_threshold=0.3, max_consecutive_skips=2)
    trainer = GANTrainer.from_config(config, tmp_path / "run")
    trainer.fit(make_loader(faces), epochs=3)
    history = list(trainer.history)
    assert len(history) == 12
    assert any(not r["train_d"] or not r["train_g"] for r in history)   # the rule did skip
    rule, stats = get_balance_rule("skip", d_threshold=0.3, g_threshold=0.3, max_consecutive_skips=2), None
    for record in history:
        decision = rule.decide(stats)
        assert (decision.train_d, decision.train_g, decision.reason) == \
            (bool(record["train_d"]), bool(record["train_g"]), record["reason"])
        stats = StepStats(d_acc_real=record["d_acc_real"], d_acc_fake=record["d_acc_fake"],
                          g_success=record["g_success"])


def test_skipped_networks_do_not_change_and_d_is_frozen_during_g_turns(tmp_path, faces):
    trainer = GANTrainer.from_config(tiny_config(balance="ratio", n_d=1, n_g=2), tmp_path / "run")
    batch = ToFloat()(faces[:BATCH])            # float32 NCHW in [-1, 1]
    g_before = [p.data.copy() for p in trainer.G.parameters()]
    record = trainer.step(batch)                # turn 1 of 2: D and G
    assert record["train_d"] and record["train_g"]
    assert any(not np.array_equal(a, p.data) for a, p in zip(g_before, trainer.G.parameters()))

    d_before = [p.data.copy() for p in trainer.D.parameters()]
    for param in trainer.D.parameters():
        param.grad[...] = 7.0                   # a G-only turn must not compute D's weight gradients
    record = trainer.step(batch)                # turn 2 of 2: G only
    assert not record["train_d"] and record["train_g"]
    for before, param in zip(d_before, trainer.D.parameters()):
        np.testing.assert_array_equal(before, param.data)
        assert (param.grad == 7.0).all() and param.requires_grad


def test_d_backward_after_two_passes_equals_separate_passes():
    from gan.models import build_gan
    _, D = build_gan("dcgan", image_size=32, width=4, rng=0)   # BatchNorm: batch statistics per pass
    rng = np.random.default_rng(1)
    real, fake = (rng.uniform(-1, 1, (4, 3, 32, 32)).astype(np.float32) for _ in range(2))
    d_real, d_fake = (rng.standard_normal((4, 1)).astype(np.float32) for _ in range(2))

    D.zero_grad()                               # reference: forward and backward each pass in turn
    D(real)
    D.backward(d_real)
    D(fake)
    D.backward(d_fake)
    expected = [p.grad.copy() for p in D.parameters()]

    D.zero_grad()                               # the trainer's order: both forwards, then both backwards
    D(real)
    real_pass = _saved_state(D)
    D(fake)
    D.backward(d_fake)
    _restore_saved_state(real_pass)
    D.backward(d_real)
    for want, param in zip(expected, D.parameters()):
        np.testing.assert_allclose(param.grad, want, rtol=1e-5, atol=1e-6)


def test_wasserstein_clips_d_weights(tmp_path, faces):
    config = tiny_config(loss="wasserstein", optimizer="rmsprop", lr_d=0.05, clip_value=0.01, balance="alternate",
                         label_smoothing=0.0)
    trainer = GANTrainer.from_config(config, tmp_path / "run")
    trainer.fit(make_loader(faces), epochs=1)
    assert all(np.abs(p.data).max() <= 0.01 for p in trainer.D.parameters())
    assert "d_real" in trainer.history[0]       # raw critic outputs, not probabilities


def test_a_run_folder_is_not_overwritten_by_accident(tmp_path, faces):
    GANTrainer.from_config(tiny_config(steps_per_epoch=1), tmp_path / "run").fit(make_loader(faces), epochs=1)
    with pytest.raises(FileExistsError, match="resume"):
        GANTrainer.from_config(tiny_config(), tmp_path / "run")
    fresh = GANTrainer.from_config(tiny_config(), tmp_path / "run", overwrite=True)
    assert fresh.epoch == 0 and not list((tmp_path / "run" / "samples").glob("*.png"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        GANTrainer.resume(tmp_path / "nothing")


def test_overwrite_deletes_the_old_grids_and_no_other_file(tmp_path):
    # the old glob epoch_*.png also deleted a user's epoch_001_copy.png
    samples = tmp_path / "run" / "samples"
    samples.mkdir(parents=True)
    for name in ("epoch_000.png", "epoch_012.png", "epoch_001_copy.png", "epoch_best.png"):
        (samples / name).write_text("a picture")
    GANTrainer.from_config(tiny_config(), tmp_path / "run", overwrite=True)
    assert sorted(path.name for path in samples.iterdir()) == ["epoch_001_copy.png", "epoch_best.png"]


def test_the_report_shows_only_the_runs_own_grids_in_epoch_order(tmp_path):
    # a user's epoch_001_copy.png (here not even a picture) is not a frame of the run; epoch 1000 follows 999
    from gan.report import sample_frames
    samples = tmp_path / "run" / "samples"
    samples.mkdir(parents=True)
    for name in ("epoch_1000.png", "epoch_999.png", "epoch_001_copy.png", "epoch_000.png", "epoch_best.png"):
        (samples / name).write_text("a picture")
    assert [path.name for path in sample_frames(tmp_path / "run")] == ["epoch_000.png", "epoch_999.png",
                                                                      "epoch_1000.png"]


def test_steps_per_epoch_cuts_epochs_and_resume_still_matches(tmp_path, faces):
    config = dict(steps_per_epoch=3)
    straight = GANTrainer.from_config(tiny_config(**config), tmp_path / "a")
    straight.fit(make_loader(faces), epochs=2)
    assert len(straight.history) == 6
    GANTrainer.from_config(tiny_config(**config), tmp_path / "b").fit(make_loader(faces), epochs=1)
    resumed = GANTrainer.resume(tmp_path / "b")
    resumed.fit(make_loader(faces), epochs=2)
    assert without_timing(straight.history) == without_timing(resumed.history)


@pytest.mark.gpu
def test_a_step_on_the_gpu(tmp_path, faces):
    trainer = GANTrainer.from_config(tiny_config(device="gpu"), tmp_path / "run")
    trainer.fit(make_loader(faces), epochs=1)
    assert np.isfinite(trainer.history[-1]["d_loss"]) and trainer.G.device == "gpu"
    resumed = GANTrainer.resume(tmp_path / "run")
    assert resumed.G.device == "gpu"


@pytest.mark.gpu
def test_a_resumed_gpu_run_matches_an_uninterrupted_one(tmp_path, faces):
    # the faces D has dropout: its CuPy generator must be re-derived from the checkpointed NumPy one
    config = tiny_config(steps_per_epoch=3, device="gpu")
    straight = GANTrainer.from_config(config, tmp_path / "straight")
    straight.fit(make_loader(faces), epochs=2)
    GANTrainer.from_config(config, tmp_path / "split").fit(make_loader(faces), epochs=1)
    resumed = GANTrainer.resume(tmp_path / "split")
    resumed.fit(make_loader(faces), epochs=2)
    assert without_timing(straight.history) == without_timing(resumed.history)


@pytest.mark.gpu
@pytest.mark.parametrize("loss, scalars", [("non_saturating", 7), ("wgan_gp", 9)])
def test_a_gpu_step_copies_nothing_but_its_logged_scalars(tmp_path, faces, device_copies, loss, scalars):
    """Issue 6: inside a step no array crosses between host and device except the logged scalars,
    fetched in one copy. Every trick that draws random numbers is on, so their draws are checked too
    (WGAN-GP: the penalty's eps, and its two logged figures)."""
    import cupy

    from nnbox import backend
    config = tiny_config(device="gpu", flip_labels=0.25, soft_labels=True, label_smoothing=0.0, instance_noise=0.1,
                         loss=loss, balance="alternate")
    trainer = GANTrainer.from_config(config, tmp_path / "run")
    real = cupy.asarray(next(iter(make_loader(faces))))
    trainer.step(real)                   # the first step builds what later steps reuse
    with device_copies(backend) as (uploads, fetches):
        record = trainer.step(real)
    assert uploads == [] and fetches == [(scalars,)]
    assert np.isfinite(record["d_loss"]) and np.isfinite(record["g_loss"])


@pytest.mark.gpu
def test_a_gpu_step_that_rests_g_copies_nothing_but_its_logged_scalars(tmp_path, faces, device_copies):
    # a turn where D trains and G is skipped measures g_success with one more D forward, inside
    # without_side_effects (its saved buffers and generators): still nothing crosses but the scalars
    import cupy

    from nnbox import backend
    from gan.balance import Decision
    trainer = GANTrainer.from_config(tiny_config(device="gpu"), tmp_path / "run")
    real = cupy.asarray(next(iter(make_loader(faces))))
    trainer.step(real)                   # the first turn builds what later ones reuse
    trainer.rule.decide = lambda stats: Decision(True, False, "test: G rests")
    with device_copies(backend) as (uploads, fetches):
        record = trainer.step(real)
    assert (record["train_d"], record["train_g"]) == (1, 0)
    assert uploads == [] and fetches == [(7,)]


@pytest.mark.parametrize("settings, message", [
    (dict(clip_value=-0.01), r"clip_value \(WGAN's weight clipping\) must be > 0, got -0.01"),
    (dict(clip_value=0.0), r"clip_value .* must be > 0, got 0.0"),
    (dict(gp_weight=float("nan")), r"gp_weight .* must be >= 0, got nan"),
    (dict(steps_per_epoch=0), r"steps_per_epoch must be >= 1 or None, got 0"),
    (dict(optimizer="adagrad"), r"unknown optimizer 'adagrad'"),
])
def test_bad_settings_are_refused_with_their_name(settings, message):
    # a negative clip_value set every critic weight to one constant after the first step, silently
    with pytest.raises(ValueError, match="TrainConfig: " + message):
        TrainConfig(**settings)


def test_g_success_is_measured_after_ds_update_also_when_g_is_skipped(tmp_path):
    # on turns where the skip rule rested G, g_success came from D's pass before its update, while on
    # G's turns it came after: the rule's next decision never saw the D update made while G sat out
    faces = ToFloat()(synthetic_faces(64, 16, rng=0))
    config = TrainConfig(arch="faces", image_size=16, latent_dim=8, width=4, n_samples=4, progress=False,
                         report=False, seed=3, d_threshold=1.0, g_threshold=0.3, lr_d=5e-3, lr_g=5e-3,
                         model_options={"d_dropout": 0.0})
    trainer = GANTrainer.from_config(config, tmp_path / "run")
    generate, fakes = trainer.G.forward, []
    trainer.G.forward = lambda z: fakes.append(generate(z)) or fakes[-1]
    skipped = 0
    for i in range(30):
        record = trainer.step(faces[(i % 8) * 8:(i % 8 + 1) * 8])
        with trainer.D.without_side_effects(train=True):   # D as this turn left it, on this turn's fakes
            fooled = float(np.mean(trainer.D(fakes[-1].copy()) > 0))
        assert record["g_success"] == fooled, (i, record["train_g"])
        skipped += not record["train_g"]
    assert skipped >= 5     # the rule did rest G on some turns
