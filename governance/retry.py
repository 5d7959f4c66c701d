"""Riding out outages: retry a step while its failure is transient, with capped exponential backoff.

A worker's steps (claim a chunk, publish an image, complete chunks, finish the run) are idempotent
by construction, so the whole step can simply be run again after the database restarted or the
object store answered 500s or timed out. What is transient:

- the database: the connection dropped or was refused (`OperationalError`, `InterfaceError`, or any
  DBAPI error SQLAlchemy marks `connection_invalidated`), e.g. during a restart or failover;
- the object store: a connection that failed or timed out, or an HTTP 5xx / throttling answer
  that outlived boto3's own retries (standard mode, `ATELIER_S3_MAX_ATTEMPTS`).

Anything else (a constraint violation, a 403, a bad setting) fails at once: retrying cannot fix it.
Retries stop once `ATELIER_OUTAGE_TOLERANCE_SECONDS` have passed since the first failure; then
the error surfaces and the run fails, handing its chunks back (nothing is lost: a re-run resumes).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)

_S3_TRANSIENT_CODES = {
    "InternalError",
    "ServiceUnavailable",
    "SlowDown",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "Throttling",
    "ThrottlingException",
    "500",
    "502",
    "503",
    "504",
}


def is_transient(exc: BaseException) -> bool:
    """True for failures that a later attempt of the same idempotent step can succeed past."""
    from botocore.exceptions import ClientError, ConnectionClosedError, HTTPClientError
    from botocore.exceptions import ConnectionError as BotoConnectionError
    from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

    if isinstance(exc, OperationalError | InterfaceError):
        return True
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, BotoConnectionError | ConnectionClosedError | HTTPClientError):
        return True  # includes EndpointConnectionError, ConnectTimeoutError and ReadTimeoutError
    if isinstance(exc, ClientError):
        meta = exc.response.get("ResponseMetadata", {})
        code = str(exc.response.get("Error", {}).get("Code", ""))
        return int(meta.get("HTTPStatusCode") or 0) >= 500 or code in _S3_TRANSIENT_CODES
    return False


def describe(exc: BaseException) -> str:
    """One short line for the log: the error's type and first line, never a connection string."""
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200] if text else ''}"


class Backoff:
    """Capped exponential backoff with full jitter, bounded by a total time since the first failure."""

    def __init__(
        self,
        tolerance_s: float,
        base_s: float = 0.5,
        cap_s: float = 20.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.tolerance_s, self.base_s, self.cap_s, self.sleep, self.clock = tolerance_s, base_s, cap_s, sleep, clock

    def run(self, step: Callable[[], T], what: str) -> T:
        first_failure: float | None = None
        attempt = 0
        while True:
            try:
                result = step()
            except Exception as exc:
                if not is_transient(exc):
                    raise
                now = self.clock()
                first_failure = now if first_failure is None else first_failure
                waited = now - first_failure
                if waited >= self.tolerance_s:
                    log.error("%s: still failing after %.0f s, giving up: %s", what, waited, describe(exc))
                    raise
                delay = min(self.cap_s, self.base_s * 2**attempt) * random.uniform(0.5, 1.0)
                delay = min(delay, max(0.0, self.tolerance_s - waited))
                attempt += 1
                log.warning(
                    "%s: transient failure (attempt %d), retrying in %.1f s: %s", what, attempt, delay, describe(exc)
                )
                self.sleep(delay)
                continue
            if attempt:
                log.warning("%s: recovered after %d retries", what, attempt)
            return result
