"""Invisible watermark: embed a 48-bit payload into every image, and verify it.

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

Pixels are uint8 ``H x W x 3`` RGB arrays in and out. The library works on OpenCV-style BGR
arrays, so channels are swapped on the way in and out. The library's own uint8 path is used for
both embedding and decoding, so the encoder and the decoder quantise in the same domain.

Unlike the diffusers SDXL watermarker, nothing here is ever skipped: an image smaller than
256 px on either side, or of the wrong dtype or shape, raises :class:`WatermarkError`.

Known limits of ``dwtDct`` (measured on this library version, see tests): it only writes into the
U chroma channel, so it cannot mark saturated areas (a flat white image reads back as unmarked, with
either method); and on smooth images whose chroma changes across the frame (a two-colour gradient)
it reads back only 30-41 of 48 bits depending on the payload, so about half of such images fail.
Textured images and smooth images of constant chroma read back 46-48 bits. ``method="dwtDctSvd"``
(same library) reads back 48/48 on those gradients at about four times the CPU cost. Either way,
callers must :func:`verify` after :func:`embed` and treat any verdict other than ``very_likely``
as a failed image, never as a warning; the method used must be recorded with the image.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
from imwatermark import WatermarkDecoder, WatermarkEncoder

WATERMARK_BITS = 48
SDXL_REFERENCE_PAYLOAD = 0xB3EC907BB19E  # generative-models' WATERMARK_MESSAGE, see shared/licences/README.md
VERY_LIKELY_MIN_MATCH = 36
LIKELY_MIN_MATCH = 34
NONE_MAX_MATCH = 28
MIN_SIDE_PX = 256
WATERMARK_METHOD = "dwtDct"
SUPPORTED_METHODS = ("dwtDct", "dwtDctSvd")


class WatermarkError(RuntimeError):
    """The image cannot carry or be checked for a watermark (too small, wrong dtype or shape)."""


def payload_for_image(image_id: str) -> int:
    """The 48-bit payload of one image: the first 6 bytes of ``sha256(image_id.encode("utf-8"))``, big-endian."""
    if not isinstance(image_id, str) or not image_id:
        raise ValueError(f"image_id must be a non-empty str, got {image_id!r}")
    return int.from_bytes(hashlib.sha256(image_id.encode("utf-8")).digest()[:6], "big")


def bits_of(payload: int) -> list[int]:
    """The 48 bits of ``payload``, most significant first (the order the reference detector uses)."""
    _check_payload(payload)
    return [(payload >> (WATERMARK_BITS - 1 - i)) & 1 for i in range(WATERMARK_BITS)]


@dataclass(frozen=True)
class WatermarkCheck:
    """The outcome of reading a watermark back and comparing it with the payload expected."""

    expected: int
    decoded: int
    matched_bits: int
    total_bits: int
    verdict: str  # "very_likely" | "likely" | "uncertain" | "none"

    @property
    def ok(self) -> bool:
        return self.verdict == "very_likely"


def embed(pixels: np.ndarray, payload: int, *, method: str = WATERMARK_METHOD) -> np.ndarray:
    """Return a copy of ``pixels`` (uint8 HxWx3 RGB) carrying ``payload``; deterministic."""
    _check_payload(payload)
    bgr = _to_bgr(pixels, method)
    encoder = WatermarkEncoder()
    encoder.set_watermark("bits", bits_of(payload))
    marked_bgr = encoder.encode(bgr, method)
    return np.ascontiguousarray(marked_bgr[:, :, ::-1], dtype=np.uint8)


def decode(pixels: np.ndarray, *, method: str = WATERMARK_METHOD) -> int:
    """Read the 48-bit payload out of ``pixels`` (uint8 HxWx3 RGB), whatever is there."""
    bgr = _to_bgr(pixels, method)
    bits = WatermarkDecoder("bits", WATERMARK_BITS).decode(bgr, method)
    value = 0
    for bit in bits:
        value = (value << 1) | int(bool(bit))
    return value


def verify(pixels: np.ndarray, expected: int, *, method: str = WATERMARK_METHOD) -> WatermarkCheck:
    """Decode ``pixels`` and compare with ``expected`` bit by bit; ``.ok`` only for ``very_likely``."""
    _check_payload(expected)
    decoded = decode(pixels, method=method)
    matched = WATERMARK_BITS - bin(decoded ^ expected).count("1")
    return WatermarkCheck(
        expected=expected,
        decoded=decoded,
        matched_bits=matched,
        total_bits=WATERMARK_BITS,
        verdict=_verdict(matched),
    )


def _verdict(matched_bits: int) -> str:
    if matched_bits >= VERY_LIKELY_MIN_MATCH:
        return "very_likely"
    if matched_bits >= LIKELY_MIN_MATCH:
        return "likely"
    if matched_bits > NONE_MAX_MATCH:
        return "uncertain"
    return "none"


def _check_payload(payload: int) -> None:
    if isinstance(payload, bool) or not isinstance(payload, int) or not 0 <= payload < 1 << WATERMARK_BITS:
        raise ValueError(f"payload must be an int in [0, 2**{WATERMARK_BITS}), got {payload!r}")


def _to_bgr(pixels: np.ndarray, method: str) -> np.ndarray:
    """Check the image and return it as a contiguous uint8 BGR array (a copy)."""
    if method not in SUPPORTED_METHODS:
        raise ValueError(f"watermark method must be one of {SUPPORTED_METHODS}, got {method!r}")
    if not isinstance(pixels, np.ndarray):
        raise WatermarkError(f"pixels must be a numpy uint8 HxWx3 RGB array, got {type(pixels).__name__}")
    if pixels.dtype != np.uint8:
        raise WatermarkError(f"pixels must be uint8 (0-255), got dtype {pixels.dtype}; convert before watermarking")
    if pixels.ndim != 3 or pixels.shape[2] != 3:
        raise WatermarkError(f"pixels must be HxWx3 RGB, got shape {pixels.shape}")
    height, width = pixels.shape[:2]
    if height < MIN_SIDE_PX or width < MIN_SIDE_PX:
        raise WatermarkError(
            f"image {height}x{width} (HxW) is too small to watermark: both sides must be at least {MIN_SIDE_PX} px"
        )
    return np.ascontiguousarray(pixels[:, :, ::-1])
