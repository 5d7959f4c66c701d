"""Threat T1, what an approver sees against what runs: each test makes the attack and asserts it is
stopped (characters that hide text, a template's author approving its rows, the declared use shown,
an edit racing a run's start)."""

from __future__ import annotations

import pytest

from tests.flows.conftest import CLI, write_prompts
from tests.governance import conftest as governance
from tests.governance.conftest import write_csv

sessions = governance.sessions  # the fixture: SQLite and PostgreSQL

BASE = {"row_id": "a", "prompt": "a lamp", "seed": 1, "width": 256, "height": 256, "steps": 2}


def _world(tmp_path) -> CLI:
    cli = CLI(None, ["--data-dir", str(tmp_path / "d")])
    assert cli("db", "upgrade")[0] == 0
    cli("keys", "init")
    cli("users", "add", "admin", "--role", "admin")
    for name, role in [("maria", "requester"), ("omar", "approver"), ("ops", "operator")]:
        cli("users", "add", name, "--role", role, actor="admin")
    cli("licences", "register", "creativeml-openrail++-m", actor="admin")
    return cli


# Invisible or line-breaking characters that intake must refuse (governance.text._UNSAFE).
INVISIBLE = {
    "line-separator": "\u2028",
    "paragraph-separator": "\u2029",
    "invisible-separator": "\u2063",
    "invisible-times": "\u2062",
    "tag-characters": "\U000e0069\U000e0067\U000e006e\U000e006f\U000e0072\U000e0065",  # "ignore" in tags
    "mongolian-vowel-separator": "\u180e",
    "hangul-filler": "\u3164",
    "combining-grapheme-joiner": "\u034f",
}


@pytest.mark.parametrize("name", sorted(INVISIBLE))
def test_intake_refuses_invisible_and_line_breaking_characters(tmp_path, name) -> None:
    cli = _world(tmp_path)
    row = {**BASE, "prompt": "a la" + INVISIBLE[name] + "mp"}
    code, out, err = cli("batch", "submit", str(write_prompts(tmp_path / "p.csv", [row])), "--purpose", "catalogue",
                         actor="maria")  # fmt: skip
    assert code != 0, f"a prompt holding {name} was accepted: {out}"
    said = out + err
    assert "prompt" in said and f"U+{ord(INVISIBLE[name][0]):04X}" in said, said  # the row's column and the character


def test_intake_refuses_stacked_combining_marks_and_keeps_real_diacritics(tmp_path) -> None:
    """Zalgo text: a character under many combining marks draws over the lines around it (on the batch
    page, in `batch show`) and can cover what the approver reads. Refused from four marks on one
    character, naming row and column; accents, Vietnamese (even decomposed) and Devanagari stay."""
    import unicodedata

    cli = _world(tmp_path)
    zalgo = {**BASE, "prompt": "a lamp e" + "\u0301\u0302\u0303\u0304\u0305\u0306" + " on white"}
    code, out, err = cli("batch", "submit", str(write_prompts(tmp_path / "z.csv", [zalgo])), "--purpose", "catalogue",
                         actor="maria")  # fmt: skip
    assert code != 0 and "6 combining marks on one character" in out + err, out + err
    fine = [
        {**BASE, "row_id": "fr", "prompt": "lampe en céramique émaillée"},
        {**BASE, "row_id": "vi", "prompt": unicodedata.normalize("NFD", "đèn gốm trên nền trắng")},
        {**BASE, "row_id": "hi", "prompt": "सफ़ेद पृष्ठभूमि पर सिरेमिक लैंप"},
    ]
    code, out, err = cli("batch", "submit", str(write_prompts(tmp_path / "ok.csv", fine)), "--purpose", "catalogue",
                         actor="maria")  # fmt: skip
    assert code == 0, out + err


# --------------------------------------------------------------------------------------------
# Catalogue: an approver who wrote the template approves the rows rendered from it.

TEMPLATE = {
    "name": "studio",
    "body": "studio product photo of a {{ colour }} {{ title | lower }} on a pure white background",
    "params": {"width": 256, "height": 256, "steps": 2},
    "match": {"categories": ["*"]},
}


