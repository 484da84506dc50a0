"""A small image folder of simple shapes (10 classes, random size, position, rotation, colour and noise): what a
user with a few hundred images per class brings. Used by the proxy-recipe test; deterministic for a seed."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SHAPES = ("circle", "ring", "square", "frame", "triangle", "diamond", "cross", "x", "hbar", "vbar")


def _polygon(cx: float, cy: float, r: float, corners: int, angle: float) -> list[tuple[float, float]]:
    return [(cx + r * math.cos(angle + 2 * math.pi * k / corners), cy + r * math.sin(angle + 2 * math.pi * k / corners))
            for k in range(corners)]


def draw(shape: str, rng: np.random.Generator, size: int = 48) -> Image.Image:
    bg = tuple(int(v) for v in rng.integers(0, 90, 3))
    fg = tuple(int(v) for v in rng.integers(150, 256, 3))
    im = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(im)
    r = size * rng.uniform(0.22, 0.36)
    cx, cy = (size / 2 + rng.uniform(-0.12, 0.12) * size for _ in range(2))
    angle = rng.uniform(-0.35, 0.35)  # rotation, kept below the symmetry that would make classes alike
    w = max(2, int(r * rng.uniform(0.25, 0.4)))
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "circle":
        d.ellipse(box, fill=fg)
    elif shape == "ring":
        d.ellipse(box, outline=fg, width=w)
    elif shape == "square":
        d.polygon(_polygon(cx, cy, r * 1.2, 4, math.pi / 4 + angle), fill=fg)
    elif shape == "frame":
        d.polygon(_polygon(cx, cy, r * 1.2, 4, math.pi / 4 + angle), outline=fg, width=w)
    elif shape == "triangle":
        d.polygon(_polygon(cx, cy, r * 1.2, 3, -math.pi / 2 + angle), fill=fg)
    elif shape == "diamond":
        d.polygon([(cx, cy - r * 1.2), (cx + r * 0.7, cy), (cx, cy + r * 1.2), (cx - r * 0.7, cy)], fill=fg)
    elif shape in ("cross", "x"):
        base = angle + (math.pi / 4 if shape == "x" else 0.0)
        for a in (base, base + math.pi / 2):
            dx, dy = r * math.cos(a), r * math.sin(a)
            d.line([(cx - dx, cy - dy), (cx + dx, cy + dy)], fill=fg, width=w)
    else:  # hbar, vbar
        a = angle + (0.0 if shape == "hbar" else math.pi / 2)
        dx, dy = r * math.cos(a), r * math.sin(a)
        d.line([(cx - dx, cy - dy), (cx + dx, cy + dy)], fill=fg, width=int(w * 1.5))
    im = im.filter(ImageFilter.GaussianBlur(rng.uniform(0.0, 1.2)))
    noisy = np.asarray(im, np.float32) + rng.normal(0, 18, (size, size, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def make_folder(root: Path, per_class: int = 100, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for shape in SHAPES:
        (root / shape).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            draw(shape, rng).save(root / shape / f"{i:04d}.png")
    return root
