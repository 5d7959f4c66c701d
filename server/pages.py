"""The web console: server-rendered pages (Jinja2) over the same acts as the API (server.actions).

Every form works without JavaScript and carries the session's CSRF token; the one script
(static/console.js, same origin, no inline script: the CSP forbids it) only refreshes progress.
Each role sees only what it may: the navigation shows a role's pages, and every route checks again.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, File, Form, Path, Query, Request, UploadFile
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from governance.batches import IntakeRejected
from governance.errors import AtelierError, InvalidInput, Unauthenticated
from governance.records import ROLES, Purpose
from server import actions
from server.app import Caller, caller, roles, server_of
from server.sessions import COOKIE, PRE_COOKIE

router = APIRouter(include_in_schema=False)
Who = Annotated[Caller, Depends(caller)]

NAV = [  # (path, label, roles that see it; empty: everyone signed in)
    ("/", "Home", ()),
    ("/batches", "Batches", ()),
    ("/batches/new", "Submit a batch", ("requester",)),
    ("/queue", "Approval queue", ("approver",)),
    ("/review", "Review", ("reviewer",)),
    ("/runs", "Runs", ("operator",)),
    ("/quarantine", "Quarantine", ("operator", "auditor", "admin")),
    ("/search", "Search", ("auditor", "admin")),
    ("/impact", "Impact", ("auditor", "admin")),
    ("/reports", "Export and reports", ("auditor", "admin")),
    ("/holds", "Legal holds", ("auditor", "admin")),
    ("/catalogue/templates", "Catalogue templates", ("approver", "requester", "admin")),
    ("/verify", "Verify a file", ()),
    ("/ledger", "Ledger", ("auditor", "admin", "operator")),
    ("/admin/users", "Users", ("admin",)),
    ("/tokens", "Tokens", ()),
]


def render(request: Request, template: str, who: Caller | None, http_status: int = 200, **ctx: Any) -> HTMLResponse:
    from governance.text import escape_unsafe

    server = server_of(request)
    env = server.templates.env
    env.filters.setdefault("visible", lambda v: escape_unsafe(str(v)) if v is not None else "")
    nav = [(p, label) for p, label, r in NAV if who is not None and (not r or who.has(*r))]
    if ctx.get("note"):
        ctx["note"] = signed_note(request, ctx["note"])
    context = {"who": who, "csrf": who.csrf if who else None, "nav": nav, "path": request.url.path, **ctx}
    return server.templates.TemplateResponse(request, template, context, status_code=http_status)


def error_page(request: Request, status: int, body: dict[str, Any]) -> HTMLResponse:
    return render(request, "error.html", None, http_status=status, code=body["code"], message=body["message"])


# Status notes ride in the redirect's query (`?note=...&ns=...`) and a page shows one only with the
# server's signature: a link cannot put its own words on a console page as the server's message.
# create_app sets the key from the session key (shared by every process of one data dir).
NOTE_KEY = [secrets.token_bytes(32)]


def note_signature(note: str) -> str:
    return hmac.new(NOTE_KEY[0], note.encode(), hashlib.sha256).hexdigest()[:32]


def signed_note(request: Request, note: str | None) -> str | None:
    """The `note` of this request if the server wrote it (signed), else None."""
    given = request.query_params.get("ns", "")
    return note if note and hmac.compare_digest(note_signature(note), given) else None


def back(path: str, note: str | None = None) -> RedirectResponse:
    query = f"?{urlencode({'note': note, 'ns': note_signature(note)})}" if note else ""
    return RedirectResponse(path + query, status_code=303)


# ---------------------------------------------------------------- sign-in


def _login_csrf(request: Request, pre: str) -> str:
    return server_of(request).sessions.csrf_token("login:" + pre)


@router.get("/login")
def login_form(request: Request, next: Annotated[str, Query(max_length=500)] = "/") -> HTMLResponse:
    pre = request.cookies.get(PRE_COOKIE) or secrets.token_urlsafe(24)
    page = render(request, "login.html", None, login_csrf=_login_csrf(request, pre), next=_local(next), error=None)
    _set_cookie(request, page, PRE_COOKIE, pre, max_age=3600)
    return page


@router.post("/login")
async def login(
    request: Request,
    user: Annotated[str, Form(max_length=100)],
    password: Annotated[str, Form(max_length=1024)],
    csrf_token: Annotated[str, Form(max_length=200)] = "",
    next: Annotated[str, Form(max_length=500)] = "/",
) -> Response:
    from governance.users import check_password

    server = server_of(request)
    pre = request.cookies.get(PRE_COOKIE, "")
    if not pre or not server.sessions.csrf_ok("login:" + pre, csrf_token):
        return _login_again(request, "the sign-in form expired: please try again", 403)
    client = request.client.host if request.client else "?"
    keys = ("user:" + user.lower(), "addr:" + client)
    wait = server.throttle.reserve(*keys)  # counted as failed until it succeeds
    if wait:
        page = _login_again(request, f"too many failed sign-ins: try again in {wait // 60 + 1} minutes", 429)
        page.headers["Retry-After"] = str(wait)
        return page

    def attempt() -> str:
        with server.rt.sessions.begin() as session:
            identity = check_password(session, user, password)
            secret, _row = server.sessions.start(session, identity.user)
            return secret

    try:
        secret = await run_in_threadpool(attempt)
    except Unauthenticated as exc:
        return _login_again(request, str(exc), 401)
    server.throttle.succeeded(keys[0])
    server.throttle.refund(keys[1])
    response = RedirectResponse(_local(next), status_code=303)
    _set_cookie(request, response, COOKIE, secret)
    response.delete_cookie(PRE_COOKIE, path="/")
    return response


def _login_again(request: Request, error: str, status: int) -> HTMLResponse:
    pre = secrets.token_urlsafe(24)
    page = render(
        request, "login.html", None, login_csrf=_login_csrf(request, pre), next="/", error=error, http_status=status
    )
    _set_cookie(request, page, PRE_COOKIE, pre, max_age=3600)
    return page


@router.post("/logout")
def logout(request: Request, who: Who) -> Response:
    server = server_of(request)
    with server.rt.sessions.begin() as session:
        server.sessions.end(session, request.cookies.get(COOKIE, ""))
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response


def _set_cookie(request: Request, response: Response, name: str, value: str, max_age: int | None = None) -> None:
    configured = server_of(request).settings.cookie_secure
    secure = configured if configured is not None else request.url.scheme == "https"
    response.set_cookie(name, value, max_age=max_age, path="/", httponly=True, samesite="lax", secure=secure)


def _local(target: str) -> str:
    """Only a path on this site (no open redirect to another host)."""
    return target if target.startswith("/") and not target.startswith(("//", "/\\")) else "/"


# ---------------------------------------------------------------- home and batches


@router.get("/", openapi_extra=roles())
def home(request: Request, who: Who) -> HTMLResponse:
    mine = actions.list_visible_batches(who, mine=True) if who.has("requester") else []
    queue = actions.approval_queue(who) if who.has("approver") else []
    return render(request, "home.html", who, mine=mine, queue=queue)


@router.get("/batches", openapi_extra=roles())
def batches(request: Request, who: Who, note: str | None = None) -> HTMLResponse:
    return render(request, "batches.html", who, batches=actions.list_visible_batches(who), title="Batches", note=note)


@router.get("/queue", openapi_extra=roles("approver"))
def queue(request: Request, who: Who) -> HTMLResponse:
    return render(request, "batches.html", who, batches=actions.approval_queue(who), title="Approval queue", note=None)


@router.get("/batches/new", openapi_extra=roles("requester"))
def new_batch(request: Request, who: Who) -> HTMLResponse:
    return render(request, "submit.html", who, purposes=list(Purpose), failures=None, error=None, **_pipelines(who))


def _pipelines(who: Caller) -> dict[str, Any]:
    """The configurations a batch may name (for the submit form)."""
    configs = who.rt.settings.load_pipelines()
    return {"pipelines": [configs.configs[n] for n in configs.names]}


@router.post("/batches/new", openapi_extra=roles("requester"))
async def submit_batch(
    request: Request,
    who: Who,
    file: Annotated[UploadFile, File()],
    purpose: Annotated[Purpose, Form()],
    use_category: Annotated[str, Form(max_length=60)] = "general",
    pipeline: Annotated[str, Form(max_length=200)] = "",
) -> Response:
    from server.api import read_upload

    try:
        data = await read_upload(request, file, who.rt.settings.intake_max_file_bytes)
        done = await run_in_threadpool(actions.submit, who, file.filename, data, purpose, use_category, pipeline)
    except IntakeRejected as exc:
        failures = [f.__dict__ for f in exc.report.failures]
        return render(
            request,
            "submit.html",
            who,
            http_status=422,
            purposes=list(Purpose),
            failures=failures,
            error=str(exc),
            **_pipelines(who),
        )
    except InvalidInput as exc:
        return render(
            request,
            "submit.html",
            who,
            http_status=400,
            purposes=list(Purpose),
            failures=None,
            error=str(exc),
            **_pipelines(who),
        )
    return back(f"/batches/{done.batch_id}", "submitted: an approver will review it")


@router.get("/batches/{batch_id}", openapi_extra=roles())
def batch_page(request: Request, who: Who, batch_id: str, note: str | None = None) -> HTMLResponse:
    detail = actions.batch_detail(who, batch_id)
    s = detail.summary
    can_decide = who.has("approver") and s.requested_by != who.user and s.status == "submitted"
    rejected_before = any(d.decision == "rejected" for d in detail.decisions_on_content)
    started = server_of(request).launcher.state(s.batch_id)
    ctx: dict[str, Any] = {
        "d": detail,
        "s": s,
        "can_decide": can_decide,
        "rejected_before": rejected_before,
        "started": started,
    }
    return render(request, "batch.html", who, note=note, **ctx)


@router.post("/batches/{batch_id}/approve", openapi_extra=roles("approver"))
def approve(
    who: Who,
    batch_id: str,
    content_sha256: Annotated[str, Form(max_length=64)],
    acknowledge_rejections: Annotated[bool, Form()] = False,
    acknowledge_flags: Annotated[bool, Form()] = False,
) -> Response:
    done = actions.approve(who, batch_id, content_sha256, acknowledge_rejections, acknowledge_flags)
    return back(f"/batches/{done.batch_id}", f"approved for content {done.content_sha256[:12]}")


@router.post("/batches/{batch_id}/reject", openapi_extra=roles("approver"))
def reject(
    who: Who,
    batch_id: str,
    content_sha256: Annotated[str, Form(max_length=64)],
    reason: Annotated[str, Form(min_length=1, max_length=2000)],
) -> Response:
    done = actions.reject(who, batch_id, content_sha256, reason)
    return back(f"/batches/{done.batch_id}", "rejected")


@router.get("/batches/{batch_id}/compare", openapi_extra=roles("requester", "approver", "operator", "auditor", "admin"))
def compare_page(request: Request, who: Who, batch_id: str) -> HTMLResponse:
    """The batch's configurations side by side per prompt and seed, their cost and the blind preferences."""
    result = actions.compare(who, batch_id)
    images = [i for row in result.rows for i in row.images]
    return render(
        request,
        "compare.html",
        who,
        c=result,
        thumbs=actions.gallery_thumbnails(who, images),
        price=who.rt.settings.gpu_hour_price,
    )


