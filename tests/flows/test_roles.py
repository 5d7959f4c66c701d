"""Who may do what (threat T1): every command, run by every role and by nobody, allowed or refused.

Each command is invoked so that once it is allowed it stops at a harmless, known outcome (a missing
record, a stale content hash, a bad file), and the expected exit code tells "allowed" (that outcome)
from "refused" (4, the role is missing; 15, no credentials). Nothing here relies on a name the caller
asserts: every actor acts with its own API token.
"""

from __future__ import annotations

import json

import pytest

from tests.flows.conftest import CLI, NOBODY, write_prompts

ROLES = ["requester", "approver", "operator", "auditor", "admin", "reviewer"]
ACTORS = {
    "rita": "requester",
    "alma": "approver",
    "otto": "operator",
    "audra": "auditor",
    "admin": "admin",
    "rev": "reviewer",
}
ROW = {"row_id": "a", "prompt": "a lamp", "seed": 1, "width": 256, "height": 256, "steps": 2}
NO_BATCH = "00000000-0000-4000-8000-000000000000"
STALE = "0" * 64
ANYONE = set(ROLES)

# (command, who may, exit code when allowed). `{batch}`, `{file}`, `{bad}`, `{out}` are filled in below.
MATRIX: list[tuple[list[str], set[str], int | None]] = [
    (["users", "list"], ANYONE, 0),
    (["users", "add", "Not A Name", "--role", "requester"], {"admin"}, 2),
    (["users", "grant", "nobody-here", "--role", "approver"], {"admin"}, 3),
    (["users", "revoke", "nobody-here", "--role", "approver"], {"admin"}, 3),
    (["users", "disable", "nobody-here"], {"admin"}, 3),
    (["users", "enable", "nobody-here"], {"admin"}, 3),
    (["tokens", "issue", "nobody-here"], {"admin"}, 3),
    (["tokens", "list"], ANYONE, 0),
    (["tokens", "list", "--user", "rita"], {"admin", "requester"}, 0),  # yours, or anyone's for admins
    (["tokens", "revoke", "no-such-token"], ANYONE, 3),
    (["whoami"], ANYONE, 0),
    (["licences", "register", "no-such-licence"], {"admin"}, 3),
    (["batch", "submit", "{bad}", "--purpose", "catalogue"], {"requester"}, 2),
    (["batch", "edit", "{batch}", "{bad}"], {"requester"}, 2),
    (["batch", "approve", "{batch}", "--content-sha256", STALE], {"approver"}, 5),
    (["batch", "reject", "{batch}", "--reason", "no", "--content-sha256", STALE], {"approver"}, 5),
    (["batch", "list"], ANYONE, 0),
    (["batch", "show", "{batch}"], ANYONE, 0),
    (["run", "--batch", NO_BATCH], {"operator"}, 3),
    (["review", "list"], {"reviewer", "auditor", "admin"}, 0),
    (["image", "withdraw", NO_BATCH, "--reason", "recall"], {"auditor", "admin"}, 3),
    (["hold", "place", NO_BATCH, "--reason", "matter"], {"auditor", "admin"}, 3),
    (["hold", "place", "--batch", "{batch}", "--reason", "matter"], {"auditor", "admin"}, 0),
    (["hold", "release", "no-such-hold", "--reason", "settled"], {"auditor", "admin"}, 3),
    (["hold", "list"], {"auditor", "admin"}, 0),
    (["retention", "show"], {"auditor", "admin"}, 0),
    (["retention", "apply", "--dry-run"], {"auditor", "admin"}, 0),
    (["catalogue", "import", "{bad}"], {"requester"}, 2),
    (["catalogue", "template", "add", "{file}"], {"requester"}, 2),
    (["catalogue", "template", "list"], ANYONE, 0),
    (["catalogue", "preview"], ANYONE, 0),
    (
        ["catalogue", "approve", "no-such@1", "--template-sha256", STALE, "--categories", "x", "--max-images", "1"],
        {"approver"},
        3,
    ),  # fmt: skip
    (["catalogue", "revoke", NO_BATCH, "--reason", "done"], {"approver", "admin"}, 3),
    (["catalogue", "refresh"], set(), None),  # needs requester and operator together: no single role may
    (["catalogue", "images", "--sku", "NO-SKU"], ANYONE, 3),
    (["review", "accept", NO_BATCH], {"reviewer"}, 3),
    (["review", "reject", NO_BATCH, "--reason", "no"], {"reviewer"}, 3),
    (["trace", NO_BATCH], ANYONE, 3),
    (["verify", "{file}"], ANYONE, 12),
    (["reproduce", NO_BATCH], {"operator", "auditor", "admin"}, 3),
    (["audit", "verify"], ANYONE, 0),
    (["audit", "anchor"], {"operator"}, 0),
    (["audit", "baseline"], {"admin"}, 5),  # allowed, then refused: this ledger is authenticated throughout
    (["keys", "rotate"], {"admin"}, 0),
    (["compliance", "search"], {"auditor", "admin"}, 0),
    (["compliance", "impact", "--licence", "no-such-licence"], {"auditor", "admin"}, 3),
    (["compliance", "export", "--format", "csv", "--out", "{out}"], {"auditor", "admin"}, 0),
    (["compliance", "report", "--from", "2026-01-01", "--to", "2026-01-02", "--out", "{out}"], {"auditor", "admin"}, 0),
    (["compare", "{batch}"], {"requester", "approver", "operator", "auditor", "admin"}, 0),  # rita's own batch
    (["prefer", "next", "{batch}", "--out", "{dir}"], {"reviewer"}, 3),  # allowed: nothing to judge yet
    (["prefer", "pick", "no-such-pair", "left"], {"reviewer"}, 3),
    (["prefer", "results"], {"auditor", "admin"}, 0),
    (["deploy", "--gpus", "1", "--pool", "x"], {"operator"}, None),  # allowed: it would talk to Prefect
    (["workers", "--gpus", "x"], {"operator"}, 2),  # allowed: then the bad GPU list (2)
]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> tuple[CLI, dict[str, str]]:
    tmp = tmp_path_factory.mktemp("roles")
    cli = CLI(None, ["--data-dir", str(tmp / "d")])
    assert cli("keys", "init")[0] == 0
    assert cli("users", "add", "admin", "--role", "admin")[0] == 0
    for name, role in ACTORS.items():
        if name != "admin":
            assert cli("users", "add", name, "--role", role, actor="admin")[0] == 0
    assert cli("licences", "register", "creativeml-openrail++-m", actor="admin")[0] == 0
    good = write_prompts(tmp / "good.csv", [ROW])
    batch = cli.json("batch", "submit", str(good), "--purpose", "catalogue", actor="rita")["batch_id"]
    (tmp / "bad.csv").write_text("row_id,prompt\n")  # a header and no rows: intake refuses it (exit 2)
    from PIL import Image

    Image.new("RGB", (64, 64), "white").save(tmp / "white.png")  # not ours: verify says unknown (12)
    return cli, {
        "batch": batch,
        "file": str(tmp / "white.png"),
        "bad": str(tmp / "bad.csv"),
        "out": str(tmp / "out.bin"),
        "dir": str(tmp),
    }


