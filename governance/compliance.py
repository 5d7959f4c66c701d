"""Compliance queries: search, impact, export and a period report, over the records.

Who asked for what, who approved it, which model weights and licences made it, under which
declared use, where it went. Every query is set-based SQL (joins and IN-subqueries, a fixed
number of statements whatever the number of images), so it answers in seconds at a million
images (`bench/compliance.py`):

- `search_images`: any combination of `SearchFilters`; prompt text is a case-insensitive substring
  (PostgreSQL: ILIKE, served by the pg_trgm index on prompts; SQLite: LIKE);
- `impact`: every published image that depends on a model version or a licence (recall, takedown);
- `export_lineage`: one row per image with its full lineage, to Parquet or CSV, streamed;
- `period_report`: a self-contained HTML page for a period, thumbnails inlined as data: URIs.

Exports are for people who open them in spreadsheets: a text cell that a spreadsheet would run
as a formula (it starts with = + - @, a tab or a carriage return) gets a leading apostrophe, in
both formats. The database and `atelier trace` keep the exact text.

`--json` output of search is one `atelier trace` object per image (`governance.trace.trace_images`).
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, date, datetime, timedelta
from operator import itemgetter
from pathlib import Path
from typing import Any, TypeVarTuple

from sqlalchemy import ColumnElement, Select, Text, cast, func, or_, select, text, true
from sqlalchemy.orm import Session, aliased

from governance.errors import InvalidInput, NotFound, PermissionDenied
from governance.records import (
    Approval,
    AuditEvent,
    Batch,
    Image,
    ImageStatus,
    Licence,
    ModelVersion,
    Prompt,
    Role,
    Run,
    RunModelVersion,
    SafetyVerdict,
    User,
    UserRole,
)
from governance.store import ObjectStore
from governance.text import UNSAFE_RE2, escape_unsafe
from governance.users import get_user

VERDICTS = (SafetyVerdict.PASSED, SafetyVerdict.QUARANTINED)  # from records: governance.safety loads torch
STATUSES = tuple(ImageStatus)
EXPORT_FORMATS = ("parquet", "csv")
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
ACCESS_ROLES = (Role.AUDITOR, Role.ADMIN)

_SHA_PREFIX = re.compile(r"^[0-9a-f]{8,64}$")
_Requester = aliased(User, name="requester")
_Approver = aliased(User, name="approver")


def require_compliance_access(session: Session, actor: str | None, doing: str) -> User:
    """Compliance queries disclose every prompt and person: auditors and admins only."""
    user = get_user(session, actor)
    if not user.role_names & set(ACCESS_ROLES):
        raise PermissionDenied(
            f"{user.name} cannot {doing}: that needs the auditor or admin role "
            f"({user.name} has: {', '.join(sorted(user.role_names)) or 'none'})"
        )
    return user


# ---------------------------------------------------------------- filters


def parse_when(value: str, *, end: bool = False, field: str = "since") -> datetime:
    """A date (YYYY-MM-DD) or an ISO 8601 time; naive means UTC. A date as an end bound covers that whole day."""
    text = value.strip()
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            day = date.fromisoformat(text)
            start = datetime(day.year, day.month, day.day, tzinfo=UTC)
            return start + timedelta(days=1) if end else start
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInput(
            f"{field} {value!r} is not a date: use YYYY-MM-DD or an ISO time such as 2026-01-31T18:00:00Z"
        ) from None
    return when.astimezone(UTC) if when.tzinfo else when.replace(tzinfo=UTC)


@dataclass(frozen=True)
class SearchFilters:
    """What to look for; every given field must match (AND). Times: since <= created_at < until."""

    prompt: str | None = None
    requester: str | None = None
    approver: str | None = None
    purpose: str | None = None
    use_category: str | None = None
    model_version: str | None = None  # model version id, weight SHA-256 (or >= 8-hex prefix), or ROLE/SHA256
    licence: str | None = None
    verdict: str | None = None
    status: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    ref: str | None = None

    def given(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) not in (None, "")}


def resolve_model_versions(session: Session, ref: str) -> list[ModelVersion]:
    """Model versions named by id, full or prefix (>= 8 hex) weight SHA-256, or ROLE/SHA256."""
    ref = ref.strip()
    stmt = select(ModelVersion)
    if "/" in ref:
        role, _, sha = ref.partition("/")
        stmt = stmt.where(ModelVersion.role == role, ModelVersion.sha256 == sha.lower())
    elif _SHA_PREFIX.match(ref.lower()):
        stmt = stmt.where(or_(ModelVersion.id == ref, ModelVersion.sha256.startswith(ref.lower(), autoescape=True)))
    else:
        stmt = stmt.where(ModelVersion.id == ref)
    found = list(session.scalars(stmt.order_by(ModelVersion.role, ModelVersion.sha256)))
    if not found:
        raise NotFound(
            f"no model version matches {ref!r}: give its id, its weight SHA-256 (or the first 8+ hex digits) "
            "or ROLE/SHA256, as `atelier trace` shows them"
        )
    return found


def _require_licence(session: Session, licence_id: str) -> Licence:
    licence = session.get(Licence, licence_id)
    if licence is None:
        known = ", ".join(session.scalars(select(Licence.id).order_by(Licence.id))) or "none"
        raise NotFound(f"no licence {licence_id!r} in the registry (registered: {known})")
    return licence


def _user_id(session: Session, name: str, flag: str) -> int:
    uid = session.scalar(select(User.id).where(User.name == name))
    if uid is None:
        raise NotFound(f"{flag} {name!r}: no such user (`atelier users list` shows them)")
    return uid


def _like_pattern(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _conditions(session: Session, f: SearchFilters) -> list[ColumnElement[bool]]:
    """WHERE conditions over images joined to prompts and batches; validates every filter first."""
    if f.verdict is not None and f.verdict not in VERDICTS:
        raise InvalidInput(f"unknown verdict {f.verdict!r}: choose one of {', '.join(VERDICTS)}")
    if f.status is not None and f.status not in STATUSES:
        raise InvalidInput(f"unknown status {f.status!r}: choose one of {', '.join(STATUSES)}")
    if f.since and f.until and f.since >= f.until:
        raise InvalidInput(f"since {f.since.isoformat()} is not before until {f.until.isoformat()}")
    if f.prompt is not None and not f.prompt.strip():
        raise InvalidInput("prompt needs some text to look for")
    where: list[ColumnElement[bool]] = []
    if f.prompt:
        pattern = _like_pattern(f.prompt.strip())
        if session.get_bind().dialect.name == "postgresql":
            where.append(Prompt.prompt.ilike(pattern, escape="\\"))  # pg_trgm GIN index
        else:
            where.append(Prompt.prompt.like(pattern, escape="\\"))  # SQLite: case-insensitive for ASCII
    if f.ref:
        where.append(Prompt.ref == f.ref)
    if f.requester:
        where.append(Batch.requested_by_id == _user_id(session, f.requester, "--requester"))
    if f.approver:
        uid = _user_id(session, f.approver, "--approver")
        where.append(
            Image.run_id.in_(
                select(Run.id).join(Approval, Approval.id == Run.approval_id).where(Approval.decided_by_id == uid)
            )
        )
    if f.purpose:
        where.append(Batch.purpose == f.purpose)
    if f.use_category:
        where.append(Batch.use_category == f.use_category)
    if f.model_version:
        ids = [mv.id for mv in resolve_model_versions(session, f.model_version)]
        where.append(Image.run_id.in_(select(RunModelVersion.run_id).where(RunModelVersion.model_version_id.in_(ids))))
    if f.licence:
        _require_licence(session, f.licence)
        where.append(
            Image.run_id.in_(
                select(RunModelVersion.run_id)
                .join(ModelVersion, ModelVersion.id == RunModelVersion.model_version_id)
                .where(ModelVersion.licence_id == f.licence)
            )
        )
    if f.verdict:
        where.append(Image.safety_verdict == f.verdict)
    if f.status:
        where.append(Image.status == f.status)
    if f.since:
        where.append(Image.created_at >= f.since)
    if f.until:
        where.append(Image.created_at < f.until)
    return where


_Columns = TypeVarTuple("_Columns")


def _joined(stmt: Select[*_Columns]) -> Select[*_Columns]:
    return stmt.join(Prompt, Prompt.id == Image.prompt_id).join(Batch, Batch.id == Image.batch_id)


# ---------------------------------------------------------------- search


@dataclass(frozen=True)
class SearchResult:
    images: list[dict[str, Any]]
    truncated: bool  # more images matched than the limit


def search_images(session: Session, filters: SearchFilters, limit: int | None = 1000) -> SearchResult:
    """Images matching every filter, newest first: one summary row each (`trace_images` for the full record).

    One statement in two steps: the matching image ids, ordered and limited, joining only what the
    filters need; then the summary columns for those ids alone.
    """
    if limit is not None and limit < 1:
        raise InvalidInput(f"limit must be at least 1 (or none), not {limit}")
    where = _conditions(session, filters)
    hits = select(Image.id, Image.created_at)
    if filters.prompt or filters.ref:
        hits = hits.join(Prompt, Prompt.id == Image.prompt_id)
    if filters.requester or filters.purpose or filters.use_category:
        hits = hits.join(Batch, Batch.id == Image.batch_id)
    hits = hits.where(*where).order_by(Image.created_at.desc(), Image.id.desc())
    if limit is not None:
        hits = hits.limit(limit + 1)
    found = hits.subquery("hits")
    stmt = (
        _joined(
            select(
                Image.id.label("image_id"),
                Image.status,
                Image.created_at,
                Image.sha256,
                Image.store_url,
                Image.store_key,
                Image.safety_verdict,
                Image.batch_id,
                Image.run_id,
                Prompt.row_id,
                Prompt.ref,
                Batch.purpose,
                Batch.use_category,
                _Requester.name.label("requested_by"),
            ).join(found, found.c.id == Image.id)
        )
        .join(_Requester, _Requester.id == Batch.requested_by_id)
        .order_by(found.c.created_at.desc(), found.c.id.desc())
    )
    rows = [dict(r._mapping) for r in session.connection().execute(stmt)]
    truncated = limit is not None and len(rows) > limit
    rows = rows[:limit] if limit is not None else rows
    for r in rows:
        r["created_at"] = _iso(r["created_at"])
    return SearchResult(rows, truncated)


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.isoformat()  # aware: records.UTCDateTime


# ---------------------------------------------------------------- impact


def _plain_rows(session: Session, stmt: Select[Any]) -> list[tuple[Any, ...]]:
    """psycopg's own tuples for a large result: a quarter-million rows without a Row object each."""
    conn = session.connection()
    compiled = stmt.compile(dialect=conn.dialect, compile_kwargs={"render_postcompile": True})
    cursor = conn.connection.cursor()
    try:
        cursor.execute(str(compiled), compiled.params)
        return list(cursor.fetchall())
    finally:
        cursor.close()


