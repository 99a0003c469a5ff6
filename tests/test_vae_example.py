"""examples/vae_colored_mnist.py: a few-step run of main() per latent on a tiny MNIST written here in IDX
format, and load_colored_mnist's two colour modes read from those files."""
import gzip
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from gan.vae import VAE
from nnbox.datasets import CLASS_COLORS, load_colored_mnist
from nnbox.serialization import load_checkpoint

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "vae_colored_mnist.py"


def _load_example():
    spec = importlib.util.spec_from_file_location("vae_colored_mnist", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _idx(array, magic):
    return int(magic).to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape) + array.tobytes()


@pytest.fixture
def mnist_dir(tmp_path):
    """Four gzipped IDX files: digits drawn as a bright bar whose place depends on the class."""
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 48), ("t10k", 20)):
        labels = np.arange(n, dtype=np.uint8) % 10
        images = rng.integers(0, 40, (n, 28, 28), dtype=np.uint8)
        for i, label in enumerate(labels):
            images[i, 4:24, 2 + 2 * label:6 + 2 * label] = 255
        for kind, payload in (("images-idx3-ubyte", _idx(images, 2051)), ("labels-idx1-ubyte", _idx(labels, 2049))):
            with gzip.open(tmp_path / f"{prefix}-{kind}.gz", "wb") as f:
                f.write(payload)
    return tmp_path


def tiny_run_args(mnist_dir, out):
    """A run of a second or two: one epoch of two batches of 32, width 2."""
    return ["--data", str(mnist_dir), "--no-download", "--max-images", "64", "--batch-size", "32", "--width", "2",
            "--epochs", "1", "--test-images", "16", "--out", str(out)]


def test_load_colored_mnist_both_modes_from_idx_files(mnist_dir):
    x, labels, colors = load_colored_mnist(mnist_dir, "test", mode="class", download=False)
    assert x.shape == (20, 3, 28, 28) and colors.shape == (10, 3)
    np.testing.assert_allclose((x[:, :, 10, 2 + 2 * labels[0]][:1] + 1) / 2, CLASS_COLORS[labels[:1]], atol=1e-6)
    stroke = np.array([(x[i, :, 10, 3 + 2 * label] + 1) / 2 for i, label in enumerate(labels)])
    np.testing.assert_allclose(stroke, CLASS_COLORS[labels], atol=1e-6)      # each class its own colour
    x, _, colors = load_colored_mnist(mnist_dir, "test", mode="random", rng=1, download=False)
    stroke = np.array([(x[i, :, 10, 3 + 2 * label] + 1) / 2 for i, label in enumerate(labels)])
    np.testing.assert_allclose(stroke, colors, atol=1e-6)                    # each image its own colour
    assert len({tuple(np.round(c, 4)) for c in colors}) == 20
    np.testing.assert_array_equal(load_colored_mnist(mnist_dir, "test", mode="random", rng=1, download=False)[0], x)


@pytest.mark.parametrize("latent, extra", [
    ("gaussian", ["--latent-dim", "3"]),
    ("categorical", ["--categorical-dims", "2", "--categories", "4", "--hard"]),
    ("both", ["--colors", "class"]),
])
def test_main_runs_and_writes_its_figures_and_checkpoint(mnist_dir, tmp_path, latent, extra):
    out = tmp_path / "run"
    assert _load_example().main(["--latent", latent, "--data", str(mnist_dir), "--no-download", "--epochs", "2",
                                 "--batch-size", "16", "--max-images", "40", "--width", "2", "--test-images", "20",
                                 "--seed", "3", "--out", str(out)] + extra) == 0
    expected = {"samples.png", "reconstructions.png", "losses.png", "steering.png", "checkpoint.npz", "metrics.json"}
    expected |= {"latent_space.png"} if latent != "categorical" else set()
    expected |= {"categories.png", "category_digits.png"} if latent != "gaussian" else set()
    assert expected <= {p.name for p in out.iterdir()}
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 4 and np.isfinite(metrics["test"]["loss"])
    if latent != "gaussian":
        assert 0 < metrics["category_purity"] <= 1 and metrics["final_temperature"] < 1.0
    checkpoint = load_checkpoint(out / "checkpoint.npz")
    config = checkpoint["config"]
    vae = VAE(config["latent"], latent_dim=config["latent_dim"], categories=config["categories"],
              categorical_dims=config["categorical_dims"], width=config["width"])
    vae.load_state_dict(checkpoint["model"])
    assert len(checkpoint["history"]["loss"]) == 4


