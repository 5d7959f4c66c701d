"""From the laptop demo to a GPU pool on Prefect: `atelier deploy` and `atelier workers`.

- `deploy_pool` creates (or updates) the GPU work pool with its concurrency limit (one flow run
  per GPU), its two queues (marketing before catalogue) and the deployments of `prefect.yaml`,
  on the Prefect server at PREFECT_API_URL. Idempotent: run it again after every release.
  A `process` pool runs flows in the checkout it was deployed from; a `kubernetes` pool uses
  infra/k8s-gpu-job-template.json (one Job per flow run asking for `nvidia.com/gpu`) and the
  container's /app.
- `run_workers` starts one `prefect worker` process per GPU on this machine, each pinned with
  CUDA_VISIBLE_DEVICES and limited to one flow run at a time, passes Atelier's settings to them
  as ATELIER_* variables, restarts a worker that dies, and stops them all on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from governance.errors import InvalidInput

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
PREFECT_YAML = REPO / "prefect.yaml"
K8S_TEMPLATE = REPO / "infra" / "k8s-gpu-job-template.json"
QUEUES = {"marketing": 1, "catalogue": 10}  # lower runs first: marketing's urgent requests jump the queue
# Governance flows (retention) need no GPU and act with credentials the GPU workers must not hold
# (delete, legal holds): their own process pool, one flow run at a time, served by a worker started
# where those credentials are (`prefect worker start --pool atelier-governance`).
GOVERNANCE_POOL = "atelier-governance"


@dataclass
class Deployed:
    name: str
    flow: str
    queue: str
    concurrency_limit: int | None
    schedules: list[str]


def load_deployments(path: Path = PREFECT_YAML) -> list[dict[str, Any]]:
    import yaml

    try:
        spec = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror}") from None
    return list(spec.get("deployments") or [])


def _flow_of(entrypoint: str) -> Any:  # the flow object named by a prefect.yaml entrypoint
    module, _, attr = entrypoint.partition(":")
    return getattr(importlib.import_module(module.removesuffix(".py").replace("/", ".")), attr)


async def _deploy(pool: str, pool_type: str, gpus: int, working_dir: str) -> list[Deployed]:
    import json

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import DeploymentScheduleCreate, WorkPoolCreate, WorkPoolUpdate
    from prefect.client.schemas.schedules import CronSchedule
    from prefect.exceptions import ObjectAlreadyExists
    from prefect.utilities.callables import parameter_schema
    from prefect.workers.process import ProcessWorker

    if pool_type == "kubernetes":
        template = json.loads(K8S_TEMPLATE.read_text())
        path, pull = "/app", _spec_pull()  # prefect.yaml's own pull steps: the container's /app
    else:
        template = ProcessWorker.get_default_base_job_template()
        path, pull = working_dir, [{"prefect.deployments.steps.set_working_directory": {"directory": working_dir}}]
    async with get_client() as client:
        try:
            await client.create_work_pool(
                WorkPoolCreate(name=pool, type=pool_type, base_job_template=template, concurrency_limit=gpus)
            )
        except ObjectAlreadyExists:
            existing = await client.read_work_pool(pool)
            if existing.type != pool_type:
                raise InvalidInput(
                    f"work pool {pool!r} exists with type {existing.type}, not {pool_type}: "
                    "choose another --pool name or delete it first"
                ) from None
            await client.update_work_pool(pool, WorkPoolUpdate(base_job_template=template, concurrency_limit=gpus))
        for queue, priority in QUEUES.items():
            try:
                await client.create_work_queue(name=queue, work_pool_name=pool, priority=priority)
            except ObjectAlreadyExists:
                q = await client.read_work_queue_by_name(queue, work_pool_name=pool)
                await client.update_work_queue(q.id, priority=priority)
        try:
            await client.create_work_pool(
                WorkPoolCreate(
                    name=GOVERNANCE_POOL,
                    type="process",
                    base_job_template=ProcessWorker.get_default_base_job_template(),
                    concurrency_limit=1,
                )
            )
        except ObjectAlreadyExists:
            pass
        deployed = []
        for d in load_deployments():
            flow = _flow_of(d["entrypoint"])
            governance = d["work_pool"]["name"] == GOVERNANCE_POOL
            target_pool = GOVERNANCE_POOL if governance else pool
            flow_id = await client.create_flow(flow)
            schedules = [
                DeploymentScheduleCreate(schedule=CronSchedule(cron=s["cron"], timezone=s.get("timezone")))
                for s in d.get("schedules") or []
            ]
            queue = d["work_pool"]["work_queue_name"]
            await client.create_deployment(
                flow_id=flow_id,
                name=d["name"],
                description=d.get("description"),
                entrypoint=d["entrypoint"],
                work_pool_name=target_pool,
                work_queue_name=queue,
                parameters=d.get("parameters") or {},
                parameter_openapi_schema=parameter_schema(flow).model_dump_for_openapi(),
                enforce_parameter_schema=True,
                schedules=schedules,
                concurrency_limit=d.get("concurrency_limit"),
                path=working_dir if governance else path,
                pull_steps=[{"prefect.deployments.steps.set_working_directory": {"directory": working_dir}}]
                if governance
                else pull,
            )
            deployed.append(
                Deployed(
                    f"{flow.name}/{d['name']}",
                    flow.name,
                    queue,
                    d.get("concurrency_limit"),
                    [s["cron"] for s in d.get("schedules") or []],
                )
            )
        return deployed


def _spec_pull() -> list[dict[str, Any]]:
    import yaml

    return list(yaml.safe_load(PREFECT_YAML.read_text()).get("pull") or [])


def deploy_pool(pool: str, pool_type: str, gpus: int, working_dir: Path = REPO) -> list[Deployed]:
    import anyio

    if gpus < 1:
        raise InvalidInput(f"--gpus must be at least 1, got {gpus}")
    return anyio.run(_deploy, pool, pool_type, gpus, str(working_dir))


def settings_env(settings: Any) -> dict[str, str]:
    """Atelier's settings as ATELIER_* variables, for processes started from here (the flow runs)."""
    import json

    out = {}
    for name, value in settings.model_dump().items():
        if value is None or name in ("token", "token_file"):  # workers act as the deployment, never as a person
            continue
        out[f"ATELIER_{name.upper()}"] = json.dumps(value) if isinstance(value, dict) else str(value)
    return out