IMPACT_COLUMNS = (
    "image_id",
    "sha256",
    "store_url",
    "store_key",
    "provenance_key",
    "version_id",
    "batch_id",
    "run_id",
    "created_at",
)


@dataclass(frozen=True)
class Impact:
    """The published images that depend on some model versions; `images` rows follow IMPACT_COLUMNS."""

    query: dict[str, str]
    model_versions: list[dict[str, str]]
    images: Sequence[Sequence[Any]]  # oldest first

    def to_dict(self) -> dict[str, Any]:
        return {
            "query": self.query,
            "model_versions": self.model_versions,
            "published_images": len(self.images),
            "images": [
                {**dict(zip(IMPACT_COLUMNS, row, strict=True)), "created_at": _iso(row[-1])} for row in self.images
            ],
        }


def impact(session: Session, model_version: str | None = None, licence: str | None = None) -> Impact:
    """Every published image that depends on a model version (or several, by SHA-256) or on a licence.

    One statement; rows are kept as the driver returns them (a recall can reach every image).
    """
    if (model_version is None) == (licence is None):
        raise InvalidInput("give exactly one of model_version or licence")
    if model_version is not None:
        versions = resolve_model_versions(session, model_version)
    else:
        assert licence is not None
        _require_licence(session, licence)
        versions = list(
            session.scalars(
                select(ModelVersion)
                .where(ModelVersion.licence_id == licence)
                .order_by(ModelVersion.role, ModelVersion.sha256)
            )
        )
    using = select(RunModelVersion.run_id).where(RunModelVersion.model_version_id.in_([mv.id for mv in versions]))
    runs = select(Run.id.label("run_id")).where(Run.id.in_(using))  # each run once, however many versions match
    columns = (
        Image.id,
        Image.sha256,
        Image.store_url,
        Image.store_key,
        Image.provenance_key,
        Image.store_version_id,
        Image.batch_id,
        Image.run_id,
        Image.created_at,
    )
    if session.get_bind().dialect.name == "postgresql":
        # Run by run: a run's images were written together, so each run's rows sit in a few pages.
        # PostgreSQL's cost model sees random run ids, no physical order, and (with the default
        # random_page_cost) reads the whole table instead; OFFSET 0 keeps the per-run index lookups.
        affected = runs.subquery("affected")
        per_run = (
            select(*columns)
            .where(Image.run_id == affected.c.run_id, Image.status == "published")
            .offset(0)
            .lateral("per_run")
        )
        stmt = select(*per_run.c).select_from(affected).join(per_run, true())
        # The fence makes the estimate large enough for JIT compilation, which costs more (~0.3 s)
        # than it saves on these index lookups: off for this statement, then as it was.
        jit = session.execute(text("SELECT current_setting('jit')")).scalar_one()
        session.execute(text("SELECT set_config('jit', 'off', true)"))
        try:
            images = _plain_rows(session, stmt)
        finally:
            session.execute(text("SELECT set_config('jit', :jit, true)"), {"jit": jit})
    else:
        stmt = select(*columns).where(Image.status == "published", Image.run_id.in_(runs))
        images = list(session.connection().execute(stmt).tuples())
    images.sort(key=itemgetter(8, 0))  # oldest first (created_at, id)
    return Impact(
        query={"model_version": model_version} if model_version is not None else {"licence": licence or ""},
        model_versions=[
            {"id": mv.id, "role": mv.role, "name": mv.name, "sha256": mv.sha256, "licence": mv.licence_id}
            for mv in versions
        ],
        images=images,
    )


