"""Prompt batches: submit (intake), edit, list and show."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from governance.audit import record_event
from governance.errors import InvalidInput, InvalidState
from governance.intake import IntakeError, IntakeLimits, IntakeReport, PromptRow, content_sha256, load_prompts
from governance.licences import DEFAULT_MODEL_LICENCE, DEFAULT_USE_CATEGORY, check_use_category
from governance.pipelines import DEFAULT_PIPELINE, PipelineConfig, batch_configs
from governance.records import PURPOSES, Approval, Batch, Image, Prompt, Run, User, prompt_id_for, utcnow
from governance.results import Result
from governance.users import require_role

if TYPE_CHECKING:
    from governance.approvals import PriorDecision
    from governance.pipelines import PipelineSet
    from governance.screening import Flag, PromptPolicy, Screening


class IntakeRejected(InvalidInput):
    """The file was read but rows failed validation; `report` holds every failure."""

    def __init__(self, path: Path, report: IntakeReport):
        n = len(report.failures)
        super().__init__(f"{path.name}: {n} problem{'s' if n != 1 else ''} found, nothing was stored")
        self.report = report


def _read(
    path: Path,
    limits: IntakeLimits | None = None,
    pipelines: PipelineSet | None = None,
    default_pipeline: str | None = None,
) -> list[PromptRow]:
    if default_pipeline is not None:  # the batch's --pipeline: known names, one line otherwise
        from governance.pipelines import default_pipelines, split_names

        known = pipelines or default_pipelines()
        for name in split_names(default_pipeline):
            known.get(name)
    try:
        report = load_prompts(path, limits, pipelines, default_pipeline)
    except IntakeError as exc:
        raise InvalidInput(str(exc)) from None
    if not report.ok:
        raise IntakeRejected(path, report)
    return report.rows


def _screen(
    path: Path, rows: list[PromptRow], policy: PromptPolicy | None, screened: Screening | None = None
) -> dict[str, Any]:
    """Screen the rows under the prompt policy (the packaged one when none is given: screening never
    switches off). A `block` rule refuses the file like any intake failure, naming row, rule and the
    matched text; `review` flags are kept with the batch for its approver. `screened`: these exact rows,
    screened already under `policy` by the caller (the catalogue screens every rendered row once)."""
    from governance.intake import RowFailure
    from governance.screening import load_prompt_policy, record_of, screen_rows

    policy = policy or load_prompt_policy()
    if screened is not None and (screened.policy_sha256 != policy.sha256 or any(
        f.row > len(rows) or rows[f.row - 1].row_id != f.row_id for f in screened.flags
    )):  # fmt: skip
        raise ValueError("screened rows do not match the batch's rows or policy")
    screening = screened if screened is not None else screen_rows(policy, rows)
    if screening.blocked:
        failures = [
            RowFailure(
                f.row,
                f.row_id,
                f.column,
                f"policy:{f.rule}",
                f"matched {f.matched!r} ({f.category}): blocked by prompt policy {policy.version}",
            )
            for f in screening.blocked
        ]
        raise IntakeRejected(path, IntakeReport([], failures))
    return record_of(screening)


def _prompt_records(batch_id: str, rows: list[PromptRow]) -> list[Prompt]:
    return [
        Prompt(id=prompt_id_for(batch_id, r.row_id), batch_id=batch_id, position=i, **r.to_dict())
        for i, r in enumerate(rows)
    ]


def submit_batch(
    session: Session,
    actor: str | None,
    path: Path,
    purpose: str,
    use_category: str = DEFAULT_USE_CATEGORY,
    licence_ids: Sequence[str] = (DEFAULT_MODEL_LICENCE,),
    limits: IntakeLimits | None = None,
    policy: PromptPolicy | None = None,
    review_required: bool = False,
    pipelines: PipelineSet | None = None,
    default_pipeline: str | None = None,
) -> Batch:
    """Validate and screen a prompt file and store it as a SUBMITTED batch (nothing is stored on any
    failure; `policy`: the prompt policy in force, default the packaged one; `pipelines`: the pipeline
    configurations in force, default the packaged ones; `default_pipeline`: the configuration(s) of rows
    whose `pipeline` cell is empty, default base+refiner).

    `use_category` is the declared use; it is refused when unknown or prohibited by any of
    `licence_ids`, the licences configured for the models (see governance.licences).
    """
    user = require_role(session, actor, "requester", "submit batches")
    if purpose not in PURPOSES:
        raise InvalidInput(f"unknown purpose {purpose!r}: choose one of {', '.join(PURPOSES)}")
    check_use_category(session, use_category, licence_ids)
    rows = _read(path, limits, pipelines, default_pipeline)
    return submit_rows(
        session, user, rows, purpose, path.name, policy, use_category, licence_ids, review_required, pipelines=pipelines
    )


def submit_rows(
    session: Session,
    user: User,
    rows: list[PromptRow],
    purpose: str,
    source_name: str,
    policy: PromptPolicy | None = None,
    use_category: str = DEFAULT_USE_CATEGORY,
    licence_ids: Sequence[str] = (DEFAULT_MODEL_LICENCE,),
    review_required: bool = False,
    screened: Screening | None = None,
    pipelines: PipelineSet | None = None,
) -> Batch:
    """Store validated rows as a SUBMITTED batch of `user` (a requester), screened first: the common
    end of `submit_batch` and of batches the catalogue renders (governance.catalogue)."""
    if purpose not in PURPOSES:
        raise InvalidInput(f"unknown purpose {purpose!r}: choose one of {', '.join(PURPOSES)}")
    check_use_category(session, use_category, licence_ids)
    screening = _screen(Path(source_name), rows, policy, screened)
    batch = Batch(
        purpose=purpose,
        use_category=use_category,
        requested_by=user,
        source_name=source_name,
        content_sha256=content_sha256(rows),
        screening=screening,
        review_required=review_required,
        pipelines=_pipelines_record(rows, pipelines),
    )
    session.add(batch)
    session.flush()
    session.add_all(_prompt_records(batch.id, rows))
    record_event(
        session,
        user.name,
        "batch.submitted",
        "batch",
        batch.id,
        {
            "purpose": purpose,
            "use_category": use_category,
            "licences_checked": sorted(set(licence_ids)),
            "source": source_name,
            "content_sha256": batch.content_sha256,
            "prompts": len(rows),
            "images": sum(r.num_images * len(r.pipelines) for r in rows),
            "pipelines": sorted(batch.pipelines["configurations"]) if batch.pipelines else [],
            "screening": {"policy": screening["policy"], "sha256": screening["sha256"], "flags": screening["flags"]},
            "review_required": review_required,
        },
    )
    session.flush()
    return batch


def _pipelines_record(rows: Sequence[PromptRow], pipelines: PipelineSet | None) -> dict[str, Any]:
    """The definitions of the configurations the rows name, as a batch pins them."""
    from governance.pipelines import default_pipelines

    return (pipelines or default_pipelines()).record_for([n for r in rows for n in r.pipelines])


def lock_batch(session: Session, batch: Batch) -> None:
    """Lock the batch's row until the transaction ends (PostgreSQL; SQLite has one writer anyway) and
    read it again: whoever locks it next sees what this transaction made of it."""
    session.execute(select(Batch.id).where(Batch.id == batch.id).with_for_update())
    session.refresh(batch)


def edit_batch(
    session: Session,
    actor: str | None,
    batch_id: str,
    path: Path,
    limits: IntakeLimits | None = None,
    policy: PromptPolicy | None = None,
    pipelines: PipelineSet | None = None,
    default_pipeline: str | None = None,
) -> Batch:
    """Replace a batch's prompts with a new file. Any approval is voided: it pinned the old content."""
    batch = get_batch(session, batch_id)
    # the batch row locked, then read again (PostgreSQL): a run starting at the same moment holds the
    # same lock, so the edit sees "running" and is refused instead of replacing the rows under the run
    lock_batch(session, batch)
    user = require_role(session, actor, "requester", "edit batches")
    if user.id != batch.requested_by_id:
        raise InvalidState(f"only the requester ({batch.requested_by.name}) can edit batch {batch.id}")
    if batch.status not in ("submitted", "approved", "rejected"):
        raise InvalidState(f"batch {batch.id} is {batch.status}; only a batch that has not run can be edited")
    rows = _read(path, limits, pipelines, default_pipeline)
    screening = _screen(path, rows, policy)
    old_hash = batch.content_sha256
    from governance.approvals import describe_rejection, rejections_of

    rejected = [r for r in rejections_of(session, content_sha256(rows)) if r.batch_id == batch.id]
    if rejected:  # a rejection sticks to its content: the same rows cannot come back to the queue
        raise InvalidState(
            f"batch {batch.id}: this exact content was {describe_rejection(rejected[-1])}; "
            "change what was rejected, or submit it as a new batch (its approver then sees the rejection)"
        )
    for prompt in list(batch.prompts):
        session.delete(prompt)
    session.flush()
    batch.prompts = _prompt_records(batch.id, rows)
    batch.content_sha256 = content_sha256(rows)
    batch.source_name = path.name
    batch.screening = screening
    batch.pipelines = _pipelines_record(rows, pipelines)
    for approval in batch.approvals:
        if approval.voided_at is None:
            approval.voided_at = utcnow()
            approval.void_reason = "batch edited"
            record_event(
                session,
                user.name,
                "approval.voided",
                "approval",
                approval.id,
                {"batch_id": batch.id, "reason": "batch edited", "content_sha256": approval.content_sha256},
            )
    batch.status = "submitted"
    record_event(
        session,
        user.name,
        "batch.edited",
        "batch",
        batch.id,
        {
            "old_content_sha256": old_hash,
            "content_sha256": batch.content_sha256,
            "prompts": len(rows),
            "screening": {"policy": screening["policy"], "sha256": screening["sha256"], "flags": screening["flags"]},
        },
    )
    session.flush()
    return batch


