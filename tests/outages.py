"""Outages on demand for tests: an S3 endpoint that fails for a while, a PostgreSQL server that restarts.

- `FaultyS3Proxy` is a small HTTP proxy in front of the (real, moto) S3 server. Following a plan
  of `Outage(after, mode, seconds)` it passes `after` requests through, then for `seconds`
  answers every request with HTTP 500 InternalError (`mode="500"`) or holds it unanswered past
  the client's read timeout and drops the connection (`mode="stall"`), then heals.
- `PostgresCluster` is a private PostgreSQL server (initdb in a temporary folder, its own port),
  so a test can stop and start it for real without touching the shared server on 5432.
"""

from __future__ import annotations

import http.client
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlparse

_ERROR_XML = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>InternalError</Code>'
    b"<Message>We encountered an internal error. Please try again.</Message></Error>"
)


@dataclass
class Outage:
    after: int  # requests passed through before the outage starts
    mode: str  # "500" or "stall"
    seconds: float


class FaultyS3Proxy:
    def __init__(self, upstream: str, plan: list[Outage], stall_s: float = 3.0):
        self.upstream = urlparse(upstream)
        self.plan = list(plan)
        self.stall_s = stall_s
        self.passed = 0
        self.failed: dict[str, int] = {"500": 0, "stall": 0}
        self._lock = threading.Lock()
        self._outage_until: float | None = None
        self._mode = ""
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _handle(self) -> None:
                body = self._read_body()
                mode = proxy._decide()
                if mode == "500":
                    self.send_response(500)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(_ERROR_XML)))
                    self.end_headers()
                    self.wfile.write(_ERROR_XML)
                    return
                if mode == "stall":
                    time.sleep(proxy.stall_s)  # past the client's read timeout: it gives up first
                    self.close_connection = True
                    return
                conn = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("transfer-encoding",)}
                headers["Content-Length"] = str(len(body))
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "content-length", "connection", "date", "server"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            def _read_body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    out = b""
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return out
                        out += self.rfile.read(size)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _decide(self) -> str:
        with self._lock:
            now = time.monotonic()
            if self._outage_until is not None and now >= self._outage_until:
                self._outage_until = None
            if self._outage_until is None and self.plan and self.passed >= self.plan[0].after:
                outage = self.plan.pop(0)
                self._outage_until, self._mode = now + outage.seconds, outage.mode
                self.passed = 0
            if self._outage_until is not None:
                self.failed[self._mode] += 1
                return self._mode
            self.passed += 1
            return ""

    def __enter__(self) -> FaultyS3Proxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrefectServer:
    """`prefect server start` (API and services, no UI) on 127.0.0.1, on the database at `db_url`."""

    def __init__(self, db_url: str, home: Path):
        self.db_url, self.home, self.port = db_url, home, _free_port()
        self.api = f"http://127.0.0.1:{self.port}/api"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 240) -> str:
        import sys

        import httpx

        env = {
            **os.environ,
            "PREFECT_HOME": str(self.home),
            "PREFECT_API_URL": "",
            "PREFECT_SERVER_DATABASE_CONNECTION_URL": self.db_url,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_UI_ENABLED": "false",
        }
        self._log = (self.home / "server.log").open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(self.port)],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.time() + timeout
        while True:
            try:
                if httpx.get(f"{self.api}/health", timeout=2).status_code == 200:
                    return self.api
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.time() > deadline:
                self.stop()
                raise RuntimeError(
                    "Prefect server did not start:\n" + (self.home / "server.log").read_text(errors="replace")[-3000:]
                )
            time.sleep(0.5)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            self._log.close()
            self.proc = None


def postgres_bin() -> Path | None:
    root = Path("/usr/lib/postgresql")
    found = sorted(root.glob("*/bin/pg_ctl")) if root.exists() else []
    return found[-1].parent if found else (Path(p).parent if (p := shutil.which("pg_ctl")) else None)


class PostgresCluster:
    """A throwaway PostgreSQL server owned by the `postgres` OS user (initdb refuses root)."""

    def __init__(self) -> None:
        bindir = postgres_bin()
        if bindir is None:
            raise RuntimeError("PostgreSQL server binaries (pg_ctl, initdb) not found")
        self.bin = bindir
        self.dir = Path(tempfile.mkdtemp(prefix="atelier-pg-"))
        self.port = _free_port()
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"
        self._as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self._as_postgres:
            shutil.chown(self.dir, "postgres")
        self._run("initdb", "-D", str(self.dir / "data"), "-A", "trust", "-U", "postgres", "--no-sync")

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run([*self._as_postgres, str(self.bin / tool), *args], check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        self._run(
            "pg_ctl",
            "-D",
            str(self.dir / "data"),
            "-l",
            str(self.dir / "log"),
            "-w",
            "-o",
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off",
            "start",
        )

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.dir / "data"), "-m", "fast", "-w", "stop")

    def destroy(self) -> None:
        try:
            self.stop()
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)


# Modules a worker needs, imported once in the forkserver so that each worker process starts in
# about a second instead of ~15 s of imports (torch, diffusers, open_clip, Prefect) on 2 cores.
WORKER_PRELOAD = ["flows.cli", "flows.produce", "sdxl_core.engine", "governance.safety", "governance.publish"]


def worker_main(argv: list[str], log_path: str) -> None:
    """An `atelier run` worker in its own process (forked from the forkserver), output to a log file."""
    import sys

    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    from flows.cli import main

    code = main(argv)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