# ---------------------------------------------------------------- export


def neutralise(value: str) -> str:
    """A cell a spreadsheet would evaluate as a formula becomes text, by a leading apostrophe."""
    return "'" + value if value.startswith(FORMULA_PREFIXES) else value


def _export_selection() -> list[tuple[str, Any]]:
    """(column name, SQL expression) of an export row, in order; the model columns are filled per run."""
    return [
        ("image_id", Image.id),
        ("status", Image.status),
        ("created_at", Image.created_at),
        ("sha256", Image.sha256),
        ("pixels_sha256", Image.pixels_sha256),
        ("store_url", Image.store_url),
        ("store_key", Image.store_key),
        ("store_version_id", Image.store_version_id),
        ("provenance_key", Image.provenance_key),
        ("c2pa_manifest", Image.c2pa_manifest),
        ("phash", Image.phash),
        ("watermark_payload", Image.watermark_payload),
        ("watermark_matched_bits", Image.watermark_matched_bits),
        ("safety_verdict", Image.safety_verdict),
        ("safety_reasons", cast(Image.safety_reasons, Text)),
        ("safety_policy", Image.safety_policy),
        ("safety_model", Image.safety_model),
        ("prompt_id", Prompt.id),
        ("row_id", Prompt.row_id),
        ("ref", Prompt.ref),
        ("prompt", Prompt.prompt),
        ("negative_prompt", Prompt.negative_prompt),
        ("prompt_seed", Prompt.seed),
        ("image_index", Image.image_index),
        ("seed", Image.seed),
        ("width", Image.width),
        ("height", Image.height),
        ("batch_id", Batch.id),
        ("purpose", Batch.purpose),
        ("use_category", Batch.use_category),
        ("requested_by", _Requester.name),
        ("batch_content_sha256", Batch.content_sha256),
        ("batch_created_at", Batch.created_at),
        ("approval_id", Approval.id),
        ("approved_by", _Approver.name),
        ("approved_at", Approval.decided_at),
        ("approval_content_sha256", Approval.content_sha256),
        ("run_id", Run.id),
        ("run_started_at", Run.started_at),
        ("review", cast(Image.review, Text)),  # output review: decision, by, at, reason
        ("withdrawal", cast(Image.withdrawal, Text)),  # withdrawn: by, at, reason, evidence copy
        ("prompt_policy", cast(Batch.screening, Text)),  # the policy the batch was screened under, its flags
        ("flags_acknowledged", cast(Approval.acknowledged_flags, Text)),  # by the approver (approved_by)
        ("licence_obligations", cast(Image.licence_obligations, Text)),
    ]


