"""Procedural cartoon faces, so the faces GAN can run anywhere, offline, without a data set.

`synthetic_faces(n, image_size, rng)` paints every image at once with NumPy: each face part is a
soft-edged shape (an ellipse, a curved band) evaluated on a pixel grid for the whole batch, and
composited back to front; the loop is over the dozen parts, never over images or pixels. The
image is drawn at `SUPERSAMPLE` times the size and averaged down, which antialiases the edges.

What varies per image: face shape (width, height, position), skin tone and shading, ears, hair
(colour; style: short cap, fringe, side parting, long sides, or bald), eyes (spacing, height, size,
iris colour), eyebrows (thickness, tilt), nose, mouth (width, smile curvature, lip colour), neck and
shirt, and the background (two colours in a vertical gradient).
"""
import numpy as np

SUPERSAMPLE = 2
HAIR_STYLES = ("cap", "fringe", "side_part", "long", "bald")

# RGB palettes in [0, 1]
_SKIN_LIGHT = np.array([0.98, 0.86, 0.76])
_SKIN_DARK = np.array([0.36, 0.23, 0.15])
_HAIR = np.array([[0.08, 0.06, 0.05], [0.25, 0.15, 0.08], [0.45, 0.30, 0.15], [0.80, 0.65, 0.35],
                  [0.60, 0.25, 0.10], [0.65, 0.65, 0.65]])
_HAIR_WEIGHTS = np.array([0.3, 0.25, 0.15, 0.12, 0.08, 0.10])
_IRIS = np.array([[0.30, 0.18, 0.08], [0.20, 0.40, 0.70], [0.25, 0.50, 0.30], [0.45, 0.35, 0.15],
                  [0.15, 0.10, 0.05]])


def synthetic_faces(n, image_size=64, rng=None, chunk=64):
    """`n` varied cartoon faces, uint8 (n, image_size, image_size, 3); the same `rng` seed, the same faces.

    Args:
        n: number of images.
        image_size: side in pixels (>= 8).
        rng: NumPy Generator or int seed.
        chunk: images painted at a time (bounds the memory: about chunk * (2 * image_size)^2 * 40 bytes).
    """
    if int(n) < 0:
        raise ValueError(f"synthetic_faces: n must be >= 0, got {n}")
    if int(image_size) < 8:
        raise ValueError(f"synthetic_faces: image_size must be at least 8 pixels, got {image_size}")
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    n, image_size = int(n), int(image_size)
    params = _draw_params(n, rng)
    out = np.empty((n, image_size, image_size, 3), dtype=np.uint8)
    for start in range(0, n, chunk):
        part = {k: v[start:start + chunk] for k, v in params.items()}
        out[start:start + chunk] = _render(part, image_size)
    return out


