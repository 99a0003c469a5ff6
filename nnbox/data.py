"""Image data: transforms, `ImageFolder` (a folder of images cached as one .npy) and `DataLoader`.

Layout rule used by every transform here: **uint8 arrays are channel-last** images as they are
decoded (HWC, or NHWC for a batch); **float arrays are channel-first** images as the networks see
them (CHW, or NCHW), in [-1, 1]. `ToFloat` goes from the first to the second.

The work is split in two:

* the deterministic part (`CenterCrop`, `Resize`) runs once per image, when the cache is built; its
  result is stored as a uint8 NHWC `.npy` file keyed by the folder's contents and the transforms'
  parameters, so the next run loads the whole set in a fraction of a second;
* the random part (`RandomHorizontalFlip`, `ColorJitter`) runs on every batch, vectorised over it.

Reproducibility: `DataLoader` owns one NumPy generator. At the start of each epoch it draws the
permutation and one seed from it, in the caller's thread; batch `b` of the epoch is transformed with
a generator seeded from `(seed, b)`, so the prefetch thread never touches a shared generator and the
output does not depend on thread timing. `loader.state_dict()` (plain ints, JSON-friendly) and
`loader.load_state_dict(state)` resume exactly, even in the middle of an epoch.
"""
import hashlib
import json
import os
import queue
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from .serialization import atomic_write, load_npy

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
CACHE_FORMAT_VERSION = 3    # 2: 16-bit greyscale PNGs scaled to 8 bits (version 1 clipped them to white);
                            # 3: CenterCrop rounds like torchvision (margins of 3, 7, 11... moved by one)
_GRAY_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def default_cache_dir():
    """Where prepared data sets are kept: `$NNBOX_CACHE` if set, else `~/.cache/nnbox`."""
    return Path(os.environ.get("NNBOX_CACHE") or Path.home() / ".cache" / "nnbox")


# --------------------------------------------------------------------------- transforms
def _pair(size, name):
    if isinstance(size, (int, np.integer)):
        size = (int(size), int(size))
    size = tuple(int(s) for s in size)
    if len(size) != 2 or min(size) <= 0:
        raise ValueError(f"{name}: size must be a positive int or (height, width), got {size!r}")
    return size


def _as_array(image):
    return np.asarray(image) if isinstance(image, Image.Image) else image


def _one_image(transform, image):
    """A ValueError unless `image` is one PIL image or one uint8 (H, W[, C]) array: the deterministic
    transforms run on each image once, when ImageFolder builds its cache, and on a batch (N, H, W, C)
    would crop or resize the batch axis as if it were the height."""
    if isinstance(image, Image.Image):
        return
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise ValueError(f"{transform!r} takes one image (a PIL image or a uint8 (H, W, C) array), got "
                         f"{image.dtype} shape {image.shape}; a batch is transformed image by image, which "
                         f"ImageFolder does when it builds its cache")


class CenterCrop:
    """Cut the central `size` (int or (height, width)) pixels out of a PIL image or an HWC array.

    The same pixels as torchvision's center_crop: top = round((height - crop_height) / 2) with
    Python's round (half to even), left alike: a difference of 3 pixels starts the crop at 2, as 5 does.
    Deterministic: applied once, when the cache is built. Raises when the image is smaller.
    """

    deterministic = True

    def __init__(self, size):
        self.size = _pair(size, "CenterCrop")

    def __call__(self, image):
        _one_image(self, image)
        height, width = (image.height, image.width) if isinstance(image, Image.Image) else image.shape[:2]
        crop_h, crop_w = self.size
        if crop_h > height or crop_w > width:
            raise ValueError(f"CenterCrop{self.size}: the image is only {height}x{width}; crop less or Resize first")
        top, left = round((height - crop_h) / 2), round((width - crop_w) / 2)
        if isinstance(image, Image.Image):
            return image.crop((left, top, left + crop_w, top + crop_h))
        return image[top:top + crop_h, left:left + crop_w]

    def __repr__(self):
        return f"CenterCrop(size={self.size})"


