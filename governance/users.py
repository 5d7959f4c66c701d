"""Users, their roles, their API tokens and console passwords; who is acting.

Identity is established, never claimed: a face (CLI, API, console) turns a token (or a console
session) into an :class:`Identity` with :func:`authenticate`, and passes the authenticated user's
name to the services, which check roles here. Tokens are random (256 bits), shown once, stored only
as their SHA-256, expire, and can be revoked; a disabled user's tokens stop working at once.

Only an admin adds users, grants and revokes roles, disables users and issues or revokes tokens; the
very first user of an empty database (the bootstrap) must be an admin. Every act is audited.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from governance.audit import record_event
from governance.errors import InvalidInput, InvalidState, NotFound, PermissionDenied, Unauthenticated
from governance.records import ROLES, ApiToken, ConsoleSession, Role, User, UserRole, utcnow
from governance.results import Result

logger = logging.getLogger(__name__)

BOOTSTRAP_ACTOR = "bootstrap"
TOKEN_PREFIX = "atl_"
NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
DEFAULT_TOKEN_DAYS = 90
MAX_TOKEN_DAYS = 366


@dataclass(frozen=True)
class RolePolicy:
    """Separation of duties an organisation may switch on (`ATELIER_FORBID_REQUESTER_APPROVER`): one
    person never holds both requester and approver."""

    forbid_requester_approver: bool = False


@dataclass(frozen=True)
class Identity(Result):
    """Who is acting, as established from a credential."""

    user: str
    roles: tuple[str, ...]
    token_id: str | None  # the token used (recorded on every audit event of the act)
    token_name: str | None
    expires_at: datetime | None


@dataclass(frozen=True)
class IssuedToken(Result):
    """A new token: `secret` is shown once and never stored."""

    token_id: str
    user: str
    name: str
    expires_at: datetime
    secret: str


@dataclass(frozen=True)
class TokenInfo(Result):
    token_id: str
    user: str
    name: str
    created_at: datetime
    expires_at: datetime
    revoked_at: datetime | None
    state: str  # active | expired | revoked


@dataclass(frozen=True)
class UserInfo(Result):
    name: str
    roles: tuple[str, ...]
    disabled: bool
    has_password: bool
    tokens_active: int


def token_sha256(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def check_name(name: str) -> str:
    """A user name: 1-64 of a-z, 0-9, '.', '_', '-', starting with a letter or digit (no spaces, no
    look-alike Unicode, nothing a terminal or a page would interpret)."""
    if not NAME_PATTERN.fullmatch(name):
        raise InvalidInput(
            f"invalid user name {name!r}: use 1-64 characters of a-z, 0-9, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def _roles(roles: Iterable[str]) -> list[str]:
    wanted = sorted({str(r) for r in roles})
    unknown = [r for r in wanted if r not in ROLES]
    if unknown:
        raise InvalidInput(f"unknown role {', '.join(map(repr, unknown))}; choose from {', '.join(ROLES)}")
    if not wanted:
        raise InvalidInput(f"give at least one role ({', '.join(ROLES)})")
    return wanted


def get_user(session: Session, name: str | None) -> User:
    """The acting user by name, as authenticated by the face; a disabled user may do nothing."""
    if not name:
        raise Unauthenticated("no credentials: nobody is signed in, and this needs a user")
    user = session.scalar(select(User).where(User.name == name))
    if user is None:
        raise NotFound(f"unknown user {name!r}")
    if not user.active:
        raise Unauthenticated(f"user {user.name} is disabled")
    return user


def find_user(session: Session, name: str) -> User:
    """A user named in a request (not the actor): disabled ones included."""
    user = session.scalar(select(User).where(User.name == name))
    if user is None:
        raise NotFound(f"unknown user {name!r}: `atelier users list` shows who exists")
    return user


def require_role(session: Session, name: str | None, role: str, doing: str) -> User:
    user = get_user(session, name)
    if role not in user.role_names:
        raise PermissionDenied(
            f"{user.name} cannot {doing}: that needs the {role} role "
            f"({user.name} has: {', '.join(sorted(user.role_names)) or 'none'})"
        )
    return user


def require_any_role(session: Session, name: str | None, roles: Iterable[str], doing: str) -> User:
    user = get_user(session, name)
    wanted = sorted(str(r) for r in roles)
    if not user.role_names & set(wanted):
        raise PermissionDenied(
            f"{user.name} cannot {doing}: that needs one of the roles {', '.join(wanted)} "
            f"({user.name} has: {', '.join(sorted(user.role_names)) or 'none'})"
        )
    return user


def _check_policy(user_roles: set[str], policy: RolePolicy, name: str) -> None:
    if policy.forbid_requester_approver and {Role.REQUESTER, Role.APPROVER} <= user_roles:
        raise PermissionDenied(
            f"{name} cannot hold both requester and approver: separation of duties is in force "
            "(ATELIER_FORBID_REQUESTER_APPROVER)"
        )


def is_empty(session: Session) -> bool:
    return not session.scalar(select(func.count()).select_from(User))


def add_user(
    session: Session,
    actor: str | None,
    name: str,
    roles: Iterable[str],
    policy: RolePolicy = RolePolicy(),
) -> User:
    """Create a user with roles (admins; on an empty database the first user, who must be an admin)."""
    bootstrap = is_empty(session)
    acting = BOOTSTRAP_ACTOR if bootstrap else require_role(session, actor, "admin", "add users").name
    wanted = _roles(roles)
    name = check_name(name)
    if bootstrap and Role.ADMIN not in wanted:
        raise InvalidInput("the first user must be an admin (role admin): only an admin can add the others")
    if session.scalar(select(User).where(User.name == name)) is not None:
        raise InvalidState(f"user {name} exists: `atelier users grant {name} --role ROLE` gives it more roles")
    _check_policy(set(wanted), policy, name)
    user = User(name=name)
    user.roles.extend(UserRole(role=r) for r in wanted)
    session.add(user)
    session.flush()
    record_event(session, acting, "user.created", "user", name, {"roles": wanted})
    return user


def grant_roles(
    session: Session, actor: str | None, name: str, roles: Iterable[str], policy: RolePolicy = RolePolicy()
) -> User:
    acting = require_role(session, actor, "admin", "grant roles").name
    wanted = _roles(roles)
    user = find_user(session, name)
    new = [r for r in wanted if r not in user.role_names]
    _check_policy(user.role_names | set(new), policy, name)
    if new:
        user.roles.extend(UserRole(role=r) for r in new)
        session.flush()
        record_event(session, acting, "user.roles_granted", "user", name, {"roles": new})
    return user


def revoke_roles(session: Session, actor: str | None, name: str, roles: Iterable[str]) -> User:
    admin = require_role(session, actor, "admin", "revoke roles")
    wanted = set(_roles(roles))
    user = find_user(session, name)
    gone = sorted(wanted & user.role_names)
    if Role.ADMIN in gone and _other_active_admins(session, user) == 0:
        raise InvalidState(f"{name} is the last active admin: grant admin to someone else first")
    if gone:
        user.roles[:] = [r for r in user.roles if r.role not in wanted]
        session.flush()
        record_event(session, admin.name, "user.roles_revoked", "user", name, {"roles": gone})
    return user


def _other_active_admins(session: Session, user: User) -> int:
    return int(
        session.execute(
            select(func.count())
            .select_from(User)
            .join(UserRole, UserRole.user_id == User.id)
            .where(UserRole.role == Role.ADMIN, User.id != user.id, User.disabled_at.is_(None))
        ).scalar_one()
    )


def set_disabled(session: Session, actor: str | None, name: str, disabled: bool) -> User:
    """Disable a user (every token stops working at once) or enable it again (admins)."""
    admin = require_role(session, actor, "admin", "disable or enable users")
    user = find_user(session, name)
    if disabled and user.id == admin.id:
        raise InvalidState("an admin cannot disable themselves: another admin must")
    if disabled and Role.ADMIN in user.role_names and _other_active_admins(session, user) == 0:
        raise InvalidState(f"{name} is the last active admin: grant admin to someone else first")
    if (user.disabled_at is not None) == disabled:
        return user
    user.disabled_at = utcnow() if disabled else None
    if disabled:
        end_console_sessions(session, user)  # enabling again brings no old session back
    session.flush()
    record_event(session, admin.name, "user.disabled" if disabled else "user.enabled", "user", name, {})
    return user


def end_console_sessions(session: Session, user: User) -> None:
    """End every open console session of this user (disabled, or a new password)."""
    now = utcnow()
    for row in session.scalars(
        select(ConsoleSession).where(ConsoleSession.user_id == user.id, ConsoleSession.ended_at.is_(None))
    ):
        row.ended_at = now


def list_users(session: Session) -> list[UserInfo]:
    now = utcnow()
    active = dict(
        session.execute(
            select(ApiToken.user_id, func.count())
            .where(ApiToken.revoked_at.is_(None), ApiToken.expires_at > now)
            .group_by(ApiToken.user_id)
        ).all()
    )
    return [
        UserInfo(u.name, tuple(sorted(u.role_names)), not u.active, u.password_hash is not None, active.get(u.id, 0))
        for u in session.scalars(select(User).order_by(User.name))
    ]


# ---------------------------------------------------------------- tokens


def issue_token(
    session: Session,
    actor: str | None,
    user_name: str,
    token_name: str = "cli",
    days: int = DEFAULT_TOKEN_DAYS,
    *,
    bootstrap: bool = False,
) -> IssuedToken:
    """A new personal token for `user_name` (admins; `bootstrap`: the first admin's own first token)."""
    acting = BOOTSTRAP_ACTOR if bootstrap else require_role(session, actor, "admin", "issue tokens").name
    if not 1 <= days <= MAX_TOKEN_DAYS:
        raise InvalidInput(f"days must be between 1 and {MAX_TOKEN_DAYS}, not {days}")
    token_name = token_name.strip()
    if not token_name or len(token_name) > 100 or not token_name.isprintable():
        raise InvalidInput("a token's name must be 1-100 printable characters, e.g. laptop or ci")
    user = find_user(session, user_name)
    if not user.active:
        raise InvalidState(f"user {user.name} is disabled: enable it before issuing tokens")
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken(
        id=str(uuid.uuid4()),
        user_id=user.id,
        name=token_name,
        token_sha256=token_sha256(secret),
        expires_at=utcnow() + timedelta(days=days),
    )
    session.add(token)
    session.flush()
    record_event(
        session,
        acting,
        "token.issued",
        "token",
        token.id,
        {"user": user.name, "name": token_name, "expires_at": token.expires_at.isoformat()},
    )
    return IssuedToken(token.id, user.name, token_name, token.expires_at, secret)


def revoke_token(session: Session, actor: str | None, token_id: str) -> ApiToken:
    """Revoke a token (admins, or the token's own user)."""
    user = get_user(session, actor)
    token = session.get(ApiToken, token_id.strip().lower())
    if token is None:
        raise NotFound(f"no token {token_id!r}: `atelier tokens list` shows token ids")
    if token.user_id != user.id and Role.ADMIN not in user.role_names:
        raise PermissionDenied(f"{user.name} cannot revoke another user's token: that needs the admin role")
    if token.revoked_at is None:
        token.revoked_at = utcnow()
        session.flush()
        record_event(session, user.name, "token.revoked", "token", token.id, {"user": token.user.name})
    return token


def list_tokens(session: Session, actor: str | None, user_name: str | None = None) -> list[TokenInfo]:
    """Tokens of one user (yours; anyone's for admins), newest first. Never their secrets."""
    user = get_user(session, actor)
    stmt = select(ApiToken).join(User, User.id == ApiToken.user_id).order_by(ApiToken.created_at.desc())
    if user_name is not None:
        if user_name != user.name and Role.ADMIN not in user.role_names:
            raise PermissionDenied(f"{user.name} cannot list another user's tokens: that needs the admin role")
        stmt = stmt.where(User.name == user_name)
    elif Role.ADMIN not in user.role_names:
        stmt = stmt.where(User.id == user.id)
    now = utcnow()
    return [
        TokenInfo(
            t.id,
            t.user.name,
            t.name,
            t.created_at,
            t.expires_at,
            t.revoked_at,
            "revoked" if t.revoked_at else "expired" if t.expires_at <= now else "active",
        )
        for t in session.scalars(stmt)
    ]


def authenticate(session: Session, secret: str | None) -> Identity:
    """The identity a token proves, or :class:`Unauthenticated` (one line that never repeats the token)."""
    if not secret or not secret.strip():
        raise Unauthenticated("no credentials: no token was given")
    secret = secret.strip()
    if not secret.startswith(TOKEN_PREFIX) or len(secret) > 200:
        raise Unauthenticated("that is not an Atelier token (they start with atl_): ask an admin for one")
    token = session.scalar(select(ApiToken).where(ApiToken.token_sha256 == token_sha256(secret)))
    if token is None:
        raise Unauthenticated("token not recognised: it may be mistyped, or from another installation")
    if token.revoked_at is not None:
        raise Unauthenticated(f"token {token.id} ({token.name}) was revoked: ask an admin for a new one")
    if token.expires_at <= utcnow():
        raise Unauthenticated(f"token {token.id} ({token.name}) expired at {token.expires_at:%Y-%m-%d %H:%M} UTC")
    user = token.user
    if not user.active:
        raise Unauthenticated(f"user {user.name} is disabled")
    return Identity(user.name, tuple(sorted(user.role_names)), token.id, token.name, token.expires_at)


# ---------------------------------------------------------------- console passwords


def set_password(session: Session, actor: str | None, name: str, password: str) -> User:
    """Set a console password (argon2id): your own, or anyone's for admins. At least 12 characters."""
    from argon2 import PasswordHasher

    user = get_user(session, actor)
    target = find_user(session, name)
    if target.id != user.id and Role.ADMIN not in user.role_names:
        raise PermissionDenied(f"{user.name} cannot set another user's password: that needs the admin role")
    if len(password) < 12 or len(password) > 1024:
        raise InvalidInput("a password needs 12 to 1024 characters")
    target.password_hash = PasswordHasher().hash(password)
    end_console_sessions(session, target)  # whoever signed in with the old password is signed out
    session.flush()
    record_event(session, user.name, "user.password_set", "user", target.name, {})
    return target


def check_password(session: Session, name: str, password: str) -> Identity:
    """The identity a console password proves (no token id), or :class:`Unauthenticated`."""
    from argon2 import PasswordHasher
    from argon2.exceptions import InvalidHashError, VerificationError

    user = session.scalar(select(User).where(User.name == name))
    hasher = PasswordHasher()
    if user is None or user.password_hash is None:
        hasher.hash(password)  # the same time whether or not the user exists
        raise Unauthenticated("wrong user name or password")
    try:
        hasher.verify(user.password_hash, password)
    except (VerificationError, InvalidHashError):
        raise Unauthenticated("wrong user name or password") from None
    if not user.active:  # the same answer as a wrong password: sign-in never confirms a disabled user's password
        logger.info("sign-in refused: user %s is disabled", user.name)
        raise Unauthenticated("wrong user name or password")
    return Identity(user.name, tuple(sorted(user.role_names)), None, None, None)
