"""Dataset loaders on small files written in the official formats; downloads against local archives."""
import gzip
import hashlib
import io
import os
import pickle
import tarfile

import numpy as np
import pytest
from PIL import Image

from nnbox import datasets
from nnbox.datasets import (ChecksumError, RemoteFile, UnsafeArchiveError, UnsafePickleError, colorize_mnist,
                            download, load_cifar10, load_lfw, load_mnist, load_olivetti, read_idx, safe_extract_tar,
                            safe_unpickle)


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------- LFW and downloads
def _lfw_tgz(tmp_path, rng, top="lfw_funneled", people=("Ann_A", "Bob_B"), per_person=2):
    source = tmp_path / "src"
    for person in people:
        folder = source / top / person
        folder.mkdir(parents=True)
        for i in range(per_person):
            Image.fromarray(rng.integers(0, 256, (250, 250, 3), dtype=np.uint8)).save(
                folder / f"{person}_{i + 1:04d}.jpg")
    archive = tmp_path / "lfw-funneled.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source / top, arcname=top)
    return archive


def test_download_from_file_url_checks_sha256(tmp_path):
    source = tmp_path / "payload.bin"
    source.write_bytes(os.urandom(100_000))
    dest = download(source.as_uri(), tmp_path / "out" / "payload.bin", _sha(source), progress=False)
    assert dest.read_bytes() == source.read_bytes()
    # already there with the right checksum: kept, no second download
    assert download("file:///does/not/exist", dest, _sha(source), progress=False) == dest


def test_download_with_bad_checksum_removes_everything(tmp_path):
    source = tmp_path / "payload.bin"
    source.write_bytes(b"x" * 1000)
    dest = tmp_path / "out" / "payload.bin"
    with pytest.raises(ChecksumError, match="SHA-256 mismatch.*removed"):
        download(source.as_uri(), dest, "0" * 64, progress=False)
    assert list((tmp_path / "out").iterdir()) == []
    with pytest.raises(ValueError, match="checksum is required"):
        download(source.as_uri(), dest, None)


def test_load_lfw_downloads_extracts_and_loads(tmp_path, rng, monkeypatch):
    archive = _lfw_tgz(tmp_path, rng)
    remote = RemoteFile("lfw-funneled.tgz", archive.as_uri(), _sha(archive))
    cache = tmp_path / "cache"
    ds = load_lfw(image_size=16, cache_dir=cache, remote=remote, progress=False)
    assert ds.images.shape == (4, 16, 16, 3) and ds.classes == ["Ann_A", "Bob_B"]
    assert (cache / "lfw" / "lfw_funneled" / "Bob_B" / "Bob_B_0002.jpg").is_file()
    # next time the extracted copy in the cache is used: a download would fail now
    broken = RemoteFile("lfw-funneled.tgz", "file:///nowhere/lfw.tgz", "0" * 64)
    again = load_lfw(image_size=16, cache_dir=cache, remote=broken, progress=False)
    assert again.cache_hit
    np.testing.assert_array_equal(again.images, ds.images)


def test_load_lfw_reads_a_data_dir_given_or_fails_never_the_cache_nor_a_download(tmp_path, rng, no_data_set, recwarn):
    cache = tmp_path / "cache"
    safe_extract_tar(_lfw_tgz(tmp_path, rng), cache / "lfw")     # a copy in the cache, that must not be used
    broken = RemoteFile("lfw-funneled.tgz", "file:///nowhere/lfw.tgz", "0" * 64)
    for download in (True, False):
        with pytest.raises(FileNotFoundError, match=rf"no LFW images found in {no_data_set} .*; pass data_dir=.*"
                                                    rf"or data_dir=None for the cache$"):
            load_lfw(no_data_set, image_size=16, cache_dir=cache, remote=broken, download=download, progress=False)
    assert not recwarn.list and not (cache / "downloads").exists()


def test_load_lfw_uses_a_local_deepfunneled_folder(tmp_path, rng):
    archive = _lfw_tgz(tmp_path, rng, top="lfw-deepfunneled")
    safe_extract_tar(archive, tmp_path / "data")
    ds = load_lfw(tmp_path / "data", image_size=8, crop=128, download=False, cache_dir=tmp_path / "c",
                  progress=False, flip=True)
    assert ds.images.shape == (4, 8, 8, 3)
    assert ds.get_batch([0, 1, 2], rng=np.random.default_rng(0)).shape == (3, 3, 8, 8)


