"""`python -m gan.evaluate` on a tiny run folder made by the trainer, and the MNIST classifier features."""
import json
import re

import numpy as np
import pytest

from gan import evaluate
from gan.trainer import GANTrainer, TrainConfig, stream_rng
from nnbox.data import DataLoader
from nnbox.synthetic_faces import synthetic_faces

SIZE = 16


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A faces-GAN run of one short epoch on 32 synthetic 16x16 faces, and those faces as a .npy."""
    root = tmp_path_factory.mktemp("eval")
    faces = synthetic_faces(32, SIZE, rng=0)
    np.save(root / "faces.npy", faces)
    config = TrainConfig(arch="faces", image_size=SIZE, latent_dim=8, width=4, n_samples=4, progress=False,
                         report=True, seed=3, steps_per_epoch=2)
    trainer = GANTrainer.from_config(config, root / "run")
    trainer.fit(DataLoader(faces, 8, shuffle=True, drop_last=True, rng=stream_rng(3, "data")), epochs=1)
    return root / "run", root / "faces.npy", faces


def test_evaluate_command_writes_metrics_figures_and_a_report_section(tiny_run, capsys):
    run, real, _ = tiny_run
    argv = [str(run), "--real", str(real), "--n", "24", "--features", "pixels"]
    assert evaluate.main(argv) == 0
    result = json.loads((run / "metrics.json").read_text())
    assert result["n_generated"] == 24 and result["n_real"] == 24 and result["features"] == "pixels"
    for key in ("fid", "kid", "kid_std", "swd"):
        assert np.isfinite(result[key]), key
    assert result["fid"] > 0 and result["swd"] > 0   # an untrained generator is far from the faces
    assert list(result["swd_levels"]) == ["16"]
    assert "inception_score" not in result            # pixels do not classify
    assert 0.0 <= result["memorization"]["fraction"] <= 1.0
    for name in ("nearest_l2", "nearest_ssim", "interp_linear", "interp_slerp", "plot_losses"):
        path = run / result["figures"][name]
        assert path.read_bytes()[:4] == b"\x89PNG", name
    page = (run / "report.html").read_text()
    assert page.count(evaluate.SECTION_START) == 1 and "<h2>Evaluation</h2>" in page and "Configuration" in page
    # a second evaluation replaces the section instead of adding one
    assert evaluate.main(argv + ["--seed", "1"]) == 0
    assert (run / "report.html").read_text().count(evaluate.SECTION_START) == 1
    assert "SWD x1e3" in capsys.readouterr().out


def test_evaluate_is_reproducible_and_compares_with_itself(tiny_run):
    run, _, faces = tiny_run
    a = evaluate.evaluate(run, str(tiny_run[1]), n=16, report=False, kid_subsets=5, progress=lambda _: None)
    b = evaluate.evaluate(run, str(tiny_run[1]), n=16, report=False, kid_subsets=5, progress=lambda _: None)
    assert a["fid"] == b["fid"] and a["swd"] == b["swd"] and a["kid"] == b["kid"]
    generator, config = evaluate.load_generator(run)
    images, _ = evaluate.generate(generator, config, 10, seed=0)
    assert images.shape == (10, 3, SIZE, SIZE) and images.dtype == np.float32
    assert np.abs(images).max() <= 1.0


def test_evaluate_without_the_report_writes_no_plots(tiny_run, tmp_path):
    # report=False (--no-report) still refreshed RUN/plots/
    import shutil
    run = tmp_path / "run"
    shutil.copytree(tiny_run[0], run)
    shutil.rmtree(run / "plots")
    result = evaluate.evaluate(run, str(tiny_run[1]), n=16, report=False, kid_subsets=5, progress=lambda _: None)
    assert not (run / "plots").exists() and not any(name.startswith("plots") for name in result["figures"].values())
    assert (run / "metrics.json").is_file()


def test_a_file_of_other_weights_is_not_an_mnist_classifier(tiny_run):
    from gan.classifier import ClassifierFeatures
    with pytest.raises(ValueError, match=r"checkpoint.npz does not hold an MNIST classifier's weights .*train them"):
        ClassifierFeatures.from_file(tiny_run[0] / "checkpoint.npz")


def test_evaluate_with_mnist_classifier_features_reports_an_inception_score(tiny_run, tmp_path, monkeypatch):
    """The IS reported is metrics.inception_score of the classifier's softmax on the generated images."""
    from gan import metrics
    from gan.classifier import MNISTClassifier, to_mnist_input
    from nnbox.serialization import save_state
    run, real, _ = tiny_run
    weights = tmp_path / "clf.npz"
    classifier = MNISTClassifier(rng=0)
    save_state(weights, classifier.state_dict())   # untrained: the plumbing is what is tested
    seen = {}
    original = metrics.inception_score
    monkeypatch.setattr(metrics, "inception_score", lambda probs, splits: seen.setdefault("args", (probs, splits))
                        and original(probs, splits))
    result = evaluate.evaluate(run, str(real), features="mnist", classifier_weights=str(weights), n=12,
                               report=False, kid_subsets=3, progress=lambda _: None)
    probs, splits = seen["args"]
    generator, config = evaluate.load_generator(run)
    fake, _ = evaluate.generate(generator, config, 12, seed=0)
    logits = classifier(to_mnist_input(fake)).astype(np.float64)
    softmax = np.exp(logits - logits.max(axis=1, keepdims=True))
    softmax /= softmax.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(probs, softmax, rtol=1e-4, atol=1e-6)
    assert result["inception_score"] == pytest.approx(original(probs, splits)[0], rel=1e-12)
    assert np.isfinite(result["fid"])


