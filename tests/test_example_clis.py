"""The example programs' command lines: an ordinary mistake (missing data, no network, a number that cannot
work) is one line `<program>: ...` on stderr and exit status 2, not a traceback; programming errors still raise.
No training runs here: every case stops before the first step."""
import gzip
import importlib.util
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from gan.trainer import NonFiniteLossError
from nnbox.serialization import SerializationError

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
HINTS = {"cifar_gan": "--data ../shared/data/cifar-10-batches-bin", "cyclegan_mnist": "--data ../shared/data/mnist",
         "mnist_latent_study": "--data ../shared/data/mnist", "train_mnist_classifier": "--data ../shared/data/mnist",
         "vae_colored_mnist": "--data ../shared/data/mnist", "aegan": "--data ../shared/data/lfw-deepfunneled",
         "faces_gan": "--data ../shared/data/lfw-deepfunneled"}
PROGRAMS = sorted(HINTS)
# LFW or an error: aegan reads any other folder as a plain image folder, faces_gan falls back to synthetic faces
EXTRA = {"aegan": ["--dataset", "lfw"], "faces_gan": ["--dataset", "lfw"]}
LFW_PROGRAMS = ("aegan", "faces_gan")
# the folder of the data cache each program's loader looks in when no --data is given
CACHE_FOLDERS = {"cifar_gan": "cifar10", "aegan": "lfw", "faces_gan": "lfw"}


