"""Deployments and the GPU work pool, registered on a real Prefect server (the test harness's)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from tests.conftest import REPO


def test_prefect_yaml_deployments_point_at_real_flows() -> None:
    import importlib

    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    names = {d["name"]: d for d in spec["deployments"]}
    assert set(names) == {"catalogue-nightly", "marketing-on-demand", "retention-daily", "catalogue-refresh"}
    assert names["catalogue-nightly"]["schedules"][0]["cron"]
    assert names["retention-daily"]["schedules"][0]["cron"]  # retention runs by itself, daily
    for d in spec["deployments"]:
        module, _, attr = d["entrypoint"].partition(":")
        flow = getattr(importlib.import_module(module.removesuffix(".py").replace("/", ".")), attr)
        assert set(d["parameters"]) <= set(flow.parameters.properties)
        assert d["concurrency_limit"] >= 1
    # the GPU workers never run the flow that deletes: it has its own pool (and credentials)
    assert {d["name"]: d["work_pool"]["name"] for d in spec["deployments"]} == {
        "catalogue-nightly": "atelier-gpu",
        "marketing-on-demand": "atelier-gpu",
        "retention-daily": "atelier-governance",
        "catalogue-refresh": "atelier-gpu",
    }


def test_gpu_work_pool_with_the_kubernetes_job_template(prefect_server) -> None:
    import anyio
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    template = json.loads(Path(REPO / "infra" / "k8s-gpu-job-template.json").read_text())

    async def create() -> tuple[dict, list]:
        async with get_client() as client:
            await client.create_work_pool(
                WorkPoolCreate(
                    name="atelier-gpu-test", type="kubernetes", base_job_template=template, concurrency_limit=8
                )
            )
            for name, priority in [("marketing", 1), ("catalogue", 10)]:
                await client.create_work_queue(name=name, work_pool_name="atelier-gpu-test", priority=priority)
            pool = await client.read_work_pool("atelier-gpu-test")
            queues = await client.read_work_queues(work_pool_name="atelier-gpu-test")
            return pool.base_job_template, [(q.name, q.priority) for q in queues]

    stored, queues = anyio.run(create)
    manifest = stored["job_configuration"]["job_manifest"]
    container = manifest["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "{{ gpus }}"
    assert stored["variables"]["properties"]["gpus"]["default"] == 1
    assert ("marketing", 1) in queues and ("catalogue", 10) in queues