def _draw_params(n, rng):
    """Every random choice for every image, drawn up front in a fixed order (so chunking changes nothing)."""
    u = lambda lo, hi: rng.uniform(lo, hi, n)
    p = {}
    # background: two muted colours, top and bottom
    grey = rng.uniform(0.2, 0.8, (n, 1))
    p["bg_top"] = grey + (rng.uniform(0.15, 0.85, (n, 3)) - grey) * u(0.2, 0.7)[:, None]    # muted colours
    p["bg_bottom"] = p["bg_top"] * u(0.5, 1.0)[:, None] + rng.uniform(-0.1, 0.1, (n, 3))
    # head geometry (coordinates: x right, y down, both in [-1, 1])
    p["cx"], p["cy"] = u(-0.06, 0.06), u(-0.02, 0.10)
    p["face_a"], p["face_b"] = u(0.46, 0.58), u(0.60, 0.72)
    p["jaw"] = u(0.0, 0.25)    # narrows the lower face
    t = rng.beta(1.6, 1.6, n)
    p["skin"] = (1 - t)[:, None] * _SKIN_LIGHT + t[:, None] * _SKIN_DARK + rng.normal(0, 0.02, (n, 3))
    p["hair"] = _HAIR[rng.choice(len(_HAIR), n, p=_HAIR_WEIGHTS)] + rng.normal(0, 0.03, (n, 3))
    p["style"] = rng.choice(len(HAIR_STYLES), n, p=[0.3, 0.25, 0.2, 0.17, 0.08])
    p["hairline"] = u(0.30, 0.55)      # fraction of the face height covered from the top
    p["hair_volume"] = u(0.04, 0.14)
    p["part_side"] = rng.choice([-1.0, 1.0], n)
    p["shirt"] = rng.uniform(0.05, 0.9, (n, 3))
    # eyes
    p["eye_dx"], p["eye_y"] = u(0.34, 0.46), u(-0.12, 0.02)
    p["eye_w"], p["eye_h"] = u(0.10, 0.14), u(0.04, 0.065)
    p["iris"] = _IRIS[rng.integers(0, len(_IRIS), n)] + rng.normal(0, 0.03, (n, 3))
    p["iris_r"] = u(0.5, 0.7)          # fraction of the eye height
    p["gaze"] = u(-0.25, 0.25)
    # brows
    p["brow_gap"], p["brow_thick"], p["brow_tilt"] = u(0.10, 0.16), u(0.025, 0.05), u(-0.35, 0.35)
    # nose and mouth
    p["nose_len"], p["nose_w"] = u(0.14, 0.24), u(0.07, 0.11)
    p["mouth_y"], p["mouth_w"] = u(0.32, 0.42), u(0.18, 0.30)
    p["smile"] = rng.normal(0.05, 0.06, n)
    p["lip_thick"] = u(0.025, 0.05)
    p["lip"] = p["skin"] * np.array([0.85, 0.45, 0.45]) + np.array([0.12, 0.02, 0.04]) + rng.normal(0, 0.03, (n, 3))
    for key in ("bg_top", "bg_bottom", "skin", "hair", "shirt", "iris", "lip"):
        p[key] = np.clip(p[key], 0.0, 1.0)
    return p


def _soft(distance, pixel):
    """Coverage of a shape from a signed distance (negative inside), blurred over about one pixel."""
    return np.clip(0.5 - distance / pixel, 0.0, 1.0)


def _ellipse(x, y, cx, cy, a, b, pixel):
    """Soft mask of ellipses centred (cx, cy) with half-axes (a, b); all (n, 1, 1) or scalars."""
    r = np.sqrt(((x - cx) / a) ** 2 + ((y - cy) / b) ** 2)
    return _soft((r - 1.0) * np.minimum(a, b), pixel)