@router.get("/batches/{batch_id}/prefer", openapi_extra=roles("reviewer"))
def prefer_page(request: Request, who: Who, batch_id: str, note: str | None = None) -> HTMLResponse:
    """The pair waiting for this reviewer: two images of the same prompt and seed in random order, nothing
    that names them; none waiting: a button that draws the next (a GET changes nothing)."""
    from governance.errors import NotFound

    try:
        pair = actions.prefer_next(who, batch_id, "/api/v1/preferences", draw=False)
    except NotFound as exc:
        return render(request, "prefer.html", who, pair=None, done=str(exc), batch_id=batch_id, note=note)
    return render(request, "prefer.html", who, pair=pair, done=None, batch_id=pair.batch_id, note=note)


@router.post("/batches/{batch_id}/prefer", openapi_extra=roles("reviewer"))
def prefer_draw(who: Who, batch_id: Annotated[str, Path(max_length=64)]) -> Response:
    """Draw the next blind pair (audited as shown) and show it."""
    from governance.errors import NotFound

    try:
        pair = actions.prefer_next(who, batch_id, "/api/v1/preferences")
    except NotFound as exc:
        return back(f"/batches/{batch_id}/prefer", str(exc))
    return back(f"/batches/{pair.batch_id}/prefer")


@router.post("/preferences/{pair_id}", openapi_extra=roles("reviewer"))
def prefer_pick(
    who: Who,
    pair_id: Annotated[str, Path(max_length=64)],
    choice: Annotated[str, Form(pattern="^(left|right|none)$")],
    batch_id: Annotated[str, Form(max_length=64)],
) -> Response:
    actions.prefer_pick(who, pair_id, choice)
    return prefer_draw(who, batch_id)  # the pick recorded, the next pair at once