def get_batch(session: Session, batch_id: str) -> Batch:
    """The batch with this id, or the one whose id starts with it (8+ characters, any case)."""
    from governance.refs import resolve_id

    batch: Batch = resolve_id(session, Batch, batch_id, "batch", "`atelier batch list` shows the batches")
    return batch


def stored_row(p: Prompt) -> PromptRow:
    """A stored prompt as the row intake made of it: every field the approver approves."""
    return PromptRow(
        row_id=p.row_id,
        prompt=p.prompt,
        negative_prompt=p.negative_prompt,
        seed=p.seed,
        width=p.width,
        height=p.height,
        steps=p.steps,
        guidance_scale=p.guidance_scale,
        refiner_split=p.refiner_split,
        num_images=p.num_images,
        ref=p.ref,
        pipeline=p.pipeline or DEFAULT_PIPELINE,
    )


def stored_content_sha256(batch: Batch) -> str:
    """The content hash recomputed from the stored prompt rows (catches edits that bypassed Atelier)."""
    return content_sha256([stored_row(p) for p in batch.prompts])


def current_approval(batch: Batch) -> Approval | None:
    live = [a for a in batch.approvals if a.voided_at is None]
    return live[-1] if live else None


@dataclass(frozen=True)
class BatchProgress(Result):
    """Images planned and done (published or quarantined), with the rate since the batch's first run."""

    done: int
    planned: int
    published: int
    quarantined: int
    percent: float
    images_per_minute: float | None
    eta_seconds: int | None

    def with_rate(self, per_minute: float) -> BatchProgress:
        """This progress at another rate (the live bar's sliding window): the ETA follows it."""
        eta = round(60 * max(0, self.planned - self.done) / per_minute) if per_minute > 0 else None
        return replace(self, images_per_minute=round(per_minute, 1), eta_seconds=eta)


