"""bench/compliance.py still fills a database the current schema accepts, and measures it (tiny size)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

from tests.conftest import REPO


def test_compliance_bench_smoke(pg_server: str, tmp_path) -> None:
    name = f"atelier_bench_test_{uuid.uuid4().hex[:8]}"
    out = tmp_path / "RESULTS.md"
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "compliance.py"),
            "--images",
            "2000",
            "--queries",
            "6",
            "--database",
            name,
            "--drop",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "ATELIER_TEST_PG_URL": pg_server},
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    recorded = out.read_text()
    assert recorded.startswith("\n## compliance\n") and "| trace by SHA-256 |" in recorded
    assert "2,000 images" in recorded and "| audit verify: record check |" in recorded
