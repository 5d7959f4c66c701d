"""Legacy scheme ``invisible-watermark dwtDct``: what Atelier marked images with before ``atelier-dctss``.

Kept so that every image marked before the change stays verifiable (``governance.watermark`` reads
every scheme version ever used); nothing new is marked with it. Entry points are in
``governance.watermark``; this module is the scheme itself.

The watermark is invisible-watermark's frequency-domain method ``dwtDct``, the one SDXL 1.0 uses
(Stability AI's reference payload is :data:`SDXL_REFERENCE_PAYLOAD`). Atelier embeds a payload
derived from the image id instead (:func:`payload_for_image`), so that a published image can be
tied back to its record; verification counts how many of the 48 bits read back match.

Verdicts follow the SDXL reference detector's published thresholds:

=============== ===================== ============================================
matched bits    verdict               meaning
=============== ===================== ============================================
36 - 48         ``"very_likely"``     watermark present (the only ``ok`` verdict)
34 - 35         ``"likely"``
29 - 33         ``"uncertain"``
0 - 28          ``"none"``            no watermark (random images match about 24)
=============== ===================== ============================================

Pixels are uint8 ``H x W x 3`` RGB arrays in and out.

Implementation
--------------
``dwtDct`` is computed here by a vectorised numpy reimplementation of the library's algorithm
(``imwatermark/maxDct.py``, ``EmbedMaxDct``), which spends its time in a Python loop over every
4x4 block: on a 1024x1024 image the library takes about 165 ms of CPU to embed and 110 ms to
decode, this module about 16 ms and 6 ms (``bench/governance.py``). It is bit-compatible with the
library, and the tests prove it on noise, gradients, picture-like, saturated and flat images of
several sizes (256x256 to 1024x1024, odd sizes included): :func:`embed` returns exactly the
library's pixels (no value differs, not even by 1), and either decoder reads the other's marks with
identical bits. The steps, each performed with the same floating-point operations in the same order
as the library:

1. ``cv2.cvtColor`` to YUV (uint8; RGB2YUV on RGB equals the library's BGR2YUV on BGR), keeping the
   U channel of the largest multiple-of-4 crop;
2. one-level Haar DWT (PyWavelets' ``dwt2`` arithmetic: ``s*x0 + s*x1`` and ``s*x0 - s*x1`` with
   ``s = 1/sqrt(2)`` as float64, rows then columns; ``pywt`` is used only to read ``s``);
3. in every 4x4 block of the approximation band, in row-major block order, block ``n`` carrying
   bit ``n % 48``: the coefficient of largest magnitude other than the block's first is set to
   ``sign * (|v| // 36 + 0.25 + 0.5 * bit) * 36`` (the library's "DCT" step applies no DCT);
4. inverse Haar DWT, with the horizontal and vertical detail bands swapped as the library does
   (``idwt2((cA, (cV, cH, cD)))``, which transposes every 2x2 pixel block's detail), truncated to
   uint8 by the same numpy assignment into the U channel (8-bit U lies in 17-239 and a mark moves a
   pixel by at most 13.5, so nothing leaves 0-255), then back to RGB with ``cv2.cvtColor``;
5. decoding reads ``|v| % 36 > 18`` per block and takes, per bit, the mean over its blocks
   ``* 255 > 127``, as the library does.

``method="dwtDctSvd"`` still runs through the library itself (on BGR copies).

Unlike the diffusers SDXL watermarker, nothing here is ever skipped: an image smaller than
256 px on either side, or of the wrong dtype or shape, raises :class:`WatermarkError`.

Known limits of ``dwtDct`` (measured on this library version, see tests): it only writes into the
U chroma channel, so it cannot mark saturated areas (a flat white image reads back as unmarked, with
either method); and on smooth images whose chroma changes across the frame (a two-colour gradient)
it reads back only 30-41 of 48 bits depending on the payload, so about half of such images fail.
Textured images and smooth images of constant chroma read back 46-48 bits. On synthetic
picture-like images made of large flat, often saturated, soft-edged shapes (the tests' and the
bench's ``photo_like``) half of the 1024x1024 images read back fewer than 36 bits (24-48), while a
real photograph read back 48/48 for every payload tried. ``method="dwtDctSvd"``
(same library) reads back 48/48 on those gradients at about four times the CPU cost. Either way,
callers must :func:`verify` after :func:`embed` and treat any verdict other than ``very_likely``
as a failed image, never as a warning; the method used must be recorded with the image.
"""

