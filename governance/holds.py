"""Legal holds: images kept exactly as they are while a legal matter is open.

An auditor or admin places a hold on images or on a batch (its images now and any published later),
with a reason (the matter). While a hold is active nothing deletes the covered files: withdrawal and
retention refuse (:func:`require_not_held`), and where the bucket has S3 Object Lock every covered
object version (the image file, its provenance record, its thumbnail; for a withdrawn image its
evidence copy) also carries an Object Lock legal hold, so S3 itself refuses to delete it, whoever
asks. A hold is released, never deleted: with who, when and why. The S3 legal hold comes off an
object only when no other active hold covers its image. Every placement and release is an audit event;
hold rows are governed records (bound by the ledger), so a hold removed with SQL is found by
`audit verify`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from governance.audit import record_event
from governance.errors import InvalidInput, InvalidState, NotFound
from governance.records import Image, LegalHold, utcnow
from governance.results import Result
from governance.store import ObjectStore
from governance.text import plain_reason
from governance.users import require_any_role

HOLDERS = ("auditor", "admin")
MAX_IMAGES_PER_HOLD_ACT = 1000


@dataclass(frozen=True)
class HoldView(Result):
    hold_id: str
    scope: str  # image | batch
    target_id: str
    reason: str
    placed_by: str
    placed_at: str
    active: bool
    released_by: str | None
    released_at: str | None
    release_reason: str | None

    @classmethod
    def of(cls, hold: LegalHold) -> HoldView:
        return cls(
            hold.id,
            hold.scope,
            hold.target_id,
            hold.reason,
            hold.placed_by.name,
            hold.placed_at.isoformat(),
            hold.released_at is None,
            hold.released_by.name if hold.released_by else None,
            hold.released_at.isoformat() if hold.released_at else None,
            hold.release_reason,
        )


@dataclass(frozen=True)
class HoldAct(Result):
    holds: tuple[HoldView, ...]  # placed or released now
    already: tuple[str, ...]  # hold ids that already were (placed with that reason; released)
    images: int  # images covered by the holds acted on
    store_locked: bool  # the store enforces it too (S3 Object Lock legal hold)


def active_holds(session: Session, images: Iterable[Image]) -> dict[str, LegalHold]:
    """For each of `images` that an active hold covers: the image id and the earliest such hold."""
    images = list(images)
    if not images:
        return {}
    image_ids = {i.id for i in images}
    batch_ids = {i.batch_id for i in images}
    holds = session.scalars(
        select(LegalHold)
        .where(
            LegalHold.released_at.is_(None),
            or_(
                (LegalHold.scope == "image") & LegalHold.target_id.in_(image_ids),
                (LegalHold.scope == "batch") & LegalHold.target_id.in_(batch_ids),
            ),
        )
        .order_by(LegalHold.placed_at, LegalHold.id)
    ).all()
    out: dict[str, LegalHold] = {}
    for image in images:
        for hold in holds:
            if hold.target_id == (image.id if hold.scope == "image" else image.batch_id):
                out[image.id] = hold
                break
    return out


def require_not_held(session: Session, images: Iterable[Image], doing: str) -> None:
    """Refuse, naming the first held image and its hold, when an active hold covers any of `images`."""
    held = active_holds(session, images)
    if held:
        image_id, hold = next(iter(held.items()))
        more = f" (and {len(held) - 1} more held image(s))" if len(held) > 1 else ""
        raise InvalidState(
            f"image {image_id} is under legal hold {hold.id} ({hold.reason}){more}: cannot {doing} "
            "until the hold is released (`atelier hold release`)"
        )


def objects_of(image: Image) -> list[tuple[str, str | None]]:
    """The stored objects an image may have now, as (key, version id): what a hold must keep (some may
    be absent: a thumbnail of an image published before thumbnails existed, review copies removed)."""
    from governance.withdraw import review_copies

    if image.status == "expired":
        return []
    out: list[tuple[str, str | None]] = []
    if image.status == "withdrawn" and image.withdrawal:
        if image.expiry is None:  # retention deleted the evidence copy
            out.append((image.withdrawal["evidence_key"], image.withdrawal.get("evidence_version_id")))
    elif image.store_key:
        out.append((image.store_key, image.store_version_id))
        out.append((image.store_key.rsplit(".", 1)[0] + ".thumb.jpg", None))
        out += [(key, None) for key in review_copies(image)]
    if image.provenance_key:
        out.append((image.provenance_key, None))
    return out


def lock_objects(store: ObjectStore, image: Image, on: bool) -> bool:
    """Set (or clear) the store's legal hold on every object the image has; False when the store cannot."""
    locked = False
    for key, version in objects_of(image):
        locked = store.legal_hold(key, version, on) or locked  # an absent object is skipped by the store
    return locked


def lock_if_held(session: Session, store: ObjectStore, image: Image) -> None:
    """After an image's objects were written (published, accepted after review): under an active hold
    (of its batch, placed before), they carry the store's legal hold at once."""
    if active_holds(session, [image]):
        lock_objects(store, image, True)


