"""Blind pairwise preference between pipeline configurations (the SDXL paper's evidence for the refiner
was such a study: base + refiner preferred over base alone).

A reviewer asks for the next pair of a comparison batch: two images of the same prompt row and seed,
made by two configurations, in a random left/right order (``secrets``: not predictable from anything
the reviewer can see). The pair is a ``preferences`` row that only the server reads: the page and the
API show the pair's own id, the prompt, and the two images as PNGs made again from their pixels, with no
metadata (no C2PA manifest, which names the configuration), under URLs that name the pair and the side,
never the image. The reviewer picks left, right or "no preference"; the pick is stored once and audited
(``preference.recorded``, naming both images and configurations), and the row is a governed record.

Who may judge: reviewers, never on the images of a batch they requested (they know what they asked
for). A reviewer is not shown the same (row, seed, configuration pair) twice.

Win rates: for each pair of configurations (A, B), over decided judgements, A's wins / (A's + B's wins)
with a 95% Wilson score interval; "no preference" is counted and reported but not in the rate.
"""

from __future__ import annotations

import io
import math
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from itertools import combinations
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, aliased

from governance.audit import record_event
from governance.batches import get_batch
from governance.errors import InvalidInput, InvalidState, NotFound, PermissionDenied
from governance.pipelines import DEFAULT_PIPELINE, batch_configs, image_slot
from governance.records import Batch, Image, Preference, User, utcnow
from governance.results import Result
from governance.store import ObjectStore
from governance.users import require_role

CHOICES = ("left", "right", "none")
WITH_FILES = ("published", "review")  # images whose file is where its record says
Z95 = 1.959963984540054  # the standard normal's 97.5% quantile


@dataclass(frozen=True)
class BlindPair(Result):
    """What a reviewer sees of a pair: nothing that tells which configuration made which image."""

    pair_id: str
    batch_id: str
    prompt: str
    negative_prompt: str
    width: int
    height: int
    left: str  # the URL path of the left image (names the pair and the side only)
    right: str
    remaining: int  # pairs of this batch still to judge for this reviewer, this one included


@dataclass(frozen=True)
class Pick(Result):
    pair_id: str
    choice: str
    decided_at: datetime


@dataclass(frozen=True)
class WinRate(Result):
    """Configuration ``a`` against ``b``: wins, ties, the rate of ``a`` and its 95% Wilson interval."""

    a: str
    b: str
    judgements: int  # every decided pick, "no preference" included
    wins_a: int
    wins_b: int
    no_preference: int
    rate_a: float | None  # wins_a / (wins_a + wins_b); None when every pick was "no preference"
    ci_low: float | None
    ci_high: float | None


