"""What the server does for a caller: the same governance services as the CLI, one function per act,
shared by the HTTP API and the console pages (each renders the typed result its way).

Who may see what, beyond the roles each route names (server.app.roles):
- a batch, its images and their files: its requester, and approvers, operators, auditors and admins;
- the batch list: a caller who is only a requester sees their own batches;
- search, impact, export and reports: auditors and admins (governance.compliance).
"""

from __future__ import annotations

import io
import json
import re
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from governance.batches import BatchDetail, BatchSummary
from governance.errors import InvalidInput, NotFound, PermissionDenied
from governance.records import Batch, Image, WorkChunk
from governance.results import Result
from server.app import Caller

SEES_EVERY_BATCH = ("approver", "operator", "auditor", "admin", "reviewer")
UPLOAD_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def _anchor(c: Caller) -> None:
    from flows.cli import anchor_decision

    anchor_decision(c.rt, c.identity)


def _visible(c: Caller, batch: Batch) -> Batch:
    from governance.preference import blind_to

    if batch.requested_by.name != c.user and not c.has(*SEES_EVERY_BATCH):
        raise NotFound(f"no batch {batch.id} that {c.user} may see")  # not even whether it exists
    if blind_to(frozenset(c.roles), batch.requested_by.name == c.user, batch):
        raise PermissionDenied(
            f"{c.user} judges batch {batch.id} blind: a comparison batch's rows, images and records are for its "
            "requester, approvers, operators, auditors and admins; judge it on its pairs page"
        )
    return batch


def _sees_waiting(c: Caller, requester: str) -> bool:
    """Whether the caller may see an image waiting for review (its file, its thumbnail): reviewers and
    the batch's requester."""
    return c.has("reviewer") or requester == c.user


def _batch(session: Session, c: Caller, batch_id: str) -> Batch:
    from governance.batches import get_batch

    return _visible(c, get_batch(session, batch_id))


class Upload:
    """An uploaded file written to a private temporary folder under a safe version of its name
    (the name is recorded as the batch's source), size-limited while it is read."""

    def __init__(self, name: str | None, data: bytes, limit: int, what: str):
        if len(data) > limit:
            raise InvalidInput(f"the {what} is {len(data)} bytes; the limit is {limit} bytes")
        safe = UPLOAD_NAME.sub("_", Path(name or "upload").name).strip("._")[:120] or "upload"
        self._dir = tempfile.TemporaryDirectory(prefix="atelier-upload-")
        self.path = Path(self._dir.name) / safe
        self.path.write_bytes(data)

    def __enter__(self) -> Path:
        return self.path

    def __exit__(self, *exc: object) -> None:
        self._dir.cleanup()


# ---------------------------------------------------------------- batches


def list_visible_batches(c: Caller, status: str | None = None, mine: bool = False) -> list[BatchSummary]:
    from governance.batches import batch_summary, list_batches

    own_only = mine or not c.has(*SEES_EVERY_BATCH)
    with c.rt.sessions() as session:
        batches = list_batches(session, status)
        return [batch_summary(session, b) for b in batches if not own_only or b.requested_by.name == c.user]


def approval_queue(c: Caller) -> list[BatchSummary]:
    """Batches awaiting a decision, never the caller's own."""
    return [b for b in list_visible_batches(c, "submitted") if b.requested_by != c.user]


def batch_detail(c: Caller, batch_id: str) -> BatchDetail:
    from governance.batches import batch_detail as detail

    with c.rt.sessions() as session:
        return detail(session, _batch(session, c, batch_id))


def batch_summary_of(c: Caller, batch_id: str) -> BatchSummary:
    """The head of a batch (status, counts, progress) without its rows: what a gallery page needs."""
    from governance.batches import batch_summary

    with c.rt.sessions() as session:
        return batch_summary(session, _batch(session, c, batch_id))


@dataclass(frozen=True)
class Submitted(Result):
    batch_id: str
    content_sha256: str
    status: str


