"""OpenLineage: each production run emits RunEvents (START, then COMPLETE or FAIL).

A small, spec-first model of OpenLineage 2-0-2 (Job, Run with a UUID, Dataset, RunEvent) with
typed, versioned facets (each carries `_producer` and `_schemaURL`), built from the database by
`run_event`, and sent by a sink behind `emit()/close()`:

- `FileSink` (default): one JSON object per line, appended to `data_dir/lineage/events.jsonl`;
- `HttpSink` (`ATELIER_LINEAGE_URL`): POST to `{url}/api/v1/lineage`, as Marquez accepts it.

What a run event says:

    job      namespace "atelier", name "produce-batch"  (facets: jobType, documentation)
    run      runId = Atelier's run id                    (facets: processing_engine, atelierLicences,
                                                           errorMessage on FAIL)
    inputs   each model version: namespace "atelier-models", name "{role}/{sha256}"
                                                          (facets: version, atelierModel)
             the prompt batch:   namespace "atelier-batches", name = batch id
                                                          (facets: version = content SHA-256, atelierBatch)
    outputs  each image the run published: namespace = store URL, name = object key
             (facets: version = image SHA-256); none on START

`atelierLicences`, `atelierModel` and `atelierBatch` are Atelier's own facets; their JSON schemas
are `CUSTOM_FACET_SCHEMAS`. Events are rebuilt from the records, so emitting one again gives the
same event. A sink that cannot deliver raises `LineageError`: lineage is never silently dropped.
"""

from __future__ import annotations

import fcntl
import json
import logging
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from governance.errors import GovernanceCheckFailed
from governance.licences import restrictions_of
from governance.pipelines import DEFAULT_PIPELINE, batch_configs
from governance.records import (
    Approval,
    Batch,
    CatalogueItem,
    Image,
    Prompt,
    PromptTemplate,
    Run,
    StandingApproval,
)

log = logging.getLogger(__name__)

ATELIER_VERSION = "0.1.0"
# Atelier's identity in lineage events. `.example` because Atelier has no public home yet:
# change it (and the custom facets' schema URLs with it) when it has one.
PRODUCER = f"https://atelier.example/producer/{ATELIER_VERSION}"
CUSTOM_FACETS_BASE = "https://atelier.example/spec/facets"
OPENLINEAGE_SCHEMA_URL = "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent"
_OL_FACETS = "https://openlineage.io/spec/facets"

JOB_NAMESPACE = "atelier"
JOB_NAME = "produce-batch"
MODELS_NAMESPACE = "atelier-models"
BATCHES_NAMESPACE = "atelier-batches"
TEMPLATES_NAMESPACE = "atelier-templates"

EVENT_TYPES = ("START", "COMPLETE", "FAIL")


class LineageError(GovernanceCheckFailed):
    """A lineage event could not be built or delivered."""


# ---------------------------------------------------------------- facets


class Facet:
    """A facet: its own fields plus `_producer` and `_schemaURL` (the versioned schema it follows)."""

    SCHEMA_URL: ClassVar[str]

    def payload(self) -> dict[str, Any]:
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        return {"_producer": PRODUCER, "_schemaURL": self.SCHEMA_URL, **self.payload()}


@dataclass(frozen=True)
class JobTypeJobFacet(Facet):
    SCHEMA_URL = f"{_OL_FACETS}/2-0-4/JobTypeJobFacet.json#/$defs/JobTypeJobFacet"
    processing_type: str = "BATCH"
    integration: str = "ATELIER"
    job_type: str = "FLOW"

    def payload(self) -> dict[str, Any]:
        return {"processingType": self.processing_type, "integration": self.integration, "jobType": self.job_type}


@dataclass(frozen=True)
class DocumentationJobFacet(Facet):
    SCHEMA_URL = f"{_OL_FACETS}/1-1-0/DocumentationJobFacet.json#/$defs/DocumentationJobFacet"
    description: str

    def payload(self) -> dict[str, Any]:
        return {"description": self.description}


@dataclass(frozen=True)
class ProcessingEngineRunFacet(Facet):
    SCHEMA_URL = f"{_OL_FACETS}/1-1-1/ProcessingEngineRunFacet.json#/$defs/ProcessingEngineRunFacet"
    version: str = ATELIER_VERSION
    name: str = "atelier"

    def payload(self) -> dict[str, Any]:
        return {"version": self.version, "name": self.name}


