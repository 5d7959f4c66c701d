"""`atelier trace`: everything Atelier knows about one image, from any reference to it."""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session, aliased, defaultload, lazyload

from governance.errors import InvalidInput, NotFound
from governance.holds import HoldView
from governance.pipelines import config_of, models_of
from governance.records import (
    Approval,
    AuditEvent,
    Batch,
    CatalogueItem,
    Image,
    LegalHold,
    ModelVersion,
    PromptTemplate,
    Run,
    RunModelVersion,
    StandingApproval,
    User,
)
from governance.refs import looks_like_id, resolve_id
from governance.results import Result

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def find_image(session: Session, ref: str) -> Image:
    """REF: an image id, a SHA-256, a store key (or its s3:// or file location), or a local image file."""
    ref = ref.strip()
    path = Path(ref)
    if _SHA256.match(ref.lower()):
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
    elif looks_like_id(ref):  # an image id, or a unique prefix of one (8+ characters, any case)
        image = resolve_id(session, Image, ref, "image", "`atelier compliance search` finds image ids")
    else:
        raise InvalidInput(
            f"cannot read {ref!r} as a reference: give an image id, a SHA-256, a store key or an image file"
        )
    if image is None:
        raise NotFound(f"no image matches {ref!r}")
    return image


def trace_image(session: Session, image: Image) -> ImageTrace:
    return trace_images(session, [image.id])[0]


_IN_CHUNK = 5000  # ids per IN (...) list: well under SQLite's and PostgreSQL's parameter limits


def _chunked(items: Sequence[str]) -> Iterator[Sequence[str]]:
    for i in range(0, len(items), _IN_CHUNK):
        yield items[i : i + _IN_CHUNK]


