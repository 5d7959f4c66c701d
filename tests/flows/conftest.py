from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from flows.cli import main


class CLI:
    """Runs `atelier` in-process with a fixed set of settings flags; returns (exit code, stdout, stderr)."""

    def __init__(self, capsys: pytest.CaptureFixture[str], flags: list[str]):
        self.capsys, self.flags = capsys, flags

    def __call__(self, *args: str, actor: str | None = None) -> tuple[int, str, str]:
        self.capsys.readouterr()
        argv = [*args, *self.flags, *(["--as", actor] if actor else [])]
        code = main(argv)
        out, err = self.capsys.readouterr()
        # Every failing CLI case in the suite passes here: a refusal is one clear line, never a traceback.
        if code != 0:
            assert "Traceback" not in out + err, f"atelier {' '.join(args)} exited {code} with a traceback:\n{err}"
        return code, out, err

    def json(self, *args: str, actor: str | None = None) -> Any:
        code, out, err = self(*args, "--json", actor=actor)
        assert code == 0, err
        return json.loads(out)


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
    """Through `cli` (a migrated-on-the-spot database): users maria (requester), omar (approver) and
    ops (operator), the licence, the test signer, and a batch of `rows` submitted and approved."""
    assert cli("db", "upgrade")[0] == 0
    cli("users", "add", "admin", "--role", "admin")
    for name, role in [("maria", "requester"), ("omar", "approver"), ("ops", "operator")]:
        cli("users", "add", name, "--role", role, actor="admin")
    cli("licences", "register", "creativeml-openrail++-m", actor="admin")
    cli("keys", "init")
    batch_id = cli.json(
        "batch", "submit", str(write_prompts(tmp_path / "p.csv", rows)), "--purpose", purpose, actor="maria"
    )["batch_id"]
    cli("batch", "approve", batch_id, actor="omar")
    return str(batch_id)


def governed_run(
    data: Path, tiny_models: tuple[Path, Path], rows: list[dict[str, Any]], purpose: str
) -> tuple[list[str], str]:
    """Through the CLI: users, licence, test signer, a batch submitted, approved by another user and run.

    Returns the settings flags and the batch id."""
    from flows.cli import main as atelier
    from flows.runtime import Runtime
    from flows.settings import get_settings
    from governance.batches import list_batches

    base, refiner = tiny_models
    flags = ["--data-dir", str(data / "d"), "--base-model", str(base), "--refiner-model", str(refiner)]

    def run(*args: str) -> None:
        assert atelier([*args, *flags]) == 0, args

    run("users", "add", "admin", "--role", "admin")
    for name, role in [("maria", "requester"), ("omar", "approver"), ("ops", "operator")]:
        run("users", "add", name, "--role", role, "--as", "admin")
    run("licences", "register", "creativeml-openrail++-m", "--as", "admin")
    run("keys", "init")
    run("batch", "submit", str(write_prompts(data / "p.csv", rows)), "--purpose", purpose, "--as", "maria")
    rt = Runtime(get_settings(data_dir=data / "d", base_model=str(base), refiner_model=str(refiner)))
    with rt.sessions() as s:
        batch_id = list_batches(s)[-1].id
    run("batch", "approve", batch_id, "--as", "omar")
    run("run", "--batch", batch_id, "--as", "ops")
    return flags, batch_id