@dataclass(frozen=True)
class ErrorMessageRunFacet(Facet):
    SCHEMA_URL = f"{_OL_FACETS}/1-0-1/ErrorMessageRunFacet.json#/$defs/ErrorMessageRunFacet"
    message: str
    programming_language: str = "PYTHON"

    def payload(self) -> dict[str, Any]:
        return {"message": self.message, "programmingLanguage": self.programming_language}


@dataclass(frozen=True)
class DatasetVersionDatasetFacet(Facet):
    SCHEMA_URL = f"{_OL_FACETS}/1-0-1/DatasetVersionDatasetFacet.json#/$defs/DatasetVersionDatasetFacet"
    dataset_version: str

    def payload(self) -> dict[str, Any]:
        return {"datasetVersion": self.dataset_version}


@dataclass(frozen=True)
class LicenceTerms:
    id: str
    name: str
    url: str
    text_sha256: str
    models: tuple[str, ...]
    prohibited_use_categories: tuple[str, ...]
    obligations: tuple[dict[str, str], ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "url": self.url,
            "textSha256": self.text_sha256,
            "models": list(self.models),
            "prohibitedUseCategories": list(self.prohibited_use_categories),
            "obligations": [dict(o) for o in self.obligations],
        }


@dataclass(frozen=True)
class AtelierLicencesRunFacet(Facet):
    """The licences of every model version the run used, and the batch's declared use (custom, 1-0-0)."""

    SCHEMA_URL = f"{CUSTOM_FACETS_BASE}/1-0-0/AtelierLicencesRunFacet.json#/$defs/AtelierLicencesRunFacet"
    use_category: str
    licences: tuple[LicenceTerms, ...]

    def payload(self) -> dict[str, Any]:
        return {"useCategory": self.use_category, "licences": [lic.to_dict() for lic in self.licences]}


@dataclass(frozen=True)
class AtelierModelDatasetFacet(Facet):
    """One model component: its role, where it came from and its licence (custom, 1-0-0)."""

    SCHEMA_URL = f"{CUSTOM_FACETS_BASE}/1-0-0/AtelierModelDatasetFacet.json#/$defs/AtelierModelDatasetFacet"
    role: str
    name: str
    source: str
    sha256: str
    licence: str

    def payload(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "name": self.name,
            "source": self.source,
            "sha256": self.sha256,
            "licence": self.licence,
        }


@dataclass(frozen=True)
class AtelierBatchDatasetFacet(Facet):
    """The prompt batch: who asked, for what, and who approved which content (custom, 1-0-0)."""

    SCHEMA_URL = f"{CUSTOM_FACETS_BASE}/1-0-0/AtelierBatchDatasetFacet.json#/$defs/AtelierBatchDatasetFacet"
    purpose: str
    use_category: str
    requested_by: str
    approval_id: str
    approved_by: str
    content_sha256: str
    prompts: int

    def payload(self) -> dict[str, Any]:
        return {
            "purpose": self.purpose,
            "useCategory": self.use_category,
            "requestedBy": self.requested_by,
            "approvalId": self.approval_id,
            "approvedBy": self.approved_by,
            "contentSha256": self.content_sha256,
            "prompts": self.prompts,
        }


@dataclass(frozen=True)
class AtelierTemplateDatasetFacet(Facet):
    """A catalogue batch's prompt template version, its author and the standing approval that covered
    it, if any (custom, 1-0-0)."""

    SCHEMA_URL = f"{CUSTOM_FACETS_BASE}/1-0-0/AtelierTemplateDatasetFacet.json#/$defs/AtelierTemplateDatasetFacet"
    template_id: str
    sha256: str
    author: str
    standing_approval_id: str
    approved_by: str
    categories: tuple[str, ...]

    def payload(self) -> dict[str, Any]:
        return {
            "templateId": self.template_id,
            "sha256": self.sha256,
            "author": self.author,
            "standingApprovalId": self.standing_approval_id,
            "approvedBy": self.approved_by,
            "categories": list(self.categories),
        }


@dataclass(frozen=True)
class AtelierSkuDatasetFacet(Facet):
    """A catalogue image's SKU, the product version it was made from, and its template (custom, 1-0-0)."""

    SCHEMA_URL = f"{CUSTOM_FACETS_BASE}/1-0-0/AtelierSkuDatasetFacet.json#/$defs/AtelierSkuDatasetFacet"
    sku: str
    product_version_id: str
    template_id: str

    def payload(self) -> dict[str, Any]:
        return {"sku": self.sku, "productVersionId": self.product_version_id, "templateId": self.template_id}