class Resize:
    """Resize a PIL image or a uint8 HWC array to `size` (int or (height, width)).

    PIL's bilinear filter, which widens its support when shrinking (antialiased), so
    250 -> 32 pixels does not alias. Deterministic: applied once, when the cache is built.
    """

    deterministic = True

    def __init__(self, size):
        self.size = _pair(size, "Resize")

    def __call__(self, image):
        _one_image(self, image)
        as_pil = isinstance(image, Image.Image)
        one_channel = not as_pil and image.ndim == 3 and image.shape[2] == 1
        if as_pil:
            pil = image
        else:   # PIL has no (H, W, 1) mode: greyscale goes through mode "L" as (H, W)
            pil = Image.fromarray(np.ascontiguousarray(image[:, :, 0] if one_channel else image))
        if (pil.height, pil.width) != self.size:
            pil = pil.resize((self.size[1], self.size[0]), Image.BILINEAR)
        if as_pil:
            return pil
        return np.asarray(pil)[:, :, None] if one_channel else np.asarray(pil)

    def __repr__(self):
        return f"Resize(size={self.size})"


def _as_batch(x):
    """(batch view, channel axis, was-single, float view in [0, 1]) for a random transform."""
    x = _as_array(x)
    if x.dtype == np.uint8:
        channel_axis = -1                      # HWC / NHWC
        single = x.ndim == 3
    elif np.issubdtype(x.dtype, np.floating):
        channel_axis = 1                       # CHW / NCHW
        single = x.ndim == 3
    else:
        raise TypeError(f"expected uint8 (HWC/NHWC) or float (CHW/NCHW) images, got dtype {x.dtype}")
    if x.ndim not in (3, 4):
        raise ValueError(f"expected one image (3-D) or a batch (4-D), got shape {x.shape}")
    batch = x[None] if single else x
    return batch, channel_axis, single


def _to_unit(batch):
    if batch.dtype == np.uint8:
        return batch.astype(np.float32) / 255.0
    return (batch.astype(np.float32, copy=False) + 1.0) * 0.5


def _from_unit(unit, dtype):
    if dtype == np.uint8:
        return np.clip(np.rint(unit * 255.0), 0, 255).astype(np.uint8)
    return (np.clip(unit, 0.0, 1.0) * 2.0 - 1.0).astype(dtype, copy=False)


class RandomHorizontalFlip:
    """Mirror each image left-right with probability `p`; one image or a whole batch at once.

    Args:
        p: probability of flipping each image.
        rng: NumPy Generator used when the call passes none (a `DataLoader` passes its own).
    """

    deterministic = False

    def __init__(self, p=0.5, rng=None):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"RandomHorizontalFlip: p must be in [0, 1], got {p}")
        self.p = float(p)
        self.rng = np.random.default_rng(rng) if not isinstance(rng, np.random.Generator) else rng

    def __call__(self, x, rng=None):
        rng = rng if rng is not None else self.rng
        batch, channel_axis, single = _as_batch(x)
        width_axis = -1 if channel_axis == 1 else -2
        flip = rng.random(batch.shape[0]) < self.p
        out = batch.copy()
        out[flip] = np.flip(batch[flip], axis=width_axis)
        return out[0] if single else out

    def __repr__(self):
        return f"RandomHorizontalFlip(p={self.p})"


