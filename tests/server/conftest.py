"""A real Atelier server for the tests: uvicorn on 127.0.0.1 (a free port), in a thread, on a data dir
set up through the CLI (keys, users with roles, passwords and tokens, the licence); stopped after."""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.flows.conftest import CLI

PASSWORD = "correct horse battery staple"
# one user per role (and a second requester): the route x role matrix acts as each
USERS = {
    "admin": "admin",
    "maria": "requester",
    "rita": "requester",
    "omar": "approver",
    "ops": "operator",
    "ann": "auditor",
    "rev": "reviewer",
}


@dataclass
class Console:
    base: str
    data: Path
    cli: CLI
    app: Any
    tokens: dict[str, str] = field(default_factory=dict)

    def api(self, user: str | None) -> httpx.Client:
        """An API client acting with `user`'s token (None: no credentials at all)."""
        headers = {"Authorization": f"Bearer {self.tokens[user]}"} if user else {}
        return httpx.Client(base_url=self.base, headers=headers, timeout=120, follow_redirects=False)

    def browser_session(self, user: str) -> httpx.Client:
        """A client signed in through the login form, as a browser would (cookies, CSRF token)."""
        client = httpx.Client(base_url=self.base, timeout=120, follow_redirects=False)
        page = client.get("/login")
        r = client.post("/login", data={"user": user, "password": PASSWORD, "csrf_token": csrf_of(page.text)})
        assert r.status_code == 303, r.text
        return client


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found, "the page has no CSRF token field"
    return found.group(1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(app: Any) -> tuple[str, Any, threading.Thread]:
    import uvicorn

    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "the server did not start in 30 s"
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}", server, thread


def set_up(data: Path, models: tuple[Path, Path] | None = None, **settings: Any) -> tuple[CLI, dict[str, str], Any]:
    from flows.settings import get_settings

    flags = ["--data-dir", str(data)]
    if models:
        flags += ["--base-model", str(models[0]), "--refiner-model", str(models[1])]
    cli = CLI(None, flags)
    assert cli("db", "upgrade")[0] == 0
    assert cli("keys", "init")[0] == 0
    assert cli("users", "add", "admin", "--role", "admin")[0] == 0
    for name, role in USERS.items():
        if name != "admin":
            assert cli("users", "add", name, "--role", role, actor="admin")[0] == 0
    assert cli("licences", "register", "creativeml-openrail++-m", actor="admin")[0] == 0
    base = get_settings(
        data_dir=data,
        base_model=str(models[0]) if models else None,
        refiner_model=str(models[1]) if models else None,
        **settings,
    )
    from governance.users import set_password
    from server.app import create_app

    app = create_app(base)
    rt = app.state.server.rt
    with rt.sessions.begin() as session:
        for name in USERS:
            set_password(session, "admin", name, PASSWORD)
    tokens = {name: cli.token(name) for name in USERS}
    return cli, tokens, app


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    data = tmp_path_factory.mktemp("console") / "d"
    cli, tokens, app = set_up(data)
    base, server, thread = start_server(app)
    yield Console(base, data, cli, app, tokens)
    server.should_exit = True
    thread.join(10)
