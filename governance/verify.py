"""`atelier verify FILE...`: did Atelier make this file, from what, and was it altered?

Four independent signals, each reported with its evidence:

- bytes: the SHA-256 of the file against every published image;
- C2PA: the file's manifest, validated against the configured trust anchors (the CA files of the
  key ring: current and earlier);
- watermark: the payload read with every key of the watermark key ring (``atelier-dctss``) and by the
  legacy dwtDct decoder, against every published image marked that way; a copy that does not read
  at the original grid (a crop) is searched over every grid offset;
- fingerprint: the perceptual hash against every published image's.

Only evidence Atelier can trust names an image:

- a manifest counts only when its signer chains to the trust anchors (state ``Trusted``). A manifest
  that is merely ``Valid`` (well signed, by anyone: a self-made CA with Atelier's names is enough) is
  shown as an *unverified claim*, never with the record's people or prompt;
- a watermark match counts when its score clears :func:`governance.watermark.attribution_min_score`
  for the number of candidates and grid positions tried (false attribution <= 1e-6), and it reads
  as ``very_likely``;
- a fingerprint match (pHash within 10 of 64 bits) counts: it says the picture looks like ours.

Verdict: ``tampered`` when a manifest is present but its signature or hashes fail; ``original``
when the bytes are a published image's; ``derived`` when no bytes match but a trusted manifest, the
watermark or the fingerprint points to a published image; else ``unknown``. An untrusted manifest
plus a watermark match is ``derived`` by the watermark (someone re-signed an edited copy of ours);
the claim is reported beside it, flagged when it names another image.

Hostile files are refused before any pixel is decoded, with one line and exit code 2
(:class:`~governance.errors.InvalidInput`): not a regular file (folders are expanded by the CLI,
devices such as ``/dev/zero`` refused), larger than ``ATELIER_VERIFY_MAX_FILE_BYTES``, declaring more
than ``ATELIER_VERIFY_MAX_PIXELS`` pixels (decompression bombs), not an image, or pixel data that is
damaged or truncated (unless the file carries a manifest: then it is evidence, and such a file is
``tampered``). Pixels are read as luma only (Pillow "L"), so memory stays near one byte per
declared pixel plus the decoder's own frame.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image as PILImage
from PIL import UnidentifiedImageError
from sqlalchemy import select
from sqlalchemy.orm import Session

from governance import fingerprint, watermark
from governance.credentials import CredentialReport, read_credentials
from governance.errors import ExitCode, InvalidInput
from governance.records import Image
from governance.results import Result
from governance.trace import ImageTrace, trace_image

VERDICT_EXIT_CODES = {
    "original": ExitCode.OK,
    "derived": ExitCode.DERIVED,
    "tampered": ExitCode.TAMPERED,
    "unknown": ExitCode.UNKNOWN,
}
ERROR_EXIT_CODE = InvalidInput.exit_code  # a file that could not be checked at all
# several files: the exit code of the most serious outcome among them
SEVERITY = ("original", "derived", "unknown", "tampered", "error")
_MIME = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp", "TIFF": "image/tiff", "GIF": "image/gif"}
LEGACY_MAX_PIXELS = 16_000_000  # dwtDct images were SDXL outputs (<= 2 MP): larger files are not copies of one
SEARCH_MAX_PIXELS = 4_200_000  # the crop search (64 grid offsets) runs on files up to about 2048x2048


class DamagedPixels(InvalidInput):
    """The file is an image whose pixel data cannot be decoded (damaged or truncated)."""

    def __init__(self, message: str, fmt: str):
        super().__init__(message)
        self.fmt = fmt  # what its header said it is: the manifest is still read by it


@dataclass(frozen=True)
class VerifyLimits:
    max_pixels: int = 64_000_000
    max_file_bytes: int = 64 * 1024 * 1024


@dataclass(frozen=True)
class BytesSignal(Result):
    sha256: str
    matches_image: str | None  # the published image with exactly these bytes


@dataclass(frozen=True)
class C2paSignal(Result):
    """The file's C2PA manifest (`CredentialReport`) and how far it is trusted."""

    present: bool
    state: str | None  # "Trusted", "Valid" (signature fine, signer not anchored) or "Invalid"
    label: str | None
    signer: dict[str, Any]
    atelier: dict[str, Any] | None
    failures: list[str]
    error: str | None
    soft_binding: dict[str, Any] | None
    trusted: bool
    trust_anchors_configured: bool
    soft_binding_matches_pixels: bool | None = None  # None: no soft binding, or no watermark read


