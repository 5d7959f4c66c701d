"""After safety: watermark, verify, encode, hash, provenance, upload, record.

Invariant 2: an image reaches the store only when it passed safety, its watermark was decoded
back from the exact bytes being published, and its provenance JSON is written beside it. An
image that fails any check is recorded as quarantined, with the reason, and never uploaded.

Every function here writes its audit event in the caller's transaction (invariant 3), and is
idempotent: an image that already has a record is left alone (invariant 4).
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image as PILImage
from sqlalchemy.orm import Session

from governance import watermark
from governance.audit import record_event
from governance.errors import GovernanceCheckFailed
from governance.records import Approval, Batch, Image, ModelVersion, Prompt, Run, image_id_for, utcnow
from governance.safety import SafetyResult
from governance.store import ObjectStore, image_key, provenance_key

PROVENANCE_SCHEMA = "atelier.provenance/1"


@dataclass(frozen=True)
class SafetyContext:
    model_id: str
    policy_version: str


def encode_png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    PILImage.fromarray(pixels, mode="RGB").save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    with PILImage.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"))


def _model_record(mv: ModelVersion) -> dict[str, Any]:
    return {
        "id": mv.id, "role": mv.role, "name": mv.name, "source": mv.source,
        "sha256": mv.sha256, "licence": mv.licence_id,
    }


def provenance_document(
    *, image_id: str, sha256: str, key: str, batch: Batch, approval: Approval, prompt: Prompt,
    image_index: int, seed: int, run: Run, safety: SafetyResult, safety_ctx: SafetyContext,
    check: watermark.WatermarkCheck,
) -> dict[str, Any]:
    licences = {mv.licence.id: mv.licence for mv in run.model_versions}
    return {
        "schema": PROVENANCE_SCHEMA,
        "image_id": image_id,
        "sha256": sha256,
        "key": key,
        "created_at": utcnow().isoformat(),
        "batch": {
            "id": batch.id, "purpose": batch.purpose, "requested_by": batch.requested_by.name,
            "content_sha256": batch.content_sha256,
        },
        "approval": {
            "id": approval.id, "approved_by": approval.decided_by.name,
            "content_sha256": approval.content_sha256, "at": approval.decided_at.isoformat(),
        },
        "prompt": {
            "id": prompt.id, "row_id": prompt.row_id, "text": prompt.prompt, "ref": prompt.ref,
            "seed": prompt.seed, "params": prompt.params(),
        },
        "image_index": image_index,
        "seed": str(seed),
        "run_id": run.id,
        "models": [_model_record(mv) for mv in run.model_versions],
        "licences": [
            {"id": lic.id, "name": lic.name, "url": lic.url, "text_sha256": lic.text_sha256,
             "obligations": lic.obligations, "use_restrictions": lic.restrictions}
            for lic in licences.values()
        ],
        "safety": {
            "model": safety_ctx.model_id, "policy": safety_ctx.policy_version,
            "scores": safety.scores, "verdict": safety.verdict,
        },
        "watermark": {
            "scheme": "invisible-watermark dwtDct", "bits": check.total_bits,
            "payload": f"{check.expected:012x}", "matched_bits": check.matched_bits,
        },
    }


def _image_record(
    image_id: str, prompt: Prompt, run: Run, image_index: int, seed: int, pixels: np.ndarray,
    safety: SafetyResult, safety_ctx: SafetyContext, status: str, reasons: list[str],
) -> Image:
    return Image(
        id=image_id, prompt_id=prompt.id, batch_id=prompt.batch_id, run_id=run.id, image_index=image_index,
        seed=str(seed), status=status, height=int(pixels.shape[0]), width=int(pixels.shape[1]),
        safety_model=safety_ctx.model_id, safety_policy=safety_ctx.policy_version,
        safety_scores=dict(safety.scores), safety_verdict=safety.verdict, safety_reasons=reasons,
    )


@dataclass(frozen=True)
class MarkedImage:
    """The pure, CPU-heavy part of publishing one image: safe to run in a worker pool (no DB, no store)."""

    image_id: str
    png: bytes
    sha256: str
    check: watermark.WatermarkCheck
    height: int
    width: int


def mark_and_encode(image_id: str, pixels: np.ndarray) -> MarkedImage:
    """Watermark, encode once, decode-verify once (from the very bytes to be published), hash."""
    payload = watermark.payload_for_image(image_id)
    try:
        marked = watermark.embed(pixels, payload)
    except watermark.WatermarkError as exc:
        raise GovernanceCheckFailed(f"image {image_id}: watermark could not be embedded: {exc}") from exc
    png = encode_png(marked)
    check = watermark.verify(decode_png(png), payload)
    return MarkedImage(image_id, png, hashlib.sha256(png).hexdigest(), check, pixels.shape[0], pixels.shape[1])


def finalize_image(
    session: Session,
    actor: str,
    store: ObjectStore,
    run: Run,
    approval: Approval,
    prompt: Prompt,
    image_index: int,
    seed: int,
    pixels: np.ndarray,
    safety: SafetyResult,
    safety_ctx: SafetyContext,
    marked: MarkedImage | None = None,
) -> Image:
    """Quarantine or publish one generated image; returns its record (the existing one on a re-run).

    `marked` is `mark_and_encode(image_id, pixels)` when the caller already ran it in a pool.
    """
    image_id = image_id_for(prompt.id, image_index)
    existing = session.get(Image, image_id)
    if existing is not None:
        return existing
    if safety.verdict != "passed":
        return _quarantine(session, actor, image_id, prompt, run, image_index, seed, pixels, safety, safety_ctx,
                           list(safety.reasons), check=None)
    if marked is None:
        marked = mark_and_encode(image_id, pixels)
    if marked.image_id != image_id:
        raise ValueError(f"marked image {marked.image_id} handed in for image {image_id}")
    check, sha256 = marked.check, marked.sha256
    if not check.ok:
        reason = f"watermark not verified: {check.matched_bits}/{check.total_bits} bits matched ({check.verdict})"
        return _quarantine(session, actor, image_id, prompt, run, image_index, seed, pixels, safety, safety_ctx,
                           [reason], check=check)

    key, prov_key = image_key(image_id, sha256), provenance_key(image_id, sha256)
    batch = session.get(Batch, prompt.batch_id)
    assert batch is not None
    doc = provenance_document(
        image_id=image_id, sha256=sha256, key=key, batch=batch, approval=approval, prompt=prompt,
        image_index=image_index, seed=seed, run=run, safety=safety, safety_ctx=safety_ctx, check=check,
    )
    metadata = {
        "image-id": image_id, "batch-id": batch.id, "approval-id": approval.id, "run-id": run.id,
        "model-sha256": ",".join(f"{mv.role}={mv.sha256[:16]}" for mv in run.model_versions),
    }
    store.put(prov_key, json.dumps(doc, indent=2, sort_keys=True).encode(), "application/json", metadata)
    stored = store.put(key, marked.png, "image/png", metadata)

    record = _image_record(image_id, prompt, run, image_index, seed, pixels, safety, safety_ctx, "published", [])
    record.watermark_payload = f"{check.expected:012x}"
    record.watermark_matched_bits = check.matched_bits
    record.sha256 = sha256
    record.store_url = store.url
    record.store_key = key
    record.store_version_id = stored.version_id
    record.provenance_key = prov_key
    session.add(record)
    session.flush()
    record_event(
        session, actor, "image.published", "image", image_id,
        {
            "batch_id": batch.id, "run_id": run.id, "prompt_id": prompt.id, "sha256": sha256,
            "store": store.url, "key": key, "version_id": stored.version_id,
            "watermark_matched_bits": check.matched_bits, "safety_verdict": safety.verdict,
        },
    )
    return record


def _quarantine(
    session: Session, actor: str, image_id: str, prompt: Prompt, run: Run, image_index: int, seed: int,
    pixels: np.ndarray, safety: SafetyResult, safety_ctx: SafetyContext, reasons: list[str],
    check: watermark.WatermarkCheck | None,
) -> Image:
    record = _image_record(image_id, prompt, run, image_index, seed, pixels, safety, safety_ctx, "quarantined",
                           reasons)
    if check is not None:
        record.watermark_payload = f"{check.expected:012x}"
        record.watermark_matched_bits = check.matched_bits
    session.add(record)
    session.flush()
    record_event(
        session, actor, "image.quarantined", "image", image_id,
        {"batch_id": prompt.batch_id, "run_id": run.id, "prompt_id": prompt.id, "reasons": reasons,
         "safety_scores": dict(safety.scores)},
    )
    return record
