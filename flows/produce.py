"""The Prefect flow that turns an approved batch into published images.

    produce_batch(batch_id, actor)
      1. start-run: record model versions; refuse unless approved by another user for this
         exact content                                                        [run.started]
      2. work out what is still to do (images without a record: a re-run resumes, never repeats)
      3. per chunk: generate-chunk (base -> refiner, then safety), and hand each image that
         passed to the after-decode pool (watermark, encode, decode-verify, hash) so the next
         chunk generates while the CPU works; publish-ready uploads and records finished images
         in order, one transaction per image                [image.published / image.quarantined]
         every ATELIER_ANCHOR_INTERVAL_SECONDS, anchor-audit anchors the audit chain to WORM storage
      4. finish-run, then the chain anchored                    [run.completed, audit.anchored]
    emit-lineage sends the run's OpenLineage event: START once the run is open, COMPLETE or FAIL
    after finish-run (governance.lineage; a file by default, Marquez with ATELIER_LINEAGE_URL).

Each task is a thin wrapper around governance or sdxl_core functions.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import numpy as np
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.context import get_run_context
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from flows.pool import BoundedPool
from flows.runtime import Runtime, active_settings
from flows.worker import ChunkWorker, Claim, Claimed, Done, Wait
from governance.batches import get_batch
from governance.claims import (
    claim_chunk,
    complete_chunk,
    plan_chunks,
    release_chunks,
    renew_lease,
    seconds_until_claimable,
)
from governance.licences import record_model_version
from governance.lineage import LineageError, emit_run_event, open_sink
from governance.pipelines import PipelineConfig, batch_configs, config_of, engine_needs, image_slot, pick_config
from governance.publish import (
    EngineTime,
    MarkedImage,
    SafetyContext,
    credential_manifest,
    finalize_image,
    mark_and_encode,
)
from governance.records import Approval, Batch, Run
from governance.records import Image as ImageRecord
from governance.runs import (
    PlannedImage,
    RunSummary,
    finish_run,
    pending_images,
    planned_images,
    prompts_by_id,
    start_run,
)
from governance.safety import SafetyResult
from sdxl_core.seeds import image_seed

log = logging.getLogger(__name__)
T = TypeVar("T")


def _transaction(rt: Runtime, what: str, fn: Callable[[Session], T]) -> T:
    """Run `fn` in one transaction, retried whole through a database or object-store outage.

    Safe because every step is idempotent (governance.retry says what counts as transient)."""

    def attempt() -> T:
        with rt.sessions.begin() as session:
            return fn(session)

    return rt.backoff.run(attempt, what)


@dataclass
class Checked:
    """One generated image with its safety verdict and, once the pool has it, its marked bytes."""

    planned: PlannedImage
    seed: int
    pixels: np.ndarray
    safety: SafetyResult
    marked: Future[MarkedImage] | None = None
    chunk_id: str = ""
    engine_time: EngineTime | None = None  # its share of its configuration's generate call


@task(name="start-run", cache_policy=NO_CACHE)
def start_run_task(rt: Runtime, batch_id: str, actor: str, flow_run_id: str, worker: str) -> str:
    """Record the model versions in use and open the run (the approval gate)."""
    rt.credentials  # no signer, no run: fail before any GPU work  # noqa: B018
    rt.watermark_key  # no watermark key, no run either  # noqa: B018
    rt.checkpoint_signer()
    policy = rt.settings.load_prompt_policy()  # screening runs again, against the policy in force now
    engine = rt.engine

    def open_run(session: Session) -> str:
        get_batch(session, batch_id)  # a clear error for an unknown batch before anything else
        versions = [
            record_model_version(session, actor, c.role, c.name, c.source, c.sha256, c.files, rt.settings.model_licence)
            for c in engine.components
        ]
        run = start_run(
            session,
            actor,
            batch_id,
            versions,
            engine={
                **engine.describe(),
                "safety_model": rt.safety.model_id,
                "worker": worker,
                "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            },
            flow_run_id=flow_run_id,
            prompt_policy=policy,
        )
        return run.id

    return _transaction(rt, "start-run", open_run)


def _engine_clock(device: str) -> Callable[[], float]:
    """A clock for engine time: on a GPU it waits for the queued kernels first, so a configuration's
    time is the GPU's work on it, not the time to queue it."""
    if not device.startswith("cuda"):
        return time.perf_counter
    import torch

    def clock() -> float:
        torch.cuda.synchronize()
        return time.perf_counter()

    return clock


