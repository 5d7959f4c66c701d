"""Console sign-in as an attacker tries it: wrong passwords (throttled), forged and stolen session
cookies, missing CSRF tokens, expired sessions, disabled users."""

from __future__ import annotations

import httpx
from sqlalchemy import update

from governance.records import ConsoleSession
from tests.server.conftest import PASSWORD, Console, csrf_of


def test_sign_in_sets_a_hardened_cookie_and_sign_out_ends_the_session(console: Console) -> None:
    client = httpx.Client(base_url=console.base, follow_redirects=False)
    page = client.get("/login")
    r = client.post("/login", data={"user": "omar", "password": PASSWORD, "csrf_token": csrf_of(page.text)})
    assert r.status_code == 303
    cookie = r.headers["set-cookie"]
    assert "atelier_session=" in cookie and "HttpOnly" in cookie and "SameSite=lax" in cookie
    assert "Secure" not in cookie  # plain HTTP on 127.0.0.1; behind HTTPS (or ATELIER_COOKIE_SECURE) it is set
    stolen = client.cookies.get("atelier_session")
    home = client.get("/")
    assert home.status_code == 200 and "omar" in home.text
    assert client.post("/logout", data={"csrf_token": csrf_of(home.text)}).status_code == 303
    replay = httpx.Client(base_url=console.base, cookies={"atelier_session": stolen or ""}, follow_redirects=False)
    assert replay.get("/").status_code == 303  # the old cookie signs nobody in: back to the sign-in form


def test_a_form_without_its_csrf_token_changes_nothing(console: Console) -> None:
    client = console.browser_session("admin")
    before = client.get("/api/v1/users").json()
    r = client.post("/admin/users", data={"name": "mallory", "roles": "admin"})
    assert r.status_code == 403 and "CSRF" in r.text
    r = client.post("/admin/users", data={"name": "mallory", "roles": "admin", "csrf_token": "0" * 64})
    assert r.status_code == 403
    other = console.browser_session("ann")  # another session's token is no good either
    token = csrf_of(other.get("/").text)
    assert (
        client.post("/admin/users", data={"name": "mallory", "roles": "admin", "csrf_token": token}).status_code == 403
    )
    assert client.get("/api/v1/users").json() == before


def test_wrong_passwords_are_throttled_and_never_say_which_part_was_wrong(console: Console) -> None:
    client = httpx.Client(base_url=console.base, follow_redirects=False)
    answers = []
    for _ in range(7):
        token = csrf_of(client.get("/login").text)
        r = client.post("/login", data={"user": "ops", "password": "guess-" + token[:6], "csrf_token": token})
        answers.append(r.status_code)
    assert answers[:5] == [401] * 5 and answers[5:] == [429, 429]
    token = csrf_of(client.get("/login").text)
    r = client.post("/login", data={"user": "ops", "password": PASSWORD, "csrf_token": token})
    assert r.status_code == 429 and int(r.headers["retry-after"]) > 0  # even the right password waits
    token = csrf_of(client.get("/login").text)
    r = client.post("/login", data={"user": "nobody-here", "password": PASSWORD, "csrf_token": token})
    assert "wrong user name or password" in r.text


def test_login_form_without_its_token_is_refused(console: Console) -> None:
    r = httpx.post(f"{console.base}/login", data={"user": "ann", "password": PASSWORD}, follow_redirects=False)
    assert r.status_code == 403


def test_a_session_row_written_into_the_database_signs_nobody_in(console: Console) -> None:
    """T2: the database holds only an HMAC of the cookie under a key it does not hold."""
    from governance.records import User

    rt = console.app.state.server.rt
    with rt.sessions.begin() as session:
        admin = session.query(User).filter_by(name="admin").one()
        session.add(ConsoleSession(id="web-forged", user_id=admin.id, secret_mac="a" * 64))
    for cookie in ("a" * 64, "forged"):
        r = httpx.get(f"{console.base}/admin/users", cookies={"atelier_session": cookie}, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].startswith("/login")


def test_idle_and_absolute_expiry_and_disabled_users_end_sessions(console: Console) -> None:
    from datetime import timedelta

    from governance.records import utcnow

    rt = console.app.state.server.rt
    client = console.browser_session("ann")
    assert client.get("/search").status_code == 200
    with rt.sessions.begin() as session:  # 31 minutes unused (default idle limit 30)
        session.execute(update(ConsoleSession).values(last_seen_at=utcnow() - timedelta(minutes=31)))
    assert client.get("/search").status_code == 303
    client = console.browser_session("ann")
    with rt.sessions.begin() as session:  # signed in 13 hours ago, used a minute ago (absolute limit 12 h)
        session.execute(
            update(ConsoleSession)
            .where(ConsoleSession.ended_at.is_(None))
            .values(created_at=utcnow() - timedelta(hours=13), last_seen_at=utcnow())
        )
    assert client.get("/search").status_code == 303
    client = console.browser_session("rita")
    assert client.get("/").status_code == 200
    with console.api("admin") as admin:
        assert admin.post("/api/v1/users/rita/disable").status_code == 200
    try:
        assert client.get("/").status_code == 303
        with console.api("rita") as c:
            assert c.get("/api/v1/me").status_code == 401
    finally:
        with console.api("admin") as admin:
            assert admin.post("/api/v1/users/rita/enable").status_code == 200


def test_next_after_sign_in_never_leaves_the_site(console: Console) -> None:
    client = httpx.Client(base_url=console.base, follow_redirects=False)
    token = csrf_of(client.get("/login?next=//evil.example/x").text)
    r = client.post(
        "/login", data={"user": "ann", "password": PASSWORD, "csrf_token": token, "next": "https://evil.example/"}
    )
    assert r.status_code == 303 and r.headers["location"] == "/"