def place(
    session: Session,
    actor: str | None,
    store: ObjectStore,
    reason: str,
    image_ids: Sequence[str] | None = None,
    batch_id: str | None = None,
) -> HoldAct:
    user = require_any_role(session, actor, HOLDERS, "place legal holds")
    reason = plain_reason(reason, "a legal hold needs a reason (the legal matter)")
    if (not image_ids) == (batch_id is None):
        raise InvalidInput("name the images to hold, or one batch (--batch)")
    if batch_id is not None:
        from governance.batches import get_batch

        batch = get_batch(session, batch_id)
        targets: list[tuple[str, str]] = [("batch", batch.id)]
        # the rows locked: a retention run or a withdrawal deciding on one of them now waits for this hold
        stmt = select(Image).where(Image.batch_id == batch.id).order_by(Image.id).with_for_update(of=Image)
        images = list(session.scalars(stmt))
    else:
        ids = list(dict.fromkeys(image_ids or []))
        if len(ids) > MAX_IMAGES_PER_HOLD_ACT:
            raise InvalidInput(f"{len(ids)} images: at most {MAX_IMAGES_PER_HOLD_ACT} per hold; hold their batch")
        rows = select(Image).where(Image.id.in_(ids)).order_by(Image.id).with_for_update(of=Image)
        found = {i.id: i for i in session.scalars(rows)}
        missing = [i for i in ids if i not in found]
        if missing:
            raise NotFound(f"no image {missing[0]}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
        images = [found[i] for i in ids]
        gone = [i for i in images if i.status == "expired"]
        if gone:
            raise InvalidState(f"image {gone[0].id} expired: its files were deleted under retention, nothing to hold")
        targets = [("image", i.id) for i in images]
    placed, already = [], []
    for scope, target in targets:
        existing = session.scalar(
            select(LegalHold).where(
                LegalHold.scope == scope,
                LegalHold.target_id == target,
                LegalHold.reason == reason,
                LegalHold.released_at.is_(None),
            )
        )
        if existing is not None:
            already.append(existing.id)
            continue
        hold = LegalHold(scope=scope, target_id=target, reason=reason, placed_by_id=user.id, placed_at=utcnow())
        session.add(hold)
        session.flush()
        placed.append(hold)
    locked = False
    for image in images:
        locked = lock_objects(store, image, True) or locked
    for hold in placed:
        covered = [i.id for i in images if (i.id if hold.scope == "image" else i.batch_id) == hold.target_id]
        record_event(
            session,
            user.name,
            "hold.placed",
            "legal_hold",
            hold.id,
            {"scope": hold.scope, "target_id": hold.target_id, "reason": reason, "images": len(covered)},
        )
    return HoldAct(tuple(HoldView.of(h) for h in placed), tuple(already), len(images), locked)


def release(session: Session, actor: str | None, store: ObjectStore, hold_ids: Sequence[str], reason: str) -> HoldAct:
    user = require_any_role(session, actor, HOLDERS, "release legal holds")
    reason = plain_reason(reason, "releasing a legal hold needs a reason (the legal matter)")
    ids = list(dict.fromkeys(hold_ids))
    if not ids:
        raise InvalidInput("name the holds to release (`atelier hold list` shows their ids)")
    found = {h.id: h for h in session.scalars(select(LegalHold).where(LegalHold.id.in_(ids)))}
    missing = [i for i in ids if i not in found]
    if missing:
        raise NotFound(f"no legal hold {missing[0]}")
    now = utcnow()
    released, already = [], []
    for hold in (found[i] for i in ids):
        if hold.released_at is not None:
            already.append(hold.id)
            continue
        hold.released_at, hold.released_by_id, hold.release_reason = now, user.id, reason
        released.append(hold)
    session.flush()
    covered: dict[str, Image] = {}
    for hold in released:
        column = Image.id if hold.scope == "image" else Image.batch_id
        for image in session.scalars(select(Image).where(column == hold.target_id)):
            covered[image.id] = image
    still = active_holds(session, covered.values())  # another matter may hold the same image
    unlocked = False
    for image in covered.values():
        if image.id not in still:
            unlocked = lock_objects(store, image, False) or unlocked
    for hold in released:
        session.refresh(hold)
        record_event(
            session,
            user.name,
            "hold.released",
            "legal_hold",
            hold.id,
            {"scope": hold.scope, "target_id": hold.target_id, "reason": reason, "placed_reason": hold.reason},
        )
    return HoldAct(tuple(HoldView.of(h) for h in released), tuple(already), len(covered), unlocked)


def list_holds(session: Session, include_released: bool = False, target_id: str | None = None) -> list[HoldView]:
    stmt = select(LegalHold).order_by(LegalHold.placed_at, LegalHold.id)
    if not include_released:
        stmt = stmt.where(LegalHold.released_at.is_(None))
    if target_id:
        stmt = stmt.where(LegalHold.target_id == target_id)
    return [HoldView.of(h) for h in session.scalars(stmt)]


def holds_for(session: Session, image: Image) -> list[HoldView]:
    """Every hold, active or released, that covers or covered the image (for trace)."""
    stmt = (
        select(LegalHold)
        .where(
            or_(
                (LegalHold.scope == "image") & (LegalHold.target_id == image.id),
                (LegalHold.scope == "batch") & (LegalHold.target_id == image.batch_id),
            )
        )
        .order_by(LegalHold.placed_at, LegalHold.id)
    )
    return [HoldView.of(h) for h in session.scalars(stmt)]