@router.get("/batches/{batch_id}/gallery", openapi_extra=roles())
def gallery(
    request: Request,
    who: Who,
    batch_id: str,
    status: Annotated[str | None, Query(pattern="^(published|quarantined)$")] = None,
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
) -> HTMLResponse:
    summary = actions.batch_summary_of(who, batch_id)
    cards = actions.batch_images(who, summary.batch_id, status, (page - 1) * 100, 100)
    thumbs = actions.gallery_thumbnails(who, cards)
    return render(request, "gallery.html", who, s=summary, cards=cards, thumbs=thumbs, status=status, page=page)


# ---------------------------------------------------------------- images and verify


@router.get("/images/{image_id}", openapi_extra=roles())
def image_page(request: Request, who: Who, image_id: str, check: bool = False, note: str | None = None) -> HTMLResponse:
    t = actions.image_trace(who, image_id)
    checked = actions.check_published(who, t.image_id).to_dict() if check and t.status == "published" else None
    return render(request, "image.html", who, t=t, checked=checked, note=note)


@router.post("/images/{image_id}/hold", openapi_extra=roles("auditor", "admin"))
def place_hold(who: Who, image_id: str, reason: Annotated[str, Form(min_length=1, max_length=2000)]) -> Response:
    act = actions.hold_place(who, reason, [image_id], None)
    placed = act.holds[0].hold_id[:8] if act.holds else "already in place"
    return back(f"/images/{image_id}", f"legal hold {placed}: nothing deletes this image's files until released")