def trace_images(session: Session, image_ids: Sequence[str]) -> list[ImageTrace]:
    """`atelier trace` for many images at once, in the order given, with a fixed number of queries.

    One query for images with their prompt, batch, requester, run, approval and approver; one for
    the model versions of those runs; one for the audit events of every subject involved.
    """
    ids = list(dict.fromkeys(image_ids))
    loaded: dict[str, tuple[Image, Batch, Run, Approval]] = {}
    for chunk in _chunked(ids):
        stmt = (
            select(Image, Batch, Run, Approval)
            .join(Batch, Batch.id == Image.batch_id)
            .join(Run, Run.id == Image.run_id)
            .join(Approval, Approval.id == Run.approval_id)
            .where(Image.id.in_(chunk))
            .options(  # loaded below for all runs at once; roles are not needed
                lazyload(Run.model_versions),
                defaultload(Batch.requested_by).lazyload(User.roles),
                defaultload(Approval.decided_by).lazyload(User.roles),
            )
        )
        for image, batch, run, approval in session.execute(stmt).unique():
            loaded[image.id] = (image, batch, run, approval)
    missing = [i for i in ids if i not in loaded]
    if missing:
        raise NotFound(f"no image {missing[0]!r}")

    run_ids = sorted({run.id for _, _, run, _ in loaded.values()})
    models: dict[str, list[ModelVersion]] = {r: [] for r in run_ids}
    for chunk in _chunked(run_ids):
        versions = (
            select(RunModelVersion.run_id, ModelVersion)
            .join(ModelVersion, ModelVersion.id == RunModelVersion.model_version_id)
            .where(RunModelVersion.run_id.in_(chunk))
        )
        for run_id, mv in session.execute(versions):
            models[run_id].append(mv)

    subjects = sorted(
        {s for image, batch, run, approval in loaded.values() for s in (image.id, run.id, batch.id, approval.id)}
    )
    events: dict[str, list[AuditEvent]] = {}
    for chunk in _chunked(subjects):
        for e in session.scalars(select(AuditEvent).where(AuditEvent.subject_id.in_(chunk))):
            events.setdefault(e.subject_id, []).append(e)

    holds: dict[str, list[HoldView]] = {}  # by target: an image id or a batch id
    targets = sorted({t for image, batch, _, _ in loaded.values() for t in (image.id, batch.id)})
    for chunk in _chunked(targets):
        stmt_holds = select(LegalHold).where(LegalHold.target_id.in_(chunk)).order_by(LegalHold.placed_at)
        for hold in session.scalars(stmt_holds):
            holds.setdefault(hold.target_id, []).append(HoldView.of(hold))

    catalogue: dict[tuple[str, str], dict[str, Any]] = {}  # (batch id, row id) -> the SKU's lineage
    batch_ids = sorted({batch.id for _, batch, _, _ in loaded.values()})
    approver = aliased(User)
    for chunk in _chunked(batch_ids):
        stmt_lineage = (
            select(CatalogueItem, PromptTemplate.sha256, approver.name)
            .join(PromptTemplate, PromptTemplate.id == CatalogueItem.template_id)
            .outerjoin(StandingApproval, StandingApproval.id == CatalogueItem.standing_approval_id)
            .outerjoin(approver, approver.id == StandingApproval.approver_id)
            .where(CatalogueItem.batch_id.in_(chunk))
        )
        for item, template_sha, approved_by in session.execute(stmt_lineage):
            catalogue[(item.batch_id, item.row_id)] = {
                "sku": item.sku,
                "product_version_id": item.product_version_id,
                "template_id": item.template_id,
                "template_sha256": template_sha,
                "standing_approval_id": item.standing_approval_id,
                "standing_approved_by": approved_by,
                "set_state": item.state,
            }

    out: list[ImageTrace] = []
    for image_id in ids:
        image, batch, run, approval = loaded[image_id]
        trail = sorted(
            (e for s in dict.fromkeys((image.id, run.id, batch.id, approval.id)) for e in events.get(s, [])),
            key=lambda e: e.seq,
        )
        held = [h for h in holds.get(image.id, []) if h.scope == "image"]
        held += [h for h in holds.get(batch.id, []) if h.scope == "batch"]
        record = _trace_record(image, batch, run, approval, models[run.id], trail, held)
        lineage = catalogue.get((batch.id, image.prompt.row_id))
        out.append(dataclasses.replace(record, catalogue=lineage) if lineage else record)
    return out


@dataclass(frozen=True)
class StoreLocation(Result):
    url: str | None
    key: str | None
    version_id: str | None
    provenance_key: str | None


@dataclass(frozen=True)
class BatchRef(Result):
    id: str
    purpose: str
    use_category: str
    requested_by: str
    status: str
    content_sha256: str
    source: str


@dataclass(frozen=True)
class ApprovalRef(Result):
    id: str
    decision: str
    approved_by: str
    content_sha256: str
    at: datetime
    voided_at: datetime | None


@dataclass(frozen=True)
class PromptRef(Result):
    id: str
    row_id: str
    text: str
    seed: int
    ref: str
    params: dict[str, Any]


@dataclass(frozen=True)
class RunRef(Result):
    id: str
    started_at: datetime
    engine: dict[str, Any]


@dataclass(frozen=True)
class ModelRef(Result):
    role: str
    name: str
    source: str
    sha256: str
    licence: str


@dataclass(frozen=True)
class SafetyRecord(Result):
    model: str
    policy: str
    scores: dict[str, Any]
    verdict: str
    reasons: list[Any]


@dataclass(frozen=True)
class WatermarkRecord(Result):
    scheme: str | None
    key_id: str | None
    payload: str | None
    matched_bits: int | None


@dataclass(frozen=True)
class AuditEntry(Result):
    seq: int
    action: str
    actor: str
    at: str  # ISO 8601 UTC, exactly as hashed into the chain
    subject: str