@dataclass(frozen=True)
class WatermarkSignal(Result):
    """The best watermark evidence; `decoded` is None when nothing could be read (too small, no key)."""

    verdict: str  # "very_likely" | "likely" | "uncertain" | "none" | "too small to decode" | "not checked"
    decoded: str | None = None  # the payload read, 12 hex digits
    scheme: str | None = None
    key_id: str | None = None
    best_match: str | None = None  # the published image whose payload is nearest
    matched_bits: int = 0
    total_bits: int | None = None
    score: float | None = None
    score_needed: float | None = None  # for attribution among this many candidates and grid positions
    offset: tuple[int, int] | None = None
    searched: bool = False  # found by the grid search (a crop)
    size: tuple[int, int] | None = None  # too small: the file's size
    reason: str | None = None  # not checked: why
    note: str | None = None  # checked in part: what was not


@dataclass(frozen=True)
class FingerprintSignal(Result):
    phash: str
    nearest: str | None
    distance: int
    match: bool


@dataclass(frozen=True)
class PixelsSignal(Result):
    readable: bool
    error: str


@dataclass(frozen=True)
class Signals(Result):
    """The four independent signals; those that could not be read are None (no pixels: no watermark)."""

    bytes: BytesSignal
    c2pa: C2paSignal
    watermark: WatermarkSignal | None = None
    fingerprint: FingerprintSignal | None = None
    pixels: PixelsSignal | None = None  # set only when the pixels could not be decoded


@dataclass(frozen=True)
class ManifestClaim(Result):
    """What a manifest says the file is, and whether that can be believed."""

    image_id: str
    verified: bool
    note: str


@dataclass(frozen=True)
class VerifyResult(Result):
    """`atelier verify` of one file. `verdict` "error" (with `error`) for a file that could not be checked."""

    file: str
    verdict: str  # original | derived | tampered | unknown | error
    image_id: str | None = None
    claimed_image_id: str | None = None  # what a manifest claims, even an untrusted or broken one
    claim: ManifestClaim | None = None
    identified_by: tuple[str, ...] = ()
    signals: Signals | None = None
    trace: ImageTrace | None = None
    error: str | None = None

    @property
    def exit_code(self) -> int:
        return exit_code_for([self.verdict])


# What a file can be identified as: a published image, or one withdrawn since (its trace then says
# so, with who withdrew it, when and why: a copy still in circulation is recognised for what it is).
IDENTIFIABLE = ("published", "withdrawn")


@dataclass
class Candidates:
    """What published images look like to the verifier: loaded once, used for every file of a run."""

    payloads: dict[tuple[str, str | None], tuple[np.ndarray, list[str]]] = field(default_factory=dict)
    phashes: tuple[np.ndarray, list[str]] = (np.zeros(0, dtype=np.uint64), [])

    @classmethod
    def load(cls, session: Session) -> Candidates:
        rows = session.execute(
            select(
                Image.id, Image.watermark_payload, Image.watermark_scheme, Image.watermark_key_id, Image.phash
            ).where(Image.status.in_(IDENTIFIABLE))
        ).all()
        groups: dict[tuple[str, str | None], tuple[list[int], list[str]]] = {}
        ph: list[int] = []
        ph_ids: list[str] = []
        for image_id, payload, scheme, key_id, phash in rows:
            if payload is not None:
                scheme = scheme if scheme in watermark.SCHEMES else watermark.SCHEME_DWTDCT
                group = groups.setdefault((scheme, key_id if scheme == watermark.SCHEME_DCTSS else None), ([], []))
                group[0].append(int(payload, 16))
                group[1].append(image_id)
            if phash is not None:
                ph.append(int(phash, 16))
                ph_ids.append(image_id)
        return cls(
            {k: (np.array(v[0], dtype=np.uint64), v[1]) for k, v in groups.items()},
            (np.array(ph, dtype=np.uint64), ph_ids),
        )


