"""What the services answer: small frozen dataclasses that every face renders alike.

The CLI prints them as tables or, with ``--json``, as ``to_dict()``; the HTTP API returns the same
``to_dict()``. No face reads a service's answer by string key, so a renamed field is a type error,
not a silently empty column.

``to_dict()`` gives JSON-ready values: nested results become objects, tuples become lists, enums
their value and datetimes ISO 8601 text (``2026-12-02T13:14:15.123456+00:00``).
"""

from __future__ import annotations

from dataclasses import fields, is_dataclass
from datetime import date, datetime
from enum import Enum
from typing import Any


def plain(value: Any) -> Any:
    """``value`` as JSON-ready data: results by their own ``to_dict()``, other dataclasses, lists, tuples
    and dicts walked; datetimes as ISO text."""
    if isinstance(value, Result):
        return value.to_dict()
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value


class Result:
    """Base of the services' answers (mix into a frozen dataclass)."""

    def to_dict(self) -> dict[str, Any]:
        assert is_dataclass(self), f"{type(self).__name__} must be a dataclass"
        return {f.name: plain(getattr(self, f.name)) for f in fields(self)}
