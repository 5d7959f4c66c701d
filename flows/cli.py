"""The `atelier` command line. User mistakes print one line and exit non-zero, never a traceback."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any, NoReturn

from pydantic import ValidationError

from flows.runtime import Runtime, using_settings
from flows.settings import Settings, get_settings
from governance.errors import AtelierError, ExitCode
from governance.records import BatchStatus, ImageStatus, Purpose, Role, SafetyVerdict


def _location(store_url: str | None, key: str | None) -> str:
    """Where an object is: the store's URL and the key, with exactly one `/` between them."""
    if not store_url or not key:
        return key or ""
    return f"{store_url.rstrip('/')}/{key}"


def _values(vocabulary: type[StrEnum]) -> list[str]:
    """argparse choices from one of governance.records' vocabularies."""
    return [str(v) for v in vocabulary]


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True, default=str))


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    if not rows:
        print("(none)")
        return
    cells = [[("" if r.get(c) is None else str(r.get(c))) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))


def progress_bar(done: int, total: int, width: int = 30) -> str:
    filled = int(width * done / total) if total else width
    return f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total}"


class RateWindow:
    """Images per minute over a sliding window of what this process saw (the live progress bar):
    from the first sample on, so the first images of a run give a sane rate, not a burst's."""

    def __init__(self, window_s: float = 60.0):
        from collections import deque

        self.window_s = window_s
        self.samples: deque[tuple[float, int]] = deque()

    def add(self, t: float, done: int) -> None:
        self.samples.append((t, done))
        while len(self.samples) > 2 and t - self.samples[1][0] >= self.window_s:
            self.samples.popleft()

    def per_minute(self) -> float | None:
        if len(self.samples) < 2:
            return None
        (t0, d0), (t1, d1) = self.samples[0], self.samples[-1]
        return 60 * (d1 - d0) / (t1 - t0) if t1 > t0 and d1 > d0 else None


def progress_line(p: dict[str, Any]) -> str:
    """`[####....] 12/200  published 11  quarantined 1  3.2/min  ETA 58 s` (governance.batches.batch_progress)."""
    line = f"{progress_bar(p['done'], p['planned'])}  published {p['published']}  quarantined {p['quarantined']}"
    if p["images_per_minute"]:
        line += f"  {p['images_per_minute']}/min"
    if p["eta_seconds"]:
        line += f"  ETA {p['eta_seconds']} s"
    return line


class ProgressMonitor:
    """Redraws one batch's progress line on stderr every second while `atelier run` works on it."""

    def __init__(self, rt: Runtime, batch_id: str, interval: float = 1.0):
        import threading

        self.rt, self.batch_id, self.interval = rt, batch_id, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="progress", daemon=True)
        self._width = 0
        self._rate = RateWindow()

    def _draw(self) -> None:
        from governance.batches import batch_progress

        with self.rt.sessions() as session:
            p = batch_progress(session, self.batch_id)
        self._rate.add(time.monotonic(), p["done"])
        per_minute = self._rate.per_minute()
        if per_minute is not None:  # what this run is doing now, over the last minute
            p = {
                **p,
                "images_per_minute": round(per_minute, 1),
                "eta_seconds": round(60 * max(0, p["planned"] - p["done"]) / per_minute),
            }
        line = f"batch {self.batch_id[:8]} " + progress_line(p)
        sys.stderr.write("\r" + line.ljust(self._width))
        sys.stderr.flush()
        self._width = len(line)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._draw()
            except Exception:  # noqa: BLE001 - a database hiccup must not disturb the run; retried next second
                pass

    def __enter__(self) -> ProgressMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        try:
            self._draw()  # the final state
        except Exception:  # noqa: BLE001
            pass
        sys.stderr.write("\n")
        sys.stderr.flush()


def _kv(pairs: dict[str, Any], indent: str = "") -> None:
    width = max((len(k) for k in pairs), default=0)
    for k, v in pairs.items():
        if isinstance(v, dict):
            print(f"{indent}{k}:")
            _kv(v, indent + "  ")
        else:
            print(f"{indent}{k.ljust(width)}  {'' if v is None else v}")


# ---------------------------------------------------------------- commands


def cmd_db_upgrade(rt: Runtime, args: argparse.Namespace) -> int:
    from governance.db import make_engine, upgrade

    rt.settings.data_dir.mkdir(parents=True, exist_ok=True)
    before, after = upgrade(make_engine(rt.settings.database_url_resolved))
    print(f"database schema: {before or 'empty'} -> {after}")
    return 0


def cmd_users_add(rt: Runtime, args: argparse.Namespace) -> int:
    from governance.users import add_user

    with rt.sessions.begin() as session:
        user = add_user(session, rt.settings.actor, args.name, args.role)
        print(f"user {user.name}: roles {', '.join(sorted(user.role_names))}")
    return 0


def cmd_users_list(rt: Runtime, args: argparse.Namespace) -> int:
    from governance.users import list_users

    with rt.sessions() as session:
        rows = [{"name": u.name, "roles": ",".join(sorted(u.role_names))} for u in list_users(session)]
    _print_json(rows) if args.json else print_table(rows, ["name", "roles"])
    return 0