def test_load_lfw_without_data_or_download_says_where_it_looked(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no LFW images found in .*mine.*lfw-deepfunneled"):
        load_lfw(tmp_path / "mine", download=False, cache_dir=tmp_path / "cache")


def test_load_lfw_bad_checksum_leaves_nothing(tmp_path, rng):
    archive = _lfw_tgz(tmp_path, rng)
    remote = RemoteFile("lfw-funneled.tgz", archive.as_uri(), "f" * 64)
    cache = tmp_path / "cache"
    with pytest.raises(ChecksumError):
        load_lfw(cache_dir=cache, remote=remote, progress=False)
    assert not (cache / "lfw").exists()
    assert list((cache / "downloads").iterdir()) == []


def _tar_with(tmp_path, *members):
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for info, payload in members:
            tar.addfile(info, io.BytesIO(payload) if payload is not None else None)
    return archive


def _file(name, payload=b"pwned"):
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    return info, payload


def _link(name, target, kind=tarfile.SYMTYPE):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, None


@pytest.mark.parametrize("member, reason", [
    (_file("../evil.txt"), "'..'"),
    (_file("lfw/../../evil.txt"), "'..'"),
    (_file("/tmp/evil.txt"), "absolute"),
    (_link("lfw/escape", "../../outside"), "outside"),
    (_link("lfw/abs", "/etc/passwd"), "outside"),
    (_link("lfw/hard", "../outside", tarfile.LNKTYPE), "outside"),
])
def test_unsafe_archive_members_are_refused(tmp_path, member, reason):
    archive = _tar_with(tmp_path, _file("lfw/ok.txt", b"fine"), member)
    target = tmp_path / "out" / "extracted"
    with pytest.raises(UnsafeArchiveError, match=reason):
        safe_extract_tar(archive, target)
    assert not target.exists() and list((tmp_path / "out").iterdir()) == []
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "out" / "evil.txt").exists()


def test_a_chain_of_links_out_of_the_folder_is_refused_without_the_data_filter(tmp_path, monkeypatch):
    # each target alone stays inside (x/l1 -> x/.., l2 -> x/l1/.. = .), but l2 really is dest's parent;
    # the checks must hold on their own, on Pythons that lack tarfile's 'data' filter
    monkeypatch.delattr(tarfile, "data_filter", raising=False)
    folder = tarfile.TarInfo("x")
    folder.type = tarfile.DIRTYPE
    archive = _tar_with(tmp_path, (folder, None), _link("x/l1", ".."), _link("l2", "x/l1/.."),
                        _file("l2/escaped.txt"))
    with pytest.raises(UnsafeArchiveError, match="x/l1.*outside"):
        safe_extract_tar(archive, tmp_path / "out" / "dest")
    assert list((tmp_path / "out").iterdir()) == [] and not (tmp_path / "escaped.txt").exists()


def test_device_members_are_refused(tmp_path):
    info = tarfile.TarInfo("lfw/dev")
    info.type = tarfile.CHRTYPE
    with pytest.raises(UnsafeArchiveError, match="device"):
        safe_extract_tar(_tar_with(tmp_path, (info, None)), tmp_path / "out")


def test_safe_links_inside_the_archive_are_extracted(tmp_path):
    archive = _tar_with(tmp_path, _file("d/real.txt", b"data"), _link("d/alias.txt", "real.txt"))
    out = safe_extract_tar(archive, tmp_path / "out")
    assert (out / "d" / "alias.txt").read_bytes() == b"data"


