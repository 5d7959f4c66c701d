"""The Atelier server: the HTTP API (`/api/v1`, described at `/openapi.json`) and the web console.

One process holds the database, store and signing credentials; callers hold only their own
credential: an API token (`Authorization: Bearer atl_...`, the same tokens as the CLI) or a console
session (password sign-in, a cookie). Every route names the roles that may use it (`ROUTE_ROLES`,
checked here before the route runs) and the governance services check again. Errors are JSON
`{code, message}` for the API, a page for the console; a user mistake is always a 4xx.

`create_app(settings)` builds the application; `atelier serve` runs it on uvicorn.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from flows.runtime import Runtime
from flows.settings import Settings
from governance.errors import AtelierError, ExitCode, PermissionDenied, Unauthenticated
from governance.users import Identity
from server.sessions import COOKIE, LoginThrottle, SessionPolicy, Sessions, load_session_key

log = logging.getLogger(__name__)
HERE = Path(__file__).resolve().parent

# An AtelierError's exit code -> HTTP status. Every client mistake is a 4xx; what the operator must
# fix (a missing signer, an unmigrated database) is a 503.
STATUS = {
    ExitCode.REFUSED: 409,
    ExitCode.INVALID_INPUT: 400,
    ExitCode.NOT_FOUND: 404,
    ExitCode.PERMISSION_DENIED: 403,
    ExitCode.INVALID_STATE: 409,
    ExitCode.GOVERNANCE_CHECK_FAILED: 503,
    ExitCode.SCHEMA_NOT_READY: 503,
    ExitCode.SERVICE_UNAVAILABLE: 503,
    ExitCode.UNAUTHENTICATED: 401,
}

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; object-src 'none'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}
UNSAFE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}


@dataclass(frozen=True)
class Caller:
    """Who is calling, as established from their credential, and a Runtime whose events name it."""

    identity: Identity
    rt: Runtime
    via: str  # "token" | "session"
    csrf: str | None  # the session's CSRF token (console), for forms

    @property
    def user(self) -> str:
        return self.identity.user

    @property
    def roles(self) -> set[str]:
        return set(self.identity.roles)

    def has(self, *roles: str) -> bool:
        return bool(self.roles & set(roles))


class Server:
    """What the application holds: settings, the Runtime, the console's session key, the run launcher."""

    def __init__(self, settings: Settings):
        from server.launcher import RunLauncher, WebhookCourier

        self.settings = settings
        self.rt = Runtime(settings)
        self.sessions = Sessions(
            load_session_key(settings.session_key_path()),
            SessionPolicy(
                timedelta(minutes=settings.session_idle_minutes), timedelta(hours=settings.session_max_hours)
            ),
        )
        self.throttle = LoginThrottle(settings.login_max_failures)
        self.launcher = RunLauncher(self.rt)
        self.courier = WebhookCourier(self.rt)  # published, reviewed and withdrawn images, to downstream systems
        if settings.webhook_url:
            self.courier.poke()  # at start: what was left pending before a restart goes out, and retries follow
        self.templates = Jinja2Templates(directory=str(HERE / "templates"))

    def authenticate(self, request: Request, form_csrf: str | None) -> Caller:
        """The caller of this request (sync: database work). Bearer token first, else the session cookie;
        a state-changing request made with the cookie must carry the session's CSRF token."""
        from governance.users import authenticate

        header = request.headers.get("authorization")
        if header is not None:
            scheme, _, secret = header.partition(" ")
            if scheme.lower() != "bearer" or not secret.strip():
                raise Unauthenticated("the Authorization header must be `Bearer <token>`")
            with self.rt.sessions() as session:
                identity = authenticate(session, secret)
            return Caller(identity, self.rt.with_token(identity.token_id), "token", None)
        cookie = request.cookies.get(COOKIE)
        if not cookie:
            raise Unauthenticated("not signed in: sign in, or send `Authorization: Bearer <token>`")
        with self.rt.sessions.begin() as session:
            try:
                identity, row = self.sessions.resume(session, cookie)
            except Unauthenticated:
                session.commit()  # an expired session is ended for good
                raise
            session_id = row.id
        csrf = self.sessions.csrf_token(session_id)
        if request.method in UNSAFE_METHODS:
            given = request.headers.get("x-csrf-token") or form_csrf
            if not self.sessions.csrf_ok(session_id, given):
                raise PermissionDenied("the form's CSRF token is missing or wrong: reload the page and try again")
        return Caller(identity, self.rt.with_token(session_id), "session", csrf)


ANY = "any signed-in user"


def roles(*names: str) -> dict[str, Any]:
    """A route's `openapi_extra`: the roles that may call it (`x-roles`, also in /openapi.json); none
    given: any signed-in user. `caller` enforces it; the governance services check again."""
    return {"x-roles": list(names) or [ANY]}


def roles_of(route: Any) -> list[str] | None:
    extra = getattr(route, "openapi_extra", None) or {}
    wanted = extra.get("x-roles")
    return None if not wanted or wanted == [ANY] else list(wanted)


def server_of(request: Request) -> Server:
    server: Server = request.app.state.server
    return server


