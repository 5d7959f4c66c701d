"""The console at scale: 1,000,000 images in PostgreSQL, 50 concurrent clients, the pages people wait on.

1. Fills a database with `bench/compliance.py`'s synthetic records (default `atelier_console_bench`,
   1,000,000 images; `--reuse` measures an existing one), and writes a gallery thumbnail (a real JPEG,
   rendered here) into a local store for the published images of `--gallery-batches` batches.
2. Starts the server as production would: `uvicorn --factory server.app:create_app --workers N` on
   127.0.0.1, settings from ATELIER_* variables (the database, the store, a data dir for the session key).
3. Drives it with 50 concurrent clients (an asyncio + httpx loop; each signed in as the auditor with a
   Bearer token, which pages accept as the API does):

   Each user opens a page (search 40 %, image 40 %, gallery 20 %), reads it for 0.5-1.5 x `--think`
   seconds, and opens the next, for `--duration` seconds after a 15 s warm-up:

   search page       GET /search?prompt=TERM (the newest 100 hits): SKU codes, two-word phrases and
                     common words in equal parts                          target p95 <= 500 ms
   image page        GET /images/ID (lineage, models, safety, audit events)  target p95 <= 200 ms
   gallery page      GET /batches/ID/gallery: the page with its 100 stored thumbnails inline
                                                                          target p95 <= 1 s

   Errors (any non-200, a dropped connection, a gallery without its 100 thumbnails) are counted by
   kind; the target is zero. The table is printed and appended, with the
   date, machine and load, under "## console (issue 13)" in bench/RESULTS.md.

    .venv/bin/python bench/console.py --images 20000 --requests 200 --no-record     # smoke, ~1 minute
    .venv/bin/python bench/console.py                                              # 1,000,000 images
    .venv/bin/python bench/console.py --reuse                                      # the filled database
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import datetime as dt
import io
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
from sqlalchemy import create_engine, select, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from bench import compliance as filler  # noqa: E402

TARGETS = {"search": 0.5, "image": 0.2, "gallery": 1.0}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def database_url(name: str) -> str:
    return make_url(filler.ADMIN_URL).set(database=name).render_as_string(hide_password=False)


def thumbnail(rng: random.Random) -> bytes:
    """A catalogue-like thumbnail: a product shape on pure white, JPEG as publishing writes it."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (256, 256), "white")
    d = ImageDraw.Draw(img)
    colour = tuple(rng.randrange(30, 220) for _ in range(3))
    d.rounded_rectangle((60, 50, 196, 210), radius=rng.randrange(5, 60), fill=colour)  # type: ignore[arg-type]
    d.ellipse((90, 20, 166, 70), outline=colour, width=6)  # type: ignore[arg-type]
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85, optimize=True)
    return buf.getvalue()