def test_a_template_author_cannot_approve_the_queue_batch_rendered_from_it(sessions, tmp_path) -> None:
    """nina (approver + requester) writes the template; maria imports the feed and refreshes; with no
    standing approval the rows wait in the queue, and nina tries to approve rows of her own authorship.
    Refused, as a standing approval of her own template is."""
    from governance.approvals import approve_batch
    from governance.catalogue import add_template, import_feed, make_batches, plan_refresh
    from governance.errors import PermissionDenied
    from governance.screening import load_prompt_policy

    rows = [{"sku": "S-1", "title": "Lamp 1", "category": "lamps", "colour": "white"}]
    with sessions.begin() as s:
        import_feed(s, "maria", write_csv(tmp_path / "v1.csv", rows))
        add_template(s, "nina", TEMPLATE)
    policy = load_prompt_policy()
    with sessions() as s:
        plan = plan_refresh(s, policy)
    assert plan.queue and not plan.standing
    with sessions.begin() as s:
        made = make_batches(s, "maria", plan, policy)
    queued = next(m for m in made if m.status == "submitted")
    with sessions() as s:
        from governance.records import Batch

        sha = s.get(Batch, queued.batch_id).content_sha256
    with pytest.raises(PermissionDenied), sessions.begin() as s:
        approve_batch(s, "nina", queued.batch_id, sha)


# --------------------------------------------------------------------------------------------
# The declared use (batch.use_category) decides what the images may be used for and is checked
# against the model licences at run start: `batch show` and the batch page show it to the approver
# (it is set at submission and never changes, so the content hash need not carry it).


def test_batch_show_tells_the_approver_the_declared_use(tmp_path) -> None:
    cli = _world(tmp_path)
    path = write_prompts(tmp_path / "p.csv", [BASE])
    submitted = cli.json("batch", "submit", str(path), "--purpose", "catalogue", "--use-category",
                         "marketing-campaign", actor="maria")  # fmt: skip
    shown = cli.json("batch", "show", submitted["batch_id"], actor="omar")
    assert shown.get("use_category") == "marketing-campaign", sorted(shown)
    code, out, _ = cli("batch", "show", submitted["batch_id"], actor="omar")
    assert code == 0 and "marketing-campaign" in out


# --------------------------------------------------------------------------------------------
# A run start and a `batch edit` at the same time (PostgreSQL, READ COMMITTED). Without a lock on the
# batch row the run would start on the approved rows, the edit replace them and void the approval,
# both commit, and the run's chunks read the edited rows (same prompt ids for the same row ids):
# unapproved content generated. Both take the row's lock: the edit then sees "running" and is refused.


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)  # SQLite has one writer: no race
def test_an_edit_racing_a_run_start_cannot_leave_a_run_on_unapproved_rows(sessions, tmp_path, database_url) -> None:
    import threading

    from governance.approvals import approve_batch
    from governance.batches import stored_content_sha256, submit_batch
    from governance.records import Approval, Batch, Run
    from governance.runs import start_run

    with sessions.begin() as s:
        batch = submit_batch(s, "maria", write_prompts(tmp_path / "a.csv", [BASE]), "catalogue")
        batch_id, sha = batch.id, batch.content_sha256
    with sessions.begin() as s:
        approve_batch(s, "omar", batch_id, sha)
    edited = write_prompts(tmp_path / "b.csv", [{**BASE, "prompt": "something never approved"}])

    run_session = sessions()
    run_session.begin()
    start_run(run_session, "ops", batch_id, [], {})  # approved rows, checked; batch row now locked
    errors: list[BaseException] = []

    def edit() -> None:
        from governance.batches import edit_batch

        try:
            with sessions.begin() as s:
                edit_batch(s, "maria", batch_id, edited)
        except BaseException as exc:  # a refusal is the secure outcome
            errors.append(exc)

    t = threading.Thread(target=edit)
    t.start()
    t.join(timeout=3)  # the edit reads "approved" and replaces the prompts, then waits on the batch row
    run_session.commit()
    run_session.close()
    t.join(timeout=30)
    assert not t.is_alive()
    with sessions() as s:
        b = s.get(Batch, batch_id)
        runs = s.query(Run).filter(Run.batch_id == batch_id).all()
        approval = s.get(Approval, runs[0].approval_id) if runs else None
        assert not (runs and (approval.voided_at is not None or stored_content_sha256(b) != approval.content_sha256)), (
            f"a run ({b.status}) goes on with rows {stored_content_sha256(b)[:12]} whose approval pinned "
            f"{approval.content_sha256[:12]} (voided {approval.voided_at}); edit errors: {errors}"
        )
