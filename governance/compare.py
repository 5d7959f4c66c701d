"""Comparing pipeline configurations: images side by side, cost per image and per accepted image.

What an accepted image costs is the business measure of a configuration (the SDXL paper judges the
refiner by human preference; a team adopting it judges it by what it is worth). For each
configuration of a batch (or of every batch):

- images made, and how many were published (accepted: passed safety and, where the batch is reviewed,
  accepted by a reviewer; a later withdrawal does not undo that it was accepted), quarantined by the
  safety or provenance checks, or rejected by a reviewer;
- engine seconds, measured on the worker for each configuration's generate call (synchronised with the
  GPU where one ran: GPU seconds) and shared equally among that call's images (``images.engine_seconds``);
- images per engine second, and with a price per GPU-hour (``ATELIER_GPU_HOUR_PRICE`` or
  ``--price-per-gpu-hour``): cost per image = seconds per image x price / 3600, and cost per accepted
  image = the engine cost of every image made / the images accepted (the quarantined and rejected are
  paid for too).

Nothing here is estimated: an image made before engine time was recorded counts as made, but not in
the seconds; ``measured`` says how many images the seconds cover. A worker's first call of a shape
includes its warm-up (CUDA kernels chosen, ``torch.compile`` when on), and with ``compile`` small groups
are padded to the compiled batch size: both are paid for, so they are counted, and they weigh less the
larger the batch.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from governance.pipelines import DEFAULT_PIPELINE, batch_configs, image_slot
from governance.records import Batch, Image, Prompt
from governance.results import Result

ACCEPTED = ("published", "withdrawn")  # passed every check (and review, where asked): accepted once
REJECTED = ("rejected",)  # a reviewer said no


@dataclass(frozen=True)
class ConfigCost(Result):
    """One configuration's images, rates and cost (see the module docstring)."""

    pipeline: str
    images: int
    accepted: int
    quarantined: int
    review_rejected: int
    awaiting_review: int
    measured: int  # images with a measured engine time
    engine_seconds: float  # over the measured images
    devices: tuple[str, ...]
    seconds_per_image: float | None
    images_per_second: float | None
    quarantine_rate: float | None  # quarantined / images
    review_rejection_rate: float | None  # rejected / (accepted + rejected): of those a reviewer decided
    gpu_hour_price: float | None
    cost_per_image: float | None
    cost_per_accepted_image: float | None  # None: no price, or nothing accepted yet


def _sig(x: float) -> float:
    """Eight significant digits: a cost of a thousandth of a cent keeps its digits."""
    return float(f"{x:.8g}")


def _ratio(a: float, b: float) -> float | None:
    return _sig(a / b) if b else None


def cost_table(
    rows: Iterable[tuple[str | None, str, int, float | None, int, str | None]], price: float | None
) -> list[ConfigCost]:
    """Rows of (pipeline, status, images, engine seconds summed, images measured, device) -> one
    ConfigCost per configuration, in name order."""
    acc: dict[str, dict[str, Any]] = {}
    for pipeline, status, count, seconds, measured, device in rows:
        a = acc.setdefault(pipeline or DEFAULT_PIPELINE, {"by": {}, "seconds": 0.0, "measured": 0, "devices": set()})
        a["by"][status] = a["by"].get(status, 0) + int(count)
        a["seconds"] += float(seconds or 0.0)
        a["measured"] += int(measured or 0)
        if device:
            a["devices"].add(device)
    out = []
    for name in sorted(acc):
        a = acc[name]
        by: dict[str, int] = a["by"]
        images = sum(by.values())
        accepted = sum(by.get(s, 0) for s in ACCEPTED)
        rejected = sum(by.get(s, 0) for s in REJECTED)
        per_image = _ratio(a["seconds"], a["measured"])
        cost = None if price is None or per_image is None else _sig(per_image * price / 3600)
        out.append(
            ConfigCost(
                pipeline=name,
                images=images,
                accepted=accepted,
                quarantined=by.get("quarantined", 0),
                review_rejected=rejected,
                awaiting_review=by.get("review", 0),
                measured=a["measured"],
                engine_seconds=round(a["seconds"], 3),
                devices=tuple(sorted(a["devices"])),
                seconds_per_image=per_image,
                images_per_second=_ratio(a["measured"], a["seconds"]),
                quarantine_rate=_ratio(by.get("quarantined", 0), images),
                review_rejection_rate=_ratio(rejected, accepted + rejected),
                gpu_hour_price=price,
                cost_per_image=cost,
                cost_per_accepted_image=None if cost is None or not accepted else _sig(cost * images / accepted),
            )
        )
    return out