@dataclass(frozen=True)
class BatchProgressSummary(Result):
    """`progress` inside a batch summary (the counts by status sit beside it)."""

    done: int
    planned: int
    percent: float
    images_per_minute: float | None
    eta_seconds: int | None


@dataclass(frozen=True)
class BatchSummary(Result):
    """One line of `atelier batch list`; the head of `atelier batch show`."""

    batch_id: str
    status: str
    purpose: str
    requested_by: str
    source: str
    content_sha256: str
    created_at: datetime
    decision: str | None
    decided_by: str | None
    approval_id: str | None
    prompts: int
    images_planned: int
    images_published: int
    images_quarantined: int
    progress: BatchProgressSummary
    review_required: bool = False  # its images wait for a reviewer before they are published
    images_in_review: int = 0
    images_rejected: int = 0  # by a reviewer
    use_category: str = ""  # the declared use the approver approves (checked against the licences)

    def full_progress(self) -> BatchProgress:
        p = self.progress
        return BatchProgress(
            p.done,
            p.planned,
            self.images_published,
            self.images_quarantined,
            p.percent,
            p.images_per_minute,
            p.eta_seconds,
        )


@dataclass(frozen=True)
class PromptDetail(Result):
    """One prompt row as stored: every field the approver approves."""

    row_id: str
    prompt: str
    negative_prompt: str
    seed: int
    ref: str
    width: int
    height: int
    steps: int
    guidance_scale: float
    refiner_split: float | None  # None: none of the row's configurations runs the refiner
    num_images: int  # per configuration
    pipeline: str = DEFAULT_PIPELINE  # configuration name(s); several: a comparison on the same seeds


