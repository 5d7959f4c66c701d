"""Perceptual fingerprint: a 64-bit DCT hash (pHash) that survives resizing and re-encoding.

    grey (ITU-R 601 luma) -> 32x32 (area average) -> 2-D DCT-II -> top-left 8x8 without the DC term
    -> 1 where above the median -> 64 bits, hex

Two images are "the same picture" when their hashes differ in at most `MATCH_MAX_DISTANCE` bits.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image

HASH_SIZE = 8
SAMPLE_SIZE = 32
MATCH_MAX_DISTANCE = 10  # of 64 bits; unrelated images sit around 32


@lru_cache(maxsize=1)
def _dct_matrix(n: int = SAMPLE_SIZE) -> np.ndarray:
    k = np.arange(n)[:, None]
    x = np.arange(n)[None, :]
    m = np.cos(np.pi * (2 * x + 1) * k / (2 * n)) * np.sqrt(2 / n)
    m[0] /= np.sqrt(2)
    return m


def phash(pixels: np.ndarray) -> str:
    """64-bit perceptual hash of an RGB (or grey) uint8 image, as 16 hex digits."""
    img = Image.fromarray(pixels).convert("L").resize((SAMPLE_SIZE, SAMPLE_SIZE), Image.Resampling.BOX)
    d = _dct_matrix()
    coeffs = d @ np.asarray(img, dtype=np.float64) @ d.T
    low = coeffs[:HASH_SIZE, :HASH_SIZE].flatten()[1:]  # drop DC: it only says how bright
    bits = np.concatenate([[0], low > np.median(low)])  # 64 bits, the first always 0
    return f"{int(''.join('1' if b else '0' for b in bits), 2):016x}"


def distance(a: str, b: str) -> int:
    return (int(a, 16) ^ int(b, 16)).bit_count()
