"""Licences: Attachment A as machine-checkable use categories, refused at intake; obligations downstream."""

from __future__ import annotations

import hashlib
import re

import pytest
from sqlalchemy import func, select

from governance.audit import record_event
from governance.batches import submit_batch
from governance.errors import InvalidInput
from governance.licences import (
    CREATIVEML_OPENRAIL_PP_M,
    USE_CATEGORIES,
    KnownLicence,
    Obligation,
    UseRestriction,
    allowed_use_categories,
    check_use_category,
    obligations_for,
    record_model_version,
    register_licence,
)
from governance.records import AuditEvent, Batch, Licence, Prompt
from tests.conftest import SHARED
from tests.flows.conftest import CLI
from tests.governance.conftest import good_rows, write_csv

LICENCE_TEXT = SHARED / "licences" / "CreativeML-OpenRAIL++-M-SDXL-1.0.txt"
LICENCE_ID = CREATIVEML_OPENRAIL_PP_M.id


def _words(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


@pytest.fixture(scope="module")
def licence_text() -> str:
    if not LICENCE_TEXT.is_file():
        pytest.skip(f"licence text not found at {LICENCE_TEXT} (the shared folder ../shared is absent)")
    return LICENCE_TEXT.read_text(encoding="utf-8")


def test_attachment_a_is_covered_clause_by_clause(licence_text: str) -> None:
    """Every restriction clause is quoted verbatim from the licence, in order, and prohibits some category."""
    assert hashlib.sha256(LICENCE_TEXT.read_bytes()).hexdigest() == CREATIVEML_OPENRAIL_PP_M.text_sha256
    attachment = _words(licence_text.split("Attachment A Use Restrictions", 1)[1])
    positions = [attachment.find(_words(c)) for c in CREATIVEML_OPENRAIL_PP_M.clauses]
    assert all(p >= 0 for p in positions) and positions == sorted(positions)
    # together the clauses are the whole of Attachment A (only separators between them)
    rest = attachment.replace("You agree not to use the Model or Derivatives of the Model:", "")
    for clause in CREATIVEML_OPENRAIL_PP_M.clauses:
        rest = rest.replace(_words(clause), "")
    assert set(rest) <= set("; .")
    numbered = {r.clause for r in CREATIVEML_OPENRAIL_PP_M.restrictions}
    assert numbered == {f"Attachment A ({n})" for n in range(1, len(CREATIVEML_OPENRAIL_PP_M.clauses) + 1)}
    for r in CREATIVEML_OPENRAIL_PP_M.restrictions:
        assert r.category in USE_CATEGORIES
        n = int(r.clause.split("(")[1].rstrip(")"))
        assert r.text == CREATIVEML_OPENRAIL_PP_M.clauses[n - 1]


def _counts(sessions) -> tuple[int, int, int]:
    with sessions() as s:
        return (
            s.scalar(select(func.count()).select_from(Batch)),
            s.scalar(select(func.count()).select_from(Prompt)),
            s.scalar(select(func.count()).select_from(AuditEvent)),
        )


@pytest.mark.parametrize(
    "category, clause, words",
    [
        ("medical-advice", "Attachment A (10)", "To provide medical advice and medical results interpretation"),
        ("law-enforcement-prediction", "Attachment A (11)", "predicting an individual will commit fraud/crime"),
        ("automated-legal-decisions", "Attachment A (6)", "fully automated decision making"),
        ("exploit-minors", "Attachment A (2)", "exploit or harm minors"),
        ("disinformation", "Attachment A (3)", "verifiably false information"),
    ],
)
def test_prohibited_use_category_is_refused_at_intake_naming_the_clause(
    sessions, tmp_path, category, clause, words
) -> None:
    before = _counts(sessions)
    with sessions.begin() as s, pytest.raises(InvalidInput) as err:
        submit_batch(
            s,
            "maria",
            write_csv(tmp_path / "p.csv", good_rows()),
            "catalogue",
            use_category=category,
            licence_ids=[LICENCE_ID],
        )
    message = str(err.value)
    assert category in message and clause in message and words in message and "\n" not in message
    assert "CreativeML Open RAIL++-M" in message
    assert _counts(sessions) == before  # nothing stored, not even an audit event


def test_registered_licence_is_what_intake_checks(sessions, tmp_path) -> None:
    """Once registered, the database row (what runs cite) decides, also for licences Atelier does not know."""
    strict = KnownLicence(
        id="house-licence",
        name="House terms",
        url="https://example.invalid/terms",
        text_sha256="0" * 64,
        restrictions=(UseRestriction("editorial", "clause 7", "No editorial use."),),
    )
    csv = write_csv(tmp_path / "p.csv", good_rows())
    with sessions.begin() as s, pytest.raises(InvalidInput, match="neither registered nor known"):
        submit_batch(s, "maria", csv, "catalogue", use_category="editorial", licence_ids=["house-licence"])
    with sessions.begin() as s:
        register_licence(s, "admin", strict)
    with sessions.begin() as s, pytest.raises(InvalidInput, match=r"House terms \(house-licence\), clause 7"):
        submit_batch(s, "maria", csv, "catalogue", use_category="editorial", licence_ids=[LICENCE_ID, "house-licence"])
    with sessions.begin() as s:
        assert "editorial" not in allowed_use_categories(s, [LICENCE_ID, "house-licence"])
        assert "editorial" in allowed_use_categories(s, [LICENCE_ID])
        batch = submit_batch(s, "maria", csv, "catalogue", use_category="editorial", licence_ids=[LICENCE_ID])
        assert batch.use_category == "editorial"


def test_older_rows_with_bare_category_ids_still_name_the_clause(sessions) -> None:
    with sessions.begin() as s:  # a row registered before restrictions carried their clause
        s.get(Licence, LICENCE_ID).restrictions = ["medical-advice"]
        record_event(s, "admin", "test.fixture", "licence", LICENCE_ID)  # every write is audited (invariant 3)
    with sessions() as s, pytest.raises(InvalidInput, match=r"Attachment A \(10\)"):
        check_use_category(s, "medical-advice", [LICENCE_ID])


def test_unknown_use_category_lists_the_allowed_ones(sessions, tmp_path) -> None:
    with sessions.begin() as s, pytest.raises(InvalidInput) as err:
        submit_batch(s, "maria", write_csv(tmp_path / "p.csv", good_rows()), "catalogue", use_category="space-ads")
    message = str(err.value)
    assert "unknown use category 'space-ads'" in message
    assert "product-catalogue" in message and "marketing-campaign" in message
    assert "medical-advice" not in message  # prohibited ones are not offered


def test_permitted_use_category_is_stored_and_audited(sessions, tmp_path) -> None:
    with sessions.begin() as s:
        batch = submit_batch(
            s,
            "maria",
            write_csv(tmp_path / "p.csv", good_rows()),
            "marketing",
            use_category="marketing-campaign",
            licence_ids=[LICENCE_ID],
        )
        batch_id = batch.id
    with sessions() as s:
        assert s.get(Batch, batch_id).use_category == "marketing-campaign"
        event = s.scalar(select(AuditEvent).where(AuditEvent.action == "batch.submitted"))
        assert event.payload["use_category"] == "marketing-campaign"
        assert event.payload["licences_checked"] == [LICENCE_ID]
    with sessions.begin() as s:  # the default is "general"
        assert (
            submit_batch(s, "maria", write_csv(tmp_path / "q.csv", good_rows()), "catalogue").use_category == "general"
        )


def test_obligations_for_model_versions(sessions) -> None:
    other = KnownLicence(
        id="vae-licence",
        name="VAE terms",
        url="https://example.invalid/vae",
        text_sha256="1" * 64,
        obligations=(Obligation("attribution", "§2", "Credit the VAE authors."),),
    )
    with sessions.begin() as s:
        register_licence(s, "admin", CREATIVEML_OPENRAIL_PP_M)
        register_licence(s, "admin", other)
        versions = [
            record_model_version(s, "ops", "base_unet", "b", "/m", "a" * 64, {}, LICENCE_ID),
            record_model_version(s, "ops", "refiner_unet", "r", "/m", "b" * 64, {}, LICENCE_ID),
            record_model_version(s, "ops", "vae", "v", "/m", "c" * 64, {}, "vae-licence"),
        ]
        obligations = obligations_for(versions)
    assert [(o["licence"], o["obligation"]) for o in obligations] == [
        (LICENCE_ID, "pass-on-use-restrictions"),
        (LICENCE_ID, "output-accountability"),
        ("vae-licence", "attribution"),
    ]
    first = obligations[0]
    assert first["section"] == "Section III, paragraph 4" and "Attachment A" in first["text"]
    assert first["licence_text_sha256"] == CREATIVEML_OPENRAIL_PP_M.text_sha256
    assert first["models"] == ["base_unet", "refiner_unet"] and obligations[2]["models"] == ["vae"]


def test_cli_refuses_prohibited_use_in_one_line(capsys, tmp_path) -> None:
    cli = CLI(capsys, ["--data-dir", str(tmp_path / "data")])
    cli("keys", "init")
    cli("users", "add", "admin", "--role", "admin")
    cli("users", "add", "maria", "--role", "requester", actor="admin")
    csv = str(write_csv(tmp_path / "p.csv", good_rows()))
    # before the models' licence is registered, nothing can be submitted: the run could not record it
    code, out, err = cli("batch", "submit", csv, "--purpose", "catalogue", actor="maria")
    assert code == 2 and err.count("\n") == 1 and "`atelier licences register creativeml-openrail++-m`" in err
    cli("licences", "register", "creativeml-openrail++-m", actor="admin")
    code, out, err = cli(
        "batch", "submit", csv, "--purpose", "catalogue", "--use-category", "medical-advice", actor="maria"
    )
    assert code == 2 and err.count("\n") == 1 and "Attachment A (10)" in err
    code, out, err = cli("batch", "submit", csv, "--purpose", "catalogue", "--use-category", "nope", actor="maria")
    assert code == 2 and err.count("\n") == 1 and "choose one of general" in err
    assert "(none)" in cli("batch", "list")[1]
    code, out, err = cli(
        "batch", "submit", csv, "--purpose", "catalogue", "--use-category", "product-catalogue", "--json", actor="maria"
    )
    assert code == 0, err
