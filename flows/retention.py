"""Retention as a Prefect flow: the scheduled deployment `retention-daily` (prefect.yaml) and
`atelier retention apply` both run `apply_retention` (governance.retention says what it does).

The rules are read once per run, and the images due are listed once; each image is then expired in
its own transaction (its files deleted, then its record and event), so a run cut short leaves nothing
half-said and the next run finishes it. At most `limit` images per run; the rest are reported as
remaining. The audit chain is anchored at the end, as after every governance decision.
"""

from __future__ import annotations

from datetime import datetime

from prefect import flow, get_run_logger

from flows.runtime import Runtime, active_settings
from governance.errors import PermissionDenied
from governance.records import utcnow
from governance.retention import Due, Failed, Held, RetentionReport, due, expire, require_runner

MAX_PER_RUN = 10_000


def run_retention(
    rt: Runtime, actor: str, dry_run: bool = False, limit: int = MAX_PER_RUN, now: datetime | None = None
) -> RetentionReport:
    policy = rt.settings.load_retention_policy()
    now = now or utcnow()
    with rt.sessions() as session:
        require_runner(session, actor)
        listed = [d for _, d in due(session, policy, now)]
    todo, remaining = listed[:limit], max(0, len(listed) - limit)
    expired: list[Due] = []
    held: list[Held] = []
    failed: list[Failed] = []
    if dry_run:
        from governance.holds import active_holds
        from governance.records import Image

        with rt.sessions() as session:
            images = [i for d in todo if (i := session.get(Image, d.image_id)) is not None]
            holds = active_holds(session, images)
        held = [Held(d.image_id, holds[d.image_id].id, d.rule) for d in todo if d.image_id in holds]
        expired = [d for d in todo if d.image_id not in holds]
    else:
        for item in todo:
            try:
                with rt.sessions.begin() as session:
                    user = require_runner(session, actor)  # still allowed: a role removed mid-run stops it
                    done = expire(session, user, rt.store, item.image_id, policy, now)
            except PermissionDenied:
                raise
            except Exception as exc:  # noqa: BLE001 - one image that cannot go does not stop the others
                failed.append(Failed(item.image_id, item.rule, f"{type(exc).__name__}: {exc}"[:300]))
                continue
            if isinstance(done, Held):
                held.append(done)
            elif done is not None:
                expired.append(done)
        if expired:
            rt.anchor(actor)
    return RetentionReport(
        policy.version, policy.sha256, now.isoformat(), dry_run, tuple(expired), tuple(held), remaining, tuple(failed)
    )


@flow(name="apply-retention", flow_run_name="retention-{actor}")
def apply_retention(actor: str, dry_run: bool = False, limit: int = MAX_PER_RUN) -> RetentionReport:
    """Expire what the retention policy says is due, skipping held images (the scheduled deployment)."""
    report = run_retention(Runtime(active_settings()), actor, dry_run, limit)
    for f in report.failed:
        get_run_logger().error("image %s not expired (%s): %s", f.image_id, f.rule, f.error)
    get_run_logger().info(
        "retention %s: %d expired, %d held, %d remaining%s",
        report.policy,
        len(report.expired),
        len(report.held),
        report.remaining,
        " (dry run)" if dry_run else "",
    )
    return report
