"""Fixtures that start real services: PostgreSQL databases, an S3 server over HTTP, Prefect."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from governance.audit import AuditKey, AuditKeyRing

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
PG_ADMIN_URL = os.environ.get("ATELIER_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def _test_audit_keys() -> AuditKeyRing:
    """The tests' audit key ring (public, like watermark.PUBLIC_TEST_KEY: tests only). Sessions made
    for tests pass it: governance.db.make_sessionmaker(engine, audit_keys=TEST_AUDIT_KEYS)."""
    secret = hashlib.sha256(b"atelier test audit key - NOT FOR PRODUCTION").digest()
    return AuditKeyRing((AuditKey(secret, development=True),))


TEST_AUDIT_KEYS = _test_audit_keys()


def _pg_reachable() -> str | None:
    try:
        engine = create_engine(PG_ADMIN_URL, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
        return None
    except Exception as exc:  # noqa: BLE001 - any failure means "not reachable here"
        return f"{type(exc).__name__}: {str(exc).splitlines()[0]}"


@pytest.fixture(scope="session")
def pg_server() -> str:
    problem = _pg_reachable()
    if problem:
        pytest.skip(f"PostgreSQL not reachable at {PG_ADMIN_URL} ({problem}); set ATELIER_TEST_PG_URL")
    return PG_ADMIN_URL


@pytest.fixture
def pg_url(pg_server: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    name = f"atelier_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(pg_server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(pg_server).set(database=name).render_as_string(hide_password=False)
    yield url
    with admin.connect() as conn:
        conn.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n AND pid <> pg_backend_pid()"
            ),
            {"n": name},
        )
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'atelier.db'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """moto's S3 server on 127.0.0.1 (a real HTTP server; boto3 speaks the S3 protocol to it)."""
    import logging

    from moto.server import ThreadedMotoServer

    # werkzeug logs every request from its own threads to the stderr it found first (a capture that
    # pytest has closed by the time later requests come): the test server stays quiet instead
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_env(s3_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Dummy credentials for the local S3 server; returns a fresh bucket name (with Object Lock,
    so audit anchors can be retained in it, as in production)."""
    import boto3

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    bucket = f"atelier-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    return bucket


@pytest.fixture(scope="session")
def tiny_models() -> tuple[Path, Path]:
    """The tiny SDXL-architecture models, built once and cached under .atelier/ (gitignored)."""
    from sdxl_core.tiny import ensure_tiny_models

    return ensure_tiny_models(REPO / ".atelier" / "test-cache" / "models")


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Prefect server (`prefect server start`, its services included) on its own PostgreSQL
    database, for the whole session; PREFECT_API_URL points at it. Returns the API URL.

    Where PostgreSQL is not reachable, Prefect's own test harness (a server on SQLite) instead."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if _pg_reachable() is not None:
        from prefect.testing.utilities import prefect_test_harness

        with prefect_test_harness(server_startup_timeout=180):
            yield PREFECT_API_URL.value()
        return
    from tests.outages import PrefectServer

    name = f"atelier_prefect_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    db_url = make_url(PG_ADMIN_URL).set(drivername="postgresql+asyncpg", database=name)
    server = PrefectServer(db_url.render_as_string(hide_password=False), tmp_path_factory.mktemp("prefect-home"))
    try:
        api = server.start()
    except RuntimeError as exc:
        pytest.fail(str(exc))
    try:
        with temporary_settings({PREFECT_API_URL: api}):
            yield api
    finally:
        server.stop()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
