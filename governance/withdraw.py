"""Withdrawal: taking published images down (recall, takedown), by id or by what they depend on.

Auditors and admins withdraw. For each published image: the file is copied to the evidence prefix
(`withdrawn/` in the same store) and removed from the publish location (with S3 versioning, the
published version itself is deleted, not hidden behind a delete marker); its thumbnail is removed;
its provenance record stays where it was, marked with the withdrawal, so a link to it says what
happened. The record becomes `withdrawn` with who, when, why and the object versions, in an audit
event. Withdrawing again changes nothing (idempotent); no later run publishes it again (a run finds
its record and leaves it). Images that were never published (quarantined, waiting for review,
rejected) cannot be withdrawn: there is nothing to take down.

A legal hold (governance.holds) keeps an image where it is: named by id, a held image refuses the
whole withdrawal (nothing changes); found by model version or licence, the held images are left
and reported (`held`) while the others are withdrawn, so a recall is not stopped by one matter.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from governance.audit import record_event
from governance.errors import GovernanceCheckFailed, InvalidInput, InvalidState, NotFound
from governance.holds import active_holds, require_not_held
from governance.records import Image, LegalHold, utcnow
from governance.results import Result
from governance.store import ObjectStore
from governance.text import plain_reason
from governance.users import require_any_role
from governance.webhooks import enqueue

EVIDENCE_PREFIX = "withdrawn/"


def review_copies(image: Image) -> list[str]:
    """Where a reviewed image waited (review/: file, provenance record, thumbnail), for images that were
    accepted after review: removed at acceptance unless a legal hold kept them."""
    from governance.review import REVIEW_PREFIX, thumb_of

    if not (image.review and image.review.get("decision") == "accepted" and image.store_key):
        return []
    waiting = REVIEW_PREFIX + image.store_key.removeprefix("images/")
    keys = [waiting, thumb_of(waiting)]
    if image.provenance_key:
        keys.append(REVIEW_PREFIX + image.provenance_key.removeprefix("images/"))
    return keys


MAX_PER_ACT = 100_000


@dataclass(frozen=True)
class Withdrawn(Result):
    withdrawn: tuple[str, ...]  # taken down now
    already: tuple[str, ...]  # withdrawn before: nothing changed
    held: tuple[str, ...] = ()  # found by impact but kept by a legal hold: not withdrawn


def _targets(
    session: Session, image_ids: Sequence[str] | None, model_version: str | None, licence: str | None
) -> list[Image]:
    given = [x for x in (bool(image_ids), model_version is not None, licence is not None) if x]
    if len(given) != 1:
        raise InvalidInput("name the images to withdraw, or one model version (--impact-of), or one licence")
    if image_ids:
        ids = list(dict.fromkeys(image_ids))
        locked = select(Image).where(Image.id.in_(ids)).order_by(Image.id).with_for_update(of=Image)
        found = {i.id: i for i in session.scalars(locked)}
        missing = [i for i in ids if i not in found]
        if missing:
            raise NotFound(f"no image {missing[0]}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
        images = [found[i] for i in ids]
        never = [i for i in images if i.status not in ("published", "withdrawn")]
        if never:
            raise InvalidState(f"image {never[0].id} is {never[0].status}: it was never published, nothing to withdraw")
        return images
    from governance.compliance import impact

    hit = impact(session, model_version=model_version, licence=licence)
    ids = [str(row[0]) for row in hit.images]  # IMPACT_COLUMNS: the image id first
    locked = select(Image).where(Image.id.in_(ids)).order_by(Image.id).with_for_update(of=Image)
    return list(session.scalars(locked)) if ids else []


def withdraw(
    session: Session,
    actor: str | None,
    store: ObjectStore,
    reason: str,
    image_ids: Sequence[str] | None = None,
    model_version: str | None = None,
    licence: str | None = None,
) -> Withdrawn:
    user = require_any_role(session, actor, ("auditor", "admin"), "withdraw images")
    reason = plain_reason(reason, "a withdrawal needs a reason")
    images = _targets(session, image_ids, model_version, licence)
    if len(images) > MAX_PER_ACT:
        raise InvalidInput(f"{len(images)} images: at most {MAX_PER_ACT} per withdrawal")
    pending = [i for i in images if i.status != "withdrawn"]
    if image_ids:
        require_not_held(session, pending, "withdraw it")
        kept: dict[str, LegalHold] = {}
    else:
        kept = active_holds(session, pending)
    now = utcnow().isoformat()
    done, already = [], []
    for image in images:
        if image.status == "withdrawn":
            already.append(image.id)
            continue
        if image.id in kept:
            continue
        key = image.store_key or ""
        evidence_key = EVIDENCE_PREFIX + key.removeprefix("images/")
        present = store.sha256_of(key) is not None
        if present:
            data = store.get(key, image.store_version_id)
        else:  # an earlier withdrawal removed the file, then its transaction rolled back: finish it
            data = store.get(evidence_key) if store.sha256_of(evidence_key) is not None else b""
            if hashlib.sha256(data).hexdigest() != image.sha256:
                raise GovernanceCheckFailed(
                    f"image {image.id}: its file is gone from {store.location(key)} and no evidence copy with its "
                    "SHA-256 exists; nothing was changed (restore the object from a backup, then withdraw again)"
                )
        evidence = store.put(evidence_key, data, "image/png", {"image-id": image.id, "withdrawn-by": user.name})
        withdrawal = {
            "by": user.name,
            "at": now,
            "reason": reason,
            "evidence_key": evidence_key,
            "evidence_version_id": evidence.version_id,
            "removed_key": key,
            "removed_version_id": image.store_version_id,
        }
        if image.provenance_key:  # the provenance record stays, marked: a link to it says what happened
            doc = json.loads(store.get(image.provenance_key))
            doc["withdrawn"] = {k: withdrawal[k] for k in ("by", "at", "reason")}
            store.put(
                image.provenance_key,
                json.dumps(doc, indent=2, sort_keys=True).encode(),
                "application/json",
                {"image-id": image.id, "withdrawn": "true"},
            )
        if present:
            store.delete(key, image.store_version_id)
        store.purge(key.rsplit(".", 1)[0] + ".thumb.jpg")  # every version: no hidden copy behind a marker
        for copy in review_copies(image):  # the reviewed image's waiting copies, if still there
            store.purge(copy)
        image.status = "withdrawn"
        image.withdrawal = withdrawal
        session.flush()
        record_event(
            session, user.name, "image.withdrawn", "image", image.id, {"batch_id": image.batch_id, **withdrawal}
        )
        enqueue(
            session,
            "image.withdrawn",
            image.id,
            {"batch_id": image.batch_id, "by": user.name, "reason": reason, "location": store.location(key)},
        )
        done.append(image.id)
    return Withdrawn(tuple(done), tuple(already), tuple(kept))
