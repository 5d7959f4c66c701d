"""Output review: a person looks at each generated image before it is published.

Whether a batch's images need review is decided at submission (`ATELIER_REVIEW_PURPOSES`, default
marketing; or asked for one batch). An image of such a batch that passes safety, watermark and
credentials is not published: `publish.finalize_image` uploads it, its provenance record and its
thumbnail under `review/` (never the publish location) and records it as `review`. A user with the
reviewer role, never the batch's requester, accepts it (the three objects move to `images/`, the
record becomes `published`) or rejects it with a reason (it stays unpublished, `rejected`). One by
one or in bulk; every decision is an audit event; a bulk decision is checked whole before anything
changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from governance.audit import record_event
from governance.errors import InvalidInput, InvalidState, NotFound, PermissionDenied
from governance.holds import active_holds, lock_if_held
from governance.records import Image, User, utcnow
from governance.results import Result
from governance.store import ObjectStore
from governance.text import plain_reason
from governance.users import require_role
from governance.webhooks import enqueue

REVIEW_PREFIX = "review/"
MAX_PER_DECISION = 1000


def review_key(published_key: str) -> str:
    """Where an image (or its provenance record or thumbnail) waits for review: beside, never in, the
    publish location (`images/...` -> `review/...`)."""
    return REVIEW_PREFIX + published_key.removeprefix("images/")


def thumb_of(key: str) -> str:
    """The thumbnail beside an image's key, wherever the image lives (images/ or review/)."""
    return key.rsplit(".", 1)[0] + ".thumb.jpg"


@dataclass(frozen=True)
class ReviewItem(Result):
    image_id: str
    batch_id: str
    row_id: str
    ref: str
    prompt: str
    image_index: int
    requested_by: str
    created_at: str


def waiting(
    session: Session, batch_id: str | None = None, limit: int = 200, viewer_id: int | None = None
) -> list[ReviewItem]:
    """Images waiting for review, oldest first. `viewer_id`: leave out the comparison batches this user
    judges blind (an image's row and index name its configuration: governance.preference)."""
    from governance.records import Preference

    stmt = select(Image).where(Image.status == "review")
    if batch_id:
        stmt = stmt.where(Image.batch_id == batch_id)
    if viewer_id is not None:
        judged = select(Preference.batch_id).where(Preference.shown_to_id == viewer_id)
        stmt = stmt.where(Image.batch_id.not_in(judged))
    stmt = stmt.order_by(Image.created_at, Image.id).limit(limit)
    return [
        ReviewItem(
            i.id,
            i.batch_id,
            i.prompt.row_id,
            i.prompt.ref,
            i.prompt.prompt,
            i.image_index,
            i.prompt.batch.requested_by.name,
            i.created_at.isoformat(),
        )
        for i in session.scalars(stmt)
    ]


SHOWN_ACTION = "review.shown"


def was_shown(session: Session, user_name: str, batch_id: str) -> bool:
    """Whether `note_shown` recorded that this user was shown the batch's images waiting for review."""
    from governance.records import AuditEvent

    seen = select(AuditEvent.seq).where(
        AuditEvent.action == SHOWN_ACTION, AuditEvent.subject_id == batch_id, AuditEvent.actor == user_name
    )
    return session.scalar(seen.limit(1)) is not None


def note_shown(session: Session, viewer: User, items: Sequence[ReviewItem]) -> None:
    """Record, once per batch, that a reviewer blind to a comparison batch was shown its images waiting
    for review (their ids, rows and indexes name each image's configuration): that reviewer no longer
    judges the batch blind (`preference._judge` refuses). Call in a writing transaction."""
    from governance.preference import blind_to
    from governance.records import Batch

    for batch_id in sorted({i.batch_id for i in items}):
        batch = session.get(Batch, batch_id)
        if batch is None or not blind_to(frozenset(viewer.role_names), batch.requested_by_id == viewer.id, batch):
            continue
        if not was_shown(session, viewer.name, batch_id):
            shown = sum(1 for i in items if i.batch_id == batch_id)
            record_event(session, viewer.name, SHOWN_ACTION, "batch", batch_id, {"images": shown})


