"""The HTTP API against a real server (uvicorn on 127.0.0.1): roles on every route, errors as
`{code, message}` with 4xx for every client mistake, the governance rules as the CLI applies them."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx

from tests.flows.conftest import write_prompts
from tests.server.conftest import USERS, Console

ROWS = [
    {
        "row_id": "r1",
        "prompt": "studio photo of a ceramic vase on pure white",
        "seed": 1,
        "width": 256,
        "height": 256,
        "steps": 2,
        "num_images": 1,
    },
    {
        "row_id": "r2",
        "prompt": "studio photo of a leather bag on pure white",
        "seed": 2,
        "width": 256,
        "height": 256,
        "steps": 2,
        "num_images": 1,
    },
]


def prompt_file(tmp_path: Path, rows: list[dict[str, Any]] = ROWS, name: str = "p.csv") -> bytes:
    return write_prompts(tmp_path / name, rows).read_bytes()


def submit(console: Console, tmp_path: Path, user: str = "maria", rows: list[dict[str, Any]] = ROWS) -> dict[str, Any]:
    with console.api(user) as c:
        r = c.post(
            "/api/v1/batches",
            data={"purpose": "catalogue", "use_category": "product-catalogue"},
            files={"file": ("p.csv", prompt_file(tmp_path, rows), "text/csv")},
        )
    assert r.status_code == 201, r.text
    return dict(r.json())


# ---------------------------------------------------------------- the route x role matrix


def _routes(console: Console) -> list[tuple[str, str, list[str] | None]]:
    from server import api, pages
    from server.app import roles_of

    out = []
    for route in [*api.router.routes, *pages.router.routes]:
        methods = getattr(route, "methods", None)
        if not methods or route.path.startswith(("/static", "/openapi", "/login")) or route.path == "/logout":
            continue
        extra = getattr(route, "openapi_extra", None)
        assert extra and "x-roles" in extra, f"{route.path} declares no roles"
        for method in sorted(methods - {"HEAD"}):
            out.append((method, route.path, roles_of(route)))
    return out


def test_every_route_declares_roles_and_enforces_them_for_every_role(console: Console) -> None:
    """Every route x every role (and no credentials): refused with 401 without a credential, 403 for a
    role the route does not name, and past the role check (any other answer) for one it does."""
    routes = _routes(console)
    assert len(routes) >= 45, routes  # the API and the console pages
    checked = 0
    for method, path, needed in routes:
        url = re.sub(r"\{[^}]+\}", "00000000-0000-0000-0000-000000000000", path)
        for user in [None, *USERS]:
            with console.api(user) as c:
                r = c.request(method, url, json={} if method in ("POST", "PUT") else None)
            where = f"{method} {path} as {user or 'nobody'}"
            if user is None:
                assert r.status_code in (401, 303), f"{where}: {r.status_code}"
                if r.status_code == 303:  # a page: to the sign-in form
                    assert r.headers["location"].startswith("/login"), where
                continue
            role = USERS[user]
            if needed is not None and role not in needed:
                assert r.status_code == 403, f"{where}: {r.status_code} {r.text[:200]}"
            else:
                assert r.status_code not in (401, 403), f"{where}: {r.status_code} {r.text[:200]}"
                assert r.status_code < 500, f"{where}: {r.status_code} {r.text[:300]}"
            checked += 1
    assert checked >= len(routes) * len(USERS)


def test_forged_revoked_and_disabled_credentials_are_refused(console: Console) -> None:
    with httpx.Client(base_url=console.base, headers={"Authorization": "Bearer atl_" + "x" * 43}) as c:
        r = c.get("/api/v1/me")
    assert r.status_code == 401 and r.json()["code"] == "unauthenticated"
    assert "atl_xxxx" not in r.text  # never echoes the token
    with httpx.Client(base_url=console.base, headers={"Authorization": "Basic YWRtaW46YWRtaW4="}) as c:
        assert c.get("/api/v1/me").status_code == 401
    # a user's own second token, revoked: refused at once
    with console.api("admin") as c:
        issued = c.post("/api/v1/tokens", json={"user": "rita", "name": "laptop", "days": 5}).json()
    with httpx.Client(base_url=console.base, headers={"Authorization": f"Bearer {issued['secret']}"}) as c:
        assert c.get("/api/v1/me").json()["user"] == "rita"
        assert c.post(f"/api/v1/tokens/{issued['token_id']}/revoke").status_code == 200
        r = c.get("/api/v1/me")
    assert r.status_code == 401 and "revoked" in r.json()["message"]


# ---------------------------------------------------------------- batches through the API


def test_a_bad_file_is_refused_with_every_failing_row_and_nothing_is_stored(console: Console, tmp_path: Path) -> None:
    bad = [dict(ROWS[0], steps=0), dict(ROWS[1], prompt="")]
    with console.api("maria") as c:
        before = len(c.get("/api/v1/batches").json())
        r = c.post(
            "/api/v1/batches",
            data={"purpose": "catalogue"},
            files={"file": ("bad.csv", prompt_file(tmp_path, bad), "text/csv")},
        )
        assert r.status_code == 422
        body = r.json()
        assert body["code"] == "invalid_input" and len(body["failures"]) >= 2
        assert {f["row"] for f in body["failures"]} >= {1, 2}
        assert len(c.get("/api/v1/batches").json()) == before
        # a file over the limit, a wrong purpose: one clear 4xx each
        r = c.post("/api/v1/batches", data={"purpose": "nonsense"}, files={"file": ("p.csv", b"a,b\n", "text/csv")})
        assert r.status_code == 422 and r.json()["code"] == "invalid_input"


def test_four_eyes_content_hash_and_visibility_through_the_api(console: Console, tmp_path: Path) -> None:
    made = submit(console, tmp_path)
    batch_id, content = made["batch_id"], made["content_sha256"]
    with console.api("rita") as c:  # another requester neither sees nor learns of it
        assert batch_id not in {b["batch_id"] for b in c.get("/api/v1/batches").json()}
        assert c.get(f"/api/v1/batches/{batch_id}").status_code == 404
    with console.api("omar") as c:
        shown = c.get(f"/api/v1/batches/{batch_id}").json()
        assert [p["prompt"] for p in shown["prompts_detail"]] == [r["prompt"] for r in ROWS]
        assert shown["content_sha256"] == content
        assert batch_id in {b["batch_id"] for b in c.get("/api/v1/queue").json()}
        r = c.post(f"/api/v1/batches/{batch_id}/approve", json={"content_sha256": "0" * 64})
        assert r.status_code in (400, 409) and "content" in r.json()["message"]
        r = c.post(f"/api/v1/batches/{batch_id}/approve", json={})
        assert r.status_code == 422  # the hash is required
        r = c.post(f"/api/v1/batches/{batch_id}/reject", json={"content_sha256": content, "reason": ""})
        assert r.status_code == 422  # a reason is required
        r = c.post(f"/api/v1/batches/{batch_id}/reject", json={"content_sha256": content, "reason": "too dark"})
        assert r.status_code == 200 and r.json()["decision"] == "rejected"
    # the same content again, as a new batch: the approver is shown the rejection and must acknowledge it
    again = submit(console, tmp_path)
    with console.api("omar") as c:
        shown = c.get(f"/api/v1/batches/{again['batch_id']}").json()
        assert [d["reason"] for d in shown["decisions_on_content"]] == ["too dark"]
        r = c.post(f"/api/v1/batches/{again['batch_id']}/approve", json={"content_sha256": content})
        assert r.status_code == 409 and "rejected" in r.json()["message"]
        r = c.post(
            f"/api/v1/batches/{again['batch_id']}/approve",
            json={"content_sha256": content, "acknowledge_rejections": True},
        )
        assert r.status_code == 200, r.text
    with console.api("ops") as c:  # the ledger records who, with which credential
        anchors = c.get("/api/v1/audit/anchors").json()
        assert anchors, "every decision is anchored"


def test_requester_cannot_approve_own_batch_even_holding_approver(console: Console, tmp_path: Path) -> None:
    with console.api("admin") as c:
        assert c.post("/api/v1/users/rita/roles", json={"grant": ["approver"]}).status_code == 200
    try:
        made = submit(console, tmp_path, user="rita")
        with console.api("rita") as c:
            assert made["batch_id"] not in {b["batch_id"] for b in c.get("/api/v1/queue").json()}
            r = c.post(f"/api/v1/batches/{made['batch_id']}/approve", json={"content_sha256": made["content_sha256"]})
        assert r.status_code == 403 and "another approver" in r.json()["message"]
    finally:
        with console.api("admin") as c:
            assert c.post("/api/v1/users/rita/roles", json={"revoke": ["approver"]}).status_code == 200


def test_verify_an_uploaded_file_that_is_not_an_image_is_a_clear_400(console: Console) -> None:
    with console.api("ann") as c:
        r = c.post("/api/v1/verify", files={"file": ("x.png", b"not an image at all", "image/png")})
    assert r.status_code == 400 and r.json()["code"] == "invalid_input"


def test_security_headers_on_pages_and_api(console: Console) -> None:
    with console.api(None) as c:
        for path in ("/login", "/api/v1/me", "/openapi.json"):
            h = c.get(path).headers
            csp = h["content-security-policy"]
            assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp and "unsafe-inline" not in csp
            assert h["x-content-type-options"] == "nosniff" and h["referrer-policy"] == "same-origin"
            assert h["cache-control"] == "no-store"


def test_openapi_documents_every_api_route_with_its_roles(console: Console) -> None:
    with console.api(None) as c:
        spec = c.get("/openapi.json").json()
    ops = [(p, m, op) for p, item in spec["paths"].items() for m, op in item.items()]
    assert all(p.startswith("/api/v1/") for p, _, _ in ops)  # the console's pages are not API
    assert len(ops) >= 30
    assert all(op.get("x-roles") for _, _, op in ops)


def test_user_mistakes_are_json_errors_never_5xx(console: Console) -> None:
    with console.api("ann") as c:
        assert c.get("/api/v1/compliance/search", params={"since": "31/01/2026"}).status_code == 400
        r = c.get("/api/v1/compliance/impact")
        assert r.status_code == 400 and set(r.json()) >= {"code", "message"}
        assert c.get("/api/v1/compliance/report", params={"from": "2026-02-01", "to": "2026-01-01"}).status_code == 400
        assert c.get("/api/v1/images/nope").status_code == 404
        assert c.get("/api/v1/nothing-here").json()["code"] == "not_found"
    with console.api("admin") as c:
        r = c.post("/api/v1/users", json={"name": "Bad Name", "roles": ["requester"]})
        assert r.status_code == 400 and "user name" in r.json()["message"]


def test_compliance_export_downloads_csv(console: Console, tmp_path: Path) -> None:
    with console.api("ann") as c:
        r = c.get("/api/v1/compliance/export", params={"format": "csv"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert "attachment" in r.headers["content-disposition"]
    assert r.text.splitlines()[0].startswith("image_id") or "image_id" in r.text.splitlines()[0]


def test_the_server_and_its_auditor_pages_do_not_load_torch() -> None:
    """A console process holds no models: importing the app and the services its search, image,
    gallery and compliance pages call must not import torch (hundreds of MB per server process, and
    a second's stall on an auditor's first search after every restart)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import server.app, server.pages, server.api, server.actions\n"
        "import governance.compliance, governance.trace, governance.batches, governance.review, governance.ledger\n"
        "server.app.create_app\n"
        "print(sorted(m for m in ('torch', 'diffusers', 'open_clip') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[]", done.stdout + done.stderr