@router.post("/holds/{hold_id}/release", openapi_extra=roles("auditor", "admin"))
def release_hold(
    who: Who,
    hold_id: str,
    reason: Annotated[str, Form(min_length=1, max_length=2000)],
    image_id: Annotated[str | None, Form(max_length=64)] = None,
) -> Response:
    actions.hold_release(who, hold_id, reason)
    return back(f"/images/{image_id}" if image_id else "/holds", f"legal hold {hold_id[:8]} released")


@router.post("/images/{image_id}/withdraw", openapi_extra=roles("auditor", "admin"))
def withdraw(
    request: Request, who: Who, image_id: str, reason: Annotated[str, Form(min_length=1, max_length=2000)]
) -> Response:
    done = actions.withdraw_images(who, reason, [image_id], None, None)
    server_of(request).courier.poke()
    return back(f"/images/{image_id}", "withdrawn" if done.withdrawn else "already withdrawn: nothing changed")


@router.get("/catalogue/templates", openapi_extra=roles("approver", "requester", "admin"))
def templates_page(request: Request, who: Who, note: str | None = None) -> HTMLResponse:
    found, standing = actions.catalogue_templates(who)
    return render(request, "templates.html", who, templates=found, standing=standing, note=note)


@router.post("/catalogue/templates/{template_id}/approve", openapi_extra=roles("approver"))
def approve_template(
    who: Who,
    template_id: str,
    template_sha256: Annotated[str, Form(max_length=64)],
    categories: Annotated[str, Form(min_length=1, max_length=2000)],
    max_images: Annotated[int, Form(ge=1, le=100_000)],
    days: Annotated[int, Form(ge=1, le=366)] = 90,
) -> Response:
    view = actions.approve_template(who, template_id, template_sha256, categories.split(","), max_images, days)
    return back("/catalogue/templates", f"standing approval {view.standing_approval_id[:8]} of {view.template_id}")