class ColorJitter:
    """Random brightness, contrast and saturation, one factor of each per image, vectorised.

    Each factor is drawn uniformly from [max(0, 1 - a), 1 + a] for amount `a`:
    brightness scales the pixels; contrast blends with the image's mean grey level;
    saturation blends with the pixel's grey level (0.299 R + 0.587 G + 0.114 B).
    Each step's result is clipped to the input's range ([0, 255] uint8 or [-1, 1] float) before the
    next step, as PIL's ImageEnhance and torchvision's ColorJitter do.
    """

    deterministic = False

    def __init__(self, brightness=0.0, contrast=0.0, saturation=0.0, rng=None):
        for name, amount in (("brightness", brightness), ("contrast", contrast), ("saturation", saturation)):
            if amount < 0:
                raise ValueError(f"ColorJitter: {name} must be >= 0, got {amount}")
        self.brightness, self.contrast, self.saturation = float(brightness), float(contrast), float(saturation)
        self.rng = np.random.default_rng(rng) if not isinstance(rng, np.random.Generator) else rng

    @staticmethod
    def _factors(rng, amount, n):
        return rng.uniform(max(0.0, 1.0 - amount), 1.0 + amount, size=n).astype(np.float32)

    def __call__(self, x, rng=None):
        rng = rng if rng is not None else self.rng
        batch, channel_axis, single = _as_batch(x)
        n = batch.shape[0]
        unit = _to_unit(batch)
        if channel_axis == -1:
            unit = np.moveaxis(unit, -1, 1)    # work in NCHW
        per_image = (n, 1, 1, 1)
        channels = unit.shape[1]

        def grey(u):
            return np.tensordot(_GRAY_WEIGHTS, u, axes=([0], [1]))[:, None] if channels == 3 else u[:, :1]

        # each step clips to [0, 1] before the next, as PIL's ImageEnhance and torchvision do: a
        # brightened value past 1 must not raise the mean the contrast step pulls towards
        if self.brightness:
            unit = np.clip(unit * self._factors(rng, self.brightness, n).reshape(per_image), 0, 1)
        if self.contrast:
            mean = grey(unit).mean(axis=(1, 2, 3), keepdims=True)
            unit = np.clip((unit - mean) * self._factors(rng, self.contrast, n).reshape(per_image) + mean, 0, 1)
        if self.saturation and channels == 3:
            g = grey(unit)
            unit = np.clip((unit - g) * self._factors(rng, self.saturation, n).reshape(per_image) + g, 0, 1)
        if channel_axis == -1:
            unit = np.moveaxis(unit, 1, -1)
        out = _from_unit(unit, batch.dtype)
        return out[0] if single else out

    def __repr__(self):
        return f"ColorJitter(brightness={self.brightness}, contrast={self.contrast}, saturation={self.saturation})"


class ToFloat:
    """uint8 HWC (or NHWC, or HW greyscale) -> float32 CHW (or NCHW) in [-1, 1]: x / 127.5 - 1.

    Float input is taken to be channel-first in [-1, 1] already and is only cast to float32.
    """

    deterministic = False   # it is cheap and belongs to the per-batch part

    def __call__(self, x, rng=None):
        x = _as_array(x)
        if np.issubdtype(x.dtype, np.floating):
            return x.astype(np.float32, copy=False)
        if x.dtype != np.uint8:
            raise TypeError(f"ToFloat expects uint8 images, got dtype {x.dtype}")
        if x.ndim == 2:
            x = x[:, :, None]
        channels_first = np.moveaxis(x, -1, -3)
        return channels_first.astype(np.float32) * np.float32(1 / 127.5) - np.float32(1.0)

    def __repr__(self):
        return "ToFloat()"


class Compose:
    """Apply transforms in order. Random ones receive the `rng` of the call (if any)."""

    def __init__(self, transforms):
        self.transforms = list(transforms)

    @property
    def deterministic(self):
        return all(getattr(t, "deterministic", False) for t in self.transforms)

    def split(self):
        """(the leading deterministic transforms, the rest) as two Composes: cache part, batch part.
        A deterministic transform after a random one is refused: it would have to run on every batch,
        and the deterministic ones (crop, resize) take one image at a time."""
        k = 0
        while k < len(self.transforms) and getattr(self.transforms[k], "deterministic", False):
            k += 1
        late = [t for t in self.transforms[k:] if getattr(t, "deterministic", False)]
        if late:
            raise ValueError(f"{late[0]!r} comes after the random transform {self.transforms[k]!r}; put the "
                             f"deterministic transforms (crop, resize) first")
        return Compose(self.transforms[:k]), Compose(self.transforms[k:])

    def __call__(self, x, rng=None):
        for t in self.transforms:
            x = _call_transform(t, x, rng)
        return x

    def __len__(self):
        return len(self.transforms)

    def __repr__(self):
        return "Compose([" + ", ".join(repr(t) for t in self.transforms) + "])"


def _call_transform(transform, x, rng):
    if getattr(transform, "deterministic", False) or rng is None:
        return transform(x)
    try:
        return transform(x, rng=rng)
    except TypeError as error:
        if "rng" not in str(error):
            raise
        return transform(x)     # a user function without an rng argument


def _as_compose(transform):
    if transform is None:
        return Compose([])
    if isinstance(transform, Compose):
        return transform
    if isinstance(transform, (list, tuple)):
        return Compose(transform)
    return Compose([transform])


