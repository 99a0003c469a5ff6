"""examples/cyclegan_mnist.py: the colour domains and measures, and a tiny run through main() on MNIST IDX
files the test writes (then --resume)."""
import gzip
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from nnbox import backend

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "cyclegan_mnist.py"


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("cyclegan_mnist_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write_idx(path, array, magic):
    header = int(magic).to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.tobytes())


@pytest.fixture
def mnist_dir(tmp_path):
    """Four gzipped IDX files in MNIST's layout: bars of random position and length as 'digits'."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "mnist"
    folder.mkdir()
    for prefix, n in (("train", 48), ("t10k", 12)):
        images = np.zeros((n, 28, 28), np.uint8)
        for i, (row, col, length) in enumerate(zip(rng.integers(4, 20, n), rng.integers(4, 20, n),
                                                   rng.integers(6, 18, n))):
            images[i, row:row + length, col:col + 4] = 255
        _write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images, 2051)
        _write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, n).astype(np.uint8), 2049)
    return folder


def tiny_run_args(mnist_dir, out):
    """A run of a few seconds: 16 digits a side at 16x16, batches of 8, width 2."""
    return ["--data", str(mnist_dir), "--max-images", "32", "--test-images", "12", "--image-size", "16",
            "--batch-size", "8", "--width", "2", "--out", str(out), "--no-progress"]


def test_domains_are_coloured_from_their_bands(example):
    rng = np.random.default_rng(0)
    digits = -np.ones((20, 1, 28, 28), np.float32)
    digits[:, :, 8:20, 10:16] = 1.0
    small = example.resize_digits(digits, 16)
    assert small.shape == (20, 1, 16, 16) and small.min() == -1.0 and small.max() == 1.0
    assert example.resize_digits(digits, 32).shape == (20, 1, 32, 32)
    warm, cool = example.tint(small, "warm", rng), example.tint(small, "cool", rng)
    assert warm.shape == (20, 3, 16, 16) and warm.dtype == np.float32
    np.testing.assert_array_equal(warm[:, :, 0, 0], -1.0)              # the background stays black
    assert example.in_band(warm, "warm").all() and not example.in_band(warm, "cool").any()
    assert example.in_band(cool, "cool").all() and not example.in_band(cool, "warm").any()
    assert not example.in_band(np.zeros_like(warm), "warm").any()      # grey has no hue
    red = example.tint(small, "red", rng)                               # a band across hue 0
    assert example.in_band(red, "red").all()


def test_main_trains_writes_its_files_and_resumes(example, mnist_dir, tmp_path, capsys):
    out = tmp_path / "run"
    args = tiny_run_args(mnist_dir, out) + ["--epochs", "1"]
    assert example.main(args) == 0
    printed = capsys.readouterr().out
    assert "16 digits as A (warm), 16 other digits as B (cool), 16x16" in printed and "epoch 1/1" in printed
    for name in ("checkpoint.npz", "history.csv", "history.json", "epochs.json", "losses.png",
                 "translations_A_to_B.png", "translations_B_to_A.png", "samples/epoch_000.png",
                 "samples/epoch_001.png"):
        assert (out / name).is_file(), name
    assert len(json.loads((out / "history.json").read_text())) == 2          # 16 digits a side, batches of 8
    (log,) = json.loads((out / "epochs.json").read_text())
    assert log["epoch"] == 1 and 0 <= log["hue_hit_ab"] <= 1 and log["cycle_l1_a"] > 0

    assert example.main(args) == 2                                           # the folder holds a run
    assert "--resume" in capsys.readouterr().err
    assert example.main(["--resume", str(out), "--epochs", "2", "--no-progress"]) == 0
    assert len(json.loads((out / "history.json").read_text())) == 4
    assert [e["epoch"] for e in json.loads((out / "epochs.json").read_text())] == [1, 2]
    assert example.main(["--resume", str(out), "--width", "4"]) == 2         # settings cannot change
    assert "not --width" in capsys.readouterr().err
    assert example.main(["--resume", str(out), "--lr", "0.1"]) == 2          # ... a learning rate can, with epochs
    assert "a new learning rate needs epochs to train" in capsys.readouterr().err
    assert example.main(["--resume", str(out), "--epochs", "3", "--lr", "1e-4", "--no-progress"]) == 0
    assert "learning rate from now on: 0.0001" in capsys.readouterr().out
    from nnbox.serialization import load_checkpoint
    assert load_checkpoint(out / "checkpoint.npz")["trainer"]["config"]["lr"] == 1e-4


def test_an_interrupted_epoch_is_listed_once_and_a_finished_run_trains_nothing(example, mnist_dir, tmp_path,
                                                                               monkeypatch, capsys):
    out = tmp_path / "run"
    args = tiny_run_args(mnist_dir, out)
    assert example.main(args + ["--epochs", "1"]) == 0
    # Ctrl-C in epoch 2 after epochs.json was written, before the checkpoint: one line, exit 130
    real_plot = example.plot_losses

    def interrupted_plot(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(example, "plot_losses", interrupted_plot)
    assert example.main(["--resume", str(out), "--epochs", "2", "--no-progress"]) == 130
    assert capsys.readouterr().err == (f"cyclegan_mnist: interrupted; the checkpoint of the last complete epoch is "
                                       f"kept: continue with python examples/cyclegan_mnist.py --resume {out} "
                                       f"--epochs 2\n")
    assert [e["epoch"] for e in json.loads((out / "epochs.json").read_text())] == [1, 2]   # epoch 2 not saved
    monkeypatch.setattr(example, "plot_losses", real_plot)
    assert example.main(["--resume", str(out), "--epochs", "2", "--no-progress"]) == 0
    assert [e["epoch"] for e in json.loads((out / "epochs.json").read_text())] == [1, 2]   # was [1, 2, 2]

    def no_data(*a, **k):
        raise AssertionError("the data was loaded for a run with nothing to train")
    monkeypatch.setattr(example, "load_domains", no_data)
    assert example.main(["--resume", str(out), "--no-progress"]) == 0
    assert capsys.readouterr().out.endswith(f"nothing trained: the run in {out} has already done 2 of 2 epochs; "
                                            f"give --epochs N (N > 2) to train further\n")


def test_overwrite_removes_the_old_runs_files_and_only_those(example, mnist_dir, tmp_path, capsys):
    # a shorter run with --overwrite showed the old run's later grids (samples/epoch_002.png) as its own
    out = tmp_path / "run"
    assert example.main(tiny_run_args(mnist_dir, out) + ["--epochs", "2"]) == 0
    mine = [out / "notes.txt", out / "samples" / "favourite.png", out / "samples" / "epoch_002_copy.png"]
    for path in mine:
        path.write_text("the user's")
    assert example.main(tiny_run_args(mnist_dir, out) + ["--epochs", "1", "--overwrite"]) == 0
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["epoch_000.png", "epoch_001.png",
                                                                   "epoch_002_copy.png", "favourite.png"]
    assert [e["epoch"] for e in json.loads((out / "epochs.json").read_text())] == [1]
    assert all(path.read_text() == "the user's" for path in mine)
    # RUN_FILES and EPOCH_GRIDS name everything a run writes: removing them leaves the user's files alone
    example.remove_old_run(out, example.RUN_FILES, example.EPOCH_GRIDS)
    assert sorted(p for p in out.rglob("*") if p.is_file()) == sorted(mine)


@pytest.mark.parametrize("broken_weight, message", [
    # epoch 2's last update breaks a weight after that step's losses were found finite
    ("after", "end of epoch 2: non-finite weights in 1 arrays (G_AB "),
    # a finite weight whose products overflow: the first step of epoch 2 has NaN losses and updates nothing
    ("before", "step 2 (epoch 2), before its updates: a non-finite value"),
], ids=["broken_by_an_update", "overflowing_in_a_step"])
def test_a_diverged_epoch_writes_nothing_and_keeps_the_checkpoint(example, mnist_dir, tmp_path, monkeypatch, capsys,
                                                                   broken_weight, message):
    out = tmp_path / "run"
    args = tiny_run_args(mnist_dir, out)
    assert example.main(args + ["--epochs", "1"]) == 0
    saved, log = (out / "checkpoint.npz").read_bytes(), (out / "epochs.json").read_text()
    real_step = example.CycleGANTrainer.step

    def step_that_blows_up(trainer, a, b):
        weight = trainer.networks["G_AB"].parameters()[0].data
        if broken_weight == "before" and trainer.step_count == 2:
            weight[...] = 3e38
        record = real_step(trainer, a, b)
        if broken_weight == "after" and trainer.step_count == 4:
            weight[...] = np.nan
        return record

    monkeypatch.setattr(example.CycleGANTrainer, "step", step_that_blows_up)
    assert example.main(["--resume", str(out), "--epochs", "2", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.splitlines()) == 1 and str(out / "checkpoint.npz") in err
    assert (out / "checkpoint.npz").read_bytes() == saved and (out / "epochs.json").read_text() == log
    assert not (out / "samples" / "epoch_002.png").exists()


def test_settings_from_the_command_line(example):
    given = vars(example.build_parser().parse_args(["--width", "12", "--lambda-identity", "0.5", "--domain-a",
                                                    "red", "--max-images", "100", "--lr", "1e-3"]))
    settings, config = example.settings_from_args(given)
    assert (config.g_width, config.d_width, config.lambda_identity, config.lr) == (12, 12, 0.5, 1e-3)
    assert (settings.domain_a, settings.domain_b, settings.max_images) == ("red", "cool", 100)
    assert (config.lambda_cycle, config.beta1, config.gan_loss) == (10.0, 0.5, "least_squares")


@pytest.mark.skipif(backend.cupy_available(), reason="checks the message shown when CuPy is missing")
def test_gpu_without_cupy_is_one_line(example, tmp_path, capsys):
    assert example.main(["--device", "gpu", "--out", str(tmp_path / "run")]) == 2
    assert "CuPy" in capsys.readouterr().err and not (tmp_path / "run").exists()