@task(name="generate-chunk", cache_policy=NO_CACHE)
def generate_chunk_task(
    rt: Runtime, chunk: list[PlannedImage], configs: dict[str, PipelineConfig] | None = None
) -> tuple[list[Checked], float, float]:
    """Generate one chunk (base alone, or base -> refiner, per image's configuration) and score it
    against the safety policy. Each configuration's images are generated in a call of their own, timed,
    and each image records its share of that time (cost per image, per configuration).

    Returns the checked images, the seconds in the engine and the seconds in the safety check."""
    from sdxl_core.engine import ImageRequest

    prompts = _transaction(rt, "read prompts", lambda s: prompts_by_id(s, sorted({p.prompt_id for p in chunk})))
    groups: dict[str, list[tuple[int, ImageRequest]]] = {}
    for position, planned in enumerate(chunk):
        p = prompts[planned.prompt_id]
        config = pick_config(configs or batch_configs(None), p.pipeline, p.num_images, planned.image_index)
        request = ImageRequest(
            prompt=p.prompt,
            negative_prompt=p.negative_prompt,
            seed=image_seed(p.seed, image_slot(p.num_images, planned.image_index)),  # the same in every configuration
            width=p.width,
            height=p.height,
            steps=p.steps,
            guidance_scale=p.guidance_scale,
            refiner_split=p.refiner_split if config.refiner else None,
        )
        groups.setdefault(config.name, []).append((position, request))
    engine = rt.engine
    clock = _engine_clock(engine.config.device)
    results: list[Any] = [None] * len(chunk)
    times: list[EngineTime | None] = [None] * len(chunk)
    engine_s = 0.0
    for members in groups.values():
        t0 = clock()
        generated = engine.generate([r for _, r in members])
        seconds = clock() - t0
        engine_s += seconds
        for (position, _), g in zip(members, generated, strict=True):
            results[position] = g
            times[position] = EngineTime(seconds / len(members), engine.config.device)
    t1 = time.perf_counter()
    verdicts = rt.safety.check([g.pixels for g in results])
    checked = [
        Checked(planned, g.request.seed, g.pixels, v, engine_time=t)
        for planned, g, v, t in zip(chunk, results, verdicts, times, strict=True)
    ]
    return checked, engine_s, time.perf_counter() - t1


@task(name="publish-ready", cache_policy=NO_CACHE)
def publish_ready_task(
    rt: Runtime, run_id: str, actor: str, queue: Sequence[Checked], wait: bool
) -> tuple[list[str], float]:
    """Upload and record, in order from the front of `queue`, every image whose after-decode work is
    done (all of them if `wait`); `queue` itself is not changed.

    Returns the chunk id of each image recorded (the caller drops that many from its queue) and the
    seconds spent waiting for after-decode work. An outage that outlasts the retries raises with the
    rest unrecorded: they are made by the next run, never half-done."""
    finished: list[str] = []
    waited = 0.0
    ctx = SafetyContext(model_id=rt.safety.model_id, policy_version=rt.safety.policy.version)
    for item in queue:
        if not (wait or item.marked is None or item.marked.done()):
            break
        t0 = time.perf_counter()
        marked = item.marked.result() if item.marked is not None else None
        waited += time.perf_counter() - t0

        def record(session: Session, item: Checked = item, marked: MarkedImage | None = marked) -> None:
            # one image: its upload, record and audit event
            run = session.get(Run, run_id)
            approval = session.get(Approval, run.approval_id) if run else None
            assert run is not None and approval is not None
            prompt = prompts_by_id(session, [item.planned.prompt_id])[item.planned.prompt_id]
            finalize_image(
                session,
                actor,
                rt.store,
                run,
                approval,
                prompt,
                item.planned.image_index,
                item.seed,
                item.pixels,
                item.safety,
                ctx,
                marked=marked,
                engine_time=item.engine_time,
            )

        try:
            _transaction(rt, f"publish {item.planned.image_id}", record)
        except IntegrityError:  # another worker recorded this image first (its copy of the lease ran out)

            def recorded(session: Session, image_id: str = item.planned.image_id) -> bool:
                return session.get(ImageRecord, image_id) is not None

            if not _transaction(rt, "check image", recorded):
                raise
            log.info("image %s was recorded by another worker meanwhile", item.planned.image_id)
        finished.append(item.chunk_id)
    return finished, waited


