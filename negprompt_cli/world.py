"""A procedural world where OOD quality is measurable offline.

32×32 RGB images of 12 shapes × 10 colours × 2 sizes (random rotation, position jitter,
noisy dark backgrounds) with compositional captions, plus far-OOD images (coloured noise and
textures with no shape). 24 colour–shape pairs are held out of CLIP pre-training, so class
names exist that the model never saw as images: the open-vocabulary case.

Everything is seeded and vectorised (numpy): thousands of images per second on one core.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SHAPES = ("circle", "ring", "square", "arrow", "triangle", "star", "cross", "hourglass", "crescent", "heart",
          "ellipse", "semicircle")
COLOURS = {
    "red": (220, 30, 30), "green": (30, 190, 40), "blue": (40, 70, 230), "yellow": (235, 220, 40),
    "purple": (150, 40, 200), "orange": (245, 140, 20), "cyan": (40, 220, 220), "pink": (245, 130, 190),
    "white": (240, 240, 240), "brown": (130, 80, 35),
}
COLOUR_NAMES = tuple(COLOURS)
SIZES = ("small", "large")
SIZE_RADIUS = {"small": 6.5, "large": 11.5}
IMAGE_SIZE = 32

# Pairs never rendered during CLIP pre-training: two colours per shape, spread over all colours.
HELD_OUT_PAIRS = frozenset((COLOUR_NAMES[(3 * i) % 10], s) for i, s in enumerate(SHAPES)) | frozenset(
    (COLOUR_NAMES[(3 * i + 5) % 10], s) for i, s in enumerate(SHAPES))

FILLER = ("look", "here", "is", "there", "we", "see", "one", "nice", "this", "picture", "shows", "image", "of",
          "some", "thing", "just", "on", "dark", "background", "again", "quite", "simple", "drawing", "new",
          "old", "very", "maybe", "now", "what", "kind", "that", "above", "below", "center")
TEMPLATES = ("a photo of a {c} {s}.", "a {z} {c} {s}.", "a photo of a {s}.", "a {c} {s}.", "a photo of a {z} {s}.",
             "a {s}.", "a photo of a {z} {c} {s}.", "a {z} {s}.")


@dataclass(frozen=True)
class Item:
    shape: str
    colour: str
    size: str

    @property
    def pair(self) -> tuple[str, str]:
        return (self.colour, self.shape)


def _shape_mask(shape: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Inside-test in the shape's own unit coordinates (radius ~1)."""
    r = np.hypot(x, y)
    t = np.arctan2(y, x)
    if shape == "circle":
        return r < 0.9
    if shape == "ring":
        return (r < 1.0) & (r > 0.6)
    if shape == "square":
        return np.maximum(abs(x), abs(y)) < 0.72
    if shape == "arrow":
        head = (y > 0) & (y < 1.0) & (abs(x) < 0.85 * (1.0 - y))
        return head | ((abs(x) < 0.28) & (y <= 0) & (y > -1.0))
    if shape == "triangle":
        return (y > -0.5) & (np.sqrt(3) * x + y < 1.0) & (-np.sqrt(3) * x + y < 1.0)
    if shape == "star":
        return r < 0.45 + 0.5 * np.clip(np.cos(5 * t), 0, 1) ** 2
    if shape == "cross":
        return ((abs(x) < 0.3) & (abs(y) < 1.0)) | ((abs(y) < 0.3) & (abs(x) < 1.0))
    if shape == "hourglass":
        return (abs(y) < 0.95) & (abs(x) < 0.85 * abs(y) + 0.08)
    if shape == "crescent":
        return (r < 0.95) & (np.hypot(x - 0.45, y) > 0.75)
    if shape == "heart":
        u, v = x * 1.15, y * 1.15 + 0.15
        return (u * u + v * v - 1) ** 3 - u * u * v ** 3 < 0
    if shape == "ellipse":
        return (x / 1.0) ** 2 + (y / 0.42) ** 2 < 1.0
    if shape == "semicircle":
        return (r < 0.95) & (y > -0.1)
    raise ValueError(f"unknown shape {shape!r}")


def render(items: Sequence[Item], rng: np.random.Generator) -> np.ndarray:
    """uint8 images [N, 32, 32, 3]."""
    n = len(items)
    coords = np.arange(IMAGE_SIZE) + 0.5 - IMAGE_SIZE / 2
    gx, gy = np.meshgrid(coords, -coords)
    background = rng.uniform(0, 55, size=(n, 1, 1, 3))
    images = background + rng.normal(0, 12, size=(n, IMAGE_SIZE, IMAGE_SIZE, 3))
    centre = rng.uniform(-4, 4, size=(n, 2))
    angle = rng.uniform(0, 2 * np.pi, size=n)
    scale = rng.uniform(0.9, 1.1, size=n)
    colour_jitter = rng.uniform(-20, 20, size=(n, 3))
    for i, item in enumerate(items):
        radius = SIZE_RADIUS[item.size] * scale[i]
        dx, dy = gx - centre[i, 0], gy - centre[i, 1]
        c, s = np.cos(angle[i]), np.sin(angle[i])
        x, y = (c * dx + s * dy) / radius, (-s * dx + c * dy) / radius
        mask = _shape_mask(item.shape, x, y)
        colour = np.clip(np.array(COLOURS[item.colour]) + colour_jitter[i], 0, 255)
        shade = 1.0 + rng.normal(0, 0.04, size=mask.shape + (1,))
        images[i] = np.where(mask[..., None], colour * shade, images[i])
    return np.clip(images, 0, 255).astype(np.uint8)