_MODEL_COLUMNS = ("model_version_ids", "models", "licences")
EXPORT_COLUMNS: tuple[str, ...] = (
    *(name for name, _ in _export_selection() if name != "licence_obligations"),
    *_MODEL_COLUMNS,
    "licence_obligations",
)
_INT_COLUMNS = {"watermark_matched_bits", "prompt_seed", "image_index", "width", "height"}


def _run_models(session: Session, run_ids: Iterable[str]) -> dict[str, tuple[str, str, str]]:
    """run id -> (model version ids, models JSON, licence ids), in one query."""
    per_run: dict[str, list[ModelVersion]] = {}
    ids = sorted(set(run_ids))
    for i in range(0, len(ids), 5000):
        stmt = (
            select(RunModelVersion.run_id, ModelVersion)
            .join(ModelVersion, ModelVersion.id == RunModelVersion.model_version_id)
            .where(RunModelVersion.run_id.in_(ids[i : i + 5000]))
        )
        for run_id, mv in session.execute(stmt):
            per_run.setdefault(run_id, []).append(mv)
    out = {}
    for run_id, mvs in per_run.items():
        mvs.sort(key=lambda m: m.role)
        out[run_id] = (
            ";".join(m.id for m in mvs),
            json.dumps(
                [{"role": m.role, "sha256": m.sha256, "licence": m.licence_id} for m in mvs], separators=(",", ":")
            ),
            ";".join(sorted({m.licence_id for m in mvs})),
        )
    return out


