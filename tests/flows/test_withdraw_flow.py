"""Withdrawal through the CLI on SQLite and PostgreSQL with the S3 server: by id and by impact, the
object gone from the publish location and kept as evidence, provenance marked, idempotent, never
republished, recognised by `verify` as withdrawn."""

from __future__ import annotations

import io
import json
from pathlib import Path

import boto3
import pytest
from PIL import Image

from tests.flows.conftest import CLI, s3_world, write_prompts

ROWS = [
    {"row_id": f"w{i}", "prompt": f"studio photo of a linen cushion number {i}", "seed": 60 + i, "width": 256,
     "height": 256, "steps": 2, "num_images": 2}
    for i in range(2)
]  # fmt: skip


class Receiver:
    """A webhook receiver on 127.0.0.1 (a real HTTP server): answers 503 to the first `fail_first`
    requests (and to all while `down`), records every request it takes."""

    def __init__(self, fail_first: int = 2):
        import http.server
        import threading

        self.fail_first, self.down, self.seen, self.taken = fail_first, False, 0, []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.seen += 1
                if outer.down or outer.seen <= outer.fail_first:
                    self.send_response(503)
                else:
                    outer.taken.append((dict(self.headers), body))
                    self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/atelier"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self, secret: bytes) -> list[dict]:
        """What was delivered, each signature checked the way a receiver must check it."""
        from governance.webhooks import signature

        out = []
        for headers, body in self.taken:
            assert headers["X-Atelier-Signature"] == signature(secret, headers["X-Atelier-Timestamp"], body)
            out.append(json.loads(body))
        return out


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    r = Receiver()
    monkeypatch.setenv("ATELIER_WEBHOOK_URL", r.url)
    monkeypatch.setenv("ATELIER_WEBHOOK_MAX_ATTEMPTS", "3")
    yield r
    r.server.shutdown()


@pytest.fixture
def published(
    tmp_path: Path, database_url: str, tiny_models, s3_server: str, s3_env: str, receiver: Receiver
) -> tuple[CLI, str, str]:
    people = [("maria", "requester"), ("omar", "approver"), ("ops", "operator"), ("ann", "auditor")]
    cli = s3_world(tmp_path, database_url, tiny_models, s3_server, s3_env, people)
    made = cli.json(
        "batch", "submit", str(write_prompts(tmp_path / "p.csv", ROWS)), "--purpose", "catalogue", actor="maria"
    )
    batch_id = made["batch_id"]
    assert cli("batch", "approve", batch_id, "--content-sha256", made["content_sha256"], actor="omar")[0] == 0
    code, _, err = cli("run", "--batch", batch_id, actor="ops")
    assert code == 0, err
    return cli, batch_id, s3_env


def pngs(bucket: str, s3_server: str, prefix: str) -> list[str]:
    s3 = boto3.client("s3", endpoint_url=s3_server)
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return sorted(o["Key"] for o in listed if o["Key"].endswith(".png") and not o["Key"].endswith(".thumb.png"))


