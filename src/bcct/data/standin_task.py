"""The stand-in pretraining task (:mod:`bcct.pretrain`): 8 geometric shape classes on the
benchmark's kind of scenes, in memory, disjoint from the benchmark's creatures, to
pretrain the small CPU backbone in place of ImageNet.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from bcct.data.synth_render import BODY_PALETTE, SUBPIXEL_SHIFT, degrade, fx, hsv, jitter, pts, render_scene, rotation

#: Pretraining shape classes (disjoint from the benchmark classes).
PRETRAIN_CLASSES: tuple[str, ...] = ("triangle", "square", "star", "cross", "ring", "ellipse", "hexagon", "arrow")


def _shape_polygon(kind: int) -> np.ndarray | None:
    """Unit-radius polygon of pretraining shape ``kind`` (None for the ring / ellipse drawn natively)."""
    name = PRETRAIN_CLASSES[kind]
    if name in ("triangle", "square", "hexagon"):
        k = {"triangle": 3, "square": 4, "hexagon": 6}[name]
        a = np.arange(k) * 2 * np.pi / k
        return np.stack([np.cos(a), np.sin(a)], 1)
    if name == "star":
        a = np.arange(10) * np.pi / 5
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.42)
        return np.stack([r * np.cos(a), r * np.sin(a)], 1)
    if name == "cross":
        t = 0.32
        return np.array([[-t, -1], [t, -1], [t, -t], [1, -t], [1, t], [t, t], [t, 1], [-t, 1], [-t, t], [-1, t], [-1, -t], [-t, -t]])
    if name == "arrow":
        return np.array([[-1, -0.25], [0.2, -0.25], [0.2, -0.7], [1, 0], [0.2, 0.7], [0.2, 0.25], [-1, 0.25]])
    return None


_SHAPES = tuple(_shape_polygon(k) for k in range(len(PRETRAIN_CLASSES)))


def _generic_texture(size: int, rng: np.random.Generator) -> np.ndarray:
    """Shade factor [size, size] of a random generic texture (stripes, checks or dots), so that
    pretraining objects are textured like real ones; none of them is the creatures' scale rows."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    angle = rng.uniform(0, np.pi)
    u = x * math.cos(angle) + y * math.sin(angle)
    v = -x * math.sin(angle) + y * math.cos(angle)
    period = rng.uniform(3.0, 7.0)
    kind = rng.integers(3)
    if kind == 0:  # stripes
        pattern = 0.5 + 0.5 * np.sin(2 * np.pi * u / period)
    elif kind == 1:  # checks
        pattern = ((np.floor(u / period) + np.floor(v / period)) % 2).astype(np.float32)
    else:  # dots
        fu, fv = np.mod(u / period, 1.0) - 0.5, np.mod(v / period, 1.0) - 0.5
        pattern = (np.sqrt(fu * fu + fv * fv) < 0.3).astype(np.float32)
    return (0.72 + 0.28 * pattern).astype(np.float32)


def _draw_shape(img: np.ndarray, kind: int, rng: np.random.Generator) -> None:
    """Draw pretraining shape ``kind`` with random colour, rotation, scale and position (in place);
    most shapes are textured and some outlined, as objects in natural images are."""
    size = img.shape[0]
    r = size * rng.uniform(0.18, 0.36)
    cx, cy = rng.uniform(r, size - r, 2)
    angle = rng.uniform(0, 2 * np.pi)
    if rng.uniform() < 0.3:
        colour = jitter(BODY_PALETTE[rng.integers(len(BODY_PALETTE))], rng, 20)
    else:
        colour = hsv(rng.uniform(), rng.uniform(0.35, 1.0), rng.uniform(0.35, 1.0))
    mask = np.zeros((size, size), np.uint8)
    name = PRETRAIN_CLASSES[kind]
    if name == "ring":
        cv2.circle(mask, (fx(cx), fx(cy)), fx(r * 0.8), 255, max(2, int(round(r * 0.35))), cv2.LINE_AA, SUBPIXEL_SHIFT)
    elif name == "ellipse":
        cv2.ellipse(mask, (fx(cx), fx(cy)), (fx(r), fx(r * 0.5)), math.degrees(angle), 0, 360, 255, -1, cv2.LINE_AA, SUBPIXEL_SHIFT)
    else:
        poly = _SHAPES[kind] @ rotation(angle).T * r + np.array([cx, cy])
        cv2.fillPoly(mask, [pts(poly)], 255, cv2.LINE_AA, SUBPIXEL_SHIFT)
    alpha = mask.astype(np.float32)[..., None] / 255.0
    shade = _generic_texture(size, rng)[..., None] if rng.uniform() < 0.7 else np.float32(1.0)
    fill = np.clip(colour[None, None, :].astype(np.float32) * shade, 0, 255)
    img[:] = (img * (1 - alpha) + fill * alpha).astype(np.uint8)
    if rng.uniform() < 0.5:  # a dark outline
        contours, _ = cv2.findContours((mask > 127).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        dark = (colour * rng.uniform(0.25, 0.5)).astype(int).tolist()
        cv2.drawContours(img, contours, -1, dark, 1, cv2.LINE_AA)


def render_pretrain_batch(n: int, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` square shape-classification images (uint8 [n, size, size, 3]) and labels (int64 [n]).

    Labels index ``PRETRAIN_CLASSES``. Scenes come from the same generator as the benchmark
    (gradient, noise, body-palette distractors) but the classes are disjoint from it, so the
    task can stand in for ImageNet pretraining without leaking benchmark labels.
    """
    images = np.empty((n, size, size, 3), np.uint8)
    labels = rng.integers(0, len(PRETRAIN_CLASSES), n).astype(np.int64)
    for i in range(n):
        img = render_scene(size, size, rng)
        _draw_shape(img, int(labels[i]), rng)
        images[i] = degrade(img, rng)
    return images, labels