def _lineage_rows(
    session: Session, filters: SearchFilters, limit: int | None, chunk: int
) -> Iterator[list[tuple[Any, ...]]]:
    """Rows of EXPORT_COLUMNS, `chunk` at a time, from one streamed query (plus one per chunk for new runs)."""
    where = _conditions(session, filters)
    selection = _export_selection()
    names = [name for name, _ in selection]
    run_at, obligations_at = names.index("run_id"), names.index("licence_obligations")
    stmt = (
        _joined(select(*(expr for _, expr in selection)))
        .join(_Requester, _Requester.id == Batch.requested_by_id)
        .join(Run, Run.id == Image.run_id)
        .join(Approval, Approval.id == Run.approval_id)
        .join(_Approver, _Approver.id == Approval.decided_by_id)
        .where(*where)
        .order_by(Image.created_at, Image.id)
        .execution_options(yield_per=chunk)
    )
    if limit is not None:
        stmt = stmt.limit(limit)
    models: dict[str, tuple[str, str, str]] = {}
    none = ("", "", "")
    for part in session.connection().execute(stmt).partitions(chunk):  # Core rows, streamed
        new_runs = {r[run_at] for r in part} - models.keys()
        if new_runs:  # the model versions of runs not seen yet: one query per chunk at most
            models.update(_run_models(session, new_runs))
        yield [
            (*r[:obligations_at], *models.get(r[run_at], none), *r[obligations_at + 1 :], r[obligations_at])
            for r in part
        ]


def _arrow_batch(part: list[tuple[Any, ...]], visible: bool = False) -> Any:
    """One chunk of rows as an Arrow table (typed columns), formula-like text cells neutralised, vectorised.

    `visible` (CSV, read by people in spreadsheets): control, bidi-override and zero-width characters
    become U+FFFD, so a cell cannot hide or reorder its text; Parquet keeps the exact values."""
    import pyarrow as pa
    import pyarrow.compute as pc

    global _FORMULA_FIRST
    if _FORMULA_FIRST is None:
        _FORMULA_FIRST = pa.array(FORMULA_PREFIXES)
    columns = list(zip(*part, strict=True)) if part else [() for _ in EXPORT_COLUMNS]
    arrays = []
    for name, values in zip(EXPORT_COLUMNS, columns, strict=True):
        kind = _EXPORT_SCHEMA.field(name).type
        array = pa.array(values, type=kind)
        if pa.types.is_string(kind) and len(array):
            formula = pc.is_in(pc.utf8_slice_codeunits(array, 0, 1), value_set=_FORMULA_FIRST)
            if pc.any(formula).as_py():
                array = pc.if_else(formula, pc.binary_join_element_wise("'", array, ""), array)
            if visible:
                array = pc.replace_substring_regex(array, pattern=UNSAFE_RE2, replacement="\ufffd")
        arrays.append(array)
    return pa.Table.from_arrays(arrays, schema=_EXPORT_SCHEMA)


def _export_schema() -> Any:
    import pyarrow as pa

    def kind(name: str) -> Any:
        if name in _INT_COLUMNS:
            return pa.int64()
        if name in _TIME_COLUMNS:
            return pa.timestamp("us", tz="UTC")
        return pa.string()

    return pa.schema(
        [(c, kind(c)) for c in EXPORT_COLUMNS],
        metadata={b"atelier.export": b"image lineage; formula-like text cells prefixed with an apostrophe"},
    )


_TIME_COLUMNS = {"created_at", "batch_created_at", "approved_at", "run_started_at"}
_FORMULA_FIRST: Any = None  # pyarrow array of FORMULA_PREFIXES, made on first use
_EXPORT_SCHEMA = _export_schema()