def submit(
    c: Caller, name: str | None, data: bytes, purpose: str, use_category: str, pipeline: str | None = None
) -> Submitted:
    from governance.batches import submit_batch

    s = c.rt.settings
    with Upload(name, data, s.intake_max_file_bytes, "prompt file") as path, c.rt.sessions.begin() as session:
        b = submit_batch(
            session,
            c.user,
            path,
            purpose,
            use_category,
            [s.model_licence],
            s.intake_limits(),
            s.load_prompt_policy(),
            review_required=str(purpose) in s.review_purposes,  # as `atelier batch submit` decides it
            pipelines=s.load_pipelines(),
            default_pipeline=pipeline or None,
        )
        return Submitted(b.id, b.content_sha256, b.status)


def edit(c: Caller, batch_id: str, name: str | None, data: bytes) -> Submitted:
    from governance.batches import edit_batch

    s = c.rt.settings
    with Upload(name, data, s.intake_max_file_bytes, "prompt file") as path:
        with c.rt.sessions.begin() as session:
            batch = _batch(session, c, batch_id)
            b = edit_batch(
                session, c.user, batch.id, path, s.intake_limits(), s.load_prompt_policy(), s.load_pipelines()
            )
            out = Submitted(b.id, b.content_sha256, b.status)
    _anchor(c)
    return out


@dataclass(frozen=True)
class Decision(Result):
    batch_id: str
    approval_id: str
    decision: str
    content_sha256: str
    reason: str | None


def approve(
    c: Caller, batch_id: str, content_sha256: str, acknowledge_rejections: bool, acknowledge_flags: bool = False
) -> Decision:
    from governance.approvals import approve_batch

    with c.rt.sessions.begin() as session:
        batch = _batch(session, c, batch_id)
        a = approve_batch(session, c.user, batch.id, content_sha256, acknowledge_rejections, acknowledge_flags)
        out = Decision(a.batch_id, a.id, a.decision, a.content_sha256, None)
    _anchor(c)
    return out


def reject(c: Caller, batch_id: str, content_sha256: str, reason: str) -> Decision:
    from governance.approvals import reject_batch

    with c.rt.sessions.begin() as session:
        batch = _batch(session, c, batch_id)
        a = reject_batch(session, c.user, batch.id, reason, content_sha256)
        out = Decision(a.batch_id, a.id, a.decision, a.content_sha256, a.reason)
    _anchor(c)
    return out


# ---------------------------------------------------------------- images


@dataclass(frozen=True)
class ImageCard(Result):
    image_id: str
    batch_id: str
    row_id: str
    ref: str
    image_index: int
    status: str
    safety_verdict: str
    reasons: list[str]
    sha256: str | None
    created_at: datetime


def _card(i: Image) -> ImageCard:
    return ImageCard(
        i.id,
        i.batch_id,
        i.prompt.row_id,
        i.prompt.ref,
        i.image_index,
        i.status,
        i.safety_verdict,
        [str(r) for r in i.safety_reasons],
        i.sha256,
        i.created_at,
    )


def batch_images(c: Caller, batch_id: str, status: str | None = None, offset: int = 0, limit: int = 100) -> list[Any]:
    with c.rt.sessions() as session:
        batch = _batch(session, c, batch_id)
        stmt = select(Image).where(Image.batch_id == batch.id)
        if status:
            stmt = stmt.where(Image.status == status)
        stmt = stmt.order_by(Image.created_at, Image.id).offset(offset).limit(limit)
        return [_card(i) for i in session.scalars(stmt)]


