"""A procedural world where OOD quality is measurable offline (world v2).

32×32 RGB images of 54 object categories (shapes, glyphs, patterns and composite objects) in
10 colours, 2 sizes, 4 textures and on 4 backgrounds, with captions that name them, plus far-OOD
images (coloured noise and full-frame textures with no object). 46 categories are *named*: the
world CLIP sees them with captions during pre-training and they are in the world lexicon. The
other 8 (``UNNAMED``) never appear in pre-training, as images or as words: OOD sets made of them
measure what mined negative labels do when the lexicon does not cover the OOD classes.

The world lexicon (``world_lexicon()``; shipped as ``assets/world_lexicon/``) is every word and
phrase the CLIP is trained on: category names, "{texture} {category}" phrases, colours, sizes,
textures, backgrounds and "{size} {colour}" / "{size} {texture}" / "{colour} {texture}" phrases —
318 entries, most
of them neither an ID nor an OOD class of any partition.

Everything is seeded and vectorised (numpy): thousands of images per second on one core.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

MAY_IMPORT = ("shared", "outputs")  # a core module of its own: read by tests/test_architecture.py

IMAGE_SIZE = 32
COLOURS = {
    "red": (220, 30, 30), "green": (30, 190, 40), "blue": (40, 70, 230), "yellow": (235, 220, 40),
    "purple": (150, 40, 200), "orange": (245, 140, 20), "cyan": (40, 220, 220), "pink": (245, 130, 190),
    "white": (240, 240, 240), "brown": (130, 80, 35),
}
COLOUR_NAMES = tuple(COLOURS)
SIZES = ("small", "large")
SIZE_RADIUS = {"small": 8.0, "large": 12.5}
TEXTURES = ("solid", "striped", "dotted", "checkered")
BACKGROUNDS = ("dark", "light", "grid", "gradient")

Mask = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _disc(x: np.ndarray, y: np.ndarray, cx: float, cy: float, r: float) -> np.ndarray:
    return np.hypot(x - cx, y - cy) < r


def _box(x: np.ndarray, y: np.ndarray, x0: float, x1: float, y0: float, y1: float) -> np.ndarray:
    return (x > x0) & (x < x1) & (y > y0) & (y < y1)


def _polygon(x: np.ndarray, y: np.ndarray, sides: int, radius: float = 0.9, phase: float = 0.0) -> np.ndarray:
    """Regular polygon: inside every edge's half-plane."""
    inside = np.ones_like(x, dtype=bool)
    apothem = radius * np.cos(np.pi / sides)
    for k in range(sides):
        a = phase + 2 * np.pi * (k + 0.5) / sides
        inside &= x * np.cos(a) + y * np.sin(a) < apothem
    return inside


def _segment(x: np.ndarray, y: np.ndarray, p: tuple[float, float], q: tuple[float, float], width: float) -> np.ndarray:
    px, py = p
    dx, dy = q[0] - px, q[1] - py
    t = np.clip(((x - px) * dx + (y - py) * dy) / (dx * dx + dy * dy), 0, 1)
    return np.hypot(x - px - t * dx, y - py - t * dy) < width


# 5×7 bitmap glyphs (rows top to bottom).
GLYPHS = {
    "letter e": ("11111", "10000", "10000", "11110", "10000", "10000", "11111"),
    "letter k": ("10001", "10010", "10100", "11000", "10100", "10010", "10001"),
    "letter h": ("10001", "10001", "10001", "11111", "10001", "10001", "10001"),
    "letter t": ("11111", "00100", "00100", "00100", "00100", "00100", "00100"),
    "digit 2": ("01110", "10001", "00001", "00010", "00100", "01000", "11111"),
    "digit 7": ("11111", "00001", "00010", "00100", "01000", "01000", "01000"),
    "letter m": ("10001", "11011", "10101", "10101", "10001", "10001", "10001"),
    "digit 4": ("00010", "00110", "01010", "10010", "11111", "00010", "00010"),
}