def test_evaluate_errors_are_one_line_and_exit_status_2(tiny_run, tmp_path, capsys):
    run, real, _ = tiny_run
    for argv, message in (([str(tmp_path), "--real", str(real)], "checkpoint.npz does not exist"),
                          ([str(run), "--real", str(tmp_path / "nothing"), "--n", "4"], "not a folder, a .npy file"),
                          ([str(run), "--real", str(real), "--features", "mnist", "--classifier-weights",
                            str(tmp_path / "none.npz")], "no MNIST classifier weights at")):
        assert evaluate.main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("gan.evaluate: ") and err.count("\n") == 1 and message in err


@pytest.mark.parametrize("features, message", [("inception", "needs --inception-weights PATH: download"),
                                               ("mnist", "needs --classifier-weights PATH")])
def test_features_without_their_weights_fail_before_anything_is_loaded(tiny_run, monkeypatch, capsys, features,
                                                                       message):
    def too_early(*args, **kwargs):
        raise AssertionError("loaded before the --features options were checked")
    monkeypatch.setattr(evaluate, "load_generator", too_early)
    monkeypatch.setattr(evaluate, "load_real_images", too_early)
    run, real, _ = tiny_run
    assert evaluate.main([str(run), "--real", str(real), "--features", features]) == 2
    assert capsys.readouterr().err.startswith(f"gan.evaluate: --features {features} {message}")


def test_real_images_are_fitted_to_the_generator(tmp_path):
    grey = (np.arange(2 * 32 * 32) % 256).astype(np.uint8).reshape(2, 32, 32)
    np.save(tmp_path / "grey.npy", grey)
    images, what = evaluate.load_real_images(str(tmp_path / "grey.npy"), 16, 3)
    assert images.shape == (2, 3, 16, 16) and "2 images" in what
    expected = (grey.astype(np.float32) / 127.5 - 1).reshape(2, 16, 2, 16, 2).mean(axis=(2, 4))
    np.testing.assert_allclose(images[:, 1], expected, rtol=1e-6)