class ThumbnailCache:
    """Stored thumbnails as data: URIs, the most recently shown kept up to a byte budget (one per server
    process). A thumbnail never changes at its key (made once at publish time, beside the image's
    content-addressed key), so a cached one is never stale; whether a card shows it is decided per
    request from the image's status, whatever the cache holds."""

    def __init__(self, budget_bytes: int):
        from collections import OrderedDict
        from threading import Lock

        self.budget = budget_bytes
        self.size = 0
        self._uris: OrderedDict[tuple[str, str], str] = OrderedDict()
        self._lock = Lock()

    def get(self, store_url: str, key: str) -> str | None:
        with self._lock:
            uri = self._uris.get((store_url, key))
            if uri is not None:
                self._uris.move_to_end((store_url, key))
            return uri

    def put(self, store_url: str, key: str, uri: str) -> None:
        with self._lock:
            if (store_url, key) in self._uris or len(uri) > self.budget:
                return
            self._uris[(store_url, key)] = uri
            self.size += len(uri)
            while self.size > self.budget:
                _, dropped = self._uris.popitem(last=False)
                self.size -= len(dropped)


# 64 MiB of data: URIs per server process: about 8,000 catalogue thumbnails (256 px JPEG, ~6 kB).
THUMBNAILS = ThumbnailCache(64 * 1024 * 1024)
_READERS: list[Any] = []  # one thread pool per process for store reads, made when first needed


def _readers() -> Any:
    from concurrent.futures import ThreadPoolExecutor

    if not _READERS:
        _READERS.append(ThreadPoolExecutor(max_workers=8, thread_name_prefix="atelier-thumbs"))
    return _READERS[0]


def gallery_thumbnails(c: Caller, cards: Sequence[Any]) -> dict[str, Any]:
    """The stored thumbnails of these (already visible) cards as data: URIs: a gallery page is one
    request, with one permission check, instead of 100 more. Read from the store in parallel on a miss
    and kept in THUMBNAILS. An image published before thumbnails were made has none (the page shows its
    caption only). `cards`: anything with an `image_id` and a `status` (gallery cards, compared images).
    The URIs come marked safe for the templates: "data:image/jpeg;base64," and base64's alphabet only."""
    import base64

    from markupsafe import Markup

    from governance.review import thumb_of

    ids = [card.image_id for card in cards if card.status in ("published", "review")]
    if not ids:
        return {}
    from governance.records import User

    with c.rt.sessions() as session:
        rows = session.execute(
            select(Image.id, Image.store_key, Image.status, User.name)
            .join(Batch, Batch.id == Image.batch_id)
            .join(User, User.id == Batch.requested_by_id)
            .where(Image.id.in_(ids))
        ).all()
    store = c.rt.store
    url = str(getattr(store, "url", id(store)))
    found: dict[str, Any] = {}
    missing: list[tuple[str, str]] = []
    for image_id, store_key, status, requester in rows:
        if status == "review" and not _sees_waiting(c, requester):
            continue
        key = thumb_of(store_key or "")
        uri = THUMBNAILS.get(url, key)
        if uri is None:
            missing.append((image_id, key))
        else:
            found[image_id] = Markup(uri)

    def read(item: tuple[str, str]) -> tuple[str, str | None]:
        image_id, key = item
        try:
            data = store.get(key)
        except Exception:  # noqa: BLE001 - no thumbnail for this one: the card shows without it
            return image_id, None
        uri = "data:image/jpeg;base64," + base64.b64encode(data).decode("ascii")
        THUMBNAILS.put(url, key, uri)
        return image_id, uri

    reads = map(read, missing) if len(missing) < 4 else _readers().map(read, missing)
    found.update((image_id, Markup(uri)) for image_id, uri in reads if uri is not None)
    return found


def review_waiting(c: Caller, batch_id: str | None = None) -> list[ImageCard]:
    """Images waiting for review (reviewers, auditors, admins), oldest first, as gallery cards."""
    from governance.review import note_shown, waiting
    from governance.users import require_any_role

    with c.rt.sessions.begin() as session:
        me = require_any_role(session, c.user, ("reviewer", "auditor", "admin"), "list images waiting for review")
        items = waiting(session, batch_id, viewer_id=me.id)
        note_shown(session, me, items)
        ids = [w.image_id for w in items]
        found = {i.id: i for i in session.scalars(select(Image).where(Image.id.in_(ids)))}
        return [_card(found[i]) for i in ids]


