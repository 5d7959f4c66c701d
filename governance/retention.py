"""Retention: files of images that were never published (or were withdrawn) deleted after a set time.

A retention policy (JSON, versioned like the safety and prompt policies; `ATELIER_RETENTION_POLICY`,
default the packaged `policies/retention-v1.json`) lists rules, each for one image status and one
or more purposes (or "*"), with a number of days:

- `review`: waiting for a reviewer since the image was made (drafts nobody looked at);
- `rejected`: rejected by a reviewer, counted from the rejection;
- `withdrawn`: the evidence copy kept after a withdrawal, counted from the withdrawal.

Published images are never expired here: taking them down is a withdrawal (a decision, with a reason).
A rule naming the batch's purpose wins over "*"; two rules for the same status and purpose are an
invalid policy. When a rule is due, every version of the image's files is deleted (the file, its
thumbnail, its provenance record waiting under review/; for a withdrawn image the evidence copy, while
its public provenance record, marked withdrawn, stays), the record keeps its hashes and says when,
under which rule and policy (SHA-256), and which objects went (`expired`, or still `withdrawn` with the
expiry recorded), in an `image.expired` audit event. An image under an active legal hold is skipped and
reported. Runs as the Prefect flow `flows.retention.apply_retention` (daily in `prefect.yaml`) or
`atelier retention apply`; each image is its own transaction, the files deleted before the record
says so, so a run cut short is finished by the next.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from governance.audit import record_event
from governance.holds import active_holds, objects_of
from governance.policyfile import read_policy_file
from governance.records import Batch, Image, Purpose, User, utcnow
from governance.results import Result
from governance.store import ObjectStore
from governance.users import require_any_role

DEFAULT_RETENTION_POLICY = Path(__file__).resolve().parent / "policies" / "retention-v1.json"
RETAINED_STATUSES = ("review", "rejected", "withdrawn")
RUNNERS = ("auditor", "admin")
MAX_DAYS = 36_500


@dataclass(frozen=True)
class RetentionRule(Result):
    id: str
    status: str
    purposes: tuple[str, ...]  # purposes, or ("*",)
    delete_after_days: int


@dataclass(frozen=True)
class RetentionPolicy:
    version: str
    sha256: str
    rules: tuple[RetentionRule, ...]
    path: str = ""

    def rule_for(self, status: str, purpose: str) -> RetentionRule | None:
        named = [r for r in self.rules if r.status == status and purpose in r.purposes]
        anywhere = [r for r in self.rules if r.status == status and "*" in r.purposes]
        found = named or anywhere
        return found[0] if found else None


def load_retention_policy(path: Path | str | None = None) -> RetentionPolicy:
    """Read and check a retention policy file; every problem is one line naming the field."""
    p = Path(path) if path else DEFAULT_RETENTION_POLICY
    raw, data, bad = read_policy_file(p, "retention policy", "ATELIER_RETENTION_POLICY")
    rules_in = data.get("rules")
    if not isinstance(rules_in, list):
        raise bad("rules", "must be a list (empty: nothing expires)")
    rules: list[RetentionRule] = []
    ids: set[str] = set()
    covered: dict[tuple[str, str], str] = {}
    purposes = {str(x) for x in Purpose}
    for i, r in enumerate(rules_in):
        where = f"rules[{i}]"
        if not isinstance(r, dict):
            raise bad(where, "must be an object")
        extra = set(r) - {"id", "status", "purposes", "delete_after_days", "description"}
        if extra:
            raise bad(f"{where}.{sorted(extra)[0]}", "is not a rule field (id, status, purposes, delete_after_days)")
        rid = r.get("id")
        if not isinstance(rid, str) or not re.fullmatch(r"[a-z0-9][a-z0-9._-]{0,63}", rid):
            raise bad(f"{where}.id", "must be 1-64 of a-z 0-9 . _ -")
        if rid in ids:
            raise bad(f"{where}.id", f"{rid!r} is used twice")
        ids.add(rid)
        status = r.get("status")
        if status == "published":
            raise bad(f"{where}.status", "published images are not expired: withdraw them (`atelier image withdraw`)")
        if status not in RETAINED_STATUSES:
            raise bad(f"{where}.status", f"must be one of {', '.join(RETAINED_STATUSES)}")
        ps = r.get("purposes")
        if not isinstance(ps, list) or not ps or not all(isinstance(x, str) for x in ps):
            raise bad(f"{where}.purposes", 'must be a non-empty list of purposes, or ["*"]')
        for x in ps:
            if x != "*" and x not in purposes:
                raise bad(f"{where}.purposes", f"{x!r} is not a purpose ({', '.join(sorted(purposes))} or *)")
            if (status, x) in covered:
                raise bad(f"{where}.purposes", f"{status} images of {x} are covered by rule {covered[(status, x)]!r}")
            covered[(status, x)] = rid
        days = r.get("delete_after_days")
        if not isinstance(days, int) or isinstance(days, bool) or not 0 <= days <= MAX_DAYS:
            raise bad(f"{where}.delete_after_days", f"must be a whole number of days from 0 to {MAX_DAYS}")
        rules.append(RetentionRule(rid, status, tuple(dict.fromkeys(ps)), days))
    return RetentionPolicy(data["version"].strip(), hashlib.sha256(raw).hexdigest(), tuple(rules), str(p))


def _since(image: Image) -> datetime | None:
    """When the image entered its present status (what a rule counts from)."""
    if image.status == "review":
        return image.created_at
    decided = image.review if image.status == "rejected" else image.withdrawal
    at = (decided or {}).get("at")
    return datetime.fromisoformat(at) if isinstance(at, str) else None


@dataclass(frozen=True)
class Due(Result):
    image_id: str
    batch_id: str
    status: str
    purpose: str
    rule: str
    since: str
    days: int  # how long it has been in its status


@dataclass(frozen=True)
class Held(Result):
    image_id: str
    hold_id: str
    rule: str


@dataclass(frozen=True)
class Failed(Result):
    image_id: str
    rule: str
    error: str  # why its files could not be deleted (the store refused, e.g. an S3 legal hold): it stays due


@dataclass(frozen=True)
class RetentionReport(Result):
    policy: str
    policy_sha256: str
    as_of: str
    dry_run: bool
    expired: tuple[Due, ...]  # done now (or, in a dry run, what would be)
    held: tuple[Held, ...]  # due, kept by a legal hold
    remaining: int  # due beyond this run's limit: the next run takes them
    failed: tuple[Failed, ...] = ()  # due, but could not be expired now: said, and tried again next run


def due_one(image: Image, purpose: str, policy: RetentionPolicy, now: datetime) -> Due | None:
    """What the policy says of one image now: due under which rule, or None (no rule, not yet, or gone)."""
    if image.expiry is not None:
        return None  # its files went already (a withdrawn image keeps its status)
    rule = policy.rule_for(image.status, purpose)
    since = _since(image)
    if rule is None or since is None or now - since < timedelta(days=rule.delete_after_days):
        return None
    return Due(image.id, image.batch_id, image.status, purpose, rule.id, since.isoformat(), (now - since).days)


def due(session: Session, policy: RetentionPolicy, now: datetime | None = None) -> list[tuple[Image, Due]]:
    """Images a rule says must go now, oldest first."""
    now = now or utcnow()
    statuses = sorted({r.status for r in policy.rules})
    if not statuses:
        return []
    rows = session.execute(
        select(Image, Batch.purpose)
        .join(Batch, Batch.id == Image.batch_id)
        .where(Image.status.in_(statuses))
        .order_by(Image.created_at, Image.id)
    ).all()
    out = [(image, d) for image, purpose in rows if (d := due_one(image, purpose, policy, now)) is not None]
    out.sort(key=lambda pair: pair[1].since)
    return out


def require_runner(session: Session, actor: str | None) -> User:
    return require_any_role(session, actor, RUNNERS, "apply retention rules")


def expire(
    session: Session, user: User, store: ObjectStore, image_id: str, policy: RetentionPolicy, now: datetime
) -> Due | Held | None:
    """Expire one image if a rule still says so and no hold keeps it: its files first (every version),
    then the record and the event. None when it is no longer due (decided otherwise meanwhile)."""
    # the row locked until this transaction ends: a hold being placed on it waits, or is seen here
    image = session.scalars(select(Image).where(Image.id == image_id).with_for_update(of=Image)).first()
    if image is None:
        return None
    item = due_one(image, image.prompt.batch.purpose, policy, now)
    if item is None:
        return None
    held = active_holds(session, [image])
    if held:
        return Held(image.id, held[image.id].id, item.rule)
    objects = objects_of(image)
    if image.status == "withdrawn":  # the public provenance record, marked withdrawn, stays
        objects = [(k, v) for k, v in objects if k != image.provenance_key]
    deleted = []
    for key, _version in objects:
        store.purge(key)
        deleted.append(key)
    before = image.status
    image.expiry = {
        "at": now.isoformat(),
        "rule": item.rule,
        "policy": policy.version,
        "policy_sha256": policy.sha256,
        "status_before": before,
        "deleted": deleted,
    }
    if before in ("review", "rejected"):
        image.status = "expired"
    session.flush()
    record_event(session, user.name, "image.expired", "image", image.id, {"batch_id": image.batch_id, **image.expiry})
    return item