def _load(name):
    spec = importlib.util.spec_from_file_location(f"{name}_cli_example", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def programs():
    return {name: _load(name) for name in PROGRAMS}


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
    """An empty data cache, and no network: a download fails at once with URLError."""
    monkeypatch.setenv("NNBOX_CACHE", str(tmp_path / "cache"))

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("no network in the tests")
    monkeypatch.setattr(urllib.request, "urlopen", no_network)


def one_line_error(program, module, argv, capsys):
    """Run main(argv); check exit status 2 and a single `<program>: ...` line on stderr; return that line."""
    assert module.main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{program}: "), lines
    return lines[0]


def data_args(program, folder, out):
    return EXTRA.get(program, []) + ["--data", str(folder), "--out", str(out)]


def missing_data_args(program, tmp_path):
    """Options under which the loader finds nothing it could not download, and the folder its error names:
    no --data (a --data without the data is an error of its own, tested below) and the empty cache."""
    return EXTRA.get(program, []), tmp_path / "cache" / CACHE_FOLDERS.get(program, "mnist")


@pytest.mark.parametrize("program", PROGRAMS)
def test_missing_data_with_no_download_says_where_it_looked(programs, program, tmp_path, capsys):
    argv, looked = missing_data_args(program, tmp_path)
    out = tmp_path / "run"
    line = one_line_error(program, programs[program], argv + ["--no-download", "--out", str(out)], capsys)
    assert str(looked) in line and HINTS[program] in line and "leave out --no-download" in line
    assert "data_dir=" not in line and "download=True" not in line      # flags, not the loader's arguments
    assert not out.exists()


@pytest.mark.parametrize("program", PROGRAMS)
def test_a_failed_download_says_where_it_looked(programs, program, tmp_path, capsys):
    argv, looked = missing_data_args(program, tmp_path)
    out = tmp_path / "run"
    line = one_line_error(program, programs[program], argv + ["--out", str(out)], capsys)
    assert str(looked) in line and "downloading it failed" in line and "no network in the tests" in line
    assert HINTS[program] in line and not out.exists()


@pytest.mark.parametrize("program, argv", [("faces_gan", []), ("aegan", ["--dataset", "lfw"])])
def test_a_data_folder_without_lfw_is_an_error_not_a_download(programs, program, argv, no_data_set, tmp_path,
                                                              monkeypatch, recwarn, capsys):
    """Not a download, nor the cache's copy, nor (faces_gan) synthetic faces: one line naming the folder."""
    out, opened = tmp_path / "run", []
    monkeypatch.setattr(urllib.request, "urlopen", lambda *args, **kwargs: opened.append(args))
    line = one_line_error(program, programs[program], argv + ["--data", str(no_data_set), "--out", str(out)], capsys)
    assert line == (f"{program}: load_lfw: no LFW images found in {no_data_set} (looked for one folder per person "
                    f"holding JPEGs, directly or inside lfw-deepfunneled, lfw_funneled, lfw-funneled, lfw); "
                    f"pass --data <LFW's folder>, e.g. --data ../shared/data/lfw-deepfunneled, or leave out --data "
                    f"to use the cache (or a download)")
    assert opened == [] and not out.exists() and not recwarn.list


@pytest.mark.parametrize("no_download, cache", [([], "the cache (or a download)"), (["--no-download"], "the cache")])
@pytest.mark.parametrize("program", sorted(set(PROGRAMS) - set(LFW_PROGRAMS)))
def test_a_data_folder_without_mnist_or_cifar_is_an_error_not_a_download(programs, program, no_data_set, no_download,
                                                                          cache, tmp_path, monkeypatch, capsys):
    """Not a download, nor the cache's copy: one line naming the folder and the files it should hold, and
    both ways out: the right --data, or none (the message named only the first)."""
    out, opened = tmp_path / "run", []
    monkeypatch.setattr(urllib.request, "urlopen", lambda *args, **kwargs: opened.append(args))
    line = one_line_error(program, programs[program], data_args(program, no_data_set, out) + no_download, capsys)
    expected = "no CIFAR-10 batches in" if program == "cifar_gan" else "train-labels-idx1-ubyte[.gz] not found in"
    assert f"{expected} {no_data_set}" in line
    assert line.endswith(f"{HINTS[program]}, or leave out --data to use {cache}")
    assert "leave out --no-download" not in line and "data_dir=" not in line
    assert opened == [] and not out.exists()


@pytest.mark.parametrize("program", PROGRAMS)
def test_batch_size_zero(programs, program, tmp_path, capsys):
    line = one_line_error(program, programs[program], ["--batch-size", "0", "--out", str(tmp_path / "run")], capsys)
    assert line == f"{program}: --batch-size must be >= 1, got 0"


@pytest.mark.parametrize("program, argv, message", [
    ("cifar_gan", ["--epochs", "0"], "--epochs must be >= 1, got 0"),
    ("cifar_gan", ["--eval-images", "-1"], "--eval-images must be >= 0, got -1"),
    ("cifar_gan", ["--label-smoothing", "1"], "--label-smoothing must be in [0, 1), got 1.0"),
    ("mnist_latent_study", ["--max-images", "0"], "--max-images must be >= 1, got 0"),
    ("mnist_latent_study", ["--input-dropout", "1.5"], "--input-dropout must be in [0, 1), got 1.5"),
    ("cyclegan_mnist", ["--lr", "0"], "--lr must be > 0, got 0.0"),
    ("cyclegan_mnist", ["--test-images", "0"], "--test-images must be >= 1, got 0"),
    ("cyclegan_mnist", ["--lambda-cycle", "-1"], "--lambda-cycle must be >= 0, got -1.0"),
    ("train_mnist_classifier", ["--epochs", "0"], "--epochs must be >= 1, got 0"),
    ("train_mnist_classifier", ["--lr", "nan"], "--lr must be > 0, got nan"),
    ("vae_colored_mnist", ["--log-every", "0"], "--log-every must be >= 1, got 0"),
    ("vae_colored_mnist", ["--temperature", "0"], "--temperature must be > 0, got 0.0"),
    ("vae_colored_mnist", ["--categories", "1"], "--categories must be >= 2, got 1"),
    ("vae_colored_mnist", ["--test-images", "8"], "--test-images must be >= 16, got 8"),
    # max(floor, temperature ...) trained at the floor throughout
    ("vae_colored_mnist", ["--temperature", "0.2"],
     "--temperature 0.2 is below --min-temperature 0.5, which the annealed temperature never goes under; "
     "lower --min-temperature too"),
    ("aegan", ["--lr-d", "-0.1"], "--lr-d must be > 0, got -0.1"),
    ("aegan", ["--beta1", "1"], "--beta1 must be in [0, 1), got 1.0"),
    ("aegan", ["--epochs", "0"], "--epochs must be >= 1, got 0"),
    ("faces_gan", ["--epochs", "0"], "--epochs must be >= 1, got 0"),
    ("faces_gan", ["--epochs", "-1"], "--epochs must be >= 1, got -1"),
])
def test_numbers_that_cannot_work(programs, program, argv, message, tmp_path, capsys):
    out = tmp_path / "run"
    assert one_line_error(program, programs[program], argv + ["--out", str(out)], capsys) == f"{program}: {message}"
    assert not out.exists()


@pytest.mark.parametrize("error", [SerializationError("a\nbroken file"), NonFiniteLossError("D's loss is nan"),
                                   FloatingPointError("non-finite weights"), PermissionError("read-only")])
@pytest.mark.parametrize("program", PROGRAMS)
def test_expected_errors_are_one_line(programs, program, error, tmp_path, monkeypatch, capsys):
    def fails(*args, **kwargs):
        raise error
    monkeypatch.setattr(programs[program], "load_dataset", fails)
    line = one_line_error(program, programs[program], data_args(program, tmp_path, tmp_path / "run"), capsys)
    assert line.startswith(f"{program}: {' '.join(str(error).split())}")   # faces_gan adds how to resume a diverged run


@pytest.mark.parametrize("error", [TypeError, AttributeError, KeyError])
@pytest.mark.parametrize("program", PROGRAMS)
def test_programming_errors_keep_their_traceback(programs, program, error, tmp_path, monkeypatch):
    def fails(*args, **kwargs):
        raise error("a bug")
    monkeypatch.setattr(programs[program], "load_dataset", fails)
    with pytest.raises(error):
        programs[program].main(data_args(program, tmp_path, tmp_path / "run"))


@pytest.mark.parametrize("program", PROGRAMS)
def test_nnbox_traceback_shows_the_traceback_above_the_one_line(programs, program, tmp_path, monkeypatch, capsys):
    """A ValueError from a bug looks like a bad setting; NNBOX_TRACEBACK=1 shows where it came from."""
    def fails(*args, **kwargs):
        raise ValueError("Conv2d: expected shape (N, 3, H, W)")
    monkeypatch.setattr(programs[program], "load_dataset", fails)
    argv = data_args(program, tmp_path, tmp_path / "run")
    monkeypatch.setenv("NNBOX_TRACEBACK", "1")
    assert programs[program].main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last)") and "in fails" in err
    assert err.rstrip().splitlines()[-1] == f"{program}: Conv2d: expected shape (N, 3, H, W)"
    monkeypatch.setenv("NNBOX_TRACEBACK", "0")
    assert programs[program].main(argv) == 2
    assert "Traceback" not in capsys.readouterr().err