def _manifests(rt: Runtime, run_id: str, planned: list[PlannedImage]) -> dict[str, dict[str, Any]]:
    def read(session: Session) -> dict[str, dict[str, Any]]:
        run = session.get(Run, run_id)
        assert run is not None
        approval = session.get(Approval, run.approval_id)
        batch = session.get(Batch, run.batch_id)
        assert approval is not None and batch is not None
        prompts = prompts_by_id(session, sorted({p.prompt_id for p in planned}))
        out = {}
        for p in planned:
            prompt = prompts[p.prompt_id]
            config = config_of(batch.pipelines, prompt.pipeline, prompt.num_images, p.image_index)
            out[p.image_id] = credential_manifest(p.image_id, batch, approval, run, config)
        return out

    return _transaction(rt, "read manifests", read)


@task(name="finish-run", cache_policy=NO_CACHE)
def finish_run_task(
    rt: Runtime, run_id: str, actor: str, timing: dict[str, float], error: str | None = None
) -> RunSummary:
    def close(session: Session) -> RunSummary:
        run = finish_run(session, actor, run_id, error)
        run.summary = {**run.summary, **{k: round(v, 3) for k, v in timing.items()}}
        return RunSummary.of(run)

    result = _transaction(rt, "finish-run", close)
    anchor = rt.anchor(actor)  # every run ends with its audit trail anchored to WORM storage
    return replace(result, anchored_seq=anchor.seq if anchor else None)


@task(name="anchor-audit", cache_policy=NO_CACHE)
def anchor_task(rt: Runtime, actor: str) -> int | None:
    """Anchor the audit chain's head to WORM storage (every ATELIER_ANCHOR_INTERVAL_SECONDS during a run):
    bounds what a database writer could delete from the newest events unnoticed."""
    anchor = rt.anchor(actor)
    return anchor.seq if anchor else None


@task(name="emit-lineage", cache_policy=NO_CACHE)
def emit_lineage_task(
    rt: Runtime, run_id: str, event_type: str, error: str | None = None, must_deliver: bool = True
) -> None:
    """Send the run's OpenLineage event (START, COMPLETE or FAIL) to the configured sink (a file by default)."""
    sink = open_sink(rt.settings.lineage_url, rt.settings.data_dir)
    try:
        _transaction(rt, f"lineage {event_type}", lambda s: emit_run_event(s, sink, run_id, event_type, error))
    except LineageError:
        if must_deliver:
            raise
        log.exception("lineage %s event of run %s was not delivered", event_type, run_id)
    finally:
        sink.close()


