"""examples/faces_gan.py: a tiny run through main(), resume, the LFW fallback, and the option parsing."""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gan.evaluate import load_real_images
from nnbox import backend

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "faces_gan.py"


@pytest.fixture(scope="module")
def faces_gan():
    spec = importlib.util.spec_from_file_location("faces_gan_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# small networks keep the run to a few seconds on two cores
SMALL = ["--dataset", "synthetic", "--max-images", "64", "--batch-size", "32", "--width", "8", "--latent-dim", "16",
         "--no-progress"]


def test_main_trains_one_epoch_and_writes_its_files(faces_gan, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    assert faces_gan.main(SMALL + ["--epochs", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "64 images of 32x32: synthetic" in printed and "report:" in printed
    for name in ("checkpoint.npz", "history.csv", "history.json", "config.json", "samples.gif", "report.html",
                 "samples/epoch_000.png", "samples/epoch_001.png", "plots/losses.png", "plots/balance.png"):
        assert (out / name).is_file(), name
    history = json.loads((out / "history.json").read_text())
    assert len(history) == 2                                    # 64 images, batches of 32
    # the measures' command, against what trained: 64 of the synthetic faces, kept in the run folder
    assert printed.splitlines()[-1] == (f"measures (FID, memorisation, nearest neighbours): python -m gan.evaluate "
                                        f"{out} --real {out / 'real_images.npy'}")
    real, _ = load_real_images(str(out / "real_images.npy"), 32, 3)
    trained, _, _ = faces_gan.load_faces(faces_gan.config_from_args({"dataset": "synthetic", "max_images": 64}))
    np.testing.assert_array_equal(real, trained.transpose(0, 3, 1, 2) / np.float32(127.5) - 1)
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["balance"] == "skip" and config["train"]["label_smoothing"] == 0.1
    assert config["example"]["dataset"] == "synthetic" and config["example"]["max_images"] == 64

    # --resume continues the same run from its saved settings, to 2 epochs in total
    assert faces_gan.main(["--resume", str(out), "--epochs", "2", "--no-progress"]) == 0
    assert len(json.loads((out / "history.json").read_text())) == 4
    with Image.open(out / "samples.gif") as gif:
        assert gif.n_frames == 3
    assert faces_gan.main(["--resume", str(out), "--batch-size", "8"]) == 2    # settings cannot change on resume
    assert "not --batch-size" in capsys.readouterr().err

    # but the learning rates can (a run that diverged), and a new --epochs target is kept for the next --resume
    assert faces_gan.main(["--resume", str(out), "--epochs", "3", "--lr-g", "1e-4", "--no-progress",
                           "--no-report"]) == 0
    assert "G 0.0002 -> 0.0001, D 0.0002 -> 0.0002" in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    assert (config["train"]["lr_g"], config["train"]["lr_d"], config["epochs"]) == (1e-4, 2e-4, 3)
    assert faces_gan.main(["--resume", str(out), "--lr", "1e-5"]) == 2     # nothing would train with them
    assert "new learning rates need epochs to train; give --epochs N (N > 3)" in capsys.readouterr().err
    assert faces_gan.main(["--resume", str(out), "--epochs", "0"]) == 2
    assert capsys.readouterr().err == "faces_gan: --epochs must be >= 1, got 0\n"

    # a finished run: one line, and nothing more is read or written (not the data, not the report)
    def no_data(cfg):
        raise AssertionError("the data was loaded for a run with nothing to train")
    monkeypatch.setattr(faces_gan, "load_faces", no_data)
    written = {path: path.stat().st_mtime_ns for path in out.rglob("*")}
    for more, target in (([], 3), (["--epochs", "2"], 2)):
        assert faces_gan.main(["--resume", str(out)] + more) == 0
        assert capsys.readouterr().out == (f"nothing trained: the run in {out} has already done 3 of {target} "
                                           f"epochs; give --epochs N (N > 3) to train further\n")
    assert {path: path.stat().st_mtime_ns for path in out.rglob("*")} == written


def test_the_defaults_are_the_recipe(faces_gan):
    cfg = faces_gan.config_from_args({})
    t = cfg.train
    assert (t.arch, t.image_size, t.optimizer, t.lr_g, t.lr_d, t.beta1) == ("faces", 32, "adam", 2e-4, 2e-4, 0.5)
    assert (cfg.batch_size, t.loss, t.balance, t.label_smoothing) == (64, "non_saturating", "skip", 0.1)


def test_options_reach_the_configs(faces_gan):
    args = vars(faces_gan.build_parser().parse_args(
        ["--lr", "1e-4", "--lr-d", "4e-4", "--soft-labels", "--d-input-dropout", "0.2", "--balance", "ratio",
         "--n-d", "5", "--noise", "uniform", "--image-size", "64", "--arch", "dcgan", "--spectral-norm"]))
    cfg = faces_gan.config_from_args(args)
    t = cfg.train
    assert (t.lr_g, t.lr_d, t.soft_labels, t.label_smoothing) == (1e-4, 4e-4, True, 0.0)
    assert t.model_options == {"d_input_dropout": 0.2, "d_spectral_norm": True}
    assert (t.balance, t.n_d, t.latent_kind, t.image_size, t.arch) == ("ratio", 5, "uniform", 64, "dcgan")


def test_wgan_gp_gets_a_critic_it_can_penalise(faces_gan, tmp_path, capsys):
    cfg = faces_gan.config_from_args({"loss": "wgan_gp", "arch": "dcgan"})
    assert cfg.train.model_options == {"d_batch_norm": False}          # no BatchNorm in the DCGAN critic
    # a spectrally normalised critic cannot be penalised: said before anything is written
    assert faces_gan.main(SMALL + ["--loss", "wgan_gp", "--spectral-norm", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "SpectralNorm has no double backward" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("options, message", [
    (["--latent-dim", "0"], "latent_dim must be >= 1"),
    (["--steps-per-epoch", "0"], "steps_per_epoch must be >= 1"),
    (["--d-threshold", "2"], "threshold"),
    (["--width", "0"], "width must be >= 1"),
    (["--synthetic-count", "0"], "--synthetic-count must be >= 1"),
])
def test_bad_settings_are_one_line_errors_before_anything_is_written(faces_gan, tmp_path, capsys, options, message):
    assert faces_gan.main(SMALL + options + ["--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("faces_gan: ") and err.count("\n") == 1 and message in err
    assert not (tmp_path / "run" / "checkpoint.npz").exists()


def test_resuming_from_a_corrupt_checkpoint_is_a_one_line_error(faces_gan, tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoint.npz").write_bytes(b"not a zip file")
    assert faces_gan.main(["--resume", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "corrupt or truncated" in err


@pytest.mark.parametrize("progress", [True, False])
def test_no_progress_also_silences_the_lfw_cache_bar(faces_gan, tmp_path, capsys, monkeypatch, progress):
    import numpy as np
    monkeypatch.setenv("NNBOX_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    for person in ("Ann_A", "Bob_B"):
        (tmp_path / "lfw" / person).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, (250, 250, 3), dtype=np.uint8)).save(
                tmp_path / "lfw" / person / f"{person}_{i + 1:04d}.jpg")
    argv = ["--data", str(tmp_path / "lfw"), "--dataset", "lfw", "--no-download", "--epochs", "1", "--batch-size", "4",
            "--width", "4", "--latent-dim", "4", "--no-report", "--out", str(tmp_path / "run")]
    assert faces_gan.main(argv + ([] if progress else ["--no-progress"])) == 0
    captured = capsys.readouterr()
    assert "4 images of 32x32: LFW" in captured.out
    assert ("preparing" in captured.err) == progress


@pytest.mark.parametrize("show_traceback", [False, True])
def test_a_diverged_run_is_one_line_with_the_resume_command(faces_gan, tmp_path, capsys, monkeypatch,
                                                             show_traceback):
    from gan.trainer import GANTrainer, NonFiniteLossError

    def diverges(self, loader, epochs):
        raise NonFiniteLossError("step 3 (epoch 1): D's loss is nan")
    monkeypatch.setattr(GANTrainer, "fit", diverges)
    monkeypatch.setenv("NNBOX_TRACEBACK", "1" if show_traceback else "")
    out = tmp_path / "run"
    assert faces_gan.main(SMALL + ["--epochs", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == (f"faces_gan: step 3 (epoch 1): D's loss is nan (here: python "
                                    f"examples/faces_gan.py --resume {out} --epochs N --lr ...)")
    assert err.startswith("Traceback") == show_traceback


def test_an_out_folder_holding_a_run_is_refused_before_the_data_is_loaded(faces_gan, tmp_path, capsys,
                                                                         monkeypatch):
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.npz").write_bytes(b"a run's checkpoint")

    def no_data(cfg):
        raise AssertionError("the data was loaded for a run that cannot start")
    monkeypatch.setattr(faces_gan, "load_faces", no_data)
    assert faces_gan.main(SMALL + ["--epochs", "1", "--out", str(out)]) == 2
    assert capsys.readouterr().err == (f"faces_gan: {out} already holds a run: continue it with --resume {out}, "
                                       f"or pass --overwrite\n")


def test_overwrite_replaces_the_old_runs_files_and_keeps_the_users(faces_gan, tmp_path, capsys):
    # gan.evaluate compares a run's faces with real_images.npy: after --overwrite on other images it must
    # hold the new run's training images, not the old run's; and no measure, figure or report of the old
    # run may outlive it (a report carries metrics.json's measures over)
    out = tmp_path / "run"
    small = [option for option in SMALL if option not in ("--max-images", "64")]
    assert faces_gan.main(small + ["--max-images", "64", "--epochs", "1", "--out", str(out), "--no-report"]) == 0
    assert load_real_images(str(out / "real_images.npy"), 32, 3)[0].shape[0] == 64
    (out / "metrics.json").write_text('{"fid": 1.0}')                   # as gan.evaluate would leave them
    (out / "evaluation").mkdir()
    (out / "evaluation" / "nearest_l2.png").write_bytes(b"old figure")
    (out / "report.html").write_text("the old run's report")
    (out / "samples" / "epoch_007.png").write_bytes(b"a later epoch's grid")
    mine = [out / "notes.txt", out / "samples" / "epoch_001_copy.png"]
    for path in mine:
        path.write_text("the user's")
    assert faces_gan.main(small + ["--max-images", "32", "--epochs", "1", "--out", str(out), "--overwrite"]) == 0
    for name in ("metrics.json", "evaluation", "samples/epoch_007.png"):
        assert not (out / name).exists(), name
    assert "the old run's report" not in (out / "report.html").read_text()     # the new run's, without the copy
    with Image.open(out / "samples.gif") as gif:
        assert gif.n_frames == 2                                              # epochs 0 and 1, not the user's copy
    assert all(path.read_text() == "the user's" for path in mine)
    real, _ = load_real_images(str(out / "real_images.npy"), 32, 3)
    trained, _, _ = faces_gan.load_faces(faces_gan.config_from_args({"dataset": "synthetic", "max_images": 32}))
    np.testing.assert_array_equal(real, trained.transpose(0, 3, 1, 2) / np.float32(127.5) - 1)


def test_overwrite_with_settings_the_trainer_refuses_keeps_the_old_run(faces_gan, tmp_path, capsys):
    out = tmp_path / "run"
    assert faces_gan.main(SMALL + ["--epochs", "1", "--out", str(out), "--no-report"]) == 0
    before = sorted(path for path in out.rglob("*") if path.is_file())
    # a critic with spectral norm cannot take the gradient penalty: refused when the networks are built
    assert faces_gan.main(SMALL + ["--epochs", "1", "--out", str(out), "--overwrite", "--loss", "wgan_gp",
                                   "--spectral-norm"]) == 2
    assert "SpectralNorm" in capsys.readouterr().err
    assert sorted(path for path in out.rglob("*") if path.is_file()) == before


def test_ctrl_c_is_one_line_with_the_resume_command_and_the_checkpoint_kept(faces_gan, tmp_path, capsys,
                                                                           monkeypatch):
    from gan.trainer import GANTrainer
    step = GANTrainer.step
    calls = []

    def interrupted_in_epoch_two(self, batch):   # 64 images, batches of 32: two steps per epoch
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return step(self, batch)
    monkeypatch.setattr(GANTrainer, "step", interrupted_in_epoch_two)
    out = tmp_path / "run"
    assert faces_gan.main(SMALL + ["--epochs", "3", "--out", str(out)]) == 130
    assert capsys.readouterr().err == (f"faces_gan: interrupted; the checkpoint of the last complete epoch is kept: "
                                       f"continue with python examples/faces_gan.py --resume {out} --epochs 3\n")
    monkeypatch.setattr(GANTrainer, "step", step)
    assert faces_gan.main(["--resume", str(out), "--no-progress", "--no-report"]) == 0
    assert len(json.loads((out / "history.json").read_text())) == 6     # epoch 1 kept, epochs 2 and 3 trained


def test_without_lfw_it_falls_back_to_synthetic_faces_in_one_line(faces_gan, tmp_path, monkeypatch):
    monkeypatch.setenv("NNBOX_CACHE", str(tmp_path / "cache"))
    cfg = faces_gan.config_from_args({"download": False, "max_images": 8})
    lines = []
    monkeypatch.setattr("builtins.print", lambda *a, **k: lines.append(" ".join(map(str, a))))
    images, description, lfw_root = faces_gan.load_faces(cfg)
    assert images.shape == (8, 32, 32, 3) and "synthetic" in description and lfw_root is None
    assert len(lines) == 1 and lines[0].startswith("LFW is not available") and "synthetic" in lines[0]
    assert "--data <LFW's folder>" in lines[0] and "data_dir=" not in lines[0]
    cfg.dataset = "lfw"
    with pytest.raises(faces_gan.UsageError, match="no LFW images found in .*cache.*leave out --no-download"):
        faces_gan.load_faces(cfg)
    # a --data folder without LFW is a mistake to report, never a reason to draw other faces
    cfg.dataset, cfg.data = "auto", str(tmp_path)
    with pytest.raises(faces_gan.UsageError, match=f"no LFW images found in {tmp_path} "):
        faces_gan.load_faces(cfg)


@pytest.mark.skipif(backend.cupy_available(), reason="checks the message shown when CuPy is missing")
def test_gpu_without_cupy_gives_the_backend_error(faces_gan, tmp_path, capsys):
    assert faces_gan.main(SMALL + ["--device", "gpu", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "CuPy" in err and "pip install" in err
    assert not (tmp_path / "run").exists()


def test_augment_copies_and_jitter_enlarge_and_vary_the_real_faces(faces_gan):
    cfg = faces_gan.config_from_args({"dataset": "synthetic", "max_images": 8, "augment_copies": 2, "jitter": 0.2})
    images, description, _ = faces_gan.load_faces(cfg)
    assert images.shape == (24, 32, 32, 3) and "enlarged 3x" in description
    assert (images[:8] == faces_gan.load_faces(faces_gan.config_from_args(
        {"dataset": "synthetic", "max_images": 8}))[0]).all()          # the originals come first
    transform = faces_gan.batch_transform(cfg)
    assert [type(t).__name__ for t in transform.transforms] == ["RandomHorizontalFlip", "ColorJitter"]
    cfg.flip, cfg.jitter = False, 0.0
    assert faces_gan.batch_transform(cfg) is None
    cfg.jitter = -1.0
    with pytest.raises(faces_gan.UsageError, match="--jitter"):
        faces_gan.batch_transform(cfg)
