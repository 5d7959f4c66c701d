"""The operator's path to a GPU pool: `atelier deploy`, then `atelier workers`, then runs from deployments.

Real parts: a Prefect server on PostgreSQL, `prefect worker` processes started by `atelier workers`
(one per "GPU", pinned with CUDA_VISIBLE_DEVICES; the machine has no GPU, so they run the tiny
models with ATELIER_DEVICE=cpu), flow runs created from the marketing deployment and executed by
those workers in their own processes, PostgreSQL for Atelier's records.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import anyio
import pytest

from flows.runtime import Runtime
from flows.settings import get_settings
from governance.records import Batch, Run
from tests.conftest import REPO
from tests.flows.conftest import token_file, write_prompts

POOL = "atelier-local-test"


async def _pool_state() -> dict:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        pool = await client.read_work_pool(POOL)
        queues = await client.read_work_queues(work_pool_name=POOL)
        nightly = await client.read_deployment_by_name("produce-approved/catalogue-nightly")
        marketing = await client.read_deployment_by_name("produce-batch/marketing-on-demand")
        retention = await client.read_deployment_by_name("apply-retention/retention-daily")
        governance = await client.read_work_pool("atelier-governance")
        return {
            "type": pool.type,
            "limit": pool.concurrency_limit,
            "queues": sorted((q.name, q.priority) for q in queues if q.name != "default"),
            "nightly": (
                nightly.work_queue_name,
                [s.schedule.cron for s in nightly.schedules],
                nightly.global_concurrency_limit.limit if nightly.global_concurrency_limit else None,
                nightly.parameters,
            ),
            "marketing": (
                marketing.work_queue_name,
                marketing.global_concurrency_limit.limit if marketing.global_concurrency_limit else None,
            ),
            "retention": (
                retention.work_pool_name,
                [s.schedule.cron for s in retention.schedules],
                retention.parameters,
                governance.type,
                governance.concurrency_limit,
            ),
        }


def test_deploy_then_one_worker_per_gpu_runs_batches_from_the_deployment(
    make_cli, tmp_path, tiny_models, pg_url, prefect_server, monkeypatch
) -> None:
    monkeypatch.setenv("ATELIER_REVIEW_PURPOSES", "[]")  # published straight away: this test is about the pool
    base, refiner = tiny_models
    flags = [
        "--data-dir",
        str(tmp_path / "d"),
        "--database-url",
        pg_url,
        "--base-model",
        str(base),
        "--refiner-model",
        str(refiner),
    ]
    cli = make_cli(flags)
    assert cli("db", "upgrade")[0] == 0
    cli("keys", "init")
    cli("users", "add", "admin", "--role", "admin")
    for name, role in [("maria", "requester"), ("omar", "approver"), ("svc-marketing", "operator")]:
        cli("users", "add", name, "--role", role, actor="admin")
    cli("licences", "register", "creativeml-openrail++-m", actor="admin")

    code, _, err = cli("deploy", "--pool", POOL, "--gpus", "0", actor="svc-marketing")
    assert code == 2 and 'Invalid value "0" for --gpus. Must be >= 1' in err
    code, _, err = cli("deploy", "--pool", POOL, "--gpus", "2", actor="maria")
    assert code == 4 and "operator role" in err  # only operators shape the GPU pool
    for _ in range(2):  # idempotent: a second deploy updates, it does not duplicate
        deployed = cli.json("deploy", "--pool", POOL, "--type", "process", "--gpus", "2", actor="svc-marketing")
    assert {d["name"] for d in deployed} == {
        "produce-approved/catalogue-nightly",
        "produce-batch/marketing-on-demand",
        "apply-retention/retention-daily",
        "catalogue-refresh/catalogue-refresh",
    }
    state = anyio.run(_pool_state)
    assert state["type"] == "process" and state["limit"] == 2  # one flow run per GPU in the pool
    assert state["queues"] == [("catalogue", 10), ("marketing", 1)]  # marketing first
    assert state["nightly"] == ("catalogue", ["0 2 * * *"], 1, {"purpose": "catalogue", "actor": "svc-catalogue"})
    assert state["marketing"] == ("marketing", 4)
    assert state["retention"] == ("atelier-governance", ["30 3 * * *"], {"actor": "svc-retention"}, "process", 1)

    batches = []
    for n in range(2):
        rows = [
            {
                "row_id": f"m{n}",
                "prompt": f"summer poster {n}",
                "seed": 70 + n,
                "width": 256,
                "height": 256,
                "steps": 2,
                "num_images": 2,
            }
        ]
        submitted = cli.json(
            "batch", "submit", str(write_prompts(tmp_path / f"m{n}.csv", rows)), "--purpose", "marketing", actor="maria"
        )
        batch_id = submitted["batch_id"]
        assert cli("batch", "approve", batch_id, "--content-sha256", submitted["content_sha256"], actor="omar")[0] == 0
        batches.append(batch_id)

    code, _, err = cli("workers", "--pool", POOL, "--gpus", "0,x", actor="svc-marketing")
    assert code == 2 and "GPU indices" in err

    env = {
        **os.environ,
        "PREFECT_API_URL": prefect_server,
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PYTHONUNBUFFERED": "1",
    }
    log = (tmp_path / "workers.log").open("wb")
    workers = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "workers", "--pool", POOL, "--gpus", "0,1", "--gpu-device", "cpu", *flags]
        + ["--token-file", str(token_file(tmp_path / "svc.token", cli.token("svc-marketing")))],
        env=env,
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        from prefect.deployments import run_deployment

        flow_runs = [
            run_deployment("produce-batch/marketing-on-demand", parameters={"batch_id": b}, timeout=0) for b in batches
        ]
        rt = Runtime(get_settings(database_url=pg_url, data_dir=tmp_path / "d"))
        deadline = time.time() + 420
        while time.time() < deadline:
            with rt.sessions() as s:
                done = [s.get(Batch, b).status for b in batches]
            if all(d in ("completed", "failed") for d in done) or workers.poll() is not None:
                break
            time.sleep(1)
        assert done == ["completed", "completed"], (tmp_path / "workers.log").read_text(errors="replace")[-4000:]
        with rt.sessions() as s:
            runs = [s.query(Run).filter(Run.batch_id == b).one() for b in batches]
        assert {r.flow_run_id for r in runs} == {str(f.id) for f in flow_runs}  # run from the deployment
        assert sorted(r.engine["cuda_visible_devices"] for r in runs) == ["0", "1"]  # one on each GPU
    finally:
        workers.send_signal(signal.SIGTERM)
        try:
            code = workers.wait(timeout=60)
        except subprocess.TimeoutExpired:
            workers.kill()
            pytest.fail("`atelier workers` did not stop on SIGTERM")
        log.close()
    assert code == 0