async def caller(request: Request) -> Caller:
    """FastAPI dependency: the authenticated caller, with the roles this route needs (ROUTE_ROLES)."""
    form_csrf = None
    if request.method in UNSAFE_METHODS and "authorization" not in request.headers:
        content_type = request.headers.get("content-type", "")
        if content_type.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
            form = await request.form()
            value = form.get("csrf_token")
            form_csrf = value if isinstance(value, str) else None
    server = server_of(request)
    who = await run_in_threadpool(server.authenticate, request, form_csrf)
    needed = roles_of(request.scope.get("route"))
    if needed and not who.has(*needed):
        raise PermissionDenied(
            f"{who.user} cannot do this: it needs the {' or '.join(sorted(needed))} role "
            f"({who.user} has: {', '.join(sorted(who.roles)) or 'none'})"
        )
    return who


def error_body(exc: AtelierError) -> tuple[int, dict[str, Any]]:
    from governance.batches import IntakeRejected
    from governance.text import escape_unsafe

    code = ExitCode(exc.exit_code) if exc.exit_code in ExitCode._value2member_map_ else ExitCode.REFUSED
    body: dict[str, Any] = {"code": code.name.lower(), "message": escape_unsafe(str(exc))}
    if isinstance(exc, IntakeRejected):
        body["failures"] = [f.__dict__ for f in exc.report.failures]
        return 422, body
    return STATUS.get(code, 409), body


def wants_page(request: Request) -> bool:
    return not request.url.path.startswith(("/api/", "/openapi.json"))


def create_app(settings: Settings | None = None) -> FastAPI:
    from flows.settings import get_settings
    from server import api, pages

    settings = settings or get_settings()
    server = Server(settings)
    app = FastAPI(
        title="Atelier",
        version="1",
        summary="Governed SDXL batch production: intake, four-eyes approval, generation, provenance, audit.",
        docs_url=None,  # Swagger UI and ReDoc load scripts from a CDN: the schema is at /openapi.json
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    app.state.server = server

    @app.exception_handler(AtelierError)
    async def atelier_error(request: Request, exc: AtelierError) -> Response:
        status, body = error_body(exc)
        if wants_page(request):
            if status == 401 and request.method == "GET":
                return RedirectResponse(f"/login?next={_safe_next(request)}", status_code=303)
            return pages.error_page(request, status, body)
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return JSONResponse(body, status_code=status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> Response:
        problems = []
        for e in exc.errors()[:5]:
            where = ".".join(str(p) for p in e.get("loc", ()) if p not in ("body", "query", "path", "form"))
            problems.append(f"{where or 'request'}: {e.get('msg', 'invalid')}")
        body = {"code": "invalid_input", "message": "; ".join(problems) or "invalid request"}
        if wants_page(request):
            return pages.error_page(request, 400, body)
        return JSONResponse(body, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(exc.status_code, "http_error")
        body = {"code": code, "message": str(exc.detail)}
        if wants_page(request):
            return pages.error_page(request, exc.status_code, body)
        return JSONResponse(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception) -> Response:
        from sqlalchemy.exc import OperationalError

        if isinstance(exc, OperationalError):
            body = {"code": "service_unavailable", "message": "the database cannot be reached; try again shortly"}
            status = 503
        else:  # a bug: logged with its traceback here, never shown to the caller
            log.exception("unhandled error on %s %s", request.method, request.url.path)
            body = {"code": "internal_error", "message": "internal error (logged on the server)"}
            status = 500
        if wants_page(request):
            return pages.error_page(request, status, body)
        return JSONResponse(body, status_code=status)

    app.include_router(api.router)
    pages.NOTE_KEY[0] = server.sessions.note_key()
    app.include_router(pages.router)
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    # a file at the upload limit, with room for the multipart framing and the form's other fields
    app.add_middleware(BodyLimit, limit=settings.server_upload_max_bytes + 1024 * 1024)
    app.add_middleware(SecurityHeaders)  # outermost: the 413 above carries the headers too
    return app


class BodyLimit:
    """Refuses a request body larger than `limit` bytes (413, `{code, message}`) before anything reads it
    whole: by its Content-Length at once, and a body sent without one as soon as it passes the limit.
    FastAPI parses a multipart upload before any dependency runs, so without this anyone, signed in or
    not, could have the server spool files of any size to disk; the routes still check the file itself
    against ATELIER_SERVER_UPLOAD_MAX_BYTES."""

    def __init__(self, app: Any, limit: int):
        self.app = app
        self.limit = limit
        self.message = f"the request body is larger than {limit} bytes: send a smaller file"

    async def _refuse(self, send: Any) -> None:
        body = json.dumps({"code": "too_large", "message": self.message}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await self._refuse(send)
            return
        received = 0

        async def counted() -> Any:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:  # answered by the app's handler: 413, `{code, message}`
                    raise HTTPException(413, self.message)
            return message

        await self.app(scope, counted, send)


class SecurityHeaders:
    """Adds SECURITY_HEADERS (and `Cache-Control: no-store` outside /static) to every answer, errors
    included; a plain ASGI middleware (no per-request task, unlike @app.middleware)."""

    def __init__(self, app: Any):
        self.app = app
        self._headers = [(k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = scope.get("path", "").startswith("/static/")

        async def with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                present = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in self._headers if k not in present]
                if not static and b"cache-control" not in present:
                    extra.append((b"cache-control", b"no-store"))
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, with_headers)


def _safe_next(request: Request) -> str:
    from urllib.parse import quote

    path = request.url.path
    if request.url.query:
        path += "?" + request.url.query
    return quote(path, safe="")
