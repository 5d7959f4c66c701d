"""The console in a real browser: Debian's Chromium, driven by Playwright (launched with that
executable; `playwright install` downloads browsers and cannot work here). One journey through every
role, a screenshot of every page under the test's temporary folder."""

from __future__ import annotations

import io
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.flows.conftest import write_prompts
from tests.server.conftest import PASSWORD, Console, set_up, start_server


def chromium_path() -> str | None:
    for candidate in (os.environ.get("ATELIER_CHROMIUM"), "chromium", "chromium-browser"):
        if candidate and (found := shutil.which(candidate)):
            return found
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    path = chromium_path()
    if path is None:
        pytest.skip(
            "Chromium is not installed (apt-get install chromium, or set ATELIER_CHROMIUM): browser tests skipped"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def producing_console(tmp_path_factory: pytest.TempPathFactory, tiny_models: tuple[Path, Path]) -> Iterator[Console]:
    """A server that can run batches in-process on the tiny models."""
    data = tmp_path_factory.mktemp("browser") / "d"
    cli, tokens, app = set_up(data, models=tiny_models)
    base, server, thread = start_server(app)
    yield Console(base, data, cli, app, tokens)
    server.should_exit = True
    thread.join(10)


class Shots:
    def __init__(self, folder: Path):
        self.folder = folder
        self.n = 0

    def __call__(self, page: Any, name: str) -> None:
        self.n += 1
        page.screenshot(path=str(self.folder / f"{self.n:02d}-{name}.png"), full_page=True)


def sign_in(browser: Any, console: Console, user: str, errors: list[str]) -> Any:
    """A new browser context signed in through the form; script errors and CSP violations go to `errors`
    (a page answering 4xx, which the journey provokes on purpose, is not one)."""
    context = browser.new_context()
    page = context.new_page()
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" and "status of 4" not in m.text else None)
    page.goto(console.base + "/")
    assert "/login" in page.url  # not signed in: the sign-in form
    page.get_by_label("User name").fill(user)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(console.base + "/")
    return page


GOOD = [
    {
        "row_id": "vase",
        "prompt": "studio photo of a ceramic vase on pure white",
        "seed": 11,
        "width": 256,
        "height": 256,
        "steps": 2,
        "num_images": 1,
        "ref": "SKU-1",
    },
    {
        "row_id": "bag",
        "prompt": "studio photo of a leather bag on pure white",
        "seed": 12,
        "width": 256,
        "height": 256,
        "steps": 2,
        "num_images": 1,
        "ref": "SKU-2",
    },
]


def test_journey_of_every_role_in_chromium(browser: Any, producing_console: Console, tmp_path: Path) -> None:
    console, shot = producing_console, Shots(tmp_path)
    errors: list[str] = []

    # requester: a bad file shows every failing row; fixed, it is submitted
    maria = sign_in(browser, console, "maria", errors)
    shot(maria, "requester-home")
    maria.get_by_role("navigation", name="Main").get_by_role("link", name="Submit a batch").click()
    bad = write_prompts(tmp_path / "bad.csv", [dict(GOOD[0], steps=0), dict(GOOD[1], width=999)])
    maria.get_by_label("Prompt file (CSV, JSON lines or Parquet)").set_input_files(str(bad))
    maria.get_by_label("Purpose").select_option("catalogue")
    maria.get_by_role("button", name="Validate and submit").click()
    failures = maria.locator("table.failures tbody tr")
    assert failures.count() >= 2
    assert "steps" in maria.locator("table.failures").inner_text()
    shot(maria, "requester-row-errors")
    good = write_prompts(tmp_path / "good.csv", GOOD)
    maria.get_by_label("Prompt file (CSV, JSON lines or Parquet)").set_input_files(str(good))
    maria.get_by_role("button", name="Validate and submit").click()
    maria.wait_for_url("**/batches/*")
    batch_url = maria.url.split("?")[0]
    batch_id = batch_url.rsplit("/", 1)[1]
    assert "submitted" in maria.locator("h1").inner_text().lower()
    shot(maria, "requester-batch")

    # the requester cannot open the approval queue, and a form posted without its CSRF token is refused
    assert maria.goto(console.base + "/queue").status == 403
    shot(maria, "requester-refused-queue")
    r = maria.request.post(f"{console.base}/batches/{batch_id}/approve", form={"content_sha256": "0" * 64})
    assert r.status == 403 and "CSRF" in r.text()
    maria.goto(batch_url)
    assert maria.get_by_role("button", name="Approve this content").count() == 0

    # approver: the queue, every row and the hash, approve
    omar = sign_in(browser, console, "omar", errors)
    omar.get_by_role("navigation", name="Main").get_by_role("link", name="Approval queue").click()
    shot(omar, "approver-queue")
    omar.get_by_role("link", name=batch_id[:8]).first.click()
    rows = omar.locator("table.rows").inner_text()
    assert "ceramic vase" in rows and "leather bag" in rows and "SKU-2" in rows
    assert omar.locator("#content-sha256").inner_text() == maria.locator("#content-sha256").inner_text()
    shot(omar, "approver-batch")
    omar.get_by_role("button", name="Approve this content").click()
    omar.wait_for_url("**/batches/*")
    assert "approved" in omar.locator("h1").inner_text().lower()

    # operator: start the run (in this server's process, on the tiny models)
    ops = sign_in(browser, console, "ops", errors)
    ops.get_by_role("navigation", name="Main").get_by_role("link", name="Runs").click()
    shot(ops, "operator-runs")
    ops.get_by_role("button", name=f"Start the run of batch {batch_id[:8]}").click()
    ops.wait_for_url("**/batches/*")
    assert "run started" in ops.locator(".note").inner_text()

    # the requester sees the gallery fill (thumbnails made at publish time)
    maria.goto(batch_url + "/gallery")
    deadline = time.monotonic() + 600
    while maria.locator(".gallery li").count() < 2:
        assert time.monotonic() < deadline, "the gallery did not fill in 10 minutes"
        maria.wait_for_timeout(3000)
        maria.reload()
    published = maria.locator(".gallery li.card-published img")
    if published.count():
        maria.wait_for_function("() => [...document.images].every(i => i.complete && i.naturalWidth > 0)")
    shot(maria, "requester-gallery")

    # auditor: trace an image, then verify a JPEG copy of it
    ann = sign_in(browser, console, "ann", errors)
    with console.api("ann") as c:
        images = c.get(f"/api/v1/batches/{batch_id}/images", params={"status": "published"}).json()
    assert images, "no image was published"
    image_id = images[0]["image_id"]
    ann.goto(f"{console.base}/images/{image_id}")
    text = ann.locator("main").inner_text()
    assert "ceramic vase" in text or "leather bag" in text
    assert "approved by omar" in text and "Audit events" in text
    shot(ann, "auditor-image")
    ann.get_by_role("link", name="Validate its C2PA manifest and watermark now").click()
    assert ann.locator("#file-verdict").inner_text() == "original"  # the stored file, as published
    checked = ann.locator("main").inner_text()
    assert "c2pa" in checked and "watermark" in checked
    shot(ann, "auditor-image-checked")
    png = ann.request.get(f"{console.base}/images/{image_id}/file").body()
    from PIL import Image

    jpeg = tmp_path / "copy.jpg"
    Image.open(io.BytesIO(png)).convert("RGB").save(jpeg, quality=90)
    ann.get_by_role("navigation", name="Main").get_by_role("link", name="Verify a file").click()
    ann.get_by_label("File to verify").set_input_files(str(jpeg))
    ann.get_by_role("button", name="Verify", exact=True).click()
    verdict = ann.locator("#verdict").inner_text().lower()
    assert verdict == "derived", ann.locator("main").inner_text()
    assert image_id in ann.locator("main").inner_text()
    shot(ann, "auditor-verify")

    # auditor: a legal hold from the image page stops a withdrawal; released, the withdrawal goes ahead
    ann.goto(f"{console.base}/images/{image_id}")
    ann.get_by_label("Legal matter").fill("matter 2026-17")
    ann.get_by_role("button", name="Place a legal hold").click()
    assert "legal hold" in ann.locator(".note").inner_text()
    assert "matter 2026-17" in ann.locator("#holds").inner_text()
    shot(ann, "auditor-hold")
    ann.get_by_label("Reason for withdrawal").fill("likeness complaint")
    ann.get_by_role("button", name="Withdraw this image").click()
    refusal = ann.locator(".error").inner_text()
    assert "under legal hold" in refusal, refusal
    ann.goto(f"{console.base}/holds")
    assert image_id[:8] in ann.locator("main").inner_text()
    ann.get_by_label("Why it ends").fill("matter settled")
    ann.get_by_role("button", name="Release hold").click()
    assert (
        "released" in ann.locator(".note").inner_text() and "No active legal hold" in ann.locator("main").inner_text()
    )
    ann.goto(f"{console.base}/images/{image_id}")
    ann.get_by_label("Reason for withdrawal").fill("likeness complaint")
    ann.get_by_role("button", name="Withdraw this image").click()
    assert "withdrawn" in ann.locator(".note").first.inner_text()
    assert "likeness complaint" in ann.locator("#withdrawal").inner_text()
    assert ann.locator("h1 .status").inner_text().lower() == "withdrawn"  # CSS shows it in capitals
    shot(ann, "auditor-withdrawn")
    for page in (ann, ann.context.new_page()):
        page.goto(console.base + "/ledger?check=1")
    shot(page, "auditor-ledger")
    ledger = page.locator("main").inner_text()
    assert "result: intact" in ledger.lower(), ledger
    assert not errors, errors  # no script or CSP errors in the browser console
