"""The `atelier` command line, on cyclopts: typed parameters, validated choices, shell completion.

Every command renders a service's typed result (`flows.render`), as a table or, with `--json`, as the
result's `to_dict()`. User mistakes print one line and exit with their `ExitCode`, never a traceback.
The settings flags (`--data-dir`, `--database-url`, ...) are accepted before or after the command; who
acts is established from an API token (`ATELIER_TOKEN` or the file `atelier login` wrote), never claimed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from cyclopts import App, Group, Parameter, validators

from flows.render import (
    ProgressMonitor,
    RateWindow,
    location,
    print_json,
    print_json_line,
    print_kv,
    print_reproduction,
    print_table,
    print_verify_detail,
    progress_line,
    shown,
    verify_row,
)
from flows.runtime import Runtime
from governance.errors import AtelierError, ExitCode
from governance.errors import InvalidInput as InvalidInputError
from governance.errors import NotFound as NotFoundError
from governance.records import BatchStatus, ImageStatus, Purpose, Role, SafetyVerdict
from governance.users import Identity

if TYPE_CHECKING:
    from flows.settings import Settings
    from governance.compliance import SearchFilters
    from governance.runs import RunSummary
    from governance.users import IssuedToken, RolePolicy

__all__ = ["RateWindow", "app", "main", "progress_line", "run_batches"]  # RateWindow: from flows.render


# ---------------------------------------------------------------- the application

# Given by the launcher, never by the user: the Runtime built from the settings, and who is acting as
# established from the token (ATELIER_TOKEN or the file `atelier login` wrote); `maybe_me` is None when
# no token is configured at all (only the bootstrap of an empty database accepts that).
Runtime_ = Annotated[Runtime, Parameter(parse=False)]
Me = Annotated[Identity, Parameter(parse=False)]
MaybeMe = Annotated[Identity | None, Parameter(parse=False)]
Json = Annotated[bool, Parameter(name="--json", help="machine-readable output (JSON)")]

app = App(
    name="atelier",
    help="Governed SDXL batch production: intake, four-eyes approval, generation, safety, provenance, audit.",
    version_flags=[],
    default_parameter=Parameter(negative=()),  # no --no-json, --no-force
    exit_on_error=False,
    print_error=False,
    result_action="return_value",
)
db_app = app.command(App(name="db", help="database schema"))
users_app = app.command(App(name="users", help="users and roles"))
licences_app = app.command(App(name="licences", help="licence registry"))
batch_app = app.command(App(name="batch", help="prompt batches"))
keys_app = app.command(App(name="keys", help="C2PA signing and watermark keys"))
audit_app = app.command(App(name="audit", help="audit ledger"))
compliance_app = app.command(App(name="compliance", help="legal and compliance queries (auditors)"))


def _sub(*names: str) -> App:
    found = app
    for name in names:
        found = found[name]
    return found


SETTINGS = Group("Settings (each also an ATELIER_* environment variable)", sort_key=100)


@Parameter(name="*", group=SETTINGS)
@dataclass
class SettingsFlags:
    """The settings every command takes; None: from the environment (or the default)."""

    data_dir: Annotated[Path | None, Parameter(help="ATELIER_DATA_DIR (default ./.atelier)")] = None
    database_url: Annotated[str | None, Parameter(help="ATELIER_DATABASE_URL (default: SQLite in the data dir)")] = None
    store_url: Annotated[str | None, Parameter(help="ATELIER_STORE_URL: file:///path or s3://bucket/prefix")] = None
    s3_endpoint_url: Annotated[str | None, Parameter(help="ATELIER_S3_ENDPOINT_URL for S3-compatible servers")] = None
    base_model: Annotated[str | None, Parameter(help="ATELIER_BASE_MODEL: diffusers folder or hub id")] = None
    refiner_model: Annotated[str | None, Parameter(help="ATELIER_REFINER_MODEL: diffusers folder or hub id")] = None
    device: Annotated[str | None, Parameter(help="ATELIER_DEVICE: cpu, cuda, cuda:N")] = None
    token_file: Annotated[
        Path | None, Parameter(help="ATELIER_TOKEN_FILE: file holding your API token (mode 0600); see `login`")
    ] = None
    verbose: Annotated[bool, Parameter(name=["-v", "--verbose"], help="log progress (INFO)")] = False

    def settings(self) -> Settings:
        from flows.settings import get_settings

        return get_settings(
            data_dir=self.data_dir,
            database_url=self.database_url,
            store_url=self.store_url,
            s3_endpoint_url=self.s3_endpoint_url,
            base_model=self.base_model,
            refiner_model=self.refiner_model,
            device=self.device,
            token_file=self.token_file,
        )


_in_use: list[Settings] = []


class _StderrHandler(logging.Handler):
    """Logs to whatever sys.stderr is when a record is emitted (not the one at start-up), so a second
    `main()` in one process, or a thread logging late, never writes to a closed stream."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
        except Exception:  # noqa: BLE001 - logging's own contract: report, never raise
            self.handleError(record)


@app.meta.default
def _launcher(
    *tokens: Annotated[str, Parameter(show=False, allow_leading_hyphen=True)],
    flags: SettingsFlags | None = None,
) -> Any:
    """Reads the settings flags wherever they are, then runs the command with a Runtime built from them."""
    flags = flags or SettingsFlags()
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO if flags.verbose else logging.WARNING, handlers=[handler], force=True)
    command, bound, ignored = app.parse_args(tokens)
    if "rt" not in ignored:  # --help, completion: no settings needed
        return command(*bound.args, **bound.kwargs)
    settings = flags.settings()
    _in_use.append(settings)  # for naming the database when it cannot be reached
    rt = Runtime(settings)
    extra: dict[str, Any] = {"rt": rt}
    if "me" in ignored or "maybe_me" in ignored:
        rt.sessions  # noqa: B018 - an unreachable or unmigrated database is reported before credentials
        secret = read_token(settings)
        if secret is None and "maybe_me" in ignored:
            extra["maybe_me"] = None
        else:
            identity = _authenticate(rt, secret)
            extra["me" if "me" in ignored else "maybe_me"] = identity
            rt = extra["rt"] = rt.with_token(identity.token_id)  # its events name the token
    return command(*bound.args, **bound.kwargs, **extra)


def read_token(settings: Settings) -> str | None:
    """The token: ATELIER_TOKEN, else the file `atelier login` wrote (refused when others can read it)."""
    from governance.errors import Unauthenticated

    if settings.token is not None:
        return settings.token.get_secret_value()
    path = settings.token_path()
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise Unauthenticated(f"cannot read the token file {path}: {exc.strerror}") from None
    if mode & 0o077:
        raise Unauthenticated(f"the token file {path} can be read by others (mode {mode & 0o777:o}): chmod 600 {path}")
    return path.read_text(encoding="utf-8").strip() or None


def _authenticate(rt: Runtime, secret: str | None) -> Identity:
    from governance.errors import Unauthenticated
    from governance.users import authenticate

    if not secret:
        raise Unauthenticated("no credentials: set ATELIER_TOKEN or run `atelier login`")

    with rt.sessions() as session:
        return authenticate(session, secret)


# ---------------------------------------------------------------- db, users, licences, keys


@_sub("db").command(name="upgrade")
def db_upgrade(*, rt: Runtime_) -> int:
    """Apply pending database migrations."""
    from governance.db import make_engine, upgrade

    rt.settings.data_dir.mkdir(parents=True, exist_ok=True)
    before, after = upgrade(make_engine(rt.settings.database_url_resolved))
    print(f"database schema: {before or 'empty'} -> {after}")
    return ExitCode.OK


def _policy(rt: Runtime) -> RolePolicy:
    from governance.users import RolePolicy

    return RolePolicy(forbid_requester_approver=rt.settings.forbid_requester_approver)


def _print_secret(issued: IssuedToken) -> None:
    print(f"token {issued.token_id} ({issued.name}) for {issued.user}, expires {issued.expires_at:%Y-%m-%d}:")
    print(f"  {issued.secret}")
    print("shown once, stored only as a hash: keep it like a password (`atelier login` saves it, mode 0600)")


Roles = Annotated[list[Role], Parameter(name="--role", help="a role (repeat for several)")]


@_sub("users").command(name="add")
def users_add(name: str, /, *, role: Roles, json: Json = False, maybe_me: MaybeMe, rt: Runtime_) -> int:
    """Add a user with roles (admins). On an empty database: the first user, an admin, and its first
    token (printed once)."""
    from governance.users import add_user, is_empty, issue_token

    with rt.sessions.begin() as session:
        bootstrap = is_empty(session)
        user = add_user(session, None if maybe_me is None else maybe_me.user, name, role, _policy(rt))
        issued = issue_token(session, None, user.name, "bootstrap", bootstrap=True) if bootstrap else None
        roles = sorted(user.role_names)
    if json:
        print_json({"name": name, "roles": roles, "token": issued})
    else:
        print(f"user {name}: roles {', '.join(roles)}")
        if issued is not None:
            _print_secret(issued)
        else:
            print(f"next: an admin issues its token with `atelier tokens issue {name}`")
    sys.stdout.flush()  # the token is shown even if anchoring fails below
    anchor_decision(rt, maybe_me or name)
    return ExitCode.OK


@_sub("users").command(name="grant")
def users_grant(name: str, /, *, role: Roles, me: Me, rt: Runtime_) -> int:
    """Give a user more roles (admins)."""
    from governance.users import grant_roles

    with rt.sessions.begin() as session:
        roles = sorted(grant_roles(session, me.user, name, role, _policy(rt)).role_names)
    anchor_decision(rt, me)
    print(f"user {name}: roles {', '.join(roles)}")
    return ExitCode.OK


