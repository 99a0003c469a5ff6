"""ImageFolder (cache, bad files, errors), transforms and DataLoader (order, resume, prefetch thread)."""
import json
import os
import threading
import time
import warnings

import numpy as np
import pytest
from PIL import Image

from nnbox import data
from nnbox.data import (CenterCrop, ColorJitter, Compose, DataLoader, ImageFolder, RandomHorizontalFlip, Resize,
                        ToFloat)


def _write_tree(root, rng, n_people=3, per_person=3, size=(40, 48)):
    """A small LFW-like tree: root/person_k/person_k_000i.{png,jpg}."""
    for k in range(n_people):
        folder = root / f"person_{k}"
        folder.mkdir(parents=True)
        for i in range(per_person):
            pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            ext = "png" if (k + i) % 2 else "jpg"
            Image.fromarray(pixels).save(folder / f"person_{k}_{i:04d}.{ext}")
    return root


@pytest.fixture
def tree(tmp_path, rng):
    return _write_tree(tmp_path / "faces", rng)


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "cache"


def _folder(root, cache_dir, transform=(CenterCrop(32), Resize(16)), **kwargs):
    return ImageFolder(root, list(transform), cache_dir=cache_dir, progress=False, **kwargs)


# --------------------------------------------------------------------------- ImageFolder
def test_image_folder_loads_sorted_images_with_labels(tree, cache):
    ds = _folder(tree, cache)
    assert ds.images.shape == (9, 16, 16, 3) and ds.images.dtype == np.uint8
    assert ds.paths == sorted(ds.paths) and ds.paths[0] == "person_0/person_0_0000.jpg"
    assert ds.classes == ["person_0", "person_1", "person_2"]
    np.testing.assert_array_equal(ds.labels, np.repeat([0, 1, 2], 3))
    batch = ds.get_batch([0, 4])
    assert batch.shape == (2, 3, 16, 16) and batch.dtype == np.float32
    assert -1.0 <= batch.min() and batch.max() <= 1.0
    image, label = ds[4]
    assert image.shape == (3, 16, 16) and label == 1