def _popcount(a: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0
        return np.bitwise_count(a)
    return np.unpackbits(a.view(np.uint8).reshape(-1, 8), axis=1).sum(axis=1)


def _nearest(values: np.ndarray, x: int) -> tuple[int | None, int]:
    """(index, Hamming distance) of the value nearest ``x``."""
    if values.size == 0:
        return None, 64
    d = _popcount(values ^ np.uint64(x))
    best = int(d.argmin())
    return best, int(d[best])


@lru_cache(maxsize=4)
def _trust_context(trust_anchors_pem: bytes) -> Any:
    """c2pa's validation context for these anchors: built once, not per file of a folder."""
    import c2pa

    return c2pa.Context.from_dict({"trust": {"trust_anchors": trust_anchors_pem.decode()}})


def read_file_checked(path: Path, limits: VerifyLimits) -> bytes:
    """The file's bytes, or one clear refusal: folders, devices, oversized files."""
    try:
        st = path.stat()
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror}") from None
    if path.is_dir():
        raise InvalidInput(f"{path} is a folder: pass image files (`atelier verify FOLDER` checks each file in it)")
    if not path.is_file():
        raise InvalidInput(f"{path} is not a regular file (a device, pipe or socket): pass an image file")
    if st.st_size > limits.max_file_bytes:
        raise InvalidInput(
            f"{path} is {st.st_size:,} bytes, over the limit of {limits.max_file_bytes:,} bytes "
            "(ATELIER_VERIFY_MAX_FILE_BYTES)"
        )
    try:
        with path.open("rb") as fh:
            data = fh.read(limits.max_file_bytes + 1)
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror}") from None
    if len(data) > limits.max_file_bytes:  # it grew while we read it
        raise InvalidInput(
            f"{path} is over the limit of {limits.max_file_bytes:,} bytes (ATELIER_VERIFY_MAX_FILE_BYTES)"
        )
    return data