def _paint(canvas, mask, color):
    """canvas <- canvas + mask * (color - canvas), only inside the box where some mask is non-zero."""
    mask = np.broadcast_to(mask, canvas.shape[:3])
    covered = mask > 0
    rows = np.flatnonzero(covered.any(axis=(0, 2)))
    cols = np.flatnonzero(covered.any(axis=(0, 1)))
    if rows.size == 0:
        return
    box = (slice(None), slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    region = canvas[box]
    change = np.asarray(color, dtype=np.float32)[:, None, None, :] - region
    change *= mask[box][..., None]
    region += change


def _window(canvas, coords, x_lo, x_hi, y_lo, y_hi):
    """A view of `canvas` (and its x, y grids) covering [x_lo, x_hi] x [y_lo, y_hi] of every image.

    Small parts (eyes, nose, mouth) are painted through such a view: the same maths on a few
    percent of the pixels.
    """
    margin = 3 * (coords[1] - coords[0])
    c0, c1 = np.searchsorted(coords, [np.min(x_lo) - margin, np.max(x_hi) + margin])
    r0, r1 = np.searchsorted(coords, [np.min(y_lo) - margin, np.max(y_hi) + margin])
    return canvas[:, r0:r1, c0:c1], coords[None, None, c0:c1], coords[None, r0:r1, None]


def _render(p, image_size):
    n = len(p["cx"])
    size = image_size * SUPERSAMPLE
    pixel = 2.0 / size
    coords = (np.arange(size, dtype=np.float32) + 0.5) * pixel - 1.0
    x = coords[None, None, :]
    y = coords[None, :, None]
    col = lambda key: p[key].astype(np.float32)[:, None, None]     # per-image scalar, broadcastable
    cx, cy, a, b = col("cx"), col("cy"), col("face_a"), col("face_b")
    style = p["style"]

    # background gradient
    top, bottom = p["bg_top"].astype(np.float32), p["bg_bottom"].astype(np.float32)
    mix = ((y + 1) / 2)[..., None]                                            # (1, size, 1, 1)
    canvas = top[:, None, None, :] * (1 - mix) + bottom[:, None, None, :] * mix
    canvas = np.broadcast_to(canvas, (n, size, size, 3)).copy()

    hair = p["hair"]
    head_top = cy - b
    # long hair falls behind the face and onto the shoulders
    long_hair = (style == HAIR_STYLES.index("long")).astype(np.float32)[:, None, None]
    behind = _ellipse(x, y, cx, cy + 0.25 * b, a + 0.14, b * 1.3, pixel) * (y > head_top).astype(np.float32)
    _paint(canvas, behind * long_hair, hair * 0.85)

    # shoulders and neck
    _paint(canvas, _ellipse(x, y, cx, cy + b + 0.55, a * 2.2, 0.5, pixel), p["shirt"])
    neck = _soft(np.maximum(np.abs(x - cx) - a * 0.45, (cy + b * 0.5) - y), pixel)
    _paint(canvas, neck, p["skin"] * 0.8)

    # ears, then the face: an ellipse whose lower half narrows towards the chin
    ear_y = cy + col("eye_y") + 0.06
    for side in (-1.0, 1.0):
        ear_x = cx + side * a * 0.98
        view, xv, yv = _window(canvas, coords, ear_x - 0.07, ear_x + 0.07, ear_y - 0.13, ear_y + 0.13)
        _paint(view, _ellipse(xv, yv, ear_x, ear_y, 0.07, 0.13, pixel), p["skin"] * 0.92)
    below = np.clip((y - cy) / b, 0.0, 1.0)
    a_eff = a * (1.0 - col("jaw") * below ** 2)
    face = _ellipse(x, y, cx, cy, a_eff, b, pixel)
    r2 = ((x - cx) / a) ** 2 + ((y - cy) / b) ** 2
    shading = (1.0 - 0.22 * np.clip(r2, 0, 1.2) ** 1.5)[..., None]           # darker towards the edges
    face_color = p["skin"].astype(np.float32)[:, None, None, :] * shading
    canvas += face[..., None] * (face_color - canvas)

    # hair on top of the head: inside a slightly bigger head ellipse, above a hairline curve
    hair_mask = _hair_cap(x, y, p, cx, cy, a, b, pixel)
    _paint(canvas, hair_mask, hair)

    # eyes: whites, iris, pupil, a thin upper lid line
    eye_y, eye_dx = cy + col("eye_y"), col("eye_dx") * a
    ew, eh = col("eye_w") * a / 0.46, col("eye_h")
    iris_r = col("iris_r") * eh
    for side in (-1.0, 1.0):
        ex = cx + side * eye_dx
        brow_top = eye_y - eh - col("brow_gap") - col("brow_thick") - 0.06
        view, xv, yv = _window(canvas, coords, ex - ew * 1.3, ex + ew * 1.3, brow_top, eye_y + eh * 1.1)
        white = _ellipse(xv, yv, ex, eye_y, ew, eh, pixel)
        lid = np.clip(_ellipse(xv, yv, ex, eye_y - eh * 0.25, ew * 1.08, eh * 1.05, pixel) - white, 0, 1)
        _paint(view, lid * (yv < eye_y).astype(np.float32), p["skin"] * 0.55)
        _paint(view, white, np.full((n, 3), 0.95))
        ix = ex + col("gaze") * ew * 0.5
        _paint(view, _ellipse(xv, yv, ix, eye_y, iris_r, iris_r, pixel) * white, p["iris"])
        _paint(view, _ellipse(xv, yv, ix, eye_y, iris_r * 0.45, iris_r * 0.45, pixel) * white, np.zeros((n, 3)))
        _paint(view, _ellipse(xv, yv, ix - iris_r * 0.3, eye_y - iris_r * 0.3, iris_r * 0.18, iris_r * 0.18, pixel)
               * white, np.full((n, 3), 1.0))
        # eyebrow: a tilted, slightly arched band above the eye
        bx = (xv - ex) / (ew * 1.2)
        brow_y = eye_y - eh - col("brow_gap") + 0.04 * bx ** 2 - side * col("brow_tilt") * 0.05 * bx
        thick = col("brow_thick") * (1.0 - 0.4 * np.clip(side * bx, 0, 1))
        brow = _soft(np.maximum(np.abs(yv - brow_y) - thick / 2, (np.abs(bx) - 1.0) * ew), pixel)
        _paint(view, brow, hair * 0.8)

    # nose: a soft shadow down one side and two nostrils
    nose_top, nose_len, nose_w = eye_y + 0.02, col("nose_len"), col("nose_w")
    nose_bottom = nose_top + nose_len
    view, xv, yv = _window(canvas, coords, cx - nose_w, cx + nose_w, nose_top, nose_bottom + 0.03)
    ridge = _soft(np.maximum(np.abs(xv - (cx + nose_w * 0.35)) - 0.012, np.abs(yv - (nose_top + nose_bottom) / 2)
                             - nose_len / 2), pixel)
    _paint(view, ridge * 0.35, p["skin"] * 0.6)
    for side in (-1.0, 1.0):
        nostril = _ellipse(xv, yv, cx + side * nose_w * 0.45, nose_bottom, nose_w * 0.28, 0.022, pixel)
        _paint(view, nostril * 0.8, p["skin"] * 0.45)

    # mouth: a curved band y = mouth_y - smile * dx^2 / 2 (dx = -1..1 across it), thicker in the middle
    mw = col("mouth_w") * a / 0.46
    mouth_y = cy + col("mouth_y") * b / 0.6
    reach = np.abs(col("smile")) * 0.5 + col("lip_thick") + 0.01
    view, xv, yv = _window(canvas, coords, cx - mw, cx + mw, mouth_y - reach, mouth_y + reach)
    dx = (xv - cx) / mw
    centre_line = mouth_y - col("smile") * 0.5 * dx ** 2     # y grows downwards: smile > 0 lifts the corners
    thick = col("lip_thick") * np.clip(1.0 - dx ** 2, 0.15, 1.0)
    lips = _soft(np.maximum(np.abs(yv - centre_line) - thick, (np.abs(dx) - 1.0) * mw), pixel)
    _paint(view, lips, p["lip"])
    gap = _soft(np.maximum(np.abs(yv - centre_line) - 0.006, (np.abs(dx) - 0.95) * mw), pixel)
    _paint(view, gap, p["lip"] * 0.35)

    # supersampled -> final size: the average of each block, which antialiases every edge
    small = canvas.reshape(n, image_size, SUPERSAMPLE, image_size, SUPERSAMPLE, 3).mean(axis=(2, 4))
    return np.clip(np.rint(small * 255.0), 0, 255).astype(np.uint8)


def _hair_cap(x, y, p, cx, cy, a, b, pixel):
    """Mask of the hair over the head for each image's style (zero for 'bald')."""
    volume = p["hair_volume"].astype(np.float32)[:, None, None]
    head = _ellipse(x, y, cx, cy - volume * 0.5, a + volume * 0.6, b + volume, pixel)
    hairline_y = cy - b + 2.0 * b * p["hairline"].astype(np.float32)[:, None, None] * 0.5
    rel = (x - cx) / a
    style = p["style"][:, None, None]
    wave = 0.03 * np.cos(rel * 9.0)
    side = p["part_side"].astype(np.float32)[:, None, None]
    line = np.where(style == HAIR_STYLES.index("fringe"), hairline_y + 0.10 + wave, hairline_y)
    line = np.where(style == HAIR_STYLES.index("side_part"), hairline_y + 0.10 * side * rel, line)
    # the hairline curves down at the temples, so the hair frames the face
    line = line + 0.35 * b * np.clip(np.abs(rel) - 0.55, 0, None) ** 1.2 * 3.0
    cap = head * _soft(y - line, pixel)
    return cap * (style != HAIR_STYLES.index("bald")).astype(np.float32)