def review_decide(
    c: Caller, accept: bool, image_ids: list[str], batch_id: str | None, reason: str | None = None
) -> list[str]:
    from governance import review

    with c.rt.sessions.begin() as session:
        if accept:
            done = review.accept(session, c.user, c.rt.store, image_ids or None, batch_id)
        else:
            done = review.reject(session, c.user, reason or "", image_ids or None, batch_id)
    _anchor(c)
    return done


def withdraw_images(
    c: Caller, reason: str, image_ids: list[str], model_version: str | None, licence: str | None
) -> Any:
    from governance.withdraw import withdraw

    with c.rt.sessions.begin() as session:
        done = withdraw(session, c.user, c.rt.store, reason, image_ids or None, model_version, licence)
    _anchor(c)
    return done


def holds(c: Caller, include_released: bool, target_id: str | None) -> Any:
    from governance.holds import HOLDERS, list_holds
    from governance.users import require_any_role

    with c.rt.sessions() as session:
        require_any_role(session, c.user, HOLDERS, "list legal holds")
        return list_holds(session, include_released, target_id)


def hold_place(c: Caller, reason: str, image_ids: list[str], batch_id: str | None) -> Any:
    from governance.holds import place

    with c.rt.sessions.begin() as session:
        act = place(session, c.user, c.rt.store, reason, image_ids or None, batch_id)
    _anchor(c)
    return act


def hold_release(c: Caller, hold_id: str, reason: str) -> Any:
    from governance.holds import release

    with c.rt.sessions.begin() as session:
        act = release(session, c.user, c.rt.store, [hold_id], reason)
    _anchor(c)
    return act


def retention_due(c: Caller) -> Any:
    from flows.retention import run_retention

    policy = c.rt.settings.load_retention_policy()
    report = run_retention(c.rt, c.user, dry_run=True)
    return {"rules": [r.to_dict() for r in policy.rules], **report.to_dict()}


def catalogue_templates(c: Caller) -> tuple[Any, Any]:
    from governance.catalogue import standing_approvals, templates

    with c.rt.sessions() as session:
        return templates(session), standing_approvals(session)


def approve_template(
    c: Caller, template_id: str, sha256: str, categories: list[str], max_images: int, days: int
) -> Any:
    from governance.catalogue import approve_template as approve

    with c.rt.sessions.begin() as session:
        view = approve(session, c.user, template_id, sha256, categories, max_images, days)
    _anchor(c)
    return view


def revoke_standing(c: Caller, standing_id: str, reason: str) -> Any:
    from governance.catalogue import revoke_standing as revoke

    with c.rt.sessions.begin() as session:
        view = revoke(session, c.user, standing_id, reason)
    _anchor(c)
    return view


def quarantined(c: Caller, limit: int = 200) -> list[ImageCard]:
    with c.rt.sessions() as session:
        stmt = select(Image).where(Image.status == "quarantined").order_by(Image.created_at.desc()).limit(limit)
        return [_card(i) for i in session.scalars(stmt)]


def _image(session: Session, c: Caller, image_id: str) -> Image:
    image = session.get(Image, image_id)
    if image is None:
        raise NotFound(f"no image {image_id}")
    _visible(c, image.prompt.batch)
    return image


def image_trace(c: Caller, image_id: str) -> Any:
    from governance.trace import trace_image

    with c.rt.sessions() as session:
        return trace_image(session, _image(session, c, image_id))