def decode_luma_checked(path: Path, data: bytes, limits: VerifyLimits) -> tuple[str, np.ndarray, np.ndarray | None]:
    """(format, luma uint8 HxW, RGB pixels when small enough for the legacy decoder) or one clear refusal."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PILImage.DecompressionBombWarning)
            probe = PILImage.open(io.BytesIO(data))
    except PILImage.DecompressionBombError:
        raise InvalidInput(
            f"{path} declares an image far larger than any Atelier makes (a decompression bomb); nothing was decoded"
        ) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise InvalidInput(f"{path} is not an image file Atelier can read (PNG, JPEG, WebP, TIFF)") from None
    with probe:
        w, h = probe.size
        if w * h > limits.max_pixels:
            raise InvalidInput(
                f"{path} declares {w}x{h} pixels ({w * h / 1e6:.0f} MP), over the limit of "
                f"{limits.max_pixels / 1e6:.0f} MP (ATELIER_VERIFY_MAX_PIXELS); nothing was decoded"
            )
        fmt = probe.format or ""
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", PILImage.DecompressionBombWarning)
                probe.load()
                rgb = np.asarray(probe.convert("RGB")) if w * h <= LEGACY_MAX_PIXELS else None
                grey = probe.convert("L")
        except (OSError, ValueError, SyntaxError, EOFError, PILImage.DecompressionBombError) as exc:
            reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
            raise DamagedPixels(f"{path}: the pixel data is damaged or truncated ({reason})", fmt) from None
        probe.close()  # frees the decoded frame (leaving the `with` only closes the file)
    # Only the luma (one byte per pixel) goes on, copied once (np.asarray on a Pillow image copies twice).
    with grey:
        y = np.frombuffer(grey.tobytes(), dtype=np.uint8).reshape(h, w)
    return fmt, y, rgb


def watermark_signal(
    y: np.ndarray,
    rgb: np.ndarray | None,
    keys: list[watermark.WatermarkKey],
    cands: Candidates,
) -> tuple[WatermarkSignal, str | None]:
    """The best watermark evidence over every key and scheme; the image id when it is strong enough."""
    h, w = y.shape
    if min(h, w) < watermark.MIN_SIDE_PX:
        return WatermarkSignal(verdict="too small to decode", size=(w, h)), None

    def judge(reading: watermark.WatermarkReading, key_id: str | None) -> tuple[WatermarkSignal, str | None]:
        values, ids = cands.payloads.get((reading.scheme, key_id), (np.zeros(0, dtype=np.uint64), []))
        best, _ = _nearest(values, reading.payload)
        read = WatermarkSignal(
            verdict="none",
            scheme=reading.scheme,
            key_id=reading.key_id,
            decoded=f"{reading.payload:012x}",
            offset=reading.offset,
            searched=reading.hypotheses > 1,
        )
        if best is None:
            return read, None
        check = watermark.compare(reading, int(values[best]))
        image_id = ids[best]
        needed = None
        trusted = check.ok
        if check.score is not None:
            needed = watermark.attribution_min_score(len(ids), reading.hypotheses)
            trusted = trusted and check.score >= needed
        judged = replace(
            read,
            best_match=image_id,
            matched_bits=check.matched_bits,
            total_bits=check.total_bits,
            verdict=check.verdict,
            score=None if check.score is None else round(check.score, 2),
            score_needed=None if needed is None else round(needed, 2),
        )
        return judged, image_id if trusted else None

    no_key = "no watermark key configured: atelier-dctss marks cannot be read (ATELIER_WATERMARK_KEY_FILE)"
    if not keys and (rgb is None or (watermark.SCHEME_DWTDCT, None) not in cands.payloads):
        return WatermarkSignal(verdict="not checked", reason=no_key), None
    tried: list[tuple[WatermarkSignal, str | None]] = []
    for key in keys:
        tried.append(judge(watermark.read_luma(y, key=key), key.key_id))
    if rgb is not None and (watermark.SCHEME_DWTDCT, None) in cands.payloads:
        tried.append(judge(watermark.read(rgb, scheme=watermark.SCHEME_DWTDCT), None))
    if not any(image for _, image in tried) and h * w <= SEARCH_MAX_PIXELS:
        for key in keys:  # a crop moves the block grid: try every offset
            tried.append(judge(watermark.read_luma(y, key=key, search=True), key.key_id))
    found = [t for t in tried if t[1]]
    signal, image = (
        max(found, key=lambda t: t[0].score or 0)
        if found
        else max(tried, key=lambda t: (t[0].score or 0, t[0].matched_bits))
    )
    if not keys:  # only the legacy scheme could be read: say what was not
        signal = replace(signal, note=no_key)
    return signal, image


def verify_file(
    session: Session,
    path: Path,
    trust_anchors_pem: bytes | None,
    watermark_keys: list[watermark.WatermarkKey],
    limits: VerifyLimits | None = None,
    candidates: Candidates | None = None,
) -> VerifyResult:
    """Check one file; raises :class:`InvalidInput` (one line) for a file that cannot be checked."""
    limits = limits or VerifyLimits()
    cands = candidates if candidates is not None else Candidates.load(session)
    data = read_file_checked(path, limits)
    y: np.ndarray | None
    try:
        fmt, y, rgb = decode_luma_checked(path, data, limits)
        damaged = None
    except DamagedPixels as exc:  # evidence when a manifest says what the file should be, else an error
        damaged, fmt, y, rgb = exc, exc.fmt, None, None
    found: dict[str, Image] = {}  # signal -> the published image it points to

    sha256 = hashlib.sha256(data).hexdigest()
    exact = session.scalar(select(Image).where(Image.sha256 == sha256, Image.status.in_(IDENTIFIABLE)))

    context = _trust_context(trust_anchors_pem) if trust_anchors_pem else None
    creds: CredentialReport = read_credentials(data, _MIME.get(fmt), context)
    if damaged is not None and not creds.present:
        raise damaged
    claimed = (creds.atelier or {}).get("image_id")
    if creds.trusted and claimed:
        manifest_image = session.get(Image, claimed)
        if manifest_image is not None and manifest_image.status in IDENTIFIABLE:
            found["c2pa"] = manifest_image

    wm_signal = fp_signal = pixels_signal = None
    if y is None:
        pixels_signal = PixelsSignal(readable=False, error=str(damaged))
    else:
        wm_signal, wm_image = watermark_signal(y, rgb, watermark_keys, cands)
        if wm_image is not None and (marked := session.get(Image, wm_image)) is not None:
            found["watermark"] = marked
        digest = fingerprint.phash(y)
        index, dist = _nearest(cands.phashes[0], int(digest, 16))
        near = None if index is None else cands.phashes[1][index]
        matches = near is not None and dist <= fingerprint.MATCH_MAX_DISTANCE
        fp_signal = FingerprintSignal(phash=digest, nearest=near, distance=dist, match=matches)
        if near is not None and matches and (looks_alike := session.get(Image, near)) is not None:
            found["fingerprint"] = looks_alike

    if creds.present and not creds.intact:
        verdict = "tampered"
    elif exact is not None:
        verdict = "original"
    elif found:
        verdict = "derived"
    else:
        verdict = "unknown"
    image = exact or found.get("c2pa") or found.get("watermark") or found.get("fingerprint")
    soft = creds.soft_binding or {}
    soft_value = next((blk.get("value") for blk in soft.get("blocks") or [] if isinstance(blk, dict)), None)
    soft_matches = None  # the manifest's own record of the watermark, against what the pixels carry
    if soft_value is not None and wm_signal is not None and wm_signal.decoded is not None:
        soft_matches = wm_signal.decoded == soft_value
    claim = None
    if claimed:
        note = (
            "signed by a trusted signer"
            if creds.trusted
            else "the manifest's signer does not chain to Atelier's trust anchors: an unverified claim"
        )
        if image is not None and claimed != image.id:
            note += f"; the evidence points to image {image.id}, not the one claimed"
        claim = ManifestClaim(image_id=claimed, verified=creds.trusted, note=note)
    signals = Signals(
        bytes=BytesSignal(sha256=sha256, matches_image=exact.id if exact else None),
        c2pa=C2paSignal(
            present=creds.present,
            state=creds.state,
            label=creds.label,
            signer=creds.signer,
            atelier=creds.atelier,
            failures=creds.failures,
            error=creds.error,
            soft_binding=creds.soft_binding,
            trusted=creds.trusted,
            trust_anchors_configured=bool(trust_anchors_pem),
            soft_binding_matches_pixels=soft_matches,
        ),
        watermark=wm_signal,
        fingerprint=fp_signal,
        pixels=pixels_signal,
    )
    identified_by = sorted(k for k, v in found.items() if image is not None and v.id == image.id)
    return VerifyResult(
        file=str(path),
        verdict=verdict,
        image_id=image.id if image else None,
        claimed_image_id=claimed,
        claim=claim,
        identified_by=tuple(identified_by + (["bytes"] if exact else [])),
        signals=signals,
        trace=trace_image(session, image) if image is not None else None,
    )


def expand_paths(paths: Iterable[Path]) -> list[Path]:
    """Files as given; folders replaced by the files under them (sorted, hidden ones skipped)."""
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out.extend(
                sorted(
                    f
                    for f in p.rglob("*")
                    if not f.is_dir() and not any(part.startswith(".") for part in f.relative_to(p).parts)
                )
            )
        else:
            out.append(p)
    return out


def verify_files(
    session: Session,
    paths: Iterable[Path],
    trust_anchors_pem: bytes | None,
    watermark_keys: list[watermark.WatermarkKey],
    limits: VerifyLimits | None = None,
) -> Iterable[VerifyResult]:
    """`verify_file` over many files in one process (the published images are loaded once); a file that
    cannot be checked yields a result with verdict "error" and its `error`, and the others go on."""
    cands = Candidates.load(session)
    for path in paths:
        try:
            yield verify_file(session, path, trust_anchors_pem, watermark_keys, limits, cands)
        except InvalidInput as exc:
            yield VerifyResult(file=str(path), verdict="error", error=str(exc))


def exit_code_for(verdicts: Iterable[str]) -> int:
    """The exit code of the most serious outcome: error 2 > tampered 11 > unknown 12 > derived 10 > original 0."""
    worst = max(verdicts, key=SEVERITY.index, default="original")
    return ERROR_EXIT_CODE if worst == "error" else VERDICT_EXIT_CODES[worst]