def prepare(url: str, store_dir: Path, gallery_batches: int, seed: int) -> dict[str, Any]:
    """The auditor's token, sample images, search terms, and thumbnails for some batches' galleries."""
    from governance.db import make_engine, make_sessionmaker
    from governance.records import Batch, Image
    from governance.review import thumb_of
    from governance.store import LocalStore
    from governance.users import issue_token

    rng = random.Random(seed)
    engine = make_engine(url)
    sessions = make_sessionmaker(engine, audit_keys=filler.AUDIT_KEYS)
    with sessions.begin() as session:
        token = issue_token(session, "admin", "lee", f"console-bench-{rng.randrange(10**6)}", 1).secret
    store = LocalStore(store_dir)
    with sessions() as session:
        batch_ids = list(session.scalars(select(Batch.id).order_by(Batch.created_at.desc()).limit(gallery_batches)))
        sample = list(
            session.scalars(
                select(Image.id).where(Image.status == "published").order_by(Image.created_at.desc()).limit(5000)
            )
        )
        written = 0
        for batch_id in batch_ids:
            rows = session.execute(
                select(Image.store_key).where(Image.batch_id == batch_id, Image.status == "published")
            ).all()
            for (key,) in rows:
                store.put(thumb_of(key), thumbnail(rng), "image/jpeg", {})
                written += 1
        skus = [
            r[0]
            for r in session.execute(text("SELECT ref FROM prompts WHERE ref <> '' ORDER BY random() LIMIT 200")).all()
        ]
    engine.dispose()
    terms = (
        [s for s in skus[:100]]
        + [f"{rng.choice(filler.ADJECTIVES)} {rng.choice(filler.PRODUCTS)}" for _ in range(100)]
        + [rng.choice(filler.ADJECTIVES + [p.split()[-1] for p in filler.PRODUCTS]) for _ in range(100)]
    )
    log(f"token issued; {written} thumbnails written for {len(batch_ids)} batches; {len(sample)} sample images")
    return {"token": token, "batches": batch_ids, "images": sample, "terms": terms}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(url: str, data_dir: Path, store_dir: Path, workers: int) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {
        **os.environ,
        "ATELIER_DATABASE_URL": url,
        "ATELIER_DATA_DIR": str(data_dir),
        "ATELIER_STORE_URL": store_dir.resolve().as_uri(),
    }
    cmd = [sys.executable, "-m", "uvicorn", "--factory", "server.app:create_app", "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--workers", str(workers), "--log-level", "warning", "--no-server-header"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(base + "/login", timeout=2).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit("the server did not start")
        time.sleep(0.5)


WEIGHTS = {"search": 0.4, "image": 0.4, "gallery": 0.2}  # what a user opens next


async def users(
    base: str, token: str, plans: dict[str, list[str]], clients: int, duration: float, think: float, seed: int
) -> dict[str, tuple[list[float], int]]:
    """`clients` users at once, for `duration` seconds: each opens a page (search, image or gallery, by
    WEIGHTS), reads it for a think time (uniform 0.5-1.5 x `think` seconds; 0: at once), and opens the
    next. Returns each page kind's latencies and errors (a non-200, or a gallery without its 100
    thumbnails)."""
    import re

    out: dict[str, tuple[list[float], list[int]]] = {k: ([], [0]) for k in WEIGHTS}
    failures: collections.Counter[str] = collections.Counter()
    headers = {"Authorization": f"Bearer {token}"}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    deadline = time.monotonic() + duration
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=60, limits=limits) as client:

        async def user(n: int) -> None:
            rng = random.Random(seed * 1000 + n)
            await asyncio.sleep(rng.uniform(0, max(think, 0.1)))  # users arrive spread out
            while time.monotonic() < deadline:
                kind = rng.choices(list(WEIGHTS), weights=list(WEIGHTS.values()))[0]
                path = rng.choice(plans[kind])
                t0 = time.perf_counter()
                try:
                    r = await client.get(path)
                    ok = r.status_code == 200
                    if not ok:
                        failures[f"{kind} {r.status_code}"] += 1
                    elif kind == "gallery":  # the thumbnails come inline, read from the store
                        ok = len(re.findall(r'src="data:image/jpeg;base64,', r.text)) == 100
                        failures[f"{kind} without its 100 thumbnails"] += 0 if ok else 1
                except httpx.HTTPError as exc:
                    ok = False
                    failures[f"{kind} {type(exc).__name__}"] += 1
                times, errors = out[kind]
                times.append(time.perf_counter() - t0)
                errors[0] += 0 if ok else 1
                if think:
                    await asyncio.sleep(rng.uniform(0.5, 1.5) * think)

        await asyncio.gather(*(user(n) for n in range(clients)))
    if failures:
        log("errors: " + ", ".join(f"{k}: {n}" for k, n in failures.most_common()))
    return {k: (times, errors[0]) for k, (times, errors) in out.items()}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1_000_000)
    parser.add_argument("--database", default="atelier_console_bench")
    parser.add_argument("--reuse", action="store_true", help="measure the existing database, do not refill")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--duration", type=float, default=180, help="seconds measured (after a 15 s warm-up)")
    parser.add_argument("--think", type=float, default=1.0, help="mean seconds a user reads a page (0: none)")
    parser.add_argument("--workers", type=int, default=2, help="uvicorn worker processes")
    parser.add_argument("--gallery-batches", type=int, default=20)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--drop", action="store_true", help="drop the database afterwards")
    parser.add_argument("--no-record", action="store_true")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "RESULTS.md")
    args = parser.parse_args(argv)

    url = database_url(args.database)
    if not args.reuse:
        log(f"filling {args.database} with {args.images:,} images (bench/compliance.py's records)")
        filler.create_database(args.database)
        from governance.db import make_engine, upgrade

        upgrade(make_engine(url))
        info = filler.fill(url, args.images, args.seed)
        log(f"filled in {info['fill_s']:.0f} s")
    engine = create_engine(url)
    with engine.connect() as conn:
        n_images = conn.execute(text("SELECT count(*) FROM images")).scalar_one()
    engine.dispose()
    work = Path(tempfile.mkdtemp(prefix="atelier-console-bench-"))
    data_dir, store_dir = work / "data", work / "store"
    data_dir.mkdir()
    store_dir.mkdir()
    from governance.db import make_engine, upgrade

    upgrade(make_engine(url))  # a database filled before the console's migration
    prep = prepare(url, store_dir, args.gallery_batches, args.seed)
    proc, base = start_server(url, data_dir, store_dir, args.workers)
    rows = []
    try:
        from urllib.parse import quote

        plans = {
            "search": [f"/search?prompt={quote(t)}" for t in prep["terms"]],
            "image": [f"/images/{i}" for i in prep["images"]],
            "gallery": [f"/batches/{b}/gallery?status=published" for b in prep["batches"]],
        }
        asyncio.run(users(base, prep["token"], plans, args.clients, 15, args.think, args.seed + 1))  # warm-up
        t0 = time.perf_counter()
        measured = asyncio.run(users(base, prep["token"], plans, args.clients, args.duration, args.think, args.seed))
        wall = time.perf_counter() - t0
        for kind, (times, errors) in measured.items():
            p95 = pct(times, 95)
            rows.append(
                {
                    "page": kind,
                    "n": len(times),
                    "p50": statistics.median(times),
                    "p95": p95,
                    "max": max(times),
                    "rps": len(times) / wall,
                    "errors": errors,
                    "target": f"p95 <= {TARGETS[kind] * 1000:.0f} ms, 0 errors",
                    "met": "yes" if p95 <= TARGETS[kind] and errors == 0 else "NO",
                }
            )
            log(f"{kind}: p50 {rows[-1]['p50'] * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms, {errors} errors")
    finally:
        proc.terminate()
        proc.wait(20)
        if args.drop:
            filler.drop_database(args.database)

    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    head = (
        f"### {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC: {n_images:,} images, {args.clients} users "
        f"(think {args.think:g} s), {args.duration:g} s, {args.workers} server processes "
        f"({filler.machine()}, load {load})\n"
    )
    lines = [
        "| page | requests | p50 | p95 | max | req/s | errors | target | met |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['page']} | {r['n']} | {r['p50'] * 1000:.0f} ms | {r['p95'] * 1000:.0f} ms | "
            f"{r['max'] * 1000:.0f} ms | {r['rps']:.1f} | {r['errors']} | {r['target']} | {r['met']} |"
        )
    out = head + "\n" + "\n".join(lines) + "\n"
    print(out)
    if not args.no_record:
        text_now = args.out.read_text(encoding="utf-8")
        section = "## console (issue 13)"
        if section not in text_now:
            text_now += (
                f"\n{section}\n\n`bench/console.py`: the console's pages under 50 concurrent clients at "
                "1,000,000 images on PostgreSQL; client and server share the machine.\n"
            )
        args.out.write_text(text_now.rstrip("\n") + "\n\n" + out, encoding="utf-8")
    return 0 if all(r["met"] == "yes" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