def cmd_licences_register(rt: Runtime, args: argparse.Namespace) -> int:
    from governance.errors import NotFound
    from governance.licences import KNOWN_LICENCES, register_licence
    from governance.users import require_role

    known = KNOWN_LICENCES.get(args.licence_id)
    if known is None:
        raise NotFound(f"unknown licence {args.licence_id!r}; known: {', '.join(sorted(KNOWN_LICENCES))}")
    with rt.sessions.begin() as session:
        require_role(session, rt.settings.actor, "admin", "register licences")
        lic = register_licence(session, rt.settings.actor or "", known)
        print(f"licence {lic.id}: {lic.name} (text sha256 {lic.text_sha256})")
    return 0


def cmd_batch_submit(rt: Runtime, args: argparse.Namespace) -> int:
    from governance.batches import IntakeRejected, submit_batch

    try:
        with rt.sessions.begin() as session:
            batch = submit_batch(
                session,
                rt.settings.actor,
                Path(args.file),
                args.purpose,
                use_category=args.use_category,
                licence_ids=[rt.settings.model_licence],
            )
            out = {"batch_id": batch.id, "content_sha256": batch.content_sha256}
    except IntakeRejected as exc:
        if args.json:
            _print_json({"error": str(exc), "failures": [f.__dict__ for f in exc.report.failures]})
        else:
            print(f"error: {exc}", file=sys.stderr)
            print(exc.report.format_failures(), file=sys.stderr)
        return exc.exit_code
    if args.json:
        _print_json(out)
    else:
        print(f"batch {out['batch_id']} submitted (content sha256 {out['content_sha256']})")
        print(f"next: an approver runs `atelier batch approve {out['batch_id']} --as NAME`")
    return 0


def cmd_batch_edit(rt: Runtime, args: argparse.Namespace) -> int:
    from governance.batches import IntakeRejected, edit_batch

    try:
        with rt.sessions.begin() as session:
            batch = edit_batch(session, rt.settings.actor, args.batch_id, Path(args.file))
            print(f"batch {batch.id} edited (content sha256 {batch.content_sha256}); it needs a new approval")
    except IntakeRejected as exc:
        print(f"error: {exc}\n{exc.report.format_failures()}", file=sys.stderr)
        return exc.exit_code
    return 0


def cmd_batch_approve(rt: Runtime, args: argparse.Namespace) -> int:
    from governance.approvals import approve_batch

    with rt.sessions.begin() as session:
        a = approve_batch(session, rt.settings.actor, args.batch_id, args.content_sha256)
        out = {"batch_id": a.batch_id, "approval_id": a.id, "content_sha256": a.content_sha256}
    _print_json(out) if args.json else print(f"batch {out['batch_id']} approved for content {out['content_sha256']}")
    return 0


def cmd_batch_reject(rt: Runtime, args: argparse.Namespace) -> int:
    from governance.approvals import reject_batch

    with rt.sessions.begin() as session:
        a = reject_batch(session, rt.settings.actor, args.batch_id, args.reason)
        print(f"batch {a.batch_id} rejected: {a.reason}")
    return 0


def cmd_batch_list(rt: Runtime, args: argparse.Namespace) -> int:
    from governance.batches import batch_summary, list_batches

    with rt.sessions() as session:
        rows = [batch_summary(session, b) for b in list_batches(session, args.status)]
    if args.json:
        _print_json(rows)
    else:
        print_table(
            rows,
            [
                "batch_id",
                "status",
                "purpose",
                "requested_by",
                "decided_by",
                "prompts",
                "images_planned",
                "images_published",
                "images_quarantined",
            ],
        )
    return 0


def cmd_batch_show(rt: Runtime, args: argparse.Namespace) -> int:
    from governance.batches import batch_summary, get_batch

    with rt.sessions() as session:
        batch = get_batch(session, args.batch_id)
        out = batch_summary(session, batch)
        out["prompts_detail"] = [
            {"row_id": p.row_id, "prompt": p.prompt, "seed": p.seed, "ref": p.ref, **p.params()} for p in batch.prompts
        ]
    if args.json:
        _print_json(out)
        return 0
    detail = out.pop("prompts_detail")
    progress = out.pop("progress")
    _kv(out)
    progress.update(published=out["images_published"], quarantined=out["images_quarantined"])
    print(f"progress    {progress_line(progress)}")
    print()
    print_table(detail, ["row_id", "seed", "width", "height", "steps", "num_images", "ref", "prompt"])
    return 0


def preflight(rt: Runtime) -> None:
    """What every run needs, checked before Prefect starts and any model loads, so that a missing
    signer, key, licence or store is one line in a second or two, not a traceback after a minute."""
    from governance.errors import GovernanceCheckFailed
    from governance.licences import get_licence

    rt.credentials  # C2PA signer: chain and key (or KMS callback) readable  # noqa: B018
    rt.watermark_keys  # watermark key ring (or KMS callback)  # noqa: B018
    with rt.sessions() as session:
        get_licence(session, rt.settings.model_licence)  # registered, so the run can record its lineage
    try:
        rt.store.sha256_of(".atelier-preflight")  # a HEAD of a key that need not exist
    except Exception as exc:  # noqa: BLE001 - any failure here means the store cannot take images
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise GovernanceCheckFailed(f"object store {rt.store.url} cannot be reached: {reason}") from None


