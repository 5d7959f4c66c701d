"""Catalogue refresh as a Prefect flow (`catalogue-refresh` in prefect.yaml, and `atelier catalogue
refresh`): settle what ran since -> import the feed -> diff -> render -> validate and screen -> batches
(approved by standing approvals, or waiting for an approver) -> produce -> settle (current sets,
superseded and removed ones, per-SKU manifests). governance.catalogue says what each step does."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from prefect import flow, get_run_logger

from flows.runtime import Runtime, active_settings
from governance.catalogue import ImportResult, MadeBatch, Settled, Skipped
from governance.results import Result

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RefreshReport(Result):
    imported: ImportResult | None
    batches: tuple[MadeBatch, ...]
    produced: tuple[str, ...]  # batch ids run now (standing approvals); the others wait for an approver
    skipped: tuple[Skipped, ...]
    unchanged: int  # SKUs whose rendered rows did not change: nothing made
    settled: Settled
    reports: tuple[str, ...] = ()  # store keys of the run reports' contact sheets (manifests beside them)


def run_refresh(rt: Runtime, actor: str, feed: str | None = None) -> RefreshReport:
    from flows.produce import produce_batch
    from governance.catalogue import import_feed, make_batches, plan_refresh, settle
    from governance.users import require_role

    policy = rt.settings.load_prompt_policy()
    with rt.sessions() as session:  # every role the refresh needs, before any work
        require_role(session, actor, "requester", "refresh the catalogue")
        require_role(session, actor, "operator", "refresh the catalogue")
        if rt.settings.catalogue_withdraw_retired:
            require_role(session, actor, "auditor", "withdraw retired catalogue images")
    with rt.sessions.begin() as session:
        before = settle(
            session, actor, rt.store, rt.settings.catalogue_withdraw_retired
        )  # batches run since (the queue's, once approved and run)
    imported = None
    if feed:
        with rt.sessions.begin() as session:
            imported = import_feed(session, actor, Path(feed))
    with rt.sessions.begin() as session:
        plan = plan_refresh(session, policy)
        made = make_batches(session, actor, plan, policy, rt.settings.intake_max_rows, rt.settings.load_pipelines())
    produced = []
    for batch in made:
        if batch.status == "approved":
            produce_batch(batch_id=batch.batch_id, actor=actor)
            produced.append(batch.batch_id)
    with rt.sessions.begin() as session:
        after = settle(session, actor, rt.store, rt.settings.catalogue_withdraw_retired)
    rt.anchor(actor)
    settled = Settled(
        before.current + after.current,
        before.superseded + after.superseded,
        before.removed + after.removed,
        before.failed + after.failed,
        before.manifests + after.manifests,
        tuple(sorted({*before.batches, *after.batches})),
    )
    from governance.catalogue import write_run_report

    reports = []
    for batch_id in settled.batches:  # a report that cannot be written is said, and the refresh stands
        try:
            with rt.sessions() as session:
                reports.append(write_run_report(session, rt.store, batch_id)["html"])
        except Exception as exc:  # noqa: BLE001
            log.warning("catalogue run report for batch %s not written: %s", batch_id, exc)
    return RefreshReport(
        imported, tuple(made), tuple(produced), tuple(plan.skipped), plan.unchanged, settled, tuple(reports)
    )


@flow(name="catalogue-refresh", flow_run_name="catalogue-refresh-{actor}")
def catalogue_refresh(actor: str, feed: str | None = None) -> RefreshReport:
    """The scheduled catalogue run; `feed`: the PIM export to import first (default ATELIER_CATALOGUE_FEED)."""
    rt = Runtime(active_settings())
    report = run_refresh(rt, actor, feed or rt.settings.catalogue_feed)
    get_run_logger().info(
        "catalogue refresh: %d batch(es), %d run, %d unchanged SKUs, %d skipped",
        len(report.batches),
        len(report.produced),
        report.unchanged,
        len(report.skipped),
    )
    return report
