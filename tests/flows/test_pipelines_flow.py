"""Pipeline configurations end to end through the CLI (issue 16): a base-only batch runs on a worker
that has no refiner weights at all, a comparison batch makes one image per (row, configuration) on the
same seeds, costs come from the measured engine time, and reviewers' blind picks give win rates that
the audit trail backs."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

import flows.runtime
from governance.preference import wilson
from tests.flows.conftest import CLI, write_prompts

PEOPLE = [
    ("maria", "requester"),
    ("omar", "approver"),
    ("ops", "operator"),
    ("rev", "reviewer"),
    ("rita", "reviewer"),
    ("vera", "reviewer"),  # reviews the comparison batch's output, so does not judge it
]


def world(tmp_path: Path, base: Path, refiner: Path | None) -> CLI:
    flags = ["--data-dir", str(tmp_path / "d"), "--base-model", str(base)]
    if refiner is not None:
        flags += ["--refiner-model", str(refiner)]
    cli = CLI(None, flags)
    assert cli("db", "upgrade")[0] == 0
    assert cli("keys", "init")[0] == 0
    assert cli("users", "add", "admin", "--role", "admin")[0] == 0
    for name, role in PEOPLE:
        assert cli("users", "add", name, "--role", role, actor="admin")[0] == 0
    assert cli("users", "grant", "maria", "--role", "reviewer", actor="admin")[0] == 0  # requester and reviewer
    assert cli("licences", "register", "creativeml-openrail++-m", actor="admin")[0] == 0
    return cli


def png_chunks(data: bytes) -> list[bytes]:
    """The chunk types of a PNG file, in order (read from the chunk headers, not by searching the bytes)."""
    import struct

    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    chunks, at = [], 8
    while at < len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        chunks.append(data[at + 4 : at + 8])
        at += 12 + length
    return chunks


def images_of(cli: CLI, batch_id: str) -> list[dict[str, Any]]:
    return [t for t in cli.json("compliance", "search", actor="admin") if t["batch"]["id"] == batch_id]


def submit_and_approve(cli: CLI, path: Path, *extra: str, purpose: str = "catalogue") -> str:
    made = cli.json("batch", "submit", str(path), "--purpose", purpose, *extra, actor="maria")
    assert cli("batch", "approve", made["batch_id"], "--content-sha256", made["content_sha256"], actor="omar")[0] == 0
    return str(made["batch_id"])


def rows(n: int, **extra: Any) -> list[dict[str, Any]]:
    return [
        {"row_id": f"r{i}", "prompt": f"studio photo of a walnut lamp number {i} on white", "seed": 70 + i,
         "width": 256, "height": 256, "steps": 3, **extra}
        for i in range(n)
    ]  # fmt: skip


def test_a_base_batch_runs_on_a_worker_without_refiner_weights(tmp_path: Path, tiny_models, monkeypatch) -> None:
    base, _refiner = tiny_models
    monkeypatch.setattr(flows.runtime, "_engines", {})  # this test's worker process starts empty
    cli = world(tmp_path, base, refiner=None)  # only ATELIER_BASE_MODEL: there is no refiner to load
    batch_id = submit_and_approve(cli, write_prompts(tmp_path / "p.csv", rows(2)), "--pipeline", "base")

    shown = cli.json("batch", "show", batch_id)
    assert {p["pipeline"] for p in shown["prompts_detail"]} == {"base"}
    assert all(p["refiner_split"] is None for p in shown["prompts_detail"])  # nothing the approver must read
    assert shown["pipelines"]["base"]["stages"] == ["base"] and shown["pipelines_version"] == "pipelines-v1"

    code, _, err = cli("run", "--batch", batch_id, actor="ops")
    assert code == 0, err
    assert [e.refiner for e in flows.runtime._engines.values()] == [None]  # one engine, no refiner loaded

    images = images_of(cli, batch_id)
    assert len(images) == 2
    trace = cli.json("trace", images[0]["image_id"], actor="admin")
    assert trace["pipeline"]["name"] == "base" and trace["pipeline"]["stages"] == ["base"]
    assert trace["pipeline"]["engine_seconds"] > 0 and trace["pipeline"]["engine_device"] == "cpu"
    assert trace["run"]["engine"]["stages"] == ["base"] and trace["run"]["engine"]["refiner_scheduler"] is None
    assert "refiner_unet" not in {m["role"] for m in trace["models"]}
    assert "refiner_unet" not in {c["role"] for c in trace["run"]["engine"]["components"]}
    # the provenance record beside the image says so too, and the C2PA manifest in the file
    store = tmp_path / "d" / "store"
    provenance = json.loads((store / trace["store"]["provenance_key"]).read_text())
    assert provenance["pipeline"]["name"] == "base" and provenance["pipeline"]["pinned_by"]["version"] == "pipelines-v1"
    assert "refiner_unet" not in {m["role"] for m in provenance["models"]}
    from governance.credentials import read_credentials

    credentials = read_credentials((store / trace["store"]["key"]).read_bytes(), "image/png")
    assert credentials.atelier["pipeline"] == {"name": "base", "stages": ["base"]}

    # reproduce replays the base alone, bit for bit, still without refiner weights
    out = cli.json("reproduce", images[0]["image_id"], actor="admin")
    assert out["verdict"] == "identical" and out["pipeline"] == "base" and out["request"]["refiner_split"] is None

    # a base+refiner batch on this worker is refused in one line: no refiner weights configured
    other = submit_and_approve(cli, write_prompts(tmp_path / "q.csv", rows(1)))
    code, _, err = cli("run", "--batch", other, actor="ops")
    assert code == 2 and "ATELIER_REFINER_MODEL" in err and len(err.strip().splitlines()) == 1


def test_definitions_changed_after_approval_refuse_the_run(tmp_path: Path, tiny_models) -> None:
    base, refiner = tiny_models
    cli = world(tmp_path, base, refiner)
    batch_id = submit_and_approve(cli, write_prompts(tmp_path / "p.csv", rows(1)), "--pipeline", "base")
    db = sqlite3.connect(tmp_path / "d" / "atelier.db")
    (record,) = db.execute("SELECT pipelines FROM batches WHERE id = ?", (batch_id,)).fetchone()
    changed = json.loads(record)
    changed["configurations"]["base"]["refiner"] = True  # a DBA makes "base" run the refiner after approval
    db.execute("UPDATE batches SET pipelines = ? WHERE id = ?", (json.dumps(changed), batch_id))
    db.commit()
    code, _, err = cli("run", "--batch", batch_id, actor="ops")
    assert code == 5 and "differ from those approved" in err and len(err.strip().splitlines()) == 1
    assert cli.json("batch", "show", batch_id, actor="admin")["status"] == "approved"  # nothing ran
    code, out, err = cli("audit", "verify", actor="admin")
    assert code == 8 and f"batch {batch_id}" in out + err


@pytest.fixture(scope="module")
def compared(tmp_path_factory: pytest.TempPathFactory, tiny_models) -> tuple[CLI, str, Path]:
    """One comparison batch, run and reviewed, for the tests below (in file order: the last one tampers)."""
    tmp_path = tmp_path_factory.mktemp("compared")
    base, refiner = tiny_models
    cli = world(tmp_path, base, refiner)
    path = write_prompts(tmp_path / "c.csv", rows(4, num_images=2, pipeline="base,base+refiner"))
    batch_id = submit_and_approve(cli, path, purpose="marketing")  # marketing: a reviewer accepts each image
    code, _, err = cli("run", "--batch", batch_id, actor="ops")
    assert code == 0, err
    out = cli.json("compare", batch_id, actor="admin")
    base_images = [i["image_id"] for r in out["rows"] for i in r["images"] if i["pipeline"] == "base"]
    others = [i["image_id"] for r in out["rows"] for i in r["images"] if i["pipeline"] != "base"]
    assert cli("review", "reject", *base_images[:2], "--reason", "lamp shade warped", actor="vera")[0] == 0
    assert cli("review", "accept", *base_images[2:], *others, actor="vera")[0] == 0
    return cli, batch_id, tmp_path


def test_a_comparison_batch_makes_each_row_in_each_configuration_on_the_same_seeds(compared, tmp_path) -> None:
    cli, batch_id, tmp_path = compared  # the world's folder (its database and store)
    shown = cli.json("batch", "show", batch_id)
    assert shown["images_planned"] == 4 * 2 * 2
    out = cli.json("compare", batch_id, "--price-per-gpu-hour", "3.6", actor="maria")  # the requester sees hers
    assert out["pipelines"] == ["base", "base+refiner"] and out["same_seeds"]
    assert len(out["rows"]) == 8  # 4 rows x 2 images each
    for row in out["rows"]:
        assert sorted(i["pipeline"] for i in row["images"]) == ["base", "base+refiner"]
        assert len({i["seed"] for i in row["images"]}) == 1
    assert len({r["seed"] for r in out["rows"]}) == 8  # each slot its own seed
    # the same seed through a different configuration is a different picture
    searched = {i["image_id"]: i for i in images_of(cli, batch_id)}
    for row in out["rows"]:
        a, b = (searched[i["image_id"]]["sha256"] for i in row["images"])
        assert a != b

    costs = {c["pipeline"]: c for c in out["costs"]}
    assert (costs["base"]["accepted"], costs["base"]["review_rejected"]) == (6, 2)
    assert costs["base"]["review_rejection_rate"] == 0.25 and costs["base+refiner"]["accepted"] == 8
    for name, c in costs.items():
        assert c["images"] == c["measured"] == 8, name  # every image's engine time was measured
        assert c["engine_seconds"] > 0 and c["seconds_per_image"] == pytest.approx(c["engine_seconds"] / 8, rel=1e-3)
        assert c["cost_per_image"] == pytest.approx(c["seconds_per_image"] * 3.6 / 3600, rel=1e-3)
        assert c["cost_per_accepted_image"] == pytest.approx(c["cost_per_image"] * 8 / c["accepted"], rel=1e-3)
    # the run recorded the same per configuration
    run = cli.json("trace", out["rows"][0]["images"][0]["image_id"], actor="admin")["run"]["id"]
    db = sqlite3.connect(tmp_path / "d" / "atelier.db")
    summary = json.loads(db.execute("SELECT summary FROM runs WHERE id = ?", (run,)).fetchone()[0])
    assert summary["pipelines"]["base"]["images"] == 8
    assert summary["pipelines"]["base"]["engine_seconds"] == pytest.approx(costs["base"]["engine_seconds"], rel=1e-3)

    # who may compare: not a reviewer (they judge blind), not someone else's requester
    code, _, err = cli("compare", batch_id, actor="rev")
    assert code == 4 and "blind" in err
    code, _, err = cli("compare", batch_id, "--price-per-gpu-hour", "-1", actor="maria")
    assert code == 2 and "price" in err


def _pairs_of(cli: CLI, batch_id: str, who: str, out: Path, pick: str) -> list[dict[str, Any]]:
    shown = []
    out.mkdir(exist_ok=True)
    while True:
        code, stdout, err = cli("prefer", "next", batch_id, "--out", str(out), "--json", actor=who)
        if code == 3:
            assert "judge" in err
            return shown
        assert code == 0, err
        pair = json.loads(stdout)
        files = {side: (out / f"{side}.png").read_bytes() for side in ("left", "right")}
        shown.append({**pair, "files": files})
        assert cli("prefer", "pick", pair["pair_id"], pick, actor=who)[0] == 0


def test_blind_picks_give_audited_win_rates(compared, tmp_path) -> None:
    cli, batch_id, tmp_path = compared  # the world's folder (its database and store)
    image_ids = {i["image_id"] for i in images_of(cli, batch_id)}

    # the requester may not judge her own batch: one line, nothing stored
    code, _, err = cli("prefer", "next", batch_id, "--out", str(tmp_path), actor="maria")
    assert code == 4 and "own batch" in err
    code, _, err = cli("prefer", "next", batch_id, "--out", str(tmp_path), actor="omar")  # not a reviewer
    assert code == 4
    code, _, err = cli("prefer", "next", batch_id, "--out", str(tmp_path), actor="vera")  # reviewed its output
    assert code == 4 and "reviewed the output" in err
    assert cli("users", "grant", "omar", "--role", "reviewer", actor="admin")[0] == 0
    code, _, err = cli("prefer", "next", batch_id, "--out", str(tmp_path), actor="omar")  # sees configurations
    assert code == 4 and "approver" in err and "not be blind" in err

    # a judge sees the batch only as pairs: not its rows, traces or files, nor verify naming its images
    some = sorted(i["image_id"] for i in images_of(cli, batch_id) if i["status"] == "published")[0]
    for argv in (["batch", "show", batch_id], ["trace", some]):
        code, _, err = cli(*argv, actor="rev")
        assert code == 4 and "blind" in err, argv
    published = tmp_path / "d" / "store" / cli.json("trace", some, actor="admin")["store"]["key"]
    code, _, err = cli("verify", str(published), actor="rev")
    assert code == 4 and "blind" in err
    assert cli("verify", str(published), actor="maria")[0] == 0  # the requester may

    rev = _pairs_of(cli, batch_id, "rev", tmp_path / "rev", "left")
    rita = _pairs_of(cli, batch_id, "rita", tmp_path / "rita", "none")
    assert len(rev) == len(rita) == 6  # each (row, seed) once per reviewer; not the 2 rejected in review

    # blind: nothing shown names an image or a configuration; the files carry no manifest or text chunk
    for pair in rev + rita:
        text = json.dumps({k: v for k, v in pair.items() if k != "files"})
        assert (
            not any(i in text for i in image_ids) and "refiner" not in text and "base" not in text.replace("based", "")
        )
        for data in pair["files"].values():
            assert set(png_chunks(data)) == {b"IHDR", b"IDAT", b"IEND"}  # no manifest (caBX), no text, nothing

    # picks stick once; a pair is its viewer's own
    code, _, err = cli("prefer", "pick", rev[0]["pair_id"], "right", actor="rev")
    assert code == 5 and "already" in err
    code, _, err = cli("prefer", "pick", rev[0]["pair_id"], "left", actor="rita")
    assert code == 3
    code, _, err = cli("prefer", "pick", rev[0]["pair_id"], "maybe", actor="rev")
    assert code == 2 and "left, right, none" in err

    # the rates follow from the audited picks: replay them from the audit events
    db = sqlite3.connect(tmp_path / "d" / "atelier.db")
    events = [
        json.loads(p) for (p,) in db.execute("SELECT payload FROM audit_events WHERE action = 'preference.recorded'")
    ]
    assert len(events) == 12
    left_was_base = [e["left"]["pipeline"] == "base" for e in events]
    assert 0 < sum(left_was_base) < len(left_was_base)  # shuffled (all 12 one way: p = 2^-11)
    wins_base = sum(1 for e in events if e["preferred_pipeline"] == "base")
    wins_refiner = sum(1 for e in events if e["preferred_pipeline"] == "base+refiner")
    (rate,) = cli.json("prefer", "results", "--batch", batch_id, actor="admin")
    assert (rate["a"], rate["b"]) == ("base", "base+refiner")
    assert (rate["wins_a"], rate["wins_b"], rate["no_preference"], rate["judgements"]) == (
        wins_base,
        wins_refiner,
        6,
        12,
    )
    low, high = wilson(wins_base, 6)
    assert rate["rate_a"] == round(wins_base / 6, 4)
    assert (rate["ci_low"], rate["ci_high"]) == (round(low, 4), round(high, 4))
    assert cli.json("compare", batch_id, actor="admin")["preferences"] == [rate]

    # the picks are governed records: a pick changed in the database is named by audit verify
    assert cli("audit", "verify", actor="admin")[0] == 0
    flipped = "right"  # the first pick that chose left, turned round
    db.execute(
        "UPDATE preferences SET choice = ? WHERE rowid = (SELECT min(rowid) FROM preferences WHERE choice = 'left')",
        (flipped,),
    )
    db.commit()
    code, out, err = cli("audit", "verify", actor="admin")
    assert code != 0 and "preference" in out + err


def test_left_and_right_are_drawn_evenly() -> None:
    from governance.preference import random_order

    lefts = sum(random_order("a", "b")[0] == "a" for _ in range(2000))
    assert 880 < lefts < 1120  # a fair coin: outside this band with probability below 1e-7


def test_wilson_interval_matches_the_published_formula() -> None:
    # Wilson (1927) / Newcombe (1998) table: 81 of 263 -> 0.2553 to 0.3662
    low, high = wilson(81, 263)
    assert (round(low, 4), round(high, 4)) == (0.2553, 0.3662)
    low, high = wilson(0, 10)
    assert low == 0.0 and round(high, 4) == 0.2775