def run_batches(rt: Runtime, batch_ids: list[str], progress: bool = False) -> list[dict[str, Any]]:
    """Pre-flight each batch (clear refusals before Prefect starts), then run the flow for it."""
    from governance.approvals import require_runnable
    from governance.batches import get_batch
    from governance.users import require_role

    with rt.sessions() as session:
        require_role(session, rt.settings.actor, "operator", "run batches")
        batch_ids = [get_batch(session, batch_id).id for batch_id in batch_ids]  # prefixes -> full ids
        for batch_id in batch_ids:
            require_runnable(get_batch(session, batch_id))
    preflight(rt)
    from prefect.settings import PREFECT_SERVER_ANALYTICS_ENABLED as ANALYTICS
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS as STARTUP
    from prefect.settings import temporary_settings

    from flows.produce import produce_batch  # Prefect, torch and diffusers: only once the run can go ahead

    if not logging.getLogger().isEnabledFor(logging.INFO):  # without -v: Prefect's per-task lines off
        logging.getLogger("prefect").setLevel(logging.WARNING)
    results = []
    # Prefect's ephemeral server migrates its own database on a first start: 20 s is not enough on a
    # busy laptop. A configured value (environment or profile) wins. Its telemetry heartbeat is off:
    # it raced the server's own SQLite migrations ("database is locked", a 70-line traceback) and
    # has nothing to report from a governed pipeline anyway.
    with using_settings(rt.settings), temporary_settings({STARTUP: max(STARTUP.value(), 180), ANALYTICS: False}):
        for batch_id in batch_ids:
            with ProgressMonitor(rt, batch_id) if progress else contextlib.nullcontext():
                results.append(produce_batch(batch_id=batch_id, actor=rt.settings.actor or ""))
    return results


def cmd_run(rt: Runtime, args: argparse.Namespace) -> int:
    from governance.batches import list_batches

    if args.batch:
        ids = [args.batch]
    else:
        with rt.sessions() as session:
            ids = [b.id for b in list_batches(session, "approved")]
        if not ids:
            print("no approved batches waiting to run")
            return 0
    show = args.progress == "always" or (args.progress == "auto" and sys.stderr.isatty())
    results = run_batches(rt, ids, progress=show)
    _print_json(results) if args.json else print_table(
        results, ["batch_id", "run_id", "status", "published", "quarantined", "remaining"]
    )
    return ExitCode.OK if all(r["status"] == "completed" for r in results) else ExitCode.RUN_INCOMPLETE


def cmd_trace(rt: Runtime, args: argparse.Namespace) -> int:
    from governance.trace import find_image, trace_image

    with rt.sessions() as session:
        out = trace_image(session, find_image(session, args.ref))
    if args.json:
        _print_json(out)
        return 0
    audit = out.pop("audit")
    models = out.pop("models")
    _kv(out)
    print("\nmodels:")
    print_table(models, ["role", "name", "sha256", "licence"])
    print("\naudit:")
    print_table(audit, ["seq", "at", "actor", "action", "subject"])
    return 0


def cmd_audit_verify(rt: Runtime, args: argparse.Namespace) -> int:
    from governance.ledger import verify_ledger

    with rt.sessions() as session:
        report = verify_ledger(session, rt.store, rt.anchor_store, rt.signing_certificate())
    if args.json:
        _print_json(report.to_dict())
    elif report.ok:
        chain = report.chain
        print(
            f"audit ledger intact: {chain['events']} events, head {chain['head_seq']} {chain['head_hash']}; "
            f"{report.anchors_checked} anchors and {report.objects_checked} published objects checked"
        )
    else:
        print(f"audit ledger BROKEN: {report.problems[0]}", file=sys.stderr)
        for more in report.problems[1:6]:
            print(f"  also: {more}", file=sys.stderr)
    for warning in report.warnings[:3]:
        print(f"warning: {warning}", file=sys.stderr)
    return ExitCode.OK if report.ok else ExitCode.AUDIT_FAILED


def cmd_audit_anchor(rt: Runtime, args: argparse.Namespace) -> int:
    from governance.ledger import anchor_chain
    from governance.users import require_role

    signer = rt.checkpoint_signer()
    with rt.sessions.begin() as session:
        actor = require_role(session, rt.settings.actor, "operator", "anchor the audit chain").name
        anchor = anchor_chain(session, actor, rt.anchor_store, signer, rt.settings.audit_retention_days)
        if anchor is None:
            print("nothing to anchor: the audit chain is empty")
            return 0
        print(
            f"anchored event {anchor.seq} ({anchor.head_hash}) at {rt.anchor_store.location(anchor.key)}"
            + (f", retained until {anchor.retain_until}" if anchor.retain_until else " (no Object Lock here)")
        )
    return 0


