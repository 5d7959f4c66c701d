"""Output review through the CLI on SQLite and PostgreSQL with the S3 server: images of a marketing
batch wait under review/ (never the publish location) until a reviewer who is not the requester
accepts them (one by one or in bulk) or rejects them with a reason."""

from __future__ import annotations

from pathlib import Path

import boto3
import pytest

from tests.flows.conftest import CLI, s3_world, write_prompts

ROWS = [
    {"row_id": f"r{i}", "prompt": f"studio photo of a ceramic vase number {i}", "seed": 40 + i, "width": 256,
     "height": 256, "steps": 2, "num_images": 2}
    for i in range(2)
]  # fmt: skip


@pytest.fixture
def reviewed(tmp_path: Path, database_url: str, tiny_models, s3_server: str, s3_env: str) -> tuple[CLI, str, str]:
    people = [("maria", "requester"), ("omar", "approver"), ("ops", "operator"), ("rev", "reviewer")]
    cli = s3_world(tmp_path, database_url, tiny_models, s3_server, s3_env, people)
    assert cli("users", "grant", "maria", "--role", "reviewer", actor="admin")[0] == 0  # requester AND reviewer
    made = cli.json(
        "batch", "submit", str(write_prompts(tmp_path / "p.csv", ROWS)), "--purpose", "marketing", actor="maria"
    )
    batch_id = made["batch_id"]
    assert cli("batch", "approve", batch_id, "--content-sha256", made["content_sha256"], actor="omar")[0] == 0
    code, _, err = cli("run", "--batch", batch_id, actor="ops")
    assert code == 0, err
    return cli, batch_id, s3_env


def keys(bucket: str, s3_server: str, prefix: str) -> list[str]:
    s3 = boto3.client("s3", endpoint_url=s3_server)
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", []))


def test_images_wait_for_a_reviewer_who_is_not_the_requester(reviewed, s3_server: str) -> None:
    cli, batch_id, bucket = reviewed
    shown = cli.json("batch", "show", batch_id)
    assert shown["review_required"] and shown["images_published"] == 0
    waiting = cli.json("review", "list", "--batch", batch_id, actor="rev")
    assert len(waiting) == shown["images_in_review"] >= 2
    assert keys(bucket, s3_server, "p/images/") == []  # nothing published
    assert len(keys(bucket, s3_server, "p/review/")) == 3 * len(waiting)  # image, provenance, thumbnail each
    ids = [w["image_id"] for w in waiting]

    code, _, err = cli("review", "accept", ids[0], actor="maria")  # the requester, though a reviewer
    assert code == 4 and "another reviewer" in err
    code, _, err = cli("review", "accept", ids[0], actor="omar")  # an approver is not a reviewer
    assert code == 4
    code, _, err = cli("review", "reject", ids[0], "--reason", "  ", actor="rev")
    assert code == 2 and "reason" in err
    code, _, err = cli("review", "accept", ids[0], "no-such-image", actor="rev")
    assert code == 3
    assert cli.json("batch", "show", batch_id)["images_published"] == 0  # a refused bulk changes nothing

    assert cli("review", "reject", ids[0], "--reason", "logo visible on the vase", actor="rev")[0] == 0
    code, out, err = cli("review", "accept", "--batch", batch_id, actor="rev")  # bulk: the rest
    assert code == 0 and f"{len(ids) - 1} image(s) accepted" in out, err
    code, _, err = cli("review", "accept", ids[1], actor="rev")
    assert code == 5 and "published" in err  # decided already

    published = keys(bucket, s3_server, "p/images/")
    assert len(published) == 3 * (len(ids) - 1) and not any(ids[0] in k for k in published)
    rejected = cli.json("trace", ids[0])
    assert rejected["status"] == "rejected" and rejected["review"]["reason"] == "logo visible on the vase"
    accepted = cli.json("trace", ids[1])
    assert accepted["status"] == "published" and accepted["review"]["by"] == "rev"
    assert accepted["store"]["key"].startswith("images/") and f"p/{accepted['store']['key']}" in published
    actions = [e["action"] for e in accepted["audit"]]
    assert "image.awaiting_review" in actions and "image.published" in actions
    assert cli.json("audit", "verify")["ok"]
    s3 = boto3.client("s3", endpoint_url=s3_server)
    body = s3.get_object(Bucket=bucket, Key=f"p/{accepted['store']['key']}")["Body"].read()
    import hashlib

    assert hashlib.sha256(body).hexdigest() == accepted["sha256"]  # the very file that was reviewed
