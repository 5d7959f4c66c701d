"""Invisible watermark: embed an identifying 48-bit payload into every image, and verify it.

Entry points (the benchmarks and outside checks call them; they use the scheme in force):

- :func:`payload_for_image` (image id -> 48-bit payload: the first 6 bytes of its SHA-256);
- :func:`embed` ``(pixels, payload)`` -> marked pixels;
- :func:`verify` ``(pixels, expected)`` -> :class:`WatermarkCheck` with ``matched_bits``, ``total_bits``,
  a ``verdict`` and ``ok``.

Schemes (every version ever used stays readable; each image records the one that marked it):

==================================  ======  ==========================================================
scheme                               bits    what
==================================  ======  ==========================================================
``atelier-dctss/1`` (in force)       64      keyed spread spectrum in the luma DCT of 8x8 blocks
                                             (``governance.watermark_spread``): 48 payload bits + 16
                                             check bits derived from them
``invisible-watermark dwtDct``       48      the SDXL default, Atelier's first scheme
                                             (``governance.watermark_dwtdct``); read only
==================================  ======  ==========================================================

Verdicts of ``atelier-dctss/1`` (64 bits). Its keyed signs make every bit of an unmarked image (or
one marked under another key or with another payload) a fair coin, so the matched count is
Binomial(64, 1/2) there; the bound is the chance that an unmarked image reaches the threshold:

=============== ================== ==========================================
matched bits    verdict            P(unmarked image reaches it)
=============== ================== ==========================================
56 - 64         ``very_likely``    <= 2.8e-10 (the only ``ok`` verdict)
52 - 55         ``likely``         <= 2.3e-7
45 - 51         ``uncertain``
0 - 44          ``none``           (unmarked images match 32 on average)
=============== ================== ==========================================

The legacy scheme keeps the SDXL reference detector's thresholds (36 / 34 / 29 of 48).

``score`` (``atelier-dctss`` only) is the correlation of the soft bits with the expected codeword,
normalised so that on an unmarked image ``P(score >= t) <= exp(-t^2 / 2)`` (Hoeffding: a sum of
keyed random signs). Marked images score about 40-64 right after embedding. ``verify`` in
``governance.verify`` uses it to attribute a file among *all* published images:
:func:`attribution_min_score` is the score that keeps the false-attribution chance below 1e-6 for
that many candidates and search hypotheses.

Keys: ``atelier-dctss`` is keyed (:class:`WatermarkKey`); without the key nobody can read, remove
with certainty or forge the mark. Production keys come from settings (a key file or a KMS callback,
``flows.runtime``); ``atelier keys init`` writes a development key marked as such.
:data:`PUBLIC_TEST_KEY`, used when no key is passed, is published in this file: fine for benchmarks
and outside checks, never for published images (the runtime never uses it).

Pixels are uint8 ``H x W x 3`` RGB arrays in and out. Nothing here is ever skipped: an image smaller
than 256 px on either side, or of the wrong dtype or shape, raises :class:`WatermarkError`.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from governance import watermark_dwtdct as legacy
from governance import watermark_spread as spread
from governance.errors import GovernanceCheckFailed, InvalidInput
from governance.keyring import read_ring, write_development_ring

WATERMARK_BITS = 48  # payload bits
MIN_SIDE_PX = 256
SCHEME_DCTSS = f"{spread.SCHEME}/{spread.VERSION}"
SCHEME_DWTDCT = "invisible-watermark dwtDct"  # the string Atelier recorded before schemes were versioned
DEFAULT_SCHEME = SCHEME_DCTSS
SCHEMES = (SCHEME_DCTSS, SCHEME_DWTDCT)
SDXL_REFERENCE_PAYLOAD = legacy.SDXL_REFERENCE_PAYLOAD
CHECK_BITS = spread.CODE_BITS - WATERMARK_BITS

# (very_likely, likely, above "none") minimum matched bits, per scheme
THRESHOLDS = {SCHEME_DCTSS: (56, 52, 45), SCHEME_DWTDCT: (36, 34, 29)}
VERY_LIKELY_MIN_MATCH, LIKELY_MIN_MATCH, _UNCERTAIN_MIN = THRESHOLDS[DEFAULT_SCHEME]
NONE_MAX_MATCH = _UNCERTAIN_MIN - 1
ATTRIBUTION_FALSE_RATE = 1e-6


class WatermarkError(GovernanceCheckFailed, RuntimeError):
    """The image cannot carry or be checked for a watermark (too small, wrong dtype or shape)."""


@dataclass(frozen=True)
class WatermarkKey:
    """A secret that lays out the keyed scheme's chips. ``key_id`` (a hash) is recorded, never the secret."""

    secret: bytes
    development: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.secret, bytes) or len(self.secret) < 16:
            raise InvalidInput("a watermark key must be at least 16 bytes (32 hex digits)")

    @property
    def key_id(self) -> str:
        return "wk-" + hashlib.sha256(b"atelier watermark key id\0" + self.secret).hexdigest()[:16]

    def __repr__(self) -> str:  # never print the secret
        return f"WatermarkKey({self.key_id}{', development' if self.development else ''})"