# --------------------------------------------------------------------------- ImageFolder
def list_images(root, extensions=IMAGE_EXTENSIONS):
    """Sorted relative paths (POSIX style) of the files under `root` whose suffix is in `extensions`."""
    root = Path(root)
    extensions = tuple(e.lower() for e in extensions)
    found = []
    for directory, subdirs, files in os.walk(root):
        subdirs.sort()
        for name in files:
            if name.lower().endswith(extensions) and not name.startswith("."):
                found.append((Path(directory) / name).relative_to(root).as_posix())
    return sorted(found)


def _decode(path, prepare):
    """Open one image, RGB, apply the deterministic transforms; uint8 HWC. Raises on a bad file."""
    with Image.open(path) as image:
        image.load()    # decode now: a truncated file fails here, not later
        if image.mode.startswith("I"):
            # 16-bit greyscale PNGs (modes I;16*, I): PIL's convert("RGB") clips them at 255, so
            # scale 0..65535 to 0..255 first
            image = Image.fromarray(np.rint(np.asarray(image, dtype=np.float64) / 257.0).clip(0, 255).astype(np.uint8))
        image = image.convert("RGB")
    return np.asarray(_as_array(prepare(image)), dtype=np.uint8)


def _decode_or_none(path, prepare):
    """_decode's image, or the error that made the file unusable (bad, truncated, too large for
    PIL's decompression-bomb limit, or smaller than a CenterCrop)."""
    try:
        return _decode(path, prepare)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        return error


def _first_folder(relpath):
    """The first-level folder of a relative POSIX path ("" for a file directly under the root)."""
    return relpath.split("/")[0] if "/" in relpath else ""


