"""Withdrawal, legal holds and retention through the HTTP API, with webhooks sent by the server itself
(a real uvicorn server, a webhook receiver on 127.0.0.1, images made by the tiny models)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.flows.conftest import write_prompts
from tests.flows.test_withdraw_flow import Receiver
from tests.server.conftest import Console, set_up, start_server

ROWS = [
    {"row_id": f"a{i}", "prompt": f"studio photo of a walnut side table {i}", "seed": 40 + i, "width": 256,
     "height": 256, "steps": 2, "num_images": 1}
    for i in range(2)
]  # fmt: skip


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory, tiny_models: tuple[Path, Path]
) -> Iterator[tuple[Console, Receiver]]:
    receiver = Receiver(fail_first=0)
    mp = pytest.MonkeyPatch()
    mp.setenv("ATELIER_WEBHOOK_URL", receiver.url)
    mp.setenv("ATELIER_REVIEW_PURPOSES", "[]")
    data = tmp_path_factory.mktemp("life") / "d"
    cli, tokens, app = set_up(data, models=tiny_models)
    made = cli.json("batch", "submit", str(write_prompts(data.parent / "p.csv", ROWS)), "--purpose", "catalogue",
                    actor="maria")  # fmt: skip
    assert cli("batch", "approve", made["batch_id"], "--content-sha256", made["content_sha256"], actor="omar")[0] == 0
    assert cli("run", "--batch", made["batch_id"], actor="ops")[0] == 0
    base, server, thread = start_server(app)
    yield Console(base, data, cli, app, tokens), receiver
    server.should_exit = True
    thread.join(10)
    receiver.server.shutdown()
    mp.undo()


def withdrawn_events(receiver: Receiver, console: Console) -> list[dict]:
    secret = bytes.fromhex((console.data / "keys" / "webhook.key").read_text().strip())
    return [e for e in receiver.events(secret) if e["event"] == "image.withdrawn"]


def test_hold_blocks_withdrawal_through_the_api_and_the_server_sends_the_webhook(world) -> None:
    console, receiver = world
    with console.api("ann") as c:
        images = c.get("/api/v1/compliance/search", params={"status": "published"}).json()["images"]
        ids = sorted(i["image_id"] for i in images)
        assert len(ids) == 2

        r = c.post("/api/v1/holds", json={"image_ids": [ids[0]], "reason": "matter 2026-17"})
        assert r.status_code == 201, r.text
        hold_id = r.json()["holds"][0]["hold_id"]
        assert [h["hold_id"] for h in c.get("/api/v1/holds").json()] == [hold_id]
        traced = c.get(f"/api/v1/images/{ids[0]}").json()
        assert traced["legal_holds"][0]["reason"] == "matter 2026-17" and traced["legal_holds"][0]["active"]

        r = c.post("/api/v1/images/withdraw", json={"image_ids": [ids[0]], "reason": "recall"})
        assert r.status_code == 409 and r.json()["code"] == "invalid_state" and hold_id in r.json()["message"]
        assert c.get(f"/api/v1/images/{ids[0]}").json()["status"] == "published"  # nothing changed
        assert c.post("/api/v1/holds", json={"image_ids": [ids[0]], "reason": ""}).status_code == 422
        assert c.post("/api/v1/holds", json={"image_ids": ["nope"], "reason": "x"}).status_code == 404

        r = c.post(f"/api/v1/holds/{hold_id}/release", json={"reason": "matter settled"})
        assert r.status_code == 200 and r.json()["holds"][0]["released_by"] == "ann"
        r = c.post("/api/v1/images/withdraw", json={"image_ids": [ids[0]], "reason": "recall"})
        assert r.status_code == 200 and r.json()["withdrawn"] == [ids[0]], r.text
        assert c.get(f"/api/v1/images/{ids[0]}").json()["status"] == "withdrawn"

        rules = c.get("/api/v1/retention").json()
        assert {r["status"] for r in rules["rules"]} == {"review", "rejected", "withdrawn"} and rules["dry_run"]

    with console.api("maria") as c:  # a requester may not
        assert c.post("/api/v1/images/withdraw", json={"image_ids": [ids[1]], "reason": "x"}).status_code == 403
        assert c.post("/api/v1/holds", json={"image_ids": [ids[1]], "reason": "x"}).status_code == 403

    deadline = time.time() + 20  # the server's courier sends it in the background
    while not withdrawn_events(receiver, console) and time.time() < deadline:
        time.sleep(0.2)
    assert [(e["image_id"], e["reason"]) for e in withdrawn_events(receiver, console)] == [(ids[0], "recall")]