def test_bad_files_are_skipped_with_one_warning(tree, cache):
    good = (tree / "person_0" / "person_0_0000.jpg").read_bytes()
    (tree / "person_1" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (tree / "person_2" / "not_an_image.png").write_text("hello, I am text")
    (tree / "person_2" / "notes.txt").write_text("ignored: not an image extension")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = _folder(tree, cache)
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1
    assert "skipped 2" in messages[0] and "truncated.jpg" in messages[0] and "not_an_image.png" in messages[0]
    assert len(ds) == 9 and sorted(ds.skipped) == ["person_1/truncated.jpg", "person_2/not_an_image.png"]


def test_too_small_and_oversized_images_are_skipped_with_the_reason(tree, cache, monkeypatch):
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tree / "person_0" / "tiny.png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tree / "person_1" / "bomb.png")
    real_open = Image.open

    def open_with_a_bomb(path, *args, **kwargs):
        if str(path).endswith("bomb.png"):   # what PIL raises for a file declaring a huge size
            raise Image.DecompressionBombError("Image size (900000000 pixels) exceeds limit")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(data.Image, "open", open_with_a_bomb)
    with pytest.warns(RuntimeWarning, match=r"skipped 2 .*person_0/tiny.png: CenterCrop.*only 20x20"):
        ds = _folder(tree, cache)
    assert len(ds) == 9 and ds.skipped == ["person_0/tiny.png", "person_1/bomb.png"]
    with pytest.warns(RuntimeWarning, match="tiny.png: CenterCrop"):    # the reason survives the cache
        assert _folder(tree, cache).cache_hit


def test_a_read_error_that_may_pass_is_not_cached(tree, cache, monkeypatch):
    # an I/O error (errno set) was cached as a skipped file until the folder changed
    import errno
    real_open = Image.open

    def flaky(path, *args, **kwargs):
        if str(path).endswith("person_1_0000.png") or str(path).endswith("person_1_0000.jpg"):
            raise OSError(errno.EIO, "Input/output error", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(data.Image, "open", flaky)
    with pytest.warns(RuntimeWarning) as caught:
        first = _folder(tree, cache)
    messages = [str(w.message) for w in caught]
    assert any(m.startswith("ImageFolder: not caching") and "Input/output error" in m for m in messages)
    assert any("skipped 1 file(s)" in m for m in messages)
    assert len(first) == 8 and not first.cache_hit
    monkeypatch.setattr(data.Image, "open", real_open)
    again = _folder(tree, cache)
    assert len(again) == 9 and not again.cache_hit and again.skipped == []
    assert _folder(tree, cache).cache_hit


def test_labels_follow_the_folders_even_when_a_persons_only_file_is_skipped(tree, cache):
    # classes came from the files that loaded: one person lost, every later label shifted by one
    for path in (tree / "person_1").iterdir():
        path.write_text("not an image")
    with pytest.warns(RuntimeWarning, match="skipped 3"):
        ds = _folder(tree, cache)
    assert ds.classes == ["person_0", "person_1", "person_2"]
    np.testing.assert_array_equal(ds.labels, [0, 0, 0, 2, 2, 2])


def test_a_transform_without_a_repr_is_not_cached(tree, cache):
    class Grey:      # deterministic, but its repr is its address: a cache could never be found again
        deterministic = True

        def __call__(self, image):
            return np.asarray(image).mean(axis=2, keepdims=True).repeat(3, axis=2).astype(np.uint8)

    with pytest.warns(RuntimeWarning, match="not caching .* has no __repr__"):
        ds = _folder(tree, cache, transform=(CenterCrop(32), Grey()))
    assert ds.cache_path is None and not cache.exists()


def test_16_bit_greyscale_pngs_are_scaled_not_clipped(tmp_path, cache):
    folder = tmp_path / "grey16" / "a"
    folder.mkdir(parents=True)
    Image.fromarray(np.full((8, 8), 30000, np.uint16)).save(folder / "deep.png")
    ds = ImageFolder(folder.parent, [], cache_dir=cache, progress=False)
    assert ds.images.shape == (1, 8, 8, 3) and np.all(ds.images == round(30000 / 257))


@pytest.mark.parametrize("break_it", [
    lambda meta: "[]",
    lambda meta: "{broken",
    lambda meta: json.dumps({"key": meta["key"]}),                       # the right key, no paths
    lambda meta: json.dumps({**meta, "paths": 3}),
], ids=["a list", "not json", "no paths", "paths not a list"])
def test_a_malformed_cache_description_is_rebuilt(tree, cache, break_it):
    first = _folder(tree, cache)
    description = first.cache_path.with_suffix(".json")
    description.write_text(break_it(json.loads(description.read_text())))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        again = _folder(tree, cache)
    assert not again.cache_hit
    np.testing.assert_array_equal(again.images, first.images)
    assert _folder(tree, cache).cache_hit        # rewritten


def test_a_cache_array_of_another_shape_is_rebuilt(tree, cache):
    # another .npy with as many images put in the cache's place was accepted as it was
    first = _folder(tree, cache)
    np.save(first.cache_path, np.zeros((9, 3, 3, 3), np.uint8))
    with pytest.warns(RuntimeWarning, match=r"ignoring the cache .* \(it holds uint8 \(9, 3, 3, 3\), not the 9 uint8 "
                                            r"images of \[9, 16, 16, 3\] its description lists\); rebuilding it"):
        again = _folder(tree, cache)
    assert not again.cache_hit and again.images.shape == (9, 16, 16, 3)
    np.testing.assert_array_equal(again.images, first.images)


@pytest.mark.parametrize("damage, reason", [
    ("npz", r"is an \.npz archive"),                # an AttributeError escaped
    ("empty", r"the file is empty"),                # an EOFError escaped
    ("truncated", r"truncated or corrupt"),
    ("object", r"holds an object array"),
])
def test_a_corrupt_or_foreign_cache_array_is_rebuilt_with_a_warning(tree, cache, damage, reason):
    first = _folder(tree, cache)
    path = first.cache_path
    if damage == "npz":
        with open(path, "wb") as f:
            np.savez(f, images=first.images)
    elif damage == "object":
        np.save(path, np.array([None] * 9, dtype=object), allow_pickle=True)
    else:
        path.write_bytes(b"" if damage == "empty" else path.read_bytes()[:-100])
    with pytest.warns(RuntimeWarning, match=rf"ignoring the cache .*{path.name}.*{reason}.*; rebuilding it"):
        again = _folder(tree, cache)
    assert not again.cache_hit
    np.testing.assert_array_equal(again.images, first.images)
    assert _folder(tree, cache).cache_hit        # rewritten


def test_missing_and_empty_folders_say_what_was_searched(tmp_path, cache):
    with pytest.raises(FileNotFoundError, match=r"nowhere.*not a folder.*\.jpg"):
        ImageFolder(tmp_path / "nowhere", cache_dir=cache)
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "readme.txt").write_text("no images here")
    with pytest.raises(FileNotFoundError, match=r"no images under .*empty.*\.jpg, \.jpeg, \.png"):
        ImageFolder(empty, cache_dir=cache)


def test_different_sizes_without_resize_raise_a_helpful_error(tmp_path, cache):
    root = tmp_path / "mixed"
    root.mkdir()
    Image.new("RGB", (10, 10)).save(root / "a.png")
    Image.new("RGB", (12, 10)).save(root / "b.png")
    with pytest.raises(ValueError, match="Resize"):
        ImageFolder(root, cache_dir=cache, progress=False)


def _count_decodes(monkeypatch):
    calls = []
    original = data._decode

    def counting(path, prepare):
        calls.append(path)
        return original(path, prepare)

    monkeypatch.setattr(data, "_decode", counting)
    return calls


def test_cache_is_reused_without_decoding(tree, cache, monkeypatch):
    calls = _count_decodes(monkeypatch)
    first = _folder(tree, cache)
    assert len(calls) == 9 and not first.cache_hit
    assert first.cache_path.is_file() and first.cache_path.suffix == ".npy"
    meta = json.loads(first.cache_path.with_suffix(".json").read_text())
    assert meta["shape"] == [9, 16, 16, 3]
    second = _folder(tree, cache)
    assert len(calls) == 9 and second.cache_hit
    np.testing.assert_array_equal(first.images, second.images)
    assert np.load(first.cache_path, allow_pickle=False).shape == (9, 16, 16, 3)
    assert not [p for p in cache.iterdir() if p.name.endswith(".tmp")]    # atomic write left no temp file


def test_cache_is_invalidated_by_a_changed_file_or_transform(tree, cache, monkeypatch):
    calls = _count_decodes(monkeypatch)
    first = _folder(tree, cache)
    target = tree / "person_0" / "person_0_0001.png"
    Image.fromarray(np.zeros((40, 48, 3), np.uint8)).save(target)
    os.utime(target, ns=(time.time_ns(), time.time_ns() + 10**9))     # a different mtime for sure
    changed = _folder(tree, cache)
    assert not changed.cache_hit and len(calls) == 18
    assert len(list(cache.glob("*.npy"))) == 1      # the stale cache of the old contents was removed
    assert changed.images[1].max() == 0 and first.images[1].max() > 0
    resized = _folder(tree, cache, transform=(CenterCrop(32), Resize(8)))
    assert not resized.cache_hit and resized.images.shape == (9, 8, 8, 3)
    again = _folder(tree, cache, transform=(CenterCrop(32), Resize(8)))
    assert again.cache_hit
    # a cache per transform: going back to 16 px reuses the first one
    assert len(list(cache.glob("*.npy"))) == 2
    assert _folder(tree, cache).cache_hit


def test_cache_dir_defaults_to_env_variable(tree, tmp_path, monkeypatch):
    monkeypatch.setenv("NNBOX_CACHE", str(tmp_path / "envcache"))
    ds = ImageFolder(tree, [Resize(8)], progress=False)
    assert ds.cache_path.parent == tmp_path / "envcache"


def test_unwritable_cache_warns_and_still_loads(tree, tmp_path):
    blocker = tmp_path / "file_not_folder"
    blocker.write_text("a file where the cache folder should be")
    with pytest.warns(RuntimeWarning, match="could not write the cache"):
        ds = _folder(tree, blocker / "cache")
    assert ds.images.shape == (9, 16, 16, 3)


def test_augment_copies_enlarges_with_flipped_and_jittered_copies(tree, cache):
    base = _folder(tree, cache)
    big = _folder(tree, cache, augment_copies=2)
    assert len(big) == 27 and big.images.shape[1:] == base.images.shape[1:]
    np.testing.assert_array_equal(big.images[:9], base.images)
    np.testing.assert_array_equal(big.labels, np.tile(base.labels, 3))
    assert not np.array_equal(big.images[9:18], base.images)


# --------------------------------------------------------------------------- transforms
@pytest.mark.parametrize("height, width, crop, top, left", [
    (7, 9, (4, 4), 2, 2),          # differences 3 and 5: 1.5 and 2.5 both round to 2 (half to even)
    (11, 8, (4, 7), 4, 0),         # 7: 3.5 rounds up to 4; 1: 0.5 rounds down to 0
    (250, 250, (123, 125), 64, 62),   # LFW-sized: 127 -> 63.5 -> 64, 125 -> 62.5 -> 62
    (30, 40, (10, 20), 10, 10),    # even differences: exactly half
])
def test_center_crop_picks_torchvisions_pixels(rng, height, width, crop, top, left):
    """torchvision's center_crop: top = int(round((height - crop_height) / 2.0)), left alike."""
    assert (top, left) == (int(round((height - crop[0]) / 2.0)), int(round((width - crop[1]) / 2.0)))
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    expected = image[top:top + crop[0], left:left + crop[1]]
    np.testing.assert_array_equal(CenterCrop(crop)(image), expected)
    np.testing.assert_array_equal(np.asarray(CenterCrop(crop)(Image.fromarray(image))), expected)


@pytest.mark.parametrize("height, width, crop", [(7, 9, (4, 4)), (11, 8, (4, 7)), (250, 250, (123, 125))])
def test_center_crop_matches_torchvision(rng, height, width, crop):
    functional = pytest.importorskip("torchvision.transforms.functional",
                                     reason="torchvision is not installed: the formula test above covers it")
    torch = pytest.importorskip("torch")
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    theirs = functional.center_crop(torch.from_numpy(image).permute(2, 0, 1), list(crop)).permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(CenterCrop(crop)(image), theirs)


def test_center_crop_and_resize_on_arrays_and_pil(rng):
    image = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    crop = CenterCrop((10, 20))(image)
    np.testing.assert_array_equal(crop, image[10:20, 10:30])
    pil = CenterCrop(10)(Image.fromarray(image))
    np.testing.assert_array_equal(np.asarray(pil), image[10:20, 15:25])
    assert Resize(8)(image).shape == (8, 8, 3)
    assert Resize((6, 9))(Image.fromarray(image)).size == (9, 6)
    with pytest.raises(ValueError, match="only 30x40"):
        CenterCrop(50)(image)
    with pytest.raises(ValueError, match="positive"):
        Resize(0)


def test_resize_keeps_a_single_channel(rng):
    grey = rng.integers(0, 256, (12, 10, 1), dtype=np.uint8)
    out = Resize((6, 5))(grey)
    assert out.shape == (6, 5, 1) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[:, :, 0], Resize((6, 5))(grey[:, :, 0]))


