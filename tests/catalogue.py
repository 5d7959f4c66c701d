"""Catalogue-like images rendered here (no downloads), for checks that depend on what pictures look like.

SDXL in production makes product shots: one object with a soft shadow on a pure white, near-white,
off-white, grey, studio-sweep, pastel, saturated or dark background, often with a printed label.
The tiny random models make noise, which hides every weakness of a watermark or a thumbnail; these
images do not. Each is deterministic (its name seeds it), RGB uint8.

    catalogue_set(sizes=(512, 1024))      # the bench's whole set: every category x product x colour
    catalogue_subset()                    # a small cross-section for `make test`
    photographs()                         # real photographs shipped inside scikit-image (if installed)
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

BACKGROUNDS: dict[str, tuple[int, int, int] | tuple[tuple[int, int, int], tuple[int, int, int]]] = {
    "pure-white": (255, 255, 255),
    "near-white": (252, 252, 252),
    "off-white": (245, 241, 232),
    "grey": (190, 190, 192),
    "studio-sweep": ((255, 255, 255), (200, 200, 204)),  # top to bottom
    "pastel": (250, 218, 221),
    "pastel-mint": (214, 242, 226),
    "saturated": (230, 20, 35),
    "saturated-blue": (10, 70, 235),
    "dark": (18, 18, 20),
}
CATEGORY_OF = {
    "pure-white": "pure-white",
    "near-white": "near-white",
    "off-white": "off-white",
    "grey": "grey",
    "studio-sweep": "studio-sweep",
    "pastel": "pastel",
    "pastel-mint": "pastel",
    "saturated": "saturated",
    "saturated-blue": "saturated",
    "dark": "dark",
}
PRODUCT_COLOURS = {
    "white": (244, 244, 241),
    "black": (28, 28, 30),
    "red": (200, 30, 40),
    "navy": (30, 45, 95),
    "beige": (215, 195, 160),
    "green": (70, 150, 80),
    "chrome": (170, 175, 180),
}
PRODUCTS = ("bottle", "box", "ball", "mug", "shoe")


@dataclass(frozen=True)
class CatalogueImage:
    name: str
    category: str  # the background category ("photograph" for real photographs)
    pixels: np.ndarray


def _seed(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big")


def _background(kind: str, h: int, w: int) -> np.ndarray:
    spec = BACKGROUNDS[kind]
    if isinstance(spec[0], tuple):
        top, bottom = (np.array(c, dtype=np.float32) for c in spec)  # type: ignore[arg-type]
        t = np.clip((np.arange(h, dtype=np.float32) / (h - 1) - 0.35) / 0.5, 0, 1)[:, None, None]
        t = t * t * (3 - 2 * t)  # smoothstep: the sweep's curve
        return np.broadcast_to(top * (1 - t) + bottom * t, (h, w, 3)).copy()
    return np.broadcast_to(np.array(spec, dtype=np.float32), (h, w, 3)).copy()


def _product_mask(product: str, h: int, w: int) -> np.ndarray:
    """Anti-aliased coverage (float 0-1) of the product's silhouette, centred, ~40-60% of the frame."""
    mask = np.zeros((h * 2, w * 2), np.uint8)  # drawn at 2x, then averaged down: soft edges
    s = 2 * min(h, w) / 512
    cx, cy = w, h

    def i(v: float) -> int:
        return int(round(v))

    if product == "bottle":
        cv2.rectangle(mask, (i(cx - 70 * s), i(cy - 60 * s)), (i(cx + 70 * s), i(cy + 170 * s)), 255, -1)
        cv2.ellipse(mask, (cx, i(cy - 60 * s)), (i(70 * s), i(40 * s)), 0, 180, 360, 255, -1)
        cv2.rectangle(mask, (i(cx - 22 * s), i(cy - 170 * s)), (i(cx + 22 * s), i(cy - 80 * s)), 255, -1)
    elif product == "box":
        pts = np.array(
            [
                [cx - 150 * s, cy - 60 * s],
                [cx - 40 * s, cy - 130 * s],
                [cx + 150 * s, cy - 100 * s],
                [cx + 150 * s, cy + 110 * s],
                [cx + 40 * s, cy + 170 * s],
                [cx - 150 * s, cy + 120 * s],
            ]
        )
        cv2.fillPoly(mask, [pts.round().astype(np.int32)], 255)
    elif product == "ball":
        cv2.circle(mask, (cx, cy), i(150 * s), 255, -1)
    elif product == "mug":
        cv2.rectangle(mask, (i(cx - 110 * s), i(cy - 120 * s)), (i(cx + 90 * s), i(cy + 130 * s)), 255, -1)
        cv2.ellipse(mask, (i(cx + 95 * s), cy), (i(70 * s), i(80 * s)), 0, -90, 90, 255, i(26 * s))
    else:  # shoe
        cv2.ellipse(mask, (cx, i(cy + 40 * s)), (i(200 * s), i(80 * s)), 0, 0, 360, 255, -1)
        cv2.ellipse(mask, (i(cx - 80 * s), i(cy - 20 * s)), (i(90 * s), i(110 * s)), 0, 0, 360, 255, -1)
    return cv2.resize(mask, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32) / 255


