"""The HTTP API, `/api/v1`: JSON in and out, `Authorization: Bearer <token>` (the CLI's tokens).

Every route answers with the `to_dict()` of the same typed result the CLI renders; errors are
`{code, message}` (intake adds `failures`: every failing row and rule). Each route's roles are in
its `x-roles` in /openapi.json.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, File, Form, Query, Request, UploadFile
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.responses import FileResponse

from governance.errors import InvalidInput
from governance.records import BatchStatus, ImageStatus, Purpose, Role, SafetyVerdict
from server import actions
from server.app import Caller, caller, roles, server_of

router = APIRouter(prefix="/api/v1", tags=["api"])
Who = Annotated[Caller, Depends(caller)]
SHA256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$", description="the content hash the approver reviewed")]
Id = Annotated[str, Field(min_length=1, max_length=64)]


def out(value: Any, status: int = 200) -> JSONResponse:
    from fastapi.encoders import jsonable_encoder

    if isinstance(value, list):
        value = [v.to_dict() if hasattr(v, "to_dict") else v for v in value]
    elif hasattr(value, "to_dict"):
        value = value.to_dict()
    return JSONResponse(jsonable_encoder(value), status_code=status)


async def read_upload(request: Request, file: UploadFile, limit: int) -> bytes:
    data = await file.read(limit + 1)
    if len(data) > limit:
        raise InvalidInput(f"the uploaded file is larger than {limit} bytes")
    return data


# ---------------------------------------------------------------- who am I


@router.get("/me", openapi_extra=roles())
def me(who: Who) -> JSONResponse:
    """The caller's identity: user, roles and the credential used."""
    return out(who.identity)


# ---------------------------------------------------------------- batches


@router.get("/batches", openapi_extra=roles())
def list_batches(
    who: Who, status: BatchStatus | None = None, mine: Annotated[bool, Query(description="only mine")] = False
) -> JSONResponse:
    """Batches, oldest first (a requester sees their own)."""
    return out(actions.list_visible_batches(who, status, mine))


@router.get("/queue", openapi_extra=roles("approver"))
def queue(who: Who) -> JSONResponse:
    """Batches awaiting a decision, never the caller's own."""
    return out(actions.approval_queue(who))


@router.post("/batches", status_code=201, openapi_extra=roles("requester"))
async def submit_batch(
    request: Request,
    who: Who,
    file: Annotated[UploadFile, File(description="CSV, JSON lines (.jsonl) or Parquet")],
    purpose: Annotated[Purpose, Form()],
    use_category: Annotated[str, Form(max_length=60)] = "general",
    pipeline: Annotated[str | None, Form(max_length=200)] = None,
) -> JSONResponse:
    """Validate a prompt file and submit it; 422 lists every failing row and rule, nothing is stored.
    `pipeline`: the configuration(s) of rows whose `pipeline` cell is empty (default base+refiner)."""
    data = await read_upload(request, file, who.rt.settings.intake_max_file_bytes)
    done = await run_in_threadpool(actions.submit, who, file.filename, data, purpose, use_category, pipeline)
    return out(done, 201)


@router.get("/batches/{batch_id}", openapi_extra=roles())
def show_batch(who: Who, batch_id: str) -> JSONResponse:
    """One batch: status, decisions on its content, progress and every row with every field."""
    return out(actions.batch_detail(who, batch_id))


@router.put("/batches/{batch_id}", openapi_extra=roles("requester"))
async def edit_batch(request: Request, who: Who, batch_id: str, file: Annotated[UploadFile, File()]) -> JSONResponse:
    """Replace the batch's prompts (its requester); voids its approval."""
    data = await read_upload(request, file, who.rt.settings.intake_max_file_bytes)
    return out(await run_in_threadpool(actions.edit, who, batch_id, file.filename, data))


class ApproveBody(BaseModel):
    content_sha256: SHA256
    acknowledge_rejections: bool = False
    acknowledge_flags: bool = False


class RejectBody(BaseModel):
    content_sha256: SHA256
    reason: Annotated[str, Field(min_length=1, max_length=2000)]


@router.post("/batches/{batch_id}/approve", openapi_extra=roles("approver"))
def approve(who: Who, batch_id: str, body: ApproveBody) -> JSONResponse:
    """Approve exactly the content with this hash (never the requester's own batch)."""
    return out(actions.approve(who, batch_id, body.content_sha256, body.acknowledge_rejections, body.acknowledge_flags))


