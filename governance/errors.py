"""Errors a user can cause and fix. The CLI prints their message (one line) and exits with `exit_code`."""

from __future__ import annotations


class AtelierError(Exception):
    """A refusal or a user mistake: the message says what is wrong and how to fix it."""

    exit_code = 1


class InvalidInput(AtelierError):
    exit_code = 2


class NotFound(AtelierError):
    exit_code = 3


class PermissionDenied(AtelierError):
    exit_code = 4


class InvalidState(AtelierError):
    exit_code = 5


class GovernanceCheckFailed(AtelierError):
    """A governance step could not run (missing model, watermark or signer): never skipped."""

    exit_code = 6


class SchemaNotReady(AtelierError):
    exit_code = 7
