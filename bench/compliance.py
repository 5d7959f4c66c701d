"""Compliance queries at scale: a million synthetic image records in PostgreSQL, then the queries.

1. Creates a fresh database (default `atelier_bench`, dropped first if it exists) and migrates it.
2. Fills it with COPY (psycopg `cursor.copy`, no ORM): users, the licence, model versions in four
   generations, batches of 100 prompts with 2 images each, their approvals and runs, the images
   (3% quarantined) with licence obligations, and the audit events of all of it in one valid hash
   chain (`governance.audit.event_hash`), each authenticated (HMAC under the bench's audit key) and
   binding the records it made, with the digests the database computes (`governance.bindings`, the
   SQL the write path runs). Times spread over a year.
3. Measures, through the same functions the CLI calls:

   trace by SHA-256 / by key   `trace.find_image` + `trace.trace_image`, fresh session each (p50, p95)
   search by prompt substring  `compliance.search_images`, limit 1000, newest first: SKU codes (one
                               prompt), two-word phrases (~0.1%), common words (~3%) (p50, p95)
   search --json               the same hits as `atelier trace` records (`trace.trace_images`)
   impact of a model version   `compliance.impact`: every published image of one base UNet (~1/4)
   export 100,000 rows         `compliance.export_lineage` to Parquet, oldest first
   audit verify                `audit.verify_chain` (chain + MACs) over every event, one process and
                               seq ranges across processes (`ledger.verify_chain_parallel`): events/s;
                               `bindings.check_records` over every governed row: rows/s; full, and
                               incremental from an anchor 10% before the head (`measure_audit`)

   and compares them with issue 5's targets. The table is printed and appended, with the date,
   machine and load, under "## compliance" in bench/RESULTS.md (one write at the end).

    .venv/bin/python bench/compliance.py --images 20000 --no-record     # smoke, ~1 minute
    .venv/bin/python bench/compliance.py                                 # 1,000,000 images
    .venv/bin/python bench/compliance.py --reuse --audit-only            # `audit verify` only, filled db
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import psycopg  # noqa: E402
from sqlalchemy import create_engine, text  # noqa: E402
from sqlalchemy.dialects import postgresql  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from governance import bindings  # noqa: E402
from governance.audit import GENESIS_HASH, AuditKey, AuditKeyRing, canonical_json, event_hash  # noqa: E402
from governance.licences import CREATIVEML_OPENRAIL_PP_M  # noqa: E402
from governance.records import Image, image_id_for, prompt_id_for  # noqa: E402

ADMIN_URL = os.environ.get("ATELIER_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
TARGETS = {
    "trace_p95_ms": 20.0,
    "search_p95_ms": 300.0,
    "impact_s": 2.0,
    "export_100k_s": 10.0,
    "verify_events_per_s": 200_000.0,
    "records_per_s": 100_000.0,
}

PROMPTS_PER_BATCH = 100
IMAGES_PER_PROMPT = 2
GENERATIONS = 4
ROLES = ("base_unet", "refiner_unet", "text_encoder", "text_encoder_2", "vae")
STORE_URL = "s3://atelier-bench/published/"
START = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
STYLES = [
    "studio",
    "lifestyle",
    "flat-lay",
    "macro",
    "overhead",
    "catalogue",
    "editorial",
    "outdoor",
    "minimal",
    "dramatic",
]
ADJECTIVES = [
    "walnut",
    "oak",
    "brass",
    "ceramic",
    "linen",
    "velvet",
    "marble",
    "copper",
    "rattan",
    "glass",
    "leather",
    "wool",
    "bamboo",
    "concrete",
    "terracotta",
    "steel",
    "cotton",
    "cork",
    "slate",
    "birch",
    "teak",
    "jute",
    "silk",
    "pewter",
    "enamel",
    "porcelain",
    "stone",
    "felt",
    "chrome",
    "resin",
]
PRODUCTS = [
    "desk lamp",
    "armchair",
    "coffee mug",
    "side table",
    "floor rug",
    "bookshelf",
    "vase",
    "pendant light",
    "cushion",
    "dining chair",
    "wall clock",
    "mirror",
    "sofa",
    "planter",
    "bed frame",
    "stool",
    "sideboard",
    "throw blanket",
    "teapot",
    "candle holder",
    "bar cart",
    "headboard",
    "ottoman",
    "console table",
    "desk organiser",
    "bowl",
    "tray",
    "coat rack",
    "lantern",
    "cabinet",
]
SETTINGS = [
    "white background",
    "soft window light",
    "on a wooden floor",
    "in a sunlit loft",
    "against a grey wall",
    "with long shadows",
    "in a Scandinavian living room",
    "on a kitchen counter",
    "in golden hour light",
    "with a plant beside it",
]
OBLIGATIONS = json.dumps(
    [
        {
            "licence": CREATIVEML_OPENRAIL_PP_M.id,
            "licence_name": CREATIVEML_OPENRAIL_PP_M.name,
            "licence_url": CREATIVEML_OPENRAIL_PP_M.url,
            "licence_text_sha256": CREATIVEML_OPENRAIL_PP_M.text_sha256,
            "obligation": o.id,
            "section": o.section,
            "text": o.text,
            "models": sorted(ROLES),
        }
        for o in CREATIVEML_OPENRAIL_PP_M.obligations
    ],
    separators=(",", ":"),
)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def sha(*parts: object) -> str:
    return hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()


def uid(*parts: object) -> str:
    return str(uuid.UUID(sha(*parts)[:32]))


def iso(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# ---------------------------------------------------------------- fill


class Chain:
    """Audit events in seq order with their hash chain, written as COPY rows."""

    def __init__(self) -> None:
        self.seq, self.prev = 0, GENESIS_HASH

    def row(
        self,
        at: dt.datetime,
        actor: str,
        action: str,
        subject_type: str,
        subject_id: str,
        payload: dict[str, Any],
        bind: list[tuple[str, str]] | None = None,
    ) -> Spec:
        """An event to write once the rows it binds are in (their digests come from the database)."""
        return (at, actor, action, subject_type, subject_id, payload, bind or [])

    def rows(self, specs: list[Spec], digests: dict[tuple[str, str], str]) -> list[tuple[Any, ...]]:
        """The events as COPY rows, in order: chained, binding their records, authenticated (MAC)."""
        out = []
        for at, actor, action, subject_type, subject_id, payload, bind in specs:
            self.seq += 1
            stamp = iso(at)
            records = sorted([kind, rid, digests[(kind, rid)]] for kind, rid in bind) or None
            body: dict[str, Any] = {
                "seq": self.seq,
                "at": stamp,
                "actor": actor,
                "action": action,
                "subject_type": subject_type,
                "subject_id": subject_id,
                "payload": payload,
                "key_id": AUDIT_KEY.key_id,
            }
            if records:
                body["records"] = records
            digest = event_hash(self.prev, body)
            out.append(
                (
                    self.seq,
                    stamp,
                    actor,
                    action,
                    subject_type,
                    subject_id,
                    canonical_json(payload),
                    self.prev,
                    digest,
                    canonical_json(records) if records else None,
                    AUDIT_KEY.key_id,
                    AUDIT_KEY.mac(digest),
                )
            )
            self.prev = digest
        return out


Spec = tuple[dt.datetime, str, str, str, str, dict[str, Any], list[tuple[str, str]]]
EVENT_COLUMNS = "seq, at, actor, action, subject_type, subject_id, payload, prev_hash, hash, records, key_id, mac"
# The bench's audit key (public: bench data only). Events are authenticated as Atelier writes them.
AUDIT_KEY = AuditKey(hashlib.sha256(b"atelier bench audit key - NOT FOR PRODUCTION").digest(), development=True)
AUDIT_KEYS = AuditKeyRing((AUDIT_KEY,))
PG = postgresql.dialect()


def digests_of(
    cur: Any, kind_name: str, where: str = "TRUE", params: tuple[Any, ...] = ()
) -> dict[tuple[str, str], str]:
    """The database's digests (governance.bindings, the SQL the write path runs) of some rows of a kind."""
    kind = bindings.kind_named(kind_name)
    cur.execute(
        f"SELECT {bindings.id_sql(PG, kind)}, {bindings.digest_sql(PG, kind)} FROM {kind.table} t WHERE {where}",
        params,
    )
    return {(kind_name, rid): digest for rid, digest in cur.fetchall()}


