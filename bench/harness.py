"""What the multi-worker benches share: a governed, approved batch in a fresh PostgreSQL database,
and a real Prefect server on PostgreSQL for the workers to report to.

Needs PostgreSQL (ATELIER_TEST_PG_URL, default 127.0.0.1:5432).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from flows.runtime import Runtime
from flows.settings import get_settings
from tests.flows.conftest import CLI, token_file  # noqa: E402 - the tests' own way of acting as a user
from tests.flows.conftest import approved_batch as approved_batch_via_cli  # noqa: E402

PG = os.environ.get("ATELIER_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


@contextlib.contextmanager
def fresh_database(prefix: str) -> Iterator[str]:
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(PG).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextlib.contextmanager
def prefect_server() -> Iterator[str]:
    """A real `prefect server start` on its own PostgreSQL database; yields the API URL."""
    from tests.outages import PrefectServer

    home = Path(tempfile.mkdtemp(prefix="atelier-prefect-"))
    with fresh_database("atelier_bench_prefect") as url:
        server = PrefectServer(
            make_url(url).set(drivername="postgresql+asyncpg").render_as_string(hide_password=False), home
        )
        try:
            yield server.start()
        finally:
            server.stop()
            shutil.rmtree(home, ignore_errors=True)


@dataclass
class Batch:
    flags: list[str]  # the settings flags every `atelier` command of this batch takes
    batch_id: str
    runtime: Runtime
    work: Path


@contextlib.contextmanager
def approved_batch(
    images: int,
    size: int,
    steps: int,
    models: tuple[Path, Path],
    store_url: str | None = None,
    s3_url: str | None = None,
    prefix: str = "atelier_bench",
) -> Iterator[Batch]:
    """Users, licence, test signer, a batch of `images` (two per prompt) submitted and approved."""
    work = Path(tempfile.mkdtemp(prefix=f"{prefix}-"))
    with fresh_database(prefix) as url:
        flags = [
            "--data-dir",
            str(work / "d"),
            "--database-url",
            url,
            "--base-model",
            str(models[0]),
            "--refiner-model",
            str(models[1]),
        ]
        flags += ["--store-url", store_url] if store_url else []
        flags += ["--s3-endpoint-url", s3_url] if s3_url else []
        rows = [
            {"row_id": f"r{i}", "prompt": f"product {i}", "seed": 100 + i, "width": size, "height": size}
            | {"steps": steps, "num_images": 2}
            for i in range(images // 2)
        ]
        cli = CLI(None, flags)  # users act with their own API tokens, as in the tests
        batch_id = approved_batch_via_cli(cli, work, rows)
        flags += ["--token-file", str(token_file(work / "ops.token", cli.token("ops")))]  # later commands: ops
        rt = Runtime(get_settings(database_url=url, data_dir=work / "d", store_url=store_url, s3_endpoint_url=s3_url))
        try:
            yield Batch(flags, batch_id, rt, work)
        finally:
            rt.sessions.kw["bind"].dispose()
            shutil.rmtree(work, ignore_errors=True)


def record_results(out: Path, section: str, intro: str, table: str) -> None:
    """Add `table` at the end of `section` in the results file (the section created with `intro`
    when missing), so a rerun's table lands under its own heading, not after whatever section is last."""
    text = out.read_text() if out.exists() else "# Benchmark results\n"
    heading = f"\n## {section}\n"
    if heading not in text:
        text = text.rstrip("\n") + f"\n{heading}\n{intro}\n"
    start = text.index(heading) + len(heading)
    nxt = text.find("\n## ", start)
    end = len(text) if nxt == -1 else nxt + 1
    text = text[:end].rstrip("\n") + "\n\n" + table.rstrip("\n") + "\n" + ("\n" + text[end:] if nxt != -1 else "")
    out.write_text(text)


def results_table(heading: str, rows: list[dict[str, Any]]) -> str:
    """A `### heading` (stamped with the time and the machine's cores) and the rows as a Markdown table."""
    from datetime import UTC, datetime

    cols = list(rows[0])
    lines = [
        f"### {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPU cores: {heading}",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + " --- |" * len(cols),
    ]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"