def export_lineage(
    session: Session,
    out: Path,
    fmt: str,
    filters: SearchFilters | None = None,
    limit: int | None = None,
    chunk: int = 20_000,
) -> int:
    """Write one row per image with its full lineage (EXPORT_COLUMNS); returns the number of rows.

    Parquet keeps types (times as UTC timestamps, counts as integers); CSV writes times as ISO 8601.
    """
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    if fmt not in EXPORT_FORMATS:
        raise InvalidInput(f"unknown export format {fmt!r}: choose one of {', '.join(EXPORT_FORMATS)}")
    if limit is not None and limit < 1:
        raise InvalidInput(f"limit must be at least 1 (or none), not {limit}")
    if not out.parent.is_dir():
        raise InvalidInput(f"cannot write {out}: folder {out.parent} does not exist")
    rows = _lineage_rows(session, filters or SearchFilters(), limit, chunk)
    tmp = out.with_name(f".{out.name}.partial")
    count = 0
    writer: Any
    try:
        if fmt == "csv":
            writer = pacsv.CSVWriter(str(tmp), _EXPORT_SCHEMA, write_options=pacsv.WriteOptions(quoting_style="needed"))
        else:
            writer = pq.ParquetWriter(str(tmp), _EXPORT_SCHEMA, compression="zstd")
        with writer:
            wrote = False
            for part in rows:
                if part or not wrote:
                    writer.write_table(_arrow_batch(part, visible=fmt == "csv"))
                    wrote = True
                count += len(part)
            if not wrote:
                writer.write_table(_arrow_batch([], visible=fmt == "csv"))
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return count


# ---------------------------------------------------------------- report


@dataclass(frozen=True)
class ReportSummary:
    path: Path
    images: int
    published: int
    quarantined: int
    approvals: int
    thumbnails: int


