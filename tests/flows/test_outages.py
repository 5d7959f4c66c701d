"""Outages are ridden out with retries and backoff, not lost work (issue 6).

Real parts: moto's S3 server behind a proxy that fails on a plan (HTTP 500s, then requests held
past the client's timeout), a private PostgreSQL server stopped and started for real mid-run,
Prefect's test server. After each outage the run completes by itself: every image published
exactly once, no orphan object, the audit chain and ledger intact.
"""

from __future__ import annotations

import logging
import threading
import time

import boto3
import pytest
from sqlalchemy import create_engine, func, select

from governance.records import Image, image_id_for, prompt_id_for
from tests.flows.conftest import approved_batch
from tests.outages import FaultyS3Proxy, Outage, PostgresCluster, postgres_bin

ROWS = [
    {
        "row_id": f"p{i}",
        "prompt": f"catalogue photo {i}",
        "seed": 40 + i,
        "width": 256,
        "height": 256,
        "steps": 2,
        "num_images": 2,
    }
    for i in range(4)
]  # 8 images


def _expected(batch_id: str) -> list[str]:
    return sorted(image_id_for(prompt_id_for(batch_id, r["row_id"]), i) for r in ROWS for i in range(2))


class _Retries(logging.Handler):
    """What governance.retry tells the operator (attached to its logger: Prefect reconfigures the root)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def retries():  # type: ignore[no-untyped-def]
    handler = _Retries()
    logger = logging.getLogger("governance.retry")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


def test_an_object_store_failing_for_a_while_is_ridden_out(
    make_cli, tmp_path, tiny_models, pg_url, s3_server, s3_env, prefect_server, monkeypatch, retries
) -> None:
    # boto3 alone gives up after 2 attempts here, so the outages (4 s each) outlast it and
    # governance.retry's backoff has to carry the run through.
    monkeypatch.setenv("ATELIER_S3_MAX_ATTEMPTS", "2")
    monkeypatch.setenv("ATELIER_S3_TIMEOUT_SECONDS", "1")
    monkeypatch.setenv("ATELIER_OUTAGE_TOLERANCE_SECONDS", "90")
    monkeypatch.setenv("ATELIER_CHUNK_SIZE", "2")
    base, refiner = tiny_models
    plan = [Outage(after=5, mode="500", seconds=4), Outage(after=6, mode="stall", seconds=4)]
    with FaultyS3Proxy(s3_server, plan, stall_s=2.5) as proxy:
        flags = [
            "--data-dir",
            str(tmp_path / "d"),
            "--database-url",
            pg_url,
            "--store-url",
            f"s3://{s3_env}/o",
            "--s3-endpoint-url",
            proxy.url,
            "--base-model",
            str(base),
            "--refiner-model",
            str(refiner),
        ]
        cli = make_cli(flags)
        batch_id = approved_batch(cli, tmp_path, ROWS)
        code, out, err = cli("run", "--batch", batch_id, "--json", actor="ops")
        assert code == 0, err
        assert proxy.failed["500"] > 0 and proxy.failed["stall"] > 0, proxy.failed  # both outages happened
        assert not proxy.plan
        assert any("retrying" in m for m in retries.messages), "governance.retry should have carried the run"
        assert any("recovered" in m for m in retries.messages)
        assert cli.json("audit", "verify")["ok"]

    engine = create_engine(pg_url)
    with engine.connect() as conn:
        rows = conn.execute(select(Image.id, Image.status, Image.store_key).where(Image.batch_id == batch_id)).all()
    engine.dispose()
    assert sorted(r.id for r in rows) == _expected(batch_id)
    assert {r.status for r in rows} == {"published"}
    keys = sorted(
        o["Key"]
        for o in boto3.client("s3", endpoint_url=s3_server)
        .list_objects_v2(Bucket=s3_env, Prefix="o/images/")
        .get("Contents", [])
    )
    assert [k for k in keys if k.endswith(".png")] == sorted(f"o/{r.store_key}" for r in rows)  # no orphan
    assert len(keys) == 3 * len(rows)  # each image, its provenance record and thumbnail, nothing else


@pytest.fixture
def pg_cluster():  # type: ignore[no-untyped-def]
    if postgres_bin() is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed: cannot restart a private server")
    cluster = PostgresCluster()
    cluster.start()
    yield cluster
    cluster.destroy()


def test_a_database_restart_mid_run_is_ridden_out(
    make_cli, tmp_path, tiny_models, pg_cluster, prefect_server, monkeypatch, retries
) -> None:
    monkeypatch.setenv("ATELIER_OUTAGE_TOLERANCE_SECONDS", "90")
    monkeypatch.setenv("ATELIER_CHUNK_SIZE", "2")
    base, refiner = tiny_models
    flags = [
        "--data-dir",
        str(tmp_path / "d"),
        "--database-url",
        pg_cluster.url,
        "--base-model",
        str(base),
        "--refiner-model",
        str(refiner),
    ]
    cli = make_cli(flags)
    batch_id = approved_batch(cli, tmp_path, ROWS)
    restarted: dict[str, int] = {}

    def restart_when_images_are_recorded() -> None:
        watcher = create_engine(pg_cluster.url)
        deadline = time.time() + 300
        while time.time() < deadline:
            with watcher.connect() as conn:
                n = conn.scalar(select(func.count()).select_from(Image))
            if n >= 2:
                break
            time.sleep(0.05)
        watcher.dispose()
        restarted["after_images"] = int(n)
        pg_cluster.stop()  # every connection is cut; new ones are refused until it is back
        time.sleep(3)
        pg_cluster.start()

    restarter = threading.Thread(target=restart_when_images_are_recorded)
    restarter.start()
    code, out, err = cli("run", "--batch", batch_id, "--json", actor="ops")
    restarter.join(timeout=120)
    assert code == 0, err
    assert 2 <= restarted["after_images"] < len(_expected(batch_id)), restarted  # the restart came mid-run
    assert any("retrying" in m for m in retries.messages), "governance.retry should have carried the run"

    engine = create_engine(pg_cluster.url)
    with engine.connect() as conn:
        ids = sorted(conn.scalars(select(Image.id).where(Image.batch_id == batch_id)))
    engine.dispose()
    assert ids == _expected(batch_id)
    report = cli.json("audit", "verify")
    assert report["ok"], report
