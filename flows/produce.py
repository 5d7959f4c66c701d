"""The Prefect flow that turns an approved batch into published images.

    produce_batch(batch_id, actor)
      1. start the run: refuse unless approved by another user for this exact content [run.started]
      2. work out what is still to do (images without a record: a re-run resumes, never repeats)
      3. per chunk: generate (base -> refiner), safety, then watermark/verify/encode/hash/publish
         each image, committing each image's record and audit event together
      4. close the run [run.completed]

Each task is a thin wrapper around governance or sdxl_core functions.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.context import get_run_context

from flows.runtime import Runtime, active_settings
from governance.batches import get_batch
from governance.licences import record_model_version
from governance.publish import SafetyContext, finalize_image
from governance.records import Approval, Run
from governance.runs import PlannedImage, finish_run, pending_images, prompts_by_id, start_run
from sdxl_core.seeds import image_seed

log = logging.getLogger(__name__)


def _chunks(items: Sequence[PlannedImage], size: int) -> list[list[PlannedImage]]:
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


@task(name="start-run", cache_policy=NO_CACHE)
def start_run_task(rt: Runtime, batch_id: str, actor: str, flow_run_id: str) -> str:
    """Record the model versions in use and open the run (the approval gate)."""
    engine = rt.engine
    with rt.sessions.begin() as session:
        get_batch(session, batch_id)  # a clear error for an unknown batch before anything else
        versions = [
            record_model_version(
                session, actor, c.role, c.name, c.source, c.sha256, c.files, rt.settings.model_licence
            )
            for c in engine.components
        ]
        run = start_run(
            session, actor, batch_id, versions,
            engine={"device": rt.settings.device, "dtype": rt.settings.dtype, "safety_model": rt.safety.model_id},
            flow_run_id=flow_run_id,
        )
        return run.id


@task(name="generate-and-publish", cache_policy=NO_CACHE)
def generate_and_publish_task(rt: Runtime, run_id: str, actor: str, chunk: list[PlannedImage]) -> dict[str, int]:
    """Generate one chunk of images, check them and publish those that pass."""
    from sdxl_core.engine import ImageRequest

    with rt.sessions() as session:
        prompts = prompts_by_id(session, sorted({p.prompt_id for p in chunk}))
    requests = []
    for planned in chunk:
        p = prompts[planned.prompt_id]
        requests.append(
            ImageRequest(
                prompt=p.prompt, negative_prompt=p.negative_prompt, seed=image_seed(p.seed, planned.image_index),
                width=p.width, height=p.height, steps=p.steps, guidance_scale=p.guidance_scale,
                refiner_split=p.refiner_split,
            )
        )
    generated = rt.engine.generate(requests)
    checker = rt.safety
    verdicts = checker.check([g.pixels for g in generated])
    ctx = SafetyContext(model_id=checker.model_id, policy_version=checker.policy.version)
    counts = {"published": 0, "quarantined": 0}
    for planned, gen, verdict in zip(chunk, generated, verdicts, strict=True):
        with rt.sessions.begin() as session:  # one image, its record and its audit event: one transaction
            run = session.get(Run, run_id)
            assert run is not None
            approval = session.get(Approval, run.approval_id)
            assert approval is not None
            prompt = prompts_by_id(session, [planned.prompt_id])[planned.prompt_id]
            record = finalize_image(
                session, actor, rt.store, run, approval, prompt, planned.image_index, gen.request.seed,
                gen.pixels, verdict, ctx,
            )
            counts[record.status] += 1
    return counts


@task(name="finish-run", cache_policy=NO_CACHE)
def finish_run_task(rt: Runtime, run_id: str, actor: str, error: str | None = None) -> dict[str, Any]:
    with rt.sessions.begin() as session:
        run = finish_run(session, actor, run_id, error)
        return {"run_id": run.id, "batch_id": run.batch_id, "status": run.status, **run.summary}


@flow(name="produce-batch", flow_run_name="produce-{batch_id}")
def produce_batch(batch_id: str, actor: str) -> dict[str, Any]:
    """Generate, check, watermark and publish every pending image of an approved batch."""
    logger = get_run_logger()
    rt = Runtime(active_settings())
    flow_run_id = str(get_run_context().flow_run.id)  # type: ignore[union-attr]
    run_id = start_run_task(rt, batch_id, actor, flow_run_id)
    with rt.sessions() as session:
        todo = pending_images(session, batch_id)
    logger.info("run %s: %d images to make for batch %s", run_id, len(todo), batch_id)
    try:
        for chunk in _chunks(todo, rt.settings.chunk_size):
            counts = generate_and_publish_task(rt, run_id, actor, chunk)
            logger.info("chunk of %d: %s", len(chunk), counts)
    except Exception as exc:
        finish_run_task(rt, run_id, actor, error=f"{type(exc).__name__}: {exc}")
        raise
    summary = finish_run_task(rt, run_id, actor)
    logger.info("run %s finished: %s", run_id, summary)
    return summary


