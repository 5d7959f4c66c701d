"""Attacks on the server (threat model T1), each made against a real server as the attacker would,
asserting that it is stopped: sign-in throttling under a burst, sessions outliving a disabled user or
an old password, a password oracle, words put on a page by a link, output review skipped through the
API, blind judges reading the review queue, verify handing out another requester's record, and
thumbnails the file route refuses.

Two servers: `console` (tests/server/conftest.py, no models) for sign-in and session attacks, and
`world` (tiny models, images made) for attacks on image records and on blind preference judging."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.flows.conftest import write_prompts
from tests.server.conftest import PASSWORD, Console, csrf_of, set_up, start_server


def _forget_failures(console: Console) -> None:
    """Sign-in failures are counted per process: clear them so later tests of the module sign in."""
    console.app.state.server.throttle._failures.clear()


# ---------------------------------------------------------------- sign-in and sessions


def test_concurrent_wrong_passwords_cannot_pass_the_throttle_together(console: Console) -> None:
    """Attack: send many sign-ins for one user at the same moment. A throttle read before the password
    check and written after it (argon2, tens of ms, in the thread pool) lets every request that arrives
    before the first failure is recorded through: the 5-per-user limit would become N per burst.
    Defence: each attempt is counted when it is let through; at most `login_max_failures` passwords
    are ever tried per window."""
    throttle = console.app.state.server.throttle
    n = 24
    clients = [httpx.Client(base_url=console.base, follow_redirects=False, timeout=120) for _ in range(n)]
    try:
        tokens = [csrf_of(c.get("/login").text) for c in clients]  # connections open, forms ready
        barrier = threading.Barrier(n)

        def attempt(i: int) -> int:
            barrier.wait()
            data = {"user": "ops", "password": f"guess number {i:04d}", "csrf_token": tokens[i]}
            return clients[i].post("/login", data=data).status_code

        with ThreadPoolExecutor(n) as pool:
            answers = list(pool.map(attempt, range(n)))
        tried = answers.count(401)  # 401: the password was checked (and wrong); 429: throttled
        assert tried >= 1 and answers.count(429) == n - tried, answers  # nothing else answered
        assert tried <= throttle.limit, f"{tried} passwords tried for one user at once (limit {throttle.limit})"
    finally:
        for c in clients:
            c.close()
        _forget_failures(console)


def test_disabling_a_user_ends_their_sessions_for_good(console: Console) -> None:
    """Attack: steal a session (or keep one), let the admin respond by disabling the user, and wait for
    the user to be enabled again. A session ended only when used while its user is disabled would,
    unused in between, come back with the user. Defence (docs: a session ends "when its user is
    disabled"): disabling ends every session of the user for good."""
    stolen = console.browser_session("rita")
    assert stolen.get("/").status_code == 200
    with console.api("admin") as admin:
        assert admin.post("/api/v1/users/rita/disable").status_code == 200
        assert admin.post("/api/v1/users/rita/enable").status_code == 200
    r = stolen.get("/")
    assert r.status_code == 303 and r.headers["location"].startswith("/login"), "the stolen session still works"


def test_a_new_password_ends_the_sessions_signed_in_with_the_old_one(console: Console) -> None:
    """Attack: sign in with a guessed or leaked password and keep the session. The owner (or an admin)
    sets a new password; the attacker's session goes on working until idle or absolute expiry (12 h,
    renewed by every use up to that). Defence: setting a password ends the user's other sessions."""
    stolen = console.browser_session("maria")
    assert stolen.get("/").status_code == 200
    try:
        with console.api("admin") as admin:
            r = admin.post("/api/v1/users/maria/password", json={"password": "an entirely new passphrase"})
            assert r.status_code == 200
        r = stolen.get("/")
        assert r.status_code == 303, "a session signed in with the old password still works"
    finally:
        with console.api("admin") as admin:
            assert admin.post("/api/v1/users/maria/password", json={"password": PASSWORD}).status_code == 200


def test_sign_in_does_not_confirm_the_password_of_a_disabled_user(console: Console) -> None:
    """Attack: guess the password of a disabled account (a leaver's, likely reused elsewhere). The right
    password is answered "user NAME is disabled", a wrong one "wrong user name or password": the form
    is a password oracle. Defence: the same answer whatever part was wrong."""
    with console.api("admin") as admin:
        assert admin.post("/api/v1/users", json={"name": "dora", "roles": ["requester"]}).status_code == 201
        assert admin.post("/api/v1/users/dora/password", json={"password": PASSWORD}).status_code == 200
        assert admin.post("/api/v1/users/dora/disable").status_code == 200

    def sign_in(password: str) -> httpx.Response:
        with httpx.Client(base_url=console.base, follow_redirects=False, timeout=120) as client:
            token = csrf_of(client.get("/login").text)
            return client.post("/login", data={"user": "dora", "password": password, "csrf_token": token})

    def said(r: httpx.Response) -> str:
        found = re.search(r'<p class="error" role="alert">(.*?)</p>', r.text)
        return found.group(1) if found else ""

    try:
        right, wrong = sign_in(PASSWORD), sign_in("not dora's password at all")
        assert wrong.status_code == 401 and "wrong user name or password" in said(wrong)
        assert (right.status_code, said(right)) == (wrong.status_code, said(wrong)), said(right)
    finally:
        _forget_failures(console)


def test_a_link_cannot_put_its_own_words_on_a_console_page(console: Console) -> None:
    """Attack: send an approver a link to a real console page with `?note=...`, hoping the page shows
    the text as the server's own status message (role=status, above the content): a phishing line, or
    a false "cleared by legal, approve it" on a batch page. Defence: a page shows a note only with the
    server's signature (`ns`), which only its own redirects carry."""
    client = console.browser_session("omar")
    lure = "Security notice: your session expired. Sign in again at https://atelier-login.example"
    r = client.get("/batches", params={"note": lure})
    assert r.status_code == 200
    assert "atelier-login.example" not in r.text, "the page shows the link's text as its own status message"
    from server.pages import note_signature

    signed = client.get("/batches", params={"note": "run started", "ns": note_signature("run started")})
    assert 'role="status">run started<' in signed.text  # the server's own notes still show


def test_a_marketing_batch_submitted_through_the_server_waits_for_review(console: Console, tmp_path: Path) -> None:
    """Attack: a requester who wants her marketing images out without a reviewer submits through the
    API or the console instead of the CLI (which asks for output review for every purpose in
    ATELIER_REVIEW_PURPOSES, default marketing): without review, its images would be published straight
    after the run, unseen. Defence: the server applies the same rule as the CLI."""
    assert "marketing" in console.app.state.server.settings.review_purposes
    rows = [{"row_id": "m1", "prompt": "studio photo of a red sneaker on pure white", "seed": 3, "width": 256,
             "height": 256, "steps": 2, "num_images": 1}]  # fmt: skip
    with console.api("maria") as c:
        r = c.post(
            "/api/v1/batches",
            data={"purpose": "marketing"},
            files={"file": ("m.csv", write_prompts(tmp_path / "m.csv", rows).read_bytes(), "text/csv")},
        )
        assert r.status_code == 201, r.text
        shown = c.get(f"/api/v1/batches/{r.json()['batch_id']}").json()
    assert shown["purpose"] == "marketing"
    assert shown["review_required"] is True, "a marketing batch submitted through the server needs no review"


# ---------------------------------------------------------------- records of made images

SECRET = "codename lumen"  # in maria's prompt: what another requester must not read
COMPARE_ROWS = [
    {"row_id": f"c{i}", "prompt": f"studio photo of a linen lamp number {i} on pure white", "seed": 70 + i,
     "width": 256, "height": 256, "steps": 2, "num_images": 1}
    for i in range(2)
]  # fmt: skip
PLAIN_ROWS = [
    {"row_id": "p1", "prompt": f"studio photo of a teak chair prototype {SECRET} on pure white", "seed": 5,
     "width": 256, "height": 256, "steps": 2, "num_images": 1},
]  # fmt: skip


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory, tiny_models: tuple[Path, Path]
) -> Iterator[tuple[Console, str, str]]:
    """maria's two batches, approved by omar and run by ops: a comparison batch (base against
    base+refiner) for marketing, whose images wait for review; and a catalogue batch, published."""
    mp = pytest.MonkeyPatch()
    mp.setenv("ATELIER_REVIEW_PURPOSES", '["marketing"]')
    data = tmp_path_factory.mktemp("attacks") / "d"
    cli, tokens, app = set_up(data, models=tiny_models)
    base, server, thread = start_server(app)
    console = Console(base, data, cli, app, tokens)
    made = {}
    # the comparison batch through the CLI, which asks for output review for ATELIER_REVIEW_PURPOSES
    path = write_prompts(data.parent / "compared.csv", COMPARE_ROWS)
    b = cli.json("batch", "submit", str(path), "--purpose", "marketing", "--pipeline", "base,base+refiner",
                 actor="maria")  # fmt: skip
    made["compared"] = b["batch_id"], b["content_sha256"]
    with console.api("maria") as c:
        r = c.post(
            "/api/v1/batches",
            data={"purpose": "catalogue", "use_category": "product-catalogue"},
            files={"file": ("p.csv", write_prompts(data.parent / "plain.csv", PLAIN_ROWS).read_bytes(), "text/csv")},
        )
    assert r.status_code == 201, r.text
    made["plain"] = r.json()["batch_id"], r.json()["content_sha256"]
    for batch_id, content in made.values():
        assert cli("batch", "approve", batch_id, "--content-sha256", content, actor="omar")[0] == 0
        assert cli("run", "--batch", batch_id, actor="ops")[0] == 0
    yield console, made["compared"][0], made["plain"][0]
    server.should_exit = True
    thread.join(10)
    mp.undo()