def parse_gpus(spec: str) -> list[str]:
    gpus = [g.strip() for g in spec.split(",") if g.strip()]
    if not gpus or not all(g.isdigit() for g in gpus) or len(set(gpus)) != len(gpus):
        raise InvalidInput(f"--gpus {spec!r}: give distinct GPU indices separated by commas, e.g. 0,1,2,3")
    return gpus


def run_workers(gpus: list[str], pool: str, device: str, env: dict[str, str], restart_delay: float = 5.0) -> int:
    """One `prefect worker` per GPU, supervised, until SIGINT/SIGTERM; returns 0 on a clean stop."""
    host = socket.gethostname()
    stopping = False

    def start(gpu: str) -> subprocess.Popen[bytes]:
        worker_env = {**os.environ, **env, "CUDA_VISIBLE_DEVICES": gpu, "ATELIER_DEVICE": device}
        cmd = [
            sys.executable,
            "-m",
            "prefect",
            "worker",
            "start",
            "--pool",
            pool,
            "--type",
            "process",
            "--limit",
            "1",
            "--name",
            f"{host}-gpu{gpu}",
        ]
        print(f"worker {host}-gpu{gpu}: CUDA_VISIBLE_DEVICES={gpu}, one flow run at a time", flush=True)
        return subprocess.Popen(cmd, env=worker_env)

    def stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    workers = {gpu: start(gpu) for gpu in gpus}
    try:
        while not stopping:
            time.sleep(0.5)
            for gpu, proc in list(workers.items()):
                if proc.poll() is not None and not stopping:
                    print(
                        f"worker gpu{gpu} exited with {proc.returncode}; restarting in {restart_delay:.0f} s",
                        file=sys.stderr,
                        flush=True,
                    )
                    time.sleep(restart_delay)
                    workers[gpu] = start(gpu)
    finally:
        for proc in workers.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in workers.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 0
