"""Atelier's keyed spread-spectrum watermark in the luma DCT of 8x8 blocks (scheme ``atelier-dctss``, version 1).

Why not dwtDct (the SDXL default, kept as the legacy scheme): it writes into the U chroma channel by
quantising one coefficient per 4x4 block, so near-white pixels clip, a flat colour reads back the
same bit whatever was embedded, and the majority vote per bit is dominated by those blocks: product
shots on white, Atelier's main use, failed to verify. This scheme is built for them.

Embedding, per 8x8 pixel block of the image (the JPEG grid, from the top-left corner):

1. four "chips", the orthonormal 2-D DCT coefficients (1,1), (1,2), (2,1), (2,2) of luma (BT.601 Y,
   as JPEG computes it), each carry one bit of the 64-bit codeword (48-bit payload, then 16 check
   bits derived from it); which bit and a sign (+/-1) come from a keyed pseudo-random layout of a
   32 x 32 block tile (256 px) repeated over the image, every bit on 64 chips of each tile;
2. each chip gets ``amplitude * sign * (+1 if bit else -1)`` added to its coefficient: the same
   luma change on R, G and B (no tint), rounded back to uint8;
3. pixels that are pure white (255, 255, 255) are never changed: blocks of pure white stay exactly
   white, as marketplaces require;
4. the amplitude follows the block (perceptual masking): lower on flat blocks, higher on textured
   ones, zero where the block is pure white.

Decoding needs no original: per chip, the image's coefficient ``c``, clipped to a robust scale so
that one strong edge cannot outvote many weak chips; per bit, ``z = sum(sign * c) / sqrt(sum(c^2))``.
Because the signs are keyed and independent of the picture, on an unmarked image (or one marked with
another key) every ``z`` is a sum of terms with random signs: mean 0, variance 1, *whatever the
picture* (flat colours and pure white give ``c = 0`` and drop out instead of voting one way). So each
hard bit is a fair coin there, and the number of matching bits is Binomial(64, 1/2), which is what
the verdict thresholds rely on (``governance.watermark``).

The chips sit at 1/16 and 1/8 cycles per pixel on JPEG's own 8x8 grid: they survive JPEG at the usual
qualities (luma is not subsampled by 4:2:0), halving and re-enlarging, and brightness changes
(a scale keeps the signs). A crop moves the grid: :func:`decode_searching` tries every pixel offset
(64) and tile offset (1024) and keeps the strongest.
"""

from __future__ import annotations

import hashlib
import hmac
from functools import lru_cache

import numpy as np

SCHEME = "atelier-dctss"
VERSION = 1
CODE_BITS = 64  # 48-bit payload + 16 check bits
BLOCK = 8
TILE = 32  # blocks per tile side (256 px)
CHIPS = ((1, 1), (1, 2), (2, 1), (2, 2))
AMPLITUDE = 9.0  # orthonormal-DCT units per chip on an average block (pixel RMS ~ AMPLITUDE / 4)
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _dct_basis() -> np.ndarray:
    """(4, 64): the orthonormal 8x8 DCT-II basis images of the four chips, flattened row-major."""
    n = np.arange(BLOCK)
    rows = []
    for u, v in CHIPS:
        cu = np.sqrt(2 / BLOCK) * np.cos((2 * n + 1) * u * np.pi / (2 * BLOCK))
        cv = np.sqrt(2 / BLOCK) * np.cos((2 * n + 1) * v * np.pi / (2 * BLOCK))
        rows.append(np.outer(cu, cv).ravel())
    return np.asarray(rows, dtype=np.float32)


_BASIS = _dct_basis()