def test_archives_too_large_to_unpack_are_refused_before_anything_is_written(tmp_path):
    # sizes come from the headers: 1 MB of zeros compresses to a kilobyte (a small "tar bomb")
    archive = _tar_with(tmp_path, *(_file(f"d/{k}.bin", bytes(2**20)) for k in range(4)))
    with pytest.raises(UnsafeArchiveError, match=r"4 members and 4194304 unpacked bytes, more than the 10 members "
                                                 r"and 4000000 bytes allowed"):
        safe_extract_tar(archive, tmp_path / "out" / "dest", max_members=10, max_bytes=4_000_000)
    with pytest.raises(UnsafeArchiveError, match=r"more than the 3 members"):
        safe_extract_tar(archive, tmp_path / "out" / "dest", max_members=3)
    assert list((tmp_path / "out").iterdir()) == []
    assert (safe_extract_tar(archive, tmp_path / "out" / "dest") / "d" / "3.bin").stat().st_size == 2**20


def test_load_lfw_refuses_an_archive_with_dotdot(tmp_path, rng):
    archive = _tar_with(tmp_path, _file("lfw_funneled/A/A_0001.jpg", b"x"), _file("../evil", b"x"))
    remote = RemoteFile("lfw-funneled.tgz", archive.as_uri(), _sha(archive))
    with pytest.raises(UnsafeArchiveError, match=r"\.\./evil"):
        load_lfw(cache_dir=tmp_path / "cache", remote=remote, progress=False)
    assert not (tmp_path / "cache" / "lfw").exists() and not (tmp_path / "cache" / "evil").exists()


# --------------------------------------------------------------------------- MNIST
def _idx_bytes(array, magic):
    return int(magic).to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape) + array.tobytes()


def _write_mnist(folder, rng, n=6, gz=True, image_magic=2051, label_magic=2049):
    folder.mkdir(parents=True, exist_ok=True)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, n, dtype=np.uint8)
    for name, payload in (("train-images-idx3-ubyte", _idx_bytes(images, image_magic)),
                          ("train-labels-idx1-ubyte", _idx_bytes(labels, label_magic))):
        if gz:
            with gzip.open(folder / f"{name}.gz", "wb") as f:
                f.write(payload)
        else:
            (folder / name).write_bytes(payload)
    return images, labels


@pytest.mark.parametrize("gz", [True, False])
def test_load_mnist_from_idx_files(tmp_path, rng, gz):
    images, labels = _write_mnist(tmp_path / "mnist", rng, gz=gz)
    x, y = load_mnist(tmp_path, "train", download=False, cache_dir=tmp_path / "cache")
    assert x.shape == (6, 1, 28, 28) and x.dtype == np.float32
    np.testing.assert_allclose((x[:, 0] + 1) * 127.5, images, atol=1e-3)
    np.testing.assert_array_equal(y, labels)


def test_mnist_wrong_magic_number_is_a_clear_error(tmp_path, rng):
    _write_mnist(tmp_path, rng, image_magic=2049)
    with pytest.raises(ValueError, match="magic number 2049, expected 2051"):
        load_mnist(tmp_path, download=False, cache_dir=tmp_path / "cache")


def test_idx_truncated_and_missing_files(tmp_path, rng):
    images = rng.integers(0, 256, (3, 28, 28), dtype=np.uint8)
    (tmp_path / "short").write_bytes(_idx_bytes(images, 2051)[:-10])
    with pytest.raises(ValueError, match="truncated"):
        read_idx(tmp_path / "short", 2051)
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte.*download=True"):
        load_mnist(download=False, cache_dir=tmp_path / "cache")
    with pytest.raises(ValueError, match="split"):
        load_mnist(tmp_path, split="valid")


def test_a_damaged_gz_idx_file_is_named(tmp_path, rng):
    # one flipped byte in the deflate stream: a bare zlib.error ("invalid code lengths set") before
    packed = bytearray(gzip.compress(_idx_bytes(rng.integers(0, 10, 1000, dtype=np.uint8), 2049), mtime=0))
    packed[12] ^= 0xFF
    (tmp_path / "labels.gz").write_bytes(bytes(packed))
    with pytest.raises(ValueError, match=r"read_idx: cannot read .*labels.gz \(Error -3 while decompressing"):
        read_idx(tmp_path / "labels.gz", 2049)