class ImageFolder:
    """Every JPEG/PNG under `root` (recursively, sorted), prepared once and cached as a .npy.

    The label of an image is the index of its first-level folder in `classes` (LFW: the person).
    Files that cannot be used (unreadable, truncated, over PIL's decompression-bomb limit, smaller
    than a CenterCrop) are skipped, with one warning that counts them and gives the first one's reason.

    Args:
        root: folder to search.
        transform: a transform, a list, or a `Compose`. Its leading deterministic part (`CenterCrop`,
            `Resize`) is applied once and cached; the rest (flip, jitter) runs per batch. A `ToFloat`
            is added at the end if missing: `get_batch` returns float32 NCHW in [-1, 1].
        cache_dir: where the .npy goes (default `default_cache_dir()`); `cache=False` keeps nothing. A
            cache that cannot be read (corrupt, or another file in its place) is rebuilt, with a warning.
        augment_copies: k > 0 enlarges the set to (k + 1) times its size with randomly flipped and
            colour-jittered copies (made once, in memory, with `augment_rng`).
        workers: threads decoding images when the cache is built (PIL releases the GIL while decoding).
        progress: show a tqdm bar while building the cache.

    Attributes:
        images: uint8 (N, H, W, 3), the prepared images. labels: int64 (N,). classes: list of str.
        paths: relative paths of the images kept (before augmentation copies).
        skipped: relative paths of the files that could not be read or prepared.
        skip_reason: "path: error" for the first of them ("" when none).
        cache_path: the .npy file used (None without caching). cache_hit: whether it was reused.
    """

    def __init__(self, root, transform=None, cache_dir=None, cache=True, augment_copies=0,
                 augment_rng=0, workers=None, progress=True, extensions=IMAGE_EXTENSIONS, name=None):
        self.root = Path(root).expanduser()
        self.extensions = tuple(e.lower() for e in extensions)
        if not self.root.is_dir():
            raise FileNotFoundError(
                f"ImageFolder: {self.root} is not a folder; give the folder that holds the images "
                f"(searched recursively for {', '.join(self.extensions)})")
        compose = _as_compose(transform)
        self.prepare, self.batch_transform = compose.split()
        if not any(isinstance(t, ToFloat) for t in self.batch_transform.transforms):
            self.batch_transform.transforms.append(ToFloat())
        if int(augment_copies) < 0:
            raise ValueError(f"augment_copies must be >= 0, got {augment_copies}")
        self.workers = workers or min(8, os.cpu_count() or 1)
        self.progress = progress

        relpaths = list_images(self.root, self.extensions)
        if not relpaths:
            raise FileNotFoundError(
                f"ImageFolder: no images under {self.root} (searched recursively for files ending in "
                f"{', '.join(self.extensions)}); check the path, or pass extensions=...")
        key = self._cache_key(relpaths)
        self.cache_path = None
        self.cache_hit = False
        loaded = None
        if cache and " at 0x" in repr(self.prepare):   # a transform without a __repr__: its address
            warnings.warn(f"ImageFolder: not caching {self.root}: the transform {self.prepare!r} has no __repr__ "
                          f"that names its settings, so a cache could never be found again; give it one",
                          RuntimeWarning, stacklevel=2)
            cache = False
        if cache:
            cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
            # folder and transform in the name, contents in the key: a changed folder replaces its old
            # cache, while caches of other sizes or crops of the same folder stay
            stem = (f"imagefolder-{name or self.root.name or 'root'}-{_short_hash(str(self.root.resolve()))}"
                    f"-{_short_hash(repr(self.prepare))}")
            self.cache_path = cache_dir / f"{stem}-{key[:16]}.npy"
            loaded = self._read_cache(self.cache_path, key)
        if loaded is None:
            images, kept, skipped, self.skip_reason, transient = self._build(relpaths)
            if cache and transient:
                warnings.warn(f"ImageFolder: not caching {self.root}: a file could not be read ({self.skip_reason}), "
                              f"which may not happen next time", RuntimeWarning, stacklevel=2)
            elif cache:
                try:
                    self._write_cache(self.cache_path, key, images, kept, skipped, self.skip_reason)
                except OSError as error:     # a read-only or full disk costs speed, not the data
                    warnings.warn(f"ImageFolder: could not write the cache {self.cache_path} ({error}); "
                                  f"set NNBOX_CACHE or cache_dir= to a writable folder", RuntimeWarning, stacklevel=2)
        else:
            images, kept, skipped, self.skip_reason = loaded
            self.cache_hit = True
        if skipped:
            shown = ", ".join(skipped[:3]) + (", ..." if len(skipped) > 3 else "")
            reason = f"; the first: {self.skip_reason}" if self.skip_reason else ""
            warnings.warn(f"ImageFolder: skipped {len(skipped)} file(s) that could not be read or prepared under "
                          f"{self.root}: {shown}{reason}", RuntimeWarning, stacklevel=2)
        self.paths, self.skipped = kept, skipped
        # the classes are the folders of every file found, not only of those that could be read: a
        # skipped file must not shift the label of every later person
        self.classes = sorted({_first_folder(p) for p in relpaths})
        index = {c: i for i, c in enumerate(self.classes)}
        labels = np.array([index[_first_folder(p)] for p in kept], dtype=np.int64)
        if augment_copies:
            images, labels = with_augmented_copies(images, labels, int(augment_copies), np.random.default_rng(augment_rng))
        self.images, self.labels = images, labels

    # -- cache ---------------------------------------------------------------
    def _cache_key(self, relpaths):
        digest = hashlib.sha256()
        digest.update(f"nnbox-imagefolder-v{CACHE_FORMAT_VERSION}\n{self.prepare!r}\n".encode())
        for rel in relpaths:
            st = (self.root / rel).stat()
            digest.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return digest.hexdigest()

    @staticmethod
    def _read_cache(path, key):
        meta_path = path.with_suffix(".json")
        if not (path.is_file() and meta_path.is_file()):
            return None
        try:
            meta = json.loads(meta_path.read_text())
            if not isinstance(meta, dict) or not {"key", "paths", "skipped"} <= meta.keys():
                raise ValueError(f"{meta_path.name} is not an ImageFolder cache description")
            if meta["key"] != key:
                return None
            paths, skipped = list(meta["paths"]), list(meta["skipped"])
            images = load_npy(path)
            shape = list(meta.get("shape", images.shape))
            if images.dtype != np.uint8 or images.ndim != 4 or len(images) != len(paths) or list(images.shape) != shape:
                raise ValueError(f"it holds {images.dtype} {images.shape}, not the {len(paths)} uint8 images of "
                                 f"{shape} its description lists")
        except (OSError, ValueError, TypeError) as error:   # a corrupt file, or another one in the cache's place
            warnings.warn(f"ImageFolder: ignoring the cache {path} ({error}); rebuilding it", RuntimeWarning,
                          stacklevel=3)
            return None
        return images, paths, skipped, str(meta.get("skip_reason", ""))

    @staticmethod
    def _write_cache(path, key, images, kept, skipped, skip_reason):
        path.parent.mkdir(parents=True, exist_ok=True)
        stem_prefix = path.name.rsplit("-", 1)[0]
        for old in path.parent.glob(stem_prefix + "-*"):   # stale caches of the same folder
            if old.suffix in (".npy", ".json") and old.stem != path.stem:
                old.unlink(missing_ok=True)
        atomic_write(path, lambda f: np.save(f, images, allow_pickle=False))
        meta = {"key": key, "paths": kept, "skipped": skipped, "skip_reason": skip_reason,
                "shape": list(images.shape)}
        atomic_write(path.with_suffix(".json"), lambda f: f.write(json.dumps(meta).encode()))

    def _build(self, relpaths):
        paths = [self.root / rel for rel in relpaths]
        results = [None] * len(paths)
        bar = None
        if self.progress:
            from tqdm import tqdm
            bar = tqdm(total=len(paths), desc=f"preparing {self.root.name}", unit="img", leave=False)
        prepare = self.prepare
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            chunk = 256
            for start in range(0, len(paths), chunk):
                part = paths[start:start + chunk]
                for offset, result in enumerate(pool.map(lambda p: _decode_or_none(p, prepare), part)):
                    results[start + offset] = result
                if bar is not None:
                    bar.update(len(part))
        if bar is not None:
            bar.close()
        kept = [rel for rel, r in zip(relpaths, results) if isinstance(r, np.ndarray)]
        failures = [(rel, r) for rel, r in zip(relpaths, results) if not isinstance(r, np.ndarray)]
        skipped = [rel for rel, _ in failures]
        skip_reason = f"{failures[0][0]}: {failures[0][1]}" if failures else ""
        arrays = [r for r in results if isinstance(r, np.ndarray)]
        if not arrays:
            raise ValueError(f"ImageFolder: none of the {len(relpaths)} image files under {self.root} could be read "
                             f"(first: {relpaths[0]}: {results[0]})")
        shapes = {a.shape for a in arrays}
        if len(shapes) > 1:
            raise ValueError(f"ImageFolder: images under {self.root} have different sizes {sorted(shapes)[:4]}; "
                             f"add CenterCrop(size) and/or Resize(size) to the transform so they can be stacked")
        # a failed system call (an I/O error, too many open files, a file removed meanwhile: errno set)
        # may not happen again; PIL's decoding errors (errno None) and too-small images will
        transient = any(isinstance(r, OSError) and r.errno is not None for _, r in failures)
        return np.stack(arrays), kept, skipped, skip_reason, transient

    # -- access --------------------------------------------------------------
    def __len__(self):
        return len(self.images)

    def get_batch(self, indices, rng=None):
        """float32 NCHW batch in [-1, 1] of images `indices`, random transforms drawn from `rng`."""
        return self.batch_transform(self.images[np.asarray(indices)], rng=rng)

    def __getitem__(self, index):
        """(float32 CHW image in [-1, 1], label)."""
        return self.batch_transform(self.images[index], rng=None), int(self.labels[index])

    def __repr__(self):
        return (f"ImageFolder({str(self.root)!r}, n={len(self)}, image_shape={self.images.shape[1:]}, "
                f"prepare={self.prepare!r}, per_batch={self.batch_transform!r})")