def _fill(argv: list[str], values: dict[str, str]) -> list[str]:
    return [a.format(**values) if "{" in a else a for a in argv]


@pytest.mark.parametrize("argv, allowed, code", MATRIX, ids=[" ".join(m[0][:2]) for m in MATRIX])
def test_every_command_for_every_role(world, argv, allowed, code) -> None:
    cli, values = world
    args = _fill(argv, values)
    for name, role in ACTORS.items():
        if role in allowed and code is None:
            continue  # allowed, but running it would start an outside service
        got, out, err = cli(*args, actor=name)
        if role in allowed:
            assert got == code, f"{role} should be allowed `{' '.join(argv)}` (exit {code}): {got} {err}"
        else:
            assert got == 4, f"{role} should be refused `{' '.join(argv)}`: exit {got} {out} {err}"
            assert "role" in err and err.count("\n") == 1
    got, _, err = cli(*args, actor=NOBODY)
    assert got == 15 and "no credentials" in err, (argv, got, err)


def test_the_first_user_is_an_admin_and_later_ones_need_an_admin(tmp_path) -> None:
    cli = CLI(None, ["--data-dir", str(tmp_path / "d")])
    cli("keys", "init")
    code, _, err = cli("users", "add", "maria", "--role", "requester", actor=NOBODY)
    assert code == 2 and "the first user must be an admin" in err
    code, out, _ = cli("users", "add", "root", "--role", "admin", actor=NOBODY)
    assert code == 0 and "atl_" in out and "shown once" in out
    code, _, err = cli("users", "add", "eve", "--role", "admin", actor=NOBODY)  # the bootstrap is over
    assert code == 15 and "no credentials" in err


