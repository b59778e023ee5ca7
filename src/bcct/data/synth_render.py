"""The renderer of the procedural WSOL benchmark (written to disk by :mod:`bcct.data.synth`).

Every image shows one "creature" on a textured outdoor-like scene. The creature
is a large textured body (the same for all classes) plus a small head whose
colour (and, beyond 10 classes, a marking) is the ONLY class cue. A classifier
therefore only needs the head, so plain CAM tends to light up the head while the
ground-truth box / mask covers the whole creature: the classic WSOL
"discriminative part" failure, reproduced on data a CPU can train on in minutes.
Distractor shapes painted in the same body palette make "body colour" useless as
an objectness cue on its own. Background images are the same scenes without a creature.

All randomness comes from ``np.random.default_rng([seed, stream, index])`` so
every image depends only on (seed, its index) and reruns are byte-identical.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass

import cv2
import numpy as np

# --------------------------------------------------------------------------- constants

#: Muted, earthy colours shared by creature bodies AND background distractors.
BODY_PALETTE: tuple[tuple[int, int, int], ...] = (
    (122, 92, 62),  # brown
    (104, 112, 72),  # olive
    (132, 130, 124),  # stone grey
    (172, 150, 112),  # tan
    (84, 98, 114),  # slate
    (142, 88, 70),  # rust
)

#: Saturated, well separated head colours; class k uses colour k % 10.
HEAD_COLOURS: tuple[tuple[int, int, int], ...] = (
    (230, 30, 30),  # red
    (35, 75, 235),  # blue
    (245, 225, 30),  # yellow
    (30, 200, 60),  # green
    (225, 40, 205),  # magenta
    (40, 215, 225),  # cyan
    (250, 140, 20),  # orange
    (248, 248, 248),  # white
    (18, 18, 18),  # black
    (125, 40, 205),  # purple
)

#: Head markings; class k uses marking k // 10 (so up to 40 classes).
HEAD_MARKINGS: tuple[str, ...] = ("plain", "band", "cap", "ring")
MAX_CLASSES = len(HEAD_COLOURS) * len(HEAD_MARKINGS)


# Random streams: the first words of each per-item SeedSequence.
STREAM_IMAGE = 1
STREAM_BACKGROUND = 2
STREAM_SPLIT = 3

# Scene.
N_DISTRACTORS = (2, 5)  # inclusive range
DISTRACTOR_SIZE = (0.10, 0.32)  # fraction of the shorter image side
SKY_SATURATION = (0.08, 0.45)
SKY_VALUE = (0.45, 0.92)
LOWFREQ_AMPLITUDE = 22.0  # +- grey levels of the coarse noise octave
GRAIN_AMPLITUDE = 7.0  # +- grey levels of the fine noise octave

# Creature geometry (fractions of the body length L unless noted).
BODY_LENGTH = (0.35, 0.60)  # fraction of the shorter image side
BODY_WIDTH = (0.34, 0.48)
HEAD_DIAMETER = (0.15, 0.22)
MIN_HEAD_RADIUS = 3.0  # pixels, so the class cue survives blur + JPEG
LEG_LENGTH = (0.12, 0.20)
TAIL_LENGTH = (0.10, 0.20)
EDGE_MARGIN = 1  # pixels kept free between the creature and the image border

# Degradation.
BLUR_SIGMA = (0.4, 0.9)
NOISE_STD = (2.0, 6.0)
JPEG_QUALITY = 92

SUBPIXEL_SHIFT = 4  # cv2 fixed-point bits for sub-pixel drawing
_FIX = 1 << SUBPIXEL_SHIFT


# --------------------------------------------------------------------------- helpers


def fx(value: float) -> int:
    """Float pixel coordinate -> cv2 fixed-point integer (see ``SUBPIXEL_SHIFT``)."""
    return int(round(value * _FIX))


def pts(points: np.ndarray) -> np.ndarray:
    """Float [K, 2] polygon -> cv2 fixed-point int32 [K, 1, 2] array."""
    return np.round(np.asarray(points, np.float64) * _FIX).astype(np.int32).reshape(-1, 1, 2)


def jitter(colour: tuple[int, int, int], rng: np.random.Generator, amount: float) -> np.ndarray:
    """A colour with a small random per-channel offset, so palette colours are not exact keys."""
    return np.clip(np.asarray(colour, np.float32) + rng.uniform(-amount, amount, 3), 0, 255).astype(np.float32)


def hsv(h: float, s: float, v: float) -> np.ndarray:
    """HSV in [0, 1] -> RGB float32 in [0, 255]."""
    return np.asarray(colorsys.hsv_to_rgb(h % 1.0, s, v), np.float32) * 255.0


def rotation(angle: float) -> np.ndarray:
    """2x2 rotation matrix (image coordinates: x right, y down)."""
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s], [s, c]], np.float64)


def class_name(class_index: int) -> str:
    """CUB-style directory name of a 0-based class, e.g. ``003.Class_003``."""
    return f"{class_index + 1:03d}.Class_{class_index + 1:03d}"


def mask_box(mask: np.ndarray) -> tuple[float, float, float, float]:
    """Tight CUB box (x, y, w, h) of the non-zero pixels; x + w is the exclusive right edge."""
    ys, xs = np.nonzero(mask)
    if xs.size == 0:
        raise ValueError("empty mask has no bounding box")
    x0, y0 = int(xs.min()), int(ys.min())
    return float(x0), float(y0), float(xs.max() - x0 + 1), float(ys.max() - y0 + 1)


# --------------------------------------------------------------------------- scene


def _sky_ground(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """Vertical three-stop gradient (sky -> horizon -> ground) in random muted hues."""
    hue = rng.uniform()
    top = hsv(hue, rng.uniform(*SKY_SATURATION), rng.uniform(*SKY_VALUE))
    mid = hsv(hue + rng.uniform(-0.15, 0.15), rng.uniform(*SKY_SATURATION), rng.uniform(*SKY_VALUE))
    bottom = hsv(rng.uniform(), rng.uniform(*SKY_SATURATION), rng.uniform(0.3, 0.75))
    horizon = rng.uniform(0.3, 0.7)
    t = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None]
    upper = np.clip(t / horizon, 0, 1)
    lower = np.clip((t - horizon) / (1 - horizon), 0, 1)
    column = np.where(t <= horizon, top + (mid - top) * upper, mid + (bottom - mid) * lower)
    return np.broadcast_to(column[:, None, :], (h, w, 3)).astype(np.float32)


def _smooth_noise(h: int, w: int, cells: int, channels: int, rng: np.random.Generator) -> np.ndarray:
    """Value noise: a coarse random grid upsampled bicubically to (h, w, channels), roughly in [-1, 1]."""
    gh = max(2, int(round(cells * h / max(h, w))))
    gw = max(2, int(round(cells * w / max(h, w))))
    grid = rng.uniform(-1, 1, (gh, gw, channels)).astype(np.float32)
    out = cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
    return out.reshape(h, w, channels)


def _draw_distractor(img: np.ndarray, rng: np.random.Generator) -> None:
    """Paint one blob / rotated rectangle / stripe group in a body-palette colour (in place)."""
    h, w = img.shape[:2]
    side = min(h, w)
    colour = jitter(BODY_PALETTE[rng.integers(len(BODY_PALETTE))], rng, 18).tolist()
    size = rng.uniform(*DISTRACTOR_SIZE) * side
    cx, cy = rng.uniform(0, w), rng.uniform(0, h)
    kind = rng.integers(3)
    if kind == 0:  # irregular blob
        k = int(rng.integers(6, 11))
        ang = np.sort(rng.uniform(0, 2 * np.pi, k))
        rad = size * rng.uniform(0.55, 1.0, k)
        poly = np.stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang)], 1)
        cv2.fillPoly(img, [pts(poly)], colour, cv2.LINE_AA, SUBPIXEL_SHIFT)
    elif kind == 1:  # rotated rectangle (blocky, unlike the elliptic body)
        rect = ((cx, cy), (size * rng.uniform(0.8, 2.0), size * rng.uniform(0.5, 1.2)), rng.uniform(0, 180))
        cv2.fillPoly(img, [pts(cv2.boxPoints(rect))], colour, cv2.LINE_AA, SUBPIXEL_SHIFT)
    else:  # a few parallel stripes (like grass blades / fence bars)
        n = int(rng.integers(2, 5))
        theta = rng.uniform(0, np.pi)
        along = np.array([math.cos(theta), math.sin(theta)])
        across = np.array([-along[1], along[0]])
        thick = max(2, int(round(size * rng.uniform(0.08, 0.18))))
        gap = thick * rng.uniform(1.8, 3.0)
        for i in range(n):
            c = np.array([cx, cy]) + across * gap * (i - (n - 1) / 2)
            p0, p1 = c - along * size, c + along * size
            cv2.line(img, (fx(p0[0]), fx(p0[1])), (fx(p1[0]), fx(p1[1])), colour, thick, cv2.LINE_AA, SUBPIXEL_SHIFT)


def render_scene(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """An object-free scene (float32 HxWx3 in [0, 255]): gradient + 2-octave noise + distractors.

    Shared by the benchmark images, the Background Image Set and the pretraining task, so
    the background statistics are identical with and without a creature.
    """
    img = _sky_ground(h, w, rng)
    img = img + LOWFREQ_AMPLITUDE * _smooth_noise(h, w, int(rng.integers(3, 6)), 1, rng)
    img = img + GRAIN_AMPLITUDE * _smooth_noise(h, w, max(4, max(h, w) // 4), 3, rng)
    img = np.ascontiguousarray(np.clip(img, 0, 255), dtype=np.float32)
    for _ in range(int(rng.integers(N_DISTRACTORS[0], N_DISTRACTORS[1] + 1))):
        _draw_distractor(img, rng)
    return img


def degrade(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Mild Gaussian blur + Gaussian pixel noise, then uint8; keeps images from being trivially clean."""
    img = cv2.GaussianBlur(img, (0, 0), rng.uniform(*BLUR_SIGMA))
    noise = rng.standard_normal(img.shape, dtype=np.float32) * np.float32(rng.uniform(*NOISE_STD))
    return np.clip(img + noise + 0.5, 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- creature


@dataclass(frozen=True)
class _Layer:
    """A creature rendered on its own canvas: colour, soft alpha and the head's alpha."""

    rgb: np.ndarray  # [C, C, 3] float32
    alpha: np.ndarray  # [C, C] float32 in [0, 1], union of all parts
    head: np.ndarray  # [C, C] float32 in [0, 1], head only


def _over(rgb: np.ndarray, alpha: np.ndarray, part: np.ndarray, colour: np.ndarray) -> None:
    """Composite one part (uint8 AA mask ``part``, colour [3] or [C,C,3]) over the layer in place."""
    a = part.astype(np.float32) * (1.0 / 255.0)
    rgb += (colour - rgb) * a[..., None]
    np.maximum(alpha, a, out=alpha)


def _scale_texture(size: int, centre: float, angle: float, length: float, width: float, phase: np.ndarray) -> np.ndarray:
    """Shade factor [C, C] of offset rows of rounded scales plus countershading, in body coordinates."""
    coords = np.arange(size, dtype=np.float32) - np.float32(centre)
    c, s = math.cos(angle), math.sin(angle)
    u = coords[None, :] * c + coords[:, None] * s  # along the body axis
    v = -coords[None, :] * s + coords[:, None] * c  # across it
    period = max(3.0, length / 9.0)
    row = np.floor(v / period + phase[1])
    fu = np.mod(u / period + 0.5 * row + phase[0], 1.0) - 0.5
    fv = np.mod(v / period + phase[1], 1.0)
    dist = np.sqrt(fu * fu + fv * fv)
    scales = 0.70 + 0.30 * np.sqrt(np.clip(1.0 - dist / 0.75, 0.0, 1.0))
    counter = 1.0 + 0.18 * np.clip(v / (0.5 * width), -1, 1)  # lighter belly (sign of width = belly side)
    return (scales * counter).astype(np.float32)


def _head_marking(part: np.ndarray, marking: str, hx: float, hy: float, r: float, angle: float, colour: np.ndarray, rgb: np.ndarray, alpha: np.ndarray) -> None:
    """Draw the class marking on the head (nothing for ``plain``)."""
    if marking == "plain":
        return
    contrast = np.float32(235.0) if colour.mean() < 128 else np.float32(25.0)
    ink = np.full(3, contrast, np.float32)
    part[:] = 0
    if marking == "band":  # a stripe across the head, perpendicular to the body axis
        d = np.array([-math.sin(angle), math.cos(angle)]) * r
        cv2.line(part, (fx(hx - d[0]), fx(hy - d[1])), (fx(hx + d[0]), fx(hy + d[1])), 255, max(1, int(round(r * 0.5))), cv2.LINE_AA, SUBPIXEL_SHIFT)
    elif marking == "cap":  # the front half of the head
        start = math.degrees(angle) - 90
        cv2.ellipse(part, (fx(hx), fx(hy)), (fx(r), fx(r)), 0, start, start + 180, 255, -1, cv2.LINE_AA, SUBPIXEL_SHIFT)
    elif marking == "ring":
        cv2.circle(part, (fx(hx), fx(hy)), fx(r * 0.55), 255, max(1, int(round(r * 0.3))), cv2.LINE_AA, SUBPIXEL_SHIFT)
    _over(rgb, alpha, part, ink)


def _render_creature(class_index: int, length: float, rng: np.random.Generator) -> _Layer:
    """Draw body, tail, legs and head of one creature on a square canvas centred on the body.

    The body (shape, palette colour, scale texture, outline) is class-independent; only the
    head colour (``HEAD_COLOURS[k % 10]``) and marking (``HEAD_MARKINGS[k // 10]``) encode k.
    """
    width = length * rng.uniform(*BODY_WIDTH)
    angle = rng.uniform(0, 2 * np.pi)
    rot = rotation(angle)
    belly = 1.0 if rot[1, 1] >= 0 else -1.0  # the side of the body axis facing the ground
    size = int(math.ceil(1.7 * length)) + 8
    centre = size / 2.0

    def to_canvas(u: float, v: float) -> np.ndarray:
        return rot @ np.array([u, belly * v]) + centre

    base = jitter(BODY_PALETTE[rng.integers(len(BODY_PALETTE))], rng, 12)
    rgb = np.zeros((size, size, 3), np.float32)
    alpha = np.zeros((size, size), np.float32)
    part = np.zeros((size, size), np.uint8)
    outline = max(1, int(round(length / 40)))

    # Tail: a flat triangle at the back end.
    tail = length * rng.uniform(*TAIL_LENGTH)
    spread = width * rng.uniform(0.2, 0.35)
    tri = np.stack([to_canvas(-0.4 * length, 0), to_canvas(-0.5 * length - tail, -spread), to_canvas(-0.5 * length - tail, spread)])
    cv2.fillPoly(part, [pts(tri)], 255, cv2.LINE_AA, SUBPIXEL_SHIFT)
    _over(rgb, alpha, part, base * 0.8)

    # Legs: two thick strokes on the belly side, in a darker body colour.
    leg_len = length * rng.uniform(*LEG_LENGTH)
    leg_w = max(2, int(round(length / 20)))
    part[:] = 0
    for u in (-0.22 * length, 0.18 * length):
        lean = rng.uniform(-0.3, 0.3) * leg_len
        p0, p1 = to_canvas(u, 0.25 * width), to_canvas(u + lean, 0.5 * width + leg_len)
        cv2.line(part, (fx(p0[0]), fx(p0[1])), (fx(p1[0]), fx(p1[1])), 255, leg_w, cv2.LINE_AA, SUBPIXEL_SHIFT)
    _over(rgb, alpha, part, base * 0.6)

    # Body: textured ellipse with a darker outline.
    part[:] = 0
    c = (fx(centre), fx(centre))
    axes = (fx(length / 2), fx(width / 2))
    cv2.ellipse(part, c, axes, math.degrees(angle), 0, 360, 255, -1, cv2.LINE_AA, SUBPIXEL_SHIFT)
    shade = _scale_texture(size, centre, angle, length, belly * width, rng.uniform(0, 1, 2))
    _over(rgb, alpha, part, np.clip(base[None, None, :] * shade[..., None], 0, 255))
    part[:] = 0
    cv2.ellipse(part, c, axes, math.degrees(angle), 0, 360, 255, outline, cv2.LINE_AA, SUBPIXEL_SHIFT)
    _over(rgb, alpha, part, base * 0.45)

    # Head: small class-coloured disc at the front end, with an eye and the class marking.
    r = max(MIN_HEAD_RADIUS, 0.5 * length * rng.uniform(*HEAD_DIAMETER))
    hx, hy = to_canvas(0.5 * length + 0.4 * r, 0)
    head_colour = jitter(HEAD_COLOURS[class_index % len(HEAD_COLOURS)], rng, 8)
    part[:] = 0
    cv2.circle(part, (fx(hx), fx(hy)), fx(r), 255, -1, cv2.LINE_AA, SUBPIXEL_SHIFT)
    head_alpha = part.astype(np.float32) * (1.0 / 255.0)
    _over(rgb, alpha, part, head_colour)
    _head_marking(part, HEAD_MARKINGS[class_index // len(HEAD_COLOURS)], hx, hy, r, angle, head_colour, rgb, alpha)
    part[:] = 0
    cv2.circle(part, (fx(hx), fx(hy)), fx(r), 255, 1, cv2.LINE_AA, SUBPIXEL_SHIFT)
    _over(rgb, alpha, part, head_colour * 0.5)
    if r >= 4:
        ex, ey = to_canvas(0.5 * length + 0.75 * r, -0.35 * r)  # eye on the back side
        part[:] = 0
        cv2.circle(part, (fx(ex), fx(ey)), fx(max(1.0, 0.22 * r)), 255, -1, cv2.LINE_AA, SUBPIXEL_SHIFT)
        eye = np.full(3, 245.0 if head_colour.mean() < 100 else 15.0, np.float32)
        _over(rgb, alpha, part, eye)
    return _Layer(rgb=rgb, alpha=alpha, head=head_alpha)


def _crop(layer: _Layer) -> _Layer:
    """Crop a creature canvas to the bounding box of its non-zero alpha."""
    ys, xs = np.nonzero(layer.alpha > 0)
    sl = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
    return _Layer(rgb=layer.rgb[sl], alpha=layer.alpha[sl], head=layer.head[sl])


# --------------------------------------------------------------------------- samples


@dataclass(frozen=True)
class Sample:
    """One rendered benchmark image with its ground truth."""

    image: np.ndarray  # [H, W, 3] uint8 RGB
    mask: np.ndarray  # [H, W] uint8, 255 = creature (all parts), 0 = background
    box: tuple[float, float, float, float]  # CUB (x, y, w, h) of ``mask``
    head_box: tuple[float, float, float, float]  # CUB (x, y, w, h) of the head disc alone
    class_index: int  # 0-based


def _draw_size(rng: np.random.Generator, size_range: tuple[int, int]) -> tuple[int, int]:
    """(h, w), each drawn independently and uniformly from the inclusive ``size_range``."""
    lo, hi = size_range
    return int(rng.integers(lo, hi + 1)), int(rng.integers(lo, hi + 1))


def render_sample(seed: int, index: int, class_index: int, size_range: tuple[int, int] = (72, 128)) -> Sample:
    """Render benchmark image ``index`` (0-based) of class ``class_index``; depends only on these args."""
    if not 0 <= class_index < MAX_CLASSES:
        raise ValueError(f"class_index {class_index} out of range 0..{MAX_CLASSES - 1}")
    rng = np.random.default_rng([seed, STREAM_IMAGE, index])
    h, w = _draw_size(rng, size_range)
    img = render_scene(h, w, rng)
    length = rng.uniform(*BODY_LENGTH) * min(h, w)
    while True:  # shrink until the creature fits inside the image with a margin
        layer = _crop(_render_creature(class_index, length, rng))
        lh, lw = layer.alpha.shape
        if lh <= h - 2 * EDGE_MARGIN and lw <= w - 2 * EDGE_MARGIN:
            break
        length *= 0.9
    y0 = int(rng.integers(EDGE_MARGIN, h - EDGE_MARGIN - lh + 1))
    x0 = int(rng.integers(EDGE_MARGIN, w - EDGE_MARGIN - lw + 1))
    region = img[y0 : y0 + lh, x0 : x0 + lw]
    region += (layer.rgb - region) * layer.alpha[..., None]
    mask = np.zeros((h, w), np.uint8)
    mask[y0 : y0 + lh, x0 : x0 + lw] = np.where(layer.alpha >= 0.5, 255, 0).astype(np.uint8)
    head = np.zeros((h, w), np.uint8)
    head[y0 : y0 + lh, x0 : x0 + lw] = layer.head >= 0.5
    return Sample(
        image=degrade(img, rng),
        mask=mask,
        box=mask_box(mask),
        head_box=mask_box(head),
        class_index=class_index,
    )


def render_background(seed: int, index: int, size_range: tuple[int, int] = (72, 128)) -> np.ndarray:
    """Render Background Image Set entry ``index`` (0-based): a scene with no creature, uint8 RGB."""
    rng = np.random.default_rng([seed, STREAM_BACKGROUND, index])
    h, w = _draw_size(rng, size_range)
    return degrade(render_scene(h, w, rng), rng)