PUBLIC_TEST_KEY = WatermarkKey(
    hashlib.sha256(b"atelier public test watermark key - NOT FOR PRODUCTION").digest(), development=True
)
KEY_FILE = "watermark-key.txt"
DEV_KEY_HEADER = "# Atelier DEVELOPMENT watermark key - NOT FOR PRODUCTION (made by `atelier keys init`)"


def ensure_development_key(path: Path, rotate: bool = False) -> list[WatermarkKey]:
    """The development key ring at ``path``, made (mode 0600, marked NOT FOR PRODUCTION) when missing.

    ``rotate`` puts a new current key first and keeps the earlier ones after it, so images marked before
    stay verifiable. A ring that is not a development ring is never touched."""
    earlier: list[bytes] = []
    if path.exists():
        ring = load_key_ring(path)
        if not rotate:
            return ring
        if not ring[0].development:
            raise GovernanceCheckFailed(f"{path} is not a development key ring: rotate production keys in your KMS")
        earlier = [k.secret for k in ring]
    write_development_ring(
        path, DEV_KEY_HEADER, "the current key first; earlier keys after it verify older images", earlier
    )
    return load_key_ring(path)


def load_key_ring(path: Path) -> list[WatermarkKey]:
    """The watermark key ring at ``path`` (governance.keyring: the current key first, earlier keys after it)."""
    keys, development = read_ring(
        path, "watermark key", "ATELIER_WATERMARK_KEY_FILE / ATELIER_WATERMARK_KEY_CALLBACK", DEV_KEY_HEADER
    )
    return [WatermarkKey(k, development=development) for k in keys]


def key_from_callback(spec: str) -> WatermarkKey:
    """``package.module:function`` returning the key's bytes (a KMS or HSM derives it; it never sits on disk)."""
    from governance.credentials import load_callback

    fn = load_callback(spec, "watermark key callback")
    try:
        secret = fn()
    except Exception as exc:  # noqa: BLE001 - whatever the hook raises, no key means no publishing
        raise GovernanceCheckFailed(f"watermark key callback {spec!r} failed: {exc}") from None
    if not isinstance(secret, bytes):
        raise GovernanceCheckFailed(f"watermark key callback {spec!r} must return bytes, got {type(secret).__name__}")
    return WatermarkKey(secret)


def payload_for_image(image_id: str) -> int:
    """The 48-bit payload of one image: the first 6 bytes of ``sha256(image_id.encode("utf-8"))``, big-endian."""
    if not isinstance(image_id, str) or not image_id:
        raise ValueError(f"image_id must be a non-empty str, got {image_id!r}")
    return int.from_bytes(hashlib.sha256(image_id.encode("utf-8")).digest()[:6], "big")


def bits_of(payload: int) -> list[int]:
    """The 48 bits of ``payload``, most significant first (the order the reference detector uses)."""
    _check_payload(payload)
    return [(payload >> (WATERMARK_BITS - 1 - i)) & 1 for i in range(WATERMARK_BITS)]


def codeword_for(payload: int) -> list[int]:
    """``atelier-dctss``'s 64 embedded bits: the payload, then 16 check bits from SHA-256 of it."""
    check = int.from_bytes(hashlib.sha256(b"atelier-dctss check\0" + payload.to_bytes(6, "big")).digest()[:2], "big")
    return bits_of(payload) + [(check >> (CHECK_BITS - 1 - i)) & 1 for i in range(CHECK_BITS)]


@dataclass(frozen=True)
class WatermarkReading:
    """What one scheme reads out of some pixels, before comparing with any payload."""

    scheme: str
    key_id: str | None
    payload: int  # the 48 payload bits as read (hard decisions)
    soft: np.ndarray | None  # atelier-dctss: one z per code bit (0 = no evidence); None for dwtDct
    offset: tuple[int, int] = (0, 0)  # pixel offset of the grid found (a cropped copy), (0, 0) unsearched
    hypotheses: int = 1  # how many grid positions were tried to find it


@dataclass(frozen=True)
class WatermarkCheck:
    """The outcome of reading a watermark back and comparing it with the payload expected."""

    expected: int
    decoded: int
    matched_bits: int
    total_bits: int
    verdict: str  # "very_likely" | "likely" | "uncertain" | "none"
    scheme: str = DEFAULT_SCHEME
    key_id: str | None = None
    score: float | None = None  # atelier-dctss: normalised correlation, <= exp(-t^2/2) tail when unmarked
    offset: tuple[int, int] = (0, 0)
    hypotheses: int = 1

    @property
    def ok(self) -> bool:
        return self.verdict == "very_likely"