def cmd_keys_init(rt: Runtime, args: argparse.Namespace) -> int:
    from governance.credentials import init_test_ca
    from governance.watermark import ensure_development_key

    paths = init_test_ca(rt.settings.keys_dir, force=args.force)
    print(f"C2PA test signer (NOT FOR PRODUCTION): {paths.chain}")
    print(f"private key: {paths.key}")
    print(f"trust anchor (test CA): {paths.trust_anchors}")
    if not rt.settings.watermark_key_callback:
        ring = ensure_development_key(rt.settings.watermark_key_path(), rotate=args.force)
        print(
            f"watermark key (development, NOT FOR PRODUCTION): {rt.settings.watermark_key_path()} "
            f"(current {ring[0].key_id}, {len(ring) - 1} earlier)"
        )
    return 0


def _watermark_evidence(wm: dict[str, Any]) -> str:
    if wm.get("reason"):
        return str(wm["reason"])
    if not wm.get("decoded"):
        return f"{wm['size'][0]}x{wm['size'][1]} px; needs 256 a side"
    if not wm.get("best_match"):
        return f"{wm['scheme']}: no published image marked this way"
    where = f" (grid offset {wm['offset'][0]},{wm['offset'][1]} found by search)" if wm.get("searched") else ""
    score = f", score {wm['score']} (needs {wm['score_needed']})" if wm.get("score") is not None else ""
    return f"{wm['matched_bits']}/{wm['total_bits']} bits match {wm['best_match']}{score}{where}"


def _print_verify_detail(out: dict[str, Any]) -> None:
    sig = out["signals"]
    print(f"{out['file']}: {out['verdict'].upper()}" + (f" (image {out['image_id']})" if out["image_id"] else ""))
    c2pa = sig["c2pa"]
    c2pa_result = c2pa["state"] or "no manifest"
    if c2pa["present"] and c2pa["state"] == "Valid":
        c2pa_result = "Valid, UNTRUSTED signer"
    rows = [
        {
            "signal": "bytes",
            "result": "match" if sig["bytes"]["matches_image"] else "no match",
            "evidence": f"sha256 {sig['bytes']['sha256']}",
        },
        {
            "signal": "c2pa",
            "result": c2pa_result,
            "evidence": "; ".join(c2pa["failures"]) or c2pa.get("error") or (c2pa["signer"] or {}).get("issuer", ""),
        },
    ]
    if "watermark" in sig:
        wm = sig["watermark"]
        evidence = _watermark_evidence(wm) + (f"; {wm['note']}" if wm.get("note") else "")
        rows.append({"signal": "watermark", "result": wm.get("verdict", "none"), "evidence": evidence})
    if "fingerprint" in sig:
        fp = sig["fingerprint"]
        rows.append(
            {
                "signal": "fingerprint",
                "result": "match" if fp["match"] else "no match",
                "evidence": f"distance {fp['distance']}/64 to {fp['nearest'] or '-'}",
            }
        )
    if "pixels" in sig:
        rows.append({"signal": "pixels", "result": "unreadable", "evidence": sig["pixels"]["error"]})
    print_table(rows, ["signal", "result", "evidence"])
    if c2pa.get("soft_binding_matches_pixels") is not None:
        soft = c2pa["soft_binding"]
        agrees = "matches" if c2pa["soft_binding_matches_pixels"] else "does NOT match"
        print(
            f"\nthe manifest's soft binding ({soft.get('alg')}, payload {soft['blocks'][0].get('value')}) "
            f"{agrees} the watermark read from the pixels"
        )
    if out.get("claim") and not out["claim"]["verified"]:
        print(f"\nthe manifest claims image {out['claim']['image_id']}: UNVERIFIED ({out['claim']['note']})")
    if out["trace"]:
        t = out["trace"]
        print(
            f"\nbatch {t['batch']['id']} ({t['batch']['purpose']}) requested by {t['batch']['requested_by']}, "
            f"approved by {t['approval']['approved_by']}; prompt {t['prompt']['row_id']!r}: {t['prompt']['text']}"
        )
        print("full record: atelier trace " + t["image_id"])


