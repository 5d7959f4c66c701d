"""Reading a versioned policy file (prompt policy, retention policy): one line for every problem."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from governance.errors import InvalidInput


def read_policy_file(
    path: Path, what: str, setting: str, body: str = "rules"
) -> tuple[bytes, dict[str, Any], Callable[[str, str], InvalidInput]]:
    """The file's bytes (its SHA-256 is what decisions record), its JSON object with a non-empty
    `version` and no fields but version, description and `body` (its rules), and `bad(where, why)` that makes the
    one-line refusal naming the file and the field. `what`: "prompt policy"; `setting`: the variable
    that points at the file."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InvalidInput(f"{what} {path} cannot be read ({exc.strerror}); fix {setting}") from None
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"{what} {path} is not valid JSON: {exc}") from None

    def bad(where: str, why: str) -> InvalidInput:
        return InvalidInput(f"{what} {path}: {where} {why}")

    if not isinstance(data, dict) or not isinstance(data.get("version"), str) or not data["version"].strip():
        raise bad("version", "must be a non-empty string")
    unknown = set(data) - {"version", "description", body}
    if unknown:
        raise bad(", ".join(sorted(unknown)), f"is not a policy field (version, description, {body})")
    return raw, data, bad
