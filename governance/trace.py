"""`atelier trace`: everything Atelier knows about one image, from any reference to it."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from governance.audit import events_for
from governance.errors import InvalidInput, NotFound
from governance.records import Approval, Batch, Image, Run

_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def find_image(session: Session, ref: str) -> Image:
    """REF: an image id, a SHA-256, a store key (or its s3:// or file location), or a local image file."""
    ref = ref.strip()
    path = Path(ref)
    if _UUID.match(ref):
        image = session.get(Image, ref)
    elif _SHA256.match(ref.lower()):
        image = session.scalar(select(Image).where(Image.sha256 == ref.lower()))
    elif path.is_file():
        try:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError as exc:
            raise InvalidInput(f"cannot read {ref}: {exc.strerror}") from None
        image = session.scalar(select(Image).where(Image.sha256 == digest))
        if image is None:
            raise NotFound(f"{ref}: no published image has these exact bytes (sha256 {digest})")
    elif "/" in ref:
        key = ref.split("/images/", 1)[1] if "/images/" in ref else ref
        key = key if key.startswith("images/") else f"images/{key}"
        image = session.scalar(
            select(Image).where(or_(Image.store_key == key, Image.store_key == ref, Image.provenance_key == key))
        )
    else:
        raise InvalidInput(
            f"cannot read {ref!r} as a reference: give an image id, a SHA-256, a store key or an image file"
        )
    if image is None:
        raise NotFound(f"no image matches {ref!r}")
    return image


def trace_image(session: Session, image: Image) -> dict[str, Any]:
    run = session.get(Run, image.run_id)
    batch = session.get(Batch, image.batch_id)
    assert run is not None and batch is not None
    approval = session.get(Approval, run.approval_id)
    assert approval is not None
    prompt = image.prompt
    subjects = [image.id, run.id, batch.id, approval.id]
    return {
        "image_id": image.id,
        "status": image.status,
        "sha256": image.sha256,
        "store": {
            "url": image.store_url, "key": image.store_key, "version_id": image.store_version_id,
            "provenance_key": image.provenance_key,
        },
        "batch": {
            "id": batch.id, "purpose": batch.purpose, "requested_by": batch.requested_by.name,
            "status": batch.status, "content_sha256": batch.content_sha256, "source": batch.source_name,
        },
        "approval": {
            "id": approval.id, "decision": approval.decision, "approved_by": approval.decided_by.name,
            "content_sha256": approval.content_sha256, "at": approval.decided_at.isoformat(),
            "voided_at": approval.voided_at.isoformat() if approval.voided_at else None,
        },
        "prompt": {
            "id": prompt.id, "row_id": prompt.row_id, "text": prompt.prompt, "seed": prompt.seed,
            "ref": prompt.ref, "params": prompt.params(),
        },
        "image_index": image.image_index,
        "seed": image.seed,
        "size": [image.width, image.height],
        "run": {"id": run.id, "started_at": run.started_at.isoformat(), "engine": run.engine},
        "models": [
            {
                "role": mv.role, "name": mv.name, "source": mv.source, "sha256": mv.sha256,
                "licence": mv.licence_id,
            }
            for mv in sorted(run.model_versions, key=lambda m: m.role)
        ],
        "safety": {
            "model": image.safety_model, "policy": image.safety_policy, "scores": image.safety_scores,
            "verdict": image.safety_verdict, "reasons": image.safety_reasons,
        },
        "watermark": {"payload": image.watermark_payload, "matched_bits": image.watermark_matched_bits},
        "audit": [
            {"seq": e.seq, "action": e.action, "actor": e.actor, "at": e.at, "subject": e.subject_id}
            for e in events_for(session, subjects)
        ],
    }
