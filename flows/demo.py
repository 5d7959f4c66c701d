"""`atelier demo`: the whole governed flow on the example catalogue, with the configured settings."""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flows.runtime import Runtime
from governance.approvals import approve_batch
from governance.batches import submit_batch
from governance.credentials import init_test_ca
from governance.db import make_engine, upgrade
from governance.errors import InvalidState
from governance.ledger import verify_ledger
from governance.licences import CREATIVEML_OPENRAIL_PP_M, register_licence
from governance.records import Image
from governance.runs import RunSummary
from governance.users import add_user, authenticate, is_empty, issue_token, set_password
from governance.watermark import ensure_development_key

DEMO_USERS = {
    "admin": ["admin"],
    "maria": ["requester"],  # catalogue operations: asks for the images
    "omar": ["approver"],  # the second pair of eyes
    "ops": ["operator"],  # runs the GPU pool
    "lee": ["auditor"],  # legal / compliance
    "rosa": ["reviewer"],  # looks at images: output review, blind preference between configurations
}


TOKENS_FILE = "demo-tokens.json"
PASSWORDS_FILE = "demo-passwords.json"  # console sign-in (`atelier serve`), one random password per demo user


def _demo_tokens(rt: Runtime) -> dict[str, str]:
    """The demo users, created with a token each on the first run (written to DATA_DIR/demo-tokens.json,
    mode 0600, so a newcomer can try every role); read back from that file on later runs."""
    path = rt.settings.data_dir / TOKENS_FILE
    with rt.sessions.begin() as session:
        if not is_empty(session):
            if not path.exists():
                raise InvalidState(
                    f"{rt.settings.data_dir} has users but no {TOKENS_FILE}: run the demo in a fresh data dir "
                    "(--data-dir) or remove this one"
                )
            tokens: dict[str, str] = json.loads(path.read_text(encoding="utf-8"))
            return tokens
        tokens, passwords = {}, {}
        for name, roles in DEMO_USERS.items():
            add_user(session, None if name == "admin" else "admin", name, roles)
            tokens[name] = issue_token(session, "admin", name, "demo", bootstrap=name == "admin").secret
            passwords[name] = secrets.token_urlsafe(12)
            set_password(session, "admin", name, passwords[name])
    for where, what in ((path, tokens), (rt.settings.data_dir / PASSWORDS_FILE, passwords)):
        fd = os.open(where, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(what, fh, indent=2)
    return tokens


def run_demo(
    rt: Runtime, csv: Path, run_batches: Callable[..., list[RunSummary]], print_table: Callable[..., None]
) -> int:
    t0 = time.perf_counter()
    s = rt.settings
    s.data_dir.mkdir(parents=True, exist_ok=True)
    print("1. database schema")
    upgrade(make_engine(s.database_url_resolved))
    keys = init_test_ca(s.keys_dir, audit_key_file=s.audit_key_file)
    if s.c2pa_cert is None:
        print(f"   C2PA signer and audit key: local test CA in {keys.chain.parent} (NOT FOR PRODUCTION)")
    if not s.watermark_key_callback and s.watermark_key_file is None:
        ring = ensure_development_key(s.watermark_key_path())
        print(f"   watermark key: {ring[0].key_id}, a development key in {s.keys_dir} (NOT FOR PRODUCTION)")
    tokens = _demo_tokens(rt)
    print("2. users:", ", ".join(f"{n} ({'/'.join(r)})" for n, r in DEMO_USERS.items()))
    print(f'   each user\'s token: {s.data_dir / TOKENS_FILE} (mode 0600; README: "Try each role")')

    def act(name: str) -> tuple[Runtime, str]:
        """The runtime and user name of `name` as its token proves them (never a claimed name)."""
        with rt.sessions() as session:
            who = authenticate(session, tokens[name])
        return rt.with_token(who.token_id), who.user

    admin_rt, admin = act("admin")
    with admin_rt.sessions.begin() as session:
        print(f"3. licence {CREATIVEML_OPENRAIL_PP_M.name} registered for the SDXL models")
        register_licence(session, admin, CREATIVEML_OPENRAIL_PP_M)
    admin_rt.anchor(admin)  # as every face does after a governance decision (users, tokens, licence)
    maria_rt, maria = act("maria")
    with maria_rt.sessions.begin() as session:
        batch = submit_batch(session, maria, csv, "catalogue")
        batch_id, content = batch.id, batch.content_sha256
    print(f"4. maria submitted {csv.name}: batch {batch_id}, content sha256 {content[:16]}...")
    omar_rt, omar = act("omar")
    with omar_rt.sessions.begin() as session:
        approve_batch(session, omar, batch_id, content)
    omar_rt.anchor(omar)
    print("5. omar approved it (pinned to that content hash)")
    print("6. ops runs it: SDXL base -> refiner, safety, watermark, publish (Prefect flow)")
    ops_rt, ops = act("ops")
    [result] = run_batches(ops_rt, ops, [batch_id])
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
    print(
        f"console:  atelier serve, then http://127.0.0.1:8080/ as any demo user, passwords in "
        f"{rt.settings.data_dir / PASSWORDS_FILE}"
    )
    return 0 if report.ok and result.completed else 1
