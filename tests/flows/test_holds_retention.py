"""Legal holds and retention through the CLI, on SQLite and PostgreSQL with the S3 server (a bucket
with Object Lock, as production's should be).

A hold stops a withdrawal (by id: refused whole; by impact: the held image left, the rest withdrawn),
and S3 itself refuses to delete a held object version, even to someone who goes around Atelier.
Retention, run as a Prefect flow on a real Prefect server, deletes every version of the files of
review rejects when their rule is due, never before, never a held image's; the records stay, say
why, and the ledger binds the holds (one deleted with SQL is found by `audit verify`).
"""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import pytest
from botocore.exceptions import ClientError
from sqlalchemy import create_engine, text

from tests.flows.conftest import CLI, s3_world, write_prompts

PEOPLE = [("maria", "requester"), ("omar", "approver"), ("ops", "operator"), ("ann", "auditor"), ("rev", "reviewer")]


def rows(tag: str, n: int = 2) -> list[dict]:
    return [
        {"row_id": f"{tag}{i}", "prompt": f"studio photo of a ceramic mug {tag} {i}", "seed": 70 + i, "width": 256,
         "height": 256, "steps": 2, "num_images": 1}
        for i in range(n)
    ]  # fmt: skip


def approved(cli: CLI, tmp_path: Path, tag: str, purpose: str) -> str:
    made = cli.json(
        "batch", "submit", str(write_prompts(tmp_path / f"{tag}.csv", rows(tag))), "--purpose", purpose, actor="maria"
    )
    assert cli("batch", "approve", made["batch_id"], "--content-sha256", made["content_sha256"], actor="omar")[0] == 0
    return str(made["batch_id"])


def produced(cli: CLI, tmp_path: Path, tag: str, purpose: str) -> str:
    batch = approved(cli, tmp_path, tag, purpose)
    code, _, err = cli("run", "--batch", batch, actor="ops")
    assert code == 0, err
    return batch


def images_of(cli: CLI, batch: str) -> list[dict]:
    """The `atelier trace` record of each image of the batch, as an auditor finds them."""
    found = cli.json("compliance", "search", "--limit", "0", actor="ann")
    return sorted((t for t in found if t["batch"]["id"] == batch), key=lambda t: t["image_id"])


def versions(s3, bucket: str, key: str) -> list[str]:  # type: ignore[no-untyped-def]
    listed = s3.list_object_versions(Bucket=bucket, Prefix=key)
    return [v["VersionId"] for v in listed.get("Versions", []) if v["Key"] == key]


