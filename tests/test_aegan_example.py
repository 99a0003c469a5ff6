"""examples/aegan.py: a few-step run on an image folder the test writes, the figures, resume, bad options."""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "aegan.py"
SMALL = ["--arch", "mlp", "--image-size", "32", "--width", "16", "--latent-dim", "4", "--latent-hidden", "8",
         "--batch-size", "4", "--steps-per-epoch", "2", "--no-progress"]


@pytest.fixture(scope="module")
def aegan():
    spec = importlib.util.spec_from_file_location("aegan_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def image_folder(tmp_path, monkeypatch):
    """Ten small pictures of two sizes and shapes (PNG and JPEG), in two subfolders."""
    monkeypatch.setenv("NNBOX_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    for index in range(10):
        folder = tmp_path / "pictures" / f"set{index % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        shape = (40, 48, 3) if index % 2 else (50, 36, 3)
        picture = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8))
        picture.save(folder / f"p{index}.{'png' if index % 3 else 'jpg'}")
    return tmp_path / "pictures"


def test_main_trains_writes_the_figures_and_resumes(aegan, image_folder, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    assert aegan.main(SMALL + ["--data", str(image_folder), "--epochs", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "10 images of 32x32: the images under" in printed
    for name in ("samples/epoch_000.png", "samples/epoch_001.png", "reconstructions/epoch_001.png",
                 "plots/losses.png", "plots/interpolations_encoded.png", "plots/interpolations_prior.png",
                 "history.csv", "checkpoint.npz"):
        assert (out / name).is_file(), name
    with Image.open(out / "reconstructions" / "epoch_001.png") as grid:
        # 10 reference images, 8 per row: two pairs of rows (x above G(E(x))) of 64-px tiles (32 px, scale 2)
        assert grid.size == (8 * 66 + 2, 4 * 66 + 2)
    config = json.loads((out / "config.json").read_text())
    assert config["aegan"]["latent_dim"] == 4 and config["example"]["data"] == str(image_folder)

    assert aegan.main(["--resume", str(out), "--epochs", "2", "--no-progress"]) == 0
    assert (out / "samples" / "epoch_002.png").is_file()
    history = (out / "history.csv").read_text().splitlines()
    assert len(history) == 1 + 4                      # a header and 2 steps per epoch
    assert json.loads((out / "config.json").read_text())["epochs"] == 2      # the new target is kept

    # new learning rates on resume, with epochs to train them (a run that diverged)
    assert aegan.main(["--resume", str(out), "--lr", "1e-4"]) == 2
    assert "new learning rates need epochs to train" in capsys.readouterr().err
    assert aegan.main(["--resume", str(out), "--epochs", "3", "--lr-d", "5e-5", "--no-progress"]) == 0
    assert "D_x and D_z 5e-05" in capsys.readouterr().out
    assert json.loads((out / "config.json").read_text())["aegan"]["lr_d"] == 5e-5

    # a finished run: one line saying why nothing trained; the images are not even read, nothing is written
    def no_images(*args, **kwargs):
        raise AssertionError("the images were loaded for a run with nothing to train")
    monkeypatch.setattr(aegan, "load_images", no_images)
    written = {path: path.stat().st_mtime_ns for path in out.rglob("*")}
    assert aegan.main(["--resume", str(out)]) == 0
    assert capsys.readouterr().out == (f"nothing trained: the run in {out} has already done 3 of 3 epochs; "
                                       f"give --epochs N (N > 3) to train further\n")
    assert {path: path.stat().st_mtime_ns for path in out.rglob("*")} == written


def test_ctrl_c_before_training_is_one_line(aegan, image_folder, tmp_path, capsys, monkeypatch):
    # before the run folder exists there is no checkpoint to mention
    def interrupted_while_loading(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(aegan, "load_images", interrupted_while_loading)
    assert aegan.main(SMALL + ["--data", str(image_folder), "--epochs", "1", "--out", str(tmp_path / "run")]) == 130
    assert capsys.readouterr().err == "aegan: interrupted\n"


def test_bad_command_lines_are_one_line_errors(aegan, image_folder, tmp_path, capsys):
    assert aegan.main(SMALL + ["--data", str(image_folder), "--max-images", "0", "--out", str(tmp_path / "a")]) == 2
    assert "--max-images must be >= 1" in capsys.readouterr().err
    assert aegan.main(SMALL + ["--data", str(tmp_path / "missing"), "--no-download", "--out", str(tmp_path / "b")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert aegan.main(["--resume", str(tmp_path / "none"), "--batch-size", "1"]) == 2
    assert "not --batch-size" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        aegan.main(["--image-size", "48"])
