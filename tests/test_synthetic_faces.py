"""The procedural faces: shape, dtype, determinism, variety, and a face-like layout."""
import numpy as np
import pytest

from nnbox.data import DataLoader
from nnbox.synthetic_faces import synthetic_faces


@pytest.mark.parametrize("size", [32, 64])
def test_shape_and_dtype(size):
    faces = synthetic_faces(5, image_size=size, rng=0)
    assert faces.shape == (5, size, size, 3) and faces.dtype == np.uint8


def test_same_seed_same_faces_other_seed_other_faces():
    a = synthetic_faces(6, 32, rng=1)
    np.testing.assert_array_equal(a, synthetic_faces(6, 32, rng=np.random.default_rng(1)))
    assert not np.array_equal(a, synthetic_faces(6, 32, rng=2))


def test_chunking_does_not_change_the_images():
    np.testing.assert_array_equal(synthetic_faces(10, 32, rng=3, chunk=3), synthetic_faces(10, 32, rng=3))


def test_images_differ_from_each_other():
    faces = synthetic_faces(40, 32, rng=0).astype(np.float32)
    flat = faces.reshape(40, -1)
    distances = np.abs(flat[:, None] - flat[None]).mean(axis=-1)
    off_diagonal = distances[~np.eye(40, dtype=bool)]
    assert off_diagonal.min() > 5.0          # no two alike (mean absolute difference, 0..255 scale)
    assert faces.std(axis=0).mean() > 30     # pixels vary a lot across the set
    # skin, hair and background colours are spread out, not a few fixed values
    centre = faces[:, 14:18, 14:18].mean(axis=(1, 2))
    assert len({tuple(np.round(c / 16)) for c in centre}) > 15


def test_faces_have_a_face_layout():
    faces = synthetic_faces(64, 64, rng=0).astype(np.float32)
    gray = faces.mean(axis=-1)
    # eyes: the darkest detail (pupils) and the brightest (whites) sit in the upper half of the face,
    # left and right of the centre line, symmetric on average
    eye_band = gray[:, 22:36]
    contrast_eyes = eye_band.std(axis=(1, 2)).mean()
    contrast_cheeks = gray[:, 40:44, 20:44].std(axis=(1, 2)).mean()
    assert contrast_eyes > contrast_cheeks
    mean_image = gray.mean(axis=0)
    assert np.abs(mean_image - mean_image[:, ::-1]).mean() < 6.0
    # the face is smooth in the middle: neighbouring pixels are close (antialiased, no noise)
    assert np.abs(np.diff(gray[:, 40:50, 28:36], axis=2)).mean() < 6.0


def test_bad_arguments():
    with pytest.raises(ValueError, match="image_size"):
        synthetic_faces(2, image_size=4)
    with pytest.raises(ValueError, match="n must be"):
        synthetic_faces(-1)
    assert synthetic_faces(0, 32, rng=0).shape == (0, 32, 32, 3)


def test_feeds_the_data_loader():
    faces = synthetic_faces(10, 32, rng=0)
    batch = next(iter(DataLoader(faces, 4, rng=0)))
    assert batch.shape == (4, 3, 32, 32) and batch.dtype == np.float32
    assert -1.0 <= batch.min() and batch.max() <= 1.0