def costs(
    session: Session,
    price: float | None,
    *,
    batch_id: str | None = None,
    run_id: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> list[ConfigCost]:
    """Cost per configuration over one batch's images, one run's, those made in [since, until), or all."""
    query = select(
        Image.pipeline,
        Image.status,
        func.count(),
        func.sum(Image.engine_seconds),
        func.count(Image.engine_seconds),
        Image.engine_device,
    ).group_by(Image.pipeline, Image.status, Image.engine_device)
    if batch_id is not None:
        query = query.where(Image.batch_id == batch_id)
    if run_id is not None:
        query = query.where(Image.run_id == run_id)
    if since is not None:
        query = query.where(Image.created_at >= since)
    if until is not None:
        query = query.where(Image.created_at < until)
    return cost_table(session.execute(query).tuples(), price)


@dataclass(frozen=True)
class ComparedImage(Result):
    image_id: str
    pipeline: str
    status: str
    seed: str
    engine_seconds: float | None


@dataclass(frozen=True)
class ComparedRow(Result):
    """One prompt row and seed: the image each configuration made of it."""

    row_id: str
    prompt: str
    slot: int  # which of the row's num_images: the seed is the same in every configuration
    seed: str
    images: tuple[ComparedImage, ...]


@dataclass(frozen=True)
class Comparison(Result):
    """`atelier compare`: a batch's configurations side by side, their cost and reviewers' preferences."""

    batch_id: str
    pipelines: tuple[str, ...]
    rows: tuple[ComparedRow, ...]
    costs: tuple[ConfigCost, ...]
    preferences: tuple[Any, ...]  # governance.preference.WinRate
    same_seeds: bool  # every row's images share their seed across configurations


COMPARE_ROLES = ("approver", "operator", "auditor", "admin")


def require_compare_access(session: Session, actor: str | None, batch: Batch) -> None:
    """Who may see which configuration made which image, and what it cost: the batch's requester, and
    approvers, operators, auditors and admins. Not a reviewer as such: reviewers judge pairs blind."""
    from governance.errors import PermissionDenied
    from governance.users import get_user

    user = get_user(session, actor)
    if user.id == batch.requested_by_id or user.role_names & set(COMPARE_ROLES):
        return
    raise PermissionDenied(
        f"{user.name} cannot compare the configurations of batch {batch.id}: that needs the "
        f"{', '.join(COMPARE_ROLES)} role, or being its requester (reviewers judge the images blind: "
        "`atelier prefer next`)"
    )


def compare_batch(session: Session, batch: Batch, price: float | None) -> Comparison:
    from governance.preference import win_rates

    configs = batch_configs(batch.pipelines)
    names = tuple(sorted(configs))
    images = session.scalars(
        select(Image)
        .join(Prompt, Prompt.id == Image.prompt_id)
        .where(Image.batch_id == batch.id)
        .order_by(Prompt.position, Image.image_index)
    ).all()
    rows: dict[tuple[str, int], list[Image]] = {}
    for image in images:
        rows.setdefault((image.prompt_id, image_slot(image.prompt.num_images, image.image_index)), []).append(image)
    compared = []
    same = True
    for (_prompt_id, slot), group in rows.items():
        seeds = {i.seed for i in group}
        same = same and len(seeds) == 1
        p = group[0].prompt
        compared.append(
            ComparedRow(
                p.row_id,
                p.prompt,
                slot,
                group[0].seed if len(seeds) == 1 else ",".join(sorted(seeds)),
                tuple(
                    ComparedImage(i.id, i.pipeline or DEFAULT_PIPELINE, i.status, i.seed, i.engine_seconds)
                    for i in group
                ),
            )
        )
    return Comparison(
        batch.id,
        names,
        tuple(compared),
        tuple(costs(session, price, batch_id=batch.id)),
        tuple(win_rates(session, batch_id=batch.id)),
        same,
    )


def run_costs(session: Session, run_id: str) -> dict[str, dict[str, Any]]:
    """What a run records in its summary per configuration: images, accepted, engine seconds."""
    return {
        c.pipeline: {
            "images": c.images,
            "accepted": c.accepted,
            "quarantined": c.quarantined,
            "engine_seconds": c.engine_seconds,
            "measured": c.measured,
            "seconds_per_image": c.seconds_per_image,
        }
        for c in costs(session, None, run_id=run_id)
    }


def price_of(value: float | None, setting: float | None) -> float | None:
    """The price per GPU-hour to use: the command's, else the setting's (None: costs not shown)."""
    from governance.errors import InvalidInput

    price = setting if value is None else value
    if price is not None and not (math.isfinite(price) and 0 <= price <= 1_000_000):
        raise InvalidInput(f"the price per GPU-hour must be a number from 0 to 1000000, got {price!r}")
    return price


__all__: Sequence[str] = ("ConfigCost", "Comparison", "compare_batch", "costs", "cost_table", "run_costs", "price_of")
