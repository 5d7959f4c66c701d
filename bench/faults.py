"""Fault-injection soak (issue 6): workers killed with SIGKILL at random moments, over many trials.

Each trial: a fresh PostgreSQL database and bucket, a batch of N images (tiny models), two
`atelier run` worker processes (each a fresh Python process) reporting to one real Prefect server
on PostgreSQL. 1 to --max-kills times, after a random number of newly recorded images and a
random delay, a random worker is SIGKILLed and a fresh one started; the survivors then finish the
batch by themselves (no re-run by hand). Checked after every trial: every planned image recorded
exactly once, no orphan object in the bucket, no chunk left claimed, the audit chain and ledger
intact. Prints a table.

    .venv/bin/python bench/faults.py --trials 20 --images 200 [--out bench/RESULTS.md]

Needs PostgreSQL (ATELIER_TEST_PG_URL, default 127.0.0.1:5432); starts moto's S3 server and a
Prefect server itself.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

_here = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _here] + [str(_here.parent)]

import boto3  # noqa: E402
from sqlalchemy import func, select  # noqa: E402

from bench.harness import Batch, approved_batch, prefect_server, record_results, results_table  # noqa: E402
from governance.claims import chunk_progress  # noqa: E402
from governance.ledger import verify_ledger  # noqa: E402
from governance.records import Image  # noqa: E402
from sdxl_core.tiny import ensure_tiny_models  # noqa: E402


def trial(
    n: int, args: argparse.Namespace, s3_url: str, prefect_url: str, models: tuple[Path, Path], rng: random.Random
) -> dict:
    images = args.images
    bucket = f"faults-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=s3_url).create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    with approved_batch(images, 256, 2, models, f"s3://{bucket}/p", s3_url, prefix="atelier_faults") as batch:
        return _trial(n, args, batch, prefect_url, rng)


def _trial(n: int, args: argparse.Namespace, batch: Batch, prefect_url: str, rng: random.Random) -> dict:
    images, flags, batch_id, rt = args.images, batch.flags, batch.batch_id, batch.runtime

    def recorded() -> int:
        with rt.sessions() as s:
            return int(s.scalar(select(func.count()).select_from(Image).where(Image.batch_id == batch_id)))

    env = {**os.environ, "PREFECT_API_URL": prefect_url, "ATELIER_CHUNK_SIZE": "4", "ATELIER_LEASE_SECONDS": "6"}
    cmd = [sys.executable, "-m", "flows.cli", "run", "--batch", batch_id, *flags]  # flags: ops's --token-file

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    live = [start(), start()]
    planned_kills = rng.randint(1, args.max_kills)
    kills: list[int] = []
    t0 = time.time()
    while len(kills) < planned_kills and time.time() - t0 < 1800:
        goal = recorded() + rng.randint(1, max(1, images // (2 * planned_kills)))
        while recorded() < goal and time.time() - t0 < 1800 and any(w.poll() is None for w in live):
            time.sleep(0.1)
        if recorded() >= images:
            break
        time.sleep(rng.uniform(0, 2.0))
        victim = live.pop(rng.randrange(len(live)))
        if victim.poll() is None:
            victim.send_signal(signal.SIGKILL)
            kills.append(recorded())
        victim.wait()
        live.append(start())
    codes = [w.wait() for w in live]  # the survivors finish the batch, the dead workers' chunks included
    with rt.sessions() as s:
        ids = list(s.scalars(select(Image.id).where(Image.batch_id == batch_id)))
        published = set(
            s.scalars(select(Image.store_key).where(Image.batch_id == batch_id, Image.status == "published"))
        )
        chunks = chunk_progress(s, batch_id)
        ledger = verify_ledger(s, rt.store, rt.anchor_store, rt.signing_certificate())
    keys = set(rt.store.keys("images/"))
    pngs = {k for k in keys if k.endswith(".png")}
    row = {
        "trial": n,
        "kills": len(kills),
        "killed_at_images": ",".join(map(str, kills)) or "-",
        "survivors_exit": ",".join(map(str, codes)),
        "recorded": len(ids),
        "unique": len(set(ids)),
        "orphans": len(pngs - published),
        "missing": len(published - pngs),
        "chunks_not_done": sum(v for k, v in chunks.items() if k != "done"),
        "ledger": ledger.ok,
        "seconds": round(time.time() - t0),
    }
    return row


def run(args: argparse.Namespace) -> str:
    from moto.server import ThreadedMotoServer

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    models = ensure_tiny_models(Path(".atelier/test-cache/models"))
    rng = random.Random(args.seed)
    rows = []
    interrupted = False
    try:
        with prefect_server() as api:
            for n in range(1, args.trials + 1):
                rows.append(trial(n, args, f"http://{host}:{port}", api, models, rng))
                print(rows[-1], flush=True)
    except KeyboardInterrupt:  # Ctrl-C ends a long soak early: the finished trials are still reported
        interrupted = True
    finally:
        server.stop()
    if not rows:
        raise SystemExit("no trial finished")
    ok = all(
        r["recorded"] == r["unique"] == args.images
        and not r["orphans"]
        and not r["missing"]
        and not r["chunks_not_done"]
        and r["ledger"]
        and set(r["survivors_exit"].split(",")) == {"0"}
        for r in rows
    )
    done = f"{len(rows)} of {args.trials} trials (stopped early)" if interrupted else f"{len(rows)} trials"
    return results_table(
        f"{done} of {args.images} images, 2 workers (fresh processes), {sum(r['kills'] for r in rows)} SIGKILLs "
        f"at random points, survivors finish: {'all exactly once' if ok else 'FAILURES'}",
        rows,
    )


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--images", type=int, default=200)
    p.add_argument("--max-kills", type=int, default=3, help="kills per trial: 1 to this many")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path)
    a = p.parse_args()
    table = run(a)
    print(table)
    if a.out:
        record_results(a.out, "faults (issue 6)", "`python bench/faults.py --trials N --images M`", table)