def render_product(
    background: str,
    product: str,
    colour: str,
    size: int,
    *,
    grain: float = 0.0,
    label: bool = False,
) -> np.ndarray:
    """One product shot: background, soft contact shadow, shaded product, optional label and sensor grain."""
    h = w = size
    rng = np.random.default_rng(_seed(f"{background}/{product}/{colour}/{size}/{grain}/{label}"))
    img = _background(background, h, w)
    cover = _product_mask(product, h, w)
    # soft shadow: the silhouette squashed onto the floor, offset, blurred
    shadow = cv2.resize(cover, (w, h // 3), interpolation=cv2.INTER_AREA)
    floor = np.zeros_like(cover)
    top = int(h * 0.52)
    floor[top : top + shadow.shape[0]] = shadow[: h - top]
    k = max(3, (size // 16) | 1)
    floor = cv2.GaussianBlur(floor, (k * 2 + 1, k * 2 + 1), k / 1.5)
    img *= (1 - 0.35 * floor)[..., None]
    # shading: a key light from the upper left, a rim of darkening at the silhouette's edge, a highlight
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    light = 0.85 + 0.25 * (1 - (x / w + y / h) / 2) - 0.1 * ((x - w / 2) / (w / 2)) ** 2
    rim = cv2.GaussianBlur(cover, (0, 0), size / 60)
    hl = np.exp(-(((x - w * 0.42) / (w * 0.05)) ** 2 + ((y - h * 0.4) / (h * 0.12)) ** 2))
    base = np.array(PRODUCT_COLOURS[colour], dtype=np.float32)
    body = base * (light * (0.75 + 0.25 * rim))[..., None] + 60 * hl[..., None]
    img = img * (1 - cover[..., None]) + body * cover[..., None]
    if label:  # a printed label with text: the fine detail catalogue images carry
        y0, y1, x0, x1 = int(h * 0.5), int(h * 0.62), int(w * 0.38), int(w * 0.62)
        img[y0:y1, x0:x1] = img[y0:y1, x0:x1] * 0.2 + 0.8 * np.array([250, 250, 245], np.float32)
        canvas = np.ascontiguousarray(np.clip(img[y0:y1, x0:x1], 0, 255).astype(np.uint8))
        cv2.putText(
            canvas,
            "ATELIER",
            (int(canvas.shape[1] * 0.06), int(canvas.shape[0] * 0.65)),
            cv2.FONT_HERSHEY_DUPLEX,
            size / 900,
            (20, 20, 25),
            max(1, size // 400),
            cv2.LINE_AA,
        )
        img[y0:y1, x0:x1] = canvas.astype(np.float32)
    if grain:
        img += rng.normal(0, grain, img.shape).astype(np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _variants() -> Iterator[tuple[str, str, str, float, bool]]:
    """(background, product, colour, grain, label): every background with several products and colours."""
    colours = list(PRODUCT_COLOURS)
    for bi, background in enumerate(BACKGROUNDS):
        picks = [("white", 0.0, False), ("white", 2.0, True)] if background in ("pure-white", "near-white") else []
        for j in range(6 - len(picks)):
            colour = colours[(bi * 3 + j) % len(colours)]
            if colour == "black" and background == "dark":
                colour = "chrome"
            picks.append((colour, 2.0 if j % 2 else 0.0, j % 3 == 0))
        for j, (colour, grain, label) in enumerate(picks):
            yield background, PRODUCTS[(bi + j) % len(PRODUCTS)], colour, grain, label


def catalogue_set(sizes: tuple[int, ...] = (512, 1024)) -> Iterator[CatalogueImage]:
    """The whole rendered set: 10 backgrounds (8 categories) x 6 products/colours x sizes."""
    for size in sizes:
        for background, product, colour, grain, label in _variants():
            name = f"{background}/{product}-{colour}{'-grain' if grain else ''}{'-label' if label else ''}/{size}"
            yield CatalogueImage(
                name,
                CATEGORY_OF[background],
                render_product(background, product, colour, size, grain=grain, label=label),
            )


def catalogue_subset() -> list[CatalogueImage]:
    """A cross-section for `make test`: every category at 512 px, white on white with and without grain."""
    picks = [
        ("pure-white", "bottle", "white", 0.0, False),
        ("pure-white", "box", "white", 2.0, True),
        ("pure-white", "mug", "red", 0.0, True),
        ("near-white", "ball", "white", 0.0, False),
        ("off-white", "shoe", "beige", 2.0, False),
        ("grey", "box", "navy", 0.0, True),
        ("studio-sweep", "bottle", "chrome", 0.0, False),
        ("pastel", "ball", "green", 0.0, False),
        ("saturated", "mug", "white", 0.0, False),
        ("saturated-blue", "shoe", "beige", 2.0, False),
        ("dark", "bottle", "chrome", 0.0, True),
    ]
    return [
        CatalogueImage(
            f"{b}/{p}-{c}{'-grain' if g else ''}/512", CATEGORY_OF[b], render_product(b, p, c, 512, grain=g, label=lab)
        )
        for b, p, c, g, lab in picks
    ]


PHOTOGRAPHS = (
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "rocket.jpg",
    "motorcycle_left.png",
    "hubble_deep_field.jpg",
    "retina.jpg",
    "color.png",
)


def photographs(min_side: int = 256) -> list[CatalogueImage]:
    """Real photographs that scikit-image ships in its wheel (no download); [] when it is not installed."""
    import importlib.util

    from PIL import Image

    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        return []
    folder = Path(next(iter(spec.submodule_search_locations))) / "data"
    out = []
    for name in PHOTOGRAPHS:
        path = folder / name
        if not path.exists():
            continue
        with Image.open(path) as im:
            pixels = np.asarray(im.convert("RGB"))
        if min(pixels.shape[:2]) >= min_side:
            out.append(CatalogueImage(f"photo/{name}", "photograph", np.ascontiguousarray(pixels)))
    return out
