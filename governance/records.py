"""The records: SQLAlchemy 2.0 typed models shared by every layer above.

Identifiers that later steps must re-derive after a crash (prompt, image) are deterministic
UUIDv5 strings; the rest are random UUIDv4 strings. Times are timezone-aware UTC.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


# --- vocabularies: one definition each, feeding the CHECK constraints, the services and the CLI ---


class Role(StrEnum):
    REQUESTER = "requester"
    APPROVER = "approver"
    OPERATOR = "operator"
    AUDITOR = "auditor"
    ADMIN = "admin"
    REVIEWER = "reviewer"  # looks at each generated image before it is published (output review)


class Purpose(StrEnum):
    CATALOGUE = "catalogue"
    MARKETING = "marketing"


class BatchStatus(StrEnum):
    SUBMITTED = "submitted"
    APPROVED = "approved"
    REJECTED = "rejected"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"


class Decision(StrEnum):
    APPROVED = "approved"
    REJECTED = "rejected"


class RunStatus(StrEnum):
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"


class ImageStatus(StrEnum):
    QUARANTINED = "quarantined"
    PUBLISHED = "published"
    REVIEW = "review"  # passed safety; waits for a reviewer (kept under review/ in the store, not published)
    REJECTED = "rejected"  # a reviewer rejected it: never published
    WITHDRAWN = "withdrawn"  # taken down after publishing (governance.withdraw); never published again
    EXPIRED = "expired"  # never published; its files deleted under a retention rule (governance.retention)


class ChunkStatus(StrEnum):
    PENDING = "pending"
    CLAIMED = "claimed"
    DONE = "done"


class SafetyVerdict(StrEnum):
    PASSED = "passed"
    QUARANTINED = "quarantined"


ROLES = tuple(Role)
PURPOSES = tuple(Purpose)


def one_of(column: str, vocabulary: type[StrEnum]) -> str:
    """The CHECK constraint text for a vocabulary, e.g. ``status IN ('pending', 'claimed', 'done')``
    (the same text the migrations wrote, so the constraints did not change)."""
    return f"{column} IN ({', '.join(repr(str(v)) for v in vocabulary)})"


# Namespace for Atelier's deterministic identifiers (uuid5).
ATELIER_NAMESPACE = uuid.UUID("6f1c1e5a-2f0e-4d7c-9a53-5b8a8f3c2d10")


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """The one datetime column type: timezone-aware UTC in and out on every database. PostgreSQL keeps
    the zone (timestamptz); SQLite keeps none and hands back naive values, which are UTC because
    they went in as UTC. A naive value going in is taken as UTC."""

    impl = DateTime(timezone=True)
    cache_ok = True

    @staticmethod
    def _utc(value: datetime | None) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        return self._utc(value)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return self._utc(value)


def new_id() -> str:
    return str(uuid.uuid4())


def prompt_id_for(batch_id: str, row_id: str) -> str:
    return str(uuid.uuid5(ATELIER_NAMESPACE, f"prompt:{batch_id}:{row_id}"))


def image_id_for(prompt_id: str, image_index: int) -> str:
    """Invariant 4: an image id is derived from (prompt id, image index) and nothing else."""
    return str(uuid.uuid5(ATELIER_NAMESPACE, f"image:{prompt_id}:{image_index}"))


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    disabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)  # set: no token works
    password_hash: Mapped[str | None] = mapped_column(String(200), nullable=True)  # argon2id, for the console
    roles: Mapped[list[UserRole]] = relationship(back_populates="user", cascade="all, delete-orphan", lazy="selectin")

    @property
    def role_names(self) -> set[str]:
        return {r.role for r in self.roles}

    @property
    def active(self) -> bool:
        return self.disabled_at is None


class ApiToken(Base):
    """A personal API token: random, shown once, stored only as its SHA-256, with an expiry."""

    __tablename__ = "api_tokens"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)  # uuid4: recorded on every event it acts in
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    user: Mapped[User] = relationship(lazy="joined")


class ConsoleSession(Base):
    """A signed-in browser (the web console). The cookie holds a random secret; this row holds only its
    HMAC under the server's session key, which the database does not hold (server.sessions)."""

    __tablename__ = "console_sessions"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)  # "web-" + hex: recorded on its events
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    secret_mac: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)  # logout
    user: Mapped[User] = relationship(lazy="joined")


