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