@router.post("/batches/{batch_id}/reject", openapi_extra=roles("approver"))
def reject(who: Who, batch_id: str, body: RejectBody) -> JSONResponse:
    """Reject with a reason; the rejection sticks to the content."""
    return out(actions.reject(who, batch_id, body.content_sha256, body.reason))


@router.get("/batches/{batch_id}/images", openapi_extra=roles())
def batch_images(
    who: Who,
    batch_id: str,
    status: ImageStatus | None = None,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> JSONResponse:
    """The batch's images (published and quarantined, with reasons)."""
    return out(actions.batch_images(who, batch_id, status, offset, limit))


@router.get("/batches/{batch_id}/download", openapi_extra=roles())
def batch_download(who: Who, batch_id: str) -> Response:
    """A zip of the batch's published images (named by row and reference) and manifest.json."""
    data, name = actions.batch_archive(who, batch_id)
    return Response(data, media_type="application/zip", headers=_attachment(name))


@router.get("/batches/{batch_id}/report", openapi_extra=roles())
def batch_report(who: Who, batch_id: str) -> Response:
    """A catalogue run's contact sheet (HTML: thumbnails by SKU, quarantines with their reasons)."""
    page = actions.run_report(who, batch_id)
    csp = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"
    return Response(page, media_type="text/html; charset=utf-8", headers={"Content-Security-Policy": csp})


# ---------------------------------------------------------------- runs


class RunBody(BaseModel):
    batch_id: Id


@router.post("/runs", status_code=202, openapi_extra=roles("operator"))
def start_run(request: Request, who: Who, body: RunBody) -> JSONResponse:
    """Start an approved batch: a flow run of the deployment with a Prefect server, else in this process."""
    return out(actions.start_run(who, server_of(request).launcher, body.batch_id), 202)


@router.get("/runs", openapi_extra=roles("operator", "auditor", "admin"))
def list_runs(who: Who) -> JSONResponse:
    """Runs, newest first."""
    return out(actions.runs(who))


@router.get("/batches/{batch_id}/progress", openapi_extra=roles())
def progress(request: Request, who: Who, batch_id: str) -> JSONResponse:
    """Images done of planned, published, quarantined; the run this server started, if any."""
    detail = actions.batch_detail(who, batch_id)
    started = server_of(request).launcher.state(detail.summary.batch_id)
    body = {
        "batch_id": detail.summary.batch_id,
        "status": detail.summary.status,
        "progress": detail.summary.full_progress().to_dict(),
        "run": started.to_dict() if started else None,
    }
    return out(body)


@router.get("/workers", openapi_extra=roles("operator", "admin"))
def workers(who: Who) -> JSONResponse:
    """Workers holding work now: each claimed chunk and its lease."""
    return out(actions.workers(who))


@router.get("/quarantine", openapi_extra=roles("operator", "auditor", "admin"))
def quarantine(who: Who) -> JSONResponse:
    """Quarantined images with their reasons, newest first."""
    return out(actions.quarantined(who))


# ---------------------------------------------------------------- output review


class ReviewDecision(BaseModel):
    image_ids: Annotated[list[Id], Field(max_length=1000)] = []
    batch_id: Id | None = None  # instead of image_ids: every image of the batch waiting for review
    reason: Annotated[str | None, Field(max_length=2000)] = None  # required to reject


@router.get("/review", openapi_extra=roles("reviewer", "auditor", "admin"))
def review_queue(who: Who, batch_id: Annotated[str | None, Query(max_length=64)] = None) -> JSONResponse:
    """Images waiting for review, oldest first."""
    return out(actions.review_waiting(who, batch_id))


@router.post("/review/accept", openapi_extra=roles("reviewer"))
def review_accept(request: Request, who: Who, body: ReviewDecision) -> JSONResponse:
    """Accept images (never the batch's requester): they are published."""
    done = actions.review_decide(who, True, body.image_ids, body.batch_id)
    server_of(request).courier.poke()
    return out({"accepted": done})


@router.post("/review/reject", openapi_extra=roles("reviewer"))
def review_reject(request: Request, who: Who, body: ReviewDecision) -> JSONResponse:
    """Reject images with a reason: they are never published."""
    done = actions.review_decide(who, False, body.image_ids, body.batch_id, body.reason)
    server_of(request).courier.poke()
    return out({"rejected": done})


# ---------------------------------------------------------------- configurations: compare and prefer


@router.get("/batches/{batch_id}/compare", openapi_extra=roles("requester", "approver", "operator", "auditor", "admin"))
def compare(who: Who, batch_id: str) -> JSONResponse:
    """The batch's configurations side by side (same seeds), cost per image and per accepted image
    (at ATELIER_GPU_HOUR_PRICE), and the win rates of reviewers' blind picks."""
    return out(actions.compare(who, batch_id))


@router.post("/batches/{batch_id}/preferences/next", openapi_extra=roles("reviewer"))
def preference_next(who: Who, batch_id: str) -> JSONResponse:
    """The caller's next blind pair: the pair id, the prompt and two image URLs that name neither the
    images nor their configurations (random left/right order). 404 when none is left to judge."""
    return out(actions.prefer_next(who, batch_id, "/api/v1/preferences"))


@router.get("/preferences/{pair_id}/{side}.png", openapi_extra=roles("reviewer"))
def preference_image(who: Who, pair_id: Id, side: Literal["left", "right"]) -> Response:
    """One side of the caller's own pair: PNG from the pixels alone (no C2PA manifest, no metadata)."""
    return Response(actions.prefer_image(who, pair_id, side), media_type="image/png", headers=NO_STORE)


class PickBody(BaseModel):
    choice: Literal["left", "right", "none"]


@router.post("/preferences/{pair_id}", openapi_extra=roles("reviewer"))
def preference_pick(who: Who, pair_id: Id, body: PickBody) -> JSONResponse:
    """Record the pick for the caller's pair (once; audited)."""
    return out(actions.prefer_pick(who, pair_id, body.choice))


@router.get("/preferences", openapi_extra=roles("auditor", "admin"))
def preference_results(who: Who, batch_id: Annotated[str | None, Query(max_length=64)] = None) -> JSONResponse:
    """Win rates per configuration pair with 95% Wilson intervals, over every judgement or one batch's
    (a batch's requester reads hers in /batches/{id}/compare)."""
    return out(actions.preference_results(who, batch_id))


NO_STORE = {"Cache-Control": "no-store"}


# ---------------------------------------------------------------- withdrawal, legal holds, retention


class WithdrawBody(BaseModel):
    reason: Annotated[str, Field(min_length=1, max_length=2000)]
    image_ids: Annotated[list[Id], Field(max_length=1000)] = []
    model_version: Id | None = None  # instead of image_ids: every published image of this model version
    licence: Annotated[str | None, Field(max_length=100)] = None  # or of this licence


@router.post("/images/withdraw", openapi_extra=roles("auditor", "admin"))
def withdraw(request: Request, who: Who, body: WithdrawBody) -> JSONResponse:
    """Take published images down. A held image named by id refuses the whole act (409); found by model
    version or licence, held images are left and listed under `held`."""
    done = actions.withdraw_images(who, body.reason, body.image_ids, body.model_version, body.licence)
    server_of(request).courier.poke()
    return out(done)


class HoldBody(BaseModel):
    reason: Annotated[str, Field(min_length=1, max_length=2000)]
    image_ids: Annotated[list[Id], Field(max_length=1000)] = []
    batch_id: Id | None = None  # instead of image_ids: the batch, its images now and later


class ReleaseBody(BaseModel):
    reason: Annotated[str, Field(min_length=1, max_length=2000)]


@router.get("/holds", openapi_extra=roles("auditor", "admin"))
def list_holds(
    who: Who, all: bool = False, target_id: Annotated[str | None, Query(max_length=64)] = None
) -> JSONResponse:
    """Legal holds: active ones, or with `all=true` released ones too."""
    return out(actions.holds(who, all, target_id))


@router.post("/holds", status_code=201, openapi_extra=roles("auditor", "admin"))
def place_hold(who: Who, body: HoldBody) -> JSONResponse:
    """Place a legal hold on images or a batch: nothing deletes their files until it is released."""
    return out(actions.hold_place(who, body.reason, body.image_ids, body.batch_id), 201)


@router.post("/holds/{hold_id}/release", openapi_extra=roles("auditor", "admin"))
def release_hold(who: Who, hold_id: str, body: ReleaseBody) -> JSONResponse:
    """Release a legal hold, with a reason."""
    return out(actions.hold_release(who, hold_id, body.reason))


@router.get("/retention", openapi_extra=roles("auditor", "admin"))
def retention(who: Who) -> JSONResponse:
    """The retention policy in force and what it would expire now (held images apart)."""
    return out(actions.retention_due(who))


# ---------------------------------------------------------------- images and verify


@router.get("/images/{image_id}", openapi_extra=roles())
def trace(who: Who, image_id: str) -> JSONResponse:
    """Everything known about one image (as `atelier trace`)."""
    return out(actions.image_trace(who, image_id))


@router.get("/images/{image_id}/thumbnail", openapi_extra=roles())
def thumbnail(who: Who, image_id: str) -> Response:
    """The gallery thumbnail (JPEG, made at publish time)."""
    data, media = actions.image_bytes(who, image_id, thumbnail=True)
    return Response(data, media_type=media, headers={"Cache-Control": "private, max-age=3600"})


@router.get("/images/{image_id}/file", openapi_extra=roles())
def image_file(who: Who, image_id: str) -> Response:
    """The published PNG with its C2PA manifest, streamed from the store."""
    data, media = actions.image_bytes(who, image_id)
    return Response(data, media_type=media, headers=_attachment(f"{image_id}.png"))


@router.post("/verify", openapi_extra=roles())
async def verify(request: Request, who: Who, file: Annotated[UploadFile, File()]) -> JSONResponse:
    """Did Atelier make this file, was it altered? The verdict and every signal."""
    data = await read_upload(request, file, who.rt.settings.server_upload_max_bytes)
    return out(await run_in_threadpool(actions.verify_upload, who, file.filename, data))


# ---------------------------------------------------------------- compliance


class Filters(BaseModel):
    prompt: Annotated[str | None, Field(max_length=500)] = None
    requester: Annotated[str | None, Field(max_length=100)] = None
    approver: Annotated[str | None, Field(max_length=100)] = None
    purpose: Purpose | None = None
    use_category: Annotated[str | None, Field(max_length=60)] = None
    model_version: Annotated[str | None, Field(max_length=200)] = None
    licence: Annotated[str | None, Field(max_length=100)] = None
    verdict: SafetyVerdict | None = None
    status: ImageStatus | None = None
    since: Annotated[str | None, Field(max_length=40)] = None
    until: Annotated[str | None, Field(max_length=40)] = None
    ref: Annotated[str | None, Field(max_length=200)] = None

    def filters(self) -> Any:
        from governance.compliance import SearchFilters, parse_when

        given = self.model_dump(include=set(Filters.model_fields))
        since, until = given.pop("since"), given.pop("until")
        return SearchFilters(
            **{k: (str(v) if v is not None else None) for k, v in given.items()},
            since=parse_when(since, field="since") if since else None,
            until=parse_when(until, end=True, field="until") if until else None,
        )


class SearchQuery(Filters):
    limit: Annotated[int, Field(ge=1, le=10_000)] = 100


class ExportQuery(Filters):
    format: Literal["csv", "parquet"] = "csv"


@router.get("/compliance/search", openapi_extra=roles("auditor", "admin"))
def search(who: Who, query: Annotated[SearchQuery, Query()]) -> JSONResponse:
    """Images matching every filter given, newest first (at most `limit`)."""
    result = actions.search(who, query.filters(), query.limit)
    return out({"images": result.images, "truncated": result.truncated})


@router.get("/compliance/impact", openapi_extra=roles("auditor", "admin"))
def impact(
    who: Who,
    model_version: Annotated[str | None, Query(max_length=200)] = None,
    licence: Annotated[str | None, Query(max_length=100)] = None,
) -> JSONResponse:
    """Every published image depending on a model version or a licence (exactly one)."""
    return out(actions.impact_of(who, model_version, licence))


@router.get("/compliance/export", openapi_extra=roles("auditor", "admin"))
def export(who: Who, query: Annotated[ExportQuery, Query()]) -> Response:
    """The full lineage of every matching image, as a CSV (formula-safe) or Parquet download."""
    filters, format = query, query.format
    folder = tempfile.TemporaryDirectory(prefix="atelier-export-")
    path = Path(folder.name) / f"atelier-lineage.{format}"
    try:
        actions.export(who, format, filters.filters(), path)
    except BaseException:
        folder.cleanup()
        raise
    media = "text/csv" if format == "csv" else "application/vnd.apache.parquet"
    return FileResponse(path, media_type=media, filename=path.name, background=BackgroundTask(folder.cleanup))


@router.get("/compliance/report", openapi_extra=roles("auditor", "admin"))
def report(
    who: Who,
    since: Annotated[str, Query(alias="from", max_length=40)],
    until: Annotated[str, Query(alias="to", max_length=40)],
) -> Response:
    """A self-contained HTML report of a period, as a download."""
    folder = tempfile.TemporaryDirectory(prefix="atelier-report-")
    path = Path(folder.name) / "atelier-report.html"
    try:
        actions.report(who, since, until, path)
    except BaseException:
        folder.cleanup()
        raise
    return FileResponse(path, media_type="text/html", filename=path.name, background=BackgroundTask(folder.cleanup))


# ---------------------------------------------------------------- audit


@router.get("/audit/verify", openapi_extra=roles("auditor", "admin", "operator"))
def audit_verify(who: Who) -> JSONResponse:
    """Check the chain, every record against its events, every anchor and published object (`audit verify`)."""
    return out(actions.ledger_status(who))


@router.get("/audit/anchors", openapi_extra=roles("auditor", "admin", "operator"))
def audit_anchors(who: Who) -> JSONResponse:
    """The newest signed checkpoints of the chain (WORM storage)."""
    return out(actions.anchors(who))


# ---------------------------------------------------------------- users and tokens


class NewUser(BaseModel):
    name: Annotated[str, Field(min_length=1, max_length=64)]
    roles: Annotated[list[Role], Field(min_length=1, max_length=len(Role))]


class RoleChange(BaseModel):
    grant: Annotated[list[Role], Field(max_length=len(Role))] = []
    revoke: Annotated[list[Role], Field(max_length=len(Role))] = []


class NewToken(BaseModel):
    user: Annotated[str, Field(min_length=1, max_length=64)]
    name: Annotated[str, Field(min_length=1, max_length=100)] = "api"
    days: Annotated[int, Field(ge=1, le=366)] = 90


class NewPassword(BaseModel):
    password: Annotated[str, Field(min_length=1, max_length=1024)]


@router.get("/users", openapi_extra=roles("admin"))
def users(who: Who) -> JSONResponse:
    """Users, their roles, whether they can act."""
    return out(actions.users(who))


@router.post("/users", status_code=201, openapi_extra=roles("admin"))
def add_user(who: Who, body: NewUser) -> JSONResponse:
    """Add a user with roles."""
    return out({"name": body.name, "roles": actions.add_user(who, body.name, [str(r) for r in body.roles])}, 201)


@router.post("/users/{name}/roles", openapi_extra=roles("admin"))
def change_roles(who: Who, name: str, body: RoleChange) -> JSONResponse:
    """Grant and revoke roles."""
    roles_now = actions.change_roles(who, name, [str(r) for r in body.grant], [str(r) for r in body.revoke])
    return out({"name": name, "roles": roles_now})


@router.post("/users/{name}/disable", openapi_extra=roles("admin"))
def disable(who: Who, name: str) -> JSONResponse:
    """Disable a user: their tokens and sessions stop working at once."""
    actions.set_disabled(who, name, True)
    return out({"name": name, "disabled": True})


@router.post("/users/{name}/enable", openapi_extra=roles("admin"))
def enable(who: Who, name: str) -> JSONResponse:
    """Enable a disabled user."""
    actions.set_disabled(who, name, False)
    return out({"name": name, "disabled": False})


@router.post("/users/{name}/password", openapi_extra=roles())
def password(who: Who, name: str, body: NewPassword) -> JSONResponse:
    """Set a console password (your own; admins: anyone's)."""
    actions.set_password(who, name, body.password)
    return out({"name": name, "password": "set"})


@router.get("/tokens", openapi_extra=roles())
def tokens(who: Who, user: Annotated[str | None, Query(max_length=64)] = None) -> JSONResponse:
    """Tokens (never their secrets): yours; admins: anyone's."""
    return out(actions.tokens(who, user))


@router.post("/tokens", status_code=201, openapi_extra=roles("admin"))
def issue_token(who: Who, body: NewToken) -> JSONResponse:
    """Issue a token; its secret is in this answer only."""
    return out(actions.issue_token(who, body.user, body.name, body.days), 201)


@router.post("/tokens/{token_id}/revoke", openapi_extra=roles())
def revoke_token(who: Who, token_id: str) -> JSONResponse:
    """Revoke a token (yours; admins: anyone's)."""
    actions.revoke_token(who, token_id)
    return out({"token_id": token_id, "state": "revoked"})


def _attachment(name: str) -> dict[str, str]:
    return {"Content-Disposition": f'attachment; filename="{name}"'}
