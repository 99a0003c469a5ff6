"""examples/mnist_latent_study.py: a few-step run of the uniform and the normal DCGAN on tiny MNIST IDX files."""
import contextlib
import gzip
import importlib.util
import io
import json
from pathlib import Path

import numpy as np
import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "mnist_latent_study.py"
TINY = ["--epochs", "1", "--max-images", "32", "--batch-size", "16", "--width", "4", "--latent-dim", "16",
        "--no-progress", "--no-report"]


@pytest.fixture(scope="module")
def study():
    spec = importlib.util.spec_from_file_location("mnist_latent_study_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _idx(array, magic):
    """The IDX encoding: magic number, one big-endian uint32 per dimension, then the uint8 data."""
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.tobytes()


def write_mnist_train(folder, n, seed=0):
    """folder/train-{images-idx3,labels-idx1}-ubyte.gz as in the official MNIST files: blobs on a dark ground."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    yy, xx = np.mgrid[:28, :28]
    centres = rng.uniform(8, 20, size=(n, 2, 1, 1))
    images = (255 * np.exp(-((yy - centres[:, 0]) ** 2 + (xx - centres[:, 1]) ** 2) / 18)).astype(np.uint8)
    labels = rng.integers(0, 10, size=n).astype(np.uint8)
    (folder / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx(images, 2051)))
    (folder / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx(labels, 2049)))
    return folder


@pytest.fixture(scope="module")
def classifier_weights(tmp_path_factory):
    """An untrained MNIST classifier's weights, in the format examples/train_mnist_classifier.py saves."""
    from gan.classifier import MNISTClassifier
    from nnbox.serialization import save_state
    path = tmp_path_factory.mktemp("classifier") / "mnist_classifier.npz"
    save_state(path, MNISTClassifier(rng=0).state_dict())
    return path


@pytest.fixture(scope="module")
def runs(study, tmp_path_factory, classifier_weights):
    root = tmp_path_factory.mktemp("mnist")
    data = write_mnist_train(root / "data", 40)
    out = root / "runs"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = study.main(TINY + ["--data", str(data), "--eval-images", "0", "--classifier-weights",
                                  str(classifier_weights), "--out", str(out)])
    assert code == 0
    return out, printed.getvalue(), data


def test_both_laws_train_the_same_dcgan(runs):
    out, printed, _ = runs
    assert "32 MNIST training digits padded to 32x32" in printed
    configs = {}
    for kind in ("uniform", "normal"):
        run = out / kind
        for name in ("checkpoint.npz", "samples/epoch_000.png", "samples/epoch_001.png"):
            assert (run / name).is_file(), f"{kind}/{name}"
        configs[kind] = json.loads((run / "config.json").read_text())["train"]
        assert configs[kind]["latent_kind"] == kind
        history = json.loads((run / "history.json").read_text())
        assert len(history) == 2
        assert np.isfinite([[r["d_loss"], r["g_loss"], r["d_real"], r["d_fake"]] for r in history]).all()
    assert configs["uniform"]["arch"] == "dcgan" and configs["uniform"]["channels"] == 1
    assert configs["uniform"]["model_options"] == {"d_input_dropout": 0.2}
    del configs["uniform"]["latent_kind"], configs["normal"]["latent_kind"]
    assert configs["uniform"] == configs["normal"]                  # the law of z is the only difference
    for name in ("losses.png", "samples_per_epoch.png", "throughput.png", "noise.png", "classes.png"):
        assert (out / "compare" / name).stat().st_size > 0, name
    summary = json.loads((out / "summary.json").read_text())
    for kind in ("uniform", "normal"):
        fractions = summary[kind]["metrics"]["digit_fractions"]
        assert len(fractions) == 10 and np.isclose(sum(fractions), 1.0)
        assert 0.1 <= summary[kind]["metrics"]["classifier_confidence"] <= 1.0


def test_padding_keeps_the_digit_and_the_crop_undoes_it(study, rng):
    digits = rng.uniform(-1, 1, size=(3, 1, 28, 28)).astype(np.float32)
    padded = study.pad_digits(digits)
    assert padded.shape == (3, 1, 32, 32) and (padded[:, :, :2] == -1).all() and (padded[:, :, :, -2:] == -1).all()
    np.testing.assert_array_equal(study.crop_digits(padded), digits)


def test_evaluation_with_digit_classifier_features(study, runs, classifier_weights):
    from compare_runs import evaluate_variant
    out, _, data = runs
    from nnbox.datasets import load_mnist
    images = study.pad_digits(load_mnist(data, download=False)[0][:32])
    result = evaluate_variant(out / "uniform", images, n=16, features="mnist",
                              classifier_weights=str(classifier_weights), report=False)
    assert result["features"] == "mnist"
    assert np.isfinite([result["swd"], result["fid"], result["inception_score"]]).all()
    assert 1.0 <= result["inception_score"] <= 10.0
    for name in ("interp_linear", "interp_slerp", "nearest_l2"):
        assert (out / "uniform" / result["figures"][name]).is_file(), name


@pytest.mark.gpu
def test_study_on_the_gpu(study, tmp_path, classifier_weights):
    data = write_mnist_train(tmp_path / "data", 40)
    out = tmp_path / "runs"
    assert study.main(TINY + ["--data", str(data), "--device", "gpu", "--eval-images", "16",
                              "--classifier-weights", str(classifier_weights), "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    for kind in ("uniform", "normal"):
        metrics = summary[kind]["metrics"]
        assert np.isfinite(metrics["fid"]) and np.isclose(sum(metrics["digit_fractions"]), 1)


@pytest.mark.parametrize("weights", ["missing.npz", "not_weights.npz"])
def test_bad_classifier_weights_are_refused_before_any_data_or_training(study, tmp_path, monkeypatch, capsys, weights):
    (tmp_path / "not_weights.npz").write_text("not an .npz")
    def nothing_yet(*args, **kwargs):
        raise AssertionError("data was read or a variant trained before the classifier weights were checked")
    monkeypatch.setattr(study, "load_dataset", nothing_yet)
    monkeypatch.setattr(study, "train_variant", nothing_yet)
    path = tmp_path / weights
    assert study.main(TINY + ["--classifier-weights", str(path), "--out", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("mnist_latent_study: ") and str(path) in err
    assert ("train_mnist_classifier.py" if weights == "missing.npz" else "corrupt") in err
    assert not (tmp_path / "runs").exists()


def test_balance_and_label_smoothing_reach_both_configs(study, tmp_path):
    """--balance and --label-smoothing go into the TrainConfig both laws share; bad smoothing is a usage error."""
    data = write_mnist_train(tmp_path / "data", 16)
    out = tmp_path / "runs"
    options = ["--epochs", "1", "--max-images", "16", "--batch-size", "16", "--width", "4", "--latent-dim", "8",
               "--no-progress", "--no-report", "--eval-images", "0", "--data", str(data)]
    with contextlib.redirect_stdout(io.StringIO()):
        assert study.main(options + ["--balance", "skip", "--label-smoothing", "0.1", "--out", str(out)]) == 0
    configs = {kind: json.loads((out / kind / "config.json").read_text())["train"] for kind in ("uniform", "normal")}
    for config in configs.values():
        assert config["balance"] == "skip" and config["label_smoothing"] == 0.1
        del config["latent_kind"]
    assert configs["uniform"] == configs["normal"]
    errors = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(errors):
        assert study.main(options + ["--label-smoothing", "1.5", "--out", str(tmp_path / "bad")]) == 2
    assert "--label-smoothing must be in [0, 1), got 1.5" in errors.getvalue()


def test_overwrite_removes_the_old_studys_files_and_only_those(study, tmp_path, classifier_weights):
    # a rerun of one law without evaluation kept the old comparison (losses.png, classes.png, ...) in compare/
    # and the old run's metrics.json and evaluation/ in normal/
    data = write_mnist_train(tmp_path / "data", 40)
    out = tmp_path / "runs"
    with_report = [option for option in TINY if option != "--no-report"]
    with contextlib.redirect_stdout(io.StringIO()):
        assert study.main(with_report + ["--data", str(data), "--eval-images", "16", "--classifier-weights",
                                         str(classifier_weights), "--out", str(out)]) == 0
        mine = [out / "notes.txt", out / "compare" / "my_figure.png", out / "normal" / "plots" / "mine.png"]
        for path in mine:
            path.write_text("the user's")
        assert study.main(TINY + ["--data", str(data), "--noise", "normal", "--eval-images", "0", "--overwrite",
                                  "--out", str(out)]) == 0
    assert sorted(path.name for path in (out / "compare").iterdir()) == ["my_figure.png", "noise.png"]
    normal = out / "normal"
    assert not any((normal / name).exists() for name in ("metrics.json", "evaluation", "report.html", "samples.gif"))
    assert [path.name for path in (normal / "plots").iterdir()] == ["mine.png"]
    assert (out / "uniform" / "metrics.json").is_file()          # not rerun: the other law's run stays
    assert all(path.read_text() == "the user's" for path in mine)
    # gan_run_files() and STUDY_FILES name everything a study writes: removing them leaves the user's files
    from compare_runs import remove_old_study
    remove_old_study(out, ["uniform", "normal"], study.STUDY_FILES)
    assert sorted(path for path in out.rglob("*") if path.is_file()) == sorted(mine)


def test_ctrl_c_is_one_line_saying_what_is_kept(study, tmp_path, monkeypatch):
    # Ctrl-C printed a traceback, also while the comparison figures were drawn after training
    def interrupted_drawing(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(study, "plot_noise_histograms", interrupted_drawing)
    data, out = write_mnist_train(tmp_path / "data", 40), tmp_path / "runs"
    errors = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(errors):
        assert study.main(TINY + ["--data", str(data), "--eval-images", "0", "--out", str(out)]) == 130
    assert errors.getvalue() == (f"mnist_latent_study: interrupted; the checkpoint of the last complete epoch is "
                                 f"kept in {out / 'normal'}\n")
    assert (out / "uniform" / "checkpoint.npz").is_file() and not (out / "summary.json").exists()
