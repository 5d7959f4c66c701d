"""One governed batch end to end, through the CLI, on real services.

SQLite and PostgreSQL (127.0.0.1:5432), publishing over HTTP to moto's S3 server, with the
Prefect flow on Prefect's test server and the tiny SDXL-architecture models. Checks invariants
1-6 of ARCHITECTURE.md at skeleton depth.
"""

from __future__ import annotations

import io
import json
import sqlite3
from pathlib import Path

import boto3
import numpy as np
import pytest
from PIL import Image as PILImage

from governance import watermark
from governance.credentials import read_credentials
from governance.records import image_id_for, prompt_id_for
from tests.flows.conftest import write_prompts

ROWS = [
    {
        "row_id": "sku-1",
        "prompt": "studio photo of a walnut desk lamp",
        "seed": 11,
        "width": 256,
        "height": 256,
        "steps": 3,
        "num_images": 2,
        "ref": "SKU-1",
    },
    {
        "row_id": "sku-2",
        "prompt": "studio photo of a ceramic mug",
        "seed": 12,
        "width": 256,
        "height": 256,
        "steps": 3,
        "num_images": 1,
        "ref": "SKU-2",
    },
    {
        "row_id": "sku-3",
        "prompt": "studio photo of a linen chair",
        "seed": 13,
        "width": 320,
        "height": 256,
        "steps": 3,
        "num_images": 1,
        "ref": "SKU-3",
    },
]


@pytest.fixture(params=["sqlite", "postgresql"])
def flags(request, tmp_path, tiny_models, s3_server, s3_env) -> list[str]:
    db = f"sqlite:///{tmp_path / 'e2e.db'}" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    base, refiner = tiny_models
    return [
        "--data-dir",
        str(tmp_path / "data"),
        "--database-url",
        db,
        "--store-url",
        f"s3://{s3_env}/published",
        "--s3-endpoint-url",
        s3_server,
        "--base-model",
        str(base),
        "--refiner-model",
        str(refiner),
    ]