@dataclass(frozen=True)
class ImageTrace(Result):
    """Everything Atelier knows about one image (`atelier trace`): its prompt, batch, approval, run,
    models and licences, safety verdict, watermark, where it is stored, and its audit trail."""

    image_id: str
    status: str
    sha256: str | None
    pixels_sha256: str | None
    phash: str | None
    store: StoreLocation
    batch: BatchRef
    approval: ApprovalRef
    prompt: PromptRef
    image_index: int
    seed: str  # up to 2**63, stored as text: every database and JSON reader keeps it exact
    size: tuple[int, int]
    run: RunRef
    models: tuple[ModelRef, ...]
    licence_obligations: list[Any]
    safety: SafetyRecord
    watermark: WatermarkRecord
    c2pa_manifest: str | None  # the active manifest's label
    audit: tuple[AuditEntry, ...]
    review: dict[str, Any] | None = None  # output review: decision, by, at, reason (None: not reviewed)
    withdrawal: dict[str, Any] | None = None  # set when withdrawn: by, at, reason, evidence copy, removed version
    expiry: dict[str, Any] | None = None  # set when retention deleted its files: when, rule, policy, objects
    legal_holds: tuple[HoldView, ...] = ()  # every hold on the image or its batch, active and released
    # catalogue images: SKU, its product version, the template version and the standing approval
    catalogue: dict[str, Any] | None = None
    # the pipeline configuration that made it (as its batch pinned it) and what it cost on the worker
    pipeline: dict[str, Any] | None = None


def _trace_record(
    image: Image,
    batch: Batch,
    run: Run,
    approval: Approval,
    models: list[ModelVersion],
    trail: list[AuditEvent],
    holds: list[HoldView],
) -> ImageTrace:
    prompt = image.prompt
    config = config_of(batch.pipelines, prompt.pipeline, prompt.num_images, image.image_index)
    models = models_of(models, config)
    return ImageTrace(
        image_id=image.id,
        status=image.status,
        sha256=image.sha256,
        pixels_sha256=image.pixels_sha256,
        phash=image.phash,
        store=StoreLocation(image.store_url, image.store_key, image.store_version_id, image.provenance_key),
        batch=BatchRef(
            id=batch.id,
            purpose=batch.purpose,
            use_category=batch.use_category,
            requested_by=batch.requested_by.name,
            status=batch.status,
            content_sha256=batch.content_sha256,
            source=batch.source_name,
        ),
        approval=ApprovalRef(
            id=approval.id,
            decision=approval.decision,
            approved_by=approval.decided_by.name,
            content_sha256=approval.content_sha256,
            at=approval.decided_at,
            voided_at=approval.voided_at,
        ),
        prompt=PromptRef(prompt.id, prompt.row_id, prompt.prompt, prompt.seed, prompt.ref, prompt.params()),
        image_index=image.image_index,
        seed=image.seed,
        size=(image.width, image.height),
        run=RunRef(run.id, run.started_at, run.engine),
        models=tuple(
            ModelRef(mv.role, mv.name, mv.source, mv.sha256, mv.licence_id)
            for mv in sorted(models, key=lambda m: m.role)
        ),
        licence_obligations=image.licence_obligations,
        safety=SafetyRecord(
            image.safety_model, image.safety_policy, image.safety_scores, image.safety_verdict, image.safety_reasons
        ),
        watermark=WatermarkRecord(
            image.watermark_scheme, image.watermark_key_id, image.watermark_payload, image.watermark_matched_bits
        ),
        c2pa_manifest=image.c2pa_manifest,
        audit=tuple(AuditEntry(e.seq, e.action, e.actor, e.at, e.subject_id) for e in trail),
        review=image.review,
        withdrawal=image.withdrawal,
        expiry=image.expiry,
        legal_holds=tuple(sorted(holds, key=lambda h: h.placed_at)),
        pipeline={
            **config.record(),
            "engine_seconds": image.engine_seconds,
            "engine_device": image.engine_device,
            "pinned_from": {k: (batch.pipelines or {}).get(k) for k in ("version", "sha256")},
        },
    )
