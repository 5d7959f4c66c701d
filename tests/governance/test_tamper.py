"""Threat T2 (docs/security.md): someone who can write to the database, but holds neither the audit key
nor the checkpoint signing key, changes what the record says. `audit verify` names every such change.

The attacker works with plain SQL on their own connection (on PostgreSQL as a superuser who switches
the append-only triggers and foreign keys off; on SQLite with a bare sqlite3 connection), never
through Atelier's code, on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

import hashlib
import hmac
import sqlite3
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from governance.approvals import approve_batch
from governance.audit import (
    GENESIS_HASH,
    AuditKey,
    AuditKeyRing,
    canonical_json,
    event_hash,
    record_event,
)
from governance.batches import get_batch, submit_batch
from governance.credentials import checkpoint_certificates, init_test_ca
from governance.db import make_engine, make_sessionmaker, upgrade
from governance.errors import GovernanceCheckFailed, InvalidState
from governance.ledger import (
    CheckpointSigner,
    LedgerReport,
    anchor_chain,
    baseline_records,
    rotate_checkpoint_keys,
    verify_ledger,
)
from governance.licences import CREATIVEML_OPENRAIL_PP_M, record_model_version
from governance.records import ApiToken, AuditEvent, Image, User, image_id_for, utcnow
from governance.runs import finish_run, start_run
from governance.store import LocalStore, image_key
from governance.users import add_user
from tests.conftest import TEST_AUDIT_KEYS
from tests.governance.conftest import good_rows, write_csv

# ---------------------------------------------------------------- the world and the attacker


@dataclass
class World:
    store: LocalStore
    keys: Path
    signer: CheckpointSigner
    token: str = ""
    batch: str = ""
    prompts: list[str] = field(default_factory=list)
    approval: str = ""
    run: str = ""
    models: list[str] = field(default_factory=list)
    published: str = ""
    quarantined: str = ""
    hold: str = ""

    @property
    def certificates(self) -> bytes:
        found = checkpoint_certificates(self.keys, self.keys / "signer-chain.pem")
        assert found is not None
        return found


@pytest.fixture
def world(sessions: sessionmaker[Session], tmp_path: Path) -> World:
    """One record of every governed kind, made through the services, then anchored."""
    paths = init_test_ca(tmp_path / "keys")
    signer = CheckpointSigner(paths.chain.read_bytes(), paths.key.read_bytes())
    w = World(LocalStore(tmp_path / "store"), tmp_path / "keys", signer)
    with sessions.begin() as s:
        maria = s.scalar(select(User).where(User.name == "maria"))
        assert maria is not None
        token = ApiToken(
            id=str(uuid.uuid4()),
            user_id=maria.id,
            name="laptop",
            token_sha256=hashlib.sha256(b"atl_not-a-real-token").hexdigest(),
            expires_at=utcnow() + timedelta(days=30),
        )
        s.add(token)
        s.flush()
        record_event(s, "admin", "token.issued", "token", token.id, {"user": "maria"})
        w.token = token.id
    with sessions.begin() as s:
        batch = submit_batch(s, "maria", write_csv(tmp_path / "b.csv", good_rows(2)), "catalogue")
        w.batch, w.prompts = batch.id, [p.id for p in batch.prompts]
    with sessions.begin() as s:
        sha = get_batch(s, w.batch).content_sha256
        w.approval = approve_batch(s, "omar", w.batch, expected_sha256=sha).id
    with sessions.begin() as s:
        versions = [
            record_model_version(
                s, "ops", role, f"tiny/{role}", "/m", hashlib.sha256(role.encode()).hexdigest(), {}, LICENCE
            )
            for role in ("base_unet", "vae")
        ]
        run = start_run(s, "ops", w.batch, versions, engine={"device": "cpu", "scale": 7.5})
        w.run, w.models = run.id, [v.id for v in versions]
    for prompt_id, status in zip(w.prompts, ("published", "quarantined"), strict=True):
        with sessions.begin() as s:
            image_id = image_id_for(prompt_id, 0)
            image = Image(
                id=image_id,
                prompt_id=prompt_id,
                batch_id=w.batch,
                run_id=w.run,
                image_index=0,
                seed="101",
                status=status,
                width=256,
                height=256,
                safety_model="tiny",
                safety_policy="v1",
                safety_scores={"nsfw": 0.93 if status == "quarantined" else 0.01},
                safety_verdict="passed" if status == "published" else "quarantined",
                safety_reasons=[] if status == "published" else ["nsfw score 0.93 above 0.5"],
            )
            if status == "published":
                data = b"\x89PNG not really" + image_id.encode()
                digest = hashlib.sha256(data).hexdigest()
                image.sha256, image.store_key, image.store_url = digest, image_key(image_id, digest), w.store.url
                image.watermark_payload, image.watermark_matched_bits = "b3ec907bb19e", 64
                w.store.put(image.store_key, data, "image/png", {})
                w.published = image_id
            else:
                w.quarantined = image_id
            s.add(image)
            s.flush()
            record_event(s, "ops", f"image.{status}", "image", image_id, {"run_id": w.run})
    with sessions.begin() as s:
        finish_run(s, "ops", w.run)
    with sessions.begin() as s:
        from governance.holds import place

        w.hold = place(s, "admin", w.store, "matter 2026-17", [w.published]).holds[0].hold_id
    anchor(sessions, w)
    return w


LICENCE = CREATIVEML_OPENRAIL_PP_M.id


def anchor(sessions: sessionmaker[Session], w: World, actor: str = "ops") -> int:
    with sessions.begin() as s:
        found = anchor_chain(s, actor, w.store, w.signer, retention_days=1)
        assert found is not None
        return found.seq


def verify(sessions: sessionmaker[Session], w: World, **kwargs: object) -> LedgerReport:
    with sessions() as s:
        return verify_ledger(s, w.store, w.store, w.certificates, **kwargs)  # type: ignore[arg-type]


def attack(sessions: sessionmaker[Session], *statements: str, params: dict[str, object] | None = None) -> None:
    """Plain SQL on the attacker's own connection: no Atelier code, no audit key."""
    engine = sessions.kw["bind"]
    if engine.dialect.name == "sqlite":
        db = sqlite3.connect(engine.url.database)  # foreign keys are off on a bare connection
        try:
            for statement in statements:
                db.execute(statement, params or {})
            db.commit()
        finally:
            db.close()
        return
    with engine.begin() as conn:
        conn.execute(text("SET LOCAL session_replication_role = replica"))  # triggers and foreign keys off
        for statement in statements:
            if params is None:  # literal SQL, colons and all
                conn.exec_driver_sql(statement)
            else:
                conn.execute(text(statement), params)