def with_augmented_copies(images, labels, k, rng):
    """`images` (uint8 NHWC) followed by k randomly flipped and colour-jittered (0.2) copies of them;
    `labels` repeated to match. Returns ((k + 1) N images, (k + 1) N labels)."""
    flip = RandomHorizontalFlip(0.5)
    jitter = ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2)
    copies = [images] + [jitter(flip(images, rng=rng), rng=rng) for _ in range(k)]
    return np.concatenate(copies), np.tile(labels, k + 1)


def _short_hash(text):
    return hashlib.sha256(text.encode()).hexdigest()[:8]


# --------------------------------------------------------------------------- DataLoader
class _ArraySource:
    """Adapts an array, or a tuple of arrays (images, labels, ...), to the `get_batch` interface."""

    def __init__(self, data):
        if isinstance(data, list):   # several arrays, or one data set's images? Refused rather than guessed
            raise TypeError("DataLoader: got a list; pass a tuple (images, labels, ...) for several arrays, or "
                            "np.stack(images) for a list of images")
        self.arrays = tuple(np.asarray(a) for a in data) if isinstance(data, tuple) else (np.asarray(data),)
        images = self.arrays[0]
        if images.dtype != np.uint8 and images.dtype.kind != "f":   # int64 pixels would pass as floats in [0, 255]
            raise TypeError(f"DataLoader: images must be uint8 (N, H, W[, C]) or float (N, C, H, W) in [-1, 1], "
                            f"got dtype {images.dtype}; convert 0..255 pixels with .astype(np.uint8)")
        if images.dtype == np.uint8 and images.ndim == 3:    # (N, H, W) greyscale -> (N, H, W, 1)
            self.arrays = (images[..., None],) + self.arrays[1:]
        elif images.dtype == np.uint8 and images.ndim != 4:
            raise ValueError(f"DataLoader: uint8 images must be (N, H, W, C) or greyscale (N, H, W), "
                             f"got shape {images.shape}")
        n = len(self.arrays[0])
        for a in self.arrays[1:]:
            if len(a) != n:
                raise ValueError(f"DataLoader: arrays of different lengths {[len(a) for a in self.arrays]}")
        self.tuple_output = isinstance(data, tuple)

    def __len__(self):
        return len(self.arrays[0])

    def get_batch(self, indices, rng=None):
        picked = tuple(a[indices] for a in self.arrays)
        return picked if self.tuple_output else picked[0]


