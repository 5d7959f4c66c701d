"""`atelier demo`: the whole governed flow on the example catalogue, with the configured settings."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flows.runtime import Runtime
from governance.approvals import approve_batch
from governance.batches import submit_batch
from governance.credentials import init_test_ca
from governance.db import make_engine, upgrade
from governance.ledger import verify_ledger
from governance.licences import CREATIVEML_OPENRAIL_PP_M, register_licence
from governance.records import Image
from governance.runs import RunSummary
from governance.users import add_user
from governance.watermark import ensure_development_key

DEMO_USERS = {
    "admin": ["admin"],
    "maria": ["requester"],  # catalogue operations: asks for the images
    "omar": ["approver"],  # the second pair of eyes
    "ops": ["operator"],  # runs the GPU pool
    "lee": ["auditor"],  # legal / compliance
}


def run_demo(
    rt: Runtime, csv: Path, run_batches: Callable[..., list[RunSummary]], print_table: Callable[..., None]
) -> int:
    t0 = time.perf_counter()
    s = rt.settings
    s.data_dir.mkdir(parents=True, exist_ok=True)
    print("1. database schema")
    upgrade(make_engine(s.database_url_resolved))
    with rt.sessions.begin() as session:
        print("2. users:", ", ".join(f"{n} ({'/'.join(r)})" for n, r in DEMO_USERS.items()))
        for name, roles in DEMO_USERS.items():
            add_user(session, "admin", name, roles)
        print(f"3. licence {CREATIVEML_OPENRAIL_PP_M.name} registered for the SDXL models")
        register_licence(session, "admin", CREATIVEML_OPENRAIL_PP_M)
    keys = init_test_ca(s.keys_dir)
    if s.c2pa_cert is None:
        print(f"   C2PA signer: local test CA in {keys.chain.parent} (NOT FOR PRODUCTION)")
    if not s.watermark_key_callback and s.watermark_key_file is None:
        ring = ensure_development_key(s.watermark_key_path())
        print(f"   watermark key: {ring[0].key_id}, a development key in {s.keys_dir} (NOT FOR PRODUCTION)")
    with rt.sessions.begin() as session:
        batch = submit_batch(session, "maria", csv, "catalogue")
        batch_id, content = batch.id, batch.content_sha256
    print(f"4. maria submitted {csv.name}: batch {batch_id}, content sha256 {content[:16]}...")
    with rt.sessions.begin() as session:
        approve_batch(session, "omar", batch_id, content)
    print("5. omar approved it (pinned to that content hash)")
    print("6. ops runs it: SDXL base -> refiner, safety, watermark, publish (Prefect flow)")
    run_actor = rt.settings.model_copy(update={"actor": "ops"})
    [result] = run_batches(Runtime(run_actor, rt._sessions), [batch_id])
    with rt.sessions() as session:
        report = verify_ledger(session, rt.store, rt.anchor_store, rt.signing_certificate())
        images = session.query(Image).filter(Image.batch_id == batch_id).all()
        rows: list[dict[str, Any]] = [
            {
                "row_id": img.prompt.row_id,
                "image_id": img.id,
                "status": img.status,
                "watermark": f"{img.watermark_matched_bits}/64" if img.watermark_matched_bits is not None else "",
                "where": rt.store.location(img.store_key) if img.store_key else "; ".join(img.safety_reasons),
            }
            for img in sorted(images, key=lambda i: (i.prompt.position, i.image_index))
        ]
    state = "intact" if report.ok else "BROKEN: " + report.problems[0]
    print(
        f"7. audit ledger: {state} ({report.chain['events']} events, {report.anchors_checked} signed anchors, "
        f"{report.objects_checked} published objects checked)\n"
    )
    print_table(rows, ["row_id", "image_id", "status", "watermark", "where"])
    print(
        f"\nbatch {batch_id}: {result.published} published, {result.quarantined} quarantined "
        f"in {time.perf_counter() - t0:.0f} s"
    )
    print(f"store:    {rt.store.url}")
    print(f"database: {rt.settings.redacted()['database_url']}")
    print(f"try:      atelier trace {rows[0]['image_id']}   |   atelier batch show {batch_id}")
    return 0 if report.ok and result.completed else 1