def cmd_verify(rt: Runtime, args: argparse.Namespace) -> int:
    from governance.errors import InvalidInput
    from governance.verify import VerifyLimits, exit_code_for, expand_paths, verify_file, verify_files

    _chain, _key, anchors = rt.settings.c2pa_paths()
    anchors_pem = anchors.read_bytes() if anchors.exists() else None
    limits = VerifyLimits(rt.settings.verify_max_pixels, rt.settings.verify_max_file_bytes)
    try:
        keys = rt.watermark_keys
    except AtelierError as exc:  # the other signals still count; say plainly that this one cannot
        print(f"warning: watermarks not checked: {exc}", file=sys.stderr)
        keys = []
    paths = [Path(p) for p in args.files]
    if len(paths) == 1 and not paths[0].is_dir():
        with rt.sessions() as session:
            out = verify_file(session, paths[0], anchors_pem, keys, limits)  # InvalidInput: one line, exit 2
        if args.json:
            _print_json(out)
        else:
            _print_verify_detail(out)
        return exit_code_for([out["verdict"]])
    files = expand_paths(paths)
    if not files:
        raise InvalidInput(f"no files to verify in {', '.join(map(str, paths))}")
    verdicts, rows = [], []
    with rt.sessions() as session:
        for out in verify_files(session, files, anchors_pem, keys, limits):
            verdicts.append(out["verdict"])
            if args.json:
                print(json.dumps(out, sort_keys=True, default=str), flush=True)
                continue
            rows.append(
                {
                    "file": out["file"],
                    "verdict": out["verdict"],
                    "image": out.get("image_id") or "",
                    "identified_by": ",".join(out.get("identified_by") or []) or out.get("error", ""),
                }
            )
    if not args.json:
        print_table(rows, ["file", "verdict", "image", "identified_by"])
        counts = {v: verdicts.count(v) for v in dict.fromkeys(verdicts)}
        print(f"\n{len(verdicts)} files: " + ", ".join(f"{n} {v}" for v, n in counts.items()))
    return exit_code_for(verdicts)


# ---------------------------------------------------------------- compliance


def _filters(args: argparse.Namespace) -> Any:
    from governance.compliance import SearchFilters, parse_when

    return SearchFilters(
        prompt=args.prompt,
        requester=args.requester,
        approver=args.approver,
        purpose=args.purpose,
        use_category=args.use_category,
        model_version=args.model_version,
        licence=args.licence,
        verdict=args.verdict,
        status=args.status,
        ref=args.ref,
        since=parse_when(args.since, flag="--since") if args.since else None,
        until=parse_when(args.until, end=True, flag="--until") if args.until else None,
    )


def _limit(value: int) -> int | None:
    from governance.errors import InvalidInput

    if value < 0:
        raise InvalidInput(f"--limit must be 0 (no limit) or more, not {value}")
    return value or None


def cmd_compliance_search(rt: Runtime, args: argparse.Namespace) -> int:
    from governance.compliance import require_compliance_access, search_images
    from governance.trace import trace_images

    filters, limit = _filters(args), _limit(args.limit)
    with rt.sessions() as session:
        require_compliance_access(session, rt.settings.actor, "search the records")
        result = search_images(session, filters, limit)
        if args.json:
            _print_json(trace_images(session, [r["image_id"] for r in result.images]))
    if result.truncated:
        print(
            f"note: more than {limit} images match; showing the newest {limit} (--limit 0 shows all)", file=sys.stderr
        )
    if not args.json:
        print_table(
            result.images,
            ["image_id", "status", "created_at", "ref", "requested_by", "use_category", "safety_verdict", "sha256"],
        )
    return 0


def cmd_compliance_impact(rt: Runtime, args: argparse.Namespace) -> int:
    from governance.compliance import impact, require_compliance_access

    with rt.sessions() as session:
        require_compliance_access(session, rt.settings.actor, "query impact")
        out = impact(session, model_version=args.model_version, licence=args.licence).to_dict()
    if args.json:
        _print_json(out)
        return 0
    print("model versions:")
    print_table(out["model_versions"], ["role", "sha256", "licence", "id"])
    print(f"\n{out['published_images']} published images depend on them:")
    print_table(
        [{**i, "location": _location(i["store_url"], i["store_key"])} for i in out["images"]],
        ["image_id", "created_at", "sha256", "location"],
    )
    return 0


def cmd_compliance_export(rt: Runtime, args: argparse.Namespace) -> int:
    from governance.compliance import export_lineage, require_compliance_access

    filters, limit, out = _filters(args), _limit(args.limit), Path(args.out)
    with rt.sessions() as session:
        require_compliance_access(session, rt.settings.actor, "export the records")
        count = export_lineage(session, out, args.format, filters, limit)
    print(f"exported the lineage of {count} images to {out} ({args.format})")
    return 0


def cmd_compliance_report(rt: Runtime, args: argparse.Namespace) -> int:
    from governance.compliance import parse_when, period_report, require_compliance_access

    since = parse_when(args.from_, flag="--from")
    until = parse_when(args.to, end=True, flag="--to")
    with rt.sessions() as session:
        user = require_compliance_access(session, rt.settings.actor, "write compliance reports")
        summary = period_report(
            session, rt.store, since, until, Path(args.out), max_thumbnails=args.thumbnails, generated_by=user.name
        )
    print(
        f"report {summary.path}: {summary.images} images ({summary.published} published, "
        f"{summary.quarantined} quarantined), {summary.approvals} approval decisions, "
        f"{summary.thumbnails} thumbnails"
    )
    return 0


