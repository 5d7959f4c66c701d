"""The command line as a user meets it: refusals and mistakes are one clear line and an exit code."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from tests.flows.conftest import NOBODY, approved_batch, write_prompts

GOOD = [{"row_id": "a", "prompt": "a lamp", "seed": 1, "width": 256, "height": 256, "steps": 2}]


@pytest.fixture
def cli(make_cli, tmp_path):
    c = make_cli(["--data-dir", str(tmp_path / "d")])
    assert c("keys", "init")[0] == 0
    assert c("users", "add", "admin", "--role", "admin")[0] == 0
    c("users", "add", "maria", "--role", "requester", actor="admin")
    c("users", "add", "omar", "--role", "approver", actor="admin")
    c("licences", "register", "creativeml-openrail++-m", actor="admin")
    return c


def _one_line(err: str) -> str:
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize(
    "name,content",
    [
        ("garbage.csv", bytes(range(256)) * 4),
        ("empty.csv", b""),
        ("latin.csv", "row_id,prompt,seed\nä,é,1\n".encode("latin-1")),
        ("notes.txt", b"row_id,prompt,seed\n"),
    ],
)
def test_unreadable_files_get_one_line_and_store_nothing(cli, tmp_path: Path, name: str, content: bytes) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    code, out, err = cli("batch", "submit", str(path), "--purpose", "catalogue", actor="maria")
    assert code == 2
    assert name in _one_line(err)
    assert cli.json("batch", "list") == []


def test_bad_rows_are_all_listed_with_exit_code_2(cli, tmp_path: Path) -> None:
    rows = [
        {"row_id": "ok", "prompt": "fine", "seed": 1, "width": 256},
        {"row_id": "w", "prompt": "bad width", "seed": 2, "width": 250},
        {"row_id": "s", "prompt": "bad seed", "seed": -5, "width": 256},
        {"row_id": "e", "prompt": " ", "seed": 3, "width": 256},
    ]
    code, out, err = cli(
        "batch", "submit", str(write_prompts(tmp_path / "b.csv", rows)), "--purpose", "marketing", actor="maria"
    )
    assert code == 2 and "Traceback" not in err
    assert "4 problems found, nothing was stored" in err  # width 250: not a multiple of 8 and under 256
    for fragment in ["row 2 (id w): width", "row 3 (id s): seed", "row 4 (id e): prompt"]:
        assert fragment in err
    assert cli.json("batch", "list") == []


def test_who_is_acting_is_established_by_a_token_never_claimed(cli, tmp_path: Path) -> None:
    path = str(write_prompts(tmp_path / "g.csv", GOOD))
    code, _, err = cli("batch", "submit", path, "--purpose", "catalogue", actor=NOBODY)
    assert code == 15 and "no credentials" in _one_line(err)
    code, _, err = cli("batch", "submit", path, "--purpose", "catalogue", actor="zed")  # a token nobody holds
    assert code == 15 and "token not recognised" in _one_line(err) and "atl_" not in err  # never echoed
    code, _, err = cli("batch", "submit", path, "--purpose", "catalogue", actor="omar")
    assert code == 4 and "requester role" in _one_line(err)
    code, _, err = cli("users", "add", "eve", "--role", "admin", actor="maria")
    assert code == 4 and "admin role" in _one_line(err)
    code, _, err = cli("users", "add", "eve", "--role", "boss", actor="admin")
    assert code == 2 and 'Invalid value "boss" for --role' in _one_line(err)
    # The old ways of claiming a name are gone: no --as flag, and ATELIER_ACTOR means nothing.
    code, _, err = cli("batch", "submit", path, "--purpose", "catalogue", "--as", "maria", actor=NOBODY)
    assert code == 2 and "--as" in _one_line(err)
    import os

    os.environ["ATELIER_ACTOR"] = "maria"
    try:
        code, _, err = cli("batch", "submit", path, "--purpose", "catalogue", actor=NOBODY)
    finally:
        del os.environ["ATELIER_ACTOR"]
    assert code == 15
    assert cli.json("batch", "list") == []  # nothing was stored by any of these


def test_submit_show_reject(cli, tmp_path: Path) -> None:
    out = cli.json(
        "batch", "submit", str(write_prompts(tmp_path / "g.csv", GOOD)), "--purpose", "catalogue", actor="maria"
    )
    assert set(out) == {"batch_id", "content_sha256"} and len(out["content_sha256"]) == 64
    sha = out["content_sha256"]
    code, _, err = cli("batch", "reject", out["batch_id"], "--reason", "wrong season", actor="omar")
    assert code == 2 and "--content-sha256" in _one_line(err)  # a decision names the content it was taken on
    code, _, err = cli(
        "batch", "reject", out["batch_id"], "--reason", "wrong season", "--content-sha256", sha, actor="omar"
    )
    assert code == 0
    shown = cli.json("batch", "show", out["batch_id"])
    assert shown["status"] == "rejected" and shown["decided_by"] == "omar" and shown["requested_by"] == "maria"
    assert shown["prompts"] == 1 and shown["images_planned"] == 1
    code, _, err = cli("batch", "approve", out["batch_id"], "--content-sha256", sha, actor="omar")
    assert code == 5 and "only a submitted batch" in _one_line(err)
    code, _, err = cli("batch", "show", "nope")
    assert code == 3 and "no batch 'nope'" in _one_line(err)


def test_audit_verify_exit_code_names_the_tampered_event(cli, tmp_path: Path) -> None:
    assert cli("audit", "verify")[0] == 0
    with sqlite3.connect(tmp_path / "d" / "atelier.db") as conn:
        conn.execute("UPDATE audit_events SET actor = 'mallory' WHERE seq = 2")
    code, out, err = cli("audit", "verify")
    assert code == 8 and "event 2" in err.splitlines()[0] and "Traceback" not in err
    code, out, _ = cli("audit", "verify", "--json")
    assert code == 8 and '"first_bad_seq": 2' in out


def test_invalid_setting_is_named(make_cli, monkeypatch) -> None:
    monkeypatch.setenv("ATELIER_CHUNK_SIZE", "0")
    code, _, err = make_cli([])("batch", "list")
    assert code == 2 and "ATELIER_CHUNK_SIZE" in _one_line(err)


def test_trace_of_unknown_things(cli, tmp_path: Path) -> None:
    code, _, err = cli("trace", "0" * 64)
    assert code == 3 and "no image matches" in _one_line(err)
    stray = tmp_path / "stray.png"
    stray.write_bytes(b"not from here")
    code, _, err = cli("trace", str(stray))
    assert code == 3 and "no published image has these exact bytes" in _one_line(err)
    code, _, err = cli("trace", "hello")
    assert code == 2 and "cannot read 'hello'" in _one_line(err)


@pytest.mark.parametrize("missing", ["signer", "watermark key", "licence", "store"])
def test_run_refuses_before_prefect_starts_when_something_it_needs_is_missing(make_cli, tmp_path, missing) -> None:
    # What `atelier run` needs is checked before Prefect or any model loads: one line, exit 6 (or 3 for
    # an unregistered licence), nothing started, nothing recorded.
    data = tmp_path / "d"
    cli = make_cli(["--data-dir", str(data)])
    batch_id = approved_batch(cli, tmp_path, GOOD)
    cli.token("ops")  # the operator's token, issued while everything works
    if missing == "store":  # from now on a store that refuses connections: an S3 endpoint nobody listens on
        store = ["--store-url", "s3://bucket/p", "--s3-endpoint-url", "http://127.0.0.1:9"]
        cli.flags = [*cli.flags, *store]
    keys = data / "keys"
    if missing == "signer":
        (keys / "signer-key.pem").unlink()
    elif missing == "watermark key":
        (keys / "watermark-key.txt").unlink()
    elif missing == "licence":
        import sqlite3 as db

        with db.connect(data / "atelier.db") as c:
            c.execute("DELETE FROM licences")
    code, out, err = cli("run", "--batch", batch_id, actor="ops")
    line = _one_line(err)
    expected = {
        "signer": ("private key", 6),
        "watermark key": ("watermark key file", 6),
        "licence": ("is not registered", 3),
        "store": ("cannot be reached", 6),
    }[missing]
    assert expected[0] in line and code == expected[1], line
    assert "atelier keys init" in line or missing in ("licence", "store")
    assert cli.json("batch", "show", batch_id)["status"] == "approved"  # no run was opened
    assert not (data / "models").exists()  # no model was built or loaded


@pytest.mark.parametrize(
    "url, code, fragment",
    [
        ("postgres://u@127.0.0.1/db", 2, "not a database URL SQLAlchemy understands"),
        ("not a url at all", 2, "not a database URL SQLAlchemy understands"),
        ("postgresql+psycopg://nobody@127.0.0.1:9/none", 14, "cannot be reached"),
    ],
)
def test_a_bad_or_unreachable_database_is_one_line(make_cli, tmp_path, url, code, fragment) -> None:
    cli = make_cli(["--data-dir", str(tmp_path / "d"), "--database-url", url])
    got, out, err = cli("batch", "list")
    assert got == code and fragment in _one_line(err), err
    assert "nobody:" not in err  # never a password, were there one


def test_output_into_a_closed_pipe_is_no_traceback(tmp_path) -> None:
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "completion", "--shell", "bash"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdout.close()  # `| head` that has read enough
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 141 and b"Traceback" not in err and b"BrokenPipe" not in err, err


def test_every_exit_code_is_in_the_readme_table() -> None:
    from governance.errors import ExitCode
    from tests.conftest import REPO

    readme = (REPO / "README.md").read_text()
    for code in ExitCode:
        assert f"| {code.value} | `{code.name}` |" in readme, code


def test_the_live_rate_is_sane_from_the_first_images() -> None:
    # images land a chunk at a time: two recorded 20 ms apart once read as "2843/min"
    from flows.render import RateWindow, progress_line
    from governance.batches import BatchProgress

    rate = RateWindow(window_s=60)
    rate.add(0.0, 0)
    assert rate.per_minute() is None  # nothing to say yet
    rate.add(10.0, 4)  # the first chunk of 4 after 10 s
    assert rate.per_minute() == 24.0
    rate.add(10.02, 4)
    rate.add(20.0, 8)
    assert rate.per_minute() == 24.0
    for t in range(21, 200):  # an hour-long batch: only the last minute counts
        rate.add(float(t), 8 + (t - 20) * 2)
    assert rate.per_minute() == 120.0
    line = progress_line(BatchProgress(3, 12, 2, 1, 25.0, None, None).with_rate(20.0))
    assert line.endswith("20.0/min  ETA 27 s") and "3/12" in line  # 9 to go at 20/min: the ETA follows the live rate


def test_settings_flags_go_before_or_after_the_command(make_cli, tmp_path) -> None:
    data = str(tmp_path / "d")
    before = make_cli([])
    assert before("--data-dir", data, "keys", "init")[0] == 0
    assert before("--data-dir", data, "users", "add", "admin", "--role", "admin")[0] == 0
    token = before.tokens["admin"]
    after = make_cli(["--data-dir", data])
    after.tokens["admin"] = token
    assert after.json("users", "list")[0]["name"] == "admin"
    code, out, _ = before("--data-dir", data, "users", "add", "omar", "--role", "approver", actor="admin")
    assert code == 0 and "omar" in out


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["batch", "list", "--status", "bogus"], 'Invalid value "bogus" for --status'),
        (["batch", "lst"], 'Unknown command "lst". Did you mean "list"?'),
        (["batch", "submit", "--purpose", "catalogue"], "requires an argument"),
        (["batch", "submit", "f.csv", "--purpose", "brochure"], 'Invalid value "brochure" for --purpose'),
        (["compliance", "impact"], "Exactly 1 of {--model-version, --licence}"),
        (["compliance", "impact", "--licence", "x", "--model-version", "y"], "Exactly 1 of"),
        (["compliance", "search", "--limit", "-3"], "--limit"),
        (["compliance", "export", "--format", "xlsx", "--out", "x"], 'Invalid value "xlsx" for --format'),
        (["run", "--progress", "sometimes"], 'Invalid value "sometimes" for --progress'),
        (["verify"], "parameter FILES requires an argument"),
        (["deploy", "--gpus", "0"], "--gpus"),
    ],
)
def test_mistakes_on_the_command_line_are_one_line_exit_2_naming_the_fix(make_cli, tmp_path, argv, fragment) -> None:
    cli = make_cli(["--data-dir", str(tmp_path / "d")])
    code, out, err = cli(*argv)
    line = _one_line(err)
    assert code == 2 and fragment in line, line
    assert out == ""
    assert "--help`)" in line  # a parse error says where the help is
    assert not (tmp_path / "d").exists()  # refused before anything was opened or created


def test_help_lists_every_command_and_the_settings(make_cli, tmp_path) -> None:
    cli = make_cli([])
    code, out, _ = cli("--help")
    assert code == 0
    for command in ("batch", "compliance", "run", "trace", "verify", "tokens", "login", "completion", "--data-dir"):
        assert command in out, command
    code, out, _ = cli("batch", "submit", "--help")
    assert code == 0 and "catalogue, marketing" in out and "FILE" in out


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_shell_completion_knows_the_commands_and_their_choices(make_cli, shell) -> None:
    code, out, err = make_cli([])("completion", "--shell", shell)
    assert code == 0, err
    for word in ("atelier", "submit", "approve", "compliance", "--purpose", "marketing"):
        assert word in out, (shell, word)
    if shell == "bash":
        import subprocess

        check = subprocess.run(["bash", "-n"], input=out, text=True, capture_output=True)
        assert check.returncode == 0, check.stderr  # the script parses in bash


def test_batch_show_lists_every_field_of_every_row(cli, tmp_path) -> None:
    row = {
        **GOOD[0],
        "negative_prompt": "blurry, watermark",
        "guidance_scale": 6.5,
        "refiner_split": 0.7,
        "num_images": 2,
        "ref": "SKU-42",
    }
    out = cli.json(
        "batch", "submit", str(write_prompts(tmp_path / "r.csv", [row])), "--purpose", "catalogue", actor="maria"
    )
    shown = cli.json("batch", "show", out["batch_id"][:8].upper())  # a short id, in any case
    [detail] = shown["prompts_detail"]
    assert detail == {
        "row_id": "a",
        "prompt": "a lamp",
        "negative_prompt": "blurry, watermark",
        "seed": 1,
        "ref": "SKU-42",
        "width": 256,
        "height": 256,
        "steps": 2,
        "guidance_scale": 6.5,
        "refiner_split": 0.7,
        "num_images": 2,
        "pipeline": "base+refiner",
    }
    assert shown["batch_id"] == out["batch_id"] and shown["progress"]["planned"] == 2
    code, text, _ = cli("batch", "show", out["batch_id"])
    assert code == 0 and "blurry, watermark" in text and "6.5" in text and "0.7" in text and "SKU-42" in text


def test_stored_text_cannot_hide_or_erase_itself_on_the_terminal(cli, tmp_path) -> None:
    # Intake refuses these characters; a record written before that check, or straight into the
    # database, must still show as what it holds: escaped, never interpreted by the terminal.
    out = cli.json(
        "batch", "submit", str(write_prompts(tmp_path / "t.csv", GOOD)), "--purpose", "catalogue", actor="maria"
    )
    hidden = "\x1b[8mnude portrait\x1b[0m studio photo of a lamp"
    wiped = "text \x1b[2K\r studio photo of a vase"
    reordered = "lamp \u202egnp.exe\u202c \u200bshade"
    with sqlite3.connect(tmp_path / "d" / "atelier.db") as db:
        db.execute("UPDATE prompts SET prompt = ?, negative_prompt = ?, ref = ?", (hidden, wiped, reordered))
    code, text, _ = cli("batch", "show", out["batch_id"])
    assert code == 0
    for raw in ("\x1b", "\r", "\u202e", "\u200b"):
        assert raw not in text, repr(raw)
    assert "\\x1b[8mnude portrait\\x1b[0m studio photo of a lamp" in text  # what it holds, in plain sight
    assert "\\x1b[2K\\x0d studio photo of a vase" in text and "\\u202egnp.exe" in text
    shown = cli.json("batch", "show", out["batch_id"])  # JSON keeps the exact stored value (escaped by JSON)
    assert shown["prompts_detail"][0]["prompt"] == hidden


def test_escaping_covers_every_class_of_unsafe_character() -> None:
    from governance.text import describe, escape_unsafe, first_unsafe

    for char in ["\x00", "\x07", "\x1b", "\r", "\x7f", "\x85", "\x9b", "\u00ad", "\u061c", "\u200b", "\u200d",
                 "\u200e", "\u202a", "\u202e", "\u2060", "\u2066", "\u2069", "\ufeff"]:  # fmt: skip
        assert first_unsafe(f"a{char}b") == (1, char), repr(char)
        assert char not in escape_unsafe(f"a{char}b")
    assert first_unsafe("café ünïcödé 日本語 emoji 🙂, tabs\tand\nnewlines") is None  # ordinary text passes
    assert escape_unsafe("a\tb\nc", one_line=True) == "a\\x09b\\x0ac"
    assert describe("\x1b") == "U+001B (ESC)" and describe("\u202e") == "U+202E (RIGHT-TO-LEFT OVERRIDE)"