def test_a_legal_hold_stops_withdrawal_and_s3_refuses_the_delete(
    tmp_path: Path, database_url: str, tiny_models, s3_server: str, s3_env: str
) -> None:
    cli = s3_world(tmp_path, database_url, tiny_models, s3_server, s3_env, PEOPLE)
    batch = produced(cli, tmp_path, "h", "catalogue")
    ids = [t["image_id"] for t in images_of(cli, batch)]
    assert len(ids) == 2
    target = cli.json("trace", ids[0], actor="ann")
    key, version = f"p/{target['store']['key']}", target["store"]["version_id"]
    s3 = boto3.client("s3", endpoint_url=s3_server)

    # who may, and bad input: one line, an exit code, nothing changes
    assert cli("hold", "place", ids[0], "--reason", "matter 2026-17", actor="maria")[0] == 4
    assert cli("hold", "place", ids[0], "--reason", " ", actor="ann")[0] == 2
    assert cli("hold", "place", ids[0], "--reason", "matter\x1b[8m hidden", actor="ann")[0] == 2
    assert cli("hold", "place", "no-such-image", "--reason", "matter 2026-17", actor="ann")[0] == 3
    assert cli("hold", "place", ids[0], "--batch", batch, "--reason", "x", actor="ann")[0] == 2  # one or the other
    assert cli.json("hold", "list", actor="ann") == []

    code, out, err = cli("hold", "place", ids[0], "--reason", "matter 2026-17", actor="ann")
    assert code == 0 and "1 hold(s) placed" in out and "S3 Object Lock" in out, err
    hold_id = out.split()[-3]
    code, out, _ = cli("hold", "place", ids[0], "--reason", "matter 2026-17", actor="ann")
    assert code == 0 and "0 hold(s) placed, 1 already in place" in out  # idempotent
    assert s3.get_object_legal_hold(Bucket=s3_env, Key=key, VersionId=version)["LegalHold"]["Status"] == "ON"

    # withdrawal by id: refused whole, naming the hold; the object stays
    code, _, err = cli("image", "withdraw", ids[0], ids[1], "--reason", "recall", actor="ann")
    assert code == 5 and hold_id in err and "legal hold" in err and len(err.strip().splitlines()) == 1
    assert versions(s3, s3_env, key) == [version]
    assert {t["status"] for t in images_of(cli, batch)} == {"published"}

    # someone with the bucket's credentials who goes around Atelier: S3 refuses to delete that version
    with pytest.raises(ClientError) as refused:
        s3.delete_object(Bucket=s3_env, Key=key, VersionId=version)
    assert refused.value.response["Error"]["Code"] == "AccessDenied"

    # a recall by model version: the held image is left and named, the other withdrawn, exit 5
    base_sha = next(m["sha256"] for m in target["models"] if m["role"].startswith("base"))
    code, out, err = cli("image", "withdraw", "--impact-of", base_sha, "--reason", "model recall", actor="ann")
    assert code == 5 and "1 image(s) withdrawn" in out and ids[0] in err and "legal hold" in err
    statuses = {t["image_id"]: t["status"] for t in images_of(cli, batch)}
    assert statuses == {ids[0]: "published", ids[1]: "withdrawn"}

    traced = cli.json("trace", ids[0], actor="ann")
    assert [(h["hold_id"], h["active"], h["reason"]) for h in traced["legal_holds"]] == [
        (hold_id, True, "matter 2026-17")
    ]
    assert "legal holds:" in cli("trace", ids[0], actor="ann")[1]

    # released (with a reason): the S3 hold comes off, and the withdrawal goes ahead
    assert cli("hold", "release", hold_id, "--reason", "", actor="ann")[0] == 2
    assert cli("hold", "release", "no-such-hold", "--reason", "settled", actor="ann")[0] == 3
    code, out, _ = cli("hold", "release", hold_id, "--reason", "matter settled", actor="ann")
    assert code == 0 and "1 hold(s) released" in out
    assert s3.get_object_legal_hold(Bucket=s3_env, Key=key, VersionId=version)["LegalHold"]["Status"] == "OFF"
    assert cli.json("hold", "list", actor="ann") == []
    listed = cli.json("hold", "list", "--all", actor="ann")
    assert [(h["released_by"], h["release_reason"]) for h in listed] == [("ann", "matter settled")]
    # a withdrawal cut short after it removed the file (its transaction rolled back): no evidence copy,
    # nothing changes and it says so; with the evidence copy in place, withdrawing again finishes it
    evidence_key = key.replace("p/images/", "p/withdrawn/")
    body = s3.get_object(Bucket=s3_env, Key=key, VersionId=version)["Body"].read()
    s3.delete_object(Bucket=s3_env, Key=key, VersionId=version)
    code, _, err = cli("image", "withdraw", ids[0], "--reason", "model recall", actor="ann")
    assert code == 6 and "no evidence copy" in err and len(err.strip().splitlines()) == 1
    assert {t["image_id"]: t["status"] for t in images_of(cli, batch)}[ids[0]] == "published"
    s3.put_object(Bucket=s3_env, Key=evidence_key, Body=body)
    code, out, err = cli("image", "withdraw", ids[0], "--reason", "model recall", actor="ann")
    assert code == 0 and "1 image(s) withdrawn" in out, err
    assert versions(s3, s3_env, key) == [] and versions(s3, s3_env, evidence_key)
    assert cli.json("trace", ids[0], actor="ann")["status"] == "withdrawn"

    assert cli.json("audit", "verify", actor="ann")["ok"]
    engine = create_engine(database_url)
    with engine.begin() as conn:
        held_events = conn.execute(
            text("SELECT action, actor FROM audit_events WHERE subject_id = :id ORDER BY seq"), {"id": hold_id}
        ).all()
        assert [tuple(e) for e in held_events] == [("hold.placed", "ann"), ("hold.released", "ann")]
        # the hold rows are bound by the ledger: one deleted with SQL does not go unnoticed
        conn.execute(text("DELETE FROM legal_holds WHERE id = :id"), {"id": hold_id})
    engine.dispose()
    code, out, err = cli("audit", "verify", actor="ann")
    assert code == 8 and "legal_hold" in out + err, (out, err)