@_sub("users").command(name="revoke")
def users_revoke(name: str, /, *, role: Roles, me: Me, rt: Runtime_) -> int:
    """Take roles away from a user (admins)."""
    from governance.users import revoke_roles

    with rt.sessions.begin() as session:
        roles = sorted(revoke_roles(session, me.user, name, role).role_names)
    anchor_decision(rt, me)
    print(f"user {name}: roles {', '.join(roles) or 'none'}")
    return ExitCode.OK


def _set_disabled(rt: Runtime, me: Identity, name: str, disabled: bool) -> int:
    from governance.users import set_disabled

    with rt.sessions.begin() as session:
        set_disabled(session, me.user, name, disabled)
    anchor_decision(rt, me)
    print(f"user {name} {'disabled' if disabled else 'enabled'}")
    return ExitCode.OK


@_sub("users").command(name="disable")
def users_disable(name: str, /, *, me: Me, rt: Runtime_) -> int:
    """Disable a user: every token of theirs stops working at once (admins)."""
    return _set_disabled(rt, me, name, True)


@_sub("users").command(name="enable")
def users_enable(name: str, /, *, me: Me, rt: Runtime_) -> int:
    """Enable a disabled user again (admins)."""
    return _set_disabled(rt, me, name, False)


@_sub("users").command(name="list")
def users_list(*, json: Json = False, me: Me, rt: Runtime_) -> int:
    """List users, their roles and whether they can act."""
    from governance.users import list_users

    with rt.sessions() as session:
        users = list_users(session)
    if json:
        print_json(users)
        return ExitCode.OK
    rows = [{**u.to_dict(), "roles": ",".join(u.roles), "disabled": "yes" if u.disabled else ""} for u in users]
    print_table(rows, ["name", "roles", "disabled", "tokens_active", "has_password"])
    return ExitCode.OK


@_sub("users").command(name="password")
def users_password(name: str | None = None, /, *, me: Me, rt: Runtime_) -> int:
    """Set your console password (admins: anyone's), read from the terminal without echo, or from
    standard input (one line) when it is not a terminal."""
    import getpass

    from governance.errors import InvalidInput
    from governance.users import set_password

    if sys.stdin.isatty():
        password = getpass.getpass("new password: ")
        if getpass.getpass("again: ") != password:
            raise InvalidInput("the two passwords differ; nothing was changed")
    else:
        password = sys.stdin.readline().rstrip("\n")
    target = name or me.user
    with rt.sessions.begin() as session:
        set_password(session, me.user, target, password)
    anchor_decision(rt, me)
    print(f"password of {target} set")
    return ExitCode.OK


tokens_app = app.command(App(name="tokens", help="personal API tokens"))


@_sub("tokens").command(name="issue")
def tokens_issue(
    user: str,
    /,
    *,
    name: Annotated[str, Parameter(help="what the token is for, e.g. laptop or ci")] = "cli",
    days: Annotated[int, Parameter(validator=validators.Number(gte=1, lte=366), help="days until it expires")] = 90,
    json: Json = False,
    me: Me,
    rt: Runtime_,
) -> int:
    """Issue a personal token for a user (admins); printed once, stored only as a hash."""
    from governance.users import issue_token

    with rt.sessions.begin() as session:
        issued = issue_token(session, me.user, user, name, days)
    print_json(issued) if json else _print_secret(issued)
    sys.stdout.flush()  # the token is shown even if anchoring fails below
    anchor_decision(rt, me)
    return ExitCode.OK


@_sub("tokens").command(name="list")
def tokens_list(
    *,
    user: Annotated[str | None, Parameter(help="whose (admins: anyone's; default yours, or all for admins)")] = None,
    json: Json = False,
    me: Me,
    rt: Runtime_,
) -> int:
    """List tokens (never their secrets)."""
    from governance.users import list_tokens

    with rt.sessions() as session:
        tokens = list_tokens(session, me.user, user)
    if json:
        print_json(tokens)
        return ExitCode.OK
    print_table([t.to_dict() for t in tokens], ["token_id", "user", "name", "state", "expires_at", "created_at"])
    return ExitCode.OK


@_sub("tokens").command(name="revoke")
def tokens_revoke(token_id: str, /, *, me: Me, rt: Runtime_) -> int:
    """Revoke a token (yours; admins: anyone's); it stops working at once."""
    from governance.users import revoke_token

    with rt.sessions.begin() as session:
        token = revoke_token(session, me.user, token_id)
        print(f"token {token.id} ({token.name}) of {token.user.name} revoked")
    anchor_decision(rt, me)
    return ExitCode.OK


@app.command(name="login")
def login(*, rt: Runtime_) -> int:
    """Check a token and keep it for later commands in a file only you can read (ATELIER_TOKEN_FILE,
    default ~/.config/atelier/token). Reads the token from the terminal without echo, or from standard
    input."""
    import getpass

    secret = getpass.getpass("token: ") if sys.stdin.isatty() else sys.stdin.readline().strip()
    identity = _authenticate(rt, secret)
    path = rt.settings.token_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        os.fchmod(fh.fileno(), 0o600)  # also when the file was there with another mode
        fh.write(secret.strip() + "\n")
    print(f"signed in as {identity.user} ({', '.join(identity.roles)}); token kept in {path}")
    return ExitCode.OK


@app.command(name="logout")
def logout(*, rt: Runtime_) -> int:
    """Forget the token `atelier login` kept (it stays valid until revoked or expired)."""
    path = rt.settings.token_path()
    if path.exists():
        path.unlink()
        print(f"removed {path}")
    else:
        print("not signed in")
    return ExitCode.OK


@app.command(name="whoami")
def whoami(*, json: Json = False, me: Me, rt: Runtime_) -> int:
    """Who the configured token says you are."""
    if json:
        print_json(me)
    else:
        print(f"{me.user} ({', '.join(me.roles)}), token {me.token_id} ({me.token_name}), expires {me.expires_at}")
    return ExitCode.OK


@_sub("licences").command(name="register")
def licences_register(licence_id: str, /, *, me: Me, rt: Runtime_) -> int:
    """Register a known licence (admins)."""
    from governance.errors import NotFound
    from governance.licences import KNOWN_LICENCES, register_licence
    from governance.users import require_role

    with rt.sessions.begin() as session:
        require_role(session, me.user, "admin", "register licences")
        known = KNOWN_LICENCES.get(licence_id)
        if known is None:
            raise NotFound(f"unknown licence {licence_id!r}; known: {', '.join(sorted(KNOWN_LICENCES))}")
        lic = register_licence(session, me.user, known)
        print(f"licence {lic.id}: {lic.name} (text sha256 {lic.text_sha256})")
    return ExitCode.OK


