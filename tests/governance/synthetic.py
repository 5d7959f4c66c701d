"""Records of finished runs without generating anything: for compliance and lineage tests.

Two batches, built through the real service functions (intake, approval, model versions, runs,
audit); only the image rows are written directly, as `publish.finalize_image` would leave them,
with a small PNG in a local store for each published image.

    batch A  maria -> omar   catalogue / product-catalogue   models "gen1"   2 published, 1 quarantined
    batch B  nina  -> omar   marketing / marketing-campaign  models "gen2"   2 published
    gen1 and gen2 share the VAE and the text encoders; their UNets differ.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from PIL import Image as PILImage
from sqlalchemy.orm import Session, sessionmaker

from governance.approvals import approve_batch
from governance.audit import record_event
from governance.batches import submit_batch
from governance.licences import CREATIVEML_OPENRAIL_PP_M, obligations_for, record_model_version, register_licence
from governance.records import Batch, Image, ModelVersion, image_id_for
from governance.runs import finish_run, start_run
from governance.store import LocalStore, image_key, provenance_key
from governance.users import add_user
from tests.governance.conftest import write_csv


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


SHARED_ROLES = {"vae": sha("vae"), "text_encoder": sha("te1"), "text_encoder_2": sha("te2")}
GEN1 = {"base_unet": sha("base-1"), "refiner_unet": sha("refiner-1"), **SHARED_ROLES}
GEN2 = {"base_unet": sha("base-2"), "refiner_unet": sha("refiner-2"), **SHARED_ROLES}

ROWS_A = [
    {
        "row_id": "sku-1",
        "prompt": "Studio photo of a WALNUT desk lamp",
        "seed": 1,
        "width": 256,
        "height": 256,
        "steps": 2,
        "num_images": 2,
        "ref": "SKU-1",
    },
    {
        "row_id": "sku-2",
        "prompt": '=HYPERLINK("http://evil.example","click") ceramic mug 100% cotton',
        "seed": 2,
        "width": 256,
        "height": 256,
        "steps": 2,
        "num_images": 1,
        "ref": "+SKU-2",
    },
]
ROWS_B = [
    {
        "row_id": "c-1",
        "prompt": "@campaign poster of a walnut chair",
        "seed": 3,
        "width": 256,
        "height": 256,
        "steps": 2,
        "num_images": 1,
        "ref": "CAMP-9",
    },
    {
        "row_id": "c-2",
        "prompt": "-summer banner with linen",
        "seed": 4,
        "width": 256,
        "height": 256,
        "steps": 2,
        "num_images": 1,
        "ref": "CAMP-9",
    },
]

T_A = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
T_B = datetime(2026, 3, 20, 15, 30, tzinfo=UTC)


@dataclass
class World:
    store: LocalStore
    batch_a: str = ""
    batch_b: str = ""
    run_a: str = ""
    run_b: str = ""
    published: list[str] = field(default_factory=list)
    quarantined: list[str] = field(default_factory=list)
    models: dict[str, dict[str, str]] = field(default_factory=dict)  # gen -> role -> model version id


def _png(seed: int) -> bytes:
    img = PILImage.new("RGB", (64, 64), ((seed * 40) % 256, (seed * 90) % 256, 120))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _run(
    session: Session,
    world: World,
    batch_id: str,
    gen: str,
    shas: dict[str, str],
    when: datetime,
    quarantine: set[tuple[str, int]],
) -> str:
    versions: list[ModelVersion] = [
        record_model_version(
            session, "ops", role, f"{gen}/{role}", f"/models/{gen}", digest, {}, CREATIVEML_OPENRAIL_PP_M.id
        )
        for role, digest in sorted(shas.items())
    ]
    world.models[gen] = {mv.role: mv.id for mv in versions}
    run = start_run(session, "ops", batch_id, versions, engine={"device": "cpu"})
    run.started_at = when
    b = session.get(Batch, batch_id)
    assert b is not None
    n = 0
    for prompt in b.prompts:
        for index in range(prompt.num_images):
            n += 1
            image_id = image_id_for(prompt.id, index)
            common = dict(
                id=image_id,
                prompt_id=prompt.id,
                batch_id=batch_id,
                run_id=run.id,
                image_index=index,
                seed=str(prompt.seed + index),
                width=64,
                height=64,
                safety_model="tiny",
                safety_policy="v1",
                safety_scores={"nsfw": 0.1},
                created_at=when.replace(minute=n),
            )
            if (prompt.row_id, index) in quarantine:
                session.add(
                    Image(
                        **common,
                        status="quarantined",
                        safety_verdict="quarantined",
                        safety_reasons=["nsfw score 0.93 above 0.5"],
                    )
                )
                session.flush()
                record_event(session, "ops", "image.quarantined", "image", image_id, {"run_id": run.id})
                world.quarantined.append(image_id)
                continue
            data = _png(prompt.seed + index)
            digest = hashlib.sha256(data).hexdigest()
            key = image_key(image_id, digest)
            world.store.put(key, data, "image/png", {})
            session.add(
                Image(
                    **common,
                    status="published",
                    safety_verdict="passed",
                    safety_reasons=[],
                    sha256=digest,
                    store_url=world.store.url,
                    store_key=key,
                    provenance_key=provenance_key(image_id, digest),
                    watermark_payload="b3ec907bb19e",
                    watermark_matched_bits=48,
                    licence_obligations=obligations_for(versions),
                )
            )
            session.flush()
            record_event(session, "ops", "image.published", "image", image_id, {"run_id": run.id, "sha256": digest})
            world.published.append(image_id)
    finish_run(session, "ops", run.id)
    return run.id


def build_world(sessions: sessionmaker[Session], tmp_path: Path) -> World:
    """Both batches, approved and run; the auditor `lee` is added to the usual cast."""
    world = World(store=LocalStore(tmp_path / "store"))
    with sessions.begin() as s:
        add_user(s, "admin", "lee", ["auditor"])
        register_licence(s, "admin", CREATIVEML_OPENRAIL_PP_M)
    with sessions.begin() as s:
        a = submit_batch(
            s, "maria", write_csv(tmp_path / "a.csv", ROWS_A), "catalogue", use_category="product-catalogue"
        )
        b = submit_batch(
            s, "nina", write_csv(tmp_path / "b.csv", ROWS_B), "marketing", use_category="marketing-campaign"
        )
        world.batch_a, world.batch_b = a.id, b.id
        contents = {a.id: a.content_sha256, b.id: b.content_sha256}
    with sessions.begin() as s:
        approve_batch(s, "omar", world.batch_a, contents[world.batch_a]).decided_at = T_A - timedelta(hours=1)
        approve_batch(s, "omar", world.batch_b, contents[world.batch_b]).decided_at = T_B - timedelta(hours=1)
    with sessions.begin() as s:
        world.run_a = _run(s, world, world.batch_a, "gen1", GEN1, T_A, quarantine={("sku-1", 1)})
    with sessions.begin() as s:
        world.run_b = _run(s, world, world.batch_b, "gen2", GEN2, T_B, quarantine=set())
    return world
