"""Production runs: start (gated by the approval), the work still to do, completion."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from governance.approvals import require_runnable
from governance.audit import record_event
from governance.batches import get_batch, lock_batch
from governance.errors import InvalidState, NotFound
from governance.licences import check_use_category
from governance.records import Batch, Image, ModelVersion, Prompt, Run, image_id_for, utcnow
from governance.results import Result
from governance.users import require_role

if TYPE_CHECKING:
    from governance.screening import PromptPolicy


@dataclass(frozen=True)
class PlannedImage:
    """One image a batch asks for; its id follows from (prompt id, index) alone (invariant 4)."""

    image_id: str
    prompt_id: str
    image_index: int


@dataclass(frozen=True)
class RunSummary(Result):
    """How a run ended (`atelier run` prints one per batch). JSON: these fields, with the worker's
    timings (seconds: generate_s, safety_s, publish_s, ...) at the top level beside them."""

    run_id: str
    batch_id: str
    status: str  # completed | failed
    published: int
    quarantined: int
    remaining: int  # planned images still without a record (another run makes them)
    error: str | None = None
    timing: dict[str, float] = field(default_factory=dict)
    anchored_seq: int | None = None  # the audit event anchored to WORM storage at the end of the run

    @classmethod
    def of(cls, run: Run, anchored_seq: int | None = None) -> RunSummary:
        """From a closed run's record (its `summary` column holds the counts and timings)."""
        counts = {k: run.summary.get(k, 0) for k in ("published", "quarantined", "remaining")}
        timing = {k: float(v) for k, v in run.summary.items() if k.endswith("_s")}
        return cls(
            run.id,
            run.batch_id,
            run.status,
            **counts,
            error=run.summary.get("error"),
            timing=timing,
            anchored_seq=anchored_seq,
        )

    @property
    def completed(self) -> bool:
        return self.status == "completed"

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        timing = out.pop("timing")
        if out["error"] is None:
            del out["error"]
        return {**out, **timing}


def start_run(
    session: Session,
    actor: str | None,
    batch_id: str,
    model_versions: list[ModelVersion],
    engine: dict[str, Any],
    flow_run_id: str = "",
    prompt_policy: PromptPolicy | None = None,
) -> Run:
    """Open a run for an approved batch. Refused without a valid approval (invariant 1), and when its
    rows no longer pass `prompt_policy` (the policy in force now: screening runs again at run start)."""
    user = require_role(session, actor, "operator", "run batches")
    batch = get_batch(session, batch_id)
    lock_batch(session, batch)  # an edit at the same moment waits, then sees "running"
    approval = require_runnable(batch, prompt_policy)
    # The declared use was checked at intake against the configured licence; check it again against
    # the licences of the weights this run actually loaded.
    check_use_category(session, batch.use_category, {mv.licence_id for mv in model_versions})
    run = Run(batch_id=batch.id, approval_id=approval.id, started_by_id=user.id, flow_run_id=flow_run_id, engine=engine)
    run.model_versions = list(model_versions)
    session.add(run)
    previous = batch.status
    batch.status = "running"
    session.flush()
    record_event(
        session,
        user.name,
        "run.started",
        "run",
        run.id,
        {
            "batch_id": batch.id,
            "approval_id": approval.id,
            "content_sha256": approval.content_sha256,
            "batch_status_before": previous,
            "model_versions": [mv.id for mv in model_versions],
            "flow_run_id": flow_run_id,
        },
    )
    return run


def planned_images(batch: Batch) -> list[PlannedImage]:
    """Every image the batch asks for: per row, num_images for each configuration it names, the
    configuration at position c taking indices c * num_images ... (governance.pipelines)."""
    return [
        PlannedImage(image_id_for(p.id, i), p.id, i)
        for p in batch.prompts
        for i in range(p.num_images * len(p.pipelines))
    ]


def pending_images(session: Session, batch_id: str) -> list[PlannedImage]:
    """Planned images that have no record yet: what a (re-)run still has to make."""
    batch = get_batch(session, batch_id)
    done = set(session.scalars(select(Image.id).where(Image.batch_id == batch_id)))
    return [p for p in planned_images(batch) if p.image_id not in done]


def get_run(session: Session, run_id: str) -> Run:
    run = session.get(Run, run_id)
    if run is None:
        raise NotFound(f"no run {run_id!r}")
    return run


def finish_run(session: Session, actor: str, run_id: str, error: str | None = None) -> Run:
    """Close a run. The batch is completed only when every planned image has a record."""
    run = get_run(session, run_id)
    if run.status == ("failed" if error else "completed"):
        return run  # closed already: a retry after a commit whose answer was lost (idempotent)
    if run.status != "running":
        raise InvalidState(f"run {run.id} is already {run.status}")
    batch = get_batch(session, run.batch_id)
    counts = dict(
        session.execute(select(Image.status, func.count()).where(Image.run_id == run.id).group_by(Image.status)).all()
    )
    remaining = len(pending_images(session, batch.id))
    run.summary = {
        "published": counts.get("published", 0),
        "quarantined": counts.get("quarantined", 0),
        "remaining": remaining,
        **({"error": error} if error else {}),
    }
    from governance.compare import run_costs

    run.summary["pipelines"] = run_costs(session, run.id)  # per configuration: images, accepted, engine seconds
    run.finished_at = utcnow()
    run.status = "failed" if error else "completed"
    batch.status = "completed" if remaining == 0 and not error else ("failed" if error else "approved")
    record_event(session, actor, f"run.{run.status}", "run", run.id, {"batch_id": batch.id, **run.summary})
    session.flush()
    return run


def prompts_by_id(session: Session, prompt_ids: list[str]) -> dict[str, Prompt]:
    return {p.id: p for p in session.scalars(select(Prompt).where(Prompt.id.in_(prompt_ids)))}
