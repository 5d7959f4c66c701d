"""The perceptual fingerprint survives the copies people make, and tells different pictures apart."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from governance.fingerprint import MATCH_MAX_DISTANCE, distance, phash


def _picture(seed: int) -> np.ndarray:
    """A photo-like test picture: a lit background and a few solid objects, with sensor noise."""
    from PIL import ImageDraw

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:384, 0:384] / 384
    light = rng.uniform(0.3, 1.0, 3) * (1 - 0.5 * np.hypot(x - rng.uniform(), y - rng.uniform()))[..., None]
    img = Image.fromarray(np.clip(light * 255, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 7))):
        x0, y0 = rng.integers(0, 300, 2)
        w, h = rng.integers(40, 200, 2)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape([int(x0), int(y0), int(x0 + w), int(y0 + h)], fill=colour)
    noisy = np.asarray(img, dtype=np.float64) + rng.normal(0, 4, (384, 384, 3))
    return np.clip(noisy, 0, 255).astype(np.uint8)


def _jpeg(a: np.ndarray, q: int = 85) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "JPEG", quality=q, subsampling=0)
    return np.asarray(Image.open(buf).convert("RGB"))


def test_copies_match_and_other_pictures_do_not() -> None:
    pictures = [_picture(s) for s in range(12)]
    hashes = [phash(p) for p in pictures]
    for p, h in zip(pictures, hashes, strict=True):
        half = np.asarray(Image.fromarray(p).resize((192, 192), Image.Resampling.LANCZOS))
        assert distance(h, phash(half)) <= MATCH_MAX_DISTANCE
        assert distance(h, phash(_jpeg(p))) <= MATCH_MAX_DISTANCE
    cross = [distance(a, b) for i, a in enumerate(hashes) for b in hashes[i + 1 :]]
    assert min(cross) > MATCH_MAX_DISTANCE


def test_hash_is_64_bits_hex_and_deterministic() -> None:
    p = _picture(3)
    assert phash(p) == phash(p.copy()) and len(phash(p)) == 16
    int(phash(p), 16)