def _glyph(rows: tuple[str, ...]) -> Mask:
    bitmap = np.array([[c == "1" for c in row] for row in rows])

    def mask(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        col = np.floor((x + 0.72) / 1.44 * 5).astype(int)
        row = np.floor((0.95 - y) / 1.9 * 7).astype(int)
        ok = (col >= 0) & (col < 5) & (row >= 0) & (row < 7)
        return ok & bitmap[np.clip(row, 0, 6), np.clip(col, 0, 4)]
    return mask


def _heart(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    u, v = x * 1.15, y * 1.15 + 0.15
    return (u * u + v * v - 1) ** 3 - u * u * v ** 3 < 0


def _spiral(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    r, t = np.hypot(x, y), np.arctan2(y, x)
    arm = (r - 0.95 * (t + np.pi) / (2 * np.pi) * 0.33) % 0.33
    return (r < 0.95) & (arm < 0.15)


CATEGORY_MASKS: dict[str, Mask] = {
    # shapes
    "circle": lambda x, y: np.hypot(x, y) < 0.9,
    "ring": lambda x, y: (np.hypot(x, y) < 1.0) & (np.hypot(x, y) > 0.6),
    "square": lambda x, y: np.maximum(abs(x), abs(y)) < 0.72,
    "arrow": lambda x, y: ((y > 0) & (y < 1.0) & (abs(x) < 0.85 * (1.0 - y))) | _box(x, y, -0.28, 0.28, -1.0, 0.0),
    "triangle": lambda x, y: (y > -0.5) & (np.sqrt(3) * x + y < 1.0) & (-np.sqrt(3) * x + y < 1.0),
    "star": lambda x, y: np.hypot(x, y) < 0.45 + 0.5 * np.clip(np.cos(5 * np.arctan2(y, x) - np.pi / 2), 0, 1) ** 2,
    "cross": lambda x, y: _box(x, y, -0.3, 0.3, -1, 1) | _box(x, y, -1, 1, -0.3, 0.3),
    "hourglass": lambda x, y: (abs(y) < 0.95) & (abs(x) < 0.85 * abs(y) + 0.08),
    "crescent": lambda x, y: (np.hypot(x, y) < 0.95) & (np.hypot(x - 0.45, y) > 0.75),
    "heart": _heart,
    "ellipse": lambda x, y: x ** 2 + (y / 0.42) ** 2 < 1.0,
    "semicircle": lambda x, y: (np.hypot(x, y) < 0.95) & (y > -0.1),
    "pentagon": lambda x, y: _polygon(x, y, 5, phase=np.pi / 2 + np.pi / 5),
    "hexagon": lambda x, y: _polygon(x, y, 6),
    "diamond": lambda x, y: abs(x) / 0.6 + abs(y) / 1.0 < 1.0,
    "trapezoid": lambda x, y: (abs(y) < 0.6) & (abs(x) < 0.55 + 0.4 * (0.6 - y) / 1.2),
    "parallelogram": lambda x, y: (abs(y) < 0.55) & (abs(x - 0.5 * y) < 0.6),
    "chevron": lambda x, y: (abs(x) < 0.9) & (y - (0.6 - abs(x)) < 0.1) & (y - (0.6 - abs(x)) > -0.45),
    "lightning": lambda x, y: (_segment(x, y, (0.35, 1.0), (-0.3, 0.05), 0.2)
                               | _segment(x, y, (-0.3, 0.05), (0.3, 0.05), 0.2)
                               | _segment(x, y, (0.3, 0.05), (-0.35, -1.0), 0.2)),
    "teardrop": lambda x, y: _disc(x, y, 0, -0.3, 0.6) | ((y > -0.3) & (y < 0.95) & (abs(x) < 0.6 * (0.95 - y) / 1.25)),
    # composite objects
    "house": lambda x, y: (
        _box(x, y, -0.6, 0.6, -0.95, 0.1) | ((y >= 0.1) & (y < 0.95) & (abs(x) < 0.85 * (0.95 - y) / 0.85))),
    "tree": lambda x, y: (
        ((y > -0.4) & (y < 1.0) & (abs(x) < 0.8 * (1.0 - y) / 1.4)) | _box(x, y, -0.15, 0.15, -1.0, -0.4)),
    "snowman": lambda x, y: _disc(x, y, 0, -0.45, 0.52) | _disc(x, y, 0, 0.5, 0.38),
    "lollipop": lambda x, y: _disc(x, y, 0, 0.45, 0.5) | _box(x, y, -0.08, 0.08, -1.0, 0.0),
    "mushroom": lambda x, y: (_disc(x, y, 0, 0.0, 0.9) & (y > 0.0)) | _box(x, y, -0.25, 0.25, -0.9, 0.05),
    "dumbbell": lambda x, y: (
        _disc(x, y, -0.65, 0, 0.35) | _disc(x, y, 0.65, 0, 0.35) | _box(x, y, -0.65, 0.65, -0.1, 0.1)),
    "key": lambda x, y: (_disc(x, y, -0.55, 0, 0.38) & ~_disc(x, y, -0.55, 0, 0.15)) | _box(x, y, -0.2, 0.95, -0.1, 0.1)
    | _box(x, y, 0.55, 0.7, -0.45, 0) | _box(x, y, 0.8, 0.95, -0.35, 0),
    "flag": lambda x, y: _box(x, y, -0.7, -0.55, -1.0, 0.95) | _box(x, y, -0.55, 0.75, 0.15, 0.95),
    "umbrella": lambda x, y: (_disc(x, y, 0, 0.1, 0.9) & (y > 0.1)) | _box(x, y, -0.07, 0.07, -0.8, 0.1)
    | (_disc(x, y, 0.2, -0.8, 0.27) & ~_disc(x, y, 0.2, -0.8, 0.13) & (y < -0.8)),
    "bowtie": lambda x, y: (abs(x) < 0.95) & (abs(y) < 0.7 * abs(x) + 0.1),
    "table": lambda x, y: (
        _box(x, y, -0.95, 0.95, 0.2, 0.45) | _box(x, y, -0.8, -0.6, -0.9, 0.2) | _box(x, y, 0.6, 0.8, -0.9, 0.2)),
    "ladder": lambda x, y: _box(x, y, -0.6, -0.42, -1, 1) | _box(x, y, 0.42, 0.6, -1, 1)
    | (_box(x, y, -0.6, 0.6, -1, 1) & ((y + 1) % 0.5 < 0.16)),
    "cup": lambda x, y: (_box(x, y, -0.6, 0.4, -0.8, 0.7) & ~_box(x, y, -0.42, 0.22, -0.62, 0.8))
    | (_disc(x, y, 0.45, 0, 0.38) & ~_disc(x, y, 0.45, 0, 0.2) & (x > 0.4)),
    "sun": lambda x, y: _disc(x, y, 0, 0, 0.45) | ((np.hypot(x, y) < 0.98) & (np.cos(8 * np.arctan2(y, x)) > 0.75)),
    "flower": lambda x, y: (
        _disc(x, y, 0, 0, 0.25) | (np.hypot(x, y) < 0.35 + 0.6 * np.abs(np.cos(3 * np.arctan2(y, x))))),
    "eye": lambda x, y: ((x ** 2 + (y / 0.5) ** 2 < 1.0) & ~(x ** 2 + (y / 0.32) ** 2 < 0.7)) | _disc(x, y, 0, 0, 0.25),
    # patterns
    "target": lambda x, y: (np.hypot(x, y) < 1.0) & (np.hypot(x, y) % 0.4 < 0.2),
    "grid": lambda x, y: (
        _box(x, y, -0.85, 0.85, -0.85, 0.85) & (((x + 0.85) % 0.42 < 0.12) | ((y + 0.85) % 0.42 < 0.12))),
    "barcode": lambda x, y: _box(x, y, -0.85, 0.85, -0.7, 0.7) & (np.floor((x + 0.85) * 6.0) % 3 != 1),
    "spiral": _spiral,
    # glyphs (the first six named; "letter m" and "digit 4" are unnamed below)
    **{name: _glyph(rows) for name, rows in GLYPHS.items()},
    # unnamed composite objects
    "octagon": lambda x, y: _polygon(x, y, 8, phase=np.pi / 8),
    "kite": lambda x, y: abs(x) / 0.6 + np.where(y > 0.3, (y - 0.3) / 0.65, (0.3 - y) / 1.25) < 1.0,
    "fish": lambda x, y: ((x + 0.2) ** 2 / 0.65 ** 2 + y ** 2 / 0.42 ** 2 < 1.0)
    | ((x > 0.35) & (x < 0.95) & (abs(y) < 0.7 * (x - 0.35) + 0.05)),
    "rocket": lambda x, y: _box(x, y, -0.22, 0.22, -0.75, 0.4)
    | ((y >= 0.4) & (y < 1.0) & (abs(x) < 0.22 * (1.0 - y) / 0.6))
    | ((y < -0.45) & (y > -0.95) & (abs(x) > 0.2) & (abs(x) < 0.22 + 0.3 * (-0.45 - y) / 0.5)),
    "candle": lambda x, y: _box(x, y, -0.3, 0.3, -0.95, 0.3) | _disc(x, y, 0, 0.55, 0.17)
    | ((y > 0.55) & (y < 0.95) & (abs(x) < 0.17 * (0.95 - y) / 0.4)),
    "bone": lambda x, y: _box(x, y, -0.65, 0.65, -0.15, 0.15) | _disc(x, y, -0.7, 0.2, 0.22)
    | _disc(x, y, -0.7, -0.2, 0.22) | _disc(x, y, 0.7, 0.2, 0.22) | _disc(x, y, 0.7, -0.2, 0.22),
}
UNNAMED = ("octagon", "kite", "fish", "rocket", "candle", "bone", "letter m", "digit 4")
CATEGORIES = tuple(CATEGORY_MASKS)
NAMED = tuple(c for c in CATEGORIES if c not in UNNAMED)
# world v1's name for the category list, kept for callers that still say "shapes"
SHAPES = NAMED

FILLER = ("look", "here", "is", "there", "we", "see", "one", "nice", "this", "picture", "shows", "image", "of",
          "some", "thing", "just", "again", "quite", "simple", "drawing", "new", "old", "very", "maybe",
          "now", "what", "kind", "that", "above", "below", "center")


# how captions open: CLIP-style templates, including the ones NegLabel ("the nice ...") and CSP
# ("a nice photo of ...") prompt with
ARTICLES = ("a photo of a", "a photo of a", "a", "a", "the nice", "a nice photo of a", "a nice photo of")
# what an attribute-only caption calls the object (CSP's superclass words among them)
GENERIC_NOUNS = ("thing", "object", "item", "pattern", "shape")


@dataclass(frozen=True)
class Item:
    shape: str  # the category (world v1 called every category a shape)
    colour: str
    size: str
    texture: str = "solid"
    background: str = "dark"

    @property
    def pair(self) -> tuple[str, str]:
        return (self.colour, self.shape)


@dataclass(frozen=True)
class Caption:
    """A caption and the attributes it commits to (None: it says nothing about that attribute)."""

    text: str
    category: str | None
    colour: str | None
    size: str | None
    texture: str | None
    background: str | None


def _texture_factor(texture: str, gx: np.ndarray, gy: np.ndarray, phase: np.ndarray) -> np.ndarray:
    """Brightness multiplier that draws the texture across the object (period ~4-5 px)."""
    if texture == "solid":
        return np.ones_like(gx)
    if texture == "striped":
        return np.where(((gx + gy + phase[0]) // 3) % 2 == 0, 1.0, 0.4)
    if texture == "dotted":
        return np.where(np.hypot((gx + phase[0]) % 5 - 2.5, (gy + phase[1]) % 5 - 2.5) < 1.4, 0.35, 1.0)
    if texture == "checkered":
        return np.where(((gx + phase[0]) // 3 + (gy + phase[1]) // 3) % 2 == 0, 1.0, 0.4)
    raise ValueError(f"unknown texture {texture!r}")


def _background(kind: str, rng: np.random.Generator, gx: np.ndarray, gy: np.ndarray) -> np.ndarray:
    if kind == "dark":
        base = np.broadcast_to(rng.uniform(0, 55, size=3), gx.shape + (3,)).copy()
    elif kind == "light":
        base = np.broadcast_to(rng.uniform(170, 225, size=3), gx.shape + (3,)).copy()
    elif kind == "grid":
        period = int(rng.integers(5, 8))
        lines = ((gx.astype(int) % period == 0) | (gy.astype(int) % period == 0))[..., None]
        base = np.where(lines, rng.uniform(90, 130, size=3), rng.uniform(0, 45, size=3))
    elif kind == "gradient":
        a, b = rng.uniform(0, 120, size=3), rng.uniform(60, 200, size=3)
        t = ((gx - gx.min()) / (gx.max() - gx.min()))[..., None]
        base = a * (1 - t) + b * t
    else:
        raise ValueError(f"unknown background {kind!r}")
    return base + rng.normal(0, 10, size=gx.shape + (3,))


def render(items: Sequence[Item], rng: np.random.Generator) -> np.ndarray:
    """uint8 images [N, 32, 32, 3]: each item's category, drawn in its colour and texture on its background."""
    n = len(items)
    coords = np.arange(IMAGE_SIZE) + 0.5 - IMAGE_SIZE / 2
    gx, gy = np.meshgrid(coords, -coords)
    pixel_x, pixel_y = np.meshgrid(np.arange(IMAGE_SIZE), np.arange(IMAGE_SIZE))
    images = np.empty((n, IMAGE_SIZE, IMAGE_SIZE, 3))
    centre = rng.uniform(-3, 3, size=(n, 2))
    angle = rng.uniform(-0.45, 0.45, size=n)  # objects keep an "up" (houses, trees, letters)
    scale = rng.uniform(0.9, 1.1, size=n)
    colour_jitter = rng.uniform(-20, 20, size=(n, 3))
    phases = rng.integers(0, 6, size=(n, 2))
    for i, item in enumerate(items):
        images[i] = _background(item.background, rng, pixel_x, pixel_y)
        radius = SIZE_RADIUS[item.size] * scale[i]
        dx, dy = gx - centre[i, 0], gy - centre[i, 1]
        c, s = np.cos(angle[i]), np.sin(angle[i])
        x, y = (c * dx + s * dy) / radius, (-s * dx + c * dy) / radius
        mask = CATEGORY_MASKS[item.shape](x, y)
        colour = np.clip(np.array(COLOURS[item.colour]) + colour_jitter[i], 0, 255)
        shade = _texture_factor(item.texture, pixel_x, pixel_y, phases[i])[..., None]
        shade = shade * (1.0 + rng.normal(0, 0.04, size=mask.shape + (1,)))
        images[i] = np.where(mask[..., None], colour * shade, images[i])
    return np.clip(images, 0, 255).astype(np.uint8)


def render_far_ood(n: int, rng: np.random.Generator) -> np.ndarray:
    """Images with no object: smooth coloured noise, stripes and checkerboards over the whole frame."""
    out = np.empty((n, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.float64)
    coords = np.arange(IMAGE_SIZE)
    gx, gy = np.meshgrid(coords, coords)
    for i in range(n):
        kind = i % 3
        if kind == 0:
            low = rng.uniform(0, 255, size=(4, 4, 3))
            out[i] = np.kron(low, np.ones((8, 8, 1)))
        elif kind == 1:
            period = rng.uniform(3, 9)
            theta = rng.uniform(0, np.pi)
            wave = np.sin((gx * np.cos(theta) + gy * np.sin(theta)) * 2 * np.pi / period) > 0
            a, b = rng.uniform(0, 255, size=3), rng.uniform(0, 255, size=3)
            out[i] = np.where(wave[..., None], a, b)
        else:
            cell = int(rng.integers(3, 9))
            board = ((gx // cell + gy // cell) % 2).astype(bool)
            a, b = rng.uniform(0, 255, size=3), rng.uniform(0, 255, size=3)
            out[i] = np.where(board[..., None], a, b)
        out[i] += rng.normal(0, 10, size=out[i].shape)
    return np.clip(out, 0, 255).astype(np.uint8)


def caption(item: Item, rng: np.random.Generator, filler_probability: float = 0.3) -> Caption:
    """A true caption: the category (or, sometimes, only attributes) with a random subset of its attributes."""
    colour = item.colour if rng.random() < 0.6 else None
    size = item.size if rng.random() < 0.3 else None
    texture = item.texture if rng.random() < (0.6 if item.texture != "solid" else 0.2) else None
    background = item.background if rng.random() < 0.3 else None
    category = item.shape if rng.random() < 0.9 else None
    if category is None and not (colour or texture):
        colour = item.colour
    words = [w for w in (size, colour, texture) if w]
    noun = category if category is not None else str(rng.choice(GENERIC_NOUNS))
    article = str(rng.choice(ARTICLES))
    text = " ".join([article, *words, noun])
    if background:
        text += f" on a {background} background"
    text += "."
    if rng.random() < filler_probability:
        text = " ".join(rng.choice(FILLER, size=int(rng.integers(1, 8)))) + " " + text
    return Caption(text, category, colour, size, texture, background)


def sample_items(n: int, rng: np.random.Generator, *, categories: Iterable[str] | None = None,
                 colours: Iterable[str] | None = None) -> list[Item]:
    """Random items of ``categories`` (default: the named ones, what pre-training sees); textures and
    backgrounds vary (40 % solid, 50 % on the dark background)."""
    allowed = list(categories) if categories is not None else list(NAMED)
    colour_list = list(colours) if colours is not None else list(COLOUR_NAMES)
    picks = rng.integers(len(allowed), size=n)
    colour_picks = rng.integers(len(colour_list), size=n)
    sizes = rng.integers(2, size=n)
    textures = rng.choice(len(TEXTURES), size=n, p=(0.4, 0.2, 0.2, 0.2))
    backgrounds = rng.choice(len(BACKGROUNDS), size=n, p=(0.5, 0.2, 0.15, 0.15))
    return [Item(allowed[p], colour_list[c], SIZES[z], TEXTURES[t], BACKGROUNDS[b])
            for p, c, z, t, b in zip(picks, colour_picks, sizes, textures, backgrounds, strict=True)]


def world_lexicon() -> dict[str, list[str]]:
    """Every word and phrase the world CLIP is trained on, as lexicon files (nouns / adjectives)."""
    nouns = list(NAMED) + [f"{t} {c}" for c in NAMED for t in TEXTURES]
    adjectives = (list(COLOUR_NAMES) + list(SIZES) + list(TEXTURES) + [f"{b} background" for b in BACKGROUNDS]
                  + [f"{z} {c}" for z in SIZES for c in COLOUR_NAMES] + [f"{z} {t}" for z in SIZES for t in TEXTURES]
                  + [f"{c} {t}" for c in COLOUR_NAMES for t in TEXTURES])
    return {"noun.world.txt": nouns, "adj.world.txt": adjectives}


def lexicon_dir() -> Path:
    """The shipped world lexicon (``--lexicon`` layout: noun.*.txt / adj.*.txt)."""
    return Path(__file__).resolve().parent / "assets" / "world_lexicon"


def checkpoint_dir() -> Path:
    """Where the shipped world CLIP lives (open_clip ``local-dir:`` layout)."""
    return Path(__file__).resolve().parent / "assets" / "world_clip"


def export_folder(root: Path, classes: dict[str, list[Item]], rng: np.random.Generator) -> None:
    """Write ``root/<class folder>/<index>.png`` for each class's items."""
    from PIL import Image

    for folder, items in classes.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for k, image in enumerate(render(items, rng)):
            Image.fromarray(image).save(root / folder / f"{k:04d}.png")


def export_images(root: Path, images: np.ndarray, folder: str = "images") -> None:
    from PIL import Image

    (root / folder).mkdir(parents=True, exist_ok=True)
    for k, image in enumerate(images):
        Image.fromarray(image).save(root / folder / f"{k:04d}.png")


@dataclass(frozen=True)
class WorldSpec:
    """What ``negprompt world export`` writes: ID categories, near-OOD categories (named and unnamed), far-OOD."""

    id_shapes: tuple[str, ...]
    ood_shapes: tuple[str, ...]  # near-OOD categories the lexicon names
    train_shapes: tuple[str, ...]  # the ID categories that get training images (the rest are names only)
    shots: int = 16
    test_per_class: int = 50
    far: int = 300
    seed: int = 0
    calib_per_class: int = 20  # held-out ID images of every ID category, for threshold calibration
    unnamed_shapes: tuple[str, ...] = UNNAMED  # near-OOD categories outside the lexicon and pre-training


def default_spec(seed: int = 0, n_id: int = 6, n_train: int | None = None, n_ood: int = 6, **counts: Any) -> WorldSpec:
    """A seeded partition of the named categories: ``n_id`` ID, the next ``n_ood`` near-OOD."""
    order = [NAMED[i] for i in np.random.default_rng(seed).permutation(len(NAMED))]
    id_shapes = tuple(order[:n_id])
    return WorldSpec(id_shapes=id_shapes, ood_shapes=tuple(order[n_id:n_id + n_ood]),
                     train_shapes=id_shapes[: n_train or n_id], seed=seed, **counts)


def folder_name(category: str) -> str:
    return category.replace(" ", "_")


EXPORT_FOLDERS = ("train", "test", "calib", "ood_near", "ood_unnamed", "ood_far")
EXPORT_FILES = ("train_names.txt", "id_names.txt")


def check_export_target(root: Path) -> None:
    """An earlier export's names in ``root`` are replaced: each must be what an export writes there (a folder, a
    file), never a pipe or a device of somebody else's (exit 2, before rendering)."""
    from .outputs.atomic import check_output_folder, check_replaceable

    for name in EXPORT_FOLDERS:
        check_output_folder(Path(root) / name, "world export:")
    for name in EXPORT_FILES:
        check_replaceable(Path(root) / name, "world export:")


def remove_export(root: Path) -> None:
    """Delete what an earlier export wrote into ``root`` (and nothing else), so a new one cannot mix with it."""
    import shutil

    for name in EXPORT_FOLDERS:
        shutil.rmtree(Path(root) / name, ignore_errors=True)
    for name in EXPORT_FILES:
        (Path(root) / name).unlink(missing_ok=True)


def check_categories(names: Iterable[str]) -> None:
    for name in names:
        if name not in CATEGORY_MASKS:
            raise ValueError(f"unknown shape {name!r}; categories: {', '.join(CATEGORIES)}")


def export_world_into(out: Path, spec: WorldSpec) -> dict[str, Path]:
    """``export_world`` rendered in a hidden sibling folder and moved into ``out`` only once complete, so an
    interrupted or failed export leaves no partial tree there (the demanding case: Ctrl-C during ood_far/).
    An earlier export in ``out`` is replaced; anything else there is left alone."""
    import shutil
    import tempfile

    out = Path(out)
    if out.is_dir():
        check_export_target(out)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        written = export_world(staging, spec)
        out.mkdir(exist_ok=True)
        remove_export(out)
        for entry in sorted(staging.iterdir()):
            shutil.move(entry, out / entry.name)  # a rename, unless OUT is a mount point
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {name: out / path.relative_to(staging) for name, path in written.items()}


def export_world(root: Path, spec: WorldSpec) -> dict[str, Path]:
    """Write the ImageFolder trees and name lists; each split has its own seeded random stream."""
    check_categories((*spec.id_shapes, *spec.ood_shapes, *spec.unnamed_shapes))
    root = Path(root)

    def items(category: str, n: int, rng: np.random.Generator) -> list[Item]:
        return sample_items(n, rng, categories=[category])

    paths = {name: root / name for name in EXPORT_FOLDERS}
    for index, (split, shapes, n) in enumerate((("train", spec.train_shapes, spec.shots),
                                                ("test", spec.id_shapes, spec.test_per_class),
                                                ("ood_near", spec.ood_shapes, spec.test_per_class))):
        rng = np.random.default_rng([spec.seed, index])
        export_folder(paths[split], {folder_name(s): items(s, n, rng) for s in shapes}, rng)
    export_images(paths["ood_far"], render_far_ood(spec.far, np.random.default_rng([spec.seed, 3])))
    if spec.calib_per_class > 0:
        rng = np.random.default_rng([spec.seed, 4])
        export_folder(paths["calib"], {folder_name(s): items(s, spec.calib_per_class, rng) for s in spec.id_shapes},
                      rng)
    if spec.unnamed_shapes:
        rng = np.random.default_rng([spec.seed, 5])
        per = max(1, spec.test_per_class * max(1, len(spec.ood_shapes)) // len(spec.unnamed_shapes))
        export_folder(paths["ood_unnamed"], {folder_name(s): items(s, per, rng) for s in spec.unnamed_shapes}, rng)
    (root / "train_names.txt").write_text("".join(f"{s}\n" for s in sorted(spec.train_shapes)))
    (root / "id_names.txt").write_text("".join(f"{s}\n" for s in sorted(spec.id_shapes)))
    paths["train_names"], paths["id_names"] = root / "train_names.txt", root / "id_names.txt"
    return paths
