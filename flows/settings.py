"""Atelier's one settings object. Built by `get_settings()`, passed down; nothing read at import time.

Every field is an `ATELIER_*` environment variable; the CLI's global flags override them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    from governance.intake import IntakeLimits
    from governance.pipelines import PipelineSet
    from governance.retention import RetentionPolicy
    from governance.screening import PromptPolicy
    from sdxl_core.engine import EngineConfig


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ATELIER_", extra="ignore")

    data_dir: Path = Field(Path(".atelier"), description="where the embedded database, store and models live")
    database_url: str | None = Field(None, description="SQLAlchemy URL; default: SQLite file in the data dir")
    store_url: str | None = Field(
        None, description="file:///path or s3://bucket/prefix; default: a folder in the data dir"
    )
    s3_endpoint_url: str | None = Field(None, description="endpoint of an S3-compatible server")
    audit_store_url: str | None = Field(
        None, description="where audit anchors go: an S3 bucket with Object Lock; default: the store"
    )
    audit_retention_days: int = Field(2557, ge=1, description="Object Lock retention of each audit anchor (7 years)")
    base_model: str | None = Field(None, description="diffusers folder or hub id of SDXL base; default: tiny")
    refiner_model: str | None = Field(None, description="diffusers folder or hub id of the refiner")
    model_revision: str | None = Field(None, description="hub revision (commit) when the models are hub ids")
    model_licence: str = Field("creativeml-openrail++-m", description="licence id of the configured models")
    # SDXL engine (issue 3): single-file configs, VAE, sampler, expected weight hashes.
    base_model_config: str | None = Field(
        None, description="local diffusers config folder of a single-file (.safetensors) base checkpoint"
    )
    refiner_model_config: str | None = Field(None, description="config folder of a single-file refiner checkpoint")
    vae_model: str | None = Field(None, description="local VAE folder used instead of the model's (fp16-fix VAE)")
    upcast_vae: bool = Field(False, description="decode in float32 a VAE that needs it when dtype is float16")
    vae_tiling: bool = Field(False, description="decode in tiles (very large images)")
    scheduler: str = Field("euler", description="sampler: euler, euler_a, dpmpp_2m, dpmpp_2m_karras, ddim")
    model_sha256: dict[str, str] = Field(
        default_factory=dict,
        description='expected component hashes, JSON {"base_unet": "<sha256>", ...}; a mismatch refuses the run',
    )
    lineage_url: str | None = Field(None, description="OpenLineage endpoint (Marquez base URL); default: a file")
    device: str = Field("cpu", description="torch device for generation and safety: cpu, cuda, cuda:1")
    dtype: str = Field("float32", description="float32, float16 or bfloat16")
    safety_model: str = Field("atelier-tiny-clip", description="open_clip model name")
    safety_pretrained: str | None = Field(None, description="open_clip checkpoint file or tag; default: random")
    safety_policy: Path | None = Field(None, description="safety policy JSON; default: the packaged policy")
    review_purposes: list[str] = Field(
        default_factory=lambda: ["marketing"],
        description='purposes whose images a reviewer accepts before publishing, JSON e.g. ["marketing"]',
    )
    prompt_policy: Path | None = Field(
        None, description="prompt policy JSON (what may not be generated); default: the packaged example policy"
    )
    catalogue_feed: str | None = Field(
        None, description="the product feed (PIM export) the scheduled catalogue refresh imports first"
    )
    catalogue_withdraw_retired: bool = Field(
        False, description="withdraw the published images of superseded SKU sets and removed SKUs (needs auditor)"
    )
    pipelines: Path | None = Field(
        None, description="pipeline configurations JSON (base, base+refiner, ...); default: the packaged file"
    )
    gpu_hour_price: float | None = Field(
        None,
        ge=0,
        le=1_000_000,
        allow_inf_nan=False,
        description="price of one GPU-hour (any currency): cost per image and per accepted image",
    )
    retention_policy: Path | None = Field(
        None, description="retention policy JSON (how long unpublished and withdrawn files are kept); default: example"
    )
    c2pa_cert: Path | None = Field(None, description="PEM chain of the C2PA signer; default: keys/ in the data dir")
    c2pa_key: Path | None = Field(None, description="PEM private key of the C2PA signer")
    c2pa_sign_callback: str | None = Field(None, description="module:function signing hook (KMS/HSM) instead of a key")
    c2pa_trust_anchors: Path | None = Field(None, description="PEM trust anchors for validating manifests")
    c2pa_tsa_url: str | None = Field(None, description="RFC 3161 timestamp authority; default: none")
    watermark_key_file: Path | None = Field(
        None, description="watermark key ring (hex, current key first, earlier keys after); default: in keys/"
    )
    watermark_key_callback: str | None = Field(
        None, description="module:function returning the current watermark key's bytes (KMS/HSM) instead of a file"
    )
    audit_key_file: Path | None = Field(
        None, description="audit key ring authenticating audit events (hex, current key first); default: in keys/"
    )
    audit_key_callback: str | None = Field(
        None, description="module:function returning the current audit key's bytes (KMS/HSM) instead of a file"
    )
    anchor_interval_seconds: float = Field(
        60, gt=0, description="a run anchors the audit chain to WORM storage at least this often (and at its end)"
    )
    verify_max_pixels: int = Field(
        64_000_000, ge=65_536, description="`atelier verify` refuses images declaring more pixels than this"
    )
    verify_max_file_bytes: int = Field(
        64 * 1024 * 1024, ge=1024, description="`atelier verify` refuses files larger than this"
    )
    intake_max_file_bytes: int = Field(
        10 * 1024 * 1024, ge=1024, description="`batch submit`/`edit` refuse prompt files larger than this"
    )
    intake_max_rows: int = Field(10_000, ge=1, le=100_000, description="and prompt files with more rows than this")
    token: SecretStr | None = Field(None, description="the CLI's API token (else the file `atelier login` wrote)")
    token_file: Path | None = Field(
        None, description="where `atelier login` keeps the token (mode 0600); default ~/.config/atelier/token"
    )
    forbid_requester_approver: bool = Field(
        False, description="separation of duties: nobody may hold both the requester and the approver role"
    )
    webhook_url: str | None = Field(
        None, description="where downstream systems hear of published, reviewed and withdrawn images (POST, JSON)"
    )
    webhook_secret_file: Path | None = Field(
        None, description="the webhooks' HMAC secret (hex, 0600; `keys init` makes one); default: in keys/"
    )
    webhook_max_attempts: int = Field(8, ge=1, le=50, description="attempts per webhook delivery before it fails")
    webhook_timeout_seconds: float = Field(5, gt=0, description="per webhook attempt")
    # The server (`atelier serve`): console sessions and what a browser may do.
    session_key_file: Path | None = Field(
        None, description="the console's session key (hex, 0600; made on first start); default: in keys/"
    )
    session_idle_minutes: float = Field(30, gt=0, description="a console session ends after this long unused")
    session_max_hours: float = Field(12, gt=0, description="and at the latest this long after signing in")
    cookie_secure: bool | None = Field(
        None, description="Secure cookies: true, false, or unset (when the request came over HTTPS)"
    )
    login_max_failures: int = Field(
        5, ge=1, description="wrong passwords per user name (and per address) in 15 minutes before login waits"
    )
    server_upload_max_bytes: int = Field(
        64 * 1024 * 1024, ge=1024, description="the largest file the server accepts (prompt files, images to verify)"
    )
    prefect_deployment: str = Field(
        "produce-batch/marketing-on-demand",
        description="the deployment the server starts a run with when PREFECT_API_URL is set (else: in-process)",
    )
    chunk_size: int = Field(4, ge=1, le=256, description="images generated per engine call")
    lease_seconds: float = Field(
        120, gt=0, description="how long a claimed chunk stays a worker's without news before others may take it"
    )
    postprocess_workers: int = Field(
        2, ge=1, le=64, description="threads that watermark, encode and hash images while the next chunk generates"
    )
    outage_tolerance_seconds: float = Field(
        300, ge=0, description="how long a worker keeps retrying a step through a database or object-store outage"
    )
    s3_timeout_seconds: float = Field(30, gt=0, description="S3 connect and read timeout per request")
    s3_max_attempts: int = Field(5, ge=1, le=20, description="boto3's own attempts per S3 request (standard mode)")

    @property
    def database_url_resolved(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'atelier.db').resolve()}"

    @property
    def store_url_resolved(self) -> str:
        return self.store_url or (self.data_dir / "store").resolve().as_uri()

    @property
    def uses_embedded_database(self) -> bool:
        return self.database_url is None

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def keys_dir(self) -> Path:
        return self.data_dir / "keys"

    def engine_config(self, base: str, refiner: str | None) -> EngineConfig:
        """The SDXL engine's config for these base and refiner models (paths or hub ids) from the settings."""
        from sdxl_core.engine import EngineConfig

        return EngineConfig(
            base=base,
            refiner=refiner,
            revision=self.model_revision,
            device=self.device,
            dtype=self.dtype,
            base_config=self.base_model_config,
            refiner_config=self.refiner_model_config,
            vae=self.vae_model,
            upcast_vae=self.upcast_vae,
            vae_tiling=self.vae_tiling,
            scheduler=self.scheduler,
            expected_sha256=dict(self.model_sha256),
        )

    def c2pa_paths(self) -> tuple[Path, Path, Path]:
        """(certificate chain, private key, trust anchors), defaulting to `atelier keys init`'s files."""
        from governance.credentials import ANCHOR_FILE, CHAIN_FILE, KEY_FILE

        return (
            self.c2pa_cert or self.keys_dir / CHAIN_FILE,
            self.c2pa_key or self.keys_dir / KEY_FILE,
            self.c2pa_trust_anchors or self.keys_dir / ANCHOR_FILE,
        )

    def watermark_key_path(self) -> Path:
        from governance.watermark import KEY_FILE

        return self.watermark_key_file or self.keys_dir / KEY_FILE

    def audit_key_path(self) -> Path:
        from governance.audit import KEY_FILE

        return self.audit_key_file or self.keys_dir / KEY_FILE

    def intake_limits(self) -> IntakeLimits:
        from governance.intake import IntakeLimits

        return IntakeLimits(self.intake_max_file_bytes, self.intake_max_rows)

    def load_prompt_policy(self) -> PromptPolicy:
        """The prompt policy in force; an unreadable or invalid file is an error, never a skip."""
        from governance.screening import load_prompt_policy

        return load_prompt_policy(self.prompt_policy)

    def load_pipelines(self) -> PipelineSet:
        """The pipeline configurations in force for new batches; an unreadable or invalid file is an error."""
        from governance.pipelines import default_pipelines, load_pipelines

        return load_pipelines(self.pipelines) if self.pipelines else default_pipelines()

    def load_retention_policy(self) -> RetentionPolicy:
        """The retention policy in force; an unreadable or invalid file is an error, never a skip."""
        from governance.retention import load_retention_policy

        return load_retention_policy(self.retention_policy)

    def webhook_secret_path(self) -> Path:
        return self.webhook_secret_file or self.keys_dir / "webhook.key"

    def session_key_path(self) -> Path:
        return self.session_key_file or self.keys_dir / "session.key"

    def token_path(self) -> Path:
        return self.token_file or Path.home() / ".config" / "atelier" / "token"

    def redacted(self) -> dict[str, str]:
        """Settings for display: passwords in URLs are hidden, the token never shown."""
        from sqlalchemy.engine import make_url

        out = {}
        for name, value in self.model_dump(exclude={"token"}).items():
            out[name] = "" if value is None else str(value)
        out["database_url"] = make_url(self.database_url_resolved).render_as_string(hide_password=True)
        return out


def get_settings(**overrides: object) -> Settings:
    """Environment first, then explicit overrides (the CLI flags) where they are not None."""
    # Any, not object: each value is checked against its field by pydantic when Settings is built
    given: dict[str, Any] = {k: v for k, v in overrides.items() if v is not None}
    return Settings(**given)