def test_load_mnist_downloads_missing_files(tmp_path, rng, monkeypatch):
    images, labels = _write_mnist(tmp_path / "mirror", rng)
    monkeypatch.setattr(datasets, "MNIST_MIRROR", (tmp_path / "mirror").as_uri() + "/")
    monkeypatch.setattr(datasets, "MNIST_FILES", {
        name: _sha(tmp_path / "mirror" / f"{name}.gz") for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")})
    x, y = load_mnist(split="train", cache_dir=tmp_path / "cache", progress=False)
    np.testing.assert_array_equal(y, labels)
    assert (tmp_path / "cache" / "mnist" / "train-images-idx3-ubyte.gz").is_file()


def test_load_mnist_reads_a_data_dir_given_or_fails_never_the_cache_nor_a_download(tmp_path, rng, no_data_set,
                                                                                   monkeypatch):
    cache = tmp_path / "cache"
    _write_mnist(cache / "mnist", rng)                  # a copy in the cache, that must not be used
    monkeypatch.setattr(datasets, "MNIST_MIRROR", "file:///nowhere/")
    for may_download in (True, False):
        with pytest.raises(FileNotFoundError, match=rf"^load_mnist: train-images-idx3-ubyte\[\.gz\], "
                                                    rf"train-labels-idx1-ubyte\[\.gz\] not found in {no_data_set}, "
                                                    rf".*; pass data_dir=.*, or data_dir=None for the cache"):
            load_mnist(no_data_set, download=may_download, cache_dir=cache, progress=False)
    assert sorted(p.name for p in (cache / "mnist").iterdir()) == ["train-images-idx3-ubyte.gz",
                                                                    "train-labels-idx1-ubyte.gz"]
    assert load_mnist(download=False, cache_dir=cache)[0].shape == (6, 1, 28, 28)    # no data_dir: the cache


def test_load_mnist_takes_no_file_of_a_data_dir_given_from_the_cache(tmp_path, rng):
    _write_mnist(tmp_path / "cache" / "mnist", rng)
    _write_mnist(tmp_path / "data", rng)
    (tmp_path / "data" / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"^load_mnist: train-labels-idx1-ubyte\[\.gz\] not found in "):
        load_mnist(tmp_path / "data", cache_dir=tmp_path / "cache", progress=False)


def test_colored_mnist_random_and_per_class_colours(rng):
    digits = np.zeros((20, 1, 28, 28), np.float32) - 1
    digits[:, :, 10:18, 12:16] = 1.0     # a white stroke on black
    labels = np.arange(20) % 10
    x, y, colors = colorize_mnist(digits, labels, mode="random", rng=np.random.default_rng(0))
    assert x.shape == (20, 3, 28, 28) and x.dtype == np.float32 and colors.shape == (20, 3)
    np.testing.assert_allclose((x[:, :, 12, 13] + 1) / 2, colors, atol=1e-6)   # stroke pixel = its colour
    np.testing.assert_array_equal(x[:, :, 0, 0], -1)                           # background stays black
    assert len({tuple(np.round(c, 3)) for c in colors}) == 20
    assert colors.max(axis=1).min() > 0.99                                       # bright: value = 1
    again = colorize_mnist(digits, labels, mode="random", rng=np.random.default_rng(0))[2]
    np.testing.assert_array_equal(colors, again)

    x, y, colors = colorize_mnist(digits, labels, mode="class")
    assert colors.shape == (10, 3)
    np.testing.assert_allclose((x[:, :, 12, 13] + 1) / 2, colors[labels], atol=1e-6)
    np.testing.assert_array_equal(x[3], x[13])                                   # same class, same colour
    with pytest.raises(ValueError, match="mode"):
        colorize_mnist(digits, labels, mode="rainbow")


# --------------------------------------------------------------------------- CIFAR-10
def _cifar_records(rng, n):
    labels = rng.integers(0, 10, n, dtype=np.uint8)
    pixels = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    return labels, pixels


CIFAR10_BATCH_BYTES = 10000 * 3073     # every official binary batch: 10,000 records of 1 label + 3072 pixels


def _cifar_binary_batch(path, labels, pixels, size=CIFAR10_BATCH_BYTES):
    """A binary batch whose first records are (labels, pixels) and the rest zeros, `size` bytes in all (as a
    sparse file: a standard batch is 30 MB)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(np.concatenate([labels[:, None], pixels], axis=1).tobytes())
        f.truncate(size)
    return path


def test_load_cifar10_binary(tmp_path, rng):
    folder = tmp_path / "cifar-10-batches-bin"
    labels, pixels = _cifar_records(rng, 5)
    _cifar_binary_batch(folder / "test_batch.bin", labels, pixels)
    (folder / "batches.meta.txt").write_text("\n".join(f"class{i}" for i in range(10)) + "\n\n")
    x, y, classes = load_cifar10(tmp_path, "test", download=False, cache_dir=tmp_path / "cache")
    assert x.shape == (10000, 3, 32, 32) and classes[0] == "class0" and len(classes) == 10
    np.testing.assert_array_equal(y[:5], labels)
    np.testing.assert_allclose((x[2, 1] + 1) * 127.5, pixels[2, 1024:2048].reshape(32, 32), atol=1e-3)
    np.testing.assert_array_equal(x[5:], -1.0)
    with pytest.raises(FileNotFoundError, match="data_batch_1.bin"):
        load_cifar10(tmp_path, "train", download=False)


@pytest.mark.parametrize("size, found", [
    (9000 * 3073, "9000 whole records"),                # truncated exactly at a record boundary
    (10001 * 3073, "10001 whole records"),
    (3000, "not a whole number of records"),
    (0, "0 whole records"),
    (9000 * 3074, "not a whole number of records"),     # CIFAR-100's record size, but not its record count
])
def test_a_cifar10_binary_batch_of_another_size_is_a_clear_error(tmp_path, rng, size, found):
    labels, pixels = _cifar_records(rng, 0)
    _cifar_binary_batch(tmp_path / "cifar-10-batches-bin" / "test_batch.bin", labels, pixels, size)
    with pytest.raises(ValueError, match=rf"read_cifar_binary: .*test_batch\.bin holds {size} bytes \({found}\); a "
                                         rf"CIFAR-10 binary batch holds exactly 30730000 \(10000 records of 3073 bytes"
                                         rf".*truncated .*download .*cifar-10-binary\.tar\.gz again"):
        load_cifar10(tmp_path, "test", download=False)


@pytest.mark.parametrize("name, records", [("train.bin", 50000), ("test.bin", 10000)])
def test_a_cifar100_binary_file_is_recognised_by_its_size(tmp_path, name, records):
    # its size error named CIFAR-10's layout only; the label > 9 hint below it was never reached
    path = _cifar_binary_batch(tmp_path / name, *_cifar_records(np.random.default_rng(0), 0), size=records * 3074)
    with pytest.raises(ValueError, match=rf"read_cifar_binary: .*{name} holds {records * 3074} bytes: {records} "
                                         rf"records of 3074 bytes \(2 labels \+ 3072 pixels\), the layout of "
                                         rf"CIFAR-100, which nnbox does not load; for CIFAR-10 use "
                                         rf"cifar-10-binary\.tar\.gz \(https://"):
        datasets.read_cifar_binary(path)


def test_a_cifar10_binary_batch_with_a_label_over_9_is_called_corrupt(tmp_path, rng):
    labels, pixels = _cifar_records(rng, 3)
    labels[1] = 10
    path = _cifar_binary_batch(tmp_path / "test_batch.bin", labels, pixels)
    with pytest.raises(ValueError, match=r"read_cifar_binary: .*test_batch\.bin has label 10 > 9 .*corrupt: "
                                         r"download cifar-10-binary\.tar\.gz again"):
        datasets.read_cifar_binary(path)


def test_load_cifar10_reads_a_data_dir_given_or_fails_never_the_cache_nor_a_download(tmp_path, rng, no_data_set,
                                                                                     monkeypatch):
    cache = tmp_path / "cache"
    _cifar_binary_batch(cache / "cifar10" / "cifar-10-batches-bin" / "test_batch.bin", *_cifar_records(rng, 5))
    monkeypatch.setattr(datasets, "CIFAR10_BINARY", RemoteFile("c.tar.gz", "file:///nowhere/c.tar.gz", "0" * 64))
    for may_download in (True, False):
        with pytest.raises(FileNotFoundError, match=rf"^load_cifar10: no CIFAR-10 batches in {no_data_set} \(looked "
                                                    rf"for .*test_batch\.bin.*\); pass data_dir=.*, or data_dir=None "
                                                    rf"for the cache"):
            load_cifar10(no_data_set, "test", download=may_download, cache_dir=cache, progress=False)
    assert not (cache / "downloads").exists()
    assert load_cifar10(split="test", download=False, cache_dir=cache)[0].shape == (10000, 3, 32, 32)


def _cifar_python_batch(path, labels, pixels, n_data=10000, n_labels=10000, protocol=2):
    """A python-version batch whose first records are (labels, pixels) and the rest zeros: `n_data` rows of
    data, `n_labels` labels."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.zeros((n_data, pixels.shape[1]), np.uint8)
    data[:len(pixels)] = pixels
    all_labels = [int(v) for v in labels] + [0] * (n_labels - len(labels))
    batch = {b"batch_label": b"testing batch 1 of 1", b"labels": all_labels, b"data": data,
             b"filenames": [b"%d.png" % i for i in range(n_labels)]}
    path.write_bytes(pickle.dumps(batch, protocol=protocol))
    return path


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_load_cifar10_python_version_through_safe_unpickler(tmp_path, rng, protocol):
    labels, pixels = _cifar_records(rng, 4)
    _cifar_python_batch(tmp_path / "cifar-10-batches-py" / "test_batch", labels, pixels, protocol=protocol)
    x, y, classes = load_cifar10(tmp_path, "test", download=False, cache_dir=tmp_path / "cache")
    assert classes == list(datasets.CIFAR10_CLASSES) and x.shape == (10000, 3, 32, 32)
    np.testing.assert_array_equal(y[:4], labels)
    np.testing.assert_allclose((x[:4].reshape(4, -1) + 1) * 127.5, pixels, atol=1e-3)
    np.testing.assert_array_equal(x[4:], -1.0)


@pytest.mark.parametrize("n_data, n_labels, width, found", [
    (9999, 9999, 3072, r"data \(9999, 3072\) and labels \(9999,\)"),       # one record short, data and labels alike
    (10001, 10001, 3072, r"data \(10001, 3072\) and labels \(10001,\)"),
    (10000, 9999, 3072, r"data \(10000, 3072\) and labels \(9999,\)"),
    (10000, 10000, 3073, r"data \(10000, 3073\) and labels \(10000,\)"),
])
def test_a_cifar10_python_batch_of_another_size_is_a_clear_error(tmp_path, rng, n_data, n_labels, width, found):
    labels, pixels = _cifar_records(rng, 2)
    pixels = np.pad(pixels, ((0, 0), (0, width - 3072)))
    _cifar_python_batch(tmp_path / "cifar-10-batches-py" / "test_batch", labels, pixels, n_data, n_labels)
    with pytest.raises(ValueError, match=rf"read_cifar_python: .*test_batch holds {found}; a CIFAR-10 python batch "
                                         rf"holds exactly 10000 records: data \(10000, 3072\) .* and labels "
                                         rf"\(10000,\)\. The file is truncated or is not a CIFAR-10 python batch: "
                                         rf"download cifar-10-python\.tar\.gz again"):
        load_cifar10(tmp_path, "test", download=False)


def test_a_cifar10_python_batch_with_values_out_of_range_or_cifar100_is_a_clear_error(tmp_path, rng):
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    labels, pixels = _cifar_records(rng, 2)
    _cifar_python_batch(path, [3, 10], pixels)                        # a label above 9
    with pytest.raises(ValueError, match=r"test_batch has labels of values from 0 to 10, not integers in 0\.\.9"):
        load_cifar10(tmp_path, "test", download=False)
    wide = {b"labels": [0] * 10000, b"data": np.full((10000, 3072), 256, np.int32)}   # would wrap to 0 as uint8
    path.write_bytes(pickle.dumps(wide, protocol=2))
    with pytest.raises(ValueError, match=r"has pixels of values from 256 to 256, not integers in 0\.\.255"):
        load_cifar10(tmp_path, "test", download=False)
    cifar100 = {b"fine_labels": [0] * 10000, b"coarse_labels": [0] * 10000, b"data": np.zeros((10000, 3072), np.uint8)}
    path.write_bytes(pickle.dumps(cifar100, protocol=2))
    with pytest.raises(ValueError, match=r"has b'fine_labels': it is a CIFAR-100 batch, which nnbox does not load"):
        load_cifar10(tmp_path, "test", download=False)


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_truncated_cifar_pickle_names_the_file(tmp_path, rng):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    labels, pixels = _cifar_records(rng, 4)
    blob = pickle.dumps({b"data": pixels.reshape(4, -1), b"labels": labels.tolist()}, protocol=4)
    (folder / "test_batch").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError, match=r"read_cifar_python: cannot read .*test_batch.*complete CIFAR-10"):
        load_cifar10(tmp_path, "test", download=False)


def test_an_idx_header_declaring_huge_dimensions_is_reported_exactly(tmp_path):
    path = tmp_path / "huge-idx3-ubyte"
    path.write_bytes((2051).to_bytes(4, "big") + (2**32 - 1).to_bytes(4, "big") * 3 + b"\0" * 16)
    with pytest.raises(ValueError, match=rf"declares shape .*\({(2**32 - 1) ** 3} bytes of data\)"):
        read_idx(path, expected_magic=2051)


def test_malicious_cifar_pickle_is_refused_and_does_not_run(tmp_path):
    marker = tmp_path / "pwned"
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": _Exploit(marker), b"labels": [0]}))
    with pytest.raises(UnsafePickleError, match=r"refusing to load (posix|os)\.system.*binary version"):
        load_cifar10(tmp_path, "test", download=False)
    assert not marker.exists()


@pytest.mark.parametrize("payload", [
    pickle.dumps(np.array([object()], dtype=object)),       # object arrays need pickled objects
    pickle.dumps(eval),                                      # any global is refused
    pickle.dumps(np.float64(1.0)),                           # numpy scalars are globals too
])
def test_safe_unpickle_refuses_globals(payload):
    with pytest.raises(UnsafePickleError):
        safe_unpickle(payload)


def test_safe_unpickle_reads_plain_data():
    data = {"a": [1, 2.5, None], b"b": (True, b"raw"), "c": np.arange(6, dtype=">i4").reshape(2, 3),
            "f": np.asfortranarray(np.arange(6, dtype=np.float32).reshape(2, 3))}
    out = safe_unpickle(pickle.dumps(data))
    assert out["a"] == [1, 2.5, None] and out[b"b"] == (True, b"raw")
    np.testing.assert_array_equal(out["c"], data["c"])
    np.testing.assert_array_equal(out["f"], data["f"])


def test_safe_unpickle_of_shared_self_referring_and_deep_data():
    shared = [b"x"]
    for _ in range(60):             # 2^60 paths through 60 lists: walked once each, not per path
        shared = [shared, shared]
    out = safe_unpickle(pickle.dumps(shared))
    assert out[0] is out[1]
    looped = []
    looped.append(looped)
    out = safe_unpickle(pickle.dumps(looped))
    assert out[0] is out
    deep = b"\x80\x02" + b"]" * 100_000 + b"a" * 99_999 + b"."   # 10^5 nested lists
    with pytest.raises(UnsafePickleError, match="nested too deeply"):
        safe_unpickle(deep)


def test_a_pickle_cannot_change_the_stand_ins_for_later_pickles():
    # GLOBAL _codecs.encode, then BUILD (None, {"__defaults__": ("utf16",)}): the shared stand-in's
    # defaults were changed for every later load
    forged = (b"\x80\x02c_codecs\nencode\nN}X\x0c\x00\x00\x00__defaults__X\x05\x00\x00\x00utf16\x85s\x86b.")
    with pytest.raises(UnsafePickleError, match="malformed pickle"):
        safe_unpickle(forged)
    assert safe_unpickle(pickle.dumps({"b": b"\xff raw"}, protocol=2)) == {"b": b"\xff raw"}


# ---------------------------------------------------------------- Olivetti
def _olivetti(folder, images=None, labels=None):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (400, 64, 64), dtype=np.uint8) if images is None else images
    labels = np.repeat(np.arange(40), 10) if labels is None else labels
    np.save(folder / "olivetti_faces.npy", images)
    np.save(folder / "olivetti_target.npy", labels)
    return images, labels