def render_far_ood(n: int, rng: np.random.Generator) -> np.ndarray:
    """Images with no shape: smooth coloured noise, stripes and checkerboards."""
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


def caption(item: Item, rng: np.random.Generator, filler_probability: float = 0.3) -> str:
    """A caption that mentions the shape and maybe its colour and size, sometimes after filler words."""
    text = TEMPLATES[int(rng.integers(len(TEMPLATES)))].format(c=item.colour, s=item.shape, z=item.size)
    if rng.random() < filler_probability:
        words = rng.choice(FILLER, size=int(rng.integers(1, 12)))
        text = " ".join(words) + " " + text
    return text


def caption_attributes(text: str) -> tuple[str | None, str | None, str | None]:
    """(shape, colour, size) a caption commits to; None where it says nothing."""
    words = text.rstrip(".").split()
    shape = next((w for w in reversed(words) if w in SHAPES), None)
    colour = next((w for w in words if w in COLOURS), None)
    size = next((w for w in words if w in SIZES), None)
    return shape, colour, size


def sample_items(n: int, rng: np.random.Generator, *, pairs: Iterable[tuple[str, str]] | None = None) -> list[Item]:
    """Random items; ``pairs`` restricts the (colour, shape) pairs (default: all pre-training pairs)."""
    allowed = list(pairs) if pairs is not None else pretraining_pairs()
    picks = rng.integers(len(allowed), size=n)
    sizes = rng.integers(2, size=n)
    return [Item(allowed[p][1], allowed[p][0], SIZES[z]) for p, z in zip(picks, sizes, strict=True)]


def checkpoint_dir() -> Path:
    """Where the shipped world CLIP lives (open_clip ``local-dir:`` layout)."""
    return Path(__file__).resolve().parent / "assets" / "world_clip"


def pretraining_pairs() -> list[tuple[str, str]]:
    return [(c, s) for s in SHAPES for c in COLOUR_NAMES if (c, s) not in HELD_OUT_PAIRS]


def all_pairs() -> list[tuple[str, str]]:
    return [(c, s) for s in SHAPES for c in COLOUR_NAMES]


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
    """What ``negprompt world export`` writes: ID shapes (any colour), near-OOD shapes, far-OOD noise."""

    id_shapes: tuple[str, ...]
    ood_shapes: tuple[str, ...]
    train_shapes: tuple[str, ...]  # the ID shapes that get training images (the rest are names only)
    shots: int = 16
    test_per_class: int = 50
    far: int = 300
    seed: int = 0
    calib_per_class: int = 20  # held-out ID images of every ID shape, for threshold calibration


def default_spec(seed: int = 0, n_id: int = 6, n_train: int | None = None, **counts: int) -> WorldSpec:
    order = [SHAPES[i] for i in np.random.default_rng(seed).permutation(len(SHAPES))]
    id_shapes = tuple(order[:n_id])
    return WorldSpec(id_shapes=id_shapes, ood_shapes=tuple(order[n_id:]),
                     train_shapes=id_shapes[: n_train or n_id], seed=seed, **counts)


EXPORT_FOLDERS = ("train", "test", "calib", "ood_near", "ood_far")
EXPORT_FILES = ("train_names.txt", "id_names.txt")


def remove_export(root: Path) -> None:
    """Delete what an earlier export wrote into ``root`` (and nothing else), so a new one cannot mix with it."""
    import shutil

    for name in EXPORT_FOLDERS:
        shutil.rmtree(Path(root) / name, ignore_errors=True)
    for name in EXPORT_FILES:
        (Path(root) / name).unlink(missing_ok=True)


def export_world(root: Path, spec: WorldSpec) -> dict[str, Path]:
    """Write the ImageFolder trees and name lists; each split has its own seeded random stream."""
    for shape in (*spec.id_shapes, *spec.ood_shapes):
        if shape not in SHAPES:
            raise ValueError(f"unknown shape {shape!r}; shapes: {', '.join(SHAPES)}")
    root = Path(root)
    colours = all_pairs()

    def items(shape: str, n: int, rng: np.random.Generator) -> list[Item]:
        return sample_items(n, rng, pairs=[p for p in colours if p[1] == shape])

    paths = {"train": root / "train", "test": root / "test", "ood_near": root / "ood_near",
             "ood_far": root / "ood_far", "calib": root / "calib"}
    for index, (split, shapes, n) in enumerate((("train", spec.train_shapes, spec.shots),
                                                ("test", spec.id_shapes, spec.test_per_class),
                                                ("ood_near", spec.ood_shapes, spec.test_per_class))):
        rng = np.random.default_rng([spec.seed, index])
        export_folder(paths[split], {s: items(s, n, rng) for s in shapes}, rng)
    export_images(paths["ood_far"], render_far_ood(spec.far, np.random.default_rng([spec.seed, 3])))
    if spec.calib_per_class > 0:
        rng = np.random.default_rng([spec.seed, 4])
        export_folder(paths["calib"], {s: items(s, spec.calib_per_class, rng) for s in spec.id_shapes}, rng)
    (root / "train_names.txt").write_text("".join(f"{s}\n" for s in sorted(spec.train_shapes)))
    (root / "id_names.txt").write_text("".join(f"{s}\n" for s in sorted(spec.id_shapes)))
    paths["train_names"], paths["id_names"] = root / "train_names.txt", root / "id_names.txt"
    return paths