class DataLoader:
    """Batches of a data set, shuffled by an explicit generator, prepared in a background thread.

    Args:
        data: an `ImageFolder` (or anything with `__len__` and `get_batch(indices, rng)`), an array
            of images (uint8 NHWC or greyscale NHW, or float NCHW), or a tuple `(images, labels, ...)`
            of arrays.
        batch_size: images per batch.
        shuffle: a new random order every epoch (otherwise 0..N-1).
        drop_last: drop the last, smaller batch.
        rng: NumPy Generator (or seed) owned by the loader; it is used only in the caller's thread, at
            the start of each epoch (permutation + one seed for that epoch's random transforms).
        transform: a batch transform (e.g. `RandomHorizontalFlip`) applied after the data set's own;
            it gets a generator seeded from (epoch seed, batch index). uint8 results are converted
            with `ToFloat`, so batches are always float32 NCHW in [-1, 1].
        prefetch: prepare the next batch in a background thread while the current one is used.
        queue_size: batches prepared ahead at most (>= 1).

    Yields float32 NCHW batches (tuples `(images, labels, ...)` for a tuple of arrays). The resume
    state follows the newest iteration: starting one supersedes any unfinished earlier one (its
    prefetch thread stops, and resuming it raises RuntimeError). So a loop left by an exception,
    whose iterator a stored traceback may keep alive (a notebook's last error), never blocks the next.

    Exact resume: save `loader.state_dict()` with the checkpoint (plain ints) and call
    `loader.load_state_dict(state)` on a new loader built the same way; the next iteration repeats
    the interrupted epoch's order and random transforms and continues at the next batch.
    """

    def __init__(self, data, batch_size, shuffle=True, drop_last=False, rng=None, transform=None, prefetch=True,
                 queue_size=2):
        if int(batch_size) <= 0:
            raise ValueError(f"DataLoader: batch_size must be a positive int, got {batch_size}")
        self.source = data if hasattr(data, "get_batch") else _ArraySource(data)
        if len(self.source) == 0:
            raise ValueError("DataLoader: the data set is empty")
        self.batch_size = int(batch_size)
        self.shuffle, self.drop_last, self.prefetch = bool(shuffle), bool(drop_last), bool(prefetch)
        if self.drop_last and len(self.source) < self.batch_size:   # no batch at all: a loop would never step
            raise ValueError(f"DataLoader: drop_last with {len(self.source)} images and batch_size {self.batch_size} "
                             f"gives no batch; lower batch_size to at most {len(self.source)} or drop_last=False")
        self.rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        self.transform = _as_compose(transform) if transform is not None else None
        self.queue_size = int(queue_size)
        if self.queue_size < 1:
            raise ValueError(f"DataLoader: queue_size must be >= 1 (batches prepared ahead), got {queue_size}")
        self._iteration = 0          # how many iterations have started; only the newest may run
        self._prefetcher = None      # (stop event, thread) of the newest iteration's prefetching
        self._epoch_state = None     # generator state at the start of the running epoch
        self._batches_done = 0       # batches handed out in the running epoch
        self._skip = 0               # batches to skip at the next epoch start (resume)

    @property
    def dataset(self):
        return self.source

    def __len__(self):
        n = len(self.source)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def state_dict(self):
        """{'rng_state': ..., 'batches_done': b}: enough to continue exactly where this loader is
        (also right after load_state_dict, before the resumed epoch has started)."""
        if self._epoch_state is not None and 0 < self._batches_done < len(self):
            return {"rng_state": self._epoch_state, "batches_done": self._batches_done}
        return {"rng_state": self.rng.bit_generator.state, "batches_done": self._skip}

    def load_state_dict(self, state):
        self.rng.bit_generator.state = state["rng_state"]
        self._skip = int(state.get("batches_done", 0))
        self._epoch_state, self._batches_done = None, 0

    def _make_batch(self, indices, seed, b):
        dataset_rng, transform_rng = (np.random.default_rng([seed, b, k]) for k in (0, 1))
        batch = self.source.get_batch(indices, rng=dataset_rng)
        if isinstance(batch, tuple):
            return (self._finish(batch[0], transform_rng),) + batch[1:]
        return self._finish(batch, transform_rng)

    def _finish(self, images, rng):
        if self.transform is not None:
            images = self.transform(images, rng=rng)
        if images.dtype == np.uint8:
            images = ToFloat()(images)
        return np.ascontiguousarray(images, dtype=np.float32) if images.dtype != np.float32 else images

    def __iter__(self):
        # An unfinished earlier iteration is superseded: its prefetch thread stops (after at most the
        # batch it is making), and the resume state becomes the start of the new epoch.
        self._iteration += 1
        if self._prefetcher is not None:
            stop, thread = self._prefetcher
            stop.set()
            thread.join()
            self._prefetcher = None
        self._epoch_state, self._batches_done = None, 0
        return self._epoch(self._iteration)

    def _check_newest(self, iteration):
        if iteration != self._iteration:
            raise RuntimeError("DataLoader: this iteration was superseded by a newer one over the same loader (the "
                               "resume state follows the newest); start a new loop over the loader instead")

    def _epoch(self, iteration):
        self._check_newest(iteration)
        self._epoch_state = self.rng.bit_generator.state
        n = len(self.source)
        order = self.rng.permutation(n) if self.shuffle else np.arange(n)
        seed = int(self.rng.integers(2**63))
        starts = list(range(0, n, self.batch_size))
        if self.drop_last and n % self.batch_size:
            starts = starts[:-1]
        first, self._skip = self._skip, 0
        self._batches_done = first
        jobs = [(b, order[s:s + self.batch_size]) for b, s in enumerate(starts) if b >= first]
        if not self.prefetch:
            for b, indices in jobs:
                self._check_newest(iteration)
                batch = self._make_batch(indices, seed, b)
                self._batches_done = b + 1
                yield batch
            return
        yield from self._prefetched(jobs, seed, iteration)

    def _prefetched(self, jobs, seed, iteration):
        results = queue.Queue(maxsize=self.queue_size)
        stop = threading.Event()
        done = object()

        def work():
            try:
                for b, indices in jobs:
                    item = (b, self._make_batch(indices, seed, b), None)
                    while not stop.is_set():
                        try:
                            results.put(item, timeout=0.1)
                            break
                        except queue.Full:
                            continue
                    if stop.is_set():
                        return
            except BaseException as error:     # handed to the consumer, re-raised there
                item = (None, None, error)
                while not stop.is_set():
                    try:
                        results.put(item, timeout=0.1)
                        return
                    except queue.Full:
                        continue
                return
            while not stop.is_set():
                try:
                    results.put((None, done, None), timeout=0.1)
                    return
                except queue.Full:
                    continue

        thread = threading.Thread(target=work, name="nnbox-DataLoader-prefetch", daemon=True)
        thread.start()
        self._prefetcher = (stop, thread)
        try:
            while True:
                self._check_newest(iteration)
                try:   # polled: a newer iteration (from another thread) stops this one's worker
                    b, batch, error = results.get(timeout=0.1)
                except queue.Empty:
                    continue
                if error is not None:
                    raise error
                if batch is done:
                    return
                self._batches_done = b + 1
                yield batch
        finally:
            stop.set()
            thread.join()
            if self._prefetcher is not None and self._prefetcher[0] is stop:
                self._prefetcher = None