@task(name="claim-chunk", cache_policy=NO_CACHE)
def claim_chunk_task(
    rt: Runtime, batch_id: str, worker: str, plan: dict[str, PlannedImage], finished: list[str], in_flight: list[str]
) -> Claim:
    """Claim the next chunk of the batch (lease): `Claimed` with its images that still lack a record,
    `Wait` when the only chunks left are leased to others (their lease may run out: a killed worker's
    chunks come back), `Done` when every chunk is done.

    `plan` is the batch's planned images by id (fixed: the approved content cannot change), so a
    claim reads only its own chunk's records, not the whole batch's. In the same transaction it first
    completes the worker's `finished` chunks and renews the leases of those `in_flight`."""

    def claim(session: Session) -> Claim:
        _complete_and_renew(session, rt, worker, finished, in_flight)
        plan_chunks(session, batch_id, rt.settings.chunk_size)
        chunk = claim_chunk(session, batch_id, worker, rt.settings.lease_seconds)
        if chunk is None:
            seconds = seconds_until_claimable(session, batch_id)
            return Done() if seconds is None else Wait(seconds)
        recorded = set(session.scalars(select(ImageRecord.id).where(ImageRecord.id.in_(chunk.image_ids))))
        return Claimed(chunk.id, [plan[i] for i in chunk.image_ids if i not in recorded])

    return _transaction(rt, "claim-chunk", claim)


@task(name="complete-chunks", cache_policy=NO_CACHE)
def complete_chunks_task(rt: Runtime, worker: str, chunk_ids: list[str], in_flight: list[str]) -> None:
    _transaction(rt, "complete-chunks", lambda s: _complete_and_renew(s, rt, worker, chunk_ids, in_flight))


def _complete_and_renew(session: Session, rt: Runtime, worker: str, finished: list[str], in_flight: list[str]) -> None:
    for chunk_id in finished:
        complete_chunk(session, chunk_id, worker)
    for chunk_id in in_flight:  # still working on these: keep them
        renew_lease(session, chunk_id, worker, rt.settings.lease_seconds)


def _release(rt: Runtime, worker: str, chunk_ids: list[str]) -> None:
    _transaction(rt, "release chunks", lambda s: release_chunks(s, chunk_ids, worker))


def _run_artifact(rt: Runtime, run_id: str, summary: RunSummary) -> None:
    """A table per run in Prefect's UI: every image this run recorded, with where it went."""
    from prefect.artifacts import create_table_artifact

    rows = _transaction(
        rt,
        "read run images",
        lambda session: [
            {
                "image": i.id,
                "row": i.prompt.row_id,
                "status": i.status,
                "key": i.store_key or "",
                "reasons": "; ".join(i.safety_reasons),
            }
            for i in session.query(ImageRecord).filter(ImageRecord.run_id == run_id)
        ],
    )
    create_table_artifact(
        key=f"run-{run_id[:8]}",
        table=rows,
        description=f"batch {summary.batch_id}: {summary.published} published, "
        f"{summary.quarantined} quarantined, {summary.remaining} remaining",
    )


@flow(name="produce-batch", flow_run_name="produce-{batch_id}")
def produce_batch(batch_id: str, actor: str, token_id: str | None = None) -> RunSummary:
    """Generate, check, watermark and publish pending images of an approved batch, chunk by claimed chunk.

    Several flow runs (workers) may work on one batch at once: each claims chunks with a lease.
    `actor` is the operator who started it (the deployment's service user for scheduled runs) and
    `token_id` the token they authenticated with, recorded on the run's audit events.
    """
    logger = get_run_logger()
    rt = Runtime(active_settings(), token_id=token_id)
    flow_run_id = str(get_run_context().flow_run.id)  # type: ignore[union-attr]
    worker = f"{socket.gethostname()}:{os.getpid()}:{flow_run_id[:8]}"
    configs = _transaction(rt, "read configurations", lambda s: batch_configs(get_batch(s, batch_id).pipelines))
    rt.needs = engine_needs(list(configs.values()))  # a batch of base-only configurations loads no refiner
    run_id = start_run_task(rt, batch_id, actor, flow_run_id, worker)
    plan = {p.image_id: p for p in _transaction(rt, "read plan", lambda s: planned_images(get_batch(s, batch_id)))}
    logger.info(
        "run %s (%s): %d images to make for batch %s",
        run_id,
        worker,
        len(_transaction(rt, "read pending images", lambda s: pending_images(s, batch_id))),
        batch_id,
    )
    pool = BoundedPool(rt.settings.postprocess_workers, max_pending=2 * rt.settings.chunk_size)
    worker_loop = ChunkWorker(
        _PrefectSteps(rt, run_id, actor, worker, batch_id, plan, pool, configs),
        pool_wait_seconds=lambda: pool.wait_seconds,
    )
    try:
        emit_lineage_task(rt, run_id, "START")  # lineage
        timing = worker_loop.run()  # work: chunk by claimed chunk
    except Exception as exc:
        pool.close()
        finish_run_task(rt, run_id, actor, worker_loop.timing.to_dict(), error=f"{type(exc).__name__}: {exc}")
        emit_lineage_task(rt, run_id, "FAIL", f"{type(exc).__name__}: {exc}", must_deliver=False)  # lineage
        raise
    pool.close()
    summary = finish_run_task(rt, run_id, actor, timing.to_dict())  # finish
    _run_artifact(rt, run_id, summary)
    emit_lineage_task(rt, run_id, "COMPLETE")  # lineage
    try:  # downstream systems hear of the published images (what is not taken now is retried later)
        rt.deliver_webhooks()
    except Exception as exc:  # noqa: BLE001 - the run stands; `atelier webhooks deliver` retries
        logger.warning("webhooks not delivered now: %s", exc)
    logger.info("run %s finished: %s", run_id, summary)
    return summary