@router.post("/catalogue/standing/{standing_id}/revoke", openapi_extra=roles("approver", "admin"))
def revoke_standing(
    who: Who, standing_id: str, reason: Annotated[str, Form(min_length=1, max_length=2000)]
) -> Response:
    view = actions.revoke_standing(who, standing_id, reason)
    return back("/catalogue/templates", f"standing approval {view.standing_approval_id[:8]} revoked")


@router.get("/holds", openapi_extra=roles("auditor", "admin"))
def holds_page(request: Request, who: Who, note: str | None = None) -> HTMLResponse:
    return render(request, "holds.html", who, holds=actions.holds(who, False, None), note=note)


@router.get("/images/{image_id}/thumbnail", openapi_extra=roles())
def thumbnail(who: Who, image_id: str) -> Response:
    data, media = actions.image_bytes(who, image_id, thumbnail=True)
    return Response(data, media_type=media, headers={"Cache-Control": "private, max-age=3600"})


@router.get("/images/{image_id}/file", openapi_extra=roles())
def image_file(who: Who, image_id: str) -> Response:
    data, media = actions.image_bytes(who, image_id)
    return Response(data, media_type=media, headers={"Content-Disposition": f'inline; filename="{image_id}.png"'})


@router.get("/verify", openapi_extra=roles())
def verify_form(request: Request, who: Who) -> HTMLResponse:
    return render(request, "verify.html", who, result=None, error=None)


@router.post("/verify", openapi_extra=roles())
async def verify(request: Request, who: Who, file: Annotated[UploadFile, File()]) -> HTMLResponse:
    from server.api import read_upload

    try:
        data = await read_upload(request, file, who.rt.settings.server_upload_max_bytes)
        result = await run_in_threadpool(actions.verify_upload, who, file.filename, data)
    except InvalidInput as exc:
        return render(request, "verify.html", who, http_status=400, result=None, error=str(exc))
    return render(request, "verify.html", who, result=result, r=result.to_dict(), error=None)


# ---------------------------------------------------------------- runs, quarantine, ledger


@router.get("/runs", openapi_extra=roles("operator"))
def runs_page(request: Request, who: Who, note: str | None = None) -> HTMLResponse:
    launcher = server_of(request).launcher
    approved = actions.list_visible_batches(who, "approved")
    running = actions.list_visible_batches(who, "running")
    started = {b.batch_id: launcher.state(b.batch_id) for b in [*approved, *running]}
    ctx: dict[str, Any] = {"approved": approved, "running": running, "started": started, "mode": launcher.mode}
    return render(request, "runs.html", who, runs=actions.runs(who), workers=actions.workers(who), note=note, **ctx)


@router.post("/runs", openapi_extra=roles("operator"))
def start_run(request: Request, who: Who, batch_id: Annotated[str, Form(max_length=64)]) -> Response:
    started = actions.start_run(who, server_of(request).launcher, batch_id)
    return back(f"/batches/{started.batch_id}", f"run started ({started.mode})")


@router.get("/review", openapi_extra=roles("reviewer", "auditor", "admin"))
def review_page(request: Request, who: Who, note: str | None = None) -> HTMLResponse:
    cards = actions.review_waiting(who)
    judge = actions.batches_to_judge(who) if who.has("reviewer") else []
    thumbs = actions.gallery_thumbnails(who, cards)
    return render(request, "review.html", who, cards=cards, thumbs=thumbs, note=note, judge=judge)


@router.post("/review", openapi_extra=roles("reviewer"))
async def review_decide(request: Request, who: Who) -> Response:
    form = await request.form()
    ids = [str(i)[:64] for i in form.getlist("image_ids")][:1000]
    act = str(form.get("act", ""))
    if act not in ("accept", "reject"):
        raise InvalidInput("choose accept or reject")
    reason = str(form.get("reason", ""))[:2000]
    done = await run_in_threadpool(actions.review_decide, who, act == "accept", ids, None, reason)
    server_of(request).courier.poke()
    return back("/review", f"{len(done)} image(s) {'accepted and published' if act == 'accept' else 'rejected'}")


@router.get("/quarantine", openapi_extra=roles("operator", "auditor", "admin"))
def quarantine(request: Request, who: Who) -> HTMLResponse:
    return render(request, "quarantine.html", who, cards=actions.quarantined(who))


