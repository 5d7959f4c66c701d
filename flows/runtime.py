"""What a flow run works with: database, store, models and safety checker, built from Settings.

Models and the safety checker are cached per worker process, keyed by their settings, so a
worker that runs many flows loads them once ("models stay resident").
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import cache, cached_property
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session, sessionmaker

from flows.settings import Settings, get_settings
from governance.db import ensure_schema, make_engine, make_sessionmaker
from governance.retry import Backoff
from governance.store import ObjectStore, open_store

if TYPE_CHECKING:
    from governance.audit import AuditKeyRing
    from governance.credentials import ContentCredentials
    from governance.ledger import CheckpointSigner
    from governance.pipelines import EngineNeeds
    from governance.records import AuditAnchor
    from governance.safety import SafetyChecker
    from governance.watermark import WatermarkKey
    from governance.webhooks import DeliveryRound
    from sdxl_core.engine import SDXLEngine

log = logging.getLogger(__name__)

_active: ContextVar[Settings | None] = ContextVar("atelier_settings", default=None)
_engines: dict[str, SDXLEngine] = {}
_checkers: dict[str, SafetyChecker] = {}


@contextlib.contextmanager
def using_settings(settings: Settings) -> Iterator[None]:
    """Run flows in this process with these settings (the CLI's flags) instead of the environment."""
    token = _active.set(settings)
    try:
        yield
    finally:
        _active.reset(token)


def active_settings() -> Settings:
    return _active.get() or get_settings()


@cache
def quiet_model_libraries() -> None:
    """diffusers' and transformers' progress bars and INFO chatter, off unless the CLI runs with -v
    (the root logger at INFO): a normal run shows Atelier's own progress only. Once per process."""
    if logging.getLogger().isEnabledFor(logging.INFO):
        return
    import diffusers.utils.logging as diffusers_logging
    import transformers.utils.logging as transformers_logging

    for lib in (diffusers_logging, transformers_logging):
        lib.set_verbosity_warning()
        lib.disable_progress_bar()


@dataclass
class Runtime:
    settings: Settings
    token_id: str | None = None  # the authenticated caller's API token: recorded on the audit events it causes
    # what the batch being run needs of the engine (its pipeline configurations): the refiner or not, and
    # a sampler or dtype a configuration pins; None: base + refiner with the worker's settings
    needs: EngineNeeds | None = None
    _sessions: sessionmaker[Session] | None = field(default=None, repr=False)

    @property
    def sessions(self) -> sessionmaker[Session]:
        """Sessions whose audit events are authenticated with `audit_keys` and name `token_id` (both in
        the sessionmaker's `info`, read by governance.audit.record_event)."""
        if self._sessions is None:
            self.settings.data_dir.mkdir(parents=True, exist_ok=True)
            engine = make_engine(self.settings.database_url_resolved)
            ensure_schema(engine, auto_upgrade=self.settings.uses_embedded_database)
            # the audit key ring is loaded when the first event is written: reading needs no key
            self._sessions = make_sessionmaker(
                engine,
                audit_keys=lambda: self.audit_keys,
                token_id=self.token_id,
                webhooks=bool(self.settings.webhook_url),
            )
        return self._sessions

    def with_token(self, token_id: str | None) -> Runtime:
        """This runtime acting with `token_id`: the same database engine (no second pool) and key ring,
        sessions whose events name that token. (Sharing `sessions` itself would not: the token is in
        the sessionmaker's `info`.)"""
        other = Runtime(self.settings, token_id, self.needs)

        other._sessions = make_sessionmaker(
            self.sessions.kw["bind"],
            audit_keys=lambda: self.audit_keys,
            token_id=token_id,
            webhooks=bool(self.settings.webhook_url),
        )
        return other

    @cached_property
    def audit_keys(self) -> AuditKeyRing:
        """The audit key ring: the current key (authenticates new events) first, earlier keys after.
        None configured is an error (GovernanceCheckFailed naming `atelier keys init`), never a skip."""
        from governance.audit import AuditKeyRing, audit_key_from_callback, load_audit_key_ring

        s = self.settings
        path = s.audit_key_path()
        if s.audit_key_callback:
            earlier = load_audit_key_ring(path).keys if path.exists() else ()
            return AuditKeyRing((audit_key_from_callback(s.audit_key_callback), *earlier))
        return load_audit_key_ring(path)

    def anchor(self, actor: str) -> AuditAnchor | None:
        """Anchor the audit chain's head to WORM storage now (a signed checkpoint; idempotent).

        Every face calls this after each governance decision (approve, reject, edit, users, tokens,
        keys), and runs call it every `anchor_interval_seconds`: the events after the newest anchor
        are the only ones a database writer could remove unnoticed (with everything they bind).
        Retried through outages. Returns the anchor (another process's when it anchored the same head
        at the same moment), or None when the chain is empty."""
        from sqlalchemy import select
        from sqlalchemy.exc import IntegrityError

        from governance.ledger import anchor_chain
        from governance.records import AuditAnchor

        signer = self.checkpoint_signer()

        def attempt() -> AuditAnchor | None:
            with self.sessions.begin() as session:
                return anchor_chain(session, actor, self.anchor_store, signer, self.settings.audit_retention_days)

        try:
            return self.backoff.run(attempt, "anchor audit chain")
        except IntegrityError:  # another worker anchored the same head meanwhile: that anchor covers it
            with self.sessions() as session:
                return session.scalar(select(AuditAnchor).order_by(AuditAnchor.seq.desc()).limit(1))

    def deliver_webhooks(self, wait_up_to: float = 0.0) -> DeliveryRound | None:
        """Send the due webhook deliveries (None when no webhook is configured). A missing secret with a
        URL configured is an error: deliveries are never sent unsigned."""
        from governance.webhooks import deliver

        s = self.settings
        if not s.webhook_url:
            return None
        return deliver(
            self.sessions,
            s.webhook_url,
            self.webhook_secret,
            max_attempts=s.webhook_max_attempts,
            timeout=s.webhook_timeout_seconds,
            wait_up_to=wait_up_to,
        )

    @cached_property
    def webhook_secret(self) -> bytes:
        from governance.errors import GovernanceCheckFailed

        path = self.settings.webhook_secret_path()
        try:
            secret = bytes.fromhex(path.read_text(encoding="ascii").strip())
        except (OSError, ValueError):
            raise GovernanceCheckFailed(
                f"a webhook URL is set but there is no webhook secret at {path} (32+ bytes of hex, mode 0600): "
                "`atelier keys init` makes a development one, or set ATELIER_WEBHOOK_SECRET_FILE"
            ) from None
        if len(secret) < 16:
            raise GovernanceCheckFailed(f"the webhook secret {path} is shorter than 16 bytes")
        return secret

    @cached_property
    def backoff(self) -> Backoff:
        """Retries for a worker's idempotent steps through database and object-store outages."""
        return Backoff(self.settings.outage_tolerance_seconds)

    @cached_property
    def store(self) -> ObjectStore:
        s = self.settings
        return open_store(s.store_url_resolved, s.s3_endpoint_url, s.s3_timeout_seconds, s.s3_max_attempts)

    def model_sources(self, refiner: bool = True) -> tuple[str, str | None]:
        """(base, refiner) models to load; the refiner None when not wanted (base-only configurations),
        so a team trying the base alone needs no refiner weights."""
        quiet_model_libraries()
        s = self.settings
        self.check_model_settings(refiner)
        if s.base_model:
            return s.base_model, s.refiner_model if refiner else None
        from sdxl_core.tiny import ensure_tiny_models

        base, tiny_refiner = ensure_tiny_models(s.models_dir)
        return str(base), str(tiny_refiner) if refiner else None

    def check_model_settings(self, refiner: bool = True) -> None:
        """The model settings can serve a batch that needs (or not) the refiner; builds and loads nothing."""
        s = self.settings
        if (s.base_model and (s.refiner_model or not refiner)) or not (s.base_model or s.refiner_model):
            return
        from governance.errors import InvalidInput

        raise InvalidInput(
            "set both ATELIER_BASE_MODEL and ATELIER_REFINER_MODEL, or neither (tiny models); "
            "ATELIER_BASE_MODEL alone runs batches of base-only configurations only"
        )

    @property
    def engine(self) -> SDXLEngine:
        """The engine for `needs` (default base + refiner), loaded once per worker process. A base-only
        batch never loads the refiner: it gets a base-only engine, or the base of a full engine this
        worker holds already (nothing loaded again; the refiner left out of what the run records)."""
        from dataclasses import replace

        from governance.errors import GovernanceCheckFailed, InvalidInput
        from sdxl_core.engine import SDXLEngine, WeightHashMismatch

        needs = self.needs
        with_refiner = needs is None or needs.refiner
        base, refiner = self.model_sources(refiner=with_refiner)
        try:
            config = self.settings.engine_config(base, refiner)
            if needs is not None and (needs.scheduler or needs.dtype):  # pinned by the configuration
                config = replace(
                    config, scheduler=needs.scheduler or config.scheduler, dtype=needs.dtype or config.dtype
                )
            key = repr(config)
            if key not in _engines and not with_refiner:
                for engine in list(_engines.values()):
                    if engine.refiner is not None and repr(engine.without_refiner().config) == key:
                        _engines[key] = engine.without_refiner()  # the view kept: later chunks find it at once
                        break
            if key not in _engines:
                log.info("loading SDXL base %s and refiner %s on %s", base, refiner or "(none)", config.device)
                _engines[key] = SDXLEngine.load(config)
        except WeightHashMismatch as exc:  # ATELIER_MODEL_SHA256: refuse the run before any GPU work
            raise GovernanceCheckFailed(str(exc)) from None
        except ValueError as exc:  # a bad engine setting (scheduler, dtype, VAE, single-file config)
            raise InvalidInput(f"engine settings: {exc}") from None
        return _engines[key]

    @cached_property
    def anchor_store(self) -> ObjectStore:
        s = self.settings
        if not s.audit_store_url:
            return self.store
        return open_store(s.audit_store_url, s.s3_endpoint_url, s.s3_timeout_seconds, s.s3_max_attempts)

    def checkpoint_signer(self) -> CheckpointSigner:
        from governance.credentials import load_callback
        from governance.errors import GovernanceCheckFailed
        from governance.ledger import CheckpointSigner

        chain, key, _anchors = self.settings.c2pa_paths()
        callback = load_callback(self.settings.c2pa_sign_callback) if self.settings.c2pa_sign_callback else None
        try:
            return CheckpointSigner(chain.read_bytes(), None if callback else key.read_bytes(), callback)
        except OSError:
            raise GovernanceCheckFailed(
                f"no signing key for audit checkpoints at {chain}: run `atelier keys init` or set ATELIER_C2PA_CERT/KEY"
            ) from None

    def signing_certificate(self) -> bytes | None:
        """The checkpoint signing certificates anchors may name: the current one and the earlier ones
        kept by `atelier keys rotate` (governance.credentials.CHECKPOINT_RING_FILE)."""
        from governance.credentials import checkpoint_certificates

        chain, _key, _anchors = self.settings.c2pa_paths()
        return checkpoint_certificates(self.settings.keys_dir, chain)

    @cached_property
    def watermark_keys(self) -> list[WatermarkKey]:
        """The watermark key ring: the current key (marks new images) first, earlier keys (verify only) after."""
        from governance.watermark import key_from_callback, load_key_ring

        s = self.settings
        path = s.watermark_key_path()
        if s.watermark_key_callback:
            return [key_from_callback(s.watermark_key_callback), *(load_key_ring(path) if path.exists() else [])]
        return load_key_ring(path)

    @property
    def watermark_key(self) -> WatermarkKey:
        return self.watermark_keys[0]

    @cached_property
    def credentials(self) -> ContentCredentials:
        from governance.credentials import ContentCredentials

        chain, key, anchors = self.settings.c2pa_paths()
        return ContentCredentials.from_files(
            chain, key, anchors, tsa_url=self.settings.c2pa_tsa_url, callback=self.settings.c2pa_sign_callback
        )

    @property
    def safety(self) -> SafetyChecker:
        from governance.errors import GovernanceCheckFailed
        from governance.safety import SafetyChecker, SafetyModelError, load_policy

        s = self.settings
        key = f"{s.safety_model}|{s.safety_pretrained}|{s.safety_policy}|{s.device}"
        if key not in _checkers:
            try:
                _checkers[key] = SafetyChecker(
                    load_policy(s.safety_policy),
                    model_name=s.safety_model,
                    pretrained=s.safety_pretrained,
                    device=s.device,
                )
            except SafetyModelError as exc:  # never a skip: no safety model, no publishing
                raise GovernanceCheckFailed(f"safety checker unavailable: {exc}") from None
        return _checkers[key]
