"""Ids as people type them: any case, and a unique prefix of 8 or more characters.

`atelier batch show 3EF26253` and `atelier trace be14e6cd` work; a prefix that two records share is
refused by name, never guessed.
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from governance.errors import InvalidInput, NotFound

MIN_PREFIX = 8
ID_PREFIX = re.compile(rf"^[0-9a-f][0-9a-f-]{{{MIN_PREFIX - 1},35}}$")


def looks_like_id(ref: str) -> bool:
    return bool(ID_PREFIX.match(ref.strip().lower()))


def resolve_id(session: Session, model: Any, ref: str, what: str, hint: str) -> Any:
    """The one record of `model` whose id is `ref` or starts with it (case-insensitive).

    NotFound when none does (with `hint`, how to find ids); InvalidInput naming the candidates when
    the prefix is ambiguous."""
    ref = ref.strip().lower()
    exact = session.get(model, ref)
    if exact is not None:
        return exact
    if not ID_PREFIX.match(ref):  # 8+ characters of an id, nothing else (no LIKE wildcards either)
        raise NotFound(f"no {what} {ref!r}: give its id or at least {MIN_PREFIX} characters of it; {hint}")
    matches = list(session.scalars(select(model).where(model.id.startswith(ref, autoescape=True)).limit(4)))
    if not matches:
        raise NotFound(f"no {what} {ref!r}; {hint}")
    if len(matches) > 1:
        shown = ", ".join(m.id for m in matches[:3]) + (", ..." if len(matches) > 3 else "")
        raise InvalidInput(f"{what} id prefix {ref!r} is ambiguous: it matches {shown}; give more characters")
    return matches[0]