def image_bytes(c: Caller, image_id: str, thumbnail: bool = False) -> tuple[bytes, str]:
    """The published file (or its thumbnail, made at publish time) from the store; an image waiting
    for review only to reviewers (and the batch's requester)."""
    from governance.review import thumb_of

    with c.rt.sessions() as session:
        image = _image(session, c, image_id)
        waiting = image.status == "review" and _sees_waiting(c, image.prompt.batch.requested_by.name)
        if not (image.status == "published" or waiting) or not image.store_key:
            raise NotFound(f"image {image_id} is {image.status}: nothing was published")
        key, version = image.store_key, image.store_version_id
    if thumbnail:
        try:
            return c.rt.store.get(thumb_of(key)), "image/jpeg"
        except Exception:  # noqa: BLE001 - published before thumbnails were made: none to show
            raise NotFound(f"image {image_id} has no thumbnail (published before thumbnails were made)") from None
    return c.rt.store.get(key, version), "image/png"


def run_report(c: Caller, batch_id: str) -> bytes:
    """A catalogue batch's contact sheet (governance.catalogue.write_run_report), from the store."""
    from governance.catalogue import REPORT_PREFIX

    with c.rt.sessions() as session:
        batch = _batch(session, c, batch_id)
    key = f"{REPORT_PREFIX}{batch.id}/contact-sheet.html"
    if c.rt.store.sha256_of(key) is None:
        raise NotFound(f"batch {batch.id} has no run report (catalogue batches get one once they have run)")
    return c.rt.store.get(key)


def batch_archive(c: Caller, batch_id: str) -> tuple[bytes, str]:
    """A zip of the batch's published images, named by row and reference, and manifest.json
    (every image's row, status, hashes and where it is stored)."""
    from governance.trace import trace_images

    with c.rt.sessions() as session:
        batch = _batch(session, c, batch_id)
        images = list(session.scalars(select(Image).where(Image.batch_id == batch.id).order_by(Image.id)))
        traces = trace_images(session, [i.id for i in images])
        cards = [_card(i) for i in images]
        where = {i.id: (i.store_key, i.store_version_id) for i in images if i.status == "published"}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:  # PNGs do not compress further
        names = {}
        for card in cards:
            if card.image_id in where:
                key, version = where[card.image_id]
                stem = UPLOAD_NAME.sub("_", f"{card.row_id}_{card.ref}".strip("_"))[:80] or card.image_id
                name = f"images/{stem}_{card.image_index}_{card.image_id[:8]}.png"
                zf.writestr(name, c.rt.store.get(key or "", version))
                names[card.image_id] = name
        manifest = {
            "batch_id": batch_id,
            "images": [{**t.to_dict(), "file": names.get(t.image_id)} for t in traces],
        }
        zf.writestr("manifest.json", json.dumps(manifest, indent=2, sort_keys=True, default=str))
    return buf.getvalue(), f"atelier-batch-{batch_id[:8]}.zip"


def check_published(c: Caller, image_id: str) -> Any:
    """`verify` of the published file as the store holds it now: its C2PA manifest validated against
    the trust anchors, its watermark read with the key ring, its hashes compared with the record."""
    data, _media = image_bytes(c, image_id)
    return verify_upload(c, f"{image_id}.png", data)


def verify_upload(c: Caller, name: str | None, data: bytes) -> Any:
    from governance.errors import AtelierError
    from governance.verify import VerifyLimits, verify_file

    s = c.rt.settings
    _chain, _key, anchors = s.c2pa_paths()
    anchors_pem = anchors.read_bytes() if anchors.exists() else None
    limits = VerifyLimits(s.verify_max_pixels, min(s.verify_max_file_bytes, s.server_upload_max_bytes))
    try:
        keys = c.rt.watermark_keys
    except AtelierError:
        keys = []
    with Upload(name, data, limits.max_file_bytes, "file to verify") as path, c.rt.sessions() as session:
        from dataclasses import replace

        from governance.preference import check_verify_result

        result = check_verify_result(session, c.user, verify_file(session, path, anchors_pem, keys, limits))
        result = replace(result, file=path.name)  # the name as uploaded (made safe), not the server's path
        if result.trace is not None:
            # Whether Atelier made the file is anyone's to know; its record (prompt, people, reasons) only
            # for those who may see the image's batch, as on the image's own page.
            try:
                _batch(session, c, result.trace.batch.id)
            except (NotFound, PermissionDenied):
                result = replace(result, trace=None)
        return result