def test_governed_batch_end_to_end(make_cli, flags, tmp_path, s3_server, s3_env, prefect_server) -> None:
    cli = make_cli(flags)
    code, out, err = cli("batch", "list")
    assert code == 7 and "atelier db upgrade" in err  # an explicit database is never migrated silently
    assert cli("db", "upgrade")[0] == 0
    assert cli("keys", "init")[0] == 0
    assert cli("users", "add", "admin", "--role", "admin")[0] == 0
    for name, role in [("maria", "requester"), ("omar", "approver"), ("ops", "operator")]:
        assert cli("users", "add", name, "--role", role, actor="admin")[0] == 0
    assert cli("licences", "register", "creativeml-openrail++-m", actor="admin")[0] == 0

    submitted = cli.json(
        "batch", "submit", str(write_prompts(tmp_path / "p.csv", ROWS)), "--purpose", "catalogue", actor="maria"
    )
    batch_id = submitted["batch_id"]

    # Invariant 1: no GPU work before a second person approves this exact content.
    code, _, err = cli("run", "--batch", batch_id, actor="ops")
    assert code != 0 and "approve" in err
    sha = ("--content-sha256", submitted["content_sha256"])
    code, _, err = cli("batch", "approve", batch_id, *sha, actor="maria")
    assert code != 0 and "approver role" in err
    approved = cli.json("batch", "approve", batch_id, *sha, actor="omar")
    assert approved["content_sha256"] == submitted["content_sha256"]

    code, out, err = cli("run", "--batch", batch_id, "--json", "--progress", "always", actor="ops")
    assert code == 0, err
    [result] = json.loads(out)
    assert result["status"] == "completed" and result["remaining"] == 0
    # the operator's progress bar (on stderr, redrawn in place; "auto" shows it on a terminal)
    assert f"\rbatch {batch_id[:8]} [##############################] 4/4  published {result['published']}" in err
    assert result["published"] + result["quarantined"] == sum(r["num_images"] for r in ROWS)

    shown = cli.json("batch", "show", batch_id)
    assert shown["status"] == "completed" and shown["decided_by"] == "omar" and shown["requested_by"] == "maria"
    assert shown["images_published"] == result["published"]
    assert shown["progress"]["done"] == shown["progress"]["planned"] == 4 and shown["progress"]["percent"] == 100
    code, out, _ = cli("batch", "show", batch_id)
    assert "[##############################] 4/4" in out

    # Invariants 2 and 4: what is in the bucket is exactly the published images and their provenance,
    # under keys derived from image id and content hash, each carrying a verified watermark.
    s3 = boto3.client("s3", endpoint_url=s3_server)
    listed = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=s3_env, Prefix="published/images/")["Contents"])
    import c2pa

    anchors = c2pa.Context.from_dict(
        {"trust": {"trust_anchors": (tmp_path / "data" / "keys" / "trust-anchors.pem").read_text()}}
    )
    traces = []
    for row in ROWS:
        pid = prompt_id_for(batch_id, row["row_id"])
        for index in range(row["num_images"]):
            traces.append(cli.json("trace", image_id_for(pid, index)))
    published = [t for t in traces if t["status"] == "published"]
    expected_keys = sorted(
        [f"published/{t['store']['key']}" for t in published]
        + [f"published/{t['store']['provenance_key']}" for t in published]
        + [f"published/images/{t['image_id']}/{t['pixels_sha256']}.thumb.jpg" for t in published]  # the galleries'
    )
    assert listed == expected_keys
    for t in published:
        assert t["store"]["key"] == f"images/{t['image_id']}/{t['pixels_sha256']}.png"
        body = s3.get_object(Bucket=s3_env, Key=f"published/{t['store']['key']}")["Body"].read()
        import hashlib

        assert hashlib.sha256(body).hexdigest() == t["sha256"]
        creds = read_credentials(body, "image/png", anchors)
        assert creds.state == "Trusted" and creds.atelier["image_id"] == t["image_id"]
        assert creds.atelier["approval_id"] == t["approval"]["id"] and creds.atelier["batch_id"] == batch_id
        pixels = np.asarray(PILImage.open(io.BytesIO(body)).convert("RGB"))
        ring = watermark.load_key_ring(tmp_path / "data" / "keys" / watermark.KEY_FILE)
        assert t["watermark"]["scheme"] == watermark.DEFAULT_SCHEME and t["watermark"]["key_id"] == ring[0].key_id
        check = watermark.verify(pixels, int(t["watermark"]["payload"], 16), key=ring[0])
        assert check.ok and check.matched_bits == t["watermark"]["matched_bits"]
        assert not watermark.verify(pixels, int(t["watermark"]["payload"], 16)).ok  # keyed: no key, no mark
        soft = creds.soft_binding
        assert soft["alg"] == "com.atelier.dctss.1" and soft["blocks"][0]["value"] == t["watermark"]["payload"]
        assert t["watermark"]["payload"] == f"{watermark.payload_for_image(t['image_id']):012x}"
        prov = json.loads(s3.get_object(Bucket=s3_env, Key=f"published/{t['store']['provenance_key']}")["Body"].read())
        assert prov["image_id"] == t["image_id"] and prov["sha256"] == t["sha256"]
        assert prov["approval"]["approved_by"] == "omar" and prov["batch"]["requested_by"] == "maria"
        assert {m["role"] for m in prov["models"]} >= {"base_unet", "refiner_unet", "vae", "text_encoder_2"}
        assert prov["licences"][0]["id"] == "creativeml-openrail++-m"
        # trace: the fields compliance asks for, and the audit trail of this image
        assert t["batch"]["purpose"] == "catalogue" and t["approval"]["content_sha256"] == submitted["content_sha256"]
        assert all(m["sha256"] and m["licence"] == "creativeml-openrail++-m" for m in t["models"])
        actions = [a["action"] for a in t["audit"]]
        assert {"batch.submitted", "batch.approved", "run.started", "image.published"} <= set(actions)
        assert t["safety"]["verdict"] == "passed" and set(t["safety"]["scores"])
    for t in traces:
        if t["status"] == "quarantined":
            assert t["store"]["key"] is None and t["safety"]["reasons"]

    # trace by SHA-256, by key and by a downloaded copy of the file
    first = published[0]
    assert cli.json("trace", first["sha256"])["image_id"] == first["image_id"]
    assert cli.json("trace", f"s3://{s3_env}/published/{first['store']['key']}")["image_id"] == first["image_id"]
    local = tmp_path / "downloaded.png"
    local.write_bytes(s3.get_object(Bucket=s3_env, Key=f"published/{first['store']['key']}")["Body"].read())
    assert cli.json("trace", str(local))["image_id"] == first["image_id"]

    # Invariants 3 and 6: every change is in the chain, the chain verifies, and the run's end was
    # anchored to Object Lock storage.
    report = cli.json("audit", "verify")
    assert report["ok"] and report["objects_checked"] == len(published)
    assert result["anchored_seq"] is not None and report["newest_anchor_seq"] >= result["anchored_seq"]
    anchors = s3.list_objects_v2(Bucket=s3_env, Prefix="published/audit/anchors/")["Contents"]
    # every governance decision (users, tokens, licence, submit's approval) and the run's end anchored
    assert len(anchors) == report["anchors_checked"] >= 2

    # Invariant 4: running again duplicates nothing.
    [again] = cli.json("run", "--batch", batch_id, actor="ops")
    assert again["published"] == 0 and again["quarantined"] == 0 and again["remaining"] == 0
    assert sorted(o["Key"] for o in s3.list_objects_v2(Bucket=s3_env, Prefix="published/images/")["Contents"]) == listed
    assert cli.json("batch", "show", batch_id)["images_published"] == result["published"]
    assert cli.json("audit", "verify")["chain"]["events"] > report["chain"]["events"]

    # A published object replaced behind Atelier's back is reported, naming the image.
    s3.put_object(Bucket=s3_env, Key=f"published/{first['store']['key']}", Body=b"not the published image")
    code, out, err = cli("audit", "verify")
    assert code == 8 and f"image {first['image_id']}: published object" in err and "changed" in err