@dataclass
class _PrefectSteps:
    """The worker loop's steps as Prefect tasks on this run (flows.worker.WorkerSteps)."""

    rt: Runtime
    run_id: str
    actor: str
    worker: str
    batch_id: str
    plan: dict[str, PlannedImage]
    pool: BoundedPool
    configs: dict[str, PipelineConfig] | None = None  # the batch's pinned configurations
    next_anchor: float = 0.0  # when the next periodic anchor is due (time.monotonic())

    def __post_init__(self) -> None:
        self.next_anchor = time.monotonic() + self.rt.settings.anchor_interval_seconds

    def claim(self, finished: list[str], in_flight: list[str]) -> Claim:
        return claim_chunk_task(self.rt, self.batch_id, self.worker, self.plan, finished, in_flight)

    def generate(self, chunk: list[PlannedImage]) -> tuple[list[Checked], float, float]:
        return generate_chunk_task(self.rt, chunk, self.configs)

    def submit_marks(self, items: list[Checked]) -> None:
        """Hand the images that passed safety to the after-decode pool (their manifests read in one go)."""
        passed = [item for item in items if item.safety.verdict == "passed"]
        if not passed:
            return
        manifests = _manifests(self.rt, self.run_id, [item.planned for item in passed])

        for item in passed:
            image_id = item.planned.image_id
            item.marked = self.pool.submit(
                mark_and_encode, image_id, item.pixels, self.rt.credentials, manifests[image_id], self.rt.watermark_key
            )

    def publish_ready(self, queue: Sequence[Checked], wait: bool) -> tuple[list[str], float]:
        recorded = publish_ready_task(self.rt, self.run_id, self.actor, queue, wait=wait)
        if time.monotonic() >= self.next_anchor:  # the audit trail so far, anchored every interval
            anchor_task(self.rt, self.actor)
            self.next_anchor = time.monotonic() + self.rt.settings.anchor_interval_seconds
        return recorded

    def complete(self, finished: list[str], in_flight: list[str]) -> None:
        complete_chunks_task(self.rt, self.worker, finished, in_flight)

    def release(self, chunk_ids: list[str]) -> None:
        _release(self.rt, self.worker, chunk_ids)


@flow(name="produce-approved", flow_run_name="produce-approved-{purpose}")
def produce_approved(purpose: str, actor: str) -> list[RunSummary]:
    """Run every approved batch of one purpose, oldest first (the scheduled catalogue deployment)."""
    from governance.batches import list_batches

    rt = Runtime(active_settings())
    ids = _transaction(
        rt, "list approved batches", lambda s: [b.id for b in list_batches(s, "approved") if b.purpose == purpose]
    )
    get_run_logger().info("%d approved %s batches", len(ids), purpose)
    return [produce_batch(batch_id=batch_id, actor=actor) for batch_id in ids]