def user_id(sessions: sessionmaker[Session], name: str) -> int:
    with sessions() as s:
        found = s.scalar(select(User.id).where(User.name == name))
    assert found is not None
    return found


def assert_named(report: LedgerReport, *fragments: str) -> None:
    assert not report.ok
    assert any(all(f in p for f in fragments) for p in report.problems), report.problems


# ---------------------------------------------------------------- an intact world verifies


def test_an_intact_world_verifies_and_every_kind_is_checked(sessions, world) -> None:
    report = verify(sessions, world)
    assert report.ok, report.problems
    assert report.records == {
        "user": 5,
        "token": 1,
        "licence": 1,
        "model_version": 2,
        "batch": 1,
        "prompt": 2,
        "approval": 1,
        "run": 1,
        "image": 2,
        "legal_hold": 1,
        # preference judgements too (this world has none: tests/flows/test_pipelines_flow.py changes one)
        "preference": 0,
        # the catalogue's kinds are checked too (this world has none of them: tests/flows/test_catalogue_flow.py)
        "catalogue_import": 0,
        "product_version": 0,
        "product": 0,
        "template": 0,
        "standing_approval": 0,
        "catalogue_item": 0,
    }
    assert report.chain["authenticated"] == report.chain["events"] and report.chain["legacy"] == 0
    with sessions() as s:  # each record is bound by the event it is the subject of
        bound = {tuple(r[:2]): e.action for e in s.scalars(select(AuditEvent)) for r in (e.records or []) if e.records}
    assert bound[("image", world.published)] == "image.published"
    assert bound[("approval", world.approval)] == "batch.approved"
    assert bound[("token", world.token)] == "token.issued"


