"""Ids as people type them: any case, a unique prefix of 8+ characters; an ambiguous one refused by name."""

from __future__ import annotations

import pytest

from governance.audit import record_event
from governance.errors import InvalidInput, NotFound
from governance.records import ModelVersion
from governance.refs import resolve_id

A = "abcdef12-0000-4000-8000-000000000001"
B = "abcdef12-0000-4000-8000-000000000002"
C = "0123abcd-0000-4000-8000-000000000003"


@pytest.fixture
def records(sessions):
    with sessions.begin() as s:
        for n, i in enumerate((A, B, C)):
            s.add(
                ModelVersion(
                    id=i,
                    role="base_unet",
                    name="m",
                    source="/m",
                    sha256=str(n) * 64,
                    files={},
                    licence_id="creativeml-openrail++-m",
                )
            )
        record_event(s, "admin", "test.fixture", "model_version", "three")  # every write is audited (invariant 3)
    return sessions


def find(sessions, ref):
    with sessions() as s:
        return resolve_id(s, ModelVersion, ref, "model version", "list them first").id


def test_full_ids_and_unique_prefixes_in_any_case(records):
    assert find(records, A) == A
    assert find(records, C.upper()) == C
    assert find(records, "0123ABCD") == C
    assert find(records, " abcdef12-0000-4000-8000-000000000002 ") == B


def test_an_ambiguous_prefix_is_refused_naming_the_candidates(records):
    with pytest.raises(InvalidInput, match=f"ambiguous: it matches {A}, {B}; give more characters"):
        find(records, "ABCDEF12")


@pytest.mark.parametrize(
    "ref, message",
    [("abc", "at least 8 characters"), ("ffffffff", "no model version"), ("abcdef1%", "at least 8 characters")],
)
def test_short_unknown_or_wildcard_refs_find_nothing(records, ref, message):
    with pytest.raises(NotFound, match=message):
        find(records, ref)
