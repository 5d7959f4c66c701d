"""Pipeline configurations through the HTTP API and the console (issue 16), on a real server: a comparison
batch submitted with a configuration option, compared with cost by its requester, judged blind by a
reviewer whose pages and API answers never name an image or a configuration."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.flows.conftest import write_prompts
from tests.flows.test_pipelines_flow import png_chunks
from tests.server.conftest import Console, csrf_of, set_up, start_server

ROWS = [
    {"row_id": f"s{i}", "prompt": f"studio photo of a linen cushion number {i} on pure white", "seed": 90 + i,
     "width": 256, "height": 256, "steps": 2, "num_images": 1}
    for i in range(3)
]  # fmt: skip
PAIR_KEYS = {"pair_id", "batch_id", "prompt", "negative_prompt", "width", "height", "left", "right", "remaining"}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, tiny_models: tuple[Path, Path]) -> Iterator[tuple[Console, str]]:
    mp = pytest.MonkeyPatch()
    mp.setenv("ATELIER_REVIEW_PURPOSES", "[]")
    mp.setenv("ATELIER_GPU_HOUR_PRICE", "2.5")
    data = tmp_path_factory.mktemp("pipelines") / "d"
    cli, tokens, app = set_up(data, models=tiny_models)
    base, server, thread = start_server(app)
    console = Console(base, data, cli, app, tokens)
    with console.api("maria") as c:
        r = c.post(
            "/api/v1/batches",
            data={"purpose": "catalogue", "use_category": "product-catalogue", "pipeline": "base,base+refiner"},
            files={"file": ("p.csv", write_prompts(data.parent / "p.csv", ROWS).read_bytes(), "text/csv")},
        )
    assert r.status_code == 201, r.text
    made = r.json()
    assert cli("batch", "approve", made["batch_id"], "--content-sha256", made["content_sha256"], actor="omar")[0] == 0
    assert cli("run", "--batch", made["batch_id"], actor="ops")[0] == 0
    yield console, made["batch_id"]
    server.should_exit = True
    thread.join(10)
    mp.undo()


def pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def test_the_requester_compares_with_cost_and_a_reviewer_may_not(world) -> None:
    console, batch_id = world
    with console.api("maria") as c:
        shown = c.get(f"/api/v1/batches/{batch_id}").json()
        assert {p["pipeline"] for p in shown["prompts_detail"]} == {"base,base+refiner"}
        out = c.get(f"/api/v1/batches/{batch_id}/compare").json()
    assert out["pipelines"] == ["base", "base+refiner"] and out["same_seeds"] and len(out["rows"]) == 3
    for cost in out["costs"]:
        assert cost["images"] == cost["measured"] == 3 and cost["gpu_hour_price"] == 2.5
        assert cost["cost_per_image"] == pytest.approx(cost["seconds_per_image"] * 2.5 / 3600, rel=1e-6)
    with console.api("rev") as c:
        r = c.get(f"/api/v1/batches/{batch_id}/compare")
    assert r.status_code == 403 and "reviewer" in r.json()["message"]

    page = console.browser_session("maria").get(f"/batches/{batch_id}/compare")
    assert page.status_code == 200
    assert "base+refiner" in page.text and page.text.count('src="data:image/jpeg;base64,') == 6
    assert "2.5 per GPU-hour" in page.text


def test_blind_pairs_never_name_their_images_or_configurations(world) -> None:
    console, batch_id = world
    with console.api("admin") as c:
        images = {i["image_id"]: i for i in c.get(f"/api/v1/batches/{batch_id}/compare").json()["rows"][0]["images"]}
        all_ids = [
            i["image_id"] for r in c.get(f"/api/v1/batches/{batch_id}/compare").json()["rows"] for i in r["images"]
        ]
        files = {i: pixels(c.get(f"/api/v1/images/{i}/file").content) for i in all_ids}
    assert images

    with console.api("rev") as c:
        r = c.post(f"/api/v1/batches/{batch_id}/preferences/next")
        assert r.status_code == 200, r.text
        pair = r.json()
        assert set(pair) == PAIR_KEYS
        text = json.dumps(pair)
        assert not any(i in text for i in all_ids) and "refiner" not in text
        assert pair["left"] == f"/api/v1/preferences/{pair['pair_id']}/left.png"
        again = c.post(f"/api/v1/batches/{batch_id}/preferences/next").json()
        assert again["pair_id"] == pair["pair_id"]  # the undecided pair comes back, not a new draw
        shown = {}
        for side in ("left", "right"):
            got = c.get(pair[side])
            assert got.status_code == 200 and got.headers["content-type"] == "image/png"
            assert got.headers["cache-control"] == "no-store"
            assert set(png_chunks(got.content)) == {b"IHDR", b"IDAT", b"IEND"}  # no manifest, no text
            shown[side] = pixels(got.content)
        # the two sides are two of the batch's images, of the same row (the same prompt), and not the same one
        matches = {side: [i for i, px in files.items() if np.array_equal(px, shown[side])] for side in shown}
        assert len(matches["left"]) == len(matches["right"]) == 1 and matches["left"] != matches["right"]
        r = c.post(f"/api/v1/preferences/{pair['pair_id']}", json={"choice": "maybe"})
        assert r.status_code == 422
        # the judge sees the batch only as pairs: not its rows, traces, files, nor verify naming them
        some = all_ids[0]
        for url in (f"/api/v1/batches/{batch_id}", f"/api/v1/images/{some}", f"/api/v1/images/{some}/file"):
            assert c.get(url).status_code == 403, url
        with console.api("admin") as admin:
            published = admin.get(f"/api/v1/images/{some}/file").content
        r = c.post("/api/v1/verify", files={"file": ("x.png", published, "image/png")})
        assert r.status_code == 403 and "blind" in r.json()["message"]
    with console.api("ann") as c:  # an auditor is not the pair's viewer: the pair does not exist for them
        assert c.get(pair["left"]).status_code == 403  # the route is for reviewers
    with console.api("maria") as c:
        assert c.post(f"/api/v1/batches/{batch_id}/preferences/next").status_code == 403

    # the console page: the same pair, nothing that names it; a pick needs the CSRF token
    browser = console.browser_session("rev")
    page = browser.get(f"/batches/{batch_id}/prefer")
    assert page.status_code == 200 and pair["pair_id"] in page.text
    assert not any(i in page.text for i in all_ids) and "refiner" not in page.text.lower()
    r = browser.post(f"/preferences/{pair['pair_id']}", data={"choice": "left", "batch_id": batch_id})
    assert r.status_code == 403
    r = browser.post(
        f"/preferences/{pair['pair_id']}",
        data={"choice": "left", "batch_id": batch_id, "csrf_token": csrf_of(page.text)},
    )
    assert r.status_code == 303
    with console.api("ann") as c:
        rates = c.get("/api/v1/preferences", params={"batch_id": batch_id}).json()
    assert [(w["a"], w["b"], w["judgements"]) for w in rates] == [("base", "base+refiner", 1)]
    assert rates[0]["wins_a"] + rates[0]["wins_b"] == 1


def test_an_unknown_configuration_is_one_line_and_stores_nothing(world, tmp_path: Path) -> None:
    console, _ = world
    with console.api("maria") as c:
        before = len(c.get("/api/v1/batches").json())
        r = c.post(
            "/api/v1/batches",
            data={"purpose": "catalogue", "pipeline": "base+refinr"},
            files={"file": ("p.csv", write_prompts(tmp_path / "p.csv", ROWS).read_bytes(), "text/csv")},
        )
        assert r.status_code == 400, r.text
        body: dict[str, Any] = r.json()
        assert body["code"] == "invalid_input" and "did you mean 'base+refiner'" in body["message"]
        assert "\n" not in body["message"]
        assert len(c.get("/api/v1/batches").json()) == before


def test_compare_and_judge_in_a_real_browser(world, tmp_path: Path) -> None:
    """Chromium: the requester's compare page shows both configurations' thumbnails; a reviewer judges
    pairs by pressing buttons, both images load, and the next pair follows."""
    from tests.server.test_browser import Shots, chromium_path, sign_in

    path = chromium_path()
    if path is None:
        pytest.skip(
            "Chromium is not installed (apt-get install chromium, or set ATELIER_CHROMIUM): browser test skipped"
        )
    from playwright.sync_api import sync_playwright

    console, batch_id = world
    shots, errors = Shots(tmp_path), []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=path, args=["--no-sandbox", "--disable-gpu"])
        page = sign_in(browser, console, "maria", errors)
        page.goto(f"{console.base}/batches/new")
        options = page.locator("#pipeline option").all_inner_texts()
        assert any(o.startswith("compare all") for o in options) and any(o.startswith("base:") for o in options)
        page.goto(f"{console.base}/batches/{batch_id}")
        page.get_by_role("link", name="Compare configurations").click()
        assert page.get_by_role("heading", name="Cost per configuration").is_visible()
        widths = page.eval_on_selector_all("table.compare img", "imgs => imgs.map(i => i.naturalWidth)")
        assert len(widths) == 6 and all(w > 0 for w in widths)
        shots(page, "compare")

        page = sign_in(browser, console, "rev", errors)
        page.get_by_role("navigation", name="Main").get_by_role("link", name="Review").click()
        page.get_by_role("link", name="Judge pairs").click()
        draw = page.get_by_role("button", name="Show me the next pair")
        if draw.count():  # no pair waiting: a GET only shows, the button (a POST) draws one
            draw.click()
        first = page.locator("form.pair").get_attribute("action")
        for name in ("left image", "right image"):
            img = page.get_by_role("img", name=name)
            img.wait_for()
            assert page.evaluate("i => i.complete && i.naturalWidth", img.element_handle()) == 256
        shots(page, "pair")
        page.get_by_role("button", name="Right is better").press("Enter")  # the keyboard works too
        page.wait_for_url(f"**/batches/{batch_id}/prefer")
        assert page.locator("form.pair").get_attribute("action") != first  # the next pair
        shots(page, "next-pair")
        browser.close()
    assert errors == []


def test_an_edit_through_the_server_checks_rows_against_the_configured_pipelines(tmp_path: Path) -> None:
    """An organisation's own pipeline file (ATELIER_PIPELINES) names a configuration the packaged one
    lacks: a batch that uses it is submitted and then edited through the API, both checked against that
    file, as `atelier batch submit|edit` check them (an edit was checked against the packaged file)."""
    from governance.pipelines import DEFAULT_FILE
    from tests.server.conftest import Console, set_up, start_server

    definitions = json.loads(DEFAULT_FILE.read_text())
    definitions["version"] = "pipelines-acme-1"
    definitions["configurations"]["draft"] = {**definitions["configurations"]["base"], "steps": 4}
    custom = tmp_path / "pipelines.json"
    custom.write_text(json.dumps(definitions))
    cli, tokens, app = set_up(tmp_path / "d", pipelines=custom)
    base, server, thread = start_server(app)
    try:
        console = Console(base, tmp_path / "d", cli, app, tokens)
        rows = [{"row_id": "d1", "prompt": "studio photo of a jug on pure white", "seed": 1, "width": 256,
                 "height": 256, "steps": 2, "num_images": 1, "pipeline": "draft"}]  # fmt: skip
        with console.api("maria") as c:
            first = write_prompts(tmp_path / "a.csv", rows).read_bytes()
            r = c.post("/api/v1/batches", data={"purpose": "catalogue"}, files={"file": ("a.csv", first, "text/csv")})
            assert r.status_code == 201, r.text
            batch_id = r.json()["batch_id"]
            edited = write_prompts(tmp_path / "b.csv", [{**rows[0], "seed": 2}]).read_bytes()
            r = c.put(f"/api/v1/batches/{batch_id}", files={"file": ("b.csv", edited, "text/csv")})
            assert r.status_code == 200, r.text
            shown = c.get(f"/api/v1/batches/{batch_id}").json()
        assert [row["seed"] for row in shown["prompts_detail"]] == [2]
        assert "draft" in json.dumps(shown["prompts_detail"]) and shown["pipelines_version"] == "pipelines-acme-1"
    finally:
        server.should_exit = True
        thread.join(10)