class UserRole(Base):
    __tablename__ = "user_roles"
    __table_args__ = (CheckConstraint(one_of("role", Role), name="role_known"),)

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), primary_key=True)
    role: Mapped[str] = mapped_column(String(20), primary_key=True)
    user: Mapped[User] = relationship(back_populates="roles")


class Licence(Base):
    __tablename__ = "licences"

    id: Mapped[str] = mapped_column(String(100), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    url: Mapped[str] = mapped_column(String(500))
    text_sha256: Mapped[str] = mapped_column(String(64))
    obligations: Mapped[list[Any]] = mapped_column(default=list)
    restrictions: Mapped[list[Any]] = mapped_column(default=list)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ModelVersion(Base):
    """One model component (base UNet, refiner UNet, text encoders, VAE) with its weight hashes."""

    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("role", "sha256"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    role: Mapped[str] = mapped_column(String(40))
    name: Mapped[str] = mapped_column(String(300))
    source: Mapped[str] = mapped_column(String(1000))
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    files: Mapped[dict[str, Any]] = mapped_column(default=dict)
    licence_id: Mapped[str] = mapped_column(ForeignKey("licences.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    licence: Mapped[Licence] = relationship(lazy="joined")


class Batch(Base):
    __tablename__ = "batches"
    __table_args__ = (
        CheckConstraint(one_of("purpose", Purpose), name="purpose_known"),
        CheckConstraint(one_of("status", BatchStatus), name="status_known"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    purpose: Mapped[str] = mapped_column(String(20))
    status: Mapped[str] = mapped_column(String(20), default="submitted", index=True)
    requested_by_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    source_name: Mapped[str] = mapped_column(String(500))
    content_sha256: Mapped[str] = mapped_column(String(64))
    use_category: Mapped[str] = mapped_column(String(60), default="general", server_default="general", index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
    # whether its images wait for a reviewer before publishing (policy per purpose, or asked at submit)
    review_required: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    # the prompt policy it was screened under and the review flags it raised (governance.screening):
    # {"policy": version, "sha256": ..., "flags": [...]}; None before screening existed (migration 0009)
    screening: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # the pipeline configurations its rows name, as defined when it was submitted (governance.pipelines):
    # {"version", "sha256", "configurations": {name: definition}}; a run uses these, not the file in
    # force later. None: stored before configurations existed (base + refiner, the worker's settings)
    pipelines: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)

    requested_by: Mapped[User] = relationship(lazy="joined")
    prompts: Mapped[list[Prompt]] = relationship(
        back_populates="batch", order_by="Prompt.position", cascade="all, delete-orphan"
    )
    approvals: Mapped[list[Approval]] = relationship(back_populates="batch", order_by="Approval.decided_at")


class Prompt(Base):
    __tablename__ = "prompts"
    __table_args__ = (UniqueConstraint("batch_id", "row_id"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    batch_id: Mapped[str] = mapped_column(ForeignKey("batches.id"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    row_id: Mapped[str] = mapped_column(String(200))
    prompt: Mapped[str] = mapped_column(Text)
    negative_prompt: Mapped[str] = mapped_column(Text, default="")
    seed: Mapped[int] = mapped_column(BigInteger)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    steps: Mapped[int] = mapped_column(Integer)
    guidance_scale: Mapped[float] = mapped_column(Float)
    refiner_split: Mapped[float] = mapped_column(Float)
    num_images: Mapped[int] = mapped_column(Integer)
    ref: Mapped[str] = mapped_column(String(200), default="", index=True)
    # configuration name(s), comma-separated; NULL is the default base+refiner (rows stored before
    # configurations existed keep their record digests)
    pipeline: Mapped[str | None] = mapped_column(String(200), nullable=True)

    batch: Mapped[Batch] = relationship(back_populates="prompts")

    @property
    def pipelines(self) -> list[str]:
        from governance.pipelines import row_pipelines

        return row_pipelines(self.pipeline)

    def params(self) -> dict[str, Any]:
        return {
            "negative_prompt": self.negative_prompt,
            "width": self.width,
            "height": self.height,
            "steps": self.steps,
            "guidance_scale": self.guidance_scale,
            "refiner_split": self.refiner_split,
            "num_images": self.num_images,
        }


class Approval(Base):
    """A decision on a batch, pinned to the content hash the approver saw."""

    __tablename__ = "approvals"
    __table_args__ = (CheckConstraint(one_of("decision", Decision), name="decision_known"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    batch_id: Mapped[str] = mapped_column(ForeignKey("batches.id"), index=True)
    decision: Mapped[str] = mapped_column(String(10))
    decided_by_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    content_sha256: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(Text, default="")
    decided_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    voided_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    void_reason: Mapped[str] = mapped_column(Text, default="")
    # the prompt-policy flags the approver acknowledged with this approval (None: there were none)
    acknowledged_flags: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    # set when the decision is a standing approval applied to a catalogue batch (governance.catalogue)
    standing_approval_id: Mapped[str | None] = mapped_column(ForeignKey("standing_approvals.id"), nullable=True)
    # SHA-256 of the batch's pinned pipeline definitions when decided (governance.pipelines.record_sha256)
    pipelines_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)

    batch: Mapped[Batch] = relationship(back_populates="approvals")
    decided_by: Mapped[User] = relationship(lazy="joined")


class Run(Base):
    __tablename__ = "runs"
    __table_args__ = (CheckConstraint(one_of("status", RunStatus), name="status_known"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    batch_id: Mapped[str] = mapped_column(ForeignKey("batches.id"), index=True)
    approval_id: Mapped[str] = mapped_column(ForeignKey("approvals.id"))
    status: Mapped[str] = mapped_column(String(20), default="running")
    started_by_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    flow_run_id: Mapped[str] = mapped_column(String(64), default="")
    engine: Mapped[dict[str, Any]] = mapped_column(default=dict)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    summary: Mapped[dict[str, Any]] = mapped_column(default=dict)

    model_versions: Mapped[list[ModelVersion]] = relationship(secondary="run_model_versions", lazy="selectin")


class RunModelVersion(Base):
    __tablename__ = "run_model_versions"

    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), primary_key=True)
    model_version_id: Mapped[str] = mapped_column(ForeignKey("model_versions.id"), primary_key=True, index=True)


class Image(Base):
    __tablename__ = "images"
    __table_args__ = (
        UniqueConstraint("prompt_id", "image_index"),
        CheckConstraint(one_of("status", ImageStatus), name="status_known"),
        Index("ix_images_created_at_id", "created_at", "id"),  # time ranges and ordered compliance queries
        Index("ix_images_prompt_id_created_at", "prompt_id", "created_at", "id"),  # prompt search, newest first
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    prompt_id: Mapped[str] = mapped_column(ForeignKey("prompts.id"))  # indexed with created_at, below
    batch_id: Mapped[str] = mapped_column(ForeignKey("batches.id"), index=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), index=True)
    image_index: Mapped[int] = mapped_column(Integer)
    seed: Mapped[str] = mapped_column(String(20))  # up to 2**63: kept as text so every database stores it
    status: Mapped[str] = mapped_column(String(20))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    safety_model: Mapped[str] = mapped_column(String(300))
    safety_policy: Mapped[str] = mapped_column(String(100))
    safety_scores: Mapped[dict[str, Any]] = mapped_column(default=dict)
    safety_verdict: Mapped[str] = mapped_column(String(20))
    safety_reasons: Mapped[list[Any]] = mapped_column(default=list)
    watermark_payload: Mapped[str | None] = mapped_column(String(12), nullable=True)
    watermark_matched_bits: Mapped[int | None] = mapped_column(Integer, nullable=True)
    sha256: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    store_url: Mapped[str | None] = mapped_column(String(1000), nullable=True)
    store_key: Mapped[str | None] = mapped_column(String(1000), nullable=True, index=True)
    store_version_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    provenance_key: Mapped[str | None] = mapped_column(String(1000), nullable=True, index=True)
    watermark_scheme: Mapped[str | None] = mapped_column(String(40), nullable=True)  # governance.watermark.SCHEMES
    watermark_key_id: Mapped[str | None] = mapped_column(String(40), nullable=True)  # keyed schemes: the key's id
    phash: Mapped[str | None] = mapped_column(String(16), nullable=True, index=True)  # 64-bit perceptual hash, hex
    # SHA-256 of the published pixels (shape + RGB bytes): deterministic, unlike the signed file's
    # bytes (a C2PA signature differs on every signing), so the store key is built from it.
    pixels_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    c2pa_manifest: Mapped[str | None] = mapped_column(String(200), nullable=True)  # active manifest label
    licence_obligations: Mapped[list[Any]] = mapped_column(default=list, server_default="[]")
    # output review: {"decision": "accepted" | "rejected", "by": user, "at": ISO time, "reason": text}
    review: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # withdrawal: who, when, why, where the evidence copy went and which object versions were removed
    withdrawal: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # retention: the rule and policy under which its files were deleted, when, and which objects
    expiry: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # the pipeline configuration that made it (NULL: made before configurations existed, base+refiner)
    pipeline: Mapped[str | None] = mapped_column(String(40), nullable=True)
    # seconds of engine time spent on it, measured on the worker (its share of its chunk's generate
    # call for its configuration; GPU time where a GPU ran), and the device it ran on
    engine_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    engine_device: Mapped[str | None] = mapped_column(String(40), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    prompt: Mapped[Prompt] = relationship(lazy="joined")
    run: Mapped[Run] = relationship()


class LegalHold(Base):
    """A legal hold on one image or one batch (its images now and later): while active, nothing deletes
    the covered files (withdrawal and retention refuse; in an S3 bucket with Object Lock, the objects
    carry an Object Lock legal hold too). Released, never deleted: the row keeps who placed and who
    released it, when and why (governance.holds)."""

    __tablename__ = "legal_holds"
    __table_args__ = (CheckConstraint("scope IN ('image', 'batch')", name="scope_known"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    scope: Mapped[str] = mapped_column(String(10))
    target_id: Mapped[str] = mapped_column(String(36), index=True)  # an image id or a batch id
    reason: Mapped[str] = mapped_column(Text)
    placed_by_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    placed_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    released_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True)
    released_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    release_reason: Mapped[str | None] = mapped_column(Text, nullable=True)

    placed_by: Mapped[User] = relationship(foreign_keys=[placed_by_id], lazy="joined")
    released_by: Mapped[User | None] = relationship(foreign_keys=[released_by_id], lazy="joined")


class Preference(Base):
    """One blind pairwise judgement (governance.preference): two images of the same row and seed made
    by two configurations, shown to one reviewer in a random left/right order that only this row
    knows; `choice` is set once, when the reviewer picks (left, right or none)."""

    __tablename__ = "preferences"
    __table_args__ = (CheckConstraint("choice IN ('left', 'right', 'none')", name="choice_known"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    batch_id: Mapped[str] = mapped_column(ForeignKey("batches.id"), index=True)
    prompt_id: Mapped[str] = mapped_column(ForeignKey("prompts.id"))
    left_image_id: Mapped[str] = mapped_column(ForeignKey("images.id"))
    right_image_id: Mapped[str] = mapped_column(ForeignKey("images.id"))
    shown_to_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    shown_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    choice: Mapped[str | None] = mapped_column(String(10), nullable=True)
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)

    shown_to: Mapped[User] = relationship(lazy="joined")
    left: Mapped[Image] = relationship(foreign_keys=[left_image_id])
    right: Mapped[Image] = relationship(foreign_keys=[right_image_id])


class CatalogueImport(Base):
    """One product feed imported: its content hash and what changed (governance.catalogue)."""

    __tablename__ = "catalogue_imports"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    source_name: Mapped[str] = mapped_column(String(500))
    content_sha256: Mapped[str] = mapped_column(String(64), index=True)
    imported_by_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    imported_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    counts: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # new, changed, removed, unchanged

    imported_by: Mapped[User] = relationship(lazy="joined")


class ProductVersion(Base):
    """What one SKU looked like from one import on (a new version only when its fields changed, or it
    was removed): the product's history."""

    __tablename__ = "product_versions"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    sku: Mapped[str] = mapped_column(String(128), index=True)
    import_id: Mapped[str] = mapped_column(ForeignKey("catalogue_imports.id"), index=True)
    fields: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)  # None: removed from the feed
    fields_sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Product(Base):
    """A SKU's current state: its latest version (removed when the latest feed no longer lists it)."""

    __tablename__ = "products"

    sku: Mapped[str] = mapped_column(String(128), primary_key=True)
    version_id: Mapped[str] = mapped_column(ForeignKey("product_versions.id"))
    fields_sha256: Mapped[str] = mapped_column(String(64))
    removed: Mapped[bool] = mapped_column(Boolean, default=False)

    version: Mapped[ProductVersion] = relationship(lazy="joined")


class PromptTemplate(Base):
    """A versioned prompt template (sandboxed Jinja2 over product fields) with its generation
    parameters and the categories and locales it serves. `id` is NAME@VERSION; never changed."""

    __tablename__ = "prompt_templates"
    __table_args__ = (UniqueConstraint("name", "version"),)

    id: Mapped[str] = mapped_column(String(100), primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    version: Mapped[int] = mapped_column(Integer)
    body: Mapped[str] = mapped_column(Text)
    negative: Mapped[str] = mapped_column(Text, default="")
    params: Mapped[dict[str, Any]] = mapped_column(
        JSON
    )  # width, height, steps, guidance_scale, refiner_split, variants
    match: Mapped[dict[str, Any]] = mapped_column(JSON)  # {"categories": [...|"*"], "locales": [...|"*"]}
    sha256: Mapped[str] = mapped_column(String(64))
    author_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    author: Mapped[User] = relationship(lazy="joined")


class StandingApproval(Base):
    """An approver's approval of one template version (pinned to its hash) for a scope: categories, at
    most `max_images` per run, a validity period. Revoked, never deleted."""

    __tablename__ = "standing_approvals"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    template_id: Mapped[str] = mapped_column(ForeignKey("prompt_templates.id"), index=True)
    template_sha256: Mapped[str] = mapped_column(String(64))
    approver_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    categories: Mapped[list[Any]] = mapped_column(JSON)
    max_images: Mapped[int] = mapped_column(Integer)
    valid_from: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    valid_until: Mapped[datetime] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    revoke_reason: Mapped[str | None] = mapped_column(Text, nullable=True)

    approver: Mapped[User] = relationship(lazy="joined")
    template: Mapped[PromptTemplate] = relationship(lazy="joined")


class CatalogueItem(Base):
    """One SKU rendered into one batch row: the lineage image -> SKU version -> template version ->
    (standing) approval, and the SKU's image set's state: pending (its batch not yet made), waiting
    (in a batch that waits for an approver), current, superseded (a newer set is current) or removed
    (the SKU left the feed)."""

    __tablename__ = "catalogue_items"
    __table_args__ = (
        UniqueConstraint("batch_id", "row_id"),
        CheckConstraint(
            "state IN ('pending', 'waiting', 'current', 'superseded', 'removed', 'failed')", name="state_known"
        ),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    batch_id: Mapped[str] = mapped_column(ForeignKey("batches.id"), index=True)
    row_id: Mapped[str] = mapped_column(String(200))
    sku: Mapped[str] = mapped_column(String(128), index=True)
    product_version_id: Mapped[str] = mapped_column(ForeignKey("product_versions.id"))
    template_id: Mapped[str] = mapped_column(ForeignKey("prompt_templates.id"))
    standing_approval_id: Mapped[str | None] = mapped_column(ForeignKey("standing_approvals.id"), nullable=True)
    render_sha256: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(12), index=True)
    superseded_by: Mapped[str | None] = mapped_column(String(36), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class WebhookDelivery(Base):
    """One event for downstream systems (CDN, PIM, marketplaces), written in the transaction of the change
    it reports (an outbox) and delivered, signed, with retries (governance.webhooks). Operational: not
    bound to the ledger (the change itself is, by its own event)."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    event: Mapped[str] = mapped_column(String(40))  # image.published | image.withdrawn | image.reviewed
    subject_id: Mapped[str] = mapped_column(String(64), index=True)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    status: Mapped[str] = mapped_column(String(12), default="pending", index=True)  # pending|delivered|failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_error: Mapped[str] = mapped_column(Text, default="")
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class WorkChunk(Base):
    """A fixed slice of a batch's planned images that one worker at a time claims with a lease."""

    __tablename__ = "work_chunks"
    __table_args__ = (
        UniqueConstraint("batch_id", "position"),
        CheckConstraint(one_of("status", ChunkStatus), name="status_known"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    batch_id: Mapped[str] = mapped_column(ForeignKey("batches.id"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    image_ids: Mapped[list[Any]] = mapped_column(default=list)
    status: Mapped[str] = mapped_column(String(10), default="pending")
    claimed_by: Mapped[str | None] = mapped_column(String(200), nullable=True)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class AuditAnchor(Base):
    """A signed checkpoint of the audit chain head, also written to WORM storage (S3 Object Lock)."""

    __tablename__ = "audit_anchors"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)  # chain head seq
    head_hash: Mapped[str] = mapped_column(String(64))
    at: Mapped[str] = mapped_column(String(32))
    store_url: Mapped[str] = mapped_column(String(1000))
    key: Mapped[str] = mapped_column(String(1000))
    version_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    retain_until: Mapped[str | None] = mapped_column(String(32), nullable=True)
    signature: Mapped[str] = mapped_column(Text)
    # SHA-256 fingerprint of the certificate that signed it (governance.ledger.certificate_id); None before 0007
    signer_id: Mapped[str | None] = mapped_column(String(64), nullable=True)


class AuditEvent(Base):
    """One link of the append-only, hash-chained audit log (see governance.audit)."""

    __tablename__ = "audit_events"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    at: Mapped[str] = mapped_column(String(32), index=True)  # ISO-8601 UTC, hashed exactly as stored
    actor: Mapped[str] = mapped_column(String(100))
    action: Mapped[str] = mapped_column(String(60), index=True)
    subject_type: Mapped[str] = mapped_column(String(40))
    subject_id: Mapped[str] = mapped_column(String(100), index=True)
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64), unique=True)
    # Since 0007 (all hashed when not null, so events written before keep their hashes): the API token
    # the actor used, the governed records this event binds ([kind, id, row digest or null when
    # deleted], see governance.bindings), and the audit key that authenticated the event; `mac` is
    # HMAC-SHA256 of `hash` under that key (not hashed itself: it is over the hash).
    token_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    records: Mapped[list[Any] | None] = mapped_column(JSON(none_as_null=True), nullable=True)
    key_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    mac: Mapped[str | None] = mapped_column(String(64), nullable=True)