def cmd_reproduce(rt: Runtime, args: argparse.Namespace) -> int:
    """Regenerate a published image from its record; exit 0 when its pixels match (bit-exact or within tolerance)."""
    from flows.reproduce import reproduce_image

    out = reproduce_image(rt, args.image_id)
    if args.json:
        _print_json(out)
        return ExitCode.OK if out["matches"] else ExitCode.NOT_REPRODUCED
    tol = out["tolerance"]
    if out["verdict"] == "identical":
        print(f"image {out['image_id']}: IDENTICAL pixels (bit-exact) to the published file")
    else:
        summary = "MATCHES within tolerance" if out["matches"] else "DIFFERENT"
        diff = (
            "sizes differ"
            if out["max_abs_diff"] is None
            else f"max abs diff {out['max_abs_diff']}, mean abs diff {out['mean_abs_diff']:.4f}"
        )
        print(
            f"image {out['image_id']}: {summary}: {diff} (tolerance: mean <= {tol['mean_abs_diff']}, "
            f"max <= {tol['max_abs_diff']})"
        )
    r, e = out["request"], out["engine"]
    print(
        f"regenerated with run {out['run_id']}'s settings: sampler {e['scheduler']}, {e['dtype']} on {e['device']} "
        f"(run: {e['recorded_device']}), seed {r['seed']}, {r['width']}x{r['height']}, {r['steps']} steps, "
        f"guidance {r['guidance_scale']}, split {r['refiner_split']}; model hashes equal to the run's"
    )
    for note in out["notes"]:
        print(f"note: {note}")
    return ExitCode.OK if out["matches"] else ExitCode.NOT_REPRODUCED


def cmd_deploy(rt: Runtime, args: argparse.Namespace) -> int:
    from flows.deploy import deploy_pool

    deployed = deploy_pool(args.pool, args.type, args.gpus)
    if args.json:
        _print_json([d.__dict__ for d in deployed])
        return 0
    print(
        f"work pool {args.pool} ({args.type}): at most {args.gpus} flow runs at once; "
        "queues marketing (priority 1), catalogue (priority 10)"
    )
    print_table(
        [{**d.__dict__, "schedules": ", ".join(d.schedules)} for d in deployed],
        ["name", "queue", "concurrency_limit", "schedules"],
    )
    print(f"next: start workers, e.g. `atelier workers --pool {args.pool} --gpus 0,1` on each GPU machine")
    return 0


def cmd_workers(rt: Runtime, args: argparse.Namespace) -> int:
    from flows.deploy import parse_gpus, run_workers, settings_env

    return run_workers(parse_gpus(args.gpus), args.pool, args.gpu_device, settings_env(rt.settings))


def cmd_demo(rt: Runtime, args: argparse.Namespace) -> int:
    from flows.demo import run_demo

    return run_demo(rt, Path(args.file), run_batches, print_table)


# ---------------------------------------------------------------- parser


def _settings_flags(default: object) -> argparse.ArgumentParser:
    """The settings flags, accepted before or after the command (`default` SUPPRESS on subcommands,
    so a flag given before the command is not overwritten by the subcommand's default)."""
    common = argparse.ArgumentParser(add_help=False, argument_default=default)
    g = common.add_argument_group("settings (each also an ATELIER_* environment variable)")
    g.add_argument("--as", dest="actor", metavar="NAME", help="acting user (ATELIER_ACTOR)")
    g.add_argument("--data-dir", type=Path, help="ATELIER_DATA_DIR (default ./.atelier)")
    g.add_argument("--database-url", help="ATELIER_DATABASE_URL (default: SQLite in the data dir)")
    g.add_argument("--store-url", help="ATELIER_STORE_URL: file:///path or s3://bucket/prefix")
    g.add_argument("--s3-endpoint-url", help="ATELIER_S3_ENDPOINT_URL for S3-compatible servers")
    g.add_argument("--base-model", help="ATELIER_BASE_MODEL: diffusers folder or hub id")
    g.add_argument("--refiner-model", help="ATELIER_REFINER_MODEL: diffusers folder or hub id")
    g.add_argument("--device", help="ATELIER_DEVICE: cpu, cuda, cuda:N")
    g.add_argument("-v", "--verbose", action="store_true", help="log progress")
    return common