def test_retention_expires_due_rejects_and_never_a_held_one(
    tmp_path: Path,
    database_url: str,
    tiny_models,
    s3_server: str,
    s3_env: str,
    prefect_server: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ATELIER_REVIEW_PURPOSES", '["marketing"]')
    cli = s3_world(tmp_path, database_url, tiny_models, s3_server, s3_env, PEOPLE)
    loose, held = produced(cli, tmp_path, "r", "marketing"), approved(cli, tmp_path, "k", "marketing")
    # a batch held before it runs: what it makes is held as it is written
    code, out, _ = cli("hold", "place", "--batch", held, "--reason", "matter 2026-40", actor="ann")
    assert code == 0 and "covering 0 image(s)" in out
    assert cli("run", "--batch", held, actor="ops")[0] == 0
    for batch in (loose, held):
        assert cli("review", "reject", "--batch", batch, "--reason", "off-brand colours", actor="rev")[0] == 0
    s3 = boto3.client("s3", endpoint_url=s3_server)

    def files(batch: str) -> list[str]:
        keys = []
        for t in images_of(cli, batch):
            keys += [f"p/{t['store']['key']}", f"p/{t['store']['provenance_key']}"]
            keys.append(f"p/{t['store']['key'].rsplit('.', 1)[0]}.thumb.jpg")
        return [k for k in keys if versions(s3, s3_env, k)]

    assert len(files(loose)) == 6 and len(files(held)) == 6  # 2 images each: file, provenance, thumbnail
    assert all(k.startswith("p/review/") for k in files(loose))  # rejected: never in the publish location

    def s3_hold(key: str) -> str:
        return str(s3.get_object_legal_hold(Bucket=s3_env, Key=key)["LegalHold"]["Status"])

    assert {s3_hold(k) for k in files(held)} == {"ON"}

    # the packaged rules: rejects kept 30 days, so nothing is due today
    code, out, err = cli("retention", "apply", actor="ann")
    assert code == 0 and "0 image(s) expired" in out, err
    assert len(files(loose)) == 6

    # an organisation's rules: marketing rejects deleted at once
    policy = tmp_path / "retention.json"
    policy.write_text(json.dumps({"version": "test-now", "rules": [
        {"id": "rejects-now", "status": "rejected", "purposes": ["marketing"], "delete_after_days": 0}]}))  # fmt: skip
    monkeypatch.setenv("ATELIER_RETENTION_POLICY", str(policy))
    assert cli("retention", "apply", actor="maria")[0] == 4  # not hers to do
    shown = cli.json("retention", "show", actor="ann")
    assert len(shown["expired"]) == 2 and len(shown["held"]) == 2 and shown["policy"] == "test-now"
    code, out, _ = cli("retention", "apply", "--dry-run", actor="ann")
    assert code == 0 and "2 image(s) would expire, 2 kept by legal holds" in out
    assert len(files(loose)) == 6  # a dry run changes nothing

    code, out, err = cli("retention", "apply", actor="ann")
    assert code == 0 and "2 image(s) expired, 2 kept by legal holds" in out, err
    assert files(loose) == []  # every version of every file gone
    assert len(files(held)) == 6  # the held batch's untouched
    for t in images_of(cli, loose):
        assert t["status"] == "expired" and t["sha256"]  # the record and its hashes stay
        assert t["expiry"]["rule"] == "rejects-now" and t["expiry"]["policy"] == "test-now"
        assert len(t["expiry"]["policy_sha256"]) == 64 and len(t["expiry"]["deleted"]) == 3
        assert "image.expired" in [e["action"] for e in t["audit"]]
    code, out, _ = cli("retention", "apply", actor="ann")
    assert code == 0 and "0 image(s) expired, 2 kept by legal holds" in out  # nothing twice

    # an expired image cannot be held (nothing is left), nor withdrawn (never published)
    gone = images_of(cli, loose)[0]["image_id"]
    assert cli("hold", "place", gone, "--reason", "late matter", actor="ann")[0] == 5
    assert cli("image", "withdraw", gone, "--reason", "x", actor="ann")[0] == 5

    # the hold released: the next run takes them
    hold_id = cli.json("hold", "list", actor="ann")[0]["hold_id"]
    assert cli("hold", "release", hold_id, "--reason", "matter closed", actor="ann")[0] == 0
    assert {s3_hold(k) for k in files(held)} == {"OFF"}
    code, out, _ = cli("retention", "apply", actor="ann")
    assert code == 0 and "2 image(s) expired, 0 kept by legal holds" in out
    assert files(held) == []
    assert cli.json("audit", "verify", actor="ann")["ok"]

    # each apply was a flow run on the Prefect server
    import anyio
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    async def runs() -> list[str]:
        async with get_client() as client:
            found = await client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["apply-retention"])))
            return [r.state_type.value for r in found if r.state_type]

    assert anyio.run(runs).count("COMPLETED") >= 4

    # a policy that cannot be read right is an error, never a skip
    for broken, says in [
        ("{", "not valid JSON"),
        ('{"version": "x", "rules": [{"id": "a", "status": "published", "purposes": ["*"], "delete_after_days": 1}]}',
         "withdraw them"),
        ('{"version": "x", "rules": [{"id": "a", "status": "rejected", "purposes": ["*"], "delete_after_days": -1}]}',
         "delete_after_days"),
        ('{"version": "x", "rules": [{"id": "a", "status": "rejected", "purposes": ["*"], "delete_after_days": 1},'
         '{"id": "b", "status": "rejected", "purposes": ["*"], "delete_after_days": 2}]}', "covered by rule 'a'"),
    ]:  # fmt: skip
        policy.write_text(broken)
        code, _, err = cli("retention", "apply", actor="ann")
        assert code == 2 and says in err and len(err.strip().splitlines()) == 1, err
