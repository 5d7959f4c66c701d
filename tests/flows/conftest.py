from __future__ import annotations

import contextlib
import io
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from flows.cli import main

NOBODY = ""  # actor=NOBODY: run a command with no token at all


class CLI:
    """Runs `atelier` in-process with a fixed set of settings flags; returns (exit code, stdout, stderr).

    `actor=NAME` acts with NAME's API token: the first admin's comes from the bootstrap (`users add`
    on the empty database prints it once), the others' are issued by that admin with `tokens issue`
    on first use, all through the CLI itself. A name with no user behind it gets a well-formed token
    that no user holds (a forged one). Without `actor`, commands act as the admin once there is one;
    `actor=NOBODY` gives no credentials at all."""

    def __init__(self, capsys: pytest.CaptureFixture[str] | None, flags: list[str]):
        self.flags = flags  # output is captured here (redirected), so no capsys is needed
        self.tokens: dict[str, str] = {}

    def token(self, name: str) -> str:
        if name not in self.tokens and "admin" not in self.tokens:  # no admin to issue it: a token nobody holds
            return "atl_forged-token-for-" + name
        if name not in self.tokens:
            code, out, _ = self("tokens", "issue", name, "--name", "tests", "--json", actor="admin")
            self.tokens[name] = json.loads(out)["secret"] if code == 0 else "atl_forged-token-for-" + name
        return self.tokens[name]

    def __call__(self, *args: str, actor: str | None = None) -> tuple[int, str, str]:
        if actor is None and "admin" in self.tokens:
            actor = "admin"
        token = self.token(actor) if actor else None
        saved = os.environ.pop("ATELIER_TOKEN", None)
        if token:
            os.environ["ATELIER_TOKEN"] = token
        stdout, stderr = io.StringIO(), io.StringIO()
        try:
            with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
                code = main([*args, *self.flags])
        finally:
            os.environ.pop("ATELIER_TOKEN", None)
            if saved is not None:
                os.environ["ATELIER_TOKEN"] = saved
        out, err = stdout.getvalue(), stderr.getvalue()
        words = [a for a in args if not a.startswith("-")]
        if "users add" in " ".join(words) and (secret := re.search(r"\b(atl_[\w-]{20,})", out)):
            self.tokens[words[words.index("add") + 1]] = secret.group(1)  # the bootstrap admin's, printed once
        # Every failing CLI case in the suite passes here: a refusal is one clear line, never a traceback.
        if code != 0:
            assert "Traceback" not in out + err, f"atelier {' '.join(args)} exited {code} with a traceback:\n{err}"
        return code, out, err

    def json(self, *args: str, actor: str | None = None) -> Any:
        code, out, err = self(*args, "--json", actor=actor)
        assert code == 0, err
        return json.loads(out)


@pytest.fixture(autouse=True)
def _no_ambient_token(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test acts with the developer's own token (environment or ~/.config/atelier/token)."""
    monkeypatch.delenv("ATELIER_TOKEN", raising=False)
    monkeypatch.setenv("ATELIER_TOKEN_FILE", str(tmp_path / "no-login" / "token"))


@pytest.fixture
def make_cli(capsys: pytest.CaptureFixture[str]) -> Callable[[list[str]], CLI]:
    return lambda flags: CLI(capsys, flags)


def write_prompts(path: Path, rows: list[dict[str, Any]]) -> Path:
    import csv

    cols = sorted({k for r in rows for k in r}, key=lambda c: list(rows[0]).index(c) if c in rows[0] else 99)
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    return path


def approved_batch(cli: CLI, tmp_path: Path, rows: list[dict[str, Any]], purpose: str = "catalogue") -> str:
    """Through `cli` (a migrated-on-the-spot database): users admin, maria (requester), omar (approver)
    and ops (operator), the licence, the test signer, and a batch of `rows` submitted and approved."""
    assert cli("db", "upgrade")[0] == 0
    cli("keys", "init")  # the signer and the audit key come first: every act is an authenticated event
    cli("users", "add", "admin", "--role", "admin")
    for name, role in [("maria", "requester"), ("omar", "approver"), ("ops", "operator")]:
        cli("users", "add", name, "--role", role, actor="admin")
    cli("licences", "register", "creativeml-openrail++-m", actor="admin")
    submitted = cli.json(
        "batch", "submit", str(write_prompts(tmp_path / "p.csv", rows)), "--purpose", purpose, actor="maria"
    )
    approve = ("batch", "approve", submitted["batch_id"], "--content-sha256", submitted["content_sha256"])
    assert cli(*approve, actor="omar")[0] == 0
    return str(submitted["batch_id"])


def governed_run(
    data: Path, tiny_models: tuple[Path, Path], rows: list[dict[str, Any]], purpose: str
) -> tuple[list[str], str]:
    """Through the CLI: users, licence, test signer, a batch submitted, approved by another user and run.

    Returns the settings flags (with `--token-file` of the operator, so that later commands act as
    ops) and the batch id."""
    base, refiner = tiny_models
    flags = ["--data-dir", str(data / "d"), "--base-model", str(base), "--refiner-model", str(refiner)]
    cli = CLI(None, flags)
    batch_id = approved_batch(cli, data, rows, purpose)
    code, _, err = cli("run", "--batch", batch_id, actor="ops")
    assert code == 0, err
    return [*flags, "--token-file", str(token_file(data / "ops.token", cli.token("ops")))], batch_id


def s3_world(
    tmp_path: Path,
    database_url: str,
    tiny_models: tuple[Path, Path],
    s3_server: str,
    bucket: str,
    people: list[tuple[str, str]],
) -> CLI:
    """Through the CLI, on `database_url` with the store in S3 (`s3://bucket/p`) and the tiny models:
    the schema, the test keys, the admin and `people` (name, role), the models' licence."""
    base, refiner = tiny_models
    flags = ["--data-dir", str(tmp_path / "d"), "--database-url", database_url, "--store-url", f"s3://{bucket}/p"]
    flags += ["--s3-endpoint-url", s3_server, "--base-model", str(base), "--refiner-model", str(refiner)]
    cli = CLI(None, flags)
    assert cli("db", "upgrade")[0] == 0
    assert cli("keys", "init")[0] == 0
    assert cli("users", "add", "admin", "--role", "admin")[0] == 0
    for name, role in people:
        assert cli("users", "add", name, "--role", role, actor="admin")[0] == 0
    assert cli("licences", "register", "creativeml-openrail++-m", actor="admin")[0] == 0
    return cli


def token_file(path: Path, secret: str) -> Path:
    """A token file as `atelier login` leaves it: the token, mode 0600."""
    path.write_text(secret + "\n", encoding="utf-8")
    path.chmod(0o600)
    return path