def test_forged_expired_revoked_tokens_and_disabled_users_are_refused(tmp_path) -> None:
    import sqlite3

    cli = CLI(None, ["--data-dir", str(tmp_path / "d")])
    cli("keys", "init")
    cli("users", "add", "admin", "--role", "admin")
    cli("users", "add", "lee", "--role", "auditor", actor="admin")
    issued = cli.json("tokens", "issue", "lee", "--name", "laptop", actor="admin")
    cli.tokens["lee"] = issued["secret"]
    assert cli.json("whoami", actor="lee")["token_id"] == issued["token_id"]

    for forged in ["atl_" + "A" * 43, issued["secret"][:-1] + ("A" if issued["secret"][-1] != "A" else "B"), "hunter2"]:
        cli.tokens["mallory"] = forged
        code, _, err = cli("users", "list", actor="mallory")
        assert code == 15 and forged not in err and err.count("\n") == 1, err

    with sqlite3.connect(tmp_path / "d" / "atelier.db") as db:  # as if 91 days had passed
        db.execute(
            "UPDATE api_tokens SET expires_at = '2020-01-01 00:00:00.000000' WHERE id = ?", (issued["token_id"],)
        )
    code, _, err = cli("users", "list", actor="lee")
    assert code == 15 and "expired" in err
    with sqlite3.connect(tmp_path / "d" / "atelier.db") as db:
        db.execute(
            "UPDATE api_tokens SET expires_at = '2999-01-01 00:00:00.000000' WHERE id = ?", (issued["token_id"],)
        )
    assert cli("users", "list", actor="lee")[0] == 0

    assert cli("users", "disable", "lee", actor="admin")[0] == 0
    code, _, err = cli("users", "list", actor="lee")
    assert code == 15 and "disabled" in err
    assert cli("users", "enable", "lee", actor="admin")[0] == 0
    assert cli("users", "list", actor="lee")[0] == 0

    assert cli("tokens", "revoke", issued["token_id"], actor="lee")[0] == 0  # one's own token
    code, _, err = cli("users", "list", actor="lee")
    assert code == 15 and "revoked" in err

    [stored] = [t for t in cli.json("tokens", "list", "--user", "lee") if t["token_id"] == issued["token_id"]]
    assert stored["state"] == "revoked" and "secret" not in stored  # never shown again
    with sqlite3.connect(tmp_path / "d" / "atelier.db") as db:  # only its hash is kept
        [(digest,)] = db.execute("SELECT token_sha256 FROM api_tokens WHERE id = ?", (issued["token_id"],))
        assert issued["secret"] not in json.dumps(db.execute("SELECT * FROM api_tokens").fetchall())
    import hashlib

    assert digest == hashlib.sha256(issued["secret"].encode()).hexdigest()


def test_the_last_admin_cannot_be_removed_and_admins_do_not_disable_themselves(tmp_path) -> None:
    cli = CLI(None, ["--data-dir", str(tmp_path / "d")])
    cli("keys", "init")
    cli("users", "add", "admin", "--role", "admin")
    code, _, err = cli("users", "revoke", "admin", "--role", "admin", actor="admin")
    assert code == 5 and "last active admin" in err
    code, _, err = cli("users", "disable", "admin", actor="admin")
    assert code == 5 and "cannot disable themselves" in err


def test_login_keeps_the_token_in_a_private_file(tmp_path, monkeypatch) -> None:
    import io
    import os

    from flows.cli import main

    cli = CLI(None, ["--data-dir", str(tmp_path / "d")])
    cli("keys", "init")
    cli("users", "add", "admin", "--role", "admin")
    token_file = tmp_path / "cfg" / "token"
    monkeypatch.setenv("ATELIER_TOKEN_FILE", str(token_file))
    monkeypatch.setattr("sys.stdin", io.StringIO(cli.tokens["admin"] + "\n"))
    assert main(["login", "--data-dir", str(tmp_path / "d")]) == 0
    assert token_file.stat().st_mode & 0o777 == 0o600
    assert main(["whoami", "--data-dir", str(tmp_path / "d")]) == 0  # no ATELIER_TOKEN: the file is used
    os.chmod(token_file, 0o644)  # readable by others: refused, like ssh refuses such a key
    assert main(["whoami", "--data-dir", str(tmp_path / "d")]) == 15
    assert main(["logout", "--data-dir", str(tmp_path / "d")]) == 0 and not token_file.exists()
    monkeypatch.setattr("sys.stdin", io.StringIO("atl_not-a-real-token\n"))
    assert main(["login", "--data-dir", str(tmp_path / "d")]) == 15 and not token_file.exists()


@pytest.mark.parametrize("name", ["Maria", "ma ria", "maría", "ma\u200bria", "-rf", "a" * 65, "m\x1b[8m"])
def test_user_names_match_a_safe_pattern(tmp_path, name) -> None:
    cli = CLI(None, ["--data-dir", str(tmp_path / "d")])
    cli("keys", "init")
    cli("users", "add", "admin", "--role", "admin")
    code, _, err = cli("users", "add", name, "--role", "requester", actor="admin")
    assert code == 2 and ("invalid user name" in err or "--help" in err), err
    assert "\x1b" not in err and "\u200b" not in err  # shown escaped


def test_a_token_is_never_written_to_the_log_or_the_settings_display(tmp_path) -> None:
    import os

    from flows.settings import get_settings

    os.environ["ATELIER_TOKEN"] = "atl_secret-value-that-must-not-show"
    try:
        settings = get_settings(data_dir=tmp_path)
        assert "secret-value" not in repr(settings) and "secret-value" not in json.dumps(settings.redacted())
    finally:
        del os.environ["ATELIER_TOKEN"]