def test_load_olivetti_reads_the_uint8_layout_from_the_folder_or_its_olivetti_subfolder(tmp_path):
    images, labels = _olivetti(tmp_path / "olivetti")
    x, y = load_olivetti(tmp_path)
    assert x.shape == (400, 1, 64, 64) and x.dtype == np.float32 and y.dtype == np.int64
    np.testing.assert_allclose(x[:, 0], images / 127.5 - 1, atol=1e-6)
    np.testing.assert_array_equal(y, labels)
    x2, _ = load_olivetti(tmp_path / "olivetti")
    np.testing.assert_array_equal(x2, x)


def test_load_olivetti_accepts_scikit_learns_float_images(tmp_path):
    images = np.random.default_rng(1).random((400, 64, 64))
    _olivetti(tmp_path, images=images)
    x, _ = load_olivetti(tmp_path)
    np.testing.assert_allclose(x[:, 0], images * 2 - 1, atol=1e-6)


@pytest.mark.parametrize("images, labels, message", [
    (np.zeros((10, 64, 64), np.uint8), None,
     r"expected images \(400, 64, 64\) and labels \(400,\), got \(10, 64, 64\)"),
    (None, np.arange(400), r"person ids 0\.\.39, got int64 values in \[0, 399\]"),
    (np.full((400, 64, 64), 2.0), None, r"uint8, or floats in \[0, 1\]; got float64 in \[2\.0, 2\.0\]"),
    (np.zeros((400, 64, 64), np.int16), None, r"uint8, or floats in \[0, 1\]; got int16"),
])
def test_load_olivetti_refuses_other_layouts_with_the_reason(tmp_path, images, labels, message):
    _olivetti(tmp_path, images=images, labels=labels)
    with pytest.raises(ValueError, match=message):
        load_olivetti(tmp_path)