def fill(url: str, n_images: int, seed: int) -> dict[str, Any]:
    """COPY every table; returns what the measurements need (sample refs, model SHAs, counts)."""
    rng = random.Random(seed)
    n_prompts = max(1, n_images // IMAGES_PER_PROMPT)
    n_batches = max(1, -(-n_prompts // PROMPTS_PER_BATCH))
    span = dt.timedelta(days=365) / n_batches
    chain = Chain()
    sample_p = min(1.0, 500 / n_images)  # about 500 sample images and SKUs to query, whatever the size
    sample_images: list[tuple[str, str]] = []  # (sha256, store key) of published images
    skus: list[str] = []
    image_columns = [c.name for c in Image.__table__.columns]
    t0 = time.perf_counter()

    requesters = [f"requester{i:02d}" for i in range(40)]
    approvers = [f"approver{i:02d}" for i in range(10)]
    operators = [f"operator{i}" for i in range(4)]
    users = (
        [("admin", "admin"), ("lee", "auditor")]
        + [(u, "requester") for u in requesters]
        + [(u, "approver") for u in approvers]
        + [(u, "operator") for u in operators]
    )
    user_ids = {name: i + 1 for i, (name, _) in enumerate(users)}
    models = {  # generation -> role -> (id, sha256); the text encoders and VAE change every other generation
        g: {
            role: (
                uid("model", role, g if role.endswith("unet") else g // 2),
                sha("weights", role, g if role.endswith("unet") else g // 2),
            )
            for role in ROLES
        }
        for g in range(GENERATIONS)
    }
    pg = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(pg) as conn, conn.cursor() as cur:
        cur.execute("SET synchronous_commit = off")
        cur.execute("SET maintenance_work_mem = '512MB'")
        events: list[Spec] = []
        with cur.copy("COPY users (id, name, created_at) FROM STDIN") as cp:
            for name, user_id in user_ids.items():
                cp.write_row((user_id, name, START))
        with cur.copy("COPY user_roles (user_id, role) FROM STDIN") as cp:
            for name, role in users:
                cp.write_row((user_ids[name], role))
                events.append(
                    chain.row(
                        START, "admin", "user.created", "user", name, {"roles": [role]}, [("user", str(user_ids[name]))]
                    )
                )
        lic = CREATIVEML_OPENRAIL_PP_M
        cur.execute(
            "INSERT INTO licences (id, name, url, text_sha256, obligations, restrictions, created_at) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s)",
            (
                lic.id,
                lic.name,
                lic.url,
                lic.text_sha256,
                json.dumps([o.to_dict() for o in lic.obligations]),
                json.dumps([r.to_dict() for r in lic.restrictions]),
                START,
            ),
        )
        events.append(
            chain.row(
                START,
                "admin",
                "licence.registered",
                "licence",
                lic.id,
                {"name": lic.name, "text_sha256": lic.text_sha256},
                [("licence", lic.id)],
            )
        )
        seen: set[str] = set()
        with cur.copy(
            "COPY model_versions (id, role, name, source, sha256, files, licence_id, created_at) FROM STDIN"
        ) as cp:
            for g in range(GENERATIONS):
                for role, (mid, digest) in models[g].items():
                    if mid in seen:
                        continue
                    seen.add(mid)
                    cp.write_row((mid, role, f"sdxl-gen{g}/{role}", f"/models/gen{g}", digest, "{}", lic.id, START))
                    events.append(
                        chain.row(
                            START,
                            "operator0",
                            "model_version.registered",
                            "model_version",
                            mid,
                            {"role": role, "sha256": digest, "licence_id": lic.id},
                            [("model_version", mid)],
                        )
                    )
        found = {**digests_of(cur, "user"), **digests_of(cur, "licence"), **digests_of(cur, "model_version")}
        with cur.copy(f"COPY audit_events ({EVENT_COLUMNS}) FROM STDIN") as cp:
            for e in chain.rows(events, found):
                cp.write_row(e)
        log(f"users, licence, {len(seen)} model versions")

        batch_rows, approval_rows, run_rows, rmv_rows = [], [], [], []
        prompt_rows: list[tuple[Any, ...]] = []
        image_rows: list[tuple[Any, ...]] = []
        event_rows: list[Spec] = []
        chunk_batches: list[str] = []
        written = {"prompts": 0, "images": 0, "events": len(events)}

        def flush() -> None:
            with cur.copy(
                "COPY prompts (id, batch_id, position, row_id, prompt, negative_prompt, seed, width, "
                "height, steps, guidance_scale, refiner_split, num_images, ref) FROM STDIN"
            ) as cp:
                for r in prompt_rows:
                    cp.write_row(r)
            with cur.copy(f"COPY images ({', '.join(image_columns)}) FROM STDIN") as cp:
                for r in image_rows:
                    cp.write_row(r)
            found: dict[tuple[str, str], str] = {}
            for kind, where in (
                ("batch", "t.id = ANY(%s)"),
                ("prompt", "t.batch_id = ANY(%s)"),
                ("approval", "t.batch_id = ANY(%s)"),
                ("run", "t.batch_id = ANY(%s)"),
                ("image", "t.batch_id = ANY(%s)"),
            ):
                found.update(digests_of(cur, kind, where, (chunk_batches,)))
            with cur.copy(f"COPY audit_events ({EVENT_COLUMNS}) FROM STDIN") as cp:
                for r in chain.rows(event_rows, found):
                    cp.write_row(r)
            written["prompts"] += len(prompt_rows)
            written["images"] += len(image_rows)
            written["events"] += len(event_rows)
            prompt_rows.clear()
            image_rows.clear()
            event_rows.clear()
            chunk_batches.clear()

        made = 0
        for b in range(n_batches):
            created = START + span * b
            batch_id, approval_id, run_id = uid("batch", b), uid("approval", b), uid("run", b)
            chunk_batches.append(batch_id)
            requester, approver = requesters[b % len(requesters)], approvers[b % len(approvers)]
            operator = operators[b % len(operators)]
            purpose = "catalogue" if b % 3 else "marketing"
            use = ("product-catalogue", "marketing-campaign", "editorial", "general")[b % 4]
            gen = min(GENERATIONS - 1, b * GENERATIONS // n_batches)
            content = sha("content", b)
            n_here = min(PROMPTS_PER_BATCH, n_prompts - b * PROMPTS_PER_BATCH)
            approved_at, started = created + dt.timedelta(hours=1), created + dt.timedelta(hours=2)
            batch_rows.append(
                (batch_id, purpose, "completed", user_ids[requester], f"batch-{b}.csv", content, use, created, created)
            )
            approval_rows.append(
                (approval_id, batch_id, "approved", user_ids[approver], content, "", approved_at, None, "")
            )
            run_rows.append(
                (
                    run_id,
                    batch_id,
                    approval_id,
                    "completed",
                    user_ids[operator],
                    "",
                    "{}",
                    started,
                    started + dt.timedelta(hours=1),
                    "{}",
                )
            )
            for role in ROLES:
                rmv_rows.append((run_id, models[gen][role][0]))
            event_rows.append(
                chain.row(
                    created,
                    requester,
                    "batch.submitted",
                    "batch",
                    batch_id,
                    {
                        "purpose": purpose,
                        "use_category": use,
                        "content_sha256": content,
                        "prompts": n_here,
                        "images": n_here * IMAGES_PER_PROMPT,
                    },
                    [("prompt", prompt_id_for(batch_id, f"row-{p:03d}")) for p in range(n_here)],
                )
            )
            event_rows.append(
                chain.row(
                    approved_at,
                    approver,
                    "batch.approved",
                    "batch",
                    batch_id,
                    {"approval_id": approval_id, "content_sha256": content, "reason": ""},
                    [("approval", approval_id)],
                )
            )
            event_rows.append(
                chain.row(
                    started,
                    operator,
                    "run.started",
                    "run",
                    run_id,
                    {
                        "batch_id": batch_id,
                        "approval_id": approval_id,
                        "model_versions": [models[gen][r][0] for r in ROLES],
                    },
                )
            )
            published = quarantined = 0
            for p in range(n_here):
                row_id = f"row-{p:03d}"
                prompt_id = prompt_id_for(batch_id, row_id)
                sku = f"SKU-{b:05d}-{p:03d}"
                text_ = (
                    f"{rng.choice(STYLES)} photo of a {rng.choice(ADJECTIVES)} {rng.choice(PRODUCTS)}, "
                    f"{rng.choice(SETTINGS)}, {sku}"
                )
                prompt_rows.append(
                    (
                        prompt_id,
                        batch_id,
                        p,
                        row_id,
                        text_,
                        "",
                        1000 + p,
                        1024,
                        1024,
                        40,
                        5.0,
                        0.8,
                        IMAGES_PER_PROMPT,
                        sku,
                    )
                )
                if rng.random() < sample_p:
                    skus.append(sku)
                for index in range(IMAGES_PER_PROMPT):
                    if made >= n_images:
                        break
                    made += 1
                    image_id = image_id_for(prompt_id, index)
                    at = started + dt.timedelta(seconds=2 * (p * IMAGES_PER_PROMPT + index))
                    ok = rng.random() >= 0.03
                    values: dict[str, Any] = {
                        "id": image_id,
                        "prompt_id": prompt_id,
                        "batch_id": batch_id,
                        "run_id": run_id,
                        "image_index": index,
                        "seed": str(1000 + p + index),
                        "width": 1024,
                        "height": 1024,
                        "safety_model": "ViT-L-14/openai",
                        "safety_policy": "safety-v1",
                        "safety_scores": '{"nsfw":0.01,"violence":0.02}',
                        "safety_verdict": "passed" if ok else "quarantined",
                        "safety_reasons": "[]" if ok else '["nsfw score 0.91 above 0.5"]',
                        "watermark_payload": image_id.replace("-", "")[:12],
                        "watermark_matched_bits": 48,
                        "licence_obligations": OBLIGATIONS if ok else "[]",
                        "created_at": at,
                        "status": "published" if ok else "quarantined",
                    }
                    if ok:
                        digest, pixels = sha("png", image_id), sha("pixels", image_id)
                        key = f"images/{image_id}/{pixels}.png"
                        values.update(
                            {
                                "sha256": digest,
                                "pixels_sha256": pixels,
                                "store_url": STORE_URL,
                                "store_key": key,
                                "provenance_key": f"images/{image_id}/{pixels}.provenance.json",
                                "watermark_scheme": "invisible-watermark dwtDct",
                                "phash": digest[:16],
                                "c2pa_manifest": f"urn:c2pa:{image_id}",
                            }
                        )
                        published += 1
                        if rng.random() < sample_p:
                            sample_images.append((digest, key))
                        event_rows.append(
                            chain.row(
                                at,
                                operator,
                                "image.published",
                                "image",
                                image_id,
                                {
                                    "batch_id": batch_id,
                                    "run_id": run_id,
                                    "prompt_id": prompt_id,
                                    "sha256": digest,
                                    "store": STORE_URL,
                                    "key": key,
                                },
                                [("image", image_id)],
                            )
                        )
                    else:
                        quarantined += 1
                        event_rows.append(
                            chain.row(
                                at,
                                operator,
                                "image.quarantined",
                                "image",
                                image_id,
                                {
                                    "batch_id": batch_id,
                                    "run_id": run_id,
                                    "prompt_id": prompt_id,
                                    "reasons": ["nsfw score 0.91 above 0.5"],
                                },
                                [("image", image_id)],
                            )
                        )
                    image_rows.append(tuple(values.get(c) for c in image_columns))
            event_rows.append(
                chain.row(
                    started + dt.timedelta(hours=1),
                    operator,
                    "run.completed",
                    "run",
                    run_id,
                    {"batch_id": batch_id, "published": published, "quarantined": quarantined, "remaining": 0},
                    [("run", run_id), ("batch", batch_id)],
                )
            )
            if len(image_rows) >= 50_000 or b == n_batches - 1:
                # parents first: batches, approvals, runs (and their model versions) of the rows so far
                for table, cols, rows in (
                    (
                        "batches",
                        "id, purpose, status, requested_by_id, source_name, content_sha256, use_category, "
                        "created_at, updated_at",
                        batch_rows,
                    ),
                    (
                        "approvals",
                        "id, batch_id, decision, decided_by_id, content_sha256, reason, decided_at, "
                        "voided_at, void_reason",
                        approval_rows,
                    ),
                    (
                        "runs",
                        "id, batch_id, approval_id, status, started_by_id, flow_run_id, engine, started_at, "
                        "finished_at, summary",
                        run_rows,
                    ),
                    ("run_model_versions", "run_id, model_version_id", rmv_rows),
                ):
                    with cur.copy(f"COPY {table} ({cols}) FROM STDIN") as cp:
                        for r in rows:
                            cp.write_row(r)
                    rows.clear()
                flush()
                rate = written["images"] / (time.perf_counter() - t0)
                log(
                    f"{written['images']:,} images, {written['prompts']:,} prompts, {written['events']:,} events "
                    f"({rate:,.0f} images/s)"
                )
        conn.commit()
    fill_s = time.perf_counter() - t0
    log("ANALYZE")
    with psycopg.connect(pg, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
    return {
        "fill_s": fill_s,
        "analyze_s": time.perf_counter() - t0 - fill_s,
        "images": written["images"],
        "prompts": written["prompts"],
        "events": written["events"],
        "batches": n_batches,
        "samples": sample_images,
        "skus": skus,
        "models": models,
    }


# ---------------------------------------------------------------- measure


def timed(fn: Callable[[], Any], repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def pct(values: list[float], q: float) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def measure(url: str, info: dict[str, Any], queries: int, seed: int) -> list[dict[str, Any]]:
    from governance.compliance import EXPORT_COLUMNS, SearchFilters, export_lineage, impact, search_images
    from governance.db import make_engine, make_sessionmaker
    from governance.trace import find_image, trace_image, trace_images

    rng = random.Random(seed)
    engine = make_engine(url)
    sessions = make_sessionmaker(engine)
    results: list[dict[str, Any]] = []

    def add(name: str, times: list[float], target: str, ok: bool | None, note: str) -> None:
        row = {
            "measure": name,
            "n": len(times),
            "p50": statistics.median(times),
            "p95": pct(times, 95),
            "target": target,
            "met": "-" if ok is None else ("yes" if ok else "NO"),
            "note": note,
        }
        results.append(row)
        log(f"{name}: p50 {row['p50'] * 1000:.1f} ms, p95 {row['p95'] * 1000:.1f} ms ({row['met']})")

    # three disjoint samples: a warm-up (connection, index upper levels), then by SHA-256, then by key
    picked = rng.sample(info["samples"], min(3 * queries, len(info["samples"])))
    warm, by_sha_refs, by_key_refs = picked[0::3], picked[1::3], picked[2::3]

    def trace_of(ref: str) -> Callable[[], Any]:
        def run() -> Any:
            with sessions() as s:
                return trace_image(s, find_image(s, ref))

        return run

    for digest, _ in warm:
        trace_of(digest)()
    by_sha = [t for digest, _ in by_sha_refs for t in timed(trace_of(digest), 1)]
    add(
        "trace by SHA-256",
        by_sha,
        "p95 <= 20 ms",
        pct(by_sha, 95) * 1000 <= TARGETS["trace_p95_ms"],
        "find_image + trace_image, fresh session",
    )
    by_key = [t for _, key in by_key_refs for t in timed(trace_of(STORE_URL + key), 1)]
    add(
        "trace by key",
        by_key,
        "p95 <= 20 ms",
        pct(by_key, 95) * 1000 <= TARGETS["trace_p95_ms"],
        "s3:// location of the object",
    )

    per_kind = max(1, queries // 3)
    terms = (
        [("sku", rng.choice(info["skus"])) for _ in range(per_kind)]
        + [("phrase", f"{rng.choice(ADJECTIVES)} {rng.choice(PRODUCTS)}") for _ in range(per_kind)]
        + [("word", rng.choice(ADJECTIVES + [p.split()[-1] for p in PRODUCTS])) for _ in range(per_kind)]
    )
    rng.shuffle(terms)
    search_times: dict[str, list[float]] = {"sku": [], "phrase": [], "word": []}
    hits: dict[str, list[int]] = {"sku": [], "phrase": [], "word": []}
    for kind, term in terms:
        with sessions() as s:
            t0 = time.perf_counter()
            found = search_images(s, SearchFilters(prompt=term), limit=1000)
            search_times[kind].append(time.perf_counter() - t0)
            hits[kind].append(len(found.images))
    every = [t for ts in search_times.values() for t in ts]
    add(
        "search by prompt substring",
        every,
        "p95 <= 300 ms",
        pct(every, 95) * 1000 <= TARGETS["search_p95_ms"],
        "limit 1000, newest first; SKU, two-word phrase and common word in equal parts",
    )
    for kind, label in (("sku", "SKU code"), ("phrase", "two-word phrase"), ("word", "common word")):
        add(
            f"  search: {label}", search_times[kind], "", None, f"median {statistics.median(hits[kind]):.0f} hits shown"
        )

    json_times = []
    for _kind, term in terms[: max(3, queries // 10)]:
        with sessions() as s:
            t0 = time.perf_counter()
            found = search_images(s, SearchFilters(prompt=term), limit=1000)
            trace_images(s, [r["image_id"] for r in found.images])
            json_times.append(time.perf_counter() - t0)
    add("search --json (trace records)", json_times, "", None, "the same searches, each hit as `atelier trace`")

    for g in (0, GENERATIONS - 1):
        base_sha = info["models"][g]["base_unet"][1]  # (id, sha256)
        counts = []

        def run_impact(base_sha: str = base_sha, counts: list[int] = counts) -> None:
            with sessions() as s:
                counts.append(len(impact(s, model_version=base_sha).images))

        times = timed(run_impact, 3)
        add(
            f"impact, base UNet gen {g}",
            times,
            "<= 2 s",
            max(times) <= TARGETS["impact_s"],
            f"{counts[0]:,} published images, every row fetched",
        )

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "lineage.parquet"
        rows = []

        def run_export() -> None:
            with sessions() as s:
                rows.append(export_lineage(s, out, "parquet", limit=100_000))

        times = timed(run_export, 3)
        size = out.stat().st_size / 1e6
    n = rows[0]
    add(
        f"export {n:,} rows to Parquet",
        times,
        "<= 10 s",
        max(times) <= TARGETS["export_100k_s"],
        f"{len(EXPORT_COLUMNS)} columns, {size:.1f} MB",
    )

    engine.dispose()
    return results + measure_audit(url)


def measure_audit(url: str, processes: int | None = None) -> list[dict[str, Any]]:
    """`audit verify`'s database work, as `governance.ledger.verify_ledger` does it (no store here):

    - the chain and every event's MAC (`audit.verify_chain`), in one process and across processes
      by seq ranges (`ledger.verify_chain_parallel`, what `audit verify` runs on PostgreSQL);
    - every governed row against its latest binding (`bindings.check_records`), set-based in PostgreSQL;
    - incremental: from a verified anchor 10% before the head (the events after it, the records they bind)."""
    from governance.audit import ChainStart, verify_chain
    from governance.bindings import check_records
    from governance.db import make_engine, make_sessionmaker
    from governance.ledger import verify_chain_parallel

    engine = make_engine(url)
    sessions = make_sessionmaker(engine, audit_keys=AUDIT_KEYS)
    results: list[dict[str, Any]] = []

    def add(name: str, took: float, target: str, met: bool | None, note: str) -> None:
        results.append(
            {
                "measure": name,
                "n": 1,
                "p50": took,
                "p95": took,
                "target": target,
                "met": "-" if met is None else ("yes" if met else "NO"),
                "note": note,
            }
        )
        log(f"{name}: {took:.1f} s, {note}")

    with sessions() as s:
        t0 = time.perf_counter()
        chain = verify_chain(s)
        chain_s = time.perf_counter() - t0
    assert chain.ok and chain.authenticated == chain.events, chain.problem
    rate = chain.events / chain_s
    add(
        "audit verify: chain + MAC, 1 process",
        chain_s,
        "",
        None,
        f"{chain.events:,} events, {rate:,.0f} events/s",
    )
    workers = processes or os.cpu_count() or 1
    t0 = time.perf_counter()
    parallel = verify_chain_parallel(url, AUDIT_KEYS, processes=workers)
    par_s = time.perf_counter() - t0
    assert parallel.ok and parallel.head_hash == chain.head_hash, parallel.problem
    par_rate = parallel.events / par_s
    add(
        f"audit verify: chain + MAC, {workers} processes",
        par_s,
        ">= 200,000 events/s",
        par_rate >= TARGETS["verify_events_per_s"],
        f"{parallel.events:,} events, {par_rate:,.0f} events/s (seq ranges, one per process)",
    )
    with sessions() as s:
        t0 = time.perf_counter()
        records = check_records(s, chain.head_seq)
        rec_s = time.perf_counter() - t0
    assert not records.problems, records.problems[:3]
    rec_rate = records.rows / rec_s
    add(
        "audit verify: record check",
        rec_s,
        ">= 100,000 rows/s",
        rec_rate >= TARGETS["records_per_s"],
        f"{records.rows:,} governed rows ({records.checked.get('image', 0):,} images), {rec_rate:,.0f} rows/s",
    )
    full_s = min(chain_s, par_s) + rec_s
    add(
        "audit verify, full (chain + MAC + records)",
        full_s,
        "",
        None,
        f"{chain.events:,} events and {records.rows:,} rows; anchors and published objects not included",
    )
    since = chain.head_seq - chain.head_seq // 10
    with sessions() as s:
        start_hash = s.execute(text("SELECT hash FROM audit_events WHERE seq = :s"), {"s": since}).scalar_one()
        t0 = time.perf_counter()
        tail = verify_chain(s, start=ChainStart(since, start_hash))
        tail_records = check_records(s, tail.head_seq, since_seq=since)
        inc_s = time.perf_counter() - t0
    assert tail.ok and not tail_records.problems
    add(
        "audit verify, incremental (last 10%)",
        inc_s,
        "",
        None,
        f"from a verified anchor at event {since:,}: {tail.events:,} events, {tail_records.rows:,} rows bound since",
    )
    engine.dispose()
    return results


# ---------------------------------------------------------------- database and report


def create_database(name: str) -> str:
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n AND pid <> pg_backend_pid()"
            ),
            {"n": name},
        )
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)


def drop_database(name: str) -> None:
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
    admin.dispose()


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores"


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f} ms" if seconds < 1 else f"{seconds:,.2f} s"


def table(results: list[dict[str, Any]]) -> str:
    lines = ["| measure | n | p50 | p95 | target | met | note |", "| --- | ---: | ---: | ---: | --- | --- | --- |"]
    for r in results:
        lines.append(
            f"| {r['measure']} | {r['n']} | {fmt_ms(r['p50'])} | {fmt_ms(r['p95'])} | {r['target']} | "
            f"{r['met']} | {r['note']} |"
        )
    return "\n".join(lines)


def header(info: dict[str, Any], url: str) -> str:
    with psycopg.connect(make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)) as c:
        version = c.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
        size = c.execute("SELECT pg_size_pretty(pg_database_size(current_database()))").fetchone()[0]  # type: ignore[index]
        shared = c.execute("SHOW shared_buffers").fetchone()[0]  # type: ignore[index]
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (
        f"date {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, machine {machine()}, load average {load}, "
        f"PostgreSQL {version} (shared_buffers {shared}, default settings), database {size}; "
        f"{info['images']:,} images, {info['prompts']:,} prompts, {info['batches']:,} batches/approvals/runs, "
        f"{info['events']:,} audit events; filled by COPY in {info['fill_s']:.0f} s "
        f"({info['images'] / info['fill_s']:,.0f} images/s), VACUUM ANALYZE {info['analyze_s']:.0f} s"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1_000_000, help="synthetic images to fill (default 1,000,000)")
    parser.add_argument("--database", default="atelier_bench", help="database to (re)create (default atelier_bench)")
    parser.add_argument("--queries", type=int, default=60, help="queries per trace/search measure (default 60)")
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--reuse", action="store_true", help="measure the existing database, do not refill")
    parser.add_argument("--drop", action="store_true", help="drop the database afterwards")
    parser.add_argument("--no-record", action="store_true", help="print only; do not append to bench/RESULTS.md")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "RESULTS.md")
    parser.add_argument("--audit-only", action="store_true", help="measure `audit verify` only")
    args = parser.parse_args(argv)
    if args.images < 200:
        parser.error("--images must be at least 200")

    from governance.db import make_engine, upgrade

    info_file = Path(tempfile.gettempdir()) / f"{args.database}.json"
    if args.reuse:
        url = make_url(ADMIN_URL).set(database=args.database).render_as_string(hide_password=False)
        info = json.loads(info_file.read_text())
        info["models"] = {int(g): roles for g, roles in info["models"].items()}
        upgrade(make_engine(url))  # new migrations (indexes) apply to the filled database
    else:
        url = create_database(args.database)
        engine = make_engine(url)
        upgrade(engine)
        engine.dispose()
        log(f"database {args.database} created and migrated; filling {args.images:,} images")
        info = fill(url, args.images, args.seed)
        info_file.write_text(json.dumps(info, default=str))
    results = measure_audit(url) if args.audit_only else measure(url, info, args.queries, args.seed)
    text_ = (
        f"### {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC: {args.images:,} images\n\n{header(info, url)}\n\n"
        f"{table(results)}\n"
    )
    print()
    print(text_)
    if args.drop:
        drop_database(args.database)
    if not args.no_record:
        section = (
            "\n## compliance\n\n`bench/compliance.py`: compliance queries over synthetic records in PostgreSQL "
            "(see its docstring). Reproduce: `.venv/bin/python bench/compliance.py` (1,000,000 images).\n\n"
        )
        with args.out.open("a", encoding="utf-8") as fh:
            fh.write(section + text_)  # one write: other benchmarks append their own sections
        log(f"appended to {args.out}")
    missed = [r["measure"] for r in results if r["met"] == "NO"]
    if missed:
        log(f"targets missed: {', '.join(missed)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