@_sub("keys").command(name="init")
def keys_init(
    *,
    force: Annotated[
        bool, Parameter(help="make new development keys (refused once audit anchors exist: use `keys rotate`)")
    ] = False,
    rt: Runtime_,
) -> int:
    """Create a local test CA, C2PA and checkpoint signer, audit key and watermark key (development
    only, NOT FOR PRODUCTION). Comes first: every act after it is an authenticated audit event."""
    from governance.credentials import init_test_ca
    from governance.watermark import ensure_development_key

    with rt.sessions() if force else contextlib.nullcontext() as session:  # --force: are there anchors?
        paths = init_test_ca(
            rt.settings.keys_dir, force=force, audit_key_file=rt.settings.audit_key_path(), session=session
        )
    print(f"C2PA test signer (NOT FOR PRODUCTION): {paths.chain}")
    print(f"private key: {paths.key}")
    print(f"trust anchor (test CA): {paths.trust_anchors}")
    print(f"audit key (development, NOT FOR PRODUCTION): {rt.settings.audit_key_path()}")
    webhook = rt.settings.webhook_secret_path()
    if not webhook.exists():
        import secrets as _secrets

        webhook.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(webhook, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.write(_secrets.token_hex(32) + "\n")
    print(f"webhook secret (share it with the receivers; NOT FOR PRODUCTION): {webhook}")
    if not rt.settings.watermark_key_callback:
        ring = ensure_development_key(rt.settings.watermark_key_path(), rotate=force)
        print(
            f"watermark key (development, NOT FOR PRODUCTION): {rt.settings.watermark_key_path()} "
            f"(current {ring[0].key_id}, {len(ring) - 1} earlier)"
        )
    return ExitCode.OK


@_sub("keys").command(name="rotate")
def keys_rotate(
    *,
    chain: Annotated[Path | None, Parameter(help="the new signer's PEM chain (default: a new development one)")] = None,
    key: Annotated[Path | None, Parameter(help="the new signer's PEM private key")] = None,
    audit_key: Annotated[
        bool, Parameter(help="also start a new development audit key (the old one still verifies)")
    ] = False,
    me: Me,
    rt: Runtime_,
) -> int:
    """Replace the checkpoint (and C2PA) signer, keeping the old certificate in the ring so earlier
    anchors and manifests still verify (admins); the rotation is audited and anchored."""
    from governance.audit import ensure_development_audit_key
    from governance.ledger import rotate_checkpoint_keys

    if (chain is None) != (key is None):
        from governance.errors import InvalidInput

        raise InvalidInput("give both chain and key of the new signer, or neither (a new development signer)")
    with rt.sessions.begin() as session:
        rotated = rotate_checkpoint_keys(
            session,
            me.user,
            rt.settings.keys_dir,
            new_chain_pem=chain.read_bytes() if chain else None,
            new_key_pem=key.read_bytes() if key else None,
        )
    if audit_key:
        ensure_development_audit_key(rt.settings.audit_key_path(), rotate=True)
    anchor_decision(rt, me)
    print(f"checkpoint signer rotated: {rotated.ring_size} certificates in the ring, earlier anchors still verify")
    return ExitCode.OK


# ---------------------------------------------------------------- batches


def _print_intake_failures(exc: Any, json: bool) -> None:
    if json:
        print_json({"error": str(exc), "failures": [f.__dict__ for f in exc.report.failures]})
    else:
        print(f"error: {shown(exc, one_line=False)}", file=sys.stderr)
        print(shown(exc.report.format_failures(), one_line=False), file=sys.stderr)


Pipeline = Annotated[
    str | None,
    Parameter(
        help="pipeline configuration(s) of rows whose `pipeline` cell is empty: base, base+refiner, or several "
        "comma-separated to compare them on the same seeds (default base+refiner; ATELIER_PIPELINES lists them)"
    ),
]


@_sub("batch").command(name="submit")
def batch_submit(
    file: Annotated[Path, Parameter(help="CSV, JSON lines (.jsonl) or Parquet")],
    /,
    *,
    purpose: Purpose,
    use_category: Annotated[
        str,
        Parameter(
            help="declared use of the images, e.g. product-catalogue, marketing-campaign, editorial; "
            "refused when the models' licence prohibits it"
        ),
    ] = "general",
    review: Annotated[
        bool,
        Parameter(help="a reviewer accepts each image before it is published (always for ATELIER_REVIEW_PURPOSES)"),
    ] = False,
    pipeline: Pipeline = None,
    json: Json = False,
    me: Me,
    rt: Runtime_,
) -> int:
    """Validate a prompt file and submit it as a batch: every failing row and rule is listed, nothing is stored."""
    from governance.batches import IntakeRejected, submit_batch

    try:
        with rt.sessions.begin() as session:
            batch = submit_batch(
                session,
                me.user,
                file,
                purpose,
                use_category=use_category,
                licence_ids=[rt.settings.model_licence],
                limits=rt.settings.intake_limits(),
                policy=rt.settings.load_prompt_policy(),
                review_required=review or str(purpose) in rt.settings.review_purposes,
                pipelines=rt.settings.load_pipelines(),
                default_pipeline=pipeline,
            )
            batch_id, content = batch.id, batch.content_sha256
    except IntakeRejected as exc:
        _print_intake_failures(exc, json)
        return exc.exit_code
    if json:
        print_json({"batch_id": batch_id, "content_sha256": content})
    else:
        print(f"batch {batch_id} submitted (content sha256 {content})")
        print(f"next: an approver reviews it (`atelier batch show {batch_id}`) and approves that content")
    return ExitCode.OK


@_sub("batch").command(name="edit")
def batch_edit(batch_id: str, file: Path, /, *, pipeline: Pipeline = None, me: Me, rt: Runtime_) -> int:
    """Replace a batch's prompts (the requester); voids its approval."""
    from governance.batches import IntakeRejected, edit_batch

    try:
        with rt.sessions.begin() as session:
            batch = edit_batch(
                session,
                me.user,
                batch_id,
                file,
                rt.settings.intake_limits(),
                rt.settings.load_prompt_policy(),
                rt.settings.load_pipelines(),
                pipeline,
            )
            print(f"batch {batch.id} edited (content sha256 {batch.content_sha256}); it needs a new approval")
    except IntakeRejected as exc:
        _print_intake_failures(exc, json=False)
        return exc.exit_code
    anchor_decision(rt, me)
    return ExitCode.OK


ContentHash = Annotated[
    str,
    Parameter(
        name="--content-sha256",
        help="the content hash `atelier batch show` displayed: the decision holds for exactly that content",
    ),
]


@_sub("batch").command(name="approve")
def batch_approve(
    batch_id: str,
    /,
    *,
    content_sha256: ContentHash,
    acknowledge_rejections: Annotated[
        bool, Parameter(help="approve content that was rejected before, having read each rejection in `batch show`")
    ] = False,
    acknowledge_flags: Annotated[
        bool, Parameter(help="approve a batch with prompt-policy flags, having read each flag in `batch show`")
    ] = False,
    json: Json = False,
    me: Me,
    rt: Runtime_,
) -> int:
    """Approve a batch (approvers; never its requester) for the exact content you reviewed."""
    from governance.approvals import approve_batch

    with rt.sessions.begin() as session:
        a = approve_batch(session, me.user, batch_id, content_sha256, acknowledge_rejections, acknowledge_flags)
        out = {"batch_id": a.batch_id, "approval_id": a.id, "content_sha256": a.content_sha256}
    anchor_decision(rt, me)
    print_json(out) if json else print(f"batch {out['batch_id']} approved for content {out['content_sha256']}")
    return ExitCode.OK


@_sub("batch").command(name="reject")
def batch_reject(batch_id: str, /, *, reason: str, content_sha256: ContentHash, me: Me, rt: Runtime_) -> int:
    """Reject a batch with a reason (approvers); the rejection sticks to that content."""
    from governance.approvals import reject_batch

    with rt.sessions.begin() as session:
        a = reject_batch(session, me.user, batch_id, reason, content_sha256)
        print(f"batch {a.batch_id} rejected: {shown(a.reason)}")
    anchor_decision(rt, me)
    return ExitCode.OK


@_sub("batch").command(name="list")
def batch_list(*, status: BatchStatus | None = None, json: Json = False, me: Me, rt: Runtime_) -> int:
    """List batches, oldest first."""
    from governance.batches import batch_summary, list_batches

    with rt.sessions() as session:
        summaries = [batch_summary(session, b) for b in list_batches(session, status)]
    if json:
        print_json(summaries)
        return ExitCode.OK
    columns = ["batch_id", "status", "purpose", "requested_by", "decided_by", "prompts"]
    columns += ["images_planned", "images_published", "images_quarantined"]
    print_table([s.to_dict() for s in summaries], columns)
    return ExitCode.OK


@_sub("batch").command(name="show")
def batch_show(batch_id: str, /, *, json: Json = False, me: Me, rt: Runtime_) -> int:
    """Show one batch: status, decisions, progress and every prompt row with every field."""
    from governance.batches import batch_detail, get_batch
    from governance.preference import require_not_blind
    from governance.users import get_user

    with rt.sessions() as session:
        batch = get_batch(session, batch_id)
        require_not_blind(get_user(session, me.user), batch, "show this batch")
        detail = batch_detail(session, batch)
    if json:
        print_json(detail)
        return ExitCode.OK
    head = detail.summary.to_dict()
    del head["progress"]
    print_kv(head)
    print(f"progress    {progress_line(detail.summary.full_progress())}")
    print()
    print(f"pipeline configurations (pinned from {shown(detail.pipelines_version or 'before configurations')}):")
    print_table(
        [{**c, "stages": "+".join(c["stages"])} for c in detail.pipelines.values()],
        ["name", "stages", "refiner_split", "scheduler", "dtype", "min_side", "max_side"],
    )
    print()
    columns = ["row_id", "pipeline", "seed", "width", "height", "steps", "guidance_scale", "refiner_split"]
    print_table(
        [
            {**p.to_dict(), "refiner_split": "-" if p.refiner_split is None else p.refiner_split}
            for p in detail.prompts_detail
        ],
        [*columns, "num_images", "ref", "prompt", "negative_prompt"],
    )
    summary = detail.summary
    if detail.flags:
        print(f"\nprompt-policy flags ({detail.screening_policy}): an approver acknowledges each")
        print_table([f.to_dict() for f in detail.flags], ["row", "row_id", "column", "rule", "category", "matched"])
    if detail.decisions_on_content:
        print("\ndecisions on this exact content (this batch and others):")
        rows = [{**d.to_dict(), "voided": "yes" if d.voided else ""} for d in detail.decisions_on_content]
        print_table(rows, ["decision", "decided_by", "decided_at", "batch_id", "voided", "reason"])
    if summary.status == "submitted":
        ack = " --acknowledge-rejections" if any(d.decision == "rejected" for d in detail.decisions_on_content) else ""
        ack += " --acknowledge-flags" if detail.flags else ""
        print(
            f"\nto approve exactly this content: atelier batch approve {summary.batch_id} "
            f"--content-sha256 {summary.content_sha256}{ack}"
        )
    return ExitCode.OK


# ---------------------------------------------------------------- output review

review_app = app.command(App(name="review", help="output review: reviewers accept or reject images before publishing"))
Images = Annotated[list[str] | None, Parameter(help="image ids (or give --batch: all its images waiting)")]
OneBatch = Annotated[str | None, Parameter(help="every image of this batch that waits for review")]


@_sub("review").command(name="list")
def review_list(*, batch: OneBatch = None, json: Json = False, me: Me, rt: Runtime_) -> int:
    """Images waiting for review, oldest first (reviewers, auditors, admins)."""
    from governance.review import note_shown, waiting
    from governance.users import require_any_role

    with rt.sessions.begin() as session:
        viewer = require_any_role(session, me.user, ("reviewer", "auditor", "admin"), "list images waiting for review")
        items = waiting(session, batch, viewer_id=viewer.id)
        note_shown(session, viewer, items)
    if json:
        print_json(items)
        return ExitCode.OK
    print_table([i.to_dict() for i in items], ["image_id", "batch_id", "row_id", "ref", "requested_by", "prompt"])
    return ExitCode.OK


@_sub("review").command(name="accept")
def review_accept(images: Images = None, /, *, batch: OneBatch = None, me: Me, rt: Runtime_) -> int:
    """Accept images (reviewers; never the batch's requester): they are published."""
    from governance.review import accept

    with rt.sessions.begin() as session:
        done = accept(session, me.user, rt.store, images, batch)
    anchor_decision(rt, me)
    print(f"{len(done)} image(s) accepted and published")
    deliver_webhooks(rt)
    return ExitCode.OK


@_sub("review").command(name="reject")
def review_reject(images: Images = None, /, *, reason: str, batch: OneBatch = None, me: Me, rt: Runtime_) -> int:
    """Reject images with a reason (reviewers; never the batch's requester): they are never published."""
    from governance.review import reject

    with rt.sessions.begin() as session:
        done = reject(session, me.user, reason, images, batch)
    anchor_decision(rt, me)
    print(f"{len(done)} image(s) rejected: {shown(reason)}")
    deliver_webhooks(rt)
    return ExitCode.OK


# ---------------------------------------------------------------- withdrawal

image_app = app.command(App(name="image", help="published images: withdraw (recall, takedown)"))
WHAT = Group("What to withdraw (exactly one)", validator=validators.LimitedChoice(0, 1))


@_sub("image").command(name="withdraw")
def image_withdraw(
    images: Annotated[list[str] | None, Parameter(help="image ids")] = None,
    /,
    *,
    reason: Annotated[str, Parameter(help="why (recorded, shown by trace and verify)")],
    impact_of: Annotated[
        str | None, Parameter(group=WHAT, help="every published image of this model version (id or SHA-256)")
    ] = None,
    licence: Annotated[str | None, Parameter(group=WHAT, help="every published image under this licence")] = None,
    json: Json = False,
    me: Me,
    rt: Runtime_,
) -> int:
    """Take published images down (auditors, admins): removed from the publish location, kept as
    evidence, provenance marked, record withdrawn; idempotent; never republished. An image under a
    legal hold refuses a withdrawal by id (exit 5, nothing changes); by --impact-of or --licence the
    held images are left and listed, the others withdrawn, and the exit code is 5."""
    from governance.withdraw import withdraw

    with rt.sessions.begin() as session:
        done = withdraw(session, me.user, rt.store, reason, images, impact_of, licence)
    anchor_decision(rt, me)
    if json:
        print_json(done)
    else:
        print(
            f"{len(done.withdrawn)} image(s) withdrawn"
            + (f", {len(done.already)} already were" if done.already else "")
        )
    deliver_webhooks(rt)
    if done.held:
        print(
            f"{len(done.held)} image(s) kept under legal hold, not withdrawn: {', '.join(done.held[:20])}"
            + (" ..." if len(done.held) > 20 else "")
            + " (`atelier hold list`)",
            file=sys.stderr,
        )
        return ExitCode.INVALID_STATE
    return ExitCode.OK


# ---------------------------------------------------------------- the catalogue

catalogue_app = app.command(
    App(name="catalogue", help="product feeds, prompt templates, standing approvals, one image set per SKU")
)
template_app = catalogue_app.command(App(name="template", help="versioned prompt templates"))


@_sub("catalogue").command(name="import")
def catalogue_import(
    feed: Annotated[Path, Parameter(help="the PIM export: CSV, JSON lines or Parquet with sku, title, category")],
    /,
    *,
    json: Json = False,
    me: Me,
    rt: Runtime_,
) -> int:
    """Import a product feed (requesters): validated like a batch; says what changed per SKU."""
    from governance.batches import IntakeRejected
    from governance.catalogue import import_feed

    try:
        with rt.sessions.begin() as session:
            result = import_feed(session, me.user, feed)
    except IntakeRejected as exc:
        _print_intake_failures(exc, json)
        return exc.exit_code
    if json:
        print_json(result.counts | {"import_id": result.import_id, "content_sha256": result.content_sha256})
        return ExitCode.OK
    c = result.counts
    print(
        ("identical to the last import: nothing changed; " if result.identical else f"import {result.import_id}: ")
        + f"{c['new']} new, {c['changed']} changed, {c['removed']} removed, {c['unchanged']} unchanged SKU(s)"
    )
    return ExitCode.OK


@_sub("catalogue", "template").command(name="add")
def template_add(
    file: Annotated[Path, Parameter(help="JSON: name, body, negative, params, match")],
    /,
    *,
    json: Json = False,
    me: Me,
    rt: Runtime_,
) -> int:
    """Add a template's next version (requesters); unchanged content adds nothing."""
    import json as _json

    from governance.catalogue import add_template
    from governance.users import require_role

    with rt.sessions() as session:  # who may, before what the file says
        require_role(session, me.user, "requester", "add prompt templates")
    try:
        spec = _json.loads(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InvalidInputError(f"{file}: cannot read it ({exc.strerror})") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"{file}: not a JSON template ({exc})") from None
    with rt.sessions.begin() as session:
        view, new = add_template(session, me.user, spec)
    if json:
        print_json(view)
        return ExitCode.OK
    print(f"template {view.template_id} {'added' if new else 'unchanged'}; sha256 {view.sha256}")
    return ExitCode.OK


@_sub("catalogue", "template").command(name="list")
def template_list(*, json: Json = False, me: Me, rt: Runtime_) -> int:
    """Every template version."""
    from governance.catalogue import standing_approvals, templates

    with rt.sessions() as session:
        found, standing = templates(session), standing_approvals(session)
    if json:
        print_json({"templates": found, "standing_approvals": standing})
        return ExitCode.OK
    print_table([t.to_dict() for t in found], ["template_id", "author", "sha256", "match", "created_at"])
    if standing:
        print("\nstanding approvals:")
        rows = [{**x.to_dict(), "categories": ",".join(x.categories)} for x in standing]
        print_table(rows, ["standing_approval_id", "template_id", "approver", "categories", "max_images",
                           "valid_until", "revoked_at"])  # fmt: skip
    return ExitCode.OK


@_sub("catalogue", "template").command(name="show")
def template_show(template: Annotated[str, Parameter(help="NAME or NAME@VERSION")], /, *, json: Json = False,
                  me: Me, rt: Runtime_) -> int:  # fmt: skip
    """One template version in full: what an approver reviews."""
    from governance.catalogue import TemplateView, get_template

    with rt.sessions() as session:
        view = TemplateView.of(get_template(session, template))
    if json:
        print_json(view)
        return ExitCode.OK
    head = view.to_dict()
    body = head.pop("body")
    print_kv(head)
    print("\nbody:")
    print(shown(body))
    print(
        f"\nto approve exactly this version: atelier catalogue approve {view.template_id} "
        f"--template-sha256 {view.sha256} --categories ... --max-images N --days D"
    )
    return ExitCode.OK


@_sub("catalogue").command(name="preview")
def catalogue_preview(
    *,
    template: Annotated[str | None, Parameter(help="NAME or NAME@VERSION (default: each SKU's own)")] = None,
    limit: Annotated[int, Parameter(validator=validators.Number(gte=1, lte=10_000))] = 20,
    json: Json = False,
    me: Me,
    rt: Runtime_,
) -> int:
    """Render prompts for current products, without GPU time."""
    from governance.catalogue import preview

    with rt.sessions() as session:
        rows = preview(session, template, limit)
    if json:
        print_json(rows)
        return ExitCode.OK
    print_table([r.to_dict() for r in rows], ["sku", "template_id", "seed", "variants", "prompt", "error"])
    return ExitCode.OK


@_sub("catalogue").command(name="approve")
def catalogue_approve(
    template: Annotated[str, Parameter(help="NAME@VERSION")],
    /,
    *,
    template_sha256: Annotated[str, Parameter(help="the hash you reviewed (`catalogue template show`)")],
    categories: Annotated[str, Parameter(help="comma-separated categories in scope")],
    max_images: Annotated[int, Parameter(help="at most this many images per run")],
    days: Annotated[int, Parameter(help="valid for this many days")] = 90,
    json: Json = False,
    me: Me,
    rt: Runtime_,
) -> int:
    """A standing approval of a template version for a scope (approvers; never its author)."""
    from governance.catalogue import approve_template

    with rt.sessions.begin() as session:
        view = approve_template(session, me.user, template, template_sha256, categories.split(","), max_images, days)
    anchor_decision(rt, me)
    if json:
        print_json(view)
        return ExitCode.OK
    print(
        f"standing approval {view.standing_approval_id}: {view.template_id} for {', '.join(view.categories)}, "
        f"at most {view.max_images} images per run, until {view.valid_until}"
    )
    return ExitCode.OK


@_sub("catalogue").command(name="revoke")
def catalogue_revoke(
    standing_approval: Annotated[str, Parameter(help="standing approval id")],
    /,
    *,
    reason: str,
    me: Me,
    rt: Runtime_,
) -> int:
    """Revoke a standing approval (approvers, admins): later batches wait for an approver again."""
    from governance.catalogue import revoke_standing

    with rt.sessions.begin() as session:
        view = revoke_standing(session, me.user, standing_approval, reason)
    anchor_decision(rt, me)
    print(f"standing approval {view.standing_approval_id} revoked at {view.revoked_at}")
    return ExitCode.OK


@_sub("catalogue").command(name="refresh")
def catalogue_refresh(
    *,
    feed: Annotated[Path | None, Parameter(help="import this feed first (default ATELIER_CATALOGUE_FEED)")] = None,
    json: Json = False,
    me: Me,
    rt: Runtime_,
) -> int:
    """Import, diff, render, screen, make batches and run those a standing approval covers, as the
    scheduled Prefect flow does (a user with the requester and operator roles)."""
    from flows.catalogue import catalogue_refresh as refresh_flow
    from governance.users import require_role

    with rt.sessions() as session:  # clear refusals before Prefect starts
        require_role(session, me.user, "requester", "refresh the catalogue")
        require_role(session, me.user, "operator", "refresh the catalogue")
        if rt.settings.catalogue_withdraw_retired:
            require_role(session, me.user, "auditor", "withdraw retired catalogue images")
    preflight(rt)
    with flows_in_process(rt):
        report = refresh_flow(actor=me.user, feed=str(feed) if feed else None)
    deliver_webhooks(rt)
    if json:
        print_json(report)
        return ExitCode.OK
    if report.imported is not None:
        c = report.imported.counts
        print(f"feed: {c['new']} new, {c['changed']} changed, {c['removed']} removed, {c['unchanged']} unchanged")
    print(f"{report.unchanged} SKU(s) unchanged; {len(report.skipped)} skipped")
    print_table([b.to_dict() for b in report.batches], ["batch_id", "status", "standing_approval_id", "skus", "images"])
    for s in report.skipped:
        print(f"skipped {s.sku}: {s.reason}", file=sys.stderr)
    st = report.settled
    print(f"settled: {st.current} current, {st.superseded} superseded, {st.removed} removed, {st.failed} failed")
    return ExitCode.OK


@_sub("catalogue").command(name="images")
def catalogue_images(
    *,
    sku: Annotated[str, Parameter(help="the SKU")],
    json: Json = False,
    me: Me,
    rt: Runtime_,
) -> int:
    """A SKU's image sets, newest first: which is current, which superseded."""
    from governance.catalogue import sku_sets

    with rt.sessions() as session:
        sets = sku_sets(session, sku, rt.store)
    if not sets:
        raise NotFoundError(f"no images made for SKU {sku!r}")
    if json:
        print_json(sets)
        return ExitCode.OK
    rows = [
        {"state": st.state, "batch_id": st.batch_id, "template_id": st.template_id, "image_id": i.image_id,
         "variant": i.variant, "status": i.status, "location": i.location}
        for st in sets for i in st.images
    ]  # fmt: skip
    print_table(rows, ["state", "template_id", "image_id", "variant", "status", "location"])
    return ExitCode.OK


# ---------------------------------------------------------------- legal holds and retention

hold_app = app.command(App(name="hold", help="legal holds: images kept from deletion while a matter is open"))
HOLD_ON = Group("What to hold (exactly one)", validator=validators.LimitedChoice(0, 1))
HOLD_COLUMNS = ["hold_id", "scope", "target_id", "reason", "placed_by", "placed_at", "released_by", "released_at"]


@_sub("hold").command(name="place")
def hold_place(
    images: Annotated[list[str] | None, Parameter(help="image ids (or give --batch)")] = None,
    /,
    *,
    batch: Annotated[str | None, Parameter(group=HOLD_ON, help="the batch: its images now and later")] = None,
    reason: Annotated[str, Parameter(help="the legal matter (recorded, shown by trace)")],
    json: Json = False,
    me: Me,
    rt: Runtime_,
) -> int:
    """Place a legal hold (auditors, admins): withdrawal and retention cannot delete the images' files;
    in a bucket with S3 Object Lock, their objects carry an Object Lock legal hold too."""
    from governance.holds import place

    with rt.sessions.begin() as session:
        act = place(session, me.user, rt.store, reason, images, batch)
    anchor_decision(rt, me)
    if json:
        print_json(act)
        return ExitCode.OK
    enforced = "database and S3 Object Lock" if act.store_locked else "database (the store has no Object Lock)"
    print(
        f"{len(act.holds)} hold(s) placed"
        + (f", {len(act.already)} already in place" if act.already else "")
        + f", covering {act.images} image(s); enforced by: {enforced}"
    )
    for hold in act.holds:
        print(f"  {hold.hold_id}  {hold.scope} {hold.target_id}")
    return ExitCode.OK


@_sub("hold").command(name="release")
def hold_release(
    holds: Annotated[list[str], Parameter(help="hold ids (`atelier hold list`)")],
    /,
    *,
    reason: Annotated[str, Parameter(help="why the hold ends (recorded)")],
    json: Json = False,
    me: Me,
    rt: Runtime_,
) -> int:
    """Release legal holds (auditors, admins); an image another active hold covers stays held."""
    from governance.holds import release

    with rt.sessions.begin() as session:
        act = release(session, me.user, rt.store, holds, reason)
    anchor_decision(rt, me)
    if json:
        print_json(act)
        return ExitCode.OK
    print(
        f"{len(act.holds)} hold(s) released"
        + (f", {len(act.already)} already were" if act.already else "")
        + f", covering {act.images} image(s)"
    )
    return ExitCode.OK


@_sub("hold").command(name="list")
def hold_list(
    *,
    all: Annotated[bool, Parameter(name="--all", help="released holds too")] = False,  # noqa: A002
    target: Annotated[str | None, Parameter(help="holds on this image or batch id")] = None,
    json: Json = False,
    me: Me,
    rt: Runtime_,
) -> int:
    """Legal holds, active ones by default (auditors, admins)."""
    from governance.holds import HOLDERS, list_holds
    from governance.users import require_any_role

    with rt.sessions() as session:
        require_any_role(session, me.user, HOLDERS, "list legal holds")
        holds = list_holds(session, all, target)
    if json:
        print_json(holds)
        return ExitCode.OK
    print_table([h.to_dict() for h in holds], HOLD_COLUMNS)
    return ExitCode.OK


retention_app = app.command(App(name="retention", help="retention: files of unpublished and withdrawn images expire"))


@_sub("retention").command(name="show")
def retention_show(*, json: Json = False, me: Me, rt: Runtime_) -> int:
    """The retention policy in force and what it would expire now, held images apart (auditors, admins)."""
    from flows.retention import run_retention

    report = run_retention(rt, me.user, dry_run=True)
    policy = rt.settings.load_retention_policy()
    if json:
        print_json({"rules": [r.to_dict() for r in policy.rules], **report.to_dict()})
        return ExitCode.OK
    print(f"policy {policy.version} (sha256 {policy.sha256[:16]}...) from {policy.path}")
    print_table([{**r.to_dict(), "purposes": ",".join(r.purposes)} for r in policy.rules],
                ["id", "status", "purposes", "delete_after_days"])  # fmt: skip
    print(f"\ndue now: {len(report.expired)} image(s), {len(report.held)} more kept by legal holds")
    print_table([d.to_dict() for d in report.expired], ["image_id", "status", "purpose", "rule", "since", "days"])
    return ExitCode.OK


@_sub("retention").command(name="apply")
def retention_apply(
    *,
    dry_run: Annotated[bool, Parameter(help="list what is due, change nothing")] = False,
    json: Json = False,
    me: Me,
    rt: Runtime_,
) -> int:
    """Apply the retention policy now, as the scheduled Prefect flow does (auditors, admins): the files of
    due images deleted (every version), records marked, each an audit event; held images skipped."""
    from flows.retention import apply_retention, run_retention
    from governance.retention import require_runner

    with rt.sessions() as session:
        require_runner(session, me.user)  # a clear refusal before Prefect starts
    rt.settings.load_retention_policy()
    if dry_run:
        report = run_retention(rt, me.user, dry_run=True)
    else:
        with flows_in_process(rt):
            report = apply_retention(actor=me.user)
    if json:
        print_json(report)
        return ExitCode.OK
    verb = "would expire" if dry_run else "expired"
    print(
        f"retention {report.policy}: {len(report.expired)} image(s) {verb}, {len(report.held)} kept by legal holds"
        + (f", {report.remaining} left for the next run" if report.remaining else "")
    )
    print_table([d.to_dict() for d in report.expired], ["image_id", "status", "purpose", "rule", "days"])
    for f in report.failed:
        print(f"not expired: image {f.image_id} ({f.rule}): {f.error}", file=sys.stderr)
    return ExitCode.GOVERNANCE_CHECK_FAILED if report.failed else ExitCode.OK


def deliver_webhooks(rt: Runtime, wait_up_to: float = 10.0) -> None:
    """After an act that told downstream systems something: send it now, retrying for a few seconds;
    what is still pending waits for `atelier webhooks deliver` (the act itself stands either way)."""
    try:
        done = rt.deliver_webhooks(wait_up_to)
    except AtelierError as exc:
        print(f"warning: webhooks not sent: {exc}", file=sys.stderr)
        return
    if done is not None and (done.retrying or done.failed):
        print(
            f"warning: webhooks: {done.delivered} delivered, {done.retrying} to retry (`atelier webhooks deliver`), "
            f"{done.failed} failed (`atelier webhooks list --status failed`)",
            file=sys.stderr,
        )


webhooks_app = app.command(App(name="webhooks", help="deliveries to downstream systems (ATELIER_WEBHOOK_URL)"))


@_sub("webhooks").command(name="deliver")
def webhooks_deliver(
    *,
    wait: Annotated[float, Parameter(validator=validators.Number(gte=0, lte=3600), help="keep retrying this long")] = 0,
    json: Json = False,
    me: Me,
    rt: Runtime_,
) -> int:
    """Send the webhook deliveries that are due, retrying with backoff for up to --wait seconds (operators, admins)."""
    from governance.errors import InvalidState
    from governance.users import require_any_role

    with rt.sessions() as session:
        require_any_role(session, me.user, ("operator", "admin"), "deliver webhooks")
    done = rt.deliver_webhooks(wait)
    if done is None:
        raise InvalidState("no webhook is configured: set ATELIER_WEBHOOK_URL")
    print_json(done) if json else print(f"{done.delivered} delivered, {done.retrying} to retry, {done.failed} failed")
    return ExitCode.OK


@_sub("webhooks").command(name="list")
def webhooks_list(
    *,
    status: Literal["pending", "delivered", "failed"] | None = None,
    json: Json = False,
    me: Me,
    rt: Runtime_,
) -> int:
    """Webhook deliveries, newest first (operators, auditors, admins)."""
    from governance.users import require_any_role
    from governance.webhooks import listing

    with rt.sessions() as session:
        require_any_role(session, me.user, ("operator", "auditor", "admin"), "list webhook deliveries")
        rows = listing(session, status)
    if json:
        print_json(rows)
        return ExitCode.OK
    print_table([r.to_dict() for r in rows], ["delivery_id", "event", "image_id", "status", "attempts", "last_error"])
    return ExitCode.OK


# ---------------------------------------------------------------- runs


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


@contextlib.contextmanager
def flows_in_process(rt: Runtime) -> Iterator[None]:
    """Run Prefect flows in this process with the CLI's settings. Without -v, Prefect's per-task lines are
    off. Prefect's ephemeral server migrates its own database on a first start: 20 s is not enough on a
    busy laptop (a configured value, environment or profile, wins). Its telemetry heartbeat is off: it
    raced the server's own SQLite migrations ("database is locked", a 70-line traceback) and has
    nothing to report from a governed pipeline anyway."""
    from prefect.settings import PREFECT_SERVER_ANALYTICS_ENABLED as ANALYTICS
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS as STARTUP
    from prefect.settings import temporary_settings

    from flows.runtime import using_settings

    if not logging.getLogger().isEnabledFor(logging.INFO):
        logging.getLogger("prefect").setLevel(logging.WARNING)
    with using_settings(rt.settings), temporary_settings({STARTUP: max(STARTUP.value(), 180), ANALYTICS: False}):
        yield


def run_batches(rt: Runtime, actor: str, batch_ids: list[str], progress: bool = False) -> list[RunSummary]:
    """Pre-flight each batch (clear refusals before Prefect starts), then run the flow for it."""
    from governance.approvals import require_runnable
    from governance.batches import get_batch
    from governance.pipelines import batch_configs, engine_needs
    from governance.users import require_role

    with rt.sessions() as session:
        require_role(session, actor, "operator", "run batches")
        batch_ids = [get_batch(session, batch_id).id for batch_id in batch_ids]  # prefixes -> full ids
        policy = rt.settings.load_prompt_policy()
        for batch_id in batch_ids:
            batch = get_batch(session, batch_id)
            require_runnable(batch, policy)
            # the models its configurations need are configured (a base-only worker has no refiner)
            rt.check_model_settings(engine_needs(list(batch_configs(batch.pipelines).values())).refiner)
    preflight(rt)
    from flows.produce import produce_batch  # Prefect, torch and diffusers: only once the run can go ahead

    results = []
    with flows_in_process(rt):
        for batch_id in batch_ids:
            with ProgressMonitor(rt, batch_id) if progress else contextlib.nullcontext():
                results.append(produce_batch(batch_id=batch_id, actor=actor, token_id=rt.token_id))
    return results


@app.command(name="run")
def run(
    *,
    batch: Annotated[str | None, Parameter(help="one batch id (default: every approved batch)")] = None,
    progress: Annotated[
        Literal["auto", "always", "never"], Parameter(help="a progress bar on stderr (auto: when it is a terminal)")
    ] = "auto",
    json: Json = False,
    me: Me,
    rt: Runtime_,
) -> int:
    """Run approved batches through the production flow (operators); re-running resumes."""
    from governance.batches import list_batches
    from governance.users import require_role

    with rt.sessions() as session:
        require_role(session, me.user, "operator", "run batches")
    if batch:
        ids = [batch]
    else:
        with rt.sessions() as session:
            ids = [b.id for b in list_batches(session, "approved")]
        if not ids:
            print("no approved batches waiting to run")
            return ExitCode.OK
    show = progress == "always" or (progress == "auto" and sys.stderr.isatty())
    results = run_batches(rt, me.user, ids, progress=show)
    deliver_webhooks(rt)
    if json:
        print_json(results)
    else:
        rows = [r.to_dict() for r in results]
        print_table(rows, ["batch_id", "run_id", "status", "published", "quarantined", "remaining"])
    return ExitCode.OK if all(r.completed for r in results) else ExitCode.RUN_INCOMPLETE


# ---------------------------------------------------------------- trace, verify, reproduce


@app.command(name="trace")
def trace(
    ref: Annotated[str, Parameter(help="image id, SHA-256, store key or a local image file")],
    /,
    *,
    json: Json = False,
    me: Me,
    rt: Runtime_,
) -> int:
    """Everything known about one image: prompt, batch, approval, run, models, licences, safety, audit."""
    from governance.preference import require_not_blind
    from governance.trace import find_image, trace_image
    from governance.users import get_user

    with rt.sessions() as session:
        image = find_image(session, ref)
        require_not_blind(get_user(session, me.user), image.prompt.batch, "trace this image")
        record = trace_image(session, image)
    if json:
        print_json(record)
        return ExitCode.OK
    head = record.to_dict()
    for nested in ("audit", "models", "legal_holds"):
        del head[nested]
    print_kv(head)
    if record.legal_holds:
        print("\nlegal holds:")
        print_table([h.to_dict() for h in record.legal_holds], HOLD_COLUMNS)
    print("\nmodels:")
    print_table([m.to_dict() for m in record.models], ["role", "name", "sha256", "licence"])
    print("\naudit:")
    print_table([e.to_dict() for e in record.audit], ["seq", "at", "actor", "action", "subject"])
    return ExitCode.OK


@app.command(name="verify")
def verify(
    files: Annotated[list[Path], Parameter(help="image files or folders (every file under them)")],
    /,
    *,
    json: Json = False,
    me: Me,
    rt: Runtime_,
) -> int:
    """Did Atelier make these files, and were they altered? Exit 0 original, 10 derived, 11 tampered,
    12 unknown, 2 a file that cannot be checked; several files: the most serious of those."""
    from governance.errors import InvalidInput
    from governance.preference import check_verify_result
    from governance.verify import VerifyLimits, exit_code_for, expand_paths, verify_file, verify_files

    _chain, _key, anchors = rt.settings.c2pa_paths()
    anchors_pem = anchors.read_bytes() if anchors.exists() else None
    limits = VerifyLimits(rt.settings.verify_max_pixels, rt.settings.verify_max_file_bytes)
    try:
        keys = rt.watermark_keys
    except AtelierError as exc:  # the other signals still count; say plainly that this one cannot
        print(f"warning: watermarks not checked: {exc}", file=sys.stderr)
        keys = []
    paths = list(files)
    if len(paths) == 1 and not paths[0].is_dir():
        with rt.sessions() as session:
            one = verify_file(session, paths[0], anchors_pem, keys, limits)  # InvalidInput: one line, exit 2
            check_verify_result(session, me.user, one)
        print_json(one) if json else print_verify_detail(one)
        return one.exit_code
    expanded = expand_paths(paths)
    if not expanded:
        raise InvalidInput(f"no files to verify in {', '.join(map(str, paths))}")
    verdicts, rows = [], []
    with rt.sessions() as session:
        for result in verify_files(session, expanded, anchors_pem, keys, limits):
            check_verify_result(session, me.user, result)
            verdicts.append(result.verdict)
            if json:
                print_json_line(result)
            else:
                rows.append(verify_row(result))
    if not json:
        print_table(rows, ["file", "verdict", "image", "identified_by"])
        counts = {v: verdicts.count(v) for v in dict.fromkeys(verdicts)}
        print(f"\n{len(verdicts)} files: " + ", ".join(f"{n} {v}" for v, n in counts.items()))
    return exit_code_for(verdicts)


@app.command(name="reproduce")
def reproduce(image_id: str, /, *, json: Json = False, me: Me, rt: Runtime_) -> int:
    """Regenerate a published image from its record and compare its pixels (operators, auditors,
    admins; exit 0 identical or within tolerance, 13 different)."""
    from flows.reproduce import reproduce_image
    from governance.users import require_any_role

    with rt.sessions() as session:  # it spends GPU time: the people who answer for the record and the pool
        require_any_role(session, me.user, ("operator", "auditor", "admin"), "reproduce images")
    out = reproduce_image(rt, image_id)
    print_json(out) if json else print_reproduction(out)
    return ExitCode.OK if out.matches else ExitCode.NOT_REPRODUCED


# ---------------------------------------------------------------- audit


@_sub("audit").command(name="verify")
def audit_verify(*, json: Json = False, me: Me, rt: Runtime_) -> int:
    """Check the hash chain, every signed anchor and every published object."""
    from governance.ledger import verify_ledger

    with rt.sessions() as session:
        report = verify_ledger(session, rt.store, rt.anchor_store, rt.signing_certificate())
    if json:
        print_json(report.to_dict())
    elif report.ok:
        chain = report.chain
        print(
            f"audit ledger intact: {chain['events']} events, head {chain['head_seq']} {chain['head_hash']}; "
            f"{report.records_checked} records, {report.anchors_checked} anchors and {report.objects_checked} "
            "published objects checked"
        )
    else:
        print(f"audit ledger BROKEN: {report.problems[0]}", file=sys.stderr)
        for more in report.problems[1:6]:
            print(f"  also: {more}", file=sys.stderr)
    for warning in report.warnings[:3]:
        print(f"warning: {warning}", file=sys.stderr)
    return ExitCode.OK if report.ok else ExitCode.AUDIT_FAILED


@_sub("audit").command(name="anchor")
def audit_anchor(*, me: Me, rt: Runtime_) -> int:
    """Write a signed checkpoint of the chain head to WORM storage now (operators; every decision and
    every run also does)."""
    from governance.users import require_role

    with rt.sessions() as session:
        actor = require_role(session, me.user, "operator", "anchor the audit chain").name
    anchor = rt.anchor(actor)
    if anchor is None:
        print("nothing new to anchor")
        return ExitCode.OK
    print(
        f"anchored event {anchor.seq} ({anchor.head_hash}) at {rt.anchor_store.location(anchor.key)}"
        + (f", retained until {anchor.retain_until}" if anchor.retain_until else " (no Object Lock here)")
    )
    return ExitCode.OK


@_sub("audit").command(name="baseline")
def audit_baseline(*, me: Me, rt: Runtime_) -> int:
    """Bind, once, the records written before events were authenticated (admins): what they are now is
    what later checks hold them to. Refused on a ledger authenticated from its first event."""
    from governance.ledger import baseline_records

    with rt.sessions.begin() as session:
        done = baseline_records(session, me.user)
    anchor_decision(rt, me)
    print(f"baseline: {done.total} records bound; events up to {done.legacy_until} predate authentication")
    return ExitCode.OK


def anchor_decision(rt: Runtime, me: Identity | str) -> None:
    """After a governance decision: anchor the chain head to WORM storage, so that removing the decision
    from the database (with everything it bound) cannot go unnoticed (docs/security.md, T2). The
    decision is committed already: a failure here says so, and how to anchor it later."""
    from governance.errors import GovernanceCheckFailed

    try:
        rt.anchor(me if isinstance(me, str) else me.user)
    except AtelierError as exc:
        raise GovernanceCheckFailed(
            f"recorded, but the audit chain could not be anchored ({exc}); `atelier audit anchor` once fixed"
        ) from None
    except Exception as exc:  # noqa: BLE001 - the store is down: the decision stands, the anchor waits
        raise GovernanceCheckFailed(
            f"recorded, but the audit chain could not be anchored ({_first_line(exc)}); "
            "`atelier audit anchor` once the store is back"
        ) from None


# ---------------------------------------------------------------- compliance

FILTERS = Group("Filters (combinable: every one given must match)", sort_key=50)


@Parameter(name="*", group=FILTERS)
@dataclass
class FilterFlags:
    prompt: Annotated[str | None, Parameter(help="text contained in the prompt (case-insensitive)")] = None
    requester: Annotated[str | None, Parameter(help="user who submitted the batch")] = None
    approver: Annotated[str | None, Parameter(help="user who approved the batch")] = None
    purpose: Purpose | None = None
    use_category: Annotated[str | None, Parameter(help="declared use category, e.g. product-catalogue")] = None
    model_version: Annotated[
        str | None, Parameter(help="model version id, weight SHA-256 (or 8+ hex prefix) or ROLE/SHA256")
    ] = None
    licence: Annotated[str | None, Parameter(help="licence id, e.g. creativeml-openrail++-m")] = None
    verdict: Annotated[SafetyVerdict | None, Parameter(help="safety verdict")] = None
    status: Annotated[ImageStatus | None, Parameter(help="image status")] = None
    since: Annotated[str | None, Parameter(help="created at or after: YYYY-MM-DD or ISO time (UTC unless given)")] = (
        None
    )
    until: Annotated[str | None, Parameter(help="created before; a date includes that whole day")] = None
    ref: Annotated[str | None, Parameter(help="external reference of the prompt row (SKU, campaign)")] = None

    def filters(self) -> SearchFilters:
        from governance.compliance import SearchFilters, parse_when

        return SearchFilters(
            prompt=self.prompt,
            requester=self.requester,
            approver=self.approver,
            purpose=self.purpose,
            use_category=self.use_category,
            model_version=self.model_version,
            licence=self.licence,
            verdict=self.verdict,
            status=self.status,
            ref=self.ref,
            since=parse_when(self.since, field="since") if self.since else None,
            until=parse_when(self.until, end=True, field="until") if self.until else None,
        )


Limit = Annotated[int, Parameter(validator=validators.Number(gte=0))]


@_sub("compliance").command(name="search")
def compliance_search(
    *,
    filters: FilterFlags | None = None,
    limit: Annotated[Limit, Parameter(help="at most this many, newest first (0: no limit)")] = 1000,
    json: Annotated[bool, Parameter(name="--json", help="the `atelier trace` record of each image")] = False,
    me: Me,
    rt: Runtime_,
) -> int:
    """Find images by prompt, people, purpose, use, model version, licence, verdict, dates, reference."""
    from governance.compliance import require_compliance_access, search_images
    from governance.trace import trace_images

    wanted = (filters or FilterFlags()).filters()
    with rt.sessions() as session:
        require_compliance_access(session, me.user, "search the records")
        result = search_images(session, wanted, limit or None)
        if json:
            print_json(trace_images(session, [r["image_id"] for r in result.images]))
    if result.truncated:
        print(
            f"note: more than {limit} images match; showing the newest {limit} (--limit 0 shows all)", file=sys.stderr
        )
    if not json:
        columns = ["image_id", "status", "created_at", "ref", "requested_by", "use_category", "safety_verdict"]
        print_table(result.images, [*columns, "sha256"])
    return ExitCode.OK


WHICH = Group("What it depends on (exactly one)", validator=validators.LimitedChoice(1, 1))


@_sub("compliance").command(name="impact")
def compliance_impact(
    *,
    model_version: Annotated[
        str | None,
        Parameter(group=WHICH, help="model version id, weight SHA-256 (or 8+ hex prefix) or ROLE/SHA256"),
    ] = None,
    licence: Annotated[str | None, Parameter(group=WHICH, help="licence id")] = None,
    json: Json = False,
    me: Me,
    rt: Runtime_,
) -> int:
    """Every published image that depends on a model version or a licence (recall, takedown)."""
    from governance.compliance import impact, require_compliance_access

    with rt.sessions() as session:
        require_compliance_access(session, me.user, "query impact")
        out = impact(session, model_version=model_version, licence=licence).to_dict()
    if json:
        print_json(out)
        return ExitCode.OK
    print("model versions:")
    print_table(out["model_versions"], ["role", "sha256", "licence", "id"])
    print(f"\n{out['published_images']} published images depend on them:")
    print_table(
        [{**i, "location": location(i["store_url"], i["store_key"])} for i in out["images"]],
        ["image_id", "created_at", "sha256", "location"],
    )
    return ExitCode.OK


@_sub("compliance").command(name="export")
def compliance_export(
    *,
    format: Annotated[Literal["parquet", "csv"], Parameter(help="file format (CSV is formula-safe)")],
    out: Annotated[Path, Parameter(help="file to write")],
    filters: FilterFlags | None = None,
    limit: Annotated[Limit, Parameter(help="at most this many images, oldest first (0: all)")] = 0,
    me: Me,
    rt: Runtime_,
) -> int:
    """Full lineage per image to Parquet or CSV."""
    from governance.compliance import export_lineage, require_compliance_access

    wanted = (filters or FilterFlags()).filters()
    with rt.sessions() as session:
        require_compliance_access(session, me.user, "export the records")
        count = export_lineage(session, out, format, wanted, limit or None)
    print(f"exported the lineage of {count} images to {out} ({format})")
    return ExitCode.OK


@_sub("compliance").command(name="report")
def compliance_report(
    *,
    from_: Annotated[str, Parameter(name="--from", help="start: YYYY-MM-DD or ISO time (inclusive)")],
    to: Annotated[str, Parameter(help="end: YYYY-MM-DD (that whole day) or ISO time (exclusive)")],
    out: Annotated[Path, Parameter(help="HTML file to write")],
    thumbnails: Annotated[int, Parameter(validator=validators.Number(gte=0), help="at most this many thumbnails")] = 60,
    me: Me,
    rt: Runtime_,
) -> int:
    """A self-contained HTML report for a period."""
    from governance.compliance import parse_when, period_report, require_compliance_access

    since = parse_when(from_, field="from")
    until = parse_when(to, end=True, field="to")
    with rt.sessions() as session:
        user = require_compliance_access(session, me.user, "write compliance reports")
        summary = period_report(
            session,
            rt.store,
            since,
            until,
            out,
            max_thumbnails=thumbnails,
            generated_by=user.name,
            gpu_hour_price=rt.settings.gpu_hour_price,
        )
    print(
        f"report {summary.path}: {summary.images} images ({summary.published} published, "
        f"{summary.quarantined} quarantined), {summary.approvals} approval decisions, "
        f"{summary.thumbnails} thumbnails"
    )
    return ExitCode.OK


# ---------------------------------------------------------------- configurations: compare and prefer

Price = Annotated[
    float | None,
    Parameter(help="price of one GPU-hour for the cost columns (default ATELIER_GPU_HOUR_PRICE; none: no cost)"),
]
COST_COLUMNS = [
    "pipeline",
    "images",
    "accepted",
    "quarantine_rate",
    "review_rejection_rate",
    "seconds_per_image",
    "images_per_second",
    "cost_per_image",
    "cost_per_accepted_image",
]
WIN_COLUMNS = ["a", "b", "judgements", "wins_a", "wins_b", "no_preference", "rate_a", "ci_low", "ci_high"]


@app.command(name="compare")
def compare(
    batch_id: str,
    /,
    *,
    price_per_gpu_hour: Price = None,
    json: Json = False,
    me: Me,
    rt: Runtime_,
) -> int:
    """A batch's pipeline configurations side by side: each row and seed's image per configuration, engine
    seconds, images per second, quarantine and review-rejection rates, cost per image and per accepted
    image, and reviewers' blind preferences (win rates with 95% Wilson intervals)."""
    from governance.batches import get_batch
    from governance.compare import compare_batch, price_of, require_compare_access

    price = price_of(price_per_gpu_hour, rt.settings.gpu_hour_price)
    with rt.sessions() as session:
        batch = get_batch(session, batch_id)
        require_compare_access(session, me.user, batch)
        result = compare_batch(session, batch, price)
    if json:
        print_json(result)
        return ExitCode.OK
    print(f"batch {result.batch_id}: configurations {', '.join(result.pipelines)}")
    rows = []
    for row in result.rows:
        cells: dict[str, Any] = {"row_id": row.row_id, "seed": row.seed, "prompt": row.prompt}
        for image in row.images:
            cells[image.pipeline] = f"{image.image_id[:8]} {image.status}"
        rows.append(cells)
    print_table(rows, ["row_id", "seed", *result.pipelines, "prompt"])
    if not result.same_seeds:
        print("warning: some rows' images do not share their seed across configurations")
    print("\ncost per configuration" + (f" at {price:g} per GPU-hour" if price is not None else " (no price given)"))
    print_table([c.to_dict() for c in result.costs], COST_COLUMNS)
    print("\nblind preference (A against B):")
    print_table([w.to_dict() for w in result.preferences], WIN_COLUMNS)
    return ExitCode.OK


prefer_app = app.command(App(name="prefer", help="blind pairwise preference between pipeline configurations"))


@_sub("prefer").command(name="next")
def prefer_next(
    batch_id: str,
    /,
    *,
    out: Annotated[Path, Parameter(help="folder for the pair's two images (left.png, right.png)")] = Path("."),
    json: Json = False,
    me: Me,
    rt: Runtime_,
) -> int:
    """The next blind pair of a comparison batch (reviewers, not on their own batch): writes its two
    images, in random order and without metadata, and prints the pair id to pick with."""
    from governance.errors import InvalidInput
    from governance.preference import next_pair, pair_png

    if not out.is_dir():
        raise InvalidInput(f"--out {out} is not a folder; create it first")
    with rt.sessions.begin() as session:
        pair = next_pair(session, me.user, batch_id)
        files = {side: pair_png(session, me.user, pair.pair_id, side, rt.store) for side in ("left", "right")}
    for side, data in files.items():
        (out / f"{side}.png").write_bytes(data)
    if json:
        print_json(pair)
        return ExitCode.OK
    print(f"pair {pair.pair_id} ({pair.remaining} left to judge in batch {pair.batch_id})")
    print(f"prompt: {shown(pair.prompt)}")
    print(f"images: {out / 'left.png'}  {out / 'right.png'}")
    print(f"then: atelier prefer pick {pair.pair_id} left|right|none")
    return ExitCode.OK


@_sub("prefer").command(name="pick")
def prefer_pick(
    pair_id: str,
    choice: Annotated[str, Parameter(help="left, right or none (no preference)")],
    /,
    *,
    json: Json = False,
    me: Me,
    rt: Runtime_,
) -> int:
    """Record your pick for a pair you were shown (once; audited)."""
    from governance.preference import record_pick

    with rt.sessions.begin() as session:
        pick = record_pick(session, me.user, pair_id, choice)
    anchor_decision(rt, me)
    if json:
        print_json(pick)
    else:
        print(f"pair {pick.pair_id}: {pick.choice} recorded")
    return ExitCode.OK


@_sub("prefer").command(name="results")
def prefer_results(
    *,
    batch: Annotated[str | None, Parameter(help="one batch (default: every judgement)")] = None,
    json: Json = False,
    me: Me,
    rt: Runtime_,
) -> int:
    """Win rates per configuration pair from the audited picks, with 95% Wilson intervals."""
    from governance.batches import get_batch
    from governance.compliance import require_compliance_access
    from governance.preference import win_rates

    with rt.sessions() as session:
        require_compliance_access(session, me.user, "read preference results")
        rates = win_rates(session, batch_id=get_batch(session, batch).id if batch else None)
    if json:
        print_json(rates)
    else:
        print_table([w.to_dict() for w in rates], WIN_COLUMNS)
    return ExitCode.OK


# ---------------------------------------------------------------- GPU pool, demo, completion


@app.command(name="deploy")
def deploy(
    *,
    pool: Annotated[str, Parameter(help="work pool name")] = "atelier-gpu",
    type: Annotated[
        Literal["process", "kubernetes"],
        Parameter(help="process: `atelier workers` on GPU machines; kubernetes: one Job per flow run"),
    ] = "process",
    gpus: Annotated[int, Parameter(validator=validators.Number(gte=1), help="GPUs in the pool: its concurrency")] = 1,
    json: Json = False,
    me: Me,
    rt: Runtime_,
) -> int:
    """Create the GPU work pool, its queues and the deployments of prefect.yaml on the Prefect server
    (PREFECT_API_URL); idempotent."""
    from flows.deploy import deploy_pool
    from governance.users import require_role

    with rt.sessions() as session:
        require_role(session, me.user, "operator", "deploy the work pool")
    deployed = deploy_pool(pool, type, gpus)
    if json:
        print_json([d.__dict__ for d in deployed])
        return ExitCode.OK
    print(
        f"work pool {pool} ({type}): at most {gpus} flow runs at once; "
        "queues marketing (priority 1), catalogue (priority 10)"
    )
    print_table(
        [{**d.__dict__, "schedules": ", ".join(d.schedules)} for d in deployed],
        ["name", "queue", "concurrency_limit", "schedules"],
    )
    print(f"next: start workers, e.g. `atelier workers --pool {pool} --gpus 0,1` on each GPU machine")
    return ExitCode.OK


@app.command(name="workers")
def workers(
    *,
    pool: Annotated[str, Parameter(help="work pool to serve (a process pool)")] = "atelier-gpu",
    gpus: Annotated[str, Parameter(help="GPU indices, e.g. 0,1,2,3")] = "0",
    gpu_device: Annotated[
        str, Parameter(help="ATELIER_DEVICE inside each worker (cpu to try the pool without GPUs)")
    ] = "cuda",
    me: Me,
    rt: Runtime_,
) -> int:
    """One Prefect worker per GPU of this machine, pinned with CUDA_VISIBLE_DEVICES, one flow run
    each; runs until Ctrl-C."""
    from flows.deploy import parse_gpus, run_workers, settings_env
    from governance.users import require_role

    with rt.sessions() as session:
        require_role(session, me.user, "operator", "start workers")
    return run_workers(parse_gpus(gpus), pool, gpu_device, settings_env(rt.settings))


@app.command(name="serve")
def serve(
    *,
    host: Annotated[str, Parameter(help="address to listen on (behind a TLS proxy: keep 127.0.0.1)")] = "127.0.0.1",
    port: Annotated[int, Parameter(validator=validators.Number(gte=1, lte=65535))] = 8080,
    forwarded_allow_ips: Annotated[
        str | None,
        Parameter(help="addresses of the reverse proxy whose X-Forwarded-Proto/For are believed (e.g. 127.0.0.1)"),
    ] = None,
    rt: Runtime_,
) -> int:
    """Run the HTTP API (/api/v1, schema at /openapi.json) and the web console on uvicorn; Ctrl-C stops.
    Several processes: `uvicorn --factory server.app:create_app --workers N` with the same ATELIER_* settings."""
    import uvicorn

    from server.app import create_app

    rt.sessions  # noqa: B018 - an unreachable or unmigrated database is one line, before the server starts
    application = create_app(rt.settings)
    print(f"Atelier console at http://{host}:{port}/ (API /api/v1, schema /openapi.json); Ctrl-C stops")
    sys.stdout.flush()
    uvicorn.run(
        application,
        host=host,
        port=port,
        proxy_headers=forwarded_allow_ips is not None,
        forwarded_allow_ips=forwarded_allow_ips,
        server_header=False,
        log_level="info" if logging.getLogger().isEnabledFor(logging.INFO) else "warning",
    )
    return ExitCode.OK


EXAMPLE_CATALOGUE = Path(__file__).resolve().parent.parent / "examples" / "catalogue.csv"


@app.command(name="demo")
def demo(*, file: Annotated[Path, Parameter(help="prompt file")] = EXAMPLE_CATALOGUE, rt: Runtime_) -> int:
    """The whole governed flow on the example catalogue."""
    from flows.demo import run_demo

    return run_demo(rt, file, run_batches, print_table)


@app.command(name="completion")
def completion(*, shell: Literal["bash", "zsh", "fish"] = "bash") -> int:
    """Print the shell completion script, e.g. `atelier completion --shell bash > ~/.atelier-complete.bash`
    and `source` it from your shell's start-up file."""
    print(app.generate_completion(prog_name="atelier", shell=shell))
    return ExitCode.OK


# ---------------------------------------------------------------- entry point


def _first_line(exc: BaseException) -> str:
    text = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return (text[0] if text else type(exc).__name__)[:300]


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns its exit code (`governance.errors.ExitCode`)."""
    from cyclopts.exceptions import CycloptsError
    from pydantic import ValidationError
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError

    if argv is None:  # the console script: this process runs one command and exits
        import atexit
        import gc

        # At exit the collector's final passes walk the whole heap (~0.8 s once Great Expectations is
        # loaded) for nothing: the process is ending. Frozen objects are skipped; stdout is still flushed.
        atexit.register(gc.freeze)
    tokens = list(sys.argv[1:] if argv is None else argv)
    _in_use.clear()
    try:
        result = app.meta(tokens)
        sys.stdout.flush()  # a closed pipe shows here, inside the handlers below, not at interpreter exit
        return ExitCode.OK if result is None else int(result)
    except CycloptsError as exc:  # unknown command or option, a missing or invalid value
        print(f"error: {_first_line(exc)} (see `atelier {_command_of(tokens)}--help`)", file=sys.stderr)
        return ExitCode.INVALID_INPUT
    except ValidationError as exc:
        problems = "; ".join(f"ATELIER_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors())
        print(f"error: invalid settings: {problems}", file=sys.stderr)
        return ExitCode.INVALID_INPUT
    except AtelierError as exc:
        print(f"error: {shown(exc, one_line=False)}", file=sys.stderr)
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

        where = make_url(_in_use[-1].database_url_resolved).render_as_string(hide_password=True) if _in_use else ""
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


def _command_of(tokens: list[str]) -> str:
    """`batch submit ` from the tokens: the command words the user gave, for the help hint."""
    words: list[str] = []
    node = app
    for token in tokens:
        if token.startswith("-") or token not in node:
            break
        words.append(token)
        node = node[token]
    return "".join(f"{w} " for w in words)


if __name__ == "__main__":
    sys.exit(main())
