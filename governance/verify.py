"""`atelier verify FILE`: did Atelier make this file, from what, and was it altered?

Four independent signals, each reported with its evidence:

- bytes: the SHA-256 of the file against every published image;
- C2PA: the file's manifest, validated against the configured trust anchors;
- watermark: the 48-bit payload decoded from the pixels against every published payload
  (the SDXL detector's thresholds: 36 or more matching bits is "very likely");
- fingerprint: the perceptual hash against every published image's.

Verdict: `tampered` when a manifest is present but its signature or hashes fail; `original` when
the bytes are a published image's; `derived` when no bytes match but the watermark or the
fingerprint (or an intact Atelier manifest) points to a published image; else `unknown`.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image as PILImage
from PIL import UnidentifiedImageError
from sqlalchemy import select
from sqlalchemy.orm import Session

from governance import fingerprint, watermark
from governance.credentials import read_credentials
from governance.errors import InvalidInput
from governance.records import Image
from governance.trace import trace_image

VERDICT_EXIT_CODES = {"original": 0, "derived": 10, "tampered": 11, "unknown": 12}
_MIME = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp", "TIFF": "image/tiff", "GIF": "image/gif"}


def _nearest_watermark(session: Session, decoded: int) -> tuple[Image | None, int]:
    rows = session.execute(
        select(Image.id, Image.watermark_payload).where(
            Image.status == "published", Image.watermark_payload.is_not(None)
        )
    ).all()
    if not rows:
        return None, 0
    payloads = np.array([int(p, 16) for _, p in rows], dtype=np.uint64)
    diff = payloads ^ np.uint64(decoded)
    distances = np.array([int(d).bit_count() for d in diff])
    best = int(distances.argmin())
    return session.get(Image, rows[best][0]), watermark.WATERMARK_BITS - int(distances[best])


def _nearest_fingerprint(session: Session, digest: str) -> tuple[Image | None, int]:
    rows = session.execute(
        select(Image.id, Image.phash).where(Image.status == "published", Image.phash.is_not(None))
    ).all()
    if not rows:
        return None, 64
    best_id, best = min(((i, fingerprint.distance(digest, p)) for i, p in rows), key=lambda t: t[1])
    return session.get(Image, best_id), best


def verify_file(session: Session, path: Path, trust_anchors_pem: bytes | None) -> dict[str, Any]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror}") from None
    try:
        with PILImage.open(io.BytesIO(data)) as probe:
            fmt = probe.format or ""
    except (UnidentifiedImageError, OSError):
        raise InvalidInput(f"{path} is not an image file Atelier can read (PNG, JPEG, WebP, TIFF)") from None
    signals: dict[str, Any] = {}
    candidates: dict[str, Image] = {}

    sha256 = hashlib.sha256(data).hexdigest()
    exact = session.scalar(select(Image).where(Image.sha256 == sha256, Image.status == "published"))
    signals["bytes"] = {"sha256": sha256, "matches_image": exact.id if exact else None}

    context = None
    if trust_anchors_pem:
        import c2pa

        context = c2pa.Context.from_dict({"trust": {"trust_anchors": trust_anchors_pem.decode()}})
    creds = read_credentials(data, _MIME.get(fmt), context)
    signals["c2pa"] = creds.to_dict()
    if creds.intact and creds.atelier and creds.atelier.get("image_id"):
        manifest_image = session.get(Image, creds.atelier["image_id"])
        if manifest_image is not None and manifest_image.status == "published":
            candidates["c2pa"] = manifest_image

    try:
        with PILImage.open(io.BytesIO(data)) as img:
            pixels = np.asarray(img.convert("RGB"))
    except Exception as exc:  # noqa: BLE001 - damaged pixel data is evidence, not a crash
        pixels = None
        signals["pixels"] = {"readable": False, "error": str(exc).splitlines()[0][:200]}
    if pixels is not None:
        h, w = pixels.shape[:2]
        if min(h, w) >= watermark.MIN_SIDE_PX:
            decoded = watermark.decode(pixels)
            match, matched = _nearest_watermark(session, decoded)
            verdict = watermark.verdict_for(matched) if match else "none"
            signals["watermark"] = {
                "decoded": f"{decoded:012x}", "best_match": match.id if match else None,
                "matched_bits": matched, "verdict": verdict,
            }
            if match is not None and matched >= watermark.VERY_LIKELY_MIN_MATCH:
                candidates["watermark"] = match
        else:
            signals["watermark"] = {"decoded": None, "verdict": "too small to decode", "size": [w, h]}
        digest = fingerprint.phash(pixels)
        near, dist = _nearest_fingerprint(session, digest)
        signals["fingerprint"] = {
            "phash": digest, "nearest": near.id if near else None, "distance": dist,
            "match": near is not None and dist <= fingerprint.MATCH_MAX_DISTANCE,
        }
        if near is not None and dist <= fingerprint.MATCH_MAX_DISTANCE:
            candidates["fingerprint"] = near

    if creds.present and not creds.intact:
        verdict = "tampered"
    elif exact is not None:
        verdict = "original"
    elif candidates:
        verdict = "derived"
    else:
        verdict = "unknown"
    image = exact or candidates.get("c2pa") or candidates.get("watermark") or candidates.get("fingerprint")
    return {
        "file": str(path),
        "verdict": verdict,
        "image_id": image.id if image else None,
        # what a manifest claims, even a broken one: where a tampered file says it came from
        "claimed_image_id": (creds.atelier or {}).get("image_id"),
        "identified_by": sorted(k for k, v in candidates.items() if image is not None and v.id == image.id)
        + (["bytes"] if exact else []),
        "signals": signals,
        "trace": trace_image(session, image) if image is not None else None,
    }