# ---------------------------------------------------------------- runs, workers, ledger


def start_run(c: Caller, launcher: Any, batch_id: str) -> Any:
    return launcher.start(c.rt, c.user, batch_id)


def runs(c: Caller, limit: int = 100) -> list[Any]:
    from governance.records import Run
    from governance.runs import RunSummary

    with c.rt.sessions() as session:
        return [RunSummary.of(r) for r in session.scalars(select(Run).order_by(Run.started_at.desc()).limit(limit))]


@dataclass(frozen=True)
class WorkerLease(Result):
    worker: str
    batch_id: str
    chunk: int
    images: int
    lease_until: datetime | None
    attempts: int


def workers(c: Caller) -> list[WorkerLease]:
    """Who holds work now: every claimed chunk with its worker and lease."""
    with c.rt.sessions() as session:
        stmt = select(WorkChunk).where(WorkChunk.status == "claimed").order_by(WorkChunk.lease_until)
        return [
            WorkerLease(w.claimed_by or "", w.batch_id, w.position, len(w.image_ids), w.lease_until, w.attempts)
            for w in session.scalars(stmt)
        ]


def ledger_status(c: Caller) -> dict[str, Any]:
    from governance.ledger import verify_ledger

    with c.rt.sessions() as session:
        report = verify_ledger(session, c.rt.store, c.rt.anchor_store, c.rt.signing_certificate())
    return report.to_dict()


@dataclass(frozen=True)
class AnchorInfo(Result):
    seq: int
    head_hash: str
    key: str
    at: str
    retain_until: str | None


def anchors(c: Caller, limit: int = 50) -> list[AnchorInfo]:
    from governance.records import AuditAnchor

    with c.rt.sessions() as session:
        rows = session.scalars(select(AuditAnchor).order_by(AuditAnchor.seq.desc()).limit(limit))
        return [AnchorInfo(a.seq, a.head_hash, a.key, a.at, a.retain_until) for a in rows]


# ---------------------------------------------------------------- compliance


def search(c: Caller, filters: Any, limit: int) -> Any:
    from governance.compliance import require_compliance_access, search_images

    with c.rt.sessions() as session:
        require_compliance_access(session, c.user, "search the records")
        return search_images(session, filters, limit)


def impact_of(c: Caller, model_version: str | None, licence: str | None) -> dict[str, Any]:
    from governance.compliance import impact, require_compliance_access

    if (model_version is None) == (licence is None):
        raise InvalidInput("give exactly one of model_version and licence")
    with c.rt.sessions() as session:
        require_compliance_access(session, c.user, "query impact")
        return impact(session, model_version=model_version, licence=licence).to_dict()


def export(c: Caller, fmt: str, filters: Any, out: Path) -> int:
    from governance.compliance import export_lineage, require_compliance_access

    with c.rt.sessions() as session:
        require_compliance_access(session, c.user, "export the records")
        return export_lineage(session, out, fmt, filters, None)


def report(c: Caller, since: str, until: str, out: Path) -> Any:
    from governance.compliance import parse_when, period_report, require_compliance_access

    start, end = parse_when(since, field="from"), parse_when(until, end=True, field="to")
    with c.rt.sessions() as session:
        user = require_compliance_access(session, c.user, "write compliance reports")
        return period_report(
            session, c.rt.store, start, end, out, generated_by=user.name, gpu_hour_price=c.rt.settings.gpu_hour_price
        )


# ---------------------------------------------------------------- users and tokens (admins)


def _policy(c: Caller) -> Any:
    from governance.users import RolePolicy

    return RolePolicy(forbid_requester_approver=c.rt.settings.forbid_requester_approver)


def users(c: Caller) -> list[Any]:
    from governance.users import list_users, require_role

    with c.rt.sessions() as session:
        require_role(session, c.user, "admin", "list users")
        return list_users(session)