def _images(session: Session, image_ids: Sequence[str] | None, batch_id: str | None) -> list[Image]:
    if (not image_ids) == (batch_id is None):
        raise InvalidInput("name the images to decide on, or one batch (all its images waiting for review)")
    if batch_id is not None:
        from governance.batches import get_batch

        batch = get_batch(session, batch_id)
        images = list(session.scalars(select(Image).where(Image.batch_id == batch.id, Image.status == "review")))
        if not images:
            raise InvalidState(f"batch {batch.id} has no images waiting for review")
        return images
    ids = list(dict.fromkeys(image_ids or []))
    if len(ids) > MAX_PER_DECISION:
        raise InvalidInput(f"at most {MAX_PER_DECISION} images per decision")
    found = {i.id: i for i in session.scalars(select(Image).where(Image.id.in_(ids)))}
    missing = [i for i in ids if i not in found]
    if missing:
        raise NotFound(f"no image {missing[0]}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    return [found[i] for i in ids]


def _check(session: Session, user: User, images: Sequence[Image]) -> User:
    for image in images:
        if image.status != "review":
            raise InvalidState(f"image {image.id} is {image.status}: only an image waiting for review can be decided")
        if image.prompt.batch.requested_by_id == user.id:
            raise PermissionDenied(
                f"{user.name} requested batch {image.batch_id} and cannot review its images: another reviewer must"
            )
    from governance.preference import judges

    for batch_id in sorted({i.batch_id for i in images}):
        if judges(session, user.id, batch_id):
            raise PermissionDenied(
                f"{user.name} judges batch {batch_id} blind and cannot review its output (which shows each image's "
                "row and index): another reviewer must"
            )
    return user


def accept(
    session: Session,
    actor: str | None,
    store: ObjectStore,
    image_ids: Sequence[str] | None = None,
    batch_id: str | None = None,
) -> list[str]:
    """Publish reviewed images: their file, provenance record and thumbnail move from review/ to the
    publish location; each record becomes published, each decision an event. Returns the image ids."""
    user = require_role(session, actor, "reviewer", "review images")
    images = _images(session, image_ids, batch_id)
    _check(session, user, images)
    now = utcnow().isoformat()
    done = []
    for image in images:
        waiting_key = image.store_key or ""
        final_key = "images/" + waiting_key.removeprefix(REVIEW_PREFIX)
        prov_waiting = image.provenance_key or ""
        prov_final = "images/" + prov_waiting.removeprefix(REVIEW_PREFIX)
        metadata = {"image-id": image.id, "batch-id": image.batch_id, "reviewed-by": user.name}
        # the provenance record and thumbnail first, the image last (as publishing does): a crash in
        # between leaves the image unpublished and a retry puts the same objects again
        store.put(prov_final, store.get(prov_waiting), "application/json", metadata)
        store.put(thumb_of(final_key), store.get(thumb_of(waiting_key)), "image/jpeg", metadata)
        stored = store.put(final_key, store.get(waiting_key, image.store_version_id), "image/png", metadata)
        image.status = "published"
        image.store_key, image.provenance_key, image.store_version_id = final_key, prov_final, stored.version_id
        image.store_url = store.url
        image.review = {"decision": "accepted", "by": user.name, "at": now, "reason": ""}
        session.flush()
        if active_holds(session, [image]):
            lock_if_held(session, store, image)  # held: the copies under review/ stay too, held
        else:
            for copy in (waiting_key, prov_waiting, thumb_of(waiting_key)):  # moved, not copied
                store.purge(copy)
        record_event(
            session,
            user.name,
            "image.published",
            "image",
            image.id,
            {
                "batch_id": image.batch_id,
                "reviewed": "accepted",
                "sha256": image.sha256,
                "store": store.url,
                "key": final_key,
                "version_id": stored.version_id,
            },
        )
        enqueue(
            session, "image.reviewed", image.id, {"batch_id": image.batch_id, "decision": "accepted", "by": user.name}
        )
        enqueue(
            session,
            "image.published",
            image.id,
            {"batch_id": image.batch_id, "sha256": image.sha256, "location": store.location(final_key)},
        )
        done.append(image.id)
    return done


def reject(
    session: Session,
    actor: str | None,
    reason: str,
    image_ids: Sequence[str] | None = None,
    batch_id: str | None = None,
) -> list[str]:
    """Reject reviewed images with a reason: never published (their files stay under review/ as
    evidence until retention removes them)."""
    user = require_role(session, actor, "reviewer", "review images")
    reason = plain_reason(reason, "a rejection needs a reason")
    images = _images(session, image_ids, batch_id)
    _check(session, user, images)
    now = utcnow().isoformat()
    for image in images:
        image.status = "rejected"
        image.review = {"decision": "rejected", "by": user.name, "at": now, "reason": reason}
        session.flush()
        record_event(
            session, user.name, "image.rejected", "image", image.id, {"batch_id": image.batch_id, "reason": reason}
        )
        enqueue(
            session,
            "image.reviewed",
            image.id,
            {"batch_id": image.batch_id, "decision": "rejected", "by": user.name, "reason": reason},
        )
    return [i.id for i in images]