def test_load_olivetti_never_unpickles_and_names_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="olivetti_faces.npy not found in .*fetch_olivetti_faces"):
        load_olivetti(tmp_path)
    _olivetti(tmp_path)
    (tmp_path / "olivetti_target.npy").unlink()
    with pytest.raises(FileNotFoundError, match=r"olivetti_target.npy is missing \(it holds the person ids\)"):
        load_olivetti(tmp_path)
    np.save(tmp_path / "olivetti_target.npy", np.array([object()] * 400, dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match=r"load_olivetti: cannot read .*olivetti_target\.npy' as an \.npy array: "
                                         r"it holds an object array"):
        load_olivetti(tmp_path)


@pytest.mark.parametrize("write, message", [
    (lambda path: path.write_bytes(b""), r"olivetti_faces\.npy' as an \.npy array: the file is empty"),
    (lambda path: path.write_bytes(b"\x93NUMPY\x01\x00v\x00{'descr': '<f8', 'fortran_order': False, "
                                   b"'shape': (400, 64, 64), }"),
     r"olivetti_faces\.npy' as an \.npy array: the file is truncated"),
    (lambda path: np.savez(open(path, "wb"), np.zeros(3)), r"olivetti_faces\.npy' is an \.npz archive"),
    (lambda path: np.save(path, np.zeros((400, 4096), np.uint8)), r"reshape it to \(400, 64, 64\)"),
])
def test_load_olivetti_names_broken_image_files(tmp_path, write, message):
    _olivetti(tmp_path)
    write(tmp_path / "olivetti_faces.npy")
    with pytest.raises(ValueError, match=message):
        load_olivetti(tmp_path)


def test_load_olivetti_refuses_text_labels_and_gives_c_ordered_arrays(tmp_path):
    _olivetti(tmp_path, labels=np.array(["x"] * 400))
    with pytest.raises(ValueError, match=r"person ids 0\.\.39, got <U1$"):
        load_olivetti(tmp_path)
    images = np.asfortranarray(np.random.default_rng(2).random((400, 64, 64)))
    _olivetti(tmp_path, images=images)
    x, _ = load_olivetti(tmp_path)
    assert x.flags.c_contiguous