@dataclass(frozen=True)
class AtelierPipelineDatasetFacet(Facet):
    """The pipeline configuration that made an image: its name, stages, and measured engine seconds
    (custom, 1-0-0; governance.pipelines)."""

    SCHEMA_URL = f"{CUSTOM_FACETS_BASE}/1-0-0/AtelierPipelineDatasetFacet.json#/$defs/AtelierPipelineDatasetFacet"
    name: str
    stages: tuple[str, ...]
    engine_seconds: float | None

    def payload(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "stages": list(self.stages)}
        if self.engine_seconds is not None:
            out["engineSeconds"] = self.engine_seconds
        return out


def _custom_schema(name: str, base: str, properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"{CUSTOM_FACETS_BASE}/1-0-0/{name}.json",
        "$defs": {
            name: {
                "allOf": [
                    {"$ref": f"https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/{base}"},
                    {"type": "object", "properties": properties, "required": required},
                ],
                "type": "object",
            }
        },
    }


_STR = {"type": "string"}
_STRS = {"type": "array", "items": _STR}

# JSON schemas of Atelier's own facets, keyed by $id (each facet's _schemaURL points into one).
CUSTOM_FACET_SCHEMAS: dict[str, dict[str, Any]] = {
    s["$id"]: s
    for s in (
        _custom_schema(
            "AtelierLicencesRunFacet",
            "RunFacet",
            {
                "useCategory": _STR,
                "licences": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "id": _STR,
                            "name": _STR,
                            "url": _STR,
                            "textSha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                            "models": _STRS,
                            "prohibitedUseCategories": _STRS,
                            "obligations": {
                                "type": "array",
                                "items": {"type": "object", "properties": {"id": _STR, "section": _STR, "text": _STR}},
                            },
                        },
                        "required": ["id", "name", "textSha256", "models", "prohibitedUseCategories", "obligations"],
                    },
                },
            },
            ["useCategory", "licences"],
        ),
        _custom_schema(
            "AtelierModelDatasetFacet",
            "DatasetFacet",
            {
                "role": _STR,
                "name": _STR,
                "source": _STR,
                "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                "licence": _STR,
            },
            ["role", "sha256", "licence"],
        ),
        _custom_schema(
            "AtelierBatchDatasetFacet",
            "DatasetFacet",
            {
                "purpose": _STR,
                "useCategory": _STR,
                "requestedBy": _STR,
                "approvalId": _STR,
                "approvedBy": _STR,
                "contentSha256": _STR,
                "prompts": {"type": "integer", "minimum": 0},
            },
            ["purpose", "useCategory", "requestedBy", "approvalId", "approvedBy", "contentSha256"],
        ),
        _custom_schema(
            "AtelierTemplateDatasetFacet",
            "DatasetFacet",
            {
                "templateId": _STR,
                "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                "author": _STR,
                "standingApprovalId": _STR,
                "approvedBy": _STR,
                "categories": _STRS,
            },
            ["templateId", "sha256", "author", "standingApprovalId", "approvedBy", "categories"],
        ),
        _custom_schema(
            "AtelierSkuDatasetFacet",
            "DatasetFacet",
            {"sku": _STR, "productVersionId": _STR, "templateId": _STR},
            ["sku", "productVersionId", "templateId"],
        ),
        _custom_schema(
            "AtelierPipelineDatasetFacet",
            "DatasetFacet",
            {"name": _STR, "stages": _STRS, "engineSeconds": {"type": "number", "minimum": 0}},
            ["name", "stages"],
        ),
    )
}


# ---------------------------------------------------------------- core model


def _facets(facets: dict[str, Facet]) -> dict[str, Any]:
    return {name: f.to_dict() for name, f in facets.items()}


@dataclass(frozen=True)
class Job:
    namespace: str
    name: str
    facets: dict[str, Facet] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"namespace": self.namespace, "name": self.name, "facets": _facets(self.facets)}


@dataclass(frozen=True)
class RunRef:
    """OpenLineage's Run: a UUID and its facets."""

    run_id: str
    facets: dict[str, Facet] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"runId": self.run_id, "facets": _facets(self.facets)}


@dataclass(frozen=True)
class Dataset:
    namespace: str
    name: str
    facets: dict[str, Facet] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"namespace": self.namespace, "name": self.name, "facets": _facets(self.facets)}


