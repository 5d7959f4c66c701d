"""Errors a user can cause and fix, and the one map of exit codes.

The CLI prints an error's message (one line) and exits with its `exit_code`. Every failure kind has
exactly one code (:class:`ExitCode`, tabled in the README); outcomes that are not errors (an
incomplete run, a verify verdict, a reproduction that differs) have theirs here too.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    REFUSED = 1  # an AtelierError without a more specific kind
    INVALID_INPUT = 2  # bad file, row, argument or setting; a file `verify` cannot check
    NOT_FOUND = 3
    PERMISSION_DENIED = 4
    INVALID_STATE = 5  # the record is not in a state that allows this
    GOVERNANCE_CHECK_FAILED = 6  # a governance step cannot run: signer, key, safety model, model hashes, store
    SCHEMA_NOT_READY = 7  # the database needs `atelier db upgrade`
    AUDIT_FAILED = 8  # `audit verify` found a break
    RUN_INCOMPLETE = 9  # `atelier run` finished with images still to make
    DERIVED = 10  # `verify`: not these bytes, but made from a published image
    TAMPERED = 11  # `verify`: a manifest whose signature or hashes fail
    UNKNOWN = 12  # `verify`: nothing links the file to a published image
    NOT_REPRODUCED = 13  # `reproduce`: the regenerated image differs beyond tolerance
    SERVICE_UNAVAILABLE = 14  # the database (or another service) cannot be reached
    UNAUTHENTICATED = 15  # no credentials, or a token that is unknown, expired or revoked, or a disabled user
    INTERRUPTED = 130  # Ctrl-C
    BROKEN_PIPE = 141  # the reader of our output went away (`atelier ... | head`), as SIGPIPE would


class AtelierError(Exception):
    """A refusal or a user mistake: the message says what is wrong and how to fix it."""

    exit_code: int = ExitCode.REFUSED


class InvalidInput(AtelierError):
    exit_code: int = ExitCode.INVALID_INPUT


class NotFound(AtelierError):
    exit_code: int = ExitCode.NOT_FOUND


class Unauthenticated(AtelierError):
    """Who is acting is not established: no token, or one that is unknown, expired or revoked, or its
    user is disabled. The message never repeats the token."""

    exit_code: int = ExitCode.UNAUTHENTICATED


class PermissionDenied(AtelierError):
    exit_code: int = ExitCode.PERMISSION_DENIED


class InvalidState(AtelierError):
    exit_code: int = ExitCode.INVALID_STATE


class GovernanceCheckFailed(AtelierError):
    """A governance step could not run (missing model, watermark or signer): never skipped."""

    exit_code: int = ExitCode.GOVERNANCE_CHECK_FAILED


class SchemaNotReady(AtelierError):
    exit_code: int = ExitCode.SCHEMA_NOT_READY