@dataclass(frozen=True)
class BatchDetail(Result):
    """`atelier batch show`: the summary and every prompt row. JSON: the summary's fields and
    `prompts_detail`."""

    summary: BatchSummary
    prompts_detail: tuple[PromptDetail, ...]
    # every decision ever taken on this exact content, in this batch or another (rejections first of all)
    decisions_on_content: tuple[PriorDecision, ...] = ()
    # the prompt policy it was screened under, and the review flags an approver must acknowledge
    screening_policy: str | None = None
    flags: tuple[Flag, ...] = ()
    # the definitions of the configurations the rows name, as pinned at submission (name -> definition)
    pipelines: dict[str, Any] = field(default_factory=dict)
    pipelines_version: str | None = None  # the configuration file they were pinned from (None: legacy)

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.summary.to_dict(),
            "pipelines": self.pipelines,
            "pipelines_version": self.pipelines_version,
            "prompts_detail": [p.to_dict() for p in self.prompts_detail],
            "decisions_on_content": [d.to_dict() for d in self.decisions_on_content],
            "screening_policy": self.screening_policy,
            "flags": [f.to_dict() for f in self.flags],
        }


def images_per_row() -> Any:
    """SQL: the images a prompt row plans, num_images per configuration it names (comma-separated)."""
    commas = func.length(Prompt.pipeline) - func.length(func.replace(Prompt.pipeline, ",", ""))
    return Prompt.num_images * (1 + func.coalesce(commas, 0))