def _images(console: Console, batch_id: str, status: str) -> list[str]:
    with console.api("admin") as c:
        return [i["image_id"] for i in c.get(f"/api/v1/batches/{batch_id}/images").json() if i["status"] == status]


def test_a_blind_judges_review_queue_holds_nothing_of_the_batch_it_judges(world) -> None:
    """Attack: a reviewer judging a comparison batch blind reads the review queue, which lists images
    waiting for review with their ids, rows and `image_index` (the configuration follows from the row
    and index: docs/security.md) and, on the /review page, their thumbnails: matching a pair's pixels
    with them would tell which configuration made each side. Defence: a judge's review queue holds
    nothing of a batch it judges blind (everything else about it is refused to the judge already)."""
    console, compared, _ = world
    waiting = _images(console, compared, "review")
    assert len(waiting) >= 2, waiting
    with console.api("rev") as c:
        r = c.post(f"/api/v1/batches/{compared}/preferences/next")
        assert r.status_code == 200, r.text
        assert c.get(f"/api/v1/batches/{compared}").status_code == 403  # blind: no rows, gallery, trace
        assert c.get(f"/api/v1/images/{waiting[0]}").status_code == 403
        queue = c.get("/api/v1/review").json()
    leaked = [(i["image_id"][:8], i["row_id"], i["image_index"]) for i in queue if i["batch_id"] == compared]
    page = console.browser_session("rev").get("/review")
    shown = [i for i in waiting if i in page.text]
    assert leaked == [] and shown == [], f"the judge's review queue names {leaked}; the page shows {len(shown)}"


