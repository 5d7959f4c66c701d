"""Four eyes (invariant 1): who may decide, what an approval pins, and what voids it."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker

from governance.approvals import approve_batch, reject_batch, require_runnable
from governance.batches import edit_batch, get_batch, submit_batch
from governance.errors import InvalidInput, InvalidState, NotFound, PermissionDenied, Unauthenticated
from governance.records import AuditEvent
from tests.governance.conftest import good_rows, write_csv


@pytest.fixture
def batch_id(sessions: sessionmaker[Session], tmp_path: Path) -> str:
    with sessions.begin() as s:
        return submit_batch(s, "nina", write_csv(tmp_path / "b.csv", good_rows()), "marketing").id


def _sha(sessions: sessionmaker[Session], batch_id: str) -> str:
    """The content hash an approver reads in `batch show`."""
    with sessions() as s:
        return get_batch(s, batch_id).content_sha256


def _actions(sessions: sessionmaker[Session], subject: str) -> list[str]:
    with sessions() as s:
        return list(
            s.scalars(select(AuditEvent.action).where(AuditEvent.subject_id == subject).order_by(AuditEvent.seq))
        )


def test_requester_cannot_approve_own_batch_even_as_approver(sessions, batch_id) -> None:
    with pytest.raises(PermissionDenied, match="requested batch"), sessions.begin() as s:
        approve_batch(s, "nina", batch_id, _sha(sessions, batch_id))
    with sessions() as s:
        assert get_batch(s, batch_id).status == "submitted"
    assert _actions(sessions, batch_id) == ["batch.submitted"]


def test_non_approver_cannot_approve(sessions, batch_id) -> None:
    with pytest.raises(PermissionDenied, match="approver role"), sessions.begin() as s:
        approve_batch(s, "ops", batch_id, _sha(sessions, batch_id))


def test_unknown_user_and_no_user_are_refused(sessions, batch_id) -> None:
    with pytest.raises(NotFound, match="unknown user 'zed'"), sessions.begin() as s:
        approve_batch(s, "zed", batch_id, _sha(sessions, batch_id))
    with pytest.raises(Unauthenticated, match="no credentials"), sessions.begin() as s:
        approve_batch(s, None, batch_id, _sha(sessions, batch_id))


def test_approval_pins_content_and_allows_run(sessions, batch_id) -> None:
    with sessions.begin() as s:
        approval = approve_batch(s, "omar", batch_id, _sha(sessions, batch_id))
        batch = get_batch(s, batch_id)
        assert approval.content_sha256 == batch.content_sha256
        assert require_runnable(batch).id == approval.id
    assert _actions(sessions, batch_id) == ["batch.submitted", "batch.approved"]


def test_unapproved_and_rejected_batches_cannot_run(sessions, batch_id) -> None:
    with sessions() as s, pytest.raises(InvalidState, match="no approval"):
        require_runnable(get_batch(s, batch_id))
    with sessions.begin() as s:
        reject_batch(s, "omar", batch_id, "off-brand", _sha(sessions, batch_id))
    with sessions() as s, pytest.raises(InvalidState):
        require_runnable(get_batch(s, batch_id))


def test_editing_voids_the_approval(sessions, batch_id, tmp_path) -> None:
    with sessions.begin() as s:
        approve_batch(s, "omar", batch_id, _sha(sessions, batch_id))
    rows = good_rows()
    rows[1]["prompt"] = "a different product"
    with sessions.begin() as s:
        batch = edit_batch(s, "nina", batch_id, write_csv(tmp_path / "edited.csv", rows))
        assert batch.status == "submitted"
    with sessions() as s, pytest.raises(InvalidState, match="no approval"):
        require_runnable(get_batch(s, batch_id))
    assert _actions(sessions, batch_id)[-1] == "batch.edited"
    with sessions.begin() as s:  # a fresh approval pins the new content
        approval = approve_batch(s, "omar", batch_id, _sha(sessions, batch_id))
        assert approval.content_sha256 == get_batch(s, batch_id).content_sha256
        require_runnable(get_batch(s, batch_id))


def test_content_changed_behind_atelier_s_back_is_refused(sessions, batch_id) -> None:
    with sessions.begin() as s:
        approve_batch(s, "omar", batch_id, _sha(sessions, batch_id))
    with sessions.begin() as s:
        s.execute(
            text("UPDATE prompts SET prompt = 'something else' WHERE batch_id = :b AND row_id = 'sku-0'"),
            {"b": batch_id},
        )
    with sessions() as s, pytest.raises(InvalidState, match="differs from what was approved"):
        require_runnable(get_batch(s, batch_id))


def test_approval_for_stale_content_hash_is_refused(sessions, batch_id) -> None:
    with pytest.raises(InvalidState, match="not the"), sessions.begin() as s:
        approve_batch(s, "omar", batch_id, expected_sha256="0" * 64)


def test_reject_needs_a_reason(sessions, batch_id) -> None:
    with pytest.raises(InvalidInput, match="reason"), sessions.begin() as s:
        reject_batch(s, "omar", batch_id, "  ", _sha(sessions, batch_id))
    with pytest.raises(InvalidInput, match=r"U\+001B \(ESC\)"), sessions.begin() as s:
        reject_batch(s, "omar", batch_id, "fine\x1b[2K\r", _sha(sessions, batch_id))


def test_a_decision_names_the_content_it_was_taken_on(sessions, batch_id) -> None:
    with pytest.raises(InvalidInput, match="content_sha256"), sessions.begin() as s:
        approve_batch(s, "omar", batch_id, "")
    with pytest.raises(InvalidState, match="not the"), sessions.begin() as s:
        reject_batch(s, "omar", batch_id, "off-brand", "f" * 64)
    assert _actions(sessions, batch_id) == ["batch.submitted"]


def test_a_rejection_sticks_to_its_content(sessions, batch_id, tmp_path) -> None:
    """The attack as filed: reject, `batch edit` with the same file, and a second approver approves the
    same content hash without ever seeing the rejection."""
    from governance.batches import batch_detail

    rejected_sha = _sha(sessions, batch_id)
    with sessions.begin() as s:
        reject_batch(s, "omar", batch_id, "shows a competitor's logo", rejected_sha)
    same = write_csv(tmp_path / "same.csv", good_rows())
    with pytest.raises(InvalidState, match="rejected by omar .*competitor's logo"), sessions.begin() as s:
        edit_batch(s, "nina", batch_id, same)  # refused outright: the same rows cannot come back
    with sessions() as s:
        assert get_batch(s, batch_id).status == "rejected"

    # Submitted again as a new batch: allowed, but its approver sees the rejection and must acknowledge it.
    with sessions.begin() as s:
        again = submit_batch(s, "maria", same, "marketing").id
    with sessions() as s:
        [prior] = batch_detail(s, get_batch(s, again)).decisions_on_content
        assert (prior.decision, prior.decided_by, prior.reason, prior.batch_id) == (
            "rejected",
            "omar",
            "shows a competitor's logo",
            batch_id,
        )
    with pytest.raises(InvalidState, match="rejected by omar .*acknowledge_rejections"), sessions.begin() as s:
        approve_batch(s, "nina", again, rejected_sha)
    with sessions.begin() as s:
        approval = approve_batch(s, "nina", again, rejected_sha, acknowledge_rejections=True)
        approval_id = approval.id
    with sessions() as s:
        event = s.scalar(select(AuditEvent).where(AuditEvent.action == "batch.approved"))
        assert event is not None and event.payload["approval_id"] == approval_id
        assert len(event.payload["acknowledged_rejections"]) == 1  # on the record: who approved over what


def test_changed_content_is_a_new_decision(sessions, batch_id, tmp_path) -> None:
    with sessions.begin() as s:
        reject_batch(s, "omar", batch_id, "wrong season", _sha(sessions, batch_id))
    rows = good_rows()
    rows[0]["prompt"] = "the same lamp, in autumn light"
    with sessions.begin() as s:
        assert edit_batch(s, "nina", batch_id, write_csv(tmp_path / "autumn.csv", rows)).status == "submitted"
    with sessions.begin() as s:  # new content: no rejection stands in the way
        approve_batch(s, "omar", batch_id, _sha(sessions, batch_id))


def test_separation_policy_forbids_requester_and_approver_in_one_person(sessions) -> None:
    from governance.users import RolePolicy, add_user, grant_roles

    strict = RolePolicy(forbid_requester_approver=True)
    with pytest.raises(PermissionDenied, match="both requester and approver"), sessions.begin() as s:
        add_user(s, "admin", "pat", ["requester", "approver"], strict)
    with sessions.begin() as s:
        add_user(s, "admin", "pat", ["requester"], strict)
    with pytest.raises(PermissionDenied, match="both requester and approver"), sessions.begin() as s:
        grant_roles(s, "admin", "pat", ["approver"], strict)
    with sessions.begin() as s:  # without the policy an admin may (and the grant is audited)
        assert grant_roles(s, "admin", "pat", ["approver"]).role_names == {"requester", "approver"}
    assert _actions(sessions, "pat") == ["user.created", "user.roles_granted"]