@pytest.mark.parametrize("damage, found", [
    ("npz", r"is an \.npz archive"),              # was "real images must be uint8 ..., got object ()"
    ("empty", r"the file is empty"),              # was an uncaught EOFError
    ("truncated", r"truncated or corrupt"),
    ("object", r"holds an object array"),
])
def test_a_real_npy_that_is_not_an_image_array_is_one_line_naming_the_file_and_the_fix(tiny_run, tmp_path, capsys,
                                                                                       damage, found):
    run, _, faces = tiny_run
    path = tmp_path / "real_images.npy"
    with open(path, "wb") as f:
        if damage == "npz":
            np.savez(f, images=faces)
        elif damage == "object":
            np.save(f, np.array([None, 1], dtype=object), allow_pickle=True)
        elif damage == "truncated":
            np.save(f, faces[:2])
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:-10])
    assert evaluate.main([str(run), "--real", str(path), "--no-report"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert re.match(rf"gan\.evaluate: --real: .*real_images\.npy.*{found}.*; a run's real_images\.npy is written by "
                    rf"examples/faces_gan\.py, cifar_gan\.py or mnist_latent_study\.py: delete it and run that program "
                    rf"again; your own images: save them as one uint8 \(N, H, W\[, C\]\) array with np\.save", err), err


@pytest.mark.parametrize("array, found", [
    (np.zeros((2, 16, 16), np.int32), r"int32 \(2, 16, 16\)"),                 # neither uint8 nor float
    (np.zeros((16, 16), np.uint8), r"uint8 \(16, 16\)"),                       # one image, no batch axis
])
def test_a_real_array_of_the_wrong_kind_names_the_file(tiny_run, tmp_path, capsys, array, found):
    run, _, _ = tiny_run
    path = tmp_path / "mine.npy"
    np.save(path, array)
    assert evaluate.main([str(run), "--real", str(path), "--no-report"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert re.match(rf"gan\.evaluate: --real .*mine\.npy: real images must be uint8 .*got {found}", err), err


def test_an_mnist_folder_without_its_labels_says_which_file_to_add(tmp_path):
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"")     # found by its name; never read
    with pytest.raises(FileNotFoundError, match=r"--real .*: MNIST's training images are there, but not its "
                                                r"training labels \(train-labels-idx1-ubyte\[\.gz\]\)"):
        evaluate.load_real_images(str(tmp_path), 28, 1)


@pytest.mark.parametrize("shape", [(4, 48, 64, 3), (4, 16, 24, 3)])
def test_non_square_real_images_are_stretched_to_the_square(tmp_path, shape):
    """A horizontal ramp from 0 to 255: stretched (not cropped) to 16x16 it still runs from about -1
    to about +1 left to right (a centre crop would start and end well inside), the same on every row."""
    n, h, w, c = shape
    ramp = np.round(np.linspace(0, 255, w)).astype(np.uint8)
    np.save(tmp_path / "wide.npy", np.broadcast_to(ramp[None, None, :, None], shape).copy())
    images, _ = evaluate.load_real_images(str(tmp_path / "wide.npy"), 16, 3)
    assert images.shape == (4, 3, 16, 16)
    np.testing.assert_array_equal(images, np.broadcast_to(images[:1, :1, :1], images.shape))  # rows alike
    row = images[0, 0, 0]
    assert (np.diff(row) > 0).all()
    half_step = 2 * (w / 16) / (w - 1) / 2 + 0.01     # half an output pixel, in [-1, 1] units
    assert row[0] < -1 + half_step and row[-1] > 1 - half_step


def test_the_interpolation_figures_use_the_runs_sample_mode(tiny_run, monkeypatch):
    """evaluate measures G in the run's sample_mode ("train" here, the default); its interpolation
    grids must show that same G, not the eval-mode one."""
    from gan import interpolation
    modes = []
    real_grid = interpolation.save_interpolation_grid

    def recording_grid(*args, train=False, **kwargs):
        modes.append(train)
        return real_grid(*args, train=train, **kwargs)

    monkeypatch.setattr(interpolation, "save_interpolation_grid", recording_grid)
    run, real, _ = tiny_run
    evaluate.evaluate(run, str(real), n=8, report=False, kid_subsets=2, progress=lambda _: None)
    assert modes == [True, True]                      # linear and slerp, both in train mode