def test_verify_gives_an_image_record_only_to_those_who_may_see_its_batch(world) -> None:
    """Attack: rita (a requester) holds a copy of one of maria's published images (published images go
    downstream). Its record (`/api/v1/images/{id}`) is refused to her (404: not even its existence);
    she uploads the copy to `POST /api/v1/verify` hoping for its full trace (maria's prompt, the
    approver, the audit trail, review, withdrawal and hold reasons). Defence: verify says whether
    Atelier made the file, and gives the trace only to someone who may see the image's batch."""
    console, _, plain = world
    published = _images(console, plain, "published")
    assert published
    with console.api("maria") as c:
        png = c.get(f"/api/v1/images/{published[0]}/file").content
    with console.api("rita") as c:
        assert c.get(f"/api/v1/images/{published[0]}").status_code == 404  # not hers
        r = c.post("/api/v1/verify", files={"file": ("found.png", png, "image/png")})
    assert r.status_code == 200, r.text
    assert r.json().get("trace") is None and SECRET not in r.text, "verify gave rita maria's image record"


def test_the_gallery_shows_a_thumbnail_waiting_for_review_only_where_the_route_would(world) -> None:
    """Attack: an approver (operator, auditor) opens the gallery of a batch whose images wait for
    review. The file and thumbnail routes keep an image waiting for review to reviewers and the batch's
    requester (404 to others). Defence: the gallery and compare pages, which embed thumbnails as data:
    URIs, show one only where `/images/{id}/thumbnail` would."""
    console, compared, _ = world
    waiting = _images(console, compared, "review")
    assert waiting
    with console.api("omar") as c:
        assert c.get(f"/api/v1/images/{waiting[0]}/thumbnail").status_code == 404
    page = console.browser_session("omar").get(f"/batches/{compared}/gallery")
    assert page.status_code == 200
    assert page.text.count('src="data:image/jpeg;base64,') == 0, "the gallery embeds thumbnails the route refuses"