def embed(
    pixels: np.ndarray, payload: int, *, key: WatermarkKey | None = None, scheme: str = DEFAULT_SCHEME
) -> np.ndarray:
    """Return a copy of ``pixels`` (uint8 HxWx3 RGB) carrying ``payload``; deterministic."""
    _check_payload(payload)
    _check_scheme(scheme)
    _check_pixels(pixels)
    if scheme == SCHEME_DWTDCT:
        return legacy.embed(pixels, bits_of(payload))
    return spread.embed(pixels, codeword_for(payload), (key or PUBLIC_TEST_KEY).secret)


def read(
    pixels: np.ndarray, *, key: WatermarkKey | None = None, scheme: str = DEFAULT_SCHEME, search: bool = False
) -> WatermarkReading:
    """Read whatever ``scheme`` finds in ``pixels``; ``search`` also tries every grid offset (crops)."""
    _check_scheme(scheme)
    _check_pixels(pixels)
    if scheme == SCHEME_DWTDCT:
        return WatermarkReading(scheme, None, legacy.decode(pixels), None)
    return read_luma(spread.luma(pixels), key=key, search=search)


def read_luma(y: np.ndarray, *, key: WatermarkKey | None = None, search: bool = False) -> WatermarkReading:
    """``atelier-dctss`` reading from luma alone (BT.601 Y, float or uint8 such as Pillow's "L"): what
    ``verify`` uses on files of any size without holding their RGB pixels."""
    if y.ndim != 2 or min(y.shape) < MIN_SIDE_PX:
        raise WatermarkError(f"luma of shape {y.shape} is too small to read: both sides must be at least {MIN_SIDE_PX}")
    key = key or PUBLIC_TEST_KEY
    if search:
        soft, offset, hypotheses = spread.decode_searching(y, key.secret)
    else:
        soft, offset, hypotheses = spread.decode(y, key.secret), (0, 0), 1
    payload = 0
    for z in soft[:WATERMARK_BITS]:
        payload = (payload << 1) | int(z > 0)
    return WatermarkReading(SCHEME_DCTSS, key.key_id, payload, soft, offset, hypotheses)


def compare(reading: WatermarkReading, expected: int) -> WatermarkCheck:
    """Compare a reading with the payload ``expected``: matched bits, verdict and (keyed scheme) score."""
    _check_payload(expected)
    if reading.soft is None:
        matched = WATERMARK_BITS - (reading.payload ^ expected).bit_count()
        return WatermarkCheck(
            expected, reading.payload, matched, WATERMARK_BITS, verdict_for(matched, reading.scheme), reading.scheme
        )
    want = np.asarray(codeword_for(expected)) * 2 - 1
    signs = np.sign(reading.soft)
    matched = int((signs == want).sum())  # a bit with no evidence (z = 0) never counts as matched
    score = float((reading.soft * want).sum() / math.sqrt(len(want)))
    return WatermarkCheck(
        expected,
        reading.payload,
        matched,
        len(want),
        verdict_for(matched, reading.scheme),
        reading.scheme,
        reading.key_id,
        score,
        reading.offset,
        reading.hypotheses,
    )


def verify(
    pixels: np.ndarray, expected: int, *, key: WatermarkKey | None = None, scheme: str = DEFAULT_SCHEME
) -> WatermarkCheck:
    """Decode ``pixels`` and compare with ``expected``; ``.ok`` only for ``very_likely``."""
    _check_payload(expected)
    return compare(read(pixels, key=key, scheme=scheme), expected)


def decode(pixels: np.ndarray, *, key: WatermarkKey | None = None, scheme: str = DEFAULT_SCHEME) -> int:
    """The 48-bit payload ``scheme`` reads out of ``pixels``, whatever is there."""
    return read(pixels, key=key, scheme=scheme).payload


def verdict_for(matched_bits: int, scheme: str = DEFAULT_SCHEME) -> str:
    very_likely, likely, uncertain = THRESHOLDS[scheme]
    if matched_bits >= very_likely:
        return "very_likely"
    if matched_bits >= likely:
        return "likely"
    if matched_bits >= uncertain:
        return "uncertain"
    return "none"


def attribution_min_score(candidates: int, hypotheses: int = 1, false_rate: float = ATTRIBUTION_FALSE_RATE) -> float:
    """The ``score`` a reading must reach to name one of ``candidates`` images after trying ``hypotheses``
    grid positions, so that an unmarked file is attributed with chance at most ``false_rate``
    (union bound over candidates x hypotheses of the ``exp(-t^2/2)`` tail)."""
    return math.sqrt(2 * math.log(max(1, candidates) * max(1, hypotheses) / false_rate))


def _check_payload(payload: int) -> None:
    if isinstance(payload, bool) or not isinstance(payload, int) or not 0 <= payload < 1 << WATERMARK_BITS:
        raise ValueError(f"payload must be an int in [0, 2**{WATERMARK_BITS}), got {payload!r}")


def _check_scheme(scheme: str) -> None:
    if scheme not in SCHEMES:
        raise ValueError(f"watermark scheme must be one of {SCHEMES}, got {scheme!r}")


def _check_pixels(pixels: np.ndarray) -> None:
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