def wilson(wins: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion wins/n (n > 0)."""
    p = wins / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


# Roles that may see which configuration made which image (governance.compare): their holders do not judge.
SEES_CONFIGURATIONS = ("approver", "operator", "auditor", "admin")


def is_comparison(batch: Batch) -> bool:
    return len(batch_configs(batch.pipelines)) > 1


def blind_to(roles: set[str] | frozenset[str], is_requester: bool, batch: Batch) -> bool:
    """Whether a user is kept blind to a comparison batch: a reviewer with no other way to see which
    configuration made which image (not its requester; no approver, operator, auditor or admin role).
    Such a user sees the batch's images only as blind pairs: not its rows, gallery, files, traces, nor
    `verify` naming them (an image id, a stored pixel hash or the row's configuration list would say
    which configuration made a pair's image)."""
    return "reviewer" in roles and not is_requester and not roles & set(SEES_CONFIGURATIONS) and is_comparison(batch)


def require_not_blind(user: User, batch: Batch, doing: str) -> None:
    if blind_to(frozenset(user.role_names), batch.requested_by_id == user.id, batch):
        raise PermissionDenied(
            f"{user.name} cannot {doing}: batch {batch.id} compares pipeline configurations and reviewers judge its "
            "images blind (`atelier prefer next`); its records are for its requester, approvers, operators, "
            "auditors and admins"
        )


def _judge(session: Session, actor: str | None, batch: Batch) -> Any:
    user = require_role(session, actor, "reviewer", "judge images")
    if batch.requested_by_id == user.id:
        raise PermissionDenied(
            f"{user.name} requested batch {batch.id}: a preference on your own batch's images is not blind; "
            "another reviewer judges it"
        )
    seeing = sorted(user.role_names & set(SEES_CONFIGURATIONS))
    if seeing:
        raise PermissionDenied(
            f"{user.name} holds the {', '.join(seeing)} role and can see which configuration made each image of "
            f"batch {batch.id}: a judgement would not be blind; a reviewer without it judges"
        )
    reviewed = session.scalars(select(Image.review).where(Image.batch_id == batch.id, Image.review.is_not(None))).all()
    if any((r or {}).get("by") == user.name for r in reviewed):
        raise PermissionDenied(
            f"{user.name} reviewed the output of batch {batch.id} (where each image's row and index are shown): "
            "another reviewer judges it blind"
        )
    from governance.review import was_shown

    if was_shown(session, user.name, batch.id):
        raise PermissionDenied(
            f"{user.name} was shown the output of batch {batch.id} waiting for review (each image's row and index): "
            "another reviewer judges it blind"
        )
    return user


def batches_to_judge(session: Session, actor: str | None) -> list[Batch]:
    """Comparison batches with images this reviewer may judge (not their own), newest first."""
    user = require_role(session, actor, "reviewer", "judge images")
    if user.role_names & set(SEES_CONFIGURATIONS):
        return []
    ids = session.scalars(select(Image.batch_id).where(Image.status.in_(WITH_FILES)).distinct()).all()
    batches = session.scalars(select(Batch).where(Batch.id.in_(ids)).order_by(Batch.created_at.desc())).all()
    return [b for b in batches if is_comparison(b) and b.requested_by_id != user.id]


def check_verify_result(session: Session, actor: str | None, result: Any) -> Any:
    """`verify` of a file that turns out to be an image of a comparison batch the caller judges blind:
    refused (naming the image would tell its configuration); any other result is returned as it is."""
    from governance.users import get_user

    trace = getattr(result, "trace", None)
    if trace is None:
        return result
    batch = session.get(Batch, trace.batch.id)
    if batch is not None:
        require_not_blind(get_user(session, actor), batch, "verify images of this batch")
    return result


def judges(session: Session, user_id: int, batch_id: str) -> bool:
    """Whether the user has been shown pairs of this batch (a judge of it)."""
    return (
        session.scalar(
            select(Preference.id).where(Preference.batch_id == batch_id, Preference.shown_to_id == user_id).limit(1)
        )
        is not None
    )


def _candidates(session: Session, batch: Batch, user_id: int) -> list[tuple[str, Image, Image]]:
    """(prompt id, image, image) pairs of different configurations and the same seed this reviewer has
    not been shown yet."""
    images = session.scalars(
        select(Image).where(Image.batch_id == batch.id, Image.status.in_(WITH_FILES)).order_by(Image.id)
    ).all()
    groups: dict[tuple[str, int], dict[str, Image]] = {}
    for image in images:
        slot = image_slot(image.prompt.num_images, image.image_index)
        groups.setdefault((image.prompt_id, slot), {})[image.pipeline or DEFAULT_PIPELINE] = image
    seen = {
        frozenset((left, right))
        for left, right in session.execute(
            select(Preference.left_image_id, Preference.right_image_id).where(
                Preference.batch_id == batch.id, Preference.shown_to_id == user_id
            )
        )
    }
    out = []
    for (prompt_id, _slot), by_config in groups.items():
        for a, b in combinations(sorted(by_config), 2):
            x, y = by_config[a], by_config[b]
            if frozenset((x.id, y.id)) not in seen:
                out.append((prompt_id, x, y))
    return out


def random_order(x: Any, y: Any) -> tuple[Any, Any]:
    """The two in an order drawn from the operating system's CSPRNG: nothing the judge sees predicts it."""
    return (x, y) if secrets.randbits(1) else (y, x)


def _view(pair: Preference, remaining: int, base_url: str) -> BlindPair:
    prompt = pair.left.prompt
    return BlindPair(
        pair.id,
        pair.batch_id,
        prompt.prompt,
        prompt.negative_prompt,
        prompt.width,
        prompt.height,
        f"{base_url}/{pair.id}/left.png",
        f"{base_url}/{pair.id}/right.png",
        remaining,
    )


def next_pair(
    session: Session, actor: str | None, batch_id: str, base_url: str = "/api/v1/preferences", draw: bool = True
) -> BlindPair:
    """The reviewer's undecided pair of this batch, or a new one drawn at random (audited as shown).
    NotFound when every pair has been judged by this reviewer (or the batch has no comparison), or,
    with `draw=False` (a page that only shows), when no pair is waiting."""
    require_role(session, actor, "reviewer", "judge images")  # before anything about the batch is told
    batch = get_batch(session, batch_id)
    user = _judge(session, actor, batch)
    # one draw at a time per judge: on PostgreSQL the user's row is locked, so two requests at once
    # cannot both find no pending pair and draw two (SQLite's single writer does the same)
    session.scalar(select(User.id).where(User.id == user.id).with_for_update())
    pending = session.scalars(
        select(Preference).where(
            Preference.batch_id == batch.id, Preference.shown_to_id == user.id, Preference.choice.is_(None)
        )
    ).first()
    candidates = _candidates(session, batch, user.id)
    if pending is not None and any(i.status not in WITH_FILES for i in (pending.left, pending.right)):
        pending = None  # one of its images left the study (rejected in review, withdrawn): draw another
    if pending is not None:
        return _view(pending, len(candidates) + 1, base_url)
    if not draw:
        raise NotFound(f"no pair of batch {batch.id} is waiting for {user.name}; ask for the next one")
    if not candidates:
        raise NotFound(
            f"no pair of batch {batch.id} is left for {user.name} to judge: it has no two configurations' images "
            "of the same row and seed, or you judged them all (`atelier prefer results` shows the win rates)"
        )
    prompt_id, x, y = secrets.choice(candidates)
    left, right = random_order(x, y)
    pair = Preference(
        batch_id=batch.id, prompt_id=prompt_id, left_image_id=left.id, right_image_id=right.id, shown_to_id=user.id
    )
    session.add(pair)
    session.flush()
    record_event(session, user.name, "preference.shown", "preference", pair.id, {"batch_id": batch.id})
    return _view(pair, len(candidates), base_url)


def _own_pair(session: Session, actor: str | None, pair_id: str) -> Preference:
    require_role(session, actor, "reviewer", "judge images")  # before anything about the pair is told
    pair = session.get(Preference, pair_id) if isinstance(pair_id, str) and len(pair_id) <= 36 else None
    if pair is None:
        raise NotFound(f"no preference pair {pair_id!r}; ask for the next pair of the batch")
    user = _judge(session, actor, session.get_one(Batch, pair.batch_id))
    if pair.shown_to_id != user.id:  # the same answer as for an unknown id: pair ids are not a directory
        raise NotFound(f"no preference pair {pair_id!r}; ask for the next pair of the batch")
    return pair


def pair_png(session: Session, actor: str | None, pair_id: str, side: str, store: ObjectStore) -> bytes:
    """One side of a pair as a PNG made again from the image's pixels: no metadata, no C2PA manifest (it
    names the configuration), nothing but the pixels."""
    from PIL import Image as PILImage

    if side not in ("left", "right"):
        raise InvalidInput(f"side must be left or right, got {side!r}")
    pair = _own_pair(session, actor, pair_id)
    image = pair.left if side == "left" else pair.right
    if not image.store_key or image.status not in WITH_FILES:
        raise InvalidState(f"pair {pair.id} can no longer be judged: one of its images left the study")
    with PILImage.open(io.BytesIO(store.get(image.store_key))) as source:
        pixels = source.convert("RGB")
        out = io.BytesIO()
        pixels.save(out, format="PNG")  # a fresh file: no text chunks, no manifest, no ICC profile
    return out.getvalue()


def record_pick(session: Session, actor: str | None, pair_id: str, choice: str) -> Pick:
    """Store the reviewer's pick (once) and audit it."""
    if choice not in CHOICES:
        raise InvalidInput(f"choice must be one of {', '.join(CHOICES)}, got {choice!r}")
    pair = _own_pair(session, actor, pair_id)
    # once: the row is read again under a lock (PostgreSQL: FOR UPDATE), so two picks sent at once
    # cannot both find it undecided (SQLite's single writer refuses the second one's write)
    session.execute(
        select(Preference).where(Preference.id == pair.id).with_for_update().execution_options(populate_existing=True)
    ).scalar_one()
    if pair.choice is not None:
        raise InvalidState(f"pair {pair.id} was judged already ({pair.choice}); ask for the next pair")
    for image in (pair.left, pair.right):
        if image.status not in WITH_FILES:
            raise InvalidState(f"pair {pair.id} can no longer be judged: one of its images left the study")
    pair.choice, pair.decided_at = choice, utcnow()
    left, right = pair.left, pair.right
    winner = {"left": left, "right": right}.get(choice)
    record_event(
        session,
        pair.shown_to.name,
        "preference.recorded",
        "preference",
        pair.id,
        {
            "batch_id": pair.batch_id,
            "left": {"image_id": left.id, "pipeline": left.pipeline or DEFAULT_PIPELINE},
            "right": {"image_id": right.id, "pipeline": right.pipeline or DEFAULT_PIPELINE},
            "choice": choice,
            "preferred_pipeline": (winner.pipeline or DEFAULT_PIPELINE) if winner else None,
        },
    )
    session.flush()
    return Pick(pair.id, choice, pair.decided_at)


def win_rates(
    session: Session,
    *,
    batch_id: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> list[WinRate]:
    """Win rates per configuration pair over decided judgements (of one batch, or decided in a period)."""
    left, right = aliased(Image), aliased(Image)
    query = (
        select(left.pipeline, right.pipeline, Preference.choice)
        .join(left, left.id == Preference.left_image_id)
        .join(right, right.id == Preference.right_image_id)
        .where(Preference.choice.is_not(None))
    )
    if batch_id is not None:
        query = query.where(Preference.batch_id == batch_id)
    if since is not None:
        query = query.where(Preference.decided_at >= since)
    if until is not None:
        query = query.where(Preference.decided_at < until)
    tally: dict[tuple[str, str], list[int]] = {}  # (a, b) with a < b -> [wins a, wins b, none]
    for lp, rp, choice in session.execute(query):
        lp, rp = lp or DEFAULT_PIPELINE, rp or DEFAULT_PIPELINE
        a, b = sorted((lp, rp))
        t = tally.setdefault((a, b), [0, 0, 0])
        if choice == "none":
            t[2] += 1
        else:
            winner = lp if choice == "left" else rp
            t[0 if winner == a else 1] += 1
    out = []
    for (a, b), (wa, wb, ties) in sorted(tally.items()):
        decided = wa + wb
        low, high = wilson(wa, decided) if decided else (None, None)
        out.append(
            WinRate(
                a,
                b,
                wa + wb + ties,
                wa,
                wb,
                ties,
                round(wa / decided, 4) if decided else None,
                None if low is None else round(low, 4),
                None if high is None else round(high, 4),
            )
        )
    return out


__all__: Sequence[str] = ("BlindPair", "Pick", "WinRate", "next_pair", "pair_png", "record_pick", "wilson", "win_rates")