def test_resize_is_antialiased():
    stripes = np.zeros((64, 64, 3), np.uint8)
    stripes[:, ::2] = 255      # one-pixel stripes alias to black or white without a low-pass filter
    small = Resize(8)(stripes)
    assert 100 < small.mean() < 155 and small.std() < 20


def test_to_float_layout_and_range():
    image = np.array([[[0, 255, 128]]], dtype=np.uint8)
    out = ToFloat()(image)
    assert out.shape == (3, 1, 1) and out.dtype == np.float32
    np.testing.assert_allclose(out.ravel(), [-1.0, 1.0, 128 / 127.5 - 1], atol=1e-6)
    batch = ToFloat()(np.zeros((5, 4, 6, 3), np.uint8))
    assert batch.shape == (5, 3, 4, 6) and batch.min() == -1.0
    assert ToFloat()(np.zeros((4, 6), np.uint8)).shape == (1, 4, 6)


def test_flip_is_deterministic_for_a_seed_and_flips_width(rng):
    batch = rng.integers(0, 256, (64, 5, 7, 3), dtype=np.uint8)
    a = RandomHorizontalFlip(0.5)(batch, rng=np.random.default_rng(3))
    b = RandomHorizontalFlip(0.5)(batch, rng=np.random.default_rng(3))
    np.testing.assert_array_equal(a, b)
    flipped = np.array([not np.array_equal(a[i], batch[i]) for i in range(64)])
    assert 10 < flipped.sum() < 54
    np.testing.assert_array_equal(a[flipped], batch[flipped][:, :, ::-1])
    nchw = ToFloat()(batch)
    c = RandomHorizontalFlip(1.0)(nchw, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(c, nchw[..., ::-1])
    np.testing.assert_array_equal(RandomHorizontalFlip(0.0)(batch), batch)


def test_color_jitter_keeps_shape_range_and_changes_images(rng):
    batch = rng.integers(0, 256, (16, 8, 8, 3), dtype=np.uint8)
    jitter = ColorJitter(0.4, 0.4, 0.4)
    out = jitter(batch, rng=np.random.default_rng(1))
    assert out.shape == batch.shape and out.dtype == np.uint8
    assert not np.array_equal(out, batch)
    np.testing.assert_array_equal(out, jitter(batch, rng=np.random.default_rng(1)))
    floats = ToFloat()(batch)
    fout = jitter(floats, rng=np.random.default_rng(1))
    assert fout.shape == floats.shape and fout.dtype == np.float32 and -1 <= fout.min() and fout.max() <= 1
    # per-image factors, in the same place for uint8 NHWC and float NCHW
    np.testing.assert_allclose(ToFloat()(out), fout, atol=2 / 127.5)
    np.testing.assert_array_equal(ColorJitter()(batch), batch)
    with pytest.raises(ValueError, match="brightness"):
        ColorJitter(brightness=-1)


def test_color_jitter_clips_after_each_step_as_pil_does():
    # brightness 1.5, contrast 0.8, saturation 0.5 on one pixel (250, 100, 50): clipping only at the
    # end let 375 raise the contrast step's mean, giving (255, 187, 157); PIL's ImageEnhance, step
    # by step, gives (207, 165, 135)
    from PIL import Image, ImageEnhance

    class Factors(ColorJitter):
        def _factors(self, rng, amount, n):
            return np.full(n, {0.5: 1.5, 0.2: 0.8, 0.6: 0.5}[amount])
    pixel = np.array([[[250, 100, 50]]], np.uint8)
    ours = Factors(brightness=0.5, contrast=0.2, saturation=0.6)(pixel[None])[0]
    image = Image.fromarray(pixel)
    for enhance, factor in ((ImageEnhance.Brightness, 1.5), (ImageEnhance.Contrast, 0.8), (ImageEnhance.Color, 0.5)):
        image = enhance(image).enhance(factor)
    np.testing.assert_allclose(ours.astype(int), np.asarray(image).astype(int), atol=2)   # PIL rounds each step


@pytest.mark.parametrize("transform", [CenterCrop(4), Resize(4)])
def test_deterministic_transforms_refuse_a_batch(transform):
    # on (N, H, W, C) they cropped or resized the batch axis as if it were the height
    with pytest.raises(ValueError, match=r"takes one image .* got uint8 shape \(32, 8, 8, 3\)"):
        transform(np.zeros((32, 8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match=r"comes after the random transform RandomHorizontalFlip"):
        Compose([RandomHorizontalFlip(), transform]).split()


def test_compose_split_separates_cached_and_per_batch_parts():
    pipeline = Compose([CenterCrop(10), Resize(8), RandomHorizontalFlip(), ToFloat()])
    prepare, per_batch = pipeline.split()
    assert [type(t) for t in prepare.transforms] == [CenterCrop, Resize]
    assert [type(t) for t in per_batch.transforms] == [RandomHorizontalFlip, ToFloat]
    out = pipeline(np.zeros((12, 12, 3), np.uint8), rng=np.random.default_rng(0))
    assert out.shape == (3, 8, 8)


# --------------------------------------------------------------------------- DataLoader
def _indexed(n, size=4):
    """uint8 NHWC images whose pixels all equal their index (mod 256), to track them."""
    return np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None], (n, size, size, 3)).copy()


def _ids(batch):
    return np.rint((batch[:, 0, 0, 0] + 1) * 127.5).astype(int)


@pytest.mark.parametrize("prefetch", [True, False])
def test_every_sample_once_per_epoch(prefetch):
    loader = DataLoader(_indexed(23), batch_size=5, rng=0, prefetch=prefetch)
    assert len(loader) == 5
    batches = list(loader)
    assert [len(b) for b in batches] == [5, 5, 5, 5, 3]
    assert all(b.dtype == np.float32 and b.shape[1:] == (3, 4, 4) for b in batches)
    seen = np.concatenate([_ids(b) for b in batches])
    assert sorted(seen) == list(range(23)) and list(seen) != list(range(23))
    second = np.concatenate([_ids(b) for b in loader])
    assert sorted(second) == list(range(23)) and list(second) != list(seen)


def test_drop_last_and_no_shuffle():
    loader = DataLoader(_indexed(23), batch_size=5, shuffle=False, drop_last=True)
    assert len(loader) == 4
    seen = np.concatenate([_ids(b) for b in loader])
    np.testing.assert_array_equal(seen, np.arange(20))


def test_same_generator_seed_same_order_and_transforms():
    images = np.random.default_rng(0).integers(0, 256, (30, 4, 6, 3), dtype=np.uint8)

    def run(seed, prefetch):
        flip = RandomHorizontalFlip(0.5)
        loader = DataLoader(images, 7, rng=np.random.default_rng(seed), transform=flip, prefetch=prefetch)
        return [b for _ in range(2) for b in loader]

    a, b, c = run(5, True), run(5, False), run(6, True)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_greyscale_uint8_arrays_get_a_channel_axis():
    images = np.arange(4 * 5 * 6, dtype=np.uint8).reshape(4, 5, 6)
    batch = next(iter(DataLoader(images, batch_size=4, shuffle=False, prefetch=False)))
    assert batch.shape == (4, 1, 5, 6)
    np.testing.assert_allclose(batch[:, 0], images / 127.5 - 1, atol=1e-6)
    with pytest.raises(ValueError, match=r"\(N, H, W, C\) or greyscale \(N, H, W\), got shape \(4, 30\)"):
        DataLoader(images.reshape(4, 30), batch_size=2)


def test_tuple_of_arrays_yields_images_and_labels():
    images, labels = _indexed(10), np.arange(10) * 10
    for x, y in DataLoader((images, labels), 4, rng=1):
        np.testing.assert_array_equal(_ids(x) * 10, y)
    with pytest.raises(ValueError, match="different lengths"):
        DataLoader((images, labels[:3]), 4)
    with pytest.raises(ValueError, match="batch_size"):
        DataLoader(images, 0)


def test_drop_last_with_fewer_images_than_a_batch_is_refused():
    # it gave a loader of length 0, and a loop over steps never stepped
    with pytest.raises(ValueError, match=r"drop_last with 5 images and batch_size 8 gives no batch"):
        DataLoader(np.zeros((5, 4, 4, 3), np.uint8), 8, drop_last=True)
    assert len(DataLoader(np.zeros((5, 4, 4, 3), np.uint8), 8)) == 1


def test_integer_images_other_than_uint8_are_refused():
    # int64 pixels came out as float32 NHWC in 0..255, not float32 NCHW in [-1, 1]
    with pytest.raises(TypeError, match=r"uint8 .* or float .*, got dtype int64; convert 0..255 pixels"):
        DataLoader(np.zeros((5, 4, 4, 3), np.int64), 2)


def test_a_list_is_refused_not_guessed():
    # a list of 10 images was read as 10 arrays (a tuple's meaning): batches of 10 parts
    images = [np.zeros((5, 6, 3), np.uint8) for _ in range(10)]
    with pytest.raises(TypeError, match=r"got a list; pass a tuple \(images, labels, ...\) .* np.stack\(images\)"):
        DataLoader(images, 4)


def test_image_folder_through_loader_with_random_flips(tree, cache):
    ds = _folder(tree, cache, transform=(CenterCrop(32), Resize(16), RandomHorizontalFlip()))
    batches = list(DataLoader(ds, 4, rng=0))
    assert [b.shape for b in batches] == [(4, 3, 16, 16), (4, 3, 16, 16), (1, 3, 16, 16)]
    again = list(DataLoader(ds, 4, rng=0))
    assert all(np.array_equal(a, b) for a, b in zip(batches, again))


def test_state_dict_resumes_exactly_mid_epoch():
    images = np.random.default_rng(0).integers(0, 256, (40, 4, 4, 3), dtype=np.uint8)
    make = lambda: DataLoader(images, 6, rng=np.random.default_rng(9), transform=ColorJitter(0.5, 0.5, 0.5))
    reference = make()
    full = list(reference) + list(reference)

    interrupted = make()
    first_epoch = []
    for batch in interrupted:
        first_epoch.append(batch)
        if len(first_epoch) == 3:
            state = json.loads(json.dumps(interrupted.state_dict()))    # what a checkpoint would store
            break
    resumed = make()
    resumed.load_state_dict(state)
    # saved again before the resumed epoch starts (a preemption right after resuming): the same state
    assert resumed.state_dict()["batches_done"] == 3
    again = make()
    again.load_state_dict(json.loads(json.dumps(resumed.state_dict())))
    rest = list(again) + list(again)
    replay = first_epoch + rest
    assert len(replay) == len(full)
    assert all(np.array_equal(a, b) for a, b in zip(replay, full))


@pytest.mark.parametrize("prefetch", [True, False])
def test_a_new_iteration_supersedes_an_unfinished_one(prefetch):
    loader = DataLoader(_indexed(12), 4, rng=0, prefetch=prefetch)
    first = iter(loader)
    next(first)
    second = iter(loader)
    assert _prefetch_threads() == []                # the first's thread was stopped and joined
    assert loader.state_dict()["batches_done"] == 0  # resuming now starts the new epoch
    assert len(list(second)) == 3                   # the newest runs; the resume state follows it
    with pytest.raises(RuntimeError, match="superseded by a newer one"):
        next(first)
    assert _prefetch_threads() == []
    unstarted, newest = iter(loader), iter(loader)
    with pytest.raises(RuntimeError, match="superseded"):
        next(unstarted)
    assert len(list(newest)) == 3


def test_a_loop_left_by_an_exception_does_not_block_the_next_epoch():
    """A stored traceback (a notebook's last error) keeps the abandoned iterator alive."""
    loader = DataLoader(_indexed(12), 4, rng=0, queue_size=1)

    def train_one_epoch():
        batches = iter(loader)
        for batch in batches:
            raise KeyError("a bug in the loop body")

    kept = []
    try:
        train_one_epoch()
    except KeyError as error:
        kept.append(error)        # error.__traceback__ -> the function's frame -> `batches`, unfinished
    assert len(list(loader)) == 3
    assert loader.state_dict()["batches_done"] == 0
    assert _prefetch_threads() == [] and kept        # the abandoned iteration's thread was stopped


def test_a_loop_in_another_thread_is_stopped_not_left_waiting():
    loader = DataLoader(_indexed(12), 4, rng=0, queue_size=1)
    seen, errors = [], []
    holding, superseded = threading.Event(), threading.Event()

    def consume():
        try:
            for batch in loader:
                seen.append(batch)
                holding.set()
                superseded.wait(timeout=5)
        except RuntimeError as error:
            errors.append(error)

    worker = threading.Thread(target=consume)
    worker.start()
    assert holding.wait(timeout=5)
    newest = list(loader)            # supersedes the other thread's loop while it holds a batch
    superseded.set()
    worker.join(timeout=5)
    assert not worker.is_alive() and len(newest) == 3
    assert len(errors) == 1 and "superseded" in str(errors[0])


def test_queue_size_must_be_positive():
    with pytest.raises(ValueError, match="queue_size must be >= 1"):
        DataLoader(_indexed(4), 2, queue_size=0)


def _prefetch_threads():
    return [t for t in threading.enumerate() if t.name == "nnbox-DataLoader-prefetch"]


def test_prefetch_thread_does_not_leak():
    loader = DataLoader(_indexed(100), batch_size=3, rng=0, queue_size=1)
    for _ in range(3):
        for _ in loader:
            pass
    for i, _ in enumerate(loader):
        if i == 1:
            break          # leaves the generator mid-epoch: its finally stops and joins the thread
    iterator = iter(loader)
    next(iterator)
    iterator.close()
    assert _prefetch_threads() == []


def test_errors_in_the_prefetch_thread_reach_the_caller():
    def broken(batch, rng=None):
        raise RuntimeError("transform exploded")

    with pytest.raises(RuntimeError, match="transform exploded"):
        list(DataLoader(_indexed(10), 4, transform=broken))
    assert _prefetch_threads() == []