def _thumbnail(data: bytes, size: int) -> str:
    from PIL import Image as PILImage

    with PILImage.open(io.BytesIO(data)) as img:
        rgb = img.convert("RGB")
        rgb.thumbnail((size, size))
        buf = io.BytesIO()
        rgb.save(buf, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def _decision(review: dict[str, Any] | None, withdrawal: dict[str, Any] | None) -> tuple[str, str, str, str]:
    """(decision, by, at, reason) of the latest of an image's review and withdrawal."""
    if withdrawal:
        return ("withdrawn", withdrawal.get("by", ""), withdrawal.get("at", ""), withdrawal.get("reason", ""))
    r = review or {}
    return (r.get("decision", ""), r.get("by", ""), r.get("at", ""), r.get("reason", ""))


def period_report(
    session: Session,
    store: ObjectStore,
    since: datetime,
    until: datetime,
    out: Path,
    *,
    max_thumbnails: int = 60,
    thumbnail_px: int = 160,
    generated_by: str = "",
    gpu_hour_price: float | None = None,
) -> ReportSummary:
    """A self-contained HTML report of [since, until): counts, approvals, quarantines, licences, cost and
    preference per pipeline configuration, thumbnails."""
    from governance.compare import costs
    from governance.preference import win_rates

    if since >= until:
        raise InvalidInput(f"from {since.isoformat()} is not before to {until.isoformat()}")
    if not out.parent.is_dir():
        raise InvalidInput(f"cannot write {out}: folder {out.parent} does not exist")
    in_period = (Image.created_at >= since, Image.created_at < until)

    status = Counter(
        dict(session.execute(select(Image.status, func.count()).where(*in_period).group_by(Image.status)).all())
    )
    by_use = session.execute(
        select(Batch.use_category, Batch.purpose, Image.status, func.count())
        .join(Batch, Batch.id == Image.batch_id)
        .where(*in_period)
        .group_by(Batch.use_category, Batch.purpose, Image.status)
        .order_by(Batch.use_category, Batch.purpose, Image.status)
    ).all()
    approvals = session.execute(
        select(
            Approval.decided_at,
            Approval.decision,
            Approval.batch_id,
            _Approver.name,
            _Requester.name,
            Batch.purpose,
            Batch.use_category,
            Approval.content_sha256,
            Approval.voided_at,
            Approval.reason,
        )
        .join(Batch, Batch.id == Approval.batch_id)
        .join(_Approver, _Approver.id == Approval.decided_by_id)
        .join(_Requester, _Requester.id == Batch.requested_by_id)
        .where(Approval.decided_at >= since, Approval.decided_at < until)
        .order_by(Approval.decided_at)
    ).all()
    quarantines = session.execute(
        select(Image.id, Image.created_at, Image.batch_id, Prompt.ref, Prompt.row_id, cast(Image.safety_reasons, Text))
        .join(Prompt, Prompt.id == Image.prompt_id)
        .where(*in_period, Image.status == "quarantined")
        .order_by(Image.created_at, Image.id)
    ).all()
    decided = session.execute(  # output review and withdrawal of the period's images
        select(Image.id, Image.status, Image.batch_id, Prompt.row_id, Image.review, Image.withdrawal)
        .join(Prompt, Prompt.id == Image.prompt_id)
        .where(*in_period, or_(Image.review.is_not(None), Image.withdrawal.is_not(None)))
        .order_by(Image.created_at, Image.id)
    ).all()
    acknowledged = session.execute(
        select(Approval.decided_at, Approval.batch_id, _Approver.name, Approval.acknowledged_flags)
        .join(_Approver, _Approver.id == Approval.decided_by_id)
        .where(Approval.decided_at >= since, Approval.decided_at < until, Approval.acknowledged_flags.is_not(None))
        .order_by(Approval.decided_at)
    ).all()
    licences = session.execute(
        select(
            Licence.id, Licence.name, Licence.text_sha256, ModelVersion.role, ModelVersion.sha256, func.count(Image.id)
        )
        .select_from(Image)
        .join(RunModelVersion, RunModelVersion.run_id == Image.run_id)
        .join(ModelVersion, ModelVersion.id == RunModelVersion.model_version_id)
        .join(Licence, Licence.id == ModelVersion.licence_id)
        .where(*in_period, Image.status == "published")
        .group_by(Licence.id, Licence.name, Licence.text_sha256, ModelVersion.role, ModelVersion.sha256)
        .order_by(Licence.id, ModelVersion.role, ModelVersion.sha256)
    ).all()
    runs = Counter(
        dict(
            session.execute(
                select(Run.status, func.count())
                .where(Run.started_at >= since, Run.started_at < until)
                .group_by(Run.status)
            ).all()
        )
    )
    # Who was given the power to approve or to administer (separation of duties is read here): every
    # grant of approver or admin in the period, from the audit events, and who holds them now.
    grants = []
    at_from, at_to = since.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), until.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    for at, actor, action, subject, payload in session.execute(
        select(AuditEvent.at, AuditEvent.actor, AuditEvent.action, AuditEvent.subject_id, AuditEvent.payload)
        .where(AuditEvent.action.in_(("user.created", "user.roles_granted")), AuditEvent.at >= at_from)
        .where(AuditEvent.at < at_to)
        .order_by(AuditEvent.seq)
    ):
        powerful = sorted({"approver", "admin"} & set((payload or {}).get("roles", [])))
        if powerful:
            grants.append((at, subject, ", ".join(powerful), actor, action))
    holders = session.execute(
        select(User.name, func.min(UserRole.role), func.max(UserRole.role), User.disabled_at)
        .join(UserRole, UserRole.user_id == User.id)
        .where(UserRole.role.in_(("approver", "admin")))
        .group_by(User.name, User.disabled_at)
        .order_by(User.name)
    ).all()
    config_costs = costs(session, gpu_hour_price, since=since, until=until)
    preferences = win_rates(session, since=since, until=until)
    shown = session.execute(
        select(Image.id, Image.store_key, Prompt.ref, Prompt.row_id)
        .join(Prompt, Prompt.id == Image.prompt_id)
        .where(*in_period, Image.status == "published", Image.store_key.is_not(None))
        .order_by(Image.created_at, Image.id)
        .limit(max_thumbnails)
    ).all()
    # the query keeps only images with a store key; `is not None` says so to the type checker too
    thumbs = [
        (i, ref or row, _thumbnail(store.get(key), thumbnail_px)) for i, key, ref, row in shown if key is not None
    ]

    def e(text: str) -> str:  # escaped for HTML, with invisible characters written out (governance.text)
        return html.escape(escape_unsafe(text))

    total = sum(status.values())

    def table(head: Sequence[str], body: Iterable[Sequence[Any]]) -> str:
        rows = "".join(
            "<tr>" + "".join(f"<td>{e('' if c is None else str(c))}</td>" for c in r) + "</tr>" for r in body
        )
        return (
            "<table><thead><tr>"
            + "".join(f"<th>{e(h)}</th>" for h in head)
            + "</tr></thead><tbody>"
            + (rows or f'<tr><td colspan="{len(head)}">none</td></tr>')
            + "</tbody></table>"
        )

    def reasons(text: str | None) -> str:
        try:
            return "; ".join(map(str, json.loads(text or "[]")))
        except ValueError:
            return text or ""

    period = f"{since.isoformat()} to {until.isoformat()}"
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f"<title>Atelier compliance report {e(period)}</title>",
        "<style>body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222}"
        "table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.25em .5em;"
        "text-align:left;vertical-align:top}th{background:#f3f3f3}.num{font-size:1.6em;font-weight:600}"
        ".cards{display:flex;gap:1.5em}.card{border:1px solid #ddd;padding:.6em 1em;border-radius:6px}"
        "figure{display:inline-block;margin:.3em;text-align:center;font-size:11px}"
        "figure img{display:block;border:1px solid #ccc}code{font-size:12px}</style></head><body>",
        "<h1>Atelier compliance report</h1>",
        f"<p>Period: <b>{e(period)}</b> (start inclusive, end exclusive). Generated "
        f"{e(datetime.now(UTC).isoformat(timespec='seconds'))}"
        + (f" by {e(generated_by)}" if generated_by else "")
        + ".</p>",
        "<div class=cards>"
        + "".join(
            f"<div class=card><div class=num>{n}</div>{e(label)}</div>"
            for label, n in (
                ("images", total),
                ("published", status.get("published", 0)),
                ("quarantined", status.get("quarantined", 0)),
                ("waiting for review", status.get("review", 0)),
                ("rejected in review", status.get("rejected", 0)),
                ("withdrawn", status.get("withdrawn", 0)),
                ("approval decisions", len(approvals)),
                ("runs started", sum(runs.values())),
            )
        )
        + "</div>",
        "<h2>Images by declared use</h2>",
        table(["use category", "purpose", "status", "images"], by_use),
        "<h2>Approvals</h2>",
        table(
            [
                "decided at",
                "decision",
                "batch",
                "approver",
                "requester",
                "purpose",
                "use category",
                "content sha256",
                "voided at",
                "reason",
            ],
            [(_iso(a[0]), *a[1:8], _iso(a[8]), a[9]) for a in approvals],
        ),
        "<h2>Grants of the approver and admin roles</h2>",
        table(["at", "user", "roles granted", "granted by", "event"], grants),
        "<h3>Holding them now</h3>",
        table(
            ["user", "roles", "disabled"],
            [(n, lo if lo == hi else f"{lo}, {hi}", _iso(d) or "") for n, lo, hi, d in holders],
        ),
        "<h2>Quarantined images</h2>",
        table(
            ["image", "created", "batch", "ref", "row", "reasons"],
            [(q[0], _iso(q[1]), q[2], q[3], q[4], reasons(q[5])) for q in quarantines],
        ),
        "<h2>Output review and withdrawals</h2>",
        table(
            ["image", "status", "batch", "row", "decision", "by", "at", "reason"],
            [(i, st, b, r, *_decision(rv, wd)) for i, st, b, r, rv, wd in decided],
        ),
        "<h2>Prompt-policy flags acknowledged by approvers</h2>",
        table(
            ["decided at", "batch", "approver", "flags acknowledged"],
            [
                (_iso(at), b, who, "; ".join(f"{f['row_id']} {f['rule']} ({f['matched']})" for f in flags or []))
                for at, b, who, flags in acknowledged
            ],
        ),
        "<h2>Pipeline configurations: cost per image and per accepted image</h2>",
        "<p>Engine seconds are measured on the workers (GPU seconds where a GPU ran); "
        + (
            f"cost at {e(f'{gpu_hour_price:g}')} per GPU-hour."
            if gpu_hour_price is not None
            else "no price per GPU-hour was given (ATELIER_GPU_HOUR_PRICE), so no cost is shown."
        )
        + "</p>",
        table(
            [
                "configuration",
                "images",
                "accepted",
                "quarantine rate",
                "review rejection rate",
                "engine s / image",
                "images / engine s",
                "cost / image",
                "cost / accepted image",
            ],
            [
                (
                    c.pipeline,
                    c.images,
                    c.accepted,
                    c.quarantine_rate,
                    c.review_rejection_rate,
                    c.seconds_per_image,
                    c.images_per_second,
                    c.cost_per_image,
                    c.cost_per_accepted_image,
                )
                for c in config_costs
            ],
        ),
        "<h2>Blind preference between configurations (judgements decided in the period)</h2>",
        table(
            ["A", "B", "judgements", "A wins", "B wins", "no preference", "A win rate", "95% interval (Wilson)"],
            [
                (
                    w.a,
                    w.b,
                    w.judgements,
                    w.wins_a,
                    w.wins_b,
                    w.no_preference,
                    w.rate_a,
                    "" if w.ci_low is None else f"{w.ci_low:.3f} to {w.ci_high:.3f}",
                )
                for w in preferences
            ],
        ),
        "<h2>Licences of the published images</h2>",
        table(["licence", "name", "text sha256", "model role", "weights sha256", "published images"], licences),
        f"<h2>Published images ({len(thumbs)} of {status.get('published', 0)} shown)</h2><div>",
        "".join(
            f'<figure><img src="{src}" alt="{e(i)}"><figcaption>{e(label or "")}<br><code>{e(i[:8])}</code>'
            "</figcaption></figure>"
            for i, label, src in thumbs
        ),
        "</div></body></html>",
    ]
    out.write_text("".join(parts), encoding="utf-8")
    return ReportSummary(
        out, total, status.get("published", 0), status.get("quarantined", 0), len(approvals), len(thumbs)
    )
