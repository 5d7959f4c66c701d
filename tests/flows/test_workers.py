"""Two worker processes share one batch through leases; one is killed with SIGKILL mid-run.

Real parts: PostgreSQL, moto's S3 server over HTTP, Prefect's test server (both workers report
their flow runs to it), two `atelier run` processes. Afterwards every planned image is recorded
exactly once, the bucket holds no orphan, no chunk is left claimed, and the ledger verifies.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import boto3
import pytest
from sqlalchemy import func, select

from flows.runtime import Runtime
from flows.settings import get_settings
from governance.claims import chunk_progress
from governance.records import Image, image_id_for, prompt_id_for
from tests.flows.conftest import write_prompts

ROWS = [
    {"row_id": f"p{i}", "prompt": f"catalogue photo {i}", "seed": 900 + i, "width": 256, "height": 256,
     "steps": 2, "num_images": 2}
    for i in range(8)
]  # 16 images


def test_a_worker_killed_mid_batch_loses_and_duplicates_nothing(
    make_cli, tmp_path, tiny_models, pg_url, s3_server, s3_env, prefect_server, monkeypatch
) -> None:
    from prefect.settings import PREFECT_API_URL

    base, refiner = tiny_models
    flags = ["--data-dir", str(tmp_path / "d"), "--database-url", pg_url, "--store-url", f"s3://{s3_env}/w",
             "--s3-endpoint-url", s3_server, "--base-model", str(base), "--refiner-model", str(refiner)]
    cli = make_cli(flags)
    assert cli("db", "upgrade")[0] == 0
    cli("users", "add", "admin", "--role", "admin")
    for name, role in [("maria", "requester"), ("omar", "approver"), ("ops", "operator")]:
        cli("users", "add", name, "--role", role, actor="admin")
    cli("licences", "register", "creativeml-openrail++-m", actor="admin")
    cli("keys", "init")
    batch_id = cli.json("batch", "submit", str(write_prompts(tmp_path / "p.csv", ROWS)), "--purpose", "catalogue",
                        actor="maria")["batch_id"]
    cli("batch", "approve", batch_id, actor="omar")

    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "ATELIER_CHUNK_SIZE": "2",
           "ATELIER_LEASE_SECONDS": "6", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "flows.cli", "run", "--batch", batch_id, "--as", "ops", *flags]
    logs = [open(tmp_path / f"worker{i}.log", "w") for i in range(2)]  # noqa: SIM115
    workers = [subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT) for log in logs]

    rt = Runtime(get_settings(database_url=pg_url, data_dir=tmp_path / "d"))

    def recorded() -> int:
        with rt.sessions() as s:
            return int(s.scalar(select(func.count()).select_from(Image).where(Image.batch_id == batch_id)))

    deadline = time.time() + 300
    while recorded() < 3 and time.time() < deadline and workers[0].poll() is None:
        time.sleep(0.2)
    if workers[0].poll() is not None:
        pytest.fail("worker 0 finished before it could be killed:\n" + (tmp_path / "worker0.log").read_text()[-2000:])
    workers[0].send_signal(signal.SIGKILL)
    workers[0].wait()
    assert workers[1].wait(timeout=300) in (0, 1), (tmp_path / "worker1.log").read_text()[-3000:]

    time.sleep(7)  # the dead worker's leases expire
    [result] = cli.json("run", "--batch", batch_id, actor="ops")
    assert result["status"] == "completed" and result["remaining"] == 0

    with rt.sessions() as s:
        ids = list(s.scalars(select(Image.id).where(Image.batch_id == batch_id)))
        published = list(s.scalars(select(Image.store_key).where(Image.batch_id == batch_id,
                                                                 Image.status == "published")))
        assert chunk_progress(s, batch_id) == {"done": 8}
    expected = {image_id_for(prompt_id_for(batch_id, r["row_id"]), i) for r in ROWS for i in range(2)}
    assert sorted(ids) == sorted(expected)  # every image once: the primary key forbids twice
    keys = sorted(o["Key"] for o in boto3.client("s3", endpoint_url=s3_server)
                  .list_objects_v2(Bucket=s3_env, Prefix="w/images/").get("Contents", []))
    assert [k for k in keys if k.endswith(".png")] == sorted(f"w/{k}" for k in published)  # no orphan image
    assert len(keys) == 2 * len(published)
    assert cli.json("audit", "verify")["ok"]