def batch_progress(session: Session, batch_id: str) -> BatchProgress:
    """Images planned, published, quarantined, rate and ETA, from aggregates only (cheap enough to
    poll every second on a batch of any size: `atelier run`'s progress bar does)."""
    planned = int(
        session.scalar(select(func.coalesce(func.sum(images_per_row()), 0)).where(Prompt.batch_id == batch_id)) or 0
    )
    counts: dict[str, int] = {
        status: n
        for status, n in session.execute(
            select(Image.status, func.count()).where(Image.batch_id == batch_id).group_by(Image.status)
        ).all()
    }
    done = sum(counts.values())  # published, quarantined, waiting for review or rejected by a reviewer
    started, last = session.execute(
        select(
            select(func.min(Run.started_at)).where(Run.batch_id == batch_id).scalar_subquery(),
            func.max(Image.created_at),
        ).where(Image.batch_id == batch_id)
    ).one()
    rate = None
    # From the first run's start, not the first image: images land in bursts (a chunk at a time), and
    # two images 20 ms apart made "2843/min" out of two images. This is sane from the first image on.
    if started is not None and last is not None and done and last > started:
        rate = done / (last - started).total_seconds()
    return BatchProgress(
        done=done,
        planned=planned,
        published=counts.get("published", 0),
        quarantined=counts.get("quarantined", 0),
        percent=round(100 * done / planned, 1) if planned else 100.0,
        images_per_minute=round(rate * 60, 2) if rate else None,
        eta_seconds=(0 if done >= planned else round((planned - done) / rate) if rate else None),
    )


def batch_summary(session: Session, batch: Batch) -> BatchSummary:
    progress = batch_progress(session, batch.id)
    approval = current_approval(batch)
    rejected = _rejected(session, batch.id) if batch.review_required else 0
    return BatchSummary(
        batch_id=batch.id,
        status=batch.status,
        purpose=batch.purpose,
        requested_by=batch.requested_by.name,
        source=batch.source_name,
        content_sha256=batch.content_sha256,
        created_at=batch.created_at,
        decision=approval.decision if approval else None,
        decided_by=approval.decided_by.name if approval else None,
        approval_id=approval.id if approval else None,
        prompts=len(batch.prompts),
        images_planned=progress.planned,
        images_published=progress.published,
        images_quarantined=progress.quarantined,
        progress=BatchProgressSummary(
            progress.done, progress.planned, progress.percent, progress.images_per_minute, progress.eta_seconds
        ),
        review_required=bool(batch.review_required),
        images_in_review=progress.done - progress.published - progress.quarantined - rejected,
        images_rejected=rejected,
        use_category=batch.use_category,
    )


def _rejected(session: Session, batch_id: str) -> int:
    return int(
        session.scalar(
            select(func.count()).select_from(Image).where(Image.batch_id == batch_id, Image.status == "rejected")
        )
        or 0
    )


def batch_detail(session: Session, batch: Batch) -> BatchDetail:
    """The summary, every prompt row with every field, and every decision taken on this exact content
    (what `batch show` displays, and what an approver must have seen)."""
    from governance.approvals import prior_decisions
    from governance.screening import flags_of

    screening = batch.screening or {}
    configs = batch_configs(batch.pipelines)
    return BatchDetail(
        decisions_on_content=tuple(prior_decisions(session, batch.content_sha256)),
        summary=batch_summary(session, batch),
        prompts_detail=tuple(_prompt_detail(p, configs) for p in batch.prompts),
        screening_policy=f"{screening['policy']} ({screening['sha256'][:12]})" if screening else None,
        flags=flags_of(batch.screening),
        pipelines={name: c.record() for name, c in configs.items()},
        pipelines_version=(batch.pipelines or {}).get("version"),
    )


def _prompt_detail(p: Prompt, configs: dict[str, PipelineConfig]) -> PromptDetail:
    row = {**dataclasses.asdict(stored_row(p))}
    if not any(configs[n].refiner for n in p.pipelines if n in configs):
        row["refiner_split"] = None  # stored for the hash, but no configuration of the row uses it
    return PromptDetail(**row)


def list_batches(session: Session, status: str | None = None) -> list[Batch]:
    stmt = select(Batch).order_by(Batch.created_at)
    if status:
        stmt = stmt.where(Batch.status == status)
    return list(session.scalars(stmt))