@router.get("/ledger", openapi_extra=roles("auditor", "admin", "operator"))
def ledger(request: Request, who: Who, check: bool = False) -> HTMLResponse:
    status = actions.ledger_status(who) if check else None
    return render(request, "ledger.html", who, status=status, anchors=actions.anchors(who))


# ---------------------------------------------------------------- auditors


@router.get("/search", openapi_extra=roles("auditor", "admin"))
def search(request: Request, who: Who) -> HTMLResponse:
    from server.api import Filters

    params = {k: v for k, v in request.query_params.items() if v and k in Filters.model_fields}
    result, error = None, None
    if params:
        try:
            result = actions.search(who, Filters.model_validate(params).filters(), 100)
        except AtelierError as exc:
            error = str(exc)
        except ValueError as exc:  # pydantic: a value outside its choices
            error = str(exc).splitlines()[0]
    return render(request, "search.html", who, params=params, result=result, error=error, query=urlencode(params))


@router.get("/impact", openapi_extra=roles("auditor", "admin"))
def impact(
    request: Request,
    who: Who,
    model_version: Annotated[str | None, Query(max_length=200)] = None,
    licence: Annotated[str | None, Query(max_length=100)] = None,
) -> HTMLResponse:
    result, error = None, None
    if model_version or licence:
        try:
            result = actions.impact_of(who, model_version or None, licence or None)
        except AtelierError as exc:
            error = str(exc)
    return render(request, "impact.html", who, result=result, error=error, mv=model_version, licence=licence)


@router.get("/reports", openapi_extra=roles("auditor", "admin"))
def reports(request: Request, who: Who) -> HTMLResponse:
    return render(request, "reports.html", who)


# ---------------------------------------------------------------- users and tokens


@router.get("/admin/users", openapi_extra=roles("admin"))
def users(request: Request, who: Who, note: str | None = None) -> HTMLResponse:
    return render(request, "users.html", who, users=actions.users(who), roles_all=ROLES, note=note)


@router.post("/admin/users", openapi_extra=roles("admin"))
async def add_user(request: Request, who: Who) -> Response:
    form = await request.form()
    name = str(form.get("name", ""))[:64]
    wanted = [str(r) for r in form.getlist("roles")][: len(ROLES)]
    await run_in_threadpool(actions.add_user, who, name, wanted)
    return back("/admin/users", f"user {name} added: issue a token or set a password for them")


@router.post("/admin/users/{name}", openapi_extra=roles("admin"))
async def change_user(request: Request, who: Who, name: str) -> Response:
    form = await request.form()
    act = str(form.get("act", ""))
    role = str(form.get("role", ""))
    if act == "grant":
        await run_in_threadpool(actions.change_roles, who, name, [role], [])
    elif act == "revoke":
        await run_in_threadpool(actions.change_roles, who, name, [], [role])
    elif act in ("disable", "enable"):
        await run_in_threadpool(actions.set_disabled, who, name, act == "disable")
    elif act == "password":
        await run_in_threadpool(actions.set_password, who, name, str(form.get("password", ""))[:1024])
    else:
        raise InvalidInput("act must be one of grant, revoke, disable, enable, password")
    return back("/admin/users", f"user {name}: {act} done")


@router.get("/tokens", openapi_extra=roles())
def tokens(request: Request, who: Who, note: str | None = None) -> HTMLResponse:
    return render(request, "tokens.html", who, tokens=actions.tokens(who, None), issued=None, note=note)


@router.post("/tokens", openapi_extra=roles("admin"))
def issue_token(
    request: Request,
    who: Who,
    user: Annotated[str, Form(max_length=64)],
    name: Annotated[str, Form(max_length=100)] = "api",
    days: Annotated[int, Form(ge=1, le=366)] = 90,
) -> HTMLResponse:
    issued = actions.issue_token(who, user, name, days)
    return render(request, "tokens.html", who, tokens=actions.tokens(who, None), issued=issued, note=None)


@router.post("/tokens/{token_id}/revoke", openapi_extra=roles())
def revoke_token(who: Who, token_id: str) -> Response:
    actions.revoke_token(who, token_id)
    return back("/tokens", f"token {token_id[:8]} revoked")