def test_too_few_images_for_a_batch_is_a_clear_error(mnist_dir, tmp_path, capsys):
    assert _load_example().main(["--data", str(mnist_dir), "--no-download", "--max-images", "8", "--width", "2",
                                 "--out", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err == ("vae_colored_mnist: 8 training images is less than one batch of 64; "
                                       "lower --batch-size or raise --max-images\n")


def test_a_run_that_ends_with_a_non_finite_loss_writes_no_metrics(mnist_dir, tmp_path, capsys, monkeypatch):
    # --lr 1e30 broke the weights in its last update: exit 0 and a metrics.json holding bare NaN
    example = _load_example()
    real_evaluate = example.evaluate

    def broken(vae, test):
        parts, means, probs = real_evaluate(vae, test)
        return {**parts, "loss": float("nan")}, means, probs
    monkeypatch.setattr(example, "evaluate", broken)
    out = tmp_path / "run"
    assert example.main(tiny_run_args(mnist_dir, out)) == 2
    assert "training ended with a non-finite test loss" in capsys.readouterr().err
    assert not (out / "metrics.json").exists() and not (out / "checkpoint.npz").exists()


def test_a_folder_holding_a_run_is_refused_before_the_data_is_read_unless_overwrite(mnist_dir, tmp_path, capsys,
                                                                                    monkeypatch):
    # a second run into the same --out replaced the first one's files without a word
    example = _load_example()
    out = tmp_path / "run"
    assert example.main(tiny_run_args(mnist_dir, out)) == 0
    saved = (out / "checkpoint.npz").read_bytes()
    capsys.readouterr()
    real_load_data = example.load_data

    def no_data(*args, **kwargs):
        raise AssertionError("the data was loaded for a run that is refused")
    monkeypatch.setattr(example, "load_data", no_data)
    assert example.main(tiny_run_args(mnist_dir, out)) == 2
    assert capsys.readouterr().err == (f"vae_colored_mnist: {out} already holds a run: pass --overwrite to replace "
                                       f"it, or choose another --out\n")
    assert (out / "checkpoint.npz").read_bytes() == saved
    monkeypatch.setattr(example, "load_data", real_load_data)
    assert example.main(tiny_run_args(mnist_dir, out) + ["--overwrite", "--seed", "1"]) == 0
    assert load_checkpoint(out / "checkpoint.npz")["config"]["seed"] == 1


def test_overwrite_removes_the_old_runs_files_and_only_those(mnist_dir, tmp_path):
    # latent_space.png of a Gaussian run stayed beside the categorical run that replaced it
    example = _load_example()
    out = tmp_path / "run"
    assert example.main(tiny_run_args(mnist_dir, out) + ["--latent", "gaussian"]) == 0
    (out / "notes.txt").write_text("the user's")
    assert example.main(tiny_run_args(mnist_dir, out) + ["--latent", "categorical", "--overwrite"]) == 0
    assert not (out / "latent_space.png").exists() and (out / "categories.png").is_file()
    assert (out / "notes.txt").read_text() == "the user's"
    # RUN_FILES names everything a run writes: removing them leaves the user's file alone
    example.remove_old_run(out, example.RUN_FILES)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_ctrl_c_is_one_line_and_exit_status_130(mnist_dir, tmp_path, capsys, monkeypatch):
    example = _load_example()

    def interrupted_training(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(example, "train", interrupted_training)
    assert example.main(tiny_run_args(mnist_dir, tmp_path / "run")) == 130
    assert capsys.readouterr().err == "vae_colored_mnist: interrupted\n"
