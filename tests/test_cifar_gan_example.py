"""examples/cifar_gan.py: a few-step run of both architectures on a tiny CIFAR-10 binary batch the test writes."""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "cifar_gan.py"
# tiny networks (DCGAN width 4, MLP hidden 8) keep both runs to a few seconds on two cores
TINY = ["--epochs", "1", "--max-images", "32", "--batch-size", "16", "--dcgan-width", "4", "--mlp-hidden", "8",
        "--no-download", "--no-progress", "--no-report"]


@pytest.fixture(scope="module")
def cifar_gan():
    spec = importlib.util.spec_from_file_location("cifar_gan_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_cifar_test_batch(root, seed=0):
    """root/cifar-10-batches-bin/test_batch.bin in the official layout: 10,000 records (the loader insists on
    them) of 1 label byte + 3072 pixels (R, G, B planes of 32x32). Like ../shared/data, the folder holds only
    the test split; the runs take --max-images of them."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    labels = rng.integers(0, 10, size=(10000, 1), dtype=np.uint8)
    pixels = rng.integers(0, 256, size=(10000, 3072), dtype=np.uint8)
    np.concatenate([labels, pixels], axis=1).tofile(folder / "test_batch.bin")
    return root


@pytest.fixture(scope="module")
def comparison(cifar_gan, tmp_path_factory):
    """Both architectures trained for one epoch of two batches; returns (run folder, printed output)."""
    root = tmp_path_factory.mktemp("cifar")
    data = write_cifar_test_batch(root / "data")
    out = root / "runs"
    import contextlib
    import io
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = cifar_gan.main(TINY + ["--data", str(data), "--arch", "mlp", "dcgan", "--eval-images", "0",
                                      "--out", str(out)])
    assert code == 0
    return out, printed.getvalue(), data


def test_main_trains_both_architectures_on_the_test_split(comparison):
    out, printed, _ = comparison
    assert "training on the test split instead" in printed          # the folder holds test_batch.bin only
    assert "32 images of 32x32 from the CIFAR-10 test split" in printed
    for arch in ("mlp", "dcgan"):
        run = out / arch
        for name in ("checkpoint.npz", "history.json", "samples/epoch_000.png", "samples/epoch_001.png"):
            assert (run / name).is_file(), f"{arch}/{name}"
        config = json.loads((run / "config.json").read_text())["train"]
        assert (config["arch"], config["latent_dim"], config["loss"], config["optimizer"], config["lr_g"],
                config["lr_d"], config["beta1"]) == (arch, 128, "non_saturating", "adam", 2e-4, 2e-4, 0.5)
        history = json.loads((run / "history.json").read_text())
        assert len(history) == 2                                     # 32 images in batches of 16
        assert np.isfinite([[r["d_loss"], r["g_loss"], r["d_real"], r["d_fake"]] for r in history]).all()
    for name in ("losses.png", "samples_per_epoch.png", "throughput.png"):
        assert (out / "compare" / name).stat().st_size > 0, name
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"mlp", "dcgan"}
    assert summary["mlp"]["epochs"][0]["images"] == 32 and np.isfinite(summary["dcgan"]["epochs"][0]["images_per_sec"])
    assert summary["mlp"]["parameters"]["G"] == 128 * 8 + 8 + 8 * 16 + 16 + 16 * 3072 + 3072   # hidden 8


def test_evaluation_of_a_run_writes_finite_measures_and_figures(cifar_gan, comparison):
    from compare_runs import evaluate_variant
    out, _, data = comparison
    images, _, _ = cifar_gan.load_cifar(data, "test", download=False)
    result = evaluate_variant(out / "dcgan", images[:32], n=16, report=False)
    assert np.isfinite([result["swd"], result["fid"], result["kid"]]).all() and result["fid"] >= 0
    assert 0.0 <= result["memorization"]["fraction"] <= 1.0
    for name in ("nearest_l2", "interp_linear", "interp_slerp"):
        assert (out / "dcgan" / result["figures"][name]).is_file(), name
    assert json.loads((out / "dcgan" / "metrics.json").read_text())["n_generated"] == 16
    assert np.load(out / "dcgan" / "real_images.npy", allow_pickle=False).shape == (32, 32, 32, 3)


def test_a_missing_split_is_a_clear_error(cifar_gan, tmp_path, capsys):
    data = write_cifar_test_batch(tmp_path / "data")
    assert cifar_gan.main(TINY + ["--data", str(data), "--split", "train", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "lacks data_batch_1.bin" in err and "give --split test (or auto)" in err and len(err.splitlines()) == 1
    assert cifar_gan.main(TINY + ["--data", str(tmp_path / "empty"), "--out", str(tmp_path / "r")]) == 2
    assert "no CIFAR-10 batches" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_gpu_without_cupy_is_a_one_line_error(cifar_gan, tmp_path, capsys):
    from nnbox import backend
    if backend.cupy_available():
        pytest.skip("CuPy and a device are present: the GPU run is test_main_on_the_gpu")
    data = write_cifar_test_batch(tmp_path / "data")
    assert cifar_gan.main(TINY + ["--data", str(data), "--device", "gpu", "--out", str(tmp_path / "r")]) == 2
    assert "cifar_gan:" in capsys.readouterr().err and not (tmp_path / "r").exists()


@pytest.mark.gpu
def test_main_on_the_gpu(cifar_gan, tmp_path):
    data = write_cifar_test_batch(tmp_path / "data")
    out = tmp_path / "runs"
    assert cifar_gan.main(TINY + ["--data", str(data), "--arch", "mlp", "dcgan", "--device", "gpu",
                                  "--eval-images", "16", "--out", str(out)]) == 0
    for arch in ("mlp", "dcgan"):
        history = json.loads((out / arch / "history.json").read_text())
        assert len(history) == 2 and np.isfinite([r["d_loss"] for r in history]).all()
        assert np.isfinite(json.loads((out / arch / "metrics.json").read_text())["swd"])


def test_overwrite_removes_the_old_studys_files_and_only_those(cifar_gan, tmp_path):
    # a rerun with --eval-images 0 kept the old run's metrics.json and evaluation/ (and report.html its
    # Evaluation section); one architecture kept the old comparison of two in compare/
    data = write_cifar_test_batch(tmp_path / "data")
    out = tmp_path / "runs"
    with_report = [option for option in TINY if option != "--no-report"]
    assert cifar_gan.main(with_report + ["--data", str(data), "--arch", "mlp", "dcgan", "--eval-images", "16",
                                         "--out", str(out)]) == 0
    assert (out / "dcgan" / "metrics.json").is_file() and (out / "compare" / "losses.png").is_file()
    mine = [out / "notes.txt", out / "dcgan" / "evaluation" / "my_figure.png",
            out / "dcgan" / "samples" / "epoch_001_copy.png"]
    for path in mine:
        path.write_text("the user's")
    old_run = {path: path.read_bytes() for path in out.rglob("*") if path.is_file()}
    # refused before it starts writing (no data): the old run stays whole
    assert cifar_gan.main(TINY + ["--data", str(tmp_path / "empty"), "--arch", "dcgan", "--overwrite",
                                  "--out", str(out)]) == 2
    assert {path: path.read_bytes() for path in out.rglob("*") if path.is_file()} == old_run
    assert cifar_gan.main(TINY + ["--data", str(data), "--arch", "dcgan", "--eval-images", "0", "--overwrite",
                                  "--out", str(out)]) == 0
    assert not (out / "compare").exists()
    dcgan = out / "dcgan"
    assert not any((dcgan / name).exists() for name in ("metrics.json", "real_images.npy", "report.html", "plots"))
    assert [path.name for path in (dcgan / "evaluation").iterdir()] == ["my_figure.png"]
    assert (out / "mlp" / "metrics.json").read_bytes() == old_run[out / "mlp" / "metrics.json"]   # not rerun
    assert all(path.read_text() == "the user's" for path in mine)
    # gan_run_files() and COMPARISON_FILES name everything a study writes: removing them leaves the user's files
    from compare_runs import COMPARISON_FILES, remove_old_study
    remove_old_study(out, cifar_gan.ARCHS, COMPARISON_FILES)
    assert sorted(path for path in out.rglob("*") if path.is_file()) == sorted(mine)


def test_ctrl_c_is_one_line_saying_what_is_kept(cifar_gan, tmp_path, capsys, monkeypatch):
    # Ctrl-C printed a traceback; the program has no --resume, so the line says what it keeps
    from gan.trainer import GANTrainer
    data, out = write_cifar_test_batch(tmp_path / "data"), tmp_path / "runs"
    argv = TINY + ["--data", str(data), "--arch", "mlp", "dcgan", "--eval-images", "0", "--out", str(out)]
    load_dataset = cifar_gan.load_dataset

    def interrupted_while_loading(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(cifar_gan, "load_dataset", interrupted_while_loading)
    assert cifar_gan.main(argv) == 130
    assert capsys.readouterr().err == "cifar_gan: interrupted; nothing was written\n" and not out.exists()
    monkeypatch.setattr(cifar_gan, "load_dataset", load_dataset)
    step, calls = GANTrainer.step, []

    def interrupted_in_the_second_architecture(self, batch):   # 32 images in batches of 16: two steps each
        calls.append(batch)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return step(self, batch)
    monkeypatch.setattr(GANTrainer, "step", interrupted_in_the_second_architecture)
    assert cifar_gan.main(argv) == 130
    assert capsys.readouterr().err == (f"cifar_gan: interrupted; the checkpoint of the last complete epoch is kept "
                                       f"in {out / 'dcgan'}\n")
    assert (out / "mlp" / "checkpoint.npz").is_file() and not (out / "summary.json").exists()
