"""Users and their roles."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from governance.audit import record_event
from governance.errors import InvalidInput, NotFound, PermissionDenied
from governance.records import ROLES, User, UserRole

BOOTSTRAP_ACTOR = "bootstrap"


def get_user(session: Session, name: str | None) -> User:
    if not name:
        raise PermissionDenied("no acting user: pass --as NAME or set ATELIER_ACTOR")
    user = session.scalar(select(User).where(User.name == name))
    if user is None:
        raise NotFound(f"unknown user {name!r}: add it with `atelier users add {name} --role ROLE`")
    return user


def require_role(session: Session, name: str | None, role: str, doing: str) -> User:
    user = get_user(session, name)
    if role not in user.role_names:
        raise PermissionDenied(
            f"{user.name} cannot {doing}: that needs the {role} role "
            f"({user.name} has: {', '.join(sorted(user.role_names)) or 'none'})"
        )
    return user


def add_user(session: Session, actor: str | None, name: str, roles: Iterable[str]) -> User:
    """Create a user, or add roles to an existing one.

    The very first user may be created by anyone (bootstrap); after that only an admin may.
    """
    roles = sorted(set(roles))
    unknown = [r for r in roles if r not in ROLES]
    if not roles or unknown:
        raise InvalidInput(
            f"unknown role {', '.join(map(repr, unknown))}; choose from {', '.join(ROLES)}"
            if unknown
            else f"give at least one role ({', '.join(ROLES)})"
        )
    name = name.strip()
    if not name or len(name) > 100 or any(c.isspace() for c in name):
        raise InvalidInput(f"invalid user name {name!r}: use 1-100 characters without spaces")
    if session.scalar(select(func.count()).select_from(User)):
        acting = require_role(session, actor, "admin", "add users").name
    else:
        acting = actor or BOOTSTRAP_ACTOR
    user = session.scalar(select(User).where(User.name == name))
    created = user is None
    if user is None:
        user = User(name=name)
        session.add(user)
        session.flush()
    new_roles = [r for r in roles if r not in user.role_names]
    for role in new_roles:
        user.roles.append(UserRole(role=role))
    if created or new_roles:
        record_event(
            session,
            acting,
            "user.created" if created else "user.roles_added",
            "user",
            name,
            {"roles": new_roles},
        )
    session.flush()
    return user


def list_users(session: Session) -> list[User]:
    return list(session.scalars(select(User).order_by(User.name)))