def _write_mnist(folder, n_train, n_test):
    folder.mkdir()
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        for kind, magic, array in (("images-idx3-ubyte", 2051, np.zeros((n, 28, 28), np.uint8)),
                                   ("labels-idx1-ubyte", 2049, np.arange(n, dtype=np.uint8) % 10)):
            header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
            (folder / f"{prefix}-{kind}.gz").write_bytes(gzip.compress(header + array.tobytes()))
    return folder


def test_classifier_with_fewer_images_than_a_batch(programs, tmp_path, capsys):
    data = _write_mnist(tmp_path / "mnist", 8, 4)
    argv = ["--data", str(data), "--no-download", "--batch-size", "16", "--out", str(tmp_path / "w.npz")]
    line = one_line_error("train_mnist_classifier", programs["train_mnist_classifier"], argv, capsys)
    assert "8 training images is less than one batch of 16" in line and not (tmp_path / "w.npz").exists()


def test_classifier_ctrl_c_is_one_line_and_writes_nothing(programs, tmp_path, capsys, monkeypatch):
    # Ctrl-C printed a traceback; the weights are written only at the end, so nothing was
    classifier = programs["train_mnist_classifier"]

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(classifier, "accuracy", interrupted)   # measured after each epoch's training steps
    data, out = _write_mnist(tmp_path / "mnist", 8, 4), tmp_path / "w.npz"
    assert classifier.main(["--data", str(data), "--no-download", "--batch-size", "4", "--out", str(out)]) == 130
    assert capsys.readouterr().err == "train_mnist_classifier: interrupted; nothing was written\n"
    assert not out.exists()


@pytest.mark.parametrize("program, variant", [("cifar_gan", "dcgan"), ("mnist_latent_study", "normal")])
def test_a_variant_folder_holding_a_run_is_refused_before_any_data_or_training(programs, program, variant, tmp_path,
                                                                                capsys):
    # the trainer's refusal came after earlier variants had trained, and advised a --resume these
    # programs do not have
    out = tmp_path / "study"
    (out / variant).mkdir(parents=True)
    (out / variant / "checkpoint.npz").write_bytes(b"a run")
    line = one_line_error(program, programs[program], ["--data", str(tmp_path / "none"), "--out", str(out)], capsys)
    assert line == f"{program}: {out / variant} already holds a run: pass --overwrite to replace it, or choose another --out"


@pytest.mark.parametrize("out, message", [
    ("folder", "is a folder; give the file to write"),
    ("missing/clf.npz", "does not exist; create it or choose another path"),
])
def test_the_classifiers_out_is_checked_before_training(programs, out, message, tmp_path, capsys):
    (tmp_path / "folder").mkdir()
    line = one_line_error("train_mnist_classifier", programs["train_mnist_classifier"],
                          ["--data", str(tmp_path / "none"), "--out", str(tmp_path / out)], capsys)
    assert message in line
