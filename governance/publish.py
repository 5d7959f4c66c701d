"""After safety: watermark -> verify -> encode -> sign (C2PA) -> hash -> record -> upload.

Invariant 2: an image reaches the store only when it passed safety, its watermark was decoded
back and matched, its C2PA manifest validated after signing, and its provenance JSON is written
beside it. An image that fails any check is recorded as quarantined, with the reason, and never
uploaded.

Every function here writes its audit event in the caller's transaction (invariant 3), and is
idempotent: an image that already has a record is left alone (invariant 4).
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image as PILImage
from sqlalchemy.orm import Session

from governance import fingerprint, watermark
from governance.audit import record_event
from governance.credentials import ContentCredentials, CredentialReport, manifest_for
from governance.errors import GovernanceCheckFailed
from governance.holds import lock_if_held
from governance.licences import obligations_for
from governance.pipelines import PipelineConfig, batch_configs, config_of, image_pipeline, models_of
from governance.records import Approval, Batch, Image, ModelVersion, Prompt, Run, image_id_for, utcnow
from governance.safety import SafetyResult
from governance.store import ObjectStore, image_key, provenance_key

PROVENANCE_SCHEMA = "atelier.provenance/1"
SOFT_BINDING_ALG = "com.atelier.dctss.1"  # not in the C2PA soft-binding algorithm list: Atelier's namespace


@dataclass(frozen=True)
class SafetyContext:
    model_id: str
    policy_version: str


def encode_png(pixels: np.ndarray) -> bytes:
    """Lossless PNG of uint8 HxWx3 RGB pixels: Pillow, ``compress_level=1`` with zlib's ``Z_RLE`` strategy.

    Chosen by measurement (``bench/governance.py``, "PNG settings" in ``bench/RESULTS.md``): CPU ms
    to encode a 1024x1024 image and its size, Pillow 13 / zlib 1.2.13 on an AMD EPYC core. Pillow
    applies its adaptive per-row PNG filter at every setting; decoding costs 10-25 ms whatever the
    setting.

    ===================== ================ ================= =================
    setting               noise            photo-like        smooth photo
    ===================== ================ ================= =================
    level 0 (stored)       71 ms, 3.15 MB   66 ms, 3.15 MB    29 ms, 3.15 MB
    level 1               137 ms, 3.15 MB  121 ms, 1.98 MB    45 ms, 0.48 MB
    level 6 (Pillow's)    143 ms, 3.15 MB  270 ms, 1.73 MB   107 ms, 0.34 MB
    level 9               139 ms, 3.15 MB  268 ms, 1.73 MB   562 ms, 0.33 MB
    level 1 + Z_RLE       104 ms, 3.15 MB   98 ms, 1.73 MB    40 ms, 0.41 MB
    ===================== ================ ================= =================

    After PNG's filters a photograph is small residuals with few long repeats, so the string
    matching that higher levels buy gains little: ``Z_RLE`` (zlib: "almost as fast as
    Huffman-only, but better compression for PNG image data") gives files as small as level 6 on
    photo-like images (and on a real photograph, 1.61 MB either way) in about a third of the CPU,
    and files about 20% larger than level 6 only on very smooth images, which are small anyway.
    Noise does not compress at any setting. Under ``Z_RLE`` the level does not change the
    compressed data (level 0 would store). Pillow passes ``compress_type`` to zlib as the deflate
    strategy. The bytes depend on the zlib build; identity is the SHA-256 of the bytes.
    """
    import zlib

    buf = io.BytesIO()
    PILImage.fromarray(pixels, mode="RGB").save(buf, format="PNG", compress_level=1, compress_type=zlib.Z_RLE)
    return buf.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    """Pixels of a PNG as a read-only uint8 HxWx3 RGB array (converted only when not already RGB)."""
    with PILImage.open(io.BytesIO(data)) as img:
        if img.mode != "RGB":
            return np.asarray(img.convert("RGB"))
        return np.asarray(img)


def _model_record(mv: ModelVersion) -> dict[str, Any]:
    return {
        "id": mv.id,
        "role": mv.role,
        "name": mv.name,
        "source": mv.source,
        "sha256": mv.sha256,
        "licence": mv.licence_id,
    }


def provenance_document(
    *,
    image_id: str,
    sha256: str,
    key: str,
    batch: Batch,
    approval: Approval,
    prompt: Prompt,
    image_index: int,
    seed: int,
    run: Run,
    safety: SafetyResult,
    safety_ctx: SafetyContext,
    check: watermark.WatermarkCheck,
) -> dict[str, Any]:
    config = config_of(batch.pipelines, prompt.pipeline, prompt.num_images, image_index)
    models = models_of(run.model_versions, config)
    licences = {mv.licence.id: mv.licence for mv in models}
    return {
        "schema": PROVENANCE_SCHEMA,
        "image_id": image_id,
        "sha256": sha256,
        "key": key,
        "created_at": utcnow().isoformat(),
        "batch": {
            "id": batch.id,
            "purpose": batch.purpose,
            "requested_by": batch.requested_by.name,
            "content_sha256": batch.content_sha256,
        },
        "approval": {
            "id": approval.id,
            "approved_by": approval.decided_by.name,
            "content_sha256": approval.content_sha256,
            "at": approval.decided_at.isoformat(),
        },
        "prompt": {
            "id": prompt.id,
            "row_id": prompt.row_id,
            "text": prompt.prompt,
            "ref": prompt.ref,
            "seed": prompt.seed,
            "params": prompt.params(),
        },
        "image_index": image_index,
        "seed": str(seed),
        "pipeline": {**config.record(), "pinned_by": _pinned_by(batch)},
        "run_id": run.id,
        "models": [_model_record(mv) for mv in models],
        "licence_obligations": obligations_for(models),
        "licences": [
            {
                "id": lic.id,
                "name": lic.name,
                "url": lic.url,
                "text_sha256": lic.text_sha256,
                "obligations": lic.obligations,
                "use_restrictions": lic.restrictions,
            }
            for lic in licences.values()
        ],
        "safety": {
            "model": safety_ctx.model_id,
            "policy": safety_ctx.policy_version,
            "scores": safety.scores,
            "verdict": safety.verdict,
        },
        "watermark": {
            "scheme": check.scheme,
            "key_id": check.key_id,
            "bits": check.total_bits,
            "payload": f"{check.expected:012x}",
            "matched_bits": check.matched_bits,
            "score": None if check.score is None else round(check.score, 2),
        },
    }


def _pinned_by(batch: Batch) -> dict[str, Any]:
    """Which configuration file the batch pinned its definitions from (None: before configurations)."""
    record = batch.pipelines or {}
    return {"version": record.get("version"), "sha256": record.get("sha256")}


@dataclass(frozen=True)
class EngineTime:
    """What one image cost on the worker: its share of its configuration's generate call, in seconds
    (synchronised with the GPU where one ran), and the device."""

    seconds: float
    device: str


def _image_record(
    image_id: str,
    prompt: Prompt,
    run: Run,
    image_index: int,
    seed: int,
    pixels: np.ndarray,
    safety: SafetyResult,
    safety_ctx: SafetyContext,
    status: str,
    reasons: list[str],
    engine_time: EngineTime | None = None,
) -> Image:
    return Image(
        pipeline=image_pipeline(prompt.pipeline, prompt.num_images, image_index),
        engine_seconds=None if engine_time is None else round(engine_time.seconds, 6),
        engine_device=None if engine_time is None else engine_time.device,
        id=image_id,
        prompt_id=prompt.id,
        batch_id=prompt.batch_id,
        run_id=run.id,
        image_index=image_index,
        seed=str(seed),
        status=status,
        height=int(pixels.shape[0]),
        width=int(pixels.shape[1]),
        safety_model=safety_ctx.model_id,
        safety_policy=safety_ctx.policy_version,
        safety_scores=dict(safety.scores),
        safety_verdict=safety.verdict,
        safety_reasons=reasons,
    )


@dataclass(frozen=True)
class MarkedImage:
    """The pure, CPU-heavy part of publishing one image: safe to run in a worker pool (no DB, no store)."""

    image_id: str
    png: bytes  # the final bytes: PNG with its C2PA manifest
    sha256: str
    check: watermark.WatermarkCheck
    credentials: CredentialReport
    phash: str
    pixels_sha256: str
    thumbnail: bytes = b""  # JPEG, at most THUMBNAIL_PX a side: the console's galleries (not a governed file)


def with_soft_binding(manifest: dict[str, Any], payload: int, key: watermark.WatermarkKey) -> dict[str, Any]:
    """The manifest plus what C2PA 2.2 says about an invisible watermark: a ``c2pa.watermarked.bound``
    action (the mark was inserted and is bound to this manifest) and a ``c2pa.soft-binding`` assertion
    naming the algorithm and its value (the payload), so that a copy whose manifest was stripped can be
    looked up again by its watermark."""
    out = json.loads(json.dumps(manifest))
    for assertion in out["assertions"]:
        if assertion["label"] == "c2pa.actions":
            assertion["data"]["actions"].append(
                {
                    "action": "c2pa.watermarked.bound",
                    "softwareAgent": {"name": f"Atelier {watermark.DEFAULT_SCHEME}"},
                    "parameters": {"alg": SOFT_BINDING_ALG},
                }
            )
    out["assertions"].append(
        {
            "label": "c2pa.soft-binding",
            "data": {
                "alg": SOFT_BINDING_ALG,
                "name": f"{watermark.DEFAULT_SCHEME} key {key.key_id}",
                "blocks": [{"scope": {}, "value": f"{payload:012x}"}],
            },
        }
    )
    return out


def mark_and_encode(
    image_id: str,
    pixels: np.ndarray,
    signer: ContentCredentials,
    manifest: dict[str, Any],
    key: watermark.WatermarkKey,
) -> MarkedImage:
    """Watermark, verify the mark, encode once, sign, read the manifest back, hash."""
    payload = watermark.payload_for_image(image_id)
    try:
        marked = watermark.embed(pixels, payload, key=key)
    except watermark.WatermarkError as exc:
        raise GovernanceCheckFailed(f"image {image_id}: watermark could not be embedded: {exc}") from exc
    png = encode_png(marked)
    check = watermark.verify(decode_png(png), payload, key=key)  # decoded from the very bytes to be published
    signed = signer.sign_png(png, with_soft_binding(manifest, payload, key))
    return MarkedImage(
        image_id=image_id,
        png=signed,
        sha256=hashlib.sha256(signed).hexdigest(),
        check=check,
        credentials=signer.read(signed, "image/png"),
        phash=fingerprint.phash(marked),
        pixels_sha256=pixels_sha256(marked),
        thumbnail=thumbnail_jpeg(marked),
    )


THUMBNAIL_PX = 256


def thumbnail_jpeg(pixels: np.ndarray, size: int = THUMBNAIL_PX) -> bytes:
    """A gallery thumbnail of the published (watermarked) pixels, made once at publish time and stored
    beside the image, so that a gallery page never decodes full images."""
    img = PILImage.fromarray(pixels).convert("RGB")
    img.thumbnail((size, size), PILImage.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85, optimize=True)
    return buf.getvalue()


def pixels_sha256(pixels: np.ndarray) -> str:
    digest = hashlib.sha256(f"{pixels.shape[0]}x{pixels.shape[1]}x{pixels.shape[2]}:".encode())
    digest.update(np.ascontiguousarray(pixels, dtype=np.uint8).data)
    return digest.hexdigest()


@lru_cache(maxsize=1)
def _software_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("atelier")
    except PackageNotFoundError:
        return "dev"


def credential_manifest(
    image_id: str, batch: Batch, approval: Approval, run: Run, config: PipelineConfig | None = None
) -> dict[str, Any]:
    """The C2PA manifest of one image; `config`: the pipeline configuration that made it (default: the
    batch's only configuration, or base + refiner)."""
    software = _software_version()
    config = config or next(iter(batch_configs(batch.pipelines).values()))
    models = models_of(run.model_versions, config)
    return manifest_for(
        title=f"{image_id}.png",
        image_id=image_id,
        batch_id=batch.id,
        approval_id=approval.id,
        models=[_model_record(mv) for mv in sorted(models, key=lambda m: m.role)],
        licences=sorted({mv.licence_id for mv in models}),
        software_version=software,
        pipeline={"name": config.name, "stages": list(config.stages)},
    )


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
    signer: ContentCredentials | None = None,
    watermark_key: watermark.WatermarkKey | None = None,
    engine_time: EngineTime | None = None,
) -> Image:
    """Quarantine or publish one generated image; returns its record (the existing one on a re-run).

    `marked` is what `mark_and_encode` gave when the caller already ran it in a pool; otherwise it
    runs here, with `signer` and `watermark_key`. `engine_time`: what generating it cost on the worker.
    """
    image_id = image_id_for(prompt.id, image_index)
    existing = session.get(Image, image_id)
    if existing is not None:
        return existing

    def quarantine(reasons: list[str], check: watermark.WatermarkCheck | None) -> Image:
        return _quarantine(
            session, actor, image_id, prompt, run, image_index, seed, pixels, safety, safety_ctx, reasons, check,
            engine_time,
        )  # fmt: skip

    if safety.verdict != "passed":
        return quarantine(list(safety.reasons), None)
    batch = session.get(Batch, prompt.batch_id)
    assert batch is not None
    config = config_of(batch.pipelines, prompt.pipeline, prompt.num_images, image_index)
    if marked is None:
        if signer is None:
            raise GovernanceCheckFailed("no C2PA signer: images cannot be published without content credentials")
        if watermark_key is None:
            raise GovernanceCheckFailed("no watermark key: images cannot be published without an identifying mark")
        marked = mark_and_encode(
            image_id, pixels, signer, credential_manifest(image_id, batch, approval, run, config), watermark_key
        )
    if marked.image_id != image_id:
        raise ValueError(f"marked image {marked.image_id} handed in for image {image_id}")
    check, sha256 = marked.check, marked.sha256
    reasons = []
    if not check.ok:
        reasons.append(
            f"watermark not verified: {check.matched_bits}/{check.total_bits} bits matched ({check.verdict})"
        )
    if not marked.credentials.intact:
        detail = "; ".join(marked.credentials.failures) or marked.credentials.error or "no manifest"
        reasons.append(f"C2PA manifest did not validate ({marked.credentials.state}): {detail}")
    if reasons:
        return quarantine(reasons, check)

    key, prov_key = image_key(image_id, marked.pixels_sha256), provenance_key(image_id, marked.pixels_sha256)
    reviewed = bool(batch.review_required)  # output review: uploaded under review/, published when accepted
    if reviewed:
        from governance.review import review_key

        key, prov_key = review_key(key), review_key(prov_key)
    doc = provenance_document(
        image_id=image_id,
        sha256=sha256,
        key=image_key(image_id, marked.pixels_sha256),  # where it is (or, once reviewed, will be) published
        batch=batch,
        approval=approval,
        prompt=prompt,
        image_index=image_index,
        seed=seed,
        run=run,
        safety=safety,
        safety_ctx=safety_ctx,
        check=check,
    )
    metadata = {
        "image-id": image_id,
        "batch-id": batch.id,
        "approval-id": approval.id,
        "run-id": run.id,
        "model-sha256": ",".join(f"{mv.role}={mv.sha256[:16]}" for mv in models_of(run.model_versions, config)),
    }
    status = "review" if reviewed else "published"
    record = _image_record(
        image_id, prompt, run, image_index, seed, pixels, safety, safety_ctx, status, [], engine_time
    )
    record.watermark_payload = f"{check.expected:012x}"
    record.watermark_matched_bits = check.matched_bits
    record.sha256 = sha256
    record.store_url = store.url
    record.store_key = key
    record.provenance_key = prov_key
    record.watermark_scheme = check.scheme
    record.watermark_key_id = check.key_id
    record.phash = marked.phash
    record.pixels_sha256 = marked.pixels_sha256
    record.licence_obligations = obligations_for(models_of(run.model_versions, config))
    record.c2pa_manifest = marked.credentials.label
    # The record goes in before the upload: it claims the image id. A second worker finalizing the
    # same image (its lease ran out while it was merely slow) waits on this row and then fails
    # with IntegrityError before uploading, so it never overwrites the object this record describes.
    session.add(record)
    session.flush()
    store.put(prov_key, json.dumps(doc, indent=2, sort_keys=True).encode(), "application/json", metadata)
    # the gallery thumbnail before the image: a crash between the two leaves no published image without
    # one (a re-run finds the record and uploads nothing more; the thumbnail's key is as deterministic)
    store.put(
        key.rsplit(".", 1)[0] + ".thumb.jpg",  # beside the image (images/ or review/): thumbnail_key
        marked.thumbnail or thumbnail_jpeg(decode_png(marked.png)),
        "image/jpeg",
        metadata,
    )
    stored = store.put(key, marked.png, "image/png", metadata)
    record.store_version_id = stored.version_id
    session.flush()
    lock_if_held(session, store, record)  # its batch under a legal hold: the new objects held at once
    record_event(
        session,
        actor,
        "image.awaiting_review" if reviewed else "image.published",
        "image",
        image_id,
        {
            "batch_id": batch.id,
            "run_id": run.id,
            "prompt_id": prompt.id,
            "sha256": sha256,
            "store": store.url,
            "key": key,
            "version_id": stored.version_id,
            "watermark_matched_bits": check.matched_bits,
            "safety_verdict": safety.verdict,
            "pipeline": record.pipeline,
            "c2pa_manifest": marked.credentials.label,
            "phash": marked.phash,
        },
    )
    if not reviewed:
        from governance.webhooks import enqueue

        enqueue(
            session,
            "image.published",
            image_id,
            {"batch_id": batch.id, "sha256": sha256, "location": store.location(key), "ref": prompt.ref},
        )
    return record


def _quarantine(
    session: Session,
    actor: str,
    image_id: str,
    prompt: Prompt,
    run: Run,
    image_index: int,
    seed: int,
    pixels: np.ndarray,
    safety: SafetyResult,
    safety_ctx: SafetyContext,
    reasons: list[str],
    check: watermark.WatermarkCheck | None,
    engine_time: EngineTime | None = None,
) -> Image:
    record = _image_record(
        image_id, prompt, run, image_index, seed, pixels, safety, safety_ctx, "quarantined", reasons, engine_time
    )
    if check is not None:
        record.watermark_payload = f"{check.expected:012x}"
        record.watermark_matched_bits = check.matched_bits
    session.add(record)
    session.flush()
    record_event(
        session,
        actor,
        "image.quarantined",
        "image",
        image_id,
        {
            "batch_id": prompt.batch_id,
            "run_id": run.id,
            "prompt_id": prompt.id,
            "reasons": reasons,
            "safety_scores": dict(safety.scores),
        },
    )
    return record