def test_withdraw_by_id_then_by_impact(published, s3_server: str, tmp_path: Path, receiver: Receiver) -> None:
    cli, batch_id, bucket = published
    secret = bytes.fromhex((tmp_path / "d" / "keys" / "webhook.key").read_text().strip())
    published_events = [e for e in receiver.events(secret) if e["event"] == "image.published"]
    assert receiver.seen >= 3  # two refusals, then retried with backoff until taken
    s3 = boto3.client("s3", endpoint_url=s3_server)
    images = cli.json("compliance", "search", "--status", "published", actor="ann")
    ids = sorted(i["image_id"] for i in images)
    assert len(ids) >= 2 and len(pngs(bucket, s3_server, "p/images/")) == len(ids)
    assert sorted(e["image_id"] for e in published_events) == ids  # each published image, once
    target = cli.json("trace", ids[0], actor="ann")

    assert cli("image", "withdraw", ids[0], "--reason", "model recall", actor="maria")[0] == 4  # not hers to do
    assert cli("image", "withdraw", ids[0], "--reason", "  ", actor="ann")[0] == 2
    assert cli("image", "withdraw", ids[0], "no-such-image", "--reason", "x", actor="ann")[0] == 3
    assert len(pngs(bucket, s3_server, "p/images/")) == len(ids)  # refused: nothing changed

    code, out, err = cli("image", "withdraw", ids[0], "--reason", "likeness complaint 2026-114", actor="ann")
    assert code == 0 and "1 image(s) withdrawn" in out, err
    key = f"p/{target['store']['key']}"
    assert key not in pngs(bucket, s3_server, "p/images/")  # gone from the publish location
    evidence = pngs(bucket, s3_server, "p/withdrawn/")
    assert evidence == [key.replace("p/images/", "p/withdrawn/")]
    doc = json.loads(s3.get_object(Bucket=bucket, Key=f"p/{target['store']['provenance_key']}")["Body"].read())
    assert doc["withdrawn"]["reason"] == "likeness complaint 2026-114" and doc["withdrawn"]["by"] == "ann"
    traced = cli.json("trace", ids[0], actor="ann")
    assert traced["status"] == "withdrawn" and traced["withdrawal"]["reason"] == "likeness complaint 2026-114"
    assert traced["withdrawal"]["removed_version_id"] == target["store"]["version_id"]
    assert "image.withdrawn" in [e["action"] for e in traced["audit"]]

    withdrawn_events = [e for e in receiver.events(secret) if e["event"] == "image.withdrawn"]
    assert withdrawn_events, (err, cli.json("webhooks", "list", actor="ann"))
    assert [(e["image_id"], e["reason"]) for e in withdrawn_events] == [(ids[0], "likeness complaint 2026-114")]

    code, out, _ = cli("image", "withdraw", ids[0], "--reason", "again", actor="ann")  # idempotent
    assert code == 0 and "0 image(s) withdrawn, 1 already were" in out
    assert len([e for e in receiver.events(secret) if e["event"] == "image.withdrawn"]) == 1  # no second event

    # a copy still in circulation is recognised, and said to be withdrawn
    body = s3.get_object(Bucket=bucket, Key=evidence[0])["Body"].read()
    copy = tmp_path / "copy.jpg"
    Image.open(io.BytesIO(body)).convert("RGB").save(copy, quality=90)
    code, out, _ = cli("verify", str(copy), actor="ann")
    assert code == 10 and ids[0] in out and "WITHDRAWN" in out and "likeness complaint" in out

    # running the batch again publishes nothing again
    assert cli("run", "--batch", batch_id, actor="ops")[0] == 0
    assert key not in pngs(bucket, s3_server, "p/images/")
    assert cli.json("trace", ids[0], actor="ann")["status"] == "withdrawn"

    # by impact: every image of the base model still published; the receiver is down meanwhile
    receiver.down = True
    base_sha = next(m["sha256"] for m in target["models"] if m["role"].startswith("base"))
    code, out, err = cli("image", "withdraw", "--impact-of", base_sha, "--reason", "base model recalled", actor="ann")
    assert code == 0 and f"{len(ids) - 1} image(s) withdrawn" in out, err
    assert "webhooks" in err and "failed" in err  # said plainly; the withdrawal itself stands
    failed = cli.json("webhooks", "list", "--status", "failed", actor="ann")
    assert len(failed) == len(ids) - 1 and all(f["attempts"] == 3 and f["last_error"] == "HTTP 503" for f in failed)
    assert pngs(bucket, s3_server, "p/images/") == []
    assert len(pngs(bucket, s3_server, "p/withdrawn/")) == len(ids)
    assert cli.json("audit", "verify", actor="ann")["ok"]

    # compliance sees it: the export's withdrawal column and the period report's decisions
    import csv

    out = tmp_path / "lineage.csv"
    assert cli("compliance", "export", "--format", "csv", "--out", str(out), actor="ann")[0] == 0
    rows = {r["image_id"]: r for r in csv.DictReader(out.open(encoding="utf-8"))}
    assert json.loads(rows[ids[0]]["withdrawal"])["reason"] == "likeness complaint 2026-114"
    assert rows[ids[0]]["status"] == "withdrawn" and json.loads(rows[ids[0]]["prompt_policy"])["flags"] == []
    report = tmp_path / "report.html"
    code, _, err = cli("compliance", "report", "--from", "2026-01-01", "--to", "2099-12-31", "--out", str(report))
    assert code == 0, err
    html = report.read_text(encoding="utf-8")
    assert "likeness complaint 2026-114" in html and "base model recalled" in html
