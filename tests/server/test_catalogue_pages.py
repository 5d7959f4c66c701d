"""Approvers review and approve catalogue templates in the console (a form signed-in session, CSRF
token and all, as a browser would): what they see is what they approve, pinned to its hash."""

from __future__ import annotations

import json
from pathlib import Path

from tests.server.conftest import Console, csrf_of

TEMPLATE = {
    "name": "studio-white",
    "body": "studio product photo of a {{ colour }} {{ title | lower }} on a pure white background",
    "negative": "text, watermark",
    "params": {"width": 256, "height": 256, "steps": 2},
    "match": {"categories": ["lamps"]},
}


def test_an_approver_approves_exactly_the_template_shown(console: Console, tmp_path: Path) -> None:
    spec = tmp_path / "t.json"
    spec.write_text(json.dumps(TEMPLATE))
    made = console.cli.json("catalogue", "template", "add", str(spec), actor="maria")
    omar = console.browser_session("omar")
    page = omar.get("/catalogue/templates")
    assert page.status_code == 200
    assert "{{ colour }}" in page.text and made["sha256"] in page.text  # the template's own text and hash
    assert f"Approve {made['template_id']} for these categories" in page.text
    form = {"csrf_token": csrf_of(page.text), "categories": "lamps", "max_images": "50", "days": "30"}

    # a hash other than the one shown (the template changed meanwhile): refused, nothing stored
    r = omar.post(f"/catalogue/templates/{made['template_id']}/approve", data={**form, "template_sha256": "0" * 64})
    assert r.status_code == 409 and "review it again" in r.text
    r = omar.post(
        f"/catalogue/templates/{made['template_id']}/approve", data={**form, "template_sha256": made["sha256"]}
    )
    assert r.status_code == 303, r.text
    page = omar.get(r.headers["location"])
    assert "standing approval" in page.text and "in force" in page.text and "omar" in page.text

    # its author sees no approve form; a requester posting one anyway is refused
    maria = console.browser_session("maria")
    mine = maria.get("/catalogue/templates")
    assert "for these categories" not in mine.text
    r = maria.post(
        f"/catalogue/templates/{made['template_id']}/approve",
        data={**form, "csrf_token": csrf_of(mine.text), "template_sha256": made["sha256"]},
    )
    assert r.status_code == 403

    listed = console.cli.json("catalogue", "template", "list", actor="omar")["standing_approvals"]
    assert [(a["template_id"], a["approver"], a["categories"]) for a in listed] == [
        (made["template_id"], "omar", ["lamps"])
    ]
    standing = listed[0]["standing_approval_id"]
    page = omar.get("/catalogue/templates")
    r = omar.post(
        f"/catalogue/standing/{standing}/revoke", data={"csrf_token": csrf_of(page.text), "reason": "season over"}
    )
    assert r.status_code == 303 and "revoked" in omar.get(r.headers["location"]).text