def test_a_reviewer_shown_a_comparison_batchs_review_queue_no_longer_judges_it(world, tmp_path: Path) -> None:
    """Attack: a reviewer lists the review queue first (image ids, rows and indexes of a comparison
    batch's images, with thumbnails), then draws blind pairs of that batch and matches their pixels.
    Defence: being shown that queue is recorded (`review.shown`, once per batch), and a reviewer it
    was shown to is refused as a judge of the batch, in the console, the API and the CLI alike."""
    console, compared, _ = world
    cli = console.cli
    assert cli("users", "add", "vic", "--role", "reviewer", actor="admin")[0] == 0
    code, listed, err = cli("review", "list", "--json", actor="vic")
    assert code == 0, err
    assert any(i["batch_id"] == compared for i in json.loads(listed))  # vic now knows rows and indexes
    code, _, err = cli("prefer", "next", compared, "--out", str(tmp_path), actor="vic")
    assert code == 4 and "was shown the output of batch" in err, err

    def shown() -> int:
        from sqlalchemy import func, select

        from governance.records import AuditEvent

        with console.app.state.server.rt.sessions() as s:
            return int(
                s.scalar(
                    select(func.count()).where(
                        AuditEvent.action == "review.shown",
                        AuditEvent.actor == "vic",
                        AuditEvent.subject_id == compared,
                    )
                )
                or 0
            )

    assert shown() == 1
    assert cli("review", "list", "--json", actor="vic")[0] == 0  # shown again: recorded once per batch
    assert shown() == 1


def test_an_oversized_body_is_refused_before_it_is_read(console: Console) -> None:
    """Attack: with no credentials at all, send a huge multipart upload to an upload route. FastAPI reads
    a form before any dependency (the sign-in check among them) runs, so the server would spool the
    whole body to disk first. Defence: a body over the upload limit is refused with 413 and one line,
    by its Content-Length at once, or as soon as a body sent in chunks (no length) passes it."""
    limit = console.app.state.server.settings.server_upload_max_bytes + 1024 * 1024
    import socket
    from urllib.parse import urlsplit

    where = urlsplit(console.base)
    with socket.create_connection((where.hostname, where.port), timeout=30) as raw:  # the length alone
        raw.sendall(
            f"POST /api/v1/verify HTTP/1.1\r\nHost: {where.netloc}\r\nContent-Type: multipart/form-data; "
            f"boundary=b\r\nContent-Length: {limit + 1}\r\n\r\n--b\r\n".encode()
        )
        answer = raw.recv(65536).decode("latin-1")
    head, _, body = answer.partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 413"), head
    assert '"too_large"' in body and "larger than" in body and "nosniff" in head  # security headers too
    with httpx.Client(base_url=console.base, timeout=60) as anyone:
        sent = [0]

        def chunks() -> Iterator[bytes]:  # multipart framing, then more file than the limit allows
            yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n\r\n'
            block = b"\0" * (1024 * 1024)
            while sent[0] <= limit + 8 * len(block):
                sent[0] += len(block)
                yield block

        streamed = anyone.post(
            "/api/v1/verify", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"}
        )
    assert streamed.status_code == 413, streamed.text
    assert streamed.json()["code"] == "too_large"
