"""Anchoring the audit chain to WORM storage, and verifying the whole ledger.

An anchor is a signed checkpoint of the chain head (sequence, head hash, time), written to the
object store under S3 Object Lock in COMPLIANCE mode with a retention period, and recorded in the
append-only `audit_anchors` table. Rewriting history then needs more than database access: the
retained checkpoint still names the old head hash, and its signature cannot be forged without the
organisation's key.

`verify_ledger` checks, and names the first break of:
  1. the hash chain itself (`audit.verify_chain`);
  2. every anchor: its event still has the anchored hash, its stored object (the exact version
     written) still says so, and its signature verifies against the signing certificate;
  3. anchors in the store that the database no longer lists (a deleted anchor row), and a chain
     that ends before its last anchor (a truncated chain);
  4. every published object: it still exists, and its SHA-256 is the one recorded.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from governance.audit import canonical_json, record_event, verify_chain
from governance.errors import GovernanceCheckFailed
from governance.records import AuditAnchor, AuditEvent, Image
from governance.retry import is_transient
from governance.store import ObjectStore

CHECKPOINT_SCHEMA = "atelier.audit-checkpoint/1"
ANCHOR_PREFIX = "audit/anchors/"


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


def signature_valid(certificate_pem: bytes, data: bytes, signature: bytes) -> bool:
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    if len(signature) != 64:
        return False
    cert = x509.load_pem_x509_certificates(certificate_pem)[0]
    der = encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big"))
    public_key = cert.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        raise GovernanceCheckFailed(
            f"the checkpoint signing certificate has a {type(public_key).__name__}, not an EC (P-256) key: "
            "audit checkpoints are signed ES256"
        )
    try:
        public_key.verify(der, data, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


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
    )
    session.add(anchor)
    session.flush()
    record_event(
        session,
        actor,
        "audit.anchored",
        "audit",
        str(head.seq),
        {"head_hash": head.hash, "key": key, "version_id": stored.version_id, "worm": store.worm},
    )
    return anchor


@dataclass
class LedgerReport:
    ok: bool
    chain: dict[str, Any]
    anchors_checked: int = 0
    objects_checked: int = 0
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "chain": self.chain,
            "anchors_checked": self.anchors_checked,
            "objects_checked": self.objects_checked,
            "first_problem": self.problems[0] if self.problems else None,
            "problems": self.problems,
            "warnings": self.warnings,
        }


def verify_ledger(
    session: Session, store: ObjectStore, anchor_store: ObjectStore | None, certificate_pem: bytes | None
) -> LedgerReport:
    chain = verify_chain(session)
    problems: list[str] = [] if chain.ok else [f"chain: {chain.problem}"]
    warnings: list[str] = []
    anchors = list(session.scalars(select(AuditAnchor).order_by(AuditAnchor.seq)))
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
        if anchor_store is None:
            continue
        try:
            stored = json.loads(anchor_store.get(a.key, a.version_id))
        except Exception as exc:  # noqa: BLE001 - a missing or unreadable anchor is the finding
            problems.append(f"anchor {a.seq}: stored checkpoint {a.key} cannot be read ({type(exc).__name__})")
            continue
        cp = stored.get("checkpoint", {})
        if cp.get("seq") != a.seq or cp.get("head_hash") != a.head_hash or stored.get("signature") != a.signature:
            problems.append(f"anchor {a.seq}: the database row does not match the stored checkpoint {a.key}")
        if certificate_pem and not signature_valid(
            certificate_pem, canonical_json(cp).encode(), base64.b64decode(stored.get("signature", ""))
        ):
            problems.append(f"anchor {a.seq}: checkpoint signature does not verify")
        if a.retain_until is None:
            warnings.append(f"anchor {a.seq} is on storage without Object Lock ({a.store_url})")
    if anchor_store is not None:
        listed = {a.key for a in anchors}
        for key in anchor_store.keys(ANCHOR_PREFIX):
            if key not in listed:
                problems.append(f"anchor {key} is in the store but its database row was deleted")
    if anchors and chain.head_seq < anchors[-1].seq and chain.ok:
        problems.append(f"chain ends at {chain.head_seq} but was anchored at {anchors[-1].seq}: events were deleted")
    published = session.execute(
        select(Image.id, Image.store_key, Image.sha256).where(Image.status == "published").order_by(Image.id)
    ).all()
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
    return LedgerReport(not problems, chain.to_dict(), len(anchors), len(published), problems, warnings)