@dataclass(frozen=True)
class RunEvent:
    event_type: str
    event_time: datetime
    run: RunRef
    job: Job
    inputs: tuple[Dataset, ...] = ()
    outputs: tuple[Dataset, ...] = ()

    def __post_init__(self) -> None:
        if self.event_type not in EVENT_TYPES:
            raise ValueError(f"event_type {self.event_type!r} is not one of {', '.join(EVENT_TYPES)}")
        if self.event_time.tzinfo is None:
            raise ValueError("event_time must be timezone-aware (UTC)")

    def to_dict(self) -> dict[str, Any]:
        t = self.event_time.astimezone(UTC)
        return {
            "eventType": self.event_type,
            "eventTime": t.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "producer": PRODUCER,
            "schemaURL": OPENLINEAGE_SCHEMA_URL,
            "run": self.run.to_dict(),
            "job": self.job.to_dict(),
            "inputs": [d.to_dict() for d in self.inputs],
            "outputs": [d.to_dict() for d in self.outputs],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"), ensure_ascii=False)


# ---------------------------------------------------------------- events from the records


def _aware(value: datetime | None) -> datetime:
    if value is None:
        return datetime.now(UTC)
    return value  # records.UTCDateTime hands every time back aware (UTC)


def run_event(session: Session, run_id: str, event_type: str, error: str | None = None) -> RunEvent:
    """The OpenLineage event of one Atelier run, rebuilt from the records."""
    run = session.get(Run, run_id)
    if run is None:
        raise LineageError(f"no run {run_id!r} to describe in a lineage event")
    batch = session.get(Batch, run.batch_id)
    approval = session.get(Approval, run.approval_id)
    assert batch is not None and approval is not None
    models = sorted(run.model_versions, key=lambda m: (m.role, m.sha256))

    roles: dict[str, list[str]] = {}
    for mv in models:
        roles.setdefault(mv.licence_id, []).append(mv.role)
    licences = tuple(
        LicenceTerms(
            id=lic.id,
            name=lic.name,
            url=lic.url,
            text_sha256=lic.text_sha256,
            models=tuple(roles[lic.id]),
            prohibited_use_categories=tuple(sorted(r.category for r in restrictions_of(lic))),
            obligations=tuple(
                {"id": str(o.get("id", "")), "section": str(o.get("section", "")), "text": str(o.get("text", ""))}
                if isinstance(o, dict)
                else {"id": "", "section": "", "text": str(o)}
                for o in lic.obligations
            ),
        )
        for lic in sorted({mv.licence.id: mv.licence for mv in models}.values(), key=lambda lic: lic.id)
    )

    run_facets: dict[str, Facet] = {
        "processing_engine": ProcessingEngineRunFacet(),
        "atelierLicences": AtelierLicencesRunFacet(use_category=batch.use_category, licences=licences),
    }
    if event_type == "FAIL":
        run_facets["errorMessage"] = ErrorMessageRunFacet(
            message=error or str(run.summary.get("error", "")) or "run failed"
        )
    inputs = [
        Dataset(
            MODELS_NAMESPACE,
            f"{mv.role}/{mv.sha256}",
            {
                "version": DatasetVersionDatasetFacet(mv.sha256),
                "atelierModel": AtelierModelDatasetFacet(mv.role, mv.name, mv.source, mv.sha256, mv.licence_id),
            },
        )
        for mv in models
    ]
    inputs.append(
        Dataset(
            BATCHES_NAMESPACE,
            batch.id,
            {
                "version": DatasetVersionDatasetFacet(batch.content_sha256),
                "atelierBatch": AtelierBatchDatasetFacet(
                    purpose=batch.purpose,
                    use_category=batch.use_category,
                    requested_by=batch.requested_by.name,
                    approval_id=approval.id,
                    approved_by=approval.decided_by.name,
                    content_sha256=approval.content_sha256,
                    prompts=len(batch.prompts),
                ),
            },
        )
    )
    items = {i.row_id: i for i in session.scalars(select(CatalogueItem).where(CatalogueItem.batch_id == batch.id))}
    for template_id in sorted({i.template_id for i in items.values()}):  # catalogue batches: their templates
        template = session.get_one(PromptTemplate, template_id)
        standing = (
            session.get(StandingApproval, approval.standing_approval_id) if approval.standing_approval_id else None
        )
        inputs.append(
            Dataset(
                TEMPLATES_NAMESPACE,
                template.id,
                {
                    "version": DatasetVersionDatasetFacet(template.sha256),
                    "atelierTemplate": AtelierTemplateDatasetFacet(
                        template.id,
                        template.sha256,
                        template.author.name,
                        standing.id if standing else "",
                        standing.approver.name if standing else approval.decided_by.name,
                        tuple(standing.categories) if standing else (),
                    ),
                },
            )
        )
    outputs: list[Dataset] = []
    if event_type != "START":
        rows = session.execute(
            select(Image.store_url, Image.store_key, Image.sha256, Prompt.row_id, Image.pipeline, Image.engine_seconds)
            .join(Prompt, Prompt.id == Image.prompt_id)
            .where(Image.run_id == run.id, Image.status == "published")
            .order_by(Image.store_key)
        )
        configs = batch_configs(batch.pipelines)
        for url, key, sha, row_id, pipeline, engine_seconds in rows:
            facets: dict[str, Facet] = {"version": DatasetVersionDatasetFacet(sha or "")}
            config = configs.get(pipeline or DEFAULT_PIPELINE)
            stages = config.stages if config else ("base", "refiner")
            facets["atelierPipeline"] = AtelierPipelineDatasetFacet(
                pipeline or DEFAULT_PIPELINE, stages, engine_seconds
            )

            if (item := items.get(row_id)) is not None:
                facets["atelierSku"] = AtelierSkuDatasetFacet(item.sku, item.product_version_id, item.template_id)
            outputs.append(Dataset(url or "", key or "", facets))
    when = run.started_at if event_type == "START" else run.finished_at
    job = Job(
        JOB_NAMESPACE,
        JOB_NAME,
        {
            "jobType": JobTypeJobFacet(),
            "documentation": DocumentationJobFacet(
                "Generate an approved prompt batch with SDXL (the base alone, or base then refiner, as each "
                "image's pipeline configuration says), check safety, watermark, sign and publish the images."
            ),
        },
    )
    return RunEvent(event_type, _aware(when), RunRef(run.id, run_facets), job, tuple(inputs), tuple(outputs))


# ---------------------------------------------------------------- sinks


class LineageSink(Protocol):
    def emit(self, event: RunEvent) -> None: ...
    def close(self) -> None: ...


class FileSink:
    """Appends one JSON line per event; a lock keeps lines whole when several workers append."""

    def __init__(self, path: Path):
        self.path = path

    def emit(self, event: RunEvent) -> None:
        line = (event.to_json() + "\n").encode()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("ab") as fh:
                fcntl.flock(fh, fcntl.LOCK_EX)
                try:
                    fh.write(line)
                    fh.flush()
                finally:
                    fcntl.flock(fh, fcntl.LOCK_UN)
        except OSError as exc:
            raise LineageError(f"cannot write lineage event to {self.path}: {exc.strerror or exc}") from exc

    def close(self) -> None:
        pass


class HttpSink:
    """POSTs each event to `{url}/api/v1/lineage` (Marquez); retries connection errors and 5xx."""

    def __init__(
        self, url: str, timeout_s: float = 10.0, attempts: int = 3, api_key: str | None = None, backoff_s: float = 0.5
    ):
        if not url.startswith(("http://", "https://")):
            raise LineageError(f"lineage URL {url!r} is not http(s)://: set ATELIER_LINEAGE_URL to Marquez's base URL")
        self.endpoint = url.rstrip("/") + "/api/v1/lineage"
        self.timeout_s = timeout_s
        self.attempts = max(1, attempts)
        self.api_key = api_key
        self.backoff_s = backoff_s

    def emit(self, event: RunEvent) -> None:
        body = event.to_json().encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        problem = ""
        for attempt in range(1, self.attempts + 1):
            request = urllib.request.Request(self.endpoint, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as resp:  # noqa: S310 - http(s) only
                    resp.read()
                    return
            except urllib.error.HTTPError as exc:
                detail = exc.read()[:200].decode(errors="replace").strip()
                problem = f"HTTP {exc.code}" + (f": {detail}" if detail else "")
                if exc.code < 500:
                    break  # the server refused this event: retrying will not help
            except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
                problem = str(getattr(exc, "reason", exc))
            if attempt < self.attempts:
                log.warning("lineage POST to %s failed (%s); retrying", self.endpoint, problem)
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
        raise LineageError(
            f"lineage {event.event_type} event of run {event.run.run_id} not delivered to {self.endpoint}: {problem}"
        )

    def close(self) -> None:
        pass


def default_events_path(data_dir: Path) -> Path:
    return data_dir / "lineage" / "events.jsonl"


def open_sink(lineage_url: str | None, data_dir: Path) -> LineageSink:
    """HTTP when a lineage URL is configured, else the JSON-lines file in the data dir."""
    if lineage_url:
        return HttpSink(lineage_url)
    return FileSink(default_events_path(data_dir))


def emit_run_event(
    session: Session, sink: LineageSink, run_id: str, event_type: str, error: str | None = None
) -> RunEvent:
    """Build one run's event from the records and send it."""
    event = run_event(session, run_id, event_type, error)
    sink.emit(event)
    log.info("lineage %s for run %s: %d inputs, %d outputs", event_type, run_id, len(event.inputs), len(event.outputs))
    return event