from __future__ import annotations

import cv2
import numpy as np
import pywt

WATERMARK_BITS = 48
SDXL_REFERENCE_PAYLOAD = 0xB3EC907BB19E  # generative-models' WATERMARK_MESSAGE, see shared/licences/README.md
VERY_LIKELY_MIN_MATCH = 36
LIKELY_MIN_MATCH = 34
NONE_MAX_MATCH = 28
MIN_SIDE_PX = 256
WATERMARK_METHOD = "dwtDct"
SUPPORTED_METHODS = ("dwtDct", "dwtDctSvd")


def embed(pixels: np.ndarray, bits: list[int], *, method: str = WATERMARK_METHOD) -> np.ndarray:
    """Return a copy of checked ``pixels`` (uint8 HxWx3 RGB) carrying the 48 ``bits``; deterministic."""
    _check_method(method)
    if method != "dwtDct":
        from imwatermark import WatermarkEncoder  # imports torch (~0.5 GB): only for the library's own methods

        encoder = WatermarkEncoder()
        encoder.set_watermark("bits", list(bits))
        marked_bgr = encoder.encode(_to_bgr(pixels), method)
        return np.ascontiguousarray(marked_bgr[:, :, ::-1], dtype=np.uint8)

    yuv = cv2.cvtColor(np.ascontiguousarray(pixels), cv2.COLOR_RGB2YUV)
    rows, cols = (pixels.shape[0] // 4) * 4, (pixels.shape[1] // 4) * 4
    approx, detail_h, detail_v, detail_d = _haar_dwt2(yuv[:rows, :cols, 1])
    blocks, rr, cc = _strongest_coefficients(approx)
    bit = np.asarray(bits, dtype=np.float64)[np.arange(blocks.size) % WATERMARK_BITS]
    quantised = ((np.abs(blocks) // _SCALE + 0.25) + 0.5 * bit) * _SCALE
    approx[rr, cc] = np.where(blocks >= 0.0, quantised, -quantised)
    # The library reconstructs with the horizontal and vertical detail bands swapped; so do we.
    yuv[:rows, :cols, 1] = _haar_idwt2(approx, detail_v, detail_h, detail_d)
    return cv2.cvtColor(yuv, cv2.COLOR_YUV2RGB)


def decode(pixels: np.ndarray, *, method: str = WATERMARK_METHOD) -> int:
    """Read the 48-bit payload out of checked ``pixels`` (uint8 HxWx3 RGB), whatever is there."""
    _check_method(method)
    if method != "dwtDct":
        from imwatermark import WatermarkDecoder

        bits = WatermarkDecoder("bits", WATERMARK_BITS).decode(_to_bgr(pixels), method)
    else:
        yuv = cv2.cvtColor(np.ascontiguousarray(pixels), cv2.COLOR_RGB2YUV)
        rows, cols = (pixels.shape[0] // 4) * 4, (pixels.shape[1] // 4) * 4
        blocks, _, _ = _strongest_coefficients(_haar_approx(yuv[:rows, :cols, 1]))
        scores = np.remainder(np.abs(blocks), _SCALE) > 0.5 * _SCALE
        which = np.arange(blocks.size) % WATERMARK_BITS
        means = np.bincount(which, weights=scores, minlength=WATERMARK_BITS) / np.bincount(
            which, minlength=WATERMARK_BITS
        )
        bits = means * 255 > 127
    value = 0
    for bit in bits:
        value = (value << 1) | int(bool(bit))
    return value


# --- dwtDct, vectorised (see "Implementation" in the module docstring) -------------------------------

_SCALE = 36  # EmbedMaxDct's scale for the U channel (scales=[0, 36, 36]; only channels 0 and 1 are visited)
_BLOCK = 4  # EmbedMaxDct's block size


def _haar_filter() -> float:
    wavelet = pywt.Wavelet("haar")
    s = wavelet.dec_lo[0]
    if (list(wavelet.dec_lo), list(wavelet.dec_hi), list(wavelet.rec_lo), list(wavelet.rec_hi)) != (
        [s, s],
        [-s, s],
        [s, s],
        [s, -s],
    ):  # pragma: no cover - a PyWavelets that changed its Haar filters would break bit-compatibility
        raise RuntimeError("PyWavelets' Haar filters are not the expected [s, s] / [-s, s] pair")
    return s


_S = _haar_filter()


def _haar_approx(channel: np.ndarray) -> np.ndarray:
    """The approximation band of ``pywt.dwt2(channel, "haar")``, with the same float64 arithmetic."""
    p = np.multiply(channel, _S, dtype=np.float64)
    q = (p[0::2] + p[1::2]) * _S
    return q[:, 0::2] + q[:, 1::2]


def _haar_dwt2(channel: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``cA, cH, cV, cD`` of ``pywt.dwt2(channel, "haar")`` (axis 0 then axis 1), bit for bit."""
    p = np.multiply(channel, _S, dtype=np.float64)
    low = (p[0::2] + p[1::2]) * _S
    high = (p[0::2] - p[1::2]) * _S
    return (
        low[:, 0::2] + low[:, 1::2],  # aa
        high[:, 0::2] + high[:, 1::2],  # da: horizontal detail
        low[:, 0::2] - low[:, 1::2],  # ad: vertical detail
        high[:, 0::2] - high[:, 1::2],  # dd
    )


def _haar_idwt2(approx: np.ndarray, horizontal: np.ndarray, vertical: np.ndarray, diagonal: np.ndarray) -> np.ndarray:
    """``pywt.idwt2((approx, (horizontal, vertical, diagonal)), "haar")``, bit for bit (axis 1, then axis 0)."""
    n0, n1 = approx.shape
    low = np.empty((n0, 2 * n1))
    high = np.empty((n0, 2 * n1))
    for out, a, d in ((low, approx, vertical), (high, horizontal, diagonal)):
        a = a * _S
        d = d * _S
        np.add(a, d, out=out[:, 0::2])
        np.subtract(a, d, out=out[:, 1::2])
    low *= _S
    high *= _S
    image = np.empty((2 * n0, 2 * n1))
    np.add(low, high, out=image[0::2])
    np.subtract(low, high, out=image[1::2])
    return image


def _strongest_coefficients(approx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per 4x4 block of ``approx`` (row-major block order): the value of the coefficient of largest
    magnitude among the block's 15 coefficients after the first (the first such on ties, as
    ``np.argmax`` does in the library), and its row and column in ``approx``."""
    nbi, nbj = approx.shape[0] // _BLOCK, approx.shape[1] // _BLOCK
    blocks = approx[: nbi * _BLOCK, : nbj * _BLOCK].reshape(nbi, _BLOCK, nbj, _BLOCK).transpose(0, 2, 1, 3)
    tiles = blocks.reshape(nbi * nbj, _BLOCK * _BLOCK)
    pos = np.abs(tiles[:, 1:]).argmax(axis=1) + 1
    index = np.arange(nbi * nbj)
    rows = (index // nbj) * _BLOCK + pos // _BLOCK
    cols = (index % nbj) * _BLOCK + pos % _BLOCK
    return tiles[index, pos], rows, cols


def _check_method(method: str) -> None:
    if method not in SUPPORTED_METHODS:
        raise ValueError(f"watermark method must be one of {SUPPORTED_METHODS}, got {method!r}")


def _to_bgr(pixels: np.ndarray) -> np.ndarray:
    """The library's input: a contiguous uint8 BGR copy of a checked RGB image."""
    return np.ascontiguousarray(pixels[:, :, ::-1])
