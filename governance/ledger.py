"""Anchoring the audit chain to WORM storage, verifying the whole ledger, and rotating the anchor key.

An anchor is a signed checkpoint of the chain head (sequence, head hash, time, the signing
certificate's fingerprint), written to the object store under S3 Object Lock in COMPLIANCE mode with
a retention period, and recorded in the append-only `audit_anchors` table. Rewriting or truncating
history then needs more than database access: the retained checkpoint still names the old head, and
its signature cannot be forged without the organisation's key. Faces anchor after every governance
decision and runs anchor every `ATELIER_ANCHOR_INTERVAL_SECONDS` and at their end
(`flows.runtime.Runtime.anchor`).

`verify_ledger` checks, and names what breaks:
  1. the hash chain and every event's MAC (`audit.verify_chain`): an event appended or rewritten
     without the audit key fails;
  2. every anchor: its event still has the anchored hash, its stored object (the exact version
     written) still says so, and its signature verifies against the certificate it names in the
     certificate ring (current and earlier signing certificates);
  3. the anchors in the store, listed (not only the table's rows): one beyond the database's head
     means the newest events were deleted (truncation); one without a row is reported;
  4. every governed record against the latest digest the ledger holds for it
     (`bindings.check_records`): changed, inserted, deleted outside Atelier;
  5. every published object: it still exists, and its SHA-256 is the one recorded.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from governance import bindings
from governance.audit import (
    GENESIS_HASH,
    AuditKeyRing,
    ChainReport,
    ChainStart,
    canonical_json,
    event_body,
    event_hash,
    key_ring_of,
    record_event,
    verify_chain,
)
from governance.errors import GovernanceCheckFailed, InvalidState
from governance.records import AuditAnchor, AuditEvent, Image
from governance.results import Result
from governance.retry import is_transient
from governance.store import ObjectStore

if TYPE_CHECKING:
    from cryptography.x509 import Certificate

CHECKPOINT_SCHEMA = "atelier.audit-checkpoint/2"
CHECKPOINT_SCHEMA_V1 = "atelier.audit-checkpoint/1"  # before events were authenticated (no MACs)
ANCHOR_PREFIX = "audit/anchors/"
_ANCHOR_KEY = re.compile(r"(\d{12})-([0-9a-f]{16})\.json$")
BASELINE_ACTION = "records.baseline"
BASELINE_CHUNK = 5000  # records per baseline event


def certificate_id(certificate: Certificate) -> str:
    """The SHA-256 fingerprint of a certificate (its DER bytes), as anchors name their signer."""
    from cryptography.hazmat.primitives import serialization

    return hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).hexdigest()


def certificate_ring(pem: bytes) -> dict[str, Certificate]:
    """Every certificate in a PEM bundle by fingerprint: the current signer and the earlier ones."""
    from cryptography import x509

    return {certificate_id(c): c for c in x509.load_pem_x509_certificates(pem)} if pem.strip() else {}


class CheckpointSigner:
    """ES256 over the canonical checkpoint JSON, with the organisation's key (or a KMS callback)."""

    def __init__(
        self, chain_pem: bytes, key_pem: bytes | None = None, callback: Callable[[bytes], bytes] | None = None
    ):
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        certs = x509.load_pem_x509_certificates(chain_pem)
        self.certificate = certs[0]
        self._callback = callback
        self._key: ec.EllipticCurvePrivateKey | None = None
        if key_pem:
            key = serialization.load_pem_private_key(key_pem, None)
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                raise GovernanceCheckFailed(
                    f"checkpoint signing key is {type(key).__name__}, not an EC (P-256) key: "
                    "audit checkpoints are signed ES256"
                )
            self._key = key
        if self._key is None and callback is None:
            raise GovernanceCheckFailed("checkpoint signer needs a private key or a signing callback")

    @property
    def certificate_id(self) -> str:
        return certificate_id(self.certificate)

    def sign(self, data: bytes) -> bytes:
        if self._callback is not None:
            return self._callback(data)
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

        if self._key is None:  # unreachable: __init__ refuses a signer with neither key nor callback
            raise GovernanceCheckFailed("checkpoint signer needs a private key or a signing callback")
        r, s = decode_dss_signature(self._key.sign(data, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def _signature_valid(cert: Certificate, data: bytes, signature: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    if len(signature) != 64:
        return False
    der = encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big"))
    public_key = cert.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        return False  # not an ES256 signer: it cannot have signed a checkpoint
    try:
        public_key.verify(der, data, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


def signature_valid(certificate_pem: bytes, data: bytes, signature: bytes) -> bool:
    """Whether the first certificate of `certificate_pem` verifies `signature` over `data`."""
    from cryptography import x509

    return _signature_valid(x509.load_pem_x509_certificates(certificate_pem)[0], data, signature)


def anchor_key(seq: int, head_hash: str) -> str:
    return f"{ANCHOR_PREFIX}{seq:012d}-{head_hash[:16]}.json"


def anchor_chain(
    session: Session, actor: str, store: ObjectStore, signer: CheckpointSigner, retention_days: int
) -> AuditAnchor | None:
    """Anchor the current chain head (idempotent: an already anchored head is returned as is)."""
    head = session.scalar(select(AuditEvent).order_by(AuditEvent.seq.desc()).limit(1))
    if head is None:
        return None
    latest = session.scalar(select(AuditAnchor).order_by(AuditAnchor.seq.desc()).limit(1))
    if latest is not None and (
        latest.seq == head.seq
        or (head.seq == latest.seq + 1 and head.action == "audit.anchored" and head.subject_id == str(latest.seq))
    ):
        return latest  # nothing happened since the last anchor but the anchoring itself
    now = datetime.now(UTC)
    retain_until = now + timedelta(days=retention_days)
    checkpoint = {
        "schema": CHECKPOINT_SCHEMA,
        "seq": head.seq,
        "head_hash": head.hash,
        "at": now.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "retain_until": retain_until.isoformat(),
        "signer": signer.certificate_id,
    }
    signature = base64.b64encode(signer.sign(canonical_json(checkpoint).encode())).decode()
    body = json.dumps({"checkpoint": checkpoint, "alg": "ES256", "signature": signature}, indent=2).encode()
    key = anchor_key(head.seq, head.hash)
    try:
        stored = store.put_retained(key, body, "application/json", retain_until)
    except Exception as exc:
        if is_transient(exc):
            raise  # an outage, not a misconfigured bucket: the caller retries (governance.retry)
        raise GovernanceCheckFailed(
            f"audit anchor could not be written to {store.url} under Object Lock ({str(exc).splitlines()[0]}): "
            "anchors need a bucket created with Object Lock enabled (ATELIER_AUDIT_STORE_URL)"
        ) from exc
    anchor = AuditAnchor(
        seq=head.seq,
        head_hash=head.hash,
        at=checkpoint["at"],
        store_url=store.url,
        key=key,
        version_id=stored.version_id,
        retain_until=retain_until.isoformat() if store.worm else None,
        signature=signature,
        signer_id=signer.certificate_id,
    )
    session.add(anchor)
    session.flush()
    record_event(
        session,
        actor,
        "audit.anchored",
        "audit",
        str(head.seq),
        {
            "head_hash": head.hash,
            "key": key,
            "version_id": stored.version_id,
            "worm": store.worm,
            "signer": signer.certificate_id,
        },
    )
    return anchor


# ---------------------------------------------------------------- verifying


@dataclass
class LedgerReport:
    ok: bool
    chain: dict[str, Any]
    anchors_checked: int = 0
    objects_checked: int = 0
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    records_checked: int = 0
    records: dict[str, int] = field(default_factory=dict)  # rows checked per kind
    mode: str = "full"  # or "incremental": from `since_seq`, a verified anchor
    since_seq: int = 0
    newest_anchor_seq: int | None = None  # the newest anchor in the store: events after it are the open window

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "mode": self.mode,
            "since_seq": self.since_seq,
            "chain": self.chain,
            "anchors_checked": self.anchors_checked,
            "newest_anchor_seq": self.newest_anchor_seq,
            "records_checked": self.records_checked,
            "records": self.records,
            "objects_checked": self.objects_checked,
            "first_problem": self.problems[0] if self.problems else None,
            "problems": self.problems,
            "warnings": self.warnings,
        }


@dataclass(frozen=True)
class _StoredCheckpoint:
    key: str
    seq: int
    head_hash: str
    checkpoint: dict[str, Any]
    signature: str
    signature_ok: bool | None  # None: not checked (no certificate)
    problem: str | None  # why it cannot be used, if it cannot


def _read_checkpoint(
    anchor_store: ObjectStore, key: str, version_id: str | None, ring: dict[str, Certificate]
) -> _StoredCheckpoint:
    try:
        stored = json.loads(anchor_store.get(key, version_id))
        cp = stored.get("checkpoint", {})
        signature = str(stored.get("signature", ""))
        seq, head_hash = int(cp["seq"]), str(cp["head_hash"])
    except Exception as exc:  # noqa: BLE001 - a missing or unreadable anchor is the finding
        return _StoredCheckpoint(
            key, -1, "", {}, "", None, f"stored checkpoint {key} cannot be read ({type(exc).__name__})"
        )
    if not ring:
        return _StoredCheckpoint(key, seq, head_hash, cp, signature, None, None)
    data = canonical_json(cp).encode()
    try:
        raw = base64.b64decode(signature)
    except ValueError:
        raw = b""
    signer = cp.get("signer")
    if signer is not None:
        cert = ring.get(str(signer))
        if cert is None:
            return _StoredCheckpoint(
                key,
                seq,
                head_hash,
                cp,
                signature,
                False,
                f"checkpoint names signing certificate {str(signer)[:16]}..., which is not in the certificate ring "
                "(earlier signing certificates are kept by `atelier keys rotate`)",
            )
        ok = _signature_valid(cert, data, raw)
    else:  # a checkpoint from before signers were named: any certificate of the ring
        ok = any(_signature_valid(c, data, raw) for c in ring.values())
    return _StoredCheckpoint(
        key, seq, head_hash, cp, signature, ok, None if ok else "checkpoint signature does not verify"
    )


def _legacy_until(session: Session, ring: AuditKeyRing, checkpoints: list[_StoredCheckpoint]) -> int:
    """Up to which event unauthenticated (pre-0007) events are accepted: the newest event vouched for
    by a signed checkpoint from before MACs, or named by an authenticated baseline event."""
    limit = max(
        (c.seq for c in checkpoints if c.signature_ok and c.checkpoint.get("schema") == CHECKPOINT_SCHEMA_V1), default=0
    )
    secrets = ring.secrets_by_id()
    for event in session.scalars(
        select(AuditEvent).where(AuditEvent.action == BASELINE_ACTION, AuditEvent.key_id.is_not(None))
    ):
        secret = secrets.get(event.key_id or "")
        if not secret or event.mac != hmac.digest(secret, event.hash.encode(), "sha256").hex():
            continue
        # Its content is re-hashed here, not left to the chain check: an incremental check does not read
        # events before its anchor, and a row outside the chain (seq 0, a copied hash) is never read.
        # The seq is in the hash, so only the authentic event at its own place vouches.
        if event_hash(event.prev_hash, event_body(event)) != event.hash:
            continue
        until = event.payload.get("legacy_until", 0) if isinstance(event.payload, dict) else 0
        if isinstance(until, int) and 0 <= until < event.seq:
            limit = max(limit, until)
    return limit


def verify_ledger(
    session: Session,
    store: ObjectStore,
    anchor_store: ObjectStore | None,
    certificate_pem: bytes | None,
    *,
    keys: AuditKeyRing | None = None,
    since_anchor: int | None = None,
    check_objects: bool = True,
) -> LedgerReport:
    """Verify the ledger; every problem is named (the first is the headline).

    `certificate_pem`: the checkpoint signing certificates (current and earlier: the ring);
    `keys`: the audit key ring (default: the session's). `since_anchor`: incremental mode, from
    that anchor on (its checkpoint must verify): the events after it, the records they bind, the
    anchors from it; earlier events and records bound only by them are not re-read (a full run
    does). Published objects are checked in full mode only."""
    problems: list[str] = []
    warnings: list[str] = []
    ring = keys or key_ring_of(session)
    certificates = certificate_ring(certificate_pem) if certificate_pem else {}
    if not certificates:
        warnings.append("checkpoint signatures not checked: no signing certificate (run `atelier keys init`)")
    # The store's anchors first, then one database snapshot: an anchor listed now was made from a head
    # that is already committed, so the snapshot holds it unless events were deleted.
    listed = sorted(anchor_store.keys(ANCHOR_PREFIX)) if anchor_store is not None else []
    if session.get_bind().dialect.name == "postgresql" and not session.in_transaction():
        session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
    anchors = list(session.scalars(select(AuditAnchor).order_by(AuditAnchor.seq)))
    if since_anchor is not None:
        anchors = [a for a in anchors if a.seq >= since_anchor]
        if not anchors or anchors[0].seq != since_anchor:
            raise InvalidState(f"no anchor at event {since_anchor} to verify from: verify in full")
    checkpoints: dict[str, _StoredCheckpoint] = {}
    if anchor_store is not None:
        for a in anchors:
            checkpoints[a.key] = _read_checkpoint(anchor_store, a.key, a.version_id, certificates)
    start: ChainStart | None = None
    if since_anchor is not None:
        first = anchors[0]
        cp = checkpoints.get(first.key)
        if cp is None or cp.problem or cp.signature_ok is False or cp.head_hash != first.head_hash:
            raise InvalidState(f"the anchor at event {since_anchor} does not verify: verify in full")
        start = ChainStart(cp.seq, cp.head_hash)
    legacy_until = _legacy_until(session, ring, list(checkpoints.values()))
    chain = _verify_chain(session, ring, legacy_until, start)
    if not chain.ok:
        problems.append(f"chain: {chain.problem}")
    if chain.legacy:
        warnings.append(
            f"{chain.legacy} events (up to event {legacy_until}) were written before events were authenticated: "
            "they are protected by the hash chain and the anchors only"
        )
    head_seq = chain.head_seq if chain.ok else _stored_head(session)

    hashes = (
        dict(
            session.execute(
                select(AuditEvent.seq, AuditEvent.hash).where(AuditEvent.seq.in_([a.seq for a in anchors]))
            ).all()
        )
        if anchors
        else {}
    )
    for a in anchors:
        if a.seq not in hashes:
            problems.append(f"anchor {a.seq}: the anchored event {a.seq} is gone (chain truncated or renumbered)")
        elif hashes[a.seq] != a.head_hash:
            problems.append(f"anchor {a.seq}: event {a.seq} no longer has the anchored hash: history was rewritten")
        cp = checkpoints.get(a.key)
        if cp is None:
            continue
        if cp.problem and cp.seq < 0:
            problems.append(f"anchor {a.seq}: {cp.problem}")
            continue
        if cp.seq != a.seq or cp.head_hash != a.head_hash or cp.signature != a.signature:
            problems.append(f"anchor {a.seq}: the database row does not match the stored checkpoint {a.key}")
        if cp.problem:
            problems.append(f"anchor {a.seq}: {cp.problem}")
        if a.retain_until is None:
            warnings.append(f"anchor {a.seq} is on storage without Object Lock ({a.store_url})")

    # The store's own list: anchors whose rows are gone, and the newest anchor against the head.
    newest: int | None = max((a.seq for a in anchors), default=None)
    if anchor_store is not None:
        known = {a.key for a in session.scalars(select(AuditAnchor))}
        for key in listed:
            m = _ANCHOR_KEY.search(key)
            seq = int(m.group(1)) if m else -1
            if since_anchor is not None and seq < since_anchor:
                continue
            if key in known:
                newest = max(newest or 0, seq)
                continue
            cp = _read_checkpoint(anchor_store, key, None, certificates)
            if cp.problem or cp.signature_ok is False:
                warnings.append(f"anchor object {key} has no database row and does not verify ({cp.problem}): ignored")
                continue
            newest = max(newest or 0, cp.seq)
            stored = session.scalar(select(AuditEvent.hash).where(AuditEvent.seq == cp.seq))
            if cp.seq > head_seq:
                continue  # the truncation finding below names it
            if stored != cp.head_hash:
                problems.append(
                    f"anchor {key} (event {cp.seq}) is in the store but not in the database, and event {cp.seq} "
                    "no longer has the hash it anchored: history was rewritten"
                )
            else:
                warnings.append(
                    f"anchor {key} (event {cp.seq}) is in the store but its database row is missing (deleted, or an "
                    "anchoring that did not commit); it agrees with the chain"
                )
    if newest is not None and newest > head_seq:
        problems.append(
            f"the newest anchor in the store is at event {newest}, but the database's chain ends at event {head_seq}: "
            f"events {head_seq + 1}..{newest} (at least) were deleted (truncation)"
        )

    problems.extend(bindings.schema_problems(session))
    records = bindings.check_records(session, head_seq, since_seq=start.seq if start else 0)
    problems.extend(records.problems)

    published: list[Any] = []
    if check_objects and since_anchor is None:
        published = list(
            session.execute(
                select(Image.id, Image.store_key, Image.sha256).where(Image.status == "published").order_by(Image.id)
            ).all()
        )
    elif check_objects:
        warnings.append("published objects not checked (incremental mode): a full verification checks them")
    for image_id, object_key, sha256 in published:
        if object_key is None:
            problems.append(f"image {image_id}: published, but no stored object is recorded for it")
            continue
        actual = store.sha256_of(object_key)
        if actual is None:
            problems.append(f"image {image_id}: published object {object_key} is missing")
        elif actual != sha256:
            problems.append(
                f"image {image_id}: published object {object_key} changed (sha256 {actual}, recorded {sha256})"
            )
    return LedgerReport(
        not problems,
        chain.to_dict(),
        len(anchors),
        len(published),
        problems,
        warnings,
        records.rows,
        records.checked,
        "incremental" if start else "full",
        start.seq if start else 0,
        newest,
    )


def _stored_head(session: Session) -> int:
    return int(session.scalar(select(func.coalesce(func.max(AuditEvent.seq), 0))) or 0)


def _verify_chain(session: Session, ring: AuditKeyRing, legacy_until: int, start: ChainStart | None) -> ChainReport:
    """One process, or (PostgreSQL, a long chain, several CPUs) seq ranges across processes."""
    bind = session.get_bind()
    cpus = os.cpu_count() or 1
    if bind.dialect.name == "postgresql" and cpus > 1:
        head = _stored_head(session)
        if head - (start.seq if start else 0) >= PARALLEL_MIN_EVENTS:
            url = bind.engine.url.render_as_string(hide_password=False)
            return verify_chain_parallel(url, ring, cpus, legacy_until=legacy_until, start=start, until=head)
    return verify_chain(session, keys=ring, legacy_until=legacy_until, start=start)


# Below this many events one process verifies the chain; above it, `verify_ledger` on PostgreSQL splits
# the chain into seq ranges across processes (starting processes costs about a second).
PARALLEL_MIN_EVENTS = 200_000


def _verify_range(
    url: str, keys: AuditKeyRing, legacy_until: int, lo: int, hi: int, trusted_prev: str | None
) -> tuple[str | None, ChainReport]:
    """One process's share: events lo..hi, starting from the stored hash of event lo - 1 (or a trusted one)."""
    from governance.db import make_engine, make_sessionmaker

    engine = make_engine(url)
    try:
        with make_sessionmaker(engine, audit_keys=keys)() as session:
            prev = trusted_prev
            if prev is None and lo > 1:
                prev = session.scalar(select(AuditEvent.hash).where(AuditEvent.seq == lo - 1))
                if prev is None:
                    problem = f"event {lo - 1} is missing: an event was deleted or renumbered"
                    return None, ChainReport(False, 0, lo - 2, "", lo - 1, problem)
            start = ChainStart(lo - 1, prev) if prev is not None else None
            return prev, verify_chain(session, keys=keys, legacy_until=legacy_until, start=start, until=hi)
    finally:
        engine.dispose()


def verify_chain_parallel(
    url: str,
    keys: AuditKeyRing,
    processes: int,
    *,
    legacy_until: int = 0,
    start: ChainStart | None = None,
    until: int | None = None,
    min_range: int = 10_000,
) -> ChainReport:
    """`audit.verify_chain` over seq ranges in `processes` processes, then the ranges' seams checked:
    each range must end where the next begins, and the next must start from the hash the previous
    one verified. Same answer as one process, in about 1/processes of the time (a CPU-bound loop)."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    from governance.db import make_engine, make_sessionmaker

    engine = make_engine(url)
    try:
        with make_sessionmaker(engine)() as session:
            head = _stored_head(session)
    finally:
        engine.dispose()
    head = min(head, until) if until is not None else head
    first = start.seq + 1 if start else 1
    span = max(head - first + 1, 0)
    processes = max(1, min(processes, span // min_range or 1))  # ranges of at least `min_range` events
    edges = [first + span * i // processes for i in range(processes + 1)]
    ranges = [(edges[i], edges[i + 1] - 1) for i in range(processes)]
    with ProcessPoolExecutor(max_workers=processes, mp_context=mp.get_context("spawn")) as pool:
        futures = [
            pool.submit(_verify_range, url, keys, legacy_until, lo, hi, start.hash if start and i == 0 else None)
            for i, (lo, hi) in enumerate(ranges)
        ]
        parts = [f.result() for f in futures]
    events = authenticated = legacy = 0
    last = start.hash if start else GENESIS_HASH
    for i, ((lo, hi), (used_prev, report)) in enumerate(zip(ranges, parts, strict=True)):
        events, authenticated, legacy = (
            events + report.events,
            authenticated + report.authenticated,
            legacy + report.legacy,
        )
        if not report.ok:
            return replace(report, events=events, authenticated=authenticated, legacy=legacy)
        if lo > first and used_prev != last:
            problem = f"event {lo} does not link to event {lo - 1}: events were changed while being verified"
            return ChainReport(False, events, lo - 1, last, lo, problem, authenticated, legacy)
        if i < len(ranges) - 1 and report.head_seq != hi:
            missing = report.head_seq + 1
            problem = f"event {missing} is missing (the chain resumes later): an event was deleted or renumbered"
            return ChainReport(
                False, events, report.head_seq, report.head_hash, missing, problem, authenticated, legacy
            )
        last = report.head_hash if report.events else last
    final = parts[-1][1]
    return ChainReport(True, events, final.head_seq, last, None, "", authenticated, legacy)


# ---------------------------------------------------------------- baseline


@dataclass(frozen=True)
class Baseline(Result):
    """What `baseline_records` bound: rows per kind, and the unauthenticated events it vouches for."""

    legacy_until: int
    records: dict[str, int]
    events: int

    @property
    def total(self) -> int:
        return sum(self.records.values())


def baseline_records(session: Session, actor: str | None) -> Baseline:
    """Bind, once, the rows made before records were bound (migration 0007), as they stand now (admins).

    Writes `records.baseline` events (authenticated) that bind every governed row no event binds
    yet, and vouch for the unauthenticated events written before 0007 (`legacy_until`: they keep
    verifying by their chain alone). Refused when there is no such event: rows that no event binds
    in a ledger that was authenticated from its first event were written outside Atelier, and a
    baseline would accept them."""
    from governance.users import require_role

    admin = require_role(session, actor, "admin", "baseline the audit ledger").name
    first_keyed = session.scalar(select(func.min(AuditEvent.seq)).where(AuditEvent.key_id.is_not(None)))
    last_legacy = session.scalar(select(func.max(AuditEvent.seq)).where(AuditEvent.key_id.is_(None)))
    if last_legacy is None:
        raise InvalidState(
            "every event of this ledger is authenticated: rows that no event binds were written outside Atelier "
            "(`atelier audit verify` names them), and a baseline would accept them"
        )
    if first_keyed is not None and last_legacy > first_keyed:
        raise InvalidState(
            f"event {last_legacy} is not authenticated but comes after authenticated event {first_keyed}: "
            "it was written without the audit key; investigate with `atelier audit verify` first"
        )
    head = _stored_head(session)
    unbound = bindings.unbound_records(session, head)
    events = 0
    for kind, ids in unbound.items():
        for i in range(0, len(ids), BASELINE_CHUNK):
            chunk = ids[i : i + BASELINE_CHUNK]
            record_event(
                session,
                admin,
                BASELINE_ACTION,
                "audit",
                kind,
                {"kind": kind, "records": len(chunk), "legacy_until": last_legacy},
                records=[(kind, rid) for rid in chunk],
            )
            events += 1
    if not events:  # nothing unbound: still vouch for the legacy events
        record_event(
            session,
            admin,
            BASELINE_ACTION,
            "audit",
            "records",
            {"kind": None, "records": 0, "legacy_until": last_legacy},
        )
        events = 1
    return Baseline(last_legacy, {k: len(v) for k, v in unbound.items()}, events)


# ---------------------------------------------------------------- rotating the checkpoint key


@dataclass(frozen=True)
class CheckpointKeyRotation(Result):
    previous_certificate: str  # fingerprint of the certificate that signed anchors until now (kept in the ring)
    certificate: str  # the new signing certificate's fingerprint
    ring: str  # the certificate ring file
    ring_size: int


def rotate_checkpoint_keys(
    session: Session,
    actor: str | None,
    keys_dir: Path,
    *,
    chain: Path | None = None,
    key: Path | None = None,
    new_chain_pem: bytes | None = None,
    new_key_pem: bytes | None = None,
) -> CheckpointKeyRotation:
    """Replace the key that signs anchors (and C2PA manifests), keeping the old certificate (admins).

    The current signing certificate (`chain`, default `keys_dir`'s) joins the certificate ring
    (`credentials.CHECKPOINT_RING_FILE` in `keys_dir`), so anchors it signed keep verifying (each
    anchor names its certificate); C2PA manifests it signed keep verifying by their trust anchor.
    The new key: `new_chain_pem` (+ `new_key_pem`, none with a KMS callback) written to `chain` and
    `key`; or, for the development CA (the default paths), a new test CA and signer (the old CA
    stays a trust anchor). Audited as `keys.checkpoint_rotated`; anchor afterwards."""
    from cryptography import x509

    from governance.credentials import CHAIN_FILE, KEY_FILE, add_to_checkpoint_ring, init_test_ca, write_signer
    from governance.users import require_role

    admin = require_role(session, actor, "admin", "rotate the checkpoint signing key").name
    chain_path = chain or keys_dir / CHAIN_FILE
    key_path = key or keys_dir / KEY_FILE
    try:
        previous = x509.load_pem_x509_certificates(chain_path.read_bytes())[0]
    except (OSError, ValueError) as exc:
        raise GovernanceCheckFailed(f"no current signing certificate at {chain_path} to rotate from: {exc}") from None
    ring_path, ring_size = add_to_checkpoint_ring(keys_dir, previous)
    if new_chain_pem is not None:
        current = write_signer(chain_path, key_path, new_chain_pem, new_key_pem)
    elif chain is None and key is None:
        init_test_ca(keys_dir, force=True, _rotating=True)
        current = x509.load_pem_x509_certificates(chain_path.read_bytes())[0]
    else:
        raise GovernanceCheckFailed(
            "the signing key is your organisation's: give the new certificate chain (and key) to rotate to"
        )
    new_id = certificate_id(current)
    record_event(
        session,
        admin,
        "keys.checkpoint_rotated",
        "keys",
        new_id[:16],
        {"previous_certificate": certificate_id(previous), "certificate": new_id},
    )
    return CheckpointKeyRotation(certificate_id(previous), new_id, str(ring_path), ring_size)