def add_user(c: Caller, name: str, roles: list[str]) -> list[str]:
    from governance.users import add_user as add

    with c.rt.sessions.begin() as session:
        out = sorted(add(session, c.user, name, roles, _policy(c)).role_names)
    _anchor(c)
    return out


def change_roles(c: Caller, name: str, grant: list[str], revoke: list[str]) -> list[str]:
    from governance.users import find_user, grant_roles, revoke_roles

    with c.rt.sessions.begin() as session:
        if grant:
            grant_roles(session, c.user, name, grant, _policy(c))
        if revoke:
            revoke_roles(session, c.user, name, revoke)
        out = sorted(find_user(session, name).role_names)
    _anchor(c)
    return out


def set_disabled(c: Caller, name: str, disabled: bool) -> None:
    from governance.users import set_disabled as setter

    with c.rt.sessions.begin() as session:
        setter(session, c.user, name, disabled)
    _anchor(c)


def set_password(c: Caller, name: str, password: str) -> None:
    from governance.users import set_password as setter

    with c.rt.sessions.begin() as session:
        setter(session, c.user, name, password)
    _anchor(c)


def tokens(c: Caller, user: str | None) -> list[Any]:
    from governance.users import list_tokens

    with c.rt.sessions() as session:
        return list_tokens(session, c.user, user)


def issue_token(c: Caller, user: str, name: str, days: int) -> Any:
    from governance.users import issue_token as issue

    with c.rt.sessions.begin() as session:
        issued = issue(session, c.user, user, name, days)
    _anchor(c)
    return issued


def revoke_token(c: Caller, token_id: str) -> None:
    from governance.users import revoke_token as revoke

    with c.rt.sessions.begin() as session:
        revoke(session, c.user, token_id)
    _anchor(c)


# ---------------------------------------------------------------- configurations: compare and prefer


def compare(c: Caller, batch_id: str) -> Any:
    """A batch's configurations side by side with cost and preferences (governance.compare): its
    requester, approvers, operators, auditors and admins; never a reviewer as such (they judge blind)."""
    from governance.compare import compare_batch, require_compare_access

    with c.rt.sessions() as session:
        batch = _batch(session, c, batch_id)
        require_compare_access(session, c.user, batch)
        return compare_batch(session, batch, c.rt.settings.gpu_hour_price)


def batches_to_judge(c: Caller) -> list[Any]:
    from governance.batches import batch_summary
    from governance.preference import batches_to_judge as to_judge

    with c.rt.sessions() as session:
        return [batch_summary(session, b) for b in to_judge(session, c.user)]


def prefer_next(c: Caller, batch_id: str, base_url: str, draw: bool = True) -> Any:
    """The caller's next blind pair of a batch (governance.preference); `draw=False`: only one waiting."""
    from governance.preference import next_pair

    with c.rt.sessions.begin() as session:
        return next_pair(session, c.user, batch_id, base_url, draw=draw)


def prefer_image(c: Caller, pair_id: str, side: str) -> bytes:
    """One side of the caller's pair: a PNG made from the pixels alone (no metadata)."""
    from governance.preference import pair_png

    with c.rt.sessions() as session:
        return pair_png(session, c.user, pair_id, side, c.rt.store)


def prefer_pick(c: Caller, pair_id: str, choice: str) -> Any:
    from governance.preference import record_pick

    with c.rt.sessions.begin() as session:
        pick = record_pick(session, c.user, pair_id, choice)
    _anchor(c)
    return pick


def preference_results(c: Caller, batch_id: str | None) -> list[Any]:
    """Win rates with 95% Wilson intervals (auditors and admins), of every judgement or one batch's."""
    from governance.compliance import require_compliance_access
    from governance.preference import win_rates

    with c.rt.sessions() as session:
        require_compliance_access(session, c.user, "read preference results")
        return win_rates(session, batch_id=_batch(session, c, batch_id).id if batch_id else None)