class _StderrHandler(logging.Handler):
    """Logs to whatever sys.stderr is when a record is emitted (not the one at start-up), so a second
    `main()` in one process, or a thread logging late, never writes to a closed stream."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
        except Exception:  # noqa: BLE001 - logging's own contract: report, never raise
            self.handleError(record)


class UsageError(Exception):
    """A command line argparse refuses (unknown option, invalid choice): one line, exit 2."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a mistake is one line naming the fix instead of a usage block and SystemExit."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def build_parser() -> argparse.ArgumentParser:
    common = _settings_flags(argparse.SUPPRESS)
    parser = _Parser(prog="atelier", description="Governed SDXL batch production.", parents=[_settings_flags(None)])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(p: argparse._SubParsersAction, name: str, fn: Callable, help: str, json_flag: bool = False):  # type: ignore[type-arg]
        sp = p.add_parser(name, help=help, description=help, parents=[common])
        sp.set_defaults(fn=fn)
        if json_flag:
            sp.add_argument("--json", action="store_true", help="machine-readable output")
        return sp

    db = sub.add_parser("db", help="database schema").add_subparsers(dest="db_command", required=True)
    add(db, "upgrade", cmd_db_upgrade, "apply pending migrations")

    users = sub.add_parser("users", help="users and roles").add_subparsers(dest="users_command", required=True)
    sp = add(users, "add", cmd_users_add, "add a user or give it more roles (admins only, but the first user)")
    sp.add_argument("name")
    sp.add_argument("--role", action="append", required=True, choices=_values(Role), help=", ".join(Role))
    add(users, "list", cmd_users_list, "list users", json_flag=True)

    lic = sub.add_parser("licences", help="licence registry").add_subparsers(dest="lic_command", required=True)
    sp = add(lic, "register", cmd_licences_register, "register a known licence (admins)")
    sp.add_argument("licence_id")

    batch = sub.add_parser("batch", help="prompt batches").add_subparsers(dest="batch_command", required=True)
    sp = add(batch, "submit", cmd_batch_submit, "validate and submit a prompt file", json_flag=True)
    sp.add_argument("file", help="CSV, JSON lines (.jsonl) or Parquet")
    sp.add_argument("--purpose", required=True, choices=_values(Purpose))
    sp.add_argument(
        "--use-category",
        default="general",
        metavar="NAME",
        help="declared use of the images (default general), e.g. product-catalogue, marketing-campaign, "
        "editorial; refused when the models' licence prohibits it",
    )
    sp = add(batch, "edit", cmd_batch_edit, "replace a batch's prompts (voids its approval)")
    sp.add_argument("batch_id")
    sp.add_argument("file")
    sp = add(batch, "approve", cmd_batch_approve, "approve a batch (approvers; not its requester)", json_flag=True)
    sp.add_argument("batch_id")
    sp.add_argument("--content-sha256", help="refuse unless the batch still has exactly this content")
    sp = add(batch, "reject", cmd_batch_reject, "reject a batch with a reason")
    sp.add_argument("batch_id")
    sp.add_argument("--reason", required=True)
    sp = add(batch, "list", cmd_batch_list, "list batches", json_flag=True)
    sp.add_argument("--status", choices=_values(BatchStatus))
    sp = add(batch, "show", cmd_batch_show, "show one batch", json_flag=True)
    sp.add_argument("batch_id")

    sp = add(sub, "run", cmd_run, "run approved batches through the production flow (operators)", json_flag=True)
    sp.add_argument("--batch", help="one batch id (default: every approved batch)")
    sp.add_argument(
        "--progress",
        choices=["auto", "always", "never"],
        default="auto",
        help="a progress bar on stderr (auto: when stderr is a terminal)",
    )

    sp = add(sub, "trace", cmd_trace, "everything known about one image", json_flag=True)
    sp.add_argument("ref", help="image id, SHA-256, store key or a local image file")

    sp = add(
        sub,
        "verify",
        cmd_verify,
        "did Atelier make these files, and were they altered? (exit 0 original, "
        "10 derived, 11 tampered, 12 unknown, 2 a file that cannot be checked; several files: the most "
        "serious of those)",
        json_flag=True,
    )
    sp.add_argument("files", nargs="+", metavar="FILE", help="image files or folders (every file under them)")

    keys = sub.add_parser("keys", help="C2PA signing keys").add_subparsers(dest="keys_command", required=True)
    sp = add(keys, "init", cmd_keys_init, "create a local test CA and C2PA signer (development only)")
    sp.add_argument("--force", action="store_true", help="replace existing keys")

    audit = sub.add_parser("audit", help="audit ledger").add_subparsers(dest="audit_command", required=True)
    add(
        audit,
        "verify",
        cmd_audit_verify,
        "check the hash chain, every anchor and every published object",
        json_flag=True,
    )
    add(audit, "anchor", cmd_audit_anchor, "write a signed checkpoint of the chain head to WORM storage (operators)")

    comp = sub.add_parser("compliance", help="legal and compliance queries (auditors)").add_subparsers(
        dest="compliance_command", required=True
    )

    def filter_flags(sp: argparse.ArgumentParser) -> None:
        f = sp.add_argument_group("filters (combinable: every one given must match)")
        f.add_argument("--prompt", help="text contained in the prompt (case-insensitive)")
        f.add_argument("--requester", help="user who submitted the batch")
        f.add_argument("--approver", help="user who approved the batch")
        f.add_argument("--purpose", choices=_values(Purpose))
        f.add_argument("--use-category", help="declared use category, e.g. product-catalogue")
        f.add_argument("--model-version", help="model version id, weight SHA-256 (or 8+ hex prefix) or ROLE/SHA256")
        f.add_argument("--licence", help="licence id, e.g. creativeml-openrail++-m")
        f.add_argument("--verdict", choices=_values(SafetyVerdict), help="safety verdict")
        f.add_argument("--status", choices=_values(ImageStatus), help="image status")
        f.add_argument("--since", help="created at or after: YYYY-MM-DD or ISO time (UTC unless given)")
        f.add_argument("--until", help="created before; a date includes that whole day")
        f.add_argument("--ref", help="external reference of the prompt row (SKU, campaign)")

    sp = add(
        comp,
        "search",
        cmd_compliance_search,
        "find images; --json gives the `atelier trace` record of each",
        json_flag=True,
    )
    filter_flags(sp)
    sp.add_argument("--limit", type=int, default=1000, help="at most this many, newest first (0: no limit)")
    sp = add(
        comp,
        "impact",
        cmd_compliance_impact,
        "every published image that depends on a model version or a licence (recall, takedown)",
        json_flag=True,
    )
    which = sp.add_mutually_exclusive_group(required=True)
    which.add_argument("--model-version", help="model version id, weight SHA-256 (or 8+ hex prefix) or ROLE/SHA256")
    which.add_argument("--licence", help="licence id")
    sp = add(comp, "export", cmd_compliance_export, "full lineage per image to Parquet or CSV (formula-safe)")
    sp.add_argument("--format", required=True, help="parquet or csv")
    sp.add_argument("--out", required=True, help="file to write")
    filter_flags(sp)
    sp.add_argument("--limit", type=int, default=0, help="at most this many images, oldest first (0: all)")
    sp = add(comp, "report", cmd_compliance_report, "self-contained HTML report for a period")
    sp.add_argument("--from", dest="from_", required=True, help="start: YYYY-MM-DD or ISO time (inclusive)")
    sp.add_argument("--to", required=True, help="end: YYYY-MM-DD (that whole day) or ISO time (exclusive)")
    sp.add_argument("--out", required=True, help="HTML file to write")
    sp.add_argument("--thumbnails", type=int, default=60, help="at most this many thumbnails (default 60)")

    sp = add(
        sub,
        "reproduce",
        cmd_reproduce,
        "regenerate a published image from its record and compare its pixels "
        "(exit 0 identical or within tolerance, 1 different)",
        json_flag=True,
    )
    sp.add_argument("image_id")

    sp = add(
        sub,
        "deploy",
        cmd_deploy,
        "create the GPU work pool, its queues and the deployments of prefect.yaml "
        "on the Prefect server (PREFECT_API_URL); idempotent",
        json_flag=True,
    )
    sp.add_argument("--pool", default="atelier-gpu", help="work pool name (default atelier-gpu)")
    sp.add_argument(
        "--type",
        choices=["process", "kubernetes"],
        default="process",
        help="process: `atelier workers` on GPU machines; kubernetes: one Job per flow run",
    )
    sp.add_argument("--gpus", type=int, default=1, help="GPUs in the pool: the pool's concurrency limit")

    sp = add(
        sub,
        "workers",
        cmd_workers,
        "one Prefect worker per GPU of this machine, pinned with "
        "CUDA_VISIBLE_DEVICES, one flow run each; runs until Ctrl-C",
    )
    sp.add_argument("--pool", default="atelier-gpu", help="work pool to serve (a process pool)")
    sp.add_argument("--gpus", default="0", help="GPU indices, e.g. 0,1,2,3 (default 0)")
    sp.add_argument(
        "--gpu-device",
        default="cuda",
        help="ATELIER_DEVICE inside each worker (default cuda; cpu to try the pool without GPUs)",
    )

    sp = add(sub, "demo", cmd_demo, "the whole flow on the example catalogue")
    sp.add_argument("--file", default=str(Path(__file__).resolve().parent.parent / "examples" / "catalogue.csv"))
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    return get_settings(
        actor=args.actor,
        data_dir=args.data_dir,
        database_url=args.database_url,
        store_url=args.store_url,
        s3_endpoint_url=args.s3_endpoint_url,
        base_model=args.base_model,
        refiner_model=args.refiner_model,
        device=args.device,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return ExitCode.INVALID_INPUT
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, handlers=[handler], force=True)
    try:
        settings = settings_from_args(args)
    except ValidationError as exc:
        problems = "; ".join(f"ATELIER_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors())
        print(f"error: invalid settings: {problems}", file=sys.stderr)
        return ExitCode.INVALID_INPUT
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError

    try:
        code = int(args.fn(Runtime(settings), args))
        sys.stdout.flush()  # a closed pipe shows here, inside the handlers below, not at interpreter exit
        return code
    except AtelierError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except (ArgumentError, NoSuchModuleError) as exc:  # a malformed URL, or postgres:// for postgresql://
        print(
            f"error: ATELIER_DATABASE_URL is not a database URL SQLAlchemy understands ({_first_line(exc)}); "
            "use e.g. postgresql+psycopg://user@host/db or sqlite:////path/atelier.db",
            file=sys.stderr,
        )
        return ExitCode.INVALID_INPUT
    except OperationalError as exc:  # refused, unknown host, bad password, locked file
        from sqlalchemy.engine import make_url

        where = make_url(settings.database_url_resolved).render_as_string(hide_password=True)
        print(
            f"error: the database at {where} cannot be reached ({_first_line(exc.orig or exc)}); check that it "
            "runs and ATELIER_DATABASE_URL",
            file=sys.stderr,
        )
        return ExitCode.SERVICE_UNAVAILABLE
    except BrokenPipeError:  # `atelier ... --json | head`: the reader left; say nothing more
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return ExitCode.BROKEN_PIPE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


if __name__ == "__main__":
    sys.exit(main())