def test_crash_mid_batch_then_rerun_publishes_everything_once(
    make_cli, tmp_path, tiny_models, s3_server, s3_env, prefect_server, monkeypatch
) -> None:
    """The store dies after a few uploads (a fault we inject into the real S3 store); a re-run finishes."""
    from governance.store import S3Store

    base, refiner = tiny_models
    cli = make_cli(
        [
            "--data-dir",
            str(tmp_path / "data"),
            "--store-url",
            f"s3://{s3_env}/p",
            "--s3-endpoint-url",
            s3_server,
            "--base-model",
            str(base),
            "--refiner-model",
            str(refiner),
        ]
    )
    cli("keys", "init")
    cli("users", "add", "admin", "--role", "admin")
    for name, role in [("maria", "requester"), ("omar", "approver"), ("ops", "operator")]:
        cli("users", "add", name, "--role", role, actor="admin")
    cli("licences", "register", "creativeml-openrail++-m", actor="admin")
    submitted = cli.json(
        "batch", "submit", str(write_prompts(tmp_path / "p.csv", ROWS)), "--purpose", "catalogue", actor="maria"
    )
    batch_id = submitted["batch_id"]
    assert cli("batch", "approve", batch_id, "--content-sha256", submitted["content_sha256"], actor="omar")[0] == 0

    real_put = S3Store.put
    calls = {"n": 0}

    def dying_put(self, key, data, content_type, metadata):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 4:  # the second image's PNG: its provenance JSON is already up
            raise ConnectionError("injected: object store went away")
        return real_put(self, key, data, content_type, metadata)

    monkeypatch.setattr(S3Store, "put", dying_put)
    with pytest.raises(ConnectionError):
        cli("run", "--batch", batch_id, actor="ops")
    monkeypatch.setattr(S3Store, "put", real_put)
    assert cli.json("batch", "show", batch_id)["status"] == "failed"

    [result] = cli.json("run", "--batch", batch_id, actor="ops")
    assert result["status"] == "completed" and result["remaining"] == 0
    shown = cli.json("batch", "show", batch_id)
    assert shown["images_published"] + shown["images_quarantined"] == sum(r["num_images"] for r in ROWS)
    s3 = boto3.client("s3", endpoint_url=s3_server)
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=s3_env, Prefix="p/images/")["Contents"])
    assert len(keys) == 3 * shown["images_published"]  # image, provenance, thumbnail: no orphan, no duplicate
    assert cli.json("audit", "verify")["ok"]


def test_demo_runs_twice(make_cli, tmp_path, tiny_models, prefect_server) -> None:
    base, refiner = tiny_models
    cli = make_cli(["--data-dir", str(tmp_path / "demo"), "--base-model", str(base), "--refiner-model", str(refiner)])
    for _ in range(2):
        code, out, err = cli("demo")
        assert code == 0, err
        assert "audit ledger: intact" in out and "published" in out
        assert len(out.splitlines()) <= 40 and "Traceback" not in out + err  # quiet: a page, not a log
    # The demo's users acted with tokens; each can be used right away (the README's "Try each role").
    tokens_file = tmp_path / "demo" / "demo-tokens.json"
    assert tokens_file.stat().st_mode & 0o777 == 0o600
    tokens = json.loads(tokens_file.read_text())
    assert set(tokens) == {"admin", "maria", "omar", "ops", "lee", "rosa"}
    cli.tokens.update(tokens)
    assert cli.json("whoami", actor="lee")["user"] == "lee"
    assert cli("compliance", "search", actor="lee")[0] == 0  # the auditor can search
    assert cli("compliance", "search", actor="maria")[0] == 4  # a requester cannot
    with sqlite3.connect(tmp_path / "demo" / "atelier.db") as db:  # events name the users the tokens proved
        actors = dict(db.execute("SELECT action, actor FROM audit_events WHERE action LIKE 'batch.%'").fetchall())
    assert actors["batch.submitted"] == "maria" and actors["batch.approved"] == "omar"
    store = Path(tmp_path / "demo" / "store" / "images")
    assert len([p for p in store.rglob("*.png")]) >= 2
