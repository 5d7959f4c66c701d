"""Key-ring files: one hex secret per line, the current key first, earlier keys after it (verify only).

The watermark key and the audit key are kept this way. `#` lines are comments; a file that carries a
development header was made by `atelier keys init` and holds development keys (NOT FOR PRODUCTION).
"""

from __future__ import annotations

import secrets
from pathlib import Path

from governance.errors import GovernanceCheckFailed


def read_ring(path: Path, what: str, settings: str, dev_header: str) -> tuple[list[bytes], bool]:
    """(secrets, development) of the ring at `path`; `what` names it in errors ("audit key"),
    `settings` says where another one is configured."""
    try:
        content = path.read_text()
    except OSError as exc:
        raise GovernanceCheckFailed(
            f"{what} file {path} cannot be read ({exc.strerror}): run `atelier keys init` for a development "
            f"key, or set {settings} to your organisation's"
        ) from None
    keys = []
    for n, line in enumerate(content.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            keys.append(bytes.fromhex(line))
        except ValueError:
            raise GovernanceCheckFailed(f"{what} file {path}, line {n}: not a hex key") from None
    if not keys:
        raise GovernanceCheckFailed(f"{what} file {path} holds no key")
    return keys, dev_header in content


def write_development_ring(path: Path, dev_header: str, comment: str, earlier: list[bytes]) -> None:
    """A new development ring at `path` (mode 0600, replaced atomically): a fresh current key, then
    `earlier` (the keys it replaces, still verifying what they made)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [dev_header, f"# {comment}", secrets.token_bytes(32).hex(), *(k.hex() for k in earlier)]
    tmp = path.with_name(f".tmp-{path.name}")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.chmod(0o600)
    tmp.replace(path)