# ---------------------------------------------------------------- every kind, changed with SQL


Case = Callable[[World, Callable[[str], int]], tuple[list[str], list[str]]]

CASES: dict[str, Case] = {
    "user renamed": lambda w, uid: (
        [f"UPDATE users SET name = 'mallory' WHERE id = {uid('omar')}"],
        ["user mallory", f"(id {uid('omar')}, users)", "its row differs from what event"],
    ),
    "user given a role": lambda w, uid: (
        [f"INSERT INTO user_roles (user_id, role) VALUES ({uid('maria')}, 'approver')"],
        ["user maria", "its row differs from what event"],
    ),
    "user's role changed": lambda w, uid: (
        [f"UPDATE user_roles SET role = 'admin' WHERE user_id = {uid('ops')}"],
        ["user ops", "its row differs from what event"],
    ),
    "user's role removed": lambda w, uid: (
        [f"DELETE FROM user_roles WHERE user_id = {uid('omar')}"],
        ["user omar", "its row differs from what event"],
    ),
    "user re-enabled": lambda w, uid: (
        [f"UPDATE users SET password_hash = 'x' WHERE id = {uid('maria')}"],
        ["user maria", "its row differs from what event"],
    ),
    "user deleted": lambda w, uid: (
        [f"DELETE FROM user_roles WHERE user_id = {uid('nina')}", f"DELETE FROM users WHERE id = {uid('nina')}"],
        [f"user {uid('nina')} (users): deleted, but event", "(user.created nina) recorded it"],
    ),
    "token prolonged": lambda w, uid: (
        [f"UPDATE api_tokens SET expires_at = '2099-01-01 00:00:00' WHERE id = '{w.token}'"],
        [f"token {w.token} (api_tokens): its row differs from what event"],
    ),
    "token deleted": lambda w, uid: (
        [f"DELETE FROM api_tokens WHERE id = '{w.token}'"],
        [f"token {w.token} (api_tokens): deleted, but event", "token.issued"],
    ),
    "licence restrictions lifted": lambda w, uid: (
        ["UPDATE licences SET restrictions = '[]'"],
        [f"licence {LICENCE} (licences): its row differs from what event"],
    ),
    "model version's hash changed": lambda w, uid: (
        [f"UPDATE model_versions SET sha256 = '{'f' * 64}' WHERE id = '{w.models[0]}'"],
        [f"model_version {w.models[0]} (model_versions): its row differs"],
    ),
    "batch status changed": lambda w, uid: (
        [f"UPDATE batches SET status = 'approved' WHERE id = '{w.batch}'"],
        [f"batch {w.batch} (batches): its row differs from what event"],
    ),
    "prompt text changed": lambda w, uid: (
        [f"UPDATE prompts SET prompt = 'something else entirely' WHERE id = '{w.prompts[0]}'"],
        [f"prompt {w.prompts[0]} (prompts): its row differs from what event"],
    ),
    "prompt guidance nudged by 1e-9": lambda w, uid: (
        [f"UPDATE prompts SET guidance_scale = guidance_scale + 0.000000001 WHERE id = '{w.prompts[1]}'"],
        [f"prompt {w.prompts[1]} (prompts): its row differs from what event"],
    ),
    "prompt deleted": lambda w, uid: (
        [f"DELETE FROM prompts WHERE id = '{w.prompts[1]}'"],
        [f"prompt {w.prompts[1]} (prompts): deleted, but event", "batch.submitted"],
    ),
    "approval's decider changed": lambda w, uid: (
        [f"UPDATE approvals SET decided_by_id = {uid('nina')} WHERE id = '{w.approval}'"],
        [f"approval {w.approval} (approvals): its row differs from what event"],
    ),
    "approval deleted": lambda w, uid: (
        [f"DELETE FROM approvals WHERE id = '{w.approval}'"],
        [f"approval {w.approval} (approvals): deleted, but event", "batch.approved"],
    ),
    "run's engine rewritten": lambda w, uid: (
        [f"UPDATE runs SET engine = '{{\"device\":\"cuda\"}}' WHERE id = '{w.run}'"],
        [f"run {w.run} (runs): its row differs from what event"],
    ),
    "run's model version unlinked": lambda w, uid: (
        [f"DELETE FROM run_model_versions WHERE run_id = '{w.run}' AND model_version_id = '{w.models[1]}'"],
        [f"run {w.run} (runs): its row differs from what event"],
    ),
    "quarantined image marked passed": lambda w, uid: (
        [
            "UPDATE images SET safety_verdict = 'passed', status = 'published', safety_reasons = '[]' "
            f"WHERE id = '{w.quarantined}'"
        ],
        [f"image {w.quarantined} (images): its row differs from what event"],
    ),
    "image's safety scores rewritten": lambda w, uid: (
        [f"UPDATE images SET safety_scores = '{{\"nsfw\":0.01}}' WHERE id = '{w.quarantined}'"],
        [f"image {w.quarantined} (images): its row differs from what event"],
    ),
    "image's recorded hash changed": lambda w, uid: (
        [f"UPDATE images SET sha256 = '{'0' * 64}' WHERE id = '{w.published}'"],
        [f"image {w.published} (images): its row differs from what event"],
    ),
    "image's watermark bits changed": lambda w, uid: (
        [f"UPDATE images SET watermark_matched_bits = 40 WHERE id = '{w.published}'"],
        [f"image {w.published} (images): its row differs from what event"],
    ),
    "legal hold released with SQL": lambda w, uid: (
        [f"UPDATE legal_holds SET released_at = placed_at WHERE id = '{w.hold}'"],
        [f"legal_hold {w.hold} (legal_holds): its row differs from what event"],
    ),
    "legal hold deleted": lambda w, uid: (
        [f"DELETE FROM legal_holds WHERE id = '{w.hold}'"],
        [f"legal_hold {w.hold} (legal_holds): deleted, but event", "hold.placed"],
    ),
    "image deleted": lambda w, uid: (
        [f"DELETE FROM images WHERE id = '{w.quarantined}'"],
        [f"image {w.quarantined} (images): deleted, but event", "image.quarantined"],
    ),
    "image inserted": lambda w, uid: (
        [
            "INSERT INTO images (id, prompt_id, batch_id, run_id, image_index, seed, status, width, height, "
            "safety_model, safety_policy, safety_scores, safety_verdict, safety_reasons, licence_obligations, "
            f"created_at) SELECT 'forged-image', prompt_id, batch_id, run_id, 7, seed, status, width, height, "
            f"safety_model, safety_policy, safety_scores, safety_verdict, safety_reasons, licence_obligations, "
            f"created_at FROM images WHERE id = '{w.published}'"
        ],
        ["image forged-image (images): no event binds it"],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_record_changed_with_sql_is_named(sessions, world, case) -> None:
    statements, fragments = CASES[case](world, lambda name: user_id(sessions, name))
    attack(sessions, *statements)
    report = verify(sessions, world)
    assert report.chain["ok"], report.chain  # the chain itself is untouched: the records check names it
    assert_named(report, *fragments)


# ---------------------------------------------------------------- the events themselves


def _full_body(e: AuditEvent) -> dict[str, object]:
    body: dict[str, object] = {
        "seq": e.seq,
        "at": e.at,
        "actor": e.actor,
        "action": e.action,
        "subject_type": e.subject_type,
        "subject_id": e.subject_id,
        "payload": e.payload,
    }
    for name in ("token_id", "records", "key_id"):
        if getattr(e, name) is not None:
            body[name] = getattr(e, name)
    return body


def _head(sessions: sessionmaker[Session]) -> AuditEvent:
    with sessions() as s:
        head = s.scalar(select(AuditEvent).order_by(AuditEvent.seq.desc()).limit(1))
    assert head is not None
    return head


def _append_forged(sessions: sessionmaker[Session], key_id: str | None, mac_key: bytes | None) -> int:
    """An event with a correct hash chain, written with database access only."""
    head = _head(sessions)
    forged = AuditEvent(
        seq=head.seq + 1,
        at=head.at,
        actor="omar",
        action="batch.approved",
        subject_type="batch",
        subject_id="whatever",
        payload={"reason": "forged"},
        prev_hash=head.hash,
        key_id=key_id,
    )
    forged.hash = event_hash(head.hash, _full_body(forged))
    forged.mac = hmac.new(mac_key, forged.hash.encode(), hashlib.sha256).hexdigest() if mac_key else None
    attack(
        sessions,
        "INSERT INTO audit_events (seq, at, actor, action, subject_type, subject_id, payload, prev_hash, hash, "
        "key_id, mac) VALUES (:seq, :at, :actor, :action, :st, :sid, :payload, :prev, :hash, :key_id, :mac)",
        params={
            "seq": forged.seq,
            "at": forged.at,
            "actor": forged.actor,
            "action": forged.action,
            "st": forged.subject_type,
            "sid": forged.subject_id,
            "payload": canonical_json(forged.payload),
            "prev": forged.prev_hash,
            "hash": forged.hash,
            "key_id": key_id,
            "mac": forged.mac,
        },
    )
    return forged.seq


def test_an_event_appended_without_a_mac_is_caught(sessions, world) -> None:
    seq = _append_forged(sessions, None, None)
    report = verify(sessions, world)
    assert report.chain["first_bad_seq"] == seq
    assert_named(report, f"event {seq} (batch.approved) is not authenticated")


def test_an_event_forged_with_the_wrong_key_is_caught(sessions, world) -> None:
    # the attacker knows the key's id (it is stored) but not its secret
    seq = _append_forged(sessions, TEST_AUDIT_KEYS.current.key_id, b"a guess at the key, 32 bytes ok?")
    report = verify(sessions, world)
    assert_named(report, f"event {seq} (batch.approved) fails its MAC")


def test_an_event_naming_an_unknown_key_is_caught(sessions, world) -> None:
    seq = _append_forged(sessions, "ak-0000000000000000", b"mallory's own key, long enough!!")
    assert_named(verify(sessions, world), f"event {seq} (batch.approved) names audit key ak-0000000000000000")


def test_history_rewritten_with_recomputed_hashes_fails_the_macs(sessions, world) -> None:
    """Edit an event and recompute every later hash, keeping the rest as it was: the MACs give it away."""
    with sessions() as s:
        events = list(s.scalars(select(AuditEvent).order_by(AuditEvent.seq)))
        target = next(e for e in events if e.action == "batch.approved")
        s.expunge_all()
    prev, statements = GENESIS_HASH, []
    for e in events:
        if e.seq == target.seq:
            e.actor = "nina"
        if e.seq >= target.seq:
            e.prev_hash = prev
            e.hash = event_hash(prev, _full_body(e))
            statements.append(
                f"UPDATE audit_events SET actor = '{e.actor}', prev_hash = '{e.prev_hash}', hash = '{e.hash}' "
                f"WHERE seq = {e.seq}"
            )
        prev = e.hash
    attack(sessions, *statements)
    report = verify(sessions, world)
    assert report.chain["first_bad_seq"] == target.seq
    assert_named(report, f"event {target.seq} (batch.approved) fails its MAC")


def test_the_acting_token_is_on_every_event_and_cannot_be_changed(sessions, world) -> None:
    engine = sessions.kw["bind"]
    as_maria = make_sessionmaker(engine, audit_keys=TEST_AUDIT_KEYS, token_id=world.token)
    with as_maria.begin() as s:
        add_user(s, "admin", "lee", ["auditor"])
    head = _head(sessions)
    assert head.token_id == world.token and head.action == "user.created"
    assert verify(sessions, world).ok
    attack(sessions, f"UPDATE audit_events SET token_id = '{uuid.uuid4()}' WHERE seq = {head.seq}")
    assert_named(verify(sessions, world), f"event {head.seq} (user.created) was altered")


# ---------------------------------------------------------------- truncation


def test_deleting_the_newest_events_is_caught_by_the_records_they_bound(sessions, world) -> None:
    with sessions() as s:
        last_run_event = s.scalar(select(func.max(AuditEvent.seq)).where(AuditEvent.action == "run.completed"))
    attack(sessions, f"DELETE FROM audit_events WHERE seq >= {last_run_event}")
    report = verify(sessions, world)
    assert_named(report, f"run {world.run} (runs): its row differs from what event")


def test_a_consistent_rollback_of_the_tail_is_caught_by_the_anchor_in_the_store(sessions, world) -> None:
    """The attacker deletes the newest events, every row they bound and the anchor rows: the database
    is consistent again, but the store still lists the anchor."""
    before = _head(sessions).seq
    with sessions.begin() as s:
        add_user(s, "admin", "lee", ["auditor"])
    anchored = anchor(sessions, world)
    lee = user_id(sessions, "lee")
    attack(
        sessions,
        f"DELETE FROM user_roles WHERE user_id = {lee}",
        f"DELETE FROM users WHERE id = {lee}",
        f"DELETE FROM audit_anchors WHERE seq > {before}",
        f"DELETE FROM audit_events WHERE seq > {before}",
    )
    report = verify(sessions, world)
    assert report.chain["ok"] and report.records_checked > 0
    assert_named(
        report,
        f"the newest anchor in the store is at event {anchored}",
        f"chain ends at event {before}",
        "(truncation)",
    )


def test_the_window_a_consistent_rollback_after_the_newest_anchor_goes_unnoticed(sessions, world) -> None:
    """The residual risk docs/security.md states: what happened after the newest anchor can be rolled
    back with everything it bound. Anchoring after each decision and every minute of a run bounds it."""
    before = _head(sessions).seq
    with sessions.begin() as s:
        add_user(s, "admin", "lee", ["auditor"])
    lee = user_id(sessions, "lee")
    attack(
        sessions,
        f"DELETE FROM user_roles WHERE user_id = {lee}",
        f"DELETE FROM users WHERE id = {lee}",
        f"DELETE FROM audit_events WHERE seq > {before}",
    )
    assert verify(sessions, world).ok


# ---------------------------------------------------------------- invariant 3 at the source


def test_a_governed_change_without_an_event_is_refused(sessions, world) -> None:
    with pytest.raises(GovernanceCheckFailed, match="records no audit event"), sessions.begin() as s:
        image = s.get(Image, world.quarantined)
        assert image is not None
        image.safety_verdict = "passed"
    with pytest.raises(GovernanceCheckFailed, match="bulk UPDATE on images"), sessions.begin() as s:
        s.execute(update(Image).values(safety_verdict="passed"))
    assert verify(sessions, world).ok  # nothing was written


def test_no_audit_key_no_event(sessions, world) -> None:
    keyless = make_sessionmaker(sessions.kw["bind"])
    with keyless() as s:  # reading needs no key
        assert s.scalar(select(func.count()).select_from(User)) == 5
    with pytest.raises(GovernanceCheckFailed, match="no audit key"), keyless.begin() as s:
        add_user(s, "admin", "lee", ["auditor"])
    with keyless() as s, pytest.raises(GovernanceCheckFailed, match="no audit key"):
        verify_ledger(s, world.store, world.store, world.certificates)


# ---------------------------------------------------------------- keys: the audit key ring, the anchor key


def test_events_keep_verifying_after_the_audit_key_rotates(sessions, world) -> None:
    rotated = AuditKeyRing((AuditKey(b"the new audit key, at least 16 bytes"), *TEST_AUDIT_KEYS.keys))
    new_sessions = make_sessionmaker(sessions.kw["bind"], audit_keys=rotated)
    with new_sessions.begin() as s:
        add_user(s, "admin", "lee", ["auditor"])
    assert _head(sessions).key_id == rotated.current.key_id
    with new_sessions() as s:
        report = verify_ledger(s, world.store, world.store, world.certificates)
    assert report.ok, report.problems
    with sessions() as s:  # the old ring alone does not know the new key
        report = verify_ledger(s, world.store, world.store, world.certificates)
    assert_named(report, "names audit key", "which is not in the key ring")


def test_old_anchors_verify_after_the_checkpoint_key_rotates(sessions, world) -> None:
    first_signer = world.signer.certificate_id
    with sessions.begin() as s:
        rotation = rotate_checkpoint_keys(s, "admin", world.keys)
    assert rotation.previous_certificate == first_signer != rotation.certificate and rotation.ring_size == 1
    world.signer = CheckpointSigner(
        (world.keys / "signer-chain.pem").read_bytes(), (world.keys / "signer-key.pem").read_bytes()
    )
    assert world.signer.certificate_id == rotation.certificate
    anchor(sessions, world)
    report = verify(sessions, world)
    assert report.ok, report.problems
    assert report.anchors_checked == 2
    with sessions() as s:
        assert _head(sessions).action == "audit.anchored"
        rotated = s.scalar(select(AuditEvent).where(AuditEvent.action == "keys.checkpoint_rotated"))
        assert rotated is not None and rotated.payload["previous_certificate"] == first_signer
        # without the ring, the first anchor's certificate is unknown: named, not silently skipped
        only_new = (world.keys / "signer-chain.pem").read_bytes()
        report = verify_ledger(s, world.store, world.store, only_new)
    assert_named(report, "not in the certificate ring")


def test_keys_init_force_is_refused_once_anchors_exist(sessions, world) -> None:
    with sessions() as s, pytest.raises(InvalidState, match="atelier keys rotate"):
        init_test_ca(world.keys, force=True, session=s)


# ---------------------------------------------------------------- incremental verification


def test_incremental_verification_from_an_anchor(sessions, world) -> None:
    since = anchor(sessions, world)
    with sessions.begin() as s:
        add_user(s, "admin", "lee", ["auditor"])
    report = verify(sessions, world, since_anchor=since)
    assert report.ok and report.mode == "incremental" and report.since_seq == since, report.problems
    assert report.chain["events"] == _head(sessions).seq - since
    assert report.records == {**dict.fromkeys(report.records, 0), "user": 1}
    lee = user_id(sessions, "lee")
    attack(sessions, f"UPDATE user_roles SET role = 'admin' WHERE user_id = {lee}")
    assert_named(verify(sessions, world, since_anchor=since), "user lee", "its row differs")
    # a record bound only before the anchor is a full verification's finding
    attack(sessions, f"UPDATE prompts SET prompt = 'other' WHERE id = '{world.prompts[0]}'")
    assert not any("prompt" in p for p in verify(sessions, world, since_anchor=since).problems)
    assert_named(verify(sessions, world), f"prompt {world.prompts[0]} (prompts): its row differs")


# ---------------------------------------------------------------- a ledger from before records were bound


def _legacy_event(conn_sessions: sessionmaker[Session], action: str, subject: str) -> None:
    """An event as Atelier wrote them before 0007: chained, no MAC, binding nothing."""
    with conn_sessions() as s:
        head = s.execute(select(AuditEvent.seq, AuditEvent.hash).order_by(AuditEvent.seq.desc()).limit(1)).first()
    seq, prev = (head[0] + 1, head[1]) if head else (1, GENESIS_HASH)
    body = {
        "seq": seq,
        "at": "2026-01-01T00:00:00.000000Z",
        "actor": "bootstrap",
        "action": action,
        "subject_type": "user",
        "subject_id": subject,
        "payload": {},
    }
    attack(
        conn_sessions,
        "INSERT INTO audit_events (seq, at, actor, action, subject_type, subject_id, payload, prev_hash, hash) "
        "VALUES (:seq, :at, 'bootstrap', :action, 'user', :sid, '{}', :prev, :hash)",
        params={
            "seq": seq,
            "at": body["at"],
            "action": action,
            "sid": subject,
            "prev": prev,
            "hash": event_hash(prev, body),
        },
    )


def test_a_ledger_from_before_0007_is_bound_once_by_a_baseline(database_url, tmp_path) -> None:
    engine = make_engine(database_url)
    upgrade(engine)
    sessions = make_sessionmaker(engine, audit_keys=TEST_AUDIT_KEYS)
    store = LocalStore(tmp_path / "store")
    # what an older Atelier left: users and their events, nothing bound, nothing authenticated
    attack(
        sessions,
        "INSERT INTO users (id, name, created_at) VALUES (1, 'admin', '2026-01-01 00:00:00')",
        "INSERT INTO user_roles (user_id, role) VALUES (1, 'admin')",
        "INSERT INTO users (id, name, created_at) VALUES (2, 'maria', '2026-01-01 00:00:00')",
        "INSERT INTO user_roles (user_id, role) VALUES (2, 'requester')",
    )
    _legacy_event(sessions, "user.created", "admin")
    _legacy_event(sessions, "user.created", "maria")
    with sessions() as s:
        report = verify_ledger(s, store, store, None)
    assert_named(report, "event 1 (user.created) is not authenticated")
    assert_named(report, "user admin (id 1, users): no event binds it")
    with sessions.begin() as s:
        baseline = baseline_records(s, "admin")
    assert baseline.legacy_until == 2 and baseline.records == {"user": 2}
    with sessions() as s:
        report = verify_ledger(s, store, store, None)
    assert report.ok, report.problems
    assert report.chain["legacy"] == 2 and any("before events were authenticated" in w for w in report.warnings)
    # from here on, an unauthenticated event is an attacker's
    _legacy_event(sessions, "user.created", "mallory")
    with sessions() as s:
        assert_named(verify_ledger(s, store, store, None), "event 4 (user.created) is not authenticated")
    engine.dispose()


def test_a_baseline_is_refused_on_a_ledger_authenticated_from_its_start(sessions, world) -> None:
    attack(
        sessions,
        "INSERT INTO licences (id, name, url, text_sha256, obligations, restrictions, created_at) "
        "VALUES ('forged', 'x', 'x', 'x', '[]', '[]', '2026-01-01 00:00:00')",
    )
    with sessions() as s, pytest.raises(InvalidState, match="written outside Atelier"):
        baseline_records(s, "admin")
    assert_named(verify(sessions, world), "licence forged (licences): no event binds it")


# ---------------------------------------------------------------- an event's text shifted between columns


def test_bindings_moved_into_the_payload_text_are_caught(sessions, world) -> None:
    """The chain hashes an event's JSON columns as stored text, side by side (`"payload":P,"records":R`).
    An attacker moves the records list into the payload's text and empties `records`: the hashed text
    is the same, but the event no longer binds what it changed, so the change can be undone unseen
    (here: a role grant, then the role row deleted, leaving the user as an earlier event bound it).
    SQLite stores such a payload as it is; PostgreSQL refuses it unless the column is turned into
    text first, as a DBA may. `audit verify` reads each event's columns as separate JSON values."""
    from governance.users import grant_roles

    with sessions.begin() as s:
        add_user(s, "admin", "lee", ["auditor"])
    with sessions.begin() as s:
        grant_roles(s, "admin", "lee", ["approver"])
    assert verify(sessions, world).ok
    grant = _head(sessions)
    assert grant.records and grant.subject_id == "lee"
    with sessions() as s:
        payload_text, records_text = s.execute(
            text("SELECT CAST(payload AS TEXT), CAST(records AS TEXT) FROM audit_events WHERE seq = :seq"),
            {"seq": grant.seq},
        ).one()
    lee = user_id(sessions, "lee")
    statements = []
    if sessions.kw["bind"].dialect.name == "postgresql":
        statements.append("ALTER TABLE audit_events ALTER COLUMN payload TYPE TEXT")
    statements += [
        "UPDATE audit_events SET payload = :payload, records = NULL WHERE seq = :seq",
        "DELETE FROM user_roles WHERE user_id = :lee AND role = 'approver'",
    ]
    attack(
        sessions,
        *statements,
        params={"payload": f'{payload_text},"records":{records_text}', "seq": grant.seq, "lee": lee},
    )
    report = verify(sessions, world)
    assert_named(report, f"event {grant.seq} ({grant.action}) was altered")
