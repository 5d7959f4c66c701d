"""Prompt screening through the CLI, on SQLite and PostgreSQL: a block refuses the file naming row,
rule and matched text; review flags reach the approver, who must acknowledge them; screening runs
again at run start under the policy in force then."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from governance.screening import DEFAULT_PROMPT_POLICY
from tests.flows.conftest import CLI, write_prompts

ROW = {"seed": 1, "width": 256, "height": 256, "steps": 2, "num_images": 1}


@pytest.fixture
def cli(tmp_path: Path, database_url: str) -> CLI:
    c = CLI(None, ["--data-dir", str(tmp_path / "d"), "--database-url", database_url])
    assert c("db", "upgrade")[0] == 0
    assert c("keys", "init")[0] == 0
    assert c("users", "add", "admin", "--role", "admin")[0] == 0
    for name, role in [("maria", "requester"), ("omar", "approver"), ("ops", "operator")]:
        assert c("users", "add", name, "--role", role, actor="admin")[0] == 0
    assert c("licences", "register", "creativeml-openrail++-m", actor="admin")[0] == 0
    return c


def submit(cli: CLI, tmp_path: Path, prompts: list[str], name: str = "p.csv") -> tuple[int, str, str]:
    rows = [{"row_id": f"r{i}", "prompt": p, **ROW} for i, p in enumerate(prompts, start=1)]
    path = write_prompts(tmp_path / name, rows)
    return cli("batch", "submit", str(path), "--purpose", "marketing", actor="maria")


def test_a_blocked_prompt_refuses_the_file_naming_row_rule_and_match(cli: CLI, tmp_path: Path) -> None:
    code, out, err = submit(cli, tmp_path, ["studio photo of a vase", "T4yl0r Sw1ft holding our tote"])
    assert code == 2
    assert "row 2" in err and "policy:real-people" in err and "'Taylor Swift'" in err
    assert "nothing was stored" in err
    assert cli.json("batch", "list", actor="maria") == []


def test_review_flags_must_be_acknowledged_and_are_recorded(cli: CLI, tmp_path: Path, database_url: str) -> None:
    code, out, err = submit(cli, tmp_path, ["studio photo of a vase", "sneaker next to a Nike\u2122 box"])
    assert code == 0, err
    batch_id = out.split()[1]
    shown = cli.json("batch", "show", batch_id, actor="omar")
    assert shown["screening_policy"].startswith("prompt-policy-v1")
    assert {(f["row_id"], f["rule"], f["matched"]) for f in shown["flags"]} == {
        ("r2", "competitor-brands", "Nike"),
        ("r2", "trademark-marks", "tm"),
    }
    code, out, _ = cli("batch", "show", batch_id, actor="omar")
    assert "prompt-policy flags" in out and "--acknowledge-flags" in out  # the approve command it prints
    approve = ("batch", "approve", batch_id, "--content-sha256", shown["content_sha256"])
    code, _, err = cli(*approve, actor="omar")
    assert code == 5 and "prompt-policy flag" in err and "acknowledge" in err
    assert cli.json("batch", "show", batch_id)["status"] == "submitted"  # nothing changed
    code, _, err = cli(*approve, "--acknowledge-flags", actor="omar")
    assert code == 0, err
    engine = create_engine(database_url)
    with engine.connect() as conn:
        payload = conn.execute(
            text("SELECT payload FROM audit_events WHERE action = 'batch.approved' AND subject_id = :b"),
            {"b": batch_id},
        ).scalar_one()
        acknowledged = conn.execute(text("SELECT acknowledged_flags FROM approvals")).scalar_one()
    engine.dispose()
    payload = json.loads(payload) if isinstance(payload, str) else payload
    acknowledged = json.loads(acknowledged) if isinstance(acknowledged, str) else acknowledged
    assert len(payload["acknowledged_flags"]) == 2 and {a["rule"] for a in acknowledged} == {
        "competitor-brands",
        "trademark-marks",
    }
    assert cli.json("audit", "verify")["ok"]


def test_screening_runs_again_at_run_start_under_the_policy_then_in_force(
    cli: CLI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, err = submit(cli, tmp_path, ["studio photo of a ceramic vase", "oak side table"])
    assert code == 0, err
    batch_id = out.split()[1]
    shown = cli.json("batch", "show", batch_id)
    assert shown["flags"] == []
    assert cli("batch", "approve", batch_id, "--content-sha256", shown["content_sha256"], actor="omar")[0] == 0
    stricter = json.loads(DEFAULT_PROMPT_POLICY.read_text(encoding="utf-8"))
    stricter["version"] = "prompt-policy-v2"
    stricter["rules"].append({"id": "no-vases", "kind": "terms", "action": "block", "terms": ["vase"]})
    path = tmp_path / "policy-v2.json"
    path.write_text(json.dumps(stricter), encoding="utf-8")
    monkeypatch.setenv("ATELIER_PROMPT_POLICY", str(path))
    code, _, err = cli("run", "--batch", batch_id, actor="ops")
    assert code == 5 and "prompt-policy-v2" in err and "no-vases" in err and "'vase'" in err
    assert cli.json("batch", "show", batch_id)["status"] == "approved"  # no run was opened
    # a review rule added since the approval: the approver never saw it, so the run waits for a new review
    stricter["rules"][-1]["action"] = "review"
    path.write_text(json.dumps(stricter), encoding="utf-8")
    code, _, err = cli("run", "--batch", batch_id, actor="ops")
    assert code == 5 and "did not acknowledge" in err and "batch edit" in err


def test_an_invalid_policy_file_is_one_line_and_changes_nothing(
    cli: CLI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"version": "x", "rules": [{"id": "a", "kind": "terms", "action": "ban", "terms": ["b"]}]}')
    monkeypatch.setenv("ATELIER_PROMPT_POLICY", str(bad))
    code, _, err = submit(cli, tmp_path, ["studio photo of a vase"])
    assert code == 2 and "rules[0].action" in err and len(err.strip().splitlines()) == 1
    monkeypatch.delenv("ATELIER_PROMPT_POLICY")
    assert cli.json("batch", "list", actor="maria") == []


def test_removing_a_flag_in_the_database_is_caught_by_audit_verify(cli: CLI, tmp_path: Path, database_url: str) -> None:
    code, out, err = submit(cli, tmp_path, ["Gucci belt on white"])
    assert code == 0, err
    batch_id = out.split()[1]
    engine = create_engine(database_url)
    with engine.begin() as conn:  # an insider hides the flag from the approver
        conn.execute(text("UPDATE batches SET screening = NULL WHERE id = :b"), {"b": batch_id})
    engine.dispose()
    code, _, err = cli("audit", "verify")
    assert code == 8 and batch_id in err
