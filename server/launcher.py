"""Starting runs from the server: a flow run of the Prefect deployment when a Prefect server is
configured (PREFECT_API_URL), else in this process, one batch at a time on a background thread.

Either way the run is checked first exactly as `atelier run` checks it (operator role, batch approved,
signer, keys, licence and store reachable), so a refusal is an immediate 4xx/503, not a failed run.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime

from flows.runtime import Runtime
from governance.records import utcnow
from governance.results import Result

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunStart(Result):
    batch_id: str
    mode: str  # "deployment" | "in-process"
    state: str  # queued | running | finished | failed
    flow_run_id: str | None
    started_by: str
    requested_at: datetime
    error: str | None = None


class RunLauncher:
    def __init__(self, rt: Runtime):
        self.rt = rt
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="atelier-run")
        self._runs: dict[str, tuple[RunStart, Future[object] | None]] = {}
        self._lock = threading.Lock()

    @property
    def mode(self) -> str:
        """ "deployment" when a Prefect server is configured (PREFECT_API_URL, environment or profile)."""
        from prefect.settings import PREFECT_API_URL

        return "deployment" if PREFECT_API_URL.value() else "in-process"

    def start(self, rt: Runtime, actor: str, batch_id: str) -> RunStart:
        """Check the batch can run now, then start it; a batch already queued here is not started twice."""
        from flows.cli import preflight
        from governance.approvals import require_runnable
        from governance.batches import get_batch
        from governance.errors import InvalidState
        from governance.users import require_role

        with rt.sessions() as session:
            require_role(session, actor, "operator", "run batches")
            batch_id = get_batch(session, batch_id).id
            require_runnable(get_batch(session, batch_id), rt.settings.load_prompt_policy())
        preflight(rt)
        with self._lock:
            known = self._runs.get(batch_id)
            if known is not None and known[1] is not None and not known[1].done():
                raise InvalidState(f"batch {batch_id} is already queued or running on this server")
            if self.mode == "deployment":
                started = self._deployment(rt, actor, batch_id)
                self._runs[batch_id] = (started, None)
                return started
            started = RunStart(batch_id, "in-process", "queued", None, actor, utcnow())
            future = self._pool.submit(self._run_here, rt, actor, batch_id)
            self._runs[batch_id] = (started, future)
            return started

    def _run_here(self, rt: Runtime, actor: str, batch_id: str) -> object:
        from flows.cli import run_batches

        try:
            return run_batches(rt, actor, [batch_id])
        except Exception:
            log.exception("in-process run of batch %s failed", batch_id)
            raise

    def _deployment(self, rt: Runtime, actor: str, batch_id: str) -> RunStart:
        from prefect.deployments import run_deployment

        flow_run = run_deployment(
            rt.settings.prefect_deployment,
            parameters={"batch_id": batch_id, "actor": actor, "token_id": rt.token_id},
            timeout=0,  # queued on the pool: the GPU workers pick it up
        )
        return RunStart(batch_id, "deployment", "queued", str(getattr(flow_run, "id", "")), actor, utcnow())

    def state(self, batch_id: str) -> RunStart | None:
        with self._lock:
            known = self._runs.get(batch_id)
        if known is None:
            return None
        started, future = known
        if future is None:
            return started
        if not future.done():
            return RunStart(**{**started.__dict__, "state": "running" if future.running() else "queued"})
        exc = future.exception()
        if exc is not None:
            return RunStart(**{**started.__dict__, "state": "failed", "error": str(exc).splitlines()[0][:300]})
        return RunStart(**{**started.__dict__, "state": "finished"})

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class WebhookCourier:
    """Delivers the webhook outbox from the server: at once after an act that wrote to it (`poke`), and
    every `interval` seconds for retries that come due. One background thread; a failure is logged
    (never the secret) and the next round tries again. Without ATELIER_WEBHOOK_URL it does nothing."""

    def __init__(self, rt: Runtime, interval: float = 15.0):
        self.rt = rt
        self.interval = interval
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def poke(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="atelier-webhooks", daemon=True)
                self._thread.start()
        self._wake.set()

    def _loop(self) -> None:
        while True:
            self._wake.wait(self.interval)
            self._wake.clear()
            try:
                self.rt.deliver_webhooks(0.0)
            except Exception as exc:  # noqa: BLE001 - a delivery round must never take the server down
                log.warning("webhooks not sent: %s", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