@lru_cache(maxsize=16)
def layout(key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """The keyed tile layout: ``(bit index, sign)``, each ``TILE x TILE x 4``; every bit on 64 chips."""
    seed = hmac.new(key, f"{SCHEME}/{VERSION}/layout".encode(), hashlib.sha256).digest()
    rng = np.random.default_rng(np.frombuffer(seed, dtype=np.uint32))
    n = TILE * TILE * len(CHIPS)
    bit = rng.permutation(np.arange(n) % CODE_BITS).reshape(TILE, TILE, len(CHIPS))
    sign = rng.choice(np.array([-1.0, 1.0], dtype=np.float32), size=(TILE, TILE, len(CHIPS)))
    bit.setflags(write=False)
    sign.setflags(write=False)
    return bit, sign


def _blocks(channel: np.ndarray) -> np.ndarray:
    """(nbi, nbj, 64) view of the full 8x8 blocks of a 2-D array."""
    nbi, nbj = channel.shape[0] // BLOCK, channel.shape[1] // BLOCK
    c = channel[: nbi * BLOCK, : nbj * BLOCK]
    return c.reshape(nbi, BLOCK, nbj, BLOCK).transpose(0, 2, 1, 3).reshape(nbi, nbj, BLOCK * BLOCK)


def _tiled(a: np.ndarray, nbi: int, nbj: int) -> np.ndarray:
    """The tile layout repeated over an nbi x nbj block grid."""
    return np.tile(a, (-(-nbi // TILE), -(-nbj // TILE), 1))[:nbi, :nbj]


def luma(pixels: np.ndarray) -> np.ndarray:
    return pixels.astype(np.float32) @ _LUMA


def embed(pixels: np.ndarray, codeword: list[int], key: bytes) -> np.ndarray:
    """``pixels`` (uint8 HxWx3) with ``codeword`` (CODE_BITS bits) embedded under ``key``."""
    h, w = pixels.shape[:2]
    nbi, nbj = h // BLOCK, w // BLOCK
    rgb = pixels[: nbi * BLOCK, : nbj * BLOCK].astype(np.float32)
    y = rgb @ _LUMA
    blocks = _blocks(y)
    bit_idx, sign = layout(key)
    bits = np.asarray(codeword, dtype=np.float32)[_tiled(bit_idx, nbi, nbj)] * 2 - 1  # +1 / -1
    # Perceptual masking: the block's AC energy (std of luma) raises the amplitude where the eye
    # cannot see it; flat blocks carry less; pure-white pixels carry nothing (their mask is 0).
    white = (pixels[: nbi * BLOCK, : nbj * BLOCK] == 255).all(axis=2)
    white_blocks = _blocks(white.astype(np.float32))
    activity = blocks.std(axis=2)
    gain = np.clip(0.3 + activity / 18.0, 0.3, 4.0)
    gain = np.where(white_blocks.min(axis=2) > 0, 0.0, gain)  # all-white block: untouched
    chips = (AMPLITUDE * gain)[..., None] * _tiled(sign, nbi, nbj) * bits  # (nbi, nbj, 4)
    delta = chips @ _BASIS  # (nbi, nbj, 64)
    delta *= 1.0 - white_blocks  # pure-white pixels inside mixed blocks stay white
    d = delta.reshape(nbi, nbj, BLOCK, BLOCK).transpose(0, 2, 1, 3).reshape(nbi * BLOCK, nbj * BLOCK)
    out = pixels.copy()
    out[: nbi * BLOCK, : nbj * BLOCK] = np.clip(np.rint(rgb + d[..., None]), 0, 255).astype(np.uint8)
    return out


def chip_values(y: np.ndarray, strip_blocks: int = 64) -> np.ndarray:
    """(nbi, nbj, 4): the four chip coefficients of every full 8x8 block of luma ``y`` (float or uint8),
    computed in strips of block rows so that a large image never needs a float copy of itself."""
    nbi, nbj = y.shape[0] // BLOCK, y.shape[1] // BLOCK
    out = np.empty((nbi, nbj, len(CHIPS)), dtype=np.float32)
    for i in range(0, nbi, strip_blocks):
        rows = y[i * BLOCK : min(nbi, i + strip_blocks) * BLOCK]
        out[i : i + strip_blocks] = _blocks(rows.astype(np.float32, copy=False)) @ _BASIS.T
    return out


_DEAD_ZONE = 0.01  # below this a chip is float rounding of a flat block: no evidence either way


def _robust(c: np.ndarray) -> np.ndarray:
    """Zero the chips of flat blocks; clip the rest to 3x their median magnitude."""
    mags = np.abs(c)
    live = mags > _DEAD_ZONE
    if not live.any():
        return np.zeros_like(c)
    tau = 3.0 * float(np.median(mags[live]))
    return np.where(live, np.clip(c, -tau, tau), 0.0).astype(np.float32)


def _fold(c: np.ndarray) -> np.ndarray:
    """(TILE, TILE, 4): the chips summed over tiles, by their position in the tile (blocks past the last
    whole tile count at their position too)."""
    nbi, nbj = c.shape[:2]
    pi, pj = -(-nbi // TILE) * TILE, -(-nbj // TILE) * TILE
    pad = np.zeros((pi, pj, len(CHIPS)), dtype=np.float32)
    pad[:nbi, :nbj] = c
    return pad.reshape(pi // TILE, TILE, pj // TILE, TILE, len(CHIPS)).sum(axis=(0, 2))


def soft_bits(c: np.ndarray, key: bytes) -> np.ndarray:
    """Per code bit, the normalised correlation ``z`` (0 where there is no evidence).

    The layout repeats every tile, so chips at the same tile position share their sign: they are
    summed first (:func:`_fold`) and the sign test runs over the tile's positions, which are the
    independent ones. Then ``P(z >= t) <= exp(-t^2 / 2)`` on any picture the key did not mark."""
    bit_idx, sign = layout(key)
    f = _fold(_robust(c)).ravel()
    bi = bit_idx.ravel()
    num = np.bincount(bi, weights=f * sign.ravel(), minlength=CODE_BITS)
    den = np.sqrt(np.bincount(bi, weights=f * f, minlength=CODE_BITS))
    return np.divide(num, den, out=np.zeros(CODE_BITS), where=den > 1e-6)


def decode(y: np.ndarray, key: bytes) -> np.ndarray:
    """Soft bits read from luma ``y`` at the grid of the top-left corner (what publish checks)."""
    return soft_bits(chip_values(y), key)


@lru_cache(maxsize=16)
def _search_patterns(key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """The layout's per-bit sign pattern and membership, Fourier-transformed over the tile (once per key)."""
    bit_idx, sign = layout(key)
    onehot = np.zeros((CODE_BITS, TILE, TILE, len(CHIPS)), dtype=np.float32)
    bi, bj, bk = np.indices(bit_idx.shape)
    onehot[bit_idx, bi, bj, bk] = sign
    return np.conj(np.fft.fft2(onehot, axes=(1, 2))), np.conj(np.fft.fft2(np.abs(onehot), axes=(1, 2)))


def decode_searching(y: np.ndarray, key: bytes) -> tuple[np.ndarray, tuple[int, int], int]:
    """Soft bits at the strongest of all 64 pixel offsets x 1024 tile offsets (for cropped copies).

    Returns ``(soft bits, (dy, dx) pixel offset, hypotheses tried)``. The strength of a hypothesis is
    ``sum(z^2)``; searching many hypotheses raises the chance of a strong random one, which the
    caller's threshold must account for (``watermark.attribution_min_score`` counts the hypotheses).
    """
    pattern_f, member_f = _search_patterns(key)
    best: tuple[float, np.ndarray, tuple[int, int]] | None = None
    # Per pixel offset, fold the chips by tile position; each tile offset is then a circular shift of
    # the folded tile against the layout: one 2-D cross-correlation per bit, all shifts at once by FFT.
    for dy in range(BLOCK):
        for dx in range(BLOCK):
            fold = _fold(_robust(chip_values(y[dy:, dx:])))
            num = np.fft.ifft2(np.fft.fft2(fold, axes=(0, 1))[None] * pattern_f, axes=(1, 2)).real.sum(axis=3)
            den2 = np.fft.ifft2(np.fft.fft2(fold * fold, axes=(0, 1))[None] * member_f, axes=(1, 2)).real.sum(axis=3)
            z = np.divide(num, np.sqrt(np.maximum(den2, 0)), out=np.zeros_like(num), where=den2 > 1e-6)
            strength = (z * z).sum(axis=0)
            di, dj = np.unravel_index(int(strength.argmax()), strength.shape)
            if best is None or strength[di, dj] > best[0]:
                best = (float(strength[di, dj]), z[:, di, dj].astype(np.float64), (dy, dx))
    assert best is not None
    return best[1], best[2], BLOCK * BLOCK * TILE * TILE
