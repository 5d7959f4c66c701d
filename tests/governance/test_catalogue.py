"""The catalogue's rules without GPU work, on SQLite and PostgreSQL: feed history and diffs, hostile
feeds, where rendered rows go (standing approval, queue, skipped), and standing approvals that lapse."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import select

from governance.batches import IntakeRejected
from governance.catalogue import (
    add_template,
    approve_template,
    import_feed,
    make_batches,
    plan_refresh,
    revoke_standing,
)
from governance.errors import InvalidInput, PermissionDenied
from governance.records import Batch, ProductVersion
from governance.screening import load_prompt_policy
from governance.users import revoke_roles
from tests.governance.conftest import write_csv

TEMPLATE = {
    "name": "studio",
    "body": "studio product photo of a {{ colour }} {{ title | lower }} on a pure white background",
    "params": {"width": 256, "height": 256, "steps": 2},
    "match": {"categories": ["*"]},
}


def products(n: int, category: str = "lamps", colour: str = "white") -> list[dict[str, object]]:
    return [{"sku": f"S-{i}", "title": f"Lamp {i}", "category": category, "colour": colour} for i in range(n)]


def test_feed_history_diff_and_identical_feed(sessions, tmp_path: Path) -> None:
    with sessions.begin() as s:
        first = import_feed(s, "maria", write_csv(tmp_path / "v1.csv", products(4)))
    assert first.counts == {"new": 4, "changed": 0, "removed": 0, "unchanged": 0}
    v2 = products(3)
    v2[0]["colour"] = "red"
    v2.append({"sku": "S-9", "title": "Lamp 9", "category": "lamps", "colour": "white"})
    with sessions.begin() as s:
        second = import_feed(s, "maria", write_csv(tmp_path / "v2.csv", v2))
        again = import_feed(s, "maria", tmp_path / "v2.csv")
    assert second.counts == {"new": 1, "changed": 1, "removed": 1, "unchanged": 2}
    assert again.identical and again.import_id is None
    with sessions() as s:  # what S-0 looked like at each import; S-3's removal is a version too
        history = s.scalars(
            select(ProductVersion).where(ProductVersion.sku == "S-0").order_by(ProductVersion.created_at)
        )
        assert [v.fields["colour"] for v in history] == ["white", "red"]
        removed = s.scalars(select(ProductVersion).where(ProductVersion.sku == "S-3")).all()
        assert [v.fields for v in removed][-1] is None


@pytest.mark.parametrize(
    "content, says",
    [
        ("sku,title,category\nA,Lamp,lamps\nA,Lamp,lamps\n", "more than once"),
        ("sku,title\nA,Lamp\n", "category"),
        ("sku,title,category\n../etc,Lamp,lamps\n", "not a SKU"),
        ("sku,title,category\nA,Lamp \u202e reversed,lamps\n", "control or invisible"),
        ("sku,title,category,Bad-Name\nA,Lamp,lamps,x\n", "column"),
        ("sku,title,category\nA,Lamp,lamps,extra\n", "field"),
    ],
)
def test_hostile_feeds_are_refused_whole(sessions, tmp_path: Path, content: str, says: str) -> None:
    feed = tmp_path / "f.csv"
    feed.write_text(content, encoding="utf-8")
    with pytest.raises((IntakeRejected, InvalidInput)) as refused, sessions.begin() as s:
        import_feed(s, "maria", feed)
    failures = getattr(refused.value, "report", None)
    text = str(refused.value) + " ".join(f.message for f in (failures.failures if failures else []))
    assert says in text, text
    with sessions() as s:
        assert s.scalars(select(ProductVersion)).first() is None  # nothing stored


def test_rows_go_to_the_standing_approval_the_queue_or_nowhere(sessions, tmp_path: Path) -> None:
    rows = products(3) + products(1, category="rugs")
    rows[-1]["sku"] = "R-1"
    rows[1]["title"] = "Lamp in the style of Banksy"  # a living artist: the example policy flags it for review
    rows[2]["title"] = "Lamp with Taylor Swift print"  # a real person: the example policy blocks it
    with sessions.begin() as s:
        import_feed(s, "maria", write_csv(tmp_path / "v1.csv", rows))
        template, _ = add_template(s, "maria", TEMPLATE)
    with pytest.raises(PermissionDenied), sessions.begin() as s:  # nina wrote nothing; maria is no approver
        approve_template(s, "maria", template.template_id, template.sha256, ["lamps"], 10, 30)
    with sessions.begin() as s:
        standing = approve_template(s, "omar", template.template_id, template.sha256, ["lamps"], 10, 30)
    policy = load_prompt_policy()
    with sessions() as s:
        plan = plan_refresh(s, policy)
    in_scope = sorted(p.row.row_id for p in plan.standing.get(standing.standing_approval_id, []))
    queued = sorted(p.row.row_id for p in plan.queue)
    assert "R-1" in queued  # another category
    assert "S-1" in queued  # flagged by screening: an approver sees the flag
    assert "S-0" in in_scope and not set(in_scope) & set(queued)
    assert [(x.sku, "real-people" in x.reason) for x in plan.skipped] == [("S-2", True)]  # never made
    with sessions.begin() as s:
        made = make_batches(s, "maria", plan, policy)
    statuses = {m.status for m in made}
    assert statuses == {"approved", "submitted"}
    with sessions() as s:
        approved = s.get(Batch, next(m.batch_id for m in made if m.status == "approved"))
        assert approved is not None and approved.approvals[0].decided_by.name == "omar"
        assert approved.approvals[0].standing_approval_id == standing.standing_approval_id

    # the approver loses the role: the standing approval lapses; the next plan queues everything
    with sessions.begin() as s:
        revoke_roles(s, "admin", "omar", ["approver"])
    changed = [dict(r, colour="black") for r in rows]
    with sessions.begin() as s:
        import_feed(s, "maria", write_csv(tmp_path / "v2.csv", changed))
    with sessions() as s:
        later = plan_refresh(s, policy)
    assert later.standing == {} and len(later.queue) >= 3
    with sessions.begin() as s:
        revoked = revoke_standing(s, "admin", standing.standing_approval_id, "omar left")
    assert revoked.revoked_at is not None


def test_a_template_author_cannot_approve_it_and_a_changed_template_needs_a_new_approval(sessions) -> None:
    with sessions.begin() as s:
        mine, new = add_template(s, "nina", TEMPLATE)
        same, again = add_template(s, "nina", json.loads(json.dumps(TEMPLATE)))
    assert new and not again and same.template_id == mine.template_id  # the same content adds nothing
    with pytest.raises(PermissionDenied) as refused, sessions.begin() as s:
        approve_template(s, "nina", mine.template_id, mine.sha256, ["lamps"], 10, 30)
    assert "wrote template" in str(refused.value)
    with sessions.begin() as s:
        second, new = add_template(s, "nina", {**TEMPLATE, "negative": "text"})
    assert new and second.template_id == "studio@2" and second.sha256 != mine.sha256
